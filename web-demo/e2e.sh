#!/usr/bin/env bash
# End-to-end test of the browser demo (run ./build.sh first): the native NdArray result of
# fill-mask on a committed fixture, then the page in Debian's headless Chromium on WebGPU
# (SwiftShader) and on the wasm CPU fallback, scores compared to 1e-3; writes screenshot.png.
# Then checks that a checkpoint of another task is refused with a clear message.
# Needs: apt-get install chromium; npm ci (playwright-core, no browser download).
set -euo pipefail
cd "$(dirname "$0")"

model=tests/fixtures/mlm_tied_present_f16
# Over 17 tokens, so the fixture's sliding-window layers (local_attention 16) cut real keys.
text="The European lobster is a species of [MASK] lobster from the eastern Atlantic Ocean, the Mediterranean Sea and parts of the Black Sea."
native=$(mktemp)
trap 'rm -f "$native"' EXIT
(cd .. && cargo run -q -p modernbert-infer -- fill-mask --backend ndarray --json --top-k 5 \
  --model "$model" "$text") > "$native"
[[ -d node_modules/playwright-core ]] || npm ci --no-audit --no-fund
node tests/e2e.mjs --model "../$model" --native "$native" --text "$text" --screenshot screenshot.png "$@"
# A sequence-classification checkpoint is no masked-LM one: the page names the keys.
node tests/e2e.mjs --model ../tests/fixtures/seqcls_cls_v5 --text "$text" --backends webgpu,cpu \
  --expect-error "missing keys .*decoder\.bias"
