//! End-to-end runs of the trainer on a tiny model, NdArray under Autodiff: the loss drops on
//! real text, a resumed run continues exactly, and failures are caught with clear errors.

use std::path::{Path, PathBuf};

use burn::backend::{Autodiff, NdArray};
use modernbert_train::checkpoint::Checkpoint;
use modernbert_train::{train, TrainConfig, TrainOutcome};

type B = Autodiff<NdArray>;

/// NdArray's random generator (dropout, init) is process-global: runs in parallel test
/// threads would draw from it in turn and stop being reproducible. One run at a time.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn run(config: TrainConfig, resume: Option<&Path>) -> anyhow::Result<TrainOutcome> {
    let _guard = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    train::<B>(config, resume, &Default::default())
}

const CORPUS: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/data/wikitext-2-valid-excerpt.txt"
);

/// A fresh output directory (not yet created) inside a temporary one that the guard removes.
fn out_dir() -> (tempfile::TempDir, PathBuf) {
    let guard = tempfile::tempdir().unwrap();
    let dir = guard.path().join("out");
    (guard, dir)
}

/// A tiny model on the WikiText excerpt; `extra` overrides on top.
fn config(out: &Path, extra: &[&str]) -> TrainConfig {
    let mut overrides: Vec<String> = [
        format!("data.train=[{CORPUS:?}]"),
        format!("run.output_dir={:?}", out.display().to_string()),
        "model.preset=tiny".into(),
        "data.tokenizer_vocab_size=512".into(),
        "data.max_seq_len=128".into(),
        "data.pack_pool=64".into(),
        "data.holdout_every=10".into(),
        "data.eval_rows=4".into(),
        "schedule.batch_rows=4".into(),
        "schedule.micro_batch_rows=4".into(),
        "schedule.batch_warmup_start_rows=4".into(),
        "run.eval_every=0".into(),
        "run.checkpoint_every=0".into(),
    ]
    .into();
    overrides.extend(extra.iter().map(|s| s.to_string()));
    TrainConfig::load(None, &overrides).unwrap()
}

fn losses(outcome: &TrainOutcome) -> Vec<f64> {
    outcome.steps.iter().map(|s| s.loss.unwrap()).collect()
}

#[test]
fn tiny_model_mlm_loss_drops_on_wikitext() {
    let (_out_guard, out) = out_dir();
    let config = config(
        &out,
        &[
            "schedule.total_steps=50",
            "schedule.warmup_steps=4",
            "schedule.decay_steps=10",
            "optimizer.lr=3e-3",
            "data.eval_rows=16",
            "model.attention_dropout=0.0",
            "run.eval_every=25",
        ],
    );
    let outcome = run(config, None).unwrap();
    let losses = losses(&outcome);
    let head = losses[0];
    let tail: f64 = losses[losses.len() - 5..].iter().sum::<f64>() / 5.0;
    let evals: Vec<(u64, f64, f64)> = outcome
        .evals
        .iter()
        .map(|(s, e)| (*s, e.loss, e.accuracy))
        .collect();
    println!(
        "train loss {head:.3} -> {tail:.3}; evals {evals:?}; packing {:.3}",
        outcome.packing_efficiency
    );
    // From ~ln(vocab) = 6.2 at init to well below it (the eval loss is the cleaner signal:
    // fixed masks, 4 packed rows per training step are noisy).
    assert!(tail < head - 0.5, "train loss {head} -> {tail}");
    let (first, last) = (evals[0], *evals.last().unwrap());
    assert_eq!((first.0, last.0), (0, 50));
    assert!(
        last.1 < first.1 - 0.8,
        "eval loss {} -> {}",
        first.1,
        last.1
    );
    assert!(
        last.2 > first.2 + 0.03,
        "eval accuracy {} -> {}",
        first.2,
        last.2
    );
    assert!(
        outcome.packing_efficiency > 0.9,
        "{}",
        outcome.packing_efficiency
    );
    // The export is an HF checkpoint directory that this crate's model loads back.
    for file in ["config.json", "model.safetensors", "tokenizer.json"] {
        assert!(outcome.export_dir.join(file).is_file(), "{file} missing");
    }
    let metrics = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
    assert_eq!(
        metrics.lines().filter(|l| l.contains("\"loss\"")).count(),
        50
    );
    assert_eq!(
        metrics
            .lines()
            .filter(|l| l.contains("eval_accuracy"))
            .count(),
        3
    );
}

#[test]
fn resume_continues_with_the_same_losses_and_weights() {
    // Dropout, gradient accumulation and batch-size warmup on, so that every piece of state
    // a checkpoint must carry is exercised.
    let extra = [
        "schedule.total_steps=6",
        "schedule.warmup_steps=2",
        "schedule.decay_steps=2",
        "schedule.batch_rows=4",
        "schedule.micro_batch_rows=2",
        "schedule.batch_warmup_start_rows=2",
        "schedule.batch_warmup_steps=3",
        "model.attention_dropout=0.1",
        "run.checkpoint_every=3",
        "run.eval_every=3",
        "optimizer.lr=2e-3",
    ];
    let (_full_dir_guard, full_dir) = out_dir();
    let full = run(config(&full_dir, &extra), None).unwrap();
    let checkpoint = full_dir.join("checkpoints/step-00000003");
    let (_resumed_dir_guard, resumed_dir) = out_dir();
    let mut resumed_config = config(&resumed_dir, &[]);
    resumed_config.schedule.total_steps = 1; // ignored: the checkpoint's config rules
    let resumed = run(resumed_config, Some(&checkpoint)).unwrap();
    let (full_losses, resumed_losses) = (losses(&full), losses(&resumed));
    println!("full {full_losses:?}\nresumed {resumed_losses:?}");
    assert_eq!(resumed.steps.first().map(|s| s.step), Some(3));
    assert_eq!(
        &full_losses[3..],
        &resumed_losses[..],
        "loss curves differ after resume"
    );
    assert_eq!(
        full.evals.last().unwrap().1,
        resumed.evals.last().unwrap().1
    );
    let weights = |dir: &Path| std::fs::read(dir.join("model.safetensors")).unwrap();
    assert!(
        weights(&full.export_dir) == weights(&resumed.export_dir),
        "final weights differ"
    );
    // The losses must also differ from a run without the restored state (the test is not
    // vacuous): the step-0 losses of the two halves are not equal.
    assert_ne!(full_losses[0], full_losses[3]);
}

#[test]
fn corrupt_or_incomplete_checkpoints_are_refused() {
    let (_out_guard, out) = out_dir();
    let outcome = run(
        config(
            &out,
            &[
                "schedule.total_steps=1",
                "schedule.warmup_steps=0",
                "schedule.decay_steps=0",
            ],
        ),
        None,
    )
    .unwrap();
    let dir = outcome.checkpoint;
    Checkpoint::open(&dir).unwrap();
    Checkpoint::open(&out).unwrap(); // an output directory resolves to its newest checkpoint
    let model = dir.join("model.bin");
    let mut bytes = std::fs::read(&model).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x40;
    std::fs::write(&model, &bytes).unwrap();
    let err = Checkpoint::open(&dir).unwrap_err().to_string();
    assert!(err.contains("model.bin is corrupt"), "{err}");
    let err = run(config(&out, &[]), Some(&dir)).unwrap_err().to_string();
    assert!(err.contains("refusing to resume"), "{err}");
    std::fs::write(dir.join("state.json"), "{ truncated").unwrap();
    let err = Checkpoint::open(&dir).unwrap_err().to_string();
    assert!(err.contains("state.json is corrupt"), "{err}");
    std::fs::remove_file(dir.join("DONE")).unwrap();
    let err = Checkpoint::open(&dir).unwrap_err().to_string();
    assert!(err.contains("incomplete"), "{err}");
}

#[test]
fn a_nonfinite_loss_stops_with_the_step_or_is_skipped() {
    // lr 1e30: the first update sends every weight to ~1e30 and the next loss overflows.
    let extra = [
        "optimizer.lr=1e30",
        "schedule.total_steps=4",
        "schedule.warmup_steps=0",
        "schedule.decay_steps=0",
        "run.checkpoint_every=1",
    ];
    let (_out_guard, out) = out_dir();
    let err = run(config(&out, &extra), None).unwrap_err().to_string();
    println!("{err}");
    let step: u64 = err
        .split("at step ")
        .nth(1)
        .and_then(|rest| rest.split(';').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no step named: {err}"));
    assert!(err.contains("non-finite loss") && step >= 1, "{err}");
    let kept = format!("checkpoints/step-{step:08}");
    assert!(err.contains(&kept), "names the kept checkpoint: {err}");
    assert!(out.join(&kept).join("DONE").is_file());

    let (_out_guard, out) = out_dir();
    let mut skip = extra.to_vec();
    skip.push("run.on_nonfinite=skip");
    let outcome = run(config(&out, &skip), None).unwrap();
    let skipped = outcome.steps.iter().filter(|s| s.loss.is_none()).count();
    assert_eq!(outcome.steps.len(), 4);
    assert!(
        skipped >= 1 && outcome.steps[0].loss.is_some(),
        "{:?}",
        outcome.steps
    );
}

#[test]
fn an_unwritable_output_dir_fails_before_training() {
    let base = tempfile::tempdir().unwrap();
    let file = base.path().join("file");
    std::fs::write(&file, "x").unwrap();
    let started = std::time::Instant::now();
    // Without the SERIAL lock: the run must fail before it draws a random number.
    let err = train::<B>(config(&file.join("out"), &[]), None, &Default::default())
        .unwrap_err()
        .to_string();
    assert!(err.contains("cannot be created"), "{err}");
    assert!(
        started.elapsed().as_secs() < 5,
        "failed only after training started"
    );
}
