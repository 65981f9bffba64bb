//! The seeds' structured generator around the LLM, and JanusFlow as its baseline arm:
//! encoder = JanusFlow's ShallowUViT or an MM-DiT dual-stream stack; decoder = JanusFlow's
//! ShallowUViT or a single-stream (Flux) stack over [LLM text outputs, LLM image outputs].

mod config;
mod flops;
mod generator;
mod mmdit_encoder;
mod pooled_text;
mod presets;
mod single_stream_decoder;

pub use config::{
    DecoderConfig, EncoderConfig, GeneratorConfig, LlmGguf, MmditEncoderConfig, PooledTextConfig, RopeConfig, SingleStreamDecoderConfig,
};
pub use flops::{image_flops, vae_decode_flops, Flops};
pub use generator::{Component, FlowGenerator, GenDecoder, GenEncoder, GeneratorCond, StepTrace, UNUSED_PREFIXES};
pub use mmdit_encoder::MmditEncoder;
pub use pooled_text::{feature_stats, mean_pooled, prompt_body, PooledTextEmbed, POOLED_FROZEN};
pub use presets::{param_counts, preset, preset_names, Preset};
pub use single_stream_decoder::SingleStreamDecoder;
