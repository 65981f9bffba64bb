//! Frozen text features for the proxy scorer: the first K layers of a Llama (SmolLM2-135M from
//! its GGUF), the caption as plain text, the final RMSNorm over the last layer's hidden states,
//! averaged over the caption's tokens. Computed once per caption and cached
//! ([`TextFeatures`], a safetensors file with the captions in its metadata).

use std::collections::HashMap;

use burn::tensor::backend::Backend;
use safetensors::Dtype;

use super::proxy_clip::{TextFeatureSpec, POOL};
use crate::checkpoint::{encode_f32, StoredDtype, Weights};
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
const FEATURES_Q8: &str = "features_q8";
const FEATURES_SCALE: &str = "features_scale";
const FEATURES_CENTER: &str = "features_center";
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
        self.serialize(vec![(FEATURES, Dtype::F32, vec![self.len(), self.spec.dim], bytes)], &[])
    }

    /// A quarter of the f32 size: each row as 8-bit codes around the features' mean,
    /// `row = features_center + features_scale[row] · features_q8[row]` (one scale per row, its
    /// largest deviation / 127), plus `extra` f32 tensors. Mean-pooled LLM features share a large
    /// mean, so coding the deviations keeps what tells captions apart.
    pub fn to_safetensors_q8_with(&self, extra: &[(&str, Vec<usize>, &[f32])]) -> Result<Vec<u8>> {
        self.to_safetensors_q8_with_raw(extra, Vec::new())
    }

    /// [`TextFeatures::to_safetensors_q8_with`], plus tensors already coded (`raw`: name, dtype,
    /// shape, little-endian bytes).
    pub fn to_safetensors_q8_with_raw(&self, extra: &[(&str, Vec<usize>, &[f32])], raw: Vec<(&str, Dtype, Vec<usize>, Vec<u8>)>) -> Result<Vec<u8>> {
        let (n, d) = (self.len(), self.spec.dim);
        if let Some(v) = self.values.iter().find(|v| !v.is_finite()) {
            return Err(Error::input(format!("a text feature ({v}) is not finite")));
        }
        let mut center = vec![0.0f64; d];
        for row in self.values.chunks(d) {
            center.iter_mut().zip(row).for_each(|(c, v)| *c += *v as f64 / n.max(1) as f64);
        }
        let center: Vec<f32> = center.into_iter().map(|c| c as f32).collect();
        let (mut codes, mut scales) = (Vec::with_capacity(n * d), Vec::with_capacity(n));
        for row in self.values.chunks(d) {
            let scale = row.iter().zip(&center).map(|(v, c)| (v - c).abs()).fold(0.0f32, f32::max) / 127.0;
            codes.extend(row.iter().zip(&center).map(|(v, c)| if scale > 0.0 { ((v - c) / scale).round().clamp(-127.0, 127.0) as i8 as u8 } else { 0 }));
            scales.push(scale);
        }
        let mut tensors = vec![
            (FEATURES_Q8, Dtype::I8, vec![n, d], codes),
            (FEATURES_SCALE, Dtype::F32, vec![n], encode_f32(&scales, StoredDtype::F32)),
            (FEATURES_CENTER, Dtype::F32, vec![d], encode_f32(&center, StoredDtype::F32)),
        ];
        tensors.extend(raw);
        self.serialize(tensors, extra)
    }

    fn serialize(&self, features: Vec<(&str, Dtype, Vec<usize>, Vec<u8>)>, extra: &[(&str, Vec<usize>, &[f32])]) -> Result<Vec<u8>> {
        let err = |e: safetensors::SafeTensorError| Error::Io(format!("text features: {e:?}"));
        let extra_bytes: Vec<Vec<u8>> = extra.iter().map(|(_, _, v)| v.iter().flat_map(|x| x.to_le_bytes()).collect()).collect();
        let mut views = Vec::new();
        for (name, dtype, shape, bytes) in &features {
            views.push((*name, safetensors::tensor::TensorView::new(*dtype, shape.clone(), bytes).map_err(err)?));
        }
        for ((name, shape, _), b) in extra.iter().zip(&extra_bytes) {
            views.push((*name, safetensors::tensor::TensorView::new(Dtype::F32, shape.clone(), b).map_err(err)?));
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
        let values = match w.read_f32(FEATURES) {
            Some(v) => v.map_err(|d| bad(format!("{FEATURES} has dtype {d}")))?,
            None if w.contains(FEATURES_Q8) => read_q8(&w, captions.len(), spec.dim).map_err(bad)?,
            None => return Err(bad(format!("no {FEATURES} tensor (nor {FEATURES_Q8})"))),
        };
        Ok((Self::new(spec, captions, values).map_err(|e| bad(e.to_string()))?, w))
    }
}

/// The features of [`TextFeatures::to_safetensors_q8_with`], `[n, d]`.
fn read_q8(w: &Weights, n: usize, d: usize) -> std::result::Result<Vec<f32>, String> {
    let float = |name: &str, len: usize| -> std::result::Result<Vec<f32>, String> {
        let v = w.read_f32(name).ok_or(format!("{FEATURES_Q8} without {name}"))?.map_err(|t| format!("{name} has dtype {t}"))?;
        if v.len() != len {
            return Err(format!("{name} has {} values, not {len}", v.len()));
        }
        if v.iter().any(|x| !x.is_finite()) {
            return Err(format!("{name} has non-finite values"));
        }
        Ok(v)
    };
    let (scale, center) = (float(FEATURES_SCALE, n)?, float(FEATURES_CENTER, d)?);
    if w.dtype(FEATURES_Q8) != Some(StoredDtype::I8) || w.shape(FEATURES_Q8) != Some(&[n, d][..]) {
        return Err(format!("{FEATURES_Q8} must be I8 [{n}, {d}] ({n} captions of dimension {d})"));
    }
    let codes = w.raw(FEATURES_Q8).expect("present");
    Ok(codes.chunks(d).zip(&scale).flat_map(|(row, s)| row.iter().zip(&center).map(move |(q, c)| c + s * (*q as i8) as f32)).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn features(values: Vec<f32>) -> TextFeatures {
        let spec = TextFeatureSpec { gguf_file: "x.gguf".into(), gguf_sha256: "0".into(), layers: 1, dim: 3, pool: POOL.into() };
        let captions = (0..values.len() / 3).map(|i| format!("caption {i}")).collect();
        TextFeatures::new(spec, captions, values).unwrap()
    }

    #[test]
    fn q8_rows_come_back_within_half_a_step_of_their_scale() {
        // A large shared offset (as mean-pooled LLM features have) with small differences on top.
        let f = features(vec![100.0, -50.0, 3.0, 100.5, -50.25, 3.1, 99.0, -49.0, 2.0, 100.0, -50.0, 3.0]);
        let back = TextFeatures::from_safetensors("t", &f.to_safetensors_q8_with(&[]).unwrap()).unwrap();
        assert_eq!(back.captions, f.captions);
        let d = 3;
        let center: Vec<f32> = (0..d).map(|j| f.values.iter().skip(j).step_by(d).sum::<f32>() / 4.0).collect();
        for (a, b) in f.values.chunks(d).zip(back.values.chunks(d)) {
            let step = a.iter().zip(&center).map(|(v, c)| (v - c).abs()).fold(0.0, f32::max) / 127.0;
            for (x, y) in a.iter().zip(b) {
                assert!((x - y).abs() <= step * 0.5 + 1e-4, "{a:?} {b:?}");
            }
        }
        // The f32 layout still reads.
        assert_eq!(TextFeatures::from_safetensors("t", &f.to_safetensors().unwrap()).unwrap(), f);
    }

    #[test]
    fn broken_q8_files_are_refused_by_name() {
        let f = features(vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
        let bytes = f.to_safetensors_q8_with(&[]).unwrap();
        let w = Weights::from_safetensors("t", bytes.clone()).unwrap();
        let rewrite = |drop: &str, replace: Option<(&str, Dtype, Vec<usize>, Vec<u8>)>| {
            let mut views = Vec::new();
            for name in [FEATURES_Q8, FEATURES_SCALE, FEATURES_CENTER] {
                if name == drop {
                    if let Some(r) = &replace {
                        views.push((r.0.to_string(), r.1, r.2.clone(), r.3.clone()));
                    }
                    continue;
                }
                views.push((name.to_string(), w.dtype(name).unwrap().safetensors().unwrap(), w.shape(name).unwrap().to_vec(), w.raw(name).unwrap().to_vec()));
            }
            let tv: Vec<_> = views.iter().map(|(n, d, s, b)| (n.as_str(), safetensors::tensor::TensorView::new(*d, s.clone(), b).unwrap())).collect();
            let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
            let out = safetensors::serialize(tv, meta.metadata().clone()).unwrap();
            TextFeatures::from_safetensors("index.safetensors", &out).unwrap_err().to_string()
        };
        assert!(rewrite(FEATURES_SCALE, None).contains("features_scale"));
        assert!(rewrite(FEATURES_Q8, None).contains("no features tensor"));
        let nan = f32::NAN.to_le_bytes().repeat(3);
        assert!(rewrite(FEATURES_CENTER, Some((FEATURES_CENTER, Dtype::F32, vec![3], nan))).contains("non-finite"));
        assert!(rewrite(FEATURES_Q8, Some((FEATURES_Q8, Dtype::I8, vec![3, 2], vec![0; 6]))).contains("I8 [2, 3]"));
        assert!(features(vec![f32::INFINITY, 0.0, 0.0]).to_safetensors_q8_with(&[]).is_err());
    }
}
