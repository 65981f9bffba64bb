//! Small layers shared by every model, loaded from PyTorch key names and layouts.

mod activation;
mod conv;
mod linear;
mod norm;

pub use activation::{gelu_tanh, silu};
pub use conv::{Conv2d, Conv2dSpec};
pub use linear::{Embedding, Linear};
pub use norm::{downcast, layer_norm, masked_logit, softmax_f32, upcast, GroupNorm, RmsNorm};
