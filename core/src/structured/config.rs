use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::janusflow::{DecoderParams, EncoderParams, GenerationConfig, JanusFlowConfig};
use crate::llama::LlamaConfig;

/// MM-DiT dual-stream encoder (SD3 `JointTransformerBlock`s).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MmditEncoderConfig {
    pub dim: usize,
    pub num_layers: usize,
    pub num_attention_heads: usize,
    pub attention_head_dim: usize,
    /// Width of the sinusoidal timestep features fed to the time-embedding MLP.
    #[serde(default = "default_time_dim")]
    pub time_embed_dim: usize,
}

fn default_time_dim() -> usize {
    256
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RopeConfig {
    pub theta: f64,
    pub axes_dim: Vec<usize>,
}

/// Single-stream (Flux `SingleTransformerBlock`) decoder.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SingleStreamDecoderConfig {
    pub dim: usize,
    pub num_layers: usize,
    pub num_attention_heads: usize,
    pub attention_head_dim: usize,
    #[serde(default = "default_mlp_ratio")]
    pub mlp_ratio: f64,
    /// 2-D rotary embedding over the image grid (Flux layout); text tokens get position 0.
    #[serde(default)]
    pub rope: Option<RopeConfig>,
    /// Long skip from the encoder's noise stream into the decoder's image tokens.
    #[serde(default = "yes")]
    pub long_skip: bool,
}

fn default_mlp_ratio() -> f64 {
    4.0
}
fn yes() -> bool {
    true
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum EncoderConfig {
    Uvit(EncoderParams),
    Mmdit(MmditEncoderConfig),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum DecoderConfig {
    Uvit(DecoderParams),
    SingleStream(SingleStreamDecoderConfig),
}

/// Pooled text conditioning (SD3's `pooled_projections`): the mean over the prompt's tokens of
/// the final-norm hidden states of the first `layers` layers of the same LLM (a frozen copy,
/// `pooled_text_model.*`), through `pooled_text_embed` (linear, SiLU, linear) and added to the
/// time embedding. Unconditional rows get zeros.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PooledTextConfig {
    pub layers: usize,
}

/// A generator: LLM + generation encoder + decoder. `config.json` of an rfgen structured model
/// (`"model_type": "rfgen_flow"`), or converted from a JanusFlow config.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GeneratorConfig {
    #[serde(default = "model_type")]
    pub model_type: String,
    /// baseline | encoder | decoder | both (informational).
    #[serde(default)]
    pub arm: Option<String>,
    pub language_config: LlamaConfig,
    pub latent_channels: usize,
    pub patch_size: usize,
    pub encoder: EncoderConfig,
    pub decoder: DecoderConfig,
    #[serde(default)]
    pub generation: GenerationConfig,
    /// The LLM's weights and tokenizer come from this GGUF (not stored with the model).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub llm_gguf: Option<LlmGguf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pooled_text: Option<PooledTextConfig>,
}

/// A GGUF the model takes its LLM from: its first `layers` layers, checked by sha256.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LlmGguf {
    /// File name, looked up in `$RFGEN_GGUF_DIR` or `~/.cache/rfgen/smollm2`.
    pub file: String,
    pub sha256: String,
    pub layers: usize,
    /// Where `./build.sh setup` gets it (informational).
    #[serde(default)]
    pub source: Option<String>,
}

fn model_type() -> String {
    "rfgen_flow".into()
}

impl From<&JanusFlowConfig> for GeneratorConfig {
    fn from(c: &JanusFlowConfig) -> Self {
        Self {
            model_type: "multi_modality".into(),
            arm: Some("baseline".into()),
            language_config: c.language_config.clone(),
            latent_channels: c.latent_channels(),
            patch_size: c.patch_size(),
            encoder: EncoderConfig::Uvit(c.encoder().clone()),
            decoder: DecoderConfig::Uvit(c.decoder().clone()),
            generation: GenerationConfig::default(),
            llm_gguf: None,
            pooled_text: None,
        }
    }
}

impl GeneratorConfig {
    pub fn hidden(&self) -> usize {
        self.language_config.hidden_size
    }

    /// The frozen text pooler: the language model's shape with `pooled_text.layers` layers.
    pub fn pooler_config(&self) -> Option<LlamaConfig> {
        self.pooled_text.as_ref().map(|p| LlamaConfig { num_hidden_layers: p.layers, ..self.language_config.clone() })
    }

    /// Width of the skip tokens the encoder hands to the decoder.
    pub fn skip_width(&self) -> usize {
        match &self.encoder {
            EncoderConfig::Uvit(p) => p.channels(),
            EncoderConfig::Mmdit(m) => m.dim,
        }
    }

    /// Sets the latent channels everywhere they appear (the ConvNeXt encoder's input convolution
    /// and decoder's output), e.g. 3 to train in pixel space.
    pub fn set_latent_channels(&mut self, c: usize) {
        self.latent_channels = c;
        if let EncoderConfig::Uvit(p) = &mut self.encoder {
            p.input_channels = c;
        }
        if let DecoderConfig::Uvit(p) = &mut self.decoder {
            p.out_channels = c;
        }
    }

    pub fn arm_name(&self) -> &'static str {
        match (&self.encoder, &self.decoder) {
            (EncoderConfig::Uvit(_), DecoderConfig::Uvit(_)) => "baseline",
            (EncoderConfig::Mmdit(_), DecoderConfig::Uvit(_)) => "encoder",
            (EncoderConfig::Uvit(_), DecoderConfig::SingleStream(_)) => "decoder",
            (EncoderConfig::Mmdit(_), DecoderConfig::SingleStream(_)) => "both",
        }
    }

    pub fn validate(&self, path: &str) -> Result<()> {
        self.language_config.validate(path)?;
        let bad = |m: String| Err(Error::config(path, m));
        let h = self.hidden();
        if self.patch_size == 0 || self.latent_channels == 0 {
            return bad("patch_size and latent_channels must be positive".into());
        }
        if let Some(p) = &self.pooled_text {
            if p.layers == 0 || p.layers > 256 {
                return bad(format!("pooled_text.layers is {}; it must be between 1 and 256", p.layers));
            }
        }
        match &self.encoder {
            EncoderConfig::Uvit(p) => {
                if p.block_out_channels.is_empty() || p.hidden_size != h || p.channels() % 2 != 0 {
                    return bad(format!("uvit encoder: needs block_out_channels (even) and hidden_size = {h}"));
                }
                if p.stride != self.patch_size || p.kernel_size != p.stride || p.padding() != 0 || p.input_channels != self.latent_channels {
                    return bad("uvit encoder: in_conv must patchify by patch_size with latent_channels inputs".into());
                }
            }
            EncoderConfig::Mmdit(m) => {
                if m.dim == 0 || m.num_attention_heads * m.attention_head_dim == 0 || m.time_embed_dim % 2 != 0 || m.dim % 4 != 0 {
                    return bad("mmdit encoder: dim (multiple of 4), heads, head_dim and an even time_embed_dim are required".into());
                }
            }
        }
        match &self.decoder {
            DecoderConfig::Uvit(p) => {
                if p.block_out_channels.is_empty() || p.hidden_size != h || p.out_channels != self.latent_channels {
                    return bad(format!("uvit decoder: needs block_out_channels, hidden_size = {h}, out_channels = latent_channels"));
                }
                if p.channels() != self.skip_width() {
                    return bad(format!(
                        "uvit decoder: block_out_channels[-1] = {} must equal the encoder's skip width {}",
                        p.channels(),
                        self.skip_width()
                    ));
                }
                if 1usize << p.upsamples != self.patch_size {
                    return bad(format!("uvit decoder: 2^upsamples must equal patch_size {}", self.patch_size));
                }
            }
            DecoderConfig::SingleStream(s) => {
                if s.dim == 0 || s.num_attention_heads * s.attention_head_dim == 0 {
                    return bad("single_stream decoder: dim, heads and head_dim must be positive".into());
                }
                if let Some(r) = &s.rope {
                    if r.axes_dim.len() != 3 || r.axes_dim.iter().sum::<usize>() != s.attention_head_dim || r.axes_dim.iter().any(|d| d % 2 != 0) {
                        return bad(format!("single_stream decoder: rope axes_dim {:?} must be 3 even widths summing to head_dim {}", r.axes_dim, s.attention_head_dim));
                    }
                }
            }
        }
        Ok(())
    }
}
