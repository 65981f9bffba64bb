//! JanusFlow (DeepSeek): ShallowUViT generation encoder/decoder around a Llama LLM, with the
//! official checkpoint key names (`language_model.*`, `vision_gen_enc_model.*`, ...).

mod config;
mod convnext;
mod model;
mod timestep;
mod uvit;

pub use config::{DecoderParams, EncoderParams, GenerationConfig, JanusFlowConfig};
pub use convnext::{ConvNextBlock, GlobalResponseNorm, UVitBlock};
pub use model::JanusFlow;
pub use timestep::{sinusoidal_embedding, TimestepEmbedding};
pub use uvit::{ShallowUViTDecoder, ShallowUViTEncoder, Unpatchify};
