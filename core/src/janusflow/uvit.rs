use burn::module::Module;
use burn::tensor::{backend::Backend, Tensor};

use super::{sinusoidal_embedding, DecoderParams, EncoderParams, TimestepEmbedding, UVitBlock};
use crate::checkpoint::VarBuilder;
use crate::layers::{Conv2d, Conv2dSpec, RmsNorm};

/// The official `ShallowUViTEncoder`: time embedding, patchify conv, ConvNeXt mid block.
#[derive(Module, Debug)]
pub struct ShallowUViTEncoder<B: Backend> {
    pub time_embed: TimestepEmbedding<B>,
    pub in_conv: Conv2d<B>,
    pub mid_block: Option<UVitBlock<B>>,
    pub channels: usize,
}

impl<B: Backend> ShallowUViTEncoder<B> {
    pub fn load(vb: &VarBuilder<B>, p: &EncoderParams) -> Self {
        let c = p.channels();
        let first = p.block_out_channels[0];
        Self {
            time_embed: TimestepEmbedding::load(&vb.pp("time_embed"), first, p.hidden_size, p.use_bias),
            in_conv: Conv2d::load(
                &vb.pp("in_conv"),
                Conv2dSpec::new(p.input_channels, first, p.kernel_size).stride(p.stride).padding(p.padding()),
            ),
            mid_block: p
                .use_mid_block
                .then(|| UVitBlock::load(&vb.pp("mid_block"), c, p.layers_in_middle, p.hidden_size, p.norm_eps, p.use_bias)),
            channels: first,
        }
    }

    /// Time embedding `[b, hidden]` for `t` on the 0..1000 scale, one value per row.
    pub fn time_embedding(&self, t: &[f32], device: &B::Device) -> Tensor<B, 2> {
        self.time_embed.forward(sinusoidal_embedding(t, self.channels, device))
    }

    /// Returns the feature map `[b, C, h/s, w/s]` (also the decoder's skip input).
    pub fn forward(&self, x: Tensor<B, 4>, t_emb: Tensor<B, 2>) -> Tensor<B, 4> {
        let x = self.in_conv.forward(x);
        match &self.mid_block {
            Some(mid) => mid.forward(x, t_emb),
            None => x,
        }
    }
}

/// `Unpatchify`: RMSNorm over channels, 1x1 conv to `out * p * p`, PixelShuffle(p).
#[derive(Module, Debug)]
pub struct Unpatchify<B: Backend> {
    pub norm: RmsNorm<B>,
    pub unpatch_conv: Conv2d<B>,
    pub patch: usize,
}

impl<B: Backend> Unpatchify<B> {
    pub fn load(vb: &VarBuilder<B>, c_in: usize, c_out: usize, patch: usize, eps: f64, bias: bool) -> Self {
        Self {
            norm: RmsNorm::load(&vb.pp("norm"), c_in, eps),
            unpatch_conv: Conv2d::load(&vb.pp("unpatch_conv"), Conv2dSpec::new(c_in, c_out * patch * patch, 1).bias(bias)),
            patch,
        }
    }

    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        pixel_shuffle(self.unpatch_conv.forward(self.norm.forward_channels(x)), self.patch)
    }
}

/// `out[c, p*y + i, p*x + j] = in[c*p*p + i*p + j, y, x]`.
pub fn pixel_shuffle<B: Backend>(x: Tensor<B, 4>, p: usize) -> Tensor<B, 4> {
    let [b, c, h, w] = x.dims();
    let c_out = c / (p * p);
    x.reshape([b * c_out, p, p, h, w]).permute([0, 3, 1, 4, 2]).reshape([b, c_out, h * p, w * p])
}

/// The official `ShallowUViTDecoder`: input RMSNorm, long-skip concat, ConvNeXt mid block, Unpatchify.
#[derive(Module, Debug)]
pub struct ShallowUViTDecoder<B: Backend> {
    pub input_norm: RmsNorm<B>,
    pub mid_block: Option<UVitBlock<B>>,
    pub out_convs: Vec<Unpatchify<B>>,
}

impl<B: Backend> ShallowUViTDecoder<B> {
    pub fn load(vb: &VarBuilder<B>, p: &DecoderParams) -> Self {
        let c = p.channels();
        let wide = p.in_channels + c;
        let out_convs = (0..p.upsamples)
            .map(|rank| {
                let c_in = if rank == 0 { wide } else { c };
                let c_out = if rank + 1 == p.upsamples { p.out_channels } else { c };
                Unpatchify::load(&vb.pp("out_convs").pp(rank), c_in, c_out, 2, p.norm_eps, p.use_bias)
            })
            .collect();
        Self {
            input_norm: RmsNorm::load(&vb.pp("input_norm"), p.in_channels, p.norm_eps),
            mid_block: p
                .use_mid_block
                .then(|| UVitBlock::load(&vb.pp("mid_block"), wide, p.layers_in_middle, p.hidden_size, p.norm_eps, p.use_bias)),
            out_convs,
        }
    }

    pub fn forward(&self, x: Tensor<B, 4>, skip: Tensor<B, 4>, t_emb: Tensor<B, 2>) -> Tensor<B, 4> {
        let mut x = Tensor::cat(vec![self.input_norm.forward_channels(x), skip], 1);
        if let Some(mid) = &self.mid_block {
            x = mid.forward(x, t_emb);
        }
        for out in &self.out_convs {
            x = out.forward(x);
        }
        x
    }
}
