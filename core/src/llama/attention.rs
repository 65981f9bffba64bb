use burn::module::Module;
use burn::tensor::{backend::Backend, Bool, Tensor, TensorData};

use super::{KvCache, LlamaConfig, Rope};
use crate::checkpoint::VarBuilder;
use crate::layers::{masked_logit, softmax_f32, Linear};

/// `[b, 1, q_len, past + q_len]`, true where query i may NOT attend key j: causal (j > past + i)
/// or key j not visible in `key_visible[b]` (length past + q_len; `None` = all visible).
pub fn attention_mask<B: Backend>(
    key_visible: Option<&[Vec<bool>]>,
    batch: usize,
    past: usize,
    q_len: usize,
    device: &B::Device,
) -> Tensor<B, 4, Bool> {
    let s = past + q_len;
    let mut blocked = Vec::with_capacity(batch * q_len * s);
    for b in 0..batch {
        for i in 0..q_len {
            for j in 0..s {
                let hidden = key_visible.map(|kv| !kv[b][j]).unwrap_or(false);
                blocked.push(j > past + i || hidden);
            }
        }
    }
    Tensor::from_data(TensorData::new(blocked, [batch, 1, q_len, s]), device)
}

#[derive(Module, Debug)]
pub struct Attention<B: Backend> {
    pub q_proj: Linear<B>,
    pub k_proj: Linear<B>,
    pub v_proj: Linear<B>,
    pub o_proj: Linear<B>,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
}

impl<B: Backend> Attention<B> {
    pub fn load(vb: &VarBuilder<B>, c: &LlamaConfig) -> Self {
        let (h, hd, kv) = (c.hidden_size, c.head_dim(), c.kv_heads());
        let nh = c.num_attention_heads;
        Self {
            q_proj: Linear::load(&vb.pp("q_proj"), h, nh * hd, c.attention_bias),
            k_proj: Linear::load(&vb.pp("k_proj"), h, kv * hd, c.attention_bias),
            v_proj: Linear::load(&vb.pp("v_proj"), h, kv * hd, c.attention_bias),
            o_proj: Linear::load(&vb.pp("o_proj"), nh * hd, h, c.attention_bias),
            heads: nh,
            kv_heads: kv,
            head_dim: hd,
        }
    }

    fn split_heads(x: Tensor<B, 3>, heads: usize, hd: usize) -> Tensor<B, 4> {
        let [b, t, _] = x.dims();
        x.reshape([b, t, heads, hd]).swap_dims(1, 2)
    }

    /// GQA: kv head j serves query heads j*G .. j*G+G-1.
    fn repeat_kv(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let g = self.heads / self.kv_heads;
        if g == 1 {
            return x;
        }
        let [b, kv, s, d] = x.dims();
        x.unsqueeze_dim::<5>(2).expand([b, kv, g, s, d]).reshape([b, kv * g, s, d])
    }

    pub fn forward(
        &self,
        x: Tensor<B, 3>,
        rope: (&Tensor<B, 4>, &Tensor<B, 4>),
        mask: &Tensor<B, 4, Bool>,
        cache: Option<(&mut KvCache<B>, usize)>,
    ) -> Tensor<B, 3> {
        let [b, t, _] = x.dims();
        let q = Self::split_heads(self.q_proj.forward(x.clone()), self.heads, self.head_dim);
        let k = Self::split_heads(self.k_proj.forward(x.clone()), self.kv_heads, self.head_dim);
        let v = Self::split_heads(self.v_proj.forward(x), self.kv_heads, self.head_dim);
        let q = Rope::apply(q, rope.0, rope.1);
        let k = Rope::apply(k, rope.0, rope.1);
        let (k, v) = match cache {
            Some((cache, layer)) => cache.append(layer, k, v),
            None => (k, v),
        };
        let (k, v) = (self.repeat_kv(k), self.repeat_kv(v));
        let scale = (self.head_dim as f64).powf(-0.5);
        let scores = q.matmul(k.swap_dims(2, 3)).mul_scalar(scale);
        // transformers' eager attention: masked logits = finfo(dtype).min, softmax in f32.
        let masked = masked_logit(scores.dtype());
        let scores = scores.mask_fill(mask.clone(), masked);
        let out = softmax_f32(scores, 3).matmul(v);
        self.o_proj.forward(out.swap_dims(1, 2).reshape([b, t, self.heads * self.head_dim]))
    }
}
