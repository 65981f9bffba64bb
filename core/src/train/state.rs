use serde::{Deserialize, Serialize};

/// Files of a training checkpoint directory.
pub const STATE_FILES: [&str; 4] = ["model.safetensors", "ema.safetensors", "optim.safetensors", "state.json"];

/// Everything besides tensors that an exact resume needs. All randomness of step `s` derives from
/// `(seed, s)`, so the step counter is the whole RNG and data-order state.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TrainState {
    /// Optimizer updates done.
    pub step: u64,
    pub seed: u64,
    /// What is trained ("flow" or "vae") and how: the run's settings, checked on resume.
    pub kind: String,
    pub settings: serde_json::Value,
}
