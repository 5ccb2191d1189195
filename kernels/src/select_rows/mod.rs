//! Rows of a table at given indices (`table.select(0, indices)`, torch's `F.embedding`), with
//! a fast, deterministic gradient. The token embedding and the MLM loss's gather of the
//! masked rows are this op.
//!
//! The forward is Burn's `select`. Its gradient is a scatter-add of the output gradient's
//! rows into a zero table, where one index may repeat thousands of times (`[MASK]`, `the`).
//! Burn's CubeCL `select_add` runs one unit per column, each looping over every index:
//! 768 units for a 16k-token batch, about 6.5 ms on an H200. CubeCL backends run a counting
//! sort of the indices and one cube per table row instead (`kernel.rs`), summing in a fixed
//! order in f32; the reference below (Burn's own ops) serves every other backend.

#[cfg(feature = "cube")]
pub(crate) mod kernel;

use burn::tensor::{IndexingUpdateOp, Int, Tensor, TensorPrimitive};

use crate::Backend;

/// Rows `indices` of `table`, in order; indices must be in `0..rows` (an index outside
/// selects nothing defined, as with Burn's `select`). Under autodiff the gradient of
/// `table` is [`Backend::select_rows_backward`].
///
/// # Shapes
/// - table: `[rows, width]`, indices: `[n]`
/// - output: `[n, width]`
pub fn select_rows<B: Backend>(table: Tensor<B, 2>, indices: Tensor<B, 1, Int>) -> Tensor<B, 2> {
    let out = B::select_rows(table.into_primitive().tensor(), indices.into_primitive());
    Tensor::from_primitive(TensorPrimitive::Float(out))
}

/// Gradient of [`select_rows`]'s table in plain tensor ops: the rows of `grad` added into a
/// zero `[num_rows, width]` table at `indices`.
///
/// # Shapes
/// - grad: `[n, width]`, indices: `[n]`
/// - output: `[num_rows, width]`
pub fn select_rows_backward_reference<B: burn::tensor::backend::Backend>(
    grad: Tensor<B, 2>,
    indices: Tensor<B, 1, Int>,
    num_rows: usize,
) -> Tensor<B, 2> {
    let [_, width] = grad.dims();
    Tensor::zeros([num_rows, width], (&grad.device(), grad.dtype())).select_assign(
        0,
        indices,
        grad,
        IndexingUpdateOp::Add,
    )
}
