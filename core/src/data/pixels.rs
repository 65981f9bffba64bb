//! Pixel work for the datasets: PNG decoding to RGBA8, compositing on white, center crop and
//! resizing (area average down, bilinear up).

use crate::error::{Error, Result};

/// An RGB8 image, `[height, width, 3]`.
#[derive(Clone, Debug, PartialEq)]
pub struct Rgb {
    pub width: usize,
    pub height: usize,
    pub data: Vec<u8>,
}

/// Decodes a PNG of any colour type and bit depth to RGBA8 `(width, height, [h, w, 4])`.
/// `name` names the file in the error.
pub fn decode_png_rgba(name: &str, bytes: &[u8]) -> Result<(usize, usize, Vec<u8>)> {
    let bad = |e: &dyn std::fmt::Display| Error::input(format!("{name}: not a readable PNG image: {e}"));
    let mut decoder = png::Decoder::new(bytes);
    decoder.set_transformations(png::Transformations::EXPAND | png::Transformations::STRIP_16);
    let mut reader = decoder.read_info().map_err(|e| bad(&e))?;
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf).map_err(|e| bad(&e))?;
    let (w, h) = (info.width as usize, info.height as usize);
    if w == 0 || h == 0 {
        return Err(bad(&"empty image"));
    }
    if info.bit_depth != png::BitDepth::Eight {
        return Err(bad(&format!("unsupported bit depth {:?}", info.bit_depth)));
    }
    let px = &buf[..info.buffer_size()];
    let rgba: Vec<u8> = match info.color_type {
        png::ColorType::Rgba => px.to_vec(),
        png::ColorType::Rgb => px.chunks_exact(3).flat_map(|p| [p[0], p[1], p[2], 255]).collect(),
        png::ColorType::GrayscaleAlpha => px.chunks_exact(2).flat_map(|p| [p[0], p[0], p[0], p[1]]).collect(),
        png::ColorType::Grayscale => px.iter().flat_map(|&g| [g, g, g, 255]).collect(),
        png::ColorType::Indexed => return Err(bad(&"palette not expanded")),
    };
    if rgba.len() != w * h * 4 {
        return Err(bad(&"truncated pixel data"));
    }
    Ok((w, h, rgba))
}

/// RGBA8 (straight alpha) over an opaque white background → RGB8:
/// `round((c * a + 255 * (255 - a)) / 255)`.
pub fn composite_on_white(width: usize, height: usize, rgba: &[u8]) -> Rgb {
    let data = rgba
        .chunks_exact(4)
        .flat_map(|p| {
            let a = p[3] as u32;
            let mix = |c: u8| ((c as u32 * a + 255 * (255 - a) + 127) / 255) as u8;
            [mix(p[0]), mix(p[1]), mix(p[2])]
        })
        .collect();
    Rgb { width, height, data }
}

/// The centered square of side `min(width, height)`.
pub fn center_crop_square(img: &Rgb) -> Rgb {
    let side = img.width.min(img.height);
    if img.width == side && img.height == side {
        return img.clone();
    }
    let (x0, y0) = ((img.width - side) / 2, (img.height - side) / 2);
    let mut data = Vec::with_capacity(side * side * 3);
    for y in y0..y0 + side {
        let row = (y * img.width + x0) * 3;
        data.extend_from_slice(&img.data[row..row + side * 3]);
    }
    Rgb { width: side, height: side, data }
}

/// Per output coordinate, the input coordinates and weights of an area (box) average from `n_in`
/// to `n_out <= n_in` samples: each output covers `n_in / n_out` inputs, partial ones weighted by
/// their overlap.
fn area_weights(n_in: usize, n_out: usize) -> Vec<Vec<(usize, f64)>> {
    let scale = n_in as f64 / n_out as f64;
    (0..n_out)
        .map(|o| {
            let (lo, hi) = (o as f64 * scale, (o + 1) as f64 * scale);
            let mut w = vec![];
            let mut i = lo.floor() as usize;
            while (i as f64) < hi && i < n_in {
                let overlap = (hi.min(i as f64 + 1.0) - lo.max(i as f64)).max(0.0);
                if overlap > 1e-12 {
                    w.push((i, overlap / scale));
                }
                i += 1;
            }
            w
        })
        .collect()
}

/// Bilinear weights from `n_in` to `n_out` samples, half-pixel centres, edges clamped
/// (PyTorch `align_corners=False`, PIL-like for upscaling).
fn bilinear_weights(n_in: usize, n_out: usize) -> Vec<Vec<(usize, f64)>> {
    let scale = n_in as f64 / n_out as f64;
    (0..n_out)
        .map(|o| {
            let x = ((o as f64 + 0.5) * scale - 0.5).clamp(0.0, (n_in - 1) as f64);
            let i0 = x.floor() as usize;
            let i1 = (i0 + 1).min(n_in - 1);
            let f = x - i0 as f64;
            if i1 == i0 || f == 0.0 {
                vec![(i0, 1.0)]
            } else {
                vec![(i0, 1.0 - f), (i1, f)]
            }
        })
        .collect()
}

fn separable(img: &Rgb, size: usize, weights: impl Fn(usize, usize) -> Vec<Vec<(usize, f64)>>) -> Rgb {
    let (wx, wy) = (weights(img.width, size), weights(img.height, size));
    // Rows first (width → size), in f64, then columns, rounding once at the end.
    let mut tmp = vec![0f64; img.height * size * 3];
    for y in 0..img.height {
        for (ox, ws) in wx.iter().enumerate() {
            for c in 0..3 {
                tmp[(y * size + ox) * 3 + c] =
                    ws.iter().map(|&(ix, w)| w * img.data[(y * img.width + ix) * 3 + c] as f64).sum();
            }
        }
    }
    let mut data = vec![0u8; size * size * 3];
    for (oy, ws) in wy.iter().enumerate() {
        for ox in 0..size {
            for c in 0..3 {
                let v: f64 = ws.iter().map(|&(iy, w)| w * tmp[(iy * size + ox) * 3 + c]).sum();
                data[(oy * size + ox) * 3 + c] = v.round().clamp(0.0, 255.0) as u8;
            }
        }
    }
    Rgb { width: size, height: size, data }
}

/// A square image resized to `size × size`: unchanged when equal, area average when smaller,
/// bilinear when larger.
pub fn resize_square(img: &Rgb, size: usize) -> Rgb {
    assert_eq!(img.width, img.height, "resize_square needs a square image");
    if img.width == size {
        img.clone()
    } else if size < img.width {
        separable(img, size, area_weights)
    } else {
        separable(img, size, bilinear_weights)
    }
}

/// Bilinear resize of a square image to `size × size` (also when shrinking).
pub fn resize_bilinear(img: &Rgb, size: usize) -> Rgb {
    if img.width == size && img.height == size {
        return img.clone();
    }
    separable(img, size, bilinear_weights)
}

/// Center crop to a square, then [`resize_square`].
pub fn fit_square(img: &Rgb, size: usize) -> Rgb {
    resize_square(&center_crop_square(img), size)
}

/// Images laid out in a grid of `cols` columns (white gaps of `gap` pixels) as one RGB8 image.
pub fn grid(images: &[&[u8]], size: usize, cols: usize, gap: usize) -> Rgb {
    let cols = cols.max(1).min(images.len().max(1));
    let rows = images.len().div_ceil(cols).max(1);
    let width = cols * size + (cols + 1) * gap;
    let height = rows * size + (rows + 1) * gap;
    let mut data = vec![255u8; width * height * 3];
    for (k, img) in images.iter().enumerate() {
        let (gx, gy) = (gap + (k % cols) * (size + gap), gap + (k / cols) * (size + gap));
        for y in 0..size {
            let dst = ((gy + y) * width + gx) * 3;
            data[dst..dst + size * 3].copy_from_slice(&img[y * size * 3..(y + 1) * size * 3]);
        }
    }
    Rgb { width, height, data }
}

/// Encodes RGB8 as PNG.
pub fn encode_png_rgb(img: &Rgb) -> Result<Vec<u8>> {
    let mut out = vec![];
    {
        let mut enc = png::Encoder::new(&mut out, img.width as u32, img.height as u32);
        enc.set_color(png::ColorType::Rgb);
        enc.set_depth(png::BitDepth::Eight);
        let mut w = enc.write_header().map_err(|e| Error::Io(format!("png: {e}")))?;
        w.write_image_data(&img.data).map_err(|e| Error::Io(format!("png: {e}")))?;
    }
    Ok(out)
}

/// RGB8 images `[H·W·3]` of side `side` as f32 in [-1, 1] (`x / 127.5 - 1`), layout `[n, 3, H, W]`.
pub fn rgb8_to_nchw(images: &[&[u8]], side: usize) -> Vec<f32> {
    let plane = side * side;
    let mut out = vec![0f32; images.len() * 3 * plane];
    for (img, dst) in images.iter().zip(out.chunks_mut(3 * plane)) {
        for p in 0..plane {
            for c in 0..3 {
                dst[c * plane + p] = img[p * 3 + c] as f32 / 127.5 - 1.0;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn composite_on_white_mixes_straight_alpha() {
        let rgba = [255, 0, 0, 255, 255, 0, 0, 0, 0, 0, 0, 128, 10, 20, 30, 255];
        let out = composite_on_white(2, 2, &rgba);
        assert_eq!(out.data, vec![255, 0, 0, 255, 255, 255, 127, 127, 127, 10, 20, 30]);
    }

    #[test]
    fn area_downscale_averages_blocks_and_identity_is_exact() {
        let img = Rgb { width: 4, height: 4, data: (0..48).map(|i| (i * 5) as u8).collect() };
        assert_eq!(resize_square(&img, 4), img);
        let half = resize_square(&img, 2);
        // Top-left 2x2 block, red channel: pixels 0,1,4,5 → values 0,15,60,75 → mean 37.5 → 38.
        assert_eq!(half.data[0], 38);
        // An area average of a constant image is that constant, for any ratio.
        let flat = Rgb { width: 64, height: 64, data: vec![200; 64 * 64 * 3] };
        assert!(resize_square(&flat, 48).data.iter().all(|&v| v == 200));
        assert!(resize_square(&flat, 7).data.iter().all(|&v| v == 200));
    }

    #[test]
    fn area_weights_sum_to_one() {
        for (i, o) in [(64, 48), (64, 5), (9, 4), (3, 3)] {
            for ws in area_weights(i, o) {
                let s: f64 = ws.iter().map(|w| w.1).sum();
                assert!((s - 1.0).abs() < 1e-9, "{i}->{o}: {s}");
            }
        }
    }

    #[test]
    fn bilinear_upscale_keeps_constant_and_interpolates() {
        let img = Rgb { width: 2, height: 2, data: vec![0, 0, 0, 255, 255, 255, 0, 0, 0, 255, 255, 255] };
        let up = resize_square(&img, 4);
        let row: Vec<u8> = up.data[..12].chunks(3).map(|p| p[0]).collect();
        assert_eq!(row, vec![0, 64, 191, 255]);
    }

    #[test]
    fn center_crop_takes_the_middle() {
        let img = Rgb { width: 4, height: 2, data: (0..24).collect() };
        let c = center_crop_square(&img);
        assert_eq!((c.width, c.height), (2, 2));
        assert_eq!(c.data, vec![3, 4, 5, 6, 7, 8, 15, 16, 17, 18, 19, 20]);
    }

    #[test]
    fn png_round_trip_and_corrupt_png_names_the_file() {
        let img = Rgb { width: 3, height: 2, data: (0..18).collect() };
        let bytes = encode_png_rgb(&img).unwrap();
        let (w, h, rgba) = decode_png_rgba("x.png", &bytes).unwrap();
        assert_eq!((w, h), (3, 2));
        assert_eq!(composite_on_white(w, h, &rgba), img);
        let err = decode_png_rgba("dir/bad.png", &bytes[..bytes.len() / 2]).unwrap_err().to_string();
        assert!(err.contains("dir/bad.png"), "{err}");
        let err = decode_png_rgba("dir/junk.png", b"not a png").unwrap_err().to_string();
        assert!(err.contains("dir/junk.png"), "{err}");
    }
}
