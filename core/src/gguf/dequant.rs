//! Dequantization of ggml blocks to f32, following ggml-quants.c (`dequantize_row_*`).
//!
//! Block layouts (32 elements each, little-endian, `d`/`m` are f16):
//! - Q8_0: `d`, 32 × i8 `q`; `x = d·q`.
//! - Q4_0: `d`, 16 bytes; element `j` is the low nibble of byte `j`, element `j + 16` the high
//!   nibble; `x = d·(q − 8)`.
//! - Q4_1: `d`, `m`, 16 bytes as in Q4_0; `x = d·q + m`.
//! - Q5_0: `d`, u32 `qh` (the fifth bits: bit `j` for element `j`, bit `j + 16` for element
//!   `j + 16`), 16 bytes of nibbles as in Q4_0; `x = d·(q − 16)`.
//! - Q5_1: `d`, `m`, `qh`, 16 bytes; `x = d·q + m`.

use half::{bf16, f16};

use super::types::GgmlType;

fn f16_at(b: &[u8], i: usize) -> f32 {
    f16::from_bits(u16::from_le_bytes([b[i], b[i + 1]])).to_f32()
}

/// Dequantizes `n_elements` values of type `ty` stored in `data` (exactly the tensor's bytes).
pub fn dequantize(ty: GgmlType, data: &[u8], n_elements: usize) -> Result<Vec<f32>, String> {
    let (block, block_bytes) = ty.block();
    if n_elements % block != 0 {
        return Err(format!("{n_elements} elements are not a whole number of {ty} blocks of {block}"));
    }
    let want = n_elements / block * block_bytes;
    if data.len() != want {
        return Err(format!("{ty} data is {} bytes, {n_elements} elements need {want}", data.len()));
    }
    let mut out = Vec::with_capacity(n_elements);
    match ty {
        GgmlType::F32 => out.extend(data.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))),
        GgmlType::F16 => out.extend(data.chunks_exact(2).map(|c| f16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32())),
        GgmlType::BF16 => {
            out.extend(data.chunks_exact(2).map(|c| bf16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32()))
        }
        GgmlType::Q8_0 => {
            for b in data.chunks_exact(block_bytes) {
                let d = f16_at(b, 0);
                out.extend(b[2..34].iter().map(|&q| q as i8 as f32 * d));
            }
        }
        GgmlType::Q4_0 => {
            for b in data.chunks_exact(block_bytes) {
                let d = f16_at(b, 0);
                let qs = &b[2..18];
                out.extend(qs.iter().map(|&q| ((q & 0x0F) as i32 - 8) as f32 * d));
                out.extend(qs.iter().map(|&q| ((q >> 4) as i32 - 8) as f32 * d));
            }
        }
        GgmlType::Q4_1 => {
            for b in data.chunks_exact(block_bytes) {
                let (d, m) = (f16_at(b, 0), f16_at(b, 2));
                let qs = &b[4..20];
                out.extend(qs.iter().map(|&q| (q & 0x0F) as f32 * d + m));
                out.extend(qs.iter().map(|&q| (q >> 4) as f32 * d + m));
            }
        }
        GgmlType::Q5_0 | GgmlType::Q5_1 => {
            let with_min = ty == GgmlType::Q5_1;
            for b in data.chunks_exact(block_bytes) {
                let d = f16_at(b, 0);
                let (m, rest) = if with_min { (f16_at(b, 2), &b[4..]) } else { (0.0, &b[2..]) };
                let qh = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]);
                let qs = &rest[4..20];
                let offset = if with_min { 0 } else { 16 };
                let value = |q: u32| {
                    let q = q as i32 - offset;
                    if with_min {
                        q as f32 * d + m
                    } else {
                        q as f32 * d
                    }
                };
                out.extend(qs.iter().enumerate().map(|(j, &q)| value((q & 0x0F) as u32 | (((qh >> j) & 1) << 4))));
                out.extend(qs.iter().enumerate().map(|(j, &q)| value((q >> 4) as u32 | (((qh >> (j + 16)) & 1) << 4))));
            }
        }
        other => return Err(format!("dequantizing {other} is not supported (supported: F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1)")),
    }
    Ok(out)
}
