#!/usr/bin/env bash
# Device call (session 8): continue models/default on CUDA at a larger batch. Everything the run
# needs travels in .stage8/ (58 MB: the stripped CUDA CLI, SmolLM2's GGUF cut to its first block
# by trim_gguf.py, the images, captions, VAE and the model to start from). A warm machine resumes
# /root/stash/run's checkpoint (exact: weights, AdamW moments, EMA, step); a fresh one starts
# from the carried model with `--init-from`. STEPS (default: until MIN minutes) and EXTRA (more
# train arguments, e.g. a cooldown: see README) and REPEAT (a `--repeat TEXT=K` rule, which has a
# space) are optional.
set -x
S=/root/stash; G=.stage8; mkdir -p $S
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}
CLI=$S/rfgen-cli GGUF=$S/SmolLM2-135M-Instruct.Q4_1.gguf
[ -x $CLI ] || { xz -dc $G/cli.xz > $CLI; chmod +x $CLI; }
[ -f $GGUF ] || xz -T0 -dc $G/gguf.xz > $GGUF
if [ ! -f $S/emoji/latents.safetensors ]; then
    mkdir -p $S/emoji
    xz -T0 -dc $G/images.xz > $S/emoji/images.safetensors
    xz -dc $G/captions.xz > $S/emoji/captions.json
    time $CLI encode-latents --vae $G/vae --data $S/emoji --backend cuda --batch 256 2>&1 | tail -3
fi
if [ -f $S/run/checkpoint/state.json ]; then START=--resume; else rm -rf $S/run; START="--init-from $G/init"; fi
time $CLI train --config models/emoji-both.json --llm-gguf $GGUF --llm-layers 1 --data $S/emoji --out $S/run \
    --vae $G/vae --steps ${STEPS:-1000000} --minutes $MIN --batch $BATCH --lr $LR --warmup 300 --ema-decay 0.999 \
    --ckpt-every 1000 --sample-every 0 --log-every 50 --save-dtype f16 --backend cuda ${EXTRA:-} ${REPEAT:+--repeat "$REPEAT"} $START 2>&1 \
    | tr '\r' '\n' | tee $OUT/log.txt | awk 'NR%10==1 || /rror|panic|trained|budget|resum|initial/' | tail -30
nvidia-smi --query-gpu=memory.used,utilization.gpu --format=csv
cp $S/run/model/config.json $S/run/model/model.safetensors $S/run/train_log.jsonl $OUT/
