//! Plane-level cmma products on tiles staged in shared memory (cube code shared by the
//! tensor-core forward and backward kernels): the plane's 16 rows as A fragments, f32
//! accumulators, `A·Bᵀ` into a shared f32 scratch (for the row-wise work between products),
//! and `acc += A·B` with A from a shared tile in the input dtype.
//!
//! Staged tiles hold rows of `head_dim` elements with a row stride of `head_dim + PAD`
//! (`staging.rs`); all offsets keep cmma's 32-byte alignment (see `kernel_cmma.rs`). Every
//! unit of a plane must make the same calls (cmma is plane-cooperative).

use cubecl::prelude::*;

use super::kernel_cmma::{PAD, TILE};

/// Rows `first_row .. first_row + 16` of a staged tile (`head_dim + PAD` per row) as A
/// fragments, one per 16 columns.
#[cube]
pub fn row_fragments<F: Float, N: Size>(
    tile: &SharedMemory<Vector<F, N>>,
    first_row: usize,
    #[comptime] rows: usize,
    #[comptime] head_dim: usize,
) -> Sequence<cmma::Matrix<F>> {
    let vector = N::value();
    let tile_stride = comptime!(head_dim + PAD);
    let mut frags = Sequence::<cmma::Matrix<F>>::new();
    #[unroll]
    for d in 0..comptime!(head_dim / TILE) {
        let frag = unsafe {
            cmma::Matrix::<F>::uninitialized(
                cmma::MatrixIdent::A,
                TILE,
                TILE,
                TILE,
                cmma::MatrixLayout::RowMajor,
            )
        };
        let offset = (first_row * tile_stride + d * TILE) / vector;
        cmma::load(
            &frag,
            &tile.slice(offset, comptime!(rows * tile_stride / vector)),
            comptime!(tile_stride as u32),
        );
        frags.push(frag);
    }
    frags
}

/// `head_dim / 16` f32 accumulators set to zero.
#[cube]
pub fn zero_accumulators(#[comptime] head_dim: usize) -> Sequence<cmma::Matrix<f32>> {
    let mut acc = Sequence::<cmma::Matrix<f32>>::new();
    #[unroll]
    for _ in 0..comptime!(head_dim / TILE) {
        acc.push(cmma::Matrix::<f32>::from_value(
            cmma::MatrixIdent::Accumulator,
            TILE,
            TILE,
            TILE,
            cmma::MatrixLayout::Undefined,
            0.0,
        ));
    }
    acc
}

/// `A·Bᵀ` for the plane's 16 rows `A` (fragments over `head_dim`) and the `rows` rows of a
/// staged tile `B`, into the scratch from `offset` (16 × `rows` f32, row stride
/// `scratch_stride`).
#[cube]
#[allow(clippy::too_many_arguments)]
pub fn products_to_scratch<F: Float, N: Size>(
    a: &Sequence<cmma::Matrix<F>>,
    b_tile: &SharedMemory<Vector<F, N>>,
    scratch: &mut SharedMemory<f32>,
    offset: usize,
    scratch_end: usize,
    #[comptime] rows: usize,
    #[comptime] head_dim: usize,
    #[comptime] scratch_stride: usize,
) {
    let vector = N::value();
    let tile_stride = comptime!(head_dim + PAD);
    #[unroll]
    for n in 0..comptime!(rows / TILE) {
        let acc = cmma::Matrix::<f32>::from_value(
            cmma::MatrixIdent::Accumulator,
            TILE,
            TILE,
            TILE,
            cmma::MatrixLayout::Undefined,
            0.0,
        );
        #[unroll]
        for d in 0..comptime!(head_dim / TILE) {
            let b_frag = unsafe {
                cmma::Matrix::<F>::uninitialized(
                    cmma::MatrixIdent::B,
                    TILE,
                    TILE,
                    TILE,
                    cmma::MatrixLayout::ColMajor,
                )
            };
            let b_offset = (n * TILE * tile_stride + d * TILE) / vector;
            cmma::load(
                &b_frag,
                &b_tile.slice(b_offset, comptime!(rows * tile_stride / vector)),
                comptime!(tile_stride as u32),
            );
            cmma::execute::<F, F, f32, f32>(a.index(d), &b_frag, &acc, &acc);
        }
        cmma::store(
            &mut scratch.slice_mut(offset + n * TILE, scratch_end),
            &acc,
            comptime!(scratch_stride as u32),
            cmma::MatrixLayout::RowMajor,
        );
    }
}

/// `acc += A·B` for the plane's `16 × depth` tile `A` (input dtype, from `a_offset`, row
/// stride `a_stride`) and the first `depth` rows of a staged tile `B`, one accumulator per
/// 16 columns of `head_dim`.
#[cube]
#[allow(clippy::too_many_arguments)]
pub fn accumulate_products<F: Float, N: Size>(
    acc: &Sequence<cmma::Matrix<f32>>,
    a_tile: &SharedMemory<F>,
    a_offset: usize,
    a_end: usize,
    b_tile: &SharedMemory<Vector<F, N>>,
    #[comptime] depth: usize,
    #[comptime] a_stride: usize,
    #[comptime] head_dim: usize,
) {
    let vector = N::value();
    let tile_stride = comptime!(head_dim + PAD);
    #[unroll]
    for j in 0..comptime!(depth / TILE) {
        let a_frag = cmma::Matrix::<F>::from_slice(
            cmma::MatrixIdent::A,
            TILE,
            TILE,
            TILE,
            cmma::MatrixLayout::RowMajor,
            &a_tile.slice(a_offset + j * TILE, a_end),
            comptime!(a_stride as u32),
        );
        #[unroll]
        for d in 0..comptime!(head_dim / TILE) {
            let b_frag = unsafe {
                cmma::Matrix::<F>::uninitialized(
                    cmma::MatrixIdent::B,
                    TILE,
                    TILE,
                    TILE,
                    cmma::MatrixLayout::RowMajor,
                )
            };
            let b_offset = (j * TILE * tile_stride + d * TILE) / vector;
            cmma::load(
                &b_frag,
                &b_tile.slice(b_offset, comptime!(depth * tile_stride / vector)),
                comptime!(tile_stride as u32),
            );
            cmma::execute::<F, F, f32, f32>(&a_frag, &b_frag, acc.index(d), acc.index(d));
        }
    }
}
