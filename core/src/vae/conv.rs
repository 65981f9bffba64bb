//! The VAE's convolutions, optionally as matrix products.
//!
//! burn-ndarray convolves directly at about 0.3 GFLOP/s on this VAE's shapes and differentiates
//! through a naive transposed convolution. As matrix products the same convolutions run on the
//! backend's GEMM, many times faster there; results match the direct convolution to float
//! rounding. Opt-in per thread ([`set_im2col`]; the ndarray backend switches it on): trained
//! convolutions use im2col ([`conv2d_im2col`]), inference uses k·k products over shifted views
//! of the input ([`conv2d_shifted`]), which copies nothing k·k times.

use std::cell::Cell;

use burn::tensor::{backend::Backend, ops::PadMode, Slice, Tensor};

use crate::layers::Conv2d;

thread_local! {
    static IM2COL: Cell<bool> = const { Cell::new(false) };
}

/// Use matrix-product convolutions for the VAE convolutions built into graphs on this thread when `on`.
pub fn set_im2col(on: bool) {
    IM2COL.with(|c| c.set(on));
}

pub fn im2col_enabled() -> bool {
    IM2COL.with(Cell::get)
}

/// `conv.forward(x)`; when enabled, through [`conv2d_im2col`] for a trained weight and
/// [`conv2d_shifted`] otherwise.
pub fn conv<B: Backend>(conv: &Conv2d<B>, x: Tensor<B, 4>) -> Tensor<B, 4> {
    if !im2col_enabled() {
        conv.forward(x)
    } else if conv.weight.val().is_require_grad() {
        conv2d_im2col(conv, x)
    } else {
        conv2d_shifted(conv, x)
    }
}

/// A stride-1 convolution (groups 1) as one matrix product per kernel tap, with no im2col copy.
/// Padded to width Wp and flattened, the input holds output pixel (i, j)'s tap (kh, kw) at flat
/// position (i + kh)·Wp + j + kw, so each tap reads one contiguous slice of the flat input. The
/// products cover a grid Wp wide, whose last k − 1 columns are dropped; one extra zero row at the
/// bottom keeps the last tap's slice in bounds. Strided convolutions go to [`conv2d_im2col`].
pub fn conv2d_shifted<B: Backend>(conv: &Conv2d<B>, x: Tensor<B, 4>) -> Tensor<B, 4> {
    if conv.groups != 1 || conv.stride != 1 {
        return conv2d_im2col(conv, x);
    }
    let weight = conv.weight.val();
    let [co, c, k, _] = weight.dims();
    let [b, _, h, w] = x.dims();
    let p = conv.padding;
    let extra = usize::from(k > 1);
    let (wp, ho, wo) = (w + 2 * p, h + 2 * p + 1 - k, w + 2 * p + 1 - k);
    let padded = if p + extra > 0 { x.pad((p, p, p, p + extra), PadMode::Constant(0.0)) } else { x };
    let flat = padded.reshape([b, c, (h + 2 * p + extra) * wp]);
    let taps = weight.permute([2, 3, 0, 1]);
    let mut out: Option<Tensor<B, 3>> = None;
    for kh in 0..k {
        for kw in 0..k {
            let tap = taps.clone().slice([kh..kh + 1, kw..kw + 1]).reshape([1, co, c]);
            let start = kh * wp + kw;
            let y = tap.matmul(flat.clone().slice([Slice::full(), Slice::full(), Slice::from(start..start + ho * wp)]));
            out = Some(match out {
                Some(o) => o + y,
                None => y,
            });
        }
    }
    let out = out.expect("a kernel has at least one tap");
    // An explicit expand: burn-ndarray's implicit broadcasting is several times slower.
    let out = match &conv.bias {
        Some(bias) => out + bias.val().reshape([1, co, 1]).expand([b, co, ho * wp]),
        None => out,
    };
    let out = out.reshape([b, co, ho, wp]);
    if wo == wp {
        out
    } else {
        out.slice([0..b, 0..co, 0..ho, 0..wo])
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
