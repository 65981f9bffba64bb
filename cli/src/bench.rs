use std::cell::RefCell;
use std::path::PathBuf;
use std::rc::Rc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use burn::tensor::backend::Backend;
use clap::Args;
use rfgen_backends::{BackendKind, BackendTask, Precision};
use rfgen_core::pipeline::{ModelFiles, Pipeline, VaeFiles};
use rfgen_core::sampler::{EulerCfg, PromptBatch, SampleConfig};
use rfgen_core::structured::{image_flops, param_counts, preset, Component};

#[derive(Args, Debug)]
pub struct BenchArgs {
    /// A preset with random weights (see `rfgen-cli models`).
    #[arg(long, conflicts_with = "model")]
    preset: Option<String>,
    /// A model directory.
    #[arg(long)]
    model: Option<PathBuf>,
    /// VAE directory (its decode is timed too).
    #[arg(long)]
    vae: Option<PathBuf>,
    #[arg(long, default_value = "ndarray")]
    backend: String,
    /// Compute precision: f32 (every backend), f16 (wgpu with shader-f16, cuda), bf16 (cuda).
    #[arg(long, default_value = "f32")]
    dtype: String,
    #[arg(long, default_value_t = 30)]
    steps: usize,
    #[arg(long, default_value_t = 2.0)]
    cfg: f64,
    /// Images per generation.
    #[arg(long, default_value_t = 1)]
    batch: usize,
    /// Prompt length in tokens (BOS and the generation tag included).
    #[arg(long, default_value_t = 16)]
    prompt_tokens: usize,
    /// Image side in pixels (default: the model's latent shape).
    #[arg(long)]
    size: Option<usize>,
    /// Timed generations after one warm-up.
    #[arg(long, default_value_t = 2)]
    runs: usize,
    /// Recompute the prompt prefix every step instead of caching its keys/values.
    #[arg(long)]
    no_prefix_cache: bool,
    /// The device's peak TFLOP/s, to report the fraction achieved.
    #[arg(long)]
    peak_tflops: Option<f64>,
    /// Also write the results as JSON to this file ("-" for stdout only).
    #[arg(long)]
    json: Option<PathBuf>,
    /// Instead of timing: write reference outputs (z0, z1, decoded image + golden.json with the
    /// device, driver and burn version) for every JanusFlow fixture under --fixtures and the tiny
    /// presets (random weights, seed 0) into this directory, one folder per case. On a CUDA
    /// machine: `--backend cuda --goldens tests/goldens/cuda`.
    #[arg(long, conflicts_with_all = ["model", "preset"])]
    goldens: Option<PathBuf>,
    /// Fixture root for --goldens (default: $RFGEN_FIXTURES, else ../shared/fixtures).
    #[arg(long, requires = "goldens")]
    fixtures: Option<PathBuf>,
}

struct Task(BenchArgs);

impl BackendTask for Task {
    type Output = Result<()>;
    fn run<B: Backend>(self, device: B::Device) -> rfgen_core::Result<Result<()>> {
        Ok(bench::<B>(self.0, &device))
    }
}

/// Peak resident memory of this process (Linux), in MiB.
fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    Some(line.split_whitespace().nth(1)?.parse::<f64>().ok()? / 1024.0)
}

struct Run {
    loop_time: Duration,
    vae_time: Duration,
    parts: [Duration; 3],
}

fn generate<B: Backend>(
    pipe: &Pipeline<B>,
    ids: &[Vec<u32>],
    hw: [usize; 2],
    steps: usize,
    cfg: f64,
    cache: bool,
    profile: bool,
    device: &B::Device,
) -> Result<Run> {
    let batch = PromptBatch::new(ids, pipe.pad_id)?;
    let z0 = pipe.noise(0, ids.len(), hw);
    let parts = Rc::new(RefCell::new(([Duration::ZERO; 3], Instant::now())));
    let start = Instant::now();
    let mut euler = EulerCfg::new(&pipe.model, &batch, z0, &SampleConfig { steps, cfg, ..SampleConfig::default() })?;
    euler.cond_mut().use_prefix_cache = cache;
    if profile {
        let (shared, device) = (parts.clone(), device.clone());
        euler.cond_mut().on_stage = Some(Box::new(move |c: Component| {
            let _ = B::sync(&device);
            let mut p = shared.borrow_mut();
            let now = Instant::now();
            let last = p.1;
            let i = match c {
                Component::Encoder => 0,
                Component::Llm => 1,
                Component::Decoder => 2,
            };
            p.0[i] += now - last;
            p.1 = now;
        }));
        parts.borrow_mut().1 = Instant::now();
    }
    while euler.step().is_some() {}
    let z1 = euler.latent().clone();
    let _ = z1.to_data();
    let loop_time = start.elapsed();
    let t = Instant::now();
    if let Some(vae) = &pipe.vae {
        let _ = vae.decode_flow_latent(z1).to_data();
    }
    let parts = parts.borrow().0;
    Ok(Run { loop_time, vae_time: t.elapsed(), parts })
}

fn bench<B: Backend>(a: BenchArgs, device: &B::Device) -> Result<()> {
    if a.batch == 0 || a.runs == 0 || a.prompt_tokens < 2 {
        bail!("--batch and --runs must be positive and --prompt-tokens at least 2");
    }
    let vae = a.vae.as_deref().map(VaeFiles::read_dir).transpose()?;
    let (pipe, name) = match (&a.model, &a.preset) {
        (Some(dir), _) => (Pipeline::<B>::new(ModelFiles::read_dir(dir)?, vae, device)?, dir.display().to_string()),
        (None, Some(p)) => {
            let Some(pr) = preset(p) else { bail!("unknown preset {p:?}; `rfgen-cli models` lists them") };
            (Pipeline::<B>::random(&pr.config(), 0, vae, device)?, pr.name.to_string())
        }
        (None, None) => bail!("give --preset NAME or --model DIR"),
    };
    let c = &pipe.model.config;
    let (bos, bog) = (pipe.generation.bos_token_id.unwrap_or(1), pipe.generation.image_gen_token_id.unwrap_or(2));
    let vocab = c.language_config.vocab_size as u32;
    let mut prompt: Vec<u32> = (0..a.prompt_tokens as u32).map(|i| 3 + (i * 7) % (vocab - 3)).collect();
    prompt[0] = bos;
    *prompt.last_mut().unwrap() = bog;
    let ids = vec![prompt; a.batch];
    let factor = pipe.vae.as_ref().map(|v| v.config.upscale()).unwrap_or(8);
    let hw = match a.size {
        Some(px) if px > 0 && px % factor == 0 => [px / factor; 2],
        Some(px) => bail!("--size {px} is not a positive multiple of {factor}"),
        None => pipe.default_latent_hw(),
    };
    let cache = !a.no_prefix_cache;

    eprintln!("warm-up ...");
    generate(&pipe, &ids, hw, a.steps.min(2), a.cfg, cache, false, device)?;
    let mut total = Duration::ZERO;
    let mut vae_total = Duration::ZERO;
    let mut run_seconds = Vec::with_capacity(a.runs);
    for r in 0..a.runs {
        let run = generate(&pipe, &ids, hw, a.steps, a.cfg, cache, false, device)?;
        eprintln!("run {}: {:.3} s + VAE {:.3} s", r + 1, run.loop_time.as_secs_f64(), run.vae_time.as_secs_f64());
        total += run.loop_time + run.vae_time;
        vae_total += run.vae_time;
        run_seconds.push((run.loop_time + run.vae_time).as_secs_f64());
    }
    // The median run is robust to a busy machine; the mean is what s/image reports.
    let mut sorted = run_seconds.clone();
    sorted.sort_by(f64::total_cmp);
    let median = if sorted.len() % 2 == 1 {
        sorted[sorted.len() / 2]
    } else {
        (sorted[sorted.len() / 2 - 1] + sorted[sorted.len() / 2]) / 2.0
    };
    let profiled = generate(&pipe, &ids, hw, a.steps, a.cfg, cache, true, device)?;

    let images = (a.runs * a.batch) as f64;
    let s_per_image = total.as_secs_f64() / images;
    let steps_per_s = (a.runs * a.steps) as f64 / (total - vae_total).as_secs_f64();
    let [_, enc, dec] = param_counts::<B>(c, device);
    let flops = image_flops(c, a.prompt_tokens, hw, a.steps, cache, enc, dec, pipe.vae.as_ref().map(|v| &v.config));
    let tflops = flops.total() / s_per_image / 1e12;
    let [pe, pl, pd] = profiled.parts.map(|d| d.as_secs_f64());
    let split_total = (pe + pl + pd + profiled.vae_time.as_secs_f64()).max(1e-12);
    let pct = |x: f64| 100.0 * x / split_total;
    println!("model: {name}  backend: {}  dtype: {}  latent {}x{}  steps {}  cfg {}  batch {}  prefix cache {}", a.backend, a.dtype, hw[0], hw[1], a.steps, a.cfg, a.batch, if cache { "on" } else { "off" });
    println!("s/image: {s_per_image:.4} (median run {:.4})   steps/s: {steps_per_s:.3}   peak host memory: {}", median / a.batch as f64, peak_rss_mib().map(|m| format!("{m:.0} MiB")).unwrap_or("n/a".into()));
    println!(
        "split (profiled run, synchronised): llm {:.1}%  encoder {:.1}%  decoder {:.1}%  vae {:.1}%",
        pct(pl),
        pct(pe),
        pct(pd),
        pct(profiled.vae_time.as_secs_f64())
    );
    println!(
        "FLOP/image: {:.3e} (llm {:.3e}, encoder {:.3e}, decoder {:.3e}, vae {:.3e})   achieved {:.4} TFLOP/s{}",
        flops.total(),
        flops.llm,
        flops.encoder,
        flops.decoder,
        flops.vae,
        tflops,
        a.peak_tflops.map(|p| format!(" = {:.2}% of {p} TFLOP/s peak", 100.0 * tflops / p)).unwrap_or_default()
    );
    let json = serde_json::json!({
        "model": name, "backend": a.backend, "dtype": a.dtype, "latent": hw, "steps": a.steps, "cfg": a.cfg,
        "batch": a.batch, "runs": a.runs, "prompt_tokens": a.prompt_tokens, "prefix_cache": cache,
        "s_per_image": s_per_image, "s_per_image_median": median / a.batch as f64, "run_seconds": run_seconds,
        "steps_per_s": steps_per_s, "peak_host_mib": peak_rss_mib(),
        "split_seconds": {"llm": pl, "encoder": pe, "decoder": pd, "vae": profiled.vae_time.as_secs_f64()},
        "flop_per_image": {"total": flops.total(), "llm": flops.llm, "encoder": flops.encoder, "decoder": flops.decoder, "vae": flops.vae},
        "achieved_tflops": tflops, "peak_tflops": a.peak_tflops,
        "fraction_of_peak": a.peak_tflops.map(|p| tflops / p),
    });
    match a.json.as_deref() {
        Some(p) if p.as_os_str() == "-" => println!("{json}"),
        Some(p) => std::fs::write(p, serde_json::to_string_pretty(&json)?).with_context(|| format!("cannot write {}", p.display()))?,
        None => {}
    }
    Ok(())
}

pub fn run(mut args: BenchArgs) -> Result<()> {
    let backend: BackendKind = args.backend.parse()?;
    let precision: Precision = args.dtype.parse()?;
    args.dtype = precision.name().to_string();
    if args.goldens.is_some() {
        return rfgen_backends::run_with_precision(backend, precision, goldens::Task(args))?;
    }
    rfgen_backends::run_with_precision(backend, precision, Task(args))?
}

/// `--goldens OUT`: reference outputs for tests/goldens/cuda (read by tests/cuda_goldens.rs).
mod goldens {
    use std::path::{Path, PathBuf};

    use anyhow::{bail, Context, Result};
    use burn::tensor::{backend::Backend, Tensor, TensorData};
    use rfgen_backends::BackendTask;
    use rfgen_core::pipeline::{ModelFiles, Pipeline, VaeFiles};
    use rfgen_core::sampler::SampleConfig;
    use rfgen_core::structured::preset;
    use safetensors::{Dtype, SafeTensors};

    use super::BenchArgs;
    use crate::output::{write_atomic, write_safetensors, Named};

    /// The burn release rfgen is pinned to (`=0.21.0` in Cargo.toml).
    const BURN_VERSION: &str = "0.21.0";
    /// Randomly initialised presets in the goldens: (name, weight seed).
    const PRESETS: [(&str, u64); 4] = [("baseline-tiny", 0), ("encoder-tiny", 0), ("decoder-tiny", 0), ("both-tiny", 0)];
    const PRESET_STEPS: usize = 4;

    pub struct Task(pub BenchArgs);

    impl BackendTask for Task {
        type Output = Result<()>;
        fn run<B: Backend>(self, device: B::Device) -> rfgen_core::Result<Result<()>> {
            Ok(write_all::<B>(&self.0, &device))
        }
    }

    fn config_kind(dir: &Path) -> Option<&'static str> {
        let text = std::fs::read_to_string(dir.join("config.json")).ok()?;
        let c: serde_json::Value = serde_json::from_str(&text).ok()?;
        if c.get("language_config").is_some() && c.get("vision_gen_enc_config").is_some() {
            Some("janusflow")
        } else if c.get("_class_name").and_then(|v| v.as_str()) == Some("AutoencoderKL") {
            Some("vae")
        } else {
            None
        }
    }

    fn run_cmd(cmd: &str, args: &[&str]) -> Option<String> {
        let out = std::process::Command::new(cmd).args(args).output().ok()?;
        out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    /// What ran the goldens: GPU, driver, CUDA, burn and rfgen versions.
    fn environment(a: &BenchArgs) -> serde_json::Value {
        let smi = run_cmd("nvidia-smi", &["--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"]);
        let cuda = run_cmd("nvidia-smi", &[]).and_then(|s| {
            s.lines().find_map(|l| l.find("CUDA Version:").map(|i| l[i + 13..].trim().trim_end_matches('|').trim().to_string()))
        });
        let driver = std::fs::read_to_string("/proc/driver/nvidia/version").ok().and_then(|s| s.lines().next().map(str::to_string));
        serde_json::json!({
            "backend": a.backend, "dtype": a.dtype,
            "gpu": smi, "cuda_version": cuda, "nvidia_driver": driver,
            "burn": BURN_VERSION, "rfgen": env!("CARGO_PKG_VERSION"),
            "os": std::env::consts::OS, "arch": std::env::consts::ARCH,
            "created_unix": std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0),
        })
    }

    struct Io {
        tensors: Vec<(String, Vec<usize>, Vec<u8>, Dtype)>,
    }

    impl Io {
        fn read(path: &Path) -> Result<Self> {
            let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
            let st = SafeTensors::deserialize(&bytes).with_context(|| format!("{} is not safetensors", path.display()))?;
            let tensors = st.tensors().into_iter().map(|(n, v)| (n, v.shape().to_vec(), v.data().to_vec(), v.dtype())).collect();
            Ok(Self { tensors })
        }
        fn get(&self, name: &str) -> Result<&(String, Vec<usize>, Vec<u8>, Dtype)> {
            self.tensors.iter().find(|t| t.0 == name).with_context(|| format!("io.safetensors has no {name}"))
        }
        fn i64(&self, name: &str) -> Result<(Vec<usize>, Vec<i64>)> {
            let t = self.get(name)?;
            if t.3 != Dtype::I64 {
                bail!("{name}: expected int64");
            }
            Ok((t.1.clone(), t.2.chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().unwrap())).collect()))
        }
        fn f32(&self, name: &str) -> Result<(Vec<usize>, Vec<f32>)> {
            let t = self.get(name)?;
            if t.3 != Dtype::F32 {
                bail!("{name}: expected float32");
            }
            Ok((t.1.clone(), t.2.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect()))
        }
    }

    fn to_vec<B: Backend, const D: usize>(t: Tensor<B, D>) -> Vec<f32> {
        t.into_data().convert::<f32>().to_vec::<f32>().expect("f32")
    }

    fn write_all<B: Backend>(a: &BenchArgs, device: &B::Device) -> Result<()> {
        let out = a.goldens.clone().expect("--goldens");
        let root = a
            .fixtures
            .clone()
            .or_else(|| std::env::var_os("RFGEN_FIXTURES").map(PathBuf::from))
            .unwrap_or_else(|| PathBuf::from("../shared/fixtures"));
        let mut dirs: Vec<PathBuf> = std::fs::read_dir(&root)
            .with_context(|| format!("cannot list the fixtures at {}", root.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.is_dir())
            .collect();
        dirs.sort();
        let vae_dir = dirs.iter().find(|d| config_kind(d) == Some("vae")).cloned();
        let env = environment(a);
        std::fs::create_dir_all(&out).with_context(|| format!("cannot create {}", out.display()))?;
        let mut written = 0;

        for dir in dirs.iter().filter(|d| config_kind(d) == Some("janusflow")) {
            let name = dir.file_name().unwrap().to_string_lossy().to_string();
            let gen: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.join("generation.json"))?)?;
            let io = Io::read(&dir.join("io.safetensors"))?;
            let (ids_shape, ids) = io.i64("input_ids")?;
            let (_, lengths) = io.i64("prompt_lengths")?;
            let (z0_shape, z0) = io.f32("z0")?;
            let len = ids_shape[1];
            let prompts: Vec<Vec<u32>> = lengths
                .iter()
                .enumerate()
                .map(|(i, &l)| ids[i * len + len - l as usize..(i + 1) * len].iter().map(|&x| x as u32).collect())
                .collect();
            let steps = gen["num_inference_steps"].as_u64().context("num_inference_steps")? as usize;
            let cfg = gen["cfg_weight"].as_f64().context("cfg_weight")?;
            let vae = vae_dir.as_deref().map(VaeFiles::read_dir).transpose()?;
            let pipe = Pipeline::<B>::new(ModelFiles::read_dir(dir)?, vae, device)?;
            let model = serde_json::json!({"fixture": name});
            let vae_name = vae_dir.as_ref().map(|d| d.file_name().unwrap().to_string_lossy().to_string());
            one::<B>(&out.join(&name), &pipe, model, vae_name, prompts, (z0_shape, z0), steps, cfg, &env, device)?;
            written += 1;
        }

        for (p, seed) in PRESETS {
            let pr = preset(p).context("preset")?;
            let vae = vae_dir.as_deref().map(VaeFiles::read_dir).transpose()?;
            let config = pr.config();
            let vae = vae.filter(|v| v.config.latent_channels == config.latent_channels);
            let vae_name = vae.as_ref().and(vae_dir.as_ref()).map(|d| d.file_name().unwrap().to_string_lossy().to_string());
            let pipe = Pipeline::<B>::random(&config, seed, vae, device)?;
            let (bos, bog) = (pipe.generation.bos_token_id.unwrap_or(1), pipe.generation.image_gen_token_id.unwrap_or(2));
            let vocab = config.language_config.vocab_size as u32;
            // Two prompts of different lengths (left padding), fixed ids.
            let prompts: Vec<Vec<u32>> = [7u32, 4]
                .iter()
                .map(|&n| {
                    let mut v: Vec<u32> = (0..n).map(|i| 5 + (i * 11 + n) % (vocab - 5)).collect();
                    v[0] = bos;
                    *v.last_mut().unwrap() = bog;
                    v
                })
                .collect();
            let hw = pipe.default_latent_hw();
            let z0 = to_vec(pipe.noise(seed, prompts.len(), hw));
            let z0_shape = vec![prompts.len(), config.latent_channels, hw[0], hw[1]];
            let model = serde_json::json!({"preset": p, "seed": seed});
            one::<B>(&out.join(p), &pipe, model, vae_name, prompts, (z0_shape, z0), PRESET_STEPS, 2.0, &env, device)?;
            written += 1;
        }
        eprintln!("wrote {written} golden folders under {}", out.display());
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn one<B: Backend>(
        dir: &Path,
        pipe: &Pipeline<B>,
        model: serde_json::Value,
        vae: Option<String>,
        prompts: Vec<Vec<u32>>,
        z0: (Vec<usize>, Vec<f32>),
        steps: usize,
        cfg: f64,
        env: &serde_json::Value,
        device: &B::Device,
    ) -> Result<()> {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let shape: [usize; 4] = z0.0.clone().try_into().map_err(|_| anyhow::anyhow!("z0 must be rank 4"))?;
        let z0_t = Tensor::<B, 4>::from_data(TensorData::new(z0.1.clone(), shape), device);
        let out = pipe.generate(&prompts, z0_t, &SampleConfig { steps, cfg, ..SampleConfig::default() }, |_| {})?;
        let mut tensors = vec![Named { name: "z0".into(), shape: z0.0.clone(), data: z0.1 }];
        tensors.push(Named { name: "z1".into(), shape: out.z1.dims().to_vec(), data: to_vec(out.z1) });
        if let Some(img) = out.images {
            tensors.push(Named { name: "image".into(), shape: img.dims().to_vec(), data: to_vec(img) });
        }
        if tensors.iter().any(|t| t.data.iter().any(|x| !x.is_finite())) {
            bail!("{}: non-finite outputs", dir.display());
        }
        write_safetensors(&dir.join("io.safetensors"), &tensors)?;
        let meta = serde_json::json!({
            "format": "rfgen-golden-1",
            "model": model, "vae": vae, "prompts": prompts, "steps": steps, "cfg": cfg,
            "tensors": {"z0": "initial noise [n,c,h,w]", "z1": "final latent [n,c,h,w]", "image": "VAE decode of z1 [n,3,H,W] in [-1,1], unclipped"},
            "environment": env,
        });
        write_atomic(&dir.join("golden.json"), serde_json::to_string_pretty(&meta)?.as_bytes())?;
        eprintln!("wrote {}", dir.display());
        Ok(())
    }
}
