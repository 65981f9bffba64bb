//! Decoded images to 8-bit pixels, as the official demo converts them.

/// `[3, H, W]` values in about [-1, 1] → interleaved RGB8 `[H, W, 3]`:
/// `((clip(x, -1, 1) + 1) / 2 * 255)` truncated.
pub fn to_rgb8(chw: &[f32], height: usize, width: usize) -> Vec<u8> {
    let plane = height * width;
    let mut out = vec![0u8; plane * 3];
    for c in 0..3 {
        for i in 0..plane {
            let x = chw[c * plane + i];
            let x = if x.is_nan() { 0.0 } else { x.clamp(-1.0, 1.0) };
            out[i * 3 + c] = ((x + 1.0) / 2.0 * 255.0) as u8;
        }
    }
    out
}

/// PSNR in dB of two images with values in [-1, 1] (clipped), on the [0, 1] scale; infinite when equal.
pub fn psnr(a: &[f32], b: &[f32]) -> f64 {
    let to01 = |x: f32| ((x.clamp(-1.0, 1.0) + 1.0) / 2.0) as f64;
    let mse = a.iter().zip(b).map(|(x, y)| (to01(*x) - to01(*y)).powi(2)).sum::<f64>() / a.len().max(1) as f64;
    if mse == 0.0 {
        f64::INFINITY
    } else {
        10.0 * (1.0 / mse).log10()
    }
}
