use burn::module::Module;
use burn::tensor::{activation::silu, backend::Backend, Tensor};

use crate::checkpoint::VarBuilder;
use crate::layers::{layer_norm, Linear};

const EPS: f64 = 1e-6;

/// `(shift, scale)`: `LayerNorm(x) * (1 + scale) + shift`, per sample.
#[derive(Debug, Clone)]
pub struct Modulation<B: Backend> {
    pub shift: Tensor<B, 2>,
    pub scale: Tensor<B, 2>,
}

impl<B: Backend> Modulation<B> {
    pub fn apply(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        layer_norm(x, EPS) * self.scale.clone().unsqueeze_dim::<3>(1).add_scalar(1.0) + self.shift.clone().unsqueeze_dim(1)
    }
}

/// `linear(silu(temb))` split into `n` equal chunks along features.
fn chunks<B: Backend>(linear: &Linear<B>, temb: Tensor<B, 2>, n: usize) -> Vec<Tensor<B, 2>> {
    let e = linear.forward(silu(temb));
    let [b, w] = e.dims();
    let d = w / n;
    (0..n).map(|i| e.clone().slice([0..b, i * d..(i + 1) * d])).collect()
}

/// AdaLayerNormZero: six chunks (shift, scale, gate) for attention then MLP.
#[derive(Module, Debug)]
pub struct AdaLayerNormZero<B: Backend> {
    pub linear: Linear<B>,
}

/// The six AdaLayerNormZero outputs.
pub struct ZeroChunks<B: Backend> {
    pub msa: Modulation<B>,
    pub gate_msa: Tensor<B, 2>,
    pub mlp: Modulation<B>,
    pub gate_mlp: Tensor<B, 2>,
}

impl<B: Backend> AdaLayerNormZero<B> {
    pub fn load(vb: &VarBuilder<B>, dim: usize, cond: usize) -> Self {
        Self { linear: Linear::load(&vb.pp("linear"), cond, 6 * dim, true) }
    }

    pub fn chunks(&self, temb: Tensor<B, 2>) -> ZeroChunks<B> {
        let mut c = chunks(&self.linear, temb, 6).into_iter();
        let mut next = || c.next().expect("six chunks");
        let (shift_msa, scale_msa, gate_msa) = (next(), next(), next());
        let (shift_mlp, scale_mlp, gate_mlp) = (next(), next(), next());
        ZeroChunks {
            msa: Modulation { shift: shift_msa, scale: scale_msa },
            gate_msa,
            mlp: Modulation { shift: shift_mlp, scale: scale_mlp },
            gate_mlp,
        }
    }
}

/// AdaLayerNormZeroSingle: three chunks (shift, scale, gate).
#[derive(Module, Debug)]
pub struct AdaLayerNormZeroSingle<B: Backend> {
    pub linear: Linear<B>,
}

impl<B: Backend> AdaLayerNormZeroSingle<B> {
    pub fn load(vb: &VarBuilder<B>, dim: usize, cond: usize) -> Self {
        Self { linear: Linear::load(&vb.pp("linear"), cond, 3 * dim, true) }
    }

    pub fn chunks(&self, temb: Tensor<B, 2>) -> (Modulation<B>, Tensor<B, 2>) {
        let mut c = chunks(&self.linear, temb, 3).into_iter();
        let (shift, scale, gate) = (c.next().unwrap(), c.next().unwrap(), c.next().unwrap());
        (Modulation { shift, scale }, gate)
    }
}

/// AdaLayerNormContinuous: two chunks in the order (scale, shift).
#[derive(Module, Debug)]
pub struct AdaLayerNormContinuous<B: Backend> {
    pub linear: Linear<B>,
}

impl<B: Backend> AdaLayerNormContinuous<B> {
    pub fn load(vb: &VarBuilder<B>, dim: usize, cond: usize) -> Self {
        Self { linear: Linear::load(&vb.pp("linear"), cond, 2 * dim, true) }
    }

    pub fn modulation(&self, temb: Tensor<B, 2>) -> Modulation<B> {
        let mut c = chunks(&self.linear, temb, 2).into_iter();
        let (scale, shift) = (c.next().unwrap(), c.next().unwrap());
        Modulation { shift, scale }
    }

    pub fn forward(&self, x: Tensor<B, 3>, temb: Tensor<B, 2>) -> Tensor<B, 3> {
        self.modulation(temb).apply(x)
    }
}
