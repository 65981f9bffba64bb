#!/usr/bin/env bash
# Stages what one device call needs to continue models/default on an H100 into .stage8/ (ignored;
# carried with `carry: [".stage8"]`, 58 MB, under the tool's 64 MiB): the stripped CUDA CLI,
# SmolLM2's GGUF cut to the block `--llm-layers 1` reads (trim_gguf.py), the images and captions,
# the VAE and the model to start from. 5.4 minutes on 2 cores here (4.7 of them the CUDA build).
#   FEATURES=cuda,fusion tools/h100/stage.sh     # another build (see 5-ab-fusion.sh)
set -euo pipefail
cd "$(dirname "$0")/../.."
G=.stage8 FEATURES=${FEATURES:-cuda} INIT=${INIT:-models/default}
GGUF=${RFGEN_SMOLLM2_GGUF:-$HOME/.cache/rfgen/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf}
DATA=${RFGEN_DATA:-$HOME/.cache/rfgen/emoji}
./build.sh setup
mkdir -p $G
CUDARC_CUDA_VERSION=13000 cargo build --release -p rfgen-cli --no-default-features --features "$FEATURES" \
    --target-dir target/cuda
strip -o $G/cli target/cuda/release/rfgen-cli && xz -9 -T0 -f $G/cli
python3 -c 'import gguf' 2>/dev/null || python3 -m pip install --quiet gguf
python3 tools/h100/trim_gguf.py "$GGUF" $G/gguf 1 && xz -T0 -f $G/gguf
[ -f "$DATA/images.safetensors" ] || { cargo build --release -p rfgen-cli && target/release/rfgen-cli data emoji --out "$DATA"; }
xz -T0 -c "$DATA/images.safetensors" > $G/images.xz
xz -c "$DATA/captions.json" > $G/captions.xz
rm -rf $G/vae $G/init && cp -r models/default/vae $G/vae
mkdir -p $G/init && cp "$INIT/config.json" "$INIT/model.safetensors" $G/init/
du -sh $G
