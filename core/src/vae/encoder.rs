//! The encode half of diffusers' `AutoencoderKL`: `Encoder` (down blocks, mid block, 2·latent
//! output channels), `quant_conv` and the diagonal Gaussian posterior.

use burn::module::Module;
use burn::tensor::{backend::Backend, ops::PadMode, Tensor};

use super::{AutoencoderKl, Decoder, MidBlock, ResnetBlock2D, VaeConfig};
use super::conv::conv;
use crate::checkpoint::{VarBuilder, Weights};
use crate::error::{Error, Result};
use crate::layers::{silu, Conv2d, Conv2dSpec, GroupNorm};

/// diffusers `Downsample2D(use_conv=True, padding=0)`: zero-pad right and bottom by one, then a
/// 3x3 stride-2 conv without padding.
#[derive(Module, Debug)]
pub struct Downsample2D<B: Backend> {
    pub conv: Conv2d<B>,
}

impl<B: Backend> Downsample2D<B> {
    pub fn load(vb: &VarBuilder<B>, c: usize) -> Self {
        Self { conv: Conv2d::load(&vb.pp("conv"), Conv2dSpec::new(c, c, 3).stride(2)) }
    }

    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        conv(&self.conv, x.pad((0, 1, 0, 1), PadMode::Constant(0.0)))
    }
}

/// diffusers `DownEncoderBlock2D`.
#[derive(Module, Debug)]
pub struct DownBlock<B: Backend> {
    pub resnets: Vec<ResnetBlock2D<B>>,
    pub downsamplers: Vec<Downsample2D<B>>,
}

impl<B: Backend> DownBlock<B> {
    pub fn forward(&self, mut x: Tensor<B, 4>) -> Tensor<B, 4> {
        for r in &self.resnets {
            x = r.forward(x);
        }
        for d in &self.downsamplers {
            x = d.forward(x);
        }
        x
    }
}

/// diffusers `Encoder` with `double_z`: images `[B, in, H, W]` → `[B, 2·latent, H/f, W/f]`.
#[derive(Module, Debug)]
pub struct Encoder<B: Backend> {
    pub conv_in: Conv2d<B>,
    pub down_blocks: Vec<DownBlock<B>>,
    pub mid_block: MidBlock<B>,
    pub conv_norm_out: GroupNorm<B>,
    pub conv_out: Conv2d<B>,
}

impl<B: Backend> Encoder<B> {
    pub fn load(vb: &VarBuilder<B>, c: &VaeConfig) -> Self {
        let g = c.norm_num_groups;
        let ch = &c.block_out_channels;
        let down_blocks = ch
            .iter()
            .enumerate()
            .map(|(i, &out)| {
                let vb = vb.pp("down_blocks").pp(i);
                let prev = if i == 0 { ch[0] } else { ch[i - 1] };
                let resnets = (0..c.layers_per_block)
                    .map(|j| ResnetBlock2D::load(&vb.pp("resnets").pp(j), if j == 0 { prev } else { out }, out, g))
                    .collect();
                let last = i + 1 == ch.len();
                let downsamplers = if last { vec![] } else { vec![Downsample2D::load(&vb.pp("downsamplers").pp(0), out)] };
                DownBlock { resnets, downsamplers }
            })
            .collect();
        let top = *ch.last().expect("validated: at least one block");
        Self {
            conv_in: Conv2d::load(&vb.pp("conv_in"), Conv2dSpec::new(c.in_channels, ch[0], 3).padding(1)),
            down_blocks,
            mid_block: MidBlock::load(&vb.pp("mid_block"), top, g, c.mid_block_add_attention),
            conv_norm_out: GroupNorm::load(&vb.pp("conv_norm_out"), top, g, 1e-6),
            conv_out: Conv2d::load(&vb.pp("conv_out"), Conv2dSpec::new(top, 2 * c.latent_channels, 3).padding(1)),
        }
    }

    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let mut x = conv(&self.conv_in, x);
        for down in &self.down_blocks {
            x = down.forward(x);
        }
        let x = self.mid_block.forward(x);
        conv(&self.conv_out, silu(self.conv_norm_out.forward(x)))
    }
}

/// diffusers `DiagonalGaussianDistribution`: the posterior `N(mean, exp(logvar))` per latent
/// element, `logvar` clamped to [-30, 20].
#[derive(Debug, Clone)]
pub struct DiagonalGaussian<B: Backend> {
    pub mean: Tensor<B, 4>,
    pub logvar: Tensor<B, 4>,
}

impl<B: Backend> DiagonalGaussian<B> {
    /// Splits moments `[B, 2C, h, w]` into mean (first C channels) and logvar (last C).
    pub fn from_moments(moments: Tensor<B, 4>) -> Self {
        let mut halves = moments.chunk(2, 1).into_iter();
        let mean = halves.next().expect("mean half");
        let logvar = halves.next().expect("logvar half").clamp(-30.0, 20.0);
        Self { mean, logvar }
    }

    pub fn std(&self) -> Tensor<B, 4> {
        self.logvar.clone().mul_scalar(0.5).exp()
    }

    /// `mean + std · eps` for standard normal `eps` of the same shape.
    pub fn sample(&self, eps: Tensor<B, 4>) -> Tensor<B, 4> {
        self.mean.clone() + self.std() * eps
    }

    /// KL divergence to N(0, 1) per batch row: `0.5 · Σ (mean² + var − 1 − logvar)` over C, h, w.
    pub fn kl(&self) -> Tensor<B, 1> {
        let [b, _, _, _] = self.mean.dims();
        let var = self.logvar.clone().exp();
        let terms = self.mean.clone().powi_scalar(2) + var - self.logvar.clone().add_scalar(1.0);
        terms.reshape([b as i32, -1]).sum_dim(1).mul_scalar(0.5).reshape([b])
    }
}

impl<B: Backend> AutoencoderKl<B> {
    /// The whole VAE (encoder, `quant_conv`, `post_quant_conv`, decoder); every stored tensor must
    /// be used and every expected one present.
    pub fn load_full(weights: &Weights, config: &VaeConfig, device: &B::Device) -> Result<Self> {
        let vb = VarBuilder::<B>::new(weights, device);
        let model = Self::build_full(&vb, config);
        vb.finish(&[])?;
        Ok(model)
    }

    /// Both halves from a builder (random init for training, or stored weights).
    pub fn build_full(vb: &VarBuilder<B>, c: &VaeConfig) -> Self {
        let l = c.latent_channels;
        let conv1x1 = |name: &str, on: bool| on.then(|| Conv2d::load(&vb.pp(name), Conv2dSpec::new(l, l, 1)));
        Self {
            encoder: Some(Encoder::load(&vb.pp("encoder"), c)),
            quant_conv: c.use_quant_conv.then(|| Conv2d::load(&vb.pp("quant_conv"), Conv2dSpec::new(2 * l, 2 * l, 1))),
            post_quant_conv: conv1x1("post_quant_conv", c.use_post_quant_conv),
            decoder: Decoder::load(&vb.pp("decoder"), c),
            config: c.clone(),
        }
    }

    pub fn has_encoder(&self) -> bool {
        self.encoder.is_some()
    }

    /// `vae.encode(x).latent_dist` for images `[B, in, H, W]` in [-1, 1] (H, W multiples of
    /// [`VaeConfig::upscale`]).
    pub fn encode(&self, x: Tensor<B, 4>) -> Result<DiagonalGaussian<B>> {
        let encoder = self
            .encoder
            .as_ref()
            .ok_or_else(|| Error::input("this VAE was loaded without its encoder (decoder-only checkpoint?)"))?;
        let [_, c, h, w] = x.dims();
        let f = self.config.upscale();
        if c != self.config.in_channels || h % f != 0 || w % f != 0 || h == 0 || w == 0 {
            return Err(Error::input(format!(
                "VAE input {:?}: expected {} channels and a size that is a positive multiple of {f}",
                x.dims(),
                self.config.in_channels
            )));
        }
        let moments = encoder.forward(x);
        let moments = match &self.quant_conv {
            Some(c) => conv(c, moments),
            None => moments,
        };
        Ok(DiagonalGaussian::from_moments(moments))
    }

    /// The flow latent of images: `(mean − shift_factor) · scaling_factor`, the exact inverse of
    /// [`AutoencoderKl::decode_flow_latent`]'s scaling.
    pub fn encode_flow_latent(&self, x: Tensor<B, 4>) -> Result<Tensor<B, 4>> {
        Ok(self.flow_latent_of_mean(self.encode(x)?.mean))
    }

    /// `(mean − shift_factor) · scaling_factor` of a posterior mean.
    pub fn flow_latent_of_mean(&self, mean: Tensor<B, 4>) -> Tensor<B, 4> {
        let shifted = match self.config.shift_factor {
            Some(shift) => mean.sub_scalar(shift),
            None => mean,
        };
        shifted.mul_scalar(self.config.scaling_factor)
    }
}
