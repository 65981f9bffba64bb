use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use burn::tensor::backend::Backend;
use clap::Args;
use rfgen_backends::{BackendKind, BackendTask};
use rfgen_core::checkpoint::StoredDtype;
use rfgen_core::convert::{convert, sha256_hex, ConvertOptions, ModelKind};
use rfgen_core::pipeline::{fold_llm_gguf, read_checkpoint};
use rfgen_core::quant::QuantScheme;

#[derive(Args, Debug)]
pub struct ConvertArgs {
    /// Source: a model or VAE directory (HF / diffusers / rfgen layout) or a .safetensors file.
    #[arg(long)]
    from: PathBuf,
    /// Output directory (rfgen layout: shards + manifest.json + config.json).
    #[arg(long)]
    to: PathBuf,
    /// Float type of the stored tensors: f32, f16 or bf16.
    #[arg(long, default_value = "f32")]
    dtype: String,
    /// Weight-only quantization of linear layers: int8 (per output channel) or int4 (group-wise).
    #[arg(long)]
    quant: Option<String>,
    /// int4 group size.
    #[arg(long, default_value_t = 32)]
    group_size: usize,
    /// Largest shard in MiB (WebGPU's default storage binding is 128 MiB).
    #[arg(long, default_value_t = 128.0)]
    shard_mb: f64,
    /// Replace an existing output directory.
    #[arg(long)]
    force: bool,
}

pub fn parse_dtype(s: &str) -> Result<StoredDtype> {
    Ok(match s {
        "f32" => StoredDtype::F32,
        "f16" => StoredDtype::F16,
        "bf16" => StoredDtype::BF16,
        other => bail!("unknown --dtype {other:?} (expected f32, f16 or bf16)"),
    })
}

struct Task(ConvertArgs);

impl BackendTask for Task {
    type Output = Result<()>;
    fn run<B: Backend>(self, device: B::Device) -> rfgen_core::Result<Result<()>> {
        Ok(run_on::<B>(self.0, &device))
    }
}

fn run_on<B: Backend>(a: ConvertArgs, device: &B::Device) -> Result<()> {
    let opts = ConvertOptions {
        dtype: parse_dtype(&a.dtype)?,
        quant: a.quant.as_deref().map(|q| QuantScheme::parse(q, a.group_size)).transpose()?,
        shard_bytes: if a.shard_mb.is_finite() && a.shard_mb > 0.0 && a.shard_mb <= 1e6 {
            (a.shard_mb * (1u64 << 20) as f64) as usize
        } else {
            bail!("--shard-mb must be a positive number of MiB, got {}", a.shard_mb)
        },
    };
    if a.to.exists() && !a.force {
        bail!("{} already exists (use --force to replace it)", a.to.display());
    }
    let mut ckpt = read_checkpoint(&a.from)?;
    // A model trained on a GGUF LLM stores only what differs from it; the converted directory is
    // self-contained (the LLM's weights and tokenizer.json go in), so the browser can load it.
    let mut gguf_tokenizer = None;
    if let ModelKind::Generator(config) = &mut ckpt.kind {
        gguf_tokenizer = fold_llm_gguf(config, &mut ckpt.weights)?;
        config.llm_gguf = None;
    }
    let files: Vec<serde_json::Value> = ckpt
        .files
        .iter()
        .map(|f| {
            let bytes = std::fs::read(f).with_context(|| format!("cannot read {}", f.display()))?;
            Ok(serde_json::json!({"file": f.file_name().map(|n| n.to_string_lossy()), "bytes": bytes.len(), "sha256": sha256_hex(&bytes)}))
        })
        .collect::<Result<_>>()?;
    let source = serde_json::json!({"path": a.from.display().to_string(), "layout": ckpt.layout, "files": files});
    let out = convert::<B>(&ckpt.weights, &ckpt.kind, &opts, source, device)?;

    // Everything goes to a temporary directory first: a failure leaves nothing behind.
    let tmp = a.to.with_file_name(format!(
        ".{}.partial-{}",
        a.to.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default(),
        std::process::id()
    ));
    let result = write_dir(&tmp, &ckpt.dir, &ckpt.kind, &out, gguf_tokenizer.as_deref());
    if let Err(e) = result {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e);
    }
    if a.to.exists() {
        std::fs::remove_dir_all(&a.to).with_context(|| format!("cannot replace {}", a.to.display()))?;
    }
    std::fs::rename(&tmp, &a.to).with_context(|| format!("cannot move the result to {}", a.to.display()))?;
    let m = &out.manifest;
    eprintln!(
        "wrote {}: {} shard(s), {:.1} MiB, {} parameters, dtype {}{}",
        a.to.display(),
        m.shards.len(),
        m.total_bytes as f64 / (1 << 20) as f64,
        m.parameters,
        m.dtype,
        m.quantization.as_ref().map(|q| format!(", {}", q.scheme)).unwrap_or_default()
    );
    Ok(())
}

fn write_dir(tmp: &Path, source_dir: &Path, kind: &ModelKind, out: &rfgen_core::convert::Converted, tokenizer: Option<&[u8]>) -> Result<()> {
    let _ = std::fs::remove_dir_all(tmp);
    std::fs::create_dir_all(tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
    for (file, bytes) in &out.shards {
        std::fs::write(tmp.join(file), bytes).with_context(|| format!("cannot write {file}"))?;
    }
    std::fs::write(tmp.join("manifest.json"), serde_json::to_string_pretty(&out.manifest)?)?;
    std::fs::write(tmp.join("config.json"), serde_json::to_string_pretty(&kind.config_json())?)?;
    for extra in ["tokenizer.json", "generation.json"] {
        let src = source_dir.join(extra);
        if src.exists() {
            std::fs::copy(&src, tmp.join(extra)).with_context(|| format!("cannot copy {}", src.display()))?;
        } else if let (Some(json), "tokenizer.json") = (tokenizer, extra) {
            std::fs::write(tmp.join(extra), json).context("cannot write tokenizer.json")?;
        }
    }
    Ok(())
}

pub fn run(args: ConvertArgs) -> Result<()> {
    rfgen_backends::run(BackendKind::Ndarray, Task(args))?
}
