use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use burn::tensor::{backend::Backend, Tensor, TensorData};
use clap::Args;
use rfgen_backends::{BackendKind, BackendTask, Precision};
use rfgen_core::pipeline::{ImageInit, ModelFiles, Pipeline, VaeFiles};
use rfgen_core::janusflow::GenerationConfig;
use rfgen_core::structured::preset;

use crate::output::{check_output, grid, png_paths, read_noise, write_png, write_safetensors, Named};
use crate::progress::Progress;

#[derive(Args, Debug, Clone)]
pub struct SampleArgs {
    /// Model directory (config.json, safetensors, optional generation.json, tokenizer.json, vae/);
    /// default: the trained emoji model in models/default.
    #[arg(long, conflicts_with = "preset")]
    model: Option<PathBuf>,
    /// A preset (see `rfgen-cli models`), with --init random.
    #[arg(long)]
    preset: Option<String>,
    /// How to initialise a preset's weights: random (seeded by --seed).
    #[arg(long, requires = "preset")]
    init: Option<String>,
    /// diffusers AutoencoderKL directory; without it only the latents are produced (see --dump).
    #[arg(long)]
    vae: Option<PathBuf>,
    /// A prompt; repeat for a batch.
    #[arg(long = "prompt")]
    prompts: Vec<String>,
    /// A full token sequence [BOS, ..., BOG] (bypasses tokenizer and template), e.g. 1,5,9; repeatable.
    #[arg(long = "token-ids", value_delimiter = ';')]
    token_ids: Vec<String>,
    /// Euler steps [default: the model's generation num_inference_steps, else 30].
    #[arg(long)]
    steps: Option<usize>,
    /// Classifier-free guidance weight w (v = w v_cond - (w - 1) v_uncond) [default: the model's
    /// generation cfg_weight, else 2].
    #[arg(long, allow_negative_numbers = true)]
    cfg: Option<f64>,
    /// Timestep shift of the step grid (σ' = sσ/(1+(s−1)σ), as SD3 and diffusers' flow-match
    /// scheduler); above 1 spends more steps near the noise [default: the model's generation
    /// shift, else 1 = the uniform grid].
    #[arg(long)]
    shift: Option<f64>,
    /// Neighbour guidance: each prompt is also guided by its N nearest training captions in the
    /// model's caption index (neighbours.safetensors, by the LLM's own text features); 0 turns it
    /// off. A prompt that is itself a training caption is drawn with plain guidance [default: the
    /// model's generation neighbours, else 1 when the model has an index].
    #[arg(long)]
    neighbours: Option<usize>,
    /// The neighbours' share of the guidance weight (the prompt keeps the rest) [default: the
    /// model's generation neighbour_share, else 0.5].
    #[arg(long)]
    neighbour_share: Option<f32>,
    /// Retrieval start: a prompt that is no training caption starts from its nearest neighbour's
    /// training image (stored in the caption index) noised to this img2img strength, in (0, 1];
    /// 0 starts from noise [default: the model's generation neighbour_init, else 0].
    #[arg(long, conflicts_with = "init_images")]
    neighbour_init: Option<f64>,
    /// Image-to-image: start from this PNG (center-cropped and resized to the output size) instead
    /// of pure noise; one for every prompt, or repeat it once per prompt.
    #[arg(long = "init-image")]
    init_images: Vec<PathBuf>,
    /// How much of the init image is redrawn, in (0, 1] (diffusers' img2img strength): the last
    /// floor(steps · strength) steps run, from the image noised to where they begin.
    #[arg(long, requires = "init_images")]
    strength: Option<f64>,
    /// Seed of the initial noise.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Initial noise: safetensors with `z0` [c,h,w] or [n,c,h,w]; overrides --seed and sets the size.
    #[arg(long)]
    noise: Option<PathBuf>,
    /// Image size in pixels (square) when no --noise is given; default from generation.json or 384.
    #[arg(long)]
    size: Option<usize>,
    /// ndarray (CPU), wgpu or cuda.
    #[arg(long, default_value = "ndarray")]
    backend: String,
    /// Compute precision: f32 (every backend), f16 (wgpu with shader-f16, cuda), bf16 (cuda).
    #[arg(long, default_value = "f32")]
    dtype: String,
    /// Write z1, the guided velocity of every step (v_cfg) and the decoded images to a safetensors file.
    #[arg(long)]
    dump: Option<PathBuf>,
    /// Output PNG (one per prompt: name-0.png, name-1.png, ... when several) [default: output.png
    /// when the model has a VAE and no --dump is given].
    #[arg(short = 'o', long = "output")]
    output: Option<PathBuf>,
    /// Write all images into one grid PNG instead of one file per prompt.
    #[arg(long)]
    grid: bool,
}

/// diffusers' img2img default.
const DEFAULT_STRENGTH: f64 = 0.8;

/// An init image as RGB8 `side × side`: alpha over white, center crop, resize.
fn read_init_image(path: &std::path::Path, side: usize) -> Result<Vec<u8>> {
    use rfgen_core::data::pixels::{composite_on_white, fit_square};
    let bytes = std::fs::read(path).with_context(|| format!("cannot read --init-image {}", path.display()))?;
    let (w, h, rgba) = rfgen_core::data::pixels::decode_png_rgba(&path.display().to_string(), &bytes)
        .with_context(|| format!("--init-image {} is not a readable PNG", path.display()))?;
    Ok(fit_square(&composite_on_white(w, h, &rgba), side).data)
}

/// Where the image goes when neither -o nor --dump is given.
const DEFAULT_OUTPUT: &str = "output.png";

pub fn run(args: SampleArgs) -> Result<()> {
    let backend: BackendKind = args.backend.parse()?;
    let precision: Precision = args.dtype.parse()?;
    if args.prompts.is_empty() && args.token_ids.is_empty() {
        bail!("give at least one --prompt or --token-ids");
    }
    if !args.prompts.is_empty() && !args.token_ids.is_empty() {
        bail!("give either --prompt or --token-ids, not both");
    }
    GenerationConfig::default().sample_config(args.steps, args.cfg, args.shift).validate()?;
    if args.neighbours != Some(0) && (args.neighbours.is_some() || args.neighbour_share.is_some()) {
        let count = args.neighbours.unwrap_or(rfgen_core::neighbours::DEFAULT_COUNT);
        let share = args.neighbour_share.unwrap_or(rfgen_core::neighbours::DEFAULT_SHARE);
        rfgen_core::neighbours::NeighbourGuidance { count, share, init: None }.validate()?;
    }
    if let Some(s) = args.neighbour_init.filter(|s| *s != 0.0) {
        if !(s.is_finite() && s > 0.0 && s <= 1.0) {
            bail!("--neighbour-init must be in (0, 1] (0 starts from noise), got {s}");
        }
        let config = GenerationConfig::default().sample_config(args.steps, args.cfg, args.shift);
        rfgen_core::pipeline::strength_start_step(s, &config)?;
    }
    if let Some(s) = args.strength {
        let config = GenerationConfig::default().sample_config(args.steps, args.cfg, args.shift);
        rfgen_core::pipeline::strength_start_step(s, &config)?;
    }
    let n_prompts = args.prompts.len().max(args.token_ids.len());
    if args.init_images.len() > 1 && args.init_images.len() != n_prompts {
        bail!("{} --init-image for {n_prompts} prompt(s): give one for all, or one per prompt", args.init_images.len());
    }
    if let Some(p) = args.init_images.iter().find(|p| !p.is_file()) {
        bail!("--init-image {}: no such file", p.display());
    }
    let mut args = args;
    if args.model.is_none() && args.preset.is_none() {
        args.model = Some(default_model_dir()?);
    }
    // Before the VAE is looked for inside it (a missing model is not a missing VAE).
    if let Some(dir) = args.model.as_ref().filter(|d| !d.is_dir()) {
        bail!("--model {}: the directory does not exist", dir.display());
    }
    if let Some(dir) = args.model.as_ref().filter(|d| !d.join("config.json").is_file()) {
        bail!("--model {}: not a model directory (it has no config.json)", dir.display());
    }
    if args.vae.is_none() {
        args.vae = args.model.as_ref().map(|m| m.join("vae")).filter(|v| v.is_dir());
    }
    if args.output.is_some() && args.vae.is_none() {
        bail!("-o needs --vae to decode images (without a VAE use --dump for the latents)");
    }
    if args.output.is_none() && args.dump.is_none() {
        if args.vae.is_none() {
            bail!("nothing to write: give -o FILE.png (with --vae) and/or --dump FILE.safetensors");
        }
        // As stable-diffusion.cpp does: an image in the current directory.
        args.output = Some(PathBuf::from(DEFAULT_OUTPUT));
    }
    if let Some(path) = &args.output {
        check_output("-o", path, Some("png"))?;
    }
    if let Some(path) = &args.dump {
        check_output("--dump", path, None)?;
    }
    match (&args.model, &args.preset, args.init.as_deref()) {
        (Some(_), None, _) => {}
        (None, Some(_), Some("random")) => {}
        (None, Some(_), Some(other)) => bail!("--init {other:?} is not supported (only random)"),
        (None, Some(_), None) => bail!("--preset needs --init random (no trained weights ship for presets yet)"),
        _ => bail!("give --model DIR or --preset NAME --init random"),
    }
    let token_ids = args.token_ids.iter().map(|s| parse_ids(s)).collect::<Result<Vec<_>>>()?;
    rfgen_backends::run_with_precision(backend, precision, SampleTask { args, token_ids })?
}

/// The model `sample` uses when neither --model nor --preset is given: `$RFGEN_DEFAULT_MODEL`, else
/// the repository's models/default (trained by rfgen itself; see README "The default model").
pub fn default_model_dir() -> Result<PathBuf> {
    let dir = match std::env::var_os("RFGEN_DEFAULT_MODEL") {
        Some(d) => PathBuf::from(d),
        None => crate::output::repo_model_dir("default"),
    };
    if !dir.join("config.json").is_file() {
        bail!("no --model given and the default model is missing at {} (set RFGEN_DEFAULT_MODEL or pass --model)", dir.display());
    }
    Ok(dir)
}

fn parse_ids(s: &str) -> Result<Vec<u32>> {
    s.split(',')
        .map(|x| x.trim())
        .filter(|x| !x.is_empty())
        .map(|x| x.parse::<u32>().with_context(|| format!("--token-ids: {x:?} is not a token id")))
        .collect()
}

struct SampleTask {
    args: SampleArgs,
    token_ids: Vec<Vec<u32>>,
}

impl BackendTask for SampleTask {
    type Output = Result<()>;

    fn run<B: Backend>(self, device: B::Device) -> rfgen_core::Result<Result<()>> {
        Ok(self.sample::<B>(&device))
    }
}

impl SampleTask {
    fn sample<B: Backend>(self, device: &B::Device) -> Result<()> {
        let a = &self.args;
        let vae = a.vae.as_deref().map(VaeFiles::read_dir).transpose()?;
        let vae_factor = vae.as_ref().map(|v| v.config.upscale()).unwrap_or(8);
        let pipe = match (&a.model, &a.preset) {
            (Some(dir), _) => Pipeline::<B>::new(ModelFiles::read_dir(dir)?, vae, device)?,
            (None, Some(name)) => {
                let Some(p) = preset(name) else { bail!("unknown preset {name:?}; `rfgen-cli models` lists them") };
                Pipeline::<B>::random(&p.config(), a.seed, vae, device)?
            }
            (None, None) => unreachable!("checked in run"),
        };
        let prompts = if self.token_ids.is_empty() { pipe.tokenize(&a.prompts)? } else { self.token_ids.clone() };
        let n = prompts.len();
        // An init image replaces the retrieval start.
        let neighbour_init = if a.init_images.is_empty() { a.neighbour_init } else { Some(0.0) };
        let guidance = pipe.neighbour_guidance(a.neighbours, a.neighbour_share, neighbour_init)?;
        if guidance.is_some() && !self.token_ids.is_empty() && (a.neighbours.is_some() || a.neighbour_init.is_some()) {
            bail!("--neighbours and --neighbour-init need text prompts (--prompt), not --token-ids");
        }

        let z0 = match &a.noise {
            Some(path) => {
                let (shape, data) = read_noise(path, n)?;
                let shape: [usize; 4] = shape.try_into().expect("rank 4");
                Tensor::<B, 4>::from_data(TensorData::new(data, shape), device)
            }
            None => {
                let hw = match a.size {
                    Some(px) => {
                        if px == 0 || px % vae_factor != 0 {
                            bail!("--size {px} is not a positive multiple of the VAE factor {vae_factor}");
                        }
                        let max = rfgen_core::sampler::MAX_LATENT_SIDE * vae_factor;
                        if px > max {
                            bail!("--size {px} is larger than the {max} pixels rfgen accepts");
                        }
                        [px / vae_factor; 2]
                    }
                    None => pipe.default_latent_hw(),
                };
                pipe.noise(a.seed, n, hw)
            }
        };

        let config = pipe.generation.sample_config(a.steps, a.cfg, a.shift);
        config.validate()?;
        let progress = Progress::new(config.steps);
        let mut v_steps: Vec<Vec<f32>> = Vec::new();
        let keep_v = a.dump.is_some();
        let on_step = |e: &rfgen_core::sampler::StepEvent<B>| {
            if keep_v {
                v_steps.push(e.v_cfg.to_data().convert::<f32>().to_vec::<f32>().expect("f32"));
            }
            progress.step(e.step + 1, e.t);
        };
        let init = match a.init_images.is_empty() {
            true => None,
            false => {
                let [_, _, h, _] = z0.dims();
                let side = h * vae_factor;
                let images = a.init_images.iter().map(|p| read_init_image(p, side)).collect::<Result<Vec<_>>>()?;
                // One image for every prompt is encoded once.
                let latents = pipe.encode_images(&images, side)?;
                let latents = if images.len() == 1 { latents.repeat_dim(0, n) } else { latents };
                Some(ImageInit { latents, strength: a.strength.unwrap_or(DEFAULT_STRENGTH) })
            }
        };
        let out = if self.token_ids.is_empty() {
            let (out, near) = pipe.generate_prompts_from(&a.prompts, guidance, init, z0, &config, on_step)?;
            for (p, n) in a.prompts.iter().zip(near.iter().flatten()) {
                if n.iter().any(|(c, _)| c != p) {
                    let list: Vec<String> = n.iter().map(|(c, s)| format!("{c:?} ({s:.3})")).collect();
                    let start = match guidance.and_then(|g| g.init) {
                        Some(s) => format!("; starts from the image of {:?} at strength {s}", n[0].0),
                        None => String::new(),
                    };
                    eprintln!("{p:?}: also guided by {}{start}", list.join(", "));
                }
            }
            out
        } else {
            match init {
                Some(init) => {
                    let (z, start) = init.noised(z0, &config)?;
                    pipe.generate_composed_from(&[prompts], &[1.0], z, start, &config, on_step)?
                }
                None => pipe.generate(&prompts, z0, &config, on_step)?,
            }
        };

        let z1_shape = out.z1.dims().to_vec();
        let z1 = out.z1.to_data().convert::<f32>().to_vec::<f32>().expect("f32");
        if z1.iter().any(|x| !x.is_finite()) {
            bail!("the final latent contains NaN or infinite values (check the weights and --cfg)");
        }
        let image = out.images.map(|img| (img.dims(), img.to_data().convert::<f32>().to_vec::<f32>().expect("f32")));

        if let Some(path) = &a.dump {
            let mut tensors = vec![Named { name: "z1".into(), shape: z1_shape.clone(), data: z1 }];
            let mut v_shape = vec![v_steps.len()];
            v_shape.extend(&z1_shape);
            tensors.push(Named { name: "v_cfg".into(), shape: v_shape, data: v_steps.concat() });
            if let Some((dims, data)) = &image {
                tensors.push(Named { name: "image".into(), shape: dims.to_vec(), data: data.clone() });
            }
            write_safetensors(path, &tensors)?;
            eprintln!("wrote {}", path.display());
        }
        if let (Some(path), Some(([n, _, h, w], data))) = (&a.output, &image) {
            let plane = 3 * h * w;
            let rgbs: Vec<Vec<u8>> =
                (0..*n).map(|i| rfgen_core::image::to_rgb8(&data[i * plane..(i + 1) * plane], *h, *w)).collect();
            if a.grid && *n > 1 {
                let cols = (*n as f64).sqrt().ceil() as usize;
                let (g, gw, gh) = grid(&rgbs, *w, *h, cols);
                write_png(path, &g, gw, gh)?;
                eprintln!("wrote {}", path.display());
            } else {
                for (p, rgb) in png_paths(path, *n).iter().zip(&rgbs) {
                    write_png(p, rgb, *w, *h)?;
                    eprintln!("wrote {}", p.display());
                }
            }
        }
        Ok(())
    }
}
