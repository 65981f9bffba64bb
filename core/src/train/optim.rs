use std::collections::BTreeMap;

use burn::module::{AutodiffModule, ModuleMapper, ModuleVisitor, Param};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{ElementConversion, Tensor, TensorData};

use super::ParamFilter;
use crate::checkpoint::{ParamKeys, Weights};
use crate::error::{Error, Result};

/// PyTorch's AdamW (decoupled weight decay, bias-corrected moments) plus `clip_grad_norm_`.
#[derive(Debug, Clone, Copy)]
pub struct AdamWConfig {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
    /// Maximum global L2 norm of the gradient (all trained parameters together).
    pub grad_clip: Option<f64>,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        Self { beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.0, grad_clip: Some(1.0) }
    }
}

/// Optimizer state keyed by checkpoint key, so it is saved and restored with the weights.
pub struct AdamW<B: Backend> {
    pub config: AdamWConfig,
    /// Updates applied so far.
    pub steps: u64,
    moments: BTreeMap<String, (Tensor<B, 1>, Tensor<B, 1>)>,
}

struct GradNorm<'a, AB: AutodiffBackend> {
    grads: &'a AB::Gradients,
    keys: &'a ParamKeys,
    filter: &'a ParamFilter,
    sum: Option<Tensor<AB::InnerBackend, 1>>,
}

impl<AB: AutodiffBackend> ModuleVisitor<AB> for GradNorm<'_, AB> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<AB, D>>) {
        let Some((key, _)) = self.keys.get(&param.id) else { return };
        if !self.filter.trains(key) {
            return;
        }
        if let Some(g) = param.val().grad(self.grads) {
            let s = g.powf_scalar(2.0).sum();
            self.sum = Some(match self.sum.take() {
                Some(acc) => acc + s,
                None => s,
            });
        }
    }
}

struct Update<'a, AB: AutodiffBackend> {
    opt: &'a mut AdamW<AB::InnerBackend>,
    grads: &'a AB::Gradients,
    keys: &'a ParamKeys,
    filter: &'a ParamFilter,
    lr: f64,
    grad_scale: f64,
}

impl<AB: AutodiffBackend> ModuleMapper<AB> for Update<'_, AB> {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<AB, D>>) -> Param<Tensor<AB, D>> {
        let (id, tensor, mapper) = param.consume();
        let key = match self.keys.get(&id) {
            Some((key, _)) if self.filter.trains(key) => key.to_string(),
            _ => return Param::from_mapped_value(id, tensor, mapper),
        };
        let Some(grad) = tensor.grad(self.grads) else {
            return Param::from_mapped_value(id, tensor, mapper);
        };
        let dims = tensor.dims();
        let n = dims.iter().product::<usize>();
        let c = self.opt.config;
        let lr = self.lr * self.filter.lr_factor(&key);
        let t = self.opt.steps as i32 + 1;
        let g = grad.reshape([n]).mul_scalar(self.grad_scale);
        let p = tensor.inner().reshape([n]);
        let (m, v) = self.opt.moments.remove(&key).unwrap_or_else(|| (g.zeros_like(), g.zeros_like()));
        let m = m.mul_scalar(c.beta1) + g.clone().mul_scalar(1.0 - c.beta1);
        let v = v.mul_scalar(c.beta2) + g.powf_scalar(2.0).mul_scalar(1.0 - c.beta2);
        let (bc1, bc2) = (1.0 - c.beta1.powi(t), 1.0 - c.beta2.powi(t));
        let denom = v.clone().div_scalar(bc2).sqrt().add_scalar(c.eps);
        let p = p.mul_scalar(1.0 - lr * c.weight_decay) - m.clone().div_scalar(bc1).div(denom).mul_scalar(lr);
        self.opt.moments.insert(key, (m, v));
        let new = Tensor::<AB, D>::from_inner(p.reshape(dims)).require_grad();
        Param::from_mapped_value(id, new, mapper)
    }
}

/// Marks trained parameters `require_grad` and frozen ones not (no gradient is computed for them).
struct SetTrainable<'a> {
    keys: &'a ParamKeys,
    filter: &'a ParamFilter,
}

impl<AB: AutodiffBackend> ModuleMapper<AB> for SetTrainable<'_> {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<AB, D>>) -> Param<Tensor<AB, D>> {
        let trains = self.keys.get(&param.id).is_some_and(|(k, _)| self.filter.trains(k));
        param.set_require_grad(trains)
    }
}

/// Applies `filter` to `module`: only parameters it trains get gradients.
pub fn set_trainable<AB: AutodiffBackend, M: AutodiffModule<AB>>(module: M, keys: &ParamKeys, filter: &ParamFilter) -> M {
    module.map(&mut SetTrainable { keys, filter })
}

impl<B: Backend> AdamW<B> {
    pub fn new(config: AdamWConfig) -> Self {
        Self { config, steps: 0, moments: BTreeMap::new() }
    }

    /// One update of every trained parameter that has a gradient; returns the module and the
    /// global gradient norm before clipping.
    pub fn step<AB, M>(
        &mut self,
        module: M,
        grads: &AB::Gradients,
        keys: &ParamKeys,
        filter: &ParamFilter,
        lr: f64,
    ) -> (M, f64)
    where
        AB: AutodiffBackend<InnerBackend = B>,
        M: AutodiffModule<AB>,
    {
        let mut norm = GradNorm::<AB> { grads, keys, filter, sum: None };
        module.visit(&mut norm);
        let norm = norm.sum.map(|s| s.into_scalar().elem::<f64>().sqrt()).unwrap_or(0.0);
        let grad_scale = match self.config.grad_clip {
            Some(max) if norm > max => max / (norm + 1e-6),
            _ => 1.0,
        };
        let module = module.map(&mut Update::<AB> { opt: self, grads, keys, filter, lr, grad_scale });
        self.steps += 1;
        (module, norm)
    }

    /// Moments as tensors `exp_avg.<key>` / `exp_avg_sq.<key>` (flattened).
    pub fn state(&self) -> Weights {
        let mut w = Weights::new();
        for (key, (m, v)) in &self.moments {
            for (name, t) in [("exp_avg", m), ("exp_avg_sq", v)] {
                let values = t.clone().into_data().convert::<f32>().into_vec::<f32>().expect("f32");
                w.insert_f32(&format!("{name}.{key}"), vec![values.len()], values);
            }
        }
        w
    }

    pub fn load_state(config: AdamWConfig, steps: u64, state: &Weights, device: &B::Device) -> Result<Self> {
        let mut moments = BTreeMap::new();
        for name in state.names() {
            let Some(key) = name.strip_prefix("exp_avg.") else { continue };
            let read = |n: &str| -> Result<Tensor<B, 1>> {
                let v = state
                    .read_f32(n)
                    .ok_or_else(|| Error::input(format!("optimizer state lacks {n}")))?
                    .map_err(|d| Error::input(format!("optimizer state {n} has dtype {d}")))?;
                let len = v.len();
                Ok(Tensor::from_data(TensorData::new(v, [len]), device))
            };
            moments.insert(key.to_string(), (read(name)?, read(&format!("exp_avg_sq.{key}"))?));
        }
        Ok(Self { config, steps, moments })
    }
}
