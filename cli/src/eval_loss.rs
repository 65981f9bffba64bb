//! `rfgen-cli eval flow-loss`: a generator's velocity loss on fixed draws of one split (a
//! validation loss: same timesteps, captions and noise for every model measured).

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Result};
use burn::tensor::backend::Backend;
use clap::Args;
use rfgen_backends::{BackendKind, BackendTask};
use rfgen_core::data::{load_dir, Dataset};
use rfgen_core::eval::{draw_losses, loss_draws, loss_stats, pick_items, FlowLossStats};
use rfgen_core::pipeline::{ModelFiles, Pipeline, VaeFiles};
use rfgen_core::sampler::VelocityModel;
use rfgen_core::vae::train::encode_flow_latents;
use rfgen_core::vae::AutoencoderKl;

use crate::eval::{model_dir, model_vae_dir, parse_split};
use crate::output::{check_output, write_atomic};
use crate::progress::{status, status_done};

#[derive(Args, Debug, Clone)]
pub struct FlowLossArgs {
    /// Generator directory [default: the model `sample` uses].
    #[arg(long)]
    model: Option<PathBuf>,
    /// VAE that encodes the images (default: MODEL/vae; none for a pixel-space model).
    #[arg(long)]
    vae: Option<PathBuf>,
    /// Dataset directory [default: $RFGEN_DATA or ~/.cache/rfgen/emoji].
    #[arg(long)]
    data: Option<PathBuf>,
    /// heldout or train.
    #[arg(long, default_value = "train")]
    split: String,
    /// Items scored (one per base, the fixed order `eval proxy-clip` uses).
    #[arg(long, default_value_t = 200)]
    n: usize,
    /// Draws (timestep, caption, noise) per item.
    #[arg(long, default_value_t = 8)]
    draws: usize,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Rows per forward pass.
    #[arg(long, default_value_t = 32)]
    batch: usize,
    /// Write the result as JSON here.
    #[arg(long)]
    out: Option<PathBuf>,
    #[arg(long, default_value = "ndarray")]
    backend: String,
}

struct Task<'a> {
    args: &'a FlowLossArgs,
    model: PathBuf,
    vae: Option<VaeFiles>,
    data: &'a Dataset,
    items: Vec<usize>,
}

impl BackendTask for Task<'_> {
    type Output = Result<FlowLossStats>;
    fn run<B: Backend>(self, device: B::Device) -> rfgen_core::Result<Self::Output> {
        Ok(self.eval::<B>(&device))
    }
}

impl Task<'_> {
    fn eval<B: Backend>(self, device: &B::Device) -> Result<FlowLossStats> {
        let (a, data) = (self.args, self.data);
        let pipe = Pipeline::<B>::new(ModelFiles::read_dir(&self.model)?, None, device)?;
        let (latents, dims) = match &self.vae {
            Some(files) => {
                let vae = AutoencoderKl::<B>::load_full(&files.weights, &files.config, device)?;
                encode_flow_latents(&vae, data, &self.items, a.batch, device, &mut |_, _| {})?
            }
            None => (data.pixels_nchw(&self.items), [self.items.len(), 3, data.size, data.size]),
        };
        let chw = [dims[1], dims[2], dims[3]];
        let want = pipe.model.latent_channels();
        if chw[0] != want {
            bail!("the generator takes {want}-channel latents, the images give {} (pass the model's --vae)", chw[0]);
        }
        if let Some([_, h, w]) = pipe.generation.latent_shape.as_deref() {
            if [*h, *w] != [chw[1], chw[2]] {
                bail!("the generator was trained on {h}x{w} latents; these images give {}x{}", chw[1], chw[2]);
            }
        }
        let draws = loss_draws(data, &self.items, a.draws, a.seed);
        let captions: Vec<String> = draws.iter().map(|d| data.items[self.items[d.item]].captions[d.caption].clone()).collect();
        let prompts = pipe.tokenize(&captions)?;
        let start = Instant::now();
        let mut losses = Vec::with_capacity(draws.len());
        for (k, chunk) in draws.chunks(a.batch).enumerate() {
            let lo = k * a.batch;
            losses.extend(draw_losses(&pipe.model, pipe.pad_id, chunk, &prompts[lo..lo + chunk.len()], &latents, chw, device)?);
            status(format_args!("flow loss: {}/{} draws ({:.1}s)   ", losses.len(), draws.len(), start.elapsed().as_secs_f64()));
        }
        status_done();
        Ok(loss_stats(&draws, &losses, self.items.len()))
    }
}

pub fn run(a: FlowLossArgs) -> Result<()> {
    let kind: BackendKind = a.backend.parse()?;
    if a.batch == 0 || a.draws == 0 {
        bail!("--batch and --draws must be at least 1");
    }
    let split = parse_split("--split", &a.split)?;
    if let Some(path) = &a.out {
        check_output("--out", path, None)?;
    }
    let model = model_dir(a.model.as_deref())?;
    let vae_dir = model_vae_dir(a.vae.as_deref(), Some(&model));
    let vae = vae_dir.as_deref().map(VaeFiles::read_dir).transpose()?;
    let data_dir = match &a.data {
        Some(d) => d.clone(),
        None => crate::data::default_emoji_dir()?,
    };
    let data = load_dir(&data_dir)?;
    let items = pick_items(&data, split, a.n)?;
    let item_ids: Vec<&str> = items.iter().map(|&i| data.items[i].id.as_str()).collect();
    let start = Instant::now();
    let stats = rfgen_backends::run(kind, Task { args: &a, model: model.clone(), vae, data: &data, items })??;
    let secs = start.elapsed().as_secs_f64();
    println!(
        "flow loss, {} split (n={}, {} draws each): {:.5} ± {:.5} (standard error over items; {secs:.0}s)",
        split.as_str(),
        stats.items,
        a.draws,
        stats.mean,
        stats.std_err
    );
    for (lo, hi, mean, count) in &stats.by_t {
        println!("  t in [{lo:.1}, {hi:.1}): {mean:.5} ({count} draws)");
    }
    if let Some(path) = &a.out {
        let json = serde_json::json!({
            "model": model.display().to_string(), "vae": vae_dir.map(|v| v.display().to_string()),
            "dataset": data_dir.display().to_string(), "split": split.as_str(), "seed": a.seed,
            "draws_per_item": a.draws, "item_ids": item_ids, "stats": stats, "seconds": secs,
        });
        write_atomic(path, format!("{}\n", serde_json::to_string_pretty(&json)?).as_bytes())?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}
