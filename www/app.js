// The demo page: loads a model with rfgen's wasm build and generates images step by step.
import init, { Generator } from "./pkg/rfgen_web.js";

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
const model = params.get("model") || "models/default/manifest.json";
const vae = params.get("vae") || "models/vae/manifest.json";
let generator = null;
const result = (window.rfgen = { ready: false, error: null, output: null });

function fail(message) {
  $("error").hidden = false;
  $("error").textContent = message;
  $("status").textContent = "Failed.";
  result.error = message;
}

async function webgpuAdapter() {
  if (params.get("backend") === "cpu" || !navigator.gpu) return null;
  try {
    return await navigator.gpu.requestAdapter();
  } catch {
    return null;
  }
}

async function load() {
  await init();
  const adapter = await webgpuAdapter();
  const backend = adapter ? "webgpu" : "cpu";
  $("backend").textContent = adapter ? "WebGPU" : "CPU (this browser has no WebGPU adapter; running on the CPU, slower)";
  const info = adapter && adapter.info;
  $("adapter").textContent = info ? [info.vendor, info.architecture, info.description].filter(Boolean).join(" ") || "unknown" : "none";
  $("model").textContent = model;
  const t0 = performance.now();
  $("status").textContent = "Downloading the model…";
  generator = await Generator.load({
    manifestUrl: model,
    vaeUrl: vae,
    backend,
    onProgress: (loaded, file) => { $("status").textContent = `Loaded ${(loaded / 1048576).toFixed(1)} MiB (${file})`; },
  });
  // The model's own steps and guidance, unless the address sets them.
  if (!params.has("steps")) $("steps").value = generator.defaultSteps;
  if (!params.has("cfg")) $("cfg").value = generator.defaultCfg;
  result.loadMs = performance.now() - t0;
  $("load-time").textContent = `${(result.loadMs / 1000).toFixed(2)} s`;
  $("status").textContent = "Ready.";
  $("generate").disabled = false;
  result.backend = backend;
  result.ready = true;
}

function draw(canvas, rgba, w, h) {
  canvas.width = w;
  canvas.height = h;
  canvas.getContext("2d").putImageData(new ImageData(new Uint8ClampedArray(rgba), w, h), 0, 0);
}

async function generate() {
  $("generate").disabled = true;
  $("cancel").disabled = false;
  $("error").hidden = true;
  $("download").hidden = true;
  const steps = Number($("steps").value);
  $("progress").max = steps;
  $("progress").value = 0;
  try {
    const out = await generator.generate($("prompt").value, {
      steps,
      cfg: Number($("cfg").value),
      seed: Number($("seed").value),
      onStep: (step, total, t, rgba, w, h) => {
        result.step = step;
        $("progress").value = step;
        $("status").textContent = `Step ${step}/${total} (t = ${t.toFixed(0)})`;
        draw($("preview"), rgba, w, h);
      },
    });
    if (out.rgba) draw($("image"), out.rgba, out.width, out.height);
    $("step-time").textContent = `${out.msPerStep.toFixed(1)} ms`;
    $("total-time").textContent = `${(out.totalMs / 1000).toFixed(2)} s`;
    $("status").textContent = "Done.";
    $("download").href = $("image").toDataURL("image/png");
    $("download").hidden = false;
    result.output = { latent: Array.from(out.latent), latentShape: out.latentShape, image: out.image ? Array.from(out.image) : null, msPerStep: out.msPerStep, totalMs: out.totalMs };
  } catch (e) {
    const message = String(e && e.message ? e.message : e);
    if (message === "cancelled") {
      $("status").textContent = "Cancelled.";
      result.cancelled = true;
    } else {
      fail(message);
    }
  } finally {
    $("generate").disabled = false;
    $("cancel").disabled = true;
  }
}

$("form").addEventListener("submit", (e) => { e.preventDefault(); generate(); });
$("cancel").addEventListener("click", () => generator && generator.cancel());
for (const key of ["prompt", "steps", "cfg", "seed"]) if (params.has(key)) $(key).value = params.get(key);

load()
  .then(() => { if (params.get("auto") === "1") return generate(); })
  .catch((e) => fail(String(e && e.message ? e.message : e)));
