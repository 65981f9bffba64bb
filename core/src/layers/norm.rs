use burn::module::{Module, Param};
use burn::tensor::{backend::Backend, Tensor};

use crate::checkpoint::VarBuilder;

/// LlamaRMSNorm over the last dimension: `w * x / sqrt(mean(x^2) + eps)`.
#[derive(Module, Debug)]
pub struct RmsNorm<B: Backend> {
    pub weight: Param<Tensor<B, 1>>,
    pub eps: f64,
}

impl<B: Backend> RmsNorm<B> {
    pub fn load(vb: &VarBuilder<B>, dim: usize, eps: f64) -> Self {
        Self { weight: vb.param("weight", [dim]), eps }
    }

    pub fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        let rms = x.clone().powi_scalar(2).mean_dim(D - 1).add_scalar(self.eps).sqrt();
        x.div(rms).mul(self.weight.val().unsqueeze())
    }

    /// RMSNorm over the channels of an NCHW map (the UViT applies it in NHWC).
    pub fn forward_channels(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        self.forward(x.permute([0, 2, 3, 1])).permute([0, 3, 1, 2])
    }
}

/// torch.nn.GroupNorm on NCHW with affine weight and bias.
#[derive(Module, Debug)]
pub struct GroupNorm<B: Backend> {
    pub weight: Param<Tensor<B, 1>>,
    pub bias: Param<Tensor<B, 1>>,
    pub groups: usize,
    pub eps: f64,
}

impl<B: Backend> GroupNorm<B> {
    pub fn load(vb: &VarBuilder<B>, channels: usize, groups: usize, eps: f64) -> Self {
        Self { weight: vb.param("weight", [channels]), bias: vb.param("bias", [channels]), groups, eps }
    }

    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let [b, c, h, w] = x.dims();
        let g = x.reshape([b, self.groups, (c / self.groups) * h * w]);
        let mean = g.clone().mean_dim(2);
        let centered = g - mean;
        let var = centered.clone().powi_scalar(2).mean_dim(2);
        let normed = centered.div(var.add_scalar(self.eps).sqrt()).reshape([b, c, h, w]);
        let weight = self.weight.val().reshape([1, c, 1, 1]);
        let bias = self.bias.val().reshape([1, c, 1, 1]);
        normed * weight + bias
    }
}

/// LayerNorm over the last dimension without affine parameters (the adaLN blocks' norm).
pub fn layer_norm<B: Backend, const D: usize>(x: Tensor<B, D>, eps: f64) -> Tensor<B, D> {
    let mean = x.clone().mean_dim(D - 1);
    let centered = x - mean;
    let var = centered.clone().powi_scalar(2).mean_dim(D - 1);
    centered.div(var.add_scalar(eps).sqrt())
}
