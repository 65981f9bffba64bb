//! Model directories on disk (native only; the browser hands bytes to [`Weights`] directly).

use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;

use super::Weights;
use crate::convert::{sha256_hex, Manifest};
use crate::error::{Error, Result};

fn read(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| Error::Io(format!("cannot read {}: {e}", path.display())))
}

pub fn read_json<T: DeserializeOwned>(path: &Path) -> Result<T> {
    let bytes = read(path)?;
    serde_json::from_slice(&bytes).map_err(|e| Error::config(path.display().to_string(), e))
}

pub fn read_optional_json<T: DeserializeOwned>(path: &Path) -> Result<Option<T>> {
    if path.exists() {
        read_json(path).map(Some)
    } else {
        Ok(None)
    }
}

#[derive(serde::Deserialize)]
struct ShardIndex {
    weight_map: std::collections::BTreeMap<String, String>,
}

/// Loads the weights of a model directory: an HF-style `*.safetensors.index.json` with its shards
/// if there is one, otherwise `model.safetensors`, `diffusion_pytorch_model.safetensors` or
/// `weights.safetensors` (or the only `*.safetensors` file present).
pub fn load_weights_dir(dir: &Path) -> Result<Weights> {
    if !dir.is_dir() {
        return Err(Error::Io(format!("model directory {} does not exist", dir.display())));
    }
    let entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| Error::Io(format!("cannot list {}: {e}", dir.display())))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    let name = |p: &PathBuf| p.file_name().and_then(|n| n.to_str()).unwrap_or("").to_string();
    let mut weights = Weights::new();
    let manifest_path = dir.join("manifest.json");
    if manifest_path.exists() {
        let manifest: Manifest = read_json(&manifest_path)?;
        let mut shards = Vec::with_capacity(manifest.shards.len());
        for s in &manifest.shards {
            let path = dir.join(&s.file);
            if !path.exists() {
                return Err(Error::checkpoint(path.display().to_string(), "shard listed in manifest.json is missing"));
            }
            shards.push((path.display().to_string(), read(&path)?));
        }
        return weights_from_manifest(&manifest, shards);
    }
    if let Some(index_path) = entries.iter().find(|p| name(p).ends_with(".safetensors.index.json")) {
        let index: ShardIndex = read_json(index_path)?;
        let shards: std::collections::BTreeSet<&String> = index.weight_map.values().collect();
        for shard in shards {
            let path = dir.join(shard);
            if !path.exists() {
                return Err(Error::checkpoint(
                    index_path.display().to_string(),
                    format!("shard {shard} listed in the index is missing"),
                ));
            }
            weights.add_safetensors(&path.display().to_string(), read(&path)?)?;
        }
        for (tensor, shard) in &index.weight_map {
            if !weights.contains(tensor) {
                return Err(Error::checkpoint(
                    dir.join(shard).display().to_string(),
                    format!("tensor {tensor} listed in the index is not in its shard"),
                ));
            }
        }
    } else {
        const KNOWN: [&str; 3] = ["model.safetensors", "diffusion_pytorch_model.safetensors", "weights.safetensors"];
        // The caption index of neighbour guidance lives beside the weights but is not one.
        let index = crate::neighbours::NEIGHBOURS_FILE;
        let mut files: Vec<&PathBuf> = entries.iter().filter(|p| name(p).ends_with(".safetensors") && name(p) != index).collect();
        files.sort();
        let chosen = match KNOWN.iter().find_map(|k| files.iter().find(|p| name(p) == *k)) {
            Some(p) => *p,
            None if files.len() == 1 => files[0],
            None if files.is_empty() => {
                return Err(Error::Io(format!("no .safetensors weights in {}", dir.display())))
            }
            None => {
                return Err(Error::Io(format!(
                    "{} holds several .safetensors files and no index; expected one of {KNOWN:?} or a *.safetensors.index.json",
                    dir.display()
                )))
            }
        };
        weights.add_safetensors(&chosen.display().to_string(), read(chosen)?)?;
    }
    Ok(weights)
}

/// Verifies every shard against the manifest (size, sha256) and assembles the weights, joining
/// split tensors. `shards` are (name for messages, bytes) in manifest order.
pub fn weights_from_manifest(manifest: &Manifest, shards: Vec<(String, Vec<u8>)>) -> Result<Weights> {
    if shards.len() != manifest.shards.len() {
        return Err(Error::checkpoint("manifest.json", format!("{} shards given, the manifest lists {}", shards.len(), manifest.shards.len())));
    }
    let mut weights = Weights::new();
    for ((name, bytes), info) in shards.into_iter().zip(&manifest.shards) {
        if bytes.len() as u64 != info.bytes {
            return Err(Error::checkpoint(
                name,
                format!("shard is {} bytes but manifest.json says {} (truncated or replaced)", bytes.len(), info.bytes),
            ));
        }
        let digest = sha256_hex(&bytes);
        if digest != info.sha256 {
            return Err(Error::checkpoint(name, format!("sha256 mismatch: manifest.json says {}, the shard has {digest}", info.sha256)));
        }
        weights.add_safetensors(&name, bytes)?;
    }
    for (tensor, parts) in &manifest.split {
        weights.join_parts(tensor, parts)?;
    }
    Ok(weights)
}
