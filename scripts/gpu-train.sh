#!/usr/bin/env bash
# GPU checks of `modernbert-train` (issue 6). Run on the device from the repository root,
# after scripts/build-gpu-bin.sh packed gpu-bin/e2e.tar.xz (binaries + WikiText-2).
# Called by `bash scripts/gpu-check.sh train` (which also sets cuBLASLt's library path): `smoke`
# and `bench`, or `pretrain` when TRAIN_MINUTES is set (it is long):
#
#   bash scripts/gpu-train.sh smoke     tiny model, Cuda bf16, 60 steps on WikiText-2 (~1-2 min):
#                                       loss falls, checkpoint + resume + HF export work
#   bash scripts/gpu-train.sh bench     ModernBERT-base, seq 1024, 16 rows/step, Cuda bf16:
#                                       our tokens/s, then HF transformers' (same call), ratio
#   bash scripts/gpu-train.sh breakdown the bench's model and batch, each part of one step
#                                       timed alone (median of 10, sync around each; ~30-60 s):
#                                       markdown table in $OUT/bench_train_breakdown.md
#   TRAIN_MINUTES=7 bash scripts/gpu-check.sh train     (runs gpu-train.sh pretrain)
#                                       the small model (8 layers, hidden 512) from scratch on
#                                       WikiText-2 (train: test.txt, eval: valid.txt), planned
#                                       for PRETRAIN_TARGET_MINUTES (11) by a 1-minute probe. Runs
#                                       TRAIN_MINUTES this call, then checkpoints; call it again
#                                       to resume (one device command is limited to 10 min) until
#                                       it prints "pretrain: DONE" (>= 10 minutes of training in
#                                       total); then the eval curve, the HF export check
#                                       (transformers load + parity vs our Cuda f32) are written.
# Logs and results go to $OUT; the pretraining run lives in target/gpu-train-run (kept on a
# warm device between calls: target/ is ignored by git).
set -uo pipefail
OUT=${OUT:-/tmp/gpu-check}
mkdir -p "$OUT"
[ -x /tmp/bin/modernbert-train ] || tar -C /tmp -xJf gpu-bin/e2e.tar.xz
BIN=/tmp/bin
DATA=$BIN/data/wikitext-2
TRAIN=$BIN/modernbert-train
mode=${1:?usage: gpu-train.sh smoke|bench|breakdown|pretrain}
status=0
common=(--set "data.train=[\"$DATA/test.txt\"]" --set "data.eval=[\"$DATA/valid.txt\"]")
# The bench's run: ModernBERT-base, seq 1024, one 16-row micro-batch per step.
base=(--set model.preset=base --set data.max_seq_len=1024 --set data.tokenizer_vocab_size=32768
  --set schedule.batch_rows=16 --set schedule.micro_batch_rows=16)

case $mode in
smoke)
  run=/tmp/train-smoke; rm -rf "$run"
  "$TRAIN" --backend cuda --dtype bf16 --output-dir "$run" "${common[@]}" \
    --set model.preset=tiny --set data.max_seq_len=256 --set data.tokenizer_vocab_size=4096 \
    --set schedule.total_steps=60 --set schedule.warmup_steps=6 --set schedule.decay_steps=12 \
    --set schedule.batch_rows=16 --set schedule.micro_batch_rows=8 --set optimizer.lr=3e-3 \
    --set run.eval_every=20 --set run.checkpoint_every=30 --set data.eval_rows=32 \
    >"$OUT/train_smoke.log" 2>&1 || status=1
  # Resume from step 30 into a second directory: the same final eval loss is expected.
  "$TRAIN" --backend cuda --dtype bf16 --resume "$run/checkpoints/step-00000030" \
    --output-dir /tmp/train-smoke-resumed >"$OUT/train_smoke_resume.log" 2>&1 || status=1
  cp "$run/metrics.jsonl" "$OUT/train_smoke_metrics.jsonl" 2>/dev/null
  grep -E "eval loss|done:|Error|error" "$OUT/train_smoke.log" "$OUT/train_smoke_resume.log"
  python3 scripts/check_train_export.py "$run/final" /tmp/train-smoke-case >>"$OUT/train_smoke.log" 2>&1 || status=1
  "$BIN/parity" /tmp/train-smoke-case --backend cuda --tolerance 1e-4 >>"$OUT/train_smoke.log" 2>&1 || status=1
  tail -4 "$OUT/train_smoke.log"
  ;;
bench)
  run=/tmp/train-bench; rm -rf "$run"
  "$TRAIN" --backend cuda --dtype bf16 --output-dir "$run" "${common[@]}" "${base[@]}" \
    --set schedule.total_steps=25 --set schedule.warmup_steps=5 --set schedule.decay_steps=0 \
    --set run.eval_every=0 --set run.checkpoint_every=0 --set data.eval_rows=16 \
    >"$OUT/train_bench_ours.log" 2>&1 || status=1
  cp "$run/metrics.jsonl" "$OUT/train_bench_metrics.jsonl" 2>/dev/null
  tail -2 "$OUT/train_bench_ours.log"
  python3 scripts/bench_train_torch.py --config "$run/final/config.json" --rows 16 --seq 1024 \
    --ours "$run/metrics.jsonl" 2>&1 | tee "$OUT/bench_train.md" || status=1
  ;;
breakdown)
  "$TRAIN" --backend cuda --dtype bf16 --breakdown "${common[@]}" "${base[@]}" \
    >"$OUT/bench_train_breakdown.md" 2>"$OUT/train_breakdown_stderr.log" || status=1
  cat "$OUT/bench_train_breakdown.md"; tail -3 "$OUT/train_breakdown_stderr.log"
  ;;
pretrain)
  minutes=${TRAIN_MINUTES:?set TRAIN_MINUTES (minutes of training in this call, at most ~8)}
  target=${PRETRAIN_TARGET_MINUTES:-11} # planned length of the whole run, over several calls
  run=$PWD/target/gpu-train-run; mkdir -p "$run"
  small=("${common[@]}" --set model.preset=small --set data.max_seq_len=512
    --set data.tokenizer_vocab_size=16384 --set schedule.batch_rows=32
    --set schedule.micro_batch_rows=32 --set optimizer.lr=1e-3 --set run.eval_every=100
    --set run.checkpoint_every=200 --set data.eval_rows=64)
  if [ -d "$run/checkpoints" ]; then resume=(--resume "$run"); else
    # The schedule is fixed when the run starts, and a resumed run keeps it, so the step count
    # that fills $target minutes is measured first: a one-minute probe of the same config
    # (evaluations and checkpoints included), rate taken over its second half.
    probe=/tmp/train-probe; rm -rf "$probe"
    "$TRAIN" --backend cuda --dtype bf16 --output-dir "$probe" --max-minutes 1.25 "${small[@]}" \
      --set schedule.total_steps=1000000 --set schedule.warmup_steps=200 \
      --set schedule.decay_steps=0 >"$OUT/pretrain_probe.log" 2>&1 || status=1
    total=$(python3 scripts/pretrain_metrics.py plan "$probe/metrics.jsonl" "$target")
    echo "probe: $total steps planned for $target minutes" | tee "$OUT/pretrain_plan.txt"
    echo "$total" >"$run/total_steps"
    resume=("${small[@]}" --set schedule.total_steps="$total"
      --set schedule.warmup_steps=$((total / 20)) --set schedule.decay_steps=$((total / 5)))
  fi
  total=$(cat "$run/total_steps")
  "$TRAIN" --backend cuda --dtype bf16 --output-dir "$run" --max-minutes "$minutes" "${resume[@]}" \
    >>"$run/train.log" 2>&1 || status=1
  cp "$run/train.log" "$run/metrics.jsonl" "$OUT/" 2>/dev/null
  python3 scripts/pretrain_metrics.py curve "$run/metrics.jsonl" | tee "$OUT/bench_pretrain_eval.md"
  grep -E "eval loss|done:|time limit|rror" "$run/train.log" | tail -40
  if grep -q "done: $total steps" "$run/train.log"; then
    python3 scripts/check_train_export.py "$run/final" /tmp/train-pretrain-case 2>&1 | tee "$OUT/pretrain_export.log" || status=1
    "$BIN/parity" /tmp/train-pretrain-case --backend cuda --tolerance 1e-4 2>&1 | tee -a "$OUT/pretrain_export.log" || status=1
    echo "pretrain: DONE"
  else
    echo "pretrain: not finished; call again with TRAIN_MINUTES set to continue from the last checkpoint"
  fi
  ;;
*) echo "unknown mode $mode"; exit 2 ;;
esac
exit $status
