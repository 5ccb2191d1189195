//! The backend the page runs on: Burn's Wgpu backend over the browser's WebGPU when the page
//! found an adapter (in f16 when it has `shader-f16`, else f32), otherwise NdArray compiled to
//! wasm (one thread, f32).

use std::cell::RefCell;

use burn::backend::wgpu::{graphics::WebGpu, init_setup_async, RuntimeOptions, WgpuDevice};
use burn::backend::{NdArray, Wgpu};
use burn::tensor::f16;
use modernbert::ModernBertConfig;

use crate::error::DemoError;
use crate::session::{CheckpointFiles, Prediction, Session};

/// The WebGPU adapter Burn runs on, as set up once per page.
#[derive(Debug, Clone)]
pub struct Adapter {
    /// The adapter's name and driver, as WebGPU reports them.
    pub name: String,
    /// `maxStorageBufferBindingSize` of the device: the largest tensor it can hold.
    pub max_storage_buffer_binding_size: u64,
    /// Whether the device has WebGPU's `shader-f16`. CubeCL requests every feature of the
    /// adapter for its device and registers f16 as a supported type when this one is there,
    /// so f16 kernels then compile (`enable f16;`).
    pub shader_f16: bool,
}

/// The float type the model's weights and activations are held in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dtype {
    /// 32-bit floats: the CPU fallback, and adapters without `shader-f16`.
    F32,
    /// 16-bit floats: adapters with `shader-f16` (half the memory of f32).
    F16,
}

impl Dtype {
    /// Bytes per element.
    pub fn size(self) -> u64 {
        match self {
            Self::F32 => 4,
            Self::F16 => 2,
        }
    }

    /// `"f32"` or `"f16"`, as the page shows it.
    pub fn name(self) -> &'static str {
        match self {
            Self::F32 => "f32",
            Self::F16 => "f16",
        }
    }
}

thread_local! {
    // wgpu's device can be set up only once per page; later checkpoints reuse it.
    static ADAPTER: RefCell<Option<Adapter>> = const { RefCell::new(None) };
}

/// Sets up Burn's Wgpu runtime on the browser's WebGPU (first call only) and describes it.
/// The page calls this only after `navigator.gpu.requestAdapter()` returned an adapter:
/// without one, wgpu's setup cannot fail gracefully.
pub async fn webgpu_adapter() -> Adapter {
    if let Some(adapter) = ADAPTER.with(|a| a.borrow().clone()) {
        return adapter;
    }
    let setup = init_setup_async::<WebGpu>(&WgpuDevice::default(), RuntimeOptions::default()).await;
    let info = setup.adapter.get_info();
    let adapter = Adapter {
        name: [info.name, info.driver, info.driver_info]
            .into_iter()
            .filter(|part| !part.is_empty())
            .collect::<Vec<_>>()
            .join(" "),
        max_storage_buffer_binding_size: setup.device.limits().max_storage_buffer_binding_size
            as u64,
        shader_f16: setup.device.features().contains(wgpu::Features::SHADER_F16),
    };
    ADAPTER.with(|a| *a.borrow_mut() = Some(adapter.clone()));
    adapter
}

/// Fails with the tensor's name and the limit when a weight matrix in `dtype` is larger than
/// one storage buffer of the adapter (the embedding matrix is the usual culprit).
///
/// # Errors
/// [`DemoError::BufferLimit`].
pub fn check_buffer_limit(
    config: &ModernBertConfig,
    dtype: Dtype,
    limit: u64,
) -> Result<(), DemoError> {
    let h = config.hidden_size as u64;
    let tensors = [
        (
            "model.embeddings.tok_embeddings.weight",
            config.vocab_size as u64 * h,
        ),
        ("model.layers.0.attn.Wqkv.weight", 3 * h * h),
        (
            "model.layers.0.mlp.Wi.weight",
            2 * config.intermediate_size as u64 * h,
        ),
    ];
    for (tensor, elements) in tensors {
        let bytes = elements * dtype.size();
        if bytes > limit {
            return Err(DemoError::BufferLimit {
                tensor: tensor.to_string(),
                dtype: dtype.name(),
                bytes,
                limit,
            });
        }
    }
    Ok(())
}

/// A loaded checkpoint on the backend the page chose.
// One per page, behind an Rc: the variants' size difference costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum Engine {
    /// Burn's Wgpu backend (CubeCL kernels compiled to WGSL) on the browser's WebGPU, f32.
    WebGpu {
        /// The model.
        session: Session<Wgpu>,
        /// Where it runs.
        adapter: Adapter,
    },
    /// The same in f16, on an adapter with `shader-f16`.
    WebGpuF16 {
        /// The model, weights converted to f16 at load.
        session: Session<Wgpu<f16>>,
        /// Where it runs.
        adapter: Adapter,
    },
    /// NdArray compiled to wasm: the fallback without an adapter.
    Cpu(Session<NdArray>),
}

impl Engine {
    /// Loads the checkpoint on `backend` (`"webgpu"` or `"cpu"`); on WebGPU in f16 when the
    /// adapter has `shader-f16`.
    ///
    /// # Errors
    /// [`DemoError::UnknownBackend`], [`DemoError::Load`] for a bad checkpoint,
    /// [`DemoError::BufferLimit`] when it does not fit the adapter.
    pub async fn load(backend: &str, files: CheckpointFiles) -> Result<Self, DemoError> {
        let config = files.config()?;
        match backend {
            "webgpu" => {
                let adapter = webgpu_adapter().await;
                let dtype = if adapter.shader_f16 {
                    Dtype::F16
                } else {
                    Dtype::F32
                };
                check_buffer_limit(&config, dtype, adapter.max_storage_buffer_binding_size)?;
                let device = WgpuDevice::default();
                Ok(match dtype {
                    Dtype::F16 => Self::WebGpuF16 {
                        session: Session::load(files, &config, &device)?,
                        adapter,
                    },
                    Dtype::F32 => Self::WebGpu {
                        session: Session::load(files, &config, &device)?,
                        adapter,
                    },
                })
            }
            "cpu" => Ok(Self::Cpu(Session::load(
                files,
                &config,
                &Default::default(),
            )?)),
            other => Err(DemoError::UnknownBackend(other.to_string())),
        }
    }

    /// The float type of weights and activations.
    pub fn dtype(&self) -> Dtype {
        match self {
            Self::WebGpuF16 { .. } => Dtype::F16,
            Self::WebGpu { .. } | Self::Cpu(_) => Dtype::F32,
        }
    }

    /// What the page shows as "backend".
    pub fn describe(&self) -> String {
        match self {
            Self::WebGpu { adapter, .. } | Self::WebGpuF16 { adapter, .. } => {
                // Browsers often leave wgpu's adapter name empty; the page adds
                // `GPUAdapter.info` then.
                let on = if adapter.name.is_empty() {
                    String::new()
                } else {
                    format!(" on {}", adapter.name)
                };
                format!(
                    "WebGPU (Burn Wgpu{on}, maxStorageBufferBindingSize {} MiB)",
                    adapter.max_storage_buffer_binding_size >> 20
                )
            }
            Self::Cpu(_) => "CPU (Burn NdArray compiled to wasm, one thread)".to_string(),
        }
    }

    /// The architecture.
    pub fn config(&self) -> &ModernBertConfig {
        match self {
            Self::WebGpu { session, .. } => session.config(),
            Self::WebGpuF16 { session, .. } => session.config(),
            Self::Cpu(session) => session.config(),
        }
    }

    /// Token count of `text` with `[CLS]`/`[SEP]`.
    ///
    /// # Errors
    /// As [`Session::encode`].
    pub fn count_tokens(&self, text: &str) -> Result<usize, DemoError> {
        match self {
            Self::WebGpu { session, .. } => session.encode(text),
            Self::WebGpuF16 { session, .. } => session.encode(text),
            Self::Cpu(session) => session.encode(text),
        }
        .map(|ids| ids.len())
    }

    /// See [`Session::fill_mask`].
    ///
    /// # Errors
    /// As [`Session::fill_mask`].
    pub async fn fill_mask(
        &self,
        text: &str,
        top_k: usize,
    ) -> Result<Vec<Vec<Prediction>>, DemoError> {
        match self {
            Self::WebGpu { session, .. } => session.fill_mask(text, top_k).await,
            Self::WebGpuF16 { session, .. } => session.fill_mask(text, top_k).await,
            Self::Cpu(session) => session.fill_mask(text, top_k).await,
        }
    }

    /// See [`Session::embed`].
    ///
    /// # Errors
    /// As [`Session::embed`].
    pub async fn embed(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>, DemoError> {
        match self {
            Self::WebGpu { session, .. } => session.embed(texts).await,
            Self::WebGpuF16 { session, .. } => session.embed(texts).await,
            Self::Cpu(session) => session.embed(texts).await,
        }
    }
}
