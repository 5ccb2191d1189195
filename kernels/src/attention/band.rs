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
//! The span is staged with `cp.async`. Span row `i` holds position `row0 − window + i`; rows
//! before the sequence are staged as zeros ([`copy_shifted_rows_async`]). The forward's cubes
//! walk consecutive blocks, whose spans overlap by `2 · window` rows: they stage them into a
//! ring ([`ring_rows`], [`copy_span_rows_async`]) in as many stages as there are chunks, stage
//! `c` the span rows that chunk `c` of some plane needs and no earlier chunk did
//! ([`stage_end`]), in flight while the planes compute chunk `c − 1`; the next block's first
//! rows during the last chunk. The backward's cubes take one block each and copy their whole
//! span at once (`kernel_backward_mma_band.rs`).

use cubecl::prelude::*;

use super::kernel_cmma::TILE;
use super::mma_tiles::{tile_vectors, AccPair, MmaCube, MMA_N, QUAD};
use super::staging::copy_shifted_rows_async;
use super::tiling::NEG_BIG;

/// Columns in a plane's band at ±`window`.
pub fn band_columns(window: usize) -> usize {
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
pub fn stage_end(c: usize, window: usize, planes: usize, chunk: usize) -> usize {
    TILE * (planes - 1) + band_columns(window).min(chunk * (c + 1))
}

/// Rows of the ring into which a cube that walks consecutive blocks stages their spans
/// (`kernel_mma_band.rs`): the most rows it holds at once. During chunk `c` of a block the
/// planes read from span row `chunk · c` on, and the rows up to `stage_end(c + 1)` are staged
/// or in flight; during the last chunk, the rows up to the end of the next block's first
/// stage (`block_m + stage_end(0)`), and the next block needs every row from `block_m` on.
/// At ±64 that is 144 rows (a band), where the span is 192.
pub fn ring_rows(window: usize, planes: usize, chunk: usize) -> usize {
    let block_m = TILE * planes;
    let chunks = band_chunks(window, chunk);
    (0..chunks)
        .map(|c| {
            let staged = if c + 1 < chunks {
                stage_end(c + 1, window, planes, chunk)
            } else {
                span_rows(window, planes).max(block_m + stage_end(0, window, planes, chunk))
            };
            staged - (chunk * c).min(block_m)
        })
        .max()
        .unwrap_or(0)
}

/// Issues the asynchronous copies of span rows `begin .. end` of the cube's block (rows past
/// the span belong to the next block's; none if `end ≤ begin`) of two tensors into `a_span`
/// and `b_span`, zeros where they lie outside the sequence. The span's row 0 is at vector
/// `ring_start` of a ring of `ring` rows (0: plain tiles, from vector 0). Every unit of the cube takes part; the copies
/// land when the caller's barrier, to which each unit then commits them, completes its phase.
#[cube]
#[allow(clippy::too_many_arguments)]
pub fn copy_span_rows_async<F: Float, N: Size>(
    a: &Array<Vector<F, N>>,
    b: &Array<Vector<F, N>>,
    a_span: &mut SharedMemory<Vector<F, N>>,
    b_span: &mut SharedMemory<Vector<F, N>>,
    cube: &MmaCube,
    ring_start: usize,
    #[comptime] begin: usize,
    #[comptime] end: usize,
    #[comptime] ring: usize,
    #[comptime] window: usize,
    #[comptime] head_dim: usize,
    #[comptime] planes: usize,
) {
    let rows = comptime!(end.saturating_sub(begin));
    if comptime!(rows > 0) {
        let units = comptime!(32 * planes);
        let mut tile_start = ring_start + tile_vectors::<N>(begin, head_dim);
        if comptime!(ring > 0) {
            tile_start %= tile_vectors::<N>(ring, head_dim);
        }
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
            ring,
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
            ring,
            rows,
            head_dim,
            units,
        );
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Replays the forward's ring schedule (`kernel_mma_band.rs`) over five blocks with a ring
    /// of `ring` rows: each step stages span rows `stage_end(c) .. stage_end(c + 1)` of its
    /// block (in the last step, the next block's first rows `span .. block_m +
    /// stage_end(0)`). Every row a plane reads must be in its ring slot, and no row staged
    /// during a step may land in a slot that step reads; the first violation is returned.
    fn replay_ring(window: usize, planes: usize, chunk: usize, ring: usize) -> Result<(), String> {
        let chunks = band_chunks(window, chunk);
        let (block_m, span) = (TILE * planes, span_rows(window, planes));
        // Slot → the row (counted from the first block's span start) it holds.
        let mut slots = vec![None; ring];
        for row in 0..stage_end(0, window, planes, chunk) {
            slots[row % ring] = Some(row);
        }
        let blocks = 5;
        for b in 0..blocks {
            let base = b * block_m;
            for c in 0..chunks {
                let staged = if c + 1 < chunks {
                    stage_end(c, window, planes, chunk)..stage_end(c + 1, window, planes, chunk)
                } else if b + 1 < blocks {
                    span..block_m + stage_end(0, window, planes, chunk)
                } else {
                    0..0
                };
                let columns = chunk_columns(c, window, chunk);
                let read: Vec<usize> = (0..planes)
                    .flat_map(|p| (0..columns).map(move |j| base + TILE * p + c * chunk + j))
                    .collect();
                if let Some(&row) = read.iter().find(|&&row| slots[row % ring] != Some(row)) {
                    return Err(format!(
                        "block {b} step {c} reads row {row}, not in the ring"
                    ));
                }
                for row in staged.map(|row| base + row) {
                    if read.iter().any(|&r| r % ring == row % ring) {
                        return Err(format!(
                            "block {b} step {c} stages row {row} over a row it reads"
                        ));
                    }
                    slots[row % ring] = Some(row);
                }
            }
        }
        Ok(())
    }

    /// [`ring_rows`] is the smallest ring the schedule fits, for every window the band kernels
    /// take and several cube sizes and chunks.
    #[test]
    fn ring_rows_is_the_smallest_ring_that_holds_every_row_read() {
        for planes in [2, 4, 6, 8, 12] {
            for window in (8..=64).step_by(8) {
                for chunk in [16, 32, 48] {
                    if band_chunks(window, chunk) < 2 {
                        continue;
                    }
                    let ring = ring_rows(window, planes, chunk);
                    let case = format!("planes {planes} ±{window} chunk {chunk}, ring {ring}");
                    if let Err(problem) = replay_ring(window, planes, chunk, ring) {
                        panic!("{case}: {problem}");
                    }
                    assert!(
                        replay_ring(window, planes, chunk, ring - 1).is_err(),
                        "{case}: one row fewer would do"
                    );
                }
            }
        }
    }
}
