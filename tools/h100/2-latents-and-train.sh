#!/usr/bin/env bash
# Device call B: data + GGUF on the device, latents on CUDA, then the generator's first stretch.
set -x
S=/root/stash; CLI=$S/rfgen-cli
test -x $CLI && test -f $S/gguf.part1 || { echo "STASH LOST"; exit 3; }
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}
cat $S/gguf.part1 .stageb/gguf.part2 > $S/SmolLM2-135M-Instruct.Q4_1.gguf && sha256sum $S/SmolLM2-135M-Instruct.Q4_1.gguf
mkdir -p $S/emoji && xz -dc .stageb/images.xz > $S/emoji/images.safetensors && cp .stageb/captions.json $S/emoji/
rm -rf $S/vae && cp -r .stageb/vae $S/vae
time $CLI encode-latents --vae $S/vae --data $S/emoji --backend cuda --batch 256 2>&1 | tail -5
ls -la $S/emoji
cat > $S/gen.sh <<'EOS'
$CLI train --config models/emoji-both.json --llm-gguf $S/SmolLM2-135M-Instruct.Q4_1.gguf --llm-layers 1 \
  --data $S/emoji --out $S/default --vae $S/vae --steps $STEPS --minutes $MIN \
  --batch 128 --lr 1e-3 --warmup 200 --ema-decay 0.999 --ckpt-every 1000 --sample-every 0 --log-every 50 \
  --save-dtype f16 --backend cuda $RESUME
EOS
export CLI S STEPS=200000 MIN=${MIN:-6.8} RESUME=
time bash $S/gen.sh 2>&1 | tr '\r' '\n' | awk 'NR%4==1 || /error|Error|panic|trained|budget/' | tail -60
nvidia-smi --query-gpu=memory.used --format=csv
cp $S/default/model/config.json $S/default/model/model.safetensors $S/default/train_log.jsonl $OUT/ 2>/dev/null
ls $S/default $S/default/samples 2>/dev/null; cp $S/default/samples/*.png $OUT/ 2>/dev/null
echo B-DONE
