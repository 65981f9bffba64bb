//! `rfgen-cli eval`: the proxy image–text scorer (a stand-in for CLIP, see rfgen_core::eval).
//!
//! - `eval proxy-clip-train`: trains the proxy scorer on every image of a dataset;
//! - `eval proxy-clip`: caption retrieval of generated images next to the real ones (the ceiling);
//! - `eval vae` (eval_vae.rs) and `eval flow-loss` (eval_loss.rs).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Tensor, TensorData};
use clap::{Args, Subcommand};
use rfgen_backends::{BackendKind, BackendTask, TrainTask};
use rfgen_core::checkpoint::StoredDtype;
use rfgen_core::data::{load_dir, Dataset, Split};
use rfgen_core::eval::{
    best_draws, best_matches, candidate_sets, feature_stats, load_scorer_dir, pick_items, retrieval, scorer_weights, stats_of, top_k, ProxyClipConfig,
    ProxyClipTrainer,
    ProxyScorer, ProxyTextEncoder, ProxyTrainConfig, ProxyTrainData, RetrievalStats, TextFeatureSpec, TextFeatures,
    SCORER_CONFIG, SCORER_WEIGHTS, TEXT_CACHE,
};
use rfgen_core::pipeline::{find_llm_gguf, ModelFiles, Pipeline, VaeFiles};
use rfgen_core::janusflow::GenerationConfig;
use rfgen_core::neighbours::{CaptionIndex, IndexFile, PromptNeighbours, NEIGHBOURS_FILE};
use rfgen_core::sampler::VelocityModel;

use crate::output::{check_output, grid, write_atomic, write_png};
use crate::progress::{status, status_done};

/// The GGUF whose first layers give the proxy scorer's text features.
const SMOLLM2_GGUF: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";
/// Most draws per caption for best-of-N reranking (each costs a full generation).
const MAX_BEST_OF: usize = 64;
/// Log of a proxy training run, in its output directory.
const TRAIN_LOG: &str = "proxy_train_log.jsonl";

#[derive(Args, Debug, Clone)]
pub struct EvalArgs {
    #[command(subcommand)]
    command: EvalCommand,
}

#[derive(Subcommand, Debug, Clone)]
enum EvalCommand {
    /// Train the PROXY image–text scorer (not CLIP) on every image of a dataset, both splits.
    ProxyClipTrain(ProxyTrainArgs),
    /// Caption retrieval (top-1 / top-5 among 100) of generated images with the proxy scorer, next to real images.
    ProxyClip(ProxyEvalArgs),
    /// Reconstruction PSNR of a VAE on one split of a dataset (held-out by default).
    Vae(crate::eval_vae::VaeEvalArgs),
    /// A generator's velocity loss on fixed (timestep, caption, noise) draws: a validation loss to compare checkpoints.
    FlowLoss(crate::eval_loss::FlowLossArgs),
}

#[derive(Args, Debug, Clone)]
pub struct ProxyTrainArgs {
    /// Dataset directory (`rfgen-cli data emoji`); every image is used, both splits.
    #[arg(long)]
    data: PathBuf,
    /// Output directory: config.json, model.safetensors, proxy_text_cache.safetensors, proxy_train_log.jsonl.
    #[arg(long)]
    out: PathBuf,
    #[arg(long, default_value_t = 2000)]
    steps: u64,
    #[arg(long, default_value_t = 256)]
    batch: usize,
    #[arg(long, default_value_t = 1e-3)]
    lr: f64,
    #[arg(long, default_value_t = 100)]
    warmup: usize,
    #[arg(long, default_value_t = 0.01)]
    weight_decay: f64,
    /// Largest random shift of a training image, in dataset pixels.
    #[arg(long, default_value_t = 3)]
    max_shift: usize,
    /// Gaussian noise added to training thumbnails ([-1, 1] units).
    #[arg(long, default_value_t = 0.05)]
    pixel_noise: f32,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Side of the image tower's thumbnail (area-downsampled).
    #[arg(long, default_value_t = 32)]
    image_size: usize,
    /// Hidden widths of the image MLP, comma-separated.
    #[arg(long, default_value = "1024,512", value_delimiter = ',')]
    image_hidden: Vec<usize>,
    /// Hidden widths of the text MLP, comma-separated.
    #[arg(long, default_value = "512", value_delimiter = ',')]
    text_hidden: Vec<usize>,
    #[arg(long, default_value_t = 128)]
    embed_dim: usize,
    /// The LLM GGUF (default: $RFGEN_SMOLLM2_GGUF or ~/.cache/rfgen/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf).
    #[arg(long)]
    llm_gguf: Option<PathBuf>,
    /// Decoder layers of the LLM the text features come from.
    #[arg(long, default_value_t = 8)]
    llm_layers: usize,
    /// Diagnostic: train on this split's images only (the shipped scorer uses all); the other
    /// split's real-image retrieval then measures how the scorer generalises to unseen images.
    #[arg(long)]
    only_split: Option<String>,
    /// Only time the text features of the first N distinct captions (no training, nothing written).
    #[arg(long)]
    bench_features: Option<usize>,
    /// Stop training (and save) after this many minutes.
    #[arg(long)]
    minutes: Option<f64>,
    #[arg(long, default_value_t = 20)]
    log_every: u64,
    #[arg(long, default_value = "ndarray")]
    backend: String,
}

#[derive(Args, Debug, Clone)]
pub struct ProxyEvalArgs {
    /// Generator directory [default: the model `sample` uses: $RFGEN_DEFAULT_MODEL or models/default].
    #[arg(long)]
    model: Option<PathBuf>,
    /// VAE directory (default: MODEL/vae when it exists).
    #[arg(long)]
    vae: Option<PathBuf>,
    /// Dataset directory the prompts and real images come from [default: $RFGEN_DATA or
    /// ~/.cache/rfgen/emoji, built from the npm packages of `./build.sh setup` when missing].
    #[arg(long)]
    data: Option<PathBuf>,
    /// Proxy scorer directory (`eval proxy-clip-train`) [default: $RFGEN_PROXY_SCORER or the
    /// repository's models/proxy-clip].
    #[arg(long)]
    scorer: Option<PathBuf>,
    /// Which split's items to score: heldout or train.
    #[arg(long, default_value = "heldout")]
    prompts: String,
    /// Items scored (one per base, a fixed order).
    #[arg(long, default_value_t = 100)]
    n: usize,
    /// Candidate captions per image (its own + others of the same split).
    #[arg(long, default_value_t = 100)]
    candidates: usize,
    /// Euler steps [default: the model's generation num_inference_steps, else 30].
    #[arg(long)]
    steps: Option<usize>,
    /// Guidance weight [default: the model's generation cfg_weight, else 2].
    #[arg(long, allow_negative_numbers = true)]
    cfg: Option<f64>,
    /// Timestep shift of the step grid [default: the model's generation shift, else 1].
    #[arg(long)]
    shift: Option<f64>,
    /// Noise seed (each item's noise also depends on its id, not on the batch).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Images generated per batch.
    #[arg(long, default_value_t = 10)]
    batch: usize,
    /// Only report the real images' retrieval (the ceiling); no generator.
    #[arg(long)]
    real_only: bool,
    /// No generator: score, for each caption, the training-split image this proxy scorer matches
    /// best (the copy-the-nearest-training-image baseline). Give a scorer trained with
    /// `eval proxy-clip-train --only-split train`, which has not seen the held-out images.
    #[arg(long, value_name = "SCORER_DIR", conflicts_with_all = ["model", "vae", "real_only", "steps", "cfg", "shift", "grid"])]
    nearest_train: Option<PathBuf>,
    /// No generator: score, for each caption, the training image whose caption is nearest it in
    /// the model's caption index (`index-captions`; no scorer involved). This is the image that
    /// neighbour guidance steers toward.
    #[arg(long, conflicts_with_all = ["nearest_train", "real_only", "vae", "steps", "cfg", "shift", "grid"])]
    nearest_caption: bool,
    /// Best-of-N reranking: draw N images per caption (noise seeds --seed, --seed+1, …) and score
    /// the one the --reranker scorer matches best with its caption.
    #[arg(long, default_value_t = 1, conflicts_with_all = ["nearest_train", "nearest_caption", "real_only"])]
    best_of: usize,
    /// The scorer that picks among --best-of draws; train it with `eval proxy-clip-train
    /// --only-split train`, so that it has never seen a held-out image.
    #[arg(long, value_name = "SCORER_DIR", conflicts_with_all = ["nearest_train", "real_only"])]
    reranker: Option<PathBuf>,
    /// Neighbour guidance: each caption is also guided by its N nearest captions in the model's
    /// caption index (0: plain guidance) [default: the model's, as `sample`].
    #[arg(long, conflicts_with_all = ["nearest_train", "real_only"])]
    neighbours: Option<usize>,
    /// The neighbours' share of the guidance [default: the model's, else 0.5].
    #[arg(long, conflicts_with_all = ["nearest_train", "real_only"])]
    neighbour_share: Option<f32>,
    /// Retrieval start: each caption that is no training caption starts from its nearest
    /// neighbour's training image at this img2img strength; 0 from noise [default: the model's, as `sample`].
    #[arg(long, conflicts_with_all = ["nearest_train", "real_only"])]
    neighbour_init: Option<f64>,
    /// Write the results as JSON here.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Write a grid PNG of the generated images here.
    #[arg(long)]
    grid: Option<PathBuf>,
    /// The LLM GGUF for captions the scorer's cache lacks (default: found by the scorer's file name).
    #[arg(long)]
    llm_gguf: Option<PathBuf>,
    #[arg(long, default_value = "ndarray")]
    backend: String,
}

pub fn run(args: EvalArgs) -> Result<()> {
    match args.command {
        EvalCommand::ProxyClipTrain(a) => {
            let kind: BackendKind = a.backend.parse()?;
            rfgen_backends::run_train(kind, TrainProxy { args: a })?
        }
        EvalCommand::ProxyClip(mut a) => {
            let kind: BackendKind = a.backend.parse()?;
            let split = parse_split("--prompts", &a.prompts)?;
            if let Some(d) = a.nearest_train.as_ref().filter(|d| !d.is_dir()) {
                bail!("--nearest-train: scorer directory {} does not exist", d.display());
            }
            if a.nearest_caption {
                a.model = Some(model_dir(a.model.as_deref())?);
            } else if !a.real_only && a.nearest_train.is_none() {
                a.model = Some(model_dir(a.model.as_deref())?);
                if let Some(v) = a.vae.as_ref().filter(|v| !v.is_dir()) {
                    bail!("VAE directory {} does not exist", v.display());
                }
                GenerationConfig::default().sample_config(a.steps, a.cfg, a.shift).validate()?;
                if a.batch == 0 {
                    bail!("--batch must be at least 1");
                }
                match (a.best_of, &a.reranker) {
                    (0, _) => bail!("--best-of must be at least 1"),
                    (n, _) if n > MAX_BEST_OF => bail!("--best-of {n} is more than the {MAX_BEST_OF} draws per caption rfgen allows"),
                    (1, Some(_)) => bail!("--reranker needs --best-of N with N ≥ 2 (it picks among N draws)"),
                    (n, None) if n > 1 => bail!("--best-of {n} needs --reranker SCORER_DIR (the scorer that picks among the draws)"),
                    (_, Some(d)) if !d.is_dir() => bail!("--reranker: scorer directory {} does not exist", d.display()),
                    _ => {}
                }
            }
            if let Some(path) = &a.out {
                check_output("--out", path, None)?;
            }
            if let Some(path) = &a.grid {
                check_output("--grid", path, Some("png"))?;
            }
            let scorer = a.scorer.take().unwrap_or_else(default_scorer_dir);
            let data = match a.data.take() {
                Some(d) => d,
                None => crate::data::default_emoji_dir()?,
            };
            rfgen_backends::run(kind, EvalProxy { args: a, data, scorer, split })?
        }
        EvalCommand::Vae(a) => crate::eval_vae::run(a),
        EvalCommand::FlowLoss(a) => crate::eval_loss::run(a),
    }
}

/// The split named by `flag`: heldout or train.
pub(crate) fn parse_split(flag: &str, s: &str) -> Result<Split> {
    match s {
        "heldout" | "held-out" => Ok(Split::Heldout),
        "train" => Ok(Split::Train),
        other => bail!("{flag} {other:?}: expected heldout or train"),
    }
}

/// The generator to evaluate: `--model`, which must exist, else the model `sample` uses.
pub(crate) fn model_dir(model: Option<&Path>) -> Result<PathBuf> {
    match model {
        None => crate::sample::default_model_dir(),
        Some(m) if !m.is_dir() => bail!("model directory {} does not exist", m.display()),
        Some(m) => Ok(m.to_path_buf()),
    }
}

/// `--vae`, else the model's own `vae/` when it has one.
pub(crate) fn model_vae_dir(vae: Option<&Path>, model: Option<&Path>) -> Option<PathBuf> {
    vae.map(Path::to_path_buf).or_else(|| model.map(|m| m.join("vae")).filter(|v| v.is_dir()))
}

/// The GGUF to read: the flag, else the usual places for `file`.
fn gguf_path(flag: Option<&Path>, file: &str) -> Result<PathBuf> {
    match flag {
        Some(p) if p.is_file() => Ok(p.to_path_buf()),
        Some(p) => bail!("--llm-gguf {} does not exist (run ./build.sh setup)", p.display()),
        None => Ok(find_llm_gguf(file)?),
    }
}

/// Loads the text encoder from a GGUF; `expect` (a scorer's spec) must match its sha256 and layers.
fn text_encoder<B: Backend>(
    path: &Path,
    layers: usize,
    expect: Option<&TextFeatureSpec>,
    device: &B::Device,
) -> Result<ProxyTextEncoder<B>> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let file = path.file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default();
    let enc = ProxyTextEncoder::from_gguf(&file, &bytes, layers, device)?;
    if let Some(spec) = expect {
        if enc.spec.gguf_sha256 != spec.gguf_sha256 {
            bail!(
                "{}: sha256 {} is not the scorer's LLM ({} {})",
                path.display(),
                enc.spec.gguf_sha256,
                spec.gguf_file,
                spec.gguf_sha256
            );
        }
    }
    Ok(enc)
}

/// The cache in `dir` when it holds features of this spec; otherwise empty.
fn read_cache(dir: &Path, spec: &TextFeatureSpec) -> TextFeatures {
    let path = dir.join(TEXT_CACHE);
    let Ok(bytes) = std::fs::read(&path) else { return TextFeatures::empty(spec.clone()) };
    match TextFeatures::from_safetensors(&path.display().to_string(), &bytes) {
        Ok(f) if &f.spec == spec => f,
        Ok(_) => {
            eprintln!("{}: features of another LLM or layer count; recomputing", path.display());
            TextFeatures::empty(spec.clone())
        }
        Err(e) => {
            eprintln!("{}: unreadable ({e}); recomputing", path.display());
            TextFeatures::empty(spec.clone())
        }
    }
}

/// Adds the features of `wanted` captions the cache lacks, in chunks, saving after each chunk
/// when `save_to` is given. Returns the seconds spent computing.
fn fill_cache<B: Backend>(
    cache: &mut TextFeatures,
    wanted: &[String],
    encoder: &ProxyTextEncoder<B>,
    save_to: Option<&Path>,
) -> Result<f64> {
    let missing = cache.missing(wanted);
    if missing.is_empty() {
        return Ok(0.0);
    }
    let start = Instant::now();
    let total = missing.len();
    let mut done = 0;
    for chunk in missing.chunks(1024) {
        let values = encoder.features(chunk, |k| {
            let n = done + k;
            let secs = start.elapsed().as_secs_f64();
            status(format_args!("text features (proxy, {} LLM layers): {n}/{total} captions, {:.1} captions/s   ", encoder.spec.layers, n as f64 / secs.max(1e-9)));
        })?;
        cache.extend(chunk.to_vec(), values)?;
        done += chunk.len();
        if let Some(path) = save_to {
            write_atomic(path, &cache.to_safetensors()?)?;
        }
    }
    status_done();
    Ok(start.elapsed().as_secs_f64())
}

/// The scorer's cached text features in `dir`, with those of `wanted` captions it lacks computed
/// from the LLM (not saved).
fn scorer_features<B: Backend>(
    dir: &Path,
    spec: &TextFeatureSpec,
    wanted: &[String],
    llm_gguf: Option<&Path>,
    device: &B::Device,
) -> Result<TextFeatures> {
    let mut cache = read_cache(dir, spec);
    if !cache.missing(wanted).is_empty() {
        let path = gguf_path(llm_gguf, &spec.gguf_file)?;
        let enc = text_encoder::<B>(&path, spec.layers, Some(spec), device)?;
        fill_cache(&mut cache, wanted, &enc, None)?;
    }
    Ok(cache)
}

/// Real-image (and generated-image) retrieval for `items` of `split`.
struct Scored {
    items: Vec<usize>,
    candidates: Vec<Vec<usize>>,
    /// Unit embeddings of every dataset item's first caption that appears as a candidate, by item.
    text_rows: std::collections::HashMap<usize, usize>,
    text_emb: Vec<f32>,
}

impl Scored {
    fn prepare<B: Backend>(data: &Dataset, split: Split, n: usize, count: usize, scorer: &ProxyScorer<B>, cache: &TextFeatures) -> Result<Self> {
        let items = pick_items(data, split, n)?;
        let candidates = candidate_sets(data, split, &items, count)?;
        let mut text_rows = std::collections::HashMap::new();
        let mut captions = Vec::new();
        for &c in candidates.iter().flatten() {
            text_rows.entry(c).or_insert_with(|| {
                captions.push(data.items[c].captions[0].clone());
                captions.len() - 1
            });
        }
        let text_emb = scorer.embed_text_features(&cache.rows(&captions)?);
        Ok(Self { items, candidates, text_rows, text_emb })
    }

    /// Captions (first of each item) every candidate list needs.
    fn needed_captions(data: &Dataset, split: Split, n: usize, count: usize) -> Result<Vec<String>> {
        let items = pick_items(data, split, n)?;
        let candidates = candidate_sets(data, split, &items, count)?;
        Ok(candidates.iter().flatten().map(|&c| data.items[c].captions[0].clone()).collect())
    }

    fn rank(&self, image_emb: &[f32], dim: usize) -> Result<RetrievalStats> {
        let cands: Vec<Vec<usize>> = self.candidates.iter().map(|c| c.iter().map(|i| self.text_rows[i]).collect()).collect();
        Ok(retrieval(image_emb, &self.text_emb, dim, &cands)?)
    }
}

/// Real-image retrieval of `split` (n items, `count` candidates) with a scorer in memory.
fn real_ceiling<B: Backend>(
    data: &Dataset,
    split: Split,
    n: usize,
    count: usize,
    scorer: &ProxyScorer<B>,
    cache: &TextFeatures,
) -> Result<RetrievalStats> {
    let s = Scored::prepare(data, split, n, count, scorer, cache)?;
    let imgs: Vec<Vec<u8>> = s.items.iter().map(|&i| data.image(i).to_vec()).collect();
    s.rank(&scorer.embed_images(&imgs, data.size), scorer.config.embed_dim)
}

// ---------------------------------------------------------------------------------------------
// proxy-clip-train

struct TrainProxy {
    args: ProxyTrainArgs,
}

impl TrainTask for TrainProxy {
    type Output = Result<()>;
    fn run<B: AutodiffBackend>(self, device: B::Device) -> rfgen_core::Result<Result<()>> {
        Ok(self.train::<B>(&device))
    }
}

fn distinct_captions(data: &Dataset) -> Vec<String> {
    let mut seen = std::collections::HashSet::new();
    data.items.iter().flat_map(|it| it.captions.iter()).filter(|c| seen.insert(c.as_str())).cloned().collect()
}

impl TrainProxy {
    fn train<AB: AutodiffBackend>(self, device: &AB::Device) -> Result<()> {
        let a = &self.args;
        let data = load_dir(&a.data)?;
        if data.len() < 2 {
            bail!("{}: the proxy scorer needs at least 2 images", a.data.display());
        }
        let settings = ProxyTrainConfig {
            seed: a.seed,
            steps: a.steps,
            batch: a.batch,
            lr: a.lr,
            warmup: a.warmup,
            weight_decay: a.weight_decay,
            max_shift: a.max_shift,
            pixel_noise: a.pixel_noise,
        };
        settings.validate()?;
        let gguf = gguf_path(a.llm_gguf.as_deref(), SMOLLM2_GGUF)?;
        let t0 = Instant::now();
        let encoder = text_encoder::<AB::InnerBackend>(&gguf, a.llm_layers, None, device)?;
        eprintln!("LLM: {} (first {} layers) loaded in {:.1}s", gguf.display(), a.llm_layers, t0.elapsed().as_secs_f64());
        let captions = distinct_captions(&data);

        if let Some(n) = a.bench_features {
            let subset = &captions[..n.min(captions.len())];
            let tokens: usize = subset.iter().map(|c| encoder.tokenize(c).map(|t| t.len())).sum::<rfgen_core::Result<usize>>()?;
            let mut cache = TextFeatures::empty(encoder.spec.clone());
            let secs = fill_cache(&mut cache, subset, &encoder, None)?;
            println!(
                "proxy text features: {} captions ({tokens} tokens) through {} layers in {secs:.2}s: {:.1} captions/s, {:.0} tokens/s; all {} distinct captions: ~{:.0}s",
                subset.len(),
                a.llm_layers,
                subset.len() as f64 / secs,
                tokens as f64 / secs,
                captions.len(),
                captions.len() as f64 * secs / subset.len() as f64
            );
            return Ok(());
        }

        std::fs::create_dir_all(&a.out).with_context(|| format!("cannot create {}", a.out.display()))?;
        let cache_path = a.out.join(TEXT_CACHE);
        let mut cache = read_cache(&a.out, &encoder.spec);
        let cached_before = cache.len();
        let feature_secs = fill_cache(&mut cache, &captions, &encoder, Some(&cache_path))?;
        eprintln!(
            "text features: {} distinct captions ({} cached before), {feature_secs:.1}s",
            captions.len(),
            cached_before
        );
        let dim = encoder.spec.dim;
        let spec = encoder.spec.clone();
        drop(encoder);

        // Standardise with the statistics of this dataset's captions.
        let raw = cache.rows(&captions)?;
        let (mean, std) = feature_stats(&raw, dim);
        let mut config = ProxyClipConfig::new(spec);
        config.image_size = a.image_size;
        config.image_hidden = a.image_hidden.clone();
        config.text_hidden = a.text_hidden.clone();
        config.embed_dim = a.embed_dim;
        config.validate("proxy-clip config")?;
        let index: std::collections::HashMap<&str, usize> = captions.iter().enumerate().map(|(i, c)| (c.as_str(), i)).collect();
        let only = a.only_split.as_deref().map(|s| parse_split("--only-split", s)).transpose()?;
        let trained: Vec<usize> = match only {
            Some(split) => data.indices(split),
            None => (0..data.len()).collect(),
        };
        let train_data = ProxyTrainData::new(&data, trained.clone(), &raw, dim, &mean, &std, |c| index.get(c).copied())?;
        let mut trainer = ProxyClipTrainer::<AB>::new(config.clone(), settings.clone(), device)?;

        let mut log = std::fs::File::create(a.out.join(TRAIN_LOG)).context("cannot create the training log")?;
        let start = Instant::now();
        let mut window = (0.0f64, 0.0f64, 0u64, Instant::now());
        let mut last = None;
        while trainer.step < a.steps {
            if a.minutes.is_some_and(|m| start.elapsed().as_secs_f64() > m * 60.0) {
                eprintln!("\ntime budget of {} min reached at step {}", a.minutes.unwrap(), trainer.step);
                break;
            }
            let (imgs, txts) = train_data.batch(&settings, config.image_size, trainer.step);
            let s = trainer.step(&imgs, &txts)?;
            writeln!(
                log,
                "{}",
                serde_json::json!({"step": s.step, "proxy_loss": s.loss, "proxy_batch_acc": s.batch_acc,
                    "temperature": s.temperature, "grad_norm": s.grad_norm, "lr": s.lr, "elapsed_s": start.elapsed().as_secs_f64()})
            )?;
            window.0 += s.loss;
            window.1 += s.batch_acc;
            window.2 += 1;
            if s.step % a.log_every == 0 || s.step == a.steps {
                let rate = window.2 as f64 / window.3.elapsed().as_secs_f64().max(1e-9);
                status(format_args!(
                    "proxy-clip step {}/{} loss {:.4} batch acc {:.3} T {:.4} lr {:.1e} {rate:.2} it/s {:.0}s   ",
                    s.step,
                    a.steps,
                    window.0 / window.2 as f64,
                    window.1 / window.2 as f64,
                    s.temperature,
                    s.lr,
                    start.elapsed().as_secs_f64()
                ));
                window = (0.0, 0.0, 0, Instant::now());
            }
            last = Some(s);
        }
        status_done();
        let train_secs = start.elapsed().as_secs_f64();

        // The scorer as it will be saved (f16), scored on both splits' real images.
        let weights = scorer_weights(&trainer.inference_model(), &trainer.keys, &mean, &std, StoredDtype::F16);
        let scorer = ProxyScorer::<AB::InnerBackend>::load(&weights, &config, device)?;
        let mut ceilings = serde_json::Map::new();
        for split in [Split::Heldout, Split::Train] {
            let bases = rfgen_core::eval::split_representatives(&data, split).len();
            let n = bases.min(100);
            if n < 2 {
                continue;
            }
            let count = 100.min(bases);
            let r = real_ceiling(&data, split, n, count, &scorer, &cache)?;
            eprintln!(
                "proxy ceiling ({}, real images, n={n}, {count} candidates): top-1 {:.3} top-5 {:.3} mean rank {:.2}",
                split.as_str(),
                r.top1,
                r.top5,
                r.mean_rank
            );
            ceilings.insert(
                split.as_str().into(),
                serde_json::json!({"n": n, "candidates": count, "proxy_real_top1": r.top1, "proxy_real_top5": r.top5, "proxy_real_mean_rank": r.mean_rank}),
            );
        }
        let mut config = config;
        config.training = Some(serde_json::json!({
            "dataset": data.name, "images": trained.len(),
            "splits": only.map(|s| format!("{} only (diagnostic)", s.as_str())).unwrap_or_else(|| "train + heldout (all images)".into()),
            "distinct_captions": captions.len(), "settings": settings, "steps_done": trainer.step,
            "final_proxy_loss": last.map(|s| s.loss), "final_temperature": scorer.temperature(),
            "train_seconds": train_secs, "text_feature_seconds": feature_secs,
            "proxy_ceiling": ceilings,
        }));
        write_atomic(&a.out.join(SCORER_WEIGHTS), &weights.to_safetensors(None)?)?;
        write_atomic(&a.out.join(SCORER_CONFIG), format!("{}\n", serde_json::to_string_pretty(&config)?).as_bytes())?;
        eprintln!(
            "proxy scorer: {} steps in {train_secs:.1}s ({:.2} it/s), temperature {:.4}; wrote {}",
            trainer.step,
            trainer.step as f64 / train_secs.max(1e-9),
            scorer.temperature(),
            a.out.display()
        );
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// proxy-clip (scoring a generator)

struct EvalProxy {
    args: ProxyEvalArgs,
    data: PathBuf,
    scorer: PathBuf,
    split: Split,
}

/// `$RFGEN_PROXY_SCORER`, else the repository's models/proxy-clip.
fn default_scorer_dir() -> PathBuf {
    match std::env::var_os("RFGEN_PROXY_SCORER") {
        Some(d) if !d.is_empty() => PathBuf::from(d),
        _ => crate::output::repo_model_dir("proxy-clip"),
    }
}

impl BackendTask for EvalProxy {
    type Output = Result<()>;
    fn run<B: Backend>(self, device: B::Device) -> rfgen_core::Result<Result<()>> {
        Ok(self.eval::<B>(&device))
    }
}

/// 8-bit RGB images `[n][H·W·3]` and their side from `[n, 3, H, W]` values in [-1, 1].
fn to_rgb_images<B: Backend>(images: Tensor<B, 4>) -> Result<(Vec<Vec<u8>>, usize)> {
    let [n, c, h, w] = images.dims();
    if c != 3 || h != w {
        bail!("generated images are [{n}, {c}, {h}, {w}]; the proxy scorer needs square RGB images");
    }
    let values = images.into_data().convert::<f32>().into_vec::<f32>().expect("f32");
    let plane = 3 * h * w;
    Ok(((0..n).map(|i| rfgen_core::image::to_rgb8(&values[i * plane..(i + 1) * plane], h, w)).collect(), h))
}

impl EvalProxy {
    fn eval<B: Backend>(self, device: &B::Device) -> Result<()> {
        let a = &self.args;
        let split = self.split;
        let data = load_dir(&self.data)?;
        let (config, weights) = load_scorer_dir(&self.scorer)?;
        let scorer = ProxyScorer::<B>::load(&weights, &config, device)?;
        // Checks --n and the candidates before any expensive work.
        let needed = Scored::needed_captions(&data, split, a.n, a.candidates)?;

        let cache = scorer_features::<B>(&self.scorer, &config.text, &needed, a.llm_gguf.as_deref(), device)?;
        let scored = Scored::prepare(&data, split, a.n, a.candidates, &scorer, &cache)?;
        let dim = config.embed_dim;
        let real_imgs: Vec<Vec<u8>> = scored.items.iter().map(|&i| data.image(i).to_vec()).collect();
        let real = scored.rank(&scorer.embed_images(&real_imgs, data.size), dim)?;

        let mut report = serde_json::json!({
            "proxy_scorer": self.scorer.display().to_string(),
            "proxy_scorer_kind": config.kind,
            "proxy_note": "retrieval by a PROXY scorer trained on this dataset's images (both splits), not CLIP",
            "dataset": self.data.display().to_string(),
            "split": split.as_str(),
            "n": scored.items.len(),
            "candidates": a.candidates,
            "proxy_real_top1": real.top1,
            "proxy_real_top5": real.top5,
            "proxy_real_mean_rank": real.mean_rank,
        });
        println!(
            "proxy-clip {} (n={}, {} candidates): real images (ceiling) top-1 {:.3} top-5 {:.3} mean rank {:.2}",
            split.as_str(),
            scored.items.len(),
            a.candidates,
            real.top1,
            real.top5,
            real.mean_rank
        );

        let gen = match &a.nearest_train {
            _ if a.real_only => None,
            Some(dir) => Some(nearest_train::<B>(&data, &scored.items, dir, a.llm_gguf.as_deref(), device)?),
            None if a.nearest_caption => Some(nearest_caption::<B>(&data, &scored.items, a.model.as_deref().expect("set in run"), device)?),
            None => Some(self.generate::<B>(&data, &scored.items, device)?),
        };
        let gen = match gen {
            Some(d) if d.draws.len() > 1 => Some(self.rerank::<B>(&data, &scored, &scorer, d, device)?),
            g => g,
        };
        let mut items = Vec::new();
        if let Some(Drawn { images, side, secs, generator, picks, reranked, .. }) = &gen {
            let stats = scored.rank(&scorer.embed_images(images, *side), dim)?;
            let ratio = |g: f64, r: f64| if r > 0.0 { serde_json::json!(g / r) } else { serde_json::Value::Null };
            let obj = report.as_object_mut().expect("object");
            obj.insert("proxy_gen_top1".into(), stats.top1.into());
            obj.insert("proxy_gen_top5".into(), stats.top5.into());
            obj.insert("proxy_gen_mean_rank".into(), stats.mean_rank.into());
            obj.insert("proxy_ratio_top1".into(), ratio(stats.top1, real.top1));
            obj.insert("proxy_ratio_top5".into(), ratio(stats.top5, real.top5));
            obj.insert(if picks.is_some() { "baseline" } else { "generator" }.into(), generator.clone());
            println!(
                "proxy-clip {}: {} top-1 {:.3} top-5 {:.3} mean rank {:.2}; /ceiling top-1 {} top-5 {} ({:.0}s drawing)",
                split.as_str(),
                if picks.is_some() { "nearest training images" } else { "generated" },
                stats.top1,
                stats.top5,
                stats.mean_rank,
                fmt_ratio(stats.top1, real.top1),
                fmt_ratio(stats.top5, real.top5),
                secs
            );
            for (k, &i) in scored.items.iter().enumerate() {
                let mut row = serde_json::json!({"id": data.items[i].id, "caption": data.items[i].captions[0],
                    "proxy_real_rank": real.ranks[k], "proxy_gen_rank": stats.ranks[k]});
                if let Some(p) = picks {
                    row["nearest_train_id"] = data.items[p[k]].id.clone().into();
                    row["nearest_train_caption"] = data.items[p[k]].captions[0].clone().into();
                }
                if let Some(r) = reranked {
                    row["proxy_draw_ranks"] = r.draw_ranks.iter().map(|d| d[k]).collect::<Vec<_>>().into();
                    row["reranker_pick"] = r.picks[k].into();
                }
                items.push(row);
            }
            if let Some(path) = &a.grid {
                let cols = (images.len() as f64).sqrt().ceil() as usize;
                let (g, gw, gh) = grid(images, *side, *side, cols.max(1));
                write_png(path, &g, gw, gh)?;
                eprintln!("wrote {}", path.display());
            }
        } else {
            for (k, &i) in scored.items.iter().enumerate() {
                items.push(serde_json::json!({"id": data.items[i].id, "caption": data.items[i].captions[0], "proxy_real_rank": real.ranks[k]}));
            }
        }
        report.as_object_mut().expect("object").insert("items".into(), items.into());
        if let Some(path) = &a.out {
            write_atomic(path, format!("{}\n", serde_json::to_string_pretty(&report)?).as_bytes())?;
            eprintln!("wrote {}", path.display());
        }
        Ok(())
    }

    fn vae_dir(&self) -> Option<PathBuf> {
        model_vae_dir(self.args.vae.as_deref(), self.args.model.as_deref())
    }

    /// One image per item (its first caption), noise seeded by (--seed, item id).
    fn generate<B: Backend>(
        &self,
        data: &Dataset,
        items: &[usize],
        device: &B::Device,
    ) -> Result<Drawn> {
        let a = &self.args;
        let model = a.model.as_ref().expect("checked in run");
        let vae = self.vae_dir().as_deref().map(VaeFiles::read_dir).transpose()?;
        let pipe = Pipeline::<B>::new(ModelFiles::read_dir(model)?, vae, device)?;
        if pipe.vae.is_none() && pipe.model.latent_channels() != 3 {
            bail!("the generator's latents have {} channels: give --vae DIR to decode them", pipe.model.latent_channels());
        }
        let prompts: Vec<String> = items.iter().map(|&i| data.items[i].captions[0].clone()).collect();
        let guidance = pipe.neighbour_guidance(a.neighbours, a.neighbour_share, a.neighbour_init)?;
        if let (Some(_), Some(n)) = (guidance, &pipe.neighbours) {
            check_index_is_train_only(data, &n.index)?;
        }
        let mut neighbours = Vec::new();
        let hw = pipe.default_latent_hw();
        let c = pipe.model.latent_channels();
        let config = pipe.generation.sample_config(a.steps, a.cfg, a.shift);
        config.validate()?;
        let start = Instant::now();
        let mut draws = Vec::new();
        let mut side = 0;
        for draw in 0..a.best_of as u64 {
            let mut images = Vec::with_capacity(items.len());
            for (chunk_idx, chunk) in items.chunks(a.batch).enumerate() {
                let lo = chunk_idx * a.batch;
                let mut z = Vec::with_capacity(chunk.len() * c * hw[0] * hw[1]);
                for &i in chunk {
                    let seed = a.seed.wrapping_add(draw) ^ rfgen_core::data::fnv1a64(data.items[i].id.as_bytes());
                    z.extend(rfgen_core::noise::gaussian(seed, c * hw[0] * hw[1]));
                }
                let z0 = Tensor::<B, 4>::from_data(TensorData::new(z, [chunk.len(), c, hw[0], hw[1]]), device);
                let (out, near) = pipe.generate_prompts(&prompts[lo..lo + chunk.len()], guidance, z0, &config, |_| {})?;
                if draw == 0 {
                    neighbours.extend(near.unwrap_or_default());
                }
                let (rgb, s) = to_rgb_images(out.images.unwrap_or(out.z1))?;
                side = s;
                images.extend(rgb);
                status(format_args!("generated {}/{} images, draw {} ({:.1}s)   ", images.len(), items.len(), draw + 1, start.elapsed().as_secs_f64()));
            }
            draws.push(images);
        }
        status_done();
        let images = if draws.len() == 1 { draws.pop().expect("one draw") } else { draws[0].clone() };
        let secs = start.elapsed().as_secs_f64();
        let mut generator = serde_json::json!({"model": model.display().to_string(),
            "vae": self.vae_dir().map(|v| v.display().to_string()), "steps": config.steps, "cfg": config.cfg, "shift": config.shift,
            "seed": a.seed, "image_size": side, "seconds": secs});
        if let Some(g) = guidance {
            let per_item: Vec<_> = prompts.iter().zip(&neighbours).map(|(p, n)| serde_json::json!({"caption": p, "neighbours": n})).collect();
            generator["neighbours"] = serde_json::json!({"count": g.count, "share": g.share, "init_strength": g.init, "index_captions": pipe.neighbours.as_ref().map(|n| n.index.len()),
                "index_llm_layers": pipe.neighbours.as_ref().map(|n| n.index.features.spec.layers), "per_item": per_item});
        }
        Ok(Drawn { images, side, secs, generator, picks: None, draws, reranked: None })
    }

    /// Best-of-N: for each item, the draw the --reranker scorer matches best with its caption. The
    /// judge's ranks of every draw go to the report too (each draw alone, and the judge's own pick
    /// as an upper bound no generator can use).
    fn rerank<B: Backend>(&self, data: &Dataset, scored: &Scored, judge: &ProxyScorer<B>, mut drawn: Drawn, device: &B::Device) -> Result<Drawn> {
        let a = &self.args;
        let dir = a.reranker.as_ref().expect("--best-of requires --reranker");
        let judge_dim = judge.config.embed_dim;
        let draw_ranks: Vec<Vec<usize>> = drawn
            .draws
            .iter()
            .map(|set| Ok(scored.rank(&judge.embed_images(set, drawn.side), judge_dim)?.ranks))
            .collect::<Result<_>>()?;
        let (config, weights) = load_scorer_dir(dir)?;
        warn_unless_train_only(&config, "--reranker", dir);
        let reranker = ProxyScorer::<B>::load(&weights, &config, device)?;
        let captions: Vec<String> = scored.items.iter().map(|&i| data.items[i].captions[0].clone()).collect();
        let cache = scorer_features::<B>(dir, &config.text, &captions, a.llm_gguf.as_deref(), device)?;
        let text_emb = reranker.embed_text_features(&cache.rows(&captions)?);
        let image_emb: Vec<Vec<f32>> = drawn.draws.iter().map(|set| reranker.embed_images(set, drawn.side)).collect();
        let picks = best_draws(&text_emb, &image_emb, config.embed_dim)?;
        drawn.images = picks.iter().enumerate().map(|(k, &j)| drawn.draws[j][k].clone()).collect();

        let n = scored.items.len();
        let per_draw: Vec<f64> = draw_ranks.iter().map(|r| top_k(r, 1)).collect();
        let best = stats_of((0..n).map(|k| draw_ranks.iter().map(|r| r[k]).min().unwrap_or(0)).collect());
        println!(
            "best-of-{}: each draw alone top-1 {}; the judge's own pick (an upper bound) top-1 {:.3}",
            drawn.draws.len(),
            per_draw.iter().map(|t| format!("{t:.3}")).collect::<Vec<_>>().join(" "),
            best.top1
        );
        let g = &mut drawn.generator;
        g["best_of"] = drawn.draws.len().into();
        g["reranker"] = dir.display().to_string().into();
        g["reranker_trained_on"] = trained_on(&config);
        g["proxy_draw_top1"] = per_draw.into();
        g["proxy_judge_pick_top1"] = best.top1.into();
        drawn.reranked = Some(Reranked { picks, draw_ranks });
        Ok(drawn)
    }
}

/// The images scored in place of real ones, and what drew them.
struct Drawn {
    images: Vec<Vec<u8>>,
    side: usize,
    secs: f64,
    /// The generator's (or the baseline's) settings, for the report.
    generator: serde_json::Value,
    /// For the nearest-training-image baseline: the dataset item copied for each scored item.
    picks: Option<Vec<usize>>,
    /// With --best-of N: every draw's images, `[draw][item]` (`images` is then the reranker's pick).
    draws: Vec<Vec<Vec<u8>>>,
    reranked: Option<Reranked>,
}

/// What best-of-N reranking chose, and how the judge ranked every draw.
struct Reranked {
    /// The draw the reranker picked, per item.
    picks: Vec<usize>,
    /// The judge's rank of each draw's image, `[draw][item]`.
    draw_ranks: Vec<Vec<usize>>,
}

/// The copy-the-nearest-training-image baseline: for each item's first caption, the training-split
/// image that the scorer in `dir` ranks highest.
fn nearest_train<B: Backend>(data: &Dataset, items: &[usize], dir: &Path, llm_gguf: Option<&Path>, device: &B::Device) -> Result<Drawn> {
    let start = Instant::now();
    let (config, weights) = load_scorer_dir(dir)?;
    warn_unless_train_only(&config, "--nearest-train", dir);
    let scorer = ProxyScorer::<B>::load(&weights, &config, device)?;
    let captions: Vec<String> = items.iter().map(|&i| data.items[i].captions[0].clone()).collect();
    let cache = scorer_features::<B>(dir, &config.text, &captions, llm_gguf, device)?;
    let text_emb = scorer.embed_text_features(&cache.rows(&captions)?);
    let pool: Vec<usize> = (0..data.items.len()).filter(|&j| data.items[j].split == Split::Train).collect();
    if pool.is_empty() {
        bail!("--nearest-train: {} has no training-split images to copy", data.name);
    }
    let pool_imgs: Vec<Vec<u8>> = pool.iter().map(|&j| data.image(j).to_vec()).collect();
    let best = best_matches(&text_emb, &scorer.embed_images(&pool_imgs, data.size), config.embed_dim)?;
    let picks: Vec<usize> = best.into_iter().map(|b| pool[b]).collect();
    let images = picks.iter().map(|&j| data.image(j).to_vec()).collect();
    let secs = start.elapsed().as_secs_f64();
    let generator = serde_json::json!({"kind": "nearest training image", "chooser": dir.display().to_string(),
        "chooser_trained_on": trained_on(&config), "pool": pool.len(), "image_size": data.size, "seconds": secs});
    Ok(Drawn { images, side: data.size, secs, generator, picks: Some(picks), draws: Vec::new(), reranked: None })
}

/// The first training image that has each caption.
fn train_owner(data: &Dataset) -> std::collections::HashMap<&str, usize> {
    let mut owner = std::collections::HashMap::new();
    for (j, it) in data.items.iter().enumerate().filter(|(_, it)| it.split == Split::Train) {
        for c in &it.captions {
            owner.entry(c.as_str()).or_insert(j);
        }
    }
    owner
}

/// The copy-the-nearest-caption's-image baseline: for each item's first caption, the training
/// image that has the caption nearest it in the model's caption index.
fn nearest_caption<B: Backend>(data: &Dataset, items: &[usize], model: &Path, device: &B::Device) -> Result<Drawn> {
    let start = Instant::now();
    let path = model.join(NEIGHBOURS_FILE);
    let bytes = std::fs::read(&path).with_context(|| format!("--nearest-caption needs the model's caption index {}", path.display()))?;
    let index = IndexFile::from_safetensors(&path.display().to_string(), &bytes)?;
    let gguf = std::fs::read(find_llm_gguf(&index.features.spec.gguf_file)?)?;
    let near = PromptNeighbours::<B>::from_gguf(index, &gguf, device)?;
    check_index_is_train_only(data, &near.index)?;
    let owner = train_owner(data);
    let captions: Vec<String> = items.iter().map(|&i| data.items[i].captions[0].clone()).collect();
    let found = near.find(&captions, 1)?;
    let mut picks = Vec::with_capacity(items.len());
    for (caption, n) in captions.iter().zip(&found) {
        let c = &n[0].0;
        match owner.get(c.as_str()) {
            Some(&j) => picks.push(j),
            None => bail!("the caption index's {c:?} (nearest {caption:?}) is no training image's caption in {}", data.name),
        }
    }
    let images = picks.iter().map(|&j| data.image(j).to_vec()).collect();
    let secs = start.elapsed().as_secs_f64();
    let generator = serde_json::json!({"kind": "nearest caption's training image", "index": path.display().to_string(),
        "index_captions": near.index.len(), "index_llm_layers": near.index.features.spec.layers,
        "index_removed_top_directions": near.index.top.as_ref().map_or(0, |t| t.count), "image_size": data.size, "seconds": secs,
        "per_item": captions.iter().zip(&found).map(|(p, n)| serde_json::json!({"caption": p, "nearest": n[0]})).collect::<Vec<_>>()});
    Ok(Drawn { images, side: data.size, secs, generator, picks: Some(picks), draws: Vec::new(), reranked: None })
}

/// Neighbour guidance must not see held-out captions: the model's index may hold no caption that
/// only held-out images of the dataset have.
fn check_index_is_train_only(data: &Dataset, index: &CaptionIndex) -> Result<()> {
    let of = |split: Split| data.items.iter().filter(move |it| it.split == split).flat_map(|it| it.captions.iter());
    let train: std::collections::HashSet<&String> = of(Split::Train).collect();
    if let Some(c) = of(Split::Heldout).find(|c| !train.contains(c) && index.features.row_of(c).is_some()) {
        bail!("the model's caption index holds the held-out caption {c:?}; rebuild it from the training split (`rfgen-cli index-captions`) or pass --neighbours 0");
    }
    Ok(())
}

/// Which splits a scorer was trained on, as its config records it.
fn trained_on(config: &ProxyClipConfig) -> serde_json::Value {
    config.training.as_ref().and_then(|t| t.get("splits")).cloned().unwrap_or_default()
}

/// A scorer that picks images for held-out captions should not have seen the held-out images.
fn warn_unless_train_only(config: &ProxyClipConfig, flag: &str, dir: &Path) {
    let splits = trained_on(config);
    if !splits.as_str().is_some_and(|s| s.starts_with("train only")) {
        eprintln!("warning: {flag} {} was not trained on the training split only ({splits}); its choices may have seen the held-out images", dir.display());
    }
}

fn fmt_ratio(g: f64, r: f64) -> String {
    if r > 0.0 {
        format!("{:.2}", g / r)
    } else {
        "n/a".into()
    }
}
