//! Training a diffusers `AutoencoderKL` from scratch: loss `MSE(x̂, x) [+ l1·|x̂ − x|] + kl·KL`
//! with `x̂ = decode(mean + std·ε)`, AdamW (global-norm clipping), EMA, exact resume, periodic
//! atomic checkpoints, and the export in diffusers' layout with a latent scaling measured on the
//! training images. Generic over burn's `AutodiffBackend`.
//!
//! Definitions: the reconstruction terms are means over every pixel and channel; `KL` is
//! diffusers' `DiagonalGaussianDistribution.kl()` (a sum over the latent's C·h·w elements) averaged
//! over the batch. `scaling_factor = 1 / std` and `shift_factor = mean` of the posterior means of
//! the training images (all elements together), so flow latents `(mean − shift) · scale` have zero
//! mean and unit variance.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::module::AutodiffModule;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{ElementConversion, Tensor, TensorData};
use rand::Rng;
use serde::{Deserialize, Serialize};

use super::{AutoencoderKl, VaeConfig};
use crate::checkpoint::{ParamKeys, VarBuilder, Weights};
use crate::data::{Dataset, Split};
use crate::error::{Error, Result};
use crate::train::{batch_items, float_params, step_rng, AdamW, AdamWConfig, Decay, Ema, LrSchedule, ParamFilter, TrainState};

/// `TrainState::kind` of a VAE run.
pub const VAE_KIND: &str = "vae";
/// The exported model's weights file (diffusers' name).
pub const VAE_WEIGHTS_FILE: &str = "diffusion_pytorch_model.safetensors";

/// Settings of a VAE run: the architecture and the optimisation (saved with every checkpoint; a
/// resumed run continues with exactly these).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct VaeTrainConfig {
    pub vae: VaeConfig,
    /// Training images are `image_size`² pixels.
    pub image_size: usize,
    pub seed: u64,
    pub batch: usize,
    /// Peak learning rate: linear warmup over `warmup` steps, then cosine decay to
    /// `lr · min_lr_ratio` at `schedule_steps` (constant after that).
    pub lr: f64,
    pub warmup: u64,
    pub schedule_steps: u64,
    pub min_lr_ratio: f64,
    pub kl_weight: f64,
    pub l1_weight: f64,
    pub ema_decay: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub weight_decay: f64,
    pub grad_clip: Option<f64>,
    /// Initial bias of the posterior's log-variance channels (0 = the plain init; negative
    /// starts with a nearly deterministic encoder, which the decoder learns from faster).
    #[serde(default)]
    pub init_logvar: f64,
    /// Scale of the initial weights of every ResNet block's second conv (1 = the plain init;
    /// 0 starts each block as the identity).
    #[serde(default = "one_f64")]
    pub residual_init_scale: f64,
}

fn one_f64() -> f64 {
    1.0
}

/// The weights a fresh run starts from: [`init_values`](crate::checkpoint::init_values) by key
/// (seeded), with the residual branches' last conv scaled by `residual_init_scale` and the
/// log-variance half of the posterior's bias set to `init_logvar`.
pub fn initial_weights<B: Backend>(config: &VaeTrainConfig, device: &B::Device) -> Weights {
    let vb = VarBuilder::<B>::random(config.seed, device).recording();
    drop(AutoencoderKl::build_full(&vb, &config.vae));
    let created = vb.created();
    let mut out = Weights::new();
    let l = config.vae.latent_channels;
    let moments_bias = if config.vae.use_quant_conv { "quant_conv.bias" } else { "encoder.conv_out.bias" };
    for name in created.names() {
        let shape = created.shape(name).expect("listed").to_vec();
        let mut v = created.read_f32(name).expect("listed").expect("f32");
        if name.contains(".resnets.") && name.ends_with(".conv2.weight") {
            v.iter_mut().for_each(|x| *x *= config.residual_init_scale as f32);
        }
        if name == moments_bias {
            v[l..].iter_mut().for_each(|x| *x = config.init_logvar as f32);
        }
        out.insert_f32(name, shape, v);
    }
    out
}

impl VaeTrainConfig {
    /// A small VAE: `channels` per block (downsampling factor `2^(len-1)`), one resnet per
    /// encoder block, `latent_channels`, GroupNorm groups that divide every width (at most 32).
    pub fn small(channels: &[usize], latent_channels: usize, image_size: usize) -> Self {
        let groups = (1..=32).rev().find(|g| channels.iter().all(|c| c % g == 0)).unwrap_or(1);
        Self {
            vae: VaeConfig {
                block_out_channels: channels.to_vec(),
                layers_per_block: 1,
                norm_num_groups: groups,
                latent_channels,
                out_channels: 3,
                in_channels: 3,
                scaling_factor: 1.0,
                shift_factor: None,
                use_post_quant_conv: true,
                use_quant_conv: true,
                mid_block_add_attention: true,
                act_fn: "silu".into(),
            },
            image_size,
            seed: 0,
            batch: 8,
            lr: 1e-3,
            warmup: 50,
            schedule_steps: 1000,
            min_lr_ratio: 0.1,
            kl_weight: 1e-6,
            l1_weight: 0.0,
            ema_decay: 0.99,
            beta1: 0.9,
            beta2: 0.99,
            weight_decay: 0.0,
            grad_clip: Some(1.0),
            init_logvar: 0.0,
            residual_init_scale: 1.0,
        }
    }

    fn adamw(&self) -> AdamWConfig {
        AdamWConfig { beta1: self.beta1, beta2: self.beta2, eps: 1e-8, weight_decay: self.weight_decay, grad_clip: self.grad_clip }
    }

    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::input(m));
        self.vae.validate("VAE settings")?;
        if self.vae.latent_channels == 0 || self.vae.in_channels != 3 || self.vae.out_channels != 3 {
            return bad("the VAE needs RGB input and output and at least one latent channel".into());
        }
        let f = self.vae.upscale();
        if self.image_size == 0 || self.image_size % f != 0 {
            return bad(format!("image size {} is not a positive multiple of the downsampling factor {f}", self.image_size));
        }
        if self.batch == 0 || self.batch > 4096 {
            return bad(format!("batch must be between 1 and 4096, got {}", self.batch));
        }
        if !(self.lr.is_finite() && self.lr > 0.0 && self.lr < 1.0) {
            return bad(format!("learning rate must be in (0, 1), got {}", self.lr));
        }
        if !(0.0..=1.0).contains(&self.min_lr_ratio) {
            return bad(format!("min_lr_ratio must be in [0, 1], got {}", self.min_lr_ratio));
        }
        for (name, w) in [("KL weight", self.kl_weight), ("L1 weight", self.l1_weight), ("weight decay", self.weight_decay)] {
            if !(w.is_finite() && w >= 0.0) {
                return bad(format!("{name} must be finite and non-negative, got {w}"));
            }
        }
        if !(0.0..1.0).contains(&self.ema_decay) {
            return bad(format!("EMA decay must be in [0, 1), got {}", self.ema_decay));
        }
        if !(self.init_logvar.is_finite() && (-30.0..=20.0).contains(&self.init_logvar)) {
            return bad(format!("initial log-variance must be in [-30, 20], got {}", self.init_logvar));
        }
        if !(self.residual_init_scale.is_finite() && self.residual_init_scale >= 0.0) {
            return bad(format!("residual init scale must be finite and non-negative, got {}", self.residual_init_scale));
        }
        if self.grad_clip.is_some_and(|c| !(c.is_finite() && c > 0.0)) {
            return bad("gradient clipping must be positive".into());
        }
        Ok(())
    }

    /// Linear warmup, then cosine decay to `lr · min_lr_ratio` at `schedule_steps`.
    pub fn schedule(&self) -> LrSchedule {
        let decay = Decay::Cosine { start: self.warmup, end: self.schedule_steps, floor: self.min_lr_ratio };
        LrSchedule { lr: self.lr, warmup: self.warmup, decay }
    }
}

#[derive(Debug, Clone, Copy, Serialize)]
pub struct VaeStepStats {
    /// Updates done after this one.
    pub step: u64,
    pub loss: f64,
    pub mse: f64,
    pub kl: f64,
    pub grad_norm: f64,
    pub lr: f64,
}

/// The optimisation state of a VAE run between steps.
pub struct VaeTrainer<AB: AutodiffBackend> {
    model: Option<AutoencoderKl<AB>>,
    pub keys: ParamKeys,
    pub optim: AdamW<AB::InnerBackend>,
    pub ema: Ema<AB::InnerBackend>,
    pub config: VaeTrainConfig,
    pub step: u64,
    device: AB::Device,
}

impl<AB: AutodiffBackend> VaeTrainer<AB> {
    /// A fresh VAE initialised from `config.seed`.
    pub fn new(config: VaeTrainConfig, device: &AB::Device) -> Result<Self> {
        config.validate()?;
        let init = initial_weights::<AB::InnerBackend>(&config, device);
        let vb = VarBuilder::<AB>::new(&init, device);
        let model = AutoencoderKl::build_full(&vb, &config.vae);
        let keys = vb.param_keys();
        vb.finish(&[])?;
        let mut ema = Ema::new(config.ema_decay);
        ema.update(&model, &keys, 0);
        Ok(Self { model: Some(model), keys, optim: AdamW::new(config.adamw()), ema, config, step: 0, device: device.clone() })
    }

    /// Continues from a checkpoint's parts (see [`VaeTrainer::checkpoint`]).
    pub fn resume(state: &TrainState, model: &Weights, ema: &Weights, optim: &Weights, device: &AB::Device) -> Result<Self> {
        if state.kind != VAE_KIND {
            return Err(Error::input(format!("checkpoint is a {:?} run, not a VAE run", state.kind)));
        }
        let config: VaeTrainConfig = serde_json::from_value(state.settings.clone())
            .map_err(|e| Error::input(format!("checkpoint state.json: bad VAE settings: {e}")))?;
        config.validate()?;
        let vb = VarBuilder::<AB>::new(model, device);
        let built = AutoencoderKl::build_full(&vb, &config.vae);
        let keys = vb.param_keys();
        vb.finish(&[])?;
        let layout: Vec<_> = float_params(&built, &keys).into_iter().map(|(_, k, t, s, _)| (k, t, s)).collect();
        let ema = Ema::load(config.ema_decay, ema, &layout, device)?;
        let optim = AdamW::load_state(config.adamw(), state.step, optim, device)?;
        Ok(Self { model: Some(built), keys, optim, ema, config, step: state.step, device: device.clone() })
    }

    pub fn model(&self) -> &AutoencoderKl<AB> {
        self.model.as_ref().expect("model present between steps")
    }

    /// One update on images `[b, 3, s, s]` in [-1, 1].
    pub fn step(&mut self, pixels: &[f32], b: usize) -> Result<VaeStepStats> {
        let s = self.config.image_size;
        if b == 0 || pixels.len() != b * 3 * s * s {
            return Err(Error::input(format!("a batch of {} values is not {b} images of 3x{s}x{s}", pixels.len())));
        }
        let cfg = &self.config;
        let dev = &self.device;
        let model = self.model.take().expect("model present between steps");
        let x = Tensor::<AB, 4>::from_data(TensorData::new(pixels.to_vec(), [b, 3, s, s]), dev);
        let post = match model.encode(x.clone()) {
            Ok(p) => p,
            Err(e) => {
                self.model = Some(model);
                return Err(e);
            }
        };
        let dims = post.mean.dims();
        let mut rng = step_rng(cfg.seed, self.step, 2);
        let eps = crate::noise::gaussian(rng.random::<u64>(), dims.iter().product());
        let z = post.sample(Tensor::from_data(TensorData::new(eps, dims), dev));
        let diff = model.decode(z) - x;
        let mse = diff.clone().powi_scalar(2).mean();
        let kl = post.kl().mean();
        let mut loss = mse.clone();
        if cfg.l1_weight > 0.0 {
            loss = loss + diff.abs().mean().mul_scalar(cfg.l1_weight);
        }
        if cfg.kl_weight > 0.0 {
            loss = loss + kl.clone().mul_scalar(cfg.kl_weight);
        }
        let loss_value = loss.clone().into_scalar().elem::<f64>();
        if !loss_value.is_finite() {
            self.model = Some(model);
            return Err(Error::input(format!("the loss is {loss_value} at step {} (lower the learning rate?)", self.step)));
        }
        let mse_value = mse.into_scalar().elem::<f64>();
        let kl_value = kl.into_scalar().elem::<f64>();
        let grads = loss.backward();
        let lr = cfg.schedule().at(self.step);
        let (model, grad_norm) = self.optim.step(model, &grads, &self.keys, &ParamFilter::default(), lr);
        self.ema.update(&model, &self.keys, self.step + 1);
        self.model = Some(model);
        self.step += 1;
        Ok(VaeStepStats { step: self.step, loss: loss_value, mse: mse_value, kl: kl_value, grad_norm, lr })
    }

    /// One update on the training batch of the current step (`batch_items` order).
    pub fn step_on(&mut self, data: &Dataset) -> Result<VaeStepStats> {
        if data.size != self.config.image_size {
            return Err(Error::input(format!("dataset images are {}px, the run trains on {}px", data.size, self.config.image_size)));
        }
        let train = data.indices(Split::Train);
        if train.is_empty() {
            return Err(Error::input("the dataset has no images in the train split"));
        }
        let idx = batch_items(&train, self.config.batch, self.config.seed, self.step);
        self.step(&data.pixels_nchw(&idx), idx.len())
    }

    /// Current (non-averaged) weights by checkpoint key.
    pub fn weights(&self) -> Weights {
        crate::train::export_weights(self.model(), &self.keys)
    }

    /// What a checkpoint stores: (model, EMA, optimizer, state).
    pub fn checkpoint(&self) -> (Weights, Weights, Weights, TrainState) {
        let state = TrainState {
            step: self.step,
            seed: self.config.seed,
            kind: VAE_KIND.into(),
            settings: serde_json::to_value(&self.config).expect("serialisable"),
        };
        (self.weights(), self.ema.weights(), self.optim.state(), state)
    }

    /// The model without autodiff: the EMA weights or the current ones.
    pub fn inference_model(&self, ema: bool) -> Result<AutoencoderKl<AB::InnerBackend>> {
        if ema {
            AutoencoderKl::load_full(&self.ema.weights(), &self.config.vae, &self.device)
        } else {
            Ok(self.model().valid())
        }
    }
}

/// Mean and standard deviation of every element of the posterior means of `indices`.
pub fn latent_stats<B: Backend>(vae: &AutoencoderKl<B>, data: &Dataset, indices: &[usize], batch: usize, device: &B::Device) -> Result<(f64, f64)> {
    let (mut sum, mut sum2, mut n) = (0f64, 0f64, 0usize);
    for chunk in indices.chunks(batch.max(1)) {
        let x = Tensor::<B, 4>::from_data(TensorData::new(data.pixels_nchw(chunk), [chunk.len(), 3, data.size, data.size]), device);
        let mean = vae.encode(x)?.mean.into_data().convert::<f32>().into_vec::<f32>().expect("f32");
        for v in mean {
            sum += v as f64;
            sum2 += (v as f64) * (v as f64);
            n += 1;
        }
    }
    if n == 0 {
        return Err(Error::input("no images to measure the latent statistics on"));
    }
    let m = sum / n as f64;
    Ok((m, (sum2 / n as f64 - m * m).max(0.0).sqrt()))
}

/// Reconstruction quality of `decode(posterior mean)` on `indices`: (PSNR of the pooled MSE, mean
/// of the per-image PSNRs), in dB on the [0, 1] scale with outputs clipped to [-1, 1].
pub fn reconstruction_psnr<B: Backend>(
    vae: &AutoencoderKl<B>,
    data: &Dataset,
    indices: &[usize],
    batch: usize,
    device: &B::Device,
) -> Result<(f64, f64)> {
    let plane = 3 * data.size * data.size;
    let (mut sq, mut count, mut per_image) = (0f64, 0usize, Vec::with_capacity(indices.len()));
    for chunk in indices.chunks(batch.max(1)) {
        let pixels = data.pixels_nchw(chunk);
        let x = Tensor::<B, 4>::from_data(TensorData::new(pixels.clone(), [chunk.len(), 3, data.size, data.size]), device);
        let recon = vae.decode(vae.encode(x)?.mean).into_data().convert::<f32>().into_vec::<f32>().expect("f32");
        for k in 0..chunk.len() {
            let (a, b) = (&recon[k * plane..(k + 1) * plane], &pixels[k * plane..(k + 1) * plane]);
            let p = crate::image::psnr(a, b);
            per_image.push(p.min(100.0));
            sq += mse01(a, b) * plane as f64;
            count += plane;
        }
    }
    if count == 0 {
        return Err(Error::input("no images to measure the reconstruction on"));
    }
    let pooled = sq / count as f64;
    let pooled = if pooled == 0.0 { f64::INFINITY } else { 10.0 * (1.0 / pooled).log10() };
    Ok((pooled, per_image.iter().sum::<f64>() / per_image.len() as f64))
}

/// Flow latents `(mean − shift_factor) · scaling_factor` of images `indices` of `data`, in order:
/// (values, `[n, C, h, w]`). `progress(done, total)` after every batch.
pub fn encode_flow_latents<B: Backend>(
    vae: &AutoencoderKl<B>,
    data: &Dataset,
    indices: &[usize],
    batch: usize,
    device: &B::Device,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<(Vec<f32>, [usize; 4])> {
    let f = vae.config.upscale();
    if data.size % f != 0 {
        return Err(Error::input(format!("dataset images are {}px, not a multiple of the VAE's downsampling factor {f}", data.size)));
    }
    let (c, h) = (vae.config.latent_channels, data.size / f);
    let mut out = Vec::with_capacity(indices.len() * c * h * h);
    for chunk in indices.chunks(batch.max(1)) {
        let x = Tensor::<B, 4>::from_data(TensorData::new(data.pixels_nchw(chunk), [chunk.len(), 3, data.size, data.size]), device);
        let z = vae.encode_flow_latent(x)?;
        out.extend(z.into_data().convert::<f32>().into_vec::<f32>().expect("f32"));
        progress(out.len() / (c * h * h), indices.len());
    }
    Ok((out, [indices.len(), c, h, h]))
}

/// MSE on the [0, 1] scale after clipping to [-1, 1] (what [`crate::image::psnr`] measures).
fn mse01(a: &[f32], b: &[f32]) -> f64 {
    let to01 = |x: f32| ((x.clamp(-1.0, 1.0) + 1.0) / 2.0) as f64;
    a.iter().zip(b).map(|(x, y)| (to01(*x) - to01(*y)).powi(2)).sum::<f64>() / a.len().max(1) as f64
}

// ---------------------------------------------------------------------------------------------
// The run: checkpoints, logs, export (native file system).

/// How a run goes besides its settings.
#[derive(Debug, Clone)]
pub struct VaeRunOptions {
    pub out: PathBuf,
    /// Total updates to reach (a resumed run continues to this count).
    pub steps: u64,
    /// Write a checkpoint every this many steps (0: only at the end).
    pub ckpt_every: u64,
    /// Stop (with a checkpoint and the export) after this much wall time.
    pub minutes: Option<f64>,
    /// A checkpoint directory (or an output directory holding `checkpoints/`).
    pub resume: Option<PathBuf>,
    /// Progress line and log record every this many steps.
    pub log_every: u64,
    /// Export the EMA weights (else the current ones).
    pub export_ema: bool,
    /// Training images used to measure the latent scaling (at most).
    pub stats_images: usize,
}

impl Default for VaeRunOptions {
    fn default() -> Self {
        Self {
            out: PathBuf::from("vae-out"),
            steps: 1000,
            ckpt_every: 500,
            minutes: None,
            resume: None,
            log_every: 10,
            export_ema: true,
            stats_images: 512,
        }
    }
}

/// What a finished run measured (also written to `out/metrics.json`).
#[derive(Debug, Clone, Serialize)]
pub struct VaeRunReport {
    pub steps: u64,
    pub train_seconds: f64,
    pub images_per_second: f64,
    pub final_loss: f64,
    pub heldout_images: usize,
    /// PSNR of the pooled held-out MSE (decode of the posterior mean), dB.
    pub psnr_heldout: f64,
    /// Mean of the per-image held-out PSNRs (each capped at 100 dB), dB.
    pub psnr_heldout_mean_per_image: f64,
    pub scaling_factor: f64,
    pub shift_factor: f64,
    pub weights: &'static str,
    pub parameters: usize,
    pub downsampling: usize,
    pub latent_channels: usize,
    pub image_size: usize,
}

fn io_err(what: &str, p: &Path, e: std::io::Error) -> Error {
    Error::Io(format!("cannot {what} {}: {e}", p.display()))
}

fn write_file(p: &Path, bytes: &[u8]) -> Result<()> {
    std::fs::write(p, bytes).map_err(|e| io_err("write", p, e))
}

/// The checkpoint directory under `out` with the highest step, if any.
pub fn latest_checkpoint(out: &Path) -> Option<PathBuf> {
    let dir = out.join("checkpoints");
    let mut found: Vec<(u64, PathBuf)> = std::fs::read_dir(&dir)
        .ok()?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().to_str()?.to_string();
            let step = name.strip_prefix("step-")?.parse::<u64>().ok()?;
            Some((step, e.path()))
        })
        .collect();
    found.sort();
    found.pop().map(|(_, p)| p)
}

/// Writes the trainer's checkpoint to `out/checkpoints/step-NNNNNNNN` through a temporary
/// directory and a rename; earlier checkpoints are removed afterwards.
pub fn save_checkpoint<AB: AutodiffBackend>(trainer: &VaeTrainer<AB>, out: &Path) -> Result<PathBuf> {
    let root = out.join("checkpoints");
    std::fs::create_dir_all(&root).map_err(|e| io_err("create", &root, e))?;
    let name = format!("step-{:08}", trainer.step);
    let tmp = root.join(format!(".tmp-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).map_err(|e| io_err("create", &tmp, e))?;
    let (model, ema, optim, state) = trainer.checkpoint();
    write_file(&tmp.join("model.safetensors"), &model.to_safetensors(None)?)?;
    write_file(&tmp.join("ema.safetensors"), &ema.to_safetensors(None)?)?;
    write_file(&tmp.join("optim.safetensors"), &optim.to_safetensors(None)?)?;
    write_file(&tmp.join("state.json"), &serde_json::to_vec_pretty(&state).expect("serialisable"))?;
    let config = trainer.config.vae.diffusers_json(trainer.config.image_size);
    write_file(&tmp.join("config.json"), &serde_json::to_vec_pretty(&config).expect("serialisable"))?;
    let dest = root.join(&name);
    if dest.exists() {
        std::fs::remove_dir_all(&dest).map_err(|e| io_err("replace", &dest, e))?;
    }
    std::fs::rename(&tmp, &dest).map_err(|e| io_err("rename into place", &dest, e))?;
    for entry in std::fs::read_dir(&root).map_err(|e| io_err("list", &root, e))?.flatten() {
        let n = entry.file_name();
        let n = n.to_string_lossy();
        if n.starts_with("step-") && *n != *name {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
    Ok(dest)
}

fn checkpoint_dir(path: &Path) -> Result<PathBuf> {
    if path.join("state.json").exists() {
        Ok(path.to_path_buf())
    } else if let Some(latest) = latest_checkpoint(path) {
        Ok(latest)
    } else {
        Err(Error::Io(format!("{} is not a VAE checkpoint (no state.json, no checkpoints/step-*)", path.display())))
    }
}

fn read_state(dir: &Path) -> Result<TrainState> {
    let p = dir.join("state.json");
    let bytes = std::fs::read(&p).map_err(|e| io_err("read", &p, e))?;
    serde_json::from_slice(&bytes).map_err(|e| Error::config(p.display().to_string(), e))
}

/// The settings stored with a checkpoint (a checkpoint directory or an output directory).
pub fn checkpoint_config(path: &Path) -> Result<VaeTrainConfig> {
    let state = read_state(&checkpoint_dir(path)?)?;
    if state.kind != VAE_KIND {
        return Err(Error::input(format!("checkpoint is a {:?} run, not a VAE run", state.kind)));
    }
    serde_json::from_value(state.settings).map_err(|e| Error::input(format!("checkpoint state.json: bad VAE settings: {e}")))
}

/// Reads a checkpoint directory written by [`save_checkpoint`] (or the latest one under an
/// output directory) and continues from it.
pub fn load_checkpoint<AB: AutodiffBackend>(path: &Path, device: &AB::Device) -> Result<VaeTrainer<AB>> {
    let dir = checkpoint_dir(path)?;
    let read = |n: &str| -> Result<Vec<u8>> {
        let p = dir.join(n);
        std::fs::read(&p).map_err(|e| io_err("read", &p, e))
    };
    let weights = |n: &str| -> Result<Weights> { Weights::from_safetensors(&dir.join(n).display().to_string(), read(n)?) };
    let state = read_state(&dir)?;
    VaeTrainer::resume(&state, &weights("model.safetensors")?, &weights("ema.safetensors")?, &weights("optim.safetensors")?, device)
}

/// Writes `out/config.json` (with the measured scaling) and `out/diffusion_pytorch_model.safetensors`,
/// each through a temporary file and a rename.
pub fn export_vae(out: &Path, config: &VaeConfig, image_size: usize, weights: &Weights) -> Result<()> {
    std::fs::create_dir_all(out).map_err(|e| io_err("create", out, e))?;
    let put = |name: &str, bytes: &[u8]| -> Result<()> {
        let tmp = out.join(format!(".{name}.tmp"));
        write_file(&tmp, bytes)?;
        std::fs::rename(&tmp, out.join(name)).map_err(|e| io_err("rename into place", &out.join(name), e))
    };
    put(VAE_WEIGHTS_FILE, &weights.to_safetensors(None)?)?;
    put("config.json", &serde_json::to_vec_pretty(&config.diffusers_json(image_size)).expect("serialisable"))
}

/// A whole run: start (or resume), train to `opts.steps` or `opts.minutes`, checkpoint, measure
/// the latent scaling, export, measure held-out PSNR. `say` receives progress lines.
pub fn train_vae<AB: AutodiffBackend>(
    config: Option<VaeTrainConfig>,
    data: &Dataset,
    opts: &VaeRunOptions,
    device: &AB::Device,
    say: &mut dyn FnMut(&str),
) -> Result<VaeRunReport> {
    let mut trainer = match (&opts.resume, config) {
        (Some(path), _) => {
            let t = load_checkpoint::<AB>(path, device)?;
            say(&format!("resumed from {} at step {}", path.display(), t.step));
            t
        }
        (None, Some(config)) => VaeTrainer::<AB>::new(config, device)?,
        (None, None) => return Err(Error::input("neither settings nor a checkpoint to resume")),
    };
    let cfg = trainer.config.clone();
    if data.size != cfg.image_size {
        return Err(Error::input(format!("dataset images are {}px, the run trains on {}px", data.size, cfg.image_size)));
    }
    let (train, heldout) = (data.indices(Split::Train), data.indices(Split::Heldout));
    if train.is_empty() {
        return Err(Error::input("the dataset has no images in the train split"));
    }
    std::fs::create_dir_all(&opts.out).map_err(|e| io_err("create", &opts.out, e))?;
    let parameters: usize = float_params(trainer.model(), &trainer.keys).iter().map(|p| p.4.len()).sum();
    say(&format!(
        "VAE {:?} x{} latent {}ch, {} parameters; {} train / {} held-out images of {}px; batch {}",
        cfg.vae.block_out_channels,
        cfg.vae.upscale(),
        cfg.vae.latent_channels,
        parameters,
        train.len(),
        heldout.len(),
        data.size,
        cfg.batch
    ));
    let log_path = opts.out.join("train_log.jsonl");
    let mut log = std::fs::OpenOptions::new().create(true).append(true).open(&log_path).map_err(|e| io_err("open", &log_path, e))?;

    let start = Instant::now();
    let first_step = trainer.step;
    let (mut window_t, mut window_step) = (Instant::now(), trainer.step);
    let mut last = None;
    while trainer.step < opts.steps {
        if opts.minutes.is_some_and(|m| start.elapsed().as_secs_f64() > m * 60.0) {
            say(&format!("time limit reached at step {}", trainer.step));
            break;
        }
        let stats = trainer.step_on(data)?;
        last = Some(stats);
        let every = opts.log_every.max(1);
        if stats.step % every == 0 || stats.step == opts.steps {
            let dt = window_t.elapsed().as_secs_f64().max(1e-9);
            let its = (stats.step - window_step) as f64 / dt;
            let elapsed = start.elapsed().as_secs_f64();
            say(&format!(
                "step {:>6}/{} loss {:.5} mse {:.5} kl {:.1} gnorm {:.3} lr {:.2e} | {:.2} it/s {:.1} img/s | {:.0}s",
                stats.step,
                opts.steps,
                stats.loss,
                stats.mse,
                stats.kl,
                stats.grad_norm,
                stats.lr,
                its,
                its * cfg.batch as f64,
                elapsed
            ));
            let rec = serde_json::json!({
                "step": stats.step, "loss": stats.loss, "mse": stats.mse, "kl": stats.kl,
                "grad_norm": stats.grad_norm, "lr": stats.lr, "it_s": its, "img_s": its * cfg.batch as f64,
                "elapsed_s": elapsed,
            });
            writeln!(log, "{rec}").map_err(|e| io_err("write", &log_path, e))?;
            window_t = Instant::now();
            window_step = stats.step;
        }
        if opts.ckpt_every > 0 && stats.step % opts.ckpt_every == 0 && stats.step < opts.steps {
            let p = save_checkpoint(&trainer, &opts.out)?;
            say(&format!("checkpoint {}", p.display()));
        }
    }
    let train_seconds = start.elapsed().as_secs_f64();
    let done = trainer.step - first_step;
    let p = save_checkpoint(&trainer, &opts.out)?;
    say(&format!("checkpoint {}", p.display()));

    // Export: the chosen weights with the latent scaling measured on training images.
    let vae = trainer.inference_model(opts.export_ema)?;
    let inner = device.clone();
    let eval_batch = 16;
    let stats_idx: Vec<usize> = train.iter().copied().take(opts.stats_images.max(1)).collect();
    let (m, s) = latent_stats(&vae, data, &stats_idx, eval_batch, &inner)?;
    let s = if s > 1e-8 { s } else { 1.0 };
    let mut vae_config = cfg.vae.clone();
    vae_config.scaling_factor = 1.0 / s;
    vae_config.shift_factor = Some(m);
    let weights = if opts.export_ema { trainer.ema.weights() } else { trainer.weights() };
    export_vae(&opts.out, &vae_config, cfg.image_size, &weights)?;
    say(&format!(
        "exported {} ({} weights); latents: mean {m:.4}, std {s:.4} -> shift_factor {m:.6}, scaling_factor {:.6}",
        opts.out.display(),
        if opts.export_ema { "EMA" } else { "current" },
        1.0 / s
    ));
    let (psnr, psnr_mean) = if heldout.is_empty() {
        say("no held-out images: PSNR not measured");
        (f64::NAN, f64::NAN)
    } else {
        reconstruction_psnr(&vae, data, &heldout, eval_batch, &inner)?
    };
    let report = VaeRunReport {
        steps: trainer.step,
        train_seconds,
        images_per_second: done as f64 * cfg.batch as f64 / train_seconds.max(1e-9),
        final_loss: last.map(|s| s.loss).unwrap_or(f64::NAN),
        heldout_images: heldout.len(),
        psnr_heldout: psnr,
        psnr_heldout_mean_per_image: psnr_mean,
        scaling_factor: 1.0 / s,
        shift_factor: m,
        weights: if opts.export_ema { "ema" } else { "current" },
        parameters,
        downsampling: cfg.vae.upscale(),
        latent_channels: cfg.vae.latent_channels,
        image_size: cfg.image_size,
    };
    let metrics = serde_json::to_vec_pretty(&report).expect("serialisable");
    write_file(&opts.out.join("metrics.json"), &metrics)?;
    say(&format!(
        "held-out reconstruction PSNR {psnr:.2} dB (mean per image {psnr_mean:.2} dB) on {} images; {} steps in {train_seconds:.0}s ({:.1} img/s)",
        heldout.len(),
        trainer.step,
        report.images_per_second
    ));
    Ok(report)
}
