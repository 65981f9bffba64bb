use burn::module::{Module, Param};
use burn::tensor::{activation::softmax, backend::Backend, DType, Tensor};

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
        // Half precision: normalise in f32, then cast back and scale (transformers' LlamaRMSNorm).
        let (x, half) = upcast(x);
        let rms = x.clone().powi_scalar(2).mean_dim(D - 1).add_scalar(self.eps).sqrt();
        downcast(x.div(rms), half).mul(self.weight.val().unsqueeze())
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
        // Statistics in f32 for half-precision input (PyTorch accumulates group_norm in f32).
        let (g, half) = upcast(x.reshape([b, self.groups, (c / self.groups) * h * w]));
        let mean = g.clone().mean_dim(2);
        let centered = g - mean;
        let var = centered.clone().powi_scalar(2).mean_dim(2);
        let normed = downcast(centered.div(var.add_scalar(self.eps).sqrt()), half).reshape([b, c, h, w]);
        let weight = self.weight.val().reshape([1, c, 1, 1]);
        let bias = self.bias.val().reshape([1, c, 1, 1]);
        normed * weight + bias
    }
}

/// LayerNorm over the last dimension without affine parameters (the adaLN blocks' norm).
pub fn layer_norm<B: Backend, const D: usize>(x: Tensor<B, D>, eps: f64) -> Tensor<B, D> {
    let (x, half) = upcast(x);
    let mean = x.clone().mean_dim(D - 1);
    let centered = x - mean;
    let var = centered.clone().powi_scalar(2).mean_dim(D - 1);
    downcast(centered.div(var.add_scalar(eps).sqrt()), half)
}

/// Half-precision (f16/bf16) activations go to f32 for statistics that overflow or lose too much
/// in 16 bits (sums of squares, softmax); returns the original dtype to cast back to. f32 tensors
/// pass through untouched.
pub fn upcast<B: Backend, const D: usize>(x: Tensor<B, D>) -> (Tensor<B, D>, Option<DType>) {
    match x.dtype() {
        d @ (DType::F16 | DType::BF16) => (x.cast(DType::F32), Some(d)),
        _ => (x, None),
    }
}

/// Back to the dtype [`upcast`] returned.
pub fn downcast<B: Backend, const D: usize>(x: Tensor<B, D>, dtype: Option<DType>) -> Tensor<B, D> {
    match dtype {
        Some(d) => x.cast(d),
        None => x,
    }
}

/// Softmax over `dim`, computed in f32 for half-precision input (transformers' eager attention:
/// `softmax(w, dtype=float32).to(dtype)`).
pub fn softmax_f32<B: Backend, const D: usize>(x: Tensor<B, D>, dim: usize) -> Tensor<B, D> {
    let (x, half) = upcast(x);
    downcast(softmax(x, dim), half)
}

/// What a masked attention logit is set to: the lowest finite value of the scores' dtype, as
/// transformers uses `finfo(dtype).min`. (`f32::MIN` would become -inf in f16/bf16, and a query
/// that sees no key at all, a left pad, would turn into NaN and spread through the values.)
pub fn masked_logit(dtype: DType) -> f32 {
    match dtype {
        DType::F16 => burn::tensor::f16::MIN.to_f32(),
        DType::BF16 => burn::tensor::bf16::MIN.to_f32(),
        _ => f32::MIN,
    }
}
