//! Data-driven parity of the DiT blocks against diffusers: every `JointTransformerBlock` and
//! `FluxSingleTransformerBlock` fixture folder, on ndarray and wgpu.

use std::path::{Path, PathBuf};

use burn::tensor::backend::Backend;
use rfgen_backends::{run, BackendKind, BackendTask};
use rfgen_core::checkpoint::{load_weights_dir, read_json, VarBuilder};
use rfgen_core::dit::{FluxRope, JointTransformerBlock, SingleTransformerBlock};
use rfgen_tests::*;

const TOL: f32 = 1e-4;

struct MmditParity(PathBuf);
struct SingleParity(PathBuf);

impl BackendTask for MmditParity {
    type Output = Report;
    fn run<B: Backend>(self, device: B::Device) -> rfgen_core::Result<Report> {
        Ok(mmdit::<B>(&self.0, &device))
    }
}
impl BackendTask for SingleParity {
    type Output = Report;
    fn run<B: Backend>(self, device: B::Device) -> rfgen_core::Result<Report> {
        Ok(single::<B>(&self.0, &device))
    }
}

fn usize_of(v: &serde_json::Value, key: &str) -> usize {
    v[key].as_u64().unwrap_or_else(|| panic!("config: {key}")) as usize
}

fn mmdit<B: Backend>(dir: &Path, device: &B::Device) -> Report {
    let mut r = Report::default();
    let config: serde_json::Value = read_json(&dir.join("config.json")).unwrap();
    let weights = load_weights_dir(dir).unwrap();
    let io = read_io(&dir.join("io.safetensors"));
    let vb = VarBuilder::<B>::new(&weights, device);
    let blocks: Vec<(JointTransformerBlock<B>, bool)> = config["blocks"]
        .as_array()
        .unwrap()
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let dim = usize_of(c, "dim");
            let pre_only = c["context_pre_only"].as_bool().unwrap_or(false);
            let qk_norm = match c["qk_norm"].as_str() {
                Some("rms_norm") => true,
                None => false,
                Some(other) => panic!("qk_norm {other:?} is not supported"),
            };
            assert!(!c["use_dual_attention"].as_bool().unwrap_or(false), "use_dual_attention is not supported");
            let block = JointTransformerBlock::load(
                &vb.pp("transformer_blocks").pp(i),
                dim,
                usize_of(c, "num_attention_heads"),
                usize_of(c, "attention_head_dim"),
                dim,
                pre_only,
                qk_norm,
            );
            (block, pre_only)
        })
        .collect();
    vb.finish(&[]).expect("weights match");
    let x = io["hidden_states"].to_tensor::<B, 3>(device);
    let c = io["encoder_hidden_states"].to_tensor::<B, 3>(device);
    let temb = io["temb"].to_tensor::<B, 2>(device);
    for (i, (block, pre_only)) in blocks.iter().enumerate() {
        let (hx, hc) = block.forward(x.clone(), c.clone(), temb.clone(), None);
        r.compare(&format!("block{i}_hidden_out"), &to_vec(&hx), &io[&format!("block{i}_hidden_out")].f32, TOL, None);
        r.check(&format!("block{i} context output"), hc.is_some() != *pre_only, "context output presence".into());
        if let (Some(hc), Some(want)) = (hc, io.get(&format!("block{i}_encoder_out"))) {
            r.compare(&format!("block{i}_encoder_out"), &to_vec(&hc), &want.f32, TOL, None);
        }
    }
    if let Some(want) = io.get("chained_hidden_out") {
        let (mut hx, mut hc) = (x, Some(c));
        for (block, _) in &blocks {
            let (nx, nc) = block.forward(hx, hc.expect("context for the next block"), temb.clone(), None);
            hx = nx;
            hc = nc;
        }
        r.compare("chained_hidden_out", &to_vec(&hx), &want.f32, TOL, None);
    }
    r
}

fn single<B: Backend>(dir: &Path, device: &B::Device) -> Report {
    let mut r = Report::default();
    let c: serde_json::Value = read_json(&dir.join("config.json")).unwrap();
    let weights = load_weights_dir(dir).unwrap();
    let io = read_io(&dir.join("io.safetensors"));
    let (dim, heads, hd) = (usize_of(&c, "dim"), usize_of(&c, "num_attention_heads"), usize_of(&c, "attention_head_dim"));
    let mlp = (dim as f64 * c["mlp_ratio"].as_f64().unwrap_or(4.0)) as usize;
    let vb = VarBuilder::<B>::new(&weights, device);
    let block = SingleTransformerBlock::load(&vb.pp("single_transformer_blocks").pp(0), dim, heads, hd, mlp, dim);
    vb.finish(&[]).expect("weights match");

    let temb = io["temb"].to_tensor::<B, 2>(device);
    let x = io["concat_input"].to_tensor::<B, 3>(device);
    let text = io["encoder_hidden_states"].shape[1];
    let [b, s, w] = x.dims();
    let split = |t: burn::tensor::Tensor<B, 3>| (t.clone().slice([0..b, 0..text, 0..w]), t.slice([0..b, text..s, 0..w]));

    // Outputs are compared wherever the fixture stores them (with and/or without rotary).
    let mut compared = 0;
    let mut check = |r: &mut Report, tag: &str, out: burn::tensor::Tensor<B, 3>| {
        let (oe, oh) = split(out.clone());
        for (suffix, t) in [("concat", out), ("encoder", oe), ("hidden", oh)] {
            if let Some(want) = io.get(&format!("out_{tag}_{suffix}")) {
                r.compare(&format!("out_{tag}_{suffix}"), &to_vec(&t), &want.f32, TOL, None);
                compared += 1;
            }
        }
    };
    check(&mut r, "norope", block.forward(x.clone(), temb.clone(), None, None));
    let rope_cfg = &c["rope"];
    if rope_cfg.is_null() {
        r.check("outputs compared", compared > 0, "the fixture stores no outputs".into());
        return r;
    }
    let rope = FluxRope {
        theta: rope_cfg["theta"].as_f64().unwrap(),
        axes_dim: rope_cfg["axes_dim"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as usize).collect(),
    };
    let ids: Vec<Vec<f64>> = ["txt_ids", "img_ids"]
        .iter()
        .flat_map(|name| {
            let a = &io[*name];
            a.f32.chunks(a.shape[1]).map(|row| row.iter().map(|&v| v as f64).collect::<Vec<_>>()).collect::<Vec<_>>()
        })
        .collect();
    let (cos, sin) = rope.tables(&ids);
    if let (Some(wc), Some(ws)) = (io.get("rope_cos"), io.get("rope_sin")) {
        r.compare("rope_cos", &cos, &wc.f32, 1e-6, None);
        r.compare("rope_sin", &sin, &ws.f32, 1e-6, None);
    }
    let (cos, sin) = rope.tensors::<B>(&ids, device);
    check(&mut r, "rope", block.forward(x, temb, Some((&cos, &sin)), None));
    r.check("outputs compared", compared > 0, "the fixture stores no outputs".into());
    r
}

fn run_kind(kind: FixtureKind, backend: BackendKind) {
    run_parity(kind, backend.name(), |dir| match kind {
        FixtureKind::MmditBlock => run(backend, MmditParity(dir)),
        FixtureKind::SingleStreamBlock => run(backend, SingleParity(dir)),
        _ => unreachable!(),
    });
}

#[test]
fn mmdit_ndarray() {
    run_kind(FixtureKind::MmditBlock, BackendKind::Ndarray);
}
#[test]
fn mmdit_wgpu() {
    run_kind(FixtureKind::MmditBlock, BackendKind::Wgpu);
}
#[test]
fn single_stream_ndarray() {
    run_kind(FixtureKind::SingleStreamBlock, BackendKind::Ndarray);
}
#[test]
fn single_stream_wgpu() {
    run_kind(FixtureKind::SingleStreamBlock, BackendKind::Wgpu);
}

/// GELU (tanh approximation) against the formula in f64, over the range a trained model's
/// activations reach: finite everywhere, x for large x, 0 for very negative x.
struct GeluTanh;
impl BackendTask for GeluTanh {
    type Output = Vec<(f64, f32)>;
    fn run<B: Backend>(self, device: B::Device) -> rfgen_core::Result<Vec<(f64, f32)>> {
        let xs: Vec<f64> = [-1e4, -300.0, -60.0, -20.0, -6.0, -3.0, -1.0, -0.5, 0.0, 0.5, 1.0, 3.0, 6.0, 20.0, 60.0, 300.0, 1e4].into();
        let t = burn::tensor::Tensor::<B, 1>::from_floats(xs.iter().map(|&x| x as f32).collect::<Vec<_>>().as_slice(), &device);
        let got = rfgen_core::layers::gelu_tanh(t).into_data().convert::<f32>().into_vec::<f32>().unwrap();
        Ok(xs.into_iter().zip(got).collect())
    }
}

fn gelu_tanh_on(backend: BackendKind) {
    for (x, got) in run(backend, GeluTanh).unwrap() {
        let want = 0.5 * x * (1.0 + ((2.0 / std::f64::consts::PI).sqrt() * (x + 0.044715 * x * x * x)).tanh());
        assert!(got.is_finite() && (got as f64 - want).abs() <= 1e-5 * want.abs().max(1.0), "{}: gelu_tanh({x}) = {got}, want {want}", backend.name());
    }
}
#[test]
fn gelu_tanh_ndarray() {
    gelu_tanh_on(BackendKind::Ndarray);
}
#[test]
fn gelu_tanh_wgpu() {
    gelu_tanh_on(BackendKind::Wgpu);
}

/// A quantized weight unpacked on the device (shifts, masks, int → float, scales), and an
/// embedding lookup of its rows, against the reference dequantization on the host.
struct QuantUnpack;
impl BackendTask for QuantUnpack {
    type Output = Vec<(String, f32)>;
    fn run<B: Backend>(self, device: B::Device) -> rfgen_core::Result<Vec<(String, f32)>> {
        use rfgen_core::quant::{quantize, QuantScheme, QuantWeight};
        let (d_out, d_in) = (24, 64);
        let w: Vec<f32> = rfgen_core::noise::gaussian(5, d_out * d_in).iter().map(|x| x * 0.3).collect();
        let mut worst = Vec::new();
        for scheme in [QuantScheme::Int8, QuantScheme::Int4 { group: 32 }] {
            let q = quantize("w", &w, d_out, d_in, scheme)?;
            let want = q.dequantize();
            let dev = QuantWeight::<B>::from_quantized(&q, &device).expect("whole words");
            let got = dev.dequantize().into_data().convert::<f32>().into_vec::<f32>().unwrap();
            let diff = got.iter().zip(&want).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
            worst.push((format!("{scheme:?} dequantize"), diff));
            let ids = burn::tensor::Tensor::<B, 1, burn::tensor::Int>::from_ints([3, 0, 23, 3].as_slice(), &device);
            let rows = dev.select_rows(ids).dequantize().into_data().convert::<f32>().into_vec::<f32>().unwrap();
            let want_rows: Vec<f32> = [3, 0, 23, 3].iter().flat_map(|&r| want[r * d_in..(r + 1) * d_in].to_vec()).collect();
            let diff = rows.iter().zip(&want_rows).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
            worst.push((format!("{scheme:?} rows"), diff));
        }
        Ok(worst)
    }
}

fn quant_unpack_on(backend: BackendKind) {
    for (what, diff) in run(backend, QuantUnpack).unwrap() {
        assert!(diff <= 1e-6, "{}: {what} differs from the host's by {diff}", backend.name());
    }
}
#[test]
fn quant_unpack_ndarray() {
    quant_unpack_on(BackendKind::Ndarray);
}
#[test]
fn quant_unpack_wgpu() {
    quant_unpack_on(BackendKind::Wgpu);
}
