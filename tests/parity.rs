//! Data-driven parity against the PyTorch fixtures: every folder under $RFGEN_FIXTURES whose
//! config.json is a JanusFlow model, a diffusers AutoencoderKL or an HF Llama, on ndarray and wgpu.
//! Every shape, id and setting comes from the folder's files.

use std::path::{Path, PathBuf};

use burn::tensor::{backend::Backend, Int, Tensor, TensorData};
use rfgen_backends::{run, BackendKind, BackendTask};
use rfgen_core::checkpoint::{load_weights_dir, read_json};
use rfgen_core::janusflow::JanusFlow;
use rfgen_core::llama::{KvCache, Llama, LlamaConfig};
use rfgen_core::pipeline::{ModelFiles, VaeFiles};
use rfgen_core::sampler::{sample, PromptBatch, SampleConfig};
use rfgen_core::vae::AutoencoderKl;
use rfgen_tests::*;

const TOL: f32 = 1e-4;

struct JanusFlowParity(PathBuf);
struct VaeParity(PathBuf);
struct LlamaParity(PathBuf);

impl BackendTask for JanusFlowParity {
    type Output = Report;
    fn run<B: Backend>(self, device: B::Device) -> rfgen_core::Result<Report> {
        Ok(janusflow_parity::<B>(&self.0, &device))
    }
}
impl BackendTask for VaeParity {
    type Output = Report;
    fn run<B: Backend>(self, device: B::Device) -> rfgen_core::Result<Report> {
        Ok(vae_parity::<B>(&self.0, &device))
    }
}
impl BackendTask for LlamaParity {
    type Output = Report;
    fn run<B: Backend>(self, device: B::Device) -> rfgen_core::Result<Report> {
        Ok(llama_parity::<B>(&self.0, &device))
    }
}

fn janusflow_parity<B: Backend>(dir: &Path, device: &B::Device) -> Report {
    let mut r = Report::default();
    let files = ModelFiles::read_dir(dir).expect("model dir loads");
    let gen: serde_json::Value = read_json(&dir.join("generation.json")).expect("generation.json");
    let io = read_io(&dir.join("io.safetensors"));
    let model = JanusFlow::<B>::load(&files.weights, &files.config, device).expect("weights load");

    let pad = gen["pad_token_id"].as_u64().expect("pad_token_id") as u32;
    let steps = gen["num_inference_steps"].as_u64().expect("num_inference_steps") as usize;
    let cfg = gen["cfg_weight"].as_f64().expect("cfg_weight");

    // Prompts = the cond rows of input_ids without their left padding.
    let ids = &io["input_ids"];
    let (rows, len) = (ids.shape[0], ids.shape[1]);
    let b = rows / 2;
    let lengths = &io["prompt_lengths"].i64;
    let prompts: Vec<Vec<u32>> = (0..b)
        .map(|i| ids.i64[i * len + len - lengths[i] as usize..(i + 1) * len].iter().map(|&x| x as u32).collect())
        .collect();
    let batch = PromptBatch::new(&prompts, pad).expect("prompt batch");
    let flat_ids: Vec<i64> = batch.ids.iter().flatten().map(|&x| x as i64).collect();
    r.check("input_ids", flat_ids == ids.i64, format!("built {:?}, reference {:?}", batch.ids, ids.i64));

    let mask = &io["attention_mask"];
    let seq = mask.shape[1];
    let built_mask: Vec<i64> = batch
        .prefix_visible
        .iter()
        .flat_map(|row| row.iter().map(|&v| v as i64).chain(std::iter::repeat(1)).take(seq))
        .collect();
    r.check("attention_mask", built_mask == mask.i64, "built mask differs from the reference".into());

    // Step 0 intermediates.
    let z0 = io["z0"].to_tensor::<B, 4>(device);
    let t_ref = &io["timesteps"].f32;
    let t0 = vec![t_ref[0]; rows];
    let mut cond = rfgen_core::sampler::VelocityModel::prepare(&model, &batch, device);
    let mut trace = None;
    let _ = model.velocity_traced(Tensor::cat(vec![z0.clone(), z0.clone()], 0), &t0, &mut cond, Some(&mut trace));
    let trace = trace.expect("trace recorded");
    r.compare("enc_z_emb_step0", &to_vec(trace.enc_z_emb.as_ref().expect("UViT encoder")), &io["enc_z_emb_step0"].f32, TOL, None);
    r.compare("enc_tokens_step0", &to_vec(&trace.enc_tokens), &io["enc_tokens_step0"].f32, TOL, None);
    r.compare("llm_inputs_embeds_step0", &to_vec(&trace.llm_inputs_embeds), &io["llm_inputs_embeds_step0"].f32, TOL, None);
    let h = trace.llm_last_hidden.dims()[2];
    let visible: Vec<bool> = mask.i64.iter().flat_map(|&m| std::iter::repeat(m == 1).take(h)).collect();
    r.compare("llm_last_hidden_step0", &to_vec(&trace.llm_last_hidden), &io["llm_last_hidden_step0"].f32, TOL, Some(&visible));
    r.compare("dec_input_step0", &to_vec(trace.dec_input.as_ref().expect("UViT decoder")), &io["dec_input_step0"].f32, TOL, None);

    // Time embedding of every step.
    let t_emb = &io["t_emb"];
    for s in 0..steps {
        let emb = model.time_embedding(&vec![t_ref[s]; rows], device);
        r.compare(&format!("t_emb[{s}]"), &to_vec(&emb), &t_emb.index(s), TOL, None);
    }

    // The full Euler-CFG loop.
    let mut got = Vec::new();
    let z1 = sample(&model, &batch, z0, &SampleConfig { steps, cfg, ..SampleConfig::default() }, |e| {
        got.push((e.t, to_vec(e.v_cond), to_vec(e.v_uncond), to_vec(e.v_cfg), to_vec(e.z)));
    })
    .expect("sampling runs");
    r.check("steps", got.len() == steps, format!("{} steps run, {steps} expected", got.len()));
    for (s, (t, vc, vu, v, z)) in got.iter().enumerate() {
        r.compare(&format!("timesteps[{s}]"), &[*t], &[t_ref[s]], 1e-3, None);
        r.compare(&format!("v_cond[{s}]"), vc, &io["v_cond"].index(s), TOL, None);
        r.compare(&format!("v_uncond[{s}]"), vu, &io["v_uncond"].index(s), TOL, None);
        r.compare(&format!("v_cfg[{s}]"), v, &io["v_cfg"].index(s), TOL, None);
        r.compare(&format!("z_traj[{}]", s + 1), z, &io["z_traj"].index(s + 1), TOL, None);
    }
    r.compare("z1", &to_vec(&z1), &io["z1"].f32, TOL, None);
    r
}

fn vae_parity<B: Backend>(dir: &Path, device: &B::Device) -> Report {
    let mut r = Report::default();
    let files = VaeFiles::read_dir(dir).expect("vae dir loads");
    let io = read_io(&dir.join("io.safetensors"));
    let vae = AutoencoderKl::<B>::load(&files.weights, &files.config, device).expect("weights load");
    let z1 = io["z1"].to_tensor::<B, 4>(device);
    // The flow latent's scaling (JanusFlow feeds z1 / scaling_factor, no shift), then the decode
    // of the stored scaled latents as the fixture defines it.
    if files.config.shift_factor.is_none() {
        let scaled = z1.clone().div_scalar(files.config.scaling_factor);
        r.compare("latents_scaled", &to_vec(&scaled), &io["latents_scaled"].f32, TOL, None);
    }
    let image = vae.decode(io["latents_scaled"].to_tensor::<B, 4>(device));
    let got = to_vec(&image);
    r.compare("image", &got, &io["image"].f32, TOL, None);
    if let Some(u8ref) = io.get("image_uint8") {
        let [n, _, hh, ww] = image.dims();
        let plane = 3 * hh * ww;
        let pixels: Vec<f32> = (0..n)
            .flat_map(|i| rfgen_core::image::to_rgb8(&got[i * plane..(i + 1) * plane], hh, ww))
            .map(|x| x as f32)
            .collect();
        // Truncation: a value on an integer boundary may land one step lower or higher.
        r.compare("image_uint8", &pixels, &u8ref.f32, 1.0, None);
    }
    r
}

fn llama_parity<B: Backend>(dir: &Path, device: &B::Device) -> Report {
    let mut r = Report::default();
    let config: LlamaConfig = read_json(&dir.join("config.json")).expect("config");
    config.validate("config.json").expect("valid config");
    let weights = load_weights_dir(dir).expect("weights");
    let io = read_io(&dir.join("io.safetensors"));
    let model = Llama::<B>::from_weights(&weights, &config, device).expect("weights load");
    let ids = &io["input_ids"];
    let (b, t) = (ids.shape[0], ids.shape[1]);
    let input = Tensor::<B, 2, Int>::from_data(TensorData::new(ids.i64.clone(), [b, t]), device);
    let out = model.forward_embeds(model.embed(input.clone()), None, None, true);
    let hs = &io["hidden_states"];
    let n_layers = config.num_hidden_layers;
    for k in 0..n_layers {
        r.compare(&format!("hidden_states[{k}]"), &to_vec(&out.layer_outputs[k]), &hs.index(k), TOL, None);
    }
    r.compare(&format!("hidden_states[{n_layers}]"), &to_vec(&out.last_hidden_state), &hs.index(n_layers), TOL, None);
    if let Some(pre) = io.get("last_layer_output_prenorm") {
        r.compare("last_layer_output_prenorm", &to_vec(&out.layer_outputs[n_layers]), &pre.f32, TOL, None);
    }
    r.compare("last_hidden_state", &to_vec(&out.last_hidden_state), &io["last_hidden_state"].f32, TOL, None);
    if let Some(logits) = io.get("logits") {
        r.compare("logits", &to_vec(&model.logits(out.last_hidden_state.clone())), &logits.f32, TOL, None);
    }

    // KV cache: the prompt in two pieces equals one full pass.
    let split = t / 2;
    if split > 0 {
        let mut cache = KvCache::new(n_layers);
        let first = model.forward_embeds(model.embed(input.clone().slice([0..b, 0..split])), None, Some(&mut cache), false);
        let second = model.forward_embeds(model.embed(input.slice([0..b, split..t])), None, Some(&mut cache), false);
        let joined = Tensor::cat(vec![first.last_hidden_state, second.last_hidden_state], 1);
        r.compare("kv_cache last_hidden_state", &to_vec(&joined), &io["last_hidden_state"].f32, TOL, None);
        r.check("kv_cache length", cache.len() == t, format!("cache holds {} positions, {t} expected", cache.len()));
    }
    r
}

fn run_kind(kind: FixtureKind, backend: BackendKind) {
    run_parity(kind, backend.name(), |dir| match kind {
        FixtureKind::JanusFlow => run(backend, JanusFlowParity(dir)),
        FixtureKind::Vae => run(backend, VaeParity(dir)),
        FixtureKind::Llama => run(backend, LlamaParity(dir)),
        _ => unreachable!(),
    });
}

#[test]
fn janusflow_ndarray() {
    run_kind(FixtureKind::JanusFlow, BackendKind::Ndarray);
}
#[test]
fn janusflow_wgpu() {
    run_kind(FixtureKind::JanusFlow, BackendKind::Wgpu);
}
#[test]
fn vae_ndarray() {
    run_kind(FixtureKind::Vae, BackendKind::Ndarray);
}
#[test]
fn vae_wgpu() {
    run_kind(FixtureKind::Vae, BackendKind::Wgpu);
}
#[test]
fn llama_ndarray() {
    run_kind(FixtureKind::Llama, BackendKind::Ndarray);
}
#[test]
fn llama_wgpu() {
    run_kind(FixtureKind::Llama, BackendKind::Wgpu);
}
