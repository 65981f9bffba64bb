//! Rectified-flow training on ndarray: the loss falls, a resumed run equals an uninterrupted one
//! bit for bit, stage 1 leaves the LLM untouched, and optimizer pieces follow PyTorch's formulas.

use burn::backend::{Autodiff, NdArray};
use burn::tensor::{Tensor, TensorData};
use rfgen_core::checkpoint::{init_values, VarBuilder, Weights};
use rfgen_core::convert::ModelKind;
use rfgen_core::sampler::{PromptBatch, VelocityModel};
use rfgen_core::structured::{mean_pooled, preset, prompt_body, FlowGenerator, GeneratorConfig, PooledTextConfig};
use rfgen_core::tokenizer::PromptTokenizer;
use rfgen_core::train::{
    batch_groups, batch_items, export_weights, AdamW, AdamWConfig, Decay, FlowBatch, FlowTrainConfig, FlowTrainer, LrScale, ParamFilter, Repeat, Sampling, training_rows,
    TrainState,
};

type B = Autodiff<NdArray<f32>>;

fn tiny_config() -> GeneratorConfig {
    let mut c = preset("both-tiny").unwrap().config();
    c.latent_channels = 3;
    c.generation.latent_shape = Some(vec![3, 8, 8]);
    c
}

const CAPTIONS: [&str; 4] = ["a red square", "a blue circle", "a green line", "a black dot"];

/// Four fixed "images", one per caption, each a distinct smooth pattern.
fn batch_for(step: u64, batch: usize) -> FlowBatch {
    let c = tiny_config();
    let tok = PromptTokenizer::bytes(1, 2, c.language_config.vocab_size).unwrap();
    let items: Vec<usize> = (0..4).collect();
    let idx = batch_items(&items, batch, 7, step);
    let mut x = Vec::new();
    for &i in &idx {
        for ch in 0..3 {
            for p in 0..64 {
                x.push(((i * 3 + ch) as f32 * 0.7 + p as f32 * 0.1 * (i + 1) as f32).sin());
            }
        }
    }
    let prompts = idx.iter().map(|&i| tok.encode_prompt(CAPTIONS[i]).unwrap()).collect();
    FlowBatch { x, dims: [batch, 3, 8, 8], prompts, pooled: None }
}

fn settings() -> FlowTrainConfig {
    FlowTrainConfig { seed: 3, batch: 4, lr: 2e-3, warmup: 2, ema_decay: 0.9, stage1_steps: 3, ..FlowTrainConfig::default() }
}

fn fresh(settings: FlowTrainConfig) -> FlowTrainer<B> {
    let device = Default::default();
    let vb = VarBuilder::<B>::random(11, &device);
    let model = FlowGenerator::build(&vb, &tiny_config());
    FlowTrainer::new(model, vb.param_keys(), settings, 0, &device).unwrap()
}

fn run(trainer: &mut FlowTrainer<B>, until: u64) -> Vec<f64> {
    let mut losses = Vec::new();
    while trainer.step < until {
        let b = batch_for(trainer.step, trainer.config.batch);
        losses.push(trainer.step(&b).unwrap().loss);
    }
    losses
}

fn assert_same(a: &Weights, b: &Weights, what: &str) {
    let names: Vec<&str> = a.names().collect();
    assert_eq!(names, b.names().collect::<Vec<_>>(), "{what}: tensor names differ");
    for n in names {
        let (x, y) = (a.read_f32(n).unwrap().unwrap(), b.read_f32(n).unwrap().unwrap());
        assert!(x == y, "{what}: {n} differs (max {})", x.iter().zip(&y).map(|(p, q)| (p - q).abs()).fold(0.0, f32::max));
    }
}

/// Through bytes, as `rfgen-cli train` writes a checkpoint and reads it back.
fn roundtrip(w: &Weights) -> Weights {
    Weights::from_safetensors("ckpt", w.to_safetensors(None).unwrap()).unwrap()
}

#[test]
fn resume_equals_an_uninterrupted_run() {
    let n = 6;
    // A cooldown that starts before the resume point and ends with the run.
    let settings = FlowTrainConfig { decay: Decay::Linear { start: 2, end: n, floor: 0.1 }, ..settings() };
    let mut straight = fresh(settings.clone());
    run(&mut straight, n);

    let mut first = fresh(settings);
    run(&mut first, n / 2);
    let (model, ema, optim, state) = first.checkpoint();
    let state: TrainState = serde_json::from_str(&serde_json::to_string(&state).unwrap()).unwrap();
    drop(first);
    let device = Default::default();
    let model = roundtrip(&model);
    let vb = VarBuilder::<B>::new(&model, &device);
    let built = FlowGenerator::build(&vb, &tiny_config());
    vb.clone().finish(&[]).unwrap();
    let mut resumed = FlowTrainer::resume(built, vb.param_keys(), &state, &roundtrip(&ema), &roundtrip(&optim), 0, &device).unwrap();
    assert_eq!(resumed.step, n / 2);
    assert_eq!(resumed.config, straight.config, "the schedule survives the checkpoint");
    run(&mut resumed, n);

    // The run crosses from stage 1 (LLM frozen) to stage 2 at step 3, after the resume point.
    assert_same(&straight.weights(), &resumed.weights(), "weights");
    assert_same(&straight.ema.weights(), &resumed.ema.weights(), "EMA");
    assert_same(&straight.optim.state(), &resumed.optim.state(), "optimizer moments");
}

#[test]
fn the_loss_falls_and_stage_one_freezes_the_llm() {
    let mut t = fresh(FlowTrainConfig { stage1_steps: u64::MAX, ..settings() });
    let before = t.weights();
    let losses = run(&mut t, 40);
    let head: f64 = losses[..5].iter().sum::<f64>() / 5.0;
    let tail: f64 = losses[35..].iter().sum::<f64>() / 5.0;
    assert!(tail < head / 2.0, "loss {head:.4} -> {tail:.4}");
    let after = t.weights();
    let mut changed = 0;
    for n in before.names() {
        let same = before.read_f32(n).unwrap().unwrap() == after.read_f32(n).unwrap().unwrap();
        if n.starts_with("language_model.") {
            assert!(same, "{n} changed in stage 1");
        } else if !same {
            changed += 1;
        }
    }
    assert!(changed > 10, "only {changed} generator tensors changed");
    // Frozen tensors are not averaged; the EMA holds only what trains.
    assert!(t.ema.weights().names().all(|n| !n.starts_with("language_model.")));
    assert!(t.ema_weights().names().any(|n| n.starts_with("language_model.")));
}

#[test]
fn adamw_step_matches_the_pytorch_formula() {
    // One parameter, two steps, with weight decay and clipping: compare to a hand computation.
    let device = Default::default();
    let mut w = Weights::new();
    w.insert_f32("lin.weight", vec![2, 2], vec![0.5, -1.0, 2.0, 0.25]);
    let vb = VarBuilder::<B>::new(&w, &device);
    let lin = rfgen_core::layers::Linear::load(&vb.pp("lin"), 2, 2, false);
    let keys = vb.param_keys();
    let cfg = AdamWConfig { beta1: 0.9, beta2: 0.99, eps: 1e-8, weight_decay: 0.1, grad_clip: Some(0.5) };
    let mut opt = AdamW::new(cfg);
    let x = Tensor::<B, 2>::from_data(TensorData::new(vec![1.0f32, 2.0], [1, 2]), &device);
    let mut lin = lin;
    let mut p = vec![0.5f64, -1.0, 2.0, 0.25];
    let (mut m, mut v) = (vec![0.0f64; 4], vec![0.0f64; 4]);
    for step in 1..=2 {
        let y = lin.forward(x.clone()).sum();
        let grads = y.backward();
        let (next, norm) = opt.step(lin, &grads, &keys, &ParamFilter::default(), 0.01);
        lin = next;
        // d(sum(x W^T))/dW[o][i] = x[i]
        let g = [1.0f64, 2.0, 1.0, 2.0];
        let gnorm = g.iter().map(|g| g * g).sum::<f64>().sqrt();
        assert!((norm - gnorm).abs() < 1e-6);
        let scale = 0.5 / (gnorm + 1e-6);
        for k in 0..4 {
            let gk = g[k] * scale;
            p[k] *= 1.0 - 0.01 * 0.1;
            m[k] = 0.9 * m[k] + 0.1 * gk;
            v[k] = 0.99 * v[k] + 0.01 * gk * gk;
            let (mh, vh) = (m[k] / (1.0 - 0.9f64.powi(step)), v[k] / (1.0 - 0.99f64.powi(step)));
            p[k] -= 0.01 * mh / (vh.sqrt() + 1e-8);
        }
    }
    let got = export_weights(&lin, &keys).read_f32("lin.weight").unwrap().unwrap();
    for k in 0..4 {
        assert!((got[k] as f64 - p[k]).abs() < 1e-6, "{k}: {} vs {}", got[k], p[k]);
    }
}

#[test]
fn data_order_is_a_permutation_per_epoch() {
    let items: Vec<usize> = (10..17).collect();
    let mut seen: Vec<usize> = (0..7).flat_map(|s| batch_items(&items, 1, 5, s)).collect();
    seen.sort();
    assert_eq!(seen, items);
    assert_ne!(batch_items(&items, 7, 5, 0), batch_items(&items, 7, 5, 1));
    assert_eq!(batch_items(&items, 3, 5, 4), batch_items(&items, 3, 5, 4));
}

/// `--sample-by base`: every epoch visits each group once, whatever its size, drawing one of its
/// members; singleton groups reproduce the image order exactly (so old runs resume unchanged).
#[test]
fn grouped_order_visits_each_group_once_per_epoch() {
    let items: Vec<usize> = (10..17).collect();
    let singletons: Vec<Vec<usize>> = items.iter().map(|&i| vec![i]).collect();
    for step in 0..5 {
        assert_eq!(batch_groups(&singletons, 3, 5, step), batch_items(&items, 3, 5, step));
    }
    let groups = vec![vec![0], vec![1, 2, 3, 4, 5, 6], vec![7], vec![8, 9]];
    let group_of = |i: usize| groups.iter().position(|g| g.contains(&i)).unwrap();
    let mut members = vec![0usize; 10];
    for epoch in 0..60u64 {
        let drawn = batch_groups(&groups, 4, 9, epoch);
        let mut visited: Vec<usize> = drawn.iter().map(|&i| group_of(i)).collect();
        visited.sort();
        assert_eq!(visited, [0, 1, 2, 3], "epoch {epoch}: {drawn:?}");
        drawn.iter().for_each(|&i| members[i] += 1);
    }
    // 60 visits of the six-member group spread over all six; the singletons come 60 times each.
    assert!(members[1..7].iter().all(|&c| (3..=20).contains(&c)), "{members:?}");
    assert_eq!((members[0], members[7], members[8] + members[9]), (60, 60, 60));
    assert_eq!(batch_groups(&groups, 3, 9, 7), batch_groups(&groups, 3, 9, 7));
    assert_ne!(batch_groups(&groups, 3, 9, 7), batch_groups(&groups, 3, 10, 7));
}

/// `--repeat TEXT=K`: a group whose items have a caption containing TEXT (any case) is listed K
/// times, the largest K of the rules it matches, so an epoch visits it K times.
#[test]
fn repeated_groups_are_visited_k_times_per_epoch() {
    let table: Vec<Vec<String>> = (0..6)
        .map(|i| match i {
            0 => vec!["flag of Chile".into(), "CL, flag".into()],
            3 => vec!["waving hand".into()],
            5 => vec!["waving hand, dark skin tone".into(), "Flag of Nowhere".into()],
            _ => vec![format!("thing {i}")],
        })
        .collect();
    let captions = |i: usize| table[i].as_slice();
    let groups = vec![vec![0], vec![1], vec![2], vec![3, 4, 5]];
    assert_eq!(Repeat::apply(&[], groups.clone(), captions), groups);
    let rules = [Repeat::parse("flag of=3").unwrap(), Repeat::parse("FLAG=2").unwrap()];
    let listed = Repeat::apply(&rules, groups.clone(), captions);
    let count = |g: &Vec<usize>| listed.iter().filter(|h| *h == g).count();
    assert_eq!(groups.iter().map(count).collect::<Vec<_>>(), [3, 1, 1, 3]);
    let mut visits = [0usize; 4];
    let n = listed.len() as u64;
    for step in 0..2 * n {
        for i in batch_groups(&listed, 1, 4, step) {
            visits[groups.iter().position(|g| g.contains(&i)).unwrap()] += 1;
        }
    }
    assert_eq!(visits, [6, 2, 2, 6]);

    assert_eq!(Repeat::parse("a=b=4").unwrap(), Repeat { matching: "a=b".into(), times: 4 });
    for bad in ["flag of", "=3", "flag of=0", "flag of=x", "flag of=101"] {
        assert!(Repeat::parse(bad).is_err(), "{bad:?} accepted");
    }
}

#[test]
fn bad_settings_and_batches_are_errors() {
    let device = Default::default();
    let vb = VarBuilder::<B>::random(1, &device);
    let model = FlowGenerator::build(&vb, &tiny_config());
    let bad = FlowTrainConfig { lr: f64::NAN, ..settings() };
    let err = FlowTrainer::new(model, vb.param_keys(), bad, 0, &device).err().expect("NaN lr refused");
    assert!(err.to_string().contains("learning rate"), "{err}");

    let mut t = fresh(settings());
    let mut b = batch_for(0, 4);
    b.prompts.pop();
    let err = t.step(&b).unwrap_err();
    assert!(err.to_string().contains("batch of 3 prompts"), "{err}");
    let mut b = batch_for(0, 4);
    b.x[5] = f32::NAN;
    let err = t.step(&b).unwrap_err();
    assert!(err.to_string().contains("NaN"), "{err}");
}

/// Checkpoints written before the schedule and the sampling option existed (no `decay`, no
/// `sampling` in their settings) resume with a constant rate in image order, and those defaults
/// are still written without the keys.
#[test]
fn settings_without_a_decay_are_constant() {
    let mut json = serde_json::to_value(settings()).unwrap();
    assert!(json.get("decay").is_none());
    json.as_object_mut().unwrap().remove("decay");
    let old: FlowTrainConfig = serde_json::from_value(json).unwrap();
    assert_eq!(old.decay, Decay::Constant);
    assert_eq!(old.schedule().at(1_000_000), old.lr);
    assert_eq!(old.sampling, Sampling::Image);
    assert!(json_of(&old).get("sampling").is_none());
    let by_base = FlowTrainConfig { sampling: Sampling::Base, ..settings() };
    assert_eq!(json_of(&by_base)["sampling"], "base");
    assert_eq!(serde_json::from_value::<FlowTrainConfig>(json_of(&by_base)).unwrap(), by_base);
    assert!(json_of(&old).get("repeat").is_none());
    assert!(old.repeat.is_empty());
    let repeated = FlowTrainConfig { repeat: vec![Repeat::parse("flag of=4").unwrap()], ..settings() };
    assert_eq!(json_of(&repeated)["repeat"][0]["times"], 4);
    assert_eq!(serde_json::from_value::<FlowTrainConfig>(json_of(&repeated)).unwrap(), repeated);
}

/// `--lr-scale PREFIX=F`: Adam's first step moves every weight by about the learning rate (the
/// update is m̂/√v̂ = ±1), so the scaled group moves F times as far as the rest and nothing else
/// changes; unknown prefixes and bad factors are errors, and old settings have no multipliers.
#[test]
fn lr_scale_multiplies_the_step_of_its_group_only() {
    let lr = 1e-3;
    let plain = FlowTrainConfig { lr, warmup: 0, grad_clip: None, ..settings() };
    let scaled = FlowTrainConfig { lr_scale: vec![LrScale::parse("gen_dec.=5").unwrap()], ..plain.clone() };
    let largest_move = |config: FlowTrainConfig| {
        let mut t = fresh(config);
        let before = t.weights();
        t.step(&batch_for(0, 4)).unwrap();
        let after = t.weights();
        let mut moves: Vec<(String, f32)> = Vec::new();
        for n in before.names() {
            let (a, b) = (before.read_f32(n).unwrap().unwrap(), after.read_f32(n).unwrap().unwrap());
            moves.push((n.to_string(), a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)));
        }
        moves
    };
    let (a, b) = (largest_move(plain), largest_move(scaled));
    let mut groups = 0;
    for ((name, da), (_, db)) in a.iter().zip(&b) {
        if name.starts_with("language_model.") {
            continue; // stage 1: frozen
        }
        let want = if name.starts_with("gen_dec.") { 5.0 * da } else { *da };
        assert!((db - want).abs() <= 0.02 * want + 1e-7, "{name}: moved {db}, expected {want}");
        if *da > 0.5 * lr as f32 && name.starts_with("gen_dec.") {
            groups += 1;
        }
    }
    assert!(groups > 0, "no gen_dec parameter moved");

    let device = Default::default();
    let vb = VarBuilder::<B>::random(1, &device);
    let model = FlowGenerator::build(&vb, &tiny_config());
    let typo = FlowTrainConfig { lr_scale: vec![LrScale::parse("gen_deck.=5").unwrap()], ..settings() };
    let err = FlowTrainer::new(model, vb.param_keys(), typo, 0, &device).err().expect("unknown prefix refused");
    assert!(err.to_string().contains("no parameter key starts with \"gen_deck.\""), "{err}");
    for bad in ["gen_dec.", "=2", "gen_dec.=0", "gen_dec.=-1", "gen_dec.=nan", "gen_dec.=1e9"] {
        assert!(LrScale::parse(bad).is_err(), "{bad} accepted");
    }
    assert!(json_of(&settings()).get("lr_scale").is_none());
    let with = FlowTrainConfig { lr_scale: vec![LrScale::parse("gen_dec.=5").unwrap()], ..settings() };
    assert_eq!(serde_json::from_value::<FlowTrainConfig>(json_of(&with)).unwrap(), with);
}

fn json_of(c: &FlowTrainConfig) -> serde_json::Value {
    serde_json::to_value(c).unwrap()
}

/// `tiny_config` with pooled text conditioning over a 1-layer copy of its LLM.
fn pooled_config() -> GeneratorConfig {
    let mut c = tiny_config();
    c.pooled_text = Some(PooledTextConfig { layers: 1 });
    c
}

/// Seeded weights of `config`; the pooled path's output projection random instead of zero.
fn weights_with_live_pooled_path(config: &GeneratorConfig) -> Weights {
    let mut w = Weights::new();
    for (key, shape) in ModelKind::Generator(config.clone()).expected::<NdArray<f32>>(&Default::default()) {
        let values = if key.starts_with("pooled_text_embed.linear_2.") {
            rfgen_core::noise::gaussian(5, shape.iter().product()).into_iter().map(|x| x * 0.05).collect()
        } else {
            init_values(11, &key, &shape)
        };
        w.insert_f32(&key, shape, values);
    }
    w
}

fn velocity_of(model: &FlowGenerator<NdArray<f32>>, batch: &PromptBatch) -> Vec<f32> {
    let device = Default::default();
    let rows = batch.ids.len();
    let z = Tensor::from_data(TensorData::new(rfgen_core::noise::gaussian(2, rows * 3 * 64), [rows, 3, 8, 8]), &device);
    let mut cond = model.prepare(batch, &device);
    model.velocity(z, &vec![400.0; rows], &mut cond).into_data().into_vec::<f32>().unwrap()
}

#[test]
fn pooled_text_path_starts_as_a_no_op_and_pools_like_its_cache() {
    let device = Default::default();
    let tok = PromptTokenizer::bytes(1, 2, tiny_config().language_config.vocab_size).unwrap();
    let prompts: Vec<Vec<u32>> = ["a red square", "a dot"].iter().map(|c| tok.encode_prompt(c).unwrap()).collect();
    let batch = PromptBatch::new(&prompts, 0).unwrap();

    // Zero-initialised: the model with the path gives exactly the velocity of the one without.
    let plain = FlowGenerator::<NdArray<f32>>::build(&VarBuilder::random(11, &device), &tiny_config());
    let fresh = FlowGenerator::<NdArray<f32>>::build(&VarBuilder::random(11, &device), &pooled_config());
    assert_eq!(velocity_of(&plain, &batch), velocity_of(&fresh, &batch));

    // Live: the prompts move the velocity; features handed in (as training reads them from its
    // cache) give what the model pools from the token ids itself.
    let w = weights_with_live_pooled_path(&pooled_config());
    let live = FlowGenerator::<NdArray<f32>>::load(&w, &pooled_config(), &device).unwrap();
    let pooled_from_ids = velocity_of(&live, &batch);
    let diff = pooled_from_ids.iter().zip(velocity_of(&plain, &batch)).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    assert!(diff > 1e-3, "the pooled path changed nothing ({diff})");
    let llm = live.pooled_text_model.as_ref().unwrap();
    let bodies: Vec<&[u32]> = prompts.iter().map(|p| prompt_body(p)).collect();
    assert_eq!(bodies[1], &prompts[1][1..prompts[1].len() - 1]);
    let features = mean_pooled(llm, &bodies, &device).into_data().into_vec::<f32>().unwrap();
    let given = batch.clone().with_pooled(features).unwrap();
    let d = velocity_of(&live, &given).iter().zip(&pooled_from_ids).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    assert!(d < 1e-5, "given features differ from pooled ones by {d}");

    // Training rows: kept, prompt-dropped (unconditional tokens, zeros) and token-dropped
    // (unconditional tokens, the prompt's pooled features).
    let rows = training_rows(&given, &[false, true], &[false, false]);
    let h0 = pooled_config().hidden();
    let rows_t = training_rows(&given, &[false, false], &[false, true]);
    let all = given.pooled.as_ref().unwrap();
    assert_eq!(rows.ids[1], given.ids[3]);
    assert_eq!(rows_t.ids[1], given.ids[3]);
    assert!(rows.pooled.as_ref().unwrap()[h0..].iter().all(|&v| v == 0.0));
    assert_eq!(&rows_t.pooled.as_ref().unwrap()[h0..], &all[h0..2 * h0]);
    assert_eq!(training_rows(&given, &[true, false], &[true, false]).pooled.as_ref().unwrap()[..h0], vec![0.0; h0][..]);

    // The pooled rows follow `select` (training runs conditional and dropped rows together).
    let h = pooled_config().hidden();
    let dropped = given.select(&[0, 3]);
    let p = dropped.pooled.as_ref().unwrap();
    assert_eq!(p.len(), 2 * h);
    assert!(p[..h].iter().any(|&v| v != 0.0) && p[h..].iter().all(|&v| v == 0.0));
    assert!(batch.clone().with_pooled(vec![1.0; 3]).is_err() && batch.with_pooled(vec![f32::NAN; 2 * h]).is_err());
}

#[test]
fn training_moves_the_pooled_projection_and_nothing_frozen() {
    let device = Default::default();
    let config = pooled_config();
    let w = weights_with_live_pooled_path(&config);
    let vb = VarBuilder::<B>::new(&w, &device);
    let model = FlowGenerator::build(&vb, &config);
    let mut t = FlowTrainer::new(model, vb.param_keys(), settings(), 0, &device).unwrap();
    let width = config.hidden();
    let with_pooled = |step: u64| {
        let mut b = batch_for(step, 4);
        b.pooled = Some(rfgen_core::noise::gaussian(step + 9, 4 * width));
        b
    };
    let before = t.weights();
    for step in 0..2 {
        t.step(&with_pooled(step)).unwrap();
    }
    let after = t.weights();
    let moved = |n: &str| before.read_f32(n).unwrap().unwrap() != after.read_f32(n).unwrap().unwrap();
    assert!(moved("pooled_text_embed.linear_2.weight") && moved("pooled_text_embed.linear_1.weight"));
    for n in before.names().filter(|n| n.starts_with("pooled_text_model.") || n.starts_with("pooled_text_embed.norm.")) {
        assert!(!moved(n), "{n} is frozen but changed");
    }

    // Features of the wrong width, or for a model without the path, are errors.
    let mut bad = with_pooled(2);
    bad.pooled = Some(vec![0.5; 4 * (width + 1)]);
    assert!(t.step(&bad).unwrap_err().to_string().contains("pooled text values"));
    let mut plain = fresh(settings());
    assert!(plain.step(&with_pooled(0)).unwrap_err().to_string().contains("no pooled_text path"));
    let mut tokens_only = fresh(FlowTrainConfig { token_dropout: 0.5, ..settings() });
    assert!(tokens_only.step(&batch_for(0, 4)).unwrap_err().to_string().contains("token dropout needs"));
    assert!(FlowTrainConfig { token_dropout: 1.0, ..settings() }.validate().is_err());
    let mut zero_layers = pooled_config();
    zero_layers.pooled_text = Some(PooledTextConfig { layers: 0 });
    assert!(zero_layers.validate("config").unwrap_err().to_string().contains("pooled_text.layers"));
}
