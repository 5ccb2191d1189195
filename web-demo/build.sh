#!/usr/bin/env bash
# Builds the browser demo into www/ (serve that directory with any static server):
#   1. the crate for wasm32-unknown-unknown (release; target dir: the root's target/),
#   2. wasm-bindgen's JS glue into www/pkg/, with the CLI of exactly the version in Cargo.lock,
#   3. with WASM_OPT=1 only, binaryen's wasm-opt -O3 (needs a binaryen newer than Debian
#      12's 108, whose output Chromium rejects: `npm i -g binaryen`).
# Needs the wasm32 target and that wasm-bindgen CLI: ./tools.sh --build names what is missing.
set -euo pipefail
cd "$(dirname "$0")"

./tools.sh --build

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
