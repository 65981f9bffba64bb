//! `rfgen-cli encode-latents`: pre-encode every image of a dataset to flow latents with a VAE
//! (posterior mean through `encode_flow_latent`), for training a generator on latents.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use burn::tensor::backend::Backend;
use clap::Args;
use rfgen_backends::{BackendKind, BackendTask};
use rfgen_core::checkpoint::Weights;
use rfgen_core::convert::sha256_hex;
use rfgen_core::data::Dataset;
use rfgen_core::pipeline::VaeFiles;
use rfgen_core::vae::train::encode_flow_latents;
use rfgen_core::vae::AutoencoderKl;
use crate::output::write_atomic;
use crate::progress::{status, status_done};

/// The latents file and its description, written into the dataset directory.
pub const LATENTS_FILE: &str = "latents.safetensors";
pub const LATENTS_JSON: &str = "latents.json";

#[derive(Args, Debug, Clone)]
pub struct EncodeArgs {
    /// diffusers AutoencoderKL directory with its encoder (e.g. from `rfgen-cli train-vae`).
    #[arg(long)]
    vae: PathBuf,
    /// Dataset directory; latents.safetensors (`latents` f32 [N, C, h, w], dataset order) and
    /// latents.json are written into it.
    #[arg(long)]
    data: PathBuf,
    /// Images per forward pass.
    #[arg(long, default_value_t = 32)]
    batch: usize,
    /// ndarray (CPU), wgpu or cuda.
    #[arg(long, default_value = "ndarray")]
    backend: String,
}

struct Task<'a> {
    files: &'a VaeFiles,
    data: &'a Dataset,
    batch: usize,
}

impl BackendTask for Task<'_> {
    type Output = (Vec<f32>, [usize; 4]);
    fn run<B: Backend>(self, device: B::Device) -> rfgen_core::Result<Self::Output> {
        let vae = AutoencoderKl::<B>::load_full(&self.files.weights, &self.files.config, &device)?;
        let all: Vec<usize> = (0..self.data.len()).collect();
        let start = Instant::now();
        encode_flow_latents(&vae, self.data, &all, self.batch, &device, &mut |done, total| {
            status(format_args!("encoded {done}/{total} images ({:.1} img/s)", done as f64 / start.elapsed().as_secs_f64().max(1e-9)));
            if done == total {
                status_done();
            }
        })
    }
}

/// The sha256 of every file of the VAE directory that defines it, and one digest over them all.
fn vae_digest(dir: &Path) -> Result<(String, serde_json::Map<String, serde_json::Value>)> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .with_context(|| format!("cannot list {}", dir.display()))?
        .filter_map(|e| e.ok()?.file_name().to_str().map(str::to_string))
        .filter(|n| n == "config.json" || n == "manifest.json" || n.ends_with(".safetensors") || n.ends_with(".safetensors.index.json"))
        .collect();
    names.sort();
    let mut files = serde_json::Map::new();
    let mut summary = String::new();
    for n in names {
        let bytes = std::fs::read(dir.join(&n)).with_context(|| format!("cannot read {}", dir.join(&n).display()))?;
        let digest = sha256_hex(&bytes);
        summary.push_str(&format!("{n} {digest}\n"));
        files.insert(n, digest.into());
    }
    Ok((sha256_hex(summary.as_bytes()), files))
}

pub fn run(args: EncodeArgs) -> Result<()> {
    let kind: BackendKind = args.backend.parse()?;
    if args.batch == 0 {
        bail!("--batch must be at least 1");
    }
    let data = rfgen_core::data::load_dir(&args.data).with_context(|| format!("dataset {}", args.data.display()))?;
    let files = VaeFiles::read_dir(&args.vae)?;
    let f = files.config.upscale();
    if data.size % f != 0 {
        bail!("dataset images are {}px, not a multiple of the VAE's downsampling factor {f}", data.size);
    }
    let start = Instant::now();
    let (latents, shape) = rfgen_backends::run(kind, Task { files: &files, data: &data, batch: args.batch })?;
    let secs = start.elapsed().as_secs_f64();
    let (mean, std) = {
        let n = latents.len().max(1) as f64;
        let m = latents.iter().map(|&v| v as f64).sum::<f64>() / n;
        (m, (latents.iter().map(|&v| (v as f64 - m).powi(2)).sum::<f64>() / n).sqrt())
    };
    let mut w = Weights::new();
    w.insert_f32("latents", shape.to_vec(), latents);
    write_atomic(&args.data.join(LATENTS_FILE), &w.to_safetensors(None)?)?;
    let (digest, vae_files) = vae_digest(&args.vae)?;
    let images_sha = sha256_hex(&std::fs::read(args.data.join(rfgen_core::data::IMAGES_FILE))?);
    let meta = serde_json::json!({
        "tensor": "latents",
        "shape": shape,
        "dtype": "f32",
        "order": "dataset items (captions.json) in order",
        "latent": "(posterior mean - shift_factor) * scaling_factor",
        "vae_path": std::fs::canonicalize(&args.vae).unwrap_or(args.vae.clone()).display().to_string(),
        "vae_sha256": digest,
        "vae_files": vae_files,
        "scaling_factor": files.config.scaling_factor,
        "shift_factor": files.config.shift_factor,
        "images_sha256": images_sha,
        "mean": mean,
        "std": std,
    });
    write_atomic(&args.data.join(LATENTS_JSON), &serde_json::to_vec_pretty(&meta)?)?;
    println!(
        "wrote {} ({:?}, mean {mean:.4}, std {std:.4}) in {secs:.1}s",
        args.data.join(LATENTS_FILE).display(),
        shape
    );
    Ok(())
}
