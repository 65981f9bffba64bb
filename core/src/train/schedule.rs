use rand::Rng;

/// Linear warmup from 0 to `lr` over `warmup` steps, then constant.
#[derive(Debug, Clone, Copy)]
pub struct WarmupConstant {
    pub lr: f64,
    pub warmup: usize,
}

impl WarmupConstant {
    /// Learning rate of step `step` (0-based).
    pub fn at(&self, step: usize) -> f64 {
        if step < self.warmup {
            self.lr * (step + 1) as f64 / self.warmup as f64
        } else {
            self.lr
        }
    }
}

/// `t = sigmoid(m + s·n)`, n ~ N(0, 1) (SD3's logit-normal timestep density).
pub fn logit_normal(rng: &mut impl Rng, mean: f64, std: f64) -> f32 {
    let (u1, u2): (f64, f64) = (rng.random::<f64>().max(1e-12), rng.random::<f64>());
    let n = (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos();
    (1.0 / (1.0 + (-(mean + std * n)).exp())) as f32
}
