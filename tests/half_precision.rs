//! `--dtype`: f16 on wgpu (adapters with shader-f16, e.g. Mesa lavapipe) against f32, and the
//! clear errors for the combinations that do not exist.
//!
//! One test function: burn fixes a wgpu device's float dtype at its first use in a process, so
//! nothing else in this binary may touch the wgpu device in f32.

use std::path::{Path, PathBuf};

use burn::tensor::{backend::Backend, Tensor};
use rfgen_backends::{run, run_with_precision, BackendKind, BackendTask, Precision};
use rfgen_core::image::psnr;
use rfgen_core::pipeline::{ModelFiles, Pipeline, VaeFiles};
use rfgen_core::sampler::SampleConfig;
use rfgen_tests::*;

/// The fixture's prompts (cond rows of input_ids without their left padding), noise and VAE,
/// `steps` Euler steps; returns (z1, image).
struct Generate {
    model: PathBuf,
    vae: PathBuf,
    steps: usize,
}

impl BackendTask for Generate {
    type Output = (Vec<f32>, Vec<f32>);
    fn run<B: Backend>(self, device: B::Device) -> rfgen_core::Result<(Vec<f32>, Vec<f32>)> {
        let io = read_io(&self.model.join("io.safetensors"));
        let pipe = Pipeline::<B>::new(ModelFiles::read_dir(&self.model)?, Some(VaeFiles::read_dir(&self.vae)?), &device)?;
        let ids = &io["input_ids"];
        let len = ids.shape[1];
        let prompts: Vec<Vec<u32>> = io["prompt_lengths"]
            .i64
            .iter()
            .enumerate()
            .map(|(i, &l)| ids.i64[i * len + len - l as usize..(i + 1) * len].iter().map(|&x| x as u32).collect())
            .collect();
        let z0: Tensor<B, 4> = io["z0"].to_tensor(&device);
        let out = pipe.generate(&prompts, z0, &SampleConfig { steps: self.steps, cfg: 2.0, ..SampleConfig::default() }, |_| {})?;
        Ok((to_vec(&out.z1), to_vec(&out.images.expect("VAE loaded"))))
    }
}

fn vae_dir() -> PathBuf {
    fixture_dirs(FixtureKind::Vae).into_iter().next().expect("a VAE fixture")
}

fn err<T>(r: rfgen_core::Result<T>) -> String {
    match r {
        Ok(_) => panic!("expected an error"),
        Err(e) => e.to_string(),
    }
}

struct Nothing;
impl BackendTask for Nothing {
    type Output = ();
    fn run<B: Backend>(self, _: B::Device) -> rfgen_core::Result<()> {
        Ok(())
    }
}

#[test]
fn f16_on_wgpu_matches_f32_and_unsupported_dtypes_are_clear_errors() {
    // Combinations that do not exist say why.
    let e = err(run_with_precision(BackendKind::Ndarray, Precision::F16, Nothing));
    assert!(e.contains("f16") && e.contains("f32 only"), "{e}");
    let e = err(run_with_precision(BackendKind::Wgpu, Precision::Bf16, Nothing));
    assert!(e.contains("bf16") && e.contains("cuda"), "{e}");
    if !Path::new("/dev/nvidiactl").exists() {
        let e = err(run_with_precision(BackendKind::Cuda, Precision::Bf16, Nothing));
        assert!(e.contains("no NVIDIA GPU"), "{e}");
    }
    assert_eq!("BF16".parse::<Precision>().unwrap(), Precision::Bf16);
    assert!("f8".parse::<Precision>().is_err());

    let vae = vae_dir();
    for model in fixture_dirs_checked(FixtureKind::JanusFlow) {
        let steps = 4;
        let (z32, img32) = run(BackendKind::Ndarray, Generate { model: model.clone(), vae: vae.clone(), steps }).unwrap();
        match run_with_precision(BackendKind::Wgpu, Precision::F16, Generate { model: model.clone(), vae: vae.clone(), steps }) {
            Ok((z16, img16)) => {
                let dz = z32.iter().zip(&z16).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
                let p = psnr(&img32, &img16);
                eprintln!("[{}] wgpu f16 vs ndarray f32: z1 max |diff| {dz:.2e}, image PSNR {p:.1} dB", model.display());
                assert!(z16.iter().all(|x| x.is_finite()), "f16 latent has NaN/inf");
                assert!(p >= 40.0, "f16 image PSNR {p:.1} dB < 40 dB");
            }
            // An adapter without shader-f16 must be named as such.
            Err(e) => {
                let e = e.to_string();
                assert!(e.contains("shader-f16") || e.contains("no usable GPU adapter"), "{e}");
                eprintln!("wgpu f16 not available here: {e}");
            }
        }
    }
}
