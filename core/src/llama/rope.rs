use burn::tensor::{backend::Backend, Tensor, TensorData};

/// Rotary position embedding in the Hugging Face "rotate_half" layout.
#[derive(Debug, Clone)]
pub struct Rope {
    inv_freq: Vec<f32>,
}

impl Rope {
    pub fn new(head_dim: usize, theta: f64) -> Self {
        // As transformers computes it: in float32.
        let inv_freq = (0..head_dim / 2)
            .map(|k| 1.0f32 / (theta as f32).powf((2 * k) as f32 / head_dim as f32))
            .collect();
        Self { inv_freq }
    }

    /// cos and sin tables `[1, 1, len, head_dim]` for positions `start..start + len`.
    pub fn tables<B: Backend>(&self, start: usize, len: usize, device: &B::Device) -> (Tensor<B, 4>, Tensor<B, 4>) {
        let d = self.inv_freq.len() * 2;
        let mut cos = Vec::with_capacity(len * d);
        let mut sin = Vec::with_capacity(len * d);
        for p in start..start + len {
            for _ in 0..2 {
                for f in &self.inv_freq {
                    let a = p as f32 * f;
                    cos.push(a.cos());
                    sin.push(a.sin());
                }
            }
        }
        let t = |v: Vec<f32>| Tensor::from_data(TensorData::new(v, [1, 1, len, d]), device);
        (t(cos), t(sin))
    }

    /// `x * cos + rotate_half(x) * sin` for `x: [b, heads, len, head_dim]`.
    pub fn apply<B: Backend>(x: Tensor<B, 4>, cos: &Tensor<B, 4>, sin: &Tensor<B, 4>) -> Tensor<B, 4> {
        let [b, h, t, d] = x.dims();
        let x1 = x.clone().slice([0..b, 0..h, 0..t, 0..d / 2]);
        let x2 = x.clone().slice([0..b, 0..h, 0..t, d / 2..d]);
        let rotated = Tensor::cat(vec![x2.neg(), x1], 3);
        x * cos.clone() + rotated * sin.clone()
    }
}
