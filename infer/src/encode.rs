//! Texts to token ids under the over-long policy, one sequence per text, no padding.

use modernbert::{InputError, ModernBertTokenizer, Truncation};

use crate::error::InferError;
use crate::options::OverLong;

/// One text's token ids (`[CLS] … [SEP]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncodedText {
    /// Token ids, special tokens included.
    pub ids: Vec<u32>,
    /// Whether the text was cut to the model's limit.
    pub truncated: bool,
}

/// Tokenizes every text; an over-long one is cut to `max_len` tokens or refused, as
/// `over_long` says.
///
/// # Errors
/// [`InferError::NoTexts`], [`InferError::EmptyText`] for an empty or blank text,
/// [`InferError::Input`] (`TooLong`, `Tokenize`) naming the text's index.
pub fn encode_texts(
    tokenizer: &ModernBertTokenizer,
    texts: &[&str],
    over_long: OverLong,
    max_len: usize,
) -> Result<Vec<EncodedText>, InferError> {
    if texts.is_empty() {
        return Err(InferError::NoTexts);
    }
    let truncation = match over_long {
        OverLong::Truncate => Truncation::MaxLength(max_len),
        OverLong::Refuse => Truncation::Refuse,
    };
    texts
        .iter()
        .enumerate()
        .map(|(index, text)| {
            if text.trim().is_empty() {
                return Err(InferError::EmptyText { index });
            }
            // The tokenizer numbers texts within its call; ours is one text at a time.
            let mut batch = tokenizer
                .encode_batch(&[text], truncation)
                .map_err(|e| match e {
                    InputError::TooLong { len, max, .. } => InputError::TooLong { index, len, max },
                    InputError::Tokenize { reason, .. } => InputError::Tokenize { index, reason },
                    other => other,
                })?;
            Ok(EncodedText {
                ids: batch.input_ids.remove(0),
                truncated: batch.truncated[0],
            })
        })
        .collect()
}
