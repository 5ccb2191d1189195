//! LayerNorm forward and backward as CubeCL kernels over `[rows, W]` (contiguous).
//!
//! A row belongs to `units` units of a cube (a power of two, 32 to 256); a cube holds
//! `rows_per_cube` such rows side by side (`CUBE_DIM_Y`). Unit `x` owns the vectors
//! `x, x + units, x + 2·units, …` of its row (coalesced across units) and keeps them in
//! registers (`per_unit` of them), so x is read from memory once. Row sums go through a
//! shared-memory tree (deterministic, no atomics, no plane ops so it runs on every WGSL
//! device). Everything is computed in f32 whatever the storage dtype; the variance is the
//! mean of `(x − mean)²` over the registers (two passes, stable).
//!
//! The backward walks a fixed set of rows per `slice` (one row of the cube layout) and
//! accumulates `g·x̂` and `g` per column in registers, written once per slice into f32
//! partial sums `[slices, W]`; Burn's `sum_dim` over the slices gives dγ and dβ.

use burn::tensor::{DType, Shape};
use burn_cubecl::kernel::{cast, into_contiguous};
use burn_cubecl::ops::numeric::{empty_device_contiguous_dtype, zeros_client};
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::CubeRuntime;
use cubecl::prelude::*;

use crate::grid::widest_vector;

/// Above this many vectors per unit the register loops are no longer unrolled (rows wider
/// than `256 · 8` vectors stay correct but spill to local memory).
const UNROLL_LIMIT: usize = 8;

/// Units of a cube that share rows (at least this many per cube).
const MIN_CUBE_UNITS: usize = 128;

/// Backward cubes per streaming multiprocessor: enough warps to keep loads in flight, few
/// enough that the f32 partial sums `[slices, W]` stay small next to x, grad and dx.
const BACKWARD_CUBES_PER_SM: usize = 4;

/// Backward cubes where the device does not report its multiprocessors (wgpu).
const BACKWARD_CUBES_DEFAULT: usize = 256;

/// The sum of a vector's lanes.
#[cube]
fn lane_sum<N: Size>(v: Vector<f32, N>) -> f32 {
    let mut sum = 0.0f32;
    #[unroll]
    for k in 0..N::value() {
        sum += v[k];
    }
    sum
}

/// Sums, for `values` slots, the `units` entries each unit of one row wrote at
/// `smem[j · stride + base + x]`; the total of slot `j` ends at `smem[j · stride + base]`.
/// Every unit of the cube must call it (it synchronises the cube before and after).
#[cube]
fn row_sums(
    smem: &mut SharedMemory<f32>,
    base: usize,
    x: usize,
    #[comptime] units: usize,
    #[comptime] values: usize,
    #[comptime] stride: usize,
) {
    sync_cube();
    let mut active = units.runtime();
    while active > 1 {
        active /= 2;
        if x < active {
            #[unroll]
            for j in 0..values {
                let at = j * stride + base + x;
                let other = smem[at + active];
                smem[at] += other;
            }
        }
        sync_cube();
    }
}

/// The cube's index in a 2-D grid (wgpu caps each grid dimension at 65535).
#[cube]
fn cube_index() -> usize {
    CUBE_POS_Y as usize * CUBE_COUNT_X as usize + CUBE_POS_X as usize
}

#[cube(launch)]
#[allow(clippy::too_many_arguments)]
fn layer_norm_kernel<F: Float, N: Size>(
    x: &Tensor<Vector<F, N>>,     // [rows, W]
    gamma: &Tensor<Vector<F, N>>, // [W]
    beta: &Tensor<Vector<F, N>>,  // [W], read only if has_beta
    y: &mut Tensor<Vector<F, N>>, // [rows, W]
    mean: &mut Tensor<f32>,       // [rows]
    rstd: &mut Tensor<f32>,       // [rows]
    epsilon: f32,
    #[comptime] units: usize,
    #[comptime] rows_per_cube: usize,
    #[comptime] per_unit: usize,
    #[comptime] has_beta: bool,
    #[define(F)] _dtype: StorageType,
) {
    let ux = UNIT_POS_X as usize;
    let base = UNIT_POS_Y as usize * units;
    let stride = comptime!(units * rows_per_cube);
    let width = y.shape(1);
    let vectors = width / N::value();
    let row = cube_index() * rows_per_cube + UNIT_POS_Y as usize;
    // Rows past the end still take part in every barrier; they only skip memory.
    let valid = row < y.shape(0);
    let mut smem = SharedMemory::<f32>::new(comptime!(2 * units * rows_per_cube));

    let mut cache = Array::<Vector<f32, N>>::new(per_unit);
    let mut sum = Vector::<f32, N>::new(0.0);
    #[unroll(per_unit <= UNROLL_LIMIT)]
    for i in 0..per_unit {
        let col = ux + i * units;
        let mut v = Vector::<f32, N>::new(0.0);
        if valid && col < vectors {
            v = Vector::cast_from(x[row * vectors + col]);
        }
        cache[i] = v;
        sum += v;
    }
    smem[base + ux] = lane_sum(sum);
    row_sums(&mut smem, base, ux, units, 1usize, stride);
    let mu = smem[base] / f32::cast_from(width);

    let mut square = Vector::<f32, N>::new(0.0);
    #[unroll(per_unit <= UNROLL_LIMIT)]
    for i in 0..per_unit {
        if ux + i * units < vectors {
            let d = cache[i] - Vector::new(mu);
            square += d * d;
        }
    }
    smem[stride + base + ux] = lane_sum(square);
    row_sums(&mut smem, stride + base, ux, units, 1usize, stride);
    let r = 1.0f32 / f32::sqrt(smem[stride + base] / f32::cast_from(width) + epsilon);

    if valid {
        #[unroll(per_unit <= UNROLL_LIMIT)]
        for i in 0..per_unit {
            let col = ux + i * units;
            if col < vectors {
                let mut out = (cache[i] - Vector::new(mu))
                    * Vector::new(r)
                    * Vector::<f32, N>::cast_from(gamma[col]);
                if has_beta {
                    out += Vector::<f32, N>::cast_from(beta[col]);
                }
                y[row * vectors + col] = Vector::cast_from(out);
            }
        }
        if ux == 0 {
            mean[row] = mu;
            rstd[row] = r;
        }
    }
}

#[cube(launch)]
#[allow(clippy::too_many_arguments)]
fn layer_norm_backward_kernel<F: Float, N: Size>(
    x: &Tensor<Vector<F, N>>,             // [rows, W]
    gamma: &Tensor<Vector<F, N>>,         // [W]
    mean: &Tensor<f32>,                   // [rows]
    rstd: &Tensor<f32>,                   // [rows]
    grad: &Tensor<Vector<F, N>>,          // [rows, W]
    d_x: &mut Tensor<Vector<F, N>>,       // [rows, W]
    d_gamma: &mut Tensor<Vector<f32, N>>, // [slices, W] partial sums
    d_beta: &mut Tensor<Vector<f32, N>>,  // [slices, W] partial sums, written if has_beta
    #[comptime] units: usize,
    #[comptime] rows_per_cube: usize,
    #[comptime] per_unit: usize,
    #[comptime] has_beta: bool,
    #[define(F)] _dtype: StorageType,
) {
    let ux = UNIT_POS_X as usize;
    let base = UNIT_POS_Y as usize * units;
    let stride = comptime!(units * rows_per_cube);
    let rows = x.shape(0);
    let width = x.shape(1);
    let vectors = width / N::value();
    let slices = d_gamma.shape(0);
    let slice = cube_index() * rows_per_cube + UNIT_POS_Y as usize;
    let mut smem = SharedMemory::<f32>::new(comptime!(2 * units * rows_per_cube));

    let mut weight = Array::<Vector<f32, N>>::new(per_unit);
    let mut x_hat = Array::<Vector<f32, N>>::new(per_unit);
    let mut scaled = Array::<Vector<f32, N>>::new(per_unit);
    let mut acc_gamma = Array::<Vector<f32, N>>::new(per_unit);
    let mut acc_beta = Array::<Vector<f32, N>>::new(per_unit);
    #[unroll(per_unit <= UNROLL_LIMIT)]
    for i in 0..per_unit {
        let col = ux + i * units;
        let mut w = Vector::<f32, N>::new(0.0);
        if col < vectors {
            w = Vector::cast_from(gamma[col]);
        }
        weight[i] = w;
        acc_gamma[i] = Vector::new(0.0);
        acc_beta[i] = Vector::new(0.0);
    }

    // The same trip count for every unit of the cube (the loop holds barriers).
    let steps = rows.div_ceil(slices);
    for step in 0..steps {
        let row = slice + step * slices;
        let valid = row < rows;
        let mut m = 0.0f32;
        let mut r = 0.0f32;
        if valid {
            m = mean[row];
            r = rstd[row];
        }
        let mut sum_scaled = Vector::<f32, N>::new(0.0);
        let mut sum_scaled_x_hat = Vector::<f32, N>::new(0.0);
        #[unroll(per_unit <= UNROLL_LIMIT)]
        for i in 0..per_unit {
            let col = ux + i * units;
            if valid && col < vectors {
                let at = row * vectors + col;
                let xh = (Vector::<f32, N>::cast_from(x[at]) - Vector::new(m)) * Vector::new(r);
                let g = Vector::<f32, N>::cast_from(grad[at]);
                let s = g * weight[i];
                x_hat[i] = xh;
                scaled[i] = s;
                sum_scaled += s;
                sum_scaled_x_hat += s * xh;
                acc_gamma[i] += g * xh;
                if has_beta {
                    acc_beta[i] += g;
                }
            }
        }
        smem[base + ux] = lane_sum(sum_scaled);
        smem[stride + base + ux] = lane_sum(sum_scaled_x_hat);
        row_sums(&mut smem, base, ux, units, 2usize, stride);
        let inv_width = 1.0f32 / f32::cast_from(width);
        let mean_scaled = Vector::<f32, N>::new(smem[base] * inv_width);
        let mean_scaled_x_hat = Vector::<f32, N>::new(smem[stride + base] * inv_width);
        // Everyone has read the totals before the next row overwrites them.
        sync_cube();
        if valid {
            #[unroll(per_unit <= UNROLL_LIMIT)]
            for i in 0..per_unit {
                let col = ux + i * units;
                if col < vectors {
                    let dx =
                        (scaled[i] - mean_scaled - x_hat[i] * mean_scaled_x_hat) * Vector::new(r);
                    d_x[row * vectors + col] = Vector::cast_from(dx);
                }
            }
        }
    }

    if slice < slices {
        #[unroll(per_unit <= UNROLL_LIMIT)]
        for i in 0..per_unit {
            let col = ux + i * units;
            if col < vectors {
                d_gamma[slice * vectors + col] = acc_gamma[i];
                if has_beta {
                    d_beta[slice * vectors + col] = acc_beta[i];
                }
            }
        }
    }
}

/// How rows map onto cubes and units.
#[derive(Debug, Clone, Copy)]
struct RowLayout {
    /// Vector width in elements (divides W).
    vector: usize,
    /// Units per row, a power of two.
    units: usize,
    /// Rows per cube.
    rows_per_cube: usize,
    /// Vectors each unit keeps in registers.
    per_unit: usize,
    /// Cubes the backward spreads the rows over (at most).
    backward_cubes: usize,
}

impl RowLayout {
    fn new<R: CubeRuntime>(client: &ComputeClient<R>, width: usize, dtype: DType) -> Self {
        let hardware = &client.properties().hardware;
        let vector = widest_vector(client, width, dtype);
        let vectors = width / vector;
        let max_units = (hardware.max_units_per_cube as usize).clamp(1, 256);
        let max_units = 1 << max_units.ilog2();
        // About four vectors per unit.
        let units = vectors
            .div_ceil(4)
            .next_power_of_two()
            .clamp(32.min(max_units), max_units);
        let backward_cubes = hardware
            .num_streaming_multiprocessors
            .map_or(BACKWARD_CUBES_DEFAULT, |sms| {
                sms as usize * BACKWARD_CUBES_PER_SM
            });
        Self {
            vector,
            units,
            rows_per_cube: (MIN_CUBE_UNITS / units).max(1),
            per_unit: vectors.div_ceil(units),
            backward_cubes: backward_cubes.max(1),
        }
    }

    fn cube_dim(&self) -> CubeDim {
        CubeDim::new_2d(self.units as u32, self.rows_per_cube as u32)
    }

    /// A 2-D grid of enough cubes for `rows` rows.
    fn cube_count(&self, rows: usize) -> CubeCount {
        let cubes = rows.div_ceil(self.rows_per_cube).max(1);
        let x = cubes.min(65535);
        CubeCount::Static(x as u32, cubes.div_ceil(x) as u32, 1)
    }

    /// Slices of the backward: the cube grid's rows, all used.
    fn slices(&self, rows: usize) -> usize {
        let cubes = rows
            .div_ceil(self.rows_per_cube)
            .clamp(1, self.backward_cubes);
        cubes * self.rows_per_cube
    }
}

/// LayerNorm of `[rows, W]`; returns `(y, mean, rstd)` (statistics f32 `[rows]`). See
/// [`crate::layer_norm::layer_norm`].
pub(crate) fn layer_norm<R: CubeRuntime>(
    x: CubeTensor<R>,
    gamma: CubeTensor<R>,
    beta: Option<CubeTensor<R>>,
    epsilon: f64,
) -> (CubeTensor<R>, CubeTensor<R>, CubeTensor<R>) {
    let [rows, width] = x.meta.shape().dims::<2>();
    let x = into_contiguous(x);
    let dtype = x.dtype;
    let (client, device) = (x.client.clone(), x.device.clone());
    let alloc = |shape: Vec<usize>, dtype| {
        empty_device_contiguous_dtype(client.clone(), device.clone(), Shape::from(shape), dtype)
    };
    let y = alloc(vec![rows, width], dtype);
    let mean = alloc(vec![rows], DType::F32);
    let rstd = alloc(vec![rows], DType::F32);
    if rows * width == 0 {
        return (y, mean, rstd);
    }
    let gamma = into_contiguous(cast(gamma, dtype));
    let has_beta = beta.is_some();
    // Without β the kernel gets γ in its place and never reads it.
    let beta = beta.map_or_else(|| gamma.clone(), |b| into_contiguous(cast(b, dtype)));
    let layout = RowLayout::new(&client, width, dtype);
    layer_norm_kernel::launch::<R>(
        &client,
        layout.cube_count(rows),
        layout.cube_dim(),
        layout.vector,
        x.into_tensor_arg(),
        gamma.into_tensor_arg(),
        beta.into_tensor_arg(),
        y.clone().into_tensor_arg(),
        mean.clone().into_tensor_arg(),
        rstd.clone().into_tensor_arg(),
        epsilon as f32,
        layout.units,
        layout.rows_per_cube,
        layout.per_unit,
        has_beta,
        dtype.into(),
    );
    (y, mean, rstd)
}

/// The backward of [`layer_norm`]: returns `(dx, dγ partial sums, dβ partial sums)`, the
/// partial sums f32 `[slices, W]` to be summed over dim 0 (dβ's only if `has_beta`). See
/// [`crate::layer_norm::layer_norm_backward_reference`] for the formulas.
///
/// # Shapes
/// - x, grad: `[rows, W]`, gamma: `[W]`, mean, rstd: `[rows]` (f32)
pub(crate) fn layer_norm_backward<R: CubeRuntime>(
    x: CubeTensor<R>,
    gamma: CubeTensor<R>,
    mean: CubeTensor<R>,
    rstd: CubeTensor<R>,
    grad: CubeTensor<R>,
    has_beta: bool,
) -> (CubeTensor<R>, CubeTensor<R>, Option<CubeTensor<R>>) {
    let [rows, width] = x.meta.shape().dims::<2>();
    let x = into_contiguous(x);
    let dtype = x.dtype;
    let (client, device) = (x.client.clone(), x.device.clone());
    let layout = RowLayout::new(&client, width, dtype);
    let slices = layout.slices(rows);
    let alloc = |shape: [usize; 2], dtype| {
        empty_device_contiguous_dtype(client.clone(), device.clone(), Shape::new(shape), dtype)
    };
    let d_x = alloc([rows, width], dtype);
    if rows * width == 0 {
        let zeros = || {
            zeros_client(
                client.clone(),
                device.clone(),
                Shape::new([1, width]),
                DType::F32,
            )
        };
        return (d_x, zeros(), has_beta.then(zeros));
    }
    let d_gamma = alloc([slices, width], DType::F32);
    // Without β the kernel gets dγ's buffer in its place and never writes it.
    let d_beta = has_beta.then(|| alloc([slices, width], DType::F32));
    let gamma = into_contiguous(cast(gamma, dtype));
    let grad = into_contiguous(cast(grad, dtype));
    let (mean, rstd) = (into_contiguous(mean), into_contiguous(rstd));
    layer_norm_backward_kernel::launch::<R>(
        &client,
        layout.cube_count(slices),
        layout.cube_dim(),
        layout.vector,
        x.into_tensor_arg(),
        gamma.into_tensor_arg(),
        mean.into_tensor_arg(),
        rstd.into_tensor_arg(),
        grad.into_tensor_arg(),
        d_x.clone().into_tensor_arg(),
        d_gamma.clone().into_tensor_arg(),
        d_beta
            .as_ref()
            .unwrap_or(&d_gamma)
            .clone()
            .into_tensor_arg(),
        layout.units,
        layout.rows_per_cube,
        layout.per_unit,
        has_beta,
        dtype.into(),
    );
    (d_x, d_gamma, d_beta)
}
