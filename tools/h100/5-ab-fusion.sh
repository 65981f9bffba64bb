#!/usr/bin/env bash
# Device call (prepared in session 9, not yet run): time the trainer's CUDA build with and without
# burn's kernel fusion (and matmul autotuning), side by side in one call, before spending a
# session's minutes on training. `.stage8/` as for 4-continue.sh (cli.xz: `--features cuda`, the
# build that trained the shipped model) plus `cli-fused.xz` and optionally `cli-autotune.xz`,
# built here with
#   CUDARC_CUDA_VERSION=13000 cargo build --release -p rfgen-cli --no-default-features \
#       --features cuda,fusion[,autotune] --target-dir /work/target-cuda-fused
# (stripped, xz). All of .stage8/ with both builds is 64.6 MB, over the device tool's 64 MiB with
# the repository: carry only cli-fused.xz (move cli.xz aside) and compare with the plain build's
# 2.8-3.1 steps/s at batch 512 recorded in models/default/train_log.b512.jsonl (same H100 kind).
# Each build trains STEPS steps of batch BATCH from the carried model; the log's elapsed time
# between the first logged step and the last gives steady-state steps/s (the first steps include
# CUDA compilation and, with autotune, the tuning runs).
set -x
S=/root/stash; G=.stage8; mkdir -p $S
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}
STEPS=${STEPS:-300} BATCH=${BATCH:-512}
GGUF=$S/SmolLM2-135M-Instruct.Q4_1.gguf
[ -f $GGUF ] || xz -T0 -dc $G/gguf.xz > $GGUF
VARIANTS=$(for v in cli cli-fused cli-autotune; do [ -f $G/$v.xz ] && echo $v; done)
for v in $VARIANTS; do [ -x $S/$v ] || { xz -dc $G/$v.xz > $S/$v; chmod +x $S/$v; }; done
if [ ! -f $S/emoji/latents.safetensors ]; then
    mkdir -p $S/emoji
    xz -T0 -dc $G/images.xz > $S/emoji/images.safetensors
    xz -dc $G/captions.xz > $S/emoji/captions.json
    $S/${VARIANTS%% *} encode-latents --vae $G/vae --data $S/emoji --backend cuda --batch 256 2>&1 | tail -3
fi
for v in $VARIANTS; do
    rm -rf $S/ab-$v
    $S/$v train --config models/emoji-both.json --llm-gguf $GGUF --llm-layers 1 --data $S/emoji --out $S/ab-$v \
        --vae $G/vae --init-from $G/init --steps $STEPS --batch $BATCH --lr 1e-3 --warmup 300 --ema-decay 0.999 \
        --ckpt-every 0 --sample-every 0 --log-every 50 --backend cuda 2>&1 | tr '\r' '\n' | tail -3
    cp $S/ab-$v/train_log.jsonl $OUT/ab-$v.jsonl
    python3 - $S/ab-$v/train_log.jsonl <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
a, b = rows[0], rows[-1]
print(sys.argv[1], "steady steps/s", (b["step"] - a["step"]) / (b["elapsed_s"] - a["elapsed_s"]),
      "first log at", a["elapsed_s"], "s; loss", a["loss"], "->", b["loss"])
PY
done
