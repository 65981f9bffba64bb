use std::path::PathBuf;

use anyhow::{bail, Result};
use burn::tensor::backend::Backend;
use clap::Args;
use rfgen_backends::{BackendKind, BackendTask};
use rfgen_core::checkpoint::StoredDtype;
use rfgen_core::convert::ModelKind;
use rfgen_core::pipeline::read_checkpoint;
use rfgen_core::structured::{Component, FlowGenerator};
use rfgen_core::vae::AutoencoderKl;

#[derive(Args, Debug)]
pub struct InspectArgs {
    /// A model or VAE directory, or a .safetensors file (config.json beside it).
    path: PathBuf,
}

struct Task(InspectArgs);

impl BackendTask for Task {
    type Output = Result<()>;
    fn run<B: Backend>(self, device: B::Device) -> rfgen_core::Result<Result<()>> {
        Ok(inspect::<B>(self.0, &device))
    }
}

fn mib(b: u64) -> String {
    format!("{:.2} MiB", b as f64 / (1 << 20) as f64)
}

fn inspect<B: Backend>(a: InspectArgs, device: &B::Device) -> Result<()> {
    let ckpt = read_checkpoint(&a.path)?;
    println!("path: {}", a.path.display());
    println!("layout: {}", ckpt.layout);
    match &ckpt.kind {
        ModelKind::Generator(c) => {
            let l = &c.language_config;
            println!(
                "model: generator, arm {} | LLM hidden {} layers {} heads {}/{} vocab {} | latent {} ch, patch {}",
                c.arm_name(),
                l.hidden_size,
                l.num_hidden_layers,
                l.num_attention_heads,
                l.kv_heads(),
                l.vocab_size,
                c.latent_channels,
                c.patch_size
            );
        }
        ModelKind::Vae(c) => println!(
            "model: AutoencoderKL decoder, blocks {:?}, {} per block, {} groups, scaling {}",
            c.block_out_channels, c.layers_per_block, c.norm_num_groups, c.scaling_factor
        ),
    }
    println!("tensors:");
    let mut total = 0u64;
    let mut quantized = 0usize;
    for name in ckpt.weights.names() {
        let shape = ckpt.weights.shape(name).expect("listed");
        let dtype = ckpt.weights.dtype(name).expect("listed");
        let bytes = ckpt.weights.raw(name).expect("listed").len() as u64;
        total += bytes;
        if matches!(dtype, StoredDtype::I8 | StoredDtype::U8) {
            quantized += 1;
        }
        println!("  {name:<70} {:<16} {:<5} {bytes}", format!("{shape:?}"), dtype.name());
    }
    let expected = ckpt.kind.expected::<B>(device);
    let mut parts = [0usize; 3];
    for (key, shape) in &expected {
        let n: usize = shape.iter().product();
        match (&ckpt.kind, Component::of(key)) {
            (ModelKind::Vae(_), _) => parts[2] += n,
            (_, Component::Llm) => parts[0] += n,
            (_, Component::Encoder) => parts[1] += n,
            (_, Component::Decoder) => parts[2] += n,
        }
    }
    match ckpt.kind {
        ModelKind::Generator(_) => println!("parameters: llm {} encoder {} decoder {} total {}", parts[0], parts[1], parts[2], parts.iter().sum::<usize>()),
        ModelKind::Vae(_) => println!("parameters: vae decoder {}", parts[2]),
    }
    println!("size: {} in {} tensors", mib(total), ckpt.weights.len());
    match (&ckpt.manifest, quantized) {
        (Some(m), _) => {
            let q = m.quantization.as_ref().map(|q| format!("{}{}", q.scheme, q.group_size.map(|g| format!(" group {g}")).unwrap_or_default()));
            println!("dtype: {} | quantization: {} ({quantized} quantized weights) | {}", m.dtype, q.unwrap_or("none".into()), m.kept_precision);
            println!("shards: {} verified (size and sha256), largest {}", m.shards.len(), mib(m.shards.iter().map(|s| s.bytes).max().unwrap_or(0)));
        }
        (None, 0) => println!("quantization: none"),
        (None, n) => println!("quantization: {n} quantized weights"),
    }
    let loaded = match &ckpt.kind {
        ModelKind::Generator(c) => FlowGenerator::<B>::load(&ckpt.weights, c, device).map(drop),
        ModelKind::Vae(c) => AutoencoderKl::<B>::load(&ckpt.weights, c, device).map(drop),
    };
    match loaded {
        Ok(()) => {
            println!("validation: ok (every tensor present, shaped and finite; nothing unexpected)");
            Ok(())
        }
        Err(e) => {
            println!("validation: FAILED: {e}");
            bail!("{} is not a valid checkpoint: {e}", a.path.display())
        }
    }
}

pub fn run(args: InspectArgs) -> Result<()> {
    rfgen_backends::run(BackendKind::Ndarray, Task(args))?
}
