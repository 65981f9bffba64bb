#!/usr/bin/env bash
# Reproduces models/default (the emoji model `rfgen-cli sample` uses when no --model is given):
# data → VAE → latents → generator (SmolLM2-135M's first layer, frozen; "both" arm) → assembly.
# The shipped weights: BACKEND=cuda ./tools/train_default.sh on one H100 (the CLI is then built
# with the ndarray and cuda backends): 10900 steps of batch 128, then 4395 steps of batch 512
# started from that model (--init-from; fresh AdamW and EMA), then three flag rounds of batch 128
# by base (250 steps with the flags visited 5x; 250 more drawing the timesteps from
# logit-normal(-1, 1); 150 more with the flags 3x, also at -1; all ran on the CPU for the shipped
# model). CPU only: ./tools/train_default.sh (about 84 minutes on 2 cores; a weaker generator: 4200
# steps of batch 16 instead of 10900 of batch 128).
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-runs}
BACKEND=${BACKEND:-ndarray}
# Both stages are fixed step counts, so the run is reproducible exactly: the VAE 1200 steps of
# batch 8 (19.4 minutes on the 2-core CPU this was trained on), the generator 4200 steps of batch 16
# (64 minutes there); with data, latents and assembly the whole recipe takes about 84 minutes. On
# cuda the generator runs 10900 steps of batch 128 (7.6 steps/s, 24 minutes on one H100), then
# continues 4395 steps of batch 512 (2.9 steps/s, 26 minutes).
# The VAE always trains on the CPU backend (ndarray is deterministic, so it is the shipped VAE
# exactly); the generator on $BACKEND.
VAE_STEPS=${VAE_STEPS:-1200}
if [ "$BACKEND" = cuda ]; then
    GEN_STEPS=${GEN_STEPS:-10900} GEN_BATCH=${GEN_BATCH:-128} GEN_WARMUP=${GEN_WARMUP:-200} GEN_EMA=${GEN_EMA:-0.999}
    CONT_STEPS=${CONT_STEPS:-4395} CONT_BATCH=${CONT_BATCH:-512}
    FLAG_ROUNDS=${FLAG_ROUNDS-250:5:7 250:5:9:-1 150:3:11:-1}
else
    GEN_STEPS=${GEN_STEPS:-4200} GEN_BATCH=${GEN_BATCH:-16} GEN_WARMUP=${GEN_WARMUP:-100} GEN_EMA=${GEN_EMA:-0.998}
    CONT_STEPS=${CONT_STEPS:-0} CONT_BATCH=${CONT_BATCH:-64}
    FLAG_ROUNDS=${FLAG_ROUNDS-}
fi
CLI=${CLI:-target/release/rfgen-cli}
GGUF=${RFGEN_SMOLLM2_GGUF:-$HOME/.cache/rfgen/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf}

./build.sh setup
if [ "$BACKEND" = cuda ]; then
    cargo build --release -p rfgen-cli --no-default-features --features ndarray,cuda
else
    cargo build --release -p rfgen-cli
fi
mkdir -p "$RUNS"
[ -d "$RUNS/emoji" ] || $CLI data emoji --out "$RUNS/emoji"
$CLI train-vae --data "$RUNS/emoji" --out "$RUNS/vae" --steps "$VAE_STEPS" \
    --channels 16,32 --layers-per-block 1 --no-attention --latent-channels 4 --batch 8 \
    --lr 2e-3 --warmup 50 --ema-decay 0.99 --kl-weight 1e-8 --init-logvar -6 --residual-init-scale 0 \
    --ckpt-every 400 --log-every 50 --backend ndarray
$CLI encode-latents --vae "$RUNS/vae" --data "$RUNS/emoji" --backend "$BACKEND"
$CLI train --config models/emoji-both.json --llm-gguf "$GGUF" --llm-layers 1 \
    --data "$RUNS/emoji" --out "$RUNS/default" --vae "$RUNS/vae" --steps "$GEN_STEPS" \
    --batch "$GEN_BATCH" --lr 1e-3 --warmup "$GEN_WARMUP" --ema-decay "$GEN_EMA" --ckpt-every 500 --sample-every 0 --log-every 10 --save-dtype f16 \
    --backend "$BACKEND"
FINAL=default
if [ "$CONT_STEPS" -gt 0 ]; then
    $CLI train --config models/emoji-both.json --llm-gguf "$GGUF" --llm-layers 1 \
        --data "$RUNS/emoji" --out "$RUNS/default-cont" --vae "$RUNS/vae" --init-from "$RUNS/default/model" \
        --steps "$CONT_STEPS" --batch "$CONT_BATCH" --lr 1e-3 --warmup 300 --ema-decay 0.999 --ckpt-every 1000 \
        --sample-every 0 --log-every 50 --save-dtype f16 --backend "$BACKEND"
    FINAL=default-cont
fi
# Flag rounds ("STEPS:K:SEED[:T_MEAN] ..."): continuations of batch 128 by base that visit the flags
# K times per epoch and draw timesteps from sigmoid(N(T_MEAN, 1)) (T_MEAN default 0), each ending in
# a linear cooldown (docs/eval/flag-repeat/, docs/eval/t-shift/).
ROUND=0
for r in $FLAG_ROUNDS; do
    IFS=: read -r steps k seed tmean <<< "$r"
    ROUND=$((ROUND + 1))
    $CLI train --config models/emoji-both.json --llm-gguf "$GGUF" --llm-layers 1 \
        --data "$RUNS/emoji" --out "$RUNS/default-flags$ROUND" --init-from "$RUNS/$FINAL/model" \
        --steps "$steps" --batch 128 --lr 4e-4 --warmup 10 --lr-schedule linear --ema-decay 0.99 --seed "$seed" \
        --sample-by base --repeat "flag of=$k" --t-mean "${tmean:-0}" --ckpt-every 50 --sample-every 0 --log-every 1 --save-dtype f16 \
        --backend "$BACKEND"
    FINAL=default-flags$ROUND
done
rm -rf models/default
cp -r "$RUNS/$FINAL/model" models/default
mkdir -p models/default/vae
cp "$RUNS/vae/config.json" "$RUNS/vae/diffusion_pytorch_model.safetensors" models/default/vae/
cp "$RUNS/default/train_log.jsonl" models/default/train_log.jsonl
if [ "$CONT_STEPS" -gt 0 ]; then cp "$RUNS/default-cont/train_log.jsonl" models/default/train_log.b512.jsonl; fi
for i in $(seq 1 "$ROUND"); do cp "$RUNS/default-flags$i/train_log.jsonl" "models/default/train_log.flags$i.jsonl"; done
cp "$RUNS/vae/train_log.jsonl" models/default/vae/train_log.jsonl
# Neighbour guidance (docs/eval/neighbour-metric/, docs/eval/neighbour-start/): one neighbour with
# 0.75 of the guidance, and unseen prompts start from its image at img2img strength 0.7.
python3 - models/default/config.json <<'PY'
import json, sys
path = sys.argv[1]
config = json.load(open(path))
config["generation"].update(neighbours=1, neighbour_share=0.75, neighbour_init=0.7)
json.dump(config, open(path, "w"), indent=2)
PY
# The caption index: the training captions under SmolLM2's first 8 layers, and their images
# encoded by the VAE.
$CLI index-captions --model models/default --data "$RUNS/emoji" --layers 8 --backend "$BACKEND"
$CLI eval vae --vae models/default/vae --data "$RUNS/emoji" --min-psnr 28
