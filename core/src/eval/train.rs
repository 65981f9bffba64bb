//! Training the proxy scorer: symmetric InfoNCE over batches of (image, one of its captions),
//! AdamW keyed by checkpoint key, every random choice from [`step_rng`].

use burn::module::AutodiffModule;
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{ElementConversion, Tensor, TensorData};
use rand::Rng;
use serde::{Deserialize, Serialize};

use super::proxy_clip::{batch_accuracy, image_input, shift_image, standardize, ProxyClip, ProxyClipConfig};
use crate::checkpoint::{ParamKeys, VarBuilder, Weights};
use crate::data::Dataset;
use crate::error::{Error, Result};
use crate::train::{batch_items, step_rng, AdamW, AdamWConfig, Decay, LrSchedule, ParamFilter};

/// Settings of a proxy-scorer run.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ProxyTrainConfig {
    pub seed: u64,
    pub steps: u64,
    pub batch: usize,
    pub lr: f64,
    pub warmup: usize,
    pub weight_decay: f64,
    /// Largest random shift (pixels of the dataset image, each axis) applied to a training image.
    pub max_shift: usize,
    /// Standard deviation of Gaussian noise added to the thumbnail (in [-1, 1] units).
    pub pixel_noise: f32,
}

impl Default for ProxyTrainConfig {
    fn default() -> Self {
        Self { seed: 0, steps: 2000, batch: 256, lr: 1e-3, warmup: 100, weight_decay: 0.01, max_shift: 3, pixel_noise: 0.05 }
    }
}

impl ProxyTrainConfig {
    /// Warmup times a cosine decay to 10% over all the steps.
    pub fn schedule(&self) -> LrSchedule {
        LrSchedule { lr: self.lr, warmup: self.warmup as u64, decay: Decay::Cosine { start: 0, end: self.steps, floor: 0.1 } }
    }

    pub fn validate(&self) -> Result<()> {
        let bad = |m: &str| Err(Error::input(m.to_string()));
        if self.batch < 2 || self.batch > 4096 {
            return bad("the proxy scorer's batch must be between 2 and 4096 (a contrastive loss needs negatives)");
        }
        if !(self.lr.is_finite() && self.lr > 0.0 && self.lr < 1.0) {
            return bad("learning rate must be in (0, 1)");
        }
        if self.steps == 0 {
            return bad("--steps must be at least 1");
        }
        if !(self.pixel_noise.is_finite() && self.pixel_noise >= 0.0) {
            return bad("pixel noise must be a non-negative number");
        }
        Ok(())
    }
}

/// Each item's captions as rows of a feature table, and that table standardised.
pub struct ProxyTrainData<'a> {
    pub data: &'a Dataset,
    /// The items trained on (all of them for the evaluation scorer).
    pub items: Vec<usize>,
    /// `caption_rows[i][k]`: the row of item `i`'s caption `k` in `text`.
    pub caption_rows: Vec<Vec<usize>>,
    /// Standardised text features `[rows, dim]`.
    pub text: Vec<f32>,
    pub dim: usize,
}

impl<'a> ProxyTrainData<'a> {
    /// `row_of(caption)` gives each caption's row in `raw` `[rows, dim]`; `mean`/`std` standardise it.
    pub fn new(
        data: &'a Dataset,
        items: Vec<usize>,
        raw: &[f32],
        dim: usize,
        mean: &[f32],
        std: &[f32],
        row_of: impl Fn(&str) -> Option<usize>,
    ) -> Result<Self> {
        if items.len() < 2 {
            return Err(Error::input("the proxy scorer needs at least 2 training images"));
        }
        let caption_rows = data
            .items
            .iter()
            .map(|it| {
                it.captions
                    .iter()
                    .map(|c| row_of(c).ok_or_else(|| Error::input(format!("no text features for caption {c:?}"))))
                    .collect::<Result<Vec<_>>>()
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self { data, items, caption_rows, text: standardize(raw, mean, std), dim })
    }

    /// Step `step`'s batch: (thumbnails `[b, 3·s²]`, standardised text features `[b, dim]`).
    /// Items are epoch-wise shuffles; each image gets one random caption, a random shift and noise.
    pub fn batch(&self, config: &ProxyTrainConfig, image_size: usize, step: u64) -> (Vec<f32>, Vec<f32>) {
        let b = config.batch.min(self.items.len());
        let idx = batch_items(&self.items, b, config.seed, step);
        let mut rng = step_rng(config.seed, step, 2);
        let side = self.data.size;
        let shift = config.max_shift as i64;
        let mut images = Vec::with_capacity(b * 3 * image_size * image_size);
        let mut text = Vec::with_capacity(b * self.dim);
        for &i in &idx {
            let rows = &self.caption_rows[i];
            let row = rows[rng.random_range(0..rows.len())];
            text.extend_from_slice(&self.text[row * self.dim..(row + 1) * self.dim]);
            let (dx, dy) = if shift > 0 { (rng.random_range(-shift..=shift), rng.random_range(-shift..=shift)) } else { (0, 0) };
            let img = shift_image(self.data.image(i), side, dx, dy);
            let mut x = image_input(&img, side, image_size);
            if config.pixel_noise > 0.0 {
                let noise = crate::noise::gaussian(rng.random::<u64>(), x.len());
                for (v, n) in x.iter_mut().zip(noise) {
                    *v += n * config.pixel_noise;
                }
            }
            images.extend(x);
        }
        (images, text)
    }
}

#[derive(Debug, Clone, Copy, Serialize)]
pub struct ProxyStepStats {
    pub step: u64,
    pub loss: f64,
    /// In-batch image→text top-1 accuracy.
    pub batch_acc: f64,
    pub temperature: f64,
    pub grad_norm: f64,
    pub lr: f64,
}

/// Trains a [`ProxyClip`].
pub struct ProxyClipTrainer<AB: AutodiffBackend> {
    model: Option<ProxyClip<AB>>,
    pub keys: ParamKeys,
    pub optim: AdamW<AB::InnerBackend>,
    pub config: ProxyTrainConfig,
    pub model_config: ProxyClipConfig,
    pub step: u64,
    device: AB::Device,
}

impl<AB: AutodiffBackend> ProxyClipTrainer<AB> {
    /// A fresh scorer (weights from `model_config.init_weights(config.seed)`).
    pub fn new(model_config: ProxyClipConfig, config: ProxyTrainConfig, device: &AB::Device) -> Result<Self> {
        config.validate()?;
        model_config.validate("proxy-clip config")?;
        let init = model_config.init_weights(config.seed);
        Self::from_weights(&init, model_config, config, device)
    }

    /// Continues from `weights` (module parameters; text statistics are ignored here).
    pub fn from_weights(weights: &Weights, model_config: ProxyClipConfig, config: ProxyTrainConfig, device: &AB::Device) -> Result<Self> {
        let vb = VarBuilder::<AB>::new(weights, device);
        let model = ProxyClip::build(&vb, &model_config);
        let keys = vb.param_keys();
        vb.finish(&["text_norm."])?;
        let adamw = AdamWConfig { weight_decay: config.weight_decay, grad_clip: Some(1.0), ..AdamWConfig::default() };
        Ok(Self { model: Some(model), keys, optim: AdamW::new(adamw), config, model_config, step: 0, device: device.clone() })
    }

    pub fn model(&self) -> &ProxyClip<AB> {
        self.model.as_ref().expect("model present between steps")
    }

    /// The model without autodiff (to score with).
    pub fn inference_model(&self) -> ProxyClip<AB::InnerBackend> {
        self.model().valid()
    }

    /// The loss (and in-batch accuracy) of a batch without updating anything.
    pub fn evaluate(&self, images: &[f32], texts: &[f32]) -> Result<(f64, f64)> {
        let (i, t) = self.tensors::<AB::InnerBackend>(images, texts)?;
        let (loss, logits) = self.inference_model().contrastive_loss(i, t);
        Ok((loss.into_scalar().elem::<f64>(), batch_accuracy(logits)))
    }

    fn tensors<B: burn::tensor::backend::Backend<Device = AB::Device>>(
        &self,
        images: &[f32],
        texts: &[f32],
    ) -> Result<(Tensor<B, 2>, Tensor<B, 2>)> {
        let (d_img, d_txt) = (self.model_config.image_inputs(), self.model_config.text.dim);
        let b = images.len() / d_img;
        if b < 2 || images.len() != b * d_img || texts.len() != b * d_txt {
            return Err(Error::input(format!(
                "a proxy batch needs b >= 2 rows of {d_img} image and {d_txt} text values; got {} and {}",
                images.len(),
                texts.len()
            )));
        }
        let dev = &self.device;
        Ok((
            Tensor::from_data(TensorData::new(images.to_vec(), [b, d_img]), dev),
            Tensor::from_data(TensorData::new(texts.to_vec(), [b, d_txt]), dev),
        ))
    }

    /// One AdamW update on a batch (from [`ProxyTrainData::batch`]).
    pub fn step(&mut self, images: &[f32], texts: &[f32]) -> Result<ProxyStepStats> {
        let (i, t) = self.tensors::<AB>(images, texts)?;
        let model = self.model.take().expect("model present between steps");
        let (loss, logits) = model.contrastive_loss(i, t);
        let loss_value = loss.clone().into_scalar().elem::<f64>();
        if !loss_value.is_finite() {
            self.model = Some(model);
            return Err(Error::input(format!("the proxy loss is {loss_value} at step {} (lower the learning rate?)", self.step)));
        }
        let batch_acc = batch_accuracy(logits.inner());
        let grads = loss.backward();
        let lr = self.config.schedule().at(self.step);
        let (model, grad_norm) = self.optim.step(model, &grads, &self.keys, &ParamFilter::default(), lr);
        let temperature = 1.0 / model.scale().inner().into_scalar().elem::<f64>();
        self.model = Some(model);
        self.step += 1;
        Ok(ProxyStepStats { step: self.step, loss: loss_value, batch_acc, temperature, grad_norm, lr })
    }
}

