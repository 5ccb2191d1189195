//! The sliding-window flash-attention forward on `mma.sync` (cube code only): each plane
//! computes only the scores of the keys its own 16 query rows can see, its band
//! (`band.rs`): 144 keys at ±64, of which each query sees 129, where `kernel_mma.rs`, which
//! walks the key tiles its whole cube sees, computes 192 per query.
//!
//! A cube walks `blocks` consecutive blocks of `16 · planes` queries (one m-tile per plane).
//! Each plane walks its band in chunks: `S = Q·Kᵀ` into registers, the band mask, the online
//! softmax of `kernel_mma.rs` (`mma_softmax.rs`), `O += P·V`. The blocks' key spans (K and V)
//! overlap by `2 · window` rows, so they are staged into a ring of rows (`band.rs`'s
//! [`ring_rows`]) in stages, each in flight while the planes compute the chunk before: during
//! a block's last chunk, the next block's queries and the first rows of its span that this
//! span lacks. Only the cube's first block waits for its loads, and a cube stages each key
//! row once (beyond its first span), where a cube per block staged `block_m + 2 · window`
//! rows for its `block_m` queries. Every barrier is reached by all units of a cube; rows
//! past the sequence end are computed on zeros and never written.

use cubecl::prelude::barrier::Barrier;
use cubecl::prelude::*;

use super::band::{
    band_chunks, chunk_columns, copy_span_rows_async, mask_band_chunk, ring_rows, span_rows,
    stage_end,
};
use super::kernel_cmma::TILE;
use super::mma_softmax::{softmax_finish, softmax_start, softmax_step};
use super::mma_tiles::{
    accumulate_ring_products, mma_cube_at, output_scratch, ring_block_start, ring_scores,
    staged_operands, staged_tile, tile_offset, zero_accumulators,
};
use super::staging::copy_rows_async;

/// The forward for `blocks` consecutive blocks of `16 · planes` queries per cube at
/// ±`window`, walking each plane's band in steps of `chunk` keys: a multiple of 16 that
/// leaves every band at least two chunks, so that the next block's queries can be staged
/// during the last (`forward.rs`'s `BandShape::forward_chunk`).
#[cube(launch, fast_math = FastMath::ReducedPrecision | FastMath::NotNaN | FastMath::NotInf)]
#[allow(clippy::too_many_arguments)]
pub fn flash_attention_varlen_band_kernel<F: Float, I: Numeric, N: Size>(
    q: &Array<Vector<F, N>>,       // [total, heads, head_dim], contiguous
    k: &Array<Vector<F, N>>,       // [total, heads, head_dim], contiguous
    v: &Array<Vector<F, N>>,       // [total, heads, head_dim], contiguous
    cu_seqlens: &Array<I>,         // [batch + 1]
    out: &mut Array<Vector<F, N>>, // [total, heads, head_dim]
    lse: &mut Array<f32>,          // [total, heads], natural-log sum of exp(scores)
    scale: f32,
    blocks: u32,
    #[comptime] window: usize,
    #[comptime] head_dim: usize,
    #[comptime] planes: usize,
    #[comptime] chunk: usize,
    #[define(F, I)] _dtypes: [StorageType; 2],
) {
    let units = comptime!(32 * planes);
    let block_m = comptime!(TILE * planes);
    let chunks = comptime!(band_chunks(window, chunk));
    let span = comptime!(span_rows(window, planes));
    let ring = comptime!(ring_rows(window, planes, chunk));
    let blocks = blocks as usize;
    let first_block = CUBE_POS_X as usize * blocks;
    let first = mma_cube_at(cu_seqlens, window, first_block, planes, 1usize, true);

    let mut q_tile = staged_tile::<F, N>(block_m, head_dim);
    let mut k_ring = staged_tile::<F, N>(ring, head_dim);
    let mut v_ring = staged_tile::<F, N>(ring, head_dim);
    let mut scratch = output_scratch::<F>(block_m, head_dim);
    // Completes a phase when every unit has arrived and the copies they committed have landed.
    let copies = Barrier::shared(CUBE_DIM, UNIT_POS == 0);

    // A cube past the sequence end sees no keys (uniform over the cube) and writes nothing.
    if first.range.k_lo < first.range.k_hi {
        let range = first.range.clone();
        copy_rows_async(
            q,
            &mut q_tile,
            0usize,
            range.start,
            first.row0,
            range.len,
            first.head,
            first.heads,
            first.unit,
            block_m,
            head_dim,
            units,
        );
        let stage0_end = comptime!(stage_end(0, window, planes, chunk));
        copy_span_rows_async(
            k,
            v,
            &mut k_ring,
            &mut v_ring,
            &first,
            0usize,
            0usize,
            stage0_end,
            ring,
            window,
            head_dim,
            planes,
        );
        copies.commit_copy_async();
        copies.arrive_and_wait();

        // Vector of the ring where the block's span row 0 is.
        let mut ring_start = 0usize;
        let mut b = 0usize;
        loop {
            let cube = mma_cube_at(cu_seqlens, window, first_block + b, planes, 1usize, true);
            // Whether the cube's next block has queries (uniform over the cube).
            let next = b + 1 < blocks && cube.row0 + block_m < range.len;
            let q_ops = staged_operands(&q_tile, &cube, head_dim, 1usize);
            let mut o_acc = zero_accumulators(head_dim);
            let (mut m, mut l) = softmax_start(2usize);
            // Position of the plane's first row; its band starts `window` keys before it.
            let row0 = cube.row0 + cube.first_row;
            // Where in the ring the plane's band starts.
            let band_start = ring_block_start::<N>(
                ring_start + tile_offset::<N>(cube.first_row, 0usize, head_dim),
                0usize,
                ring,
                head_dim,
            );
            #[unroll]
            for c in 0..chunks {
                if comptime!(c + 1 < chunks) {
                    // The span rows that chunk c + 1 of some plane reads first.
                    copy_span_rows_async(
                        k,
                        v,
                        &mut k_ring,
                        &mut v_ring,
                        &cube,
                        ring_start,
                        comptime!(stage_end(c, window, planes, chunk)),
                        comptime!(stage_end(c + 1, window, planes, chunk)),
                        ring,
                        window,
                        head_dim,
                        planes,
                    );
                } else if next {
                    // Every plane took its Q operands before the barrier of chunk 0: the next
                    // block's queries, and the rows of its first stage that this span lacks.
                    copy_rows_async(
                        q,
                        &mut q_tile,
                        0usize,
                        range.start,
                        cube.row0 + block_m,
                        range.len,
                        cube.head,
                        cube.heads,
                        cube.unit,
                        block_m,
                        head_dim,
                        units,
                    );
                    copy_span_rows_async(
                        k,
                        v,
                        &mut k_ring,
                        &mut v_ring,
                        &cube,
                        ring_start,
                        span,
                        comptime!(block_m + stage0_end),
                        ring,
                        window,
                        head_dim,
                        planes,
                    );
                }
                copies.commit_copy_async();
                let j0 = comptime!(c * chunk);
                let cols = comptime!(chunk_columns(c, window, chunk));
                let chunk_start =
                    ring_block_start::<N>(band_start, comptime!(j0 / TILE), ring, head_dim);
                let mut s_acc =
                    ring_scores(&q_ops, &k_ring, chunk_start, ring, cols, head_dim, 1usize);
                mask_band_chunk(&mut s_acc, row0, range.len, j0, cols, window);
                softmax_step(
                    &mut s_acc,
                    &mut o_acc,
                    &mut m,
                    &mut l,
                    scale,
                    cols,
                    head_dim,
                    1usize,
                    comptime!(c == 0),
                );
                accumulate_ring_products(
                    &mut o_acc,
                    &s_acc,
                    &v_ring,
                    chunk_start,
                    ring,
                    cols,
                    head_dim,
                    1usize,
                );
                // The next stage has landed (every unit committed its copies before), and no
                // plane reads this chunk's first rows any more.
                copies.arrive_and_wait();
            }

            softmax_finish(
                &o_acc,
                &m,
                &l,
                scale,
                &mut scratch,
                out,
                lse,
                &cube,
                head_dim,
                1usize,
            );
            if !next {
                break;
            }
            b += 1;
            ring_start = ring_block_start::<N>(ring_start, planes, ring, head_dim);
        }
    }
}
