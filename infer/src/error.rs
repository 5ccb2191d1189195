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
    /// A text is empty (or only whitespace): there is nothing to encode.
    #[error("input {index} is an empty text")]
    EmptyText {
        /// Which input (0-based).
        index: usize,
    },
    /// No texts were given.
    #[error("no input texts")]
    NoTexts,
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
    /// `max_batch_tokens` is zero.
    #[error("max_batch_tokens must be at least 1")]
    ZeroBatchTokens,
    /// The checkpoint lacks the head the task needs (e.g. classify on a masked-LM checkpoint).
    #[error(
        "{dir} has no {needs} head, so it cannot run {task}: its config.json says \
         architectures = {found}; use a checkpoint fine-tuned for {task}"
    )]
    NoHead {
        /// The task asked for.
        task: &'static str,
        /// The checkpoint directory.
        dir: PathBuf,
        /// The HF class the task needs.
        needs: &'static str,
        /// What config.json's `architectures` holds (or what the weights lack).
        found: String,
    },
    /// The classifier's weights have another number of classes than config.json's `id2label`.
    #[error(
        "{path}: the classifier has {weights} classes but config.json's id2label names \
         {id2label}; fix id2label (and label2id) in config.json"
    )]
    LabelCount {
        /// The weights file.
        path: PathBuf,
        /// Classes in `id2label`.
        id2label: usize,
        /// Rows of `classifier.weight`.
        weights: usize,
    },
    /// `--model` is neither a directory nor a HF hub id that could be fetched.
    #[error(
        "cannot get {model:?} from the HuggingFace hub: {reason}. Offline, download the \
         checkpoint on a machine with network access and pass its directory with --model DIR \
         (config.json, model.safetensors, tokenizer.json)"
    )]
    Hub {
        /// The hub id (or path) asked for.
        model: String,
        /// What went wrong.
        reason: String,
    },
    /// A sentence-transformers configuration we cannot follow.
    #[error("{path}: {reason}")]
    SentenceTransformers {
        /// The file.
        path: PathBuf,
        /// What is wrong or unsupported.
        reason: String,
    },
    /// Reading a result back from the device failed.
    #[error("reading results back from the device: {0}")]
    ReadBack(String),
}
