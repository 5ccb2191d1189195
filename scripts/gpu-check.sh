#!/usr/bin/env bash
# Runs every GPU-side check in one device call and writes logs under $OUT.
#
# Prepare here (the device has no Rust):  scripts/build-gpu-bin.sh
# Then on the device (repository root):   bash scripts/gpu-check.sh [kernels|attention|e2e|train|breakdown|all]
# (carry .gl and gpu-bin/kernels.tar.xz for `kernels`, gpu-bin/e2e.tar.xz for `e2e` and
# `train`: one archive per call keeps the carried tree under 64 MiB; each part fits one
# 10-minute device call).
#
# Checks: HF-fixture parity on Cuda (f32, <= 1e-4, unpadded and padded); save -> transformers
# load round trip (python3 there has torch + transformers); full-size random-init
# ModernBERT-base at 1024 tokens vs transformers on the same GPU; our attention kernel vs
# the reference (f32, f16, bf16), forward and backward; our cuBLASLt matmul vs f64.
# Benchmarks: GEMMs vs torch.matmul; attention forward and forward+backward vs SDPA and
# FlexAttention (`kernels`); `modernbert bench` vs HF transformers (`e2e`).
# Knobs: SKIP_GEMM_BENCH=1 and SKIP_WGPU_BENCH=1 leave those benchmarks out of `e2e`.
set -uo pipefail
OUT=${OUT:-/tmp/gpu-check}
mkdir -p "$OUT"
# The binaries: BIN if the caller unpacked an archive there (to compare two builds in one
# call), else every archive under gpu-bin/ unpacked into /tmp/bin.
if [ -z "${BIN:-}" ]; then
  for a in gpu-bin/*.tar.xz; do tar -C /tmp -xJf "$a"; done
  BIN=/tmp/bin
fi
export MODERNBERT_FIXTURES=$PWD/tests/fixtures MODERNBERT_PYTHON=python3 RUST_BACKTRACE=1
status=0
pack_logs() { # the device returns only a few files: keep the summary and tables, pack the rest
  # (the archive is written outside $OUT first: tar fails on a directory that changes under it)
  (cd "$OUT" && tar -czf /tmp/gpu-check-logs.tar.gz --exclude=summary.txt --exclude='bench_*.md' . \
    && find . -maxdepth 1 -type f ! -name summary.txt ! -name 'bench_*.md' -delete \
    && mv /tmp/gpu-check-logs.tar.gz logs.tar.gz)
}
step() { # name, command...
  local name=$1; shift
  echo "=== $name: $*" | tee -a "$OUT/summary.txt"
  if "$@" >"$OUT/$name.log" 2>&1; then echo "--- $name: ok" | tee -a "$OUT/summary.txt"
  else echo "--- $name: FAILED" | tee -a "$OUT/summary.txt"; status=1; fi
  grep -E "max relative error|PASS|FAIL|roundtrip ok|test result|SKIPPED|panicked|head_dim|passed|vs f64|gradients|step [0-9]" "$OUT/$name.log" | head -60 | tee -a "$OUT/summary.txt"
}

# cuBLASLt (our Cuda matmul) is loaded at run time: the CUDA toolkit's or PyTorch's copy.
lt=$( (ls /usr/local/cuda/lib64/libcublasLt.so* 2>/dev/null; python3 -c "import nvidia.cublas, glob, os; print(*glob.glob(os.path.join(list(nvidia.cublas.__path__)[0], 'lib', 'libcublasLt.so*')))" 2>/dev/null) | tr ' ' '\n' | head -1)
[ -n "$lt" ] && export LD_LIBRARY_PATH=$(dirname "$lt")${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
echo "libcublasLt: ${lt:-NOT FOUND}" | tee -a "$OUT/summary.txt"

nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee -a "$OUT/summary.txt"
python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)" | tee -a "$OUT/summary.txt"

PART=${1:-all} # kernels (parity, kernel tests, attention benchmarks), attention (its tests and benchmarks only), e2e (tuning, GEMM and inference benchmarks), train, or all
# Training (issue 6): a Cuda bf16 smoke run with resume and HF export check, then training
# throughput vs HF transformers. With TRAIN_MINUTES set (<= 9), instead the >= 10-minute
# small-model pretraining on WikiText-2: TRAIN_MINUTES of it per call, resumed by each further
# call until it prints "pretrain: DONE" (see scripts/gpu-train.sh).
# Where the training bench's step spends its time (issue 6; about a minute, carry e2e.tar.xz):
# each part timed alone with a device sync around it, table in bench_train_breakdown.md.
if [ "$PART" = breakdown ]; then
  step train_breakdown timeout 300 bash scripts/gpu-train.sh breakdown
  cat "$OUT/bench_train_breakdown.md" | tee -a "$OUT/summary.txt"
  pack_logs
  exit $status
fi
if [ "$PART" = train ]; then
  if [ -n "${TRAIN_MINUTES:-}" ]; then
    step train_pretrain bash scripts/gpu-train.sh pretrain
    grep -E "eval loss|pretrain:|PASS|FAIL|no missing" "$OUT/train_pretrain.log" | tail -30 | tee -a "$OUT/summary.txt"
  else
    step train_smoke timeout 280 bash scripts/gpu-train.sh smoke
    step train_bench timeout 300 bash scripts/gpu-train.sh bench
    cat "$OUT/train_bench.log" | tee -a "$OUT/summary.txt"
  fi
  pack_logs
  exit $status
fi
# The attention kernels alone (issues 3 and 4; carry an archive with attention_kernel,
# attention_backward and attention-bench): their CUDA tests, then the forward and the
# forward+backward benchmarks against PyTorch in the same call.
# The attention benchmarks, forward then forward+backward: ours (MODERNBERT_ATTENTION_PATH as
# set by the caller), then PyTorch. Tables: bench_attention.md, bench_attention_backward.md.
attention_benchmarks() {
  echo "=== attention benchmark (ours, then PyTorch)" | tee -a "$OUT/summary.txt"
  "$BIN/attention-bench" --backend cuda --dtype bf16 2>&1 | tee -a "$OUT/bench_attention.md" | tee -a "$OUT/summary.txt"
  python3 scripts/bench_attention_torch.py 2>&1 | tee -a "$OUT/bench_attention.md" | tee -a "$OUT/summary.txt"
  echo "=== attention forward+backward benchmark (ours, then PyTorch)" | tee -a "$OUT/summary.txt"
  timeout 240 "$BIN/attention-bench" --backend cuda --dtype bf16 --backward --iters 50 2>&1 | tee -a "$OUT/bench_attention_backward.md" | tee -a "$OUT/summary.txt"
  echo "=== the same, deterministic (MODERNBERT_DETERMINISTIC=1)" | tee -a "$OUT/summary.txt"
  MODERNBERT_DETERMINISTIC=1 timeout 240 "$BIN/attention-bench" --backend cuda --dtype bf16 --backward --iters 50 2>&1 | tee -a "$OUT/bench_attention_backward.md" | tee -a "$OUT/summary.txt"
  python3 scripts/bench_attention_torch.py --backward --iters 50 2>&1 | tee -a "$OUT/bench_attention_backward.md" | tee -a "$OUT/summary.txt"
}
if [ "$PART" = attention ]; then
  step cuda_attention_kernel "$BIN/attention_kernel" --nocapture --test-threads 1 cuda
  # The test's grids are small, so the band forward takes one query block per cube there;
  # its walk over consecutive blocks is tested with the count forced.
  MODERNBERT_BAND_BLOCKS=8 step cuda_attention_kernel_walk "$BIN/attention_kernel" --nocapture --test-threads 1 cuda
  step cuda_attention_backward "$BIN/attention_backward" --nocapture --test-threads 1 cuda
  MODERNBERT_DETERMINISTIC=1 step cuda_attention_backward_deterministic "$BIN/attention_backward" --nocapture --test-threads 1 cuda
  attention_benchmarks
  pack_logs
  exit $status
fi
if [ "$PART" != e2e ]; then
step cuda_fixture_parity "$BIN/parity" tests/fixtures/*/ --backend cuda --tolerance 1e-4
step hf_roundtrip "$BIN/hf_roundtrip" --nocapture --test-threads 1
step make_base_reference python3 scripts/make_reference.py /tmp/base-1024 --preset base --lengths 1024,517
step cuda_base_1024_parity "$BIN/parity" /tmp/base-1024 --backend cuda --tolerance 1e-4
step cuda_gemm "$BIN/gemm" --nocapture --test-threads 1 cuda
step cuda_geglu "$BIN/geglu" --nocapture --test-threads 1 cuda
step cuda_layer_norm "$BIN/layer_norm" --nocapture --test-threads 1 cuda
step cuda_rope "$BIN/rope" --nocapture --test-threads 1 cuda
step cuda_select_rows "$BIN/select_rows" --nocapture --test-threads 1 cuda
step cuda_cross_entropy "$BIN/cross_entropy" --nocapture --test-threads 1 cuda
step cuda_stable_adamw "$BIN/stable_adamw" --nocapture --test-threads 1 cuda
step cuda_attention_kernel "$BIN/attention_kernel" --nocapture --test-threads 1 cuda
MODERNBERT_BAND_BLOCKS=8 step cuda_attention_kernel_walk "$BIN/attention_kernel" --nocapture --test-threads 1 cuda
MODERNBERT_ATTENTION_PATH=plain step cuda_attention_kernel_plain "$BIN/attention_kernel" --nocapture --test-threads 1 cuda
step cuda_attention_backward "$BIN/attention_backward" --nocapture --test-threads 1 cuda
MODERNBERT_DETERMINISTIC=1 step cuda_attention_backward_deterministic "$BIN/attention_backward" --nocapture --test-threads 1 cuda
MODERNBERT_ATTENTION_PATH=plain step cuda_attention_backward_plain "$BIN/attention_backward" --nocapture --test-threads 1 cuda
# Our ops on Burn's fusion backend over Cuda (custom ops of the fusion stream).
step cuda_fusion "$BIN/fusion" --nocapture --test-threads 1 cuda
# Wgpu on the H200's Vulkan driver (the loader travels in .gl/, see the device README).
if [ -d .gl ]; then
  for f in .gl/*.deb; do dpkg -x "$f" /; done; ldconfig
  icd=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json; [ -f $icd ] && export VK_DRIVER_FILES=$icd
  MODERNBERT_MAX_LEN=600 step vulkan_attention_kernel "$BIN/attention_kernel" --nocapture --test-threads 1 wgpu
fi
attention_benchmarks
echo "=== the plain attention kernels" | tee -a "$OUT/summary.txt"
MODERNBERT_ATTENTION_PATH=plain "$BIN/attention-bench" --backend cuda --dtype bf16 2>&1 | tee -a "$OUT/bench_attention.md" | tee -a "$OUT/summary.txt"
MODERNBERT_ATTENTION_PATH=plain timeout 240 "$BIN/attention-bench" --backend cuda --dtype bf16 --backward --iters 5 2>&1 | tee -a "$OUT/bench_attention_backward.md" | tee -a "$OUT/summary.txt"
fi
if [ "$PART" != kernels ]; then
if [ -d .gl ] && [ -z "${VK_DRIVER_FILES:-}" ]; then
  for f in .gl/*.deb; do dpkg -x "$f" /; done; ldconfig
  icd=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json; [ -f $icd ] && export VK_DRIVER_FILES=$icd
fi
# The GEMM benchmark again with this build (our crates at opt-level 2). With
# CMMA_PLANES_TUNING=1 first the tensor-core attention forward with 8 planes per cube.
if [ -n "${CMMA_PLANES_TUNING:-}" ]; then
MODERNBERT_CMMA_PLANES=8 step cuda_attention_kernel_8planes "$BIN/attention_kernel" --nocapture --test-threads 1 cuda
echo "=== attention forward, 8 planes per cube" | tee -a "$OUT/summary.txt"
MODERNBERT_CMMA_PLANES=8 "$BIN/attention-bench" --backend cuda --dtype bf16 2>&1 | tee "$OUT/bench_attention_8planes.md" | tee -a "$OUT/summary.txt"
fi
if [ -z "${SKIP_GEMM_BENCH:-}" ]; then
echo "=== GEMM benchmark (ours and Burn's, then torch.matmul)" | tee -a "$OUT/summary.txt"
"$BIN/gemm-bench" --backend cuda --seconds 0.2 --json "$OUT/gemm.jsonl" > "$OUT/bench_gemm_ours.md" 2>&1
python3 scripts/bench_gemm_torch.py --ours "$OUT/gemm.jsonl" 2>&1 | tee "$OUT/bench_gemm.md" | tee -a "$OUT/summary.txt"
fi
# End-to-end encoder throughput (issue 7): `modernbert bench` (Cuda bf16, random-init base and
# large) and HF transformers (sdpa, bf16) on the same documents, then the ratio; then Wgpu on
# the H200's Vulkan (f16, base). Tables: $OUT/bench_infer.md.
echo "=== inference benchmark (modernbert bench, then HF transformers)" | tee -a "$OUT/summary.txt"
BENCH_DOCS="--docs 1024 --long-docs 64 --max-batch-tokens 32768"
"$BIN/modernbert" bench $BENCH_DOCS --dump-lengths "$OUT/bench_lengths.json"
step bench_infer_cuda timeout 240 "$BIN/modernbert" bench --backend cuda --dtype bf16 $BENCH_DOCS --json "$OUT/bench_infer_cuda.json"
cat "$OUT/bench_infer_cuda.log" | tee "$OUT/bench_infer.md" | tee -a "$OUT/summary.txt"
timeout 180 python3 scripts/bench_infer_torch.py --lengths "$OUT/bench_lengths.json" --ours "$OUT/bench_infer_cuda.json" 2>&1 | tee -a "$OUT/bench_infer.md" | tee -a "$OUT/summary.txt"
if [ -n "${VK_DRIVER_FILES:-}" ] && [ -z "${SKIP_WGPU_BENCH:-}" ]; then
  step bench_infer_wgpu timeout 120 "$BIN/modernbert" bench --backend wgpu --dtype f16 --models base --docs 256 --long-docs 8 --max-batch-tokens 32768
  cat "$OUT/bench_infer_wgpu.log" | tee -a "$OUT/bench_infer.md" | tee -a "$OUT/summary.txt"
fi
fi
pack_logs
exit $status
