//! Seeded Gaussian noise, identical on every platform (ChaCha8 + Box-Muller in f64).

use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// `len` samples of N(0, 1) from `seed`.
pub fn gaussian(seed: u64, len: usize) -> Vec<f32> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut uniform = || ((rng.next_u64() >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
    let mut out = Vec::with_capacity(len + 1);
    while out.len() < len {
        let (u1, u2) = (uniform(), uniform());
        let r = (-2.0 * u1.ln()).sqrt();
        let a = std::f64::consts::TAU * u2;
        out.push((r * a.cos()) as f32);
        out.push((r * a.sin()) as f32);
    }
    out.truncate(len);
    out
}
