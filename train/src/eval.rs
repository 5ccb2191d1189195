//! The held-out evaluation: a fixed set of packed rows, masked once at the evaluation rate
//! with its own seed, so that every evaluation of a run scores the same tokens. Reports the
//! mean MLM loss and the masked-token accuracy.

use anyhow::{bail, Result};
use burn::tensor::ElementConversion;
use modernbert::{Backend, ModernBertConfig, ModernBertForMaskedLM};

use crate::data::RowStream;
use crate::masking::MaskingTokens;
use crate::mlm::{mlm_forward, HostBatch};
use crate::rng::Rng;

/// The evaluation batches.
#[derive(Debug, Clone)]
pub struct EvalSet {
    batches: Vec<HostBatch>,
}

/// Result of one evaluation.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EvalResult {
    /// Mean cross-entropy over all masked tokens.
    pub loss: f64,
    /// Fraction of masked tokens predicted exactly.
    pub accuracy: f64,
    /// Masked tokens scored.
    pub masked_tokens: usize,
}

impl EvalSet {
    /// Packs up to `rows` rows from `stream`, masks them at `rate` with `seed`, and groups
    /// them into batches of `batch_rows`.
    ///
    /// # Errors
    /// When reading fails, or the stream yields no row at all.
    pub fn new(
        stream: &mut RowStream,
        rows: usize,
        batch_rows: usize,
        rate: f64,
        tokens: &MaskingTokens,
        seed: u64,
    ) -> Result<Self> {
        let mut packed = Vec::new();
        while packed.len() < rows {
            match stream.next_row()? {
                Some(row) => packed.push(row),
                None => break,
            }
        }
        if packed.is_empty() {
            bail!(
                "the evaluation split is empty: set data.eval, or lower data.holdout_every \
                 (it must be 0 to train without evaluation)"
            );
        }
        let mut rng = Rng::new(seed);
        let batches = packed
            .chunks(batch_rows)
            .map(|chunk| HostBatch::new(chunk, rate, tokens, &mut rng))
            .collect();
        Ok(Self { batches })
    }

    /// Scores `model` (run it on a backend without autodiff: no dropout, no graph).
    ///
    /// # Errors
    /// When a batch does not fit the model.
    pub fn evaluate<B: Backend>(
        &self,
        model: &ModernBertForMaskedLM<B>,
        config: &ModernBertConfig,
        device: &B::Device,
    ) -> Result<EvalResult> {
        let (mut loss_sum, mut correct, mut masked) = (0.0f64, 0i64, 0usize);
        for batch in &self.batches {
            let out = mlm_forward(model, config, batch, device)?;
            loss_sum += out.loss.into_scalar().elem::<f64>() * out.num_masked as f64;
            correct += out.correct.into_scalar().elem::<i64>();
            masked += out.num_masked;
        }
        Ok(EvalResult {
            loss: loss_sum / masked as f64,
            accuracy: correct as f64 / masked as f64,
            masked_tokens: masked,
        })
    }
}
