//! All-but-the-top post-processing of the caption features (Mu & Viswanath, ICLR 2018). Mean-pooled
//! LLM states share a large common mean and a few dominant directions (token count, position,
//! frequent tokens) that swamp their cosine: every pair of captions scores above 0.8. Removing the
//! mean and the projections onto the top D principal directions of the indexed captions leaves the
//! directions that tell captions apart. Fitted on the indexed (training) captions only.

use crate::checkpoint::Weights;
use crate::error::{Error, Result};

const MEAN: &str = "top_mean";
const DIRECTIONS: &str = "top_directions";
/// Subspace iterations: the span converges as (λ_{D+1}/λ_D)^k; a few hundred is ample for a few
/// dozen directions of a 576-dimensional covariance, and costs about a second.
const ITERATIONS: usize = 300;

/// The indexed features' mean and their top principal directions `[count, dim]`, orthonormal.
#[derive(Debug, Clone, PartialEq)]
pub struct TopDirections {
    pub dim: usize,
    pub count: usize,
    mean: Vec<f32>,
    directions: Vec<f32>,
}

impl TopDirections {
    /// Fits the mean and the top `count` principal directions of `rows` (`[n, dim]`).
    pub fn fit(rows: &[f32], dim: usize, count: usize) -> Result<Self> {
        let n = if dim == 0 { 0 } else { rows.len() / dim };
        if dim == 0 || rows.len() != n * dim {
            return Err(Error::input(format!("{} feature values are no whole number of rows of dimension {dim}", rows.len())));
        }
        if count == 0 || count >= dim || count >= n {
            return Err(Error::input(format!(
                "cannot remove {count} top directions from {n} captions of dimension {dim} (at least 1, fewer than both)"
            )));
        }
        if let Some(v) = rows.iter().find(|v| !v.is_finite()) {
            return Err(Error::input(format!("a caption feature is not finite ({v})")));
        }
        let mut mean = vec![0.0f64; dim];
        for row in rows.chunks(dim) {
            for (m, x) in mean.iter_mut().zip(row) {
                *m += *x as f64;
            }
        }
        mean.iter_mut().for_each(|m| *m /= n as f64);
        let cov = covariance(rows, &mean);
        let directions = top_eigenvectors(&cov, dim, count);
        Ok(Self {
            dim,
            count,
            mean: mean.iter().map(|m| *m as f32).collect(),
            directions: directions.iter().map(|v| *v as f32).collect(),
        })
    }

    /// `x − mean`, without its components along the top directions.
    pub fn apply(&self, x: &[f32]) -> Vec<f32> {
        let mut c: Vec<f64> = x.iter().zip(&self.mean).map(|(a, m)| (*a - *m) as f64).collect();
        for u in self.directions.chunks(self.dim) {
            let p: f64 = u.iter().zip(&c).map(|(a, b)| *a as f64 * b).sum();
            c.iter_mut().zip(u).for_each(|(ci, ui)| *ci -= p * *ui as f64);
        }
        c.into_iter().map(|v| v as f32).collect()
    }

    /// The tensors that store it next to the index's features: `top_mean` `[dim]`, `top_directions` `[count, dim]`.
    pub fn tensors(&self) -> [(&'static str, Vec<usize>, &[f32]); 2] {
        [(MEAN, vec![self.dim], &self.mean), (DIRECTIONS, vec![self.count, self.dim], &self.directions)]
    }

    /// Reads it from an index file, `None` when the file has neither tensor (plain cosine).
    pub fn from_weights(source: &str, w: &Weights, dim: usize) -> Result<Option<Self>> {
        let bad = |m: String| Error::checkpoint(source, m);
        let read = |name: &str| -> Result<Option<(Vec<usize>, Vec<f32>)>> {
            let Some(values) = w.read_f32(name) else { return Ok(None) };
            let values = values.map_err(|d| bad(format!("{name} has dtype {d}")))?;
            Ok(Some((w.shape(name).unwrap_or_default().to_vec(), values)))
        };
        let (mean, directions) = match (read(MEAN)?, read(DIRECTIONS)?) {
            (None, None) => return Ok(None),
            (Some(m), Some(d)) => (m, d),
            _ => return Err(bad(format!("{MEAN} and {DIRECTIONS} come together; the file has only one"))),
        };
        if mean.0 != [dim] {
            return Err(bad(format!("{MEAN} has shape {:?}, the features have dimension {dim}", mean.0)));
        }
        let count = match directions.0[..] {
            [c, d] if d == dim && c > 0 && c < dim => c,
            _ => return Err(bad(format!("{DIRECTIONS} has shape {:?}, not [count, {dim}]", directions.0))),
        };
        if mean.1.iter().chain(&directions.1).any(|v| !v.is_finite()) {
            return Err(bad(format!("{MEAN} or {DIRECTIONS} holds a non-finite value")));
        }
        Ok(Some(Self { dim, count, mean: mean.1, directions: directions.1 }))
    }
}

/// `[dim, dim]` covariance of the rows about `mean`.
fn covariance(rows: &[f32], mean: &[f64]) -> Vec<f64> {
    let d = mean.len();
    let n = rows.len() / d;
    let mut cov = vec![0.0f64; d * d];
    let mut c = vec![0.0f64; d];
    for row in rows.chunks(d) {
        c.iter_mut().zip(row.iter().zip(mean)).for_each(|(ci, (x, m))| *ci = *x as f64 - m);
        for i in 0..d {
            let ci = c[i];
            cov[i * d + i..(i + 1) * d].iter_mut().zip(&c[i..]).for_each(|(s, cj)| *s += ci * cj);
        }
    }
    for i in 0..d {
        for j in i..d {
            cov[i * d + j] /= n as f64;
            cov[j * d + i] = cov[i * d + j];
        }
    }
    cov
}

/// An orthonormal basis `[count, dim]` of the top-`count` eigenspace of the symmetric `cov`, by
/// subspace iteration from a fixed start (deterministic on every platform), largest first.
fn top_eigenvectors(cov: &[f64], d: usize, count: usize) -> Vec<f64> {
    // A fixed, well-spread start: a splitmix64 stream mapped to [-1, 1).
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut q: Vec<f64> = (0..count * d)
        .map(|_| {
            state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            ((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 52) as f64 - 1.0
        })
        .collect();
    orthonormalize(&mut q, d);
    let mut z = vec![0.0f64; count * d];
    for _ in 0..ITERATIONS {
        for (zr, qr) in z.chunks_mut(d).zip(q.chunks(d)) {
            for (i, zi) in zr.iter_mut().enumerate() {
                *zi = cov[i * d..(i + 1) * d].iter().zip(qr).map(|(a, b)| a * b).sum();
            }
        }
        std::mem::swap(&mut q, &mut z);
        orthonormalize(&mut q, d);
    }
    // Order by Rayleigh quotient so the largest direction comes first.
    let mut rq: Vec<(f64, Vec<f64>)> = q
        .chunks(d)
        .map(|u| {
            let cu: f64 = (0..d).map(|i| u[i] * cov[i * d..(i + 1) * d].iter().zip(u).map(|(a, b)| a * b).sum::<f64>()).sum();
            (cu, u.to_vec())
        })
        .collect();
    rq.sort_by(|a, b| b.0.total_cmp(&a.0));
    rq.into_iter().flat_map(|(_, u)| u).collect()
}

/// Modified Gram–Schmidt on the rows of `q` (`[k, d]`).
fn orthonormalize(q: &mut [f64], d: usize) {
    let k = q.len() / d;
    for i in 0..k {
        for j in 0..i {
            let (done, rest) = q.split_at_mut(i * d);
            let (u, v) = (&done[j * d..(j + 1) * d], &mut rest[..d]);
            let p: f64 = u.iter().zip(v.iter()).map(|(a, b)| a * b).sum();
            v.iter_mut().zip(u).for_each(|(vi, ui)| *vi -= p * ui);
        }
        let row = &mut q[i * d..(i + 1) * d];
        let norm = row.iter().map(|x| x * x).sum::<f64>().sqrt();
        row.iter_mut().for_each(|x| *x /= norm.max(1e-300));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Rows `mean + a·e0 + b·e1 + small noise` with var(a) ≫ var(b) ≫ noise.
    fn rows() -> Vec<f32> {
        let d = 6;
        let mut out = Vec::new();
        for i in 0..40 {
            let (a, b) = (((i * 7) % 11) as f32 - 5.0, ((i * 3) % 5) as f32 - 2.0);
            let mut r = vec![10.0, 0.0, 0.0, 0.0, 0.0, 0.0];
            r[1] += 10.0 * a;
            r[2] += 3.0 * b;
            r[3 + i % 3] += 0.1;
            out.extend(r);
        }
        assert_eq!(out.len() % d, 0);
        out
    }

    #[test]
    fn finds_the_dominant_directions_largest_first_and_removes_them() {
        let t = TopDirections::fit(&rows(), 6, 2).unwrap();
        let u: Vec<&[f32]> = t.directions.chunks(6).collect();
        assert!(u[0][1].abs() > 0.999, "{:?}", u[0]);
        assert!(u[1][2].abs() > 0.999, "{:?}", u[1]);
        let y = t.apply(&[10.0, 30.0, -6.0, 0.5, 0.0, 0.0]);
        assert!(y[..3].iter().all(|v| v.abs() < 1e-3), "{y:?}");
        // What is left: the offset from the small components' mean (0.035, 0.0325, 0.0325).
        assert!((y[3] - 0.465).abs() < 0.01 && (y[4] + 0.0325).abs() < 0.01 && (y[5] + 0.0325).abs() < 0.01, "{y:?}");
    }

    #[test]
    fn round_trips_through_an_index_file_and_refuses_bad_tensors() {
        let t = TopDirections::fit(&rows(), 6, 2).unwrap();
        let mut w = Weights::new();
        for (name, shape, v) in t.tensors() {
            w.insert_f32(name, shape, v.to_vec());
        }
        assert_eq!(TopDirections::from_weights("x", &w, 6).unwrap().unwrap(), t);
        assert!(TopDirections::from_weights("x", &Weights::new(), 6).unwrap().is_none());
        assert!(TopDirections::from_weights("x", &w, 5).unwrap_err().to_string().contains("top_mean"));
        w.remove(MEAN);
        assert!(TopDirections::from_weights("x", &w, 6).unwrap_err().to_string().contains("only one"));
        assert!(TopDirections::fit(&rows(), 6, 6).unwrap_err().to_string().contains("top directions"));
        let mut nan = rows();
        nan[7] = f32::NAN;
        assert!(TopDirections::fit(&nan, 6, 2).unwrap_err().to_string().contains("not finite"));
    }
}
