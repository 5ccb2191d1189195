//! Sequence classification: one label per text, with softmax scores over the classes
//! named by config.json's `id2label` (HF `pipeline("text-classification")`).

use std::path::Path;

use burn::tensor::activation::softmax;
use burn::tensor::DType;
use modernbert::{Backend, ModernBertForSequenceClassification, ModernBertInput};
use serde::Serialize;

use crate::error::InferError;
use crate::options::InferOptions;
use crate::pipeline::{to_host, token_ids, Pipeline, Task};

/// A class and its probability.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LabelScore {
    /// The class name from `id2label`.
    pub label: String,
    /// Softmax probability.
    pub score: f32,
}

/// The classification of one text.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Classification {
    /// The most likely class.
    pub label: String,
    /// Its probability.
    pub score: f32,
    /// Every class, in label-id order.
    pub scores: Vec<LabelScore>,
    /// Whether the text was cut to the model's length limit.
    pub truncated: bool,
}

/// The label with the highest score (the first on ties).
pub(crate) fn best(scores: &[f32]) -> usize {
    (0..scores.len()).fold(0, |best, i| if scores[i] > scores[best] { i } else { best })
}

/// A sequence classifier with its tokenizer.
#[derive(Debug)]
pub struct Classifier<B: Backend> {
    pipeline: Pipeline<B, ModernBertForSequenceClassification<B>>,
}

impl<B: Backend> Classifier<B> {
    /// Loads a `ModernBertForSequenceClassification` checkpoint directory.
    ///
    /// # Errors
    /// [`InferError::NoHead`] for a checkpoint of another task, [`InferError::LabelCount`]
    /// when the classifier's size disagrees with `id2label`, [`InferError::Load`].
    pub fn from_pretrained(dir: impl AsRef<Path>, device: &B::Device) -> Result<Self, InferError> {
        Ok(Self {
            pipeline: Pipeline::load(dir.as_ref(), Task::Classify, device)?,
        })
    }

    /// Sets batching and truncation options.
    pub fn with_options(mut self, options: InferOptions) -> Self {
        self.pipeline.options = options;
        self
    }

    /// The model.
    pub fn model(&self) -> &ModernBertForSequenceClassification<B> {
        &self.pipeline.model
    }

    /// The class names, by label id.
    pub fn labels(&self) -> &[String] {
        &self.pipeline.config().id2label
    }

    /// One classification per text, in input order.
    ///
    /// # Errors
    /// [`InferError::EmptyText`], [`InferError::Input`] for a text over the limit under
    /// [`OverLong::Refuse`](crate::OverLong::Refuse).
    pub fn classify(&self, texts: &[&str]) -> Result<Vec<Classification>, InferError> {
        let encoded = self.pipeline.encode(texts)?;
        let config = self.pipeline.config();
        let device = &self.pipeline.device;
        let labels = self.labels();
        self.pipeline.run(&encoded, |batch| {
            let input = ModernBertInput::from_token_ids(&token_ids(batch), config, device)?;
            let logits = self.model().forward(input)?.logits;
            let probs = to_host(softmax(logits.cast(DType::F32), 1))?;
            Ok(probs
                .chunks_exact(labels.len())
                .zip(batch)
                .map(|(row, e)| {
                    let top = best(row);
                    Classification {
                        label: labels[top].clone(),
                        score: row[top],
                        scores: labels
                            .iter()
                            .zip(row)
                            .map(|(label, &score)| LabelScore {
                                label: label.clone(),
                                score,
                            })
                            .collect(),
                        truncated: e.truncated,
                    }
                })
                .collect())
        })
    }
}
