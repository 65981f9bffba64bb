//! Caption retrieval: which items are scored, against which candidate captions, and the top-k math.

use std::collections::BTreeMap;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

use crate::data::{fnv1a64, mix64, Dataset, Split};
use crate::error::{Error, Result};

/// Ranks and top-k rates of one retrieval run (every image against its own candidate list).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RetrievalStats {
    pub n: usize,
    /// Fraction of images whose own caption ranks first.
    pub top1: f64,
    /// Fraction whose own caption is among the 5 best.
    pub top5: f64,
    pub mean_rank: f64,
    /// 1-based rank of each image's own caption, in input order.
    pub ranks: Vec<usize>,
}

/// The 1-based rank of `scores[0]` (the true candidate) among `scores`: 1 + the number of other
/// candidates scoring at least as high (ties count against the true one, so constant scores never
/// look like a success). A NaN true score ranks last.
pub fn rank_of_first(scores: &[f32]) -> usize {
    let Some((&own, others)) = scores.split_first() else { return 0 };
    if own.is_nan() {
        return scores.len();
    }
    1 + others.iter().filter(|&&s| s >= own || s.is_nan()).count()
}

/// Fraction of `ranks` that are `<= k`.
pub fn top_k(ranks: &[usize], k: usize) -> f64 {
    if ranks.is_empty() {
        return 0.0;
    }
    ranks.iter().filter(|&&r| r >= 1 && r <= k).count() as f64 / ranks.len() as f64
}

/// Retrieval of captions by images. `images` is `[n, dim]` and `texts` `[m, dim]` (row-major);
/// `candidates[i]` lists the rows of `texts` that image `i` is compared with, its own caption
/// first. The score is the dot product (cosine for L2-normalised embeddings).
pub fn retrieval(images: &[f32], texts: &[f32], dim: usize, candidates: &[Vec<usize>]) -> Result<RetrievalStats> {
    if dim == 0 || images.len() % dim != 0 || texts.len() % dim != 0 {
        return Err(Error::input(format!(
            "retrieval: {} image and {} text values are not rows of dimension {dim}",
            images.len(),
            texts.len()
        )));
    }
    let (n, m) = (images.len() / dim, texts.len() / dim);
    if candidates.len() != n {
        return Err(Error::input(format!("retrieval: {n} images but {} candidate lists", candidates.len())));
    }
    let mut ranks = Vec::with_capacity(n);
    for (i, cands) in candidates.iter().enumerate() {
        if cands.is_empty() {
            return Err(Error::input(format!("retrieval: image {i} has no candidate captions")));
        }
        if let Some(&bad) = cands.iter().find(|&&c| c >= m) {
            return Err(Error::input(format!("retrieval: candidate {bad} of image {i} is not one of the {m} captions")));
        }
        let img = &images[i * dim..(i + 1) * dim];
        let scores: Vec<f32> =
            cands.iter().map(|&c| img.iter().zip(&texts[c * dim..(c + 1) * dim]).map(|(a, b)| a * b).sum()).collect();
        ranks.push(rank_of_first(&scores));
    }
    Ok(stats_of(ranks))
}

/// Top-1 / top-5 / mean rank of given ranks.
pub fn stats_of(ranks: Vec<usize>) -> RetrievalStats {
    let n = ranks.len();
    RetrievalStats {
        n,
        top1: top_k(&ranks, 1),
        top5: top_k(&ranks, 5),
        mean_rank: if n == 0 { 0.0 } else { ranks.iter().sum::<usize>() as f64 / n as f64 },
        ranks,
    }
}

/// One item per base of `split`: the base's own image (`id == base`) where it exists, else its
/// first item; ordered by a fixed hash of the base id (a stable pseudo-random order that does not
/// depend on `n`, so a smaller `n` is a prefix of a larger one, and in which ids that differ only
/// in their last code point, such as the flags of one letter, are not neighbours: any prefix is a
/// fair sample of the split).
pub fn split_representatives(data: &Dataset, split: Split) -> Vec<usize> {
    let mut by_base: BTreeMap<&str, usize> = BTreeMap::new();
    for (i, item) in data.items.iter().enumerate().filter(|(_, it)| it.split == split) {
        let slot = by_base.entry(item.base.as_str()).or_insert(i);
        if item.id == item.base && data.items[*slot].id != data.items[*slot].base {
            *slot = i;
        }
    }
    let mut reps: Vec<(u64, &str, usize)> =
        by_base.into_iter().map(|(base, i)| (mix64(fnv1a64(format!("proxy-eval:{base}").as_bytes())), base, i)).collect();
    reps.sort();
    reps.into_iter().map(|(_, _, i)| i).collect()
}

/// The `n` items to score for `split` (one per base, see [`split_representatives`]).
pub fn pick_items(data: &Dataset, split: Split, n: usize) -> Result<Vec<usize>> {
    if n == 0 {
        return Err(Error::input("the number of items to score (--n) must be at least 1"));
    }
    let reps = split_representatives(data, split);
    if n > reps.len() {
        return Err(Error::input(format!(
            "--n {n} is more than the {} items the {} split of {} offers (one item per base is scored)",
            reps.len(),
            split.as_str(),
            data.name
        )));
    }
    Ok(reps[..n].to_vec())
}

/// For each of `items`: itself followed by `count - 1` other items of `split` (one per base, never
/// its own base nor an item whose first caption is the same text), drawn with a generator seeded
/// by the item's id only, so an item's candidates are fixed whatever else is scored. The captions
/// compared are the items' first captions.
pub fn candidate_sets(data: &Dataset, split: Split, items: &[usize], count: usize) -> Result<Vec<Vec<usize>>> {
    if count < 2 {
        return Err(Error::input("retrieval needs at least 2 candidate captions per image"));
    }
    let reps = split_representatives(data, split);
    let mut pool: Vec<usize> = reps.clone();
    pool.sort();
    items
        .iter()
        .map(|&i| {
            let item = data.items.get(i).ok_or_else(|| Error::input(format!("item {i} is not in the dataset")))?;
            let own = &item.captions[0];
            let mut others: Vec<usize> = pool
                .iter()
                .copied()
                .filter(|&j| data.items[j].base != item.base && &data.items[j].captions[0] != own)
                .collect();
            if others.len() < count - 1 {
                return Err(Error::input(format!(
                    "{} candidate captions per image need {} other bases in the {} split; it has {}",
                    count,
                    count - 1,
                    split.as_str(),
                    others.len()
                )));
            }
            let mut rng = ChaCha8Rng::seed_from_u64(fnv1a64(format!("proxy-candidates:{}", item.id).as_bytes()));
            // Partial Fisher-Yates: the first count-1 positions.
            for k in 0..count - 1 {
                let j = rng.random_range(k..others.len());
                others.swap(k, j);
            }
            others.truncate(count - 1);
            let mut set = Vec::with_capacity(count);
            set.push(i);
            set.extend(others);
            Ok(set)
        })
        .collect()
}

/// For each row of `queries` (`[n, dim]`), the row of `keys` (`[m, dim]`) with the highest dot
/// product (the first on ties); NaN scores never win. This is the copy-the-nearest-training-image
/// baseline: captions as queries, a split's image embeddings as keys.
pub fn best_matches(queries: &[f32], keys: &[f32], dim: usize) -> Result<Vec<usize>> {
    if dim == 0 || queries.len() % dim != 0 || keys.len() % dim != 0 || keys.is_empty() {
        return Err(Error::input(format!(
            "best_matches: {} query and {} key values are not (non-empty) rows of dimension {dim}",
            queries.len(),
            keys.len()
        )));
    }
    Ok(queries
        .chunks(dim)
        .map(|q| {
            let mut best = (0, f32::NEG_INFINITY);
            for (j, k) in keys.chunks(dim).enumerate() {
                let s: f32 = q.iter().zip(k).map(|(a, b)| a * b).sum();
                if s > best.1 {
                    best = (j, s);
                }
            }
            best.0
        })
        .collect())
}

/// Best-of-N reranking: `queries` is `[n, dim]` (one caption per item) and `draws[j]` the `[n, dim]`
/// image embeddings of draw `j`; for each item, the draw whose image scores highest with its
/// caption (the first on ties; NaN never wins).
pub fn best_draws(queries: &[f32], draws: &[Vec<f32>], dim: usize) -> Result<Vec<usize>> {
    if dim == 0 || queries.len() % dim != 0 || draws.is_empty() || draws.iter().any(|d| d.len() != queries.len()) {
        return Err(Error::input(format!(
            "best_draws: {} draws of {} caption values are not matching rows of dimension {dim}",
            draws.len(),
            queries.len()
        )));
    }
    // Per item, the draws' image rows are the keys its caption is matched against.
    queries
        .chunks(dim)
        .enumerate()
        .map(|(k, q)| {
            let keys: Vec<f32> = draws.iter().flat_map(|d| d[k * dim..(k + 1) * dim].iter().copied()).collect();
            Ok(best_matches(q, &keys, dim)?[0])
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranks_with_ties_are_pessimistic() {
        assert_eq!(rank_of_first(&[0.9, 0.1, 0.2]), 1);
        assert_eq!(rank_of_first(&[0.5, 0.5, 0.2]), 2);
        assert_eq!(rank_of_first(&[0.0; 10]), 10);
        assert_eq!(rank_of_first(&[f32::NAN, 0.1]), 2);
        assert_eq!(top_k(&[1, 2, 5, 6], 5), 0.75);
    }

    #[test]
    fn best_matches_take_the_highest_dot_product() {
        let keys = [1.0, 0.0, 0.0, 1.0, f32::NAN, 5.0, 0.6, 0.6];
        let queries = [0.9, 0.1, 0.2, 0.8, 1.0, 1.0, -1.0, -1.0];
        assert_eq!(best_matches(&queries, &keys, 2).unwrap(), vec![0, 1, 3, 0]);
        assert!(best_matches(&queries, &[], 2).is_err());
        assert!(best_matches(&queries, &keys, 3).is_err());
    }

    /// A family of ids that differ only in the last code point (the 26 flags "1f1f8-1f1e6" …) is
    /// 10% of the split; the first 10% of the order must not be made of it.
    #[test]
    fn the_scored_prefix_is_a_fair_sample() {
        let mut items = vec![];
        let mut push = |id: String, family: bool| {
            let caption = if family { format!("flag {id}") } else { format!("thing {id}") };
            items.push(crate::data::Item { id: id.clone(), base: id, split: Split::Train, captions: vec![caption] });
        };
        for c in 0x1f1e6..=0x1f1ff {
            push(format!("1f1f8-{c:x}"), true);
        }
        for k in 0..234u32 {
            push(format!("{:x}-fe0f", 0x2600 + 7 * k), false);
        }
        let data = Dataset { name: "synthetic".into(), size: 1, images: vec![0; items.len() * 3], items };
        let order = split_representatives(&data, Split::Train);
        assert_eq!(order.len(), 260);
        let flag = |i: usize| data.items[i].captions[0].starts_with("flag");
        let family_in_prefix = order[..26].iter().filter(|&&i| flag(i)).count();
        // 2.6 expected; 8 or more has probability < 1e-3 for a fair order.
        assert!(family_in_prefix < 8, "{family_in_prefix} of the first 26 items are one family");
        let runs = order.windows(2).filter(|w| flag(w[0]) && flag(w[1])).count();
        assert!(runs < 10, "{runs} family members directly follow one another");
    }

    #[test]
    fn best_draws_picks_per_item_and_rejects_bad_shapes() {
        // Two items, dim 2; item 0 matches draw 1 best, item 1 draw 0; a NaN draw never wins.
        let q = [1.0, 0.0, 0.0, 1.0];
        let draws = vec![vec![0.2, 0.0, 0.0, 0.9], vec![0.8, 0.1, 0.0, 0.5], vec![f32::NAN, 0.0, f32::NAN, 0.0]];
        assert_eq!(best_draws(&q, &draws, 2).unwrap(), vec![1, 0]);
        // Ties go to the first draw.
        assert_eq!(best_draws(&q, &[vec![0.5; 4], vec![0.5; 4]], 2).unwrap(), vec![0, 0]);
        assert!(best_draws(&q, &[], 2).is_err());
        assert!(best_draws(&q, &[vec![0.0; 2]], 2).is_err());
        assert!(best_draws(&q, &draws, 0).is_err());
    }
}
