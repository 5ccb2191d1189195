//! ModernBERT (Warner et al., 2024, arXiv 2412.13663) on Burn.
//!
//! Every module is generic over `B: Backend`, so the same model runs on NdArray (CPU),
//! Wgpu (Vulkan/Metal/DX12/WebGPU) and Cuda. Checkpoints are HuggingFace's: see
//! [`HfModel::from_pretrained`] and [`HfModel::save_pretrained`].
//!
//! ```no_run
//! use burn::backend::NdArray;
//! use modernbert::{HfModel, ModernBertForMaskedLM, ModernBertTokenizer, Truncation};
//!
//! let device = Default::default();
//! let model = ModernBertForMaskedLM::<NdArray>::from_pretrained("ModernBERT-base", &device)?;
//! let tokenizer = ModernBertTokenizer::from_file("ModernBERT-base/tokenizer.json", &model.model.config)?;
//! let batch = tokenizer.encode_batch(&["Paris is the [MASK] of France."], Truncation::Refuse)?;
//! let logits = model.forward(batch.to_input(&model.model.config, &device)?)?.logits;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod attention;
pub mod checkpoint;
pub mod config;
pub mod embeddings;
pub mod error;
pub mod heads;
pub mod layer;
pub mod mlp;
pub mod model;
pub mod norm;
pub mod residual;
pub mod rope;
pub mod tokenizer;
pub mod unpad;
pub mod weights;

pub use config::{HfConfig, LayerType, ModernBertConfig, Pooling};
pub use error::{ConfigError, InputError, LoadError, SaveError};
pub use heads::{
    ModernBertForMaskedLM, ModernBertForSequenceClassification, ModernBertForTokenClassification,
    TaskOutput,
};
pub use model::{Execution, ModernBertInput, ModernBertModel, ModernBertOutput};
/// The backend bound of the forward passes: any Burn backend with modernbert's extension
/// (NdArray, Wgpu, Cuda, and each under `Autodiff`).
pub use modernbert_kernels::Backend;
pub use tokenizer::{ModernBertTokenizer, TokenizedBatch, Truncation};
pub use unpad::UnpaddedInput;
pub use weights::HfModel;

/// Backend of the unit tests.
#[cfg(test)]
pub(crate) type TestBackend = burn::backend::NdArray;
