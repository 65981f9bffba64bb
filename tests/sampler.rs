//! The Euler-CFG loop's step grid (uniform, and with a timestep shift) on a velocity field whose
//! exact Euler result is known.

use burn::backend::NdArray;
use burn::tensor::{backend::Backend, Tensor, TensorData};
use rfgen_core::pipeline::strength_start_step;
use rfgen_core::sampler::{sample, sample_from, PromptBatch, SampleConfig, VelocityModel};

type Cpu = NdArray<f32>;

/// v(z, t) = t/1000 on conditional rows and 0 on unconditional rows, whatever z is.
struct RampField;

impl<B: Backend> VelocityModel<B> for RampField {
    type Cond = ();
    fn latent_channels(&self) -> usize {
        1
    }
    fn patch_size(&self) -> usize {
        1
    }
    fn vocab_size(&self) -> usize {
        8
    }
    fn prepare(&self, _: &PromptBatch, _: &B::Device) {}
    fn velocity(&self, z: Tensor<B, 4>, t: &[f32], _: &mut ()) -> Tensor<B, 4> {
        let [rows, c, h, w] = z.dims();
        let half = rows / 2;
        let values: Vec<f32> = (0..rows).flat_map(|r| std::iter::repeat(if r < half { t[r] / 1000.0 } else { 0.0 }).take(c * h * w)).collect();
        Tensor::from_data(TensorData::new(values, [rows, c, h, w]), &z.device())
    }
}

/// (times seen on the 0..1000 scale, z1 - z0) of one run on a 1x1x2x2 latent.
fn run(config: SampleConfig) -> (Vec<f64>, f64) {
    let device = Default::default();
    let batch = PromptBatch::new(&[vec![1, 5]], 0).unwrap();
    let z0 = Tensor::<Cpu, 4>::from_data(TensorData::new(vec![0.5f32, -1.0, 2.0, 0.0], [1, 1, 2, 2]), &device);
    let mut times = Vec::new();
    let z1 = sample(&RampField, &batch, z0.clone(), &config, |e| times.push(e.t as f64)).unwrap();
    let d: Vec<f32> = (z1 - z0).into_data().to_vec().unwrap();
    assert!(d.iter().all(|&x| (x - d[0]).abs() < 1e-6), "every element moves alike: {d:?}");
    (times, d[0] as f64)
}

/// SD3's shifted grid, written out independently: σ_i = 1 − i/N, σ' = sσ / (1 + (s − 1)σ), t = 1 − σ'.
fn shifted(i: usize, n: usize, s: f64) -> f64 {
    let sigma = 1.0 - i as f64 / n as f64;
    1.0 - s * sigma / (1.0 + (s - 1.0) * sigma)
}

#[test]
fn uniform_grid_is_the_official_loop() {
    for (steps, cfg) in [(30, 2.0), (7, 3.5)] {
        let (times, moved) = run(SampleConfig { steps, cfg, shift: 1.0 });
        let want: Vec<f64> = (0..steps).map(|i| (i as f64 / steps as f64 * 1000.0) as f32 as f64).collect();
        assert_eq!(times, want);
        // Euler with dt = 1/N of v = cfg · t: cfg · Σ i/N² = cfg (N − 1) / (2N).
        let exact = cfg * (steps - 1) as f64 / (2.0 * steps as f64);
        assert!((moved - exact).abs() < 1e-5, "steps {steps}: moved {moved}, Euler gives {exact}");
    }
}

#[test]
fn shifted_grid_follows_sd3_and_its_steps_sum_to_one() {
    for (steps, shift) in [(30, 3.0), (10, 0.5), (4, 6.0)] {
        let (times, moved) = run(SampleConfig { steps, cfg: 1.0, shift });
        assert_eq!(times.len(), steps);
        let mut euler = 0.0;
        for i in 0..steps {
            let t = shifted(i, steps, shift);
            assert!((times[i] - t * 1000.0).abs() < 1e-3, "shift {shift} step {i}: t {} want {}", times[i], t * 1000.0);
            euler += t * (shifted(i + 1, steps, shift) - t);
        }
        assert!((shifted(steps, steps, shift) - 1.0).abs() < 1e-12);
        assert!((moved - euler).abs() < 1e-5, "shift {shift}: moved {moved}, Euler gives {euler}");
        // A shift above 1 spends more of the steps near the noise (small t), below 1 near the data.
        let mid = times[steps / 2] / 1000.0;
        if shift > 1.0 {
            assert!(mid < 0.5, "shift {shift}: mid-run t {mid}");
        } else {
            assert!(mid > 0.5, "shift {shift}: mid-run t {mid}");
        }
    }
}

#[test]
fn absurd_shift_is_refused_by_name() {
    for shift in [0.0, -1.0, f64::NAN, f64::INFINITY, 1e6] {
        let err = SampleConfig { steps: 4, cfg: 2.0, shift }.validate().unwrap_err().to_string();
        assert!(err.contains("shift"), "{shift}: {err}");
    }
}

/// v = (sum of the row's visible prompt ids) / 10 on every row, whatever z and t are: an
/// unconditional row sees only BOS.
struct TokenField;

impl<B: Backend> VelocityModel<B> for TokenField {
    type Cond = Vec<f32>;
    fn latent_channels(&self) -> usize {
        1
    }
    fn patch_size(&self) -> usize {
        1
    }
    fn vocab_size(&self) -> usize {
        16
    }
    fn prepare(&self, batch: &PromptBatch, _: &B::Device) -> Vec<f32> {
        let p = batch.prefix_len();
        (0..batch.ids.len())
            .map(|r| {
                let visible: u32 = (0..p).filter(|&j| batch.prefix_visible[r][j]).map(|j| batch.ids[r][j]).sum();
                // The last column is the begin-of-generation tag on conditional rows only.
                let last = if r < batch.ids.len() - batch.batch { batch.ids[r][p] } else { 0 };
                (visible + last) as f32 / 10.0
            })
            .collect()
    }
    fn velocity(&self, z: Tensor<B, 4>, _: &[f32], per_row: &mut Vec<f32>) -> Tensor<B, 4> {
        let [rows, c, h, w] = z.dims();
        assert_eq!(rows, per_row.len(), "one z row per prompt row");
        let values: Vec<f32> = per_row.iter().flat_map(|&v| std::iter::repeat(v).take(c * h * w)).collect();
        Tensor::from_data(TensorData::new(values, [rows, c, h, w]), &z.device())
    }
}

fn composed_moves(groups: &[Vec<Vec<u32>>], shares: &[f32], cfg: f64) -> Vec<f32> {
    let device = Default::default();
    let batch = PromptBatch::composed(groups, shares, 0).unwrap();
    let b = groups[0].len();
    let z0 = Tensor::<Cpu, 4>::zeros([b, 1, 1, 1], &device);
    let z1 = sample(&TokenField, &batch, z0, &SampleConfig { steps: 5, cfg, shift: 1.0 }, |_| {}).unwrap();
    z1.into_data().to_vec().unwrap()
}

#[test]
fn composed_guidance_weighs_each_group_against_the_unconditional_rows() {
    // Image 0: prompt [1, 5] and neighbour [1, 3]; image 1: prompt [1, 2, 2] and neighbour [1, 7]
    // (unequal lengths: left padding must not move a row's BOS out of its unconditional row).
    let groups = vec![vec![vec![1, 5], vec![1, 2, 2]], vec![vec![1, 3], vec![1, 7]]];
    let moved = composed_moves(&groups, &[0.75, 0.25], 2.0);
    // v = v_u + w (0.75 (v_p − v_u) + 0.25 (v_n − v_u)), v_u = BOS / 10 = 0.1; 5 steps of 1/5.
    let want = [0.1 + 2.0 * (0.75 * 0.5 + 0.25 * 0.3), 0.1 + 2.0 * (0.75 * 0.4 + 0.25 * 0.7)];
    for (m, w) in moved.iter().zip(want) {
        assert!((*m as f64 - w).abs() < 1e-5, "moved {moved:?}, want {want:?}");
    }
    // One group is plain classifier-free guidance: w v_c − (w − 1) v_u.
    let plain = composed_moves(&groups[..1], &[1.0], 3.0);
    assert!((plain[0] as f64 - (3.0 * 0.6 - 2.0 * 0.1)).abs() < 1e-5, "{plain:?}");
    // The same prompt in two groups is the same guidance.
    let twice = composed_moves(&[groups[0].clone(), groups[0].clone()], &[0.4, 0.6], 3.0);
    assert!(plain.iter().zip(&twice).all(|(a, b)| (a - b).abs() < 1e-5), "{plain:?} vs {twice:?}");
}

#[test]
fn composed_batches_refuse_mismatched_groups_and_shares() {
    let one = vec![vec![1u32, 5]];
    let err = |g: &[Vec<Vec<u32>>], s: &[f32]| PromptBatch::composed(g, s, 0).unwrap_err().to_string();
    assert!(err(&[one.clone(), vec![vec![1, 3], vec![1, 4]]], &[0.5, 0.5]).contains("group 1 has 2 prompts"));
    assert!(err(&[one.clone(), one.clone()], &[0.5, 0.6]).contains("do not sum to 1"));
    assert!(err(&[one.clone(), one.clone()], &[1.0]).contains("2 prompt groups"));
    assert!(err(&[one.clone(), one.clone()], &[1.5, -0.5]).contains("positive"));
    assert!(err(&[one.clone(), vec![vec![1]]], &[0.5, 0.5]).contains("prompt 0 of group 1"));
    assert!(err(&[], &[]).contains("no prompt"));
}

/// Image-to-image starts inside the grid: from grid point k it sees only the last N − k times,
/// and resuming from the latent a full run had after k steps ends where the full run ends.
#[test]
fn a_start_point_runs_the_rest_of_the_grid() {
    let device = Default::default();
    let batch = PromptBatch::new(&[vec![1, 5]], 0).unwrap();
    let config = SampleConfig { steps: 10, cfg: 3.0, shift: 2.0 };
    let z0 = Tensor::<Cpu, 4>::from_data(TensorData::new(vec![0.5f32, -1.0, 2.0, 0.0], [1, 1, 2, 2]), &device);
    let mut full_times = Vec::new();
    let mut after = Vec::new();
    let full = sample(&RampField, &batch, z0.clone(), &config, |e| {
        full_times.push(e.t);
        after.push(e.z.clone());
    })
    .unwrap();
    let k = 4;
    let mut times = Vec::new();
    let resumed = sample_from(&RampField, &batch, after[k - 1].clone(), k, &config, |e| times.push(e.t)).unwrap();
    assert_eq!(times, full_times[k..]);
    let (a, b): (Vec<f32>, Vec<f32>) = (full.into_data().to_vec().unwrap(), resumed.into_data().to_vec().unwrap());
    assert_eq!(a, b);
    let err = sample_from(&RampField, &batch, z0, 10, &config, |_| {}).unwrap_err().to_string();
    assert!(err.contains("start step 10") && err.contains("10 steps"), "{err}");
}

/// diffusers' img2img: strength s runs the last floor(N·s) of N steps; nothing or out of range is refused.
#[test]
fn strength_picks_the_start_step_like_diffusers() {
    let c = |steps| SampleConfig { steps, cfg: 2.0, shift: 1.0 };
    assert_eq!(strength_start_step(1.0, &c(30)).unwrap(), 0);
    assert_eq!(strength_start_step(0.8, &c(30)).unwrap(), 6);
    assert_eq!(strength_start_step(0.7, &c(30)).unwrap(), 9);
    assert_eq!(strength_start_step(0.55, &c(10)).unwrap(), 5);
    assert!(strength_start_step(0.05, &c(10)).unwrap_err().to_string().contains("runs no step"));
    for bad in [0.0, -0.5, 1.5, f64::NAN] {
        assert!(strength_start_step(bad, &c(30)).unwrap_err().to_string().contains("strength must be in (0, 1]"), "{bad}");
    }
}

/// The default model's retrieval start (its caption index holds the training images): an unseen
/// prompt starts from its nearest neighbour's image noised to the strength's grid point, a
/// training caption from noise, and a mixed batch draws each prompt as it draws it alone.
#[test]
fn retrieval_start_begins_at_the_neighbours_image_and_keeps_prompt_order() {
    use rfgen_core::pipeline::{ModelFiles, Pipeline};
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/default");
    let device = Default::default();
    let files = ModelFiles::read_dir(&dir).expect("models/default loads (its GGUF comes from ./build.sh setup)");
    let pipe = Pipeline::<Cpu>::new(files, None, &device).unwrap();
    let g = pipe.neighbour_guidance(None, None, None).unwrap().expect("the default model has a caption index");
    let strength = g.init.expect("the default model starts unseen prompts from their neighbour's image");
    let index = &pipe.neighbours.as_ref().unwrap().index;
    let images = index.images.as_ref().expect("the index holds the training images");

    let prompts: Vec<String> = ["a purple kitchen knife", "red apple", "a tiny green castle"].map(String::from).to_vec();
    let config = SampleConfig { steps: 5, cfg: 4.0, ..SampleConfig::default() };
    let start = strength_start_step(strength, &config).unwrap();
    let z0 = pipe.noise(3, prompts.len(), [32, 32]);
    let (batch, near) = pipe.generate_prompts(&prompts, Some(g), z0.clone(), &config, |_| {}).unwrap();
    let near = near.unwrap();
    assert_eq!(near[1][0].0, "red apple", "a training caption is its own neighbour");
    for b in 0..prompts.len() {
        let z0_b = z0.clone().slice([b..b + 1]);
        let mut first: Option<(usize, Vec<f32>)> = None;
        let (alone, _) = pipe
            .generate_prompts(&prompts[b..b + 1], Some(g), z0_b.clone(), &config, |e| {
                if first.is_none() {
                    // The latent before the first step: z − dt · v on the uniform grid.
                    let before = e.z.clone() - e.v_cfg.clone().div_scalar(config.steps as f32);
                    first = Some((e.step, before.into_data().to_vec::<f32>().unwrap()));
                }
            })
            .unwrap();
        let row: Vec<f32> = batch.z1.clone().slice([b..b + 1]).into_data().to_vec().unwrap();
        let got: Vec<f32> = alone.z1.into_data().to_vec().unwrap();
        let diff = row.iter().zip(&got).map(|(a, c)| (a - c).abs()).fold(0.0f32, f32::max);
        assert!(diff < 1e-4, "{:?}: batched and alone differ by {diff}", prompts[b]);
        let (step, z_start) = first.unwrap();
        if b == 1 {
            assert_eq!(step, 0, "a training caption starts from noise");
            continue;
        }
        assert_eq!(step, start, "{:?} starts at the strength's grid point", prompts[b]);
        let r = index.features.row_of(&near[b][0].0).unwrap();
        let x = images.latents::<Cpu>(&[r], [32, 32], &device).unwrap();
        let t = start as f32 / config.steps as f32;
        let want: Vec<f32> = (x.mul_scalar(t) + z0_b.mul_scalar(1.0 - t)).into_data().to_vec().unwrap();
        let diff = z_start.iter().zip(&want).map(|(a, c)| (a - c).abs()).fold(0.0f32, f32::max);
        assert!(diff < 1e-3, "{:?}: the start is not its neighbour's image noised ({diff})", prompts[b]);
    }
    // Turned off, the unseen prompt starts from noise and draws something else.
    let off = pipe.neighbour_guidance(None, None, Some(0.0)).unwrap().unwrap();
    assert_eq!(off.init, None);
    let (plain, _) = pipe.generate_prompts(&prompts[..1], Some(off), z0.clone().slice([0..1]), &config, |_| {}).unwrap();
    let a: Vec<f32> = plain.z1.into_data().to_vec().unwrap();
    let b: Vec<f32> = batch.z1.slice([0..1]).into_data().to_vec().unwrap();
    assert!(a.iter().zip(&b).any(|(x, y)| (x - y).abs() > 1e-2));
    assert!(pipe.neighbour_guidance(None, None, Some(1.5)).unwrap_err().to_string().contains("strength"));
}
