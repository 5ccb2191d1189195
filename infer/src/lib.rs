//! Inference with ModernBERT: the library behind the `modernbert` command.

pub mod backend;
pub mod error;
pub mod fill_mask;

pub use backend::BackendKind;
pub use error::InferError;
pub use fill_mask::{FillMask, FillMaskOutput, Prediction};
