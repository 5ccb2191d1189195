//! The MLM objective on packed rows: mask on the host, run the encoder unpadded over all
//! sequences of the batch, gather the masked positions and run the head and decoder on
//! those rows only (sparse prediction: 30% of the tokens instead of all), cross-entropy in
//! f32.

use anyhow::{Context, Result};
use burn::tensor::{Int, Tensor, TensorData};
use modernbert::{Backend, ModernBertConfig, ModernBertForMaskedLM, UnpaddedInput};
use modernbert_kernels::{cross_entropy, select_rows, CrossEntropyOutput};

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

/// The masked positions of a batch and their labels, on the device.
#[derive(Debug, Clone)]
pub struct MaskedTargets<B: Backend> {
    /// Rows of the packed hidden states to predict. `[num_masked]`
    pub positions: Tensor<B, 1, Int>,
    /// Original ids at `positions`. `[num_masked]`
    pub labels: Tensor<B, 1, Int>,
}

impl HostBatch {
    /// Uploads the masked positions and labels to `device`.
    ///
    /// # Errors
    /// When the batch has no masked token (the loss would be a mean over nothing).
    pub fn targets<B: Backend>(&self, device: &B::Device) -> Result<MaskedTargets<B>> {
        let num_masked = self.positions.len();
        anyhow::ensure!(num_masked > 0, "the batch has no masked token");
        let upload = |values: &[i64]| {
            Tensor::<B, 1, Int>::from_data(TensorData::new(values.to_vec(), [num_masked]), device)
        };
        Ok(MaskedTargets {
            positions: upload(&self.positions),
            labels: upload(&self.labels),
        })
    }
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
    let targets = batch.targets(device)?;
    let input = UnpaddedInput::from_token_ids(&batch.sequences, config, device)
        .context("building the unpadded MLM batch")?;
    let hidden = model.model.forward_unpadded(&input); // [total_nnz, H]
    mlm_loss(model, hidden, &targets)
}

/// The head and decoder on the masked rows of the encoder's output only (sparse
/// prediction), and the cross-entropy against the labels, in f32.
///
/// # Shapes
/// - hidden: `[total_nnz, H]`
///
/// # Errors
/// When the labels do not match the masked rows, or the vocabulary is empty.
pub fn mlm_loss<B: Backend>(
    model: &ModernBertForMaskedLM<B>,
    hidden: Tensor<B, 2>,
    targets: &MaskedTargets<B>,
) -> Result<MlmOutput<B>> {
    let [num_masked] = targets.labels.dims();
    // The head on the masked rows only: [num_masked, vocab].
    let logits = model.logits(select_rows(hidden, targets.positions.clone()));
    // Softmax over ~50k classes in f32 even when the model runs in bf16.
    let CrossEntropyOutput { loss, predicted } = cross_entropy(logits, targets.labels.clone())
        .context("the MLM loss over the masked tokens")?;
    let correct = predicted.equal(targets.labels.clone()).int().sum();
    Ok(MlmOutput {
        loss: loss.mean(),
        correct,
        num_masked,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::{Autodiff, NdArray};
    use burn::module::AutodiffModule;
    use burn::tensor::backend::Backend as _;
    use modernbert::{LayerType, ModernBertInput};

    fn config(dropout: f64) -> ModernBertConfig {
        ModernBertConfig::base()
            .with_vocab_size(64)
            .with_hidden_size(32)
            .with_intermediate_size(48)
            .with_num_hidden_layers(2)
            .with_num_attention_heads(2)
            .with_layer_types(LayerType::every_nth_global(2, 3))
            .with_pad_token_id(0)
            .with_cls_token_id(1)
            .with_sep_token_id(2)
            .with_attention_dropout(dropout)
    }

    fn batch() -> HostBatch {
        let rows = [
            PackedRow {
                input_ids: vec![1, 10, 11, 12, 2, 1, 13, 14, 2],
                seqlens: vec![5, 4],
            },
            PackedRow {
                input_ids: vec![1, 20, 21, 22, 23, 24, 2],
                seqlens: vec![7],
            },
        ];
        let tokens = MaskingTokens {
            mask: 3,
            never: [1, 2, 0],
            vocab_size: 64,
        };
        HostBatch::new(&rows, 0.5, &tokens, &mut Rng::new(9))
    }

    #[test]
    fn sparse_prediction_equals_the_loss_over_full_logits() {
        let _rng = crate::NDARRAY_RNG
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        type B = NdArray;
        let device = Default::default();
        let config = config(0.0);
        let model = config.init_masked_lm::<B>(&device);
        let batch = batch();
        assert_eq!(batch.sequences.len(), 3);
        let out = mlm_forward(&model, &config, &batch, &device).unwrap();
        let sparse = out.loss.into_scalar() as f64;
        // Reference: the padded forward over every position, then the mean NLL at the
        // masked ones.
        let input = ModernBertInput::from_token_ids(&batch.sequences, &config, &device).unwrap();
        let logits = model.forward(input).unwrap().logits; // [3, 7, 64]
        let log_probs = burn::tensor::activation::log_softmax(logits, 2);
        let mut starts = vec![0];
        for s in &batch.sequences {
            starts.push(starts.last().unwrap() + s.len());
        }
        let mut total = 0.0;
        for (&pos, &label) in batch.positions.iter().zip(&batch.labels) {
            let seq = starts.iter().rposition(|&s| s <= pos as usize).unwrap();
            let col = pos as usize - starts[seq];
            let lp: f32 = log_probs
                .clone()
                .slice([
                    seq..seq + 1,
                    col..col + 1,
                    label as usize..label as usize + 1,
                ])
                .into_scalar();
            total -= lp as f64;
        }
        let full = total / batch.positions.len() as f64;
        println!("sparse {sparse} full {full}");
        assert!(
            (sparse - full).abs() < 1e-5,
            "sparse {sparse} vs full {full}"
        );
    }

    #[test]
    fn attention_output_dropout_is_active_in_training_only() {
        let _rng = crate::NDARRAY_RNG
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        type B = Autodiff<NdArray>;
        let device = Default::default();
        let config = config(0.5);
        let model = config.init_masked_lm::<B>(&device);
        let batch = batch();
        let loss = |seed| {
            B::seed(&device, seed);
            let l: f32 = mlm_forward(&model, &config, &batch, &device)
                .unwrap()
                .loss
                .into_scalar();
            l
        };
        loss(0); // runs Burn's lazy parameter init, which draws from the same RNG
        let (a, b, a_again) = (loss(1), loss(2), loss(1));
        assert_ne!(a, b, "dropout must change the training loss");
        assert_eq!(a, a_again, "the same seed must give the same masks");
        let valid = model.valid();
        let eval = |seed| {
            B::seed(&device, seed);
            let l: f32 = mlm_forward(&valid, &config, &batch, &device)
                .unwrap()
                .loss
                .into_scalar();
            l
        };
        assert_eq!(eval(1), eval(2), "no dropout without autodiff");
    }
}
