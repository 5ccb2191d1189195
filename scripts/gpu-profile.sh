#!/usr/bin/env bash
# Profiles our attention kernels with Nsight Compute on the device (ncu is in the CUDA
# toolkit there), next to PyTorch's flash kernels, and reports each CubeCL kernel's registers
# and spills (scripts/kernel_resources.py). Writes text reports under $OUT: summary.txt (the
# headline metrics per kernel), and profile.tar.gz (every details page and the SASS with its
# stall samples).
#
# Needs /tmp/bin/attention-bench (scripts/build-gpu-bin.sh packs it). The whole profile takes
# about 400 s of device time (Nsight Compute replays every kernel it profiles ~40 times).
#   bash scripts/gpu-profile.sh
set -uo pipefail
OUT=${OUT:-/tmp/gpu-profile}
L=$OUT/profile && mkdir -p "$L"
export LD_LIBRARY_PATH=/usr/local/cuda/lib64${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
NCU=/usr/local/cuda/bin/ncu
BENCH="/tmp/bin/attention-bench --backend cuda --dtype bf16 --iters 1"
S=$OUT/summary.txt
# The headline metrics of a report, one block per kernel launch.
headline() {
  "$NCU" -i "$1" --page details --print-units base 2>&1 \
    | grep -E "^  [a-z_]+.*\(|Duration|Registers Per Thread|Achieved Occupancy|Theoretical Occupancy|Compute \(SM\) Throughput|Memory Throughput|Issue Slots Busy|No Eligible|Warp Cycles Per Issued|Block Limit|Dynamic Shared|Static Shared|L1/TEX Hit|Executed Ipc Active|Shared Memory" \
    | tee -a "$S"
}
details() { "$NCU" -i "$1" --page details --print-units base >"$1.txt" 2>&1; }

# Forward: 4 shapes x (3 warm-up + 1 timed) launches, in the order of the bench table
# (global 512, global 8192, window 512, window 8192); the timed launch of each.
echo "=== forward (timed launch of each shape)" | tee -a "$S"
CUBECL_DEBUG_LOG=$L/cubecl-forward.log timeout 240 "$NCU" --set full --import-source no \
  --kernel-name "regex:varlen_(mma|band)_kernel" --launch-skip 3 --launch-count 13 -f -o "$L/forward" \
  $BENCH >"$L/forward.log" 2>&1 || echo "ncu forward failed: $(tail -3 "$L/forward.log")" | tee -a "$S"
details "$L/forward.ncu-rep"
headline "$L/forward.ncu-rep"

echo "=== backward dQ and dK/dV kernels" | tee -a "$S"
CUBECL_DEBUG_LOG=$L/cubecl-backward.log timeout 240 "$NCU" --set full --import-source no \
  --kernel-name "regex:d(q|kv)_(mma|band)_kernel" --launch-count 32 -f -o "$L/backward" \
  $BENCH --backward >"$L/backward.log" 2>&1 || echo "ncu backward failed: $(tail -3 "$L/backward.log")" | tee -a "$S"
details "$L/backward.ncu-rep"
headline "$L/backward.ncu-rep"

echo "=== SASS with stall samples: forward, global S=8192" | tee -a "$S"
timeout 120 "$NCU" --section SourceCounters --section WarpStateStats --import-source no \
  --kernel-name regex:varlen_mma_kernel --launch-skip 7 --launch-count 1 -f -o "$L/forward8192" \
  $BENCH >"$L/forward8192.log" 2>&1
"$NCU" -i "$L/forward8192.ncu-rep" --page source --csv --print-source sass >"$L/forward8192_sass.csv" 2>&1
details "$L/forward8192.ncu-rep"

# The window kernels at B=64 S=512 (±64): the first band launches of a run are that shape's.
for k in varlen_band dkv_band dq_band; do
  echo "=== SASS with stall samples: $k, window S=512" | tee -a "$S"
  timeout 120 "$NCU" --section SourceCounters --section WarpStateStats --import-source no \
    --kernel-name regex:$k --launch-skip 2 --launch-count 1 -f -o "$L/$k" \
    $BENCH --backward >"$L/$k.log" 2>&1
  "$NCU" -i "$L/$k.ncu-rep" --page source --csv --print-source sass >"$L/${k}_sass.csv" 2>&1
  details "$L/$k.ncu-rep"
done

echo "=== PyTorch SDPA flash (FlashAttention-2), forward, both global shapes" | tee -a "$S"
timeout 240 "$NCU" --set full --import-source no --kernel-name regex:flash_fwd \
  --launch-count 8 -f -o "$L/torch_flash" \
  python3 scripts/bench_attention_torch.py --iters 1 >"$L/torch_flash.log" 2>&1 || echo "ncu torch failed: $(tail -3 "$L/torch_flash.log")" | tee -a "$S"
details "$L/torch_flash.ncu-rep"
headline "$L/torch_flash.ncu-rep"

echo "=== registers and spills (ptxas -v on CubeCL's generated source)" | tee -a "$S"
cat "$L"/cubecl-*.log >"$L/cubecl.log" && rm "$L"/cubecl-*.log
python3 scripts/kernel_resources.py "$L/cubecl.log" --match attention | tee -a "$S"
rm -f "$L"/*.ncu-rep "$L/cubecl.log"
(cd "$OUT" && tar -czf /tmp/profile.tar.gz profile && rm -rf profile && mv /tmp/profile.tar.gz .)
