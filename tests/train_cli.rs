//! `rfgen-cli train` end to end: a digits run in pixel space that `--resume` continues, and — with
//! the SmolLM2 GGUF `./build.sh setup` fetches — the LLM kept out of the exported model in stage 1
//! and stored as a compact delta against the GGUF after stage 2.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use rfgen_core::checkpoint::Weights;
use rfgen_core::pipeline::ModelFiles;
use rfgen_tests::tempdir;

#[path = "data_fixtures.rs"]
mod fixtures;

const BIN: &str = env!("CARGO_BIN_EXE_rfgen-cli");

fn run(cmd: &mut Command) -> Output {
    let o = cmd.output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    o
}

fn digits(dir: &Path) -> PathBuf {
    let csv = dir.join("digits.csv");
    std::fs::write(&csv, fixtures::digits_csv(24)).unwrap();
    let out = dir.join("digits");
    run(Command::new(BIN).args(["data", "digits", "--size", "8", "--source"]).arg(&csv).arg("--out").arg(&out));
    out
}

/// The fixture emoji set (a base with skin-tone variants among its five) at 8 px.
fn emoji_set(dir: &Path) -> PathBuf {
    let nm = fixtures::write_sources(dir);
    let out = dir.join("emoji");
    run(Command::new(BIN).args(["data", "emoji", "--size", "8", "--source"]).arg(&nm).arg("--out").arg(&out));
    out
}

fn train(data: &Path, out: &Path, extra: &[&str]) -> Command {
    train_preset("both-tiny", data, out, extra)
}

/// `train` with `args` fails with a one-line error containing `needle` (no panic).
fn assert_refused(data: &Path, out: &Path, args: &[&str], needle: &str) {
    let o = train(data, out, args).output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains(needle) && !err.contains("panicked"), "{args:?}: {err}");
}

/// Each `(args, needle)` is refused (`assert_refused`) and the run in `out` gains no step.
fn assert_all_refused(data: &Path, out: &Path, cases: &[(&[&str], &str)]) {
    let before = log_steps(out).len();
    for (args, needle) in cases {
        assert_refused(data, out, args, needle);
    }
    assert_eq!(log_steps(out).len(), before, "a refused run trains nothing");
}

fn checkpoint_settings(run_dir: &Path) -> serde_json::Value {
    let state: serde_json::Value = serde_json::from_slice(&std::fs::read(run_dir.join("checkpoint/state.json")).unwrap()).unwrap();
    state["settings"].clone()
}

fn train_preset(preset: &str, data: &Path, out: &Path, extra: &[&str]) -> Command {
    let mut c = Command::new(BIN);
    c.args(["train", "--preset", preset, "--pixels", "--data"]).arg(data).arg("--out").arg(out);
    c.args(["--batch", "4", "--lr", "1e-3", "--warmup", "1", "--sample-every", "0", "--log-every", "1"]).args(extra);
    c
}

fn log_steps(run_dir: &Path) -> Vec<u64> {
    std::fs::read_to_string(run_dir.join("train_log.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            assert!(v["loss"].as_f64().unwrap().is_finite(), "{l}");
            v["step"].as_u64().unwrap()
        })
        .collect()
}

fn weights(path: &Path) -> Weights {
    Weights::from_safetensors(&path.display().to_string(), std::fs::read(path).unwrap()).unwrap()
}

fn max_diff(a: &Weights, b: &Weights, name: &str) -> f32 {
    let (x, y) = (a.read_f32(name).unwrap().unwrap(), b.read_f32(name).unwrap().unwrap());
    assert_eq!(x.len(), y.len(), "{name}");
    x.iter().zip(&y).map(|(p, q)| (p - q).abs()).fold(0f32, f32::max)
}

#[test]
fn digits_run_and_resume() {
    let dir = tempdir("train-cli-digits");
    let data = digits(&dir);
    let out = dir.join("run");
    run(&mut train(&data, &out, &["--steps", "3", "--ckpt-every", "2"]));
    assert_eq!(log_steps(&out), [1, 2, 3]);
    assert!(out.join("model/config.json").is_file() && out.join("model/model.safetensors").is_file());
    run(&mut train(&data, &out, &["--steps", "5", "--resume"]));
    assert_eq!(log_steps(&out), [1, 2, 3, 4, 5]);
    // The exported model samples.
    let dump = dir.join("dump.safetensors");
    run(Command::new(BIN)
        .args(["sample", "--model"])
        .arg(out.join("model"))
        .args(["--prompt", "the digit 7", "--steps", "2", "--seed", "1", "--dump"])
        .arg(&dump));
    let z1 = weights(&dump).read_f32("z1").unwrap().unwrap();
    assert!(!z1.is_empty() && z1.iter().all(|v| v.is_finite()));
}

/// Every arm trains in pixel space (the ConvNeXt parts take 3 channels then) and its export samples.
#[test]
fn every_tiny_preset_trains_in_pixel_space() {
    let dir = tempdir("train-cli-presets");
    let data = digits(&dir);
    for preset in ["baseline-tiny", "encoder-tiny", "decoder-tiny", "both-tiny"] {
        let out = dir.join(preset);
        run(&mut train_preset(preset, &data, &out, &["--steps", "2"]));
        assert_eq!(log_steps(&out), [1, 2], "{preset}");
        let model = ModelFiles::read_dir(&out.join("model")).unwrap();
        assert_eq!(model.config.arm_name(), &preset[..preset.len() - 5], "{preset}");
        assert_eq!(model.config.latent_channels, 3, "{preset}");
        let dump = dir.join(format!("{preset}.safetensors"));
        run(Command::new(BIN).args(["sample", "--model"]).arg(out.join("model")).args(["--prompt", "the digit 3", "--steps", "2", "--dump"]).arg(&dump));
        let z1 = weights(&dump).read_f32("z1").unwrap().unwrap();
        assert!(!z1.is_empty() && z1.iter().all(|v| v.is_finite()), "{preset}");
    }
    // Without a GPU (or a CUDA build) --backend cuda is a one-line error, not a panic.
    let o = train(&data, &dir.join("cuda"), &["--steps", "1", "--backend", "cuda"]).output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success() || (err.trim().lines().count() == 1 && err.contains("cuda") && !err.contains("panicked")), "{err}");
}

fn smollm2_gguf() -> Option<PathBuf> {
    let p = match std::env::var_os("RFGEN_SMOLLM2_GGUF") {
        Some(p) => PathBuf::from(p),
        None => PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/rfgen/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),
    };
    p.is_file().then_some(p)
}

#[test]
fn gguf_llm_is_not_stored_in_stage_one_and_is_a_delta_after_stage_two() {
    let Some(gguf) = smollm2_gguf() else {
        eprintln!("skipped: run ./build.sh setup to fetch the SmolLM2 GGUF");
        return;
    };
    let dir = tempdir("train-cli-gguf");
    let data = digits(&dir);
    let llm = ["--llm-gguf", gguf.to_str().unwrap(), "--llm-layers", "1", "--save-dtype", "f32"];

    let stage1 = dir.join("stage1");
    run(train(&data, &stage1, &["--steps", "2"]).args(llm));
    let w = weights(&stage1.join("model/model.safetensors"));
    assert!(!w.names().any(|n| n.starts_with("language_model.")), "stage 1 stored LLM tensors");
    // A config without a prompt template gets SmolLM2's chat format; one with its own keeps it.
    let config_of = |run: &Path| -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(run.join("model/config.json")).unwrap()).unwrap()
    };
    let mut config = config_of(&stage1);
    assert!(config["generation"]["prompt_template"].as_str().unwrap().starts_with("<|im_start|>user\n{prompt}"));
    config["generation"]["prompt_template"] = "{prompt}".into();
    let own = dir.join("own-template.json");
    std::fs::write(&own, serde_json::to_vec(&config).unwrap()).unwrap();
    let own_run = dir.join("own-template");
    let mut cmd = Command::new(BIN);
    cmd.args(["train", "--config"]).arg(&own).args(["--pixels", "--data"]).arg(&data).arg("--out").arg(&own_run);
    run(cmd.args(["--steps", "1", "--batch", "2", "--sample-every", "0"]).args(llm));
    assert_eq!(config_of(&own_run)["generation"]["prompt_template"], "{prompt}");

    let stage2 = dir.join("stage2");
    run(train(&data, &stage2, &["--steps", "3", "--stage1-steps", "1"]).args(llm));
    let w = weights(&stage2.join("model/model.safetensors"));
    let llm_names: Vec<&str> = w.names().filter(|n| n.starts_with("language_model.")).collect();
    assert!(!llm_names.is_empty() && llm_names.iter().all(|n| n.contains(".delta")), "{llm_names:?}");
    // Only the embedding rows of tokens the prompts used moved.
    let rows = w.shape("language_model.model.embed_tokens.weight.delta_rows").expect("embedding rows delta");
    assert!(rows[0] > 0 && rows[0] < 1000 && rows[1] == 576, "{rows:?}");
    let size = std::fs::metadata(stage2.join("model/model.safetensors")).unwrap().len();
    assert!(size < 40_000_000, "{size} bytes: the delta is not compact");

    // Loading it (GGUF + delta) gives the trained EMA weights.
    std::env::set_var("RFGEN_SMOLLM2_GGUF", &gguf);
    let loaded = ModelFiles::read_dir(&stage2.join("model")).unwrap().weights;
    let ema = weights(&stage2.join("checkpoint/ema.safetensors"));
    let mut checked = 0;
    for name in ema.names().filter(|n| n.starts_with("language_model.")) {
        let d = max_diff(&loaded, &ema, name);
        assert!(d <= 1e-5, "{name}: {d}");
        checked += 1;
    }
    assert!(checked >= 9, "{checked}");
}

#[test]
fn init_from_starts_a_run_from_a_trained_model() {
    let dir = tempdir("train-cli-init-from");
    let data = digits(&dir);
    let first = dir.join("first");
    run(&mut train(&data, &first, &["--steps", "3"]));
    let source = first.join("model");

    // No steps: the exported model is the one it started from, bit for bit.
    let copy = dir.join("copy");
    run(train(&data, &copy, &["--steps", "0", "--seed", "7", "--init-from"]).arg(&source));
    let (a, b) = (weights(&source.join("model.safetensors")), weights(&copy.join("model/model.safetensors")));
    assert_eq!(a.len(), b.len());
    for name in a.names() {
        assert_eq!(max_diff(&a, &b, name), 0.0, "{name}");
    }

    // It trains on from there (fresh optimizer and step count) and keeps all of it on --resume.
    let more = dir.join("more");
    run(train(&data, &more, &["--steps", "2", "--init-from"]).arg(&source));
    assert_eq!(log_steps(&more), [1, 2]);
    run(&mut train(&data, &more, &["--steps", "3", "--resume"]));
    assert_eq!(log_steps(&more), [1, 2, 3]);

    // A model of another shape, a missing directory, and --resume with it are refused.
    let mut config: serde_json::Value = serde_json::from_slice(&std::fs::read(source.join("config.json")).unwrap()).unwrap();
    let layers = config["decoder"]["num_layers"].as_u64().unwrap();
    config["decoder"]["num_layers"] = (layers + 1).into();
    let deeper = dir.join("deeper.json");
    std::fs::write(&deeper, serde_json::to_vec(&config).unwrap()).unwrap();
    let mut other = Command::new(BIN);
    other.args(["train", "--config"]).arg(&deeper).args(["--pixels", "--data"]).arg(&data).arg("--out").arg(dir.join("other"));
    other.args(["--steps", "1", "--batch", "2", "--sample-every", "0", "--init-from"]).arg(&source);
    let mut both = train(&data, &more, &["--steps", "4", "--resume", "--init-from"]);
    both.arg(&source);
    for (mut cmd, needle) in [
        (other, "--init-from"),
        (train(&data, &dir.join("missing"), &["--steps", "1", "--init-from", "/nonexistent/model"]), "cannot read"),
        (both, "cannot be used with"),
        (train(&data, &dir.join("never-trained"), &["--steps", "1", "--resume"]), "has no checkpoint"),
    ] {
        let o = cmd.output().unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success() && err.contains(needle), "expected an error with {needle:?}, got: {err}");
        assert!(!err.contains("panicked"), "{err}");
    }
}

fn log_lrs(run_dir: &Path) -> Vec<f64> {
    std::fs::read_to_string(run_dir.join("train_log.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["lr"].as_f64().unwrap())
        .collect()
}

/// `--lr-schedule linear --decay-steps N`: constant after warmup, then a linear cooldown to 0 at
/// `--steps`; a resume must keep the schedule, and bad schedule arguments are one-line errors.
#[test]
fn lr_schedule_cools_down_and_resume_keeps_it() {
    let dir = tempdir("train-cli-schedule");
    let data = digits(&dir);
    let out = dir.join("run");
    let cool = ["--steps", "6", "--lr-schedule", "linear", "--decay-steps", "4", "--ckpt-every", "3"];
    run(&mut train(&data, &out, &cool));
    let expected = [1e-3, 1e-3, 1e-3, 0.75e-3, 0.5e-3, 0.25e-3];
    let lrs = log_lrs(&out);
    assert_eq!(lrs.len(), 6);
    for (got, want) in lrs.iter().zip(expected) {
        assert!((got - want).abs() < 1e-12, "{lrs:?}");
    }
    // A longer run would move the cooldown: refused on resume, naming the decay.
    let bad_args: [&[&str]; 4] = [
        &["--steps", "8", "--lr-schedule", "linear", "--decay-steps", "4", "--resume"],
        &["--steps", "4", "--decay-steps", "2"],
        &["--steps", "4", "--lr-schedule", "step"],
        &["--steps", "4", "--lr-schedule", "cosine", "--decay-steps", "9"],
    ];
    for (args, needle) in bad_args.iter().zip(["decay", "--decay-steps needs", "--lr-schedule", "--decay-steps must"]) {
        let target = if args.contains(&"--resume") { out.clone() } else { dir.join("bad") };
        assert_refused(&data, &target, args, needle);
    }
    assert_eq!(log_steps(&out).len(), 6, "a refused resume trains nothing");
}

/// `--sample-by base` on an emoji set with skin-tone variants: recorded in the checkpoint, kept by
/// `--resume` (a different choice is refused), and an unknown value is a one-line error.
#[test]
fn sample_by_base_is_a_setting_of_the_run() {
    let dir = tempdir("train-cli-sample-by");
    let data = emoji_set(&dir);
    let out = dir.join("run");
    run(&mut train(&data, &out, &["--steps", "2", "--sample-by", "base", "--ckpt-every", "1"]));
    let settings = checkpoint_settings(&out);
    assert_eq!(settings["sampling"], "base", "{settings}");
    run(&mut train(&data, &out, &["--steps", "3", "--sample-by", "base", "--resume"]));
    assert_eq!(log_steps(&out), [1, 2, 3]);
    assert_all_refused(
        &data,
        &out,
        &[
            (&["--steps", "4", "--resume"][..], "different settings"),
            (&["--steps", "4", "--sample-by", "concept"][..], "--sample-by \"concept\": expected image or base"),
        ],
    );
}

/// `--t-mean` / `--t-std` (the logit-normal timestep density): recorded in the checkpoint, kept by
/// `--resume` (a different value is refused), and out-of-range values are one-line errors.
#[test]
fn timestep_density_is_a_setting_of_the_run() {
    let dir = tempdir("train-cli-t-density");
    let data = digits(&dir);
    let out = dir.join("run");
    run(&mut train(&data, &out, &["--steps", "2", "--t-mean", "-1", "--t-std", "0.8", "--ckpt-every", "1"]));
    let settings = checkpoint_settings(&out);
    assert_eq!((settings["t_mean"].as_f64(), settings["t_std"].as_f64()), (Some(-1.0), Some(0.8)), "{settings}");
    run(&mut train(&data, &out, &["--steps", "3", "--t-mean", "-1", "--t-std", "0.8", "--resume"]));
    assert_eq!(log_steps(&out), [1, 2, 3]);
    assert_all_refused(
        &data,
        &out,
        &[
            (&["--steps", "4", "--t-std", "0.8", "--resume"][..], "different settings"),
            (&["--steps", "4", "--t-mean", "9"][..], "timestep mean"),
            (&["--steps", "4", "--t-std", "0"][..], "timestep std"),
            (&["--steps", "4", "--t-mean", "NaN"][..], "timestep mean"),
        ],
    );
}

/// `--repeat TEXT=K`: logged as visits per epoch, recorded in the checkpoint, kept by `--resume`
/// (dropping it is refused), and a malformed rule is a one-line error.
#[test]
fn repeat_is_a_setting_of_the_run() {
    let dir = tempdir("train-cli-repeat");
    let data = emoji_set(&dir);
    let out = dir.join("run");
    // Every item has an "an emoji of …" caption, so every base is visited twice per epoch.
    let o = train(&data, &out, &["--steps", "2", "--sample-by", "base", "--repeat", "AN EMOJI OF=2", "--ckpt-every", "1"]).output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    let line = err.lines().find(|l| l.starts_with("--repeat: ")).unwrap_or_else(|| panic!("{err}"));
    let nums: Vec<usize> = line.split(|c: char| !c.is_ascii_digit()).filter_map(|w| w.parse().ok()).collect();
    assert!(nums.len() == 2 && nums[0] == 2 * nums[1] && nums[1] > 0, "{line}");
    let settings = checkpoint_settings(&out);
    assert_eq!(settings["repeat"], serde_json::json!([{"matching": "AN EMOJI OF", "times": 2}]), "{settings}");
    run(&mut train(&data, &out, &["--steps", "3", "--sample-by", "base", "--repeat", "AN EMOJI OF=2", "--resume"]));
    assert_eq!(log_steps(&out), [1, 2, 3]);
    assert_all_refused(
        &data,
        &out,
        &[
            (&["--steps", "4", "--sample-by", "base", "--resume"][..], "different settings"),
            (&["--steps", "4", "--repeat", "flag of"][..], "expected TEXT=K"),
            (&["--steps", "4", "--repeat", "flag of=0"][..], "K must be a whole number from 1 to 100"),
        ],
    );
}

fn flow_loss(model: &Path, data: &Path, extra: &[&str]) -> serde_json::Value {
    let out = model.with_extension("loss.json");
    run(Command::new(BIN)
        .args(["eval", "flow-loss", "--model"])
        .arg(model)
        .arg("--data")
        .arg(data)
        .args(["--split", "train", "--n", "6", "--draws", "4", "--out"])
        .arg(&out)
        .args(extra));
    serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap()
}

/// `eval flow-loss`: fixed draws, so the figure does not depend on how rows are batched; a
/// trained model scores below its random start; bad arguments are one-line errors.
#[test]
fn flow_loss_is_a_fixed_draw_validation_loss() {
    let dir = tempdir("train-cli-flow-loss");
    let data = digits(&dir);
    let (start, trained) = (dir.join("start"), dir.join("trained"));
    run(&mut train(&data, &start, &["--steps", "0"]));
    run(&mut train(&data, &trained, &["--steps", "60", "--ema-decay", "0.8"]));
    let mean = |v: &serde_json::Value| v["stats"]["mean"].as_f64().unwrap();
    let (a, b) = (flow_loss(&start.join("model"), &data, &["--batch", "3"]), flow_loss(&start.join("model"), &data, &["--batch", "64"]));
    assert!((mean(&a) - mean(&b)).abs() <= 1e-5 * mean(&a), "{} vs {}", mean(&a), mean(&b));
    assert_eq!(a["stats"]["draws"], 24);
    let after = flow_loss(&trained.join("model"), &data, &[]);
    assert!(mean(&after) < 0.7 * mean(&a), "trained {} vs random {}", mean(&after), mean(&a));
    let counts: u64 = after["stats"]["by_t"].as_array().unwrap().iter().map(|bin| bin[3].as_u64().unwrap()).sum();
    assert_eq!(counts, 24);

    let model = trained.join("model");
    for (args, needle) in [
        (vec!["--split", "test"], "--split"),
        (vec!["--n", "100000"], "--n"),
        (vec!["--draws", "0"], "--draws"),
    ] {
        let o = Command::new(BIN).args(["eval", "flow-loss", "--model"]).arg(&model).arg("--data").arg(&data).args(&args).output().unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success() && err.contains(needle) && !err.contains("panicked"), "{args:?}: {err}");
    }
    let o = Command::new(BIN).args(["eval", "flow-loss", "--model", "/nonexistent/model", "--data"]).arg(&data).output().unwrap();
    assert!(!o.status.success() && String::from_utf8_lossy(&o.stderr).contains("does not exist"));
}

#[test]
fn pooled_text_path_is_added_to_a_trained_model_and_loads_from_the_gguf() {
    let Some(gguf) = smollm2_gguf() else {
        eprintln!("skipped: run ./build.sh setup to fetch the SmolLM2 GGUF");
        return;
    };
    let dir = tempdir("train-cli-pooled");
    let data = digits(&dir);
    let llm = ["--llm-gguf", gguf.to_str().unwrap(), "--llm-layers", "1", "--save-dtype", "f32"];
    let first = dir.join("first");
    run(train(&data, &first, &["--steps", "1"]).args(llm));
    let source = first.join("model");

    // Added with no steps: its output projection is zero, the rest is the source model's, the
    // standardisation comes from the training captions, and the frozen pooler is not stored.
    let added = dir.join("added");
    run(train(&data, &added, &["--steps", "0", "--pooled-text-layers", "2", "--init-from"]).arg(&source).args(llm));
    let (src, w) = (weights(&source.join("model.safetensors")), weights(&added.join("model/model.safetensors")));
    for name in src.names() {
        assert_eq!(max_diff(&src, &w, name), 0.0, "{name}");
    }
    assert!(!w.names().any(|n| n.starts_with("pooled_text_model.")), "the pooler was stored");
    assert!(w.read_f32("pooled_text_embed.linear_2.weight").unwrap().unwrap().iter().all(|&v| v == 0.0));
    let std = w.read_f32("pooled_text_embed.norm.std").unwrap().unwrap();
    assert!(std.iter().all(|&s| s >= 1e-3) && std.iter().any(|&s| s != 1.0), "no caption statistics");
    let config: serde_json::Value = serde_json::from_slice(&std::fs::read(added.join("model/config.json")).unwrap()).unwrap();
    assert_eq!(config["pooled_text"]["layers"], 2);
    let cache = added.join("pooled_text_cache.safetensors");
    assert!(cache.is_file());

    // It trains (the projection moves) and resumes, reusing the features of the first run.
    let trained = dir.join("trained");
    let pooled = ["--pooled-text-layers", "2", "--text-cache", cache.to_str().unwrap(), "--token-dropout", "0.5"];
    run(train(&data, &trained, &["--steps", "2", "--init-from"]).arg(&source).args(llm).args(pooled));
    run(train(&data, &trained, &["--steps", "3", "--resume"]).args(llm).args(pooled));
    assert_eq!(log_steps(&trained), [1, 2, 3]);
    assert_eq!(checkpoint_settings(&trained)["token_dropout"], 0.5);
    let w = weights(&trained.join("model/model.safetensors"));
    assert!(w.read_f32("pooled_text_embed.linear_2.weight").unwrap().unwrap().iter().any(|&v| v != 0.0));

    // Loading takes the pooler's layers from the GGUF; the model samples.
    std::env::set_var("RFGEN_SMOLLM2_GGUF", &gguf);
    let files = ModelFiles::read_dir(&trained.join("model")).unwrap();
    assert!(files.weights.contains("pooled_text_model.model.layers.1.mlp.down_proj.weight"));
    assert!(!files.weights.names().any(|n| n.starts_with("pooled_text_model.model.layers.2.")));
    let out = dir.join("digit.safetensors");
    run(Command::new(BIN).args(["sample", "--model"]).arg(trained.join("model")).args(["--prompt", "a handwritten digit seven", "--steps", "2", "--dump"]).arg(&out));
    assert!(out.is_file());

    // Features of another depth, a missing cache, and the path without a GGUF are refused.
    for (args, needle) in [
        (vec!["--pooled-text-layers", "3", "--text-cache", cache.to_str().unwrap()], "this run pools 3 layers"),
        (vec!["--pooled-text-layers", "2", "--text-cache", "/nonexistent/cache.safetensors"], "no such file"),
    ] {
        let o = train(&data, &dir.join("refused"), &["--steps", "1"]).args(llm).args(&args).output().unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success() && err.contains(needle) && !err.contains("panicked"), "{args:?}: {err}");
    }
    assert_refused(&data, &dir.join("refused"), &["--steps", "1", "--pooled-text-layers", "2"], "--llm-gguf");
    assert_refused(&data, &dir.join("refused"), &["--steps", "1", "--token-dropout", "0.5"], "needs a pooled text path");
}
