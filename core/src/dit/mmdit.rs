use burn::module::Module;
use burn::tensor::{backend::Backend, Bool, Tensor};

use super::adaln::{AdaLayerNormContinuous, AdaLayerNormZero};
use super::attention::{head_attention, merge_heads, split_heads, FeedForward, QkNorm};
use crate::checkpoint::VarBuilder;
use crate::layers::Linear;

/// SD3 joint attention: separate projections per stream, per-head RMSNorm on q/k, one softmax
/// over `[image, context]`.
#[derive(Module, Debug)]
pub struct JointAttention<B: Backend> {
    pub to_q: Linear<B>,
    pub to_k: Linear<B>,
    pub to_v: Linear<B>,
    pub norm_q: Option<QkNorm<B>>,
    pub norm_k: Option<QkNorm<B>>,
    pub add_q_proj: Linear<B>,
    pub add_k_proj: Linear<B>,
    pub add_v_proj: Linear<B>,
    pub norm_added_q: Option<QkNorm<B>>,
    pub norm_added_k: Option<QkNorm<B>>,
    pub to_out: Linear<B>,
    pub to_add_out: Option<Linear<B>>,
    pub heads: usize,
}

impl<B: Backend> JointAttention<B> {
    /// `qk_norm`: per-head RMSNorm on queries and keys (diffusers `qk_norm="rms_norm"`).
    pub fn load(vb: &VarBuilder<B>, dim: usize, heads: usize, head_dim: usize, context_pre_only: bool, qk_norm: bool) -> Self {
        let inner = heads * head_dim;
        let lin = |name: &str, i: usize, o: usize| Linear::load(&vb.pp(name), i, o, true);
        let norm = |name: &str| QkNorm::load(&vb.pp(name), head_dim, 1e-6);
        Self {
            to_q: lin("to_q", dim, inner),
            to_k: lin("to_k", dim, inner),
            to_v: lin("to_v", dim, inner),
            norm_q: qk_norm.then(|| norm("norm_q")),
            norm_k: qk_norm.then(|| norm("norm_k")),
            add_q_proj: lin("add_q_proj", dim, inner),
            add_k_proj: lin("add_k_proj", dim, inner),
            add_v_proj: lin("add_v_proj", dim, inner),
            norm_added_q: qk_norm.then(|| norm("norm_added_q")),
            norm_added_k: qk_norm.then(|| norm("norm_added_k")),
            to_out: Linear::load(&vb.pp("to_out").pp(0), inner, dim, true),
            to_add_out: (!context_pre_only).then(|| lin("to_add_out", inner, dim)),
            heads,
        }
    }

    /// Returns the image and (unless context_pre_only) context outputs. `key_blocked` covers the
    /// joint sequence `[image, context]`.
    pub fn forward(
        &self,
        x: Tensor<B, 3>,
        c: Tensor<B, 3>,
        key_blocked: Option<&Tensor<B, 4, Bool>>,
    ) -> (Tensor<B, 3>, Option<Tensor<B, 3>>) {
        let h = self.heads;
        let n = x.dims()[1];
        let q = Tensor::cat(
            vec![
                normed(&self.norm_q, split_heads(self.to_q.forward(x.clone()), h)),
                normed(&self.norm_added_q, split_heads(self.add_q_proj.forward(c.clone()), h)),
            ],
            2,
        );
        let k = Tensor::cat(
            vec![
                normed(&self.norm_k, split_heads(self.to_k.forward(x.clone()), h)),
                normed(&self.norm_added_k, split_heads(self.add_k_proj.forward(c.clone()), h)),
            ],
            2,
        );
        let v = Tensor::cat(vec![split_heads(self.to_v.forward(x), h), split_heads(self.add_v_proj.forward(c), h)], 2);
        let out = merge_heads(head_attention(q, k, v, key_blocked));
        let [b, s, w] = out.dims();
        let img = self.to_out.forward(out.clone().slice([0..b, 0..n, 0..w]));
        let ctx = self.to_add_out.as_ref().map(|proj| proj.forward(out.slice([0..b, n..s, 0..w])));
        (img, ctx)
    }
}

fn normed<B: Backend>(norm: &Option<QkNorm<B>>, x: Tensor<B, 4>) -> Tensor<B, 4> {
    match norm {
        Some(n) => n.forward(x),
        None => x,
    }
}

/// The context stream's norm: AdaLayerNormZero, or AdaLayerNormContinuous in a context_pre_only block.
#[derive(Module, Debug)]
pub enum ContextNorm<B: Backend> {
    Zero(AdaLayerNormZero<B>),
    Continuous(AdaLayerNormContinuous<B>),
}

/// diffusers `JointTransformerBlock` (SD3 MM-DiT, `use_dual_attention = false`).
#[derive(Module, Debug)]
pub struct JointTransformerBlock<B: Backend> {
    pub norm1: AdaLayerNormZero<B>,
    pub norm1_context: ContextNorm<B>,
    pub attn: JointAttention<B>,
    pub ff: FeedForward<B>,
    pub ff_context: Option<FeedForward<B>>,
}

impl<B: Backend> JointTransformerBlock<B> {
    /// `cond`: width of the conditioning vector `temb` (= `dim` in SD3).
    pub fn load(
        vb: &VarBuilder<B>,
        dim: usize,
        heads: usize,
        head_dim: usize,
        cond: usize,
        context_pre_only: bool,
        qk_norm: bool,
    ) -> Self {
        let norm1_context = if context_pre_only {
            ContextNorm::Continuous(AdaLayerNormContinuous::load(&vb.pp("norm1_context"), dim, cond))
        } else {
            ContextNorm::Zero(AdaLayerNormZero::load(&vb.pp("norm1_context"), dim, cond))
        };
        Self {
            norm1: AdaLayerNormZero::load(&vb.pp("norm1"), dim, cond),
            norm1_context,
            attn: JointAttention::load(&vb.pp("attn"), dim, heads, head_dim, context_pre_only, qk_norm),
            ff: FeedForward::load(&vb.pp("ff"), dim, 4 * dim),
            ff_context: (!context_pre_only).then(|| FeedForward::load(&vb.pp("ff_context"), dim, 4 * dim)),
        }
    }

    /// `x: [b, n, dim]` image stream, `c: [b, m, dim]` context stream, `temb: [b, cond]`.
    /// Returns the new image stream and, unless context_pre_only, the new context stream.
    pub fn forward(
        &self,
        x: Tensor<B, 3>,
        c: Tensor<B, 3>,
        temb: Tensor<B, 2>,
        key_blocked: Option<&Tensor<B, 4, Bool>>,
    ) -> (Tensor<B, 3>, Option<Tensor<B, 3>>) {
        let gated = |g: &Tensor<B, 2>, y: Tensor<B, 3>| g.clone().unsqueeze_dim::<3>(1) * y;
        let m = self.norm1.chunks(temb.clone());
        let (c_normed, c_chunks) = match &self.norm1_context {
            ContextNorm::Zero(n) => {
                let ch = n.chunks(temb);
                (ch.msa.apply(c.clone()), Some(ch))
            }
            ContextNorm::Continuous(n) => (n.forward(c.clone(), temb), None),
        };
        let (attn_x, attn_c) = self.attn.forward(m.msa.apply(x.clone()), c_normed, key_blocked);
        let x = x + gated(&m.gate_msa, attn_x);
        let x = x.clone() + gated(&m.gate_mlp, self.ff.forward(m.mlp.apply(x)));
        let c = match (c_chunks, attn_c, &self.ff_context) {
            (Some(ch), Some(attn_c), Some(ff)) => {
                let c = c + gated(&ch.gate_msa, attn_c);
                Some(c.clone() + gated(&ch.gate_mlp, ff.forward(ch.mlp.apply(c))))
            }
            _ => None,
        };
        (x, c)
    }
}
