//! Evaluation instruments. [`ProxyClip`]: a small contrastive image–text scorer standing in for
//! CLIP (no CLIP weights are available here), trained on every image of the emoji set (train and
//! held-out splits alike: it measures, it is not evaluated) — a *proxy*, named so everywhere.
//!
//! - text tower: frozen LLM features ([`text`]: SmolLM2-135M's first K layers from its GGUF,
//!   final RMSNorm, mean over tokens; cached per caption), standardised, then a trainable MLP;
//! - image tower: an area-downsampled RGB thumbnail, flattened, then an MLP;
//! - symmetric InfoNCE with a learnable temperature ([`train`]);
//! - [`retrieval`]: which items are scored, their fixed candidate captions, top-1 / top-5.
//!
//! [`flow_loss`]: the generator's velocity loss on fixed draws, to compare checkpoints.
//!
//! A scorer directory holds `config.json` ([`ProxyClipConfig`]) and `model.safetensors`
//! ([`scorer_weights`]); [`load_scorer_dir`] reads it.

pub mod flow_loss;
pub mod proxy_clip;
pub mod retrieval;
pub mod text;
pub mod train;

use std::path::Path;

pub use flow_loss::{draw_losses, loss_draws, loss_stats, FlowLossStats, LossDraw};
pub use proxy_clip::{
    feature_stats, image_input, scorer_weights, standardize, ProxyClip, ProxyClipConfig, ProxyScorer, TextFeatureSpec,
    PROXY_CLIP_KIND,
};
pub use retrieval::{best_draws, best_matches, candidate_sets, pick_items, retrieval, split_representatives, stats_of, top_k, RetrievalStats};
pub use text::{pooled_features, ProxyTextEncoder, TextFeatures};
pub use train::{ProxyClipTrainer, ProxyStepStats, ProxyTrainConfig, ProxyTrainData};

use crate::checkpoint::{read_json, Weights};
use crate::error::{Error, Result};

/// The files of a scorer directory.
pub const SCORER_CONFIG: &str = "config.json";
pub const SCORER_WEIGHTS: &str = "model.safetensors";
/// The text-feature cache a training run leaves in its output directory (not needed to score).
pub const TEXT_CACHE: &str = "proxy_text_cache.safetensors";

/// Reads a scorer directory: its config (validated) and weights.
pub fn load_scorer_dir(dir: &Path) -> Result<(ProxyClipConfig, Weights)> {
    if !dir.is_dir() {
        return Err(Error::Io(format!(
            "proxy scorer directory {} does not exist (train one with `rfgen-cli eval proxy-clip-train`)",
            dir.display()
        )));
    }
    let config_path = dir.join(SCORER_CONFIG);
    if !config_path.is_file() {
        return Err(Error::Io(format!("{} is not a proxy scorer: it has no {SCORER_CONFIG}", dir.display())));
    }
    let json: serde_json::Value = read_json(&config_path)?;
    if json.get("kind").and_then(|k| k.as_str()) != Some(proxy_clip::PROXY_CLIP_KIND) {
        return Err(Error::Io(format!(
            "{} is not a proxy scorer: its {SCORER_CONFIG} is not of kind {:?}",
            dir.display(),
            proxy_clip::PROXY_CLIP_KIND
        )));
    }
    let config: ProxyClipConfig = serde_json::from_value(json).map_err(|e| Error::config(config_path.display().to_string(), e))?;
    config.validate(&config_path.display().to_string())?;
    let weights_path = dir.join(SCORER_WEIGHTS);
    let bytes = std::fs::read(&weights_path).map_err(|e| Error::Io(format!("cannot read {}: {e}", weights_path.display())))?;
    let weights = Weights::from_safetensors(&weights_path.display().to_string(), bytes)?;
    Ok((config, weights))
}
