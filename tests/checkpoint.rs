//! Checkpoint formats: f16 / bf16 stored tensors and HF sharded indexes load and sample like f32.

use std::path::Path;

use burn::backend::NdArray;
use rfgen_core::checkpoint::{load_weights_dir, StoredDtype};
use rfgen_core::pipeline::{ModelFiles, Pipeline};
use rfgen_core::sampler::SampleConfig;
use rfgen_tests::*;
use safetensors::Dtype;

type B = NdArray<f32>;

/// `(name, shape, f32 data)` of every tensor in a safetensors file.
fn tensors(path: &Path) -> Vec<(String, Vec<usize>, Vec<f32>)> {
    read_io(path).into_iter().map(|(n, a)| (n, a.shape, a.f32)).collect()
}

fn encode(values: &[f32], dtype: Dtype) -> Vec<u8> {
    match dtype {
        Dtype::F32 => values.iter().flat_map(|x| x.to_le_bytes()).collect(),
        Dtype::F16 => values.iter().flat_map(|x| half::f16::from_f32(*x).to_le_bytes()).collect(),
        Dtype::BF16 => values.iter().flat_map(|x| half::bf16::from_f32(*x).to_le_bytes()).collect(),
        _ => unreachable!(),
    }
}

fn write(path: &Path, ts: &[(String, Vec<usize>, Vec<f32>)], dtype: Dtype) {
    let bytes: Vec<Vec<u8>> = ts.iter().map(|t| encode(&t.2, dtype)).collect();
    let views: Vec<(String, safetensors::tensor::TensorView)> = ts
        .iter()
        .zip(&bytes)
        .map(|(t, b)| (t.0.clone(), safetensors::tensor::TensorView::new(dtype, t.1.clone(), b).unwrap()))
        .collect();
    std::fs::write(path, safetensors::serialize(views, None).unwrap()).unwrap();
}

fn copy_configs(from: &Path, to: &Path) {
    for name in ["config.json", "generation.json"] {
        std::fs::copy(from.join(name), to.join(name)).unwrap();
    }
}

/// z1 of the fixture's prompts and noise for the model in `dir`.
fn sample_z1(dir: &Path, fixture: &Path) -> Vec<f32> {
    let io = read_io(&fixture.join("io.safetensors"));
    let gen: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture.join("generation.json")).unwrap()).unwrap();
    let ids = &io["input_ids"];
    let (len, b) = (ids.shape[1], ids.shape[0] / 2);
    let lengths = &io["prompt_lengths"].i64;
    let prompts: Vec<Vec<u32>> = (0..b)
        .map(|i| ids.i64[i * len + len - lengths[i] as usize..(i + 1) * len].iter().map(|&x| x as u32).collect())
        .collect();
    let device = Default::default();
    let pipe = Pipeline::<B>::new(ModelFiles::read_dir(dir).unwrap(), None, &device).unwrap();
    let config = SampleConfig {
        steps: gen["num_inference_steps"].as_u64().unwrap() as usize,
        cfg: gen["cfg_weight"].as_f64().unwrap(),
        ..SampleConfig::default()
    };
    let out = pipe.generate(&prompts, io["z0"].to_tensor(&device), &config, |_| {}).unwrap();
    to_vec(&out.z1)
}

#[test]
fn half_precision_checkpoints_load_and_sample() {
    for fixture in fixture_dirs_checked(FixtureKind::JanusFlow) {
        let io = read_io(&fixture.join("io.safetensors"));
        let ts = tensors(&fixture.join("weights.safetensors"));
        for (dtype, stored, tol) in [(Dtype::F16, StoredDtype::F16, 2e-2f32), (Dtype::BF16, StoredDtype::BF16, 1e-1)] {
            let dir = tempdir(&format!("ckpt-{dtype:?}"));
            copy_configs(&fixture, &dir);
            write(&dir.join("model.safetensors"), &ts, dtype);
            let w = load_weights_dir(&dir).unwrap();
            // Widening is exact: every value equals the f32 value rounded to the stored type.
            for (name, _, data) in &ts {
                assert_eq!(w.dtype(name), Some(stored));
                let back = w.read_f32(name).unwrap().unwrap();
                let want: Vec<f32> = match dtype {
                    Dtype::F16 => data.iter().map(|x| half::f16::from_f32(*x).to_f32()).collect(),
                    _ => data.iter().map(|x| half::bf16::from_f32(*x).to_f32()).collect(),
                };
                assert_eq!(back, want, "{name}");
            }
            let mut r = Report::default();
            r.compare(&format!("z1 from {dtype:?} weights"), &sample_z1(&dir, &fixture), &io["z1"].f32, tol, None);
            r.finish(&fixture.display().to_string());
        }
    }
}

#[test]
fn sharded_index_loads_like_one_file() {
    for fixture in fixture_dirs_checked(FixtureKind::JanusFlow) {
        let io = read_io(&fixture.join("io.safetensors"));
        let ts = tensors(&fixture.join("weights.safetensors"));
        let dir = tempdir("ckpt-sharded");
        copy_configs(&fixture, &dir);
        let half = ts.len() / 2;
        let shards = [("model-00001-of-00002.safetensors", &ts[..half]), ("model-00002-of-00002.safetensors", &ts[half..])];
        let mut map = serde_json::Map::new();
        for (file, part) in shards {
            write(&dir.join(file), part, Dtype::F32);
            for t in part {
                map.insert(t.0.clone(), file.into());
            }
        }
        let index = serde_json::json!({"metadata": {}, "weight_map": map});
        std::fs::write(dir.join("model.safetensors.index.json"), index.to_string()).unwrap();
        let mut r = Report::default();
        r.compare("z1 from shards", &sample_z1(&dir, &fixture), &io["z1"].f32, 1e-4, None);
        r.finish(&fixture.display().to_string());

        // A shard listed in the index but absent is named.
        std::fs::remove_file(dir.join(shards[1].0)).unwrap();
        let err = ModelFiles::read_dir(&dir).err().expect("missing shard is an error").to_string();
        assert!(err.contains(shards[1].0), "{err}");
    }
}
