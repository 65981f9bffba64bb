//! CUDA goldens: every folder under tests/goldens/cuda/ (or $RFGEN_CUDA_GOLDENS) holding a
//! golden.json, written on a CUDA machine by `rfgen-cli bench --backend cuda --goldens DIR`, is
//! re-run here on ndarray and wgpu from its stored prompts and noise; the final latent `z1` and
//! the decoded `image` must match within 1e-3. With no folder present the test says so and passes.

use std::path::{Path, PathBuf};

use burn::tensor::{backend::Backend, Tensor};
use rfgen_backends::{run, BackendKind, BackendTask};
use rfgen_core::pipeline::{ModelFiles, Pipeline, VaeFiles};
use rfgen_core::sampler::SampleConfig;
use rfgen_core::structured::preset;
use rfgen_tests::*;

const TOL: f32 = 1e-3;

fn goldens_root() -> PathBuf {
    match std::env::var_os("RFGEN_CUDA_GOLDENS") {
        Some(p) => PathBuf::from(p),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("goldens/cuda"),
    }
}

fn golden_dirs() -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(goldens_root())
        .map(|r| r.filter_map(|e| e.ok().map(|e| e.path())).filter(|p| p.join("golden.json").is_file()).collect())
        .unwrap_or_default();
    dirs.sort();
    dirs
}

struct Replay(PathBuf);

impl BackendTask for Replay {
    type Output = Report;
    fn run<B: Backend>(self, device: B::Device) -> rfgen_core::Result<Report> {
        replay::<B>(&self.0, &device)
    }
}

fn replay<B: Backend>(dir: &Path, device: &B::Device) -> rfgen_core::Result<Report> {
    let mut r = Report::default();
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("golden.json")).expect("golden.json")).expect("golden.json is JSON");
    let io = read_io(&dir.join("io.safetensors"));
    let root = fixtures_root();
    let vae = meta["vae"].as_str().map(|v| VaeFiles::read_dir(&root.join(v))).transpose()?;
    let pipe = if let Some(fixture) = meta["model"]["fixture"].as_str() {
        Pipeline::<B>::new(ModelFiles::read_dir(&root.join(fixture))?, vae, device)?
    } else {
        let name = meta["model"]["preset"].as_str().expect("model.fixture or model.preset");
        let seed = meta["model"]["seed"].as_u64().expect("model.seed");
        let p = preset(name).unwrap_or_else(|| panic!("{}: unknown preset {name}", dir.display()));
        Pipeline::<B>::random(&p.config(), seed, vae, device)?
    };
    let prompts: Vec<Vec<u32>> = serde_json::from_value(meta["prompts"].clone()).expect("prompts");
    let config = SampleConfig {
        steps: meta["steps"].as_u64().expect("steps") as usize,
        cfg: meta["cfg"].as_f64().expect("cfg"),
        ..SampleConfig::default()
    };
    let z0: Tensor<B, 4> = io["z0"].to_tensor(device);
    let out = pipe.generate(&prompts, z0, &config, |_| {})?;
    r.compare("z1", &to_vec(&out.z1), &io["z1"].f32, TOL, None);
    match (out.images, io.get("image")) {
        (Some(img), Some(want)) => {
            r.compare("image", &to_vec(&img), &want.f32, TOL, None);
        }
        (None, None) => {}
        (got, _) => r.check("image", false, format!("decoded here: {}, in the golden: {}", got.is_some(), io.contains_key("image"))),
    }
    Ok(r)
}

#[test]
fn ndarray_and_wgpu_match_the_cuda_goldens() {
    let dirs = golden_dirs();
    if dirs.is_empty() {
        println!("no CUDA goldens committed yet ({} has no folder with a golden.json)", goldens_root().display());
        eprintln!("no CUDA goldens committed yet");
        return;
    }
    let mut failures = Vec::new();
    for dir in &dirs {
        let meta = std::fs::read_to_string(dir.join("golden.json")).unwrap_or_default();
        let env: serde_json::Value = serde_json::from_str(&meta).map(|m: serde_json::Value| m["environment"].clone()).unwrap_or_default();
        eprintln!("[{}] written on {} ({})", dir.display(), env["gpu"], env["backend"]);
        for kind in [BackendKind::Ndarray, BackendKind::Wgpu] {
            let name = format!("{} on {kind}", dir.display());
            match run(kind, Replay(dir.clone())) {
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
    }
    assert!(failures.is_empty(), "CUDA golden mismatches:\n{}", failures.join("\n"));
}
