//! `rfgen-cli index-captions`: a model's caption index for neighbour guidance — the pooled
//! features of a dataset's training captions under the model's own LLM (MODEL/neighbours.safetensors),
//! and the training images they belong to as pooled VAE latents, for the retrieval start.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use burn::tensor::backend::Backend;
use clap::Args;
use rfgen_backends::{BackendKind, BackendTask};
use rfgen_core::data::{load_dir, Dataset, Split};
use rfgen_core::eval::{ProxyTextEncoder, TextFeatures};
use rfgen_core::neighbours::{CaptionIndex, IndexFile, NeighbourImages, NEIGHBOURS_FILE};
use rfgen_core::pipeline::{find_llm_gguf, read_generator_config, VaeFiles};
use rfgen_core::vae::train::encode_flow_latents;
use rfgen_core::vae::AutoencoderKl;

use crate::output::write_atomic;
use crate::progress::{status, status_done};

#[derive(Args, Debug, Clone)]
pub struct IndexCaptionsArgs {
    /// Model directory to write neighbours.safetensors into [default: the model `sample` uses].
    #[arg(long)]
    model: Option<PathBuf>,
    /// Dataset whose training split is indexed [default: $RFGEN_DATA or ~/.cache/rfgen/emoji].
    #[arg(long)]
    data: Option<PathBuf>,
    /// Which captions of each training image to index: `first` (its name) or `all` (every
    /// caption it was trained with: names, annotations, tags; chosen on the emoji set's training
    /// split, docs/eval/neighbour-captions/).
    #[arg(long, value_enum, default_value_t = IndexedCaptions::All)]
    captions: IndexedCaptions,
    /// The LLM's first N layers pool each caption (final RMSNorm, mean over tokens).
    #[arg(long, default_value_t = 8)]
    layers: usize,
    /// Remove the features' mean and their top N principal directions before the cosine
    /// ("all-but-the-top"; fitted on the indexed captions; 0: plain cosine).
    #[arg(long, default_value_t = DEFAULT_REMOVE_TOP)]
    remove_top: usize,
    /// The VAE that encodes the training images for the retrieval start [default: MODEL/vae when
    /// it exists; without one the index holds no images].
    #[arg(long)]
    vae: Option<PathBuf>,
    /// Store no images (no retrieval start).
    #[arg(long)]
    no_images: bool,
    /// The LLM GGUF [default: the model's own, found as `sample` finds it].
    #[arg(long)]
    llm_gguf: Option<PathBuf>,
    #[arg(long, default_value = "ndarray")]
    backend: String,
}

#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum IndexedCaptions {
    First,
    All,
}

/// Chosen on the emoji set's training split alone (docs/eval/neighbour-metric/: ten folds of
/// unseen training bases; 15 to 50 score alike, 0 worst).
pub const DEFAULT_REMOVE_TOP: usize = 30;

pub fn run(mut args: IndexCaptionsArgs) -> Result<()> {
    let kind: BackendKind = args.backend.parse()?;
    if args.layers == 0 {
        bail!("--layers must be at least 1");
    }
    args.model = Some(crate::eval::model_dir(args.model.as_deref())?);
    if let Some(v) = args.vae.as_ref().filter(|v| !v.is_dir()) {
        bail!("--vae {} is no directory", v.display());
    }
    if args.vae.is_none() && !args.no_images {
        args.vae = Some(args.model.as_ref().expect("set").join("vae")).filter(|v| v.join("config.json").is_file());
    }
    args.data = Some(match args.data.take() {
        Some(d) => d,
        None => crate::data::default_emoji_dir()?,
    });
    rfgen_backends::run(kind, IndexTask { args })?
}

struct IndexTask {
    args: IndexCaptionsArgs,
}

impl BackendTask for IndexTask {
    type Output = Result<()>;
    fn run<B: Backend>(self, device: B::Device) -> rfgen_core::Result<Result<()>> {
        Ok(self.index::<B>(&device))
    }
}

impl IndexTask {
    fn index<B: Backend>(&self, device: &B::Device) -> Result<()> {
        let a = &self.args;
        let (model, data_dir) = (a.model.as_ref().expect("set in run"), a.data.as_ref().expect("set in run"));
        let data = load_dir(data_dir)?;
        let mut seen = std::collections::HashSet::new();
        // Each caption once, with the first training image that has it.
        let (captions, owners): (Vec<String>, Vec<usize>) = data
            .items
            .iter()
            .enumerate()
            .filter(|(_, it)| it.split == Split::Train)
            .flat_map(|(j, it)| {
                let own = match a.captions {
                    IndexedCaptions::First => &it.captions[..it.captions.len().min(1)],
                    IndexedCaptions::All => &it.captions[..],
                };
                own.iter().map(move |c| (c.clone(), j))
            })
            .filter(|(c, _)| seen.insert(c.clone()))
            .unzip();
        if captions.is_empty() {
            bail!("{} has no training-split captions to index", data_dir.display());
        }
        let path = match &a.llm_gguf {
            Some(p) => p.clone(),
            None => {
                let config = read_generator_config(&model.join("config.json"))?;
                let src = config.llm_gguf.context("the model has no llm_gguf in its config.json: pass --llm-gguf")?;
                find_llm_gguf(&src.file)?
            }
        };
        let bytes = std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?;
        let file = path.file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default();
        let images = match (&a.vae, a.no_images) {
            (_, true) => None,
            (Some(vae), false) => Some(caption_images::<B>(&data, &owners, vae, device)?),
            (None, false) => {
                eprintln!("note: no VAE (MODEL/vae or --vae): the index holds no images, so there is no neighbour start");
                None
            }
        };
        let encoder = ProxyTextEncoder::<B>::from_gguf(&file, &bytes, a.layers, device)?;
        let start = Instant::now();
        let values = encoder.features(&captions, |n| {
            status(format_args!("caption features ({} LLM layers): {n}/{}   ", a.layers, captions.len()));
        })?;
        status_done();
        // A principal direction needs many captions to be estimated: at most one per ten.
        let remove_top = a.remove_top.min(captions.len() / 10);
        if remove_top < a.remove_top {
            eprintln!("note: {} captions: removing {remove_top} top directions, not {}", captions.len(), a.remove_top);
        }
        let mut file = IndexFile::build(TextFeatures::new(encoder.spec.clone(), captions, values)?, remove_top)?;
        let mut image_note = String::new();
        if let Some(images) = images {
            let [n, c, h, w] = images.shape;
            image_note = format!(", {n} images as {c}x{h}x{w} latents");
            file = file.with_images(images)?;
        }
        let bytes = file.to_safetensors()?;
        // Refuse an index that would not load (a zero feature, say) before writing it.
        CaptionIndex::new(IndexFile::from_safetensors(NEIGHBOURS_FILE, &bytes)?)?;
        let out = model.join(NEIGHBOURS_FILE);
        write_atomic(&out, &bytes)?;
        println!(
            "indexed {} training captions of {} ({} LLM layers, {} top directions removed{image_note}, {:.0}s); wrote {} ({:.1} MB)",
            file.features.len(),
            data.name,
            a.layers,
            remove_top,
            start.elapsed().as_secs_f64(),
            out.display(),
            bytes.len() as f64 / 1e6
        );
        Ok(())
    }
}

/// The training images of the indexed captions (`owners[row]`, dataset items), encoded by the VAE
/// (posterior mean, flow latents).
fn caption_images<B: Backend>(data: &Dataset, owners: &[usize], vae: &Path, device: &B::Device) -> Result<NeighbourImages> {
    let files = VaeFiles::read_dir(vae)?;
    let vae = AutoencoderKl::<B>::load_full(&files.weights, &files.config, device)
        .with_context(|| format!("the retrieval start needs the VAE's encoder ({})", vae.display()))?;
    let mut number = std::collections::HashMap::new();
    let mut items = Vec::new();
    let caption_image: Vec<usize> = owners
        .iter()
        .map(|&j| {
            *number.entry(j).or_insert_with(|| {
                items.push(j);
                items.len() - 1
            })
        })
        .collect();
    let start = Instant::now();
    let (latents, shape) = encode_flow_latents(&vae, data, &items, 32, device, &mut |done, total| {
        status(format_args!("image latents: {done}/{total} ({:.0}s)   ", start.elapsed().as_secs_f64()));
    })?;
    status_done();
    Ok(NeighbourImages::new(shape, &latents, caption_image)?)
}
