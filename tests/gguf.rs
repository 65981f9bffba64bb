//! GGUF: SmolLM2-135M-Instruct (Q4_1) from its GGUF against transformers (tests/fixtures/smollm2_gguf,
//! written by tools/gen_smollm2_fixture.py), malformed files, dequantization of hand-made blocks.

use std::path::{Path, PathBuf};

use burn::tensor::{Int, Tensor, TensorData};
use rfgen_backends::NdArrayBackend;
use rfgen_core::gguf::{
    self, dequantize, llama_weights, str_array, write_gguf, GgmlType, GgufFile, Value, ValueType, WriteTensor,
};
use rfgen_core::llama::{Llama, LlamaConfig};
use rfgen_core::tokenizer::PromptTokenizer;
use rfgen_tests::{read_io, to_vec, Report};

type B = NdArrayBackend;
const TOL: f32 = 1e-3;
const GGUF_NAME: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";

fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/smollm2_gguf")
}

/// `$RFGEN_SMOLLM2_GGUF`, else `~/.cache/rfgen/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf`; fails when
/// the file is absent (CI runs `./build.sh setup`, which installs it).
fn smollm2_bytes() -> Vec<u8> {
    let path = match std::env::var_os("RFGEN_SMOLLM2_GGUF") {
        Some(p) => PathBuf::from(p),
        None => {
            let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_default();
            home.join(".cache/rfgen/smollm2").join(GGUF_NAME)
        }
    };
    std::fs::read(&path).unwrap_or_else(|e| {
        panic!(
            "the SmolLM2 GGUF is missing ({}: {e}): run `./build.sh setup` to install it, or set RFGEN_SMOLLM2_GGUF",
            path.display()
        )
    })
}

fn fixture_config() -> serde_json::Value {
    let text = std::fs::read_to_string(fixture_dir().join("config.json")).expect("fixture config.json");
    serde_json::from_str(&text).expect("fixture config.json parses")
}

fn prompts(config: &serde_json::Value) -> Vec<(String, Vec<u32>, Vec<u32>)> {
    let ids = |v: &serde_json::Value| v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect::<Vec<_>>();
    config["prompts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["text"].as_str().unwrap().to_string(), ids(&p["ids"]), ids(&p["ids_transformers"])))
        .collect()
}

#[test]
fn smollm2_config_and_tokenizer_from_gguf() {
    let bytes = smollm2_bytes();
    let file = GgufFile::parse(&bytes).unwrap();
    assert_eq!(file.version(), 3);
    assert_eq!(file.tensors().len(), 272);
    let config = gguf::llama_config(&file).unwrap();
    let want = LlamaConfig::smollm2_135m();
    assert_eq!(
        (config.hidden_size, config.intermediate_size, config.num_hidden_layers, config.num_attention_heads, config.kv_heads()),
        (want.hidden_size, want.intermediate_size, want.num_hidden_layers, want.num_attention_heads, want.kv_heads())
    );
    assert_eq!((config.vocab_size, config.rope_theta, config.tie_word_embeddings), (49152, 100000.0, true));
    assert!((config.rms_norm_eps - 1e-5).abs() < 1e-10);
    assert_eq!(config.max_position_embeddings, Some(8192));
    assert_eq!(file.tensor("token_embd.weight").unwrap().ggml_type, GgmlType::Q8_0);
    assert_eq!(file.tensor("blk.0.attn_q.weight").unwrap().ggml_type, GgmlType::Q4_1);
    assert_eq!(file.tensor("blk.0.ffn_down.weight").unwrap().shape(), vec![576, 1536]);

    let tok = gguf::tokenizer(&file).unwrap();
    assert_eq!((tok.bos_id, tok.eos_id, tok.pad_id, tok.add_bos), (Some(1), Some(2), Some(2), false));
    assert!(tok.chat_template.as_deref().unwrap().contains("<|im_start|>"));
    let prompt_tok = PromptTokenizer::from_tokenizer(tok.tokenizer.clone(), 1, 2);
    let config = fixture_config();
    for (i, (text, ids, stock)) in prompts(&config).into_iter().enumerate() {
        let got = tok.encode(&text, true).unwrap();
        assert_eq!(got, ids, "prompt {i} {text:?}");
        assert_eq!(prompt_tok.encode_text(&text, true).unwrap(), ids, "prompt {i} via PromptTokenizer");
        assert_eq!(tok.decode(&got, false).unwrap(), text, "prompt {i} decodes back");
        // transformers' stock GGUF tokenizer only differs where a digit follows two spaces.
        assert_eq!(ids == stock, !text.contains("  2"), "prompt {i}: stock transformers ids {stock:?}");
    }
    // The tokenizer.json equivalent loads as a tokenizer.json file would.
    let json = serde_json::to_vec(&gguf::tokenizer_json(&file).unwrap()).unwrap();
    let t = PromptTokenizer::from_bytes(&json, Some(1), Some(2)).unwrap();
    assert_eq!(t.encode_text("A red fox", false).unwrap(), tok.encode("A red fox", false).unwrap());
}

#[test]
fn smollm2_hidden_states_match_transformers() {
    let bytes = smollm2_bytes();
    let file = GgufFile::parse(&bytes).unwrap();
    let (config, weights) = llama_weights(&file, None).unwrap();
    drop(bytes);
    let device = Default::default();
    let model = Llama::<B>::from_weights(&weights, &config, &device).expect("SmolLM2 loads");
    drop(weights);
    let fixture = fixture_config();
    let layers: Vec<usize> = fixture["layers"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as usize).collect();
    let io = read_io(&fixture_dir().join("io.safetensors"));
    let mut r = Report::default();
    for (i, (_, ids, _)) in prompts(&fixture).into_iter().enumerate() {
        let t = ids.len();
        let stored: Vec<u32> = io[&format!("p{i}.ids")].i64.iter().map(|&x| x as u32).collect();
        r.check(&format!("p{i}.ids"), stored == ids, "io.safetensors and config.json disagree".into());
        let input = Tensor::<B, 2, Int>::from_data(TensorData::new(ids.iter().map(|&x| x as i64).collect(), [1, t]), &device);
        let out = model.forward_embeds(model.embed(input), None, None, true);
        r.compare(&format!("p{i}.embeds"), &to_vec(&out.layer_outputs[0]), &io[&format!("p{i}.embeds")].f32, TOL, None);
        for &l in &layers {
            let key = format!("p{i}.layer{l}");
            compare_scaled(&mut r, &key, &to_vec(&out.layer_outputs[l + 1]), &io[&key].f32);
        }
        r.compare(&format!("p{i}.final_norm"), &to_vec(&out.last_hidden_state), &io[&format!("p{i}.final_norm")].f32, TOL, None);
        let [_, _, h] = out.last_hidden_state.dims();
        let last = out.last_hidden_state.slice([0..1, t - 1..t, 0..h]);
        let logits = to_vec(&model.logits(last));
        let top_ids = &io[&format!("p{i}.topk_ids")].i64;
        let at: Vec<f32> = top_ids.iter().map(|&id| logits[id as usize]).collect();
        r.compare(&format!("p{i}.topk_logits"), &at, &io[&format!("p{i}.topk_logits")].f32, TOL, None);
        let argmax = logits.iter().enumerate().fold((0, f32::MIN), |m, (j, &v)| if v > m.1 { (j, v) } else { m }).0;
        r.check(&format!("p{i}.argmax"), argmax as i64 == top_ids[0], format!("argmax {argmax}, transformers {}", top_ids[0]));
    }
    r.finish("smollm2 gguf (ndarray)");
}

/// The residual stream of SmolLM2 carries a few massive activations (about 2.4e4 on the first
/// token at layer 15), where one f32 ulp is 2e-3: there, |diff| is measured relative to the
/// value — `|a − b| / max(1, |b|) ≤ TOL` — and the plain max |diff| is reported beside it.
fn compare_scaled(r: &mut Report, name: &str, got: &[f32], want: &[f32]) {
    let raw = got.iter().zip(want).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
    let scaled: Vec<f32> = want.iter().map(|b| b / b.abs().max(1.0)).collect();
    let got_scaled: Vec<f32> = got.iter().zip(want).map(|(a, b)| a / b.abs().max(1.0)).collect();
    let max_ref = want.iter().fold(0f32, |m, b| m.max(b.abs()));
    r.compare(&format!("{name} (|diff| / max(1, |ref|); raw max |diff| {raw:.3e}, max |ref| {max_ref:.3e})"), &got_scaled, &scaled, TOL, None);
}

/// `max_layers` keeps the first K decoder layers: their outputs are the full model's.
#[test]
fn smollm2_first_layers() {
    let bytes = smollm2_bytes();
    let file = GgufFile::parse(&bytes).unwrap();
    let (config, weights) = llama_weights(&file, Some(2)).unwrap();
    assert_eq!(config.num_hidden_layers, 2);
    assert!(weights.contains("model.layers.1.mlp.down_proj.weight"));
    assert!(!weights.contains("model.layers.2.mlp.down_proj.weight"));
    let device = Default::default();
    let model = Llama::<B>::from_weights(&weights, &config, &device).expect("2-layer SmolLM2 loads");
    let fixture = fixture_config();
    let (_, ids, _) = prompts(&fixture).remove(0);
    let io = read_io(&fixture_dir().join("io.safetensors"));
    let input = Tensor::<B, 2, Int>::from_data(TensorData::new(ids.iter().map(|&x| x as i64).collect(), [1, ids.len()]), &device);
    let out = model.forward_embeds(model.embed(input), None, None, true);
    let mut r = Report::default();
    r.compare("p0.layer1 (max_layers 2)", &to_vec(&out.layer_outputs[2]), &io["p0.layer1"].f32, TOL, None);
    r.finish("smollm2 gguf first layers");
    for bad in [0, 31] {
        let e = llama_weights(&file, Some(bad)).unwrap_err().to_string();
        assert!(e.contains("max_layers"), "{e}");
    }
}

// ---- synthetic files --------------------------------------------------------------------------

fn s(v: &str) -> Value {
    Value::String(v.into())
}

/// A tiny Llama GGUF: hidden 8, 2 heads of 4, 1 kv head, 1 layer, ffn 8, vocab 6 (byte-level BPE).
fn tiny_llama_meta() -> Vec<(String, Value)> {
    let kv = |k: &str, v: Value| (k.to_string(), v);
    vec![
        kv("general.architecture", s("llama")),
        kv("llama.block_count", Value::U32(1)),
        kv("llama.embedding_length", Value::U32(8)),
        kv("llama.feed_forward_length", Value::U32(8)),
        kv("llama.attention.head_count", Value::U32(2)),
        kv("llama.attention.head_count_kv", Value::U32(1)),
        kv("llama.attention.layer_norm_rms_epsilon", Value::F32(1e-5)),
        kv("llama.rope.freq_base", Value::F32(10000.0)),
        kv("llama.context_length", Value::U32(64)),
        kv("tokenizer.ggml.model", s("gpt2")),
        kv("tokenizer.ggml.pre", s("smollm")),
        kv("tokenizer.ggml.tokens", str_array(&["<s>", "a", "b", "ab", "Ġ", "Ġab"])),
        kv("tokenizer.ggml.token_type", Value::Array(ValueType::I32, [3, 1, 1, 1, 1, 1].map(Value::I32).to_vec())),
        kv("tokenizer.ggml.merges", str_array(&["a b", "Ġ ab"])),
        kv("tokenizer.ggml.bos_token_id", Value::U32(0)),
    ]
}

fn ramp(n: usize, scale: f32) -> Vec<f32> {
    (0..n).map(|i| ((i * 7919) % 23) as f32 * scale - 0.1).collect()
}

fn tiny_llama_tensors() -> Vec<WriteTensor> {
    let mut t = vec![WriteTensor::f32("token_embd.weight", &[6, 8], &ramp(48, 0.01)), WriteTensor::f32("output_norm.weight", &[8], &[1.0; 8])];
    let b = "blk.0.";
    for (name, shape) in [
        ("attn_q.weight", vec![8, 8]),
        ("attn_k.weight", vec![4, 8]),
        ("attn_v.weight", vec![4, 8]),
        ("attn_output.weight", vec![8, 8]),
        ("ffn_gate.weight", vec![8, 8]),
        ("ffn_up.weight", vec![8, 8]),
        ("ffn_down.weight", vec![8, 8]),
        ("attn_norm.weight", vec![8]),
        ("ffn_norm.weight", vec![8]),
    ] {
        let n = shape.iter().product();
        t.push(WriteTensor::f32(&format!("{b}{name}"), &shape, &ramp(n, 0.02)));
    }
    t
}

fn tiny_llama() -> Vec<u8> {
    write_gguf(&tiny_llama_meta(), &tiny_llama_tensors())
}

fn parse_err(bytes: &[u8]) -> String {
    match GgufFile::parse(bytes) {
        Ok(_) => panic!("a malformed file parsed"),
        Err(e) => e.to_string(),
    }
}

fn assert_names(msg: &str, words: &[&str]) {
    assert!(msg.starts_with("gguf: "), "{msg}");
    for w in words {
        assert!(msg.contains(w), "error {msg:?} does not mention {w:?}");
    }
}

/// Byte position of field `field` of tensor-table entry `index` (`name_len`, `n_dims`, `dims`,
/// `type`, `offset`).
fn entry_field(bytes: &[u8], index: usize, field: &str) -> usize {
    let file = GgufFile::parse(bytes).unwrap();
    let mut pos = file.tensor_table_offset();
    for (i, t) in file.tensors().iter().enumerate() {
        let n_dims_at = pos + 8 + t.name.len();
        let type_at = n_dims_at + 4 + 8 * t.dims.len();
        if i == index {
            return match field {
                "name_len" => pos,
                "n_dims" => n_dims_at,
                "dims" => n_dims_at + 4,
                "type" => type_at,
                "offset" => type_at + 4,
                _ => unreachable!(),
            };
        }
        pos = type_at + 12;
    }
    panic!("no entry {index}")
}

fn put_u32(bytes: &mut [u8], at: usize, v: u32) {
    bytes[at..at + 4].copy_from_slice(&v.to_le_bytes());
}
fn put_u64(bytes: &mut [u8], at: usize, v: u64) {
    bytes[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

#[test]
fn tiny_llama_loads_and_unpermutes_q_k() {
    let bytes = tiny_llama();
    let file = GgufFile::parse(&bytes).unwrap();
    let (config, weights) = llama_weights(&file, None).unwrap();
    assert_eq!((config.hidden_size, config.num_attention_heads, config.kv_heads(), config.vocab_size), (8, 2, 1, 6));
    assert!(config.tie_word_embeddings);
    assert_eq!(config.bos_token_id, Some(0));
    // q: 2 heads of 4 rows stored as (pair, 2) go back to (2, pair): rows 0 2 1 3 | 4 6 5 7.
    // k: 1 kv head of 4 rows: 0 2 1 3. v and the rest are copied as stored.
    let rows = |name: &str, order: &[usize]| {
        let w = file.tensor_f32(name).unwrap();
        order.iter().flat_map(|&r| w[r * 8..(r + 1) * 8].to_vec()).collect::<Vec<f32>>()
    };
    let read = |name: &str| weights.read_f32(name).unwrap().unwrap();
    assert_eq!(read("model.layers.0.self_attn.q_proj.weight"), rows("blk.0.attn_q.weight", &[0, 2, 1, 3, 4, 6, 5, 7]));
    assert_eq!(read("model.layers.0.self_attn.k_proj.weight"), rows("blk.0.attn_k.weight", &[0, 2, 1, 3]));
    assert_eq!(read("model.layers.0.self_attn.v_proj.weight"), rows("blk.0.attn_v.weight", &[0, 1, 2, 3]));
    assert_eq!(read("model.norm.weight"), vec![1.0; 8]);
    assert_eq!(weights.len(), 11);
    let device = Default::default();
    Llama::<B>::from_weights(&weights, &config, &device).expect("tiny llama loads");

    let tok = gguf::tokenizer(&file).unwrap();
    assert_eq!(tok.encode("ab ab", false).unwrap(), vec![3, 5]);
    assert_eq!(tok.encode("<s>ab", false).unwrap(), vec![0, 3]);
}

#[test]
fn q8_0_and_q4_1_blocks_follow_the_formula() {
    let h = |x: f32| half::f16::from_f32(x).to_le_bytes();
    // Q8_0, 2 blocks: d = 0.25 then -2; q = j - 16 then 3j - 50.
    let q8 = |b: usize, j: usize| if b == 0 { j as i32 - 16 } else { 3 * j as i32 - 50 };
    let mut q8_data = Vec::new();
    for (b, d) in [0.25f32, -2.0].into_iter().enumerate() {
        q8_data.extend(h(d));
        q8_data.extend((0..32).map(|j| q8(b, j) as i8 as u8));
    }
    // Q4_1, 2 blocks: d = 0.5, m = -3 then d = 0.125, m = 1; byte j = lo(j) | hi(j) << 4.
    let (lo, hi) = (|j: usize| (j * 5 % 16) as u8, |j: usize| (15 - j) as u8);
    let mut q41_data = Vec::new();
    for (d, m) in [(0.5f32, -3.0f32), (0.125, 1.0)] {
        q41_data.extend(h(d));
        q41_data.extend(h(m));
        q41_data.extend((0..16).map(|j| lo(j) | hi(j) << 4));
    }
    let bytes = write_gguf(
        &[],
        &[
            WriteTensor::raw("q8", &[2, 32], GgmlType::Q8_0, q8_data.clone()),
            WriteTensor::raw("q41", &[2, 32], GgmlType::Q4_1, q41_data.clone()),
        ],
    );
    let file = GgufFile::parse(&bytes).unwrap();
    let want_q8: Vec<f32> = [0.25f32, -2.0].iter().enumerate().flat_map(|(b, &d)| (0..32).map(move |j| d * q8(b, j) as f32)).collect();
    assert_eq!(file.tensor_f32("q8").unwrap(), want_q8);
    let want_q41: Vec<f32> = [(0.5f32, -3.0f32), (0.125, 1.0)]
        .iter()
        .flat_map(|&(d, m)| (0..32).map(move |e| d * (if e < 16 { lo(e) } else { hi(e - 16) }) as f32 + m))
        .collect();
    assert_eq!(file.tensor_f32("q41").unwrap(), want_q41);
    assert_eq!(dequantize(GgmlType::Q4_1, &q41_data, 64).unwrap(), want_q41);
    // A block of the wrong size and an unsupported type are errors, not panics.
    assert!(dequantize(GgmlType::Q8_0, &q8_data[..40], 32).unwrap_err().contains("bytes"));
    let q6 = write_gguf(&[], &[WriteTensor::raw("q6", &[256], GgmlType::Q6K, vec![0; 210])]);
    let e = GgufFile::parse(&q6).unwrap().tensor_f32("q6").unwrap_err().to_string();
    assert_names(&e, &["q6", "Q6_K", "not supported"]);
}

#[test]
fn malformed_headers_are_errors() {
    let good = tiny_llama();
    let mut bad = good.clone();
    bad[..4].copy_from_slice(b"GGML");
    assert_names(&parse_err(&bad), &["bad magic", "not a GGUF file"]);
    assert_names(&parse_err(b"GG"), &["truncated", "magic"]);
    for v in [1u32, 4, 99] {
        let mut bad = good.clone();
        put_u32(&mut bad, 4, v);
        assert_names(&parse_err(&bad), &["unsupported GGUF version", &v.to_string()]);
    }
    let mut bad = good.clone();
    put_u32(&mut bad, 4, 3u32.swap_bytes());
    assert_names(&parse_err(&bad), &["big-endian"]);
    assert_names(&parse_err(&good[..20]), &["truncated", "header"]);
    // Absurd counts are refused before anything is allocated.
    for count in [u64::MAX, 1 << 40, 1_000_000] {
        let mut bad = good.clone();
        put_u64(&mut bad, 8, count);
        assert_names(&parse_err(&bad), &["tensor count", &count.to_string(), "impossible"]);
        let mut bad = good.clone();
        put_u64(&mut bad, 16, count);
        assert_names(&parse_err(&bad), &["metadata count", "impossible"]);
    }
}

#[test]
fn malformed_metadata_is_an_error() {
    let meta = tiny_llama_meta();
    let good = tiny_llama();
    let first_key_len = 24;
    // A key length past the end of the file.
    let mut bad = good.clone();
    put_u64(&mut bad, first_key_len, 1 << 50);
    assert_names(&parse_err(&bad), &["length of metadata key 0", "impossible"]);
    // An unknown value type for the first key.
    let mut bad = good.clone();
    let type_at = first_key_len + 8 + meta[0].0.len();
    put_u32(&mut bad, type_at, 77);
    assert_names(&parse_err(&bad), &["general.architecture", "unknown value type 77"]);
    // A corrupt array count (tokenizer.ggml.tokens).
    let mut pos = 24;
    let mut array_at = None;
    for (k, v) in &meta {
        let value_at = pos + 8 + k.len() + 4;
        if k == "tokenizer.ggml.tokens" {
            array_at = Some(value_at);
            break;
        }
        pos += 8 + k.len() + 4 + value_size(v);
    }
    let count_at = array_at.unwrap() + 4;
    let mut bad = good.clone();
    put_u64(&mut bad, count_at, u64::MAX / 2);
    assert_names(&parse_err(&bad), &["element count of metadata \"tokenizer.ggml.tokens\"", "impossible"]);
    // Cut inside the metadata.
    assert_names(&parse_err(&good[..count_at + 30]), &["truncated", "tokenizer.ggml.tokens"]);
    // A duplicate key, a bad alignment, invalid UTF-8, a bool that is not 0/1.
    let mut dup = meta.clone();
    dup.push(meta[1].clone());
    assert_names(&parse_err(&write_gguf(&dup, &[])), &["llama.block_count", "twice"]);
    let mut align = meta.clone();
    align.push(("general.alignment".into(), Value::U32(3)));
    assert_names(&parse_err(&write_gguf(&align, &[])), &["general.alignment", "power of two"]);
    let mut utf = write_gguf(&[("k".into(), s("ok"))], &[]);
    utf[24 + 8 + 1 + 4 + 8] = 0xFF; // the "o" of "ok"
    assert_names(&parse_err(&utf), &["metadata \"k\"", "not valid UTF-8"]);
    let mut b = write_gguf(&[("flag".into(), Value::Bool(true))], &[]);
    b[24 + 8 + 4 + 4] = 7;
    assert_names(&parse_err(&b), &["flag", "bool"]);
    // Arrays nested without bound.
    let mut deep = Value::Array(ValueType::U8, vec![]);
    for _ in 0..20 {
        deep = Value::Array(ValueType::Array, vec![deep]);
    }
    assert_names(&parse_err(&write_gguf(&[("deep".into(), deep)], &[])), &["nests arrays"]);
}

/// Bytes a metadata value takes in the file.
fn value_size(v: &Value) -> usize {
    match v {
        Value::U8(_) | Value::I8(_) | Value::Bool(_) => 1,
        Value::U16(_) | Value::I16(_) => 2,
        Value::U32(_) | Value::I32(_) | Value::F32(_) => 4,
        Value::U64(_) | Value::I64(_) | Value::F64(_) => 8,
        Value::String(s) => 8 + s.len(),
        Value::Array(_, items) => 12 + items.iter().map(value_size).sum::<usize>(),
    }
}

#[test]
fn malformed_tensor_tables_are_errors() {
    let good = tiny_llama();
    let file = GgufFile::parse(&good).unwrap();
    let table = file.tensor_table_offset();
    let n = file.tensors().len();
    // Truncated tensor table: right after the metadata, and inside the last entry.
    assert_names(&parse_err(&good[..table + 10]), &["tensor count", "truncated tensor table"]);
    let last_offset = entry_field(&good, n - 1, "offset");
    assert_names(&parse_err(&good[..last_offset + 3]), &["truncated", &format!("tensor table entry {} of {n}", n - 1)]);
    // Data out of bounds: an offset far past the end, and a file cut inside the data.
    let mut bad = good.clone();
    put_u64(&mut bad, entry_field(&good, 2, "offset"), 1 << 40);
    assert_names(&parse_err(&bad), &["out of bounds", &format!("{:?}", file.tensors()[2].name)]);
    let mut bad = good.clone();
    put_u64(&mut bad, entry_field(&good, 2, "offset"), u64::MAX - 31);
    assert_names(&parse_err(&bad), &["out of bounds"]);
    assert_names(&parse_err(&good[..good.len() - 40]), &["out of bounds", "truncated"]);
    let mut bad = good.clone();
    put_u64(&mut bad, entry_field(&good, 2, "offset"), 4);
    assert_names(&parse_err(&bad), &["not a multiple of the alignment 32"]);
    // Unknown ggml types (4 and 5 were removed from ggml).
    for ty in [4u32, 200] {
        let mut bad = good.clone();
        put_u32(&mut bad, entry_field(&good, 1, "type"), ty);
        assert_names(&parse_err(&bad), &["unknown ggml type", &ty.to_string(), "output_norm.weight"]);
    }
    // Dimensions: too many, overflowing, not a whole number of blocks.
    let mut bad = good.clone();
    put_u32(&mut bad, entry_field(&good, 0, "n_dims"), 9);
    assert_names(&parse_err(&bad), &["token_embd.weight", "9 dimensions"]);
    let mut bad = good.clone();
    let dims = entry_field(&good, 0, "dims");
    put_u64(&mut bad, dims, 1 << 40);
    put_u64(&mut bad, dims + 8, 1 << 40);
    assert_names(&parse_err(&bad), &["token_embd.weight", "overflows"]);
    let mut bad = good.clone();
    put_u32(&mut bad, entry_field(&good, 0, "type"), GgmlType::Q8_0.id());
    assert_names(&parse_err(&bad), &["row length 8", "Q8_0 block size 32"]);
    // A tensor name stored twice.
    let mut t = tiny_llama_tensors();
    t.push(t[0].clone());
    assert_names(&parse_err(&write_gguf(&tiny_llama_meta(), &t)), &["token_embd.weight", "twice"]);
}

#[test]
fn every_truncation_and_corruption_is_an_error_not_a_panic() {
    let good = tiny_llama();
    for len in 0..good.len() {
        let r = std::panic::catch_unwind(|| GgufFile::parse(&good[..len]).map(|_| ()));
        match r {
            Ok(Err(e)) => assert!(e.to_string().starts_with("gguf: "), "{e}"),
            Ok(Ok(())) => {
                // Only a cut inside the padding after the last tensor's data can still parse.
                assert!(len >= good.len() - 32, "a file cut to {len} of {} bytes parsed", good.len());
            }
            Err(_) => panic!("parsing a file cut to {len} bytes panicked"),
        }
    }
    // Flip bytes across the header and tables (deterministic); parsing, and loading what parses,
    // must never panic.
    let table_end = GgufFile::parse(&good).unwrap().data_offset();
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    for _ in 0..3000 {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let mut bad = good.clone();
        let at = (state % table_end as u64) as usize;
        bad[at] = (state >> 32) as u8;
        let r = std::panic::catch_unwind(|| {
            if let Ok(f) = GgufFile::parse(&bad) {
                let _ = llama_weights(&f, None);
                let _ = gguf::tokenizer(&f);
            }
        });
        assert!(r.is_ok(), "byte {at} set to {} panicked", (state >> 32) as u8);
    }
}

#[test]
fn llama_mapping_errors_name_the_problem() {
    let mut meta = tiny_llama_meta();
    meta[0].1 = s("qwen2");
    let bytes = write_gguf(&meta, &tiny_llama_tensors());
    let e = llama_weights(&GgufFile::parse(&bytes).unwrap(), None).unwrap_err().to_string();
    assert_names(&e, &["qwen2", "only \"llama\""]);

    let mut t = tiny_llama_tensors();
    t.push(WriteTensor::f32("rope_freqs.weight", &[2], &[1.0, 1.0]));
    let bytes = write_gguf(&tiny_llama_meta(), &t);
    let e = llama_weights(&GgufFile::parse(&bytes).unwrap(), None).unwrap_err().to_string();
    assert_names(&e, &["rope_freqs.weight", "no place"]);

    let meta: Vec<_> = tiny_llama_meta().into_iter().filter(|(k, _)| k != "llama.embedding_length").collect();
    let bytes = write_gguf(&meta, &tiny_llama_tensors());
    let e = llama_weights(&GgufFile::parse(&bytes).unwrap(), None).unwrap_err().to_string();
    assert_names(&e, &["llama.embedding_length", "missing"]);

    let mut meta = tiny_llama_meta();
    meta[2].1 = s("four");
    let bytes = write_gguf(&meta, &tiny_llama_tensors());
    let e = llama_weights(&GgufFile::parse(&bytes).unwrap(), None).unwrap_err().to_string();
    assert_names(&e, &["llama.embedding_length", "integer"]);

    let mut t = tiny_llama_tensors();
    t[0] = WriteTensor::f32("token_embd.weight", &[6, 8], &[f32::NAN; 48]);
    let bytes = write_gguf(&tiny_llama_meta(), &t);
    let e = llama_weights(&GgufFile::parse(&bytes).unwrap(), None).unwrap_err().to_string();
    assert_names(&e, &["token_embd.weight", "NaN"]);

    // A tensor of the wrong shape is named when the model is built.
    let mut t = tiny_llama_tensors();
    t[2] = WriteTensor::f32("blk.0.attn_q.weight", &[8, 4], &[0.1; 32]);
    let bytes = write_gguf(&tiny_llama_meta(), &t);
    let (config, weights) = llama_weights(&GgufFile::parse(&bytes).unwrap(), None).unwrap();
    let e = Llama::<B>::from_weights(&weights, &config, &Default::default()).unwrap_err().to_string();
    assert!(e.contains("model.layers.0.self_attn.q_proj.weight"), "{e}");

    // Tokenizers rfgen cannot build.
    for (key, value, words) in [
        ("tokenizer.ggml.model", "llama", &["tokenizer.ggml.model", "\"llama\"", "not supported"][..]),
        ("tokenizer.ggml.pre", "mystery", &["tokenizer.ggml.pre", "mystery", "not supported"][..]),
    ] {
        let meta: Vec<_> = tiny_llama_meta().into_iter().map(|(k, v)| if k == key { (k, s(value)) } else { (k, v) }).collect();
        let bytes = write_gguf(&meta, &[]);
        let e = gguf::tokenizer(&GgufFile::parse(&bytes).unwrap()).unwrap_err().to_string();
        assert_names(&e, words);
    }
    let meta: Vec<_> = tiny_llama_meta()
        .into_iter()
        .map(|(k, v)| if k == "tokenizer.ggml.bos_token_id" { (k, Value::U32(99)) } else { (k, v) })
        .collect();
    let e = gguf::tokenizer(&GgufFile::parse(&write_gguf(&meta, &[])).unwrap()).unwrap_err().to_string();
    assert_names(&e, &["bos_token_id 99", "outside the vocabulary"]);
}

/// The compact LLM delta a stage-2 model stores against its GGUF: only changed tensors, only the
/// changed rows of a mostly untouched embedding, added back exactly by the loader; misfits are
/// errors that name the tensor.
#[test]
fn llm_delta_round_trip_and_errors() {
    use rfgen_core::checkpoint::Weights;
    let mut base = Weights::new();
    base.insert_f32("model.embed_tokens.weight", vec![10, 4], ramp(40, 0.1));
    base.insert_f32("model.layers.0.self_attn.q_proj.weight", vec![4, 4], ramp(16, 0.2));
    base.insert_f32("model.norm.weight", vec![4], vec![1.0; 4]);
    let mut trained = Weights::new();
    for n in base.names() {
        let mut v = base.read_f32(n).unwrap().unwrap();
        match n {
            "model.embed_tokens.weight" => [2usize, 7].iter().for_each(|&r| v[r * 4..r * 4 + 4].iter_mut().for_each(|x| *x += 0.25)),
            "model.layers.0.self_attn.q_proj.weight" => v.iter_mut().enumerate().for_each(|(i, x)| *x -= 0.01 * i as f32),
            _ => {}
        }
        trained.insert_f32(&format!("language_model.{n}"), base.shape(n).unwrap().to_vec(), v);
    }
    trained.insert_f32("gen_enc.proj.weight", vec![2], vec![3.0, 4.0]);
    let delta = gguf::llm_delta(&trained, &base, "language_model.").unwrap();
    let mut names: Vec<&str> = delta.names().collect();
    names.sort();
    assert_eq!(
        names,
        [
            "language_model.model.embed_tokens.weight.delta_row_ids",
            "language_model.model.embed_tokens.weight.delta_rows",
            "language_model.model.layers.0.self_attn.q_proj.weight.delta",
        ]
    );
    assert_eq!(delta.shape("language_model.model.embed_tokens.weight.delta_rows").unwrap(), [2, 4]);
    assert_eq!(delta.read_f32("language_model.model.embed_tokens.weight.delta_row_ids").unwrap().unwrap(), [2.0, 7.0]);
    assert!(gguf::has_delta(&delta));

    // What the loader does: the GGUF's tensors under the model's keys, the stored deltas beside them.
    let loaded = |delta: &Weights| {
        let mut w = Weights::new();
        for n in base.names() {
            w.insert_f32(&format!("language_model.{n}"), base.shape(n).unwrap().to_vec(), base.read_f32(n).unwrap().unwrap());
        }
        for n in delta.names() {
            w.insert_f32(n, delta.shape(n).unwrap().to_vec(), delta.read_f32(n).unwrap().unwrap());
        }
        w
    };
    let mut w = loaded(&delta);
    gguf::apply_llm_delta(&mut w).unwrap();
    assert!(!gguf::has_delta(&w));
    for n in base.names() {
        let key = format!("language_model.{n}");
        let (a, b) = (w.read_f32(&key).unwrap().unwrap(), trained.read_f32(&key).unwrap().unwrap());
        let max = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
        assert!(max <= 1e-6, "{key}: {max}");
    }

    // Misfits.
    let err = |mutate: &dyn Fn(&mut Weights)| {
        let mut d = delta.clone();
        mutate(&mut d);
        let mut w = loaded(&d);
        gguf::apply_llm_delta(&mut w).unwrap_err().to_string()
    };
    let e = err(&|d| d.insert_f32("language_model.model.embed_tokens.weight.delta_row_ids", vec![2], vec![2.0, 10.0]));
    assert!(e.contains("row id 10") && e.contains("embed_tokens"), "{e}");
    let e = err(&|d| d.insert_f32("language_model.model.layers.0.self_attn.q_proj.weight.delta", vec![4, 3], vec![0.0; 12]));
    assert!(e.contains("q_proj.weight.delta") && e.contains("[4, 3]"), "{e}");
    let e = err(&|d| d.insert_f32("language_model.model.layers.1.mlp.up_proj.weight.delta", vec![1], vec![0.0]));
    assert!(e.contains("no language_model.model.layers.1.mlp.up_proj.weight"), "{e}");
    let e = err(&|d| d.remove("language_model.model.embed_tokens.weight.delta_rows"));
    assert!(e.contains("delta_row_ids has no .delta_rows"), "{e}");
    let e = err(&|d| d.insert_f32("language_model.model.norm.weight.delta", vec![4], vec![f32::NAN; 4]));
    assert!(e.contains("norm.weight") && e.contains("not finite"), "{e}");
    let mut wrong = trained.clone();
    wrong.insert_f32("language_model.model.norm.weight", vec![5], vec![1.0; 5]);
    let e = gguf::llm_delta(&wrong, &base, "language_model.").unwrap_err().to_string();
    assert!(e.contains("norm.weight") && e.contains("[5]"), "{e}");
}
