use burn::module::Module;
use burn::tensor::{backend::Backend, Bool, Tensor};

use crate::checkpoint::VarBuilder;
use crate::layers::{gelu_tanh, masked_logit, softmax_f32, Linear, RmsNorm};

/// Per-head RMSNorm of queries or keys (weight `[head_dim]`).
pub type QkNorm<B> = RmsNorm<B>;

/// `[b, s, heads*hd]` → `[b, heads, s, hd]`.
pub fn split_heads<B: Backend>(x: Tensor<B, 3>, heads: usize) -> Tensor<B, 4> {
    let [b, s, w] = x.dims();
    x.reshape([b, s, heads, w / heads]).swap_dims(1, 2)
}

/// `[b, heads, s, hd]` → `[b, s, heads*hd]`.
pub fn merge_heads<B: Backend>(x: Tensor<B, 4>) -> Tensor<B, 3> {
    let [b, h, s, d] = x.dims();
    x.swap_dims(1, 2).reshape([b, s, h * d])
}

/// Non-causal `softmax(q k^T / sqrt(d)) v`; `key_blocked: [b, 1, 1, s]` hides keys (e.g. pads).
pub fn head_attention<B: Backend>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    key_blocked: Option<&Tensor<B, 4, Bool>>,
) -> Tensor<B, 4> {
    let d = q.dims()[3];
    let scores = q.matmul(k.swap_dims(2, 3)).mul_scalar((d as f64).powf(-0.5));
    let scores = match key_blocked {
        Some(m) => {
            let [b, h, s, t] = scores.dims();
            let masked = masked_logit(scores.dtype());
            scores.mask_fill(m.clone().expand([b, h, s, t]), masked)
        }
        None => scores,
    };
    softmax_f32(scores, 3).matmul(v)
}

/// diffusers `FeedForward(dim, activation_fn="gelu-tanh")`: `net.2(gelu_tanh(net.0.proj(x)))`.
#[derive(Module, Debug)]
pub struct FeedForward<B: Backend> {
    pub proj: Linear<B>,
    pub out: Linear<B>,
}

impl<B: Backend> FeedForward<B> {
    pub fn load(vb: &VarBuilder<B>, dim: usize, inner: usize) -> Self {
        Self {
            proj: Linear::load(&vb.pp("net").pp(0).pp("proj"), dim, inner, true),
            out: Linear::load(&vb.pp("net").pp(2), inner, dim, true),
        }
    }

    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        self.out.forward(gelu_tanh(self.proj.forward(x)))
    }
}
