//! Token classification: a label per token (e.g. named entities), with its softmax score,
//! as HF's `pipeline("token-classification")` without entity grouping.

use std::path::Path;

use burn::tensor::activation::softmax;
use burn::tensor::DType;
use modernbert::{Backend, ModernBertForTokenClassification, ModernBertInput};
use serde::Serialize;

use crate::classify::best;
use crate::error::InferError;
use crate::options::InferOptions;
use crate::pipeline::{to_host, token_ids, Pipeline, Task};

/// The label of one token.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TokenLabel {
    /// Position in the tokenized text (`[CLS]` is 0).
    pub index: usize,
    /// Token id.
    pub token_id: u32,
    /// The token as decoded text.
    pub token: String,
    /// The most likely class, from `id2label`.
    pub label: String,
    /// Its softmax probability.
    pub score: f32,
}

/// The token labels of one text; `[CLS]` and `[SEP]` are left out.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TokenClassification {
    /// One entry per token, in order.
    pub tokens: Vec<TokenLabel>,
    /// Whether the text was cut to the model's length limit.
    pub truncated: bool,
}

/// A token classifier with its tokenizer.
#[derive(Debug)]
pub struct TokenClassifier<B: Backend> {
    pipeline: Pipeline<B, ModernBertForTokenClassification<B>>,
}

impl<B: Backend> TokenClassifier<B> {
    /// Loads a `ModernBertForTokenClassification` checkpoint directory.
    ///
    /// # Errors
    /// [`InferError::NoHead`] for a checkpoint of another task, [`InferError::LabelCount`]
    /// when the classifier's size disagrees with `id2label`, [`InferError::Load`].
    pub fn from_pretrained(dir: impl AsRef<Path>, device: &B::Device) -> Result<Self, InferError> {
        Ok(Self {
            pipeline: Pipeline::load(dir.as_ref(), Task::TokenClassify, device)?,
        })
    }

    /// Sets batching and truncation options.
    pub fn with_options(mut self, options: InferOptions) -> Self {
        self.pipeline.options = options;
        self
    }

    /// The model.
    pub fn model(&self) -> &ModernBertForTokenClassification<B> {
        &self.pipeline.model
    }

    /// Labels for the tokens of each text, in input order.
    ///
    /// # Errors
    /// [`InferError::EmptyText`], [`InferError::Input`] for a text over the limit under
    /// [`OverLong::Refuse`](crate::OverLong::Refuse).
    pub fn classify(&self, texts: &[&str]) -> Result<Vec<TokenClassification>, InferError> {
        let encoded = self.pipeline.encode(texts)?;
        let config = self.pipeline.config();
        let device = &self.pipeline.device;
        let labels = &config.id2label;
        let special = [config.cls_token_id, config.sep_token_id];
        let tokenizer = &self.pipeline.tokenizer;
        self.pipeline.run(&encoded, |batch| {
            let input = ModernBertInput::from_token_ids(&token_ids(batch), config, device)?;
            let logits = self.model().forward(input)?.logits;
            let [_, seq, classes] = logits.dims();
            let probs = to_host(softmax(logits.cast(DType::F32), 2))?;
            Ok(batch
                .iter()
                .enumerate()
                .map(|(row, e)| TokenClassification {
                    tokens: e
                        .ids
                        .iter()
                        .enumerate()
                        .filter(|(_, id)| !special.contains(id))
                        .map(|(index, &token_id)| {
                            let start = (row * seq + index) * classes;
                            let scores = &probs[start..start + classes];
                            let top = best(scores);
                            TokenLabel {
                                index,
                                token_id,
                                token: tokenizer.decode(&[token_id]).unwrap_or_default(),
                                label: labels[top].clone(),
                                score: scores[top],
                            }
                        })
                        .collect(),
                    truncated: e.truncated,
                })
                .collect())
        })
    }
}
