use crate::structured::FlowGenerator;

/// JanusFlow: the generator with the ShallowUViT encoder and decoder, official key names
/// (load it with a `GeneratorConfig` converted from its `JanusFlowConfig`).
pub type JanusFlow<B> = FlowGenerator<B>;
