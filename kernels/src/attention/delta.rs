//! The backward's preprocessing on a CubeCL backend: `D = rowsum(dO ∘ O)`, one f32 per
//! (token, head) (FlashAttention-2's `dot(dO, O)`), from one read of dO and O in their own
//! dtype. Done with Burn's ops it took four launches (two casts to f32, a product, a sum)
//! and wrote three f32 copies of `[total, heads, head_dim]`.
//!
//! Where the device has plane shuffles, the vectors of a row are read by consecutive units
//! together (each warp load covers whole rows, coalesced) and their partial sums combined
//! with shuffles; elsewhere each unit reads a row alone. The same launch can also zero the
//! f32 `dQ` accumulator that the fused backward kernel adds into (`backward.rs`), sparing a
//! launch of its own.

use burn::tensor::{DType, Shape};
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::ops::numeric::empty_device_contiguous_dtype;
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::CubeRuntime;
use cubecl::features::Plane;
use cubecl::prelude::*;

use super::kernel_cmma::row_sum;
use crate::grid::{linear_grid, widest_vector};

/// Units per cube.
const UNITS: usize = 256;
/// Most units that share a row (8 vectors of 16 bytes: a 64-wide bf16 row).
const MAX_LANES_PER_ROW: usize = 8;

#[cube(launch)]
#[allow(clippy::too_many_arguments)]
fn attention_delta_kernel<F: Float, N: Size, Z: Size>(
    d_out: &Array<Vector<F, N>>, // [total, heads, head_dim], contiguous
    out: &Array<Vector<F, N>>,   // [total, heads, head_dim], contiguous
    delta: &mut Array<f32>,      // [total, heads]
    zeroed: &mut Array<Vector<f32, Z>>, // [total, heads, head_dim] f32 (with `zero`)
    #[comptime] head_dim: usize,
    #[comptime] units: usize,
    #[comptime] lanes_per_row: usize,
    #[comptime] zero: bool,
    #[define(F)] _dtype: StorageType,
) {
    let unit = CUBE_POS * units + UNIT_POS as usize;
    let row = unit / lanes_per_row;
    let lane = unit % lanes_per_row;
    let in_range = row < delta.len();
    let mut sum = f32::new(0.0);
    if in_range {
        sum = row_dot_part(d_out, out, row, lane, head_dim, lanes_per_row);
    }
    // Every unit of the plane takes part in the shuffles.
    let sum = row_sum(sum, lanes_per_row);
    if in_range {
        if lane == 0 {
            delta[row] = sum;
        }
        if comptime!(zero) {
            let zero_vector = Z::value();
            let zero_vectors = comptime!(head_dim / zero_vector);
            #[unroll]
            for i in 0..comptime!(zero_vectors.div_ceil(lanes_per_row)) {
                let j = i * lanes_per_row + lane;
                if comptime!(zero_vectors % lanes_per_row == 0) || j < zero_vectors {
                    zeroed[row * zero_vectors + j] = Vector::new(0.0);
                }
            }
        }
    }
}

/// The part of `dot(dO, O)` of row `row` (a `token · heads + head` index) that unit `lane`
/// of the `lanes` units sharing the row sums, in f32: the row's vectors `lane, lane + lanes,
/// ..`.
#[cube]
fn row_dot_part<F: Float, N: Size>(
    d_out: &Array<Vector<F, N>>,
    out: &Array<Vector<F, N>>,
    row: usize,
    lane: usize,
    #[comptime] head_dim: usize,
    #[comptime] lanes: usize,
) -> f32 {
    let vector = N::value();
    let row_vectors = comptime!(head_dim / vector);
    let mut sum = f32::new(0.0);
    #[unroll]
    for i in 0..comptime!(row_vectors.div_ceil(lanes)) {
        let j = i * lanes + lane;
        if comptime!(row_vectors % lanes == 0) || j < row_vectors {
            let a = d_out[row * row_vectors + j];
            let b = out[row * row_vectors + j];
            #[unroll]
            for e in 0..vector {
                sum += f32::cast_from(a[e]) * f32::cast_from(b[e]);
            }
        }
    }
    sum
}

/// `D = rowsum(dO ∘ O)` in f32, `[total, heads]`, for dO and O `[total, heads, head_dim]` of
/// one dtype; with `zeroed` (an f32 `[total, heads, head_dim]` tensor), also sets it to zero.
pub(crate) fn attention_delta<R: CubeRuntime>(
    d_out: CubeTensor<R>,
    out: CubeTensor<R>,
    zeroed: Option<&CubeTensor<R>>,
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
    let plane_size = client.properties().hardware.plane_size_min as usize;
    let lanes_per_row = if client.properties().features.plane.contains(Plane::Ops) {
        (head_dim / vector)
            .next_power_of_two()
            .min(MAX_LANES_PER_ROW)
            .min(plane_size.max(1))
    } else {
        1
    };
    let zero = zeroed.is_some();
    let (zeroed, zero_vector) = match zeroed {
        Some(tensor) => (tensor.clone(), widest_vector(&client, head_dim, DType::F32)),
        // A placeholder the kernel never touches.
        None => (
            empty_device_contiguous_dtype(
                client.clone(),
                out.device.clone(),
                Shape::new([1]),
                DType::F32,
            ),
            1,
        ),
    };
    attention_delta_kernel::launch::<R>(
        &client,
        linear_grid((rows * lanes_per_row).div_ceil(UNITS)),
        CubeDim::new_1d(UNITS as u32),
        vector,
        zero_vector,
        d_out.into_array_arg(),
        out.into_array_arg(),
        delta.clone().into_array_arg(),
        zeroed.into_array_arg(),
        head_dim,
        UNITS,
        lanes_per_row,
        zero,
        dtype.into(),
    );
    delta
}
