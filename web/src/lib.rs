//! rfgen-web: the browser API. A `Generator` loads an rfgen model (manifest + verified shards,
//! cached in the Cache API) and runs the Euler-CFG loop on WebGPU, or on the CPU backend when the
//! browser has no WebGPU adapter. Thin over rfgen-core.

mod fetch;
mod generator;

pub use generator::Generator;
