//! `rfgen-cli data emoji|digits` end to end on synthetic sources, its errors, and — when
//! `./build.sh setup` has fetched them — the real packages.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use rfgen_core::data::{self, Split};
use rfgen_tests::tempdir;

#[path = "data_fixtures.rs"]
mod fixtures;
use fixtures::*;

const BIN: &str = env!("CARGO_BIN_EXE_rfgen-cli");

fn data_cmd(args: &[&str], paths: &[(&str, &Path)]) -> Output {
    let mut cmd = Command::new(BIN);
    cmd.arg("data").args(args);
    for (flag, p) in paths {
        cmd.arg(flag).arg(p);
    }
    cmd.output().unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).to_string()
}

#[test]
fn emoji_command_writes_a_loadable_set() {
    let dir = tempdir("data-cli-emoji");
    let nm = write_sources(&dir);
    let out = dir.join("emoji");
    let o = data_cmd(&["emoji", "--size", "32"], &[("--source", &nm), ("--out", &out)]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("8 images of 5 bases"), "{}", stderr(&o));
    let ds = data::load_dir(&out).unwrap();
    assert_eq!((ds.name.as_str(), ds.size, ds.len()), ("emoji", 32, 8));
    assert!(out.join("preview.png").is_file());
    assert_eq!(ds, build_from(&nm, 32).unwrap().dataset);
    // `train --sample-by base` draws from these groups: a split's items by base, each item once.
    for split in [Split::Train, Split::Heldout] {
        let groups = ds.base_groups(split);
        let mut flat: Vec<usize> = groups.concat();
        flat.sort();
        assert_eq!(flat, ds.indices(split));
        let bases: Vec<&str> = groups.iter().map(|g| ds.items[g[0]].base.as_str()).collect();
        assert!(groups.iter().zip(&bases).all(|(g, b)| g.iter().all(|&i| ds.items[i].base == *b)), "{groups:?}");
        assert_eq!(bases.iter().collect::<std::collections::BTreeSet<_>>().len(), groups.len(), "{bases:?}");
    }
    let all: usize = [Split::Train, Split::Heldout].map(|s| ds.base_groups(s).len()).iter().sum();
    assert_eq!(all, 5, "5 bases");
    assert!(ds.base_groups(Split::Train).iter().chain(&ds.base_groups(Split::Heldout)).any(|g| g.len() == 4), "waving hand + 3 toned entries");

    // An existing directory needs --force.
    let o = data_cmd(&["emoji"], &[("--source", &nm), ("--out", &out)]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("--force"), "{}", stderr(&o));
    let o = data_cmd(&["emoji", "--force"], &[("--source", &nm), ("--out", &out)]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(data::load_dir(&out).unwrap().size, 64);

    // A corrupt PNG: one line naming it, nothing written.
    std::fs::write(nm.join("emoji-datasource-google/img/google/64/1f34e.png"), b"not a png").unwrap();
    let bad = dir.join("bad");
    let o = data_cmd(&["emoji"], &[("--source", &nm), ("--out", &bad)]);
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(err.starts_with("error: ") && err.contains("1f34e.png"), "{err}");
    assert!(!bad.exists());
}

#[test]
fn missing_sources_say_to_run_setup() {
    let dir = tempdir("data-cli-missing");
    let o = data_cmd(&["emoji"], &[("--source", &dir.join("nothing")), ("--out", &dir.join("o"))]);
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(err.contains("emoji.json") && err.contains("./build.sh setup"), "{err}");
    // emoji.json without openmoji.
    let nm = write_sources(&dir);
    std::fs::remove_file(nm.join("openmoji/data/openmoji.json")).unwrap();
    let o = data_cmd(&["emoji"], &[("--source", &nm), ("--out", &dir.join("o"))]);
    let err = stderr(&o);
    assert!(!o.status.success() && err.contains("openmoji.json") && err.contains("./build.sh setup"), "{err}");
    // Broken emoji.json is named.
    std::fs::write(nm.join("emoji-datasource-google/emoji.json"), b"[{").unwrap();
    std::fs::write(nm.join("openmoji/data/openmoji.json"), b"[]").unwrap();
    let o = data_cmd(&["emoji"], &[("--source", &nm), ("--out", &dir.join("o"))]);
    assert!(!o.status.success() && stderr(&o).contains("emoji.json"), "{}", stderr(&o));
    let o = data_cmd(&["digits"], &[("--source", &dir.join("nothing.csv.gz")), ("--out", &dir.join("o"))]);
    let err = stderr(&o);
    assert!(!o.status.success() && err.contains("nothing.csv.gz") && err.contains("./build.sh setup"), "{err}");
    assert!(!dir.join("o").exists());
}

#[test]
fn digits_command() {
    let dir = tempdir("data-cli-digits");
    let csv = dir.join("digits.csv");
    std::fs::write(&csv, digits_csv(30)).unwrap();
    let out = dir.join("digits");
    let o = data_cmd(&["digits", "--size", "16"], &[("--source", &csv), ("--out", &out)]);
    assert!(o.status.success(), "{}", stderr(&o));
    let ds = data::load_dir(&out).unwrap();
    assert_eq!((ds.name.as_str(), ds.size, ds.len()), ("digits", 16, 30));
    assert_eq!(ds.indices(Split::Heldout), vec![0, 10, 20]);
    std::fs::write(&csv, "1,2,3\n").unwrap();
    let o = data_cmd(&["digits", "--force"], &[("--source", &csv), ("--out", &out)]);
    assert!(!o.status.success() && stderr(&o).contains("line 1"), "{}", stderr(&o));
    assert_eq!(data::load_dir(&out).unwrap().len(), 30, "a failure keeps the old set");
}

fn cache() -> PathBuf {
    PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/rfgen")
}

/// The real packages, when `./build.sh setup` has fetched them (it does before `./build.sh test`):
/// their paths, or `None` (the test is skipped).
fn real_sources() -> Option<(PathBuf, PathBuf)> {
    let nm = std::env::var_os("RFGEN_NPM").map(PathBuf::from).unwrap_or_else(|| cache().join("npm/node_modules"));
    let digits = cache().join("digits/digits.csv.gz");
    if !nm.join("emoji-datasource-google/emoji.json").is_file() || !digits.is_file() {
        eprintln!("skipped: run ./build.sh setup to fetch the emoji and digits sources");
        return None;
    }
    Some((nm, digits))
}

/// `rfgen-cli data emoji` from the real packages into `dir/emoji`. The three tests below each
/// build their own copy (seconds) so that they can run side by side.
fn real_emoji(dir: &Path, nm: &Path) -> (PathBuf, data::Dataset) {
    let out = dir.join("emoji");
    let o = data_cmd(&["emoji"], &[("--source", nm), ("--out", &out)]);
    assert!(o.status.success(), "{}", stderr(&o));
    eprintln!("{}", stderr(&o).trim());
    let ds = data::load_dir(&out).unwrap();
    (out, ds)
}

fn train_captions(ds: &data::Dataset) -> std::collections::HashSet<&String> {
    ds.items.iter().filter(|i| i.split == Split::Train).flat_map(|i| &i.captions).collect()
}

#[test]
fn real_emoji_and_digits_sets_and_the_shipped_vae() {
    let Some((nm, digits)) = real_sources() else { return };
    let dir = tempdir("data-cli-real-sets");
    let (out, ds) = real_emoji(&dir, &nm);
    let s = ds.stats();
    assert!(s.images > 3000 && s.bases > 1500, "{s}");
    assert!(s.heldout_bases * 10 >= s.bases, "held out {} of {} bases", s.heldout_bases, s.bases);
    assert!(s.captions_min >= 3, "{s}");
    // Skin tones are with their base, in the same split.
    let split_of: std::collections::HashMap<&str, Split> =
        ds.items.iter().filter(|i| i.id == i.base).map(|i| (i.base.as_str(), i.split)).collect();
    let tones = ["1f3fb", "1f3fc", "1f3fd", "1f3fe", "1f3ff"];
    let mut toned = 0;
    for it in &ds.items {
        if tones.iter().any(|t| it.id.contains(t)) && it.id != it.base {
            toned += 1;
            assert_eq!(split_of[it.base.as_str()], it.split, "{}", it.id);
        }
    }
    assert!(toned > 1500, "{toned}");
    let wave = ds.items.iter().find(|i| i.id == "1f44b-1f3fd").unwrap();
    assert!(wave.captions.contains(&"waving hand, medium skin tone".to_string()), "{wave:?}");
    let apple = ds.items.iter().find(|i| i.id == "1f34e").unwrap();
    assert!(apple.captions.contains(&"red apple".to_string()), "{apple:?}");

    // The shipped VAE (models/default/vae) reconstructs the held-out emoji at ≥28 dB PSNR.
    let vae = Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/default/vae");
    let json = dir.join("vae_psnr.json");
    let o = Command::new(BIN)
        .args(["eval", "vae", "--min-psnr", "28", "--vae"])
        .arg(&vae)
        .arg("--data")
        .arg(&out)
        .arg("--out")
        .arg(&json)
        .output()
        .unwrap();
    eprintln!("{}", String::from_utf8_lossy(&o.stdout).trim());
    assert!(o.status.success(), "{}", stderr(&o));
    let r: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    assert_eq!((r["split"].as_str(), r["images"].as_u64(), r["of"].as_u64()), (Some("heldout"), Some(ds.indices(Split::Heldout).len() as u64), Some(ds.indices(Split::Heldout).len() as u64)));
    assert!(r["psnr_db"].as_f64().unwrap() >= 28.0, "{r}");

    let out = dir.join("digits");
    let o = data_cmd(&["digits"], &[("--source", &digits), ("--out", &out)]);
    assert!(o.status.success(), "{}", stderr(&o));
    let ds = data::load_dir(&out).unwrap();
    assert_eq!((ds.len(), ds.size, ds.indices(Split::Heldout).len()), (1797, 32, 180));
    // A bar the VAE cannot reach is a clear failure, not a pass (on the small digits split: the
    // debug build evaluates slowly). --n 0 is refused.
    let o = Command::new(BIN).args(["eval", "vae", "--min-psnr", "99", "--vae"]).arg(&vae).arg("--data").arg(&out).output().unwrap();
    assert!(!o.status.success() && stderr(&o).contains("below --min-psnr 99"), "{}", stderr(&o));
    let o = Command::new(BIN).args(["eval", "vae", "--n", "0", "--vae"]).arg(&vae).arg("--data").arg(&out).output().unwrap();
    assert!(!o.status.success() && stderr(&o).contains("--n must be at least 1"), "{}", stderr(&o));
}

#[test]
fn real_default_model_eval_proxy_clip() {
    let Some((nm, _)) = real_sources() else { return };
    let dir = tempdir("data-cli-real-eval");
    let (_, ds) = real_emoji(&dir, &nm);
    let s = ds.stats();
    let train_captions = train_captions(&ds);
    // `eval proxy-clip` with nothing but --prompts: the default model, the shipped scorer and the
    // emoji set built on first use at $RFGEN_DATA.
    let built = dir.join("default-emoji");
    let json = dir.join("proxy.json");
    let o = Command::new(BIN)
        .args(["eval", "proxy-clip", "--prompts", "heldout", "--n", "3", "--candidates", "10", "--steps", "2", "--batch", "3", "--out"])
        .arg(&json)
        .env("RFGEN_DATA", &built)
        .env("RFGEN_NPM", &nm)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(data::load_dir(&built).unwrap().stats().to_string(), s.to_string(), "the default set is the emoji set");
    let r: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    assert_eq!((r["split"].as_str(), r["n"].as_u64(), r["candidates"].as_u64()), (Some("heldout"), Some(3), Some(10)), "{r}");
    assert!(r["proxy_real_top1"].as_f64().unwrap() > 0.5 && r["proxy_gen_top5"].as_f64().is_some(), "{r}");
    assert!(r["proxy_scorer"].as_str().unwrap().ends_with("models/proxy-clip"), "{r}");
    // The default model guides unseen captions by their nearest training caption too (its caption
    // index, with the share its config gives); every neighbour is a training caption.
    let g = &r["generator"]["neighbours"];
    assert_eq!((g["count"].as_u64(), g["share"].as_f64(), g["init_strength"].as_f64()), (Some(1), Some(0.75), Some(0.7)), "{r}");
    for it in g["per_item"].as_array().unwrap() {
        let n = it["neighbours"][0][0].as_str().unwrap().to_string();
        assert!(train_captions.contains(&n) && n != it["caption"].as_str().unwrap(), "{it}");
    }
    // Best-of-N reranking: draw 0 is the plain run's image, the scored image is the reranker's
    // pick, and the judge's rank of every draw is reported.
    let plain = r.clone();
    let scorer = Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/proxy-clip");
    let json = dir.join("best-of.json");
    let o = Command::new(BIN)
        .args(["eval", "proxy-clip", "--prompts", "heldout", "--n", "3", "--candidates", "10", "--steps", "2", "--batch", "3", "--best-of", "2"])
        .arg("--reranker")
        .arg(&scorer)
        .arg("--out")
        .arg(&json)
        .env("RFGEN_DATA", &built)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("--reranker") && stderr(&o).contains("not trained on the training split only"), "{}", stderr(&o));
    let r: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    assert_eq!(r["generator"]["best_of"], 2, "{r}");
    for (it, p) in r["items"].as_array().unwrap().iter().zip(plain["items"].as_array().unwrap()) {
        let draws = it["proxy_draw_ranks"].as_array().unwrap();
        assert_eq!(draws.len(), 2, "{it}");
        assert_eq!(draws[0], p["proxy_gen_rank"], "draw 0 is the plain draw: {it} {p}");
        assert_eq!(it["proxy_gen_rank"], draws[it["reranker_pick"].as_u64().unwrap() as usize], "{it}");
    }
    for (args, err) in [(&["--best-of", "2"][..], "needs --reranker"), (&["--best-of", "0"][..], "at least 1")] {
        let o = Command::new(BIN).args(["eval", "proxy-clip"]).args(args).output().unwrap();
        assert!(!o.status.success() && stderr(&o).contains(err), "{args:?}: {}", stderr(&o));
    }
    let o = Command::new(BIN).args(["eval", "proxy-clip", "--reranker"]).arg(&scorer).output().unwrap();
    assert!(!o.status.success() && stderr(&o).contains("needs --best-of"), "{}", stderr(&o));
    // The copy-the-nearest-training-image baseline. With the shipped scorer (which saw every image)
    // as the chooser, training captions find their own images or their skin-tone siblings.
    let json = dir.join("nearest.json");
    let o = Command::new(BIN)
        .args(["eval", "proxy-clip", "--prompts", "train", "--n", "6", "--candidates", "20", "--data"])
        .arg(&built)
        .arg("--nearest-train")
        .arg(&scorer)
        .arg("--out")
        .arg(&json)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("not trained on the training split only"), "{}", stderr(&o));
    let r: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    assert_eq!(r["baseline"]["kind"], "nearest training image", "{r}");
    assert!(r.get("generator").is_none(), "{r}");
    for it in r["items"].as_array().unwrap() {
        let pick = ds.items.iter().find(|i| i.id == it["nearest_train_id"].as_str().unwrap()).unwrap();
        assert_eq!(pick.split, Split::Train, "{it}");
    }
    assert!(r["proxy_gen_top1"].as_f64().unwrap() >= 0.5, "{r}");
    let o = Command::new(BIN).args(["eval", "proxy-clip", "--nearest-train"]).arg(dir.join("no-such-scorer")).output().unwrap();
    assert!(!o.status.success() && stderr(&o).contains("scorer directory"), "{}", stderr(&o));
    let o = Command::new(BIN).args(["eval", "proxy-clip", "--cfg", "4", "--nearest-train"]).arg(&scorer).output().unwrap();
    assert!(!o.status.success() && stderr(&o).contains("cannot be used with"), "{}", stderr(&o));
    // A non-empty directory that is not a dataset is refused, not replaced.
    let other = dir.join("not-a-dataset");
    std::fs::create_dir_all(&other).unwrap();
    std::fs::write(other.join("keep.txt"), b"mine").unwrap();
    let o = Command::new(BIN).args(["eval", "proxy-clip", "--n", "1"]).env("RFGEN_DATA", &other).env("RFGEN_NPM", &nm).output().unwrap();
    assert!(!o.status.success() && stderr(&o).contains("not a dataset"), "{}", stderr(&o));
    assert!(other.join("keep.txt").is_file());
}

#[test]
fn real_caption_index() {
    let Some((nm, _)) = real_sources() else { return };
    let dir = tempdir("data-cli-real-index");
    let (built, ds) = real_emoji(&dir, &nm);
    // The index is built from a subset (the training images of 80 bases; the held-out images
    // stay for the leak check): indexing all 16k captions in a debug build takes minutes.
    let keep: std::collections::HashSet<&str> = ds.base_groups(Split::Train).iter().take(80).map(|g| ds.items[g[0]].base.as_str()).collect();
    let picked: Vec<usize> = (0..ds.len()).filter(|&i| ds.items[i].split == Split::Heldout || keep.contains(ds.items[i].base.as_str())).collect();
    let subset = data::Dataset {
        name: ds.name.clone(),
        size: ds.size,
        images: picked.iter().flat_map(|&i| ds.image(i).to_vec()).collect(),
        items: picked.iter().map(|&i| ds.items[i].clone()).collect(),
    };
    let subset_dir = dir.join("subset");
    data::save_dir(&subset_dir, &subset, &[]).unwrap();
    let train_captions = train_captions(&subset);
    assert!(train_captions.len() >= 300, "{}", train_captions.len());
    // `index-captions` indexes every caption of the training images; an index that holds a
    // held-out caption is refused by `eval proxy-clip`, which would otherwise leak it.
    let model = dir.join("indexed-model");
    std::fs::create_dir_all(&model).unwrap();
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/default");
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(shipped.join(f), model.join(f)).unwrap();
    }
    std::fs::create_dir_all(model.join("vae")).unwrap();
    for f in ["config.json", "diffusion_pytorch_model.safetensors"] {
        std::fs::copy(shipped.join("vae").join(f), model.join("vae").join(f)).unwrap();
    }
    let o = Command::new(BIN).args(["index-captions", "--layers", "1", "--model"]).arg(&model).arg("--data").arg(&subset_dir).output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    // With MODEL/vae, the index also holds the training image of every caption (for the
    // retrieval start): the captions of one image share it, and each image is one of the subset's.
    let file = rfgen_core::neighbours::IndexFile::from_safetensors("index", &std::fs::read(model.join("neighbours.safetensors")).unwrap()).unwrap();
    let images = file.images.as_ref().expect("the index holds the images");
    let train_items: Vec<_> = subset.items.iter().filter(|i| i.split == Split::Train).collect();
    assert_eq!(images.shape[1..], [4, 32, 32]);
    let mut of_item = std::collections::HashMap::new();
    for (row, caption) in file.features.captions.iter().enumerate() {
        let owner = train_items.iter().position(|i| i.captions.contains(caption)).unwrap();
        let image = images.image_of(row).unwrap();
        assert_eq!(*of_item.entry(owner).or_insert(image), image, "{caption:?}: the captions of one image share it");
    }
    let distinct: std::collections::HashSet<_> = of_item.values().collect();
    assert_eq!((distinct.len(), of_item.len()), (images.shape[0], images.shape[0]), "each stored image is one training image's");
    let bytes = std::fs::read(model.join("neighbours.safetensors")).unwrap();
    let index = rfgen_core::eval::TextFeatures::from_safetensors("index", &bytes).unwrap();
    assert_eq!((index.len(), index.spec.layers), (train_captions.len(), 1));
    assert!(index.captions.iter().all(|c| train_captions.contains(c)));
    // Stored as 8-bit codes around the features' mean: a byte per value.
    let header_len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + header_len]).unwrap();
    let q8 = &header["features_q8"];
    assert_eq!((&q8["dtype"], &q8["shape"]), (&serde_json::json!("I8"), &serde_json::json!([index.len(), index.spec.dim])), "{header}");
    // It also stores the mean and the top 30 principal directions of those features, removed
    // before every cosine (all-but-the-top), as the default `--remove-top` asks.
    let file = rfgen_core::neighbours::IndexFile::from_safetensors("index", &bytes).unwrap();
    let top = file.top.as_ref().expect("top directions stored");
    assert_eq!((top.count, top.dim), (30, index.spec.dim));
    // Post-processed, the indexed features are centred (fitted on them before the 8-bit coding).
    let d = index.spec.dim;
    let mut mean = vec![0.0f64; d];
    for row in index.values.chunks(d) {
        let q = top.apply(row);
        assert!(q.iter().all(|v| v.is_finite()) && q.iter().any(|v| *v != 0.0));
        mean.iter_mut().zip(&q).for_each(|(m, v)| *m += *v as f64 / index.len() as f64);
    }
    assert!(mean.iter().all(|m| m.abs() < 0.05), "{mean:?}");
    // `--captions first` indexes each training image's first caption only.
    let first_model = dir.join("indexed-first");
    std::fs::create_dir_all(&first_model).unwrap();
    std::fs::copy(shipped.join("config.json"), first_model.join("config.json")).unwrap();
    let o = Command::new(BIN).args(["index-captions", "--layers", "1", "--captions", "first", "--model"]).arg(&first_model).arg("--data").arg(&subset_dir).output().unwrap();
    assert!(o.status.success() && stderr(&o).contains("no VAE") && stderr(&o).contains("no neighbour start"), "{}", stderr(&o));
    let no_images = rfgen_core::neighbours::IndexFile::from_safetensors("index", &std::fs::read(first_model.join("neighbours.safetensors")).unwrap()).unwrap();
    assert!(no_images.images.is_none());
    let first = rfgen_core::eval::TextFeatures::from_safetensors("index", &std::fs::read(first_model.join("neighbours.safetensors")).unwrap()).unwrap();
    let firsts: std::collections::HashSet<&String> = subset.items.iter().filter(|i| i.split == Split::Train).map(|i| &i.captions[0]).collect();
    assert!(first.len() == firsts.len() && first.captions.iter().all(|c| firsts.contains(c)) && firsts.len() < index.len());
    // `--nearest-caption` copies, for each held-out caption, the training image of its nearest
    // indexed caption (no generator, no scorer in the choice).
    let json = dir.join("nearest-caption.json");
    let o = Command::new(BIN).args(["eval", "proxy-clip", "--nearest-caption", "--n", "6", "--model"]).arg(&model).arg("--out").arg(&json).env("RFGEN_DATA", &built).output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let nc: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    assert_eq!(nc["baseline"]["kind"], "nearest caption's training image", "{nc}");
    assert_eq!(nc["baseline"]["index_removed_top_directions"], 30, "{nc}");
    for (it, p) in nc["items"].as_array().unwrap().iter().zip(nc["baseline"]["per_item"].as_array().unwrap()) {
        let near = p["nearest"][0].as_str().unwrap();
        assert!(train_captions.iter().any(|c| c.as_str() == near), "{p}");
        let copied = ds.items.iter().find(|i| i.id == it["nearest_train_id"].as_str().unwrap()).unwrap();
        assert!(copied.split == Split::Train && copied.captions.iter().any(|c| c == near), "{it} {p}");
        assert!(it["proxy_gen_rank"].as_u64().unwrap() >= 1);
    }
    let all_train = self::train_captions(&ds);
    let held = ds.items.iter().find(|i| i.split == Split::Heldout && !all_train.contains(&i.captions[0])).unwrap().captions[0].clone();
    let mut leaky = index.clone();
    leaky.extend(vec![held.clone()], index.values[..index.spec.dim].to_vec()).unwrap();
    std::fs::write(model.join("neighbours.safetensors"), leaky.to_safetensors().unwrap()).unwrap();
    let o = Command::new(BIN)
        .args(["eval", "proxy-clip", "--n", "2", "--steps", "1", "--model"])
        .arg(&model)
        .arg("--vae")
        .arg(shipped.join("vae"))
        .env("RFGEN_DATA", &built)
        .output()
        .unwrap();
    assert!(!o.status.success() && stderr(&o).contains("held-out caption") && stderr(&o).contains(&held), "{}", stderr(&o));
    let o = Command::new(BIN).args(["eval", "proxy-clip", "--nearest-caption", "--n", "2", "--model"]).arg(&model).env("RFGEN_DATA", &built).output().unwrap();
    assert!(!o.status.success() && stderr(&o).contains("held-out caption"), "{}", stderr(&o));
}
