#!/usr/bin/env bash
# Builds the x86-64 binaries the GPU check needs, with the `cuda` feature, strips them and
# packs them into gpu-bin/bins.tar.xz (ignored by git) for the device tool to carry
# (the carried tree is limited to 64 MiB).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build -p modernbert-tests --features cuda --bin parity
cargo build -p modernbert-infer --features cuda --bin attention-bench --bin gemm-bench
test_binary() { # the executable of an integration test of modernbert-tests
  cargo test -p modernbert-tests --features cuda --test "$1" --no-run 2>&1 \
    | sed -n "s/.*Executable tests\/$1.rs (\(.*\))/\1/p"
}
rm -rf gpu-bin && mkdir -p gpu-bin/bin
cp target/debug/parity target/debug/attention-bench target/debug/gemm-bench gpu-bin/bin/
for t in hf_roundtrip attention_kernel attention_backward gemm; do cp "$(test_binary $t)" "gpu-bin/bin/$t"; done
# The `modernbert` CLI (bench, pipelines) with our crates at opt-level 2 as well: Burn's generic
# host code is compiled into them. Built last, since this changes their build settings.
CARGO_PROFILE_DEV_OPT_LEVEL=2 cargo build -p modernbert-infer --features cuda --bin modernbert
cp target/debug/modernbert gpu-bin/bin/
# The trainer likewise, plus WikiText-2 (from ../shared) for scripts/gpu-train.sh.
CARGO_PROFILE_DEV_OPT_LEVEL=2 cargo build -p modernbert-train --features cuda --bin modernbert-train
cp target/debug/modernbert-train gpu-bin/bin/
strip gpu-bin/bin/*
mkdir -p gpu-bin/bin/data/wikitext-2 && cp ../shared/data/wikitext-2/{test,valid}.txt gpu-bin/bin/data/wikitext-2/
tar -C gpu-bin -cJf gpu-bin/bins.tar.xz bin && rm -rf gpu-bin/bin
ls -la gpu-bin
