//! The backward's preprocessing on a CubeCL backend: `D = rowsum(dO ∘ O)`, one f32 per
//! (token, head) (FlashAttention-2's `dot(dO, O)`), from one read of dO and O in their own
//! dtype. Done with Burn's ops it took four launches (two casts to f32, a product, a sum)
//! and wrote three f32 copies of `[total, heads, head_dim]`.

use burn::tensor::{DType, Shape};
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::ops::numeric::empty_device_contiguous_dtype;
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::CubeRuntime;
use cubecl::prelude::*;

use crate::grid::{linear_grid, widest_vector};

/// Rows (token, head) per cube, one unit each.
const UNITS: usize = 256;

#[cube(launch)]
fn attention_delta_kernel<F: Float, N: Size>(
    d_out: &Tensor<Vector<F, N>>, // [total, heads, head_dim], contiguous
    out: &Tensor<Vector<F, N>>,   // [total, heads, head_dim], contiguous
    delta: &mut Tensor<f32>,      // [total, heads]
    #[comptime] head_dim: usize,
    #[comptime] units: usize,
    #[define(F)] _dtype: StorageType,
) {
    let row = CUBE_POS * units + UNIT_POS as usize;
    if row < delta.len() {
        let vector = N::value();
        let row_vectors = comptime!(head_dim / vector);
        let mut sum = f32::new(0.0);
        for j in 0..row_vectors {
            let a = d_out[row * row_vectors + j];
            let b = out[row * row_vectors + j];
            #[unroll]
            for e in 0..vector {
                sum += f32::cast_from(a[e]) * f32::cast_from(b[e]);
            }
        }
        delta[row] = sum;
    }
}

/// `D = rowsum(dO ∘ O)` in f32, `[total, heads]`, for dO and O `[total, heads, head_dim]` of
/// one dtype.
pub(crate) fn attention_delta<R: CubeRuntime>(
    d_out: CubeTensor<R>,
    out: CubeTensor<R>,
) -> CubeTensor<R> {
    let [total, heads, head_dim] = out.meta.shape().dims::<3>();
    let (d_out, out) = (into_contiguous(d_out), into_contiguous(out));
    let client = out.client.clone();
    let delta = empty_device_contiguous_dtype(
        client.clone(),
        out.device.clone(),
        Shape::new([total, heads]),
        DType::F32,
    );
    let rows = total * heads;
    if rows == 0 {
        return delta;
    }
    let dtype = out.dtype;
    let vector = widest_vector(&client, head_dim, dtype);
    attention_delta_kernel::launch::<R>(
        &client,
        linear_grid(rows.div_ceil(UNITS)),
        CubeDim::new_1d(UNITS as u32),
        vector,
        d_out.into_tensor_arg(),
        out.into_tensor_arg(),
        delta.clone().into_tensor_arg(),
        head_dim,
        UNITS,
        dtype.into(),
    );
    delta
}
