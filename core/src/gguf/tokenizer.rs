//! The tokenizer a GGUF describes (`tokenizer.ggml.*`), as a `tokenizers::Tokenizer`.
//!
//! Only byte-level BPE (`tokenizer.ggml.model == "gpt2"`) is built. The pre-tokenizer follows
//! llama.cpp's `tokenizer.ggml.pre` (llama-vocab.cpp): for `smollm` (and the StarCoder family it
//! shares a regex list with) digits are split one by one (`\p{N}`) before the GPT-2 regex, which is
//! what SmolLM2's own tokenizer.json does (`Digits(individual_digits)` + `ByteLevel`).
//! transformers' GGUF loader (5.x) has no entry for `smollm` and uses the bare GPT-2 regex; the
//! two differ only where a digit follows two or more spaces (`"a  1"`: llama.cpp and the original
//! tokenizer give `["ĠĠ", "1"]` where transformers gives `["Ġ", "Ġ", "1"]`).

use serde_json::{json, Map, Value as Json};
use tokenizers::Tokenizer;

use super::reader::GgufFile;
use crate::error::{Error, Result};

fn err(msg: impl Into<String>) -> Error {
    Error::Gguf(msg.into())
}

/// llama.cpp token types (`llama_token_type`).
const TOKEN_TYPE_CONTROL: i64 = 3;
const TOKEN_TYPE_USER_DEFINED: i64 = 4;

const LLAMA3_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const QWEN2_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// A tokenizer built from GGUF metadata, with the special ids the file names.
#[derive(Clone)]
pub struct GgufTokenizer {
    pub tokenizer: Tokenizer,
    pub bos_id: Option<u32>,
    pub eos_id: Option<u32>,
    pub pad_id: Option<u32>,
    pub unk_id: Option<u32>,
    /// `tokenizer.ggml.add_bos_token` / `add_eos_token` (the post-processor adds them when
    /// encoding with special tokens).
    pub add_bos: bool,
    pub add_eos: bool,
    /// `tokenizer.chat_template` (Jinja), if present.
    pub chat_template: Option<String>,
}

impl std::fmt::Debug for GgufTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufTokenizer")
            .field("vocab", &self.tokenizer.get_vocab_size(true))
            .field("bos_id", &self.bos_id)
            .field("eos_id", &self.eos_id)
            .field("pad_id", &self.pad_id)
            .field("add_bos", &self.add_bos)
            .finish()
    }
}

impl GgufTokenizer {
    /// Token ids of `text`, with BOS/EOS only as the file asks (`add_bos_token`), no template.
    pub fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>> {
        Ok(self
            .tokenizer
            .encode(text, add_special_tokens)
            .map_err(|e| Error::Tokenizer(format!("cannot encode the text: {e}")))?
            .get_ids()
            .to_vec())
    }

    pub fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String> {
        self.tokenizer.decode(ids, skip_special_tokens).map_err(|e| Error::Tokenizer(format!("cannot decode: {e}")))
    }
}

/// GPT-2's byte → printable character table (`bytes_to_unicode`).
fn byte_alphabet() -> [char; 256] {
    let mut table = ['\0'; 256];
    let mut n = 0u32;
    for b in 0..256u32 {
        let printable = (33..=126).contains(&b) || (161..=172).contains(&b) || (174..=255).contains(&b);
        table[b as usize] = if printable {
            char::from_u32(b).expect("latin-1")
        } else {
            n += 1;
            char::from_u32(255 + n).expect("bmp")
        };
    }
    table
}

fn pre_tokenizer(pre: Option<&str>) -> Result<Json> {
    let byte_level = |use_regex: bool| json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": use_regex});
    let split = |regex: &str| {
        json!({"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": regex}, "behavior": "Isolated", "invert": false},
            byte_level(false),
        ]})
    };
    Ok(match pre.unwrap_or("default") {
        "default" | "gpt-2" | "gpt2" | "mpt" | "olmo" | "jais" => byte_level(true),
        "smollm" | "starcoder" | "refact" | "command-r" | "codeshell" | "exaone" | "minerva-7b" => json!({
            "type": "Sequence",
            "pretokenizers": [{"type": "Digits", "individual_digits": true}, byte_level(true)],
        }),
        "llama3" | "llama-v3" | "llama-bpe" | "smaug-bpe" | "falcon3" | "dbrx" => split(LLAMA3_SPLIT),
        "qwen2" | "deepseek-r1-qwen" => split(QWEN2_SPLIT),
        other => {
            return Err(err(format!(
                "tokenizer.ggml.pre {other:?} is not supported (known: default, gpt-2, smollm, starcoder, llama3/llama-bpe, qwen2)"
            )))
        }
    })
}

/// The tokenizer.json (as JSON) equivalent to the file's `tokenizer.ggml.*` metadata.
pub fn tokenizer_json(file: &GgufFile) -> Result<Json> {
    let model = file.get_str("tokenizer.ggml.model")?.ok_or_else(|| err("the file has no tokenizer (tokenizer.ggml.model is missing)"))?;
    if model != "gpt2" {
        return Err(err(format!("tokenizer.ggml.model {model:?} is not supported (only \"gpt2\", byte-level BPE)")));
    }
    let tokens = file.get_str_array("tokenizer.ggml.tokens")?.ok_or_else(|| err("tokenizer.ggml.tokens is missing"))?;
    let merges = file.get_str_array("tokenizer.ggml.merges")?.ok_or_else(|| err("tokenizer.ggml.merges is missing"))?;
    let types = file.get_i64_array("tokenizer.ggml.token_type")?;
    if let Some(t) = &types {
        if t.len() != tokens.len() {
            return Err(err(format!("tokenizer.ggml.token_type has {} entries for {} tokens", t.len(), tokens.len())));
        }
    }

    let alphabet = byte_alphabet();
    let in_alphabet = |s: &str| s.chars().all(|c| alphabet.contains(&c));
    let mut vocab = Map::with_capacity(tokens.len());
    let mut added = Vec::new();
    for (id, token) in tokens.iter().enumerate() {
        let kind = types.as_ref().map(|t| t[id]).unwrap_or(1);
        // As transformers' byte_level_tokenizer: a token not spelled in the byte alphabet is
        // respelled from its UTF-8 bytes.
        let spelled = if in_alphabet(token) {
            token.to_string()
        } else {
            token.bytes().map(|b| alphabet[b as usize]).collect()
        };
        if kind == TOKEN_TYPE_CONTROL && in_alphabet(token) || kind == TOKEN_TYPE_USER_DEFINED {
            added.push(json!({
                "id": id, "content": token, "single_word": false, "lstrip": false, "rstrip": false,
                "normalized": false, "special": kind == TOKEN_TYPE_CONTROL,
            }));
        }
        vocab.insert(spelled, json!(id));
    }
    let merges: Vec<Json> = merges
        .iter()
        .enumerate()
        .map(|(i, m)| {
            m.split_once(' ')
                .map(|(a, b)| json!([a, b]))
                .ok_or_else(|| err(format!("tokenizer.ggml.merges entry {i} {m:?} is not two tokens separated by a space")))
        })
        .collect::<Result<_>>()?;

    let special = |key: &str| -> Result<Option<(u32, String)>> {
        match file.get_u64(key)? {
            None => Ok(None),
            Some(id) if (id as usize) < tokens.len() => Ok(Some((id as u32, tokens[id as usize].to_string()))),
            Some(id) => Err(err(format!("{key} {id} is outside the vocabulary of {} tokens", tokens.len()))),
        }
    };
    let bos = special("tokenizer.ggml.bos_token_id")?;
    let eos = special("tokenizer.ggml.eos_token_id")?;
    let add_bos = file.get_bool("tokenizer.ggml.add_bos_token")?.unwrap_or(false);
    let add_eos = file.get_bool("tokenizer.ggml.add_eos_token")?.unwrap_or(false);
    let post_processor = if add_bos || add_eos {
        let mut single = Vec::new();
        let mut pair = Vec::new();
        let mut specials = Map::new();
        let mut piece = |tok: &Option<(u32, String)>, what: &str| -> Result<Json> {
            let (id, content) = tok.clone().ok_or_else(|| err(format!("add_{what}_token is set but there is no {what} token id")))?;
            specials.insert(content.clone(), json!({"id": content, "ids": [id], "tokens": [content]}));
            Ok(json!({"SpecialToken": {"id": content, "type_id": 0}}))
        };
        let bos_piece = if add_bos { Some(piece(&bos, "bos")?) } else { None };
        let eos_piece = if add_eos { Some(piece(&eos, "eos")?) } else { None };
        for (seq, ids) in [(&mut single, &["A"][..]), (&mut pair, &["A", "B"][..])] {
            for (type_id, id) in ids.iter().enumerate() {
                seq.extend(bos_piece.clone());
                seq.push(json!({"Sequence": {"id": id, "type_id": type_id}}));
                seq.extend(eos_piece.clone());
            }
        }
        json!({"type": "TemplateProcessing", "single": single, "pair": pair, "special_tokens": specials})
    } else {
        Json::Null
    };

    Ok(json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": pre_tokenizer(file.get_str("tokenizer.ggml.pre")?)?,
        "post_processor": post_processor,
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {
            "type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
            "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
            "vocab": vocab, "merges": merges,
        },
    }))
}

/// The tokenizer the file describes, with its special token ids.
pub fn tokenizer(file: &GgufFile) -> Result<GgufTokenizer> {
    let json = tokenizer_json(file)?;
    let bytes = serde_json::to_vec(&json).map_err(|e| err(format!("cannot serialize the tokenizer: {e}")))?;
    let tokenizer = Tokenizer::from_bytes(&bytes).map_err(|e| err(format!("cannot build the tokenizer from the file's vocabulary: {e}")))?;
    let vocab = tokenizer.get_vocab_size(true) as u64;
    let id = |key: &str| -> Result<Option<u32>> {
        match file.get_u64(key)? {
            Some(v) if v >= vocab => Err(err(format!("{key} {v} is outside the vocabulary of {vocab} tokens"))),
            v => Ok(v.map(|v| v as u32)),
        }
    };
    Ok(GgufTokenizer {
        tokenizer,
        bos_id: id("tokenizer.ggml.bos_token_id")?,
        eos_id: id("tokenizer.ggml.eos_token_id")?,
        pad_id: id("tokenizer.ggml.padding_token_id")?,
        unk_id: id("tokenizer.ggml.unknown_token_id")?,
        add_bos: file.get_bool("tokenizer.ggml.add_bos_token")?.unwrap_or(false),
        add_eos: file.get_bool("tokenizer.ggml.add_eos_token")?.unwrap_or(false),
        chat_template: file.get_str("tokenizer.chat_template")?.map(str::to_string),
    })
}
