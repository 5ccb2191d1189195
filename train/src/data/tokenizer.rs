//! The tokenizer of a run: a given `tokenizer.json`, or a byte-level BPE trained on the
//! training corpus with the `tokenizers` crate (as ModernBERT's own, OLMo-derived
//! tokenizer: byte-level BPE with `[CLS] $A [SEP]` post-processing), saved next to the
//! checkpoints.

use std::path::Path;

use anyhow::{anyhow, Context, Result};
use tokenizers::models::bpe::{BpeTrainerBuilder, BPE};
use tokenizers::models::TrainerWrapper;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::processors::template::TemplateProcessing;
use tokenizers::{AddedToken, Tokenizer};

/// ModernBERT's special tokens; a trained tokenizer gets them as ids 0..5 in this order.
pub const SPECIAL_TOKENS: [&str; 5] = ["[UNK]", "[CLS]", "[SEP]", "[PAD]", "[MASK]"];

/// A tokenizer and the ids of its special tokens.
#[derive(Clone)]
pub struct RunTokenizer {
    /// The tokenizer; encode without special tokens, the packer adds them.
    pub tokenizer: Tokenizer,
    /// `[CLS]`.
    pub cls: u32,
    /// `[SEP]`.
    pub sep: u32,
    /// `[PAD]`.
    pub pad: u32,
    /// `[MASK]`.
    pub mask: u32,
    /// Vocabulary size, added tokens included.
    pub vocab_size: usize,
}

impl RunTokenizer {
    /// Wraps a tokenizer, looking up its special tokens.
    ///
    /// # Errors
    /// When one of `[CLS]`, `[SEP]`, `[PAD]`, `[MASK]` is missing.
    pub fn new(tokenizer: Tokenizer) -> Result<Self> {
        let id = |token: &str| {
            tokenizer
                .token_to_id(token)
                .ok_or_else(|| anyhow!("the tokenizer has no {token} token, which MLM needs"))
        };
        Ok(Self {
            cls: id("[CLS]")?,
            sep: id("[SEP]")?,
            pad: id("[PAD]")?,
            mask: id("[MASK]")?,
            vocab_size: tokenizer.get_vocab_size(true),
            tokenizer,
        })
    }

    /// Loads `tokenizer.json`.
    ///
    /// # Errors
    /// When the file cannot be read or parsed, or lacks a special token.
    pub fn from_file(path: &Path) -> Result<Self> {
        let tokenizer = Tokenizer::from_file(path)
            .map_err(|e| anyhow!("loading tokenizer {}: {e}", path.display()))?;
        Self::new(tokenizer).with_context(|| format!("tokenizer {}", path.display()))
    }

    /// Trains a byte-level BPE of `vocab_size` tokens (special tokens included) on
    /// `documents`.
    ///
    /// # Errors
    /// When reading a document fails or training fails.
    pub fn train(
        documents: impl Iterator<Item = Result<String>> + Send,
        vocab_size: usize,
    ) -> Result<Self> {
        let specials: Vec<AddedToken> = SPECIAL_TOKENS
            .iter()
            .map(|t| AddedToken::from(*t, true))
            .collect();
        let trainer = BpeTrainerBuilder::new()
            .vocab_size(vocab_size)
            .min_frequency(2)
            .show_progress(false)
            .special_tokens(specials)
            .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
            .build();
        let mut trainer = TrainerWrapper::BpeTrainer(trainer);
        let mut tokenizer = Tokenizer::new(BPE::default());
        tokenizer.with_pre_tokenizer(Some(ByteLevel::default().add_prefix_space(false)));
        tokenizer.with_decoder(Some(ByteLevel::default()));
        // Reading errors stop the iterator; they are reported after training.
        let mut error = None;
        let texts = documents.map_while(|doc| match doc {
            Ok(text) => Some(text),
            Err(e) => {
                error = Some(e);
                None
            }
        });
        tokenizer
            .train(&mut trainer, texts)
            .map_err(|e| anyhow!("training the BPE tokenizer: {e}"))?;
        if let Some(e) = error {
            return Err(e.context("reading the corpus to train the tokenizer"));
        }
        let id = |t: &str| tokenizer.token_to_id(t).expect("special tokens were added");
        let template = TemplateProcessing::builder()
            .try_single("[CLS] $A [SEP]")
            .map_err(|e| anyhow!("{e}"))?
            .special_tokens(vec![("[CLS]", id("[CLS]")), ("[SEP]", id("[SEP]"))])
            .build()
            .map_err(|e| anyhow!("building the post-processor: {e}"))?;
        tokenizer.with_post_processor(Some(template));
        Self::new(tokenizer)
    }

    /// Writes `tokenizer.json` to `path`.
    ///
    /// # Errors
    /// When the file cannot be written.
    pub fn save(&self, path: &Path) -> Result<()> {
        self.tokenizer
            .save(path, false)
            .map_err(|e| anyhow!("writing {}: {e}", path.display()))
    }

    /// Token ids of `texts`, without special tokens (tokenized in parallel).
    ///
    /// # Errors
    /// When the tokenizer fails on a text.
    pub fn encode_batch(&self, texts: Vec<String>) -> Result<Vec<Vec<u32>>> {
        let encodings = self
            .tokenizer
            .encode_batch(texts, false)
            .map_err(|e| anyhow!("tokenizing: {e}"))?;
        Ok(encodings
            .into_iter()
            .map(|e| e.get_ids().to_vec())
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trained_tokenizer_has_the_special_tokens_and_round_trips_through_json() {
        let docs = (0..200).map(|i| {
            Ok(format!(
                "the quick brown fox number {i} jumps over the lazy dog"
            ))
        });
        let tok = RunTokenizer::train(docs, 300).unwrap();
        assert_eq!((tok.cls, tok.sep, tok.pad, tok.mask), (1, 2, 3, 4));
        assert!(
            tok.vocab_size <= 300 && tok.vocab_size > 256,
            "{}",
            tok.vocab_size
        );
        let ids = tok
            .encode_batch(vec!["the lazy fox [MASK]".into()])
            .unwrap()
            .remove(0);
        assert_eq!(*ids.last().unwrap(), tok.mask, "[MASK] stays one token");
        assert!(ids.len() < 10, "merges were learned: {ids:?}");
        let with_specials = tok.tokenizer.encode("the dog", true).unwrap();
        assert_eq!(with_specials.get_ids().first(), Some(&tok.cls));
        assert_eq!(with_specials.get_ids().last(), Some(&tok.sep));
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        tok.save(&dir.join("tokenizer.json")).unwrap();
        let loaded = RunTokenizer::from_file(&dir.join("tokenizer.json")).unwrap();
        assert_eq!(
            loaded.encode_batch(vec!["the lazy fox".into()]).unwrap(),
            tok.encode_batch(vec!["the lazy fox".into()]).unwrap()
        );
    }

    #[test]
    fn a_tokenizer_without_mask_is_refused() {
        let err = RunTokenizer::new(Tokenizer::new(BPE::default()))
            .err()
            .unwrap();
        assert!(err.to_string().contains("no [CLS] token"), "{err}");
    }
}
