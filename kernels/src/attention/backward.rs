//! Launching the backward kernels (`kernel_backward.rs`) on a CubeCL backend: the plain
//! path for every dtype and device, deterministic (no atomics).

use burn::tensor::Shape;
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::ops::numeric::empty_device_contiguous_dtype;
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::CubeRuntime;
use cubecl::prelude::*;

use super::forward::{plain_block_n, plain_unroll, BLOCK_M};
use super::kernel_backward::{flash_attention_varlen_dkv_kernel, flash_attention_varlen_dq_kernel};
use super::VarlenMeta;

/// Gradients of the forward for `d_out`, given its `lse` and `delta = rowsum(dO ∘ O)`
/// (f32); returns `(dq, dk, dv)` in q's dtype.
///
/// # Shapes
/// - q, k, v, d_out: `[total, heads, head_dim]`; lse, delta: `[total, heads]`
#[allow(clippy::too_many_arguments)]
pub fn varlen_attention_backward<R: CubeRuntime>(
    q: CubeTensor<R>,
    k: CubeTensor<R>,
    v: CubeTensor<R>,
    d_out: CubeTensor<R>,
    lse: CubeTensor<R>,
    delta: CubeTensor<R>,
    cu_seqlens: CubeTensor<R>,
    meta: &VarlenMeta,
) -> (CubeTensor<R>, CubeTensor<R>, CubeTensor<R>) {
    let [total, heads, head_dim] = q.meta.shape().dims::<3>();
    let [q, k, v, d_out, lse, delta, cu_seqlens] =
        [q, k, v, d_out, lse, delta, cu_seqlens].map(into_contiguous);
    let client = q.client.clone();
    let gradient = || {
        empty_device_contiguous_dtype(
            client.clone(),
            q.device.clone(),
            Shape::new([total, heads, head_dim]),
            q.dtype,
        )
    };
    let (dq, dk, dv) = (gradient(), gradient(), gradient());
    if total == 0 {
        return (dq, dk, dv);
    }
    let grid = CubeCount::Static(
        meta.max_seqlen.div_ceil(BLOCK_M) as u32,
        heads as u32,
        (meta.offsets.len() - 1) as u32,
    );
    let max_shared = client.properties().hardware.max_shared_memory_size;
    // The dK/dV kernel also stages lse and D per tile (8 bytes per query row).
    let block_n = plain_block_n(head_dim, max_shared, 8);
    let unroll = plain_unroll(&client);
    let dtypes = [q.dtype.into(), cu_seqlens.dtype.into()];
    let (scale, window, windowed) = (
        meta.scale,
        meta.window.unwrap_or(0) as u32,
        meta.window.is_some(),
    );
    flash_attention_varlen_dq_kernel::launch::<R>(
        &client,
        grid.clone(),
        CubeDim::new_1d(BLOCK_M as u32),
        q.clone().into_tensor_arg(),
        k.clone().into_tensor_arg(),
        v.clone().into_tensor_arg(),
        d_out.clone().into_tensor_arg(),
        lse.clone().into_tensor_arg(),
        delta.clone().into_tensor_arg(),
        cu_seqlens.clone().into_tensor_arg(),
        dq.clone().into_tensor_arg(),
        scale,
        window,
        head_dim,
        block_n,
        windowed,
        unroll,
        dtypes,
    );
    flash_attention_varlen_dkv_kernel::launch::<R>(
        &client,
        grid,
        CubeDim::new_1d(BLOCK_M as u32),
        q.into_tensor_arg(),
        k.into_tensor_arg(),
        v.into_tensor_arg(),
        d_out.into_tensor_arg(),
        lse.into_tensor_arg(),
        delta.into_tensor_arg(),
        cu_seqlens.into_tensor_arg(),
        dk.clone().into_tensor_arg(),
        dv.clone().into_tensor_arg(),
        scale,
        window,
        head_dim,
        block_n,
        windowed,
        unroll,
        dtypes,
    );
    (dq, dk, dv)
}
