//! ModernBERT in the browser: the `modernbert` crate on Burn's WebGPU backend (with
//! modernbert-kernels' CubeCL attention), or on NdArray compiled to wasm when the browser has
//! no WebGPU adapter. `www/app.js` drives the [`Demo`] exported here; every method that
//! touches the device returns a `Promise` (results are read back asynchronously).

pub mod engine;
pub mod error;
pub mod session;

use std::rc::Rc;

use js_sys::Promise;
use serde::Serialize;
use wasm_bindgen::prelude::*;
use wasm_bindgen_futures::future_to_promise;

use crate::engine::Engine;
use crate::session::{cosine, CheckpointFiles};

#[wasm_bindgen]
extern "C" {
    #[wasm_bindgen(js_namespace = console)]
    fn error(message: &str);
}

/// Sends Rust panics to the browser console (a panic aborts the module; the page then
/// reports an internal error).
#[wasm_bindgen(start)]
pub fn start() {
    std::panic::set_hook(Box::new(|info| error(&info.to_string())));
}

/// A checkpoint loaded on one backend, as the page sees it.
#[wasm_bindgen]
pub struct Demo {
    // Rc: each task runs in a Promise that outlives the call borrowing `self`.
    engine: Rc<Engine>,
}

#[derive(Serialize)]
struct Similarity {
    cosine: f32,
    tokens: [usize; 2],
}

fn to_js(value: &impl Serialize) -> Result<JsValue, JsValue> {
    serde_json::to_string(value)
        .map(|json| JsValue::from_str(&json))
        .map_err(|e| JsValue::from_str(&e.to_string()))
}

#[wasm_bindgen]
impl Demo {
    /// Loads a checkpoint's `config.json` (text), `model.safetensors` and `tokenizer.json`
    /// (bytes) on `backend`: `"webgpu"` (only after `navigator.gpu.requestAdapter()` gave an
    /// adapter) or `"cpu"`. Resolves to a `Demo`; rejects with a message naming the file and
    /// key or field that is wrong, or the adapter limit that the model exceeds.
    pub fn load(backend: String, config: String, weights: Vec<u8>, tokenizer: Vec<u8>) -> Promise {
        future_to_promise(async move {
            let files = CheckpointFiles {
                config,
                weights,
                tokenizer,
            };
            let engine = Engine::load(&backend, files).await?;
            Ok(Demo {
                engine: Rc::new(engine),
            }
            .into())
        })
    }

    /// The backend and adapter in use, in words.
    pub fn backend(&self) -> String {
        self.engine.describe()
    }

    /// `"f16"` or `"f32"`: the float type of weights and activations (f16 on a WebGPU
    /// adapter with `shader-f16`).
    pub fn dtype(&self) -> String {
        self.engine.dtype().name().to_string()
    }

    /// The architecture in one line (layers, hidden size, heads, vocabulary).
    pub fn summary(&self) -> String {
        let c = self.engine.config();
        format!(
            "{} layers, hidden {}, {} heads, intermediate {}, vocab {}",
            c.num_hidden_layers,
            c.hidden_size,
            c.num_attention_heads,
            c.intermediate_size,
            c.vocab_size
        )
    }

    /// Number of tokens of `text` with `[CLS]`/`[SEP]`.
    ///
    /// # Errors
    /// A message for an empty or over-long text.
    pub fn count_tokens(&self, text: &str) -> Result<usize, JsValue> {
        Ok(self.engine.count_tokens(text)?)
    }

    /// Fill-mask: resolves to JSON `[[{token_id, token, score}, ...top_k], ...per [MASK]]`.
    pub fn fill_mask(&self, text: String, top_k: usize) -> Promise {
        let engine = Rc::clone(&self.engine);
        future_to_promise(async move { to_js(&engine.fill_mask(&text, top_k).await?) })
    }

    /// Cosine similarity of two texts' mean-pooled embeddings: resolves to JSON
    /// `{cosine, tokens: [a, b]}`.
    pub fn similarity(&self, a: String, b: String) -> Promise {
        let engine = Rc::clone(&self.engine);
        future_to_promise(async move {
            let embeddings = engine.embed(&[&a, &b]).await?;
            to_js(&Similarity {
                cosine: cosine(&embeddings[0], &embeddings[1]),
                tokens: [engine.count_tokens(&a)?, engine.count_tokens(&b)?],
            })
        })
    }
}
