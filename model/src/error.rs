//! Error types of the `modernbert` crate.
//!
//! Every failure a user can cause (a bad file, a bad config, a bad input) is one of these
//! enums, naming the file, key or field involved; nothing in this crate panics on user input.

use std::path::PathBuf;

/// A `config.json` (or a [`ModernBertConfig`](crate::ModernBertConfig) built by hand) that
/// this implementation cannot run.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A field holds a value outside its valid range.
    #[error("config field `{field}` is invalid: {reason}")]
    Invalid {
        /// The config.json key.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// A field holds a valid HF value that this implementation does not support.
    #[error("config field `{field}` = {value} is not supported: {reason}")]
    Unsupported {
        /// The config.json key.
        field: &'static str,
        /// The value found.
        value: String,
        /// What is supported instead.
        reason: String,
    },
}

/// Loading a checkpoint directory (config.json, safetensors, tokenizer.json) failed.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// A file could not be read (missing, unreadable).
    #[error("cannot read {path}: {error}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        error: std::io::Error,
    },
    /// A JSON file is not valid JSON or lacks required fields.
    #[error("{path} is not a valid {what}: {reason}")]
    Json {
        /// The file.
        path: PathBuf,
        /// What the file should be (e.g. "ModernBERT config.json").
        what: &'static str,
        /// The parser's message.
        reason: String,
    },
    /// config.json parsed, but describes a model we cannot build.
    #[error("{path}: {error}")]
    Config {
        /// The config.json file.
        path: PathBuf,
        /// What is wrong.
        error: ConfigError,
    },
    /// The directory holds neither `model.safetensors` nor `model.safetensors.index.json`.
    #[error("no weights in {dir}: expected model.safetensors or model.safetensors.index.json")]
    NoWeights {
        /// The checkpoint directory.
        dir: PathBuf,
    },
    /// A safetensors file is truncated or its header is corrupt.
    #[error("{path} is not a valid safetensors file: {reason}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// The parser's message.
        reason: String,
    },
    /// A tensor is stored in a dtype we cannot convert to float.
    #[error("{path}: tensor `{key}` has dtype {dtype}; expected F32, F16, BF16 or F64")]
    Dtype {
        /// The file.
        path: PathBuf,
        /// The tensor's key.
        key: String,
        /// The dtype found.
        dtype: String,
    },
    /// A tensor's shape disagrees with config.json.
    #[error("{path}: tensor `{key}` has shape {found:?}, but config.json implies {expected:?}")]
    Shape {
        /// The file.
        path: PathBuf,
        /// The tensor's key.
        key: String,
        /// The shape the config implies (HF layout).
        expected: Vec<usize>,
        /// The shape in the file.
        found: Vec<usize>,
    },
    /// Keys the model needs are absent, or the file holds keys the model does not have.
    #[error(
        "{path}: weights do not match the model{}{}",
        list("missing keys", missing),
        list("unexpected keys", unexpected)
    )]
    Keys {
        /// The weights file (or index) checked.
        path: PathBuf,
        /// Keys the model needs that the checkpoint lacks.
        missing: Vec<String>,
        /// Keys in the checkpoint that the model does not use.
        unexpected: Vec<String>,
    },
    /// The tied decoder weight is present in the file but differs from `tok_embeddings`.
    #[error(
        "{path}: `decoder.weight` differs from `model.embeddings.tok_embeddings.weight`, \
         but config.json says tie_word_embeddings = true"
    )]
    TiedWeightMismatch {
        /// The file.
        path: PathBuf,
    },
    /// tokenizer.json could not be loaded or disagrees with config.json.
    #[error("{path}: {reason}")]
    Tokenizer {
        /// The tokenizer file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

fn list(label: &str, keys: &[String]) -> String {
    if keys.is_empty() {
        String::new()
    } else {
        format!("; {label} ({}): {}", keys.len(), keys.join(", "))
    }
}

/// Writing a checkpoint failed.
#[derive(Debug, thiserror::Error)]
pub enum SaveError {
    /// A file or directory could not be written.
    #[error("cannot write {path}: {error}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        error: std::io::Error,
    },
    /// The safetensors serializer refused the tensors.
    #[error("cannot serialize {path}: {reason}")]
    Serialize {
        /// The file.
        path: PathBuf,
        /// The serializer's message.
        reason: String,
    },
}

/// An input the model cannot run on.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum InputError {
    /// No sequences, or a sequence with no tokens.
    #[error("empty input: {0}")]
    Empty(String),
    /// A sequence is longer than the model's `max_position_embeddings`.
    #[error(
        "sequence {index} has {len} tokens, more than max_position_embeddings = {max}; \
         truncate it (e.g. Truncation::MaxLength) or split it"
    )]
    TooLong {
        /// Which sequence of the batch.
        index: usize,
        /// Its length in tokens.
        len: usize,
        /// The model's limit.
        max: usize,
    },
    /// A token id is not below the vocabulary size.
    #[error("sequence {index} holds token id {id}, but vocab_size is {vocab_size}")]
    TokenOutOfRange {
        /// Which sequence of the batch.
        index: usize,
        /// The offending id.
        id: u32,
        /// The model's vocabulary size.
        vocab_size: usize,
    },
    /// Input tensors disagree in shape.
    #[error("shape mismatch: {0}")]
    Shape(String),
    /// The tokenizer failed on a text.
    #[error("cannot tokenize input {index}: {reason}")]
    Tokenize {
        /// Which text of the batch.
        index: usize,
        /// The tokenizer's message.
        reason: String,
    },
}
