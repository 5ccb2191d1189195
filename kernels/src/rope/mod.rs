//! The split of `Wqkv`'s output into queries, keys and values, with rotary position
//! embeddings (RoPE, GPT-NeoX `rotate_half` style as HF's `apply_rotary_pos_emb`) applied to
//! the queries and keys of packed tokens:
//! `q = x_q · cos + rotate_half(x_q) · sin` (the same for k), `rotate_half(x) = cat(−x₂, x₁)`
//! over the two halves of a head, the cos/sin rows taken at each token's position; v is
//! copied.
//!
//! In plain Burn ops this is a reshape, three narrows with their copies, two row gathers
//! and casts of the tables, and narrow/neg/cat/mul/mul/add for q and for k: about twenty
//! kernels each way, each a full pass over memory. CubeCL backends run one kernel forward
//! and one backward (`kernel.rs`), in f32 whatever the storage dtype; the exact reference
//! formulas below (also in f32) serve every other backend.
//!
//! The op's output is one tensor `[3, total, heads, head_dim]` (q, k, v stacked on the first
//! dimension), so that [`rope_qkv`]'s three parts are contiguous views of it, with no copy
//! (`narrow` on dim 0 of a contiguous tensor moves the buffer's start, where the offset is a
//! multiple of the device's memory alignment; otherwise Burn copies the part).

#[cfg(feature = "cube")]
pub(crate) mod kernel;

use burn::tensor::{DType, Int, Tensor, TensorPrimitive};

use crate::Backend;

/// Why a [`rope_qkv`] input is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RopeError {
    /// The number of heads must be at least 1.
    #[error("RoPE needs at least one attention head")]
    NoHeads,
    /// `qkv`'s width must be `3 · heads · head_dim`.
    #[error("qkv has width {width}, not a multiple of 3 · {heads} heads")]
    QkvWidth {
        /// `qkv`'s last dimension.
        width: usize,
        /// The number of heads.
        heads: usize,
    },
    /// A head is rotated in two halves, so its size must be even (and not zero).
    #[error("RoPE needs an even, non-zero head_dim, got {0}")]
    OddHeadDim(usize),
    /// The cos and sin tables must be `[max_positions, head_dim]`, both the same shape.
    #[error("RoPE tables are cos {cos:?} and sin {sin:?}, expected [max_positions, {head_dim}]")]
    TableShape {
        /// The size of a head.
        head_dim: usize,
        /// cos's shape.
        cos: [usize; 2],
        /// sin's shape.
        sin: [usize; 2],
    },
    /// The tables must hold at least one position.
    #[error("RoPE tables have no rows")]
    EmptyTables,
    /// There must be one position per token.
    #[error("{positions} positions for {tokens} tokens")]
    Positions {
        /// Rows of `qkv`.
        tokens: usize,
        /// Length of `positions`.
        positions: usize,
    },
}

/// Splits `qkv` into queries, keys and values and rotates the queries and keys by the
/// angles of their tokens' positions.
///
/// Precondition (not checked on the host: that would wait for the device): every position is
/// below `max_positions`, the tables' row count. The model refuses longer sequences before
/// this point; the kernels clamp a position past the end to the last row rather than read
/// out of bounds (the reference's gather would fail instead).
///
/// # Shapes
/// - qkv: `[total, 3 · heads · head_dim]` (per token: all of q's heads, then k's, then v's)
/// - cos, sin: `[max_positions, head_dim]` (f32 in the model)
/// - positions: `[total]`
/// - output: q, k, v, each `[total, heads, head_dim]`, contiguous, in qkv's dtype
pub fn rope_qkv<B: Backend>(
    qkv: Tensor<B, 2>,
    cos: Tensor<B, 2>,
    sin: Tensor<B, 2>,
    positions: Tensor<B, 1, Int>,
    heads: usize,
) -> Result<[Tensor<B, 3>; 3], RopeError> {
    let packed = rope_qkv_packed(qkv, cos, sin, positions, heads)?;
    let [_, total, heads, head_dim] = packed.dims();
    let part = |i| {
        packed
            .clone()
            .narrow(0, i, 1)
            .reshape([total, heads, head_dim])
    };
    Ok([part(0), part(1), part(2)])
}

/// [`rope_qkv`] with q, k and v left stacked, as
/// [`varlen_attention_packed`](crate::attention::varlen_attention_packed) takes them: under
/// autodiff their gradient then comes back as one tensor, with no slices to assemble.
///
/// # Shapes
/// - as [`rope_qkv`]; output: `[3, total, heads, head_dim]`, contiguous, in qkv's dtype
///
/// # Errors
/// As [`rope_qkv`].
pub fn rope_qkv_packed<B: Backend>(
    qkv: Tensor<B, 2>,
    cos: Tensor<B, 2>,
    sin: Tensor<B, 2>,
    positions: Tensor<B, 1, Int>,
    heads: usize,
) -> Result<Tensor<B, 4>, RopeError> {
    let [total, width] = qkv.dims();
    if heads == 0 {
        return Err(RopeError::NoHeads);
    }
    if !width.is_multiple_of(3 * heads) {
        return Err(RopeError::QkvWidth { width, heads });
    }
    let head_dim = width / (3 * heads);
    if head_dim == 0 || !head_dim.is_multiple_of(2) {
        return Err(RopeError::OddHeadDim(head_dim));
    }
    let (cos_dims, sin_dims) = (cos.dims(), sin.dims());
    if cos_dims != sin_dims || cos_dims[1] != head_dim {
        return Err(RopeError::TableShape {
            head_dim,
            cos: cos_dims,
            sin: sin_dims,
        });
    }
    if cos_dims[0] == 0 {
        return Err(RopeError::EmptyTables);
    }
    let [count] = positions.dims();
    if count != total {
        return Err(RopeError::Positions {
            tokens: total,
            positions: count,
        });
    }
    let packed = B::rope_qkv(
        qkv.into_primitive().tensor(),
        cos.into_primitive().tensor(),
        sin.into_primitive().tensor(),
        positions.into_primitive(),
        heads,
    );
    Ok(Tensor::<B, 4>::from_primitive(TensorPrimitive::Float(
        packed,
    )))
}

/// The two halves of the last dimension: `(x₁, x₂)`.
fn halves<B: burn::tensor::backend::Backend>(x: Tensor<B, 4>) -> (Tensor<B, 4>, Tensor<B, 4>) {
    let half = x.dims()[3] / 2;
    (x.clone().narrow(3, 0, half), x.narrow(3, half, half))
}

/// The f32 table rows of `positions`, shaped `[1, total, 1, head_dim]` to broadcast over
/// q/k and the heads.
fn rows<B: burn::tensor::backend::Backend>(
    table: Tensor<B, 2>,
    positions: Tensor<B, 1, Int>,
) -> Tensor<B, 4> {
    let [total] = positions.dims();
    let head_dim = table.dims()[1];
    table
        .cast(DType::F32)
        .select(0, positions)
        .reshape([1, total, 1, head_dim])
}

/// [`rope_qkv`]'s op in plain tensor ops, in f32: returns q, k, v stacked,
/// `[3, total, heads, head_dim]` in qkv's dtype.
///
/// # Shapes
/// - qkv: `[total, 3 · heads · head_dim]`, cos, sin: `[max_positions, head_dim]`,
///   positions: `[total]`
/// - output: `[3, total, heads, head_dim]`
pub fn rope_qkv_reference<B: burn::tensor::backend::Backend>(
    qkv: Tensor<B, 2>,
    cos: Tensor<B, 2>,
    sin: Tensor<B, 2>,
    positions: Tensor<B, 1, Int>,
    heads: usize,
) -> Tensor<B, 4> {
    let [total, width] = qkv.dims();
    let head_dim = width / (3 * heads);
    let dtype = qkv.dtype();
    let parts = qkv
        .reshape([total, 3, heads, head_dim])
        .swap_dims(0, 1)
        .cast(DType::F32);
    let (cos, sin) = (rows(cos, positions.clone()), rows(sin, positions));
    let qk = parts.clone().narrow(0, 0, 2);
    let (x1, x2) = halves(qk.clone());
    let rotated = Tensor::cat(vec![x2.neg(), x1], 3);
    let qk = qk * cos + rotated * sin;
    Tensor::cat(vec![qk, parts.narrow(0, 2, 1)], 0).cast(dtype)
}

/// Gradient of [`rope_qkv_reference`] with respect to qkv, from the gradient of its stacked
/// output, in f32: with `g = (g₁, g₂)` the gradient of a rotated q or k and `c`, `s` its
/// rows, `dx = g·c + rotate_halfᵀ(g·s)`, `rotate_halfᵀ(y) = cat(y₂, −y₁)`; v's gradient
/// passes through. Returned in grad's dtype.
///
/// # Shapes
/// - grad: `[3, total, heads, head_dim]`, cos, sin: `[max_positions, head_dim]`,
///   positions: `[total]`
/// - output: `[total, 3 · heads · head_dim]`
pub fn rope_qkv_backward_reference<B: burn::tensor::backend::Backend>(
    grad: Tensor<B, 4>,
    cos: Tensor<B, 2>,
    sin: Tensor<B, 2>,
    positions: Tensor<B, 1, Int>,
) -> Tensor<B, 2> {
    let [_, total, heads, head_dim] = grad.dims();
    let dtype = grad.dtype();
    let grad = grad.cast(DType::F32);
    let (cos, sin) = (rows(cos, positions.clone()), rows(sin, positions));
    let g = grad.clone().narrow(0, 0, 2);
    let (y1, y2) = halves(g.clone() * sin);
    let d_qk = g * cos + Tensor::cat(vec![y2, y1.neg()], 3);
    Tensor::cat(vec![d_qk, grad.narrow(0, 2, 1)], 0)
        .swap_dims(0, 1)
        .reshape([total, 3 * heads * head_dim])
        .cast(dtype)
}

#[cfg(all(test, feature = "ndarray"))]
mod tests {
    use burn::backend::{Autodiff, NdArray};
    use burn::tensor::{Tensor, TensorData, Tolerance};

    use super::*;

    type B = NdArray;

    /// `n` f32 values spread over about ±`amplitude`.
    fn values(n: usize, amplitude: f32, phase: f32) -> Vec<f32> {
        (0..n)
            .map(|i| amplitude * (0.7 * i as f32 + phase).sin())
            .collect()
    }

    fn tensor<Be: burn::tensor::backend::Backend>(v: Vec<f32>, shape: [usize; 2]) -> Tensor<Be, 2> {
        Tensor::from_data(TensorData::new(v, shape), (&Default::default(), DType::F32))
    }

    /// The forward equals the definition computed on the host, for q, k and v.
    #[test]
    fn forward_matches_the_definition() {
        let (total, heads, head_dim, rows) = (3, 2, 4, 5);
        let width = 3 * heads * head_dim;
        let qkv = values(total * width, 2.0, 0.3);
        let cos = values(rows * head_dim, 1.0, 0.1);
        let sin = values(rows * head_dim, 1.0, 1.7);
        let positions = [4i64, 0, 2];
        let half = head_dim / 2;
        let mut expected = vec![vec![0f32; total * heads * head_dim]; 3];
        for t in 0..total {
            let p = positions[t] as usize;
            for part in 0..3 {
                for h in 0..heads {
                    for i in 0..head_dim {
                        let x = |j: usize| qkv[t * width + (part * heads + h) * head_dim + j];
                        let rotated = if i < half { -x(i + half) } else { x(i - half) };
                        let value = if part == 2 {
                            x(i)
                        } else {
                            x(i) * cos[p * head_dim + i] + rotated * sin[p * head_dim + i]
                        };
                        expected[part][(t * heads + h) * head_dim + i] = value;
                    }
                }
            }
        }
        let out = rope_qkv(
            tensor::<B>(qkv, [total, width]),
            tensor(cos, [rows, head_dim]),
            tensor(sin, [rows, head_dim]),
            Tensor::from_data(positions, &Default::default()),
            heads,
        )
        .unwrap();
        for (out, expected) in out.into_iter().zip(expected) {
            assert_eq!(out.dims(), [total, heads, head_dim]);
            out.into_data().assert_approx_eq::<f32>(
                &TensorData::new(expected, [total, heads, head_dim]),
                Tolerance::absolute(1e-6),
            );
        }
    }

    /// The hand-written backward (under `Autodiff`) equals autodiff through the reference
    /// forward.
    #[test]
    fn backward_matches_autodiff_of_the_reference() {
        type A = Autodiff<B>;
        let (total, heads, head_dim, rows) = (4, 3, 6, 7);
        let width = 3 * heads * head_dim;
        let qkv = || tensor::<A>(values(total * width, 2.0, 0.2), [total, width]).require_grad();
        let cos = || tensor::<A>(values(rows * head_dim, 1.0, 0.5), [rows, head_dim]);
        let sin = || tensor::<A>(values(rows * head_dim, 1.0, 2.1), [rows, head_dim]);
        let positions = || Tensor::<A, 1, Int>::from_data([6, 0, 3, 3], &Default::default());
        let grad = |i: usize| {
            let v = values(total * heads * head_dim, 1.0, i as f32);
            Tensor::<A, 3>::from_data(
                TensorData::new(v, [total, heads, head_dim]),
                &Default::default(),
            )
        };
        let x = qkv();
        let packed = rope_qkv_reference(x.clone(), cos(), sin(), positions(), heads);
        let mut loss = Tensor::<A, 1>::zeros([1], &Default::default());
        for i in 0..3 {
            let part = packed
                .clone()
                .narrow(0, i, 1)
                .reshape([total, heads, head_dim]);
            loss = loss + (part * grad(i)).sum();
        }
        let grads = loss.backward();
        let expected = x.grad(&grads).unwrap().into_data();

        let x = qkv();
        let parts = rope_qkv(x.clone(), cos(), sin(), positions(), heads).unwrap();
        let mut loss = Tensor::<A, 1>::zeros([1], &Default::default());
        for (i, part) in parts.into_iter().enumerate() {
            loss = loss + (part * grad(i)).sum();
        }
        let grads = loss.backward();
        x.grad(&grads)
            .unwrap()
            .into_data()
            .assert_approx_eq::<f32>(&expected, Tolerance::absolute(1e-6));
    }

    #[test]
    fn bad_inputs_are_refused() {
        let device = Default::default();
        let qkv = |width| Tensor::<B, 2>::zeros([3, width], &device);
        let table = |rows, cols| Tensor::<B, 2>::zeros([rows, cols], &device);
        let positions = |n: usize| Tensor::<B, 1, Int>::zeros([n], &device);
        let run = |qkv, cos, sin, positions, heads| {
            rope_qkv(qkv, cos, sin, positions, heads).unwrap_err()
        };
        assert_eq!(
            run(qkv(24), table(8, 4), table(8, 4), positions(3), 0),
            RopeError::NoHeads
        );
        assert_eq!(
            run(qkv(25), table(8, 4), table(8, 4), positions(3), 2),
            RopeError::QkvWidth {
                width: 25,
                heads: 2
            }
        );
        assert_eq!(
            run(qkv(18), table(8, 3), table(8, 3), positions(3), 2),
            RopeError::OddHeadDim(3)
        );
        assert_eq!(
            run(qkv(24), table(8, 4), table(8, 6), positions(3), 2),
            RopeError::TableShape {
                head_dim: 4,
                cos: [8, 4],
                sin: [8, 6]
            }
        );
        assert_eq!(
            run(qkv(24), table(0, 4), table(0, 4), positions(3), 2),
            RopeError::EmptyTables
        );
        assert_eq!(
            run(qkv(24), table(8, 4), table(8, 4), positions(2), 2),
            RopeError::Positions {
                tokens: 3,
                positions: 2
            }
        );
    }
}
