//! `rfgen-cli sample` end to end on every JanusFlow fixture, and its errors on bad inputs.

use std::path::{Path, PathBuf};
use std::process::Command;

use rfgen_tests::*;
use safetensors::Dtype;

const BIN: &str = env!("CARGO_BIN_EXE_rfgen-cli");

/// Writes f32 tensors `(name, shape, data)` to a safetensors file.
fn write_f32(path: &Path, tensors: &[(String, Vec<usize>, Vec<f32>)]) {
    let bytes: Vec<(String, Vec<usize>, Vec<u8>)> = tensors
        .iter()
        .map(|(n, s, d)| (n.clone(), s.clone(), d.iter().flat_map(|x| x.to_le_bytes()).collect()))
        .collect();
    let views: Vec<(String, safetensors::tensor::TensorView)> = bytes
        .iter()
        .map(|(n, s, b)| (n.clone(), safetensors::tensor::TensorView::new(Dtype::F32, s.clone(), b).unwrap()))
        .collect();
    std::fs::write(path, safetensors::serialize(views, None).unwrap()).unwrap();
}

fn read_all_f32(path: &Path) -> Vec<(String, Vec<usize>, Vec<f32>)> {
    let mut v: Vec<_> = read_io(path).into_iter().map(|(n, a)| (n, a.shape, a.f32)).collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

struct Fixture {
    dir: PathBuf,
    token_rows: Vec<String>,
    steps: usize,
    cfg: f64,
    io: std::collections::BTreeMap<String, Array>,
}

fn janusflow_fixtures() -> Vec<Fixture> {
    fixture_dirs_checked(FixtureKind::JanusFlow)
        .into_iter()
        .map(|dir| {
            let gen: serde_json::Value =
                serde_json::from_str(&std::fs::read_to_string(dir.join("generation.json")).unwrap()).unwrap();
            let io = read_io(&dir.join("io.safetensors"));
            let ids = &io["input_ids"];
            let len = ids.shape[1];
            let b = ids.shape[0] / 2;
            let lengths = &io["prompt_lengths"].i64;
            let token_rows = (0..b)
                .map(|i| {
                    ids.i64[i * len + len - lengths[i] as usize..(i + 1) * len]
                        .iter()
                        .map(|x| x.to_string())
                        .collect::<Vec<_>>()
                        .join(",")
                })
                .collect();
            Fixture {
                dir,
                token_rows,
                steps: gen["num_inference_steps"].as_u64().unwrap() as usize,
                cfg: gen["cfg_weight"].as_f64().unwrap(),
                io,
            }
        })
        .collect()
}

fn sample_cmd(f: &Fixture, model: &Path, noise: &Path, backend: &str) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.arg("sample").arg("--model").arg(model);
    for row in &f.token_rows {
        cmd.arg("--token-ids").arg(row);
    }
    cmd.args(["--steps", &f.steps.to_string(), "--cfg", &f.cfg.to_string(), "--backend", backend]);
    cmd.arg("--noise").arg(noise);
    cmd
}

fn write_noise(f: &Fixture, dir: &Path) -> PathBuf {
    let z0 = &f.io["z0"];
    let path = dir.join("z0.safetensors");
    write_f32(&path, &[("z0".into(), z0.shape.clone(), z0.f32.clone())]);
    path
}

fn end_to_end(backend: &str) {
    let vaes = fixture_dirs(FixtureKind::Vae);
    for (k, f) in janusflow_fixtures().iter().enumerate() {
        let tmp = tempdir(&format!("cli-e2e-{backend}-{k}"));
        let noise = write_noise(f, &tmp);
        let dump = tmp.join("out.safetensors");
        let out = sample_cmd(f, &f.dir, &noise, backend).arg("--dump").arg(&dump).output().unwrap();
        assert!(out.status.success(), "{}: {}", f.dir.display(), String::from_utf8_lossy(&out.stderr));
        let got = read_io(&dump);
        let mut r = Report::default();
        r.compare("z1", &got["z1"].f32, &f.io["z1"].f32, 1e-4, None);
        r.compare("v_cfg", &got["v_cfg"].f32, &f.io["v_cfg"].f32, 1e-4, None);
        r.check("v_cfg shape", got["v_cfg"].shape == f.io["v_cfg"].shape, format!("{:?}", got["v_cfg"].shape));

        // With a VAE: the decoded image of the VAE fixture whose input is this z1.
        for vae in &vaes {
            let vio = read_io(&vae.join("io.safetensors"));
            let paired = vio["z1"].f32.len() == f.io["z1"].f32.len()
                && vio["z1"].f32.iter().zip(&f.io["z1"].f32).all(|(a, b)| (a - b).abs() < 1e-6);
            if !paired {
                continue;
            }
            let dump2 = tmp.join("out-vae.safetensors");
            let png = tmp.join("img.png");
            let out = sample_cmd(f, &f.dir, &noise, backend)
                .arg("--vae")
                .arg(vae)
                .arg("--dump")
                .arg(&dump2)
                .arg("-o")
                .arg(&png)
                .output()
                .unwrap();
            assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
            let got = read_io(&dump2);
            r.compare("image (vae)", &got["image"].f32, &vio["image"].f32, 1e-4, None);
            let n = vio["image"].shape[0];
            for p in (0..n).map(|i| if n == 1 { png.clone() } else { tmp.join(format!("img-{i}.png")) }) {
                r.check("png written", p.exists(), format!("{} missing", p.display()));
            }
        }
        r.finish(&format!("cli {} on {backend}", f.dir.display()));
    }
}

#[test]
fn sample_matches_reference_ndarray() {
    end_to_end("ndarray");
}

#[test]
fn sample_matches_reference_wgpu() {
    end_to_end("wgpu");
}

/// Runs the CLI expecting failure: non-zero exit, no panic, one line on stderr containing `needle`.
fn expect_error(cmd: &mut Command, needle: &str) {
    let out = cmd.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(!out.status.success(), "expected failure mentioning {needle:?}, got success: {stderr}");
    assert!(!stderr.contains("panicked") && !stderr.contains("internal failure"), "panic: {stderr}");
    assert_eq!(lines.len(), 1, "expected a one-line error, got: {stderr}");
    assert!(lines[0].starts_with("error: "), "{stderr}");
    assert!(
        lines[0].to_lowercase().contains(&needle.to_lowercase()),
        "error should mention {needle:?}: {stderr}"
    );
}

/// A copy of the fixture model whose weights are changed by `edit`.
fn broken_model(f: &Fixture, tag: &str, edit: impl FnOnce(&mut Vec<(String, Vec<usize>, Vec<f32>)>)) -> TempDir {
    let dir = tempdir(tag);
    for name in ["config.json", "generation.json"] {
        std::fs::copy(f.dir.join(name), dir.join(name)).unwrap();
    }
    let mut tensors = read_all_f32(&f.dir.join("weights.safetensors"));
    edit(&mut tensors);
    write_f32(&dir.join("weights.safetensors"), &tensors);
    dir
}

#[test]
fn bad_inputs_give_one_line_errors() {
    let fixtures = janusflow_fixtures();
    let f = &fixtures[0];
    let tmp = tempdir("cli-bad");
    let noise = write_noise(f, &tmp);
    let dump = tmp.join("d.safetensors");
    let base = |model: &Path| {
        let mut c = sample_cmd(f, model, &noise, "ndarray");
        c.arg("--dump").arg(&dump);
        c
    };

    expect_error(&mut base(&tmp.join("no-such-model")), "does not exist");
    // With -o a missing model is still named (not mistaken for a missing VAE).
    let mut png = sample_cmd(f, &tmp.join("no-such-model"), &noise, "ndarray");
    png.arg("-o").arg(tmp.join("x.png"));
    expect_error(&mut png, "no-such-model");
    // A directory that is not a model is named as such, with or without -o.
    let mut not_model = sample_cmd(f, &tmp, &noise, "ndarray");
    not_model.arg("-o").arg(tmp.join("x.png"));
    expect_error(&mut not_model, "has no config.json");
    let mut bad_vae = sample_cmd(f, &f.dir, &noise, "ndarray");
    bad_vae.arg("--vae").arg(tmp.join("no-such-vae")).arg("-o").arg(tmp.join("x.png"));
    expect_error(&mut bad_vae, "no-such-vae");
    // Outputs that could not be written are refused before sampling, not after it.
    for (out, needle) in [
        (tmp.join("no-such-folder").join("x.png"), "no-such-folder"),
        (tmp.join("x.jpg"), ".png"),
        (tmp.to_path_buf(), "directory"),
    ] {
        let mut cmd = sample_cmd(f, &f.dir, &noise, "ndarray");
        cmd.arg("--vae").arg(tmp.join("vae-never-read")).arg("-o").arg(&out);
        expect_error(&mut cmd, needle);
    }
    let mut dump_cmd = sample_cmd(f, &f.dir, &noise, "ndarray");
    dump_cmd.arg("--dump").arg(tmp.join("no-such-folder").join("d.safetensors"));
    expect_error(&mut dump_cmd, "no-such-folder");

    let truncated = tempdir("cli-truncated");
    for name in ["config.json", "generation.json"] {
        std::fs::copy(f.dir.join(name), truncated.join(name)).unwrap();
    }
    let bytes = std::fs::read(f.dir.join("weights.safetensors")).unwrap();
    std::fs::write(truncated.join("weights.safetensors"), &bytes[..bytes.len() / 2]).unwrap();
    expect_error(&mut base(&truncated), "truncated");

    let victim = "vision_gen_enc_aligner.weight";
    let missing = broken_model(f, "missing", |t| t.retain(|(n, _, _)| n != victim));
    expect_error(&mut base(&missing), victim);

    let misshapen = broken_model(f, "misshapen", |t| {
        let e = t.iter_mut().find(|(n, _, _)| n == victim).unwrap();
        let s = e.1.clone();
        e.1 = vec![s[1], s[0]];
    });
    expect_error(&mut base(&misshapen), "wrong shape");

    let nan_name = "language_model.model.norm.weight";
    let nan = broken_model(f, "nan", |t| {
        t.iter_mut().find(|(n, _, _)| n == nan_name).unwrap().2[0] = f32::NAN;
    });
    expect_error(&mut base(&nan), nan_name);

    let extra = broken_model(f, "extra", |t| t.push(("vision_gen_enc_model.bogus".into(), vec![2], vec![0.0, 1.0])));
    expect_error(&mut base(&extra), "vision_gen_enc_model.bogus");

    // Commands without the fixture's --steps/--cfg/--backend, to set each one wrong.
    let plain = || {
        let mut c = Command::new(BIN);
        c.arg("sample").arg("--model").arg(&f.dir).args(["--token-ids", &f.token_rows[0]]);
        c.arg("--noise").arg(&noise).arg("--dump").arg(&dump);
        c
    };
    expect_error(plain().args(["--steps", "0"]), "steps");
    expect_error(plain().args(["--cfg", "NaN"]), "cfg");
    expect_error(plain().args(["--shift", "0"]), "shift");
    expect_error(plain().args(["--backend", "tpu"]), "unknown backend");
    expect_error(plain().args(["--backend", "cuda"]), "cuda");

    let odd = tmp.join("odd.safetensors");
    let z0 = &f.io["z0"];
    let (c, h) = (z0.shape[1], z0.shape[2] + 1);
    write_f32(&odd, &[("z0".into(), vec![c, h, h], vec![0.0; c * h * h])]);
    let mut cmd = Command::new(BIN);
    cmd.arg("sample").arg("--model").arg(&f.dir).args(["--token-ids", &f.token_rows[0]]);
    cmd.arg("--noise").arg(&odd).arg("--dump").arg(&dump);
    expect_error(&mut cmd, "patch size");
    assert!(!dump.exists(), "a failed run left {} behind", dump.display());

    let mut huge = Command::new(BIN);
    huge.arg("sample").arg("--model").arg(&f.dir).args(["--token-ids", &f.token_rows[0], "--size", "1000000"]).arg("--dump").arg(&dump);
    expect_error(&mut huge, "larger than");

    let mut empty = Command::new(BIN);
    empty.arg("sample").arg("--model").arg(&f.dir).args(["--token-ids", ""]).arg("--dump").arg(&dump);
    expect_error(&mut empty, "token");
}

#[test]
fn prompt_through_tokenizer_equals_token_ids() {
    for (k, f) in janusflow_fixtures().iter().enumerate() {
        let gen: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(f.dir.join("generation.json")).unwrap()).unwrap();
        let (bos, bog) = (gen["bos_token_id"].as_u64().unwrap() as u32, gen["image_gen_token_id"].as_u64().unwrap() as u32);
        let pad = gen["pad_token_id"].as_u64().unwrap() as u32;
        // Word ids that are not special tokens.
        let free: Vec<u32> = (5..).filter(|i| ![bos, bog, pad].contains(i)).take(5).collect();
        let words = [("User", free[0]), (":", free[1]), ("Assistant", free[2]), ("red", free[3]), ("apple", free[4])];
        let tmp = tempdir(&format!("cli-prompt-{k}"));
        for name in ["config.json", "generation.json", "weights.safetensors"] {
            std::fs::copy(f.dir.join(name), tmp.join(name)).unwrap();
        }
        std::fs::write(tmp.join("tokenizer.json"), tiny_tokenizer_json(bos, bog, &words, true)).unwrap();
        let z0 = &f.io["z0"];
        let noise = tmp.join("z0.safetensors");
        write_f32(&noise, &[("z0".into(), z0.shape[1..].to_vec(), z0.index(0))]);
        let ids = [bos, free[0], free[1], free[3], free[4], free[2], free[1], bog];
        let ids = ids.iter().map(|x| x.to_string()).collect::<Vec<_>>().join(",");
        let mut dumps = Vec::new();
        for (tag, arg, value) in [("p", "--prompt", "red apple"), ("t", "--token-ids", ids.as_str())] {
            let dump = tmp.join(format!("{tag}.safetensors"));
            let out = Command::new(BIN)
                .arg("sample")
                .arg("--model")
                .arg(&tmp)
                .args([arg, value, "--steps", "2", "--noise"])
                .arg(&noise)
                .arg("--dump")
                .arg(&dump)
                .output()
                .unwrap();
            assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
            dumps.push(read_io(&dump)["z1"].f32.clone());
        }
        assert_eq!(dumps[0], dumps[1], "--prompt and the equivalent --token-ids differ");
    }
}

#[test]
fn models_lists_presets_with_parameter_counts() {
    let out = Command::new(BIN).arg("models").output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    for arm in ["baseline", "encoder", "decoder", "both"] {
        for size in ["tiny", "1.3b"] {
            let name = format!("{arm}-{size}");
            let line = text.lines().find(|l| l.split_whitespace().next() == Some(&name)).unwrap_or_else(|| panic!("{name} not listed:\n{text}"));
            for field in ["llm=", "encoder=", "decoder=", "total="] {
                assert!(line.contains(field), "{line}");
            }
            if size == "1.3b" {
                // DeepSeek-LLM 1.3B: 1.23B non-embedding + 0.21B embedding table.
                let llm: f64 = line.split("llm=").nth(1).unwrap().split('M').next().unwrap().parse().unwrap();
                assert!((1300.0..1450.0).contains(&llm), "{line}");
            }
        }
    }
}

#[test]
fn presets_sample_with_random_weights_and_round_trip_through_init() {
    let tmp = tempdir("cli-presets");
    let noise = tmp.join("z0.safetensors");
    write_f32(&noise, &[("z0".into(), vec![4, 8, 8], rfgen_core::noise::gaussian(1, 256))]);
    for arm in ["baseline", "encoder", "decoder", "both"] {
        let name = format!("{arm}-tiny");
        let run = |source: &[&str], dump: &Path| {
            let out = Command::new(BIN)
                .arg("sample")
                .args(source)
                .args(["--prompt", "a red apple", "--steps", "2", "--seed", "5", "--noise"])
                .arg(&noise)
                .arg("--dump")
                .arg(dump)
                .output()
                .unwrap();
            assert!(out.status.success(), "{name}: {}", String::from_utf8_lossy(&out.stderr));
            read_io(dump)["z1"].f32.clone()
        };
        let random = run(&["--preset", &name, "--init", "random"], &tmp.join("a.safetensors"));
        let dir = tmp.join(&name);
        let out = Command::new(BIN).args(["init", "--preset", &name, "--seed", "5", "--out"]).arg(&dir).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        expect_error(Command::new(BIN).args(["init", "--preset", &name, "--out"]).arg(&dir), "already exists");
        let loaded = run(&["--model", dir.to_str().unwrap()], &tmp.join("b.safetensors"));
        assert_eq!(random, loaded, "{name}: the saved model samples differently");
    }
    expect_error(Command::new(BIN).args(["sample", "--preset", "nope-tiny", "--init", "random", "--prompt", "x", "--dump"]).arg(tmp.join("c")), "unknown preset");
    expect_error(Command::new(BIN).args(["sample", "--preset", "both-tiny", "--prompt", "x", "--dump"]).arg(tmp.join("c")), "--init random");
}

#[test]
fn bench_reports_timings_split_and_flops_as_json() {
    let tmp = tempdir("cli-bench");
    let json = tmp.join("bench.json");
    let out = Command::new(BIN)
        .args(["bench", "--preset", "baseline-tiny", "--steps", "2", "--runs", "1", "--json"])
        .arg(&json)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert!(v["s_per_image"].as_f64().unwrap() > 0.0 && v["steps_per_s"].as_f64().unwrap() > 0.0);
    let flop = &v["flop_per_image"];
    assert!(flop["llm"].as_f64().unwrap() > 0.0 && flop["total"].as_f64().unwrap() >= flop["llm"].as_f64().unwrap());
    for part in ["llm", "encoder", "decoder"] {
        assert!(v["split_seconds"][part].as_f64().unwrap() > 0.0, "{part}: {v}");
    }
    expect_error(Command::new(BIN).args(["bench", "--preset", "baseline-tiny", "--dtype", "f16"]), "f16");
}

/// `convert` of the shipped model (which stores only what differs from its SmolLM2 GGUF) writes a
/// self-contained directory: the GGUF's LLM and tokenizer.json go in, so it samples without the
/// GGUF (as the browser must) and, in f32, draws exactly what the original draws.
#[test]
fn convert_folds_the_gguf_llm_into_the_default_model() {
    let default = Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/default");
    let dir = tempdir("cli-convert-default");
    let out = dir.join("converted");
    let ok = |cmd: &mut Command| {
        let o = cmd.output().unwrap();
        assert!(o.status.success(), "{}\n(is the SmolLM2 GGUF missing? run ./build.sh setup)", String::from_utf8_lossy(&o.stderr));
    };
    ok(Command::new(BIN).args(["convert", "--from"]).arg(&default).arg("--to").arg(&out));
    let config = std::fs::read_to_string(out.join("config.json")).unwrap();
    assert!(!config.contains("llm_gguf"), "{config}");
    assert!(out.join("tokenizer.json").is_file());

    // No GGUF anywhere: HOME is empty and the variables point nowhere.
    let home = dir.join("home");
    std::fs::create_dir_all(&home).unwrap();
    let sample = |model: &Path, png: &Path, isolated: bool| {
        let mut cmd = Command::new(BIN);
        cmd.args(["sample", "--prompt", "red apple", "--steps", "2", "--seed", "3", "--vae"])
            .arg(default.join("vae"))
            .arg("--model")
            .arg(model)
            .arg("-o")
            .arg(png);
        if isolated {
            cmd.env("HOME", &home).env("RFGEN_SMOLLM2_GGUF", dir.join("absent.gguf")).env_remove("RFGEN_GGUF_DIR");
        }
        ok(&mut cmd);
        std::fs::read(png).unwrap()
    };
    let original = sample(&default, &dir.join("a.png"), false);
    assert_eq!(sample(&out, &dir.join("b.png"), true), original, "the converted model draws something else");
    let err = Command::new(BIN).args(["sample", "--prompt", "x", "--steps", "1", "--model"]).arg(&default).arg("-o").arg(dir.join("c.png"))
        .env("HOME", &home).env("RFGEN_SMOLLM2_GGUF", dir.join("absent.gguf")).output().unwrap();
    assert!(!err.status.success() && String::from_utf8_lossy(&err.stderr).contains("was not found"), "the original needs its GGUF");

    // A GGUF that is not the model's is refused by name, and nothing is written.
    let bogus = dir.join("bogus.gguf");
    std::fs::write(&bogus, b"GGUF not really").unwrap();
    let o = Command::new(BIN).args(["convert", "--force", "--from"]).arg(&default).arg("--to").arg(dir.join("bad"))
        .env("RFGEN_SMOLLM2_GGUF", &bogus).output().unwrap();
    assert!(!o.status.success() && String::from_utf8_lossy(&o.stderr).contains("sha256"), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(!dir.join("bad").exists());
}

/// The shipped emoji model: `sample --prompt ... -o x.png` with no --model (the LLM comes from the
/// SmolLM2 GGUF that `./build.sh setup` fetches).
#[test]
fn sample_image_to_image_on_the_default_model() {
    let dir = tempdir("cli-img2img");
    // A red disc on white, larger than the model's 64 pixels (it is resized).
    let side = 96u32;
    let rgb: Vec<u8> = (0..side * side)
        .flat_map(|i| {
            let (x, y) = ((i % side) as f32 - 48.0, (i / side) as f32 - 48.0);
            if x * x + y * y < 30.0 * 30.0 { [220, 30, 30] } else { [255, 255, 255] }
        })
        .collect();
    let init = dir.join("init.png");
    let mut enc = png::Encoder::new(std::io::BufWriter::new(std::fs::File::create(&init).unwrap()), side, side);
    enc.set_color(png::ColorType::Rgb);
    enc.set_depth(png::BitDepth::Eight);
    enc.write_header().unwrap().write_image_data(&rgb).unwrap();
    let draw = |extra: &[&str], name: &str| {
        let png = dir.join(name);
        let out = Command::new(BIN)
            .args(["sample", "--prompt", "blue circle", "--steps", "4", "--seed", "3", "--neighbours", "0", "-o"])
            .arg(&png)
            .args(extra)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        read_png_rgb(&png)
    };
    let init_s = init.to_str().unwrap();
    let plain = draw(&[], "plain.png");
    // Strength 1 starts at pure noise: exactly the text-to-image draw.
    assert_eq!(draw(&["--init-image", init_s, "--strength", "1"], "s1.png"), plain);
    // Strength 0.5 keeps the init image's layout: nearer the (resized) disc than the plain draw.
    let half = draw(&["--init-image", init_s, "--strength", "0.5"], "s05.png");
    let disc: Vec<u8> = (0..64 * 64)
        .flat_map(|i| {
            let (x, y) = ((i % 64) as f32 - 31.5, (i / 64) as f32 - 31.5);
            if x * x + y * y < 20.0 * 20.0 { [220u8, 30, 30] } else { [255, 255, 255] }
        })
        .collect();
    let mse = |a: &[u8]| a.iter().zip(&disc).map(|(x, y)| (*x as f64 - *y as f64).powi(2)).sum::<f64>() / a.len() as f64;
    assert!(mse(&half) < 0.5 * mse(&plain), "img2img at 0.5: mse to the init {} vs plain {}", mse(&half), mse(&plain));

    let readme = Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md");
    for (args, needle) in [
        (vec!["--init-image", init_s, "--strength", "0"], "strength must be in (0, 1]"),
        (vec!["--init-image", init_s, "--strength", "0.1"], "runs no step"),
        (vec!["--strength", "0.5"], "--init-image"),
        (vec!["--init-image", "/no/such.png"], "no such file"),
        (vec!["--init-image", readme.to_str().unwrap()], "not a readable PNG"),
        (vec!["--init-image", init_s, "--init-image", init_s], "one per prompt"),
    ] {
        let out = Command::new(BIN).args(["sample", "--prompt", "x", "--steps", "4", "-o"]).arg(dir.join("e.png")).args(&args).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains(needle), "{args:?}: {err}");
    }
}

#[test]
fn sample_without_a_model_uses_the_default_model() {
    let default = Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/default");
    assert!(default.join("config.json").is_file(), "models/default is missing");
    let dir = tempdir("cli-default-model");
    let png = dir.join("apple.png");
    let out = Command::new(BIN)
        .args(["sample", "--prompt", "red apple", "--steps", "3", "-o"])
        .arg(&png)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}\n(is the SmolLM2 GGUF missing? run ./build.sh setup)");
    let decoder = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(&png).unwrap()));
    let info = decoder.read_info().unwrap().info().clone();
    assert_eq!((info.width, info.height), (64, 64));

    // Nothing but a prompt: output.png in the working directory.
    let cwd = dir.join("cwd");
    std::fs::create_dir_all(&cwd).unwrap();
    let out = Command::new(BIN).args(["sample", "--prompt", "a grinning face", "--steps", "2"]).current_dir(&cwd).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let decoder = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(cwd.join("output.png")).unwrap()));
    assert_eq!(decoder.read_info().unwrap().info().width, 64);

    // Neighbour guidance (the model's caption index): a training caption is its own neighbour, so
    // it draws exactly what plain guidance draws; an unseen prompt names the caption that guides it.
    let draw = |extra: &[&str], name: &str| {
        let png = dir.join(name);
        let out = Command::new(BIN).args(["sample", "--prompt", "red apple", "--steps", "2", "-o"]).arg(&png).args(extra).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        (std::fs::read(&png).unwrap(), String::from_utf8_lossy(&out.stderr).to_string())
    };
    let (guided, err) = draw(&[], "guided.png");
    assert!(!err.contains("also guided by"), "{err}");
    assert_eq!(guided, draw(&["--neighbours", "0"], "plain.png").0, "a training caption draws as with plain guidance");
    let unseen = |extra: &[&str]| {
        let out = Command::new(BIN).args(["sample", "--prompt", "a purple kitchen knife", "--steps", "2", "--seed", "5", "-o"]).arg(dir.join("u.png")).args(extra).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        (std::fs::read(dir.join("u.png")).unwrap(), String::from_utf8_lossy(&out.stderr).to_string())
    };
    let (with, err) = unseen(&[]);
    assert!(err.contains("\"a purple kitchen knife\": also guided by \"") && err.contains("; starts from the image of \""), "{err}");
    let (without, err) = unseen(&["--neighbours", "0"]);
    assert!(!err.contains("also guided by") && with != without, "neighbour guidance changes an unseen prompt's image");
    // The retrieval start (the default model's generation.neighbour_init) off: guided, from noise.
    let (from_noise, err) = unseen(&["--neighbour-init", "0"]);
    assert!(err.contains("also guided by") && !err.contains("starts from") && from_noise != with && from_noise != without, "{err}");
    for (args, needle) in [
        (&["--neighbours", "9"][..], "between 1 and 8"),
        (&["--neighbour-share", "1"][..], "between 0 and 1"),
        (&["--neighbour-init", "1.5"][..], "--neighbour-init must be in (0, 1]"),
        (&["--neighbour-init", "NaN"][..], "--neighbour-init"),
    ] {
        let out = Command::new(BIN).args(["sample", "--prompt", "x", "--steps", "1", "-o"]).arg(dir.join("e.png")).args(args).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains(needle), "{args:?}: {err}");
    }
    let out = Command::new(BIN)
        .args(["sample", "--preset", "both-tiny", "--init", "random", "--prompt", "x", "--steps", "1", "--neighbours", "1", "--dump"])
        .arg(dir.join("n.safetensors"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("caption index") && err.contains("index-captions"), "{err}");

    // A GGUF that is not the one the model was trained with is refused by name.
    let bogus = dir.join("bogus.gguf");
    std::fs::write(&bogus, b"GGUF not really").unwrap();
    let out = Command::new(BIN)
        .args(["sample", "--prompt", "red apple", "--steps", "1", "-o"])
        .arg(dir.join("x.png"))
        .env("RFGEN_SMOLLM2_GGUF", &bogus)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("sha256"), "{err}");
}

/// An 8-bit RGB PNG's pixels.
fn read_png_rgb(path: &Path) -> Vec<u8> {
    let decoder = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(path).unwrap()));
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf).unwrap();
    assert_eq!(info.color_type, png::ColorType::Rgb, "{}", path.display());
    buf.truncate(info.buffer_size());
    buf
}
