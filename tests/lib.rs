//! Shared helpers of the integration tests: fixture discovery and reading, comparisons.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use burn::tensor::{backend::Backend, Tensor};
use safetensors::{Dtype, SafeTensors};

/// `$RFGEN_FIXTURES`, or `../shared/fixtures` next to the repository.
pub fn fixtures_root() -> PathBuf {
    match std::env::var_os("RFGEN_FIXTURES") {
        Some(p) => PathBuf::from(p),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/fixtures"),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FixtureKind {
    JanusFlow,
    Vae,
    Llama,
    MmditBlock,
    SingleStreamBlock,
}

/// A fresh, empty directory under the system temp dir, unique to this process and `tag`,
/// removed when dropped (tests write checkpoints of hundreds of MB; CI disks are small).
pub fn tempdir(tag: &str) -> TempDir {
    let dir = std::env::temp_dir().join(format!("rfgen-test-{}-{tag}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    TempDir(dir)
}

/// A directory that is deleted with everything in it when the value goes out of scope.
#[derive(Debug)]
pub struct TempDir(PathBuf);

impl std::ops::Deref for TempDir {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

impl AsRef<Path> for TempDir {
    fn as_ref(&self) -> &Path {
        &self.0
    }
}

impl AsRef<std::ffi::OsStr> for TempDir {
    fn as_ref(&self) -> &std::ffi::OsStr {
        self.0.as_os_str()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The kind of a fixture folder, read from its config.json (folder names may be anything).
pub fn fixture_kind(dir: &Path) -> Option<FixtureKind> {
    let text = std::fs::read_to_string(dir.join("config.json")).ok()?;
    let c: serde_json::Value = serde_json::from_str(&text).ok()?;
    if c.get("language_config").is_some() && c.get("vision_gen_enc_config").is_some() {
        return Some(FixtureKind::JanusFlow);
    }
    if c.get("_class_name").and_then(|v| v.as_str()) == Some("AutoencoderKL") {
        return Some(FixtureKind::Vae);
    }
    match c.get("class").and_then(|v| v.as_str()) {
        Some("JointTransformerBlock") => return Some(FixtureKind::MmditBlock),
        Some("FluxSingleTransformerBlock") => return Some(FixtureKind::SingleStreamBlock),
        _ => {}
    }
    if c.get("model_type").and_then(|v| v.as_str()) == Some("llama") {
        return Some(FixtureKind::Llama);
    }
    None
}

/// Every fixture folder of `kind` under the root, sorted.
pub fn fixture_dirs(kind: FixtureKind) -> Vec<PathBuf> {
    let root = fixtures_root();
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(&root)
        .unwrap_or_else(|e| panic!("cannot list fixtures at {}: {e}", root.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir() && fixture_kind(p) == Some(kind))
        .collect();
    dirs.sort();
    dirs
}

/// Fixture folders of `kind`; fails when the root holds no fixture of any kind rfgen knows.
pub fn fixture_dirs_checked(kind: FixtureKind) -> Vec<PathBuf> {
    let dirs = fixture_dirs(kind);
    if dirs.is_empty() {
        let root = fixtures_root();
        let any = std::fs::read_dir(&root)
            .map(|r| r.filter_map(|e| e.ok()).any(|e| fixture_kind(&e.path()).is_some()))
            .unwrap_or(false);
        assert!(any, "no fixture folders under {}", root.display());
        eprintln!("no {kind:?} fixtures under {}", root.display());
    }
    dirs
}

/// A tensor read from a fixture's io.safetensors.
#[derive(Debug, Clone)]
pub struct Array {
    pub shape: Vec<usize>,
    pub f32: Vec<f32>,
    pub i64: Vec<i64>,
}

impl Array {
    pub fn to_tensor<B: Backend, const D: usize>(&self, device: &B::Device) -> Tensor<B, D> {
        let shape: [usize; D] = self.shape.clone().try_into().expect("rank");
        Tensor::from_data(burn::tensor::TensorData::new(self.f32.clone(), shape), device)
    }
    /// Elements `[i]` of the leading dimension, flattened.
    pub fn index(&self, i: usize) -> Vec<f32> {
        let n: usize = self.shape[1..].iter().product();
        self.f32[i * n..(i + 1) * n].to_vec()
    }
}

pub fn read_io(path: &Path) -> BTreeMap<String, Array> {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let st = SafeTensors::deserialize(&bytes).unwrap_or_else(|e| panic!("{}: {e:?}", path.display()));
    st.tensors()
        .into_iter()
        .map(|(name, view)| {
            let raw = view.data();
            let (f, i) = match view.dtype() {
                Dtype::F32 => (raw.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect(), vec![]),
                Dtype::I64 => {
                    let v: Vec<i64> = raw.chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().unwrap())).collect();
                    (v.iter().map(|&x| x as f32).collect(), v)
                }
                Dtype::I32 => {
                    let v: Vec<i64> = raw.chunks_exact(4).map(|c| i32::from_le_bytes(c.try_into().unwrap()) as i64).collect();
                    (v.iter().map(|&x| x as f32).collect(), v)
                }
                Dtype::U8 => (raw.iter().map(|&x| x as f32).collect(), raw.iter().map(|&x| x as i64).collect()),
                other => panic!("{name}: unsupported dtype {other:?} in fixture"),
            };
            (name, Array { shape: view.shape().to_vec(), f32: f, i64: i })
        })
        .collect()
}

pub fn to_vec<B: Backend, const D: usize>(t: &Tensor<B, D>) -> Vec<f32> {
    t.to_data().convert::<f32>().to_vec::<f32>().expect("f32 data")
}

/// Collects named comparisons; `finish` fails listing every one over tolerance.
#[derive(Default)]
pub struct Report {
    pub lines: Vec<String>,
    pub failures: Vec<String>,
}

impl Report {
    /// Max |a - b| over positions where `keep` (if given) is true.
    pub fn compare(&mut self, name: &str, got: &[f32], want: &[f32], tol: f32, keep: Option<&[bool]>) -> f32 {
        if got.len() != want.len() {
            self.failures.push(format!("{name}: {} values, reference has {}", got.len(), want.len()));
            return f32::INFINITY;
        }
        let mut max = 0f32;
        for (i, (a, b)) in got.iter().zip(want).enumerate() {
            if keep.map(|k| k[i]).unwrap_or(true) {
                let d = (a - b).abs();
                if !(d <= max) {
                    max = if d.is_nan() { f32::INFINITY } else { d };
                }
            }
        }
        let line = format!("{name}: max |diff| {max:.3e} (tol {tol:.0e})");
        if max > tol {
            self.failures.push(line.clone());
        }
        self.lines.push(line);
        max
    }

    pub fn check(&mut self, name: &str, ok: bool, detail: String) {
        if !ok {
            self.failures.push(format!("{name}: {detail}"));
        }
    }

    pub fn finish(self, what: &str) {
        for l in &self.lines {
            eprintln!("[{what}] {l}");
        }
        assert!(self.failures.is_empty(), "{what}: {} failure(s):\n{}", self.failures.len(), self.failures.join("\n"));
    }
}

/// Runs `check` on every fixture folder of `kind` and fails listing every folder's failures.
pub fn run_parity(kind: FixtureKind, backend: &str, check: impl Fn(PathBuf) -> rfgen_core::Result<Report>) {
    let mut failures = Vec::new();
    for dir in fixture_dirs_checked(kind) {
        let name = format!("{} on {backend}", dir.display());
        match check(dir) {
            Ok(report) => {
                for l in &report.lines {
                    eprintln!("[{name}] {l}");
                }
                if !report.failures.is_empty() {
                    failures.push(format!("{name}:\n  {}", report.failures.join("\n  ")));
                }
            }
            Err(e) => failures.push(format!("{name}: {e}")),
        }
    }
    assert!(failures.is_empty(), "parity failures:\n{}", failures.join("\n"));
}

/// A small word-level tokenizer.json in the shape of JanusFlow's: BOS and the begin-of-generation
/// tag as special tokens, BOS added by the post-processor when `add_bos` is true.
pub fn tiny_tokenizer_json(bos: u32, bog: u32, words: &[(&str, u32)], add_bos: bool) -> String {
    let bos_tok = "<｜begin▁of▁sentence｜>";
    let bog_tok = rfgen_core::tokenizer::IMAGE_GEN_TAG;
    let special = |id: u32, content: &str| {
        serde_json::json!({"id": id, "content": content, "single_word": false, "lstrip": false,
            "rstrip": false, "normalized": false, "special": true})
    };
    let mut vocab = serde_json::Map::new();
    vocab.insert("<unk>".into(), 0.into());
    vocab.insert(bos_tok.into(), bos.into());
    vocab.insert(bog_tok.into(), bog.into());
    for (w, id) in words {
        vocab.insert((*w).into(), (*id).into());
    }
    let post = if add_bos {
        serde_json::json!({"type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": bos_tok, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [{"SpecialToken": {"id": bos_tok, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                     {"Sequence": {"id": "B", "type_id": 1}}],
            "special_tokens": {bos_tok: {"id": bos_tok, "ids": [bos], "tokens": [bos_tok]}}})
    } else {
        serde_json::Value::Null
    };
    serde_json::json!({
        "version": "1.0", "truncation": null, "padding": null,
        "added_tokens": [special(bos, bos_tok), special(bog, bog_tok)],
        "normalizer": null,
        "pre_tokenizer": {"type": "Whitespace"},
        "post_processor": post,
        "decoder": null,
        "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "<unk>"}
    })
    .to_string()
}
