//! Frozen text features for the proxy scorer: the first K layers of a Llama (SmolLM2-135M from
//! its GGUF), the caption as plain text, the final RMSNorm over the last layer's hidden states,
//! averaged over the caption's tokens. Computed once per caption and cached
//! ([`TextFeatures`], a safetensors file with the captions in its metadata).

use std::collections::HashMap;

use burn::tensor::backend::Backend;

use super::proxy_clip::{TextFeatureSpec, POOL};
use crate::checkpoint::Weights;
use crate::error::{Error, Result};
use crate::gguf::{self, GgufTokenizer};
use crate::llama::{Llama, LlamaConfig};

/// Tokens kept per caption (longer ones are cut; emoji captions are far shorter).
pub const MAX_CAPTION_TOKENS: usize = 96;
/// Padded tokens per forward batch.
const BATCH_TOKENS: usize = 2048;

/// Mean over each sequence's tokens of the LLM's final-norm hidden states: `[n, hidden]`, rows in
/// the order of `ids`. Sequences are batched by length (right-padded; under the causal mask a
/// padded position never influences a real one). `progress(done)` after every batch.
pub fn pooled_features<B: Backend>(llm: &Llama<B>, ids: &[Vec<u32>], mut progress: impl FnMut(usize)) -> Result<Vec<f32>> {
    let hidden = llm.config.hidden_size;
    if let Some(i) = ids.iter().position(|s| s.is_empty()) {
        return Err(Error::input(format!("text {i} has no tokens")));
    }
    let vocab = llm.config.vocab_size as u32;
    if let Some(&bad) = ids.iter().flatten().find(|&&t| t >= vocab) {
        return Err(Error::input(format!("token id {bad} is outside the LLM's vocabulary of {vocab}")));
    }
    let mut order: Vec<usize> = (0..ids.len()).collect();
    order.sort_by_key(|&i| (std::cmp::Reverse(ids[i].len().min(MAX_CAPTION_TOKENS)), i));
    let device = llm.embed_tokens.table().device();
    let mut out = vec![0f32; ids.len() * hidden];
    let mut done = 0;
    let mut start = 0;
    while start < order.len() {
        let t = ids[order[start]].len().min(MAX_CAPTION_TOKENS);
        let rows = (BATCH_TOKENS / t).clamp(1, 128).min(order.len() - start);
        let batch = &order[start..start + rows];
        let seqs: Vec<&[u32]> = batch.iter().map(|&i| &ids[i][..ids[i].len().min(t)]).collect();
        let pooled = crate::structured::mean_pooled(llm, &seqs, &device);
        let values = pooled.into_data().convert::<f32>().into_vec::<f32>().expect("f32 data");
        for (k, &i) in batch.iter().enumerate() {
            out[i * hidden..(i + 1) * hidden].copy_from_slice(&values[k * hidden..(k + 1) * hidden]);
        }
        done += rows;
        progress(done);
        start += rows;
    }
    if out.iter().any(|v| !v.is_finite()) {
        return Err(Error::input("the LLM's text features contain NaN or infinite values"));
    }
    Ok(out)
}

/// The frozen text tower: the LLM's first K layers and its tokenizer.
pub struct ProxyTextEncoder<B: Backend> {
    pub llm: Llama<B>,
    pub tokenizer: GgufTokenizer,
    pub spec: TextFeatureSpec,
}

impl<B: Backend> ProxyTextEncoder<B> {
    /// The first `layers` layers of the Llama GGUF `bytes` (file name `file`, for the spec).
    pub fn from_gguf(file: &str, bytes: &[u8], layers: usize, device: &B::Device) -> Result<Self> {
        let sha256 = crate::convert::sha256_hex(bytes);
        let parsed = gguf::GgufFile::parse(bytes)?;
        let (config, weights) = gguf::llama_weights(&parsed, Some(layers))?;
        let tokenizer = gguf::tokenizer(&parsed)?;
        let spec = TextFeatureSpec { gguf_file: file.to_string(), gguf_sha256: sha256, layers, dim: config.hidden_size, pool: POOL.into() };
        Self::from_parts(&weights, &config, tokenizer, spec, device)
    }

    /// From an LLM already in memory (HF Llama keys); `spec` must describe it.
    pub fn from_parts(
        weights: &Weights,
        config: &LlamaConfig,
        tokenizer: GgufTokenizer,
        spec: TextFeatureSpec,
        device: &B::Device,
    ) -> Result<Self> {
        if spec.layers != config.num_hidden_layers || spec.dim != config.hidden_size {
            return Err(Error::input(format!(
                "text spec ({} layers, dim {}) does not describe the LLM ({} layers, hidden {})",
                spec.layers, spec.dim, config.num_hidden_layers, config.hidden_size
            )));
        }
        let llm = Llama::from_weights(weights, config, device)?;
        Ok(Self { llm, tokenizer, spec })
    }

    /// The caption's token ids: plain text, special tokens only as the tokenizer adds them.
    pub fn tokenize(&self, caption: &str) -> Result<Vec<u32>> {
        let mut ids = self.tokenizer.encode(caption, true)?;
        ids.truncate(MAX_CAPTION_TOKENS);
        if ids.is_empty() {
            return Err(Error::input(format!("caption {caption:?} has no tokens")));
        }
        Ok(ids)
    }

    /// Raw pooled features `[n, dim]` of `captions`.
    pub fn features(&self, captions: &[String], progress: impl FnMut(usize)) -> Result<Vec<f32>> {
        let ids = captions.iter().map(|c| self.tokenize(c)).collect::<Result<Vec<_>>>()?;
        pooled_features(&self.llm, &ids, progress)
    }
}

/// Cached raw text features by caption (what `proxy_text_cache.safetensors` holds).
#[derive(Debug, Clone, PartialEq)]
pub struct TextFeatures {
    pub spec: TextFeatureSpec,
    pub captions: Vec<String>,
    /// `[captions.len(), spec.dim]`.
    pub values: Vec<f32>,
    index: HashMap<String, usize>,
}

const FEATURES: &str = "features";
const META_SPEC: &str = "proxy_text_spec";
const META_CAPTIONS: &str = "captions";

impl TextFeatures {
    pub fn new(spec: TextFeatureSpec, captions: Vec<String>, values: Vec<f32>) -> Result<Self> {
        if values.len() != captions.len() * spec.dim {
            return Err(Error::input(format!(
                "{} feature values for {} captions of dimension {}",
                values.len(),
                captions.len(),
                spec.dim
            )));
        }
        let mut index = HashMap::with_capacity(captions.len());
        for (i, c) in captions.iter().enumerate() {
            if index.insert(c.clone(), i).is_some() {
                return Err(Error::input(format!("caption {c:?} is cached twice")));
            }
        }
        Ok(Self { spec, captions, values, index })
    }

    pub fn empty(spec: TextFeatureSpec) -> Self {
        Self { spec, captions: Vec::new(), values: Vec::new(), index: HashMap::new() }
    }

    pub fn len(&self) -> usize {
        self.captions.len()
    }

    pub fn is_empty(&self) -> bool {
        self.captions.is_empty()
    }

    pub fn row_of(&self, caption: &str) -> Option<usize> {
        self.index.get(caption).copied()
    }

    pub fn get(&self, caption: &str) -> Option<&[f32]> {
        let d = self.spec.dim;
        self.row_of(caption).map(|i| &self.values[i * d..(i + 1) * d])
    }

    /// Distinct captions of `wanted` that are not cached yet, in first-seen order.
    pub fn missing<'a>(&self, wanted: impl IntoIterator<Item = &'a String>) -> Vec<String> {
        let mut seen = std::collections::HashSet::new();
        wanted.into_iter().filter(|c| !self.index.contains_key(*c) && seen.insert(c.as_str())).cloned().collect()
    }

    /// Adds captions (not yet cached) with their features `[n, dim]`.
    pub fn extend(&mut self, captions: Vec<String>, values: Vec<f32>) -> Result<()> {
        let mut all_c = std::mem::take(&mut self.captions);
        let mut all_v = std::mem::take(&mut self.values);
        all_c.extend(captions);
        all_v.extend(values);
        *self = Self::new(self.spec.clone(), all_c, all_v)?;
        Ok(())
    }

    /// Rows `[n, dim]` of `captions` (each must be cached).
    pub fn rows(&self, captions: &[String]) -> Result<Vec<f32>> {
        let mut out = Vec::with_capacity(captions.len() * self.spec.dim);
        for c in captions {
            out.extend_from_slice(self.get(c).ok_or_else(|| Error::input(format!("no text features for {c:?}")))?);
        }
        Ok(out)
    }

    /// A safetensors file: `features` f32 `[n, dim]`, the spec and the captions in its metadata.
    pub fn to_safetensors(&self) -> Result<Vec<u8>> {
        let bytes: Vec<u8> = self.values.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.serialize(safetensors::Dtype::F32, &bytes, &[])
    }

    /// [`TextFeatures::to_safetensors`] with the features in f16 (half the size, for shipping).
    pub fn to_safetensors_f16(&self) -> Result<Vec<u8>> {
        self.to_safetensors_f16_with(&[])
    }

    /// [`TextFeatures::to_safetensors_f16`] plus `extra` f32 tensors (name, shape, values).
    pub fn to_safetensors_f16_with(&self, extra: &[(&str, Vec<usize>, &[f32])]) -> Result<Vec<u8>> {
        if let Some(v) = self.values.iter().find(|v| v.abs() > f32::from(half::f16::MAX)) {
            return Err(Error::input(format!("a text feature ({v}) is out of f16 range")));
        }
        let bytes: Vec<u8> = self.values.iter().flat_map(|v| half::f16::from_f32(*v).to_le_bytes()).collect();
        self.serialize(safetensors::Dtype::F16, &bytes, extra)
    }

    fn serialize(&self, dtype: safetensors::Dtype, bytes: &[u8], extra: &[(&str, Vec<usize>, &[f32])]) -> Result<Vec<u8>> {
        let err = |e: safetensors::SafeTensorError| Error::Io(format!("text features: {e:?}"));
        let extra_bytes: Vec<Vec<u8>> = extra.iter().map(|(_, _, v)| v.iter().flat_map(|x| x.to_le_bytes()).collect()).collect();
        let mut views = vec![(FEATURES, safetensors::tensor::TensorView::new(dtype, vec![self.len(), self.spec.dim], bytes).map_err(err)?)];
        for ((name, shape, _), b) in extra.iter().zip(&extra_bytes) {
            views.push((*name, safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.clone(), b).map_err(err)?));
        }
        let meta = HashMap::from([
            (META_SPEC.to_string(), serde_json::to_string(&self.spec).expect("serialisable")),
            (META_CAPTIONS.to_string(), serde_json::to_string(&self.captions).expect("serialisable")),
        ]);
        safetensors::serialize(views, Some(meta)).map_err(err)
    }

    pub fn from_safetensors(source: &str, bytes: &[u8]) -> Result<Self> {
        Self::read_safetensors(source, bytes).map(|(features, _)| features)
    }

    /// [`TextFeatures::from_safetensors`], with every tensor of the file for whatever else it holds.
    pub fn read_safetensors(source: &str, bytes: &[u8]) -> Result<(Self, Weights)> {
        let bad = |m: String| Error::checkpoint(source, m);
        let (_, meta) = safetensors::SafeTensors::read_metadata(bytes).map_err(|e| bad(format!("not a safetensors file: {e:?}")))?;
        let m = meta.metadata().clone().unwrap_or_default();
        let spec: TextFeatureSpec = serde_json::from_str(m.get(META_SPEC).ok_or_else(|| bad(format!("no {META_SPEC} metadata")))?)
            .map_err(|e| bad(format!("{META_SPEC}: {e}")))?;
        let captions: Vec<String> =
            serde_json::from_str(m.get(META_CAPTIONS).ok_or_else(|| bad(format!("no {META_CAPTIONS} metadata")))?)
                .map_err(|e| bad(format!("{META_CAPTIONS}: {e}")))?;
        let w = Weights::from_safetensors(source, bytes.to_vec())?;
        let values = w
            .read_f32(FEATURES)
            .ok_or_else(|| bad(format!("no {FEATURES} tensor")))?
            .map_err(|d| bad(format!("{FEATURES} has dtype {d}")))?;
        Ok((Self::new(spec, captions, values).map_err(|e| bad(e.to_string()))?, w))
    }
}
