use burn::module::AutodiffModule;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{ElementConversion, Tensor, TensorData};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use super::optim::set_trainable;
use super::{export_weights, float_params, logit_normal, AdamW, AdamWConfig, Decay, Ema, LrSchedule, ParamFilter, TrainState};
use crate::checkpoint::{ParamKeys, Weights};
use crate::error::{Error, Result};
use crate::sampler::{PromptBatch, VelocityModel};
use crate::structured::{FlowGenerator, POOLED_FROZEN};

/// Settings of a rectified-flow run (saved with every checkpoint and checked on resume).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct FlowTrainConfig {
    pub seed: u64,
    pub batch: usize,
    pub lr: f64,
    pub warmup: usize,
    /// Probability of replacing a prompt by the unconditional row (the sampler's construction).
    pub prompt_dropout: f64,
    /// `t = sigmoid(N(t_mean, t_std))`.
    pub t_mean: f64,
    pub t_std: f64,
    pub ema_decay: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub weight_decay: f64,
    pub grad_clip: Option<f64>,
    /// Steps of stage 1 (the LLM frozen); stage 2 trains everything.
    pub stage1_steps: u64,
    /// Learning-rate decay after warmup (absent in runs saved before it existed: constant).
    #[serde(default, skip_serializing_if = "is_constant")]
    pub decay: Decay,
    /// How examples are drawn (absent in runs saved before it existed: by image).
    #[serde(default, skip_serializing_if = "is_image")]
    pub sampling: Sampling,
    /// Items to visit more than once per epoch (absent in runs saved before it existed: none).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub repeat: Vec<Repeat>,
    /// Probability of dropping a kept prompt's tokens (the unconditional row's) while keeping
    /// its pooled text features: SD3's independent dropout per text encoder, so that the pooled
    /// path alone must carry the prompt. Absent in runs saved before it existed: 0.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub token_dropout: f64,
    /// Learning-rate multipliers by parameter-key prefix, e.g. a newly added path trained faster
    /// than the rest (absent in runs saved before it existed: none).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub lr_scale: Vec<LrScale>,
}

/// Parameters whose checkpoint key starts with `prefix` train at `factor` × the learning rate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LrScale {
    pub prefix: String,
    pub factor: f64,
}

impl LrScale {
    /// `PREFIX=F`, e.g. `pooled_text_embed.=10` (F in (0, 1000]).
    pub fn parse(s: &str) -> Result<Self> {
        let bad = |m: String| Err(Error::input(m));
        let Some((prefix, f)) = s.rsplit_once('=') else {
            return bad(format!("{s:?}: expected PREFIX=F, e.g. \"pooled_text_embed.=10\""));
        };
        if prefix.trim().is_empty() {
            return bad(format!("{s:?}: the parameter-key prefix is empty"));
        }
        match f.trim().parse::<f64>() {
            Ok(factor) if Self::factor_ok(factor) => Ok(Self { prefix: prefix.trim().to_string(), factor }),
            _ => bad(format!("{s:?}: F must be a number in (0, 1000]")),
        }
    }

    fn factor_ok(factor: f64) -> bool {
        factor.is_finite() && factor > 0.0 && factor <= 1000.0
    }
}

fn is_zero(p: &f64) -> bool {
    *p == 0.0
}

fn is_constant(d: &Decay) -> bool {
    *d == Decay::Constant
}

impl Default for FlowTrainConfig {
    fn default() -> Self {
        Self {
            seed: 0,
            batch: 16,
            lr: 1e-4,
            warmup: 100,
            prompt_dropout: 0.1,
            t_mean: 0.0,
            t_std: 1.0,
            ema_decay: 0.999,
            beta1: 0.9,
            beta2: 0.999,
            weight_decay: 0.0,
            grad_clip: Some(1.0),
            stage1_steps: u64::MAX,
            decay: Decay::Constant,
            sampling: Sampling::Image,
            repeat: Vec::new(),
            token_dropout: 0.0,
            lr_scale: Vec::new(),
        }
    }
}

impl FlowTrainConfig {
    pub fn schedule(&self) -> LrSchedule {
        LrSchedule { lr: self.lr, warmup: self.warmup as u64, decay: self.decay }
    }

    fn adamw(&self) -> AdamWConfig {
        AdamWConfig { beta1: self.beta1, beta2: self.beta2, eps: 1e-8, weight_decay: self.weight_decay, grad_clip: self.grad_clip }
    }

    pub fn validate(&self) -> Result<()> {
        let bad = |m: &str| Err(Error::input(m.to_string()));
        if self.batch == 0 || self.batch > 4096 {
            return bad("batch must be between 1 and 4096");
        }
        if !(self.lr.is_finite() && self.lr > 0.0 && self.lr < 1.0) {
            return bad("learning rate must be in (0, 1)");
        }
        if !(0.0..1.0).contains(&self.prompt_dropout) {
            return bad("prompt dropout must be in [0, 1)");
        }
        if !(0.0..1.0).contains(&self.token_dropout) {
            return bad("token dropout must be in [0, 1)");
        }
        if let Some(s) = self.lr_scale.iter().find(|s| !LrScale::factor_ok(s.factor)) {
            return Err(Error::input(format!("learning-rate multiplier of {:?} must be in (0, 1000], got {}", s.prefix, s.factor)));
        }
        if !(self.t_mean.is_finite() && self.t_mean.abs() <= 5.0) {
            return bad("timestep mean (logit-normal location) must be in [-5, 5]");
        }
        if !(self.t_std.is_finite() && self.t_std > 0.0 && self.t_std <= 5.0) {
            return bad("timestep std (logit-normal scale) must be in (0, 5]");
        }
        if !(0.0..1.0).contains(&self.ema_decay) {
            return bad("EMA decay must be in [0, 1)");
        }
        Ok(())
    }
}

/// The per-step random stream: everything random about step `step` comes from here.
pub fn step_rng(seed: u64, step: u64, stream: u64) -> ChaCha8Rng {
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ stream.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    rng.set_stream(step);
    rng
}

/// How a step's examples are drawn from the training items.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Sampling {
    /// Epoch-wise shuffles of the images: a base with 26 skin-tone variants is seen 26× as often
    /// as a base with one image.
    #[default]
    Image,
    /// Epoch-wise shuffles of the bases, one of a base's images drawn per visit: every concept
    /// equally often, as prompts (and the evaluation) ask for them.
    Base,
}

impl Sampling {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "image" => Some(Self::Image),
            "base" => Some(Self::Base),
            _ => None,
        }
    }
}

fn is_image(s: &Sampling) -> bool {
    *s == Sampling::Image
}

/// Visit a group (a base, or an image) `times` times per epoch when one of its items has a
/// caption containing `matching` (case-insensitive): oversampling a kind the model learns worst
/// without dropping the rest of the data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Repeat {
    pub matching: String,
    pub times: u32,
}

impl Repeat {
    /// `TEXT=K`, e.g. `flag of=4` (split at the last `=`; K from 1 to 100).
    pub fn parse(s: &str) -> Result<Self> {
        let bad = |m: String| Err(Error::input(m));
        let Some((text, k)) = s.rsplit_once('=') else {
            return bad(format!("{s:?}: expected TEXT=K, e.g. \"flag of=4\""));
        };
        if text.trim().is_empty() {
            return bad(format!("{s:?}: the text to match is empty"));
        }
        match k.trim().parse::<u32>() {
            Ok(times) if (1..=100).contains(&times) => Ok(Self { matching: text.to_string(), times }),
            _ => bad(format!("{s:?}: K must be a whole number from 1 to 100")),
        }
    }

    /// `groups` with each group listed as often as the largest `times` of the rules its items'
    /// captions match (once when none does), each copy right after the group.
    pub fn apply<'a>(rules: &[Repeat], groups: Vec<Vec<usize>>, captions: impl Fn(usize) -> &'a [String]) -> Vec<Vec<usize>> {
        if rules.is_empty() {
            return groups;
        }
        let needles: Vec<(String, u32)> = rules.iter().map(|r| (r.matching.to_lowercase(), r.times)).collect();
        let mut out = Vec::with_capacity(groups.len());
        for g in groups {
            let caps: Vec<String> = g.iter().flat_map(|&i| captions(i)).map(|c| c.to_lowercase()).collect();
            let times = needles.iter().filter(|(n, _)| caps.iter().any(|c| c.contains(n.as_str()))).map(|&(_, k)| k).max().unwrap_or(1);
            for _ in 1..times {
                out.push(g.clone());
            }
            out.push(g);
        }
        out
    }
}

/// `(position in the stream, index into 0..n)` for the `batch` draws of step `step`: epoch-wise
/// shuffles of `0..n`, each epoch its own permutation.
fn shuffled_draws(n: usize, batch: usize, seed: u64, step: u64) -> Vec<(u64, usize)> {
    let mut out = Vec::with_capacity(batch);
    let mut epoch_cache: Option<(u64, Vec<usize>)> = None;
    for k in 0..batch as u64 {
        let pos = step * batch as u64 + k;
        let (epoch, i) = (pos / n as u64, (pos % n as u64) as usize);
        if epoch_cache.as_ref().map(|c| c.0) != Some(epoch) {
            let mut perm: Vec<usize> = (0..n).collect();
            let mut rng = step_rng(seed, epoch, 1);
            for j in (1..perm.len()).rev() {
                perm.swap(j, rng.random_range(0..=j));
            }
            epoch_cache = Some((epoch, perm));
        }
        out.push((pos, epoch_cache.as_ref().unwrap().1[i]));
    }
    out
}

/// The `batch` items of step `step`: epoch-wise shuffles of `items`, each epoch its own permutation.
pub fn batch_items(items: &[usize], batch: usize, seed: u64, step: u64) -> Vec<usize> {
    shuffled_draws(items.len(), batch, seed, step).into_iter().map(|(_, j)| items[j]).collect()
}

/// The `batch` items of step `step` drawn by group: epoch-wise shuffles of `groups`, and one
/// member of the group drawn uniformly at each visit (seeded by the draw's position, so any step
/// can be recomputed). Groups of one item give exactly `batch_items`' order.
pub fn batch_groups(groups: &[Vec<usize>], batch: usize, seed: u64, step: u64) -> Vec<usize> {
    shuffled_draws(groups.len(), batch, seed, step)
        .into_iter()
        .map(|(pos, j)| match groups[j].as_slice() {
            [one] => *one,
            g => g[step_rng(seed, pos, 3).random_range(0..g.len())],
        })
        .collect()
}

/// `v(z_t, t) − (x − z0)` with `z_t = t·x + (1−t)·z0` (t in [0, 1], one per row of `prompts`,
/// which holds exactly the rows to run): the residual of the velocity loss.
pub fn velocity_residual<B: Backend>(
    model: &FlowGenerator<B>,
    prompts: &PromptBatch,
    x: Tensor<B, 4>,
    z0: Tensor<B, 4>,
    t: &[f32],
) -> Tensor<B, 4> {
    let device = x.device();
    let tt = Tensor::<B, 4>::from_data(TensorData::new(t.to_vec(), [t.len(), 1, 1, 1]), &device);
    let zt = x.clone() * tt.clone() + z0.clone() * (tt.neg().add_scalar(1.0));
    let mut cond = model.prepare(prompts, &device);
    cond.use_prefix_cache = false;
    let t1000: Vec<f32> = t.iter().map(|t| t * 1000.0).collect();
    model.velocity(zt, &t1000, &mut cond) - (x - z0)
}

/// The rows a training step runs from the doubled batch `both`: row `i` conditional, or the
/// unconditional row where `drop[i]` (prompt dropout), or the unconditional row's tokens with the
/// conditional row's pooled features where `drop_tokens[i]` (token dropout).
pub fn training_rows(both: &PromptBatch, drop: &[bool], drop_tokens: &[bool]) -> PromptBatch {
    let b = both.batch;
    let rows: Vec<usize> = (0..b).map(|i| if drop[i] || drop_tokens[i] { b + i } else { i }).collect();
    let mut prompts = both.select(&rows);
    if let (Some(pooled), Some(all)) = (prompts.pooled.as_mut(), both.pooled.as_ref()) {
        let d = all.len() / (2 * b);
        for i in (0..b).filter(|&i| drop_tokens[i] && !drop[i]) {
            pooled[i * d..(i + 1) * d].copy_from_slice(&all[i * d..(i + 1) * d]);
        }
    }
    prompts
}

/// One training batch: clean latents `x: [B, c, h, w]` and each row's full prompt ids.
pub struct FlowBatch {
    pub x: Vec<f32>,
    pub dims: [usize; 4],
    pub prompts: Vec<Vec<u32>>,
    /// Each row's pooled text features `[B, dim]` (models with `pooled_text`), from a cache;
    /// `None` pools the prompts with the model's own pooler.
    pub pooled: Option<Vec<f32>>,
}

#[derive(Debug, Clone, Copy, Serialize)]
pub struct StepStats {
    pub step: u64,
    pub loss: f64,
    pub grad_norm: f64,
    pub lr: f64,
    pub stage: u8,
}

/// A learning-rate multiplier whose prefix names no parameter is a mistake, not a no-op.
fn check_lr_scale(config: &FlowTrainConfig, keys: &ParamKeys) -> Result<()> {
    for s in &config.lr_scale {
        if !keys.keys().any(|k| k.starts_with(s.prefix.as_str())) {
            return Err(Error::input(format!("learning-rate multiplier: no parameter key starts with {:?}", s.prefix)));
        }
    }
    Ok(())
}

/// Trains a [`FlowGenerator`] with the velocity loss `‖v(z_t, t) − (x − z0)‖²`, `z_t = t·x + (1−t)·z0`.
pub struct FlowTrainer<AB: AutodiffBackend> {
    model: Option<FlowGenerator<AB>>,
    pub keys: ParamKeys,
    pub optim: AdamW<AB::InnerBackend>,
    pub ema: Ema<AB::InnerBackend>,
    pub config: FlowTrainConfig,
    pub step: u64,
    pub pad_id: u32,
    stage: u8,
    device: AB::Device,
}

impl<AB: AutodiffBackend> FlowTrainer<AB> {
    /// `keys` from the `VarBuilder` that built `model`.
    pub fn new(model: FlowGenerator<AB>, keys: ParamKeys, config: FlowTrainConfig, pad_id: u32, device: &AB::Device) -> Result<Self> {
        config.validate()?;
        check_lr_scale(&config, &keys)?;
        let ema = Ema::new(config.ema_decay);
        let optim = AdamW::new(config.adamw());
        let mut t = Self { model: Some(model), keys, optim, ema, config, step: 0, pad_id, stage: 0, device: device.clone() };
        t.enter_stage();
        let model = t.model.take().expect("just built");
        t.ema.update(&model, &t.keys, 0);
        t.model = Some(model);
        Ok(t)
    }

    /// Marks the parameters of the current step's stage trainable (the LLM frozen in stage 1).
    fn enter_stage(&mut self) {
        let stage = self.stage_at(self.step);
        if stage != self.stage {
            let model = self.model.take().expect("model present between steps");
            self.model = Some(set_trainable(model, &self.keys, &self.filter(stage)));
            self.stage = stage;
        }
    }

    /// Continues a run from a checkpoint: `model` built from its `model.safetensors`.
    pub fn resume(
        model: FlowGenerator<AB>,
        keys: ParamKeys,
        state: &TrainState,
        ema: &Weights,
        optim: &Weights,
        pad_id: u32,
        device: &AB::Device,
    ) -> Result<Self> {
        let config: FlowTrainConfig = serde_json::from_value(state.settings.clone())
            .map_err(|e| Error::input(format!("checkpoint state.json: bad settings: {e}")))?;
        config.validate()?;
        check_lr_scale(&config, &keys)?;
        let layout: Vec<_> = float_params(&model, &keys).into_iter().map(|(_, k, t, s, _)| (k, t, s)).collect();
        let ema = Ema::load(config.ema_decay, ema, &layout, device)?;
        let optim = AdamW::load_state(config.adamw(), state.step, optim, device)?;
        let mut t = Self { model: Some(model), keys, optim, ema, config, step: state.step, pad_id, stage: 0, device: device.clone() };
        t.enter_stage();
        Ok(t)
    }

    pub fn model(&self) -> &FlowGenerator<AB> {
        self.model.as_ref().expect("model present between steps")
    }

    pub fn stage_at(&self, step: u64) -> u8 {
        if step < self.config.stage1_steps {
            1
        } else {
            2
        }
    }

    fn filter(&self, stage: u8) -> ParamFilter {
        // The pooled-text LLM and its standardisation stay fixed in both stages.
        let mut frozen: Vec<String> = POOLED_FROZEN.iter().map(|s| s.to_string()).collect();
        if stage == 1 {
            frozen.push("language_model.".into());
        }
        let lr_scale = self.config.lr_scale.iter().map(|s| (s.prefix.clone(), s.factor)).collect();
        ParamFilter { frozen, lr_scale }
    }

    /// One optimizer update on `batch`.
    pub fn step(&mut self, batch: &FlowBatch) -> Result<StepStats> {
        let [b, c, h, w] = batch.dims;
        if batch.prompts.len() != b || batch.x.len() != b * c * h * w {
            return Err(Error::input(format!("batch of {} prompts for latents {:?}", batch.prompts.len(), batch.dims)));
        }
        match (&batch.pooled, self.model().config.pooler_config()) {
            (Some(p), Some(lc)) if p.len() != b * lc.hidden_size => {
                return Err(Error::input(format!("{} pooled text values for {b} rows of width {}", p.len(), lc.hidden_size)));
            }
            (Some(_), None) => return Err(Error::input("the batch has pooled text features but the model has no pooled_text path")),
            (None, _) if self.config.token_dropout > 0.0 => {
                return Err(Error::input("token dropout needs the batch's pooled text features (a model with pooled_text)"));
            }
            _ => {}
        }
        if batch.x.iter().any(|v| !v.is_finite()) {
            return Err(Error::input("the batch's latents contain NaN or infinite values"));
        }
        self.enter_stage();
        let stage = self.stage;
        let filter = self.filter(stage);
        let model = self.model.take().expect("model present between steps");
        let cfg = &self.config;
        let mut rng = step_rng(cfg.seed, self.step, 0);
        let t: Vec<f32> = (0..b).map(|_| logit_normal(&mut rng, cfg.t_mean, cfg.t_std)).collect();
        let drop: Vec<bool> = (0..b).map(|_| rng.random::<f64>() < cfg.prompt_dropout).collect();
        let z0 = crate::noise::gaussian(rng.random::<u64>(), b * c * h * w);
        // Drawn after everything else, so runs without it keep their random stream.
        let drop_tokens: Vec<bool> =
            (0..b).map(|i| cfg.token_dropout > 0.0 && rng.random::<f64>() < cfg.token_dropout && !drop[i]).collect();

        let mut both = PromptBatch::new(&batch.prompts, self.pad_id)?;
        if let Some(p) = &batch.pooled {
            both = both.with_pooled(p.clone())?;
        }
        let prompts = training_rows(&both, &drop, &drop_tokens);
        let dev = &self.device;
        let x = Tensor::<AB, 4>::from_data(TensorData::new(batch.x.clone(), batch.dims), dev);
        let z0 = Tensor::<AB, 4>::from_data(TensorData::new(z0, batch.dims), dev);
        let loss = velocity_residual(&model, &prompts, x, z0, &t).powf_scalar(2.0).mean();
        let loss_value = loss.clone().into_scalar().elem::<f64>();
        if !loss_value.is_finite() {
            self.model = Some(model);
            return Err(Error::input(format!("the loss is {loss_value} at step {} (lower the learning rate?)", self.step)));
        }
        let grads = loss.backward();
        let lr = cfg.schedule().at(self.step);
        let (model, grad_norm) = self.optim.step(model, &grads, &self.keys, &filter, lr);
        self.ema.update(&model, &self.keys, self.step + 1);
        self.model = Some(model);
        self.step += 1;
        Ok(StepStats { step: self.step, loss: loss_value, grad_norm, lr, stage })
    }

    /// Current (non-averaged) weights by checkpoint key.
    pub fn weights(&self) -> Weights {
        export_weights(self.model(), &self.keys)
    }

    /// The weights to sample from: the EMA of everything trained so far, the rest as it is.
    pub fn ema_weights(&self) -> Weights {
        let mut w = self.weights();
        let ema = self.ema.weights();
        for name in ema.names() {
            let values = ema.read_f32(name).expect("listed").expect("f32");
            w.insert_f32(name, ema.shape(name).expect("listed").to_vec(), values);
        }
        w
    }

    /// What a checkpoint stores: (model, EMA, optimizer, state).
    pub fn checkpoint(&self) -> (Weights, Weights, Weights, TrainState) {
        let state = TrainState {
            step: self.step,
            seed: self.config.seed,
            kind: "flow".into(),
            settings: serde_json::to_value(&self.config).expect("serialisable"),
        };
        (self.weights(), self.ema.weights(), self.optim.state(), state)
    }

    /// The trained model without autodiff (e.g. to sample from between steps).
    pub fn inference_model(&self) -> FlowGenerator<AB::InnerBackend> {
        self.model().valid()
    }
}
