#!/usr/bin/env bash
# Builds the x86-64 binaries the GPU check needs, with the `cuda` feature, strips them and
# packs them into gpu-bin/ (ignored by git) for the device tool to carry (the carried tree
# is limited to 64 MiB, so there is one archive per part of scripts/gpu-check.sh: carry
# gpu-bin/kernels.tar.xz for `kernels`, gpu-bin/e2e.tar.xz for `e2e` and `train`).
#
# Our crates are built at opt-level 2 like the dependencies: Burn's and CubeCL's generic
# host code is compiled into them, and benchmarks time it.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_PROFILE_DEV_OPT_LEVEL=2
rm -rf gpu-bin && mkdir -p gpu-bin/stage
# Each binary is copied right after its build: another cargo command (other features) may
# overwrite target/debug/<name> before the end of this script.
build() { # package, binaries...
  local package=$1; shift
  cargo build -p "$package" --features cuda "${@/#/--bin=}"
  for b in "$@"; do cp "target/debug/$b" gpu-bin/stage/; done
}
build modernbert-tests parity
build modernbert-infer attention-bench gemm-bench modernbert
build modernbert-train modernbert-train
test_binary() { # the executable of an integration test of modernbert-tests
  cargo test -p modernbert-tests --features cuda --test "$1" --no-run 2>&1 \
    | sed -n "s/.*Executable tests\/$1.rs (\(.*\))/\1/p"
}
pack() { # archive name, files to put in its bin/
  local name=$1; shift
  rm -rf gpu-bin/bin && mkdir -p gpu-bin/bin
  cp "$@" gpu-bin/bin/
  strip gpu-bin/bin/*
  if [ "$name" = e2e ]; then # WikiText-2 (from ../shared) for scripts/gpu-train.sh
    mkdir -p gpu-bin/bin/data/wikitext-2 && cp ../shared/data/wikitext-2/{test,valid}.txt gpu-bin/bin/data/wikitext-2/
  fi
  tar -C gpu-bin -cJf "gpu-bin/$name.tar.xz" bin && rm -rf gpu-bin/bin
}
for t in hf_roundtrip attention_kernel attention_backward fusion gemm geglu layer_norm rope select_rows cross_entropy stable_adamw; do cp "$(test_binary $t)" "gpu-bin/stage/$t"; done
S=gpu-bin/stage
bins=($S/attention-bench $S/gemm-bench)
pack kernels $S/parity "${bins[@]}" $S/hf_roundtrip $S/attention_kernel $S/attention_backward $S/fusion $S/gemm $S/geglu $S/layer_norm $S/rope $S/select_rows $S/cross_entropy $S/stable_adamw
pack e2e $S/modernbert $S/modernbert-train $S/parity "${bins[@]}" $S/attention_kernel
rm -rf gpu-bin/stage
ls -la gpu-bin
