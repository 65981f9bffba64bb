use burn::module::{Module, Param};
use burn::tensor::{backend::Backend, Int, Tensor, TensorData};

use crate::checkpoint::VarBuilder;
use crate::quant::QuantWeight;

/// A linear layer's weight: dense `[in, out]` (PyTorch's `[out, in]` transposed) or quantized.
#[derive(Module, Debug)]
pub enum LinearWeight<B: Backend> {
    Dense(Param<Tensor<B, 2>>),
    Quant(QuantWeight<B>),
}

/// `y = x W^T + b` with PyTorch's `[out, in]` weight.
#[derive(Module, Debug)]
pub struct Linear<B: Backend> {
    pub weight: LinearWeight<B>,
    pub bias: Option<Param<Tensor<B, 1>>>,
}

impl<B: Backend> Linear<B> {
    /// Loads `weight` (dense, or int8/int4 codes with `weight_scale`) and optionally `bias`.
    pub fn load(vb: &VarBuilder<B>, d_in: usize, d_out: usize, bias: bool) -> Self {
        let dense = |w: Tensor<B, 2>| LinearWeight::Dense(Param::from_tensor(w.transpose()));
        let weight = match vb.quantized("weight", d_out, d_in) {
            Some(q) => match QuantWeight::from_quantized(&q, vb.device()) {
                Some(w) => LinearWeight::Quant(w),
                None => dense(Tensor::from_data(TensorData::new(q.dequantize(), [d_out, d_in]), vb.device())),
            },
            None => LinearWeight::Dense(vb.param_transposed("weight", [d_out, d_in])),
        };
        let bias = bias.then(|| vb.param("bias", [d_out]));
        Self { weight, bias }
    }

    pub fn d_out(&self) -> usize {
        match &self.weight {
            LinearWeight::Dense(w) => w.dims()[1],
            LinearWeight::Quant(q) => q.d_out(),
        }
    }

    /// The `[in, out]` weight (dequantized if needed).
    pub fn weight_in_out(&self) -> Tensor<B, 2> {
        match &self.weight {
            LinearWeight::Dense(w) => w.val(),
            LinearWeight::Quant(q) => q.dequantize().transpose(),
        }
    }

    pub fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        let y = x.matmul(self.weight_in_out().unsqueeze());
        match &self.bias {
            Some(b) => y + b.val().unsqueeze(),
            None => y,
        }
    }
}

/// Token embedding table `[vocab, hidden]`, dense or quantized (rows dequantized on lookup).
#[derive(Module, Debug)]
pub struct Embedding<B: Backend> {
    pub weight: LinearWeight<B>,
}

impl<B: Backend> Embedding<B> {
    pub fn load(vb: &VarBuilder<B>, vocab: usize, hidden: usize) -> Self {
        let weight = match vb.quantized("weight", vocab, hidden).and_then(|q| QuantWeight::from_quantized(&q, vb.device())) {
            Some(q) => LinearWeight::Quant(q),
            None => LinearWeight::Dense(vb.param("weight", [vocab, hidden])),
        };
        Self { weight }
    }

    /// The whole `[vocab, hidden]` table (e.g. for a tied LM head).
    pub fn table(&self) -> Tensor<B, 2> {
        match &self.weight {
            LinearWeight::Dense(w) => w.val(),
            LinearWeight::Quant(q) => q.dequantize(),
        }
    }

    pub fn forward(&self, ids: Tensor<B, 2, Int>) -> Tensor<B, 3> {
        match &self.weight {
            LinearWeight::Dense(w) => burn::tensor::module::embedding(w.val(), ids),
            LinearWeight::Quant(q) => {
                let [b, t] = ids.dims();
                let rows = q.select_rows(ids.reshape([b * t])).dequantize();
                let h = rows.dims()[1];
                rows.reshape([b, t, h])
            }
        }
    }
}
