use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use burn::tensor::backend::Backend;
use clap::Args;
use rfgen_backends::{BackendKind, BackendTask};
use rfgen_core::checkpoint::{encode_f32, init_values, Weights};
use rfgen_core::convert::ModelKind;
use rfgen_core::structured::{preset, DecoderConfig, EncoderConfig};

use crate::convert::parse_dtype;

#[derive(Args, Debug)]
pub struct InitArgs {
    /// Preset name (see `rfgen-cli models`).
    #[arg(long)]
    preset: String,
    /// Seed of the random weights (the same weights as `sample --preset NAME --init random --seed S`).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Output model directory.
    #[arg(long)]
    out: PathBuf,
    /// Stored float type: f32, f16 or bf16.
    #[arg(long, default_value = "f32")]
    dtype: String,
    /// rfgen (config.json + model.safetensors) or janusflow (baseline presets only: the released
    /// JanusFlow config layout, HF sharded index, and an lm_head like the published checkpoint).
    #[arg(long, default_value = "rfgen")]
    layout: String,
    /// Replace an existing directory.
    #[arg(long)]
    force: bool,
}

struct Init(InitArgs);

impl BackendTask for Init {
    type Output = Result<()>;
    fn run<B: Backend>(self, device: B::Device) -> rfgen_core::Result<Result<()>> {
        Ok(self.write::<B>(&device))
    }
}

/// HF shards of about 2 GiB and their index.
fn write_hf_shards(dir: &Path, weights: &Weights) -> Result<()> {
    const SHARD: usize = 2 << 30;
    let mut shards: Vec<Vec<String>> = vec![vec![]];
    let mut used = 0;
    for name in weights.names() {
        let n = weights.raw(name).expect("listed").len();
        if used + n > SHARD && !shards.last().unwrap().is_empty() {
            shards.push(vec![]);
            used = 0;
        }
        used += n;
        shards.last_mut().unwrap().push(name.to_string());
    }
    let mut map = serde_json::Map::new();
    for (i, names) in shards.iter().enumerate() {
        let file = format!("model-{:05}-of-{:05}.safetensors", i + 1, shards.len());
        std::fs::write(dir.join(&file), weights.to_safetensors(Some(names))?)?;
        for n in names {
            map.insert(n.clone(), file.clone().into());
        }
    }
    let index = serde_json::json!({"metadata": {}, "weight_map": map});
    std::fs::write(dir.join("model.safetensors.index.json"), serde_json::to_string_pretty(&index)?)?;
    Ok(())
}

impl Init {
    fn write<B: Backend>(self, device: &B::Device) -> Result<()> {
        let a = self.0;
        let Some(p) = preset(&a.preset) else { bail!("unknown preset {:?}; `rfgen-cli models` lists them", a.preset) };
        if a.out.exists() && !a.force {
            bail!("{} already exists (use --force to replace it)", a.out.display());
        }
        let dtype = parse_dtype(&a.dtype)?;
        let config = p.config();
        let janusflow = match a.layout.as_str() {
            "rfgen" => false,
            "janusflow" => true,
            other => bail!("unknown --layout {other:?} (expected rfgen or janusflow)"),
        };
        let kind = ModelKind::Generator(config.clone());
        let mut tensors = kind.expected::<B>(device);
        if janusflow {
            let lc = &config.language_config;
            tensors.push(("language_model.lm_head.weight".into(), vec![lc.vocab_size, lc.hidden_size]));
        }
        let mut weights = Weights::new();
        for (key, shape) in tensors {
            let values = init_values(a.seed, &key, &shape);
            weights.insert_raw(&key, dtype, shape, encode_f32(&values, dtype));
        }

        // Written next to the target, then renamed: no partial model is ever left behind.
        let tmp = a.out.with_extension("partial");
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir_all(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
        if janusflow {
            let (EncoderConfig::Uvit(enc), DecoderConfig::Uvit(dec)) = (&config.encoder, &config.decoder) else {
                bail!("--layout janusflow needs a baseline preset (JanusFlow's own encoder and decoder)");
            };
            let released = serde_json::json!({
                "architectures": ["MultiModalityCausalLM"],
                "model_type": "multi_modality",
                "torch_dtype": match a.dtype.as_str() { "bf16" => "bfloat16", "f16" => "float16", _ => "float32" },
                "language_config": config.language_config,
                "vision_gen_enc_config": {"cls": "ShallowUViTEncoder", "model_type": "vision_gen_enc", "params": enc},
                "vision_gen_dec_config": {"cls": "ShallowUViTDecoder", "model_type": "vision_gen_dec", "params": dec},
            });
            std::fs::write(tmp.join("config.json"), serde_json::to_string_pretty(&released)?)?;
            std::fs::write(tmp.join("generation.json"), serde_json::to_string_pretty(&config.generation)?)?;
            write_hf_shards(&tmp, &weights)?;
        } else {
            std::fs::write(tmp.join("config.json"), serde_json::to_string_pretty(&config)?)?;
            std::fs::write(tmp.join("model.safetensors"), weights.to_safetensors(None)?)?;
        }
        if a.out.exists() {
            std::fs::remove_dir_all(&a.out).with_context(|| format!("cannot replace {}", a.out.display()))?;
        }
        std::fs::rename(&tmp, &a.out).with_context(|| format!("cannot write {}", a.out.display()))?;
        eprintln!("wrote {} ({} seed {}, {}, {} layout)", a.out.display(), p.name, a.seed, a.dtype, a.layout);
        Ok(())
    }
}

pub fn run(args: InitArgs) -> Result<()> {
    let backend = if BackendKind::Ndarray.compiled() { BackendKind::Ndarray } else { BackendKind::Wgpu };
    rfgen_backends::run(backend, Init(args))?
}
