//! Diffusion-transformer blocks with diffusers semantics: SD3's MM-DiT `JointTransformerBlock`
//! and Flux's `FluxSingleTransformerBlock`, with their adaLN modulations and attention.

mod adaln;
mod attention;
mod mmdit;
mod rope;
mod single_stream;

pub use adaln::{AdaLayerNormContinuous, AdaLayerNormZero, AdaLayerNormZeroSingle, Modulation, ZeroChunks};
pub use attention::{head_attention, FeedForward, QkNorm};
pub use mmdit::{ContextNorm, JointAttention, JointTransformerBlock};
pub use rope::FluxRope;
pub use single_stream::{SingleAttention, SingleTransformerBlock};
