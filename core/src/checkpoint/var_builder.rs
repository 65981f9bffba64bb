use std::cell::RefCell;
use std::collections::BTreeSet;
use std::rc::Rc;

use burn::module::Param;
use burn::tensor::{backend::Backend, Tensor, TensorData};

use super::Weights;
use crate::error::{Error, Result, WeightProblems};

#[derive(Default)]
struct Log {
    used: BTreeSet<String>,
    problems: WeightProblems,
}

/// Builds modules by key path: `vb.pp("layers").pp(3).tensor("weight", [h, h])`.
///
/// A tensor that is missing, misshapen, non-finite or of a non-float dtype is recorded and replaced
/// by zeros so that building continues; [`VarBuilder::finish`] then reports every problem by name.
pub struct VarBuilder<'a, B: Backend> {
    weights: &'a Weights,
    prefix: String,
    device: B::Device,
    log: Rc<RefCell<Log>>,
}

impl<'a, B: Backend> Clone for VarBuilder<'a, B> {
    fn clone(&self) -> Self {
        Self { weights: self.weights, prefix: self.prefix.clone(), device: self.device.clone(), log: self.log.clone() }
    }
}

impl<'a, B: Backend> VarBuilder<'a, B> {
    pub fn new(weights: &'a Weights, device: &B::Device) -> Self {
        Self { weights, prefix: String::new(), device: device.clone(), log: Rc::default() }
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
        self.weights.contains(&self.path(name))
    }

    /// The tensor `prefix.name` with exactly `shape`.
    pub fn tensor<const D: usize>(&self, name: &str, shape: [usize; D]) -> Tensor<B, D> {
        let key = self.path(name);
        let values = self.read(&key, &shape);
        let values = values.unwrap_or_else(|| vec![0.0; shape.iter().product()]);
        Tensor::from_data(TensorData::new(values, shape), &self.device)
    }

    pub fn param<const D: usize>(&self, name: &str, shape: [usize; D]) -> Param<Tensor<B, D>> {
        Param::from_tensor(self.tensor(name, shape))
    }

    fn read(&self, key: &str, shape: &[usize]) -> Option<Vec<f32>> {
        let mut log = self.log.borrow_mut();
        let Some(stored) = self.weights.shape(key) else {
            log.problems.missing.push(key.to_string());
            return None;
        };
        log.used.insert(key.to_string());
        if stored != shape {
            log.problems.misshapen.push((key.to_string(), shape.to_vec(), stored.to_vec()));
            return None;
        }
        match self.weights.read_f32(key).expect("name is indexed") {
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
        let mut problems = log.problems.clone();
        let scope = if self.prefix.is_empty() { String::new() } else { format!("{}.", self.prefix) };
        problems.unexpected = self
            .weights
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
