use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use burn::tensor::backend::Backend;
use clap::Args;
use rfgen_backends::{BackendKind, BackendTask};
use rfgen_core::image::psnr;
use rfgen_core::pipeline::{ModelFiles, Pipeline, VaeFiles};
use rfgen_core::sampler::SampleConfig;

#[derive(Args, Debug)]
pub struct CompareArgs {
    /// First model directory (e.g. the f32 original).
    #[arg(long)]
    a: PathBuf,
    /// Second model directory (e.g. its f16 / int8 / int4 conversion).
    #[arg(long)]
    b: PathBuf,
    /// One prompt per line; a line `ids: 1,5,9,4` gives token ids directly.
    #[arg(long)]
    prompts: PathBuf,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// VAE directory: with it, decoded images are compared too (PSNR).
    #[arg(long)]
    vae: Option<PathBuf>,
    #[arg(long, default_value_t = 30)]
    steps: usize,
    #[arg(long, default_value_t = 2.0)]
    cfg: f64,
    /// Image size in pixels when the model has no default latent shape.
    #[arg(long)]
    size: Option<usize>,
    #[arg(long, default_value = "ndarray")]
    backend: String,
}

struct Task(CompareArgs);

impl BackendTask for Task {
    type Output = Result<()>;
    fn run<B: Backend>(self, device: B::Device) -> rfgen_core::Result<Result<()>> {
        Ok(compare::<B>(self.0, &device))
    }
}

fn compare<B: Backend>(a: CompareArgs, device: &B::Device) -> Result<()> {
    let text = std::fs::read_to_string(&a.prompts).with_context(|| format!("cannot read {}", a.prompts.display()))?;
    let lines: Vec<&str> = text.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
    if lines.is_empty() {
        bail!("{} has no prompts", a.prompts.display());
    }
    let load = |dir: &PathBuf| -> Result<Pipeline<B>> {
        let vae = a.vae.as_deref().map(VaeFiles::read_dir).transpose()?;
        Ok(Pipeline::<B>::new(ModelFiles::read_dir(dir)?, vae, device)?)
    };
    let (pa, pb) = (load(&a.a)?, load(&a.b)?);
    let config = SampleConfig { steps: a.steps, cfg: a.cfg, ..SampleConfig::default() };
    let factor = pa.vae.as_ref().map(|v| v.config.upscale()).unwrap_or(8);
    let hw = match a.size {
        Some(px) if px > 0 && px % factor == 0 => [px / factor; 2],
        Some(px) => bail!("--size {px} is not a positive multiple of {factor}"),
        None => pa.default_latent_hw(),
    };
    let mut worst_psnr = f64::INFINITY;
    let mut worst_max = 0f32;
    for (i, line) in lines.iter().enumerate() {
        let ids = |p: &Pipeline<B>| -> Result<Vec<u32>> {
            match line.strip_prefix("ids:") {
                Some(list) => list
                    .split(',')
                    .map(|x| x.trim().parse::<u32>().with_context(|| format!("line {}: bad token id {x:?}", i + 1)))
                    .collect(),
                None => Ok(p.tokenize(&[line.to_string()])?.remove(0)),
            }
        };
        let (ia, ib) = (ids(&pa)?, ids(&pb)?);
        let seed = a.seed.wrapping_add(i as u64);
        let oa = pa.generate(&[ia], pa.noise(seed, 1, hw), &config, |_| {})?;
        let ob = pb.generate(&[ib], pb.noise(seed, 1, hw), &config, |_| {})?;
        let (za, zb) = (to_vec(&oa.z1), to_vec(&ob.z1));
        let diffs: Vec<f32> = za.iter().zip(&zb).map(|(x, y)| (x - y).abs()).collect();
        let max = diffs.iter().fold(0f32, |m, d| m.max(*d));
        let mean = diffs.iter().sum::<f32>() / diffs.len() as f32;
        worst_max = worst_max.max(max);
        let image = match (oa.images, ob.images) {
            (Some(x), Some(y)) => {
                let p = psnr(&to_vec(&x), &to_vec(&y));
                worst_psnr = worst_psnr.min(p);
                format!(" image PSNR {p:.2} dB")
            }
            _ => String::new(),
        };
        println!("prompt {i}: latent max |diff| {max:.3e} mean |diff| {mean:.3e}{image}");
    }
    let psnr_line = if a.vae.is_some() { format!(", min PSNR {worst_psnr:.2} dB") } else { String::new() };
    println!("summary: {} prompts, max latent |diff| {worst_max:.3e}{psnr_line}", lines.len());
    Ok(())
}

fn to_vec<B: Backend>(t: &burn::tensor::Tensor<B, 4>) -> Vec<f32> {
    t.to_data().convert::<f32>().to_vec::<f32>().expect("f32 data")
}

pub fn run(args: CompareArgs) -> Result<()> {
    let backend: BackendKind = args.backend.parse()?;
    rfgen_backends::run(backend, Task(args))?
}
