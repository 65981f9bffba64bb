use burn::tensor::{backend::Backend, Tensor, TensorData};

/// Flux's multi-axis rotary embedding (interleaved channel pairs), `FluxPosEmbed(theta, axes_dim)`.
#[derive(Debug, Clone, PartialEq)]
pub struct FluxRope {
    pub theta: f64,
    pub axes_dim: Vec<usize>,
}

impl FluxRope {
    /// cos/sin `[s, head_dim]` for position ids `[s][axes]`, computed in f64 and cast to f32.
    pub fn tables(&self, ids: &[Vec<f64>]) -> (Vec<f32>, Vec<f32>) {
        let mut cos = Vec::new();
        let mut sin = Vec::new();
        for pos in ids {
            for (a, &d) in self.axes_dim.iter().enumerate() {
                for k in 0..d / 2 {
                    let freq = 1.0 / self.theta.powf((2 * k) as f64 / d as f64);
                    let angle = pos[a] * freq;
                    for _ in 0..2 {
                        cos.push(angle.cos() as f32);
                        sin.push(angle.sin() as f32);
                    }
                }
            }
        }
        (cos, sin)
    }

    pub fn tensors<B: Backend>(&self, ids: &[Vec<f64>], device: &B::Device) -> (Tensor<B, 4>, Tensor<B, 4>) {
        let d: usize = self.axes_dim.iter().sum();
        let (cos, sin) = self.tables(ids);
        let t = |v: Vec<f32>| Tensor::from_data(TensorData::new(v, [1, 1, ids.len(), d]), device);
        (t(cos), t(sin))
    }

    /// Position ids of `text_len` text tokens (all zero) followed by a `gh x gw` grid (0, row, col).
    pub fn text_image_ids(text_len: usize, gh: usize, gw: usize) -> Vec<Vec<f64>> {
        let mut ids = vec![vec![0.0; 3]; text_len];
        for r in 0..gh {
            for c in 0..gw {
                ids.push(vec![0.0, r as f64, c as f64]);
            }
        }
        ids
    }

    /// `out[2i] = x[2i] cos - x[2i+1] sin`, `out[2i+1] = x[2i+1] cos + x[2i] sin` on `[b, h, s, d]`.
    pub fn apply<B: Backend>(x: Tensor<B, 4>, cos: &Tensor<B, 4>, sin: &Tensor<B, 4>) -> Tensor<B, 4> {
        let [b, h, s, d] = x.dims();
        let pairs = x.clone().reshape([b, h, s, d / 2, 2]);
        let re = pairs.clone().slice([0..b, 0..h, 0..s, 0..d / 2, 0..1]);
        let im = pairs.slice([0..b, 0..h, 0..s, 0..d / 2, 1..2]);
        let rotated = Tensor::cat(vec![im.neg(), re], 4).reshape([b, h, s, d]);
        x * cos.clone() + rotated * sin.clone()
    }
}
