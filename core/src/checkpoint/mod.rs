//! Checkpoint I/O: a store of named tensors read from safetensors, and a `VarBuilder` that builds
//! modules by key path (candle style), recording every missing, misshapen or non-finite tensor.

mod dir;
mod store;
mod var_builder;

pub use dir::{load_weights_dir, read_json, read_optional_json, weights_from_manifest};
pub use store::{decode_f32, encode_f32, StoredDtype, Weights};
pub use var_builder::{init_values, ParamKeys, VarBuilder};
