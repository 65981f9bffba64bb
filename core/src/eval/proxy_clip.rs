//! The proxy CLIP: two small towers trained contrastively on the emoji set (an evaluation
//! instrument, not CLIP). Text: frozen LLM features (see [`super::text`]), standardised with the
//! statistics of the training captions, then an MLP. Image: an area-downsampled RGB thumbnail,
//! flattened, then an MLP. Both end L2-normalised; the logits are `exp(logit_scale) · cos`.

use burn::module::{Module, Param};
use burn::tensor::activation::{gelu, log_softmax};
use burn::tensor::{backend::Backend, ElementConversion, Tensor, TensorData};
use serde::{Deserialize, Serialize};

use crate::checkpoint::{encode_f32, init_values, ParamKeys, StoredDtype, VarBuilder, Weights};
use crate::data::pixels::{resize_square, Rgb};
use crate::error::{Error, Result};
use crate::layers::Linear;

/// `kind` in a proxy scorer's config.json.
pub const PROXY_CLIP_KIND: &str = "rfgen-proxy-clip";
/// CLIP's initial temperature.
pub const INIT_TEMPERATURE: f64 = 0.07;
/// The logit scale is clamped to at most 100 (CLIP).
pub const MAX_LOGIT_SCALE: f64 = 100.0;
/// Stored beside the module's parameters: the per-dimension standardisation of the text features.
pub const TEXT_MEAN: &str = "text_norm.mean";
pub const TEXT_STD: &str = "text_norm.std";

/// Where the frozen text features come from: the first `layers` decoder layers of a Llama GGUF,
/// the caption tokenised as plain text (no chat template), the final RMSNorm applied to the last
/// layer's hidden states, averaged over the tokens.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TextFeatureSpec {
    pub gguf_file: String,
    pub gguf_sha256: String,
    pub layers: usize,
    /// The LLM's hidden size (the feature width).
    pub dim: usize,
    /// `"final-norm-mean"`.
    pub pool: String,
}

pub const POOL: &str = "final-norm-mean";

/// A proxy scorer's `config.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProxyClipConfig {
    /// [`PROXY_CLIP_KIND`].
    pub kind: String,
    /// What this model is (a proxy trained on the evaluation data, not CLIP).
    #[serde(default)]
    pub note: String,
    /// Side of the square RGB thumbnail the image tower reads.
    pub image_size: usize,
    /// Widths of the image MLP's hidden layers (its layers: these + the output layer).
    pub image_hidden: Vec<usize>,
    /// Widths of the text MLP's hidden layers.
    pub text_hidden: Vec<usize>,
    /// Width of the joint embedding.
    pub embed_dim: usize,
    pub text: TextFeatureSpec,
    /// How it was trained (informational).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub training: Option<serde_json::Value>,
}

impl ProxyClipConfig {
    pub fn new(text: TextFeatureSpec) -> Self {
        Self {
            kind: PROXY_CLIP_KIND.into(),
            note: "proxy image-text scorer trained by rfgen on every image of its dataset (train and held-out \
                   splits); an evaluation instrument, not CLIP"
                .into(),
            image_size: 32,
            image_hidden: vec![1024, 512],
            text_hidden: vec![512],
            embed_dim: 128,
            text,
            training: None,
        }
    }

    pub fn validate(&self, name: &str) -> Result<()> {
        let bad = |m: String| Err(Error::config(name, m));
        if self.kind != PROXY_CLIP_KIND {
            return bad(format!("kind is {:?}, expected {PROXY_CLIP_KIND:?} (a proxy-clip scorer)", self.kind));
        }
        if self.image_size == 0 || self.image_size > 256 {
            return bad(format!("image_size {} must be between 1 and 256", self.image_size));
        }
        if self.embed_dim == 0 || self.text.dim == 0 || self.text.layers == 0 {
            return bad("embed_dim, text.dim and text.layers must be positive".into());
        }
        if self.image_hidden.iter().chain(&self.text_hidden).any(|&w| w == 0) {
            return bad("hidden widths must be positive".into());
        }
        if self.text.pool != POOL {
            return bad(format!("text.pool {:?} is not supported (expected {POOL:?})", self.text.pool));
        }
        Ok(())
    }

    /// Inputs of the image tower (`3 · size²`).
    pub fn image_inputs(&self) -> usize {
        3 * self.image_size * self.image_size
    }

    /// Every module parameter: (key, stored shape).
    pub fn param_shapes(&self) -> Vec<(String, Vec<usize>)> {
        let mut out = Vec::new();
        for (tower, d_in, hidden) in
            [("image_proj", self.image_inputs(), &self.image_hidden), ("text_proj", self.text.dim, &self.text_hidden)]
        {
            let widths: Vec<usize> = std::iter::once(d_in).chain(hidden.iter().copied()).chain([self.embed_dim]).collect();
            for (k, w) in widths.windows(2).enumerate() {
                out.push((format!("{tower}.{k}.weight"), vec![w[1], w[0]]));
                out.push((format!("{tower}.{k}.bias"), vec![w[1]]));
            }
        }
        out.push(("logit_scale".into(), vec![1]));
        out
    }

    /// Fresh weights: N(0, 1/fan_in) matrices, zero biases, `logit_scale = ln(1/0.07)`, identity
    /// text standardisation (the trainer replaces it with the captions' statistics).
    pub fn init_weights(&self, seed: u64) -> Weights {
        let mut w = Weights::new();
        for (key, shape) in self.param_shapes() {
            let values = if key == "logit_scale" {
                vec![(1.0 / INIT_TEMPERATURE).ln() as f32]
            } else {
                init_values(seed, &format!("proxy_clip.{key}"), &shape)
            };
            w.insert_f32(&key, shape, values);
        }
        w.insert_f32(TEXT_MEAN, vec![self.text.dim], vec![0.0; self.text.dim]);
        w.insert_f32(TEXT_STD, vec![self.text.dim], vec![1.0; self.text.dim]);
        w
    }
}

/// The two towers and the temperature.
#[derive(Module, Debug)]
pub struct ProxyClip<B: Backend> {
    pub image_proj: Vec<Linear<B>>,
    pub text_proj: Vec<Linear<B>>,
    pub logit_scale: Param<Tensor<B, 1>>,
}

fn mlp<B: Backend>(layers: &[Linear<B>], mut x: Tensor<B, 2>) -> Tensor<B, 2> {
    for (k, layer) in layers.iter().enumerate() {
        x = layer.forward(x);
        if k + 1 < layers.len() {
            x = gelu(x);
        }
    }
    x
}

/// Rows scaled to unit L2 norm.
pub fn l2_normalize<B: Backend>(x: Tensor<B, 2>) -> Tensor<B, 2> {
    let norm = x.clone().powf_scalar(2.0).sum_dim(1).add_scalar(1e-12).sqrt();
    x / norm
}

impl<B: Backend> ProxyClip<B> {
    pub fn build(vb: &VarBuilder<B>, c: &ProxyClipConfig) -> Self {
        let tower = |name: &str, d_in: usize, hidden: &[usize]| -> Vec<Linear<B>> {
            let widths: Vec<usize> = std::iter::once(d_in).chain(hidden.iter().copied()).chain([c.embed_dim]).collect();
            widths.windows(2).enumerate().map(|(k, w)| Linear::load(&vb.pp(name).pp(k), w[0], w[1], true)).collect()
        };
        Self {
            image_proj: tower("image_proj", c.image_inputs(), &c.image_hidden),
            text_proj: tower("text_proj", c.text.dim, &c.text_hidden),
            logit_scale: vb.param("logit_scale", [1]),
        }
    }

    /// `[b, 3·s²]` thumbnails (see [`image_input`]) → `[b, embed_dim]`, unit norm.
    pub fn embed_images(&self, x: Tensor<B, 2>) -> Tensor<B, 2> {
        l2_normalize(mlp(&self.image_proj, x))
    }

    /// `[b, text_dim]` standardised text features → `[b, embed_dim]`, unit norm.
    pub fn embed_texts(&self, x: Tensor<B, 2>) -> Tensor<B, 2> {
        l2_normalize(mlp(&self.text_proj, x))
    }

    /// `exp(logit_scale)`, clamped to [`MAX_LOGIT_SCALE`].
    pub fn scale(&self) -> Tensor<B, 1> {
        self.logit_scale.val().clamp_max(MAX_LOGIT_SCALE.ln()).exp()
    }

    /// Symmetric InfoNCE of a batch of matching pairs (row `i` of both is a pair): the mean of the
    /// image→text and text→image cross-entropies. Also returns the logits `[b, b]`.
    pub fn contrastive_loss(&self, images: Tensor<B, 2>, texts: Tensor<B, 2>) -> (Tensor<B, 1>, Tensor<B, 2>) {
        let (i, t) = (self.embed_images(images), self.embed_texts(texts));
        let b = i.dims()[0];
        let logits = i.matmul(t.transpose()) * self.scale().unsqueeze::<2>();
        let eye = Tensor::<B, 2>::from_data(
            TensorData::new((0..b * b).map(|k| if k / b == k % b { 1.0f32 } else { 0.0 }).collect::<Vec<_>>(), [b, b]),
            &logits.device(),
        );
        let diag_rows = (log_softmax(logits.clone(), 1) * eye.clone()).sum().div_scalar(b as f64);
        let diag_cols = (log_softmax(logits.clone(), 0) * eye).sum().div_scalar(b as f64);
        let loss = (diag_rows + diag_cols).div_scalar(-2.0);
        (loss, logits)
    }
}

/// In-batch image→text top-1 accuracy of `[b, b]` logits (row `i`'s own column is `i`).
pub fn batch_accuracy<B: Backend>(logits: Tensor<B, 2>) -> f64 {
    let b = logits.dims()[0];
    let best: Vec<i64> =
        logits.argmax(1).into_data().convert::<i64>().into_vec::<i64>().expect("int data");
    best.iter().enumerate().filter(|(i, &j)| *i as i64 == j).count() as f64 / b.max(1) as f64
}

/// An RGB8 image `[side, side, 3]` as the image tower's input: area-resized to `size` (bilinear
/// when larger), `x / 127.5 − 1`, flattened `[size, size, 3]`.
pub fn image_input(rgb: &[u8], side: usize, size: usize) -> Vec<f32> {
    let img = Rgb { width: side, height: side, data: rgb.to_vec() };
    resize_square(&img, size).data.iter().map(|&v| v as f32 / 127.5 - 1.0).collect()
}

/// `rgb` `[side, side, 3]` moved by `(dx, dy)` pixels, uncovered pixels white.
pub fn shift_image(rgb: &[u8], side: usize, dx: i64, dy: i64) -> Vec<u8> {
    let mut out = vec![255u8; rgb.len()];
    let s = side as i64;
    for y in 0..s {
        let sy = y - dy;
        if !(0..s).contains(&sy) {
            continue;
        }
        for x in 0..s {
            let sx = x - dx;
            if (0..s).contains(&sx) {
                let (d, o) = (((y * s + x) * 3) as usize, ((sy * s + sx) * 3) as usize);
                out[d..d + 3].copy_from_slice(&rgb[o..o + 3]);
            }
        }
    }
    out
}

/// A loaded scorer: the module plus the text standardisation.
pub struct ProxyScorer<B: Backend> {
    pub config: ProxyClipConfig,
    pub model: ProxyClip<B>,
    pub keys: ParamKeys,
    pub text_mean: Vec<f32>,
    pub text_std: Vec<f32>,
    pub device: B::Device,
}

fn stat(weights: &Weights, name: &str, dim: usize) -> Result<Vec<f32>> {
    let v = weights
        .read_f32(name)
        .ok_or_else(|| Error::checkpoint("proxy-clip model.safetensors", format!("{name} is missing")))?
        .map_err(|d| Error::checkpoint("proxy-clip model.safetensors", format!("{name} has dtype {d}")))?;
    if v.len() != dim || v.iter().any(|x| !x.is_finite()) {
        return Err(Error::checkpoint("proxy-clip model.safetensors", format!("{name} must hold {dim} finite values")));
    }
    Ok(v)
}

impl<B: Backend> ProxyScorer<B> {
    /// Builds the scorer from `weights` (every parameter, the text statistics; nothing else).
    pub fn load(weights: &Weights, config: &ProxyClipConfig, device: &B::Device) -> Result<Self> {
        config.validate("proxy-clip config.json")?;
        let text_mean = stat(weights, TEXT_MEAN, config.text.dim)?;
        let text_std = stat(weights, TEXT_STD, config.text.dim)?;
        if text_std.iter().any(|&s| s <= 0.0) {
            return Err(Error::checkpoint("proxy-clip model.safetensors", format!("{TEXT_STD} must be positive")));
        }
        let vb = VarBuilder::<B>::new(weights, device);
        let model = ProxyClip::build(&vb, config);
        let keys = vb.param_keys();
        vb.finish(&["text_norm."])?;
        Ok(Self { config: config.clone(), model, keys, text_mean, text_std, device: device.clone() })
    }

    /// Raw LLM features `[n, dim]` standardised with the stored statistics.
    pub fn standardize(&self, features: &[f32]) -> Vec<f32> {
        standardize(features, &self.text_mean, &self.text_std)
    }

    /// Unit-norm embeddings `[n, embed_dim]` of raw text features `[n, dim]`.
    pub fn embed_text_features(&self, features: &[f32]) -> Vec<f32> {
        let dim = self.config.text.dim;
        let n = features.len() / dim;
        let mut out = Vec::with_capacity(n * self.config.embed_dim);
        for chunk in self.standardize(features).chunks(256 * dim) {
            let rows = chunk.len() / dim;
            let x = Tensor::<B, 2>::from_data(TensorData::new(chunk.to_vec(), [rows, dim]), &self.device);
            out.extend(to_vec(self.model.embed_texts(x)));
        }
        out
    }

    /// Unit-norm embeddings `[n, embed_dim]` of RGB8 images `[side, side, 3]` (any side).
    pub fn embed_images(&self, images: &[Vec<u8>], side: usize) -> Vec<f32> {
        let size = self.config.image_size;
        let mut out = Vec::with_capacity(images.len() * self.config.embed_dim);
        for chunk in images.chunks(256) {
            let x: Vec<f32> = chunk.iter().flat_map(|img| image_input(img, side, size)).collect();
            let x = Tensor::<B, 2>::from_data(TensorData::new(x, [chunk.len(), 3 * size * size]), &self.device);
            out.extend(to_vec(self.model.embed_images(x)));
        }
        out
    }

    /// The current temperature (`1 / exp(logit_scale)`).
    pub fn temperature(&self) -> f64 {
        1.0 / self.model.scale().into_scalar().elem::<f64>()
    }
}

fn to_vec<B: Backend, const D: usize>(t: Tensor<B, D>) -> Vec<f32> {
    t.into_data().convert::<f32>().into_vec::<f32>().expect("f32 data")
}

/// `(x − mean) / std` per dimension of rows `[n, dim]`.
pub fn standardize(features: &[f32], mean: &[f32], std: &[f32]) -> Vec<f32> {
    let dim = mean.len();
    features.iter().enumerate().map(|(k, &x)| (x - mean[k % dim]) / std[k % dim]).collect()
}

/// Per-dimension mean and standard deviation (floored at 1e-6) of rows `[n, dim]`.
pub fn feature_stats(features: &[f32], dim: usize) -> (Vec<f32>, Vec<f32>) {
    let n = (features.len() / dim).max(1) as f64;
    let mut mean = vec![0f64; dim];
    for row in features.chunks(dim) {
        for (m, &x) in mean.iter_mut().zip(row) {
            *m += x as f64;
        }
    }
    mean.iter_mut().for_each(|m| *m /= n);
    let mut var = vec![0f64; dim];
    for row in features.chunks(dim) {
        for ((v, &x), m) in var.iter_mut().zip(row).zip(&mean) {
            *v += (x as f64 - m).powi(2);
        }
    }
    let std = var.iter().map(|v| ((v / n).sqrt() as f32).max(1e-6)).collect();
    (mean.into_iter().map(|m| m as f32).collect(), std)
}

/// The scorer's weights for model.safetensors: the module's parameters (by checkpoint key) and
/// the text statistics, in `dtype` (f16 keeps the committed file small).
pub fn scorer_weights<B: Backend>(
    model: &ProxyClip<B>,
    keys: &ParamKeys,
    text_mean: &[f32],
    text_std: &[f32],
    dtype: StoredDtype,
) -> Weights {
    let f32s = crate::train::export_weights(model, keys);
    let mut w = Weights::new();
    let mut put = |name: &str, shape: Vec<usize>, values: &[f32]| {
        // f16 overflows above 65504; the statistics (LLM features) stay f32.
        let d = if name.starts_with("text_norm.") { StoredDtype::F32 } else { dtype };
        w.insert_raw(name, d, shape, encode_f32(values, d));
    };
    for name in f32s.names() {
        put(name, f32s.shape(name).expect("listed").to_vec(), &f32s.read_f32(name).expect("listed").expect("f32"));
    }
    put(TEXT_MEAN, vec![text_mean.len()], text_mean);
    put(TEXT_STD, vec![text_std.len()], text_std);
    w
}
