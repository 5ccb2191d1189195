//! The q/k/v split with RoPE as one CubeCL kernel, run forward and backward.
//!
//! One unit handles one vector of `N` features in the first half of one head of one token,
//! and the matching vector in the second half: for q and for k it reads `x₁`, `x₂` and the
//! four table vectors `c₁, c₂, s₁, s₂` of the token's position and writes
//! `(x₁·c₁ − x₂·s₁, x₂·c₂ + x₁·s₂)`; v's two vectors are copied. f32 arithmetic whatever the
//! storage dtype. The vector width divides `head_dim / 2`, so a vector never straddles two
//! halves.
//!
//! The backward is the same kernel with the layouts swapped (it reads the stacked gradient
//! `[3, total, heads, head_dim]` and writes `[total, 3·heads·head_dim]`) and the sines
//! replaced by `(−s₂, −s₁)`: `dx₁ = g₁·c₁ + g₂·s₂`, `dx₂ = g₂·c₂ − g₁·s₁`.
//!
//! A position past the tables' last row is clamped to it (see [`crate::rope::rope_qkv`]).

use burn::tensor::{DType, Shape};
use burn_cubecl::kernel::{cast, into_contiguous};
use burn_cubecl::ops::numeric::empty_device_contiguous_dtype;
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::CubeRuntime;
use cubecl::calculate_cube_count_elemwise;
use cubecl::prelude::*;

/// Writes `(x₁·c₁ − x₂·s₁, x₂·c₂ + x₁·s₂)` from `input[from]`, `input[from + half]` to
/// `output[to]`, `output[to + half]` (indices in vectors).
#[cube]
#[allow(clippy::too_many_arguments)]
fn rotate<F: Float, N: Size>(
    input: &Tensor<Vector<F, N>>,
    output: &mut Tensor<Vector<F, N>>,
    from: usize,
    to: usize,
    half: usize,
    c1: Vector<f32, N>,
    c2: Vector<f32, N>,
    s1: Vector<f32, N>,
    s2: Vector<f32, N>,
) {
    let x1 = Vector::<f32, N>::cast_from(input[from]);
    let x2 = Vector::<f32, N>::cast_from(input[from + half]);
    output[to] = Vector::cast_from(x1 * c1 - x2 * s1);
    output[to + half] = Vector::cast_from(x2 * c2 + x1 * s2);
}

#[cube(launch)]
#[allow(clippy::too_many_arguments)]
fn rope_qkv_kernel<F: Float, I: Numeric, N: Size>(
    input: &Tensor<Vector<F, N>>, // forward: qkv [total, 3·H·D]; backward: [3, total, H, D]
    cos: &Tensor<Vector<f32, N>>, // [max_positions, D]
    sin: &Tensor<Vector<f32, N>>, // [max_positions, D]
    positions: &Tensor<I>,        // [total]
    output: &mut Tensor<Vector<F, N>>, // forward: [3, total, H, D]; backward: [total, 3·H·D]
    heads: usize,
    #[comptime] backward: bool,
    #[define(F, I)] _dtypes: [StorageType; 2],
) {
    let total = positions.shape(0);
    let head = cos.shape(1) / N::value(); // vectors per head
    let half = head / 2;
    let pos = ABSOLUTE_POS;
    if pos >= total * heads * half {
        terminate!();
    }
    let j = pos % half;
    let token_head = pos / half; // t · heads + h
    let t = token_head / heads;
    let h = token_head % heads;
    // Where the unit's first vector of q sits in each layout, and the step from q to k to v.
    let in_token = (t * 3 * heads + h) * head + j;
    let token_part = heads * head;
    let in_stacked = token_head * head + j;
    let stacked_part = total * heads * head;
    let mut from = in_token;
    let mut from_part = token_part;
    let mut to = in_stacked;
    let mut to_part = stacked_part;
    if backward {
        from = in_stacked;
        from_part = stacked_part;
        to = in_token;
        to_part = token_part;
    }

    let mut position = u32::cast_from(positions[t]) as usize;
    let last = cos.shape(0) - 1;
    if position > last {
        position = last;
    }
    let row = position * head + j;
    let c1 = cos[row];
    let c2 = cos[row + half];
    let mut s1 = sin[row];
    let mut s2 = sin[row + half];
    if backward {
        let zero = Vector::<f32, N>::new(0.0);
        let s = s1;
        s1 = zero - s2;
        s2 = zero - s;
    }
    rotate(input, output, from, to, half, c1, c2, s1, s2);
    rotate(
        input,
        output,
        from + from_part,
        to + to_part,
        half,
        c1,
        c2,
        s1,
        s2,
    );
    let v_from = from + 2 * from_part;
    let v_to = to + 2 * to_part;
    output[v_to] = input[v_from];
    output[v_to + half] = input[v_from + half];
}

/// Launches [`rope_qkv_kernel`] from `input` into a new `output_shape` tensor.
fn launch<R: CubeRuntime>(
    input: CubeTensor<R>,
    cos: CubeTensor<R>,
    sin: CubeTensor<R>,
    positions: CubeTensor<R>,
    output_shape: Shape,
    [total, heads, head_dim]: [usize; 3],
    backward: bool,
) -> CubeTensor<R> {
    let input = into_contiguous(input);
    let output = empty_device_contiguous_dtype(
        input.client.clone(),
        input.device.clone(),
        output_shape,
        input.dtype,
    );
    let half = head_dim / 2;
    if total * heads * half == 0 {
        return output;
    }
    let client = input.client.clone();
    // The widest vector that divides the half head, at most 16 bytes of the f32 tables.
    let max = client.properties().hardware.max_vector_size.min(4);
    let vector = [4, 2, 1]
        .into_iter()
        .find(|&v| v <= max && half.is_multiple_of(v))
        .unwrap_or(1);
    let cube_dim = CubeDim::new_1d(256);
    let count = calculate_cube_count_elemwise(&client, total * heads * half / vector, cube_dim);
    let table = |t| into_contiguous(cast(t, DType::F32));
    let positions = into_contiguous(positions);
    let dtypes = [input.dtype.into(), positions.dtype.into()];
    rope_qkv_kernel::launch::<R>(
        &client,
        count,
        cube_dim,
        vector,
        input.into_tensor_arg(),
        table(cos).into_tensor_arg(),
        table(sin).into_tensor_arg(),
        positions.into_tensor_arg(),
        output.clone().into_tensor_arg(),
        heads,
        backward,
        dtypes,
    );
    output
}

/// q, k, v of `qkv` stacked, `[3, total, heads, head_dim]`, q and k rotated; see
/// [`crate::rope::rope_qkv`].
///
/// # Shapes
/// - qkv: `[total, 3 · heads · head_dim]`, cos, sin: `[max_positions, head_dim]`,
///   positions: `[total]`
pub(crate) fn rope_qkv<R: CubeRuntime>(
    qkv: CubeTensor<R>,
    cos: CubeTensor<R>,
    sin: CubeTensor<R>,
    positions: CubeTensor<R>,
    heads: usize,
) -> CubeTensor<R> {
    let [total, width] = qkv.meta.shape().dims::<2>();
    let head_dim = width / (3 * heads);
    let shape = Shape::new([3, total, heads, head_dim]);
    let dims = [total, heads, head_dim];
    launch(qkv, cos, sin, positions, shape, dims, false)
}

/// Gradient of [`rope_qkv`] with respect to qkv, from the stacked output gradient; see
/// [`crate::rope::rope_qkv_backward_reference`] for the formulas.
///
/// # Shapes
/// - grad: `[3, total, heads, head_dim]`, cos, sin: `[max_positions, head_dim]`,
///   positions: `[total]`
/// - output: `[total, 3 · heads · head_dim]`
pub(crate) fn rope_qkv_backward<R: CubeRuntime>(
    grad: CubeTensor<R>,
    cos: CubeTensor<R>,
    sin: CubeTensor<R>,
    positions: CubeTensor<R>,
) -> CubeTensor<R> {
    let [_, total, heads, head_dim] = grad.meta.shape().dims::<4>();
    let shape = Shape::new([total, 3 * heads * head_dim]);
    let dims = [total, heads, head_dim];
    launch(grad, cos, sin, positions, shape, dims, true)
}
