//! `rfgen-cli convert → inspect → sample` for every dtype and quantization on the fixture models
//! (ndarray and wgpu), and the bad inputs of conversion.

use std::path::Path;
use std::process::Command;

use rfgen_core::image::psnr;
use rfgen_tests::*;

const BIN: &str = env!("CARGO_BIN_EXE_rfgen-cli");

fn cli(args: &[&str]) -> std::process::Output {
    Command::new(BIN).args(args).output().unwrap()
}

fn ok(args: &[&str]) -> String {
    let out = cli(args);
    assert!(out.status.success(), "rfgen-cli {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// Fails with a one-line error that mentions `needle`, and no panic.
fn fails(args: &[&str], needle: &str) {
    let out = cli(args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "rfgen-cli {} should fail", args.join(" "));
    assert!(!stderr.contains("panicked") && !stderr.contains("internal failure"), "{stderr}");
    let last = stderr.lines().filter(|l| l.starts_with("error: ")).last().unwrap_or("");
    assert!(last.to_lowercase().contains(&needle.to_lowercase()), "expected {needle:?} in: {stderr}");
}

struct Case {
    tag: &'static str,
    args: &'static [&'static str],
    /// Least PSNR of the decoded image against the f32 original, and largest latent difference.
    min_psnr: f64,
    max_latent: f32,
}

const CASES: [Case; 7] = [
    Case { tag: "f32", args: &["--dtype", "f32"], min_psnr: 80.0, max_latent: 1e-4 },
    Case { tag: "f16", args: &["--dtype", "f16"], min_psnr: 40.0, max_latent: 1e-2 },
    Case { tag: "bf16", args: &["--dtype", "bf16"], min_psnr: 35.0, max_latent: 1e-1 },
    Case { tag: "int8", args: &["--dtype", "f16", "--quant", "int8"], min_psnr: 35.0, max_latent: 2e-1 },
    Case { tag: "int4g32", args: &["--dtype", "f16", "--quant", "int4", "--group-size", "32"], min_psnr: 15.0, max_latent: 5.0 },
    Case { tag: "int4g16", args: &["--quant", "int4", "--group-size", "16", "--shard-mb", "0.13"], min_psnr: 15.0, max_latent: 5.0 },
    // Shards smaller than the embedding table: it is stored as row blocks.
    Case { tag: "f32-split", args: &["--shard-mb", "0.13"], min_psnr: 80.0, max_latent: 1e-4 },
];

fn sample_dump(model: &Path, vae: &Path, ids: &str, noise: &Path, backend: &str, dump: &Path) -> (Vec<f32>, Vec<f32>) {
    let m = model.to_str().unwrap();
    let v = vae.to_str().unwrap();
    ok(&["sample", "--model", m, "--vae", v, "--token-ids", ids, "--steps", "4", "--backend", backend, "--noise", noise.to_str().unwrap(), "--dump", dump.to_str().unwrap()]);
    let io = read_io(dump);
    (io["z1"].f32.clone(), io["image"].f32.clone())
}

#[test]
fn convert_inspect_sample_round_trip() {
    let vae = fixture_dirs_checked(FixtureKind::Vae).into_iter().next().expect("a VAE fixture");
    for (k, model) in fixture_dirs_checked(FixtureKind::JanusFlow).iter().enumerate() {
        let tmp = tempdir(&format!("convert-rt{k}"));
        let io = read_io(&model.join("io.safetensors"));
        let ids = &io["input_ids"];
        let len = ids.shape[1];
        let n = io["prompt_lengths"].i64[0] as usize;
        let row: Vec<String> = ids.i64[len - n..len].iter().map(|x| x.to_string()).collect();
        let row = row.join(",");
        let z0 = &io["z0"];
        let noise = tmp.join("z0.safetensors");
        let mut nw = rfgen_core::checkpoint::Weights::new();
        nw.insert_f32("z0", z0.shape[1..].to_vec(), z0.index(0));
        std::fs::write(&noise, nw.to_safetensors(None).unwrap()).unwrap();
        let original_bytes = std::fs::metadata(model.join("weights.safetensors")).unwrap().len() as f64;

        let mut r = Report::default();
        for backend in ["ndarray", "wgpu"] {
            let (z_ref, img_ref) = sample_dump(model, &vae, &row, &noise, backend, &tmp.join("ref.safetensors"));
            for case in &CASES {
                let out = tmp.join(format!("{}-{backend}", case.tag));
                let mut args = vec!["convert", "--from", model.to_str().unwrap(), "--to", out.to_str().unwrap()];
                args.extend_from_slice(case.args);
                ok(&args);
                let text = ok(&["inspect", out.to_str().unwrap()]);
                r.check(&format!("{} inspect", case.tag), text.contains("validation: ok") && text.contains("verified"), text.clone());
                let manifest: serde_json::Value =
                    serde_json::from_str(&std::fs::read_to_string(out.join("manifest.json")).unwrap()).unwrap();
                let limit = (case.args.iter().position(|a| *a == "--shard-mb").map(|i| case.args[i + 1].parse::<f64>().unwrap()).unwrap_or(128.0)
                    * (1u64 << 20) as f64) as u64;
                for shard in manifest["shards"].as_array().unwrap() {
                    r.check("shard size", shard["bytes"].as_u64().unwrap() <= limit, format!("{shard} over {limit}"));
                }
                if case.tag.ends_with("split") {
                    r.check("split", !manifest["split"].as_object().unwrap().is_empty(), "no tensor was split".into());
                    r.check("shards", manifest["shards"].as_array().unwrap().len() > 1, "one shard".into());
                }
                let (z, img) = sample_dump(&out, &vae, &row, &noise, backend, &tmp.join("q.safetensors"));
                let p = psnr(&img, &img_ref);
                let size: u64 = manifest["total_bytes"].as_u64().unwrap();
                eprintln!("[{} {backend}] size {:.1}% of f32, image PSNR {p:.2} dB", case.tag, 100.0 * size as f64 / original_bytes);
                r.compare(&format!("{} {backend} z1", case.tag), &z, &z_ref, case.max_latent, None);
                r.check(&format!("{} {backend} PSNR", case.tag), p >= case.min_psnr, format!("{p:.2} dB < {}", case.min_psnr));
            }
            // The VAE converts and decodes too.
            let vout = tmp.join(format!("vae-int8-{backend}"));
            ok(&["convert", "--from", vae.to_str().unwrap(), "--to", vout.to_str().unwrap(), "--dtype", "f16", "--quant", "int8"]);
            assert!(ok(&["inspect", vout.to_str().unwrap()]).contains("validation: ok"));
            let (_, img) = sample_dump(model, &vout, &row, &noise, backend, &tmp.join("v.safetensors"));
            let p = psnr(&img, &img_ref);
            r.check(&format!("vae int8 {backend} PSNR"), p >= 35.0, format!("{p:.2} dB"));
        }
        r.finish(&model.display().to_string());
    }
}

#[test]
fn conversion_bad_inputs_are_clear_errors_and_leave_nothing() {
    let model = fixture_dirs_checked(FixtureKind::JanusFlow).into_iter().next().unwrap();
    let tmp = tempdir("convert-bad");
    let m = model.to_str().unwrap();
    let to = tmp.join("out");
    let t = to.to_str().unwrap();
    let nothing_left = || {
        let left: Vec<_> = std::fs::read_dir(&tmp).unwrap().filter_map(|e| e.ok()).map(|e| e.file_name()).collect();
        assert!(!to.exists() && left.iter().all(|n| !n.to_string_lossy().contains("partial")), "left behind: {left:?}");
    };

    // A group size that does not divide the rows names the tensor.
    fails(&["convert", "--from", m, "--to", t, "--quant", "int4", "--group-size", "6"], "does not divide");
    nothing_left();

    // A source with a missing tensor.
    let src = tmp.join("src");
    std::fs::create_dir_all(&src).unwrap();
    for f in ["config.json", "generation.json"] {
        std::fs::copy(model.join(f), src.join(f)).unwrap();
    }
    let full = rfgen_core::checkpoint::load_weights_dir(&model).unwrap();
    let mut partial = rfgen_core::checkpoint::Weights::new();
    let dropped = "language_model.model.norm.weight";
    for name in full.names().filter(|n| *n != dropped) {
        partial.insert_raw(name, full.dtype(name).unwrap(), full.shape(name).unwrap().to_vec(), full.raw(name).unwrap().to_vec());
    }
    std::fs::write(src.join("model.safetensors"), partial.to_safetensors(None).unwrap()).unwrap();
    fails(&["convert", "--from", src.to_str().unwrap(), "--to", t], dropped);
    nothing_left();

    // An existing target is refused without --force, replaced with it.
    ok(&["convert", "--from", m, "--to", t, "--shard-mb", "0.25"]);
    fails(&["convert", "--from", m, "--to", t], "already exists");
    ok(&["convert", "--from", m, "--to", t, "--shard-mb", "0.25", "--force"]);

    // A manifest whose sha256 does not match, and a truncated shard.
    let shard = std::fs::read_dir(&to).unwrap().filter_map(|e| e.ok()).map(|e| e.path()).find(|p| p.extension().is_some_and(|e| e == "safetensors")).unwrap();
    let name = shard.file_name().unwrap().to_string_lossy().to_string();
    let original = std::fs::read(&shard).unwrap();
    let mut flipped = original.clone();
    let last = flipped.len() - 1;
    flipped[last] ^= 0x55;
    std::fs::write(&shard, &flipped).unwrap();
    fails(&["inspect", t], "sha256 mismatch");
    fails(&["sample", "--model", t, "--token-ids", "1,5,4", "--steps", "1", "--dump", tmp.join("d").to_str().unwrap()], &name);
    std::fs::write(&shard, &original[..original.len() / 2]).unwrap();
    fails(&["inspect", t], "truncated");
    fails(&["convert", "--from", t, "--to", tmp.join("again").to_str().unwrap()], "truncated");
    std::fs::remove_file(&shard).unwrap();
    fails(&["inspect", t], "missing");
    fails(&["convert", "--from", m, "--to", tmp.join("x").to_str().unwrap(), "--quant", "int3"], "unknown quantization");
    fails(&["convert", "--from", tmp.join("nope").to_str().unwrap(), "--to", tmp.join("x").to_str().unwrap()], "does not exist");
}
