use std::collections::BTreeMap;

use burn::module::{AutodiffModule, ModuleVisitor, Param};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Tensor, TensorData};

use crate::checkpoint::{ParamKeys, Weights};
use crate::error::{Error, Result};

/// Exponential moving average of the weights, keyed by checkpoint key (module layout, flattened).
pub struct Ema<B: Backend> {
    pub decay: f64,
    values: BTreeMap<String, (Tensor<B, 1>, Vec<usize>, bool)>,
}

struct Update<'a, B: Backend> {
    ema: &'a mut Ema<B>,
    keys: &'a ParamKeys,
    decay: f64,
}

impl<AB: AutodiffBackend> ModuleVisitor<AB> for Update<'_, AB::InnerBackend> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<AB, D>>) {
        let Some((key, transposed)) = self.keys.get(&param.id) else { return };
        // Frozen parameters do not change: their average is the parameter itself.
        if !param.val().is_require_grad() {
            return;
        }
        let p = param.val().inner();
        let dims = p.dims().to_vec();
        let p = p.reshape([dims.iter().product::<usize>()]);
        let d = self.decay;
        let entry = match self.ema.values.remove(key) {
            // e + (1 − d)·(p − e) (torch's lerp_): exactly e wherever p did not move, so weights
            // that never changed (e.g. unused embedding rows) keep their value bit for bit.
            Some((e, _, _)) => e.clone() + (p - e).mul_scalar(1.0 - d),
            None => p,
        };
        self.ema.values.insert(key.to_string(), (entry, dims, transposed));
    }
}

impl<B: Backend> Ema<B> {
    pub fn new(decay: f64) -> Self {
        Self { decay, values: BTreeMap::new() }
    }

    /// Decay used at update `step` (0-based): warms up as `(1 + step) / (10 + step)`.
    pub fn decay_at(&self, step: u64) -> f64 {
        self.decay.min((1.0 + step as f64) / (10.0 + step as f64))
    }

    /// Folds the module's trained (`require_grad`) weights in; the first call for a key copies it.
    pub fn update<AB, M>(&mut self, module: &M, keys: &ParamKeys, step: u64)
    where
        AB: AutodiffBackend<InnerBackend = B>,
        M: AutodiffModule<AB>,
    {
        let decay = self.decay_at(step);
        module.visit(&mut Update::<B> { ema: self, keys, decay });
    }

    /// The averaged weights by checkpoint key in the stored layout (only keys trained so far).
    pub fn weights(&self) -> Weights {
        let mut w = Weights::new();
        for (key, (t, dims, transposed)) in &self.values {
            let values = t.clone().into_data().convert::<f32>().into_vec::<f32>().expect("f32");
            let (values, shape) = if *transposed && dims.len() == 2 {
                (transpose_2d(&values, dims[0], dims[1]), vec![dims[1], dims[0]])
            } else {
                (values, dims.clone())
            };
            w.insert_f32(key, shape, values);
        }
        w
    }

    /// Restores from [`Ema::weights`]; `layout` gives each key's transposition and stored shape.
    /// Every key of `weights` must be in `layout`.
    pub fn load(decay: f64, weights: &Weights, layout: &[(String, bool, Vec<usize>)], device: &B::Device) -> Result<Self> {
        let mut values = BTreeMap::new();
        for (key, transposed, stored) in layout {
            // Keys never trained (frozen so far) are not averaged.
            let Some(v) = weights.read_f32(key) else { continue };
            let v = v.map_err(|d| Error::input(format!("EMA state {key} has dtype {d}")))?;
            if v.len() != stored.iter().product::<usize>() {
                return Err(Error::input(format!("EMA state {key} has {} values, the model {stored:?}", v.len())));
            }
            let (v, dims) = if *transposed && stored.len() == 2 {
                (transpose_2d(&v, stored[0], stored[1]), vec![stored[1], stored[0]])
            } else {
                (v, stored.clone())
            };
            let n = v.len();
            values.insert(key.clone(), (Tensor::from_data(TensorData::new(v, [n]), device), dims, *transposed));
        }
        if let Some(extra) = weights.names().find(|n| !values.contains_key(*n)) {
            return Err(Error::input(format!("EMA state has {extra}, which the model lacks")));
        }
        Ok(Self { decay, values })
    }
}

/// A row-major `[r, c]` matrix transposed to `[c, r]`.
fn transpose_2d(values: &[f32], r: usize, c: usize) -> Vec<f32> {
    let mut out = vec![0.0; values.len()];
    for i in 0..r {
        for j in 0..c {
            out[j * r + i] = values[i * c + j];
        }
    }
    out
}
