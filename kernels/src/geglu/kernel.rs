//! GeGLU forward and backward as single CubeCL kernels over `[rows, 2I]` (contiguous).
//!
//! One unit handles one vector of `N` features of one row: it reads `input` and `gate` at
//! the same column of the two halves, computes in f32 and writes its outputs. The vector
//! width divides `I`, so a vector never straddles the two halves or two rows.

use std::f32::consts::{FRAC_1_SQRT_2, PI};

use burn::tensor::Shape;
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::ops::numeric::empty_device_contiguous_dtype;
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::CubeRuntime;
use cubecl::calculate_cube_count_elemwise;
use cubecl::prelude::*;

/// Φ(x), the standard normal CDF, in f32.
#[cube]
fn normal_cdf<N: Size>(x: Vector<f32, N>) -> Vector<f32, N> {
    Vector::new(0.5f32) * (Vector::new(1.0f32) + (x * Vector::new(FRAC_1_SQRT_2)).erf())
}

/// φ(x), the standard normal density, in f32.
#[cube]
fn normal_pdf<N: Size>(x: Vector<f32, N>) -> Vector<f32, N> {
    let scale = Vector::new(comptime!(1.0f32 / (2.0 * PI).sqrt()));
    scale * (Vector::new(-0.5f32) * x * x).exp()
}

#[cube(launch)]
fn geglu_kernel<F: Float, N: Size>(
    x: &Tensor<Vector<F, N>>,       // [rows, 2I]
    out: &mut Tensor<Vector<F, N>>, // [rows, I]
    #[define(F)] _dtype: StorageType,
) {
    let pos = ABSOLUTE_POS;
    if pos >= out.len() {
        terminate!();
    }
    let half = out.shape(1) / N::value(); // vectors per half row
    let at = (pos / half) * 2 * half + pos % half;
    let input = Vector::<f32, N>::cast_from(x[at]);
    let gate = Vector::<f32, N>::cast_from(x[at + half]);
    out[pos] = Vector::cast_from(input * normal_cdf(input) * gate);
}

#[cube(launch)]
fn geglu_backward_kernel<F: Float, N: Size>(
    x: &Tensor<Vector<F, N>>,       // [rows, 2I]
    grad: &Tensor<Vector<F, N>>,    // [rows, I]
    d_x: &mut Tensor<Vector<F, N>>, // [rows, 2I]
    #[define(F)] _dtype: StorageType,
) {
    let pos = ABSOLUTE_POS;
    if pos >= grad.len() {
        terminate!();
    }
    let half = grad.shape(1) / N::value();
    let at = (pos / half) * 2 * half + pos % half;
    let input = Vector::<f32, N>::cast_from(x[at]);
    let gate = Vector::<f32, N>::cast_from(x[at + half]);
    let d_out = Vector::<f32, N>::cast_from(grad[pos]);
    let cdf = normal_cdf(input);
    d_x[at] = Vector::cast_from(d_out * gate * (cdf + input * normal_pdf(input)));
    d_x[at + half] = Vector::cast_from(d_out * input * cdf);
}

/// The widest vector (in elements) that divides `half` and the device allows.
fn vector_size<R: CubeRuntime>(client: &ComputeClient<R>, half: usize) -> usize {
    let max = client.properties().hardware.max_vector_size;
    [8, 4, 2, 1]
        .into_iter()
        .find(|&v| v <= max && half.is_multiple_of(v))
        .unwrap_or(1)
}

/// Launch geometry for `units` units of 256.
fn grid<R: CubeRuntime>(client: &ComputeClient<R>, units: usize) -> (CubeCount, CubeDim) {
    let cube_dim = CubeDim::new_1d(256);
    (
        calculate_cube_count_elemwise(client, units, cube_dim),
        cube_dim,
    )
}

/// `gelu(input) · gate`; see [`crate::geglu::geglu`].
///
/// # Shapes
/// - x: `[rows, 2I]`; output: `[rows, I]`
pub(crate) fn geglu<R: CubeRuntime>(x: CubeTensor<R>) -> CubeTensor<R> {
    let [rows, width] = x.meta.shape().dims::<2>();
    let x = into_contiguous(x);
    let half = width / 2;
    let out = empty_device_contiguous_dtype(
        x.client.clone(),
        x.device.clone(),
        Shape::new([rows, half]),
        x.dtype,
    );
    if rows * half == 0 {
        return out;
    }
    let client = x.client.clone();
    let vector = vector_size(&client, half);
    let (count, dim) = grid(&client, rows * half / vector);
    let dtype = x.dtype;
    geglu_kernel::launch::<R>(
        &client,
        count,
        dim,
        vector,
        x.into_tensor_arg(),
        out.clone().into_tensor_arg(),
        dtype.into(),
    );
    out
}

/// Gradient of [`geglu`] with respect to `x`; see
/// [`crate::geglu::geglu_backward_reference`] for the formulas.
///
/// # Shapes
/// - x: `[rows, 2I]`, grad: `[rows, I]`; output: `[rows, 2I]`
pub(crate) fn geglu_backward<R: CubeRuntime>(
    x: CubeTensor<R>,
    grad: CubeTensor<R>,
) -> CubeTensor<R> {
    let [rows, width] = x.meta.shape().dims::<2>();
    let (x, grad) = (into_contiguous(x), into_contiguous(grad));
    let half = width / 2;
    let d_x = empty_device_contiguous_dtype(
        x.client.clone(),
        x.device.clone(),
        Shape::new([rows, width]),
        x.dtype,
    );
    if rows * half == 0 {
        return d_x;
    }
    let client = x.client.clone();
    let vector = vector_size(&client, half);
    let (count, dim) = grid(&client, rows * half / vector);
    let dtype = x.dtype;
    geglu_backward_kernel::launch::<R>(
        &client,
        count,
        dim,
        vector,
        x.into_tensor_arg(),
        grad.into_tensor_arg(),
        d_x.clone().into_tensor_arg(),
        dtype.into(),
    );
    d_x
}
