#!/usr/bin/env bash
# Builds the browser demo into www/ (serve that directory with any static server):
#   1. the crate for wasm32-unknown-unknown (release; target dir: the root's target/),
#   2. wasm-bindgen's JS glue into www/pkg/, with the CLI of exactly the version in Cargo.lock,
#   3. with WASM_OPT=1 only, binaryen's wasm-opt -O3 (needs a binaryen newer than Debian
#      12's 108, whose output Chromium rejects: `npm i -g binaryen`).
# Needs: rustup target add wasm32-unknown-unknown; cargo install wasm-bindgen-cli --version <below>.
set -euo pipefail
cd "$(dirname "$0")"

version=$(awk '/^name = "wasm-bindgen"$/ { getline; gsub(/[^0-9.]/, ""); print; exit }' Cargo.lock)
if [[ "$(wasm-bindgen --version 2>/dev/null)" != "wasm-bindgen $version" ]]; then
  echo "build.sh: needs wasm-bindgen-cli $version (have: $(wasm-bindgen --version 2>/dev/null || echo none));" >&2
  echo "  cargo install wasm-bindgen-cli --version $version" >&2
  exit 1
fi

cargo build --release
wasm=../target/wasm32-unknown-unknown/release/modernbert_web_demo.wasm
rm -rf www/pkg
wasm-bindgen --target web --no-typescript --out-dir www/pkg "$wasm"
if [[ "${WASM_OPT:-0}" == 1 ]]; then
  # Only the features Chromium's wasm engine has (not --all-features; see DESIGN.md).
  wasm-opt -O3 --enable-bulk-memory --enable-mutable-globals --enable-nontrapping-float-to-int \
    --enable-sign-ext --enable-reference-types --enable-multivalue \
    www/pkg/modernbert_web_demo_bg.wasm -o www/pkg/modernbert_web_demo_bg.wasm
fi
ls -l www/pkg/*.wasm
