//! The training loop, in llm.c's order: set the learning rate, evaluate and checkpoint
//! when due, run the micro-batches (forward, loss, backward, accumulate), take the
//! optimizer step, log. Then a last evaluation, a last checkpoint and the HF export.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use burn::module::{AutodiffModule, Module, ModuleVisitor, Param};
use burn::optim::{GradientsAccumulator, GradientsParams, Optimizer};
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{ElementConversion, Tensor};
use indicatif::{ProgressBar, ProgressStyle};
use modernbert::{Backend, HfModel};
use serde_json::json;

use crate::checkpoint::{self, Checkpoint, RunState};
use crate::config::{DataConfig, OnNonFinite, OptimizerConfig, TrainConfig};
use crate::data::{
    resolve_paths, split_documents, DocumentCursor, Documents, Packer, RowStream, RunTokenizer,
    Split,
};
use crate::eval::{EvalResult, EvalSet};
use crate::masking::MaskingTokens;
use crate::mlm::{mlm_forward, HostBatch};
use crate::optimizer::StableAdamWConfig;
use crate::preflight;
use crate::rng::Rng;
use crate::schedule::{BatchSizeWarmup, WsdSchedule};

/// One logged optimizer step.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepLog {
    /// Step index (0-based).
    pub step: u64,
    /// Mean MLM loss over the step's micro-batches; `None` for a skipped step.
    pub loss: Option<f64>,
    /// Learning rate of the step.
    pub lr: f64,
    /// Real tokens in the step.
    pub tokens: usize,
}

/// What a finished run returns.
#[derive(Debug, Clone)]
pub struct TrainOutcome {
    /// Every step this invocation ran.
    pub steps: Vec<StepLog>,
    /// `(step, result)` of every evaluation.
    pub evals: Vec<(u64, EvalResult)>,
    /// The last checkpoint written.
    pub checkpoint: PathBuf,
    /// The HF-format export (config.json, model.safetensors, tokenizer.json).
    pub export_dir: PathBuf,
    /// Real tokens over row capacity of the training rows.
    pub packing_efficiency: f64,
}

/// Trains (or, with `resume`, continues) an MLM run.
///
/// On resume, the checkpoint's config is used, except `run.max_minutes` and
/// `run.output_dir`, which are taken from `config` (the latter unless empty); the run then
/// continues exactly as if it had not stopped.
///
/// # Errors
/// Bad config or data, an unwritable or too small output directory, a corrupt checkpoint,
/// a non-finite loss with `run.on_nonfinite = "stop"`, or an I/O failure.
pub fn train<B>(
    config: TrainConfig,
    resume: Option<&Path>,
    device: &B::Device,
) -> Result<TrainOutcome>
where
    B: AutodiffBackend + Backend,
    B::InnerBackend: Backend,
{
    let checkpoint = resume.map(Checkpoint::open).transpose()?;
    let config = match &checkpoint {
        Some(c) => TrainConfig {
            run: crate::config::RunConfig {
                output_dir: match config.run.output_dir.as_os_str().is_empty() {
                    true => c.state.config.run.output_dir.clone(),
                    false => config.run.output_dir.clone(),
                },
                max_minutes: config.run.max_minutes,
                ..c.state.config.run.clone()
            },
            ..c.state.config.clone()
        },
        None => config,
    };
    config.validate()?;
    let out = config.run.output_dir.clone();
    preflight::check_writable(&out)?;
    eprintln!("# modernbert-train config\n{}", config.to_toml());
    if let Some(c) = &checkpoint {
        eprintln!("resuming from {} at step {}", c.dir.display(), c.state.step);
    }

    // Data and tokenizer.
    let (d, s, r) = (&config.data, &config.schedule, &config.run);
    let train_files = resolve_paths(&d.train)?;
    let (train_split, eval_source) = data_splits(d, &train_files)?;
    let tokenizer = match &checkpoint {
        Some(c) => RunTokenizer::from_file(&c.tokenizer())?,
        None => fresh_tokenizer(d, &train_files, train_split)?,
    };
    let tokenizer_path = out.join("tokenizer.json");
    tokenizer.save(&tokenizer_path)?;
    let masking = masking_tokens(&tokenizer);

    // Model and optimizer.
    let (model_config, mut model) = init_model::<B>(&config, &tokenizer, device)?;
    let num_params = model.num_params();
    preflight::check_space(
        &out,
        preflight::bytes_needed(num_params, r.keep_checkpoints),
    )?;
    let mut optim = stable_adamw(&config.optimizer).init::<B, _>();
    let (mut step, mut rng, mut tokens_seen, data_state) = match &checkpoint {
        Some(c) => {
            model = c.load_model(model, device)?;
            optim = c.load_optimizer(optim, device)?;
            let st = &c.state;
            (
                st.step,
                st.rng.clone(),
                st.tokens_seen,
                Some(st.data.clone()),
            )
        }
        None => (0, Rng::new(r.seed), 0, None),
    };
    eprintln!(
        "model: {} parameters, vocab {}, {} layers, hidden {}",
        num_params,
        model_config.vocab_size,
        model_config.num_hidden_layers,
        model_config.hidden_size
    );
    let (cursor, packer) = match data_state {
        Some(state) => (state.cursor, state.packer),
        None => (
            DocumentCursor::default(),
            Packer::new(d.max_seq_len, d.pack_pool, tokenizer.cls, tokenizer.sep),
        ),
    };
    let docs = Documents::new(train_files, d.text_split, true, cursor);
    let mut stream = RowStream::new(docs, tokenizer.clone(), packer, train_split);
    let eval_set = match eval_source {
        Some((files, split)) => {
            let docs = Documents::new(files, d.text_split, false, DocumentCursor::default());
            let packer = Packer::new(d.max_seq_len, d.pack_pool, tokenizer.cls, tokenizer.sep);
            let mut eval_stream = RowStream::new(docs, tokenizer.clone(), packer, split);
            let set = EvalSet::new(
                &mut eval_stream,
                d.eval_rows,
                s.micro_batch_rows,
                r.eval_mask_rate,
                &masking,
                r.seed ^ 0x5eed_e7a1,
            )?;
            Some(set)
        }
        None => None,
    };

    let schedule = WsdSchedule {
        lr_max: config.optimizer.lr,
        warmup_steps: s.warmup_steps,
        decay_steps: s.decay_steps,
        total_steps: s.total_steps,
        final_lr_ratio: s.final_lr_ratio,
    };
    let batch_warmup = BatchSizeWarmup {
        rows: s.batch_rows,
        start_rows: s.batch_warmup_start_rows,
        warmup_steps: s.batch_warmup_steps,
        micro_batch_rows: s.micro_batch_rows,
    };
    let mut metrics = crate::metrics::MetricsLog::open(&out.join("metrics.jsonl"))?;
    let checkpoints = out.join("checkpoints");
    let mut last_checkpoint = checkpoint.as_ref().map(|c| c.dir.clone());
    let mut outcome = TrainOutcome {
        steps: Vec::new(),
        evals: Vec::new(),
        checkpoint: PathBuf::new(),
        export_dir: out.join("final"),
        packing_efficiency: 0.0,
    };
    let bar = ProgressBar::new(s.total_steps).with_position(step);
    bar.set_style(
        ProgressStyle::with_template(
            "{bar:30} {pos}/{len} [{elapsed_precise}<{eta_precise}] {msg}",
        )
        .expect("a valid progress template"),
    );
    let first_step = step;
    let save =
        |step: u64, model: &_, optim: &_, stream: &RowStream, rng: &Rng, tokens_seen: u64| {
            let state = RunState {
                step,
                data: stream.state(),
                rng: rng.clone(),
                tokens_seen,
                config: config.clone(),
            };
            checkpoint::save::<B, _, _>(
                &checkpoints,
                model,
                optim,
                &tokenizer_path,
                &state,
                r.keep_checkpoints,
            )
        };
    let evaluate = |model: &modernbert::ModernBertForMaskedLM<B>| -> Result<Option<EvalResult>> {
        let Some(set) = &eval_set else {
            return Ok(None);
        };
        let result = set.evaluate(&model.valid(), &model_config, device)?;
        Ok(Some(result))
    };

    let invocation = Instant::now();
    while step < s.total_steps {
        if r.max_minutes > 0.0 && invocation.elapsed().as_secs_f64() > 60.0 * r.max_minutes {
            bar.suspend(|| {
                eprintln!(
                    "time limit of {} minutes reached at step {step}",
                    r.max_minutes
                )
            });
            break;
        }
        let lr = schedule.lr(step);
        if r.eval_every > 0
            && step % r.eval_every == 0
            && !(checkpoint.is_some() && step == first_step)
        {
            if let Some(result) = evaluate(&model)? {
                log_eval(&mut metrics, &bar, step, &result)?;
                outcome.evals.push((step, result));
            }
        }
        if r.checkpoint_every > 0 && step % r.checkpoint_every == 0 && step != first_step {
            last_checkpoint = Some(save(step, &model, &optim, &stream, &rng, tokens_seen)?);
        }
        // Dropout draws from the backend's RNG: reseeding it from the step makes a resumed
        // run draw the same masks as an uninterrupted one.
        B::seed(
            device,
            r.seed ^ (step + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15),
        );
        let started = Instant::now();
        let micro_batches = batch_warmup.micro_batches(step);
        let mut accumulator = GradientsAccumulator::new();
        let (mut loss_sum, mut tokens, mut bad_loss) = (0.0, 0, None);
        for _ in 0..micro_batches {
            let mut rows = Vec::with_capacity(s.micro_batch_rows);
            for _ in 0..s.micro_batch_rows {
                match stream.next_row()? {
                    Some(row) => rows.push(row),
                    None => bail!("the training files hold no document"),
                }
            }
            let batch = HostBatch::new(&rows, r.mask_rate, &masking, &mut rng);
            tokens += batch.num_tokens();
            let output = mlm_forward(&model, &model_config, &batch, device)?;
            // The one device-host sync of a micro-step: the loss is logged and checked.
            let loss = output.loss.clone().into_scalar().elem::<f64>();
            if !loss.is_finite() {
                bad_loss = Some(loss);
                break;
            }
            loss_sum += loss;
            let grads = output.loss.div_scalar(micro_batches as f64).backward();
            accumulator.accumulate(&model, GradientsParams::from_grads(grads, &model));
        }
        if let Some(loss) = bad_loss {
            let kept = last_checkpoint
                .as_ref()
                .map_or("no checkpoint was written yet".to_string(), |p| {
                    format!("the last checkpoint, {}, is kept", p.display())
                });
            match r.on_nonfinite {
                OnNonFinite::Stop => {
                    bar.abandon();
                    metrics.write(
                        json!({"step": step, "nonfinite_loss": loss.to_string(), "stopped": true}),
                    )?;
                    bail!(
                        "non-finite loss ({loss}) at step {step}; {kept}. Resume from it with a \
                         lower optimizer.lr, or set run.on_nonfinite = \"skip\""
                    );
                }
                OnNonFinite::Skip => {
                    metrics.write(
                        json!({"step": step, "nonfinite_loss": loss.to_string(), "skipped": true}),
                    )?;
                    bar.suspend(|| {
                        eprintln!("step {step}: non-finite loss ({loss}), step skipped")
                    });
                    outcome.steps.push(StepLog {
                        step,
                        loss: None,
                        lr,
                        tokens,
                    });
                    step += 1;
                    bar.set_position(step);
                    continue;
                }
            }
        }
        model = optim.step(lr, model, accumulator.grads());
        let loss = loss_sum / micro_batches as f64;
        let tokens_per_s = tokens as f64 / started.elapsed().as_secs_f64();
        tokens_seen += tokens as u64;
        metrics.write(json!({
            "step": step, "loss": loss, "lr": lr, "tokens": tokens, "tokens_seen": tokens_seen,
            "tokens_per_s": tokens_per_s, "rows": micro_batches * s.micro_batch_rows,
            "packing_efficiency": stream.packer().efficiency(),
            "elapsed_s": invocation.elapsed().as_secs_f64(),
        }))?;
        outcome.steps.push(StepLog {
            step,
            loss: Some(loss),
            lr,
            tokens,
        });
        step += 1;
        bar.set_position(step);
        bar.set_message(format!(
            "loss {loss:.4} lr {lr:.2e} {:.1}k tok/s",
            tokens_per_s / 1e3
        ));
    }
    bar.finish();

    if let Some(result) = evaluate(&model)? {
        log_eval(&mut metrics, &bar, step, &result)?;
        outcome.evals.push((step, result));
    }
    outcome.checkpoint =
        match last_checkpoint.filter(|p| p == &checkpoint::step_dir(&checkpoints, step)) {
            Some(existing) => existing,
            None => save(step, &model, &optim, &stream, &rng, tokens_seen)?,
        };
    outcome.packing_efficiency = stream.packer().efficiency();
    model
        .valid()
        .save_pretrained(&outcome.export_dir)
        .with_context(|| format!("exporting to {}", outcome.export_dir.display()))?;
    tokenizer.save(&outcome.export_dir.join("tokenizer.json"))?;
    eprintln!(
        "done: {step} steps, {tokens_seen} tokens, packing efficiency {:.1}%; checkpoint {}; HF export {}",
        100.0 * outcome.packing_efficiency,
        outcome.checkpoint.display(),
        outcome.export_dir.display()
    );
    Ok(outcome)
}

/// The evaluation files and the split of them to read.
pub(crate) type EvalSource = (Vec<PathBuf>, Split);

/// The training split of `train_files` and, when `[data]` asks for evaluation, the
/// evaluation files with their split: `data.eval` whole, or the documents held out of
/// `data.train` (one in `holdout_every`).
///
/// # Errors
/// A `data.eval` pattern that matches no file.
pub(crate) fn data_splits(
    d: &DataConfig,
    train_files: &[PathBuf],
) -> Result<(Split, Option<EvalSource>)> {
    Ok(match (d.eval.is_empty(), d.holdout_every) {
        (false, _) => (Split::All, Some((resolve_paths(&d.eval)?, Split::All))),
        (true, 0) => (Split::All, None),
        (true, n) => (
            Split::Train { holdout_every: n },
            Some((train_files.to_vec(), Split::HeldOut { holdout_every: n })),
        ),
    })
}

/// The tokenizer of a run that does not resume: `data.tokenizer`, or a byte-level BPE of
/// `data.tokenizer_vocab_size` tokens trained on the training split.
///
/// # Errors
/// An unreadable tokenizer file or training corpus.
pub(crate) fn fresh_tokenizer(
    d: &DataConfig,
    train_files: &[PathBuf],
    split: Split,
) -> Result<RunTokenizer> {
    match &d.tokenizer {
        Some(path) => RunTokenizer::from_file(path),
        None => {
            eprintln!(
                "training a {}-token BPE tokenizer on the training split",
                d.tokenizer_vocab_size
            );
            let docs = Documents::new(
                train_files.to_vec(),
                d.text_split,
                false,
                DocumentCursor::default(),
            );
            RunTokenizer::train(split_documents(docs, split), d.tokenizer_vocab_size)
        }
    }
}

/// The ids the masking of `tokenizer`'s rows needs.
pub(crate) fn masking_tokens(tokenizer: &RunTokenizer) -> MaskingTokens {
    MaskingTokens {
        mask: tokenizer.mask,
        never: [tokenizer.cls, tokenizer.sep, tokenizer.pad],
        vocab_size: tokenizer.vocab_size as u32,
    }
}

/// The architecture of `config` for `tokenizer`, and the model drawn from `run.seed` with
/// every parameter initialized.
///
/// # Errors
/// When the resulting [`ModernBertConfig`](modernbert::ModernBertConfig) is invalid.
pub(crate) fn init_model<B: Backend>(
    config: &TrainConfig,
    tokenizer: &RunTokenizer,
    device: &B::Device,
) -> Result<(
    modernbert::ModernBertConfig,
    modernbert::ModernBertForMaskedLM<B>,
)> {
    let model_config = config.model_config(
        tokenizer.vocab_size,
        tokenizer.pad,
        tokenizer.cls,
        tokenizer.sep,
    );
    model_config
        .validate()
        .context("the model config from [model] is invalid")?;
    B::seed(device, config.run.seed);
    let model = model_config.init_masked_lm::<B>(device);
    // Burn initializes parameters lazily, at first use: force it now, so that the init draws
    // from `run.seed` alone and not from the RNG state of the first step's dropout.
    model.visit(&mut ForceInit);
    Ok((model_config, model))
}

/// StableAdamW with the hyper-parameters of `[optimizer]`.
pub(crate) fn stable_adamw(o: &OptimizerConfig) -> StableAdamWConfig {
    StableAdamWConfig::new(o.lr)
        .with_beta_1(o.beta_1)
        .with_beta_2(o.beta_2)
        .with_epsilon(o.epsilon)
        .with_weight_decay(o.weight_decay)
}

/// Touches every parameter, which makes Burn run its lazy initialization.
struct ForceInit;

impl<B: burn::tensor::backend::Backend> ModuleVisitor<B> for ForceInit {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        let _ = param.val();
    }
}

fn log_eval(
    metrics: &mut crate::metrics::MetricsLog,
    bar: &ProgressBar,
    step: u64,
    result: &EvalResult,
) -> Result<()> {
    bar.suspend(|| {
        eprintln!(
            "step {step}: eval loss {:.4}, masked-token accuracy {:.2}% ({} tokens)",
            result.loss,
            100.0 * result.accuracy,
            result.masked_tokens
        )
    });
    metrics.write(json!({
        "step": step, "eval_loss": result.loss, "eval_accuracy": result.accuracy,
        "eval_masked_tokens": result.masked_tokens,
    }))
}
