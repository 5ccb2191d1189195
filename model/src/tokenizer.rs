//! Tokenization with the `tokenizers` crate from a checkpoint's `tokenizer.json`, checked
//! against config.json's special-token ids; batch encoding with right padding and optional
//! truncation.

use std::path::Path;

use burn::tensor::backend::Backend;
use tokenizers::{Tokenizer, TruncationDirection};

use crate::config::ModernBertConfig;
use crate::error::{InputError, LoadError};
use crate::model::ModernBertInput;

/// What to do with a text longer than the limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Truncation {
    /// Refuse it with [`InputError::TooLong`] (the limit is `max_position_embeddings`).
    Refuse,
    /// Cut it to this many tokens, special tokens included (HF `truncation=True,
    /// max_length=n`); must not exceed `max_position_embeddings`.
    MaxLength(usize),
}

/// A ModernBERT tokenizer: `[CLS] text [SEP]`, byte-level BPE.
#[derive(Debug, Clone)]
pub struct ModernBertTokenizer {
    inner: Tokenizer,
    pad_token_id: u32,
    mask_token_id: Option<u32>,
    max_position_embeddings: usize,
}

/// Token ids of a batch, right-padded to the longest sequence.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenizedBatch {
    /// `[batch][seq]`, padded with `pad_token_id`.
    pub input_ids: Vec<Vec<u32>>,
    /// `[batch][seq]`, 1 = real token, 0 = padding.
    pub attention_mask: Vec<Vec<u32>>,
    /// Whether each text was cut by [`Truncation::MaxLength`].
    pub truncated: Vec<bool>,
}

impl ModernBertTokenizer {
    /// Loads `tokenizer.json` and checks it against the model's config: the vocabulary must
    /// fit in `vocab_size`, and `[PAD]`/`[CLS]`/`[SEP]`, when present, must have the
    /// config's ids.
    ///
    /// # Errors
    /// [`LoadError::Io`] if the file is missing, [`LoadError::Tokenizer`] if it cannot be
    /// parsed or disagrees with the config.
    pub fn from_file(path: impl AsRef<Path>, config: &ModernBertConfig) -> Result<Self, LoadError> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|error| LoadError::Io {
            path: path.to_path_buf(),
            error,
        })?;
        Self::from_bytes(path, &bytes, config)
    }

    /// As [`from_file`](Self::from_file), for a `tokenizer.json` held in memory (e.g. a file
    /// picked in a browser); `path` only names it in errors.
    ///
    /// # Errors
    /// [`LoadError::Tokenizer`] if it cannot be parsed or disagrees with the config.
    pub fn from_bytes(
        path: impl AsRef<Path>,
        bytes: &[u8],
        config: &ModernBertConfig,
    ) -> Result<Self, LoadError> {
        let path = path.as_ref();
        let mut inner = Tokenizer::from_bytes(bytes).map_err(|e| LoadError::Tokenizer {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        // Padding and truncation are ours to apply, per call.
        inner.with_padding(None);
        inner
            .with_truncation(None)
            .map_err(|e| LoadError::Tokenizer {
                path: path.to_path_buf(),
                reason: e.to_string(),
            })?;
        let mismatch = |reason: String| {
            Err(LoadError::Tokenizer {
                path: path.to_path_buf(),
                reason,
            })
        };
        let vocab = inner.get_vocab_size(true);
        if vocab > config.vocab_size {
            return mismatch(format!(
                "has {vocab} tokens, more than config.json's vocab_size {}",
                config.vocab_size
            ));
        }
        for (token, id) in [
            ("[PAD]", config.pad_token_id),
            ("[CLS]", config.cls_token_id),
            ("[SEP]", config.sep_token_id),
        ] {
            if let Some(found) = inner.token_to_id(token).filter(|&found| found != id) {
                return mismatch(format!("{token} has id {found}, but config.json says {id}"));
            }
        }
        Ok(Self {
            mask_token_id: inner.token_to_id("[MASK]"),
            inner,
            pad_token_id: config.pad_token_id,
            max_position_embeddings: config.max_position_embeddings,
        })
    }

    /// Id of `[MASK]`, if the vocabulary has it.
    pub fn mask_token_id(&self) -> Option<u32> {
        self.mask_token_id
    }

    /// The token string of `id`.
    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    /// Text of `ids`, special tokens skipped.
    ///
    /// # Errors
    /// [`InputError::Tokenize`] for ids the vocabulary lacks.
    pub fn decode(&self, ids: &[u32]) -> Result<String, InputError> {
        self.inner
            .decode(ids, true)
            .map_err(|e| InputError::Tokenize {
                index: 0,
                reason: e.to_string(),
            })
    }

    /// Ids of one text with `[CLS]`/`[SEP]`, as HF's `tokenizer(text)`.
    ///
    /// # Errors
    /// As [`encode_batch`](Self::encode_batch).
    pub fn encode(&self, text: &str, truncation: Truncation) -> Result<Vec<u32>, InputError> {
        let mut batch = self.encode_batch(&[text], truncation)?;
        Ok(batch.input_ids.remove(0))
    }

    /// Encodes texts with special tokens and pads them on the right to the longest.
    ///
    /// # Errors
    /// [`InputError::Empty`] for no texts, [`InputError::TooLong`] for a text over the limit
    /// under [`Truncation::Refuse`] (or a `MaxLength` above `max_position_embeddings`),
    /// [`InputError::Tokenize`] if the tokenizer fails.
    pub fn encode_batch(
        &self,
        texts: &[&str],
        truncation: Truncation,
    ) -> Result<TokenizedBatch, InputError> {
        if texts.is_empty() {
            return Err(InputError::Empty("no texts to tokenize".into()));
        }
        let max_length = match truncation {
            Truncation::Refuse => self.max_position_embeddings,
            Truncation::MaxLength(n) if n > self.max_position_embeddings => {
                return Err(InputError::TooLong {
                    index: 0,
                    len: n,
                    max: self.max_position_embeddings,
                })
            }
            Truncation::MaxLength(n) => n,
        };
        let special = self.inner.get_post_processor().map_or(0, |p| {
            use tokenizers::PostProcessor;
            p.added_tokens(false)
        });
        let mut sequences = Vec::with_capacity(texts.len());
        let mut truncated = Vec::with_capacity(texts.len());
        for (index, text) in texts.iter().enumerate() {
            let fail = |e: tokenizers::Error| InputError::Tokenize {
                index,
                reason: e.to_string(),
            };
            // As HF: truncate the text's tokens so that they fit with the special tokens.
            let mut encoding = self.inner.encode(*text, false).map_err(fail)?;
            let len = encoding.len() + special;
            let cut = len > max_length;
            if cut && truncation == Truncation::Refuse {
                return Err(InputError::TooLong {
                    index,
                    len,
                    max: max_length,
                });
            }
            if cut {
                encoding.truncate(
                    max_length.saturating_sub(special),
                    0,
                    TruncationDirection::Right,
                );
            }
            let encoding = self
                .inner
                .post_process(encoding, None, true)
                .map_err(fail)?;
            sequences.push(encoding.get_ids().to_vec());
            truncated.push(cut);
        }
        let longest = sequences.iter().map(Vec::len).max().unwrap_or(0);
        let attention_mask = sequences
            .iter()
            .map(|ids| (0..longest).map(|i| u32::from(i < ids.len())).collect())
            .collect();
        let input_ids = sequences
            .into_iter()
            .map(|mut ids| {
                ids.resize(longest, self.pad_token_id);
                ids
            })
            .collect();
        Ok(TokenizedBatch {
            input_ids,
            attention_mask,
            truncated,
        })
    }
}

impl TokenizedBatch {
    /// Tensors for the model.
    ///
    /// # Errors
    /// As [`ModernBertInput::from_token_ids`].
    pub fn to_input<B: Backend>(
        &self,
        config: &ModernBertConfig,
        device: &B::Device,
    ) -> Result<ModernBertInput<B>, InputError> {
        let unpadded: Vec<Vec<u32>> = self
            .input_ids
            .iter()
            .zip(&self.attention_mask)
            .map(|(ids, mask)| {
                ids.iter()
                    .zip(mask)
                    .filter(|(_, &m)| m == 1)
                    .map(|(&id, _)| id)
                    .collect()
            })
            .collect();
        ModernBertInput::from_token_ids(&unpadded, config, device)
    }
}
