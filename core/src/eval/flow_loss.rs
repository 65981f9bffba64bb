//! The velocity loss of a generator on fixed draws (validation loss, as SD3 reports it): every
//! scored item gets the same timesteps, captions and noise whatever model is measured, so two
//! checkpoints differ only by their weights and small differences are resolved (common random
//! numbers), unlike retrieval of sampled images.

use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

use crate::data::{fnv1a64, Dataset};
use crate::error::{Error, Result};
use crate::sampler::PromptBatch;
use crate::structured::FlowGenerator;
use crate::train::{logit_normal, velocity_residual};

/// One (item, draw) of the evaluation: which caption, which timestep, which noise.
#[derive(Debug, Clone, PartialEq)]
pub struct LossDraw {
    /// Position of the item in the caller's list.
    pub item: usize,
    pub caption: usize,
    pub t: f32,
    pub noise_seed: u64,
}

/// `draws` draws per item: timesteps from the training density (logit-normal(0, 1)), captions in
/// turn, noise; all from (`seed`, the item's id, the draw's number) only.
pub fn loss_draws(data: &Dataset, items: &[usize], draws: usize, seed: u64) -> Vec<LossDraw> {
    let mut out = Vec::with_capacity(items.len() * draws);
    for (pos, &i) in items.iter().enumerate() {
        let item = &data.items[i];
        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ fnv1a64(format!("flow-loss:{}", item.id).as_bytes()));
        for k in 0..draws {
            let t = logit_normal(&mut rng, 0.0, 1.0);
            out.push(LossDraw { item: pos, caption: k % item.captions.len().max(1), t, noise_seed: rng.random() });
        }
    }
    out
}

/// Mean squared velocity residual of each draw (conditional rows; no prompt dropout).
/// `latents` holds the items' clean latents `[items, c, h, w]` flattened, `prompts[d]` the
/// tokenized caption of draw `d`.
pub fn draw_losses<B: Backend>(
    model: &FlowGenerator<B>,
    pad_id: u32,
    draws: &[LossDraw],
    prompts: &[Vec<u32>],
    latents: &[f32],
    chw: [usize; 3],
    device: &B::Device,
) -> Result<Vec<f64>> {
    let n = chw.iter().product::<usize>();
    if draws.len() != prompts.len() || draws.iter().any(|d| (d.item + 1) * n > latents.len()) {
        return Err(Error::input("flow loss: draws, prompts and latents do not match"));
    }
    if draws.is_empty() {
        return Ok(vec![]);
    }
    let b = draws.len();
    let dims = [b, chw[0], chw[1], chw[2]];
    let x: Vec<f32> = draws.iter().flat_map(|d| latents[d.item * n..(d.item + 1) * n].iter().copied()).collect();
    let z0: Vec<f32> = draws.iter().flat_map(|d| crate::noise::gaussian(d.noise_seed, n)).collect();
    let t: Vec<f32> = draws.iter().map(|d| d.t).collect();
    let batch = PromptBatch::new(prompts, pad_id)?.select(&(0..b).collect::<Vec<_>>());
    let x = Tensor::<B, 4>::from_data(TensorData::new(x, dims), device);
    let z0 = Tensor::<B, 4>::from_data(TensorData::new(z0, dims), device);
    let per_row = velocity_residual(model, &batch, x, z0, &t).powf_scalar(2.0).reshape([b, n]).mean_dim(1);
    let values = per_row.into_data().convert::<f64>().into_vec::<f64>().map_err(|e| Error::input(format!("flow loss: {e:?}")))?;
    if let Some(k) = values.iter().position(|v| !v.is_finite()) {
        return Err(Error::input(format!("flow loss: the model's velocity is not finite (draw {k}, t = {})", draws[k].t)));
    }
    Ok(values)
}

/// Mean loss over all draws and within timestep bins.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct FlowLossStats {
    pub items: usize,
    pub draws: usize,
    pub mean: f64,
    /// Standard error of `mean` over items (each item's mean over its draws).
    pub std_err: f64,
    /// `[t_lo, t_hi, mean, count]` for t in five equal bins of [0, 1].
    pub by_t: Vec<(f64, f64, f64, usize)>,
    /// Each item's mean over its draws, in the caller's order (paired comparisons of two models).
    pub item_means: Vec<f64>,
}

pub fn loss_stats(draws: &[LossDraw], losses: &[f64], items: usize) -> FlowLossStats {
    let mean = losses.iter().sum::<f64>() / losses.len().max(1) as f64;
    let mut per_item = vec![(0.0, 0usize); items];
    for (d, l) in draws.iter().zip(losses) {
        per_item[d.item].0 += l;
        per_item[d.item].1 += 1;
    }
    let item_means: Vec<f64> = per_item.iter().map(|p| if p.1 > 0 { p.0 / p.1 as f64 } else { f64::NAN }).collect();
    let means: Vec<f64> = item_means.iter().copied().filter(|m| !m.is_nan()).collect();
    let m = means.len() as f64;
    let grand = means.iter().sum::<f64>() / m.max(1.0);
    let var = means.iter().map(|x| (x - grand).powi(2)).sum::<f64>() / (m - 1.0).max(1.0);
    let bins = 5;
    let by_t = (0..bins)
        .map(|k| {
            let (lo, hi) = (k as f64 / bins as f64, (k + 1) as f64 / bins as f64);
            let inside: Vec<f64> = draws
                .iter()
                .zip(losses)
                .filter(|(d, _)| (d.t as f64) >= lo && ((d.t as f64) < hi || k == bins - 1))
                .map(|(_, &l)| l)
                .collect();
            let mean = if inside.is_empty() { f64::NAN } else { inside.iter().sum::<f64>() / inside.len() as f64 };
            (lo, hi, mean, inside.len())
        })
        .collect();
    FlowLossStats { items, draws: losses.len(), mean, std_err: (var / m.max(1.0)).sqrt(), by_t, item_means }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::{Item, Split};

    fn data() -> Dataset {
        let items = (0..3)
            .map(|i| Item { id: format!("i{i}"), base: format!("i{i}"), split: Split::Train, captions: vec!["a".into(), "b".into()] })
            .collect();
        Dataset { name: "t".into(), size: 1, images: vec![0; 9], items }
    }

    #[test]
    fn draws_depend_on_the_item_not_on_the_list() {
        let d = data();
        let all = loss_draws(&d, &[0, 1, 2], 4, 7);
        let one = loss_draws(&d, &[2], 4, 7);
        assert_eq!(all.len(), 12);
        for (a, b) in all[8..].iter().zip(&one) {
            assert_eq!((a.caption, a.t, a.noise_seed), (b.caption, b.t, b.noise_seed));
        }
        assert_eq!(all.iter().map(|d| d.caption).take(4).collect::<Vec<_>>(), [0, 1, 0, 1]);
        assert_ne!(loss_draws(&d, &[2], 4, 8)[0].t, one[0].t, "the seed changes the draws");
        assert!(all.iter().all(|d| d.t > 0.0 && d.t < 1.0));
    }

    #[test]
    fn stats_bin_by_t_and_average_items() {
        let draw = |item, t| LossDraw { item, caption: 0, t, noise_seed: 0 };
        let draws = [draw(0, 0.1), draw(0, 0.9), draw(1, 0.1), draw(1, 1.0)];
        let s = loss_stats(&draws, &[1.0, 3.0, 3.0, 5.0], 2);
        assert_eq!(s.mean, 3.0);
        assert_eq!((s.by_t[0].2, s.by_t[0].3), (2.0, 2));
        assert_eq!((s.by_t[4].2, s.by_t[4].3), (4.0, 2));
        assert!(s.by_t[2].2.is_nan());
        // Item means 2 and 4: standard deviation sqrt(2), over sqrt(2) items.
        assert!((s.std_err - 1.0).abs() < 1e-12);
        assert_eq!(s.item_means, [2.0, 4.0]);
    }
}
