//! MLM pretraining of ModernBERT with the FlexBERT recipe (DESIGN.md, "Training recipe"):
//! text/JSONL/Parquet corpora, a given or freshly trained BPE tokenizer, best-fit sequence
//! packing run unpadded, 30% masking with sparse prediction, StableAdamW with a
//! warmup-stable-decay schedule, gradient accumulation and batch-size warmup, exact
//! resume from step checkpoints, and an HF-format export.
//!
//! The binary `modernbert-train` parses the command line, picks the backend and calls
//! [`train`], or [`breakdown`] to time the parts of one training step.

pub mod breakdown;
pub mod checkpoint;
pub mod config;
pub mod data;
pub mod eval;
pub mod masking;
pub mod metrics;
pub mod mlm;
pub mod optimizer;
pub mod preflight;
pub mod rng;
pub mod schedule;
pub mod train;

/// NdArray's RNG is process-wide and the unit tests run on parallel threads: every test here
/// that draws from it (parameter init, dropout masks) holds this lock, so that a seeded
/// sequence is never interleaved with another test's draws.
#[cfg(test)]
pub(crate) static NDARRAY_RNG: std::sync::Mutex<()> = std::sync::Mutex::new(());

pub use breakdown::{breakdown, Breakdown, BreakdownOptions};
pub use config::TrainConfig;
pub use optimizer::{StableAdamW, StableAdamWConfig};
pub use train::{train, StepLog, TrainOutcome};
