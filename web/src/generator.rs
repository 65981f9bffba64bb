use std::cell::Cell;
use std::rc::Rc;

use burn::backend::wgpu::{graphics::WebGpu, init_setup_async, WgpuDevice};
use burn::backend::{NdArray, Wgpu};
use burn::tensor::{backend::Backend, Tensor};
use js_sys::{Array, Float32Array, Function, Object, Reflect, Uint8ClampedArray};
use rfgen_core::checkpoint::weights_from_manifest;
use rfgen_core::convert::Manifest;
use rfgen_core::janusflow::GenerationConfig;
use rfgen_core::pipeline::{Pipeline, VaeFiles};
use rfgen_core::sampler::{EulerCfg, PromptBatch, SampleConfig};
use rfgen_core::structured::GeneratorConfig;
use rfgen_core::vae::VaeConfig;
use wasm_bindgen::prelude::*;
use wasm_bindgen_futures::{future_to_promise, JsFuture};

use crate::fetch::{evict, fetch_bytes, join, open_cache};

type Gpu = Wgpu<f32, i32>;
type Cpu = NdArray<f32>;

enum Model {
    Gpu(Pipeline<Gpu>),
    Cpu(Pipeline<Cpu>),
}

impl Model {
    /// Steps and guidance when the caller gives none.
    fn defaults(&self) -> SampleConfig {
        match self {
            Model::Gpu(p) => p.generation.sample_config(None, None, None),
            Model::Cpu(p) => p.generation.sample_config(None, None, None),
        }
    }
}

/// A loaded model, ready to generate images.
#[wasm_bindgen]
pub struct Generator {
    model: Rc<Model>,
    cancel: Rc<Cell<bool>>,
    backend: String,
}

fn field(o: &JsValue, key: &str) -> Option<JsValue> {
    Reflect::get(o, &JsValue::from_str(key)).ok().filter(|v| !v.is_undefined() && !v.is_null())
}

fn number(o: &JsValue, key: &str) -> Option<f64> {
    field(o, key).and_then(|v| v.as_f64())
}

fn set(o: &Object, key: &str, value: impl Into<JsValue>) {
    let _ = Reflect::set(o, &JsValue::from_str(key), &value.into());
}

/// Downloads a manifest and its shards (verifying size and sha256) into weights.
async fn load_manifest(
    url: &str,
    cache: Option<&web_sys::Cache>,
    progress: &mut dyn FnMut(u64, &str),
) -> Result<(Manifest, rfgen_core::checkpoint::Weights), String> {
    let bytes = fetch_bytes(url, None, false).await.map_err(|e| format!("cannot load the manifest: {e}"))?.unwrap_or_default();
    let manifest: Manifest = serde_json::from_slice(&bytes).map_err(|e| format!("{url} is not an rfgen manifest: {e}"))?;
    let mut shards = Vec::with_capacity(manifest.shards.len());
    let mut urls = Vec::new();
    for s in &manifest.shards {
        let shard_url = join(url, &s.file);
        let data = fetch_bytes(&shard_url, cache, false)
            .await
            .map_err(|e| format!("shard {} is missing or unreachable: {e}", s.file))?
            .unwrap_or_default();
        progress(data.len() as u64, &s.file);
        shards.push((s.file.clone(), data));
        urls.push(shard_url);
    }
    match weights_from_manifest(&manifest, shards) {
        Ok(w) => Ok((manifest, w)),
        Err(e) => {
            evict(cache, &urls).await;
            Err(e.to_string())
        }
    }
}

#[wasm_bindgen]
impl Generator {
    /// `options`: `{ manifestUrl, vaeUrl?, backend: "webgpu" | "cpu", onProgress?(loaded, total, file) }`.
    pub async fn load(options: JsValue) -> Result<Generator, JsError> {
        Self::load_inner(options).await.map_err(|e| JsError::new(&e))
    }

    async fn load_inner(options: JsValue) -> Result<Generator, String> {
        let manifest_url = field(&options, "manifestUrl").and_then(|v| v.as_string()).ok_or("options.manifestUrl is required")?;
        let vae_url = field(&options, "vaeUrl").and_then(|v| v.as_string());
        let backend = field(&options, "backend").and_then(|v| v.as_string()).unwrap_or_else(|| "webgpu".into());
        let on_progress = field(&options, "onProgress").and_then(|v| v.dyn_into::<Function>().ok());
        let cache = open_cache().await;
        let mut loaded = 0u64;
        let mut progress = |n: u64, file: &str| {
            loaded += n;
            if let Some(f) = &on_progress {
                let _ = f.call2(&JsValue::NULL, &JsValue::from_f64(loaded as f64), &JsValue::from_str(file));
            }
        };

        let (manifest, weights) = load_manifest(&manifest_url, cache.as_ref(), &mut progress).await?;
        if manifest.model != "generator" {
            return Err(format!("{manifest_url} holds a {}, not a generator", manifest.model));
        }
        let config: GeneratorConfig = serde_json::from_value(manifest.config.clone()).map_err(|e| format!("model config: {e}"))?;
        let generation = match fetch_bytes(&join(&manifest_url, "generation.json"), None, true).await? {
            Some(b) => serde_json::from_slice::<GenerationConfig>(&b).map_err(|e| format!("generation.json: {e}"))?,
            None => GenerationConfig::default(),
        };
        let tokenizer = fetch_bytes(&join(&manifest_url, "tokenizer.json"), cache.as_ref(), true).await?;
        let vae = match &vae_url {
            Some(url) => {
                let (m, weights) = load_manifest(url, cache.as_ref(), &mut progress).await?;
                let config: VaeConfig = serde_json::from_value(m.config).map_err(|e| format!("VAE config: {e}"))?;
                Some(VaeFiles { config, weights })
            }
            None => None,
        };
        let model = match backend.as_str() {
            "webgpu" => {
                let device = WgpuDevice::default();
                init_setup_async::<WebGpu>(&device, Default::default()).await;
                Model::Gpu(Pipeline::from_parts(&config, &weights, generation, tokenizer, vae, &device).map_err(|e| e.to_string())?)
            }
            "cpu" => Model::Cpu(Pipeline::from_parts(&config, &weights, generation, tokenizer, vae, &Default::default()).map_err(|e| e.to_string())?),
            other => return Err(format!("unknown backend {other:?} (webgpu or cpu)")),
        };
        Ok(Generator { model: Rc::new(model), cancel: Rc::new(Cell::new(false)), backend })
    }

    /// "webgpu" or "cpu".
    #[wasm_bindgen(getter)]
    pub fn backend(&self) -> String {
        self.backend.clone()
    }

    /// The model's own Euler step count (`generation.num_inference_steps`, else the sampler's default).
    #[wasm_bindgen(getter = defaultSteps)]
    pub fn default_steps(&self) -> u32 {
        self.model.defaults().steps as u32
    }

    /// The model's own guidance weight (`generation.cfg_weight`, else the sampler's default).
    #[wasm_bindgen(getter = defaultCfg)]
    pub fn default_cfg(&self) -> f64 {
        self.model.defaults().cfg
    }

    /// Stops a running generation after its current step (its promise rejects with "cancelled").
    pub fn cancel(&self) {
        self.cancel.set(true);
    }

    /// `options`: `{ steps, cfg, seed, width?, height?, tokenIds?, onStep?(step, steps, t, rgba, w, h) }`.
    /// Resolves to `{ rgba, width, height, latent, latentShape, msPerStep, totalMs }`.
    pub fn generate(&self, prompt: String, options: JsValue) -> js_sys::Promise {
        let (model, cancel) = (self.model.clone(), self.cancel.clone());
        cancel.set(false);
        future_to_promise(async move {
            let out = match &*model {
                Model::Gpu(p) => run(p, &prompt, &options, &cancel).await,
                Model::Cpu(p) => run(p, &prompt, &options, &cancel).await,
            };
            out.map_err(|e| js_sys::Error::new(&e).into())
        })
    }
}

async fn read<B: Backend>(t: Tensor<B, 4>) -> Result<Vec<f32>, String> {
    let data = t.into_data_async().await.map_err(|e| format!("reading back from the device: {e:?}"))?;
    data.convert::<f32>().to_vec::<f32>().map_err(|e| format!("{e:?}"))
}

/// Lets the page repaint and handle clicks between steps.
async fn yield_now() {
    let promise = js_sys::Promise::new(&mut |resolve, _| {
        if let Some(w) = web_sys::window() {
            let _ = w.set_timeout_with_callback_and_timeout_and_arguments_0(&resolve, 0);
        }
    });
    let _ = JsFuture::from(promise).await;
}

fn now() -> f64 {
    web_sys::window().and_then(|w| Reflect::get(&w, &"performance".into()).ok()).and_then(|p| {
        let f = Reflect::get(&p, &"now".into()).ok()?.dyn_into::<Function>().ok()?;
        f.call0(&p).ok()?.as_f64()
    }).unwrap_or(0.0)
}

/// A cheap RGB view of a 4-channel latent (approximate SDXL latent-to-RGB factors), RGBA.
fn preview(latent: &[f32], c: usize, h: usize, w: usize) -> Vec<u8> {
    const F: [[f32; 3]; 4] = [[0.3651, 0.4232, 0.4341], [-0.2533, -0.0042, 0.1068], [0.1076, 0.1111, -0.0362], [-0.3165, -0.2492, -0.2188]];
    let plane = h * w;
    let mut out = vec![255u8; plane * 4];
    for i in 0..plane {
        for (k, px) in out[i * 4..i * 4 + 3].iter_mut().enumerate() {
            let v: f32 = (0..c.min(4)).map(|ch| latent[ch * plane + i] * F[ch][k]).sum();
            *px = (((v + 1.0) / 2.0).clamp(0.0, 1.0) * 255.0) as u8;
        }
    }
    out
}

async fn run<B: Backend>(pipe: &Pipeline<B>, prompt: &str, o: &JsValue, cancel: &Cell<bool>) -> Result<JsValue, String> {
    let sample = pipe.generation.sample_config(number(o, "steps").map(|v| v as usize), number(o, "cfg"), number(o, "shift"));
    let steps = sample.steps;
    let seed = number(o, "seed").unwrap_or(0.0) as u64;
    let ids = match field(o, "tokenIds") {
        Some(v) => Array::from(&v).iter().map(|x| x.as_f64().map(|f| f as u32).ok_or("tokenIds must be numbers")).collect::<Result<Vec<_>, _>>()?,
        None => pipe.tokenize(&[prompt.to_string()]).map_err(|e| e.to_string())?.remove(0),
    };
    let factor = pipe.vae.as_ref().map(|v| v.config.upscale()).unwrap_or(8);
    let hw = match (number(o, "width"), number(o, "height")) {
        (Some(w), Some(h)) => [h as usize / factor, w as usize / factor],
        _ => pipe.default_latent_hw(),
    };
    let z0 = pipe.noise(seed, 1, hw);
    let batch = PromptBatch::new(&[ids], pipe.pad_id).map_err(|e| e.to_string())?;
    let on_step = field(o, "onStep").and_then(|v| v.dyn_into::<Function>().ok());
    let start = now();
    let mut euler = EulerCfg::new(&pipe.model, &batch, z0, &sample).map_err(|e| e.to_string())?;
    let [_, c, h, w] = euler.latent().dims();
    while let Some(out) = euler.step() {
        let latent = read(euler.latent().clone()).await?;
        if let Some(f) = &on_step {
            let args = Array::of5(
                &JsValue::from_f64((out.step + 1) as f64),
                &JsValue::from_f64(steps as f64),
                &JsValue::from_f64(out.t as f64),
                &Uint8ClampedArray::from(preview(&latent, c, h, w).as_slice()),
                &JsValue::from_f64(w as f64),
            );
            args.push(&JsValue::from_f64(h as f64));
            let _ = f.apply(&JsValue::NULL, &args);
        }
        yield_now().await;
        if cancel.get() {
            return Err("cancelled".into());
        }
    }
    let loop_ms = now() - start;
    let z1 = euler.latent().clone();
    let result = Object::new();
    let latent = read(z1.clone()).await?;
    if latent.iter().any(|x| !x.is_finite()) {
        return Err("the final latent contains NaN or infinite values".into());
    }
    set(&result, "latent", Float32Array::from(latent.as_slice()));
    set(&result, "latentShape", Array::of4(&1.into(), &(c as u32).into(), &(h as u32).into(), &(w as u32).into()));
    if let Some(vae) = &pipe.vae {
        let image = vae.decode_flow_latent(z1);
        let [_, _, ih, iw] = image.dims();
        let values = read(image).await?;
        let rgb = rfgen_core::image::to_rgb8(&values, ih, iw);
        let rgba: Vec<u8> = rgb.chunks_exact(3).flat_map(|p| [p[0], p[1], p[2], 255]).collect();
        set(&result, "rgba", Uint8ClampedArray::from(rgba.as_slice()));
        set(&result, "image", Float32Array::from(values.as_slice()));
        set(&result, "width", iw as u32);
        set(&result, "height", ih as u32);
    }
    set(&result, "msPerStep", loop_ms / steps as f64);
    set(&result, "totalMs", now() - start);
    Ok(result.into())
}
