use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// A diffusers `AutoencoderKL` `config.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VaeConfig {
    #[serde(default = "default_blocks")]
    pub block_out_channels: Vec<usize>,
    #[serde(default = "one")]
    pub layers_per_block: usize,
    #[serde(default = "default_groups")]
    pub norm_num_groups: usize,
    #[serde(default = "four")]
    pub latent_channels: usize,
    #[serde(default = "three")]
    pub out_channels: usize,
    #[serde(default = "three")]
    pub in_channels: usize,
    #[serde(default = "default_scaling")]
    pub scaling_factor: f64,
    #[serde(default)]
    pub shift_factor: Option<f64>,
    #[serde(default = "yes")]
    pub use_post_quant_conv: bool,
    #[serde(default = "yes")]
    pub use_quant_conv: bool,
    #[serde(default = "yes")]
    pub mid_block_add_attention: bool,
    #[serde(default = "default_act")]
    pub act_fn: String,
}

fn default_blocks() -> Vec<usize> {
    vec![64]
}
fn one() -> usize {
    1
}
fn three() -> usize {
    3
}
fn four() -> usize {
    4
}
fn default_groups() -> usize {
    32
}
fn default_scaling() -> f64 {
    0.18215
}
fn yes() -> bool {
    true
}
fn default_act() -> String {
    "silu".into()
}

impl VaeConfig {
    /// stabilityai/sdxl-vae, the VAE of JanusFlow.
    pub fn sdxl() -> Self {
        Self {
            block_out_channels: vec![128, 256, 512, 512],
            layers_per_block: 2,
            norm_num_groups: 32,
            latent_channels: 4,
            out_channels: 3,
            in_channels: 3,
            scaling_factor: 0.13025,
            shift_factor: None,
            use_post_quant_conv: true,
            use_quant_conv: true,
            mid_block_add_attention: true,
            act_fn: "silu".into(),
        }
    }

    /// Image pixels per latent pixel.
    pub fn upscale(&self) -> usize {
        1 << (self.block_out_channels.len().saturating_sub(1))
    }

    /// A complete diffusers `config.json` for this VAE (`AutoencoderKL.from_pretrained` loads it).
    pub fn diffusers_json(&self, sample_size: usize) -> serde_json::Value {
        let mut v = serde_json::to_value(self).expect("serializable");
        let n = self.block_out_channels.len();
        v["_class_name"] = "AutoencoderKL".into();
        v["down_block_types"] = serde_json::json!(vec!["DownEncoderBlock2D"; n]);
        v["up_block_types"] = serde_json::json!(vec!["UpDecoderBlock2D"; n]);
        v["sample_size"] = sample_size.into();
        v["force_upcast"] = true.into();
        v
    }

    pub fn validate(&self, path: &str) -> Result<()> {
        let bad = |m: String| Err(Error::config(path, m));
        if self.block_out_channels.is_empty() {
            return bad("block_out_channels must not be empty".into());
        }
        if let Some(c) = self.block_out_channels.iter().find(|&&c| self.norm_num_groups == 0 || c % self.norm_num_groups != 0) {
            return bad(format!("channels {c} are not divisible by norm_num_groups {}", self.norm_num_groups));
        }
        if self.act_fn != "silu" {
            return bad(format!("act_fn {:?} is not supported (only silu)", self.act_fn));
        }
        if !(self.scaling_factor.is_finite() && self.scaling_factor > 0.0) {
            return bad(format!("scaling_factor must be positive, got {}", self.scaling_factor));
        }
        Ok(())
    }
}
