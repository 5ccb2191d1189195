//! Inference with ModernBERT: the library behind the `modernbert` command.
//!
//! Pipelines load a checkpoint directory ([`resolve_model`] turns a HF hub id into one),
//! tokenize, batch by length under a token budget, run the model unpadded, and return one
//! result per text in input order:
//!
//! | pipeline | checkpoint | result |
//! |---|---|---|
//! | [`FillMask`] | `ModernBertForMaskedLM` | top-k tokens per `[MASK]` |
//! | [`Embedder`] | any (the encoder) | `cls`/`mean` pooled, optionally L2-normalised vector |
//! | [`Classifier`] | `ModernBertForSequenceClassification` | label and softmax scores (`id2label`) |
//! | [`TokenClassifier`] | `ModernBertForTokenClassification` | a label per token |
//!
//! ```no_run
//! use burn::backend::NdArray;
//! use modernbert_infer::{resolve_model, Embedder, HubOptions, InferOptions};
//!
//! let dir = resolve_model("answerdotai/ModernBERT-base", &HubOptions::from_env())?;
//! let embedder = Embedder::<NdArray>::from_pretrained(&dir, &Default::default())?
//!     .with_normalize(true)
//!     .with_options(InferOptions::default().with_max_batch_tokens(8192));
//! let vectors = embedder.embed(&["first text", "second text"])?;
//! # Ok::<(), modernbert_infer::InferError>(())
//! ```
//!
//! The float type is the backend's: `Cuda<half::bf16>`, `Wgpu<half::f16>`, `NdArray` (f32).

pub mod backend;
pub mod batching;
pub mod bench;
pub mod classify;
pub mod embed;
pub mod encode;
pub mod error;
pub mod fill_mask;
pub mod hub;
pub mod memory;
pub mod npy;
pub mod options;
mod pipeline;
pub mod sentence_transformers;
pub mod token_classify;

pub use backend::{BackendKind, Dtype};
pub use bench::{bench_encoder, BenchOptions, BenchReport, BenchSetting};
pub use classify::{Classification, Classifier, LabelScore};
pub use embed::{Embedder, Embedding};
pub use error::InferError;
pub use fill_mask::{FillMask, FillMaskOutput, Prediction};
pub use hub::{resolve_model, HubOptions};
pub use memory::DeviceMemory;
pub use options::{InferOptions, OverLong, Progress};
pub use token_classify::{TokenClassification, TokenClassifier, TokenLabel};

/// Re-exported for [`with_backend!`]'s half-precision backend types.
#[doc(hidden)]
pub use half;
