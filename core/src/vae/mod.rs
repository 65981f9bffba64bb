//! diffusers `AutoencoderKL` (SDXL-VAE down to tiny): the decode path, the encoder and training.

mod blocks;
mod config;
mod conv;
mod decoder;
mod encoder;
pub mod train;

pub use blocks::{AttentionBlock, ResnetBlock2D, Upsample2D};
pub use config::VaeConfig;
pub use decoder::{AutoencoderKl, Decoder, MidBlock, UpBlock, ENCODER_PREFIXES};
pub use encoder::{DiagonalGaussian, DownBlock, Downsample2D, Encoder};
pub use conv::{conv2d_im2col, im2col_enabled, set_im2col};
