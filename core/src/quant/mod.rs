//! Weight-only quantization of linear layers: int8 per output channel, int4 group-wise, both
//! symmetric with f16/f32 scales. Stored as `X.weight` (I8 `[out, in]` or U8 `[out, in/2]`, two
//! 4-bit codes per byte, low nibble first, offset by 8) next to `X.weight_scale` (`[out, groups]`).
//! On the device the codes stay packed in 32-bit words and are dequantized inside the layer's
//! forward pass.

mod weight;

pub use weight::QuantWeight;

use crate::error::{Error, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuantScheme {
    /// One scale per output channel.
    Int8,
    /// One scale per `group` consecutive inputs of an output channel.
    Int4 { group: usize },
}

impl QuantScheme {
    pub fn parse(name: &str, group: usize) -> Result<Self> {
        match name {
            "int8" => Ok(QuantScheme::Int8),
            "int4" if group >= 2 && group % 2 == 0 => Ok(QuantScheme::Int4 { group }),
            "int4" => Err(Error::input(format!("int4 group size must be an even number >= 2, got {group}"))),
            other => Err(Error::input(format!("unknown quantization {other:?} (expected int8 or int4)"))),
        }
    }

    pub fn bits(self) -> usize {
        match self {
            QuantScheme::Int8 => 8,
            QuantScheme::Int4 { .. } => 4,
        }
    }

    fn max_code(self) -> f32 {
        match self {
            QuantScheme::Int8 => 127.0,
            QuantScheme::Int4 { .. } => 7.0,
        }
    }

    fn group(self, d_in: usize) -> usize {
        match self {
            QuantScheme::Int8 => d_in,
            QuantScheme::Int4 { group } => group,
        }
    }
}

/// A quantized `[out, in]` matrix on the host.
#[derive(Debug, Clone, PartialEq)]
pub struct Quantized {
    pub scheme: QuantScheme,
    pub d_out: usize,
    pub d_in: usize,
    /// int8: one signed code per byte; int4: two offset-binary codes per byte.
    pub codes: Vec<u8>,
    /// `[out, groups]`.
    pub scales: Vec<f32>,
}

/// Quantizes a row-major `[out, in]` matrix; `name` is used in errors.
pub fn quantize(name: &str, w: &[f32], d_out: usize, d_in: usize, scheme: QuantScheme) -> Result<Quantized> {
    let group = scheme.group(d_in);
    if d_in % group != 0 {
        return Err(Error::input(format!("{name}: int4 group size {group} does not divide its rows of {d_in} inputs")));
    }
    let groups = d_in / group;
    let max = scheme.max_code();
    let mut scales = Vec::with_capacity(d_out * groups);
    let mut q = Vec::with_capacity(d_out * d_in);
    for row in w.chunks_exact(d_in) {
        for g in row.chunks_exact(group) {
            let amax = g.iter().fold(0f32, |m, x| m.max(x.abs()));
            let scale = if amax > 0.0 { amax / max } else { 1.0 };
            // Store the scale as it will be read back (f16 for int4) so codes match it.
            let scale = match scheme {
                QuantScheme::Int4 { .. } => half::f16::from_f32(scale).to_f32(),
                QuantScheme::Int8 => scale,
            };
            scales.push(scale);
            q.extend(g.iter().map(|x| (x / scale).round().clamp(-max, max) as i8));
        }
    }
    let codes = match scheme {
        QuantScheme::Int8 => q.iter().map(|&c| c as u8).collect(),
        QuantScheme::Int4 { .. } => q.chunks_exact(2).map(|p| ((p[0] + 8) as u8) | (((p[1] + 8) as u8) << 4)).collect(),
    };
    Ok(Quantized { scheme, d_out, d_in, codes, scales })
}

impl Quantized {
    /// Signed integer codes, one per weight.
    pub fn values(&self) -> Vec<i32> {
        match self.scheme {
            QuantScheme::Int8 => self.codes.iter().map(|&c| c as i8 as i32).collect(),
            QuantScheme::Int4 { .. } => {
                self.codes.iter().flat_map(|&b| [(b & 15) as i32 - 8, (b >> 4) as i32 - 8]).collect()
            }
        }
    }

    /// The reference dequantization `code * scale` (row-major `[out, in]`).
    pub fn dequantize(&self) -> Vec<f32> {
        let groups = self.scales.len() / self.d_out;
        let group = self.d_in / groups;
        self.values()
            .iter()
            .enumerate()
            .map(|(i, &c)| c as f32 * self.scales[(i / self.d_in) * groups + (i % self.d_in) / group])
            .collect()
    }

    /// Reads a stored pair (codes, scales) back; `dtype_is_i8` tells int8 from packed int4.
    pub fn from_stored(codes: Vec<u8>, code_shape: &[usize], dtype_is_i8: bool, scales: Vec<f32>, scale_shape: &[usize]) -> Option<Self> {
        let (d_out, stored_in) = (*code_shape.first()?, *code_shape.get(1)?);
        let d_in = if dtype_is_i8 { stored_in } else { stored_in * 2 };
        let groups = *scale_shape.get(1)?;
        if code_shape.len() != 2 || scale_shape.len() != 2 || scale_shape[0] != d_out || groups == 0 || d_in % groups != 0 {
            return None;
        }
        let scheme = if dtype_is_i8 { QuantScheme::Int8 } else { QuantScheme::Int4 { group: d_in / groups } };
        Some(Self { scheme, d_out, d_in, codes, scales })
    }
}
