//! The Euler-CFG loop's step grid (uniform, and with a timestep shift) on a velocity field whose
//! exact Euler result is known.

use burn::backend::NdArray;
use burn::tensor::{backend::Backend, Tensor, TensorData};
use rfgen_core::sampler::{sample, PromptBatch, SampleConfig, VelocityModel};

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
