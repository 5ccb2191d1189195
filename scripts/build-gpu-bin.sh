#!/usr/bin/env bash
# Builds the x86-64 binaries the GPU check needs, with the `cuda` feature, strips them and
# packs them into gpu-bin/bins.tar.xz (ignored by git) for the device tool to carry
# (the carried tree is limited to 64 MiB).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build -p modernbert-tests --features cuda --bin parity
roundtrip=$(cargo test -p modernbert-tests --features cuda --test hf_roundtrip --no-run 2>&1 \
  | sed -n 's/.*Executable tests\/hf_roundtrip.rs (\(.*\))/\1/p')
rm -rf gpu-bin && mkdir -p gpu-bin/bin
cp target/debug/parity gpu-bin/bin/parity
cp "$roundtrip" gpu-bin/bin/hf_roundtrip
strip gpu-bin/bin/*
tar -C gpu-bin -cJf gpu-bin/bins.tar.xz bin && rm -rf gpu-bin/bin
ls -la gpu-bin
