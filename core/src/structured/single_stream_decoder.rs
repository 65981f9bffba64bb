use burn::module::Module;
use burn::tensor::{backend::Backend, Bool, Tensor};

use super::SingleStreamDecoderConfig;
use crate::checkpoint::VarBuilder;
use crate::dit::{AdaLayerNormContinuous, FluxRope, SingleTransformerBlock};
use crate::layers::{Linear, RmsNorm};

/// Single-stream decoder over `[LLM text outputs, LLM image outputs]` with adaLN from the time
/// embedding, a final adaLN + linear and an unpatchify to the velocity. Keys: `gen_dec.*`.
#[derive(Module, Debug)]
pub struct SingleStreamDecoder<B: Backend> {
    pub norm_in: RmsNorm<B>,
    pub proj_in: Linear<B>,
    pub skip_proj: Option<Linear<B>>,
    pub single_transformer_blocks: Vec<SingleTransformerBlock<B>>,
    pub norm_out: AdaLayerNormContinuous<B>,
    pub proj_out: Linear<B>,
    pub patch: usize,
    pub latent: usize,
    #[module(skip)]
    pub rope: Option<FluxRope>,
}

impl<B: Backend> SingleStreamDecoder<B> {
    pub fn load(
        vb: &VarBuilder<B>,
        c: &SingleStreamDecoderConfig,
        hidden: usize,
        eps: f64,
        skip_width: usize,
        latent: usize,
        patch: usize,
    ) -> Self {
        let mlp = (c.dim as f64 * c.mlp_ratio) as usize;
        let blocks = (0..c.num_layers)
            .map(|i| {
                SingleTransformerBlock::load(
                    &vb.pp("single_transformer_blocks").pp(i),
                    c.dim,
                    c.num_attention_heads,
                    c.attention_head_dim,
                    mlp,
                    hidden,
                )
            })
            .collect();
        Self {
            norm_in: RmsNorm::load(&vb.pp("norm_in"), hidden, eps),
            proj_in: Linear::load(&vb.pp("proj_in"), hidden, c.dim, true),
            skip_proj: c.long_skip.then(|| Linear::load(&vb.pp("skip_proj"), skip_width, c.dim, true)),
            single_transformer_blocks: blocks,
            norm_out: AdaLayerNormContinuous::load(&vb.pp("norm_out"), c.dim, hidden),
            proj_out: Linear::load(&vb.pp("proj_out"), c.dim, patch * patch * latent, true),
            patch,
            latent,
            rope: c.rope.as_ref().map(|r| FluxRope { theta: r.theta, axes_dim: r.axes_dim.clone() }),
        }
    }

    /// `text: [b, p, H]`, `image: [b, n, H]` LLM outputs, `skip: [b, n, skip_width]`.
    /// `key_blocked`: `[b, 1, 1, p + n]` over `[text, image]`. Returns `[b, latent, gh*patch, gw*patch]`.
    pub fn forward(
        &self,
        text: Tensor<B, 3>,
        image: Tensor<B, 3>,
        skip: Tensor<B, 3>,
        t_emb: Tensor<B, 2>,
        grid: [usize; 2],
        key_blocked: Option<&Tensor<B, 4, Bool>>,
    ) -> Tensor<B, 4> {
        let device = image.device();
        let p_len = text.dims()[1];
        let mut img = self.proj_in.forward(self.norm_in.forward(image));
        if let Some(proj) = &self.skip_proj {
            img = img + proj.forward(skip);
        }
        let txt = self.proj_in.forward(self.norm_in.forward(text));
        let mut x = Tensor::cat(vec![txt, img], 1);
        let rope = self.rope.as_ref().map(|r| r.tensors::<B>(&FluxRope::text_image_ids(p_len, grid[0], grid[1]), &device));
        for block in &self.single_transformer_blocks {
            x = block.forward(x, t_emb.clone(), rope.as_ref().map(|(c, s)| (c, s)), key_blocked);
        }
        let [b, s, d] = x.dims();
        let img = self.norm_out.forward(x.slice([0..b, p_len..s, 0..d]), t_emb);
        self.unpatchify(self.proj_out.forward(img), grid)
    }

    /// `[b, gh*gw, p*p*c]` (features ordered p, p, c) → `[b, c, gh*p, gw*p]`.
    fn unpatchify(&self, x: Tensor<B, 3>, [gh, gw]: [usize; 2]) -> Tensor<B, 4> {
        let (p, c) = (self.patch, self.latent);
        let b = x.dims()[0];
        x.reshape([b * gh, gw, p, p, c]).permute([0, 4, 2, 1, 3]).reshape([b, gh, c, p, gw * p])
            .permute([0, 2, 1, 3, 4])
            .reshape([b, c, gh * p, gw * p])
    }
}
