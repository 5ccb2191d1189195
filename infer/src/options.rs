//! Options shared by every pipeline: how texts are batched and what happens to texts over
//! the model's length limit.

use std::sync::Arc;

use clap::ValueEnum;

use crate::error::InferError;

/// What to do with a text longer than the model's `max_position_embeddings` tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum)]
pub enum OverLong {
    /// Cut it to the limit (special tokens included, as HF's `truncation=True`); the result
    /// is marked `truncated` so the caller can warn.
    #[default]
    Truncate,
    /// Refuse the whole call with an error naming the text.
    Refuse,
}

/// Called after every batch with the number of texts finished so far.
pub type Progress = Arc<dyn Fn(usize) + Send + Sync>;

/// How a pipeline runs a list of texts.
#[derive(Clone)]
pub struct InferOptions {
    /// Most tokens in one forward pass, counted as `sequences × longest` (the padded size
    /// of the output). Texts are sorted by length first, so this is close to the real
    /// tokens; a single text longer than the cap runs alone.
    pub max_batch_tokens: usize,
    /// Truncate or refuse over-long texts.
    pub over_long: OverLong,
    /// Progress callback, if any.
    pub progress: Option<Progress>,
}

impl Default for InferOptions {
    fn default() -> Self {
        Self {
            max_batch_tokens: 16384,
            over_long: OverLong::default(),
            progress: None,
        }
    }
}

impl std::fmt::Debug for InferOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InferOptions")
            .field("max_batch_tokens", &self.max_batch_tokens)
            .field("over_long", &self.over_long)
            .field("progress", &self.progress.is_some())
            .finish()
    }
}

impl InferOptions {
    /// Sets [`max_batch_tokens`](Self::max_batch_tokens).
    pub fn with_max_batch_tokens(mut self, tokens: usize) -> Self {
        self.max_batch_tokens = tokens;
        self
    }

    /// Sets [`over_long`](Self::over_long).
    pub fn with_over_long(mut self, over_long: OverLong) -> Self {
        self.over_long = over_long;
        self
    }

    /// Sets the progress callback.
    pub fn with_progress(mut self, progress: Progress) -> Self {
        self.progress = Some(progress);
        self
    }

    /// # Errors
    /// [`InferError::ZeroBatchTokens`].
    pub(crate) fn check(&self) -> Result<(), InferError> {
        if self.max_batch_tokens == 0 {
            return Err(InferError::ZeroBatchTokens);
        }
        Ok(())
    }
}
