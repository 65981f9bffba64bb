use burn::module::Module;
use burn::tensor::{activation::softmax, backend::Backend, Tensor};

use super::conv::conv;
use crate::checkpoint::VarBuilder;
use crate::layers::{silu, Conv2d, Conv2dSpec, GroupNorm, Linear};

const EPS: f64 = 1e-6;

/// diffusers `ResnetBlock2D` without time embedding.
#[derive(Module, Debug)]
pub struct ResnetBlock2D<B: Backend> {
    pub norm1: GroupNorm<B>,
    pub conv1: Conv2d<B>,
    pub norm2: GroupNorm<B>,
    pub conv2: Conv2d<B>,
    pub conv_shortcut: Option<Conv2d<B>>,
}

impl<B: Backend> ResnetBlock2D<B> {
    pub fn load(vb: &VarBuilder<B>, c_in: usize, c_out: usize, groups: usize) -> Self {
        Self {
            norm1: GroupNorm::load(&vb.pp("norm1"), c_in, groups, EPS),
            conv1: Conv2d::load(&vb.pp("conv1"), Conv2dSpec::new(c_in, c_out, 3).padding(1)),
            norm2: GroupNorm::load(&vb.pp("norm2"), c_out, groups, EPS),
            conv2: Conv2d::load(&vb.pp("conv2"), Conv2dSpec::new(c_out, c_out, 3).padding(1)),
            conv_shortcut: (c_in != c_out).then(|| Conv2d::load(&vb.pp("conv_shortcut"), Conv2dSpec::new(c_in, c_out, 1))),
        }
    }

    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let h = conv(&self.conv1, silu(self.norm1.forward(x.clone())));
        let h = conv(&self.conv2, silu(self.norm2.forward(h)));
        let shortcut = match &self.conv_shortcut {
            Some(c) => conv(c, x),
            None => x,
        };
        shortcut + h
    }
}

/// The single-head spatial self-attention of the VAE mid block.
#[derive(Module, Debug)]
pub struct AttentionBlock<B: Backend> {
    pub group_norm: GroupNorm<B>,
    pub to_q: Linear<B>,
    pub to_k: Linear<B>,
    pub to_v: Linear<B>,
    pub to_out: Linear<B>,
}

impl<B: Backend> AttentionBlock<B> {
    pub fn load(vb: &VarBuilder<B>, c: usize, groups: usize) -> Self {
        Self {
            group_norm: GroupNorm::load(&vb.pp("group_norm"), c, groups, EPS),
            to_q: Linear::load(&vb.pp("to_q"), c, c, true),
            to_k: Linear::load(&vb.pp("to_k"), c, c, true),
            to_v: Linear::load(&vb.pp("to_v"), c, c, true),
            to_out: Linear::load(&vb.pp("to_out").pp(0), c, c, true),
        }
    }

    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let [b, c, h, w] = x.dims();
        let seq = self.group_norm.forward(x.clone()).reshape([b, c, h * w]).swap_dims(1, 2);
        let q = self.to_q.forward(seq.clone());
        let k = self.to_k.forward(seq.clone());
        let v = self.to_v.forward(seq);
        let scores = q.matmul(k.swap_dims(1, 2)).mul_scalar((c as f64).powf(-0.5));
        let out = self.to_out.forward(softmax(scores, 2).matmul(v));
        out.swap_dims(1, 2).reshape([b, c, h, w]) + x
    }
}

/// Nearest-neighbour x2 upsampling followed by a 3x3 conv.
#[derive(Module, Debug)]
pub struct Upsample2D<B: Backend> {
    pub conv: Conv2d<B>,
}

impl<B: Backend> Upsample2D<B> {
    pub fn load(vb: &VarBuilder<B>, c: usize) -> Self {
        Self { conv: Conv2d::load(&vb.pp("conv"), Conv2dSpec::new(c, c, 3).padding(1)) }
    }

    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let [b, c, h, w] = x.dims();
        let up = x.reshape([b, c, h, 1, w, 1]).expand([b, c, h, 2, w, 2]).reshape([b, c, 2 * h, 2 * w]);
        conv(&self.conv, up)
    }
}
