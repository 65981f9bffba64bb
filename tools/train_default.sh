#!/usr/bin/env bash
# Reproduces models/default (the emoji model `rfgen-cli sample` uses when no --model is given):
# data → VAE → latents → generator (SmolLM2-135M's first layer, frozen; "both" arm) → assembly.
# CPU: ./tools/train_default.sh; on a GPU machine: BACKEND=cuda ./tools/train_default.sh (build the
# CLI with --features cuda).
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-runs}
BACKEND=${BACKEND:-ndarray}
# Both stages are fixed step counts, so the run is reproducible exactly: the VAE 1200 steps of
# batch 8 (19.4 minutes on the 2-core CPU this was trained on), the generator 4200 steps of batch 16
# (64 minutes there); with data, latents and assembly the whole recipe takes about 84 minutes.
VAE_STEPS=${VAE_STEPS:-1200}
GEN_STEPS=${GEN_STEPS:-4200}
CLI=${CLI:-target/release/rfgen-cli}
GGUF=${RFGEN_SMOLLM2_GGUF:-$HOME/.cache/rfgen/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf}

./build.sh setup
cargo build --release -p rfgen-cli
mkdir -p "$RUNS"
[ -d "$RUNS/emoji" ] || $CLI data emoji --out "$RUNS/emoji"
$CLI train-vae --data "$RUNS/emoji" --out "$RUNS/vae" --steps "$VAE_STEPS" \
    --channels 16,32 --layers-per-block 1 --no-attention --latent-channels 4 --batch 8 \
    --lr 2e-3 --warmup 50 --ema-decay 0.99 --kl-weight 1e-8 --init-logvar -6 --residual-init-scale 0 \
    --ckpt-every 400 --log-every 50 --backend "$BACKEND"
$CLI encode-latents --vae "$RUNS/vae" --data "$RUNS/emoji" --backend "$BACKEND"
$CLI train --config models/emoji-both.json --llm-gguf "$GGUF" --llm-layers 1 \
    --data "$RUNS/emoji" --out "$RUNS/default" --vae "$RUNS/vae" --steps "$GEN_STEPS" \
    --batch 16 --lr 1e-3 --warmup 100 --ema-decay 0.998 --ckpt-every 500 --sample-every 0 --log-every 10 --save-dtype f16 \
    --backend "$BACKEND"
rm -rf models/default
cp -r "$RUNS/default/model" models/default
mkdir -p models/default/vae
cp "$RUNS/vae/config.json" "$RUNS/vae/diffusion_pytorch_model.safetensors" models/default/vae/
cp "$RUNS/default/train_log.jsonl" models/default/train_log.jsonl
cp "$RUNS/vae/train_log.jsonl" models/default/vae/train_log.jsonl
$CLI eval vae --vae models/default/vae --data "$RUNS/emoji" --min-psnr 28
