//! A llama.cpp Llama GGUF as rfgen's Llama: HF key names, HF q/k row order, `LlamaConfig`.

use super::reader::GgufFile;
use crate::checkpoint::Weights;
use crate::error::{Error, Result};
use crate::llama::LlamaConfig;

fn err(msg: impl Into<String>) -> Error {
    Error::Gguf(msg.into())
}

/// The Hugging Face Llama key of a llama.cpp tensor name, or `None` for a name rfgen's Llama has
/// no place for.
pub fn hf_llama_name(gguf_name: &str) -> Option<String> {
    let (stem, kind) = gguf_name.rsplit_once('.')?;
    if kind != "weight" && kind != "bias" {
        return None;
    }
    let hf = match stem {
        "token_embd" => "model.embed_tokens".to_string(),
        "output_norm" => "model.norm".to_string(),
        "output" => "lm_head".to_string(),
        _ => {
            let rest = stem.strip_prefix("blk.")?;
            let (layer, part) = rest.split_once('.')?;
            let layer: usize = layer.parse().ok()?;
            let part = match part {
                "attn_q" => "self_attn.q_proj",
                "attn_k" => "self_attn.k_proj",
                "attn_v" => "self_attn.v_proj",
                "attn_output" => "self_attn.o_proj",
                "attn_norm" => "input_layernorm",
                "ffn_gate" => "mlp.gate_proj",
                "ffn_up" => "mlp.up_proj",
                "ffn_down" => "mlp.down_proj",
                "ffn_norm" => "post_attention_layernorm",
                _ => return None,
            };
            format!("model.layers.{layer}.{part}")
        }
    };
    Some(format!("{hf}.{kind}"))
}

/// The block index of a `blk.N.*` tensor.
fn layer_of(gguf_name: &str) -> Option<usize> {
    gguf_name.strip_prefix("blk.")?.split_once('.')?.0.parse().ok()
}

/// Undoes llama.cpp's q/k row permutation (`convert_hf_to_gguf.py` `LlamaModel.permute`), as
/// transformers' `LlamaTensorProcessor._reverse_permute_weights` does: the rows of each head,
/// stored as `[dim/2, 2]` (interleaved rotary pairs), go back to `[2, dim/2]` (rotate-half halves).
/// `values` is row-major `[rows, cols]` (or `[rows]` for a bias).
pub fn reverse_permute_rows(values: &[f32], rows: usize, n_head: usize) -> Result<Vec<f32>> {
    if rows == 0 {
        return Ok(values.to_vec());
    }
    if n_head == 0 || rows % (2 * n_head) != 0 || values.len() % rows != 0 {
        return Err(err(format!("cannot un-permute {rows} rows for {n_head} heads: rows must be a multiple of 2 × heads")));
    }
    let cols = values.len() / rows;
    let half = rows / n_head / 2;
    let mut out = vec![0f32; values.len()];
    for h in 0..n_head {
        for i in 0..half {
            for s in 0..2 {
                // stored row (h, i, s) -> HF row (h, s, i)
                let src = (h * half + i) * 2 + s;
                let dst = (h * 2 + s) * half + i;
                out[dst * cols..(dst + 1) * cols].copy_from_slice(&values[src * cols..(src + 1) * cols]);
            }
        }
    }
    Ok(out)
}

fn required_u64(file: &GgufFile, key: &str) -> Result<usize> {
    let v = file.get_u64(key)?.ok_or_else(|| err(format!("metadata {key:?} is missing")))?;
    usize::try_from(v).map_err(|_| err(format!("metadata {key:?} = {v} is too large")))
}

fn optional_usize(file: &GgufFile, key: &str) -> Result<Option<usize>> {
    file.get_u64(key)?
        .map(|v| usize::try_from(v).map_err(|_| err(format!("metadata {key:?} = {v} is too large"))))
        .transpose()
}

/// The `LlamaConfig` described by a Llama GGUF's metadata (all `block_count` layers).
pub fn llama_config(file: &GgufFile) -> Result<LlamaConfig> {
    let arch = file.get_str("general.architecture")?.ok_or_else(|| err("metadata \"general.architecture\" is missing"))?;
    if arch != "llama" {
        return Err(err(format!("general.architecture is {arch:?}; only \"llama\" models are supported")));
    }
    let hidden = required_u64(file, "llama.embedding_length")?;
    let heads = required_u64(file, "llama.attention.head_count")?;
    let kv_heads = optional_usize(file, "llama.attention.head_count_kv")?.unwrap_or(heads);
    let layers = required_u64(file, "llama.block_count")?;
    let inter = required_u64(file, "llama.feed_forward_length")?;
    let eps = file.get_f64("llama.attention.layer_norm_rms_epsilon")?.unwrap_or(1e-5);
    let theta = file.get_f64("llama.rope.freq_base")?.unwrap_or(10000.0);
    let context = optional_usize(file, "llama.context_length")?;
    if let Some(kind) = file.get_str("llama.rope.scaling.type")? {
        if kind != "none" {
            return Err(err(format!("llama.rope.scaling.type {kind:?} is not supported")));
        }
    }
    let head_dim = match optional_usize(file, "llama.attention.key_length")?.or(optional_usize(file, "llama.rope.dimension_count")?) {
        Some(d) if heads > 0 && d * heads != hidden => Some(d),
        _ => None,
    };
    let vocab = match file.get_str_array("tokenizer.ggml.tokens")? {
        Some(tokens) => tokens.len(),
        None => match optional_usize(file, "llama.vocab_size")? {
            Some(v) => v,
            None => file
                .tensor("token_embd.weight")
                .map(|t| t.shape()[0])
                .ok_or_else(|| err("no vocabulary size: no tokenizer.ggml.tokens, llama.vocab_size or token_embd.weight"))?,
        },
    };
    let tied = file.tensor("output.weight").is_none();
    let mut json = serde_json::json!({
        "model_type": "llama",
        "hidden_size": hidden,
        "intermediate_size": inter,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "vocab_size": vocab,
        "rms_norm_eps": eps,
        "rope_theta": theta,
        "tie_word_embeddings": tied,
        "hidden_act": "silu",
    });
    let obj = json.as_object_mut().expect("object");
    if let Some(d) = head_dim {
        obj.insert("head_dim".into(), d.into());
    }
    if let Some(c) = context {
        obj.insert("max_position_embeddings".into(), c.into());
    }
    for (key, field) in [
        ("tokenizer.ggml.bos_token_id", "bos_token_id"),
        ("tokenizer.ggml.eos_token_id", "eos_token_id"),
        ("tokenizer.ggml.padding_token_id", "pad_token_id"),
    ] {
        if let Some(id) = file.get_u64(key)?.filter(|&id| id <= u32::MAX as u64) {
            obj.insert(field.into(), id.into());
        }
    }
    let config: LlamaConfig =
        serde_json::from_value(json).map_err(|e| err(format!("cannot build a Llama config from the metadata: {e}")))?;
    config.validate("gguf metadata")?;
    Ok(config)
}

/// Every tensor of a Llama GGUF dequantized to f32 under its Hugging Face key, with q_proj/k_proj
/// rows back in HF order, and the matching config. `max_layers` keeps only the first K decoder
/// layers (the config then says K; the other layers are not dequantized). Names rfgen has no place
/// for (e.g. `rope_freqs.weight`) are errors; a tensor whose shape does not match the config is
/// reported by name when the model is built (`Llama::from_weights`).
pub fn llama_weights(file: &GgufFile, max_layers: Option<usize>) -> Result<(LlamaConfig, Weights)> {
    let mut config = llama_config(file)?;
    if let Some(k) = max_layers {
        if k == 0 || k > config.num_hidden_layers {
            return Err(err(format!("max_layers {k} must be between 1 and the model's {} layers", config.num_hidden_layers)));
        }
        config.num_hidden_layers = k;
    }
    let (heads, kv_heads) = (config.num_attention_heads, config.kv_heads());
    let mut weights = Weights::new();
    for t in file.tensors() {
        let hf = hf_llama_name(&t.name)
            .ok_or_else(|| err(format!("tensor {:?} has no place in a Llama model (unsupported tensor)", t.name)))?;
        if let Some(layer) = layer_of(&t.name) {
            if layer >= file_layers(file)? {
                return Err(err(format!("tensor {:?} belongs to layer {layer} but llama.block_count is {}", t.name, file_layers(file)?)));
            }
            if layer >= config.num_hidden_layers {
                continue;
            }
        }
        let shape = t.shape();
        let mut values = file.tensor_f32(&t.name)?;
        let permute_heads = if t.name.contains(".attn_q.") {
            Some(heads)
        } else if t.name.contains(".attn_k.") {
            Some(kv_heads)
        } else {
            None
        };
        if let Some(n_head) = permute_heads {
            values = reverse_permute_rows(&values, shape[0], n_head)
                .map_err(|e| err(format!("tensor {:?}: {e}", t.name)))?;
        }
        if values.iter().any(|v| !v.is_finite()) {
            return Err(err(format!("tensor {:?} holds NaN or infinite values", t.name)));
        }
        weights.insert_f32(&hf, shape, values);
    }
    let embed = weights.shape("model.embed_tokens.weight").map(<[usize]>::to_vec);
    match embed {
        Some(s) if s == [config.vocab_size, config.hidden_size] => {}
        Some(s) => {
            return Err(err(format!(
                "token_embd.weight is {s:?} but the metadata says vocab {} × hidden {}",
                config.vocab_size, config.hidden_size
            )))
        }
        None => return Err(err("the file has no token_embd.weight")),
    }
    Ok((config, weights))
}

fn file_layers(file: &GgufFile) -> Result<usize> {
    required_u64(file, "llama.block_count")
}
