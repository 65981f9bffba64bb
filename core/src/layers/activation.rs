use burn::tensor::{backend::Backend, Tensor};

/// GELU, tanh approximation (PyTorch `approximate="tanh"`): `0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³)))`.
/// The tanh argument is clamped to ±10, where tanh is ±1 in f32 already: some GPU drivers
/// (SwiftShader, Chrome's software WebGPU) compute tanh through exp and return NaN for large
/// arguments, which a trained model's activations reach.
pub fn gelu_tanh<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    let inner = (x.clone() + x.clone().powi_scalar(3).mul_scalar(0.044715)).mul_scalar((2.0 / std::f64::consts::PI).sqrt());
    let t = inner.clamp(-10.0, 10.0).tanh();
    x.mul(t.add_scalar(1.0)).mul_scalar(0.5)
}

/// SiLU as `x / (1 + e^(−x))`, with fewer elementwise passes than burn's `x · sigmoid(x)` (whose
/// sigmoid goes through log-space for stability, which the quotient does not need: for very
/// negative x, e^(−x) overflows to inf and the quotient to −0, SiLU's limit).
pub fn silu<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    x.clone().div(x.neg().exp().add_scalar(1.0))
}
