//! Text-to-image end to end: model directory → prompts → Euler-CFG loop → VAE decode.

use std::path::{Path, PathBuf};

use burn::tensor::{backend::Backend, Tensor, TensorData};

use crate::checkpoint::{load_weights_dir, read_json, read_optional_json, Weights};
use crate::error::{Error, Result};
use crate::checkpoint::VarBuilder;
use crate::convert::{Manifest, ModelKind};
use crate::janusflow::{GenerationConfig, JanusFlowConfig};
use crate::llama::LlamaConfig;
use crate::neighbours::{IndexFile, NeighbourGuidance, PromptNeighbours, DEFAULT_COUNT, DEFAULT_SHARE, NEIGHBOURS_FILE};
use crate::structured::{FlowGenerator, GeneratorConfig, LlmGguf};
use crate::sampler::{sample_from, PromptBatch, SampleConfig, StepEvent, VelocityModel};
use crate::tokenizer::PromptTokenizer;
use crate::vae::{AutoencoderKl, VaeConfig};

/// Everything a model directory holds, read into memory: config.json (JanusFlow's released
/// layout or rfgen's structured one), weights, optional generation.json and tokenizer.json.
pub struct ModelFiles {
    pub config: GeneratorConfig,
    pub generation: GenerationConfig,
    pub weights: Weights,
    pub tokenizer_json: Option<Vec<u8>>,
    /// The caption index for neighbour guidance (`neighbours.safetensors`), when the directory has one.
    pub neighbours: Option<IndexFile>,
}

impl ModelFiles {
    pub fn read_dir(dir: &Path) -> Result<Self> {
        if !dir.is_dir() {
            return Err(Error::Io(format!("model directory {} does not exist", dir.display())));
        }
        let config = read_generator_config(&dir.join("config.json"))?;
        let generation = match read_optional_json::<GenerationConfig>(&dir.join("generation.json"))? {
            Some(g) => g.or(&config.generation),
            None => config.generation.clone(),
        };
        let tok = dir.join("tokenizer.json");
        let mut tokenizer_json = if tok.exists() {
            Some(std::fs::read(&tok).map_err(|e| Error::Io(format!("cannot read {}: {e}", tok.display())))?)
        } else {
            None
        };
        let mut weights = load_weights_dir(dir)?;
        if let Some(json) = fold_llm_gguf(&config, &mut weights)? {
            tokenizer_json = tokenizer_json.or(Some(json));
        }
        let index = dir.join(NEIGHBOURS_FILE);
        let neighbours = if index.is_file() {
            let bytes = std::fs::read(&index).map_err(|e| Error::Io(format!("cannot read {}: {e}", index.display())))?;
            Some(IndexFile::from_safetensors(&index.display().to_string(), &bytes)?)
        } else {
            None
        };
        Ok(Self { config, generation, weights, tokenizer_json, neighbours })
    }
}

/// For a model trained on a GGUF LLM (`config.llm_gguf`): adds the GGUF's LLM weights to
/// `weights` (plus what stage 2 changed, stored as a delta against it), and the frozen text
/// pooler's (`config.pooled_text`: the GGUF's first K layers), and returns the GGUF's
/// tokenizer.json. `None` for a self-contained model.
pub fn fold_llm_gguf(config: &GeneratorConfig, weights: &mut Weights) -> Result<Option<Vec<u8>>> {
    let Some(src) = &config.llm_gguf else { return Ok(None) };
    let path = find_llm_gguf(&src.file)?;
    let bytes = std::fs::read(&path).map_err(|e| Error::Io(format!("cannot read {}: {e}", path.display())))?;
    let (llm, json) = llm_from_gguf(src, &bytes, &config.language_config)?;
    insert_missing(weights, &llm, "language_model.");
    crate::gguf::apply_llm_delta(weights)?;
    if let Some(pooler) = config.pooler_config() {
        let layers = LlmGguf { layers: pooler.num_hidden_layers, ..src.clone() };
        let (llm, _) = llm_from_gguf(&layers, &bytes, &pooler)?;
        insert_missing(weights, &llm, "pooled_text_model.");
    }
    Ok(Some(json))
}

/// Adds each tensor of `from` under `prefix` unless `weights` already has it.
fn insert_missing(weights: &mut Weights, from: &Weights, prefix: &str) {
    for name in from.names().filter(|n| !weights.contains(&format!("{prefix}{n}"))).collect::<Vec<_>>() {
        let values = from.read_f32(name).expect("listed").expect("f32");
        weights.insert_f32(&format!("{prefix}{name}"), from.shape(name).expect("listed").to_vec(), values);
    }
}

/// Where a model's LLM GGUF is looked for: `$RFGEN_SMOLLM2_GGUF` (the file itself),
/// `$RFGEN_GGUF_DIR/<file>`, then `~/.cache/rfgen/smollm2/<file>` (where `./build.sh setup` puts it).
pub fn find_llm_gguf(file: &str) -> Result<PathBuf> {
    let mut tried = Vec::new();
    if let Ok(p) = std::env::var("RFGEN_SMOLLM2_GGUF") {
        tried.push(PathBuf::from(p));
    }
    if let Ok(d) = std::env::var("RFGEN_GGUF_DIR") {
        tried.push(Path::new(&d).join(file));
    }
    if let Ok(home) = std::env::var("HOME") {
        tried.push(Path::new(&home).join(".cache/rfgen/smollm2").join(file));
    }
    match tried.iter().find(|p| p.is_file()) {
        Some(p) => Ok(p.clone()),
        None => Err(Error::Io(format!(
            "the model's LLM {file} was not found (looked in: {}); run `./build.sh setup` to fetch it",
            tried.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
        ))),
    }
}

/// The LLM weights (HF Llama keys, first `src.layers` layers) and tokenizer.json of a GGUF,
/// checked against the sha256 and the config the model was trained with.
pub fn llm_from_gguf(src: &LlmGguf, bytes: &[u8], expected: &LlamaConfig) -> Result<(Weights, Vec<u8>)> {
    let sha = crate::convert::sha256_hex(bytes);
    if sha != src.sha256 {
        return Err(Error::Io(format!("{}: sha256 {sha} does not match the model's {}", src.file, src.sha256)));
    }
    let file = crate::gguf::GgufFile::parse(bytes)?;
    let (config, weights) = crate::gguf::llama_weights(&file, Some(src.layers))?;
    let differs = config.hidden_size != expected.hidden_size
        || config.num_hidden_layers != expected.num_hidden_layers
        || config.vocab_size != expected.vocab_size
        || config.intermediate_size != expected.intermediate_size;
    if differs {
        return Err(Error::config(&src.file, "its LLM does not have the shape in the model's config.json"));
    }
    let json = serde_json::to_vec(&crate::gguf::tokenizer_json(&file)?).map_err(|e| Error::Tokenizer(e.to_string()))?;
    Ok((weights, json))
}

/// Reads a model `config.json`: the released JanusFlow layout or an rfgen generator config.
pub fn read_generator_config(path: &Path) -> Result<GeneratorConfig> {
    let value: serde_json::Value = read_json(path)?;
    let name = path.display().to_string();
    let config = if value.get("vision_gen_enc_config").is_some() {
        let jf: JanusFlowConfig = serde_json::from_value(value).map_err(|e| Error::config(&name, e))?;
        jf.validate(&name)?;
        GeneratorConfig::from(&jf)
    } else {
        serde_json::from_value(value).map_err(|e| Error::config(&name, e))?
    };
    config.validate(&name)?;
    Ok(config)
}

/// A diffusers-layout VAE directory (config.json + safetensors).
pub struct VaeFiles {
    pub config: VaeConfig,
    pub weights: Weights,
}

impl VaeFiles {
    pub fn read_dir(dir: &Path) -> Result<Self> {
        if !dir.is_dir() {
            return Err(Error::Io(format!("VAE directory {} does not exist", dir.display())));
        }
        let config_path = dir.join("config.json");
        let config: VaeConfig = read_json(&config_path)?;
        config.validate(&config_path.display().to_string())?;
        Ok(Self { config, weights: load_weights_dir(dir)? })
    }
}

/// Output of a generation.
pub struct Generated<B: Backend> {
    /// Final latents `[B, c, h, w]`.
    pub z1: Tensor<B, 4>,
    /// Decoded images `[B, 3, H, W]` in about [-1, 1] (before clipping), when a VAE is loaded.
    pub images: Option<Tensor<B, 4>>,
}

pub struct Pipeline<B: Backend> {
    pub model: FlowGenerator<B>,
    pub vae: Option<AutoencoderKl<B>>,
    pub tokenizer: Option<PromptTokenizer>,
    pub generation: GenerationConfig,
    pub pad_id: u32,
    pub device: B::Device,
    /// Neighbour guidance's caption index and text encoder (native model directories with one).
    pub neighbours: Option<PromptNeighbours<B>>,
}

impl<B: Backend> Pipeline<B> {
    pub fn new(files: ModelFiles, vae: Option<VaeFiles>, device: &B::Device) -> Result<Self> {
        let model = FlowGenerator::load(&files.weights, &files.config, device)?;
        let mut pipe = Self::assemble(model, files.generation, files.tokenizer_json, vae, device)?;
        if let Some(index) = files.neighbours {
            let path = find_llm_gguf(&index.features.spec.gguf_file)?;
            let bytes = std::fs::read(&path).map_err(|e| Error::Io(format!("cannot read {}: {e}", path.display())))?;
            pipe.neighbours = Some(PromptNeighbours::from_gguf(index, &bytes, device)?);
        }
        Ok(pipe)
    }

    /// A randomly initialised generator (presets before trained weights exist); the same
    /// `seed` always gives the same weights.
    pub fn random(config: &GeneratorConfig, seed: u64, vae: Option<VaeFiles>, device: &B::Device) -> Result<Self> {
        config.validate("preset")?;
        let model = FlowGenerator::build(&VarBuilder::<B>::random(seed, device), config);
        Self::assemble(model, config.generation.clone(), None, vae, device)
    }

    /// A generator from weights already in memory (the browser fetches them itself).
    pub fn from_parts(
        config: &GeneratorConfig,
        weights: &Weights,
        generation: GenerationConfig,
        tokenizer_json: Option<Vec<u8>>,
        vae: Option<VaeFiles>,
        device: &B::Device,
    ) -> Result<Self> {
        config.validate("config")?;
        let model = FlowGenerator::load(weights, config, device)?;
        Self::assemble(model, generation.or(&config.generation), tokenizer_json, vae, device)
    }

    fn assemble(
        model: FlowGenerator<B>,
        gen: GenerationConfig,
        tokenizer_json: Option<Vec<u8>>,
        vae: Option<VaeFiles>,
        device: &B::Device,
    ) -> Result<Self> {
        // The encoder too when the VAE directory has it (image-to-image needs it).
        let vae = vae
            .map(|v| match v.weights.contains("encoder.conv_in.weight") {
                true => AutoencoderKl::load_full(&v.weights, &v.config, device),
                false => AutoencoderKl::load(&v.weights, &v.config, device),
            })
            .transpose()?;
        let lc = &model.config.language_config;
        let bos = gen.bos_token_id.or(lc.bos_token_id);
        let tokenizer = match (tokenizer_json, gen.tokenizer.as_deref()) {
            (Some(json), _) => {
                Some(PromptTokenizer::from_bytes(&json, bos, gen.image_gen_token_id)?.with_template(gen.prompt_template.clone()))
            }
            (None, Some("bytes")) => {
                let missing = || Error::config("generation", "byte-level prompts need bos_token_id and image_gen_token_id");
                let (bos, bog) = (bos.ok_or_else(missing)?, gen.image_gen_token_id.ok_or_else(missing)?);
                Some(PromptTokenizer::bytes(bos, bog, lc.vocab_size)?)
            }
            _ => None,
        };
        let pad_id = gen.pad_token_id.or(lc.pad_token_id).ok_or_else(|| {
            Error::config("generation.json", "no pad_token_id (in generation.json or language_config)")
        })?;
        Ok(Self { model, vae, tokenizer, generation: gen, pad_id, device: device.clone(), neighbours: None })
    }

    pub fn tokenize(&self, prompts: &[String]) -> Result<Vec<Vec<u32>>> {
        let tok = self
            .tokenizer
            .as_ref()
            .ok_or_else(|| Error::Tokenizer("the model directory has no tokenizer.json; pass token ids instead".into()))?;
        prompts.iter().map(|p| tok.encode_prompt(p)).collect()
    }

    /// The latent size `[h, w]` used when no noise is given: generation.json's `latent_shape`,
    /// else 384x384 pixels through an 8x VAE.
    pub fn default_latent_hw(&self) -> [usize; 2] {
        match self.generation.latent_shape.as_deref() {
            Some([_, h, w]) => [*h, *w],
            _ => [48, 48],
        }
    }

    /// Seeded standard-normal noise `[n, c, h, w]`.
    pub fn noise(&self, seed: u64, n: usize, hw: [usize; 2]) -> Tensor<B, 4> {
        let c = self.model.latent_channels();
        let values = crate::noise::gaussian(seed, n * c * hw[0] * hw[1]);
        Tensor::from_data(TensorData::new(values, [n, c, hw[0], hw[1]]), &self.device)
    }

    pub fn generate(
        &self,
        prompts: &[Vec<u32>],
        z0: Tensor<B, 4>,
        config: &SampleConfig,
        on_step: impl FnMut(&StepEvent<B>),
    ) -> Result<Generated<B>> {
        self.generate_composed(&[prompts.to_vec()], &[1.0], z0, config, on_step)
    }

    /// The neighbour guidance to sample with: `count`, `share` and the start's strength `init`
    /// when given, else the generation config's, else [`DEFAULT_COUNT`], [`DEFAULT_SHARE`] and no
    /// retrieval start (an `init` of 0 turns it off); `None` when the count is 0, or when none was
    /// asked for and the model has no caption index. A retrieval start needs the index's images.
    pub fn neighbour_guidance(&self, count: Option<usize>, share: Option<f32>, init: Option<f64>) -> Result<Option<NeighbourGuidance>> {
        let asked = count.is_some();
        let count = count.or(self.generation.neighbours).unwrap_or(DEFAULT_COUNT);
        let share = share.or(self.generation.neighbour_share).unwrap_or(DEFAULT_SHARE);
        let has_images = self.neighbours.as_ref().is_some_and(|n| n.index.images.is_some());
        if init.is_some_and(|s| s != 0.0) && self.neighbours.is_some() && !has_images {
            return Err(Error::input(format!(
                "a neighbour start needs the training images in the caption index ({NEIGHBOURS_FILE}); rebuild it with `rfgen-cli index-captions`, or pass --neighbour-init 0"
            )));
        }
        // The config's start applies where the index holds the images.
        let init = init.or(self.generation.neighbour_init.filter(|_| has_images)).filter(|s| *s != 0.0);
        if count == 0 {
            return Ok(None);
        }
        let g = NeighbourGuidance { count, share, init };
        g.validate()?;
        match &self.neighbours {
            Some(_) => Ok(Some(g)),
            None if asked => Err(Error::input(format!(
                "neighbour guidance needs the model's caption index ({NEIGHBOURS_FILE}); build it with `rfgen-cli index-captions`"
            ))),
            None => Ok(None),
        }
    }

    /// Flow latents of RGB8 images `[n][H·W·3]` of side `side` (the VAE's encoder, posterior mean).
    pub fn encode_images(&self, images: &[Vec<u8>], side: usize) -> Result<Tensor<B, 4>> {
        let vae = self.vae.as_ref().filter(|v| v.has_encoder()).ok_or_else(|| {
            Error::input("an init image needs the VAE's encoder, and this VAE directory has only the decoder")
        })?;
        if let Some(i) = images.iter().position(|im| im.len() != side * side * 3) {
            return Err(Error::input(format!("init image {i} has {} bytes, not {side}x{side} RGB", images[i].len())));
        }
        let pixels = crate::data::pixels::rgb8_to_nchw(&images.iter().map(Vec::as_slice).collect::<Vec<_>>(), side);
        let x = Tensor::from_data(TensorData::new(pixels, [images.len(), 3, side, side]), &self.device);
        vae.encode_flow_latent(x)
    }

    /// Text prompts to images. With `guidance`, each prompt is also guided by its nearest indexed
    /// captions (composed guidance); returns them too, `[prompt][k]`.
    pub fn generate_prompts(
        &self,
        prompts: &[String],
        guidance: Option<NeighbourGuidance>,
        z0: Tensor<B, 4>,
        config: &SampleConfig,
        on_step: impl FnMut(&StepEvent<B>),
    ) -> Result<(Generated<B>, Option<Vec<Vec<(String, f32)>>>)> {
        self.generate_prompts_from(prompts, guidance, None, z0, config, on_step)
    }

    /// [`Pipeline::generate_prompts`], image-to-image when `init` is given: the loop starts from
    /// the init latents, noised by `z0` to the strength's grid point ([`ImageInit`]). Without it,
    /// a guidance with a retrieval start (`g.init`) starts each unseen prompt from its nearest
    /// neighbour's training image; prompts that are indexed captions start from noise as before.
    pub fn generate_prompts_from(
        &self,
        prompts: &[String],
        guidance: Option<NeighbourGuidance>,
        init: Option<ImageInit<B>>,
        z0: Tensor<B, 4>,
        config: &SampleConfig,
        on_step: impl FnMut(&StepEvent<B>),
    ) -> Result<(Generated<B>, Option<Vec<Vec<(String, f32)>>>)> {
        let retrieval = init.is_none() && guidance.is_some_and(|g| g.init.is_some());
        let (z0, start) = match init {
            Some(init) => init.noised(z0, config)?,
            None => (z0, 0),
        };
        let ids = self.tokenize(prompts)?;
        let (Some(g), Some(index)) = (guidance, &self.neighbours) else {
            if guidance.is_some() {
                return Err(Error::input(format!("neighbour guidance needs the model's caption index ({NEIGHBOURS_FILE})")));
            }
            return Ok((self.generate_composed_from(&[ids], &[1.0], z0, start, config, on_step)?, None));
        };
        g.validate()?;
        let near = index.find(prompts, g.count)?;
        // A prompt that is an indexed caption is its own neighbour: plain guidance for a batch of those.
        if prompts.iter().zip(&near).all(|(p, n)| n.iter().all(|(c, _)| c == p)) {
            return Ok((self.generate_composed_from(&[ids], &[1.0], z0, start, config, on_step)?, Some(near)));
        }
        let mut groups = vec![ids];
        for j in 0..g.count {
            let captions: Vec<String> = near.iter().map(|n| n[j].0.clone()).collect();
            groups.push(self.tokenize(&captions)?);
        }
        if !retrieval {
            return Ok((self.generate_composed_from(&groups, &g.shares(), z0, start, config, on_step)?, Some(near)));
        }
        // At least one step runs, however few the steps.
        let strength = g.init.expect("retrieval start").max(1.0 / config.steps.max(1) as f64);
        let images = index.index.images.as_ref().ok_or_else(|| Error::input(format!("a neighbour start needs the training images in {NEIGHBOURS_FILE}")))?;
        // The unseen prompts start from their neighbour's image at one grid point, the others from
        // noise: two runs of the loop, put back in prompt order.
        let own = |b: usize| near[b].iter().all(|(c, _)| c == &prompts[b]);
        let (seen, unseen): (Vec<usize>, Vec<usize>) = (0..prompts.len()).partition(|&b| own(b));
        let subset = |rows: &[usize]| -> Vec<Vec<Vec<u32>>> { groups.iter().map(|g| rows.iter().map(|&b| g[b].clone()).collect()).collect() };
        let pick = |rows: &[usize]| z0.clone().select(0, Tensor::<B, 1, burn::tensor::Int>::from_data(TensorData::new(rows.iter().map(|&r| r as i64).collect::<Vec<_>>(), [rows.len()]), &self.device));
        let [_, _, h, w] = z0.dims();
        let index_rows: Vec<usize> = unseen
            .iter()
            .map(|&b| index.index.features.row_of(&near[b][0].0).ok_or_else(|| Error::input(format!("{:?} is no indexed caption", near[b][0].0))))
            .collect::<Result<_>>()?;
        let latents = images.latents::<B>(&index_rows, [h, w], &self.device)?;
        let (z_unseen, start) = ImageInit { latents, strength }.noised(pick(&unseen), config)?;
        let mut on_step = on_step;
        let drawn = self.generate_composed_from(&subset(&unseen), &g.shares(), z_unseen, start, config, &mut on_step)?;
        if seen.is_empty() {
            return Ok((drawn, Some(near)));
        }
        let plain = self.generate_composed_from(&subset(&seen), &g.shares(), pick(&seen), 0, config, &mut on_step)?;
        let mut order = vec![0i64; prompts.len()];
        for (k, &b) in unseen.iter().chain(&seen).enumerate() {
            order[b] = k as i64;
        }
        let order = Tensor::<B, 1, burn::tensor::Int>::from_data(TensorData::new(order, [prompts.len()]), &self.device);
        let merge = |a: Tensor<B, 4>, b: Tensor<B, 4>| Tensor::cat(vec![a, b], 0).select(0, order.clone());
        let images = match (drawn.images, plain.images) {
            (Some(a), Some(b)) => Some(merge(a, b)),
            _ => None,
        };
        Ok((Generated { z1: merge(drawn.z1, plain.z1), images }, Some(near)))
    }

    /// [`Pipeline::generate`] with composed guidance: image b is guided by `groups[g][b]` for
    /// every group g, with guidance shares `shares` ([`PromptBatch::composed`]).
    pub fn generate_composed(
        &self,
        groups: &[Vec<Vec<u32>>],
        shares: &[f32],
        z0: Tensor<B, 4>,
        config: &SampleConfig,
        on_step: impl FnMut(&StepEvent<B>),
    ) -> Result<Generated<B>> {
        self.generate_composed_from(groups, shares, z0, 0, config, on_step)
    }

    /// [`Pipeline::generate_composed`] from grid point `start` of the step grid: `z` is the latent
    /// at that point ([`crate::sampler::EulerCfg::start_at`]).
    pub fn generate_composed_from(
        &self,
        groups: &[Vec<Vec<u32>>],
        shares: &[f32],
        z: Tensor<B, 4>,
        start: usize,
        config: &SampleConfig,
        on_step: impl FnMut(&StepEvent<B>),
    ) -> Result<Generated<B>> {
        let batch = PromptBatch::composed(groups, shares, self.pad_id)?;
        let z1 = sample_from(&self.model, &batch, z, start, config, on_step)?;
        let images = self.vae.as_ref().map(|vae| vae.decode_flow_latent(z1.clone()));
        Ok(Generated { z1, images })
    }
}

/// Image-to-image (SDEdit, diffusers' img2img `strength`): with N steps the loop runs the last
/// `floor(N · strength)` of them, from `t·x + (1 − t)·z0` at the grid point t where they begin.
pub struct ImageInit<B: Backend> {
    /// Flow latents of the init images `[B, c, h, w]` ([`Pipeline::encode_images`]).
    pub latents: Tensor<B, 4>,
    /// In (0, 1]: 1 keeps nothing of the image, smaller keeps more.
    pub strength: f64,
}

impl<B: Backend> ImageInit<B> {
    /// The noised latents and the grid point they belong to.
    pub fn noised(self, z0: Tensor<B, 4>, config: &SampleConfig) -> Result<(Tensor<B, 4>, usize)> {
        let start = strength_start_step(self.strength, config)?;
        if self.latents.dims() != z0.dims() {
            return Err(Error::input(format!("init latents {:?} do not match the noise {:?}", self.latents.dims(), z0.dims())));
        }
        let t = config.time(start);
        Ok((self.latents.mul_scalar(t) + z0.mul_scalar(1.0 - t), start))
    }
}

/// The grid point image-to-image starts at for `strength` ([`ImageInit`]).
pub fn strength_start_step(strength: f64, config: &SampleConfig) -> Result<usize> {
    if !strength.is_finite() || strength <= 0.0 || strength > 1.0 {
        return Err(Error::input(format!("strength must be in (0, 1], got {strength}")));
    }
    let run = (config.steps as f64 * strength + 1e-9).floor() as usize;
    if run == 0 {
        return Err(Error::input(format!(
            "strength {strength} with {} steps runs no step (raise --strength or --steps)",
            config.steps
        )));
    }
    Ok(config.steps - run)
}

/// Any checkpoint rfgen reads, with what it is and how it is laid out.
pub struct Checkpoint {
    pub kind: ModelKind,
    pub weights: Weights,
    pub dir: std::path::PathBuf,
    /// "rfgen manifest", "hf sharded index" or "single safetensors".
    pub layout: &'static str,
    pub manifest: Option<Manifest>,
    /// The weight files read, for source identity.
    pub files: Vec<std::path::PathBuf>,
}

/// Reads a model or VAE directory, or one `.safetensors` file with its `config.json` beside it.
pub fn read_checkpoint(path: &Path) -> Result<Checkpoint> {
    if path.extension().is_some_and(|e| e == "gguf") {
        return Err(Error::input(format!("{}: GGUF checkpoints are not supported yet", path.display())));
    }
    let (dir, single) = if path.is_file() {
        (path.parent().unwrap_or(Path::new(".")).to_path_buf(), Some(path.to_path_buf()))
    } else if path.is_dir() {
        (path.to_path_buf(), None)
    } else {
        return Err(Error::Io(format!("{} does not exist", path.display())));
    };
    let config_path = dir.join("config.json");
    let value: serde_json::Value = read_json(&config_path)?;
    let kind = if value.get("_class_name").and_then(|v| v.as_str()) == Some("AutoencoderKL") {
        let c: VaeConfig = serde_json::from_value(value).map_err(|e| Error::config(config_path.display().to_string(), e))?;
        c.validate(&config_path.display().to_string())?;
        ModelKind::Vae(c)
    } else {
        ModelKind::Generator(read_generator_config(&config_path)?)
    };
    let manifest_path = dir.join("manifest.json");
    let manifest: Option<Manifest> = if single.is_none() && manifest_path.exists() { Some(read_json(&manifest_path)?) } else { None };
    let (weights, layout, files) = match &single {
        Some(file) => {
            let bytes = std::fs::read(file).map_err(|e| Error::Io(format!("cannot read {}: {e}", file.display())))?;
            (Weights::from_safetensors(&file.display().to_string(), bytes)?, "single safetensors", vec![file.clone()])
        }
        None => {
            let weights = load_weights_dir(&dir)?;
            let mut files: Vec<std::path::PathBuf> = std::fs::read_dir(&dir)
                .map_err(|e| Error::Io(format!("cannot list {}: {e}", dir.display())))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|e| e == "safetensors") && p.file_name().is_some_and(|n| n != "io.safetensors" && n != NEIGHBOURS_FILE))
                .collect();
            files.sort();
            let layout = if manifest.is_some() {
                "rfgen manifest"
            } else if files.len() > 1 {
                "hf sharded index"
            } else {
                "single safetensors"
            };
            (weights, layout, files)
        }
    };
    Ok(Checkpoint { kind, weights, dir, layout, manifest, files })
}
