//! Small layers shared by every model, loaded from PyTorch key names and layouts.

mod conv;
mod linear;
mod norm;

pub use conv::{Conv2d, Conv2dSpec};
pub use linear::{Embedding, Linear};
pub use norm::{layer_norm, GroupNorm, RmsNorm};
