//! What can go wrong in the demo, in words a page can show.

use modernbert::{InputError, LoadError};
use wasm_bindgen::JsValue;

/// An error of the browser demo; its `Display` text is what the page shows.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// A checkpoint file is missing, corrupt, or not a ModernBERT masked-LM checkpoint.
    #[error("not a usable ModernBERT masked-LM checkpoint: {0}")]
    Load(#[from] LoadError),
    /// The input text cannot be run (empty, too long, unknown tokens).
    #[error("{0}")]
    Input(#[from] InputError),
    /// The text has no `[MASK]` token.
    #[error("the text has no {mask} token")]
    NoMask {
        /// The mask token as the vocabulary spells it.
        mask: String,
    },
    /// The tokenizer has no `[MASK]` token, so fill-mask is impossible.
    #[error("tokenizer.json has no [MASK] token")]
    NoMaskToken,
    /// A weight matrix is larger than one storage buffer of the WebGPU adapter.
    #[error(
        "the model does not fit this WebGPU adapter: `{tensor}` needs {bytes} bytes ({dtype}) \
         in one buffer, the adapter's maxStorageBufferBindingSize is {limit} bytes \
         (use the CPU backend, or a smaller model)"
    )]
    BufferLimit {
        /// The HF key of the tensor.
        tensor: String,
        /// The dtype it would be held in.
        dtype: &'static str,
        /// Its size in that dtype.
        bytes: u64,
        /// `maxStorageBufferBindingSize`.
        limit: u64,
    },
    /// Reading a result back from the device failed.
    #[error("reading the result back from the device failed: {0}")]
    Readback(String),
    /// `backend` was neither `"webgpu"` nor `"cpu"`.
    #[error("unknown backend `{0}` (expected \"webgpu\" or \"cpu\")")]
    UnknownBackend(String),
}

impl From<DemoError> for JsValue {
    fn from(error: DemoError) -> Self {
        js_sys::Error::new(&error.to_string()).into()
    }
}
