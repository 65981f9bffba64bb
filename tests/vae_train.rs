//! The VAE encoder against diffusers (tests/fixtures/vae_encoder_tiny, made by
//! tools/gen_vae_encoder_fixture.py), VAE training (loss goes down, exact resume, the exported
//! directory loads) and the errors on bad inputs.

use std::path::{Path, PathBuf};

use burn::backend::{Autodiff, NdArray};
use burn::tensor::{Tensor, TensorData};
use rfgen_core::checkpoint::Weights;
use rfgen_core::pipeline::VaeFiles;
use rfgen_core::data::{load_dir, Dataset, Split};
use rfgen_core::vae::train::{
    encode_flow_latents, load_checkpoint, save_checkpoint, train_vae, VaeRunOptions, VaeTrainConfig, VaeTrainer, VAE_WEIGHTS_FILE,
};
use rfgen_core::vae::{set_im2col, AutoencoderKl};
use rfgen_tests::{read_io, tempdir, to_vec, Report};

type B = NdArray<f32>;
type AB = Autodiff<NdArray<f32>>;

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/vae_encoder_tiny")
}

#[test]
fn encoder_parity_ndarray() {
    encoder_parity(false);
}

#[test]
fn encoder_parity_ndarray_im2col() {
    encoder_parity(true);
}

fn encoder_parity(im2col: bool) {
    set_im2col(im2col);
    let dir = fixture();
    let files = VaeFiles::read_dir(&dir).expect("fixture loads");
    let io = read_io(&dir.join("io.safetensors"));
    let dev = Default::default();
    let vae = AutoencoderKl::<B>::load_full(&files.weights, &files.config, &dev).expect("full VAE loads");
    let image = io["image"].to_tensor::<B, 4>(&dev);
    let post = vae.encode(image.clone()).expect("encodes");
    let mut r = Report::default();
    r.compare("mean", &to_vec(&post.mean), &io["mean"].f32, 1e-4, None);
    r.compare("logvar", &to_vec(&post.logvar), &io["logvar"].f32, 1e-4, None);
    let flow = vae.encode_flow_latent(image).expect("encodes");
    r.compare("flow_latent", &to_vec(&flow), &io["flow_latent"].f32, 1e-4, None);
    r.compare("recon", &to_vec(&vae.decode(post.mean.clone())), &io["recon"].f32, 1e-4, None);
    // decode_flow_latent inverts encode_flow_latent's scaling.
    let back = vae.decode_flow_latent(flow);
    r.compare("decode_flow_latent(encode_flow_latent)", &to_vec(&back), &io["recon"].f32, 1e-4, None);

    // The decoder-only loader still takes the full checkpoint (encoder keys ignored) ...
    let dec = AutoencoderKl::<B>::load(&files.weights, &files.config, &dev).expect("decoder-only load");
    r.check("decoder-only has no encoder", !dec.has_encoder(), String::new());
    r.compare("recon (decoder-only)", &to_vec(&dec.decode(io["mean"].to_tensor::<B, 4>(&dev))), &io["recon"].f32, 1e-4, None);
    let err = dec.encode(io["image"].to_tensor::<B, 4>(&dev)).err().map(|e| e.to_string()).unwrap_or_default();
    r.check("encode without encoder fails", err.contains("without its encoder"), err);
    // ... and a decoder-only checkpoint loads for decoding, but not as a full VAE.
    let mut dec_only = Weights::new();
    for name in files.weights.names() {
        if !(name.starts_with("encoder.") || name.starts_with("quant_conv.")) {
            let shape = files.weights.shape(name).unwrap().to_vec();
            dec_only.insert_f32(name, shape, files.weights.read_f32(name).unwrap().unwrap());
        }
    }
    r.check("decoder-only checkpoint loads", AutoencoderKl::<B>::load(&dec_only, &files.config, &dev).is_ok(), String::new());
    let err = AutoencoderKl::<B>::load_full(&dec_only, &files.config, &dev).err().map(|e| e.to_string()).unwrap_or_default();
    r.check("load_full names missing encoder tensors", err.contains("missing tensors") && err.contains("encoder.down_blocks.0"), err);
    // A wrong input shape is an error, not a panic.
    let odd = Tensor::<B, 4>::zeros([1, 3, 31, 31], &dev);
    r.check("odd size refused", vae.encode(odd).is_err(), String::new());
    r.finish(if im2col { "vae encoder parity (im2col)" } else { "vae encoder parity" });
}

/// A dataset directory of `n` synthetic `size`² images (coloured rectangles on white); every
/// fourth item held out.
fn synthetic_dataset(dir: &Path, n: usize, size: usize) {
    std::fs::create_dir_all(dir).unwrap();
    let mut images = vec![255u8; n * size * size * 3];
    let mut items = Vec::new();
    for i in 0..n {
        let (x0, y0) = (i % (size / 2), (i * 7) % (size / 2));
        let (w, h) = (size / 4 + i % 5, size / 3 + i % 3);
        let color = [(i * 53 % 256) as u8, (i * 97 % 256) as u8, (i * 31 % 256) as u8];
        for y in y0..(y0 + h).min(size) {
            for x in x0..(x0 + w).min(size) {
                let p = ((i * size + y) * size + x) * 3;
                images[p..p + 3].copy_from_slice(&color);
            }
        }
        let split = if i % 4 == 3 { "heldout" } else { "train" };
        items.push(serde_json::json!({"id": format!("img{i}"), "base": format!("img{i}"), "split": split, "captions": ["a box"]}));
    }
    write_images(dir, &images, vec![n, size, size, 3], safetensors::Dtype::U8);
    let captions = serde_json::json!({"name": "synthetic", "size": size, "items": items});
    std::fs::write(dir.join("captions.json"), serde_json::to_vec(&captions).unwrap()).unwrap();
}

fn write_images(dir: &Path, bytes: &[u8], shape: Vec<usize>, dtype: safetensors::Dtype) {
    let view = safetensors::tensor::TensorView::new(dtype, shape, bytes).unwrap();
    std::fs::write(dir.join("images.safetensors"), safetensors::serialize([("images", view)], None).unwrap()).unwrap();
}

/// The im2col convolution equals burn's direct convolution on every kernel, padding and stride
/// the VAE could use, with and without bias, on non-square inputs.
#[test]
fn im2col_convolution_matches_direct() {
    use rfgen_core::checkpoint::VarBuilder;
    use rfgen_core::layers::{Conv2d, Conv2dSpec};
    use rfgen_core::vae::conv2d_im2col;
    let dev = Default::default();
    let mut r = Report::default();
    for (i, &(k, p, s, bias)) in [(1, 0, 1, true), (3, 1, 1, true), (3, 0, 1, false), (5, 2, 1, true), (3, 2, 1, true), (3, 0, 2, true), (3, 1, 2, false)]
        .iter()
        .enumerate()
    {
        let conv = Conv2d::<B>::load(&VarBuilder::random(i as u64, &dev), Conv2dSpec::new(5, 7, k).padding(p).stride(s).bias(bias));
        let x = Tensor::<B, 4>::from_data(TensorData::new(rfgen_core::noise::gaussian(i as u64 + 9, 2 * 5 * 9 * 12), [2, 5, 9, 12]), &dev);
        let (got, want) = (conv2d_im2col(&conv, x.clone()), conv.forward(x));
        r.check(&format!("k{k} p{p} s{s} shape"), got.dims() == want.dims(), format!("{:?} vs {:?}", got.dims(), want.dims()));
        if got.dims() == want.dims() {
            r.compare(&format!("k{k} p{p} s{s} bias {bias}"), &to_vec(&got), &to_vec(&want), 1e-4, None);
        }
    }
    r.finish("im2col convolutions");
}

/// Gradients through the im2col convolutions equal those through burn's own.
#[test]
fn im2col_gradients_match() {
    use burn::module::Param;
    use rfgen_core::checkpoint::VarBuilder;
    let dev = Default::default();
    let config = tiny_config().vae;
    let x: Vec<f32> = rfgen_core::noise::gaussian(3, 2 * 3 * 16 * 16);
    let grads_of = |im2col: bool| -> Vec<Vec<f32>> {
        set_im2col(im2col);
        let vae = AutoencoderKl::<AB>::build_full(&VarBuilder::random(7, &dev), &config);
        let x = Tensor::<AB, 4>::from_data(TensorData::new(x.clone(), [2, 3, 16, 16]), &dev);
        let post = vae.encode(x.clone()).unwrap();
        let loss = (vae.decode(post.mean.clone()) - x).powi_scalar(2).mean() + post.kl().mean().mul_scalar(1e-3);
        let grads = loss.backward();
        let enc = vae.encoder.as_ref().unwrap();
        let g4 = |p: &Param<Tensor<AB, 4>>| p.val().grad(&grads).unwrap().into_data().to_vec::<f32>().unwrap();
        vec![
            g4(&enc.conv_in.weight),
            g4(&enc.down_blocks[0].downsamplers[0].conv.weight),
            g4(&vae.quant_conv.as_ref().unwrap().weight),
            g4(&vae.decoder.up_blocks[0].upsamplers[0].conv.weight),
            g4(&vae.decoder.conv_out.weight),
            vae.decoder.conv_out.bias.as_ref().unwrap().val().grad(&grads).unwrap().into_data().to_vec::<f32>().unwrap(),
        ]
    };
    let (direct, im2col) = (grads_of(false), grads_of(true));
    let mut r = Report::default();
    for (i, (a, b)) in direct.iter().zip(&im2col).enumerate() {
        let scale = a.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-6);
        let rel: Vec<f32> = b.iter().map(|v| v / scale).collect();
        let want: Vec<f32> = a.iter().map(|v| v / scale).collect();
        r.compare(&format!("grad {i} (relative to its max)"), &rel, &want, 1e-4, None);
    }
    r.finish("im2col gradients");
}

fn tiny_config() -> VaeTrainConfig {
    let mut c = VaeTrainConfig::small(&[8, 16], 4, 16);
    c.batch = 4;
    c.lr = 3e-3;
    c.warmup = 2;
    c.schedule_steps = 40;
    c
}

#[test]
fn training_reduces_the_loss() {
    set_im2col(true);
    let tmp = tempdir("vae-train-loss");
    synthetic_dataset(&tmp.join("data"), 16, 16);
    let data = load_dir(&tmp.join("data")).unwrap();
    assert_eq!((data.indices(Split::Train).len(), data.indices(Split::Heldout).len()), (12, 4));
    let mut t = VaeTrainer::<AB>::new(tiny_config(), &Default::default()).unwrap();
    let losses: Vec<f64> = (0..30).map(|_| t.step_on(&data).unwrap().mse).collect();
    let first = losses[..5].iter().sum::<f64>() / 5.0;
    let last = losses[25..].iter().sum::<f64>() / 5.0;
    eprintln!("reconstruction MSE: first 5 steps {first:.4}, last 5 {last:.4}");
    assert!(last < 0.5 * first, "MSE did not go down: {first} -> {last} ({losses:?})");
}

fn run(out: &Path, data: &Dataset, steps: u64, resume: Option<PathBuf>) -> rfgen_core::Result<rfgen_core::vae::train::VaeRunReport> {
    let opts = VaeRunOptions { out: out.to_path_buf(), steps, ckpt_every: 2, resume, log_every: 1, ..Default::default() };
    let config = opts.resume.is_none().then(tiny_config);
    train_vae::<AB>(config, data, &opts, &Default::default(), &mut |l| eprintln!("{l}"))
}

#[test]
fn resume_is_exact() {
    set_im2col(true);
    let tmp = tempdir("vae-train-resume");
    synthetic_dataset(&tmp.join("data"), 16, 16);
    let data = load_dir(&tmp.join("data")).unwrap();
    let (a, b) = (tmp.join("a"), tmp.join("b"));
    let full = run(&a, &data, 6, None).unwrap();
    run(&b, &data, 3, None).unwrap();
    let resumed = run(&b, &data, 6, Some(b.clone())).unwrap();
    for f in ["model.safetensors", "ema.safetensors", "optim.safetensors", "state.json"] {
        let (x, y) = (a.join("checkpoints/step-00000006").join(f), b.join("checkpoints/step-00000006").join(f));
        assert!(std::fs::read(&x).unwrap() == std::fs::read(&y).unwrap(), "{f} differs after resume");
    }
    assert_eq!(std::fs::read(a.join(VAE_WEIGHTS_FILE)).unwrap(), std::fs::read(b.join(VAE_WEIGHTS_FILE)).unwrap());
    assert_eq!(full.psnr_heldout, resumed.psnr_heldout);
    // Only the latest checkpoint is kept; no temporary directory is left behind.
    let left: Vec<_> = std::fs::read_dir(a.join("checkpoints")).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(left, vec![std::ffi::OsString::from("step-00000006")]);
    // The log has one record per step of both halves.
    assert_eq!(std::fs::read_to_string(b.join("train_log.jsonl")).unwrap().lines().count(), 6);

    // In memory: save + load through the files gives the same trainer.
    let dev = Default::default();
    let mut t1 = VaeTrainer::<AB>::new(tiny_config(), &dev).unwrap();
    for _ in 0..2 {
        t1.step_on(&data).unwrap();
    }
    let ck = save_checkpoint(&t1, &tmp.join("c")).unwrap();
    let mut t2 = load_checkpoint::<AB>(&ck, &dev).unwrap();
    let (s1, s2) = (t1.step_on(&data).unwrap(), t2.step_on(&data).unwrap());
    assert_eq!(s1.loss, s2.loss);
    assert!(t1.weights().to_safetensors(None).unwrap() == t2.weights().to_safetensors(None).unwrap());
}

#[test]
fn exported_vae_loads_and_is_normalised() {
    set_im2col(true);
    let tmp = tempdir("vae-train-export");
    synthetic_dataset(&tmp.join("data"), 16, 16);
    let data = load_dir(&tmp.join("data")).unwrap();
    let out = tmp.join("out");
    let report = run(&out, &data, 4, None).unwrap();
    for f in ["config.json", VAE_WEIGHTS_FILE, "metrics.json", "train_log.jsonl"] {
        assert!(out.join(f).exists(), "{f} missing");
    }
    let metrics: serde_json::Value = serde_json::from_slice(&std::fs::read(out.join("metrics.json")).unwrap()).unwrap();
    assert!(metrics["psnr_heldout"].as_f64().unwrap() > 0.0);
    assert_eq!(metrics["heldout_images"], 4);
    let files = VaeFiles::read_dir(&out).expect("the export is a VAE directory");
    assert_eq!(files.config.shift_factor, Some(report.shift_factor));
    let dev = Default::default();
    AutoencoderKl::<B>::load(&files.weights, &files.config, &dev).expect("decoder loads");
    let vae = AutoencoderKl::<B>::load_full(&files.weights, &files.config, &dev).expect("full VAE loads");
    // Flow latents of the training images: mean 0, std 1.
    let train = data.indices(Split::Train);
    let x = Tensor::<B, 4>::from_data(TensorData::new(data.pixels_nchw(&train), [train.len(), 3, 16, 16]), &dev);
    let z = to_vec(&vae.encode_flow_latent(x).unwrap());
    let m = z.iter().map(|&v| v as f64).sum::<f64>() / z.len() as f64;
    let s = (z.iter().map(|&v| (v as f64 - m).powi(2)).sum::<f64>() / z.len() as f64).sqrt();
    assert!(m.abs() < 1e-3 && (s - 1.0).abs() < 1e-3, "flow latents mean {m}, std {s}");
    // encode_flow_latents (what `rfgen-cli encode-latents` writes) gives the same latents in
    // dataset order.
    let (all, shape) = encode_flow_latents(&vae, &data, &train, 5, &dev, &mut |_, _| {}).unwrap();
    assert_eq!(shape, [train.len(), 4, 8, 8]);
    let max = all.iter().zip(&z).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
    assert!(max < 1e-4, "batched latents differ by {max}");
    let cfg: serde_json::Value = serde_json::from_slice(&std::fs::read(out.join("config.json")).unwrap()).unwrap();
    assert_eq!(cfg["_class_name"], "AutoencoderKL");
    assert_eq!(cfg["down_block_types"].as_array().unwrap().len(), 2);
}

fn err_of<T>(r: rfgen_core::Result<T>) -> String {
    match r {
        Ok(_) => panic!("expected an error"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn bad_inputs_are_clear_errors() {
    set_im2col(true);
    let tmp = tempdir("vae-train-bad");
    let e = err_of(load_dir(&tmp.join("nope")));
    assert!(e.contains("does not exist"), "{e}");

    let d = tmp.join("data");
    synthetic_dataset(&d, 8, 16);
    std::fs::remove_file(d.join("captions.json")).unwrap();
    let e = err_of(load_dir(&d));
    assert!(e.contains("captions.json"), "{e}");

    synthetic_dataset(&d, 8, 16);
    write_images(&d, &vec![0u8; 8 * 16 * 16 * 4], vec![8, 16, 16, 4], safetensors::Dtype::U8);
    let e = err_of(load_dir(&d));
    assert!(e.contains("shape [8, 16, 16, 4]"), "{e}");
    write_images(&d, &vec![0u8; 7 * 16 * 16 * 3], vec![7, 16, 16, 3], safetensors::Dtype::U8);
    let e = err_of(load_dir(&d));
    assert!(e.contains("8 items"), "{e}");
    write_images(&d, &vec![0u8; 8 * 16 * 16 * 3 * 4], vec![8, 16, 16, 3], safetensors::Dtype::F32);
    let e = err_of(load_dir(&d));
    assert!(e.contains("expected U8"), "{e}");
    std::fs::write(d.join("images.safetensors"), b"garbage").unwrap();
    let e = err_of(load_dir(&d));
    assert!(e.contains("not a valid safetensors"), "{e}");

    // Settings that cannot train.
    synthetic_dataset(&d, 8, 16);
    let data = load_dir(&d).unwrap();
    let dev = Default::default();
    let mut c = tiny_config();
    c.image_size = 15;
    let e = err_of(VaeTrainer::<AB>::new(c, &dev));
    assert!(e.contains("multiple of the downsampling factor 2"), "{e}");
    let mut c = tiny_config();
    c.vae.block_out_channels = vec![8, 12];
    let e = err_of(VaeTrainer::<AB>::new(c, &dev));
    assert!(e.contains("not divisible by norm_num_groups"), "{e}");
    let mut c = tiny_config();
    c.lr = f64::NAN;
    assert!(err_of(VaeTrainer::<AB>::new(c, &dev)).contains("learning rate"));
    // Data of another size than the run's.
    let mut c = tiny_config();
    c.image_size = 32;
    let opts = VaeRunOptions { out: tmp.join("o"), steps: 1, ..Default::default() };
    let e = err_of(train_vae::<AB>(Some(c), &data, &opts, &dev, &mut |_| {}));
    assert!(e.contains("16px") && e.contains("32px"), "{e}");
    // A wrong batch.
    let mut t = VaeTrainer::<AB>::new(tiny_config(), &dev).unwrap();
    assert!(err_of(t.step(&[0.0; 10], 1)).contains("not 1 images"));
    // Resume from something that is not a checkpoint.
    let opts = VaeRunOptions { out: tmp.join("o"), steps: 1, resume: Some(d.clone()), ..Default::default() };
    let e = err_of(train_vae::<AB>(None, &data, &opts, &dev, &mut |_| {}));
    assert!(e.contains("not a VAE checkpoint"), "{e}");
}

/// Timing of the pieces of a VAE training step on ndarray (`cargo test --release -p rfgen-tests
/// --test vae_train bench_pieces -- --ignored --nocapture`).
#[test]
#[ignore]
fn bench_pieces() {
    use rfgen_core::checkpoint::VarBuilder;
    use rfgen_core::layers::{Conv2d, Conv2dSpec, GroupNorm};
    use std::time::Instant;
    let dev = Default::default();
    let vb = VarBuilder::<AB>::random(1, &dev);
    let (b, c, s) = (8, 64, 64);
    let conv = Conv2d::load(&vb.pp("conv"), Conv2dSpec::new(c, c, 3).padding(1));
    let norm = GroupNorm::load(&vb.pp("norm"), c, 32, 1e-6);
    let x = Tensor::<AB, 4>::from_data(TensorData::new(rfgen_core::noise::gaussian(1, b * c * s * s), [b, c, s, s]), &dev).require_grad();
    let time = |name: &str, f: &dyn Fn() -> Tensor<AB, 4>| {
        for rep in 0..3 {
            let t = Instant::now();
            let y = f();
            let t_f = t.elapsed().as_secs_f64();
            let g = y.sum().backward();
            let _ = x.grad(&g);
            let t_all = t.elapsed().as_secs_f64();
            if rep == 2 {
                eprintln!("{name}: fwd {:.1} ms, fwd+bwd {:.1} ms", t_f * 1e3, t_all * 1e3);
            }
        }
    };
    set_im2col(true);
    eprintln!("conv GEMM: {:.2} GFLOP fwd", 2.0 * (b * s * s * c * c * 9) as f64 / 1e9);
    time("conv3x3 im2col", &|| rfgen_core::vae::conv2d_im2col(&conv, x.clone()));
    time("conv3x3 direct", &|| conv.forward(x.clone()));
    time("group norm", &|| norm.forward(x.clone()));
    time("silu", &|| burn::tensor::activation::silu(x.clone()));
    time("add", &|| x.clone() + x.clone());
    let w = Tensor::<AB, 3>::from_data(TensorData::new(rfgen_core::noise::gaussian(2, c * c * 9), [1, c, c * 9]), &dev).require_grad();
    let cols = Tensor::<AB, 3>::from_data(TensorData::new(rfgen_core::noise::gaussian(3, b * c * 9 * s * s), [b, c * 9, s * s]), &dev);
    time("matmul only", &|| w.clone().matmul(cols.clone()).reshape([b, c, s, s]));
    let xp = x.clone().pad((1, 1, 1, 1), burn::tensor::ops::PadMode::Constant(0.0));
    time("pad", &|| x.clone().pad((1, 1, 1, 1), burn::tensor::ops::PadMode::Constant(0.0)));
    time("9 slices + cat", &|| {
        let mut v = Vec::new();
        for kh in 0..3 {
            for kw in 0..3 {
                v.push(xp.clone().slice([0..b, 0..c, kh..kh + s, kw..kw + s]));
            }
        }
        Tensor::cat(v, 1).slice([0..b, 0..c, 0..s, 0..s])
    });
    time("9 slices + stack", &|| {
        let mut v = Vec::new();
        for kh in 0..3 {
            for kw in 0..3 {
                v.push(xp.clone().slice([0..b, 0..c, kh..kh + s, kw..kw + s]));
            }
        }
        Tensor::stack::<5>(v, 2).reshape([b, c * 9, s, s]).slice([0..b, 0..c, 0..s, 0..s])
    });
}
