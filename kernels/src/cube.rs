//! [`Backend`] for Burn's CubeCL backends (Cuda, Wgpu).

use burn::tensor::ops::{FloatTensor, FloatTensorOps, IntTensor};
use burn::tensor::DType;
use burn_cubecl::cubecl::ir::{ElemType, FloatKind, StorageType};
use burn_cubecl::kernel::matmul::init_matmul_output;
use burn_cubecl::{BoolElement, CubeBackend, CubeRuntime, FloatElement, IntElement};
use cubek::matmul::definition::{MatmulElems, MatmulGlobalElems};
use cubek::matmul::launch::{launch_ref, Strategy};
use cubek::std::InputBinding;

use crate::attention::forward::varlen_attention_forward;
use crate::{Backend, VarlenMeta};

impl<R: CubeRuntime, F: FloatElement, I: IntElement, BT: BoolElement> Backend
    for CubeBackend<R, F, I, BT>
{
    fn matmul(lhs: FloatTensor<Self>, rhs: FloatTensor<Self>) -> FloatTensor<Self> {
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

    fn varlen_attention(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        cu_seqlens: IntTensor<Self>,
        meta: &VarlenMeta,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        varlen_attention_forward(q, k, v, cu_seqlens, meta)
    }
}
