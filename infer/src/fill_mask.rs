//! Fill-mask: the most likely tokens for each `[MASK]` of a text, with their probabilities
//! (as HF's `pipeline("fill-mask")`).

use std::path::Path;

use burn::tensor::{Int, Tensor, TensorData};
use modernbert::{Backend, ModernBertForMaskedLM, ModernBertInput};
use serde::Serialize;

use crate::error::InferError;
use crate::options::InferOptions;
use crate::pipeline::{to_host, token_ids, Pipeline, Task};

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
    /// Whether the text was cut to the model's length limit.
    pub truncated: bool,
}

/// A masked-language model with its tokenizer.
#[derive(Debug)]
pub struct FillMask<B: Backend> {
    pipeline: Pipeline<B, ModernBertForMaskedLM<B>>,
    mask_token_id: u32,
}

impl<B: Backend> FillMask<B> {
    /// Loads `config.json`, the weights and `tokenizer.json` of a `ModernBertForMaskedLM`
    /// checkpoint directory.
    ///
    /// # Errors
    /// [`InferError::NoHead`] for a checkpoint of another task, [`InferError::Load`] for a
    /// bad checkpoint, [`InferError::NoMaskToken`] when the tokenizer has no `[MASK]`.
    pub fn from_pretrained(dir: impl AsRef<Path>, device: &B::Device) -> Result<Self, InferError> {
        let pipeline = Pipeline::load(dir.as_ref(), Task::FillMask, device)?;
        let mask_token_id =
            pipeline
                .tokenizer
                .mask_token_id()
                .ok_or_else(|| InferError::NoMaskToken {
                    path: pipeline.dir.join("tokenizer.json"),
                })?;
        Ok(Self {
            pipeline,
            mask_token_id,
        })
    }

    /// Sets batching and truncation options.
    pub fn with_options(mut self, options: InferOptions) -> Self {
        self.pipeline.options = options;
        self
    }

    /// The model.
    pub fn model(&self) -> &ModernBertForMaskedLM<B> {
        &self.pipeline.model
    }

    /// Top-`top_k` tokens for each `[MASK]` of each text, results in input order.
    ///
    /// # Errors
    /// [`InferError::ZeroTopK`], [`InferError::EmptyText`], [`InferError::NoMask`] for a
    /// text without `[MASK]` (also when truncation cut it off), [`InferError::Input`] for a
    /// text over the limit under [`OverLong::Refuse`](crate::OverLong::Refuse).
    pub fn predict(&self, texts: &[&str], top_k: usize) -> Result<Vec<FillMaskOutput>, InferError> {
        if top_k == 0 {
            return Err(InferError::ZeroTopK);
        }
        let encoded = self.pipeline.encode(texts)?;
        let mask_positions = |ids: &[u32]| -> Vec<usize> {
            (0..ids.len())
                .filter(|&i| ids[i] == self.mask_token_id)
                .collect()
        };
        if let Some(index) = encoded
            .iter()
            .position(|e| mask_positions(&e.ids).is_empty())
        {
            return Err(InferError::NoMask {
                index,
                text: texts[index].to_string(),
            });
        }
        let config = self.pipeline.config();
        let device = &self.pipeline.device;
        let masks = self.pipeline.run(&encoded, |batch| {
            let input = ModernBertInput::from_token_ids(&token_ids(batch), config, device)?;
            let hidden = self.model().model.forward(input)?.last_hidden_state;
            let [rows, seq, h] = hidden.dims();
            // Flat row of every [MASK] in [rows * seq]; only those go through the head.
            let positions: Vec<Vec<usize>> = batch.iter().map(|e| mask_positions(&e.ids)).collect();
            let flat: Vec<i64> = positions
                .iter()
                .enumerate()
                .flat_map(|(row, p)| p.iter().map(move |&pos| (row * seq + pos) as i64))
                .collect();
            let count = flat.len();
            let flat = Tensor::<B, 1, Int>::from_data(TensorData::new(flat, [count]), device);
            let hidden = hidden.reshape([rows * seq, h]).select(0, flat);
            let logits = to_host(self.model().logits(hidden))?;
            let vocab = logits.len() / count;
            let mut chunks = logits.chunks_exact(vocab);
            Ok(positions
                .iter()
                .map(|p| {
                    p.iter()
                        .map(|_| self.top_k(chunks.next().expect("one row per mask"), top_k))
                        .collect::<Vec<_>>()
                })
                .collect::<Vec<_>>())
        })?;
        Ok(texts
            .iter()
            .zip(encoded)
            .zip(masks)
            .map(|((text, e), masks)| FillMaskOutput {
                text: text.to_string(),
                masks,
                truncated: e.truncated,
            })
            .collect())
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
                token: self
                    .pipeline
                    .tokenizer
                    .decode(&[id as u32])
                    .unwrap_or_default(),
                score: (logits[id] - max).exp() / sum,
            })
            .collect()
    }
}
