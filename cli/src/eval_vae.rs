//! `rfgen-cli eval vae`: reconstruction PSNR of a saved VAE on one split of a dataset.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use burn::tensor::backend::Backend;
use clap::Args;
use rfgen_backends::{BackendKind, BackendTask};
use rfgen_core::data::{load_dir, Dataset, Split};
use rfgen_core::pipeline::VaeFiles;
use rfgen_core::vae::train::reconstruction_psnr;
use rfgen_core::vae::AutoencoderKl;

use crate::output::{check_output, write_atomic};

#[derive(Args, Debug, Clone)]
pub struct VaeEvalArgs {
    /// A diffusers AutoencoderKL directory (config.json + safetensors).
    #[arg(long)]
    vae: PathBuf,
    /// Dataset directory (`rfgen-cli data emoji`).
    #[arg(long)]
    data: PathBuf,
    /// heldout, train or all.
    #[arg(long, default_value = "heldout")]
    split: String,
    #[arg(long, default_value_t = 32)]
    batch: usize,
    /// Measure only this many images of the split, spread evenly over it (default: all).
    #[arg(long)]
    n: Option<usize>,
    /// Fail (exit 1) when the pooled PSNR is below this many dB.
    #[arg(long)]
    min_psnr: Option<f64>,
    /// Write the result as JSON here.
    #[arg(long)]
    out: Option<PathBuf>,
    #[arg(long, default_value = "ndarray")]
    backend: String,
}

struct Task<'a> {
    files: &'a VaeFiles,
    data: &'a Dataset,
    indices: &'a [usize],
    batch: usize,
}

impl BackendTask for Task<'_> {
    type Output = (f64, f64);
    fn run<B: Backend>(self, device: B::Device) -> rfgen_core::Result<(f64, f64)> {
        let vae = AutoencoderKl::<B>::load_full(&self.files.weights, &self.files.config, &device)?;
        reconstruction_psnr(&vae, self.data, self.indices, self.batch, &device)
    }
}

pub fn run(a: VaeEvalArgs) -> Result<()> {
    let kind: BackendKind = a.backend.parse()?;
    if a.batch == 0 || a.n == Some(0) {
        bail!("--batch and --n must be at least 1");
    }
    if let Some(path) = &a.out {
        check_output("--out", path, None)?;
    }
    let data = load_dir(&a.data).with_context(|| format!("dataset {}", a.data.display()))?;
    let files = VaeFiles::read_dir(&a.vae)?;
    let f = files.config.upscale();
    if data.size % f != 0 {
        bail!("dataset images are {}px, not a multiple of the VAE's downsampling factor {f}", data.size);
    }
    let indices: Vec<usize> = match a.split.as_str() {
        "heldout" | "held-out" => data.indices(Split::Heldout),
        "train" => data.indices(Split::Train),
        "all" => (0..data.len()).collect(),
        other => bail!("--split {other:?}: expected heldout, train or all"),
    };
    if indices.is_empty() {
        bail!("the {} split of {} has no images", a.split, a.data.display());
    }
    let split_len = indices.len();
    let indices = match a.n {
        Some(n) if n < indices.len() => (0..n).map(|k| indices[k * indices.len() / n]).collect(),
        _ => indices,
    };
    let start = Instant::now();
    let (pooled, per_image) = rfgen_backends::run(kind, Task { files: &files, data: &data, indices: &indices, batch: a.batch })?;
    let secs = start.elapsed().as_secs_f64();
    println!(
        "{} split: reconstruction PSNR {pooled:.2} dB (mean per image {per_image:.2} dB) on {} of its {split_len} images of {}px ({secs:.1}s)",
        a.split,
        indices.len(),
        data.size
    );
    if let Some(out) = &a.out {
        let json = serde_json::json!({
            "vae": a.vae.display().to_string(), "split": a.split, "images": indices.len(), "of": split_len, "size": data.size,
            "psnr_db": pooled, "psnr_mean_per_image_db": per_image,
        });
        write_atomic(out, serde_json::to_string_pretty(&json)?.as_bytes())?;
    }
    if let Some(min) = a.min_psnr {
        if !(pooled >= min) {
            bail!("reconstruction PSNR {pooled:.2} dB is below --min-psnr {min}");
        }
    }
    Ok(())
}
