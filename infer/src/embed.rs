//! Sentence embeddings: the encoder's last hidden states pooled per text (`cls` or
//! `mean`), optionally L2-normalised, as sentence-transformers computes them for ModernBERT
//! embedders.

use std::path::Path;

use burn::tensor::DType;
use modernbert::{Backend, ModernBertInput, ModernBertModel, Pooling};
use serde::Serialize;

use crate::error::InferError;
use crate::options::InferOptions;
use crate::pipeline::{to_host, token_ids, Pipeline, Task};
use crate::sentence_transformers::SentenceTransformersConfig;

/// The embedding of one text.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Embedding {
    /// `[H]`, f32.
    pub embedding: Vec<f32>,
    /// Tokens the model saw, special tokens included.
    pub tokens: usize,
    /// Whether the text was cut to the model's length limit.
    pub truncated: bool,
}

/// An encoder with its tokenizer and pooling.
#[derive(Debug)]
pub struct Embedder<B: Backend> {
    pipeline: Pipeline<B, ModernBertModel<B>>,
    pooling: Pooling,
    normalize: bool,
}

impl<B: Backend> Embedder<B> {
    /// Loads the encoder of any ModernBERT checkpoint (task heads are ignored) and its
    /// tokenizer. Pooling and normalisation come from the sentence-transformers files
    /// (`modules.json`, `1_Pooling/config.json`) when the checkpoint has them, else
    /// `classifier_pooling` from config.json and no normalisation.
    ///
    /// # Errors
    /// [`InferError::Load`] for a bad checkpoint, [`InferError::SentenceTransformers`] for
    /// a pooling configuration this crate does not implement.
    pub fn from_pretrained(dir: impl AsRef<Path>, device: &B::Device) -> Result<Self, InferError> {
        let dir = dir.as_ref();
        let pipeline = Pipeline::<B, ModernBertModel<B>>::load(dir, Task::Embed, device)?;
        let (pooling, normalize) = match SentenceTransformersConfig::from_dir(dir)? {
            Some(st) => (st.pooling, st.normalize),
            None => (pipeline.config().classifier_pooling, false),
        };
        Ok(Self {
            pipeline,
            pooling,
            normalize,
        })
    }

    /// Overrides the pooling.
    pub fn with_pooling(mut self, pooling: Pooling) -> Self {
        self.pooling = pooling;
        self
    }

    /// Overrides L2 normalisation.
    pub fn with_normalize(mut self, normalize: bool) -> Self {
        self.normalize = normalize;
        self
    }

    /// Sets batching and truncation options.
    pub fn with_options(mut self, options: InferOptions) -> Self {
        self.pipeline.options = options;
        self
    }

    /// The pooling in use.
    pub fn pooling(&self) -> Pooling {
        self.pooling
    }

    /// Whether embeddings are L2-normalised.
    pub fn normalize(&self) -> bool {
        self.normalize
    }

    /// The encoder.
    pub fn model(&self) -> &ModernBertModel<B> {
        &self.pipeline.model
    }

    /// One embedding per text, in input order.
    ///
    /// # Errors
    /// [`InferError::EmptyText`], [`InferError::Input`] for a text over the limit under
    /// [`OverLong::Refuse`](crate::OverLong::Refuse).
    pub fn embed(&self, texts: &[&str]) -> Result<Vec<Embedding>, InferError> {
        let encoded = self.pipeline.encode(texts)?;
        let config = self.pipeline.config();
        let device = &self.pipeline.device;
        self.pipeline.run(&encoded, |batch| {
            let input = ModernBertInput::from_token_ids(&token_ids(batch), config, device)?;
            let output = self.model().forward(input)?;
            // Pool in f32: a mean over thousands of tokens in bf16 loses digits.
            let pooled = self.pooling.pool(
                output.last_hidden_state.cast(DType::F32),
                output.attention_mask,
            );
            let pooled = if self.normalize {
                // torch.nn.functional.normalize: x / max(‖x‖, 1e-12).
                let norm = pooled
                    .clone()
                    .powi_scalar(2)
                    .sum_dim(1)
                    .sqrt()
                    .clamp_min(1e-12);
                pooled / norm
            } else {
                pooled
            };
            let [_, h] = pooled.dims();
            let values = to_host(pooled)?;
            Ok(values
                .chunks_exact(h)
                .zip(batch)
                .map(|(row, e)| Embedding {
                    embedding: row.to_vec(),
                    tokens: e.ids.len(),
                    truncated: e.truncated,
                })
                .collect())
        })
    }
}
