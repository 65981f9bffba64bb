//! rfgen-core: LLM-prior rectified-flow text-to-image models, generic over burn's `Backend`.

pub mod checkpoint;
pub mod convert;
pub mod data;
pub mod dit;
pub mod error;
pub mod eval;
pub mod gguf;
pub mod image;
pub mod janusflow;
pub mod layers;
pub mod llama;
pub mod neighbours;
pub mod noise;
pub mod pipeline;
pub mod quant;
pub mod sampler;
pub mod structured;
pub mod tokenizer;
pub mod train;
pub mod vae;

pub use burn;
pub use error::{Error, Result};
