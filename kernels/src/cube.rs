//! [`Backend`] for Burn's CubeCL backends (Cuda, Wgpu).

use burn::tensor::ops::{FloatTensor, FloatTensorOps, IntTensor};
use burn::tensor::{DType, FloatDType};
use burn_cubecl::cubecl::ir::{ElemType, FloatKind, StorageType};
use burn_cubecl::kernel::matmul::init_matmul_output;
use burn_cubecl::{BoolElement, CubeBackend, CubeRuntime, FloatElement, IntElement};
use cubek::matmul::definition::{MatmulElems, MatmulGlobalElems};
use cubek::matmul::launch::{launch_ref, Strategy};
use cubek::std::InputBinding;

use crate::attention::backward::varlen_attention_backward;
use crate::attention::forward::varlen_attention_forward;
use crate::{Backend, StableAdamWStep, VarlenMeta};

impl<R: CubeRuntime, F: FloatElement, I: IntElement, BT: BoolElement> Backend
    for CubeBackend<R, F, I, BT>
{
    fn matmul(lhs: FloatTensor<Self>, rhs: FloatTensor<Self>) -> FloatTensor<Self> {
        #[cfg(feature = "cuda")]
        if let Some(out) = crate::cublaslt::matmul(&lhs, &rhs, crate::cublaslt::Epilogue::NONE) {
            return out;
        }
        let tf32: StorageType = ElemType::Float(FloatKind::TF32).into();
        let f32_operands = lhs.dtype == DType::F32 && rhs.dtype == DType::F32;
        // Burn's default matmul downgrades f32 to TF32 exactly when the device supports it.
        if !(f32_operands && lhs.client.properties().supports_type(tf32)) {
            return Self::float_matmul(lhs, rhs);
        }
        let out = init_matmul_output(&lhs, &rhs, DType::F32);
        let client = out.client.clone();
        let f32_type: StorageType = DType::F32.into();
        // Unit (CUDA-core) tiling keeps operands in f32; the naive kernel is the fallback
        // for shapes the tiled one rejects.
        for strategy in [Strategy::SimpleUnit(Default::default()), Strategy::Naive] {
            let mut dtypes = MatmulElems::from_globals(&MatmulGlobalElems {
                lhs: f32_type,
                rhs: f32_type,
                out: f32_type,
            });
            let launched = launch_ref(
                &strategy,
                &client,
                InputBinding::new(lhs.clone().binding(), f32_type),
                InputBinding::new(rhs.clone().binding(), f32_type),
                out.clone().binding(),
                &mut dtypes,
            );
            if launched.is_ok() {
                return out;
            }
        }
        panic!(
            "no f32 matmul kernel accepts shapes {:?} x {:?}",
            lhs.meta.shape(),
            rhs.meta.shape()
        )
    }

    fn fused_linear(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: Option<FloatTensor<Self>>,
        residual: Option<FloatTensor<Self>>,
    ) -> FloatTensor<Self> {
        #[cfg(feature = "cuda")]
        {
            let epilogue = crate::cublaslt::Epilogue {
                bias: bias.as_ref(),
                residual: residual.as_ref(),
            };
            if let Some(out) = crate::cublaslt::matmul(&x, &weight, epilogue) {
                return out;
            }
        }
        crate::add_epilogue::<Self>(Self::matmul(x, weight), bias, residual)
    }

    fn geglu(x: FloatTensor<Self>) -> FloatTensor<Self> {
        crate::geglu::kernel::geglu(x)
    }

    fn geglu_backward(x: FloatTensor<Self>, grad: FloatTensor<Self>) -> FloatTensor<Self> {
        crate::geglu::kernel::geglu_backward(x, grad)
    }

    fn cross_entropy(
        logits: FloatTensor<Self>,
        labels: IntTensor<Self>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, IntTensor<Self>) {
        crate::cross_entropy::kernel::cross_entropy(logits, labels)
    }

    fn cross_entropy_backward(
        logits: FloatTensor<Self>,
        labels: IntTensor<Self>,
        lse: FloatTensor<Self>,
        grad: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        let grad = Self::float_cast(grad, FloatDType::F32);
        crate::cross_entropy::kernel::cross_entropy_backward(logits, labels, lse, grad)
    }

    fn select_rows_backward(
        grad: FloatTensor<Self>,
        indices: IntTensor<Self>,
        num_rows: usize,
    ) -> FloatTensor<Self> {
        crate::select_rows::kernel::select_rows_backward(grad, indices, num_rows)
    }

    fn stable_adamw_step(
        param: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        exp_avg: FloatTensor<Self>,
        exp_avg_sq: FloatTensor<Self>,
        step: &StableAdamWStep,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        crate::stable_adamw::kernel::stable_adamw_step(param, grad, exp_avg, exp_avg_sq, step)
    }

    fn layer_norm_forward(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: Option<FloatTensor<Self>>,
        epsilon: f64,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        crate::layer_norm::kernel::layer_norm(x, gamma, beta, epsilon)
    }

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
        let gamma_dtype = gamma.dtype;
        let (d_x, d_gamma, d_beta) =
            crate::layer_norm::kernel::layer_norm_backward(x, gamma, mean, rstd, grad, has_beta);
        // The kernel's f32 partial sums `[slices, W]`, summed over the slices.
        let column_sum = |partial: FloatTensor<Self>| {
            let width = partial.meta.shape()[1];
            let sum = Self::float_reshape(Self::float_sum_dim(partial, 0), [width].into());
            Self::float_cast(sum, gamma_dtype.into())
        };
        (d_x, column_sum(d_gamma), d_beta.map(column_sum))
    }

    fn rope_qkv(
        qkv: FloatTensor<Self>,
        cos: FloatTensor<Self>,
        sin: FloatTensor<Self>,
        positions: IntTensor<Self>,
        heads: usize,
    ) -> FloatTensor<Self> {
        crate::rope::kernel::rope_qkv(qkv, cos, sin, positions, heads)
    }

    fn rope_qkv_backward(
        grad: FloatTensor<Self>,
        cos: FloatTensor<Self>,
        sin: FloatTensor<Self>,
        positions: IntTensor<Self>,
    ) -> FloatTensor<Self> {
        crate::rope::kernel::rope_qkv_backward(grad, cos, sin, positions)
    }

    fn varlen_attention(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        cu_seqlens: IntTensor<Self>,
        meta: &VarlenMeta,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        varlen_attention_forward(q, k, v, cu_seqlens, meta)
    }

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
        // The kernels read q, k, v and dO as one dtype.
        let d_out = if d_out.dtype == q.dtype {
            d_out
        } else {
            Self::float_cast(d_out, q.dtype.into())
        };
        varlen_attention_backward(q, k, v, out, d_out, lse, cu_seqlens, meta)
    }
}
