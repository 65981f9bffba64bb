//! `rfgen-cli index-captions`: a model's caption index for neighbour guidance — the pooled
//! features of a dataset's training captions under the model's own LLM (MODEL/neighbours.safetensors).

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use burn::tensor::backend::Backend;
use clap::Args;
use rfgen_backends::{BackendKind, BackendTask};
use rfgen_core::data::{load_dir, Split};
use rfgen_core::eval::{ProxyTextEncoder, TextFeatures};
use rfgen_core::neighbours::{CaptionIndex, IndexFile, NEIGHBOURS_FILE};
use rfgen_core::pipeline::{find_llm_gguf, read_generator_config};

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
        let captions: Vec<String> = data
            .items
            .iter()
            .filter(|it| it.split == Split::Train)
            .flat_map(|it| match a.captions {
                IndexedCaptions::First => &it.captions[..it.captions.len().min(1)],
                IndexedCaptions::All => &it.captions[..],
            })
            .filter(|c| seen.insert((*c).clone()))
            .cloned()
            .collect();
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
        let file = IndexFile::build(TextFeatures::new(encoder.spec.clone(), captions, values)?, remove_top)?;
        let bytes = file.to_safetensors()?;
        // Refuse an index that would not load (a zero feature, say) before writing it.
        CaptionIndex::new(IndexFile::from_safetensors(NEIGHBOURS_FILE, &bytes)?)?;
        let out = model.join(NEIGHBOURS_FILE);
        write_atomic(&out, &bytes)?;
        println!(
            "indexed {} training captions of {} ({} LLM layers, {} top directions removed, {:.0}s); wrote {} ({:.1} MB)",
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
