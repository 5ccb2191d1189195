//! The StableAdamW update on a CubeCL backend: two kernels per tensor (see `mod.rs`).
//!
//! Both launch the same grid: cube `c` of [`UNITS`] units owns elements
//! `c · UNITS · ELEMS ..` of the flat tensor, [`ELEMS`] per unit (coalesced: unit `u` takes
//! `u, u + UNITS, …`). The first writes the new moments and one partial sum of
//! `g² / max(v, ε²)` per cube; the second has every cube sum the partials (in the same order:
//! all cubes agree on the rms), then update its elements.

use burn::tensor::{DType, Shape};
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::ops::numeric::empty_device_contiguous_dtype;
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::CubeRuntime;
use cubecl::prelude::*;

use crate::grid::linear_grid;

use super::StableAdamWStep;

/// Units per cube (a power of two, for the tree sum).
const UNITS: usize = 256;
/// Elements per unit.
const ELEMS: usize = 16;

/// Sum of `value` over the cube's `units` units (shared-memory tree; every unit gets it).
#[cube]
fn cube_sum(value: f32, #[comptime] units: usize) -> f32 {
    let mut shared = SharedMemory::<f32>::new(units);
    let unit = UNIT_POS as usize;
    shared[unit] = value;
    sync_cube();
    #[unroll]
    for level in 0..comptime!(units.trailing_zeros() as usize) {
        let stride = comptime!(units >> (level + 1));
        if unit < stride {
            shared[unit] += shared[unit + stride];
        }
        sync_cube();
    }
    shared[0]
}

#[cube(launch)]
#[allow(clippy::too_many_arguments)]
fn stable_adamw_moments_kernel<F: Float>(
    grad: &Tensor<F>,               // [n]
    exp_avg: &Tensor<F>,            // [n]
    exp_avg_sq: &Tensor<F>,         // [n]
    new_exp_avg: &mut Tensor<F>,    // [n]
    new_exp_avg_sq: &mut Tensor<F>, // [n]
    partials: &mut Tensor<f32>,     // [cubes]
    beta_1: f32,
    beta_2: f32,
    epsilon_sq: f32,
    #[comptime] units: usize,
    #[comptime] elems: usize,
    #[define(F)] _dtype: StorageType,
) {
    let mut sum = f32::new(0.0);
    #[unroll]
    for k in 0..elems {
        let i = (CUBE_POS * elems + k) * units + UNIT_POS as usize;
        if i < grad.len() {
            let g = f32::cast_from(grad[i]);
            let m = beta_1 * f32::cast_from(exp_avg[i]) + (1.0 - beta_1) * g;
            let v = beta_2 * f32::cast_from(exp_avg_sq[i]) + (1.0 - beta_2) * g * g;
            new_exp_avg[i] = F::cast_from(m);
            new_exp_avg_sq[i] = F::cast_from(v);
            // The rms sees v as stored, as the reference does.
            let v_stored = f32::cast_from(F::cast_from(v));
            sum += g * g / select(v_stored > epsilon_sq, v_stored, epsilon_sq);
        }
    }
    let total = cube_sum(sum, units);
    if UNIT_POS == 0 && CUBE_POS < partials.len() {
        partials[CUBE_POS] = total;
    }
}

#[cube(launch)]
#[allow(clippy::too_many_arguments)]
fn stable_adamw_update_kernel<F: Float>(
    param: &Tensor<F>,         // [n]
    exp_avg: &Tensor<F>,       // [n], the new moments
    exp_avg_sq: &Tensor<F>,    // [n]
    partials: &Tensor<f32>,    // [cubes]
    new_param: &mut Tensor<F>, // [n]
    lr: f32,
    epsilon: f32,
    decay: f32,
    #[comptime] units: usize,
    #[comptime] elems: usize,
    #[define(F)] _dtype: StorageType,
) {
    let unit = UNIT_POS as usize;
    let mut part = f32::new(0.0);
    let mut j = unit;
    while j < partials.len() {
        part += partials[j];
        j += units;
    }
    let rms = (cube_sum(part, units) / f32::cast_from(param.len())).sqrt();
    let eta = lr / select(rms > 1.0, rms, 1.0);
    let keep = 1.0 - eta * decay;
    #[unroll]
    for k in 0..elems {
        let i = (CUBE_POS * elems + k) * units + unit;
        if i < param.len() {
            let m = f32::cast_from(exp_avg[i]);
            let v = f32::cast_from(exp_avg_sq[i]);
            let theta = f32::cast_from(param[i]) * keep - eta * m / (v.sqrt() + epsilon);
            new_param[i] = F::cast_from(theta);
        }
    }
}

/// One update of flat tensors; returns `(param, exp_avg, exp_avg_sq)`.
///
/// # Shapes
/// - param, grad, exp_avg, exp_avg_sq: `[n]`; outputs likewise
pub(crate) fn stable_adamw_step<R: CubeRuntime>(
    param: CubeTensor<R>,
    grad: CubeTensor<R>,
    exp_avg: CubeTensor<R>,
    exp_avg_sq: CubeTensor<R>,
    step: &StableAdamWStep,
) -> (CubeTensor<R>, CubeTensor<R>, CubeTensor<R>) {
    let [param, grad, exp_avg, exp_avg_sq] =
        [param, grad, exp_avg, exp_avg_sq].map(into_contiguous);
    let n = param.meta.shape().num_elements();
    let (client, device, dtype) = (param.client.clone(), param.device.clone(), param.dtype);
    let empty = |shape: Shape, dtype: DType| {
        empty_device_contiguous_dtype(client.clone(), device.clone(), shape, dtype)
    };
    let (new_exp_avg, new_exp_avg_sq, new_param) = (
        empty(Shape::new([n]), exp_avg.dtype),
        empty(Shape::new([n]), exp_avg_sq.dtype),
        empty(Shape::new([n]), dtype),
    );
    if n == 0 {
        return (new_param, new_exp_avg, new_exp_avg_sq);
    }
    let cubes = n.div_ceil(UNITS * ELEMS);
    let partials = empty(Shape::new([cubes]), DType::F32);
    // Cubes past `cubes` (a 2-D grid's last row) find no elements and write no partial.
    let (count, dim) = (linear_grid(cubes), CubeDim::new_1d(UNITS as u32));
    stable_adamw_moments_kernel::launch::<R>(
        &client,
        count.clone(),
        dim,
        grad.into_tensor_arg(),
        exp_avg.into_tensor_arg(),
        exp_avg_sq.into_tensor_arg(),
        new_exp_avg.clone().into_tensor_arg(),
        new_exp_avg_sq.clone().into_tensor_arg(),
        partials.clone().into_tensor_arg(),
        step.beta_1 as f32,
        step.beta_2 as f32,
        (step.epsilon * step.epsilon) as f32,
        UNITS,
        ELEMS,
        dtype.into(),
    );
    stable_adamw_update_kernel::launch::<R>(
        &client,
        count,
        dim,
        param.into_tensor_arg(),
        new_exp_avg.clone().into_tensor_arg(),
        new_exp_avg_sq.clone().into_tensor_arg(),
        partials.into_tensor_arg(),
        new_param.clone().into_tensor_arg(),
        step.lr as f32,
        step.epsilon as f32,
        step.decay as f32,
        UNITS,
        ELEMS,
        dtype.into(),
    );
    (new_param, new_exp_avg, new_exp_avg_sq)
}
