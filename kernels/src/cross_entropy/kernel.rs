//! Cross-entropy on a CubeCL backend (see `mod.rs`), f32 arithmetic.
//!
//! - Forward: cube `r` walks row `r`, unit `u` taking columns `u, u + UNITS, …` (coalesced)
//!   with an online max and sum of exponentials and the first arg-max; a shared-memory tree
//!   then merges the units' `(max, sum, arg-max)` in a fixed order.
//! - Backward: unit per [`ELEMS`] logits, `(exp(x − lse) − [c = label]) · grad`.

use burn::tensor::{DType, Shape};
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::ops::numeric::empty_device_contiguous_dtype;
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::CubeRuntime;
use cubecl::prelude::*;

use crate::grid::linear_grid;

/// Units per cube (a power of two, for the tree).
const UNITS: usize = 256;
/// Logits per unit in the backward.
const ELEMS: usize = 8;
/// Below any finite logit the kernels see, as an initial running max (no ±∞ literals in
/// WGSL).
const LOWEST: f32 = -3.0e38;

#[cube(launch)]
#[allow(clippy::too_many_arguments)]
fn cross_entropy_kernel<F: Float, I: Int>(
    logits: &Tensor<F>,        // [rows, classes]
    labels: &Tensor<I>,        // [rows]
    loss: &mut Tensor<f32>,    // [rows]
    lse: &mut Tensor<f32>,     // [rows]
    predicted: &mut Tensor<I>, // [rows]
    nan: f32,
    #[comptime] units: usize,
    #[define(F, I)] _dtypes: [StorageType; 2],
) {
    let row = CUBE_POS;
    let unit = UNIT_POS as usize;
    let rows = labels.len();
    let classes = logits.shape(1);
    let mut max = f32::new(LOWEST);
    let mut sum = 0.0f32;
    let mut best = 0u32;
    if row < rows {
        let mut c = unit;
        while c < classes {
            let x = f32::cast_from(logits[row * classes + c]);
            if x > max {
                sum = sum * (max - x).exp() + 1.0;
                max = x;
                best = c as u32;
            } else {
                sum += (x - max).exp();
            }
            c += units;
        }
    }
    let mut maxes = SharedMemory::<f32>::new(units);
    let mut sums = SharedMemory::<f32>::new(units);
    let mut bests = SharedMemory::<u32>::new(units);
    maxes[unit] = max;
    sums[unit] = sum;
    bests[unit] = best;
    sync_cube();
    #[unroll]
    for level in 0..comptime!(units.trailing_zeros() as usize) {
        let stride = comptime!(units >> (level + 1));
        if unit < stride {
            let m_a = maxes[unit];
            let m_b = maxes[unit + stride];
            let top = select(m_b > m_a, m_b, m_a);
            sums[unit] = sums[unit] * (m_a - top).exp() + sums[unit + stride] * (m_b - top).exp();
            // Ties keep the lower column: unit `unit` holds lower columns of each stride.
            let b_a = bests[unit];
            let b_b = bests[unit + stride];
            let tie_best = select(b_b < b_a, b_b, b_a);
            bests[unit] = select(m_b > m_a, b_b, select(m_a > m_b, b_a, tie_best));
            maxes[unit] = top;
        }
        sync_cube();
    }
    if unit == 0 && row < rows {
        let total = maxes[0] + sums[0].ln();
        let label = u32::cast_from(labels[row]) as usize;
        let mut value = nan;
        if label < classes {
            value = total - f32::cast_from(logits[row * classes + label]);
        }
        loss[row] = value;
        lse[row] = total;
        predicted[row] = I::cast_from(bests[0]);
    }
}

#[cube(launch)]
fn cross_entropy_backward_kernel<F: Float, I: Int>(
    logits: &Tensor<F>,       // [rows, classes]
    labels: &Tensor<I>,       // [rows]
    lse: &Tensor<f32>,        // [rows]
    grad: &Tensor<f32>,       // [rows]
    d_logits: &mut Tensor<F>, // [rows, classes]
    #[comptime] units: usize,
    #[comptime] elems: usize,
    #[define(F, I)] _dtypes: [StorageType; 2],
) {
    let classes = logits.shape(1);
    #[unroll]
    for k in 0..elems {
        let i = (CUBE_POS * elems + k) * units + UNIT_POS as usize;
        if i < logits.len() {
            let row = i / classes;
            let column = i % classes;
            let label = u32::cast_from(labels[row]) as usize;
            let p = (f32::cast_from(logits[i]) - lse[row]).exp();
            let target = select(column == label, 1.0f32, 0.0f32);
            d_logits[i] = F::cast_from((p - target) * grad[row]);
        }
    }
}

/// `(loss, lse, predicted)` per row (see `mod.rs`).
///
/// # Shapes
/// - logits: `[rows, classes]`, labels: `[rows]`; outputs `[rows]`
pub(crate) fn cross_entropy<R: CubeRuntime>(
    logits: CubeTensor<R>,
    labels: CubeTensor<R>,
) -> (CubeTensor<R>, CubeTensor<R>, CubeTensor<R>) {
    let (logits, labels) = (into_contiguous(logits), into_contiguous(labels));
    let rows = logits.meta.shape()[0];
    let (client, device) = (logits.client.clone(), logits.device.clone());
    let empty = |dtype: DType| {
        empty_device_contiguous_dtype(client.clone(), device.clone(), Shape::new([rows]), dtype)
    };
    let (loss, lse, predicted) = (empty(DType::F32), empty(DType::F32), empty(labels.dtype));
    if rows == 0 {
        return (loss, lse, predicted);
    }
    let dtypes = [logits.dtype.into(), labels.dtype.into()];
    cross_entropy_kernel::launch::<R>(
        &client,
        linear_grid(rows),
        CubeDim::new_1d(UNITS as u32),
        logits.into_tensor_arg(),
        labels.into_tensor_arg(),
        loss.clone().into_tensor_arg(),
        lse.clone().into_tensor_arg(),
        predicted.clone().into_tensor_arg(),
        f32::NAN,
        UNITS,
        dtypes,
    );
    (loss, lse, predicted)
}

/// Gradient of the per-row loss with respect to the logits, in the logits' dtype.
///
/// # Shapes
/// - logits: `[rows, classes]`, labels, lse, grad: `[rows]`; output `[rows, classes]`
pub(crate) fn cross_entropy_backward<R: CubeRuntime>(
    logits: CubeTensor<R>,
    labels: CubeTensor<R>,
    lse: CubeTensor<R>,
    grad: CubeTensor<R>,
) -> CubeTensor<R> {
    let [logits, labels, lse, grad] = [logits, labels, lse, grad].map(into_contiguous);
    let shape = logits.meta.shape().clone();
    let n = shape.num_elements();
    let (client, device) = (logits.client.clone(), logits.device.clone());
    let d_logits = empty_device_contiguous_dtype(client.clone(), device, shape, logits.dtype);
    if n == 0 {
        return d_logits;
    }
    let dtypes = [logits.dtype.into(), labels.dtype.into()];
    cross_entropy_backward_kernel::launch::<R>(
        &client,
        linear_grid(n.div_ceil(UNITS * ELEMS)),
        CubeDim::new_1d(UNITS as u32),
        logits.into_tensor_arg(),
        labels.into_tensor_arg(),
        lse.into_tensor_arg(),
        grad.into_tensor_arg(),
        d_logits.clone().into_tensor_arg(),
        UNITS,
        ELEMS,
        dtypes,
    );
    d_logits
}
