use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::llama::LlamaConfig;
use crate::sampler::SampleConfig;

/// `vision_gen_enc_config.params` (constructor arguments of the official `ShallowUViTEncoder`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct EncoderParams {
    pub input_channels: usize,
    pub stride: usize,
    pub kernel_size: usize,
    pub padding: Option<usize>,
    pub block_out_channels: Vec<usize>,
    pub layers_in_middle: usize,
    pub hidden_size: usize,
    pub use_bias: bool,
    pub norm_eps: f64,
    pub use_mid_block: bool,
}

impl Default for EncoderParams {
    fn default() -> Self {
        Self {
            input_channels: 4,
            stride: 2,
            kernel_size: 2,
            padding: Some(0),
            block_out_channels: vec![768],
            layers_in_middle: 2,
            hidden_size: 2048,
            use_bias: true,
            norm_eps: 1e-6,
            use_mid_block: true,
        }
    }
}

impl EncoderParams {
    pub fn channels(&self) -> usize {
        *self.block_out_channels.last().unwrap_or(&0)
    }
    /// The official default: `ceil(kernel_size - stride)`.
    pub fn padding(&self) -> usize {
        self.padding.unwrap_or(self.kernel_size.saturating_sub(self.stride))
    }
}

/// `vision_gen_dec_config.params` (constructor arguments of the official `ShallowUViTDecoder`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct DecoderParams {
    pub in_channels: usize,
    pub out_channels: usize,
    pub block_out_channels: Vec<usize>,
    pub upsamples: usize,
    pub layers_in_middle: usize,
    pub hidden_size: usize,
    pub norm_eps: f64,
    pub use_bias: bool,
    pub use_mid_block: bool,
}

impl Default for DecoderParams {
    fn default() -> Self {
        Self {
            in_channels: 768,
            out_channels: 4,
            block_out_channels: vec![768],
            upsamples: 1,
            layers_in_middle: 2,
            hidden_size: 2048,
            norm_eps: 1e-6,
            use_bias: true,
            use_mid_block: true,
        }
    }
}

impl DecoderParams {
    pub fn channels(&self) -> usize {
        *self.block_out_channels.last().unwrap_or(&0)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClsParams<P> {
    #[serde(default)]
    pub cls: String,
    #[serde(default)]
    pub params: P,
}

/// A JanusFlow `config.json` (the layout of the released JanusFlow-1.3B; only the generation path).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JanusFlowConfig {
    pub language_config: LlamaConfig,
    pub vision_gen_enc_config: ClsParams<EncoderParams>,
    pub vision_gen_dec_config: ClsParams<DecoderParams>,
}

impl JanusFlowConfig {
    pub fn encoder(&self) -> &EncoderParams {
        &self.vision_gen_enc_config.params
    }
    pub fn decoder(&self) -> &DecoderParams {
        &self.vision_gen_dec_config.params
    }

    /// Released JanusFlow-1.3B widths.
    pub fn janusflow_1_3b() -> Self {
        Self {
            language_config: LlamaConfig::deepseek_llm_1_3b(),
            vision_gen_enc_config: ClsParams { cls: "ShallowUViTEncoder".into(), params: EncoderParams::default() },
            vision_gen_dec_config: ClsParams { cls: "ShallowUViTDecoder".into(), params: DecoderParams::default() },
        }
    }

    /// Latent spatial downsampling of the whole generator (patchify stride / unpatchify factor).
    pub fn patch_size(&self) -> usize {
        self.encoder().stride
    }

    pub fn latent_channels(&self) -> usize {
        self.encoder().input_channels
    }

    pub fn validate(&self, path: &str) -> Result<()> {
        self.language_config.validate(path)?;
        let (e, d, h) = (self.encoder(), self.decoder(), self.language_config.hidden_size);
        let bad = |m: String| Err(Error::config(path, m));
        if e.block_out_channels.is_empty() || d.block_out_channels.is_empty() {
            return bad("block_out_channels must not be empty".into());
        }
        if e.hidden_size != h || d.hidden_size != h {
            return bad(format!(
                "UViT hidden_size (encoder {}, decoder {}) must equal the LLM hidden_size {h}",
                e.hidden_size, d.hidden_size
            ));
        }
        if e.channels() % 2 != 0 {
            return bad(format!("encoder channels {} must be even (sinusoidal time embedding)", e.channels()));
        }
        if e.stride == 0 || e.kernel_size == 0 {
            return bad("encoder stride and kernel_size must be positive".into());
        }
        if d.upsamples == 0 {
            return bad("decoder upsamples must be at least 1".into());
        }
        if 1usize << d.upsamples != e.stride || e.kernel_size != e.stride || e.padding() != 0 {
            return bad(format!(
                "the encoder must patchify by its stride (kernel {} stride {} padding {}) and the decoder unpatchify by the same factor (2^upsamples = {})",
                e.kernel_size, e.stride, e.padding(), 1usize << d.upsamples
            ));
        }
        if d.out_channels != e.input_channels {
            return bad(format!("decoder out_channels {} != encoder input_channels {}", d.out_channels, e.input_channels));
        }
        if d.in_channels != e.channels() || d.channels() != e.channels() {
            return bad(format!(
                "decoder in_channels {} / block_out_channels {} must equal the encoder's {}",
                d.in_channels,
                d.channels(),
                e.channels()
            ));
        }
        Ok(())
    }
}

impl GenerationConfig {
    /// These settings, with unset fields taken from `base`.
    pub fn or(self, base: &GenerationConfig) -> Self {
        let b = base.clone();
        Self {
            bos_token_id: self.bos_token_id.or(b.bos_token_id),
            pad_token_id: self.pad_token_id.or(b.pad_token_id),
            image_gen_token_id: self.image_gen_token_id.or(b.image_gen_token_id),
            cfg_weight: self.cfg_weight.or(b.cfg_weight),
            num_inference_steps: self.num_inference_steps.or(b.num_inference_steps),
            shift: self.shift.or(b.shift),
            latent_shape: self.latent_shape.or(b.latent_shape),
            vae_scaling_factor: self.vae_scaling_factor.or(b.vae_scaling_factor),
            tokenizer: self.tokenizer.or(b.tokenizer),
            prompt_template: self.prompt_template.or(b.prompt_template),
            neighbours: self.neighbours.or(b.neighbours),
            neighbour_share: self.neighbour_share.or(b.neighbour_share),
            neighbour_init: self.neighbour_init.or(b.neighbour_init),
        }
    }
}

/// Optional `generation.json` next to a model: special token ids and default sampling settings.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct GenerationConfig {
    #[serde(default)]
    pub bos_token_id: Option<u32>,
    #[serde(default)]
    pub pad_token_id: Option<u32>,
    #[serde(default)]
    pub image_gen_token_id: Option<u32>,
    #[serde(default)]
    pub cfg_weight: Option<f64>,
    #[serde(default)]
    pub num_inference_steps: Option<usize>,
    /// Timestep shift of the sampling grid ([`SampleConfig::shift`]); 1 when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shift: Option<f64>,
    #[serde(default)]
    pub latent_shape: Option<Vec<usize>>,
    #[serde(default)]
    pub vae_scaling_factor: Option<f64>,
    /// `"bytes"`: prompts map to ids 3 + byte (for models without a tokenizer.json, e.g. presets).
    #[serde(default)]
    pub tokenizer: Option<String>,
    /// The prompt's template (`{prompt}` is replaced), encoded between BOS and the
    /// begin-of-generation id; JanusFlow's chat template when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt_template: Option<String>,
    /// Nearest training captions that also guide each prompt when the model directory has a
    /// caption index ([`crate::neighbours`]); 0 turns them off. Default 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub neighbours: Option<usize>,
    /// Their share of the guidance (the prompt keeps the rest). Default 0.5.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub neighbour_share: Option<f32>,
    /// Img2img strength of the retrieval start: an unseen prompt starts from its nearest
    /// neighbour's training image (stored in the caption index) noised to this strength, in
    /// (0, 1]; absent or 0: from noise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub neighbour_init: Option<f64>,
}

impl GenerationConfig {
    /// Sampling settings: the given ones, else this config's, else [`SampleConfig::default`].
    pub fn sample_config(&self, steps: Option<usize>, cfg: Option<f64>, shift: Option<f64>) -> SampleConfig {
        let d = SampleConfig::default();
        SampleConfig {
            steps: steps.or(self.num_inference_steps).unwrap_or(d.steps),
            cfg: cfg.or(self.cfg_weight).unwrap_or(d.cfg),
            shift: shift.or(self.shift).unwrap_or(d.shift),
        }
    }
}
