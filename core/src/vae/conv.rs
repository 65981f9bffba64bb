//! The VAE's convolutions, optionally as im2col + one matrix product.
//!
//! burn-ndarray convolves directly and differentiates through a naive transposed convolution,
//! which makes training on the CPU backend very slow. The im2col form (k·k shifted views stacked
//! into `[B, C·k·k, H·W]`, then `W[co, C·k·k] × cols`) runs on the backend's GEMM both ways and is
//! many times faster there; its results match the direct convolution to float rounding. It
//! allocates `k·k` times the input, so it is opt-in per thread ([`set_im2col`]): VAE training and
//! latent encoding switch it on for ndarray; everything else keeps the direct convolution.

use std::cell::Cell;

use burn::tensor::{backend::Backend, ops::PadMode, Slice, Tensor};

use crate::layers::Conv2d;

thread_local! {
    static IM2COL: Cell<bool> = const { Cell::new(false) };
}

/// Use im2col + matmul for the VAE convolutions built into graphs on this thread when `on`.
pub fn set_im2col(on: bool) {
    IM2COL.with(|c| c.set(on));
}

pub fn im2col_enabled() -> bool {
    IM2COL.with(Cell::get)
}

/// `conv.forward(x)`, through [`conv2d_im2col`] when enabled and the weight is trained (burn's
/// direct convolution is the faster forward-only pass).
pub fn conv<B: Backend>(conv: &Conv2d<B>, x: Tensor<B, 4>) -> Tensor<B, 4> {
    if im2col_enabled() && conv.weight.val().is_require_grad() {
        conv2d_im2col(conv, x)
    } else {
        conv.forward(x)
    }
}

/// torch's Conv2d (symmetric zero padding, any stride, groups 1) as im2col + matmul: the k·k
/// (strided) views of the padded input are concatenated along the channels, `[B, k·k·C, Ho·Wo]`,
/// and multiplied by the weight laid out as `[co, kh, kw, C]`.
pub fn conv2d_im2col<B: Backend>(conv: &Conv2d<B>, x: Tensor<B, 4>) -> Tensor<B, 4> {
    if conv.groups != 1 {
        return conv.forward(x);
    }
    let weight = conv.weight.val();
    let [co, _, k, _] = weight.dims();
    let [b, c, h, w] = x.dims();
    let (s, p) = (conv.stride, conv.padding);
    let (ho, wo) = ((h + 2 * p - k) / s + 1, (w + 2 * p - k) / s + 1);
    let cols = if k == 1 && s == 1 && p == 0 {
        x.reshape([b, c, h * w])
    } else {
        let xp = if p > 0 { x.pad((p, p, p, p), PadMode::Constant(0.0)) } else { x };
        let span = |start: usize, n: usize| Slice::new(start as isize, Some((start + s * (n - 1) + 1) as isize), s as isize);
        let mut views = Vec::with_capacity(k * k);
        for kh in 0..k {
            for kw in 0..k {
                views.push(xp.clone().slice([Slice::full(), Slice::full(), span(kh, ho), span(kw, wo)]));
            }
        }
        Tensor::cat(views, 1).reshape([b, k * k * c, ho * wo])
    };
    let weight = if k == 1 { weight.reshape([1, co, c]) } else { weight.permute([0, 2, 3, 1]).reshape([1, co, k * k * c]) };
    let out = weight.matmul(cols).reshape([b, co, ho, wo]);
    match &conv.bias {
        Some(bias) => out + bias.val().reshape([1, co, 1, 1]),
        None => out,
    }
}
