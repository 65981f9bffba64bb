use burn::module::{Module, Param};
use burn::tensor::{activation::{gelu, silu}, backend::Backend, Tensor};

use crate::checkpoint::VarBuilder;
use crate::layers::{downcast, upcast, Conv2d, Conv2dSpec, Linear, RmsNorm};

/// ConvNeXt-V2 global response norm on NHWC input.
#[derive(Module, Debug)]
pub struct GlobalResponseNorm<B: Backend> {
    pub weight: Param<Tensor<B, 4>>,
    pub bias: Param<Tensor<B, 4>>,
}

impl<B: Backend> GlobalResponseNorm<B> {
    pub fn load(vb: &VarBuilder<B>, dim: usize) -> Self {
        Self { weight: vb.param("weight", [1, 1, 1, dim]), bias: vb.param("bias", [1, 1, 1, dim]) }
    }

    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        // gx = L2 norm over (h, w); nx = gx / (mean over channels + 1e-6)
        // (in f32 for half-precision input: the sum of squares overflows f16)
        let (xs, half) = upcast(x.clone());
        let gx = xs.powi_scalar(2).sum_dim(1).sum_dim(2).sqrt();
        let nx = downcast(gx.clone().div(gx.mean_dim(3).add_scalar(1e-6)), half);
        self.bias.val() + (self.weight.val() * nx).add_scalar(1.0) * x
    }
}

/// The official `ConvNextBlock`: depthwise 7x7, RMSNorm, MLP x4 with GELU and GRN, residual, then
/// FiLM from the time embedding.
#[derive(Module, Debug)]
pub struct ConvNextBlock<B: Backend> {
    pub depthwise: Conv2d<B>,
    pub norm: RmsNorm<B>,
    pub channelwise_linear_1: Linear<B>,
    pub channelwise_norm: GlobalResponseNorm<B>,
    pub channelwise_linear_2: Linear<B>,
    pub cond_embeds_mapper: Linear<B>,
}

impl<B: Backend> ConvNextBlock<B> {
    pub fn load(vb: &VarBuilder<B>, channels: usize, hidden: usize, eps: f64, bias: bool) -> Self {
        let wide = channels * 4;
        Self {
            depthwise: Conv2d::load(
                &vb.pp("depthwise"),
                Conv2dSpec::new(channels, channels, 7).padding(3).groups(channels).bias(bias),
            ),
            norm: RmsNorm::load(&vb.pp("norm"), channels, eps),
            channelwise_linear_1: Linear::load(&vb.pp("channelwise_linear_1"), channels, wide, bias),
            channelwise_norm: GlobalResponseNorm::load(&vb.pp("channelwise_norm"), wide),
            channelwise_linear_2: Linear::load(&vb.pp("channelwise_linear_2"), wide, channels, bias),
            cond_embeds_mapper: Linear::load(&vb.pp("cond_embeds_mapper"), hidden, channels * 2, bias),
        }
    }

    pub fn forward(&self, x: Tensor<B, 4>, cond: Tensor<B, 2>) -> Tensor<B, 4> {
        let residual = x.clone();
        let h = self.depthwise.forward(x).permute([0, 2, 3, 1]);
        let h = self.channelwise_linear_1.forward(self.norm.forward(h));
        let h = self.channelwise_linear_2.forward(self.channelwise_norm.forward(gelu(h)));
        let x = h.permute([0, 3, 1, 2]) + residual;
        let [b, c, _, _] = x.dims();
        let film = self.cond_embeds_mapper.forward(silu(cond));
        let scale = film.clone().slice([0..b, 0..c]).reshape([b, c, 1, 1]);
        let shift = film.slice([0..b, c..2 * c]).reshape([b, c, 1, 1]);
        shift + x * scale.add_scalar(1.0)
    }
}

/// `UVitBlock` without down/upsampling: a stack of ConvNeXt blocks (`res_blocks.*`).
#[derive(Module, Debug)]
pub struct UVitBlock<B: Backend> {
    pub res_blocks: Vec<ConvNextBlock<B>>,
}

impl<B: Backend> UVitBlock<B> {
    pub fn load(vb: &VarBuilder<B>, channels: usize, n: usize, hidden: usize, eps: f64, bias: bool) -> Self {
        let res_blocks =
            (0..n).map(|i| ConvNextBlock::load(&vb.pp("res_blocks").pp(i), channels, hidden, eps, bias)).collect();
        Self { res_blocks }
    }

    pub fn forward(&self, mut x: Tensor<B, 4>, cond: Tensor<B, 2>) -> Tensor<B, 4> {
        for block in &self.res_blocks {
            x = block.forward(x, cond.clone());
        }
        x
    }
}
