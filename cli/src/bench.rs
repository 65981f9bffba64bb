use std::cell::RefCell;
use std::path::PathBuf;
use std::rc::Rc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use burn::tensor::backend::Backend;
use clap::Args;
use rfgen_backends::{BackendKind, BackendTask};
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
    /// Compute precision; f32 is what every backend runs today.
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
    let mut euler = EulerCfg::new(&pipe.model, &batch, z0, &SampleConfig { steps, cfg })?;
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
    if a.dtype != "f32" {
        bail!("--dtype {} is not available yet: every backend computes in f32 today", a.dtype);
    }
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
    for r in 0..a.runs {
        let run = generate(&pipe, &ids, hw, a.steps, a.cfg, cache, false, device)?;
        eprintln!("run {}: {:.3} s + VAE {:.3} s", r + 1, run.loop_time.as_secs_f64(), run.vae_time.as_secs_f64());
        total += run.loop_time + run.vae_time;
        vae_total += run.vae_time;
    }
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
    println!("model: {name}  backend: {}  dtype: f32  latent {}x{}  steps {}  cfg {}  batch {}  prefix cache {}", a.backend, hw[0], hw[1], a.steps, a.cfg, a.batch, if cache { "on" } else { "off" });
    println!("s/image: {s_per_image:.4}   steps/s: {steps_per_s:.3}   peak host memory: {}", peak_rss_mib().map(|m| format!("{m:.0} MiB")).unwrap_or("n/a".into()));
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
        "model": name, "backend": a.backend, "dtype": "f32", "latent": hw, "steps": a.steps, "cfg": a.cfg,
        "batch": a.batch, "runs": a.runs, "prompt_tokens": a.prompt_tokens, "prefix_cache": cache,
        "s_per_image": s_per_image, "steps_per_s": steps_per_s, "peak_host_mib": peak_rss_mib(),
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

pub fn run(args: BenchArgs) -> Result<()> {
    let backend: BackendKind = args.backend.parse()?;
    rfgen_backends::run(backend, Task(args))?
}
