//! The MLM objective on packed rows: mask on the host, run the encoder unpadded over all
//! sequences of the batch, gather the masked positions and run the head and decoder on
//! those rows only (sparse prediction: 30% of the tokens instead of all), cross-entropy in
//! f32.

use anyhow::{Context, Result};
use burn::tensor::activation::log_softmax;
use burn::tensor::{DType, FloatDType, Int, Tensor, TensorData};
use modernbert::{Backend, ModernBertConfig, ModernBertForMaskedLM, UnpaddedInput};

use crate::data::PackedRow;
use crate::masking::{mask_tokens, MaskingTokens};
use crate::rng::Rng;

/// A masked batch on the host, ready to be sent to any device (evaluation keeps these).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostBatch {
    /// Each packed sequence (document piece) of the batch, masked.
    pub sequences: Vec<Vec<u32>>,
    /// Positions of the masked tokens in the concatenation of `sequences`.
    pub positions: Vec<i64>,
    /// Original ids at `positions`.
    pub labels: Vec<i64>,
}

impl HostBatch {
    /// Masks `rows` at `rate`.
    pub fn new(rows: &[PackedRow], rate: f64, tokens: &MaskingTokens, rng: &mut Rng) -> Self {
        let mut batch = HostBatch {
            sequences: Vec::new(),
            positions: Vec::new(),
            labels: Vec::new(),
        };
        let mut offset = 0;
        for row in rows {
            let masked = mask_tokens(&row.input_ids, rate, tokens, rng);
            batch
                .positions
                .extend(masked.positions.iter().map(|&p| (offset + p) as i64));
            batch.labels.extend(masked.labels.iter().map(|&l| l as i64));
            let mut start = 0;
            for &len in &row.seqlens {
                batch
                    .sequences
                    .push(masked.input_ids[start..start + len].to_vec());
                start += len;
            }
            offset += row.input_ids.len();
        }
        batch
    }

    /// Real tokens in the batch.
    pub fn num_tokens(&self) -> usize {
        self.sequences.iter().map(Vec::len).sum()
    }
}

/// What one forward pass gives.
#[derive(Debug, Clone)]
pub struct MlmOutput<B: Backend> {
    /// Mean cross-entropy over the masked tokens, f32. `[1]`
    pub loss: Tensor<B, 1>,
    /// Masked tokens whose arg-max prediction is the label. `[1]`
    pub correct: Tensor<B, 1, Int>,
    /// Number of masked tokens.
    pub num_masked: usize,
}

/// Runs the model on `batch` and scores the masked positions.
///
/// # Errors
/// When the batch is malformed for the model (a token id out of the vocabulary, a
/// sequence over `max_position_embeddings`, no masked token).
pub fn mlm_forward<B: Backend>(
    model: &ModernBertForMaskedLM<B>,
    config: &ModernBertConfig,
    batch: &HostBatch,
    device: &B::Device,
) -> Result<MlmOutput<B>> {
    let num_masked = batch.positions.len();
    anyhow::ensure!(num_masked > 0, "the batch has no masked token");
    let input = UnpaddedInput::from_token_ids(&batch.sequences, config, device)
        .context("building the unpadded MLM batch")?;
    let positions = Tensor::<B, 1, Int>::from_data(
        TensorData::new(batch.positions.clone(), [num_masked]),
        device,
    );
    let labels =
        Tensor::<B, 1, Int>::from_data(TensorData::new(batch.labels.clone(), [num_masked]), device);
    let hidden = model.model.forward_unpadded(&input); // [total_nnz, H]
    let logits = model.logits(hidden.select(0, positions)); // [num_masked, vocab]
                                                            // Softmax over ~50k classes in f32 even when the model runs in bf16.
    let logits = match logits.dtype() {
        DType::F32 => logits,
        _ => logits.cast(FloatDType::F32),
    };
    let correct = logits
        .clone()
        .argmax(1)
        .reshape([num_masked])
        .equal(labels.clone())
        .int()
        .sum();
    let log_probs = log_softmax(logits, 1);
    let loss = log_probs
        .gather(1, labels.reshape([num_masked, 1]))
        .mean()
        .neg();
    Ok(MlmOutput {
        loss,
        correct,
        num_masked,
    })
}
