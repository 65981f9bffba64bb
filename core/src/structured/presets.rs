//! Named configurations: the four ablation arms at each size (`<arm>-<size>`), from core/presets/*.json.

use super::GeneratorConfig;

/// A named generator configuration.
pub struct Preset {
    pub name: &'static str,
    pub json: &'static str,
}

impl Preset {
    pub fn config(&self) -> GeneratorConfig {
        serde_json::from_str(self.json).expect("presets are valid (tested)")
    }
}

const PRESETS: &[Preset] = &[
    Preset { name: "baseline-tiny", json: include_str!("../../presets/baseline-tiny.json") },
    Preset { name: "encoder-tiny", json: include_str!("../../presets/encoder-tiny.json") },
    Preset { name: "decoder-tiny", json: include_str!("../../presets/decoder-tiny.json") },
    Preset { name: "both-tiny", json: include_str!("../../presets/both-tiny.json") },
    Preset { name: "baseline-smol", json: include_str!("../../presets/baseline-smol.json") },
    Preset { name: "encoder-smol", json: include_str!("../../presets/encoder-smol.json") },
    Preset { name: "decoder-smol", json: include_str!("../../presets/decoder-smol.json") },
    Preset { name: "both-smol", json: include_str!("../../presets/both-smol.json") },
    Preset { name: "baseline-1.3b", json: include_str!("../../presets/baseline-1.3b.json") },
    Preset { name: "encoder-1.3b", json: include_str!("../../presets/encoder-1.3b.json") },
    Preset { name: "decoder-1.3b", json: include_str!("../../presets/decoder-1.3b.json") },
    Preset { name: "both-1.3b", json: include_str!("../../presets/both-1.3b.json") },
];

/// Every preset name, smallest size first.
pub fn preset_names() -> impl Iterator<Item = &'static str> {
    PRESETS.iter().map(|p| p.name)
}

pub fn preset(name: &str) -> Option<&'static Preset> {
    PRESETS.iter().find(|p| p.name == name)
}

/// Parameters per component `[llm, encoder, decoder]` of a configuration, counted without
/// allocating the weights.
pub fn param_counts<B: burn::tensor::backend::Backend>(config: &GeneratorConfig, device: &B::Device) -> [usize; 3] {
    use super::{Component, FlowGenerator};
    let vb = crate::checkpoint::VarBuilder::<B>::shapes(device);
    let _ = FlowGenerator::build(&vb, config);
    let mut counts = [0usize; 3];
    for (key, shape) in vb.requested() {
        let i = match Component::of(&key) {
            Component::Llm => 0,
            Component::Encoder => 1,
            Component::Decoder => 2,
        };
        counts[i] += shape.iter().product::<usize>();
    }
    counts
}
