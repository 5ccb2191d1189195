//! Packed rows from a document stream: read documents, tokenize them in batches, keep the
//! packer's pool full, pack. Its [`StreamState`] (document cursor plus the packer with its
//! pool) is what a checkpoint stores to resume at exactly the same row.
//!
//! The held-out split needs no separate file: with `holdout_every = n`, a document whose
//! position hashes to 0 mod n is evaluation data and never training data, in every epoch.

use anyhow::Result;
use serde::{Deserialize, Serialize};

use crate::data::packing::{PackedRow, Packer};
use crate::data::source::{DocumentCursor, Documents};
use crate::data::tokenizer::RunTokenizer;
use crate::rng::Rng;

/// Which documents of the files a stream takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Split {
    /// Every document.
    All,
    /// Documents not held out by `holdout_every`.
    Train {
        /// `n`: about one document in `n` is held out.
        holdout_every: u64,
    },
    /// Only the held-out documents.
    HeldOut {
        /// `n`, as for [`Split::Train`].
        holdout_every: u64,
    },
}

impl Split {
    /// Whether the document at `cursor` belongs to this split.
    pub fn keeps(self, cursor: DocumentCursor) -> bool {
        let held_out = |n: u64| {
            let key = ((cursor.file as u64) << 40) ^ cursor.doc;
            Rng::new(key).next_u64() % n == 0
        };
        match self {
            Split::All => true,
            Split::Train { holdout_every } => !held_out(holdout_every),
            Split::HeldOut { holdout_every } => held_out(holdout_every),
        }
    }
}

/// The documents of `documents` that `split` keeps.
pub fn split_documents(
    mut documents: Documents,
    split: Split,
) -> impl Iterator<Item = Result<String>> + Send {
    std::iter::from_fn(move || loop {
        let cursor = documents.cursor();
        match documents.next()? {
            Ok(_) if !split.keeps(cursor) => continue,
            other => return Some(other),
        }
    })
}

/// What a checkpoint stores about the data: where the documents stand and what the packer
/// holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StreamState {
    /// The next document to read.
    pub cursor: DocumentCursor,
    /// The packer, its pool and its statistics.
    pub packer: Packer,
}

/// A stream of packed rows.
pub struct RowStream {
    documents: Documents,
    tokenizer: RunTokenizer,
    packer: Packer,
    split: Split,
    read_batch: usize,
}

impl RowStream {
    /// A stream over `documents` (positioned where `state` says, if given).
    pub fn new(
        documents: Documents,
        tokenizer: RunTokenizer,
        packer: Packer,
        split: Split,
    ) -> Self {
        Self {
            documents,
            tokenizer,
            packer,
            split,
            read_batch: 64,
        }
    }

    /// The state to checkpoint.
    pub fn state(&self) -> StreamState {
        StreamState {
            cursor: self.documents.cursor(),
            packer: self.packer.clone(),
        }
    }

    /// Packing statistics so far.
    pub fn packer(&self) -> &Packer {
        &self.packer
    }

    /// The next packed row; `None` once a non-cycling stream is exhausted.
    ///
    /// # Errors
    /// When reading or tokenizing a document fails.
    pub fn next_row(&mut self) -> Result<Option<PackedRow>> {
        let mut exhausted = false;
        while self.packer.wants_documents() && !exhausted {
            let mut texts = Vec::with_capacity(self.read_batch);
            while texts.len() < self.read_batch {
                let cursor = self.documents.cursor();
                match self.documents.next() {
                    Some(doc) => {
                        let doc = doc?;
                        if self.split.keeps(cursor) {
                            texts.push(doc);
                        }
                    }
                    None => {
                        exhausted = true;
                        break;
                    }
                }
            }
            for ids in self.tokenizer.encode_batch(texts)? {
                self.packer.push_document(&ids);
            }
        }
        Ok(self.packer.pack_row())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::source::TextSplit;

    fn tokenizer() -> RunTokenizer {
        let docs = (0..50).map(|i| Ok(format!("document number {i} says hello world")));
        RunTokenizer::train(docs, 290).unwrap()
    }

    /// The test corpus in its own directory, removed on drop. Streams read it lazily, so
    /// each test keeps one corpus alive for all its streams.
    struct Corpus {
        dir: tempfile::TempDir,
    }

    impl Corpus {
        fn new() -> Self {
            let dir = tempfile::tempdir().unwrap();
            let text: String = (0..300)
                .map(|i| format!("document number {i} says hello world\n\n"))
                .collect();
            std::fs::write(dir.path().join("c.txt"), text).unwrap();
            Self { dir }
        }

        fn stream(&self, split: Split, state: Option<StreamState>) -> RowStream {
            let tok = tokenizer();
            let (cursor, packer) = match state {
                Some(s) => (s.cursor, s.packer),
                None => (
                    DocumentCursor::default(),
                    Packer::new(32, 16, tok.cls, tok.sep),
                ),
            };
            let files = vec![self.dir.path().join("c.txt")];
            let docs = Documents::new(files, TextSplit::Blocks, true, cursor);
            RowStream::new(docs, tok, packer, split)
        }
    }

    #[test]
    fn a_restored_state_continues_with_the_same_rows() {
        let split = Split::Train { holdout_every: 10 };
        let corpus = Corpus::new();
        let mut a = corpus.stream(split, None);
        for _ in 0..7 {
            a.next_row().unwrap().unwrap();
        }
        let mut b = corpus.stream(split, Some(a.state()));
        for _ in 0..40 {
            assert_eq!(a.next_row().unwrap(), b.next_row().unwrap());
        }
        assert!(a.packer().efficiency() > 0.8, "{}", a.packer().efficiency());
    }

    #[test]
    fn held_out_documents_never_reach_training() {
        let decode = |s: &mut RowStream| {
            let row = s.next_row().unwrap().unwrap();
            let tok = tokenizer();
            let mut out = Vec::new();
            let mut offset = 0;
            for len in row.seqlens {
                out.push(
                    tok.tokenizer
                        .decode(&row.input_ids[offset..offset + len], true)
                        .unwrap(),
                );
                offset += len;
            }
            out
        };
        let corpus = Corpus::new();
        let mut train = corpus.stream(Split::Train { holdout_every: 5 }, None);
        let mut held = corpus.stream(Split::HeldOut { holdout_every: 5 }, None);
        let train_docs: Vec<String> = (0..60).flat_map(|_| decode(&mut train)).collect();
        let held_docs: Vec<String> = (0..10).flat_map(|_| decode(&mut held)).collect();
        assert!(!held_docs.is_empty());
        for doc in &held_docs {
            assert!(!train_docs.contains(doc), "{doc} is in both splits");
        }
        let fraction = held_docs.len() as f64 / (held_docs.len() + train_docs.len()) as f64;
        assert!(fraction > 0.0 && fraction < 0.5, "{fraction}");
    }
}
