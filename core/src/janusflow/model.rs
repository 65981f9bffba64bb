use burn::tensor::backend::Backend;

use super::JanusFlowConfig;
use crate::checkpoint::Weights;
use crate::error::Result;
use crate::structured::{FlowGenerator, GeneratorConfig};

/// JanusFlow: the generator with the ShallowUViT encoder and decoder, official key names.
pub type JanusFlow<B> = FlowGenerator<B>;

/// Loads a released-layout JanusFlow checkpoint.
pub fn load_janusflow<B: Backend>(weights: &Weights, config: &JanusFlowConfig, device: &B::Device) -> Result<JanusFlow<B>> {
    FlowGenerator::load(weights, &GeneratorConfig::from(config), device)
}
