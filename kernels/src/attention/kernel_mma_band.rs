//! The sliding-window flash-attention forward on `mma.sync` (cube code only): each plane
//! computes only the scores of the keys its own 16 query rows can see, its band
//! (`band.rs`): 144 keys at ±64, of which each query sees 129, where `kernel_mma.rs`, which
//! walks the key tiles its whole cube sees, computes 192 per query.
//!
//! The cube's `16 · planes` queries (one m-tile per plane) are staged once with their whole
//! key span (K and V) in stages; each plane walks its band in chunks of [`CHUNK`] keys:
//! `S = Q·Kᵀ` into registers, the band mask, the online softmax of `kernel_mma.rs`
//! (`mma_softmax.rs`), `O += P·V`. Every barrier is reached by all units of a cube; rows
//! past the sequence end are computed on zeros and never written.

use cubecl::prelude::barrier::Barrier;
use cubecl::prelude::*;

use super::band::{band_chunks, chunk_columns, copy_span_stage_async, mask_band_chunk, span_rows};
use super::kernel_cmma::TILE;
use super::mma_softmax::{softmax_finish, softmax_start, softmax_step};
use super::mma_tiles::{
    accumulate_products, mma_cube, output_scratch, scores, staged_operands, staged_tile,
    tile_offset, zero_accumulators,
};
use super::staging::copy_rows_async;

/// Keys of a band per step of the online softmax: three 16-key blocks, so that a band of
/// 144 keys (±64) is three whole chunks.
const CHUNK: usize = 48;

#[cube(launch, fast_math = FastMath::ReducedPrecision | FastMath::NotNaN | FastMath::NotInf)]
#[allow(clippy::too_many_arguments)]
pub fn flash_attention_varlen_band_kernel<F: Float, I: Numeric, N: Size>(
    q: &Tensor<Vector<F, N>>,       // [total, heads, head_dim], contiguous
    k: &Tensor<Vector<F, N>>,       // [total, heads, head_dim], contiguous
    v: &Tensor<Vector<F, N>>,       // [total, heads, head_dim], contiguous
    cu_seqlens: &Tensor<I>,         // [batch + 1]
    out: &mut Tensor<Vector<F, N>>, // [total, heads, head_dim]
    lse: &mut Tensor<f32>,          // [total, heads], natural-log sum of exp(scores)
    scale: f32,
    #[comptime] window: usize,
    #[comptime] head_dim: usize,
    #[comptime] planes: usize,
    #[define(F, I)] _dtypes: [StorageType; 2],
) {
    let units = comptime!(32 * planes);
    let block_m = comptime!(TILE * planes);
    let span = comptime!(span_rows(window, planes));
    let chunks = comptime!(band_chunks(window, CHUNK));
    let cube = mma_cube(cu_seqlens, q.shape(1), window, planes, 1usize, true);
    let block = cube.range.clone();

    let mut q_tile = staged_tile::<F, N>(block_m, head_dim);
    let mut k_span = staged_tile::<F, N>(span, head_dim);
    let mut v_span = staged_tile::<F, N>(span, head_dim);
    let mut scratch = output_scratch::<F>(block_m, head_dim);
    // Completes a phase when every unit has arrived and the copies they committed have landed.
    let copies = Barrier::shared(CUBE_DIM, UNIT_POS == 0);

    // A block past the sequence end sees no keys (uniform over the cube) and writes nothing.
    if block.k_lo < block.k_hi {
        copy_rows_async(
            q,
            &mut q_tile,
            0usize,
            block.start,
            cube.row0,
            block.len,
            cube.head,
            cube.heads,
            cube.unit,
            block_m,
            head_dim,
            units,
        );
        copy_span_stage_async(
            k,
            v,
            &mut k_span,
            &mut v_span,
            &cube,
            0usize,
            window,
            head_dim,
            planes,
            CHUNK,
        );
        copies.commit_copy_async();
        copies.arrive_and_wait();
        let q_ops = staged_operands(&q_tile, &cube, head_dim, 1usize);

        let mut o_acc = zero_accumulators(head_dim);
        let (mut m, mut l) = softmax_start(2usize);
        // Position of the plane's first row; its band starts `window` keys before it.
        let row0 = cube.row0 + cube.first_row;
        #[unroll]
        for c in 0..chunks {
            if comptime!(c + 1 < chunks) {
                copy_span_stage_async(
                    k,
                    v,
                    &mut k_span,
                    &mut v_span,
                    &cube,
                    comptime!(c + 1),
                    window,
                    head_dim,
                    planes,
                    CHUNK,
                );
                copies.commit_copy_async();
            }
            let j0 = comptime!(c * CHUNK);
            let cols = comptime!(chunk_columns(c, window, CHUNK));
            let chunk_start = tile_offset::<N>(cube.first_row + j0, 0usize, head_dim);
            let mut s_acc = scores(&q_ops, &k_span, chunk_start, cols, head_dim, 1usize);
            mask_band_chunk(&mut s_acc, row0, block.len, j0, cols, window);
            softmax_step(
                &mut s_acc, &mut o_acc, &mut m, &mut l, scale, cols, head_dim, 1usize,
            );
            accumulate_products(
                &mut o_acc,
                &s_acc,
                &v_span,
                chunk_start,
                cols,
                head_dim,
                1usize,
            );
            if comptime!(c + 1 < chunks) {
                // The next stage has landed (every unit committed its copies before).
                copies.arrive_and_wait();
            }
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
    }
}
