//! `rfgen-cli train-vae`: train a small diffusers AutoencoderKL on a dataset directory (the loop
//! is `rfgen_core::vae::train::train_vae`).

use std::io::Write;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use burn::tensor::backend::AutodiffBackend;
use clap::Args;
use rfgen_backends::{BackendKind, TrainTask};
use rfgen_core::data::Dataset;
use rfgen_core::vae::train::{checkpoint_config, train_vae, VaeRunOptions, VaeRunReport, VaeTrainConfig};

#[derive(Args, Debug, Clone)]
pub struct TrainVaeArgs {
    /// Dataset directory (images.safetensors + captions.json; trains on the "train" split).
    #[arg(long)]
    data: PathBuf,
    /// Output directory: config.json + diffusion_pytorch_model.safetensors (diffusers layout),
    /// checkpoints/, train_log.jsonl, metrics.json.
    #[arg(long)]
    out: PathBuf,
    /// Total optimizer steps (a resumed run continues up to this count).
    #[arg(long, default_value_t = 2000)]
    steps: u64,
    #[arg(long)]
    batch: Option<usize>,
    /// Peak learning rate (warmup, then cosine decay to lr * min-lr-ratio at --steps).
    #[arg(long)]
    lr: Option<f64>,
    #[arg(long)]
    warmup: Option<u64>,
    #[arg(long)]
    min_lr_ratio: Option<f64>,
    /// Weight of the KL term (diffusers' per-image KL sum, batch mean) against the per-pixel MSE.
    #[arg(long)]
    kl_weight: Option<f64>,
    /// Weight of an added per-pixel L1 term.
    #[arg(long)]
    l1_weight: Option<f64>,
    /// Channels per block, e.g. 32,64,64 (downsampling factor 2^(blocks-1)).
    #[arg(long, value_delimiter = ',')]
    channels: Option<Vec<usize>>,
    #[arg(long)]
    latent_channels: Option<usize>,
    /// ResNet blocks per encoder level (the decoder has one more).
    #[arg(long)]
    layers_per_block: Option<usize>,
    /// Leave out the mid-block attention.
    #[arg(long)]
    no_attention: bool,
    #[arg(long)]
    ema_decay: Option<f64>,
    /// Initial bias of the posterior log-variance (e.g. -6: a nearly deterministic start).
    #[arg(long, allow_negative_numbers = true)]
    init_logvar: Option<f64>,
    /// Scale of the initial weights of each ResNet block's second conv (0: identity blocks).
    #[arg(long)]
    residual_init_scale: Option<f64>,
    /// Export the current weights instead of the EMA.
    #[arg(long)]
    export_current: bool,
    #[arg(long)]
    seed: Option<u64>,
    /// ndarray (CPU), wgpu or cuda.
    #[arg(long, default_value = "ndarray")]
    backend: String,
    /// Continue from a checkpoint directory (or an output directory holding checkpoints/).
    #[arg(long)]
    resume: Option<PathBuf>,
    /// Checkpoint every N steps (0: only at the end).
    #[arg(long, default_value_t = 500)]
    ckpt_every: u64,
    /// Stop after this many minutes of training (then checkpoint, export and evaluate).
    #[arg(long)]
    minutes: Option<f64>,
    /// Progress line every N steps.
    #[arg(long, default_value_t = 10)]
    log_every: u64,
}

struct Task {
    config: Option<VaeTrainConfig>,
    data: Dataset,
    opts: VaeRunOptions,
}

impl TrainTask for Task {
    type Output = VaeRunReport;
    fn run<B: AutodiffBackend>(self, device: B::Device) -> rfgen_core::Result<VaeRunReport> {
        train_vae::<B>(self.config, &self.data, &self.opts, &device, &mut |line| {
            println!("{line}");
            let _ = std::io::stdout().flush();
        })
    }
}

/// The settings a fresh run starts with.
fn fresh_config(a: &TrainVaeArgs, image_size: usize) -> Result<VaeTrainConfig> {
    let channels = a.channels.clone().unwrap_or_else(|| vec![32, 64, 64]);
    if channels.is_empty() || channels.contains(&0) {
        bail!("--channels needs one or more positive widths, e.g. 32,64,64");
    }
    let mut c = VaeTrainConfig::small(&channels, a.latent_channels.unwrap_or(4), image_size);
    c.vae.layers_per_block = a.layers_per_block.unwrap_or(1);
    c.vae.mid_block_add_attention = !a.no_attention;
    c.schedule_steps = a.steps;
    c.batch = a.batch.unwrap_or(c.batch);
    c.lr = a.lr.unwrap_or(c.lr);
    c.warmup = a.warmup.unwrap_or(c.warmup);
    c.min_lr_ratio = a.min_lr_ratio.unwrap_or(c.min_lr_ratio);
    c.kl_weight = a.kl_weight.unwrap_or(c.kl_weight);
    c.l1_weight = a.l1_weight.unwrap_or(c.l1_weight);
    c.ema_decay = a.ema_decay.unwrap_or(c.ema_decay);
    c.seed = a.seed.unwrap_or(c.seed);
    c.init_logvar = a.init_logvar.unwrap_or(c.init_logvar);
    c.residual_init_scale = a.residual_init_scale.unwrap_or(c.residual_init_scale);
    if c.vae.layers_per_block == 0 {
        bail!("--layers-per-block must be at least 1");
    }
    Ok(c)
}

/// On resume the checkpoint fixes the settings; an option given anyway must agree with it.
fn check_resume(a: &TrainVaeArgs, c: &VaeTrainConfig) -> Result<()> {
    let mut differ = Vec::new();
    let mut cmp = |name: &str, given: Option<String>, have: String| {
        if let Some(g) = given {
            if g != have {
                differ.push(format!("{name} {g} (checkpoint: {have})"));
            }
        }
    };
    let s = |x: &dyn std::fmt::Debug| format!("{x:?}");
    cmp("--batch", a.batch.map(|x| s(&x)), s(&c.batch));
    cmp("--lr", a.lr.map(|x| s(&x)), s(&c.lr));
    cmp("--warmup", a.warmup.map(|x| s(&x)), s(&c.warmup));
    cmp("--min-lr-ratio", a.min_lr_ratio.map(|x| s(&x)), s(&c.min_lr_ratio));
    cmp("--kl-weight", a.kl_weight.map(|x| s(&x)), s(&c.kl_weight));
    cmp("--l1-weight", a.l1_weight.map(|x| s(&x)), s(&c.l1_weight));
    cmp("--channels", a.channels.as_ref().map(|x| s(x)), s(&c.vae.block_out_channels));
    cmp("--latent-channels", a.latent_channels.map(|x| s(&x)), s(&c.vae.latent_channels));
    cmp("--layers-per-block", a.layers_per_block.map(|x| s(&x)), s(&c.vae.layers_per_block));
    cmp("--no-attention", a.no_attention.then(|| s(&false)), s(&c.vae.mid_block_add_attention));
    cmp("--ema-decay", a.ema_decay.map(|x| s(&x)), s(&c.ema_decay));
    cmp("--seed", a.seed.map(|x| s(&x)), s(&c.seed));
    cmp("--init-logvar", a.init_logvar.map(|x| s(&x)), s(&c.init_logvar));
    cmp("--residual-init-scale", a.residual_init_scale.map(|x| s(&x)), s(&c.residual_init_scale));
    if !differ.is_empty() {
        bail!("the checkpoint fixes the run's settings; these options differ: {}", differ.join(", "));
    }
    Ok(())
}

/// glibc returns every large freed block to the kernel, so each training step page-faults its
/// big temporaries in again; keep freed memory in the process instead.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn keep_freed_memory() {
    extern "C" {
        fn mallopt(param: i32, value: i32) -> i32;
    }
    const M_TRIM_THRESHOLD: i32 = -1;
    const M_MMAP_MAX: i32 = -4;
    // SAFETY: mallopt only changes allocator tuning parameters; called before the big allocations.
    unsafe {
        mallopt(M_MMAP_MAX, 0);
        mallopt(M_TRIM_THRESHOLD, i32::MAX);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn keep_freed_memory() {}

pub fn run(args: TrainVaeArgs) -> Result<()> {
    keep_freed_memory();
    let kind: BackendKind = args.backend.parse()?;
    if args.steps == 0 {
        bail!("--steps must be at least 1");
    }
    if args.minutes.is_some_and(|m| !(m.is_finite() && m > 0.0)) {
        bail!("--minutes must be positive");
    }
    let data = rfgen_core::data::load_dir(&args.data).with_context(|| format!("dataset {}", args.data.display()))?;
    let config = match &args.resume {
        Some(path) => {
            let c = checkpoint_config(path)?;
            check_resume(&args, &c)?;
            None
        }
        None => {
            let c = fresh_config(&args, data.size)?;
            c.validate()?;
            Some(c)
        }
    };
    let opts = VaeRunOptions {
        out: args.out.clone(),
        steps: args.steps,
        ckpt_every: args.ckpt_every,
        minutes: args.minutes,
        resume: args.resume.clone(),
        log_every: args.log_every,
        export_ema: !args.export_current,
        ..Default::default()
    };
    // burn-ndarray's own convolution backward is very slow; im2col + GEMM is many times faster.
    rfgen_core::vae::set_im2col(kind == BackendKind::Ndarray);
    let report = rfgen_backends::run_train(kind, Task { config, data, opts })?;
    println!(
        "wrote {} (held-out PSNR {:.2} dB, {:.1} img/s)",
        args.out.display(),
        report.psnr_heldout,
        report.images_per_second
    );
    Ok(())
}
