use burn::module::{Module, Param};
use burn::tensor::{backend::Backend, module::conv2d, ops::ConvOptions, Tensor};

use crate::checkpoint::VarBuilder;

/// torch.nn.Conv2d (square kernel, symmetric padding), weight `[out, in / groups, k, k]`.
#[derive(Module, Debug)]
pub struct Conv2d<B: Backend> {
    pub weight: Param<Tensor<B, 4>>,
    pub bias: Option<Param<Tensor<B, 1>>>,
    pub stride: usize,
    pub padding: usize,
    pub groups: usize,
}

pub struct Conv2dSpec {
    pub c_in: usize,
    pub c_out: usize,
    pub kernel: usize,
    pub stride: usize,
    pub padding: usize,
    pub groups: usize,
    pub bias: bool,
}

impl Conv2dSpec {
    pub fn new(c_in: usize, c_out: usize, kernel: usize) -> Self {
        Self { c_in, c_out, kernel, stride: 1, padding: 0, groups: 1, bias: true }
    }
    pub fn stride(mut self, s: usize) -> Self {
        self.stride = s;
        self
    }
    pub fn padding(mut self, p: usize) -> Self {
        self.padding = p;
        self
    }
    pub fn groups(mut self, g: usize) -> Self {
        self.groups = g;
        self
    }
    pub fn bias(mut self, b: bool) -> Self {
        self.bias = b;
        self
    }
}

impl<B: Backend> Conv2d<B> {
    pub fn load(vb: &VarBuilder<B>, s: Conv2dSpec) -> Self {
        Self {
            weight: vb.param("weight", [s.c_out, s.c_in / s.groups, s.kernel, s.kernel]),
            bias: s.bias.then(|| vb.param("bias", [s.c_out])),
            stride: s.stride,
            padding: s.padding,
            groups: s.groups,
        }
    }

    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let options = ConvOptions::new([self.stride; 2], [self.padding; 2], [1, 1], self.groups);
        conv2d(x, self.weight.val(), self.bias.as_ref().map(|b| b.val()), options)
    }
}
