// End to end: the demo page in headless Chromium (WebGPU on SwiftShader, then with WebGPU off for
// the CPU fallback) against `rfgen-cli sample` on the same model, prompt and seed; and the page's
// messages for a shard with a wrong sha256, a missing shard and an unreachable manifest.
import { chromium } from "playwright-core";
import { spawn, execFileSync } from "node:child_process";
import fs from "node:fs";
import path from "node:path";
import net from "node:net";
import os from "node:os";

const root = path.resolve(path.dirname(new URL(import.meta.url).pathname), "../..");
const www = path.join(root, "www");
const cli = process.env.RFGEN_CLI || path.join(root, "target/release/rfgen-cli");
const prompt = "a red apple";
const seed = 7, steps = 4, cfg = 2;
const failures = [];
const check = (ok, what) => { if (!ok) failures.push(what); console.log(`${ok ? "ok  " : "FAIL"} ${what}`); };

function freePort() {
  return new Promise((resolve) => {
    const s = net.createServer();
    s.listen(0, "127.0.0.1", () => { const p = s.address().port; s.close(() => resolve(p)); });
  });
}

function readSafetensors(file) {
  const buf = fs.readFileSync(file);
  const n = Number(buf.readBigUInt64LE(0));
  const header = JSON.parse(buf.subarray(8, 8 + n).toString("utf8"));
  const out = {};
  for (const [name, info] of Object.entries(header)) {
    if (name === "__metadata__") continue;
    const [a, b] = info.data_offsets;
    const bytes = buf.subarray(8 + n + a, 8 + n + b);
    out[name] = new Float32Array(bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.length));
  }
  return out;
}

const maxDiff = (a, b) => a.reduce((m, x, i) => Math.max(m, Math.abs(x - b[i])), 0);
function psnr(a, b) {
  const t = (x) => (Math.min(1, Math.max(-1, x)) + 1) / 2;
  const mse = a.reduce((s, x, i) => s + (t(x) - t(b[i])) ** 2, 0) / a.length;
  return mse === 0 ? Infinity : 10 * Math.log10(1 / mse);
}

// Broken copies of the model for the error cases.
function brokenModels() {
  const src = path.join(www, "models/tiny");
  const shards = fs.readdirSync(src).filter((f) => f.endsWith(".safetensors")).sort();
  for (const name of ["bad-sha", "missing-shard"]) {
    const dst = path.join(www, "models", `test-${name}`);
    fs.rmSync(dst, { recursive: true, force: true });
    fs.cpSync(src, dst, { recursive: true });
  }
  const f = path.join(www, "models/test-bad-sha", shards[0]);
  const bytes = fs.readFileSync(f);
  bytes[bytes.length - 1] ^= 0x55;
  fs.writeFileSync(f, bytes);
  fs.rmSync(path.join(www, "models/test-missing-shard", shards[shards.length - 1]));
}

const baseArgs = ["--no-sandbox", "--disable-gpu-sandbox", "--no-first-run", "--disable-background-networking",
  "--disable-component-update", "--disable-sync"];
const webgpuArgs = ["--enable-unsafe-webgpu", "--enable-features=Vulkan,WebGPU", "--use-vulkan=swiftshader",
  "--use-webgpu-adapter=swiftshader"];

async function runPage(browser, query, timeout = 900_000, context = null) {
  const page = await (context || browser).newPage();
  page.on("console", (m) => { if (m.type() === "error") console.log(`  [page] ${m.text()}`); });
  await page.goto(`${base}/?${query}`);
  await page.waitForFunction(() => window.rfgen && (window.rfgen.output || window.rfgen.error), null, { timeout, polling: 500 });
  const state = await page.evaluate(() => window.rfgen);
  return { page, state };
}

const port = await freePort();
const base = `http://127.0.0.1:${port}`;
const server = spawn("python3", ["-m", "http.server", String(port), "--bind", "127.0.0.1", "--directory", www], { stdio: "ignore" });
await new Promise((r) => setTimeout(r, 1000));

try {
  const dump = path.join(os.tmpdir(), `rfgen-native-${process.pid}.safetensors`);
  execFileSync(cli, ["sample", "--model", path.join(www, "models/tiny"), "--vae", path.join(www, "models/tiny-vae"),
    "--prompt", prompt, "--seed", String(seed), "--steps", String(steps), "--cfg", String(cfg), "--dump", dump], { stdio: "inherit" });
  const native = readSafetensors(dump);
  brokenModels();
  const tiny = { model: "models/tiny/manifest.json", vae: "models/tiny-vae/manifest.json" };
  const query = new URLSearchParams({ ...tiny, auto: "1", prompt, seed, steps, cfg }).toString();

  for (const mode of ["webgpu", "cpu"]) {
    const args = mode === "webgpu" ? [...baseArgs, ...webgpuArgs] : baseArgs;
    const browser = await chromium.launch({ executablePath: "/usr/bin/chromium", headless: true, args });
    const { page, state } = await runPage(browser, query);
    check(!state.error, `${mode}: generation ran (${state.error || "no error"})`);
    check(state.backend === mode, `${mode}: page used backend ${state.backend}`);
    if (state.output) {
      const latentDiff = maxDiff(state.output.latent, native.z1);
      const p = psnr(state.output.image, native.image);
      check(latentDiff <= 1e-3, `${mode}: final latent within 1e-3 of native (max |diff| ${latentDiff.toExponential(2)})`);
      check(p >= 40, `${mode}: image PSNR ${p.toFixed(2)} dB >= 40`);
      console.log(JSON.stringify({ mode, loadMs: state.loadMs, msPerStep: state.output.msPerStep, totalMs: state.output.totalMs, latentDiff, psnr: p }));
      if (mode === "webgpu" && process.env.RFGEN_SCREENSHOT) await page.screenshot({ path: process.env.RFGEN_SCREENSHOT, fullPage: true });
    }
    if (mode === "webgpu") {
      // A second visit in the same browser profile takes the shards from the Cache API.
      const context = await browser.newContext();
      const first = await runPage(browser, query, 900_000, context);
      const shardRequests = [];
      const again = await context.newPage();
      again.on("request", (r) => { if (r.url().endsWith(".safetensors")) shardRequests.push(r.url()); });
      await again.goto(`${base}/?${new URLSearchParams({ ...tiny, prompt: "x" })}`);
      await again.waitForFunction(() => window.rfgen && (window.rfgen.ready || window.rfgen.error), null, { timeout: 120_000 });
      check(!first.state.error && shardRequests.length === 0, `reload: ${shardRequests.length} shard downloads (cached)`);

      // Cancel after the first step.
      await again.fill("#steps", "50");
      await again.click("#generate");
      await again.waitForFunction(() => window.rfgen.step >= 1, null, { timeout: 300_000 });
      await again.click("#cancel");
      await again.waitForFunction(() => window.rfgen.cancelled || window.rfgen.error, null, { timeout: 300_000 });
      const cancelled = await again.evaluate(() => ({ cancelled: window.rfgen.cancelled, step: window.rfgen.step, status: document.getElementById("status").textContent }));
      check(cancelled.cancelled && cancelled.step < 50 && cancelled.status === "Cancelled.", `cancel stops the loop (${JSON.stringify(cancelled)})`);
      await context.close();

      // A quantized (int8) conversion of the same model, in the browser and natively.
      const q = path.join(www, "models/test-int8");
      execFileSync(cli, ["convert", "--from", path.join(www, "models/tiny"), "--to", q, "--dtype", "f16", "--quant", "int8", "--force"]);
      const qdump = path.join(os.tmpdir(), `rfgen-native-int8-${process.pid}.safetensors`);
      execFileSync(cli, ["sample", "--model", q, "--vae", path.join(www, "models/tiny-vae"), "--prompt", prompt, "--seed", String(seed),
        "--steps", String(steps), "--cfg", String(cfg), "--dump", qdump], { stdio: "ignore" });
      const qnative = readSafetensors(qdump);
      const { state: qs } = await runPage(browser, new URLSearchParams({ model: "models/test-int8/manifest.json", vae: tiny.vae, auto: "1", prompt, seed, steps, cfg }).toString());
      const qdiff = qs.output ? maxDiff(qs.output.latent, qnative.z1) : Infinity;
      check(!qs.error && qdiff <= 1e-3, `int8 model in the browser: latent within 1e-3 of native (max |diff| ${qdiff.toExponential(2)})`);

      // The page's own model: rfgen's trained emoji model (SmolLM2's first layer folded in, int8)
      // with its VAE, given nothing but a prompt; two steps against the native CLI.
      const edump = path.join(os.tmpdir(), `rfgen-native-emoji-${process.pid}.safetensors`);
      execFileSync(cli, ["sample", "--model", path.join(www, "models/default"), "--vae", path.join(www, "models/vae"),
        "--prompt", "red apple", "--seed", "3", "--steps", "2", "--dump", edump], { stdio: "ignore" });
      const enative = readSafetensors(edump);
      const { state: es } = await runPage(browser, new URLSearchParams({ auto: "1", prompt: "red apple", seed: 3, steps: 2 }).toString());
      const ediff = es.output ? maxDiff(es.output.latent, enative.z1) : Infinity;
      check(!es.error && ediff <= 1e-3, `default (trained) model in the browser: latent within 1e-3 of native (max |diff| ${ediff.toExponential(2)}; ${es.error || "ok"})`);
      if (es.output) console.log(JSON.stringify({ model: "default", loadMs: es.loadMs, msPerStep: es.output.msPerStep }));

      for (const [model, needle] of [["models/test-bad-sha/manifest.json", "sha256"],
                                     ["models/test-missing-shard/manifest.json", "missing"],
                                     [`http://127.0.0.1:1/manifest.json`, "manifest"]]) {
        const { state: s } = await runPage(browser, new URLSearchParams({ model, vae: tiny.vae, prompt }).toString() + "&auto=1", 120_000);
        const shown = await (await browser.contexts()[0]?.pages().at(-1))?.textContent("#error").catch(() => null);
        check(s.error && s.error.includes(needle) && (shown || s.error).includes(needle), `${model}: page says ${JSON.stringify(s.error)}`);
      }
    }
    await browser.close();
  }
} finally {
  server.kill();
  for (const name of ["bad-sha", "missing-shard", "int8"]) fs.rmSync(path.join(www, "models", `test-${name}`), { recursive: true, force: true });
}

if (failures.length) {
  console.error(`${failures.length} browser check(s) failed:\n${failures.join("\n")}`);
  process.exit(1);
}
console.log("browser tests passed");
