//! Prompts to token ids: JanusFlow's chat template through a `tokenizers` tokenizer.json.

use tokenizers::Tokenizer;

use crate::error::{Error, Result};

/// The begin-of-generation tag JanusFlow appends after the templated prompt.
pub const IMAGE_GEN_TAG: &str = "<｜begin▁of▁generation｜>";
/// Longest prompt accepted, in tokens.
pub const MAX_PROMPT_TOKENS: usize = 1024;

/// JanusFlow's "deepseek" SFT template with an empty system prompt, followed by the tag.
pub fn janusflow_template(prompt: &str) -> String {
    format!("User: {prompt}\n\nAssistant:{IMAGE_GEN_TAG}")
}

enum Inner {
    Hf(Box<Tokenizer>),
    /// Byte-level ids `3 + byte` (models without a tokenizer.json, e.g. presets).
    Bytes { vocab: usize },
}

pub struct PromptTokenizer {
    inner: Inner,
    bos_id: u32,
    image_gen_id: u32,
    /// Replaces JanusFlow's template; `{prompt}` marks the prompt.
    template: Option<String>,
}

impl PromptTokenizer {
    /// `bos_id`/`image_gen_id` default to the ids of the tokenizer's BOS and `IMAGE_GEN_TAG` tokens.
    pub fn from_bytes(json: &[u8], bos_id: Option<u32>, image_gen_id: Option<u32>) -> Result<Self> {
        let tokenizer = Tokenizer::from_bytes(json).map_err(|e| Error::Tokenizer(format!("cannot parse tokenizer.json: {e}")))?;
        let image_gen_id = match image_gen_id.or_else(|| tokenizer.token_to_id(IMAGE_GEN_TAG)) {
            Some(id) => id,
            None => return Err(Error::Tokenizer(format!("the vocabulary has no {IMAGE_GEN_TAG} token"))),
        };
        let bos_id = match bos_id.or_else(|| tokenizer.token_to_id("<｜begin▁of▁sentence｜>")) {
            Some(id) => id,
            None => return Err(Error::Tokenizer("no BOS token id (give bos_token_id in generation.json)".into())),
        };
        Ok(Self { inner: Inner::Hf(Box::new(tokenizer)), bos_id, image_gen_id, template: None })
    }

    /// A tokenizer built elsewhere, e.g. from a GGUF's metadata ([`crate::gguf::tokenizer`]).
    pub fn from_tokenizer(tokenizer: Tokenizer, bos_id: u32, image_gen_id: u32) -> Self {
        Self { inner: Inner::Hf(Box::new(tokenizer)), bos_id, image_gen_id, template: None }
    }

    /// Token ids of `text` as it is: no chat template, no BOS or begin-of-generation token added
    /// (except what the tokenizer's own post-processor adds when `add_special_tokens`).
    pub fn encode_text(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>> {
        match &self.inner {
            Inner::Hf(tokenizer) => Ok(tokenizer
                .encode(text, add_special_tokens)
                .map_err(|e| Error::Tokenizer(format!("cannot encode the text: {e}")))?
                .get_ids()
                .to_vec()),
            Inner::Bytes { .. } => Ok(text.bytes().map(|b| 3 + b as u32).collect()),
        }
    }

    /// The byte-level fallback: BOS, `3 + byte` for each byte of the templated prompt, then BOG.
    pub fn bytes(bos_id: u32, image_gen_id: u32, vocab: usize) -> Result<Self> {
        if vocab < 259 {
            return Err(Error::Tokenizer(format!("byte-level prompts need a vocabulary of at least 259 ids, the model has {vocab}")));
        }
        Ok(Self { inner: Inner::Bytes { vocab }, bos_id, image_gen_id, template: None })
    }

    /// Use `template` (`{prompt}` marks the prompt) instead of JanusFlow's chat template: ids are
    /// `[BOS, template ids..., BOG]`.
    pub fn with_template(mut self, template: Option<String>) -> Self {
        self.template = template;
        self
    }

    /// `[BOS, templated prompt..., BOG]`.
    pub fn encode_prompt(&self, prompt: &str) -> Result<Vec<u32>> {
        if prompt.trim().is_empty() {
            return Err(Error::input("the prompt is empty"));
        }
        if prompt.len() > 16 * MAX_PROMPT_TOKENS {
            return Err(Error::input(format!("the prompt is {} bytes long; at most {MAX_PROMPT_TOKENS} tokens are accepted", prompt.len())));
        }
        let mut ids = match (&self.inner, &self.template) {
            (_, Some(template)) => {
                let mut ids = self.encode_text(&template.replace("{prompt}", prompt), false)?;
                ids.push(self.image_gen_id);
                ids
            }
            (Inner::Hf(tokenizer), None) => tokenizer
                .encode(janusflow_template(prompt), true)
                .map_err(|e| Error::Tokenizer(format!("cannot encode the prompt: {e}")))?
                .get_ids()
                .to_vec(),
            (Inner::Bytes { vocab }, None) => {
                let text = janusflow_template(prompt);
                let text = text.strip_suffix(IMAGE_GEN_TAG).unwrap_or(&text);
                let ids: Vec<u32> = text.bytes().map(|b| 3 + b as u32).chain([self.image_gen_id]).collect();
                debug_assert!(ids.iter().all(|&i| (i as usize) < *vocab));
                ids
            }
        };
        if ids.first() != Some(&self.bos_id) {
            ids.insert(0, self.bos_id);
        }
        if ids.last() != Some(&self.image_gen_id) {
            return Err(Error::Tokenizer(format!("the tokenizer did not keep {IMAGE_GEN_TAG} as one token")));
        }
        if ids.len() > MAX_PROMPT_TOKENS {
            return Err(Error::input(format!("the prompt is {} tokens long; at most {MAX_PROMPT_TOKENS} are accepted", ids.len())));
        }
        Ok(ids)
    }
}
