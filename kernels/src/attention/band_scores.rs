//! The banded `dS` of the sliding-window backward (cube code shared by the two kernels of
//! `kernel_backward_mma_band.rs`): the dK/dV kernel computes `dSᵀ = Pᵀ ∘ (dPᵀ − D)` for its
//! keys anyway and writes it here; the dQ kernel reads it for `dQ = dS·K` instead of
//! recomputing `S` and `dP` (two of its three products) from Q, K, V and dO.
//!
//! The buffer is `[total, heads, band]` in the input dtype, `band = 16 + 2 · window` (144 at
//! ±64): the row of key `k` holds `dS` against the band of `k`'s 16-key block, which starts
//! at position `kb = 16 · ⌊k / 16⌋`: column `j` is query `kb − window + j`, zero where that
//! query lies outside `k`'s window or the sequence. That is `O(total · window)` elements
//! (113 MB for 32 768 tokens of 12 heads in bf16), never `S²`; the dK/dV kernel writes every
//! column of every row within a sequence.
//!
//! The dQ kernel's cube (queries `row0 ..`, `band.rs`) stages, for span row `i` (key `row0 −
//! window + i`), the columns of its own queries: query `row0 + c` is column `c + 2 · window −
//! 16 · ⌊i / 16⌋` (`window` a multiple of 16, so that key blocks start at span rows `16 ·
//! ⌊i / 16⌋`). Span row `i`, column `c` then holds `dS[row0 + c][key i]`: each plane's band
//! of it is the transpose of the A operand `dS·K` needs, which `ldmatrix.trans` reads.

use cubecl::cmma::{MatrixIdent, MmaDefinition};
use cubecl::prelude::barrier::copy_async;
use cubecl::prelude::*;

use super::band::band_columns;
use super::kernel_cmma::{PAD, TILE};
use super::mma_tiles::{tile_offset, write_row_columns, AccPair, MmaCube, Pair, MMA_N};

/// Writes columns `j0 .. j0 + cols` of the band rows of the plane's 16 keys: `ds_t`, the
/// plane's `dSᵀ` over those columns (rows = keys, columns = queries, unscaled), through the
/// plane's rows of the dK/dV kernel's output `scratch` (free while the chunks run).
#[cube]
#[allow(clippy::too_many_arguments)]
pub fn write_band_scores<F: Float, N: Size>(
    ds_t: &Sequence<Array<AccPair>>,
    scratch: &mut SharedMemory<F>,
    ds: &mut Array<Vector<F, N>>,
    cube: &MmaCube,
    #[comptime] j0: usize,
    #[comptime] cols: usize,
    #[comptime] window: usize,
    #[comptime] head_dim: usize,
) {
    let mut unscaled = Array::<f32>::new(2usize);
    unscaled[0usize] = 1.0;
    unscaled[1usize] = 1.0;
    write_row_columns(
        ds_t,
        &unscaled,
        scratch,
        ds,
        cube,
        j0,
        cols,
        comptime!(band_columns(window)),
        head_dim,
        1usize,
    );
}

/// Issues the asynchronous copies of span rows `begin .. end` of the dQ kernel's cube
/// (`16 · planes` queries) from `ds` into `ds_span` (a staged tile of `span` rows of
/// `16 · planes` columns, see the module doc). Rows of keys outside the sequence, and columns
/// outside a row's band (never read), are set to zero instead. Every unit of the cube takes
/// part; the copies land when the caller's barrier, to which each unit then commits them,
/// completes its phase.
#[cube]
pub fn copy_band_scores_async<F: Float, N: Size>(
    ds: &Array<Vector<F, N>>,
    ds_span: &mut SharedMemory<Vector<F, N>>,
    cube: &MmaCube,
    #[comptime] begin: usize,
    #[comptime] end: usize,
    #[comptime] window: usize,
    #[comptime] planes: usize,
) {
    let rows = comptime!(end.saturating_sub(begin));
    let units = comptime!(32 * planes);
    let vector = N::value();
    let row_vectors = comptime!(TILE * planes / vector);
    let tile_row_vectors = comptime!((TILE * planes + PAD) / vector);
    let band_vectors = comptime!(band_columns(window) / vector);
    let count = comptime!(rows * row_vectors);
    let range = &cube.range;
    #[unroll]
    for i in 0..comptime!(count.div_ceil(units)) {
        let e = cube.unit + i * units;
        if comptime!(count % units == 0) || e < count {
            let row = begin + e / row_vectors;
            let column = e % row_vectors;
            let mut destination = ds_span.slice_mut(
                row * tile_row_vectors + column,
                row * tile_row_vectors + column + 1,
            );
            // Key row0 − window + row, counted from `window` before the sequence.
            let shifted = cube.row0 + row;
            // Band column of query row0 + column · vector, plus 16 · ⌊row / 16⌋ (never negative).
            let shifted_band = column + comptime!(2 * window / vector);
            let block_vectors = (row / TILE) * comptime!(TILE / vector);
            let in_band =
                shifted_band >= block_vectors && shifted_band < block_vectors + band_vectors;
            if shifted >= window && shifted < range.len + window && in_band {
                // In range: `cu_seqlens` is validated on the host against the shapes.
                let key = range.start + shifted - window;
                let index =
                    (key * cube.heads + cube.head) * band_vectors + shifted_band - block_vectors;
                copy_async(
                    &ds.slice(index, index + 1),
                    &mut destination,
                    comptime!(vector as u32),
                );
            } else {
                destination[0] = Vector::new(F::new(0.0));
            }
        }
    }
}

/// The A operand (16 queries × 16 keys) of `dS` for the plane's queries (columns
/// `query_column ..` of `ds_span`) against span rows `key_row .. key_row + 16`, read
/// transposed by `ldmatrix.trans`.
#[cube]
pub fn band_score_operand<F: Float, N: Size>(
    ds_span: &SharedMemory<Vector<F, N>>,
    key_row: usize,
    query_column: usize,
    #[comptime] planes: usize,
) -> Array<Pair<F>> {
    let def = MmaDefinition::<F, F, f32>::new(TILE, MMA_N, TILE);
    let lane = UNIT_POS_X as usize;
    // Matrix j of the operand: its rows (queries) +8 if j is odd, its columns (keys) +8 if
    // j ≥ 2; stored with keys as rows, so the lane addresses a key row.
    let matrix = lane / 8;
    let offset = tile_offset::<N>(
        key_row + (matrix / 2) * 8 + lane % 8,
        query_column + (matrix % 2) * 8,
        comptime!(TILE * planes),
    );
    def.load_matrix::<Vector<F, N>, Const<2>>(
        &ds_span.slice(offset, offset + 1),
        MatrixIdent::A,
        4usize,
        true,
    )
}
