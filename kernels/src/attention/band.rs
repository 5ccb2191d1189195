//! The band of a plane in the sliding-window `mma.sync` kernels (cube code shared by
//! `kernel_mma_band.rs` and `kernel_backward_mma_band.rs`): which rows on the other side a
//! plane's 16 own rows see, how the cube stages them, and the mask within them.
//!
//! A cube owns `block_m = 16 · planes` rows from `row0` (queries in the forward and dQ, keys
//! in dK/dV); at ±`window` (a compile-time constant) they see the *span* of `block_m +
//! 2 · window` rows on the other side from `row0 − window`. Plane `p` (own rows `row0 + 16p
//! ..`) sees span rows `16p .. 16p + 16 + 2 · window`, its *band*: 144 rows at ±64, of which
//! each own row sees 129. Where the tiled kernels walk whole tiles of the cube's range (at
//! ±64 a 64-row cube computes 192 columns for the 129 each row sees), the band kernels walk
//! each plane's band in chunks of `chunk` columns: the same count for every plane, only the
//! shared-memory offset differs, so every `ldmatrix`/`mma` is reached unconditionally
//! (branches around them stop the compiler from overlapping one block's loads with the
//! previous block's products).
//!
//! Within a band, own row `r` (0..16) sees column `j` iff `r ≤ j ≤ r + 2 · window`: only the
//! band's first and last 16 columns need a mask, and which accumulators those are is known
//! at compile time. Planes at a sequence's start or end also mask the columns and rows
//! outside it (a branch uniform over the plane, around the mask code only).
//!
//! The span is staged with `cp.async` in as many stages as there are chunks: stage `c` holds
//! the span rows that chunk `c` of some plane needs and no earlier chunk did, so that it can
//! be in flight while the planes compute chunk `c − 1`. Span row `i` holds position
//! `row0 − window + i`; rows before the sequence are staged as zeros
//! ([`copy_shifted_rows_async`]).

use cubecl::prelude::*;

use super::kernel_cmma::TILE;
use super::mma_tiles::{tile_vectors, AccPair, MmaCube, MMA_N, QUAD};
use super::staging::copy_shifted_rows_async;
use super::tiling::NEG_BIG;

/// Columns in a plane's band at ±`window`.
fn band_columns(window: usize) -> usize {
    TILE + 2 * window
}

/// Chunks of `chunk` columns in a band at ±`window` (the last may be shorter).
pub fn band_chunks(window: usize, chunk: usize) -> usize {
    band_columns(window).div_ceil(chunk)
}

/// Columns of chunk `c` of a band at ±`window`.
pub fn chunk_columns(c: usize, window: usize, chunk: usize) -> usize {
    chunk.min(band_columns(window) - c * chunk)
}

/// Rows of the span of a cube of `planes` planes at ±`window`.
pub fn span_rows(window: usize, planes: usize) -> usize {
    TILE * planes + 2 * window
}

/// One past the last span row that chunk `c` of some plane reads: the last plane's band
/// starts `16 · (planes − 1)` rows into the span.
fn stage_end(c: usize, window: usize, planes: usize, chunk: usize) -> usize {
    TILE * (planes - 1) + band_columns(window).min(chunk * (c + 1))
}

/// Issues the asynchronous copies of stage `stage` of the cube's span of two tensors (K and
/// V, or Q and dO) into `a_span` and `b_span`, zeros where the span lies outside the
/// sequence. Every unit of the cube takes part; the copies land when the caller's barrier,
/// to which each unit then commits them, completes its phase.
#[cube]
#[allow(clippy::too_many_arguments)]
pub fn copy_span_stage_async<F: Float, N: Size>(
    a: &Tensor<Vector<F, N>>,
    b: &Tensor<Vector<F, N>>,
    a_span: &mut SharedMemory<Vector<F, N>>,
    b_span: &mut SharedMemory<Vector<F, N>>,
    cube: &MmaCube,
    #[comptime] stage: usize,
    #[comptime] window: usize,
    #[comptime] head_dim: usize,
    #[comptime] planes: usize,
    #[comptime] chunk: usize,
) {
    let begin = comptime!(if stage == 0 {
        0
    } else {
        stage_end(stage - 1, window, planes, chunk)
    });
    let rows = comptime!(stage_end(stage, window, planes, chunk) - begin);
    let units = comptime!(32 * planes);
    let tile_start = tile_vectors::<N>(begin, head_dim);
    let range = &cube.range;
    // Span row i is position row0 − window + i: counted from `window` before it, row0 + i.
    let first = cube.row0 + begin;
    copy_shifted_rows_async(
        a,
        a_span,
        tile_start,
        range.start,
        first,
        range.len,
        cube.head,
        cube.heads,
        cube.unit,
        window,
        rows,
        head_dim,
        units,
    );
    copy_shifted_rows_async(
        b,
        b_span,
        tile_start,
        range.start,
        first,
        range.len,
        cube.head,
        cube.heads,
        cube.unit,
        window,
        rows,
        head_dim,
        units,
    );
}

/// Sets the scores the mask hides to `NEG_BIG` in one chunk of a plane's band: the plane's
/// 16 own rows from position `row0` (of a sequence of `len`) against band columns
/// `j0 .. j0 + cols`. Away from the sequence's ends only the accumulators with columns
/// outside some row's window are touched (known at compile time); a plane whose rows or
/// chunk columns reach past an end (uniform over the plane) masks those too.
#[cube]
pub fn mask_band_chunk(
    acc: &mut Sequence<Array<AccPair>>,
    row0: usize,
    len: usize,
    #[comptime] j0: usize,
    #[comptime] cols: usize,
    #[comptime] window: usize,
) {
    // Band column j is position row0 + j − window; counted from `window` before it, row0 + j.
    let first_column = row0 + j0;
    let at_edge = row0 + TILE > len || first_column < window || first_column + cols > len + window;
    if at_edge {
        mask_band_scores(acc, row0, len, j0, cols, window, true);
    } else {
        mask_band_scores(acc, row0, len, j0, cols, window, false);
    }
}

/// [`mask_band_chunk`]'s work: the window (`r ≤ j ≤ r + 2 · window` for own row `r`, band
/// column `j`) on the accumulators where some pair can fail it, and with `bounds` the
/// sequence's ends on every accumulator.
#[cube]
fn mask_band_scores(
    acc: &mut Sequence<Array<AccPair>>,
    row0: usize,
    len: usize,
    #[comptime] j0: usize,
    #[comptime] cols: usize,
    #[comptime] window: usize,
    #[comptime] bounds: bool,
) {
    let lane = UNIT_POS_X as usize;
    let g = lane / QUAD;
    let t = lane % QUAD;
    #[unroll]
    for e in 0..comptime!(2usize) {
        // The lane's rows g + 8e; columns j0 + 8n + 2t + c.
        let row = g + 8 * e;
        #[unroll]
        for n in 0..comptime!(cols / MMA_N) {
            let column0 = comptime!(j0 + n * MMA_N);
            let rows_lo = comptime!(8 * e);
            let crosses = comptime!(column0 < rows_lo + 7 || column0 + 7 > rows_lo + 2 * window);
            if comptime!(bounds || crosses) {
                let mut pair = acc.index(n)[e];
                #[unroll]
                for c in 0..comptime!(2usize) {
                    let j = column0 + 2 * t + c;
                    let mut visible = row <= j && j <= row + comptime!(2 * window);
                    if bounds {
                        let shifted = row0 + j;
                        visible = visible
                            && row0 + row < len
                            && shifted >= window
                            && shifted < len + window;
                    }
                    pair[c] = select(visible, pair[c], f32::new(NEG_BIG));
                }
                let acc_n = acc.index_mut(n);
                acc_n[e] = pair;
            }
        }
    }
}
