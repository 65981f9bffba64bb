#!/usr/bin/env bash
# rfgen build driver.
#   ./build.sh          set up, build the release CLI and run the main job (a sample image)
#   ./build.sh test     set up and run every test (what CI runs)
#   ./build.sh setup    only install what this machine lacks
set -euo pipefail
cd "$(dirname "$0")"
ROOT=$(pwd)
FIXTURES=${RFGEN_FIXTURES:-$ROOT/../shared/fixtures}
export RFGEN_FIXTURES=$FIXTURES
export XDG_RUNTIME_DIR=${XDG_RUNTIME_DIR:-$(mktemp -d)}
export CARGO_TERM_COLOR=never

log() { printf '[build.sh] %s\n' "$*" >&2; }

need_apt() {
  local missing=()
  for p in "$@"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
  if [ ${#missing[@]} -gt 0 ]; then
    log "installing ${missing[*]}"
    local sudo=""; [ "$(id -u)" = 0 ] || sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
}

setup() {
  command -v cargo >/dev/null || { log "cargo is required (rustup.rs)"; exit 1; }
  # Vulkan loader + Mesa lavapipe: wgpu runs on the CPU where there is no GPU.
  need_apt libvulkan1 mesa-vulkan-drivers
}

case "${1:-run}" in
  setup)
    setup
    ;;
  test)
    setup
    log "fixtures: $RFGEN_FIXTURES"
    # Unit tests, data-driven parity (ndarray + wgpu), CLI end to end and bad inputs.
    cargo test --workspace --no-fail-fast -- --test-threads=2
    # The cuda backend must keep compiling offline (no GPU needed to check it).
    cargo check -p rfgen-cli --features cuda
    ;;
  wasm)
    # The core and the backends compile for the browser (Debian rustc-web + build-std).
    need_apt rustc-web cargo-web rust-web-src lld
    RUSTC=/usr/bin/rustc RUSTDOC=/usr/bin/rustdoc RUSTC_BOOTSTRAP=1 CARGO_TARGET_DIR=${WASM_TARGET_DIR:-$ROOT/target/wasm} \
      /usr/bin/cargo build --release --target wasm32-unknown-unknown -Zbuild-std=std,panic_abort \
      -p rfgen-backends --no-default-features --features ndarray,wgpu
    ;;
  run)
    setup
    cargo build --release -p rfgen-cli
    mkdir -p out
    # Until rfgen ships a trained default model, the main job samples the reference fixture model.
    if [ -d "$FIXTURES/janusflow_tiny" ] && [ -d "$FIXTURES/vae_tiny" ]; then
      ./target/release/rfgen-cli sample --model "$FIXTURES/janusflow_tiny" --vae "$FIXTURES/vae_tiny" \
        --token-ids 1,5,9,17,33,65,129,250,4 --steps 30 --cfg 2 --seed 7 --size 32 \
        -o out/sample.png --dump out/sample.safetensors
      log "wrote out/sample.png"
    else
      log "no fixtures at $FIXTURES; built target/release/rfgen-cli"
    fi
    ;;
  *)
    echo "usage: $0 [run|test|setup|wasm]" >&2
    exit 2
    ;;
esac
