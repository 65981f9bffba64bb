use burn::module::{Module, Param};
use burn::tensor::activation::silu;
use burn::tensor::{backend::Backend, Int, Tensor, TensorData};

use crate::checkpoint::VarBuilder;
use crate::layers::Linear;
use crate::llama::Llama;

/// SD3's pooled-text projection (`PixArtAlphaTextProjection`: linear, SiLU, linear) from the
/// pooled LLM features to the time-embedding width, after a fixed per-dimension standardisation
/// (`norm.mean`, `norm.std`: set from the training captions, never trained; LLM hidden states
/// have a few large near-constant dimensions that would otherwise swamp the rest).
/// Keys: `pooled_text_embed.{norm.mean, norm.std, linear_1, linear_2}`.
#[derive(Module, Debug)]
pub struct PooledTextEmbed<B: Backend> {
    pub norm_mean: Param<Tensor<B, 1>>,
    pub norm_std: Param<Tensor<B, 1>>,
    pub linear_1: Linear<B>,
    pub linear_2: Linear<B>,
}

/// Parameters of the pooled path that training leaves as they are.
pub const POOLED_FROZEN: [&str; 2] = ["pooled_text_model.", "pooled_text_embed.norm."];

impl<B: Backend> PooledTextEmbed<B> {
    pub fn load(vb: &VarBuilder<B>, d_in: usize, d_out: usize) -> Self {
        let norm = vb.pp("norm");
        Self {
            norm_mean: norm.param("mean", [d_in]),
            norm_std: norm.param("std", [d_in]),
            linear_1: Linear::load(&vb.pp("linear_1"), d_in, d_out, true),
            linear_2: Linear::load(&vb.pp("linear_2"), d_out, d_out, true),
        }
    }

    pub fn forward(&self, pooled: Tensor<B, 2>) -> Tensor<B, 2> {
        let x = (pooled - self.norm_mean.val().unsqueeze()) / self.norm_std.val().unsqueeze();
        self.linear_2.forward(silu(self.linear_1.forward(x)))
    }
}

/// Per-dimension mean and standard deviation (floored at 1e-3) of feature rows `[n, dim]`.
pub fn feature_stats(values: &[f32], dim: usize) -> (Vec<f32>, Vec<f32>) {
    let n = (values.len() / dim.max(1)).max(1) as f64;
    let mut mean = vec![0f64; dim];
    let mut sq = vec![0f64; dim];
    for row in values.chunks(dim) {
        for (j, &v) in row.iter().enumerate() {
            mean[j] += v as f64;
            sq[j] += (v as f64) * (v as f64);
        }
    }
    let mean: Vec<f64> = mean.iter().map(|m| m / n).collect();
    let std = sq.iter().zip(&mean).map(|(s, m)| ((s / n - m * m).max(0.0).sqrt()).max(1e-3) as f32).collect();
    (mean.into_iter().map(|m| m as f32).collect(), std)
}

/// The tokens a prompt row is pooled over: between BOS and the begin-of-generation tag (with the
/// template `{prompt}`, the prompt's own tokens). Empty for the unconditional row.
pub fn prompt_body(ids: &[u32]) -> &[u32] {
    if ids.len() < 2 {
        &[]
    } else {
        &ids[1..ids.len() - 1]
    }
}

/// Mean over each sequence's tokens of the LLM's final-norm hidden states, `[n, hidden]`; an
/// empty sequence gives zeros (the unconditional row). Right-padded to the longest: under the
/// causal mask padding never reaches a real token, and its weight in the mean is zero.
pub fn mean_pooled<B: Backend>(llm: &Llama<B>, seqs: &[&[u32]], device: &B::Device) -> Tensor<B, 2> {
    let (rows, t) = (seqs.len(), seqs.iter().map(|s| s.len()).max().unwrap_or(1).max(1));
    let mut flat = Vec::with_capacity(rows * t);
    let mut weights = Vec::with_capacity(rows * t);
    for s in seqs {
        flat.extend(s.iter().map(|&x| x as i64));
        flat.extend(std::iter::repeat_n(0i64, t - s.len()));
        let w = 1.0 / s.len().max(1) as f32;
        weights.extend(std::iter::repeat_n(w, s.len()));
        weights.extend(std::iter::repeat_n(0.0f32, t - s.len()));
    }
    let x = Tensor::<B, 2, Int>::from_data(TensorData::new(flat, [rows, t]), device);
    let h = llm.forward_embeds(llm.embed(x), None, None, false).last_hidden_state;
    let w = Tensor::<B, 3>::from_data(TensorData::new(weights, [rows, t, 1]), device);
    (h * w).sum_dim(1).reshape([rows, llm.config.hidden_size])
}
