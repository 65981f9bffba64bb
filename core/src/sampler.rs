//! The Euler + classifier-free-guidance loop of JanusFlow, shared by every velocity model.

use burn::tensor::{backend::Backend, Tensor};

use crate::error::{Error, Result};

/// Most Euler steps accepted (the official default is 30).
pub const MAX_STEPS: usize = 1000;
/// Largest latent side accepted (an 8x VAE makes that an 8192-pixel image).
pub const MAX_LATENT_SIDE: usize = 1024;

/// Token ids of the doubled batch, built the way the official loop and processor build them.
///
/// With G conditional groups (composed guidance, [`PromptBatch::composed`]) the rows are G·B
/// conditional rows, group by group, then B unconditional rows.
#[derive(Debug, Clone, PartialEq)]
pub struct PromptBatch {
    /// `[(G+1)B][L]`: rows `0..GB` conditional (`[pad.., BOS, ..., BOG]`, left-padded), the last
    /// `B` unconditional (`[pad.., BOS, pad..]`, BOS in the same column as the first group's).
    pub ids: Vec<Vec<u32>>,
    /// `[(G+1)B][L-1]`: which prefix positions (all columns but the last) may be attended.
    pub prefix_visible: Vec<Vec<bool>>,
    /// Number of prompts B.
    pub batch: usize,
    /// Each conditional group's share of the guidance (G values summing to 1; `[1.0]` for plain
    /// classifier-free guidance).
    pub shares: Vec<f32>,
    /// Pooled text features per row (`[rows, dim]`, flat) when the caller already has them
    /// (training reads them from a cache); otherwise a model that uses them pools `ids` itself.
    pub pooled: Option<Vec<f32>>,
}

impl PromptBatch {
    /// `prompts`: each the full tokenized sequence `[BOS, ..., BOG]`.
    pub fn new(prompts: &[Vec<u32>], pad_id: u32) -> Result<Self> {
        Self::composed(&[prompts.to_vec()], &[1.0], pad_id)
    }

    /// Composed guidance (Liu et al. 2022, "Compositional Visual Generation"): each of B images
    /// is guided by G prompts, `v = v_u + w Σ_g shares[g] (v_g − v_u)`. `groups[g][b]` is image
    /// b's prompt in group g; `shares` must be positive and sum to 1 so that `w` keeps its meaning.
    pub fn composed(groups: &[Vec<Vec<u32>>], shares: &[f32], pad_id: u32) -> Result<Self> {
        let Some(first) = groups.first() else { return Err(Error::input("no prompt given")) };
        if first.is_empty() {
            return Err(Error::input("no prompt given"));
        }
        if let Some(g) = groups.iter().position(|g| g.len() != first.len()) {
            return Err(Error::input(format!("prompt group {g} has {} prompts, group 0 has {}", groups[g].len(), first.len())));
        }
        if shares.len() != groups.len() || shares.iter().any(|s| !s.is_finite() || *s <= 0.0) {
            return Err(Error::input(format!("{} guidance shares for {} prompt groups; each must be positive", shares.len(), groups.len())));
        }
        if (shares.iter().sum::<f32>() - 1.0).abs() > 1e-4 {
            return Err(Error::input(format!("guidance shares {shares:?} do not sum to 1")));
        }
        for (g, group) in groups.iter().enumerate() {
            if let Some(i) = group.iter().position(|p| p.len() < 2) {
                let of = if g == 0 { String::new() } else { format!(" of group {g}") };
                return Err(Error::input(format!(
                    "prompt {i}{of} has {} token(s); a prompt needs at least BOS and the begin-of-generation tag",
                    group[i].len()
                )));
            }
        }
        let len = groups.iter().flatten().map(Vec::len).max().unwrap_or(0);
        let b = first.len();
        let rows = (groups.len() + 1) * b;
        let mut ids = Vec::with_capacity(rows);
        let mut visible = Vec::with_capacity(rows);
        for p in groups.iter().flatten() {
            let pad = len - p.len();
            ids.push(std::iter::repeat(pad_id).take(pad).chain(p.iter().copied()).collect::<Vec<_>>());
            visible.push((0..len - 1).map(|j| j >= pad).collect::<Vec<_>>());
        }
        for p in first {
            let pad = len - p.len();
            let mut row = vec![pad_id; len];
            row[pad] = p[0];
            ids.push(row);
            visible.push((0..len - 1).map(|j| j == pad).collect());
        }
        Ok(Self { ids, prefix_visible: visible, batch: b, shares: shares.to_vec(), pooled: None })
    }

    /// Number of conditional groups G.
    pub fn groups(&self) -> usize {
        self.shares.len()
    }

    /// Attaches the conditional rows' pooled text features `[GB, dim]`; the unconditional rows
    /// get zeros.
    pub fn with_pooled(mut self, cond: Vec<f32>) -> Result<Self> {
        let b = self.batch * self.groups();
        if self.ids.len() != b + self.batch || cond.is_empty() || cond.len() % b != 0 {
            return Err(Error::input(format!("{} pooled text values for {b} prompts", cond.len())));
        }
        if cond.iter().any(|v| !v.is_finite()) {
            return Err(Error::input("the pooled text features contain NaN or infinite values"));
        }
        let n = cond.len() + cond.len() / self.groups();
        let mut values = cond;
        values.resize(n, 0.0);
        self.pooled = Some(values);
        Ok(self)
    }

    /// The batch of the given rows of `ids` only (0..B conditional, B..2B unconditional), as
    /// training runs them: one row per example, no doubling.
    pub fn select(&self, rows: &[usize]) -> Self {
        Self {
            ids: rows.iter().map(|&r| self.ids[r].clone()).collect(),
            prefix_visible: rows.iter().map(|&r| self.prefix_visible[r].clone()).collect(),
            batch: rows.len(),
            shares: vec![1.0],
            pooled: self.pooled.as_ref().map(|p| {
                let d = p.len() / self.ids.len();
                rows.iter().flat_map(|&r| p[r * d..(r + 1) * d].iter().copied()).collect()
            }),
        }
    }

    /// Prefix length P = L - 1 (the last column's slot is taken by the time token).
    pub fn prefix_len(&self) -> usize {
        self.ids[0].len() - 1
    }
}

/// A text-conditioned velocity field v(z, t) evaluated on the doubled (cond | uncond) batch.
pub trait VelocityModel<B: Backend> {
    /// Whatever the model precomputes once per generation from the prompts.
    type Cond;
    fn latent_channels(&self) -> usize;
    /// The latent side must be divisible by this.
    fn patch_size(&self) -> usize;
    fn vocab_size(&self) -> usize;
    /// Longest sequence the model accepts (prefix + time token + image tokens), if bounded.
    fn max_sequence(&self) -> Option<usize> {
        None
    }
    fn prepare(&self, batch: &PromptBatch, device: &B::Device) -> Self::Cond;
    /// `z: [2B, c, h, w]`, `t`: one time per row on the 0..1000 scale.
    fn velocity(&self, z: Tensor<B, 4>, t: &[f32], cond: &mut Self::Cond) -> Tensor<B, 4>;
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SampleConfig {
    pub steps: usize,
    pub cfg: f64,
    /// Timestep shift of the step grid (SD3 / diffusers' `FlowMatchEulerDiscreteScheduler`):
    /// noise level `σ' = s·σ / (1 + (s − 1)·σ)` on the uniform grid `σ = 1 − step/N`. Above 1
    /// it spends more steps near the noise; 1 is JanusFlow's uniform grid.
    pub shift: f64,
}

impl Default for SampleConfig {
    fn default() -> Self {
        Self { steps: 30, cfg: 2.0, shift: 1.0 }
    }
}

impl SampleConfig {
    pub fn validate(&self) -> Result<()> {
        if self.steps == 0 || self.steps > MAX_STEPS {
            return Err(Error::input(format!("steps must be between 1 and {MAX_STEPS}, got {}", self.steps)));
        }
        if !self.cfg.is_finite() || self.cfg < 0.0 || self.cfg > 100.0 {
            return Err(Error::input(format!("cfg must be a finite number in [0, 100], got {}", self.cfg)));
        }
        if !self.shift.is_finite() || self.shift <= 0.0 || self.shift > 100.0 {
            return Err(Error::input(format!("shift must be a finite number in (0, 100], got {}", self.shift)));
        }
        Ok(())
    }

    /// t (0 = noise, 1 = data) at grid point `i` of `0..=steps`.
    pub fn time(&self, i: usize) -> f64 {
        let u = i as f64 / self.steps as f64;
        if self.shift == 1.0 {
            return u;
        }
        let sigma = 1.0 - u;
        1.0 - self.shift * sigma / (1.0 + (self.shift - 1.0) * sigma)
    }

    /// Euler step size from grid point `i` to `i + 1`; exactly `1/N` in f32 on the uniform grid,
    /// as the official loop computes it.
    pub fn step_size(&self, i: usize) -> f32 {
        if self.shift == 1.0 {
            return 1.0 / self.steps as f32;
        }
        (self.time(i + 1) - self.time(i)) as f32
    }
}

/// What the loop reports after each Euler step.
pub struct StepEvent<'a, B: Backend> {
    pub step: usize,
    pub steps: usize,
    /// t of this step on the 0..1000 scale.
    pub t: f32,
    pub v_cond: &'a Tensor<B, 4>,
    pub v_uncond: &'a Tensor<B, 4>,
    pub v_cfg: &'a Tensor<B, 4>,
    /// The latent after this step.
    pub z: &'a Tensor<B, 4>,
}

/// Checks that `z0: [B, c, h, w]` fits the model and the prompts.
pub fn check_inputs<B: Backend, M: VelocityModel<B>>(model: &M, batch: &PromptBatch, dims: [usize; 4]) -> Result<()> {
    let [n, c, h, w] = dims;
    let p = model.patch_size();
    if n != batch.batch {
        return Err(Error::input(format!("{} noise latent(s) for {} prompt(s)", n, batch.batch)));
    }
    if c != model.latent_channels() {
        return Err(Error::input(format!("noise latent has {c} channels, the model expects {}", model.latent_channels())));
    }
    if h == 0 || w == 0 || h % p != 0 || w % p != 0 {
        return Err(Error::input(format!("latent size {h}x{w} is not a positive multiple of the patch size {p}")));
    }
    if h > MAX_LATENT_SIDE || w > MAX_LATENT_SIDE {
        return Err(Error::input(format!("latent size {h}x{w} exceeds {MAX_LATENT_SIDE} per side")));
    }
    let vocab = model.vocab_size();
    for row in &batch.ids {
        if let Some(bad) = row.iter().find(|&&id| id as usize >= vocab) {
            return Err(Error::input(format!("token id {bad} is outside the vocabulary (size {vocab})")));
        }
    }
    let seq = batch.prefix_len() + 1 + (h / p) * (w / p);
    if let Some(max) = model.max_sequence() {
        if seq > max {
            return Err(Error::input(format!(
                "prompt ({} tokens) plus {} image tokens exceeds the model's {max} positions",
                batch.prefix_len() + 1,
                (h / p) * (w / p)
            )));
        }
    }
    Ok(())
}

/// The Euler-CFG loop one step at a time (the browser awaits between steps).
///
/// Each step: `t = step / N * 1000` for all 2B rows, `v = w v_cond - (w - 1) v_uncond`,
/// `z += v / N` (with a shift ≠ 1: `t = t_step · 1000`, `z += v (t_{step+1} - t_step)`, see
/// [`SampleConfig::shift`]). With composed prompt groups, `v = v_uncond + w Σ_g s_g (v_g −
/// v_uncond)` and `v_cond` is the first group's.
pub struct EulerCfg<'m, B: Backend, M: VelocityModel<B>> {
    model: &'m M,
    cond: M::Cond,
    z: Tensor<B, 4>,
    step: usize,
    config: SampleConfig,
    shares: Vec<f32>,
}

/// One step's velocities.
pub struct StepOutput<B: Backend> {
    pub step: usize,
    pub t: f32,
    pub v_cond: Tensor<B, 4>,
    pub v_uncond: Tensor<B, 4>,
    pub v_cfg: Tensor<B, 4>,
}

impl<'m, B: Backend, M: VelocityModel<B>> EulerCfg<'m, B, M> {
    pub fn new(model: &'m M, batch: &PromptBatch, z0: Tensor<B, 4>, config: &SampleConfig) -> Result<Self> {
        config.validate()?;
        check_inputs(model, batch, z0.dims())?;
        let cond = model.prepare(batch, &z0.device());
        Ok(Self { model, cond, z: z0, step: 0, config: *config, shares: batch.shares.clone() })
    }

    /// Starts at grid point `step` instead of 0 (image-to-image: `z0` must then be the latent at
    /// that step's t, e.g. `t·x + (1 − t)·noise`).
    pub fn start_at(mut self, step: usize) -> Result<Self> {
        if step >= self.config.steps {
            return Err(Error::input(format!("start step {step} is not below the {} steps", self.config.steps)));
        }
        self.step = step;
        Ok(self)
    }

    pub fn is_done(&self) -> bool {
        self.step >= self.config.steps
    }

    pub fn steps(&self) -> usize {
        self.config.steps
    }

    /// What the model prepared from the prompts (e.g. to attach a profiling hook).
    pub fn cond_mut(&mut self) -> &mut M::Cond {
        &mut self.cond
    }

    /// The current latent.
    pub fn latent(&self) -> &Tensor<B, 4> {
        &self.z
    }

    /// Runs the next step; `None` once all steps are done.
    pub fn step(&mut self) -> Option<StepOutput<B>> {
        if self.is_done() {
            return None;
        }
        let [b, c, h, w] = self.z.dims();
        let step = self.step;
        let cfg = self.config.cfg as f32;
        let t = (self.config.time(step) * 1000.0) as f32;
        let dt = self.config.step_size(step);
        let shares = &self.shares;
        let g = shares.len();
        let v = self.model.velocity(Tensor::cat(vec![self.z.clone(); g + 1], 0), &vec![t; (g + 1) * b], &mut self.cond);
        let v_cond = v.clone().slice([0..b, 0..c, 0..h, 0..w]);
        let v_uncond = v.clone().slice([g * b..(g + 1) * b, 0..c, 0..h, 0..w]);
        let v_cfg = if g == 1 {
            v_cond.clone().mul_scalar(cfg) - v_uncond.clone().mul_scalar(cfg - 1.0)
        } else {
            let mut sum = v_uncond.clone();
            for (k, &s) in shares.iter().enumerate() {
                let v_k = v.clone().slice([k * b..(k + 1) * b, 0..c, 0..h, 0..w]);
                sum = sum + (v_k - v_uncond.clone()).mul_scalar(cfg * s);
            }
            sum
        };
        self.z = self.z.clone() + v_cfg.clone().mul_scalar(dt);
        self.step += 1;
        Some(StepOutput { step, t, v_cond, v_uncond, v_cfg })
    }
}

/// Runs the whole Euler-CFG loop from `z0` and returns the final latent `z1: [B, c, h, w]`.
pub fn sample<B: Backend, M: VelocityModel<B>>(
    model: &M,
    batch: &PromptBatch,
    z0: Tensor<B, 4>,
    config: &SampleConfig,
    on_step: impl FnMut(&StepEvent<B>),
) -> Result<Tensor<B, 4>> {
    sample_from(model, batch, z0, 0, config, on_step)
}

/// [`sample`] from grid point `start` on ([`EulerCfg::start_at`]).
pub fn sample_from<B: Backend, M: VelocityModel<B>>(
    model: &M,
    batch: &PromptBatch,
    z: Tensor<B, 4>,
    start: usize,
    config: &SampleConfig,
    mut on_step: impl FnMut(&StepEvent<B>),
) -> Result<Tensor<B, 4>> {
    let mut euler = EulerCfg::new(model, batch, z, config)?.start_at(start)?;
    while let Some(o) = euler.step() {
        on_step(&StepEvent {
            step: o.step,
            steps: euler.steps(),
            t: o.t,
            v_cond: &o.v_cond,
            v_uncond: &o.v_uncond,
            v_cfg: &o.v_cfg,
            z: euler.latent(),
        });
    }
    Ok(euler.z)
}
