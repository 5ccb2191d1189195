//! Launching the forward kernel on a CubeCL backend (Cuda, Wgpu): shape checks, block
//! sizes, output allocation.

use burn::tensor::{DType, Shape};
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::ops::numeric::empty_device_contiguous_dtype;
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::CubeRuntime;
use cubecl::prelude::*;

use super::kernel::flash_attention_varlen_kernel;
use super::VarlenMeta;

/// Query rows per cube (one unit each).
const BLOCK_M: usize = 64;
/// Shared memory used for the K and V tiles, in bytes (fits WebGPU's 16 KiB default).
const TILE_BYTES: usize = 16 * 1024;

/// Keys per tile: K and V tiles of `block_n × head_dim` f32 fill [`TILE_BYTES`].
fn block_n(head_dim: usize, max_shared: usize) -> usize {
    let budget = TILE_BYTES.min(max_shared);
    (budget / (2 * head_dim * 4)).clamp(1, 64)
}

/// Flash-attention forward over packed sequences; returns `(out, lse)`.
///
/// # Shapes
/// - q, k, v: `[total, heads, head_dim]`; cu_seqlens: `[batch + 1]`
/// - out: `[total, heads, head_dim]` (q's dtype); lse: `[total, heads]` (f32)
pub fn varlen_attention_forward<R: CubeRuntime>(
    q: CubeTensor<R>,
    k: CubeTensor<R>,
    v: CubeTensor<R>,
    cu_seqlens: CubeTensor<R>,
    meta: &VarlenMeta,
) -> (CubeTensor<R>, CubeTensor<R>) {
    let [total, heads, head_dim] = q.meta.shape().dims::<3>();
    let (q, k, v, cu_seqlens) = (
        into_contiguous(q),
        into_contiguous(k),
        into_contiguous(v),
        into_contiguous(cu_seqlens),
    );
    let client = q.client.clone();
    let device = q.device.clone();
    let out = empty_device_contiguous_dtype(
        client.clone(),
        device.clone(),
        Shape::new([total, heads, head_dim]),
        q.dtype,
    );
    let lse = empty_device_contiguous_dtype(
        client.clone(),
        device,
        Shape::new([total, heads]),
        DType::F32,
    );
    let batch = meta.offsets.len() - 1;
    if total == 0 {
        return (out, lse);
    }
    let max_shared = client.properties().hardware.max_shared_memory_size;
    let block_n = block_n(head_dim, max_shared);
    let q_blocks = meta.max_seqlen.div_ceil(BLOCK_M);
    let (f_dtype, i_dtype) = (q.dtype, cu_seqlens.dtype);
    // NVRTC compiles unrolled code quickly and it is what makes the kernel fast there.
    let unroll = R::name(&client).starts_with("cuda");
    flash_attention_varlen_kernel::launch::<R>(
        &client,
        CubeCount::Static(q_blocks as u32, heads as u32, batch as u32),
        CubeDim::new_1d(BLOCK_M as u32),
        q.into_tensor_arg(),
        k.into_tensor_arg(),
        v.into_tensor_arg(),
        cu_seqlens.into_tensor_arg(),
        out.clone().into_tensor_arg(),
        lse.clone().into_tensor_arg(),
        meta.scale,
        meta.window.unwrap_or(0) as u32,
        head_dim,
        block_n,
        meta.window.is_some(),
        unroll,
        [f_dtype.into(), i_dtype.into()],
    );
    (out, lse)
}
