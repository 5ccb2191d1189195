//! Errors of the inference API.

use std::path::PathBuf;

use modernbert::{InputError, LoadError};

/// Why an inference call failed.
#[derive(Debug, thiserror::Error)]
pub enum InferError {
    /// The checkpoint could not be loaded.
    #[error(transparent)]
    Load(#[from] LoadError),
    /// An input cannot be run.
    #[error(transparent)]
    Input(#[from] InputError),
    /// fill-mask got a text without `[MASK]`.
    #[error("input {index} has no [MASK] token: {text:?}")]
    NoMask {
        /// Which input.
        index: usize,
        /// The text.
        text: String,
    },
    /// The checkpoint's tokenizer has no `[MASK]` token, so fill-mask cannot run.
    #[error("{path} has no [MASK] token; fill-mask needs one")]
    NoMaskToken {
        /// The tokenizer file.
        path: PathBuf,
    },
    /// `top_k` is zero.
    #[error("top_k must be at least 1")]
    ZeroTopK,
}
