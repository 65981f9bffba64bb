#!/usr/bin/env bash
# Reproduces models/default (the emoji model `rfgen-cli sample` uses when no --model is given):
# data → VAE → latents → generator (SmolLM2-135M's first 4 layers, frozen; "both" arm) → assembly.
# CPU: ./tools/train_default.sh; on a GPU machine: BACKEND=cuda ./tools/train_default.sh (build the
# CLI with --features cuda). Budgets are wall-clock minutes on the 2-core CPU this was trained on.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-runs}
BACKEND=${BACKEND:-ndarray}
# The shipped weights: the VAE ran 12 minutes (it stopped at step 174; its cosine schedule spans
# --steps 100000, so it is reproduced by time, not exactly) and the generator 460 steps (45 minutes
# on a shared 2-core CPU; warmup-then-constant LR and per-step randomness: --steps 460 is exact).
VAE_MINUTES=${VAE_MINUTES:-12}
GEN_STEPS=${GEN_STEPS:-460}
CLI=${CLI:-target/release/rfgen-cli}
GGUF=${RFGEN_SMOLLM2_GGUF:-$HOME/.cache/rfgen/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf}

./build.sh setup
cargo build --release -p rfgen-cli
mkdir -p "$RUNS"
[ -d "$RUNS/emoji" ] || $CLI data emoji --out "$RUNS/emoji"
$CLI train-vae --data "$RUNS/emoji" --out "$RUNS/vae" --steps 100000 --minutes "$VAE_MINUTES" \
    --channels 16,32,64 --layers-per-block 1 --no-attention --latent-channels 8 --batch 8 \
    --lr 1e-3 --warmup 50 --ema-decay 0.99 --ckpt-every 200 --log-every 20 --backend "$BACKEND"
$CLI encode-latents --vae "$RUNS/vae" --data "$RUNS/emoji" --backend "$BACKEND"
$CLI train --config models/emoji-both.json --llm-gguf "$GGUF" --llm-layers 4 \
    --data "$RUNS/emoji" --out "$RUNS/default" --vae "$RUNS/vae" --steps "$GEN_STEPS" \
    --batch 16 --lr 5e-4 --warmup 200 --ema-decay 0.995 --ckpt-every 500 --sample-every 0 --log-every 10 --save-dtype f16 \
    --backend "$BACKEND"
rm -rf models/default
cp -r "$RUNS/default/model" models/default
mkdir -p models/default/vae
cp "$RUNS/vae/config.json" "$RUNS/vae/diffusion_pytorch_model.safetensors" models/default/vae/
cp "$RUNS/default/train_log.jsonl" models/default/train_log.jsonl
