//! The sliding-window flash-attention backward on `mma.sync` (cube code only): a
//! deterministic pair of kernels in which each plane walks only its band (`band.rs`) of the
//! other side, 144 rows at ±64 where the tiled kernels (`kernel_backward_mma.rs`) compute 192.
//!
//! - [`flash_attention_varlen_dkv_band_kernel`] (first, after D, `delta.rs`): a cube owns
//!   `16 · planes` keys (A operands of K and V) and stages their query span (Q, dO, and each
//!   query's lse and D); per chunk, `Sᵀ` and `dPᵀ`, the mask, `Pᵀ` and `dSᵀ` in place, `dV +=
//!   Pᵀ·dO`, `dK += dSᵀ·Q`, and the chunk's tile of dS written to the banded dS buffer
//!   (`band_scores.rs`); at the end `dK · scale`.
//! - [`flash_attention_varlen_dq_band_kernel`]: a cube owns `16 · planes` queries and stages
//!   their key span of K; each plane loads its queries' tiles of the banded dS as A operands
//!   straight from global memory and, per 16-key block of its band, `dQ += dS·K`; at the end
//!   `dQ · scale`. It recomputes nothing: one product where recomputing `S` and `dP` would
//!   take three.
//!
//! Each gradient row is owned by one plane and summed in a fixed order, so the pair is
//! deterministic, without atomics. Every barrier is reached by all units of a cube; own rows
//! past the sequence end are computed on zeros and never written.

use cubecl::prelude::barrier::Barrier;
use cubecl::prelude::*;

use super::band::{
    band_chunks, band_columns, chunk_columns, copy_span_rows_async, mask_band_chunk, span_rows,
    stage_end,
};
use super::band_scores::{band_score_operand, write_band_scores};
use super::kernel_backward_mma::{transposed_score_gradients, write_scaled_rows};
use super::kernel_cmma::{SMEM_ALIGN, TILE};
use super::mma_tiles::{
    accumulate_block_products, accumulate_products, load_own_rows, mma_cube, output_scratch,
    own_operand_pair, scores, staged_tile, tile_offset, tile_vectors, write_scaled_pairs,
    zero_accumulators, MmaCube, Operands, Pair,
};
use super::staging::{copy_row_values_pair_async, copy_shifted_rows_async};

/// Keys at the start of each plane's band whose span rows the dQ kernel's first barrier
/// waits for (`stage_end(0)` for steps of this many keys): three of the nine 16-key blocks
/// of a band at ±64; the products over them run while the rest of the span lands.
const DQ_FIRST_KEYS: usize = 48;
/// Queries per chunk of the dK/dV kernel, one 16-query block: one tile of the banded dS
/// (`band_scores.rs`). It holds four `16 × head_dim` accumulators, and with its whole span
/// in flight at once no chunk waits for copies, so the compiler overlaps the chunks: at 32
/// queries that took 192 registers (two cubes per SM at head_dim 64), at 16 it takes 168
/// (three), and 194 µs where 32 took 211 µs (±64, B=64 S=512, BENCHMARKS.md, session 18).
const DKV_CHUNK: usize = 16;

/// The two barriers through which the band backward's cubes wait for their span: the whole
/// span is copied at once, the rows that chunk 0 of some plane reads completing `first`, the
/// rest `rest`, so that the chunks wait for one round trip to global memory, not one per
/// chunk. Each completes its one phase when every unit has arrived and the copies it
/// committed (all its earlier ones: `cp.async`'s arrive counts every copy the unit issued
/// before it) have landed.
#[cube]
fn span_barriers() -> (Shared<Barrier>, Shared<Barrier>) {
    (
        Barrier::shared(CUBE_DIM, UNIT_POS == 0),
        Barrier::shared(CUBE_DIM, UNIT_POS == 0),
    )
}

/// `dQ` for a block of `16 · planes` queries per cube at ±`window` (a multiple of 16), from
/// the banded dS that [`flash_attention_varlen_dkv_band_kernel`] wrote.
#[cube(launch, fast_math = FastMath::ReducedPrecision | FastMath::NotNaN | FastMath::NotInf)]
#[allow(clippy::too_many_arguments)]
pub fn flash_attention_varlen_dq_band_kernel<F: Float, I: Numeric, N: Size>(
    k: &Array<Vector<F, N>>, // [total, heads, head_dim], contiguous (as are all below)
    ds: &Array<Vector<F, N>>, // `band_scores.rs`
    cu_seqlens: &Array<I>,   // [batch + 1]
    dq: &mut Array<Pair<F>>, // [total, heads, head_dim], written as pairs
    scale: f32,
    #[comptime] window: usize,
    #[comptime] head_dim: usize,
    #[comptime] planes: usize,
    #[define(F, I)] _dtypes: [StorageType; 2],
) {
    let span = comptime!(span_rows(window, planes));
    let key_blocks = comptime!(band_columns(window) / TILE);
    let cube = mma_cube(cu_seqlens, window, planes, 1usize, true);

    // Shared memory holds the key span alone: dS comes straight into registers and dQ
    // leaves straight from them.
    let mut k_span = staged_tile::<F, N>(span, head_dim);
    let (first, rest) = span_barriers();

    // A block past the sequence end sees no keys (uniform over the cube) and writes nothing.
    if cube.range.k_lo < cube.range.k_hi {
        // The whole span is in flight at once (see `span_barriers`), and the plane's dS
        // operands are loaded while it lands.
        let first_end = comptime!(stage_end(0, window, planes, DQ_FIRST_KEYS));
        copy_key_rows_async(
            k,
            &mut k_span,
            &cube,
            0usize,
            first_end,
            window,
            head_dim,
            planes,
        );
        first.commit_copy_async();
        copy_key_rows_async(
            k,
            &mut k_span,
            &cube,
            first_end,
            span,
            window,
            head_dim,
            planes,
        );
        rest.commit_copy_async();
        // One A operand (one m-tile) per 16-key block of the band.
        let mut ds_ops = Sequence::<Operands<F>>::new();
        #[unroll]
        for kt in 0..key_blocks {
            let mut a = Sequence::new();
            a.push(band_score_operand(ds, &cube, kt, window));
            ds_ops.push(a);
        }
        first.arrive_and_wait();

        let mut dq_acc = zero_accumulators(head_dim);
        #[unroll]
        for kt in 0..key_blocks {
            if comptime!(kt * TILE == DQ_FIRST_KEYS) {
                rest.arrive_and_wait();
            }
            let key_row = cube.first_row + comptime!(kt * TILE);
            accumulate_block_products(
                &mut dq_acc,
                ds_ops.index(kt),
                &k_span,
                tile_offset::<N>(key_row, 0usize, head_dim),
                0usize,
                0usize,
                head_dim,
                head_dim,
                1usize,
            );
        }

        write_scaled_pairs(&dq_acc, scale, dq, &cube, head_dim);
    }
}

/// Issues the asynchronous copies of rows `begin .. end` of the dQ kernel's key span: span
/// row `i` is key `row0 − window + i` (zeros outside the sequence).
#[cube]
#[allow(clippy::too_many_arguments)]
fn copy_key_rows_async<F: Float, N: Size>(
    k: &Array<Vector<F, N>>,
    k_span: &mut SharedMemory<Vector<F, N>>,
    cube: &MmaCube,
    #[comptime] begin: usize,
    #[comptime] end: usize,
    #[comptime] window: usize,
    #[comptime] head_dim: usize,
    #[comptime] planes: usize,
) {
    // Counted from `window` before it, span row i is row0 + i.
    copy_shifted_rows_async(
        k,
        k_span,
        tile_vectors::<N>(begin, head_dim),
        cube.range.start,
        cube.row0 + begin,
        cube.range.len,
        cube.head,
        cube.heads,
        cube.unit,
        window,
        0usize,
        comptime!(end - begin),
        head_dim,
        comptime!(32 * planes),
    );
}

/// `dK` and `dV` for a block of `16 · planes` keys per cube at ±`window`, and their banded
/// `dS` (`band_scores.rs`, `window` a multiple of 16).
#[cube(launch, fast_math = FastMath::ReducedPrecision | FastMath::NotNaN | FastMath::NotInf)]
#[allow(clippy::too_many_arguments)]
pub fn flash_attention_varlen_dkv_band_kernel<F: Float, I: Numeric, N: Size>(
    q: &Array<Vector<F, N>>, // [total, heads, head_dim], contiguous (as are all below)
    k: &Array<Vector<F, N>>, // [total, heads, head_dim]
    v: &Array<Vector<F, N>>, // [total, heads, head_dim]
    d_out: &Array<Vector<F, N>>, // [total, heads, head_dim]
    lse: &Array<f32>,        // [total, heads]
    delta: &Array<f32>,      // [total, heads], rowsum(dO ∘ O)
    cu_seqlens: &Array<I>,   // [batch + 1]
    dk: &mut Array<Vector<F, N>>, // [total, heads, head_dim]
    dv: &mut Array<Vector<F, N>>, // [total, heads, head_dim]
    ds: &mut Array<Vector<F, N>>, // `band_scores.rs`, written here
    scale: f32,
    #[comptime] window: usize,
    #[comptime] head_dim: usize,
    #[comptime] planes: usize,
    #[define(F, I)] _dtypes: [StorageType; 2],
) {
    let block_m = comptime!(TILE * planes);
    let span = comptime!(span_rows(window, planes));
    let chunks = comptime!(band_chunks(window, DKV_CHUNK));
    // The cube's own rows are keys; its range is the queries that see them.
    let cube = mma_cube(cu_seqlens, window, planes, 1usize, true);
    let range = cube.range.clone();

    let mut own_tile = staged_tile::<F, N>(block_m, head_dim);
    let mut q_span = staged_tile::<F, N>(span, head_dim);
    let mut do_span = staged_tile::<F, N>(span, head_dim);
    let mut lse_span = SharedMemory::<f32>::new_aligned(span, SMEM_ALIGN);
    let mut delta_span = SharedMemory::<f32>::new_aligned(span, SMEM_ALIGN);
    let mut scratch = output_scratch::<F>(block_m, head_dim);
    let (first, rest) = span_barriers();

    // A block past the sequence end is seen by no query (uniform over the cube).
    if range.k_lo < range.k_hi {
        // The plane's K and V rows first, then the whole span (see `span_barriers`) with each
        // query's lse and D (zeros outside the sequence, whose scores are masked), in flight
        // while K and V are staged.
        let held_v = load_own_rows(v, &cube, head_dim, planes);
        let held_k = load_own_rows(k, &cube, head_dim, planes);
        let first_end = comptime!(stage_end(0, window, planes, DKV_CHUNK));
        copy_span_rows_async(
            q,
            d_out,
            &mut q_span,
            &mut do_span,
            &cube,
            0usize,
            0usize,
            first_end,
            0usize,
            window,
            head_dim,
            planes,
        );
        copy_row_values_pair_async(
            lse,
            delta,
            &mut lse_span,
            &mut delta_span,
            0usize,
            range.start,
            cube.row0,
            range.len,
            cube.head,
            cube.heads,
            cube.unit,
            window,
            span,
            comptime!(32 * planes),
        );
        first.commit_copy_async();
        copy_span_rows_async(
            q,
            d_out,
            &mut q_span,
            &mut do_span,
            &cube,
            0usize,
            first_end,
            span,
            0usize,
            window,
            head_dim,
            planes,
        );
        rest.commit_copy_async();
        let (v_ops, k_ops) =
            own_operand_pair(&held_v, &held_k, &mut own_tile, &cube, head_dim, planes);
        first.arrive_and_wait();

        let mut dk_acc = zero_accumulators(head_dim);
        let mut dv_acc = zero_accumulators(head_dim);
        let row0 = cube.row0 + cube.first_row;
        #[unroll]
        for c in 0..chunks {
            if comptime!(c == 1) {
                rest.arrive_and_wait();
            }
            let j0 = comptime!(c * DKV_CHUNK);
            let cols = comptime!(chunk_columns(c, window, DKV_CHUNK));
            let first_column = cube.first_row + j0;
            let chunk_start = tile_offset::<N>(first_column, 0usize, head_dim);
            // Sᵀ → Pᵀ and dPᵀ → dSᵀ in place, rows = this plane's keys, columns = queries.
            let mut p_t = scores(&k_ops, &q_span, chunk_start, cols, head_dim, 1usize);
            let mut ds_t = scores(&v_ops, &do_span, chunk_start, cols, head_dim, 1usize);
            mask_band_chunk(&mut p_t, row0, range.len, j0, cols, window);
            transposed_score_gradients(
                &mut p_t,
                &mut ds_t,
                &lse_span,
                &delta_span,
                first_column,
                scale,
                cols,
            );
            accumulate_products(
                &mut dv_acc,
                &p_t,
                &do_span,
                chunk_start,
                cols,
                head_dim,
                1usize,
            );
            accumulate_products(
                &mut dk_acc,
                &ds_t,
                &q_span,
                chunk_start,
                cols,
                head_dim,
                1usize,
            );
            write_band_scores(&ds_t, &mut scratch, ds, &cube, j0, window, head_dim);
        }

        write_scaled_rows(&dk_acc, scale, &mut scratch, dk, &cube, head_dim);
        write_scaled_rows(&dv_acc, 1.0, &mut scratch, dv, &cube, head_dim);
    }
}
