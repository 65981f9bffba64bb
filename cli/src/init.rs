use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use burn::tensor::backend::Backend;
use clap::Args;
use rfgen_backends::{BackendKind, BackendTask};
use rfgen_core::checkpoint::VarBuilder;
use rfgen_core::structured::{preset, FlowGenerator};

#[derive(Args, Debug)]
pub struct InitArgs {
    /// Preset name (see `rfgen-cli models`).
    #[arg(long)]
    preset: String,
    /// Seed of the random weights.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Output model directory (config.json + model.safetensors).
    #[arg(long)]
    out: PathBuf,
    /// Replace an existing directory.
    #[arg(long)]
    force: bool,
}

struct Init(InitArgs);

impl BackendTask for Init {
    type Output = Result<()>;
    fn run<B: Backend>(self, device: B::Device) -> rfgen_core::Result<Result<()>> {
        Ok(self.write::<B>(&device))
    }
}

impl Init {
    fn write<B: Backend>(self, device: &B::Device) -> Result<()> {
        let a = self.0;
        let Some(p) = preset(&a.preset) else { bail!("unknown preset {:?}; `rfgen-cli models` lists them", a.preset) };
        if a.out.exists() && !a.force {
            bail!("{} already exists (use --force to replace it)", a.out.display());
        }
        let config = p.config();
        let vb = VarBuilder::<B>::random(a.seed, device).recording();
        let _ = FlowGenerator::build(&vb, &config);
        let bytes = vb.created().to_safetensors_f32()?;
        // Write next to the target, then rename: no partial model is ever left behind.
        let tmp = a.out.with_extension("partial");
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir_all(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
        std::fs::write(tmp.join("config.json"), serde_json::to_string_pretty(&config)?)?;
        std::fs::write(tmp.join("model.safetensors"), bytes)?;
        if a.out.exists() {
            std::fs::remove_dir_all(&a.out).with_context(|| format!("cannot replace {}", a.out.display()))?;
        }
        std::fs::rename(&tmp, &a.out).with_context(|| format!("cannot write {}", a.out.display()))?;
        eprintln!("wrote {} ({} seed {})", a.out.display(), p.name, a.seed);
        Ok(())
    }
}

pub fn run(args: InitArgs) -> Result<()> {
    let backend = if BackendKind::Ndarray.compiled() { BackendKind::Ndarray } else { BackendKind::Wgpu };
    rfgen_backends::run(backend, Init(args))?
}
