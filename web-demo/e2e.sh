#!/usr/bin/env bash
# The browser test alone: tests/tests/browser_demo.rs (part of `cargo test --workspace`) builds
# the demo, runs fill-mask of a committed fixture natively on NdArray and in Debian's headless
# Chromium on WebGPU (SwiftShader) and on the wasm CPU fallback, compares the scores to 1e-3,
# checks that a checkpoint of another task is refused, and writes web-demo/screenshot.png.
# Missing tools: ./tools.sh names them, ./tools.sh --install installs them.
# --workspace: the same features as the full test run, so nothing is rebuilt for this alone.
set -euo pipefail
cd "$(dirname "$0")/.."
exec cargo test --workspace --test browser_demo -- --nocapture
