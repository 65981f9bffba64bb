use burn::module::{Module, ModuleVisitor, Param, ParamId};
use burn::tensor::{backend::Backend, Tensor};

use crate::checkpoint::{ParamKeys, Weights};

/// Which parameters train, and how fast: every parameter whose key starts with one of `frozen`
/// is left as is; one whose key starts with a prefix in `lr_scale` steps at that multiple of the
/// learning rate (PyTorch's parameter groups; the first matching prefix wins).
#[derive(Debug, Clone, Default)]
pub struct ParamFilter {
    pub frozen: Vec<String>,
    pub lr_scale: Vec<(String, f64)>,
}

impl ParamFilter {
    pub fn trains(&self, key: &str) -> bool {
        !self.frozen.iter().any(|p| key.starts_with(p.as_str()))
    }

    /// The learning-rate multiplier of the parameter `key` (1 unless a prefix matches).
    pub fn lr_factor(&self, key: &str) -> f64 {
        self.lr_scale.iter().find(|(p, _)| key.starts_with(p.as_str())).map_or(1.0, |(_, f)| *f)
    }
}

struct Collect<'a> {
    keys: &'a ParamKeys,
    out: Vec<(ParamId, String, bool, Vec<usize>, Vec<f32>)>,
}

impl<B: Backend> ModuleVisitor<B> for Collect<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        let Some((key, transposed)) = self.keys.get(&param.id) else { return };
        let t = param.val();
        let t = if transposed && D == 2 { t.transpose() } else { t };
        let shape = t.dims().to_vec();
        let values = t.into_data().convert::<f32>().into_vec::<f32>().expect("f32 data");
        self.out.push((param.id, key.to_string(), transposed, shape, values));
    }
}

/// Every float parameter of `module` that `keys` names: (id, key, transposed, stored shape, values).
pub fn float_params<B: Backend, M: Module<B>>(
    module: &M,
    keys: &ParamKeys,
) -> Vec<(ParamId, String, bool, Vec<usize>, Vec<f32>)> {
    let mut c = Collect { keys, out: Vec::new() };
    module.visit(&mut c);
    c.out
}

/// The module's weights by checkpoint key, in the stored layout (a loadable checkpoint).
pub fn export_weights<B: Backend, M: Module<B>>(module: &M, keys: &ParamKeys) -> Weights {
    let mut w = Weights::new();
    for (_, key, _, shape, values) in float_params(module, keys) {
        w.insert_f32(&key, shape, values);
    }
    w
}
