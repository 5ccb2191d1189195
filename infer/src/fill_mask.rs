//! Fill-mask: the most likely tokens for each `[MASK]` of a text, with their probabilities
//! (as HF's `pipeline("fill-mask")`).

use std::path::Path;

use modernbert::Backend;
use modernbert::{HfModel, ModernBertForMaskedLM, ModernBertTokenizer, Truncation};
use serde::Serialize;

use crate::error::InferError;

/// One candidate token for a `[MASK]`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Prediction {
    /// Token id.
    pub token_id: u32,
    /// The token as decoded text (leading space kept, as in the vocabulary).
    pub token: String,
    /// Softmax probability over the vocabulary.
    pub score: f32,
}

/// The predictions for every `[MASK]` of one text, in order of appearance.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FillMaskOutput {
    /// The input text.
    pub text: String,
    /// `masks[i]`: the top-k candidates of the i-th `[MASK]`, most likely first.
    pub masks: Vec<Vec<Prediction>>,
}

/// A masked-language model with its tokenizer.
#[derive(Debug)]
pub struct FillMask<B: Backend> {
    model: ModernBertForMaskedLM<B>,
    tokenizer: ModernBertTokenizer,
    mask_token_id: u32,
    device: B::Device,
}

impl<B: Backend> FillMask<B> {
    /// Loads `config.json`, the weights and `tokenizer.json` from a checkpoint directory.
    ///
    /// # Errors
    /// [`InferError::Load`] for a bad checkpoint, [`InferError::NoMaskToken`] when the
    /// tokenizer has no `[MASK]`.
    pub fn from_pretrained(dir: impl AsRef<Path>, device: &B::Device) -> Result<Self, InferError> {
        let dir = dir.as_ref();
        let model = ModernBertForMaskedLM::<B>::from_pretrained(dir, device)?;
        let tokenizer_path = dir.join("tokenizer.json");
        let tokenizer = ModernBertTokenizer::from_file(&tokenizer_path, &model.model.config)?;
        let mask_token_id = tokenizer.mask_token_id().ok_or(InferError::NoMaskToken {
            path: tokenizer_path,
        })?;
        Ok(Self {
            model,
            tokenizer,
            mask_token_id,
            device: device.clone(),
        })
    }

    /// Top-`top_k` tokens for each `[MASK]` of each text, in one batch.
    ///
    /// # Errors
    /// [`InferError::NoMask`] for a text without `[MASK]`, [`InferError::Input`] for empty or
    /// over-long texts, [`InferError::ZeroTopK`].
    pub fn predict(&self, texts: &[&str], top_k: usize) -> Result<Vec<FillMaskOutput>, InferError> {
        if top_k == 0 {
            return Err(InferError::ZeroTopK);
        }
        let batch = self.tokenizer.encode_batch(texts, Truncation::Refuse)?;
        // (row, position) of every [MASK], per text.
        let masks: Vec<Vec<usize>> = batch
            .input_ids
            .iter()
            .zip(&batch.attention_mask)
            .map(|(ids, keep)| {
                (0..ids.len())
                    .filter(|&i| keep[i] == 1 && ids[i] == self.mask_token_id)
                    .collect()
            })
            .collect();
        if let Some(index) = masks.iter().position(Vec::is_empty) {
            return Err(InferError::NoMask {
                index,
                text: texts[index].to_string(),
            });
        }
        let config = &self.model.model.config;
        let logits = self
            .model
            .forward(batch.to_input(config, &self.device)?)?
            .logits;
        let [_, seq, vocab] = logits.dims();
        // One read-back of the whole logits tensor (a CPU–GPU sync point), then host softmax.
        let logits: Vec<f32> = logits
            .into_data()
            .convert::<f32>()
            .to_vec()
            .expect("converted to f32");
        let outputs = texts
            .iter()
            .zip(masks)
            .enumerate()
            .map(|(row, (text, positions))| FillMaskOutput {
                text: text.to_string(),
                masks: positions
                    .into_iter()
                    .map(|pos| {
                        let start = (row * seq + pos) * vocab;
                        self.top_k(&logits[start..start + vocab], top_k)
                    })
                    .collect(),
            })
            .collect();
        Ok(outputs)
    }

    fn top_k(&self, logits: &[f32], k: usize) -> Vec<Prediction> {
        let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let sum: f32 = logits.iter().map(|&l| (l - max).exp()).sum();
        let mut order: Vec<usize> = (0..logits.len()).collect();
        order.sort_unstable_by(|&a, &b| logits[b].total_cmp(&logits[a]));
        order
            .into_iter()
            .take(k)
            .map(|id| Prediction {
                token_id: id as u32,
                token: self.tokenizer.decode(&[id as u32]).unwrap_or_default(),
                score: (logits[id] - max).exp() / sum,
            })
            .collect()
    }
}
