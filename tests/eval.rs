//! The proxy image–text scorer (rfgen_core::eval): retrieval math, item and candidate choice,
//! text features from a (tiny, random) Llama, contrastive training on a synthetic set, bad inputs.

use burn::backend::{Autodiff, NdArray};
use rfgen_core::checkpoint::{StoredDtype, VarBuilder};
use rfgen_core::data::{Dataset, Item, Split};
use rfgen_core::eval::proxy_clip::{shift_image, POOL};
use rfgen_core::eval::retrieval::{rank_of_first, stats_of};
use rfgen_core::eval::{
    candidate_sets, feature_stats, image_input, load_scorer_dir, pick_items, pooled_features, retrieval, scorer_weights,
    split_representatives, ProxyClipConfig, ProxyClipTrainer, ProxyScorer, ProxyTrainConfig, ProxyTrainData, TextFeatureSpec,
    TextFeatures,
};
use rfgen_core::llama::{Llama, LlamaConfig};

type B = NdArray<f32>;
type AB = Autodiff<B>;

fn approx(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-12
}

#[test]
fn retrieval_top1_top5_on_hand_made_embeddings() {
    // Texts: unit vectors at angles 0°, 10°, 20°, ..., 90° (10 rows, dim 2).
    let texts: Vec<f32> = (0..10).flat_map(|k| {
        let a = (k as f32 * 10.0).to_radians();
        [a.cos(), a.sin()]
    }).collect();
    // Image 0 points at text 0 exactly: rank 1. Image 1 points at 47°: its own caption (row 9,
    // 90°) is 43° away; 40°, 50°, 30°, 60°, 20° and 70° are closer, 0° (47° away) is not: rank 7.
    // Image 2 points at 90°, its list holds its own caption twice: a tie counts against it, rank 2.
    let images = vec![
        1.0, 0.0, // image 0
        (47f32).to_radians().cos(), (47f32).to_radians().sin(), // image 1
        0.0, 1.0, // image 2
    ];
    let candidates = vec![
        vec![0, 1, 2, 3, 4, 5, 6, 7, 8, 9],
        vec![9, 4, 5, 3, 6, 2, 7, 0],
        vec![9, 9, 0],
    ];
    let r = retrieval(&images, &texts, 2, &candidates).unwrap();
    assert_eq!(r.ranks, vec![1, 7, 2]);
    assert!(approx(r.top1, 1.0 / 3.0), "{r:?}");
    assert!(approx(r.top5, 2.0 / 3.0), "{r:?}");
    assert!(approx(r.mean_rank, 10.0 / 3.0));

    // A 5th place counts for top-5, a 6th does not.
    let s = stats_of(vec![1, 5, 6, 100]);
    assert!(approx(s.top1, 0.25) && approx(s.top5, 0.5));
    assert_eq!(rank_of_first(&[0.3, 0.9, 0.8, 0.7, 0.6, 0.1]), 5);
    assert_eq!(rank_of_first(&[0.3, 0.9, 0.8, 0.7, 0.6, 0.5]), 6);

    // Shapes that do not fit are errors, not panics.
    assert!(retrieval(&images, &texts, 3, &candidates).is_err());
    assert!(retrieval(&images, &texts, 2, &candidates[..2]).is_err());
    assert!(retrieval(&images, &texts, 2, &[vec![0], vec![1], vec![10]]).unwrap_err().to_string().contains("candidate 10"));
}

/// `n` items, item `i` of base `b{i / per_base}`, a 6×6 image whose colour and stripe depend on
/// the base, captions naming both; bases with `b % 4 == 3` held out.
fn synthetic(bases: usize, per_base: usize) -> Dataset {
    let colours = ["red", "green", "blue", "yellow", "cyan", "magenta", "black", "grey"];
    let rgb = [[230, 20, 20], [20, 200, 20], [20, 20, 230], [230, 230, 20], [20, 230, 230], [230, 20, 230], [10, 10, 10], [128, 128, 128]];
    let size = 6;
    let mut items = Vec::new();
    let mut images = Vec::new();
    for b in 0..bases {
        for v in 0..per_base {
            let (c, stripe) = (b % colours.len(), (b / colours.len()) % size);
            for y in 0..size {
                for x in 0..size {
                    let on = x == stripe || (v > 0 && y == v % size);
                    images.extend(if on { rgb[c] } else { [255, 255, 255] });
                }
            }
            let id = if v == 0 { format!("b{b}") } else { format!("b{b}-v{v}") };
            items.push(Item {
                id,
                base: format!("b{b}"),
                split: if b % 4 == 3 { Split::Heldout } else { Split::Train },
                captions: vec![
                    format!("{} stripe {} variant {v}", colours[c], stripe),
                    format!("a {} thing with stripe {}", colours[c], stripe),
                ],
            });
        }
    }
    let ds = Dataset { name: "synthetic".into(), size, images, items };
    ds.validate().unwrap();
    ds
}

#[test]
fn items_and_candidates_are_fixed_and_checked() {
    let ds = synthetic(40, 2);
    let reps = split_representatives(&ds, Split::Train);
    assert_eq!(reps.len(), 30);
    // One per base, the base's own image.
    assert!(reps.iter().all(|&i| ds.items[i].id == ds.items[i].base));
    let ten = pick_items(&ds, Split::Train, 10).unwrap();
    let five = pick_items(&ds, Split::Train, 5).unwrap();
    assert_eq!(&ten[..5], &five[..], "a smaller n is a prefix of a larger one");
    let sets = candidate_sets(&ds, Split::Train, &ten, 8).unwrap();
    let sets5 = candidate_sets(&ds, Split::Train, &five, 8).unwrap();
    assert_eq!(&sets[..5], &sets5[..], "an item's candidates do not depend on what else is scored");
    for (set, &item) in sets.iter().zip(&ten) {
        assert_eq!(set.len(), 8);
        assert_eq!(set[0], item);
        let bases: std::collections::BTreeSet<&str> = set.iter().map(|&j| ds.items[j].base.as_str()).collect();
        assert_eq!(bases.len(), 8, "distinct bases, never the item's own twice");
        assert!(set[1..].iter().all(|&j| ds.items[j].split == Split::Train));
    }
    // Held out: 10 bases.
    let held = pick_items(&ds, Split::Heldout, 10).unwrap();
    assert!(held.iter().all(|&i| ds.items[i].split == Split::Heldout));

    let err = pick_items(&ds, Split::Heldout, 11).unwrap_err().to_string();
    assert!(err.contains("--n 11") && err.contains("10 items") && err.contains("heldout"), "{err}");
    assert!(pick_items(&ds, Split::Train, 0).is_err());
    let err = candidate_sets(&ds, Split::Heldout, &held, 11).unwrap_err().to_string();
    assert!(err.contains("11 candidate captions") && err.contains("it has 9"), "{err}");
}

fn tiny_llama() -> Llama<B> {
    let config: LlamaConfig = serde_json::from_value(serde_json::json!({
        "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
        "num_key_value_heads": 1, "vocab_size": 256, "rms_norm_eps": 1e-5, "tie_word_embeddings": true
    }))
    .unwrap();
    Llama::load(&VarBuilder::<B>::random(7, &Default::default()), &config, false)
}

fn byte_ids(text: &str) -> Vec<u32> {
    text.bytes().map(u32::from).collect()
}

fn tiny_spec() -> TextFeatureSpec {
    TextFeatureSpec { gguf_file: "tiny-random".into(), gguf_sha256: "0".repeat(64), layers: 2, dim: 16, pool: POOL.into() }
}

#[test]
fn pooled_features_ignore_padding_and_batch_order() {
    let llm = tiny_llama();
    let texts = ["a", "red apple", "a much longer caption with many tokens"];
    let ids: Vec<Vec<u32>> = texts.iter().map(|t| byte_ids(t)).collect();
    let together = pooled_features(&llm, &ids, |_| {}).unwrap();
    for (k, t) in ids.iter().enumerate() {
        let alone = pooled_features(&llm, std::slice::from_ref(t), |_| {}).unwrap();
        let row = &together[k * 16..(k + 1) * 16];
        let diff = alone.iter().zip(row).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        assert!(diff < 1e-4, "text {k}: batched (right-padded) features differ by {diff}");
    }
    assert!(pooled_features(&llm, &[vec![]], |_| {}).unwrap_err().to_string().contains("no tokens"));
    assert!(pooled_features(&llm, &[vec![300]], |_| {}).unwrap_err().to_string().contains("vocabulary"));

    // The cache round-trips through safetensors with its spec and captions.
    let caps: Vec<String> = texts.iter().map(|s| s.to_string()).collect();
    let f = TextFeatures::new(tiny_spec(), caps.clone(), together.clone()).unwrap();
    let back = TextFeatures::from_safetensors("cache", &f.to_safetensors().unwrap()).unwrap();
    assert_eq!(back, f);
    assert_eq!(back.get("red apple").unwrap(), &together[16..32]);
    assert_eq!(back.missing(&["a".to_string(), "new".to_string(), "new".to_string()]), vec!["new".to_string()]);
    assert!(TextFeatures::new(tiny_spec(), caps, together[..20].to_vec()).is_err());
}

#[test]
fn image_input_is_an_area_average_and_shift_fills_white() {
    // 2x2 → 1x1: the mean of the four pixels.
    let img = [0u8, 0, 0, 255, 255, 255, 255, 0, 0, 0, 255, 0];
    let x = image_input(&img, 2, 1);
    let mean = |c: usize| (img[c] as f32 + img[3 + c] as f32 + img[6 + c] as f32 + img[9 + c] as f32) / 4.0;
    for c in 0..3 {
        let want = mean(c).round() / 127.5 - 1.0;
        assert!((x[c] - want).abs() < 1e-6, "channel {c}: {} vs {want}", x[c]);
    }
    let shifted = shift_image(&img, 2, 1, 0);
    assert_eq!(&shifted[..3], &[255, 255, 255]);
    assert_eq!(&shifted[3..6], &img[..3]);
}

fn tiny_scorer_config() -> ProxyClipConfig {
    let mut c = ProxyClipConfig::new(tiny_spec());
    c.image_size = 6;
    c.image_hidden = vec![64];
    c.text_hidden = vec![64];
    c.embed_dim = 16;
    c
}

#[test]
fn training_lowers_the_loss_and_retrieval_beats_chance() {
    let ds = synthetic(16, 1);
    let llm = tiny_llama();
    let mut captions: Vec<String> = Vec::new();
    for it in &ds.items {
        for c in &it.captions {
            if !captions.contains(c) {
                captions.push(c.clone());
            }
        }
    }
    let ids: Vec<Vec<u32>> = captions.iter().map(|c| byte_ids(c)).collect();
    let raw = pooled_features(&llm, &ids, |_| {}).unwrap();
    let (mean, std) = feature_stats(&raw, 16);
    let config = tiny_scorer_config();
    let settings = ProxyTrainConfig { seed: 3, steps: 150, batch: 16, lr: 3e-3, warmup: 5, weight_decay: 0.0, max_shift: 0, pixel_noise: 0.0 };
    let all: Vec<usize> = (0..ds.len()).collect();
    let data = ProxyTrainData::new(&ds, all, &raw, 16, &mean, &std, |c| captions.iter().position(|x| x == c)).unwrap();
    let mut trainer = ProxyClipTrainer::<AB>::new(config.clone(), settings.clone(), &Default::default()).unwrap();

    let (imgs0, txts0) = data.batch(&settings, config.image_size, 0);
    let (loss_before, _) = trainer.evaluate(&imgs0, &txts0).unwrap();
    // Chance for a batch of 16 is ln 16 ≈ 2.77 (random embeddings at temperature 0.07 do worse).
    assert!(loss_before.is_finite() && loss_before > 2.0, "initial loss {loss_before}");
    for step in 0..settings.steps {
        let (imgs, txts) = data.batch(&settings, config.image_size, step);
        let s = trainer.step(&imgs, &txts).unwrap();
        assert!(s.loss.is_finite() && s.temperature > 0.0);
    }
    let (loss_after, acc_after) = trainer.evaluate(&imgs0, &txts0).unwrap();
    assert!(loss_after < 0.5 * loss_before, "loss {loss_before} -> {loss_after}");
    assert!(acc_after > 0.5, "in-batch accuracy {acc_after}");

    // As a saved (f16) scorer: retrieval of each image's first caption among all 16 beats chance.
    let weights = scorer_weights(&trainer.inference_model(), &trainer.keys, &mean, &std, StoredDtype::F16);
    let scorer = ProxyScorer::<B>::load(&weights, &config, &Default::default()).unwrap();
    let firsts: Vec<String> = ds.items.iter().map(|it| it.captions[0].clone()).collect();
    let feats: Vec<f32> = firsts.iter().flat_map(|c| {
        let r = captions.iter().position(|x| x == c).unwrap();
        raw[r * 16..(r + 1) * 16].to_vec()
    }).collect();
    let text_emb = scorer.embed_text_features(&feats);
    let images: Vec<Vec<u8>> = (0..ds.len()).map(|i| ds.image(i).to_vec()).collect();
    let image_emb = scorer.embed_images(&images, ds.size);
    let cands: Vec<Vec<usize>> = (0..ds.len()).map(|i| std::iter::once(i).chain((0..ds.len()).filter(|&j| j != i)).collect()).collect();
    let r = retrieval(&image_emb, &text_emb, 16, &cands).unwrap();
    eprintln!("loss {loss_before:.3} -> {loss_after:.3}, batch acc {acc_after:.3}, retrieval top-1 {} top-5 {}", r.top1, r.top5);
    assert!(r.top1 > 0.4, "top-1 {} (chance 1/16): {:?}", r.top1, r.ranks);
    assert!(r.top5 > 0.8, "top-5 {} (chance 5/16)", r.top5);
    // The untrained scorer is near chance on the same task (the training did it).
    let fresh = ProxyScorer::<B>::load(
        &{
            let mut w = config.init_weights(3);
            w.insert_f32("text_norm.mean", vec![16], mean.clone());
            w.insert_f32("text_norm.std", vec![16], std.clone());
            w
        },
        &config,
        &Default::default(),
    )
    .unwrap();
    let r0 = retrieval(&fresh.embed_images(&images, ds.size), &fresh.embed_text_features(&feats), 16, &cands).unwrap();
    assert!(r.top1 > r0.top1, "trained {} vs untrained {}", r.top1, r0.top1);
    let t = scorer.temperature();
    assert!(t > 0.0 && t < 1.0, "temperature {t}");
}

#[test]
fn bad_inputs_are_clear_errors() {
    let missing = std::env::temp_dir().join("rfgen-no-such-proxy-scorer");
    let err = load_scorer_dir(&missing).unwrap_err().to_string();
    assert!(err.contains("proxy scorer directory") && err.contains("does not exist"), "{err}");
    let dir = rfgen_tests::tempdir("proxy-scorer");
    let err = load_scorer_dir(&dir).unwrap_err().to_string();
    assert!(err.contains("no config.json"), "{err}");

    // A wrong kind, a missing weights file, missing tensors.
    let mut c = tiny_scorer_config();
    c.kind = "clip".into();
    std::fs::write(dir.join("config.json"), serde_json::to_vec(&c).unwrap()).unwrap();
    assert!(load_scorer_dir(&dir).unwrap_err().to_string().contains("proxy-clip"));
    // Another kind of model directory (a generator's config has no `kind`).
    std::fs::write(dir.join("config.json"), br#"{"model_type": "rfgen_flow", "arm": "both"}"#).unwrap();
    let err = load_scorer_dir(&dir).unwrap_err().to_string();
    assert!(err.contains("is not a proxy scorer") && err.contains("rfgen-proxy-clip"), "{err}");
    let c = tiny_scorer_config();
    std::fs::write(dir.join("config.json"), serde_json::to_vec(&c).unwrap()).unwrap();
    assert!(load_scorer_dir(&dir).unwrap_err().to_string().contains("model.safetensors"));
    let mut w = c.init_weights(0);
    w.remove("text_proj.1.weight");
    std::fs::write(dir.join("model.safetensors"), w.to_safetensors(None).unwrap()).unwrap();
    let (cfg, weights) = load_scorer_dir(&dir).unwrap();
    let err = ProxyScorer::<B>::load(&weights, &cfg, &Default::default()).err().unwrap().to_string();
    assert!(err.contains("text_proj.1.weight"), "{err}");
    let mut w = c.init_weights(0);
    w.remove("text_norm.std");
    let err = ProxyScorer::<B>::load(&w, &c, &Default::default()).err().unwrap().to_string();
    assert!(err.contains("text_norm.std"), "{err}");

    // Training settings.
    let bad = ProxyTrainConfig { batch: 1, ..ProxyTrainConfig::default() };
    assert!(ProxyClipTrainer::<AB>::new(c.clone(), bad, &Default::default()).err().unwrap().to_string().contains("batch"));
    let bad = ProxyTrainConfig { lr: f64::NAN, ..ProxyTrainConfig::default() };
    assert!(ProxyClipTrainer::<AB>::new(c.clone(), bad, &Default::default()).is_err());
    let trainer = ProxyClipTrainer::<AB>::new(c.clone(), ProxyTrainConfig::default(), &Default::default()).unwrap();
    assert!(trainer.evaluate(&[0.0; 10], &[0.0; 16]).unwrap_err().to_string().contains("b >= 2"));
}
