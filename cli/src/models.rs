use anyhow::Result;
use burn::tensor::backend::Backend;
use rfgen_backends::{BackendKind, BackendTask};
use rfgen_core::structured::{param_counts, preset, preset_names};

struct Count;

impl BackendTask for Count {
    type Output = Vec<String>;
    fn run<B: Backend>(self, device: B::Device) -> rfgen_core::Result<Vec<String>> {
        let millions = |n: usize| format!("{:.2}M", n as f64 / 1e6);
        Ok(preset_names()
            .map(|name| {
                let c = preset(name).expect("listed").config();
                let [llm, enc, dec] = param_counts::<B>(&c, &device);
                let lc = &c.language_config;
                let embeddings = lc.vocab_size * lc.hidden_size;
                let kind = |e: &str, d: &str| format!("{e}+{d}");
                let parts = match c.arm_name() {
                    "baseline" => kind("uvit", "uvit"),
                    "encoder" => kind("mmdit", "uvit"),
                    "decoder" => kind("uvit", "single_stream"),
                    _ => kind("mmdit", "single_stream"),
                };
                format!(
                    "{name:<15} arm={:<8} {parts:<20} llm={:<9} non-embedding={:<9} encoder={:<9} decoder={:<9} total={}",
                    c.arm_name(),
                    millions(llm),
                    millions(llm - embeddings),
                    millions(enc),
                    millions(dec),
                    millions(llm + enc + dec)
                )
            })
            .collect())
    }
}

/// One line per preset: name, arm, parameter counts per component.
pub fn run() -> Result<()> {
    let backend = if BackendKind::Ndarray.compiled() { BackendKind::Ndarray } else { BackendKind::Wgpu };
    for line in rfgen_backends::run(backend, Count)? {
        println!("{line}");
    }
    Ok(())
}
