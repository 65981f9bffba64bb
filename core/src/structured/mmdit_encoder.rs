use burn::module::Module;
use burn::tensor::{backend::Backend, Bool, Tensor, TensorData};

use super::MmditEncoderConfig;
use crate::checkpoint::VarBuilder;
use crate::dit::JointTransformerBlock;
use crate::janusflow::{sinusoidal_embedding, TimestepEmbedding};
use crate::layers::{Conv2d, Conv2dSpec, Linear};

/// MM-DiT encoder: the noisy latent (patchified, + 2-D sin-cos positions) and the prompt
/// embeddings are two streams that meet only in joint attention; each ends in an aligner to the
/// LLM width. Keys: `gen_enc.*`.
#[derive(Module, Debug)]
pub struct MmditEncoder<B: Backend> {
    pub time_embed: TimestepEmbedding<B>,
    pub x_embedder: Conv2d<B>,
    pub context_embedder: Linear<B>,
    pub transformer_blocks: Vec<JointTransformerBlock<B>>,
    pub noise_aligner: Linear<B>,
    pub text_aligner: Linear<B>,
    pub time_dim: usize,
    pub dim: usize,
}

impl<B: Backend> MmditEncoder<B> {
    pub fn load(vb: &VarBuilder<B>, c: &MmditEncoderConfig, latent: usize, patch: usize, hidden: usize) -> Self {
        let blocks = (0..c.num_layers)
            .map(|i| {
                JointTransformerBlock::load(
                    &vb.pp("transformer_blocks").pp(i),
                    c.dim,
                    c.num_attention_heads,
                    c.attention_head_dim,
                    hidden,
                    false,
                    true,
                )
            })
            .collect();
        Self {
            time_embed: TimestepEmbedding::load(&vb.pp("time_embed"), c.time_embed_dim, hidden, true),
            x_embedder: Conv2d::load(&vb.pp("x_embedder"), Conv2dSpec::new(latent, c.dim, patch).stride(patch)),
            context_embedder: Linear::load(&vb.pp("context_embedder"), hidden, c.dim, true),
            transformer_blocks: blocks,
            noise_aligner: Linear::load(&vb.pp("noise_aligner"), c.dim, hidden, true),
            text_aligner: Linear::load(&vb.pp("text_aligner"), c.dim, hidden, true),
            time_dim: c.time_embed_dim,
            dim: c.dim,
        }
    }

    pub fn time_embedding(&self, t: &[f32], device: &B::Device) -> Tensor<B, 2> {
        self.time_embed.forward(sinusoidal_embedding(t, self.time_dim, device))
    }

    /// Returns (image stream `[b, n, dim]`, text stream `[b, p, dim]`, grid).
    /// `key_blocked`: `[b, 1, 1, n + p]` over `[image, text]`.
    pub fn forward(
        &self,
        z: Tensor<B, 4>,
        text: Tensor<B, 3>,
        t_emb: Tensor<B, 2>,
        key_blocked: Option<&Tensor<B, 4, Bool>>,
    ) -> (Tensor<B, 3>, Tensor<B, 3>, [usize; 2]) {
        let device = z.device();
        let x = self.x_embedder.forward(z);
        let [b, d, gh, gw] = x.dims();
        let pos = Tensor::<B, 2>::from_data(TensorData::new(sincos_2d(d, gh, gw), [gh * gw, d]), &device);
        let mut x = x.reshape([b, d, gh * gw]).swap_dims(1, 2) + pos.unsqueeze();
        let mut c = self.context_embedder.forward(text);
        for block in &self.transformer_blocks {
            let (nx, nc) = block.forward(x, c, t_emb.clone(), key_blocked);
            x = nx;
            c = nc.expect("encoder blocks keep the context stream");
        }
        (x, c, [gh, gw])
    }
}

/// Fixed 2-D sin-cos position embedding `[gh * gw, dim]`: first half encodes the row, second the
/// column, each `[sin(p w_k), cos(p w_k)]` with `w_k = 10000^(-k / (dim/4))`.
pub fn sincos_2d(dim: usize, gh: usize, gw: usize) -> Vec<f32> {
    let quarter = dim / 4;
    let freqs: Vec<f64> = (0..quarter).map(|k| 10000f64.powf(-(k as f64) / quarter as f64)).collect();
    let mut out = Vec::with_capacity(gh * gw * dim);
    for r in 0..gh {
        for c in 0..gw {
            for p in [r as f64, c as f64] {
                out.extend(freqs.iter().map(|f| (p * f).sin() as f32));
                out.extend(freqs.iter().map(|f| (p * f).cos() as f32));
            }
            out.extend(std::iter::repeat(0.0).take(dim - 4 * quarter));
        }
    }
    out
}
