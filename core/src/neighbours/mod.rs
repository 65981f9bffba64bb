//! Prompt neighbours: the training captions nearest a prompt in the LLM prior's own text features
//! (the first K SmolLM2 layers, final RMSNorm, mean over tokens: [`crate::eval::text`]), by
//! cosine similarity. A prompt the generator never saw can then be guided by the captions it
//! learned that the LLM reads as closest ([`crate::sampler::PromptBatch::composed`]), the
//! training-free cousin of retrieval-augmented generation (Re-Imagen, kNN-Diffusion). No
//! image–text scorer is involved: only the frozen LLM's features, post-processed as the index
//! file says ([`TopDirections`]).

mod images;
mod top_directions;

use burn::tensor::backend::Backend;

use crate::error::{Error, Result};
use crate::eval::{ProxyTextEncoder, TextFeatures};

pub use images::NeighbourImages;
pub use top_directions::TopDirections;

/// The index's file in a model directory (`rfgen-cli index-captions` writes it).
pub const NEIGHBOURS_FILE: &str = "neighbours.safetensors";
/// Neighbours per prompt, and their share of the guidance, when the model's generation config
/// does not say.
pub const DEFAULT_COUNT: usize = 1;
pub const DEFAULT_SHARE: f32 = 0.5;
/// Most neighbours per prompt (each one is another row of every Euler step).
pub const MAX_COUNT: usize = 8;

/// How many neighbours guide each prompt, their share of the guidance, and the img2img strength
/// of the retrieval start from the nearest neighbour's image ([`NeighbourImages`]; `None`: from noise).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct NeighbourGuidance {
    pub count: usize,
    pub share: f32,
    pub init: Option<f64>,
}

impl NeighbourGuidance {
    pub fn validate(&self) -> Result<()> {
        if self.count == 0 || self.count > MAX_COUNT {
            return Err(Error::input(format!("neighbours must be between 1 and {MAX_COUNT} (0 turns them off), got {}", self.count)));
        }
        if !self.share.is_finite() || self.share <= 0.0 || self.share >= 1.0 {
            return Err(Error::input(format!("the neighbours' guidance share must be between 0 and 1 (exclusive), got {}", self.share)));
        }
        if let Some(s) = self.init.filter(|s| !(s.is_finite() && *s > 0.0 && *s <= 1.0)) {
            return Err(Error::input(format!("the neighbour start's strength must be in (0, 1], got {s}")));
        }
        Ok(())
    }

    /// Guidance shares of the prompt and each neighbour group.
    pub fn shares(&self) -> Vec<f32> {
        std::iter::once(1.0 - self.share).chain(std::iter::repeat(self.share / self.count as f32).take(self.count)).collect()
    }
}

/// A caption index with the frozen LLM that embeds prompts the same way.
pub struct PromptNeighbours<B: Backend> {
    pub index: CaptionIndex,
    encoder: ProxyTextEncoder<B>,
}

impl<B: Backend> PromptNeighbours<B> {
    /// `gguf`: the bytes of the LLM the index was built with (checked by sha256).
    pub fn from_gguf(index: IndexFile, gguf: &[u8], device: &B::Device) -> Result<Self> {
        let spec = index.features.spec.clone();
        let encoder = ProxyTextEncoder::from_gguf(&spec.gguf_file, gguf, spec.layers, device)?;
        if encoder.spec != spec {
            return Err(Error::input(format!(
                "{NEIGHBOURS_FILE} was built with {} (sha256 {}, {} layers, pool {}), not this LLM",
                spec.gguf_file, spec.gguf_sha256, spec.layers, spec.pool
            )));
        }
        Ok(Self { index: CaptionIndex::new(index)?, encoder })
    }

    /// The `k` nearest indexed captions of each prompt, with their cosine similarity:
    /// `[prompt][k]`. A prompt that is itself an indexed caption is its own every neighbour (the
    /// composed guidance is then plain guidance), without running the LLM.
    pub fn find(&self, prompts: &[String], k: usize) -> Result<Vec<Vec<(String, f32)>>> {
        let unseen: Vec<String> = prompts.iter().filter(|p| self.index.features.row_of(p).is_none()).cloned().collect();
        let features = if unseen.is_empty() { Vec::new() } else { self.encoder.features(&unseen, |_| {})? };
        let d = self.encoder.spec.dim;
        let mut rows = features.chunks(d);
        prompts
            .iter()
            .map(|p| {
                if self.index.features.row_of(p).is_some() {
                    return Ok(vec![(p.clone(), 1.0); k]);
                }
                let near = self.index.nearest(rows.next().expect("one feature per unseen prompt"), k, None)?;
                if near.len() < k {
                    return Err(Error::input(format!("{k} neighbours asked for, the caption index has {}", self.index.len())));
                }
                Ok(near.into_iter().map(|(r, s)| (self.index.caption(r).to_string(), s)).collect())
            })
            .collect()
    }
}

/// `neighbours.safetensors`: the indexed captions' raw features (8-bit codes around their mean,
/// with the spec and the captions in the metadata: [`TextFeatures::to_safetensors_q8_with`]) and,
/// when it was built with them, the top directions removed before the cosine (f32).
#[derive(Debug, Clone, PartialEq)]
pub struct IndexFile {
    pub features: TextFeatures,
    pub top: Option<TopDirections>,
    pub images: Option<NeighbourImages>,
}

impl IndexFile {
    /// Features of the captions to index; with `remove_top` > 0, the mean and that many top
    /// principal directions fitted on them are removed before every cosine.
    pub fn build(features: TextFeatures, remove_top: usize) -> Result<Self> {
        let top = match remove_top {
            0 => None,
            k => Some(TopDirections::fit(&features.values, features.spec.dim, k)?),
        };
        Ok(Self { features, top, images: None })
    }

    /// With the images of the indexed captions, for the retrieval start.
    pub fn with_images(mut self, images: NeighbourImages) -> Result<Self> {
        if images.rows() != self.features.len() {
            return Err(Error::input(format!("{} caption images for {} indexed captions", images.rows(), self.features.len())));
        }
        self.images = Some(images);
        Ok(self)
    }

    pub fn to_safetensors(&self) -> Result<Vec<u8>> {
        let mut extra = self.top.as_ref().map(|t| t.tensors().to_vec()).unwrap_or_default();
        let mut raw = Vec::new();
        if let Some((floats, codes)) = self.images.as_ref().map(|i| i.tensors()) {
            extra.extend(floats);
            raw.push(codes);
        }
        self.features.to_safetensors_q8_with_raw(&extra, raw)
    }

    pub fn from_safetensors(source: &str, bytes: &[u8]) -> Result<Self> {
        let (features, w) = TextFeatures::read_safetensors(source, bytes)?;
        let top = TopDirections::from_weights(source, &w, features.spec.dim)?;
        let images = NeighbourImages::from_weights(source, &w, features.len())?;
        Ok(Self { features, top, images })
    }
}

/// Unit-normalised (post-processed) caption features, searched by dot product. Build one from an
/// [`IndexFile`] of the training captions ([`crate::eval::ProxyTextEncoder::features`]).
pub struct CaptionIndex {
    pub features: TextFeatures,
    pub top: Option<TopDirections>,
    pub images: Option<NeighbourImages>,
    unit: Vec<f32>,
}

/// `v / |v|`, or an error naming `what` when `v` is zero or not finite.
fn unit(v: &[f32], what: &str) -> Result<Vec<f32>> {
    let norm = v.iter().map(|x| (x * x) as f64).sum::<f64>().sqrt();
    if !norm.is_finite() || norm == 0.0 {
        return Err(Error::input(format!("{what} has a zero or non-finite text feature")));
    }
    Ok(v.iter().map(|x| (*x as f64 / norm) as f32).collect())
}

fn post_process(top: &Option<TopDirections>, x: &[f32]) -> Vec<f32> {
    match top {
        Some(t) => t.apply(x),
        None => x.to_vec(),
    }
}

impl CaptionIndex {
    pub fn new(file: IndexFile) -> Result<Self> {
        let IndexFile { features, top, images } = file;
        if features.is_empty() {
            return Err(Error::input("the caption index is empty"));
        }
        let d = features.spec.dim;
        let mut values = Vec::with_capacity(features.values.len());
        for (i, row) in features.values.chunks(d).enumerate() {
            let what = format!("indexed caption {:?}", features.captions[i]);
            values.extend(unit(&post_process(&top, row), &what)?);
        }
        Ok(Self { features, top, images, unit: values })
    }

    pub fn len(&self) -> usize {
        self.features.len()
    }

    pub fn is_empty(&self) -> bool {
        self.features.is_empty()
    }

    /// The `k` indexed captions most similar to `query` (a raw feature of the index's spec), best
    /// first, as (row, cosine); ties keep index order. Captions equal to `skip` are left out.
    pub fn nearest(&self, query: &[f32], k: usize, skip: Option<&str>) -> Result<Vec<(usize, f32)>> {
        let d = self.features.spec.dim;
        if query.len() != d {
            return Err(Error::input(format!("a query feature of {} values for an index of dimension {d}", query.len())));
        }
        let q = unit(&post_process(&self.top, query), "the prompt")?;
        let mut scored: Vec<(usize, f32)> = self
            .unit
            .chunks(d)
            .enumerate()
            .filter(|(i, _)| skip != Some(self.features.captions[*i].as_str()))
            .map(|(i, row)| (i, row.iter().zip(&q).map(|(a, b)| a * b).sum()))
            .collect();
        scored.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        scored.truncate(k);
        Ok(scored)
    }

    pub fn caption(&self, row: usize) -> &str {
        &self.features.captions[row]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::eval::TextFeatureSpec;

    fn index(rows: &[(&str, [f32; 3])]) -> CaptionIndex {
        let spec = TextFeatureSpec { gguf_file: "x.gguf".into(), gguf_sha256: "0".into(), layers: 1, dim: 3, pool: "final-norm-mean".into() };
        let captions = rows.iter().map(|r| r.0.to_string()).collect();
        let values = rows.iter().flat_map(|r| r.1).collect();
        CaptionIndex::new(IndexFile { features: TextFeatures::new(spec, captions, values).unwrap(), top: None, images: None }).unwrap()
    }

    #[test]
    fn removing_the_top_direction_lets_meaning_outweigh_a_shared_nuisance() {
        // e1 varies most (a nuisance such as length); e2 / e3 carry the meaning.
        let spec = TextFeatureSpec { gguf_file: "x.gguf".into(), gguf_sha256: "0".into(), layers: 1, dim: 4, pool: "final-norm-mean".into() };
        let captions: Vec<String> = ["apple", "pear", "plum"].map(String::from).to_vec();
        let values = vec![10.0, 5.0, 1.0, 0.0, 10.0, -5.0, 0.0, 1.0, 10.0, 5.0, 0.0, 1.0];
        let features = TextFeatures::new(spec, captions, values).unwrap();
        let query = [10.0, -5.0, 1.0, 0.0];
        let plain = CaptionIndex::new(IndexFile::build(features.clone(), 0).unwrap()).unwrap();
        assert_eq!(plain.caption(plain.nearest(&query, 1, None).unwrap()[0].0), "pear");
        let file = IndexFile::build(features, 1).unwrap();
        let loaded = IndexFile::from_safetensors("neighbours.safetensors", &file.to_safetensors().unwrap()).unwrap();
        assert_eq!((&loaded.top, &loaded.features.captions), (&file.top, &file.features.captions));
        assert!(loaded.features.values.iter().zip(&file.features.values).all(|(a, b)| (a - b).abs() < 0.05));
        let abtt = CaptionIndex::new(loaded).unwrap();
        assert_eq!(abtt.caption(abtt.nearest(&query, 1, None).unwrap()[0].0), "apple");
    }

    #[test]
    fn caption_images_round_trip_in_8_bits_and_bad_ones_are_errors() {
        let spec = TextFeatureSpec { gguf_file: "x".into(), gguf_sha256: "0".into(), layers: 1, dim: 2, pool: "p".into() };
        let captions = vec!["apple".into(), "red apple".into(), "pear".into()];
        let features = TextFeatures::new(spec, captions, vec![1.0, 0.0, 0.9, 0.1, 0.0, 1.0]).unwrap();
        // Two images of 2 channels of 2x2; the apple's two captions share image 0.
        let latents: Vec<f32> = (0..16).map(|i| (i as f32 - 7.0) * 0.37).collect();
        let images = NeighbourImages::new([2, 2, 2, 2], &latents, vec![0, 0, 1]).unwrap();
        let file = IndexFile::build(features.clone(), 0).unwrap().with_images(images.clone()).unwrap();
        let loaded = IndexFile::from_safetensors("neighbours.safetensors", &file.to_safetensors().unwrap()).unwrap();
        assert_eq!(loaded.images.as_ref(), Some(&images));
        assert_eq!((images.image_of(1), images.image_of(2), images.image_of(3)), (Some(0), Some(1), None));
        // Without images the file reads as before.
        let plain = IndexFile::build(features.clone(), 0).unwrap();
        assert!(IndexFile::from_safetensors("n", &plain.to_safetensors().unwrap()).unwrap().images.is_none());
        assert!(NeighbourImages::new([2, 2, 2, 2], &latents, vec![0, 2, 1]).unwrap_err().to_string().contains("image 2"));
        assert!(NeighbourImages::new([2, 2, 2, 2], &latents[..15], vec![0]).is_err());
        let mut nan = latents.clone();
        nan[3] = f32::NAN;
        assert!(NeighbourImages::new([2, 2, 2, 2], &nan, vec![0]).is_err());
        let short = NeighbourImages::new([2, 2, 2, 2], &latents, vec![0, 1]).unwrap();
        assert!(IndexFile::build(features, 0).unwrap().with_images(short).unwrap_err().to_string().contains("2 caption images for 3"));
        for s in [0.0, -0.1, 1.5, f64::NAN] {
            assert!(NeighbourGuidance { count: 1, share: 0.5, init: Some(s) }.validate().is_err(), "{s}");
        }
        NeighbourGuidance { count: 1, share: 0.5, init: Some(1.0) }.validate().unwrap();
    }

    #[test]
    fn nearest_by_cosine_not_length() {
        let ix = index(&[("apple", [10.0, 0.0, 0.0]), ("pear", [1.0, 1.0, 0.0]), ("knife", [0.0, 0.0, 1.0])]);
        let got = ix.nearest(&[1.0, 0.9, 0.0], 2, None).unwrap();
        assert_eq!(got.iter().map(|g| ix.caption(g.0)).collect::<Vec<_>>(), ["pear", "apple"]);
        assert!((got[0].1 - 0.9986).abs() < 1e-3, "{got:?}");
        let skipped = ix.nearest(&[1.0, 0.9, 0.0], 1, Some("pear")).unwrap();
        assert_eq!(ix.caption(skipped[0].0), "apple");
        assert_eq!(ix.nearest(&[0.0, 0.0, 1.0], 10, None).unwrap().len(), 3);
    }

    #[test]
    fn guidance_shares_keep_the_weight_and_refuse_absurd_settings() {
        let g = NeighbourGuidance { count: 2, share: 0.5, init: None };
        g.validate().unwrap();
        assert_eq!(g.shares(), [0.5, 0.25, 0.25]);
        for (count, share) in [(0, 0.5), (MAX_COUNT + 1, 0.5), (1, 0.0), (1, 1.0), (1, f32::NAN), (1, -0.2)] {
            assert!(NeighbourGuidance { count, share, init: None }.validate().is_err(), "{count} {share}");
        }
    }

    #[test]
    fn bad_queries_and_rows_are_errors() {
        let ix = index(&[("apple", [1.0, 0.0, 0.0])]);
        assert!(ix.nearest(&[1.0, 0.0], 1, None).unwrap_err().to_string().contains("dimension 3"));
        assert!(ix.nearest(&[0.0, 0.0, 0.0], 1, None).unwrap_err().to_string().contains("prompt"));
        assert!(ix.nearest(&[f32::NAN, 0.0, 0.0], 1, None).is_err());
        let spec = TextFeatureSpec { gguf_file: "x".into(), gguf_sha256: "0".into(), layers: 1, dim: 2, pool: "p".into() };
        let zero = TextFeatures::new(spec.clone(), vec!["blank".into()], vec![0.0, 0.0]).unwrap();
        assert!(CaptionIndex::new(IndexFile { features: zero, top: None, images: None }).err().unwrap().to_string().contains("blank"));
        assert!(CaptionIndex::new(IndexFile { features: TextFeatures::empty(spec.clone()), top: None, images: None }).is_err());
        assert!(IndexFile::build(TextFeatures::new(spec, vec!["a".into()], vec![1.0, 0.0]).unwrap(), 1).is_err());
    }
}
