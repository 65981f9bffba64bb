use burn::module::Module;
use burn::tensor::{backend::Backend, Bool, Tensor};

use super::adaln::AdaLayerNormZeroSingle;
use super::attention::{head_attention, merge_heads, split_heads, QkNorm};
use super::FluxRope;
use crate::checkpoint::VarBuilder;
use crate::layers::{gelu_tanh, Linear};

/// Flux single-stream attention: q/k/v with per-head RMSNorm, optional rotary, no output projection.
#[derive(Module, Debug)]
pub struct SingleAttention<B: Backend> {
    pub to_q: Linear<B>,
    pub to_k: Linear<B>,
    pub to_v: Linear<B>,
    pub norm_q: QkNorm<B>,
    pub norm_k: QkNorm<B>,
    pub heads: usize,
}

impl<B: Backend> SingleAttention<B> {
    pub fn load(vb: &VarBuilder<B>, dim: usize, heads: usize, head_dim: usize) -> Self {
        let inner = heads * head_dim;
        Self {
            to_q: Linear::load(&vb.pp("to_q"), dim, inner, true),
            to_k: Linear::load(&vb.pp("to_k"), dim, inner, true),
            to_v: Linear::load(&vb.pp("to_v"), dim, inner, true),
            norm_q: QkNorm::load(&vb.pp("norm_q"), head_dim, 1e-6),
            norm_k: QkNorm::load(&vb.pp("norm_k"), head_dim, 1e-6),
            heads,
        }
    }

    pub fn forward(
        &self,
        x: Tensor<B, 3>,
        rope: Option<(&Tensor<B, 4>, &Tensor<B, 4>)>,
        key_blocked: Option<&Tensor<B, 4, Bool>>,
    ) -> Tensor<B, 3> {
        let h = self.heads;
        let mut q = self.norm_q.forward(split_heads(self.to_q.forward(x.clone()), h));
        let mut k = self.norm_k.forward(split_heads(self.to_k.forward(x.clone()), h));
        let v = split_heads(self.to_v.forward(x), h);
        if let Some((cos, sin)) = rope {
            q = FluxRope::apply(q, cos, sin);
            k = FluxRope::apply(k, cos, sin);
        }
        merge_heads(head_attention(q, k, v, key_blocked))
    }
}

/// diffusers `FluxSingleTransformerBlock`: attention and MLP in parallel from one adaLN-normalised
/// input, `proj_out` over their concatenation, gated residual.
#[derive(Module, Debug)]
pub struct SingleTransformerBlock<B: Backend> {
    pub norm: AdaLayerNormZeroSingle<B>,
    pub proj_mlp: Linear<B>,
    pub attn: SingleAttention<B>,
    pub proj_out: Linear<B>,
}

impl<B: Backend> SingleTransformerBlock<B> {
    pub fn load(vb: &VarBuilder<B>, dim: usize, heads: usize, head_dim: usize, mlp_dim: usize, cond: usize) -> Self {
        Self {
            norm: AdaLayerNormZeroSingle::load(&vb.pp("norm"), dim, cond),
            proj_mlp: Linear::load(&vb.pp("proj_mlp"), dim, mlp_dim, true),
            attn: SingleAttention::load(&vb.pp("attn"), dim, heads, head_dim),
            proj_out: Linear::load(&vb.pp("proj_out"), heads * head_dim + mlp_dim, dim, true),
        }
    }

    /// `x: [b, s, dim]` (text tokens first, then image tokens), `temb: [b, cond]`.
    pub fn forward(
        &self,
        x: Tensor<B, 3>,
        temb: Tensor<B, 2>,
        rope: Option<(&Tensor<B, 4>, &Tensor<B, 4>)>,
        key_blocked: Option<&Tensor<B, 4, Bool>>,
    ) -> Tensor<B, 3> {
        let (m, gate) = self.norm.chunks(temb);
        let normed = m.apply(x.clone());
        let mlp = gelu_tanh(self.proj_mlp.forward(normed.clone()));
        let attn = self.attn.forward(normed, rope, key_blocked);
        let out = self.proj_out.forward(Tensor::cat(vec![attn, mlp], 2));
        x + gate.unsqueeze_dim::<3>(1) * out
    }
}
