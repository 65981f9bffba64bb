use burn::module::Module;
use burn::tensor::{activation::silu, backend::Backend, Tensor, TensorData};

use crate::checkpoint::VarBuilder;
use crate::layers::Linear;

/// diffusers `Timesteps(dim, flip_sin_to_cos=True, downscale_freq_shift=0)`: `[cos(t f), sin(t f)]`
/// with `f_k = exp(-ln(10000) k / (dim/2))`, computed in float32 as PyTorch does. Returns `[t.len(), dim]`.
pub fn sinusoidal_embedding<B: Backend>(t: &[f32], dim: usize, device: &B::Device) -> Tensor<B, 2> {
    let half = dim / 2;
    let freqs: Vec<f32> =
        (0..half).map(|k| (-(10000f64.ln() as f32) * k as f32 / half as f32).exp()).collect();
    let mut out = Vec::with_capacity(t.len() * dim);
    for &tv in t {
        out.extend(freqs.iter().map(|f| (tv * f).cos()));
        out.extend(freqs.iter().map(|f| (tv * f).sin()));
    }
    Tensor::from_data(TensorData::new(out, [t.len(), dim]), device)
}

/// diffusers `TimestepEmbedding`: `linear_2(silu(linear_1(x)))`.
#[derive(Module, Debug)]
pub struct TimestepEmbedding<B: Backend> {
    pub linear_1: Linear<B>,
    pub linear_2: Linear<B>,
}

impl<B: Backend> TimestepEmbedding<B> {
    pub fn load(vb: &VarBuilder<B>, d_in: usize, d_out: usize, bias: bool) -> Self {
        Self {
            linear_1: Linear::load(&vb.pp("linear_1"), d_in, d_out, bias),
            linear_2: Linear::load(&vb.pp("linear_2"), d_out, d_out, bias),
        }
    }

    pub fn forward(&self, x: Tensor<B, 2>) -> Tensor<B, 2> {
        self.linear_2.forward(silu(self.linear_1.forward(x)))
    }
}
