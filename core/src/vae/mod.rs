//! diffusers `AutoencoderKL` (SDXL-VAE down to tiny): the decode path.

mod blocks;
mod config;
mod decoder;

pub use blocks::{AttentionBlock, ResnetBlock2D, Upsample2D};
pub use config::VaeConfig;
pub use decoder::{AutoencoderKl, Decoder, MidBlock, UpBlock, ENCODER_PREFIXES};
