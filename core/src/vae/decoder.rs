use burn::module::Module;
use burn::tensor::{backend::Backend, Tensor};

use super::{AttentionBlock, Encoder, ResnetBlock2D, Upsample2D, VaeConfig};
use super::conv::conv;
use crate::checkpoint::{VarBuilder, Weights};
use crate::error::Result;
use crate::layers::{silu, Conv2d, Conv2dSpec, GroupNorm};

/// Encoder-side tensors of a full AutoencoderKL checkpoint that decoding does not use.
pub const ENCODER_PREFIXES: [&str; 2] = ["encoder.", "quant_conv."];

#[derive(Module, Debug)]
pub struct MidBlock<B: Backend> {
    pub resnets: Vec<ResnetBlock2D<B>>,
    pub attentions: Vec<AttentionBlock<B>>,
}

impl<B: Backend> MidBlock<B> {
    pub fn load(vb: &VarBuilder<B>, c: usize, groups: usize, attention: bool) -> Self {
        Self {
            resnets: (0..2).map(|i| ResnetBlock2D::load(&vb.pp("resnets").pp(i), c, c, groups)).collect(),
            attentions: if attention { vec![AttentionBlock::load(&vb.pp("attentions").pp(0), c, groups)] } else { vec![] },
        }
    }

    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let mut x = self.resnets[0].forward(x);
        for attn in &self.attentions {
            x = attn.forward(x);
        }
        self.resnets[1].forward(x)
    }
}

#[derive(Module, Debug)]
pub struct UpBlock<B: Backend> {
    pub resnets: Vec<ResnetBlock2D<B>>,
    pub upsamplers: Vec<Upsample2D<B>>,
}

impl<B: Backend> UpBlock<B> {
    pub fn forward(&self, mut x: Tensor<B, 4>) -> Tensor<B, 4> {
        for r in &self.resnets {
            x = r.forward(x);
        }
        for u in &self.upsamplers {
            x = u.forward(x);
        }
        x
    }
}

#[derive(Module, Debug)]
pub struct Decoder<B: Backend> {
    pub conv_in: Conv2d<B>,
    pub mid_block: MidBlock<B>,
    pub up_blocks: Vec<UpBlock<B>>,
    pub conv_norm_out: GroupNorm<B>,
    pub conv_out: Conv2d<B>,
}

impl<B: Backend> Decoder<B> {
    pub fn load(vb: &VarBuilder<B>, c: &VaeConfig) -> Self {
        let g = c.norm_num_groups;
        let rev: Vec<usize> = c.block_out_channels.iter().rev().copied().collect();
        let top = rev[0];
        let up_blocks = rev
            .iter()
            .enumerate()
            .map(|(i, &out)| {
                let vb = vb.pp("up_blocks").pp(i);
                let prev = if i == 0 { top } else { rev[i - 1] };
                let resnets = (0..=c.layers_per_block)
                    .map(|j| ResnetBlock2D::load(&vb.pp("resnets").pp(j), if j == 0 { prev } else { out }, out, g))
                    .collect();
                let last = i + 1 == rev.len();
                let upsamplers = if last { vec![] } else { vec![Upsample2D::load(&vb.pp("upsamplers").pp(0), out)] };
                UpBlock { resnets, upsamplers }
            })
            .collect();
        let bottom = c.block_out_channels[0];
        Self {
            conv_in: Conv2d::load(&vb.pp("conv_in"), Conv2dSpec::new(c.latent_channels, top, 3).padding(1)),
            mid_block: MidBlock::load(&vb.pp("mid_block"), top, g, c.mid_block_add_attention),
            up_blocks,
            conv_norm_out: GroupNorm::load(&vb.pp("conv_norm_out"), bottom, g, 1e-6),
            conv_out: Conv2d::load(&vb.pp("conv_out"), Conv2dSpec::new(bottom, c.out_channels, 3).padding(1)),
        }
    }

    pub fn forward(&self, z: Tensor<B, 4>) -> Tensor<B, 4> {
        let mut x = self.mid_block.forward(conv(&self.conv_in, z));
        for up in &self.up_blocks {
            x = up.forward(x);
        }
        conv(&self.conv_out, silu(self.conv_norm_out.forward(x)))
    }
}

/// diffusers' `AutoencoderKL`: always the decode half; the encoder and `quant_conv` when built
/// with [`AutoencoderKl::build_full`] / [`AutoencoderKl::load_full`].
#[derive(Module, Debug)]
pub struct AutoencoderKl<B: Backend> {
    pub encoder: Option<Encoder<B>>,
    pub quant_conv: Option<Conv2d<B>>,
    pub post_quant_conv: Option<Conv2d<B>>,
    pub decoder: Decoder<B>,
    #[module(skip)]
    pub config: VaeConfig,
}

impl<B: Backend> AutoencoderKl<B> {
    pub fn load(weights: &Weights, config: &VaeConfig, device: &B::Device) -> Result<Self> {
        let vb = VarBuilder::<B>::new(weights, device);
        let model = Self::build(&vb, config);
        vb.finish(&ENCODER_PREFIXES)?;
        Ok(model)
    }

    pub fn build(vb: &VarBuilder<B>, c: &VaeConfig) -> Self {
        let l = c.latent_channels;
        Self {
            encoder: None,
            quant_conv: None,
            post_quant_conv: c
                .use_post_quant_conv
                .then(|| Conv2d::load(&vb.pp("post_quant_conv"), Conv2dSpec::new(l, l, 1))),
            decoder: Decoder::load(&vb.pp("decoder"), c),
            config: c.clone(),
        }
    }

    /// `vae.decode(latents).sample` on already scaled latents.
    pub fn decode(&self, latents: Tensor<B, 4>) -> Tensor<B, 4> {
        let z = match &self.post_quant_conv {
            Some(c) => conv(c, latents),
            None => latents,
        };
        self.decoder.forward(z)
    }

    /// Decodes a flow latent: `decode(z / scaling_factor + shift_factor)`; images in about [-1, 1].
    pub fn decode_flow_latent(&self, z: Tensor<B, 4>) -> Tensor<B, 4> {
        let mut scaled = z.div_scalar(self.config.scaling_factor);
        if let Some(shift) = self.config.shift_factor {
            scaled = scaled.add_scalar(shift);
        }
        self.decode(scaled)
    }
}
