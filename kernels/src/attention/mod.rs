//! Variable-length (packed) flash attention, global or sliding-window.
//!
//! Sequences of different lengths are packed into one `[total, heads, head_dim]` tensor;
//! `cu_seqlens` holds their offsets (HF / flash-attn convention). Each token attends only to
//! tokens of its own sequence, and with a window only to those at most `window` positions
//! away (ModernBERT's local layers: 64). Backends with CubeCL run our kernels (for f16/bf16
//! the `mma.sync` `kernel_mma.rs`, or `kernel_mma_band.rs` for windows, on CUDA sm80+, else
//! the cmma `kernel_cmma.rs` where the device has cmma, else the plain `kernel.rs`;
//! `forward.rs` chooses; the backward likewise:
//! `kernel_backward_mma.rs`, `kernel_backward_cmma.rs` or `kernel_backward.rs`, chosen in
//! `backward.rs`, after `delta.rs`'s `rowsum(dO ∘ O)`); every other backend runs
//! `reference.rs`.

#[cfg(feature = "cube")]
pub(crate) mod backward;
#[cfg(feature = "cube")]
mod band;
#[cfg(feature = "cube")]
mod band_scores;
#[cfg(feature = "cube")]
mod cmma_tiles;
#[cfg(feature = "cube")]
mod delta;
#[cfg(feature = "cube")]
pub(crate) mod forward;
#[cfg(feature = "cube")]
mod kernel;
#[cfg(feature = "cube")]
mod kernel_backward;
#[cfg(feature = "cube")]
mod kernel_backward_cmma;
#[cfg(feature = "cube")]
mod kernel_backward_mma;
#[cfg(feature = "cube")]
mod kernel_backward_mma_band;
#[cfg(feature = "cube")]
mod kernel_cmma;
#[cfg(feature = "cube")]
mod kernel_mma;
#[cfg(feature = "cube")]
mod kernel_mma_band;
#[cfg(feature = "cube")]
mod mma_softmax;
#[cfg(feature = "cube")]
mod mma_tiles;
#[cfg(feature = "cube")]
mod passes;
pub mod reference;
#[cfg(feature = "cube")]
mod staging;
#[cfg(feature = "cube")]
mod tiling;

use std::sync::atomic::{AtomicU8, Ordering};

use burn::tensor::ops::FloatTensor;
use burn::tensor::{Int, Tensor, TensorData, TensorPrimitive};

use crate::Backend;

/// Environment variable that chooses the CubeCL kernels, forward and backward: `auto` (the
/// default) takes the fastest that applies (f16/bf16: mma, then cmma); `cmma` never takes the
/// mma kernels; `plain` forces the plain ones.
pub const PATH_ENV: &str = "MODERNBERT_ATTENTION_PATH";

/// Environment variable that makes the attention backward deterministic when `1` (or
/// `true`): the default for [`set_deterministic`], read when a backward first asks.
pub const DETERMINISTIC_ENV: &str = "MODERNBERT_DETERMINISTIC";

/// Whether the backward must be bitwise reproducible: 0 not yet decided (read
/// [`DETERMINISTIC_ENV`]), 1 no, 2 yes.
static DETERMINISTIC: AtomicU8 = AtomicU8::new(0);

/// Makes the attention backward bitwise reproducible (`true`) or lets it take the fastest kernel
/// (`false`, the default), process-wide, like PyTorch's `torch.use_deterministic_algorithms`. Only
/// the `mma.sync` path (f16/bf16 on CUDA sm80+) of global attention (and of windows the band
/// kernels do not take) differs: by default (head_dim a multiple of 32) one kernel computes dQ,
/// dK and dV and sums dQ across blocks of keys with f32 atomics, whose order varies;
/// deterministic, it runs two kernels, each gradient summed in a fixed order (on the H200, 2–3%
/// slower forward+backward at 512 and 8192 tokens, see BENCHMARKS.md). Every other path is
/// deterministic anyway, the band kernels of sliding windows included.
pub fn set_deterministic(on: bool) {
    DETERMINISTIC.store(if on { 2 } else { 1 }, Ordering::Relaxed);
}

/// Whether the attention backward is bitwise reproducible ([`set_deterministic`], else
/// [`DETERMINISTIC_ENV`]; an unknown value of it is reported once on stderr and read as no).
pub fn deterministic() -> bool {
    match DETERMINISTIC.load(Ordering::Relaxed) {
        1 => false,
        2 => true,
        _ => {
            let on = match std::env::var(DETERMINISTIC_ENV).as_deref() {
                Ok("1" | "true") => true,
                Ok("0" | "false" | "") | Err(_) => false,
                Ok(other) => {
                    eprintln!(
                        "{DETERMINISTIC_ENV}={other:?} is neither 1, true, 0 nor false; using 0"
                    );
                    false
                }
            };
            // Decided once: a concurrent `set_deterministic` wins.
            let _ = DETERMINISTIC.compare_exchange(
                0,
                if on { 2 } else { 1 },
                Ordering::Relaxed,
                Ordering::Relaxed,
            );
            DETERMINISTIC.load(Ordering::Relaxed) == 2
        }
    }
}

/// Which CubeCL kernel computed an attention call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelPath {
    /// One unit per query row, scalar f32 arithmetic (any dtype, any device).
    Plain,
    /// cmma tiles (tensor cores), f16/bf16 inputs with f32 accumulation.
    TensorCore,
    /// `mma.sync` tiles with the element-wise work in registers (CUDA sm80+), f16/bf16
    /// inputs with f32 accumulation; in the backward, the deterministic pair of kernels.
    Mma,
    /// The sliding-window `mma.sync` kernels, whose planes compute just the rows on the other
    /// side that their own rows see (windows of a multiple of 8 up to ±64); in the backward a
    /// deterministic pair.
    MmaBand,
    /// The backward only: one `mma.sync` kernel for dQ, dK and dV, dQ summed across blocks
    /// of keys with f32 atomics (the default where [`KernelPath::Mma`] applies; not bitwise
    /// reproducible, see [`set_deterministic`]).
    MmaAtomicDq,
}

/// The most recent CubeCL kernel path of one pass (forward or backward), process-wide.
struct PathRecord(AtomicU8);

impl PathRecord {
    const fn new() -> Self {
        Self(AtomicU8::new(0))
    }

    #[cfg_attr(not(feature = "cube"), allow(dead_code))]
    fn record(&self, path: KernelPath) {
        let code = match path {
            KernelPath::Plain => 1,
            KernelPath::TensorCore => 2,
            KernelPath::Mma => 3,
            KernelPath::MmaAtomicDq => 4,
            KernelPath::MmaBand => 5,
        };
        self.0.store(code, Ordering::Relaxed);
    }

    fn last(&self) -> Option<KernelPath> {
        match self.0.load(Ordering::Relaxed) {
            1 => Some(KernelPath::Plain),
            2 => Some(KernelPath::TensorCore),
            3 => Some(KernelPath::Mma),
            4 => Some(KernelPath::MmaAtomicDq),
            5 => Some(KernelPath::MmaBand),
            _ => None,
        }
    }
}

/// The forward kernel of the most recent CubeCL launch.
static LAST_KERNEL_PATH: PathRecord = PathRecord::new();
/// The backward kernels of the most recent CubeCL launch.
static LAST_BACKWARD_KERNEL_PATH: PathRecord = PathRecord::new();

/// The CubeCL forward kernel that ran last in this process, `None` if none has (e.g. only
/// the reference ran). For benchmarks and tests; process-wide, so calls on other threads in
/// between overwrite it.
pub fn last_kernel_path() -> Option<KernelPath> {
    LAST_KERNEL_PATH.last()
}

/// The CubeCL backward kernels (dQ and dK/dV) that ran last in this process, `None` if
/// none have; process-wide like [`last_kernel_path`].
pub fn last_backward_kernel_path() -> Option<KernelPath> {
    LAST_BACKWARD_KERNEL_PATH.last()
}

#[cfg_attr(not(feature = "cube"), allow(dead_code))]
fn record_kernel_path(path: KernelPath) {
    LAST_KERNEL_PATH.record(path);
}

#[cfg_attr(not(feature = "cube"), allow(dead_code))]
fn record_backward_kernel_path(path: KernelPath) {
    LAST_BACKWARD_KERNEL_PATH.record(path);
}

/// Why an attention call was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum AttentionError {
    /// `cu_seqlens` is not `0 = c₀ < c₁ < … < c_b` with at least one sequence.
    #[error("malformed cu_seqlens {offsets:?}: {reason}")]
    CuSeqlens {
        /// The offsets given.
        offsets: Vec<u32>,
        /// What is wrong with them.
        reason: String,
    },
    /// q, k, v or cu_seqlens disagree in shape.
    #[error("attention shape mismatch: {0}")]
    Shape(String),
    /// The softmax scale is not a positive finite number.
    #[error("softmax scale {0} must be positive and finite")]
    Scale(f64),
}

/// Offsets of packed sequences: sequence `i` holds tokens `offsets[i]..offsets[i + 1]`.
/// Kept on the host (for launch sizes and the reference) and on the device (for kernels).
#[derive(Debug, Clone)]
pub struct CuSeqlens<B: Backend> {
    offsets: Vec<u32>,
    max_seqlen: usize,
    tensor: Tensor<B, 1, Int>,
}

impl<B: Backend> CuSeqlens<B> {
    /// Validates offsets (`0`, then strictly increasing) and uploads them.
    ///
    /// # Errors
    /// [`AttentionError::CuSeqlens`] if there is no sequence, the first offset is not 0, or
    /// an offset does not increase (an empty sequence).
    pub fn new(offsets: Vec<u32>, device: &B::Device) -> Result<Self, AttentionError> {
        let fail = |reason: &str| {
            Err(AttentionError::CuSeqlens {
                offsets: offsets.clone(),
                reason: reason.into(),
            })
        };
        if offsets.len() < 2 {
            return fail("needs at least two offsets (one sequence)");
        }
        if offsets[0] != 0 {
            return fail("must start at 0");
        }
        if let Some(i) = offsets.windows(2).position(|w| w[1] <= w[0]) {
            return fail(&format!(
                "offsets must increase strictly, but offset {} is not above offset {i}",
                i + 1
            ));
        }
        let max_seqlen = offsets
            .windows(2)
            .map(|w| (w[1] - w[0]) as usize)
            .max()
            .unwrap_or(0);
        let data = TensorData::new(
            offsets.iter().map(|&o| o as i64).collect::<Vec<_>>(),
            [offsets.len()],
        );
        Ok(Self {
            tensor: Tensor::from_data(data, device),
            offsets,
            max_seqlen,
        })
    }

    /// Offsets from sequence lengths.
    ///
    /// # Errors
    /// As [`CuSeqlens::new`] (a zero length is an empty sequence).
    pub fn from_lengths(lengths: &[usize], device: &B::Device) -> Result<Self, AttentionError> {
        let offsets = std::iter::once(0)
            .chain(lengths.iter().scan(0u32, |acc, &n| {
                *acc += n as u32;
                Some(*acc)
            }))
            .collect();
        Self::new(offsets, device)
    }

    /// The offsets, `[batch + 1]`.
    pub fn offsets(&self) -> &[u32] {
        &self.offsets
    }

    /// Number of sequences.
    pub fn batch(&self) -> usize {
        self.offsets.len() - 1
    }

    /// Total number of tokens (the last offset).
    pub fn total(&self) -> usize {
        *self.offsets.last().expect("validated non-empty") as usize
    }

    /// Length of the longest sequence.
    pub fn max_seqlen(&self) -> usize {
        self.max_seqlen
    }

    /// The offsets on the device, `[batch + 1]`.
    pub fn tensor(&self) -> Tensor<B, 1, Int> {
        self.tensor.clone()
    }
}

/// Options of [`varlen_attention`].
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct VarlenAttentionOptions {
    /// Sliding window: a query at `i` sees keys `j` with `|i − j| ≤ window`. `None`: global.
    pub window: Option<usize>,
    /// Softmax scale; default `1 / sqrt(head_dim)`.
    pub scale: Option<f64>,
}

/// What a backend's implementation receives besides the tensors.
#[derive(Debug, Clone)]
pub struct VarlenMeta<'a> {
    /// Host copy of `cu_seqlens`, validated.
    pub offsets: &'a [u32],
    /// Longest sequence.
    pub max_seqlen: usize,
    /// Half window, or `None` for global attention.
    pub window: Option<usize>,
    /// Softmax scale.
    pub scale: f32,
}

/// Attention output.
#[derive(Debug, Clone)]
pub struct VarlenAttentionOutput<B: Backend> {
    /// `[total, heads, head_dim]`.
    pub out: Tensor<B, 3>,
    /// Log-sum-exp of each query's scaled scores, `[total, heads]`, f32 (the backward
    /// recomputes probabilities from it).
    pub lse: Tensor<B, 2>,
}

/// Attention over packed sequences.
///
/// # Shapes
/// - q, k, v: `[total, heads, head_dim]`, `total = cu_seqlens.total()`
/// - output: see [`VarlenAttentionOutput`]
///
/// # Errors
/// [`AttentionError::Shape`] when q, k, v differ in shape or do not hold `total` tokens;
/// [`AttentionError::Scale`] when the scale is not positive and finite.
pub fn varlen_attention<B: Backend>(
    q: Tensor<B, 3>,
    k: Tensor<B, 3>,
    v: Tensor<B, 3>,
    cu_seqlens: &CuSeqlens<B>,
    options: VarlenAttentionOptions,
) -> Result<VarlenAttentionOutput<B>, AttentionError> {
    let dims = q.dims();
    if k.dims() != dims || v.dims() != dims {
        return Err(AttentionError::Shape(format!(
            "q {:?}, k {:?}, v {:?} must be equal",
            dims,
            k.dims(),
            v.dims()
        )));
    }
    if dims[0] != cu_seqlens.total() {
        return Err(AttentionError::Shape(format!(
            "q holds {} tokens but cu_seqlens ends at {}",
            dims[0],
            cu_seqlens.total()
        )));
    }
    if dims[2] == 0 {
        return Err(AttentionError::Shape("head_dim is 0".into()));
    }
    let meta = VarlenMeta {
        offsets: cu_seqlens.offsets(),
        max_seqlen: cu_seqlens.max_seqlen(),
        window: options.window,
        scale: softmax_scale(options, dims[2])?,
    };
    let float = |t: Tensor<B, 3>| t.into_primitive().tensor();
    let (out, lse) = B::varlen_attention(
        float(q),
        float(k),
        float(v),
        cu_seqlens.tensor().into_primitive(),
        &meta,
    );
    Ok(output(out, lse))
}

/// [`varlen_attention`] on q, k and v stacked in one tensor (as
/// [`rope_qkv_packed`](crate::rope::rope_qkv_packed) returns them). The result is the same;
/// under autodiff the op has the stack as its one parent, and its gradient is dq, dk and dv
/// stacked, where three slices of the stack would each add a zero-filled gradient of the
/// stack's size.
///
/// # Shapes
/// - qkv: `[3, total, heads, head_dim]`, `total = cu_seqlens.total()`
/// - output: see [`VarlenAttentionOutput`]
///
/// # Errors
/// [`AttentionError::Shape`] when the first dimension is not 3 or the stack does not hold
/// `total` tokens; [`AttentionError::Scale`] as for [`varlen_attention`].
pub fn varlen_attention_packed<B: Backend>(
    qkv: Tensor<B, 4>,
    cu_seqlens: &CuSeqlens<B>,
    options: VarlenAttentionOptions,
) -> Result<VarlenAttentionOutput<B>, AttentionError> {
    let [parts, total, _, head_dim] = qkv.dims();
    if parts != 3 {
        return Err(AttentionError::Shape(format!(
            "a q/k/v stack has 3 parts, this one {parts} ({:?})",
            qkv.dims()
        )));
    }
    if total != cu_seqlens.total() {
        return Err(AttentionError::Shape(format!(
            "the q/k/v stack holds {total} tokens but cu_seqlens ends at {}",
            cu_seqlens.total()
        )));
    }
    if head_dim == 0 {
        return Err(AttentionError::Shape("head_dim is 0".into()));
    }
    let meta = VarlenMeta {
        offsets: cu_seqlens.offsets(),
        max_seqlen: cu_seqlens.max_seqlen(),
        window: options.window,
        scale: softmax_scale(options, head_dim)?,
    };
    let (out, lse) = B::varlen_attention_packed(
        qkv.into_primitive().tensor(),
        cu_seqlens.tensor().into_primitive(),
        &meta,
    );
    Ok(output(out, lse))
}

/// The stack `[3, total, heads, head_dim]` as its three parts `[total, heads, head_dim]`
/// (views, on any backend).
pub fn split_packed<B: burn::tensor::backend::Backend>(qkv: FloatTensor<B>) -> [FloatTensor<B>; 3] {
    let qkv = Tensor::<B, 4>::from_primitive(TensorPrimitive::Float(qkv));
    let [_, total, heads, head_dim] = qkv.dims();
    [0, 1, 2].map(|i| {
        qkv.clone()
            .narrow(0, i, 1)
            .reshape([total, heads, head_dim])
            .into_primitive()
            .tensor()
    })
}

/// The scale the options ask for (default `1 / sqrt(head_dim)`), refused unless positive
/// and finite: the kernels track each row's running maximum on unscaled scores.
fn softmax_scale(options: VarlenAttentionOptions, head_dim: usize) -> Result<f32, AttentionError> {
    let scale = options.scale.unwrap_or(1.0 / (head_dim as f64).sqrt());
    if scale > 0.0 && (scale as f32).is_finite() {
        Ok(scale as f32)
    } else {
        Err(AttentionError::Scale(scale))
    }
}

fn output<B: Backend>(out: FloatTensor<B>, lse: FloatTensor<B>) -> VarlenAttentionOutput<B> {
    VarlenAttentionOutput {
        out: Tensor::from_primitive(TensorPrimitive::Float(out)),
        lse: Tensor::from_primitive(TensorPrimitive::Float(lse)),
    }
}
