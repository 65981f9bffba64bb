use burn::module::{Module, Param};
use burn::tensor::{backend::Backend, Int, Tensor};

use crate::checkpoint::VarBuilder;

/// `y = x W^T + b` with PyTorch's `[out, in]` weight, stored transposed as `[in, out]`.
#[derive(Module, Debug)]
pub struct Linear<B: Backend> {
    pub weight: Param<Tensor<B, 2>>,
    pub bias: Option<Param<Tensor<B, 1>>>,
}

impl<B: Backend> Linear<B> {
    pub fn load(vb: &VarBuilder<B>, d_in: usize, d_out: usize, bias: bool) -> Self {
        let weight = Param::from_tensor(vb.tensor("weight", [d_out, d_in]).transpose());
        let bias = bias.then(|| vb.param("bias", [d_out]));
        Self { weight, bias }
    }

    pub fn d_out(&self) -> usize {
        self.weight.dims()[1]
    }

    pub fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        let y = x.matmul(self.weight.val().unsqueeze());
        match &self.bias {
            Some(b) => y + b.val().unsqueeze(),
            None => y,
        }
    }
}

/// Token embedding table `[vocab, hidden]`.
#[derive(Module, Debug)]
pub struct Embedding<B: Backend> {
    pub weight: Param<Tensor<B, 2>>,
}

impl<B: Backend> Embedding<B> {
    pub fn load(vb: &VarBuilder<B>, vocab: usize, hidden: usize) -> Self {
        Self { weight: vb.param("weight", [vocab, hidden]) }
    }

    pub fn vocab_size(&self) -> usize {
        self.weight.dims()[0]
    }

    pub fn forward(&self, ids: Tensor<B, 2, Int>) -> Tensor<B, 3> {
        burn::tensor::module::embedding(self.weight.val(), ids)
    }
}
