use std::cell::RefCell;
use std::collections::BTreeSet;
use std::rc::Rc;

use burn::module::{Param, ParamId};
use burn::tensor::{backend::Backend, Tensor, TensorData};

use super::{StoredDtype, Weights};
use crate::quant::{QuantScheme, Quantized};
use crate::error::{Error, Result, WeightProblems};

#[derive(Default)]
struct Log {
    used: BTreeSet<String>,
    problems: WeightProblems,
    /// Random mode: the tensors created so far (to save the model), when recording.
    created: Weights,
    record: bool,
    shapes: Vec<(String, Vec<usize>)>,
    /// Every parameter built, with its checkpoint key (training exports weights by key).
    params: ParamKeys,
}

/// Which checkpoint key each parameter of a built module came from; `transposed` when the module
/// holds the stored tensor transposed (linear weights are kept `[in, out]`).
#[derive(Debug, Clone, Default)]
pub struct ParamKeys {
    by_id: std::collections::HashMap<ParamId, (String, bool)>,
}

impl ParamKeys {
    pub fn get(&self, id: &ParamId) -> Option<(&str, bool)> {
        self.by_id.get(id).map(|(k, t)| (k.as_str(), *t))
    }

    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    /// Every parameter's checkpoint key, in no particular order.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.by_id.values().map(|(k, _)| k.as_str())
    }

    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }
}

#[derive(Clone, Copy)]
enum Source<'a> {
    Stored(&'a Weights),
    /// Fresh weights from a seed; each tensor depends only on (seed, key), not on build order.
    Random(u64),
    /// Only record names and shapes (parameter counts); tensors are 1-element placeholders.
    Shapes,
}

/// Builds modules by key path: `vb.pp("layers").pp(3).tensor("weight", [h, h])`.
///
/// A tensor that is missing, misshapen, non-finite or of a non-float dtype is recorded and replaced
/// by zeros so that building continues; [`VarBuilder::finish`] then reports every problem by name.
pub struct VarBuilder<'a, B: Backend> {
    source: Source<'a>,
    prefix: String,
    device: B::Device,
    log: Rc<RefCell<Log>>,
}

impl<'a, B: Backend> Clone for VarBuilder<'a, B> {
    fn clone(&self) -> Self {
        Self { source: self.source, prefix: self.prefix.clone(), device: self.device.clone(), log: self.log.clone() }
    }
}

impl<'a, B: Backend> VarBuilder<'a, B> {
    pub fn new(weights: &'a Weights, device: &B::Device) -> Self {
        Self { source: Source::Stored(weights), prefix: String::new(), device: device.clone(), log: Rc::default() }
    }

    /// A builder that initialises every tensor randomly (see [`init_values`]) from `seed`.
    pub fn random(seed: u64, device: &B::Device) -> VarBuilder<'static, B> {
        VarBuilder { source: Source::Random(seed), prefix: String::new(), device: device.clone(), log: Rc::default() }
    }

    /// A builder that allocates nothing and records every tensor's key and shape.
    pub fn shapes(device: &B::Device) -> VarBuilder<'static, B> {
        VarBuilder { source: Source::Shapes, prefix: String::new(), device: device.clone(), log: Rc::default() }
    }

    /// Every (key, shape) requested so far.
    pub fn requested(&self) -> Vec<(String, Vec<usize>)> {
        self.log.borrow().shapes.clone()
    }

    /// Random mode: keep a copy of every tensor created, for [`VarBuilder::created`].
    pub fn recording(self) -> Self {
        self.log.borrow_mut().record = true;
        self
    }

    /// Random mode with recording: every tensor created so far, by key (a checkpoint of the model).
    pub fn created(&self) -> Weights {
        self.log.borrow().created.clone()
    }

    /// A builder one level deeper in the key path.
    pub fn pp(&self, name: impl std::fmt::Display) -> Self {
        let mut vb = self.clone();
        vb.prefix = self.path(&name.to_string());
        vb
    }

    pub fn path(&self, name: &str) -> String {
        if self.prefix.is_empty() {
            name.to_string()
        } else {
            format!("{}.{name}", self.prefix)
        }
    }

    pub fn device(&self) -> &B::Device {
        &self.device
    }

    pub fn contains(&self, name: &str) -> bool {
        match self.source {
            Source::Stored(w) => w.contains(&self.path(name)),
            Source::Random(_) | Source::Shapes => true,
        }
    }

    /// The tensor `prefix.name` with exactly `shape`.
    pub fn tensor<const D: usize>(&self, name: &str, shape: [usize; D]) -> Tensor<B, D> {
        let key = self.path(name);
        self.log.borrow_mut().shapes.push((key.clone(), shape.to_vec()));
        if let Source::Shapes = self.source {
            return Tensor::zeros([1; D], &self.device);
        }
        let values = self.read(&key, &shape);
        let values = values.unwrap_or_else(|| vec![0.0; shape.iter().product()]);
        Tensor::from_data(TensorData::new(values, shape), &self.device)
    }

    pub fn param<const D: usize>(&self, name: &str, shape: [usize; D]) -> Param<Tensor<B, D>> {
        let param = Param::from_tensor(self.tensor(name, shape));
        self.log.borrow_mut().params.by_id.insert(param.id, (self.path(name), false));
        param
    }

    /// A 2-D parameter held transposed (`[in, out]` for a stored `[out, in]`).
    pub fn param_transposed(&self, name: &str, shape: [usize; 2]) -> Param<Tensor<B, 2>> {
        let param = Param::from_tensor(self.tensor(name, shape).transpose());
        self.log.borrow_mut().params.by_id.insert(param.id, (self.path(name), true));
        param
    }

    /// The key of every parameter built through this builder (and its children) so far.
    pub fn param_keys(&self) -> ParamKeys {
        self.log.borrow().params.clone()
    }

    /// A quantized weight stored at `prefix.name` (I8/U8 codes + `name_scale`), or `None` when the
    /// weight is stored as floats (then use [`VarBuilder::tensor`]).
    pub fn quantized(&self, name: &str, d_out: usize, d_in: usize) -> Option<Quantized> {
        let Source::Stored(weights) = self.source else { return None };
        let key = self.path(name);
        let is_i8 = match weights.dtype(&key)? {
            StoredDtype::I8 => true,
            StoredDtype::U8 => false,
            _ => return None,
        };
        let scale_key = format!("{key}_scale");
        let mut log = self.log.borrow_mut();
        log.used.insert(key.clone());
        let Some(scale_shape) = weights.shape(&scale_key).map(<[usize]>::to_vec) else {
            log.problems.missing.push(scale_key);
            return Some(zero_quant(d_out, d_in));
        };
        log.used.insert(scale_key.clone());
        let code_shape = weights.shape(&key).expect("indexed").to_vec();
        let want_codes = vec![d_out, if is_i8 { d_in } else { d_in / 2 }];
        if code_shape != want_codes {
            log.problems.misshapen.push((key, want_codes, code_shape));
            return Some(zero_quant(d_out, d_in));
        }
        let scales = match weights.read_f32(&scale_key).expect("indexed") {
            Ok(s) if s.iter().all(|x| x.is_finite()) => s,
            Ok(_) => {
                log.problems.non_finite.push(scale_key);
                return Some(zero_quant(d_out, d_in));
            }
            Err(d) => {
                log.problems.bad_dtype.push((scale_key, d));
                return Some(zero_quant(d_out, d_in));
            }
        };
        let codes = weights.raw(&key).expect("indexed").to_vec();
        match Quantized::from_stored(codes, &code_shape, is_i8, scales, &scale_shape) {
            Some(q) => Some(q),
            None => {
                log.problems.misshapen.push((scale_key, vec![d_out, 0], scale_shape));
                Some(zero_quant(d_out, d_in))
            }
        }
    }

    fn read(&self, key: &str, shape: &[usize]) -> Option<Vec<f32>> {
        let mut log = self.log.borrow_mut();
        let weights = match self.source {
            Source::Stored(w) => w,
            Source::Shapes => return None,
            Source::Random(seed) => {
                let values = init_values(seed, key, shape);
                if log.record {
                    log.created.insert_f32(key, shape.to_vec(), values.clone());
                }
                return Some(values);
            }
        };
        let Some(stored) = weights.shape(key) else {
            log.problems.missing.push(key.to_string());
            return None;
        };
        log.used.insert(key.to_string());
        if stored != shape {
            log.problems.misshapen.push((key.to_string(), shape.to_vec(), stored.to_vec()));
            return None;
        }
        match weights.read_f32(key).expect("name is indexed") {
            Err(dtype) => {
                log.problems.bad_dtype.push((key.to_string(), dtype));
                None
            }
            Ok(v) if v.iter().any(|x| !x.is_finite()) => {
                log.problems.non_finite.push(key.to_string());
                None
            }
            Ok(v) => Some(v),
        }
    }

    /// Ends a build: an error naming every problem, and every stored tensor under this builder's
    /// prefix that no module asked for (except names starting with one of `ignored`).
    pub fn finish(self, ignored: &[&str]) -> Result<()> {
        let log = self.log.borrow();
        let Source::Stored(weights) = self.source else { return Ok(()) };
        let mut problems = log.problems.clone();
        let scope = if self.prefix.is_empty() { String::new() } else { format!("{}.", self.prefix) };
        problems.unexpected = weights
            .names()
            .filter(|n| n.starts_with(&scope) && !log.used.contains(*n))
            .filter(|n| !ignored.iter().any(|p| n.starts_with(p)))
            .map(str::to_string)
            .collect();
        if problems.is_empty() {
            Ok(())
        } else {
            Err(Error::Weights(problems))
        }
    }
}

/// Initial values of a fresh tensor, by key and shape: biases and GRN parameters 0, 1-D (norm)
/// weights 1, token embeddings N(0, 0.02), other weights N(0, 1/fan_in).
pub fn init_values(seed: u64, key: &str, shape: &[usize]) -> Vec<f32> {
    let n: usize = shape.iter().product();
    let leaf = key.rsplit('.').next().unwrap_or(key);
    let grn = key.contains("channelwise_norm.");
    // A conditioning path added to a trained model starts at zero (the model is unchanged).
    let zero_out = key.starts_with("pooled_text_embed.linear_2.") || key == "pooled_text_embed.norm.mean";
    if leaf == "bias" || grn || zero_out {
        return vec![0.0; n];
    }
    if shape.len() == 1 {
        return vec![1.0; n];
    }
    let std = if key.ends_with("embed_tokens.weight") {
        0.02
    } else {
        let fan_in: usize = shape[1..].iter().product();
        (fan_in.max(1) as f32).powf(-0.5)
    };
    // FNV-1a of the key, mixed with the seed: each tensor has its own stream.
    let hash = key.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ b as u64).wrapping_mul(0x100_0000_01b3));
    crate::noise::gaussian(seed ^ hash, n).into_iter().map(|x| x * std).collect()
}

/// A placeholder for a quantized weight that could not be read (the problem is recorded).
fn zero_quant(d_out: usize, d_in: usize) -> Quantized {
    Quantized { scheme: QuantScheme::Int8, d_out, d_in, codes: vec![0; d_out * d_in], scales: vec![1.0; d_out] }
}
