//! The structured generator: presets, the four arms end to end on ndarray and wgpu, save/load,
//! unconditional rows independent of the prompt, cfg 1 = conditional velocity.

use burn::tensor::{backend::Backend, Tensor, TensorData};
use rfgen_backends::{run, BackendKind, BackendTask};
use rfgen_core::checkpoint::VarBuilder;
use rfgen_core::pipeline::Pipeline;
use rfgen_core::sampler::{sample, PromptBatch, SampleConfig};
use rfgen_core::structured::{preset, preset_names, FlowGenerator};
use rfgen_tests::*;

const ARMS: [&str; 4] = ["baseline", "encoder", "decoder", "both"];

#[test]
fn presets_are_valid_and_named_by_arm_and_size() {
    let names: Vec<&str> = preset_names().collect();
    for size in ["tiny", "1.3b"] {
        for arm in ARMS {
            assert!(names.contains(&format!("{arm}-{size}").as_str()), "missing preset {arm}-{size}");
        }
    }
    for name in names {
        let c = preset(name).unwrap().config();
        c.validate(name).unwrap();
        let (arm, _) = name.split_once('-').unwrap();
        assert_eq!(c.arm_name(), arm, "{name}");
        assert_eq!(c.arm.as_deref(), Some(arm), "{name}");
    }
    let big = preset("both-1.3b").unwrap().config();
    assert_eq!(big.language_config.hidden_size, 2048);
    assert_eq!(big.language_config.num_hidden_layers, 24);
    let shape = big.generation.latent_shape.unwrap();
    assert_eq!((shape[1] / big.patch_size) * (shape[2] / big.patch_size), 576);
}

/// Two prompts of different lengths (left padding), byte-level ids, 3 steps.
fn prompts(pipe: &Pipeline<impl Backend>) -> Vec<Vec<u32>> {
    pipe.tokenize(&["red apple".into(), "a small green frog on a leaf".into()]).unwrap()
}

struct Arm {
    name: String,
}

impl BackendTask for Arm {
    type Output = Vec<f32>;
    fn run<B: Backend>(self, device: B::Device) -> rfgen_core::Result<Vec<f32>> {
        let pipe = Pipeline::<B>::random(&preset(&self.name).unwrap().config(), 11, None, &device)?;
        let p = prompts(&pipe);
        let z0 = pipe.noise(5, p.len(), [8, 8]);
        let out = pipe.generate(&p, z0, &SampleConfig { steps: 3, cfg: 2.0, ..SampleConfig::default() }, |_| {})?;
        Ok(to_vec(&out.z1))
    }
}

#[test]
fn every_arm_samples_on_ndarray_and_wgpu_alike() {
    let mut r = Report::default();
    let mut finals = Vec::new();
    for arm in ARMS {
        let name = format!("{arm}-tiny");
        let cpu = run(BackendKind::Ndarray, Arm { name: name.clone() }).unwrap();
        let gpu = run(BackendKind::Wgpu, Arm { name: name.clone() }).unwrap();
        r.check(&name, cpu.iter().all(|x| x.is_finite()), "non-finite z1".into());
        r.compare(&format!("{name} z1 wgpu vs ndarray"), &gpu, &cpu, 1e-3, None);
        let again = run(BackendKind::Ndarray, Arm { name: name.clone() }).unwrap();
        r.check(&format!("{name} deterministic"), again == cpu, "same seed, different z1".into());
        finals.push(cpu);
    }
    for i in 0..finals.len() {
        for j in i + 1..finals.len() {
            r.check("arms differ", finals[i] != finals[j], format!("{} and {} gave the same z1", ARMS[i], ARMS[j]));
        }
    }
    r.finish("arms");
}

type Cpu = burn::backend::NdArray<f32>;

/// (v_cond, v_uncond, v_cfg) of every step.
fn velocities(model: &FlowGenerator<Cpu>, ids: &[Vec<u32>], cfg: f64) -> Vec<(Vec<f32>, Vec<f32>, Vec<f32>)> {
    let device = Default::default();
    let batch = PromptBatch::new(ids, 0).unwrap();
    let z0 = Tensor::<Cpu, 4>::from_data(
        TensorData::new(rfgen_core::noise::gaussian(9, ids.len() * 4 * 64), [ids.len(), 4, 8, 8]),
        &device,
    );
    let mut out = Vec::new();
    sample(model, &batch, z0, &SampleConfig { steps: 2, cfg, ..SampleConfig::default() }, |e| {
        out.push((to_vec(e.v_cond), to_vec(e.v_uncond), to_vec(e.v_cfg)))
    })
    .unwrap();
    out
}

/// (v_uncond, v_cond) of one evaluation on a fixed latent.
fn split_velocity(model: &FlowGenerator<Cpu>, ids: &[Vec<u32>], t: f32) -> (Vec<f32>, Vec<f32>) {
    use rfgen_core::sampler::VelocityModel;
    let device = Default::default();
    let batch = PromptBatch::new(ids, 0).unwrap();
    let rows = 2 * ids.len();
    let z = Tensor::<Cpu, 4>::from_data(TensorData::new(rfgen_core::noise::gaussian(4, ids.len() * 256), [ids.len(), 4, 8, 8]), &device);
    let mut cond = model.prepare(&batch, &device);
    let v = to_vec(&model.velocity(Tensor::cat(vec![z.clone(), z], 0), &vec![t; rows], &mut cond));
    let half = v.len() / 2;
    (v[half..].to_vec(), v[..half].to_vec())
}

#[test]
fn unconditional_rows_ignore_the_prompt_and_cfg_one_is_conditional() {
    let device = Default::default();
    for arm in ARMS {
        let config = preset(&format!("{arm}-tiny")).unwrap().config();
        let model = FlowGenerator::<Cpu>::build(&VarBuilder::random(3, &device), &config);
        // Same lengths, different content: the official uncond rows keep only BOS.
        let a = vec![vec![1, 40, 41, 42, 2], vec![1, 50, 2]];
        let b = vec![vec![1, 90, 91, 92, 2], vec![1, 60, 2]];
        // The same latent at several times: only the conditional half may change with the prompt.
        let mut r = Report::default();
        for t in [0.0f32, 400.0, 900.0] {
            let (ua, ca) = split_velocity(&model, &a, t);
            let (ub, cb) = split_velocity(&model, &b, t);
            r.compare(&format!("{arm} v_uncond(t={t}) across prompts"), &ua, &ub, 1e-6, None);
            let diff = ca.iter().zip(&cb).map(|(p, q)| (p - q).abs()).fold(0f32, f32::max);
            r.check(&format!("{arm} v_cond(t={t}) depends on the prompt"), diff > 1e-6, format!("max diff {diff}"));
        }
        for (s, (v_cond, _, v_cfg)) in velocities(&model, &a, 1.0).iter().enumerate() {
            r.compare(&format!("{arm} cfg=1: v_cfg[{s}] vs v_cond"), v_cfg, v_cond, 0.0, None);
        }
        r.finish(arm);
    }
}

#[test]
fn saved_random_model_loads_and_samples_identically() {
    let device = Default::default();
    for arm in ARMS {
        let config = preset(&format!("{arm}-tiny")).unwrap().config();
        let vb = VarBuilder::<Cpu>::random(21, &device).recording();
        let built = FlowGenerator::build(&vb, &config);
        let weights = rfgen_core::checkpoint::Weights::from_safetensors("saved", vb.created().to_safetensors_f32().unwrap())
            .unwrap();
        let loaded = FlowGenerator::<Cpu>::load(&weights, &config, &device).expect("every key the model asks for is saved");
        let ids = vec![vec![1, 40, 41, 2]];
        let (x, y) = (velocities(&built, &ids, 2.0), velocities(&loaded, &ids, 2.0));
        assert_eq!(x, y, "{arm}: loaded model differs from the one that was saved");
    }
}

#[test]
fn prefix_cache_equals_full_recomputation() {
    use rfgen_core::sampler::VelocityModel;
    let device = Default::default();
    for arm in ARMS {
        let config = preset(&format!("{arm}-tiny")).unwrap().config();
        let model = FlowGenerator::<Cpu>::build(&VarBuilder::random(8, &device), &config);
        // Prompts of different lengths: left padding and masked pads in the cached prefix.
        let ids = vec![vec![1, 40, 41, 42, 43, 44, 2], vec![1, 50, 2]];
        let batch = PromptBatch::new(&ids, 0).unwrap();
        let mut cached = model.prepare(&batch, &device);
        let mut full = model.prepare(&batch, &device);
        full.use_prefix_cache = false;
        let mut r = Report::default();
        for (step, t) in [0.0f32, 250.0, 500.0].into_iter().enumerate() {
            let z = Tensor::<Cpu, 4>::from_data(TensorData::new(rfgen_core::noise::gaussian(step as u64, 4 * 4 * 64), [4, 4, 8, 8]), &device);
            let a = to_vec(&model.velocity(z.clone(), &[t; 4], &mut cached));
            let b = to_vec(&model.velocity(z, &[t; 4], &mut full));
            r.compare(&format!("{arm} step {step}: cached vs full"), &a, &b, 1e-5, None);
        }
        r.finish(arm);
    }
}
