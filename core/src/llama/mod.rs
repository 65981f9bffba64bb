//! Llama-family decoder (DeepSeek-LLM, TinyLlama, SmolLM2): RMSNorm, HF-layout RoPE, GQA, SiLU MLP.

mod attention;
mod cache;
mod config;
mod model;
mod rope;

pub use attention::{attention_mask, Attention};
pub use cache::KvCache;
pub use config::LlamaConfig;
pub use model::{DecoderLayer, Llama, LlamaOutput, Mlp};
pub use rope::Rope;
