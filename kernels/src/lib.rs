//! The backend extension of modernbert-burn: operations the model needs that some
//! backends run better (or more exactly) than Burn's generic ops.
//!
//! Model code calls the free functions here ([`matmul`], [`linear`], [`linear_residual`],
//! [`geglu()`], [`layer_norm()`], [`rope_qkv`], [`varlen_attention`], [`select_rows`], the
//! loss's [`cross_entropy`], and the optimizer's
//! [`stable_adamw_step`]); each backend picks
//! its implementation through [`Backend`]. Backends without a specialised kernel use the
//! default methods, which are plain Burn ops. The CubeCL backends (Cuda, Wgpu) run our
//! kernels, plain (feature `cube`) and under Burn's `Fusion` (feature `fusion`, each op a
//! custom operation of the fusion stream); `Autodiff` over any of them (feature `autodiff`)
//! registers our backward ops.

use burn::module::Param;
use burn::nn::Linear;
use burn::tensor::ops::{FloatTensor, IntTensor};
use burn::tensor::{Tensor, TensorMetadata, TensorPrimitive};

pub mod attention;
#[cfg(any(feature = "autodiff", test))]
mod autodiff;
pub mod cross_entropy;
#[cfg(feature = "cube")]
mod cube;
#[cfg(feature = "cuda")]
mod cublaslt;
#[cfg(feature = "fusion")]
mod fusion;
pub mod geglu;
#[cfg(any(feature = "cuda", test))]
mod gemm_layout;
#[cfg(feature = "cube")]
mod grid;
pub mod layer_norm;
pub mod rope;
pub mod select_rows;
pub mod stable_adamw;

#[cfg(feature = "cuda")]
pub use cublaslt::status as cublaslt_status;

pub use attention::{
    deterministic, last_backward_kernel_path, last_kernel_path, set_deterministic,
    varlen_attention, varlen_attention_packed, AttentionError, CuSeqlens, KernelPath,
    VarlenAttentionOptions, VarlenAttentionOutput, VarlenMeta,
};
pub use cross_entropy::{cross_entropy, CrossEntropyError, CrossEntropyOutput};
pub use geglu::{geglu, GegluError};
pub use layer_norm::{layer_norm, LayerNormError};
pub use rope::{rope_qkv, rope_qkv_packed, RopeError};
pub use select_rows::select_rows;
pub use stable_adamw::{stable_adamw_step, StableAdamWError, StableAdamWStep};

/// A Burn backend with modernbert's extension operations.
pub trait Backend: burn::tensor::backend::Backend {
    /// Matrix product with the precision of the tensors' dtype: f32 inputs are multiplied
    /// in full f32, never silently in TF32 (Burn's CUDA matmul rounds f32 operands to TF32
    /// on tensor cores, a 1e-3 relative error; PyTorch keeps f32 unless told otherwise).
    ///
    /// # Shapes
    /// - lhs: `[..., m, k]`, rhs: `[..., k, n]` (batch dims broadcast)
    /// - output: `[..., m, n]`
    fn matmul(lhs: FloatTensor<Self>, rhs: FloatTensor<Self>) -> FloatTensor<Self> {
        Self::float_matmul(lhs, rhs)
    }

    /// A linear layer with its epilogue: `x · weight (+ bias) (+ residual)`. Backends that
    /// can fold the additions into the product do (cuBLASLt's epilogue on Cuda: the bias and
    /// the residual are added as the output tile is stored, saving a pass over memory each);
    /// the default is [`Backend::matmul`] followed by Burn's adds.
    ///
    /// # Shapes
    /// - x: `[m, k]`, weight: `[k, n]`, bias: `[n]`, residual: `[m, n]`
    /// - output: `[m, n]`
    fn fused_linear(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: Option<FloatTensor<Self>>,
        residual: Option<FloatTensor<Self>>,
    ) -> FloatTensor<Self> {
        add_epilogue::<Self>(Self::matmul(x, weight), bias, residual)
    }

    /// GeGLU, `gelu(input) · gate` over the two halves of `x`'s last dimension (see
    /// [`geglu()`], which validates the width). The default is the exact reference in
    /// plain tensor ops.
    ///
    /// # Shapes
    /// - x: `[rows, 2I]`; output: `[rows, I]`
    fn geglu(x: FloatTensor<Self>) -> FloatTensor<Self> {
        let x = Tensor::<Self, 2>::from_primitive(TensorPrimitive::Float(x));
        geglu::geglu_reference(x).into_primitive().tensor()
    }

    /// Gradient of [`Backend::geglu`] with respect to `x`, from the output gradient.
    /// The default is the exact reference in plain tensor ops.
    ///
    /// # Shapes
    /// - x: `[rows, 2I]`, grad: `[rows, I]`; output: `[rows, 2I]`
    fn geglu_backward(x: FloatTensor<Self>, grad: FloatTensor<Self>) -> FloatTensor<Self> {
        let wrap = |t| Tensor::<Self, 2>::from_primitive(TensorPrimitive::Float(t));
        geglu::geglu_backward_reference(wrap(x), wrap(grad))
            .into_primitive()
            .tensor()
    }

    /// Rows `indices` of `table` (see [`select_rows`]). The default is Burn's `select`;
    /// under autodiff the table's gradient is [`Backend::select_rows_backward`].
    ///
    /// # Shapes
    /// - table: `[rows, width]`, indices: `[n]`; output: `[n, width]`
    fn select_rows(table: FloatTensor<Self>, indices: IntTensor<Self>) -> FloatTensor<Self> {
        Self::float_select(table, 0, indices)
    }

    /// Gradient of [`Backend::select_rows`]'s table: the rows of `grad` summed into a
    /// `[num_rows, width]` table at `indices`. The default is the reference in Burn's ops
    /// ([`select_rows::select_rows_backward_reference`]).
    ///
    /// # Shapes
    /// - grad: `[n, width]`, indices: `[n]`; output: `[num_rows, width]`
    fn select_rows_backward(
        grad: FloatTensor<Self>,
        indices: IntTensor<Self>,
        num_rows: usize,
    ) -> FloatTensor<Self> {
        select_rows::select_rows_backward_reference(
            Tensor::<Self, 2>::from_primitive(TensorPrimitive::Float(grad)),
            Tensor::from_primitive(indices),
            num_rows,
        )
        .into_primitive()
        .tensor()
    }

    /// Per-row cross-entropy and arg-max (see [`cross_entropy()`], which validates the
    /// shapes); returns `(loss, lse, predicted)`, loss and lse in f32. The default is the
    /// exact reference in plain tensor ops.
    ///
    /// # Shapes
    /// - logits: `[rows, classes]`, labels: `[rows]`; outputs `[rows]`
    fn cross_entropy(
        logits: FloatTensor<Self>,
        labels: IntTensor<Self>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, IntTensor<Self>) {
        let (loss, lse, predicted) = cross_entropy::cross_entropy_reference(
            Tensor::<Self, 2>::from_primitive(TensorPrimitive::Float(logits)),
            Tensor::from_primitive(labels),
        );
        let float = |t: Tensor<Self, 1>| t.into_primitive().tensor();
        (float(loss), float(lse), predicted.into_primitive())
    }

    /// Gradient of [`Backend::cross_entropy`]'s loss with respect to the logits, from the
    /// forward's lse and the loss gradient (f32), in the logits' dtype. The default is the
    /// exact reference in plain tensor ops.
    ///
    /// # Shapes
    /// - logits: `[rows, classes]`, labels, lse, grad: `[rows]`; output `[rows, classes]`
    fn cross_entropy_backward(
        logits: FloatTensor<Self>,
        labels: IntTensor<Self>,
        lse: FloatTensor<Self>,
        grad: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        let vector = |t| Tensor::<Self, 1>::from_primitive(TensorPrimitive::Float(t));
        cross_entropy::cross_entropy_backward_reference(
            Tensor::<Self, 2>::from_primitive(TensorPrimitive::Float(logits)),
            Tensor::from_primitive(labels),
            vector(lse),
            vector(grad),
        )
        .into_primitive()
        .tensor()
    }

    /// One StableAdamW update of a flat parameter tensor (see [`stable_adamw_step`], which
    /// validates the shapes); returns `(param, exp_avg, exp_avg_sq)`. The default is the
    /// exact reference in plain tensor ops.
    ///
    /// # Shapes
    /// - param, grad, exp_avg, exp_avg_sq: `[n]`; outputs likewise
    fn stable_adamw_step(
        param: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        exp_avg: FloatTensor<Self>,
        exp_avg_sq: FloatTensor<Self>,
        step: &StableAdamWStep,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        let wrap = |t| Tensor::<Self, 1>::from_primitive(TensorPrimitive::Float(t));
        let (param, exp_avg, exp_avg_sq) = stable_adamw::stable_adamw_reference(
            wrap(param),
            wrap(grad),
            wrap(exp_avg),
            wrap(exp_avg_sq),
            step,
        );
        let unwrap = |t: Tensor<Self, 1>| t.into_primitive().tensor();
        (unwrap(param), unwrap(exp_avg), unwrap(exp_avg_sq))
    }

    /// LayerNorm over the last dimension of `x` (see [`layer_norm()`], which validates the
    /// arguments); returns `(y, mean, rstd)`, the per-row mean and `1 / sqrt(var + ε)` that
    /// [`Backend::layer_norm_backward`] takes back (f32 from the kernels; x's dtype widened
    /// to at least f32 in the default, the exact reference in plain tensor ops).
    ///
    /// # Shapes
    /// - x: `[rows, W]`, gamma: `[W]`, beta: `[W]`
    /// - output: y `[rows, W]`, mean `[rows]`, rstd `[rows]`
    fn layer_norm_forward(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: Option<FloatTensor<Self>>,
        epsilon: f64,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        let float = |t| Tensor::<Self, 1>::from_primitive(TensorPrimitive::Float(t));
        let x = Tensor::<Self, 2>::from_primitive(TensorPrimitive::Float(x));
        let (y, mean, rstd) =
            layer_norm::layer_norm_reference(x, float(gamma), beta.map(float), epsilon);
        let (mean, rstd) = (
            mean.into_primitive().tensor(),
            rstd.into_primitive().tensor(),
        );
        (y.into_primitive().tensor(), mean, rstd)
    }

    /// Gradients of [`Backend::layer_norm_forward`] from the output gradient `grad` and the
    /// forward's statistics: `(dx, dγ, dβ)`, dβ only when `has_beta`. The default is the
    /// exact reference in plain tensor ops
    /// ([`layer_norm::layer_norm_backward_reference`], which gives the formulas).
    ///
    /// # Shapes
    /// - x, grad: `[rows, W]`, gamma: `[W]`, mean, rstd: `[rows]`
    /// - output: dx `[rows, W]`, dγ `[W]`, dβ `[W]`
    fn layer_norm_backward(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        mean: FloatTensor<Self>,
        rstd: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        has_beta: bool,
    ) -> (
        FloatTensor<Self>,
        FloatTensor<Self>,
        Option<FloatTensor<Self>>,
    ) {
        let rows = |t| Tensor::<Self, 2>::from_primitive(TensorPrimitive::Float(t));
        let vector = |t| Tensor::<Self, 1>::from_primitive(TensorPrimitive::Float(t));
        let (d_x, d_gamma, d_beta) = layer_norm::layer_norm_backward_reference(
            rows(x),
            vector(gamma),
            vector(mean),
            vector(rstd),
            rows(grad),
            has_beta,
        );
        let float = |t: Tensor<Self, 1>| t.into_primitive().tensor();
        (
            d_x.into_primitive().tensor(),
            float(d_gamma),
            d_beta.map(float),
        )
    }

    /// Splits `Wqkv`'s output into q, k and v and rotates q and k by RoPE at each token's
    /// position (see [`rope_qkv`], which validates the arguments); returns q, k, v stacked.
    /// The default is the exact reference in plain tensor ops, in f32.
    ///
    /// # Shapes
    /// - qkv: `[total, 3 · heads · head_dim]`, cos, sin: `[max_positions, head_dim]`,
    ///   positions: `[total]`
    /// - output: `[3, total, heads, head_dim]`, qkv's dtype
    fn rope_qkv(
        qkv: FloatTensor<Self>,
        cos: FloatTensor<Self>,
        sin: FloatTensor<Self>,
        positions: IntTensor<Self>,
        heads: usize,
    ) -> FloatTensor<Self> {
        let float = |t| Tensor::<Self, 2>::from_primitive(TensorPrimitive::Float(t));
        rope::rope_qkv_reference(
            float(qkv),
            float(cos),
            float(sin),
            Tensor::from_primitive(positions),
            heads,
        )
        .into_primitive()
        .tensor()
    }

    /// Gradient of [`Backend::rope_qkv`] with respect to qkv, from the gradient of its
    /// stacked output. The default is the exact reference in plain tensor ops
    /// ([`rope::rope_qkv_backward_reference`], which gives the formulas).
    ///
    /// # Shapes
    /// - grad: `[3, total, heads, head_dim]`, cos, sin: `[max_positions, head_dim]`,
    ///   positions: `[total]`
    /// - output: `[total, 3 · heads · head_dim]`
    fn rope_qkv_backward(
        grad: FloatTensor<Self>,
        cos: FloatTensor<Self>,
        sin: FloatTensor<Self>,
        positions: IntTensor<Self>,
    ) -> FloatTensor<Self> {
        let table = |t| Tensor::<Self, 2>::from_primitive(TensorPrimitive::Float(t));
        rope::rope_qkv_backward_reference(
            Tensor::from_primitive(TensorPrimitive::Float(grad)),
            table(cos),
            table(sin),
            Tensor::from_primitive(positions),
        )
        .into_primitive()
        .tensor()
    }

    /// Flash attention over packed sequences (see [`varlen_attention`], which validates the
    /// arguments); returns `(out [total, heads, head_dim], lse [total, heads])`.
    /// The default is the exact reference in plain tensor ops.
    fn varlen_attention(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        cu_seqlens: IntTensor<Self>,
        meta: &VarlenMeta,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        let _ = cu_seqlens; // the reference reads the host copy in `meta`
        let wrap = |t| Tensor::<Self, 3>::from_primitive(TensorPrimitive::Float(t));
        let (out, lse) =
            attention::reference::varlen_attention_reference(wrap(q), wrap(k), wrap(v), meta);
        (out.into_primitive().tensor(), lse.into_primitive().tensor())
    }

    /// [`Backend::varlen_attention`] on q, k and v stacked (see [`varlen_attention_packed`]).
    /// The default splits the stack into views and calls [`Backend::varlen_attention`].
    ///
    /// # Shapes
    /// - qkv: `[3, total, heads, head_dim]`; cu_seqlens: `[batch + 1]`
    /// - output: as [`Backend::varlen_attention`]
    fn varlen_attention_packed(
        qkv: FloatTensor<Self>,
        cu_seqlens: IntTensor<Self>,
        meta: &VarlenMeta,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        let [q, k, v] = attention::split_packed::<Self>(qkv);
        Self::varlen_attention(q, k, v, cu_seqlens, meta)
    }

    /// Gradients of [`Backend::varlen_attention`] with respect to q, k and v, from the
    /// forward's inputs, `out` and `lse`, and the output gradient `d_out`; returns
    /// `(dq, dk, dv)`. The default is the exact reference in plain tensor ops
    /// (`attention::reference::varlen_attention_backward_reference`).
    ///
    /// # Shapes
    /// - q, k, v, out, d_out: `[total, heads, head_dim]`; lse: `[total, heads]` (f32)
    #[allow(clippy::too_many_arguments)]
    fn varlen_attention_backward(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        out: FloatTensor<Self>,
        lse: FloatTensor<Self>,
        d_out: FloatTensor<Self>,
        cu_seqlens: IntTensor<Self>,
        meta: &VarlenMeta,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        let _ = cu_seqlens; // the reference reads the host copy in `meta`
        let wrap = |t| Tensor::<Self, 3>::from_primitive(TensorPrimitive::Float(t));
        let lse = Tensor::<Self, 2>::from_primitive(TensorPrimitive::Float(lse));
        let (dq, dk, dv) = attention::reference::varlen_attention_backward_reference(
            wrap(q),
            wrap(k),
            wrap(v),
            wrap(out),
            lse,
            wrap(d_out),
            meta,
        );
        let float = |t: Tensor<Self, 3>| t.into_primitive().tensor();
        (float(dq), float(dk), float(dv))
    }
}

#[cfg(feature = "ndarray")]
impl<E, I, Q> Backend for burn::backend::NdArray<E, I, Q>
where
    E: burn::backend::ndarray::FloatNdArrayElement,
    I: burn::backend::ndarray::IntNdArrayElement,
    Q: burn::backend::ndarray::QuantElement,
    burn::backend::ndarray::NdArrayTensor: From<burn::backend::ndarray::SharedArray<E>>,
    burn::backend::ndarray::NdArrayTensor: From<burn::backend::ndarray::SharedArray<I>>,
{
}

/// A linear layer's epilogue in Burn ops: `y (+ bias) (+ residual)`.
///
/// # Shapes
/// - y: `[m, n]`, bias: `[n]`, residual: `[m, n]`
pub(crate) fn add_epilogue<B: Backend>(
    y: FloatTensor<B>,
    bias: Option<FloatTensor<B>>,
    residual: Option<FloatTensor<B>>,
) -> FloatTensor<B> {
    let y = match bias {
        Some(bias) => {
            let n = bias.shape().num_elements();
            B::float_add(y, B::float_reshape(bias, [1, n].into()))
        }
        None => y,
    };
    match residual {
        Some(residual) => B::float_add(y, residual),
        None => y,
    }
}

/// [`Backend::matmul`] on tensors.
///
/// # Shapes
/// - lhs: `[..., m, k]`, rhs: `[..., k, n]`
/// - output: `[..., m, n]`
pub fn matmul<B: Backend, const D: usize>(lhs: Tensor<B, D>, rhs: Tensor<B, D>) -> Tensor<B, D> {
    let out = B::matmul(lhs.into_primitive().tensor(), rhs.into_primitive().tensor());
    Tensor::from_primitive(TensorPrimitive::Float(out))
}

/// `x · W (+ b)` for a Burn [`Linear`] (weight `[d_in, d_out]`), through
/// [`Backend::fused_linear`].
///
/// # Shapes
/// - x: `[..., d_in]`
/// - output: `[..., d_out]`
pub fn linear<B: Backend, const D: usize>(layer: &Linear<B>, x: Tensor<B, D>) -> Tensor<B, D> {
    linear_weight(x, layer.weight.val(), layer.bias.as_ref().map(Param::val))
}

/// `residual + x · W (+ b)` for a Burn [`Linear`], the residual added in the product's
/// epilogue where the backend can (see [`Backend::fused_linear`]).
///
/// # Shapes
/// - x: `[..., d_in]`, residual: `[..., d_out]` (same leading dims)
/// - output: `[..., d_out]`
pub fn linear_residual<B: Backend, const D: usize>(
    layer: &Linear<B>,
    x: Tensor<B, D>,
    residual: Tensor<B, D>,
) -> Tensor<B, D> {
    let bias = layer.bias.as_ref().map(Param::val);
    fused_linear(x, layer.weight.val(), bias, Some(residual))
}

/// `x · weight (+ bias)` with an explicit weight `[d_in, d_out]`.
///
/// # Shapes
/// - x: `[..., d_in]`, weight: `[d_in, d_out]`, bias: `[d_out]`
/// - output: `[..., d_out]`
pub fn linear_weight<B: Backend, const D: usize>(
    x: Tensor<B, D>,
    weight: Tensor<B, 2>,
    bias: Option<Tensor<B, 1>>,
) -> Tensor<B, D> {
    fused_linear(x, weight, bias, None)
}

/// [`Backend::fused_linear`] over any leading dims (flattened into rows).
fn fused_linear<B: Backend, const D: usize>(
    x: Tensor<B, D>,
    weight: Tensor<B, 2>,
    bias: Option<Tensor<B, 1>>,
    residual: Option<Tensor<B, D>>,
) -> Tensor<B, D> {
    let mut dims = x.dims();
    let [d_in, d_out] = weight.dims();
    let rows = x.shape().num_elements() / d_in.max(1);
    let float = |t: Tensor<B, 2>| t.into_primitive().tensor();
    let y = B::fused_linear(
        float(x.reshape([rows, d_in])),
        float(weight),
        bias.map(|b| b.into_primitive().tensor()),
        residual.map(|r| float(r.reshape([rows, d_out]))),
    );
    dims[D - 1] = d_out;
    Tensor::<B, 2>::from_primitive(TensorPrimitive::Float(y)).reshape(dims)
}

#[cfg(all(test, feature = "ndarray"))]
mod tests {
    use super::*;
    use burn::backend::NdArray;
    use burn::tensor::Distribution;

    #[test]
    fn linear_matches_burn_linear() {
        let device = Default::default();
        let layer = burn::nn::LinearConfig::new(5, 3).init::<NdArray>(&device);
        let x = Tensor::<NdArray, 3>::random([2, 4, 5], Distribution::Default, &device);
        let ours = linear(&layer, x.clone());
        let burns = layer.forward(x);
        let diff: f32 = (ours - burns).abs().max().into_scalar();
        assert!(diff < 1e-6, "max diff {diff}");
    }
}
