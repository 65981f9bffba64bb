//! Conversion to rfgen's layout: float dtype, weight-only quantization, shards no larger than a
//! size (WebGPU's 128 MiB binding by default), a manifest with every shard's size and sha256.

use std::collections::BTreeMap;

use burn::tensor::backend::Backend;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::checkpoint::{encode_f32, StoredDtype, VarBuilder, Weights};
use crate::error::{Error, Result, WeightProblems};
use crate::quant::{quantize, QuantScheme};
use crate::structured::{FlowGenerator, GeneratorConfig, UNUSED_PREFIXES};
use crate::vae::{AutoencoderKl, VaeConfig, ENCODER_PREFIXES};

/// What a checkpoint holds.
#[derive(Debug, Clone, PartialEq)]
pub enum ModelKind {
    Generator(GeneratorConfig),
    Vae(VaeConfig),
}

impl ModelKind {
    pub fn name(&self) -> &'static str {
        match self {
            ModelKind::Generator(_) => "generator",
            ModelKind::Vae(_) => "vae",
        }
    }

    pub fn config_json(&self) -> serde_json::Value {
        match self {
            ModelKind::Generator(c) => serde_json::to_value(c).expect("serializable"),
            ModelKind::Vae(c) => {
                let mut v = serde_json::to_value(c).expect("serializable");
                v["_class_name"] = "AutoencoderKL".into();
                v
            }
        }
    }

    /// Stored tensors a loader skips on purpose.
    pub fn ignored_prefixes(&self) -> &'static [&'static str] {
        match self {
            ModelKind::Generator(_) => &UNUSED_PREFIXES,
            ModelKind::Vae(_) => &ENCODER_PREFIXES,
        }
    }

    /// Every tensor the model reads, with its shape (nothing is allocated).
    pub fn expected<B: Backend>(&self, device: &B::Device) -> Vec<(String, Vec<usize>)> {
        let vb = VarBuilder::<B>::shapes(device);
        match self {
            ModelKind::Generator(c) => drop(FlowGenerator::build(&vb, c)),
            ModelKind::Vae(c) => drop(AutoencoderKl::build(&vb, c)),
        }
        vb.requested()
    }
}

#[derive(Debug, Clone, Copy)]
pub struct ConvertOptions {
    pub dtype: StoredDtype,
    pub quant: Option<QuantScheme>,
    pub shard_bytes: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShardInfo {
    pub file: String,
    pub bytes: u64,
    pub sha256: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SourceFile {
    pub file: String,
    pub bytes: u64,
    pub sha256: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QuantInfo {
    pub scheme: String,
    pub group_size: Option<usize>,
    pub applies_to: String,
}

/// `manifest.json` of an rfgen model directory.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: String,
    pub version: u32,
    pub model: String,
    pub config: serde_json::Value,
    pub dtype: String,
    /// Tensors kept in higher precision than `dtype`, and why.
    pub kept_precision: String,
    pub quantization: Option<QuantInfo>,
    pub shards: Vec<ShardInfo>,
    /// Tensors larger than a shard, stored as row blocks: name → part names in order.
    #[serde(default)]
    pub split: BTreeMap<String, Vec<String>>,
    pub source: serde_json::Value,
    pub parameters: u64,
    pub total_bytes: u64,
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

pub struct Converted {
    pub manifest: Manifest,
    /// (file name, bytes) of every shard.
    pub shards: Vec<(String, Vec<u8>)>,
}

/// Checks that `weights` holds every tensor of `kind` with the right shape and finite values.
pub fn validate_source<B: Backend>(weights: &Weights, kind: &ModelKind, device: &B::Device) -> Result<()> {
    let mut p = WeightProblems::default();
    let expected = kind.expected::<B>(device);
    for (name, shape) in &expected {
        match weights.shape(name) {
            None => p.missing.push(name.clone()),
            Some(s) if s != shape.as_slice() => p.misshapen.push((name.clone(), shape.clone(), s.to_vec())),
            Some(_) => match weights.read_f32(name).expect("present") {
                Ok(v) if v.iter().any(|x| !x.is_finite()) => p.non_finite.push(name.clone()),
                Ok(_) => {}
                Err(d) => p.bad_dtype.push((name.clone(), d)),
            },
        }
    }
    let known: std::collections::BTreeSet<&str> = expected.iter().map(|(n, _)| n.as_str()).collect();
    p.unexpected = weights
        .names()
        .filter(|n| !known.contains(n) && !kind.ignored_prefixes().iter().any(|pre| n.starts_with(pre)))
        .map(str::to_string)
        .collect();
    if p.is_empty() {
        Ok(())
    } else {
        Err(Error::Weights(p))
    }
}

/// Converts a validated float checkpoint. `source` describes where it came from (for the manifest).
pub fn convert<B: Backend>(
    weights: &Weights,
    kind: &ModelKind,
    opts: &ConvertOptions,
    source: serde_json::Value,
    device: &B::Device,
) -> Result<Converted> {
    if !matches!(opts.dtype, StoredDtype::F32 | StoredDtype::F16 | StoredDtype::BF16) {
        return Err(Error::input("--dtype must be f32, f16 or bf16"));
    }
    validate_source::<B>(weights, kind, device)?;
    let expected = kind.expected::<B>(device);
    let mut out = Weights::new();
    let mut order = Vec::new();
    let mut parameters = 0u64;
    for (name, shape) in &expected {
        let values = weights.read_f32(name).expect("validated").expect("validated");
        parameters += values.len() as u64;
        // Linear weights and token embedding tables (both [rows, features]).
        let linear = shape.len() == 2 && name.ends_with(".weight");
        match (opts.quant, linear) {
            (Some(scheme), true) => {
                let q = quantize(name, &values, shape[0], shape[1], scheme)?;
                let (code_dtype, code_shape) = match scheme {
                    QuantScheme::Int8 => (StoredDtype::I8, vec![shape[0], shape[1]]),
                    QuantScheme::Int4 { .. } => (StoredDtype::U8, vec![shape[0], shape[1] / 2]),
                };
                let scale_dtype = if scheme == QuantScheme::Int8 { StoredDtype::F32 } else { StoredDtype::F16 };
                let groups = q.scales.len() / shape[0];
                out.insert_raw(name, code_dtype, code_shape, q.codes);
                let scale_name = format!("{name}_scale");
                out.insert_raw(&scale_name, scale_dtype, vec![shape[0], groups], encode_f32(&q.scales, scale_dtype));
                order.push(name.clone());
                order.push(scale_name);
            }
            _ => {
                // 1-D tensors (norms, biases) stay f32; everything else takes the target dtype.
                let dtype = if shape.len() == 1 { StoredDtype::F32 } else { opts.dtype };
                out.insert_raw(name, dtype, shape.clone(), encode_f32(&values, dtype));
                order.push(name.clone());
            }
        }
    }
    let (shards, split) = shard(&mut out, &order, opts.shard_bytes)?;
    let mut infos = Vec::new();
    let mut files = Vec::new();
    for (i, names) in shards.iter().enumerate() {
        let file = format!("model-{:05}-of-{:05}.safetensors", i + 1, shards.len());
        let bytes = out.to_safetensors(Some(names))?;
        if bytes.len() > opts.shard_bytes {
            return Err(Error::input(format!("shard {file} would be {} bytes, over the {} byte limit", bytes.len(), opts.shard_bytes)));
        }
        infos.push(ShardInfo { file: file.clone(), bytes: bytes.len() as u64, sha256: sha256_hex(&bytes) });
        files.push((file, bytes));
    }
    let quantization = opts.quant.map(|q| QuantInfo {
        scheme: match q {
            QuantScheme::Int8 => "int8".into(),
            QuantScheme::Int4 { .. } => "int4".into(),
        },
        group_size: match q {
            QuantScheme::Int8 => None,
            QuantScheme::Int4 { group } => Some(group),
        },
        applies_to: "2-D weights: linear layers and token embeddings (X.weight codes + X.weight_scale); symmetric, int8 one f32 scale per row, int4 one f16 scale per group".into(),
    });
    let manifest = Manifest {
        format: "rfgen".into(),
        version: 1,
        model: kind.name().into(),
        config: kind.config_json(),
        dtype: opts.dtype.name().to_lowercase(),
        kept_precision: "1-D tensors (norm scales, biases) in f32".into(),
        quantization,
        total_bytes: infos.iter().map(|s| s.bytes).sum(),
        shards: infos,
        split,
        source,
        parameters,
    };
    Ok(Converted { manifest, shards: files })
}

/// Greedy packing of tensors into shards of at most `limit` bytes (with room for the header);
/// a tensor larger than that is split along dim 0 into parts.
fn shard(out: &mut Weights, order: &[String], limit: usize) -> Result<(Vec<Vec<String>>, BTreeMap<String, Vec<String>>)> {
    const HEADER_ROOM: usize = 64 * 1024;
    if limit <= 2 * HEADER_ROOM {
        return Err(Error::input(format!("shard size {limit} bytes is too small")));
    }
    let budget = limit - HEADER_ROOM;
    let mut shards: Vec<Vec<String>> = vec![vec![]];
    let mut used = 0usize;
    let mut split = BTreeMap::new();
    for name in order {
        let bytes = out.raw(name).expect("inserted").len();
        let mut pieces = vec![name.clone()];
        if bytes > budget {
            let shape = out.shape(name).expect("inserted").to_vec();
            let dtype = out.dtype(name).expect("inserted");
            let row = bytes / shape[0];
            let rows_per = (budget / row).max(1);
            if row > budget {
                return Err(Error::input(format!("{name}: one row ({row} bytes) is larger than a shard")));
            }
            let raw = out.raw(name).expect("inserted").to_vec();
            pieces.clear();
            for (i, start) in (0..shape[0]).step_by(rows_per).enumerate() {
                let end = (start + rows_per).min(shape[0]);
                let part = format!("{name}.__part{i}");
                let mut s = shape.clone();
                s[0] = end - start;
                out.insert_raw(&part, dtype, s, raw[start * row..end * row].to_vec());
                pieces.push(part);
            }
            out.remove(name);
            split.insert(name.clone(), pieces.clone());
        }
        for piece in pieces {
            let size = out.raw(&piece).expect("inserted").len() + 256;
            if used + size > budget && !shards.last().expect("one shard").is_empty() {
                shards.push(vec![]);
                used = 0;
            }
            used += size;
            shards.last_mut().expect("one shard").push(piece);
        }
    }
    Ok((shards, split))
}
