"""Reads a `modernbert-train` metrics.jsonl for scripts/gpu-train.sh's pretraining run.

    python3 pretrain_metrics.py plan METRICS MINUTES   steps that fill MINUTES at the rate of
                                                       the run's second half (a probe run)
    python3 pretrain_metrics.py curve METRICS          the eval curve as table rows (step,
                                                       training minutes, loss, accuracy) and
                                                       the training time over all invocations
"""

import json
import sys


def records(path):
    with open(path) as f:
        return [json.loads(line) for line in f]


def plan(path, minutes):
    steps = [r for r in records(path) if "elapsed_s" in r]
    if len(steps) < 10:
        sys.exit(f"{path}: only {len(steps)} steps logged, too few to measure a rate")
    half = [r for r in steps if r["elapsed_s"] >= steps[-1]["elapsed_s"] / 2]
    rate = (half[-1]["step"] - half[0]["step"]) / (half[-1]["elapsed_s"] - half[0]["elapsed_s"])
    print(int(rate * 60 * minutes) // 100 * 100)


def curve(path):
    # elapsed_s restarts at each invocation (a resume): earlier invocations' last values add up.
    done, last = 0.0, 0.0
    print("| step | training minutes | eval loss | masked-token accuracy |")
    print("|---|---|---|---|")
    for r in records(path):
        if "elapsed_s" in r:
            if r["elapsed_s"] < last:
                done += last
            last = r["elapsed_s"]
        elif "eval_loss" in r:
            print(f"| {r['step']} | {(done + last) / 60:.1f} | {r['eval_loss']:.4f} | {100 * r['eval_accuracy']:.2f}% |")
    print(f"\ntraining time over all invocations: {(done + last) / 60:.1f} minutes")


if __name__ == "__main__":
    if sys.argv[1:2] == ["plan"] and len(sys.argv) == 4:
        plan(sys.argv[2], float(sys.argv[3]))
    elif sys.argv[1:2] == ["curve"] and len(sys.argv) == 3:
        curve(sys.argv[2])
    else:
        sys.exit(__doc__)
