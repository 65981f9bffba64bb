use rand::Rng;
use serde::{Deserialize, Serialize};

/// How the learning rate falls after warmup.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, Default)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Decay {
    /// Constant after warmup.
    #[default]
    Constant,
    /// Linear from the peak at step `start` to `floor`·peak at step `end`, constant after
    /// (warmup-stable-decay when `start` is late: the "cooldown" of a constant-rate run).
    Linear { start: u64, end: u64, floor: f64 },
    /// Half a cosine from the peak at `start` to `floor`·peak at `end`, constant after.
    Cosine { start: u64, end: u64, floor: f64 },
}

impl Decay {
    /// The decay over the last `steps` of `total` steps (all of them when `steps >= total`).
    pub fn over_last(kind: &str, steps: u64, total: u64, floor: f64) -> Option<Self> {
        let (start, end) = (total.saturating_sub(steps), total);
        match kind {
            "constant" => Some(Self::Constant),
            "linear" => Some(Self::Linear { start, end, floor }),
            "cosine" => Some(Self::Cosine { start, end, floor }),
            _ => None,
        }
    }

    /// Factor on the peak rate at `step`: 1 before `start`, `floor` from `end`.
    fn factor(&self, step: u64) -> f64 {
        let (start, end, floor, cosine) = match *self {
            Self::Constant => return 1.0,
            Self::Linear { start, end, floor } => (start, end, floor, false),
            Self::Cosine { start, end, floor } => (start, end, floor, true),
        };
        let p = (step.saturating_sub(start) as f64 / end.saturating_sub(start).max(1) as f64).min(1.0);
        if p == 0.0 {
            return 1.0;
        }
        let shape = if cosine { 0.5 * (1.0 + (std::f64::consts::PI * p).cos()) } else { 1.0 - p };
        floor + (1.0 - floor) * shape
    }
}

/// Linear warmup from 0 to `lr` over `warmup` steps, times the `decay` factor (a decay that
/// starts during warmup multiplies it, as the proxy scorer's schedule does).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LrSchedule {
    pub lr: f64,
    pub warmup: u64,
    pub decay: Decay,
}

impl LrSchedule {
    pub fn constant(lr: f64, warmup: u64) -> Self {
        Self { lr, warmup, decay: Decay::Constant }
    }

    /// Learning rate of step `step` (0-based).
    pub fn at(&self, step: u64) -> f64 {
        let peak = if step < self.warmup { self.lr * (step + 1) as f64 / self.warmup as f64 } else { self.lr };
        peak * self.decay.factor(step)
    }

    /// Checks a decay against the run's total steps (a decay ending after the run never ends).
    pub fn validate(&self, total: u64) -> crate::Result<()> {
        if let Decay::Linear { start, end, floor } | Decay::Cosine { start, end, floor } = self.decay {
            if !(0.0..=1.0).contains(&floor) {
                return Err(crate::Error::input(format!("the learning-rate floor must be in [0, 1], got {floor}")));
            }
            if start > end || end > total {
                return Err(crate::Error::input(format!(
                    "the learning-rate decay over steps {start}..{end} does not fit a run of {total} steps"
                )));
            }
        }
        Ok(())
    }
}

/// `t = sigmoid(m + s·n)`, n ~ N(0, 1) (SD3's logit-normal timestep density).
pub fn logit_normal(rng: &mut impl Rng, mean: f64, std: f64) -> f32 {
    let (u1, u2): (f64, f64) = (rng.random::<f64>().max(1e-12), rng.random::<f64>());
    let n = (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos();
    (1.0 / (1.0 + (-(mean + std * n)).exp())) as f32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constant_after_warmup() {
        let s = LrSchedule::constant(1e-3, 4);
        assert_eq!([s.at(0), s.at(3), s.at(4), s.at(1_000_000)], [2.5e-4, 1e-3, 1e-3, 1e-3]);
    }

    #[test]
    fn linear_cooldown_over_the_last_steps() {
        let decay = Decay::over_last("linear", 100, 1000, 0.0).unwrap();
        let s = LrSchedule { lr: 1e-3, warmup: 10, decay };
        assert_eq!(s.at(500), 1e-3);
        assert_eq!(s.at(900), 1e-3);
        assert!((s.at(950) - 5e-4).abs() < 1e-15);
        assert!((s.at(999) - 1e-5).abs() < 1e-15);
        assert_eq!(s.at(1000), 0.0);
        assert!(s.validate(1000).is_ok());
        assert!(s.validate(999).is_err(), "a decay that ends after the run is refused");
    }

    #[test]
    fn cosine_to_a_floor() {
        let s = LrSchedule { lr: 2e-3, warmup: 10, decay: Decay::Cosine { start: 10, end: 110, floor: 0.1 } };
        assert_eq!(s.at(10), 2e-3);
        assert!((s.at(60) - 1.1e-3).abs() < 1e-15);
        assert!((s.at(110) - 2e-4).abs() < 1e-15);
        assert!((s.at(5000) - 2e-4).abs() < 1e-15);
        // Decaying from step 0, warmup and decay multiply.
        let w = LrSchedule { lr: 1.0, warmup: 4, decay: Decay::Cosine { start: 0, end: 8, floor: 0.0 } };
        assert!((w.at(1) - 0.5 * 0.5 * (1.0 + (std::f64::consts::PI / 8.0).cos())).abs() < 1e-15);
        assert!(Decay::over_last("step", 1, 2, 0.0).is_none());
    }

    #[test]
    fn logit_normal_quantiles_follow_its_location_and_scale() {
        use rand::SeedableRng;
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        let sigmoid = |x: f64| 1.0 / (1.0 + (-x).exp());
        for (mean, std) in [(0.0, 1.0), (-1.0, 1.0), (0.5, 0.6)] {
            let t: Vec<f64> = (0..20_000).map(|_| logit_normal(&mut rng, mean, std) as f64).collect();
            let below = |x: f64| t.iter().filter(|&&v| v < x).count() as f64 / t.len() as f64;
            // Standard normal CDF at 0 and -1: 0.5 and 0.1587.
            assert!((below(sigmoid(mean)) - 0.5).abs() < 0.015, "median of ({mean}, {std})");
            assert!((below(sigmoid(mean - std)) - 0.1587).abs() < 0.012, "lower sigma of ({mean}, {std})");
            assert!(t.iter().all(|&v| v > 0.0 && v < 1.0));
        }
    }
}
