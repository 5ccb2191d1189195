//! Where one training step's time goes, without a profiler: the run's model and first batch
//! are built exactly as [`train`](crate::train()) builds them, then each part of the step is
//! timed in isolation at the step's shapes, with a device sync before and after every timed
//! call and the median of several repeats: the host data path, the embeddings, a whole
//! global and a whole local layer, each op inside a layer (`attn_norm`, `Wqkv`,
//! `rope_qkv`, global and sliding-window attention, `Wo` + residual, `mlp_norm`, `Wi`,
//! GeGLU, the MLP's `Wo` + residual), `final_norm`, the MLM head and loss on the masked
//! rows, the whole forward, forward + backward, the optimizer step, and the full step as
//! the training loop runs it (one micro-batch). Every part runs through the model's own
//! modules and the kernel extension ops: what training runs, not a re-implementation.
//!
//! Forward parts run under Autodiff as in training (graph recording and dropout included);
//! "fwd+bwd" adds the backward pass from an all-ones output gradient (from the sum of q, k
//! and v for `rope_qkv`), with the part's input and parameters requiring gradients.
//! The table's "ms per step" multiplies a part's fwd+bwd by how often one step runs it; the
//! sum of the top-level parts against the full step shows what isolation misses (launch
//! gaps, allocation, overlap), the sum of the in-layer parts against the two whole layers
//! the same inside a layer. Layer 0 has no `attn_norm`, and runs as a global layer: the
//! per-step figures count the measured global layer for it.

use std::fmt::Write as _;
use std::time::Instant;

use anyhow::{anyhow, bail, Context, Result};
use burn::optim::{GradientsAccumulator, GradientsParams, Optimizer};
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{ElementConversion, Tensor};
use modernbert::attention::AttentionBatch;
use modernbert::norm::layer_norm;
use modernbert::residual::add_projection;
use modernbert::{Backend, LayerType, ModernBertForMaskedLM, UnpaddedInput};
use modernbert_kernels::{geglu, linear, rope_qkv, varlen_attention, VarlenAttentionOptions};

use crate::config::TrainConfig;
use crate::data::{resolve_paths, DocumentCursor, Documents, Packer, RowStream};
use crate::masking::MaskingTokens;
use crate::mlm::{mlm_forward, mlm_loss, HostBatch};
use crate::rng::Rng;
use crate::train::{data_splits, fresh_tokenizer, init_model, masking_tokens, stable_adamw};

/// How many times each part runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakdownOptions {
    /// Untimed runs before the timed ones (kernel compilation, autotuning, allocation).
    pub warmup: usize,
    /// Timed runs; the table gives their median. At least 1.
    pub repeats: usize,
}

impl Default for BreakdownOptions {
    fn default() -> Self {
        Self {
            warmup: 2,
            repeats: 10,
        }
    }
}

/// One row of the breakdown.
#[derive(Debug, Clone, PartialEq)]
pub struct StageTiming {
    /// What was timed.
    pub stage: String,
    /// How often one training step runs it (layers: how many layers have it).
    pub count: usize,
    /// Median forward time in ms, where a forward alone is meaningful.
    pub forward_ms: Option<f64>,
    /// Median forward + backward time in ms, where the part has a backward.
    pub forward_backward_ms: Option<f64>,
    /// Its share of one step in ms: `count ×` fwd+bwd (or the part's own time when it has
    /// no backward).
    pub step_ms: f64,
}

/// The timing breakdown of one training step.
#[derive(Debug, Clone, PartialEq)]
pub struct Breakdown {
    /// The parts, then the sums and the whole step (the last row).
    pub rows: Vec<StageTiming>,
    /// Rows per step.
    pub rows_per_step: usize,
    /// Packed sequences in the timed batch.
    pub sequences: usize,
    /// Real tokens in the timed batch.
    pub tokens: usize,
    /// Masked tokens in the timed batch.
    pub masked: usize,
    /// The backend's name.
    pub backend: String,
    /// The repeats behind each median.
    pub options: BreakdownOptions,
}

impl Breakdown {
    /// The median full step in ms (the last row).
    pub fn full_step_ms(&self) -> f64 {
        self.rows.last().map_or(f64::NAN, |row| row.step_ms)
    }

    /// The breakdown as a caption and one markdown table: stage, count per step, fwd ms,
    /// fwd+bwd ms, ms per step and % of the full step.
    pub fn to_markdown(&self) -> String {
        let full = self.full_step_ms();
        let mut out = format!(
            "Training-step breakdown on {}: {} rows, {} sequences, {} tokens, {} masked; \
             median of {} runs after {} warmup, device sync around each; full step \
             {:.2} ms = {:.1}k tokens/s.\n\n",
            self.backend,
            self.rows_per_step,
            self.sequences,
            self.tokens,
            self.masked,
            self.options.repeats,
            self.options.warmup,
            full,
            self.tokens as f64 / full,
        );
        out.push_str("| stage | × | fwd ms | fwd+bwd ms | ms per step | % of step |\n");
        out.push_str("|---|---:|---:|---:|---:|---:|\n");
        let ms = |v: Option<f64>| v.map_or("–".to_string(), |v| format!("{v:.3}"));
        for row in &self.rows {
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {:.2} | {:.1}% |",
                row.stage,
                row.count,
                ms(row.forward_ms),
                ms(row.forward_backward_ms),
                row.step_ms,
                100.0 * row.step_ms / full,
            );
        }
        out
    }
}

/// Builds the model and first batch of `config`'s run (tokenizer, packing, masking and
/// initialization as [`train`](crate::train()) does; no output is written) and times the
/// parts of one training step on `device`.
///
/// # Errors
/// As [`train`](crate::train()) for the config and data; `options.repeats == 0`; a model
/// without a global layer after layer 0 or without a local layer (fewer than 3 layers);
/// a failed device sync.
pub fn breakdown<B>(
    config: TrainConfig,
    options: BreakdownOptions,
    device: &B::Device,
) -> Result<Breakdown>
where
    B: AutodiffBackend + Backend,
    B::InnerBackend: Backend,
{
    if options.repeats == 0 {
        bail!("the breakdown needs at least one timed repeat");
    }
    config.validate()?;
    let (d, r) = (&config.data, &config.run);
    let rows_per_step = config.schedule.micro_batch_rows;

    // The data and model of the run, as `train` builds them.
    let train_files = resolve_paths(&d.train)?;
    let (split, _) = data_splits(d, &train_files)?;
    let tokenizer = fresh_tokenizer(d, &train_files, split)?;
    let masking = masking_tokens(&tokenizer);
    let (model_config, model) = init_model::<B>(&config, &tokenizer, device)?;
    let packer = Packer::new(d.max_seq_len, d.pack_pool, tokenizer.cls, tokenizer.sep);
    let docs = Documents::new(train_files, d.text_split, true, DocumentCursor::default());
    let mut data = StepData {
        stream: RowStream::new(docs, tokenizer, packer, split),
        rng: Rng::new(r.seed),
        rows: rows_per_step,
        rate: r.mask_rate,
        masking,
    };
    let batch = data.next_batch()?;
    let input = UnpaddedInput::<B>::from_token_ids(&batch.sequences, &model_config, device)
        .context("building the unpadded batch")?;
    let targets = batch.targets::<B>(device)?;
    let total = batch.num_tokens();

    let encoder = &model.model;
    let global =
        encoder
            .layers
            .iter()
            .find_map(|layer| match (layer.layer_type, &layer.attn_norm) {
                (LayerType::Global, Some(norm)) => Some((layer, norm)),
                _ => None,
            });
    let local = encoder
        .layers
        .iter()
        .find(|layer| layer.layer_type == LayerType::Local);
    let (Some((global, attn_norm)), Some(local)) = (global, local) else {
        bail!(
            "the breakdown needs a global layer after layer 0 and a local layer \
             (a model of at least 4 layers with every third global)"
        );
    };
    let layers = encoder.layers.len();
    let globals = encoder
        .layers
        .iter()
        .filter(|layer| layer.layer_type == LayerType::Global)
        .count();
    let locals = layers - globals;
    let hidden_size = model_config.hidden_size;
    let heads = global.attn.num_heads;
    let window = model_config.local_attention / 2;
    let global_rope = encoder.global_rotary_emb.packed(input.positions.clone());
    let local_rope = encoder.local_rotary_emb.packed(input.positions.clone());
    let attention_batch = |global: bool| match global {
        true => AttentionBatch::Unpadded {
            cu_seqlens: &input.cu_seqlens,
            window: None,
            rope: &global_rope,
        },
        false => AttentionBatch::Unpadded {
            cu_seqlens: &input.cu_seqlens,
            window: Some(window),
            rope: &local_rope,
        },
    };
    let attention = |q: Tensor<B, 3>, k: Tensor<B, 3>, v: Tensor<B, 3>, window: Option<usize>| {
        varlen_attention(
            q,
            k,
            v,
            &input.cu_seqlens,
            VarlenAttentionOptions {
                window,
                scale: None,
            },
        )
        .map(|output| output.out)
        .context("varlen attention on the run's batch")
    };

    // Each part's input: the previous part's output, detached (a leaf of each timed graph).
    let ids = input.input_ids.clone().reshape([1, total]);
    let leaf = |t: Tensor<B, 3>| t.detach();
    let embedded = leaf(encoder.embeddings.forward(ids.clone()));
    let normed = leaf(layer_norm(attn_norm, global.norm_eps, embedded.clone()));
    let qkv = leaf(linear(&global.attn.Wqkv, normed.clone()));
    let rope = |qkv: Tensor<B, 3>| {
        rope_qkv(
            qkv.reshape([total, 3 * hidden_size]),
            global_rope.cos.clone(),
            global_rope.sin.clone(),
            global_rope.positions.clone(),
            heads,
        )
        .context("rope_qkv on the run's batch")
    };
    let [q, k, v] = rope(qkv.clone())?.map(Tensor::detach);
    let attended =
        leaf(attention(q.clone(), k.clone(), v.clone(), None)?.reshape([1, total, hidden_size]));
    let after_attention = leaf(add_projection(
        embedded.clone(),
        &global.attn.Wo,
        &global.attn.out_drop,
        attended.clone(),
    ));
    let mlp_normed = leaf(layer_norm(
        &global.mlp_norm,
        global.norm_eps,
        after_attention.clone(),
    ));
    let wi = leaf(linear(&global.mlp.Wi, mlp_normed.clone()));
    let activated = leaf(geglu(wi.clone()).context("GeGLU on the run's batch")?);
    let last_hidden = encoder.layers.iter().fold(embedded.clone(), |h, layer| {
        layer.forward(h, attention_batch(layer.layer_type == LayerType::Global))
    });
    let last_hidden = leaf(last_hidden);
    let encoded = leaf(layer_norm(
        &encoder.final_norm,
        model_config.norm_eps,
        last_hidden.clone(),
    ))
    .reshape([total, hidden_size]);

    let timer = Timer::<B> { device, options };
    let grad = |t: &Tensor<B, 3>| t.clone().require_grad();
    let mut rows = vec![
        timer.host("data: pack + mask rows (host)", || data.next_batch())?,
        timer.part("embeddings (tok_embeddings + norm)", 1, || {
            Ok(encoder.embeddings.forward(ids.clone()))
        })?,
        timer.part("global layer", globals, || {
            Ok(global.forward(grad(&embedded), attention_batch(true)))
        })?,
        timer.part("local layer", locals, || {
            Ok(local.forward(grad(&embedded), attention_batch(false)))
        })?,
        timer.part("· attn_norm", layers - 1, || {
            Ok(layer_norm(attn_norm, global.norm_eps, grad(&embedded)))
        })?,
        timer.part("· Wqkv", layers, || {
            Ok(linear(&global.attn.Wqkv, grad(&normed)))
        })?,
        timer.part("· rope_qkv", layers, || rope(grad(&qkv)))?,
        timer.part("· attention, global", globals, || {
            attention(grad(&q), grad(&k), grad(&v), None)
        })?,
        timer.part("· attention, window", locals, || {
            attention(grad(&q), grad(&k), grad(&v), Some(window))
        })?,
        timer.part("· Wo + residual", layers, || {
            Ok(add_projection(
                grad(&embedded),
                &global.attn.Wo,
                &global.attn.out_drop,
                grad(&attended),
            ))
        })?,
        timer.part("· mlp_norm", layers, || {
            Ok(layer_norm(
                &global.mlp_norm,
                global.norm_eps,
                grad(&after_attention),
            ))
        })?,
        timer.part("· Wi", layers, || {
            Ok(linear(&global.mlp.Wi, grad(&mlp_normed)))
        })?,
        timer.part("· GeGLU", layers, || {
            geglu(grad(&wi)).context("GeGLU on the run's batch")
        })?,
        timer.part("· mlp Wo + residual", layers, || {
            Ok(add_projection(
                grad(&after_attention),
                &global.mlp.Wo,
                &global.mlp.drop,
                grad(&activated),
            ))
        })?,
        timer.part("final_norm", 1, || {
            Ok(layer_norm(
                &encoder.final_norm,
                model_config.norm_eps,
                grad(&last_hidden),
            ))
        })?,
        timer.part("MLM head + loss (masked rows)", 1, || {
            Ok(mlm_loss(&model, encoded.clone().require_grad(), &targets)?.loss)
        })?,
    ];
    let sum = |rows: &[StageTiming], keep: fn(&str) -> bool| -> f64 {
        rows.iter()
            .filter(|row| keep(&row.stage))
            .map(|row| row.step_ms)
            .sum()
    };
    let in_layer = sum(&rows, |stage| stage.starts_with('·'));
    let whole_layers = sum(&rows, |stage| stage.ends_with(" layer"));
    let forward = timer.part("model forward / forward+backward", 1, || {
        Ok(mlm_forward(&model, &model_config, &batch, device)?.loss)
    })?;

    // The optimizer step and the full step consume the model: timed last, by hand.
    let mut optim = stable_adamw(&config.optimizer).init::<B, ModernBertForMaskedLM<B>>();
    let lr = config.optimizer.lr;
    let mut model = model;
    let mut optimizer_samples = Vec::with_capacity(options.repeats);
    for run in 0..options.warmup + options.repeats {
        let loss = mlm_forward(&model, &model_config, &batch, device)?.loss;
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        let (next, ms) = timer.once(|| Ok(optim.step(lr, model, grads)))?;
        model = next;
        if run >= options.warmup {
            optimizer_samples.push(ms);
        }
    }
    let optimizer_ms = median(optimizer_samples);
    rows.push(StageTiming {
        stage: "optimizer step (StableAdamW)".into(),
        count: 1,
        forward_ms: None,
        forward_backward_ms: None,
        step_ms: optimizer_ms,
    });
    let parts = sum(&rows, |stage| !stage.starts_with('·'));
    rows.push(total_row("sum of in-layer parts (· rows)", in_layer));
    rows.push(total_row("sum of the two whole-layer rows", whole_layers));
    rows.push(forward);
    rows.push(total_row("sum of parts (rows without ·)", parts));

    // The training loop's step with one micro-batch: next rows, forward, the loss read back
    // (the loop's one sync), backward, accumulation, optimizer step.
    let mut step_samples = Vec::with_capacity(options.repeats);
    for run in 0..options.warmup + options.repeats {
        let (next, ms) = timer.once(|| {
            let batch = data.next_batch()?;
            let output = mlm_forward(&model, &model_config, &batch, device)?;
            let loss = output.loss.clone().into_scalar().elem::<f64>();
            if !loss.is_finite() {
                bail!("non-finite loss ({loss}) in the timed step");
            }
            let mut accumulator = GradientsAccumulator::new();
            accumulator.accumulate(
                &model,
                GradientsParams::from_grads(output.loss.backward(), &model),
            );
            Ok(optim.step(lr, model, accumulator.grads()))
        })?;
        model = next;
        if run >= options.warmup {
            step_samples.push(ms);
        }
    }
    rows.push(total_row(
        "full step (data, fwd, loss sync, bwd, optimizer)",
        median(step_samples),
    ));
    Ok(Breakdown {
        rows,
        rows_per_step,
        sequences: batch.sequences.len(),
        tokens: total,
        masked: batch.positions.len(),
        backend: B::name(device),
        options,
    })
}

/// The training rows of the run and their masking, as the training loop draws them.
struct StepData {
    stream: RowStream,
    rng: Rng,
    rows: usize,
    rate: f64,
    masking: MaskingTokens,
}

impl StepData {
    /// The next micro-batch: `rows` packed rows, masked.
    fn next_batch(&mut self) -> Result<HostBatch> {
        let mut rows = Vec::with_capacity(self.rows);
        for _ in 0..self.rows {
            match self.stream.next_row()? {
                Some(row) => rows.push(row),
                None => bail!("the training files hold no document"),
            }
        }
        Ok(HostBatch::new(
            &rows,
            self.rate,
            &self.masking,
            &mut self.rng,
        ))
    }
}

/// A row that sums or totals others: no fwd/bwd columns of its own.
fn total_row(stage: &str, step_ms: f64) -> StageTiming {
    StageTiming {
        stage: stage.into(),
        count: 1,
        forward_ms: None,
        forward_backward_ms: None,
        step_ms,
    }
}

/// What a timed part returns: kept alive until the sync after it, and the root of its
/// backward pass.
trait PartOutput<B: AutodiffBackend> {
    /// Backward from an all-ones gradient of the output.
    fn backward(self) -> B::Gradients;
}

impl<B: AutodiffBackend, const D: usize> PartOutput<B> for Tensor<B, D> {
    fn backward(self) -> B::Gradients {
        Tensor::backward(&self)
    }
}

impl<B: AutodiffBackend> PartOutput<B> for [Tensor<B, 3>; 3] {
    fn backward(self) -> B::Gradients {
        let [q, k, v] = self;
        (q.sum() + k.sum() + v.sum()).backward()
    }
}

/// Runs closures between device syncs.
struct Timer<'a, B: AutodiffBackend> {
    device: &'a B::Device,
    options: BreakdownOptions,
}

impl<B: AutodiffBackend> Timer<'_, B> {
    /// Runs `f` once between two device syncs; returns its value (dropped by the caller,
    /// after the second sync) and the elapsed ms.
    fn once<T>(&self, f: impl FnOnce() -> Result<T>) -> Result<(T, f64)> {
        let sync = || B::sync(self.device).map_err(|e| anyhow!("device sync failed: {e}"));
        sync()?;
        let start = Instant::now();
        let value = f()?;
        sync()?;
        Ok((value, start.elapsed().as_secs_f64() * 1e3))
    }

    /// The median ms of `f` over the timed repeats, after the warmup runs.
    fn median<T>(&self, mut f: impl FnMut() -> Result<T>) -> Result<f64> {
        let mut samples = Vec::with_capacity(self.options.repeats);
        for run in 0..self.options.warmup + self.options.repeats {
            let (_value, ms) = self.once(&mut f)?;
            if run >= self.options.warmup {
                samples.push(ms);
            }
        }
        Ok(median(samples))
    }

    /// A part's forward, then its forward + backward; `count` runs per step.
    fn part<O: PartOutput<B>>(
        &self,
        stage: &str,
        count: usize,
        forward: impl Fn() -> Result<O>,
    ) -> Result<StageTiming> {
        let forward_ms = self.median(&forward)?;
        let forward_backward_ms = self.median(|| Ok(forward()?.backward()))?;
        Ok(StageTiming {
            stage: stage.into(),
            count,
            forward_ms: Some(forward_ms),
            forward_backward_ms: Some(forward_backward_ms),
            step_ms: count as f64 * forward_backward_ms,
        })
    }

    /// Host work that runs once per step.
    fn host<T>(&self, stage: &str, f: impl FnMut() -> Result<T>) -> Result<StageTiming> {
        Ok(total_row(stage, self.median(f)?))
    }
}

/// The median of non-empty `samples`.
fn median(mut samples: Vec<f64>) -> f64 {
    samples.sort_by(f64::total_cmp);
    let n = samples.len();
    match n % 2 {
        1 => samples[n / 2],
        _ => (samples[n / 2 - 1] + samples[n / 2]) / 2.0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::{Autodiff, NdArray};

    const CORPUS: &str = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/wikitext-2-valid-excerpt.txt"
    );

    #[test]
    fn the_median_of_an_even_count_is_the_mean_of_the_middle_two() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 3.0, 2.0]), 2.5);
    }

    #[test]
    fn a_tiny_run_prints_every_stage_of_the_step() {
        let _rng = crate::NDARRAY_RNG
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let overrides: Vec<String> = [
            format!("data.train=[{CORPUS:?}]"),
            "model.preset=tiny".into(),
            "data.tokenizer_vocab_size=512".into(),
            "data.max_seq_len=64".into(),
            "data.pack_pool=16".into(),
            "data.holdout_every=0".into(),
            "schedule.batch_rows=2".into(),
            "schedule.micro_batch_rows=2".into(),
        ]
        .into();
        let config = TrainConfig::load(None, &overrides).unwrap();
        let options = BreakdownOptions {
            warmup: 0,
            repeats: 1,
        };
        let report = breakdown::<Autodiff<NdArray>>(config, options, &Default::default()).unwrap();
        let stages: Vec<&str> = report.rows.iter().map(|r| r.stage.as_str()).collect();
        assert_eq!(
            stages,
            [
                "data: pack + mask rows (host)",
                "embeddings (tok_embeddings + norm)",
                "global layer",
                "local layer",
                "· attn_norm",
                "· Wqkv",
                "· rope_qkv",
                "· attention, global",
                "· attention, window",
                "· Wo + residual",
                "· mlp_norm",
                "· Wi",
                "· GeGLU",
                "· mlp Wo + residual",
                "final_norm",
                "MLM head + loss (masked rows)",
                "optimizer step (StableAdamW)",
                "sum of in-layer parts (· rows)",
                "sum of the two whole-layer rows",
                "model forward / forward+backward",
                "sum of parts (rows without ·)",
                "full step (data, fwd, loss sync, bwd, optimizer)",
            ]
        );
        // tiny: 4 layers, layers 0 and 3 global.
        let count = |stage: &str| report.rows.iter().find(|r| r.stage == stage).unwrap().count;
        assert_eq!(
            (
                count("global layer"),
                count("local layer"),
                count("· attn_norm")
            ),
            (2, 2, 3)
        );
        assert_eq!(report.rows_per_step, 2);
        assert!(
            report.tokens > 64 && report.tokens <= 128,
            "{}",
            report.tokens
        );
        assert!(report.masked > 0 && report.sequences >= 2);
        for row in &report.rows {
            assert!(row.step_ms.is_finite() && row.step_ms >= 0.0, "{row:?}");
            let timed = row.forward_ms.is_some() == row.forward_backward_ms.is_some();
            assert!(timed, "{row:?}");
        }
        let table = report.to_markdown();
        println!("{table}");
        let lines: Vec<&str> = table.lines().filter(|l| l.starts_with('|')).collect();
        assert_eq!(lines.len(), 2 + report.rows.len());
        assert_eq!(
            lines[0],
            "| stage | × | fwd ms | fwd+bwd ms | ms per step | % of step |"
        );
        for (line, row) in lines[2..].iter().zip(&report.rows) {
            assert!(
                line.starts_with(&format!("| {} | {} |", row.stage, row.count)),
                "{line}"
            );
        }
        assert!(lines.last().unwrap().ends_with("| 100.0% |"), "{table}");
    }
}
