use burn::module::Module;
use burn::tensor::{backend::Backend, ElementConversion, Int, Tensor, TensorData};

use super::Quantized;

/// A quantized `[out, in]` weight on the device: codes packed into 32-bit words (4 int8 or 8 int4
/// per word, offset-binary) and `[out, groups]` scales, dequantized on the fly.
#[derive(Module, Debug)]
pub struct QuantWeight<B: Backend> {
    pub words: Tensor<B, 2, Int>,
    pub scales: Tensor<B, 2>,
    pub bits: usize,
    pub d_in: usize,
}

impl<B: Backend> QuantWeight<B> {
    /// `None` when the row length does not fill whole words (the caller keeps the dense weight).
    pub fn from_quantized(q: &Quantized, device: &B::Device) -> Option<Self> {
        let bits = q.scheme.bits();
        let per_word = 32 / bits;
        if q.d_in % per_word != 0 {
            return None;
        }
        let offset = 1i32 << (bits - 1);
        let words: Vec<i32> = q
            .values()
            .chunks_exact(per_word)
            .map(|c| c.iter().enumerate().fold(0u32, |w, (k, &v)| w | (((v + offset) as u32) << (bits * k))) as i32)
            .collect();
        let groups = q.scales.len() / q.d_out;
        Some(Self {
            words: Tensor::from_data(TensorData::new(words, [q.d_out, q.d_in / per_word]), device),
            scales: Tensor::from_data(TensorData::new(q.scales.clone(), [q.d_out, groups]), device),
            bits,
            d_in: q.d_in,
        })
    }

    pub fn d_out(&self) -> usize {
        self.words.dims()[0]
    }

    /// The rows `ids` of the matrix, still quantized (embedding lookups).
    pub fn select_rows(&self, ids: Tensor<B, 1, Int>) -> Self {
        Self {
            words: self.words.clone().select(0, ids.clone()),
            // A separate index tensor: with burn 0.21's kernel fusion (wgpu), two selects sharing one
            // index tensor inside one fused dequantization gave wrong rows (tests/blocks.rs
            // quant_unpack_wgpu with `--features rfgen-backends/fusion`).
            scales: self.scales.clone().select(0, ids.add_scalar(0)),
            bits: self.bits,
            d_in: self.d_in,
        }
    }

    /// The dense `[out, in]` weight.
    pub fn dequantize(&self) -> Tensor<B, 2> {
        let per_word = 32 / self.bits;
        let [out, n_words] = self.words.dims();
        let mask = (1i64 << self.bits) - 1;
        let codes: Vec<Tensor<B, 3, Int>> = (0..per_word)
            .map(|k| {
                self.words
                    .clone()
                    .bitwise_right_shift_scalar(((self.bits * k) as i64).elem())
                    .bitwise_and_scalar(mask.elem())
                    .unsqueeze_dim(2)
            })
            .collect();
        let codes = Tensor::cat(codes, 2).reshape([out, n_words * per_word]);
        let values = codes.float().sub_scalar((1i64 << (self.bits - 1)) as f64);
        let groups = self.scales.dims()[1];
        let grouped = values.reshape([out, groups, self.d_in / groups]) * self.scales.clone().unsqueeze_dim(2);
        grouped.reshape([out, self.d_in])
    }
}
