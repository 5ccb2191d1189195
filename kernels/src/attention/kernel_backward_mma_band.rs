//! The sliding-window flash-attention backward on `mma.sync` (cube code only): the two
//! kernels of `kernel_backward_mma.rs`'s deterministic pair, each plane walking only its band
//! (`band.rs`) of the other side, 144 rows at ±64 where the tiled kernels compute 192.
//!
//! - [`flash_attention_varlen_dq_band_kernel`]: a cube owns `16 · planes` queries (A operands
//!   of Q and dO) and stages their key span (K and V); it computes their `D = rowsum(dO ∘ O)`
//!   and writes it for the dK/dV kernel, which runs after it (so D takes no launch of its
//!   own, `delta.rs`); per chunk of a plane's band, `S` and `dP` into registers, the band
//!   mask, `dS = P ∘ (dP − D)` in place, `dQ += dS·K`; at the end `dQ · scale`.
//! - [`flash_attention_varlen_dkv_band_kernel`]: a cube owns `16 · planes` keys (A operands
//!   of K and V) and stages their query span (Q, dO, and each query's lse and D); per chunk,
//!   `Sᵀ` and `dPᵀ`, the mask, `Pᵀ` and `dSᵀ` in place, `dV += Pᵀ·dO`, `dK += dSᵀ·Q`; at the
//!   end `dK · scale`.
//!
//! Each gradient row is owned by one plane and summed in a fixed order, so the pair is
//! deterministic, without atomics. Every barrier is reached by all units of a cube; own rows
//! past the sequence end are computed on zeros and never written.

use cubecl::prelude::barrier::Barrier;
use cubecl::prelude::*;

use super::band::{band_chunks, chunk_columns, copy_span_stage_async, mask_band_chunk, span_rows};
use super::delta::row_dot_part;
use super::kernel_backward_mma::{
    lane_row_values, score_gradients, transposed_score_gradients, write_scaled_rows,
};
use super::kernel_cmma::{row_sum, SMEM_ALIGN, TILE};
use super::mma_tiles::{
    accumulate_products, mma_cube, output_scratch, own_operands, scores, staged_tile, tile_offset,
    zero_accumulators, MmaCube, QUAD,
};
use super::staging::stage_shifted_row_values_pair;

/// Keys per chunk of the dQ kernel: three 16-key blocks (a band of 144 at ±64 is three).
const DQ_CHUNK: usize = 48;
/// Queries per chunk of the dK/dV kernel, which holds four `16 × head_dim` accumulators and
/// so takes smaller chunks (as its tiled form takes smaller tiles, `backward.rs`).
const DKV_CHUNK: usize = 32;

/// `dQ` for a block of `16 · planes` queries per cube at ±`window`.
#[cube(launch, fast_math = FastMath::ReducedPrecision | FastMath::NotNaN | FastMath::NotInf)]
#[allow(clippy::too_many_arguments)]
pub fn flash_attention_varlen_dq_band_kernel<F: Float, I: Numeric, N: Size>(
    q: &Tensor<Vector<F, N>>, // [total, heads, head_dim], contiguous (as are all below)
    k: &Tensor<Vector<F, N>>, // [total, heads, head_dim]
    v: &Tensor<Vector<F, N>>, // [total, heads, head_dim]
    out: &Tensor<Vector<F, N>>, // [total, heads, head_dim], the forward's output
    d_out: &Tensor<Vector<F, N>>, // [total, heads, head_dim]
    lse: &Tensor<f32>,        // [total, heads]
    cu_seqlens: &Tensor<I>,   // [batch + 1]
    delta: &mut Tensor<f32>,  // [total, heads], rowsum(dO ∘ O), written here
    dq: &mut Tensor<Vector<F, N>>, // [total, heads, head_dim]
    scale: f32,
    #[comptime] window: usize,
    #[comptime] head_dim: usize,
    #[comptime] planes: usize,
    #[define(F, I)] _dtypes: [StorageType; 2],
) {
    let block_m = comptime!(TILE * planes);
    let span = comptime!(span_rows(window, planes));
    let chunks = comptime!(band_chunks(window, DQ_CHUNK));
    let cube = mma_cube(cu_seqlens, q.shape(1), window, planes, 1usize, true);
    let block = cube.range.clone();

    let mut own_tile = staged_tile::<F, N>(block_m, head_dim);
    let mut k_span = staged_tile::<F, N>(span, head_dim);
    let mut v_span = staged_tile::<F, N>(span, head_dim);
    let mut scratch = output_scratch::<F>(block_m, head_dim);
    // Completes a phase when every unit has arrived and the copies they committed have landed.
    let copies = Barrier::shared(CUBE_DIM, UNIT_POS == 0);

    // A block past the sequence end sees no keys (uniform over the cube) and writes nothing.
    if block.k_lo < block.k_hi {
        // The span's first stage flies while the plane's Q and dO rows are staged.
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
            DQ_CHUNK,
        );
        copies.commit_copy_async();
        let q_ops = own_operands(q, &mut own_tile, &cube, head_dim, planes, 1usize);
        let do_ops = own_operands(d_out, &mut own_tile, &cube, head_dim, planes, 1usize);
        let row_lse = lane_row_values(lse, &cube);
        let row_delta = lane_row_deltas(d_out, out, delta, &cube, head_dim);
        copies.arrive_and_wait();

        let mut dq_acc = zero_accumulators(head_dim);
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
                    DQ_CHUNK,
                );
                copies.commit_copy_async();
            }
            let j0 = comptime!(c * DQ_CHUNK);
            let cols = comptime!(chunk_columns(c, window, DQ_CHUNK));
            let chunk_start = tile_offset::<N>(cube.first_row + j0, 0usize, head_dim);
            let mut ds = scores(&q_ops, &k_span, chunk_start, cols, head_dim, 1usize);
            let dp = scores(&do_ops, &v_span, chunk_start, cols, head_dim, 1usize);
            mask_band_chunk(&mut ds, row0, block.len, j0, cols, window);
            score_gradients(&mut ds, &dp, &row_lse, &row_delta, scale, cols);
            accumulate_products(
                &mut dq_acc,
                &ds,
                &k_span,
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

        write_scaled_rows(&dq_acc, scale, &mut scratch, dq, &cube, head_dim);
    }
}

/// `D = rowsum(dO ∘ O)` of the lane's own query rows `g` and `g + 8` (zeros past the
/// sequence end), in f32 from dO and O in their dtype as `delta.rs` computes it
/// ([`row_dot_part`]): the 4 lanes that share a row each sum a quarter of its vectors, then
/// add theirs with shuffles. Lane `t = 0` writes each row's D to `delta`.
#[cube]
fn lane_row_deltas<F: Float, N: Size>(
    d_out: &Tensor<Vector<F, N>>,
    out: &Tensor<Vector<F, N>>,
    delta: &mut Tensor<f32>,
    cube: &MmaCube,
    #[comptime] head_dim: usize,
) -> Array<f32> {
    let block = &cube.range;
    let mut row_delta = Array::<f32>::new(2usize);
    #[unroll]
    for e in 0..comptime!(2usize) {
        let qi = cube.row0 + cube.first_row + cube.g + 8 * e;
        let token_head = (block.start + qi) * cube.heads + cube.head;
        let mut sum = f32::new(0.0);
        if qi < block.len {
            sum = row_dot_part(d_out, out, token_head, cube.t, head_dim, QUAD);
        }
        // Every lane of the plane takes part in the shuffles.
        let sum = row_sum(sum, QUAD);
        if qi < block.len && cube.t == 0 {
            delta[token_head] = sum;
        }
        row_delta[e] = sum;
    }
    row_delta
}

/// `dK` and `dV` for a block of `16 · planes` keys per cube at ±`window`.
#[cube(launch, fast_math = FastMath::ReducedPrecision | FastMath::NotNaN | FastMath::NotInf)]
#[allow(clippy::too_many_arguments)]
pub fn flash_attention_varlen_dkv_band_kernel<F: Float, I: Numeric, N: Size>(
    q: &Tensor<Vector<F, N>>, // [total, heads, head_dim], contiguous (as are all below)
    k: &Tensor<Vector<F, N>>, // [total, heads, head_dim]
    v: &Tensor<Vector<F, N>>, // [total, heads, head_dim]
    d_out: &Tensor<Vector<F, N>>, // [total, heads, head_dim]
    lse: &Tensor<f32>,        // [total, heads]
    delta: &Tensor<f32>,      // [total, heads], rowsum(dO ∘ O)
    cu_seqlens: &Tensor<I>,   // [batch + 1]
    dk: &mut Tensor<Vector<F, N>>, // [total, heads, head_dim]
    dv: &mut Tensor<Vector<F, N>>, // [total, heads, head_dim]
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
    let cube = mma_cube(cu_seqlens, q.shape(1), window, planes, 1usize, true);
    let range = cube.range.clone();

    let mut own_tile = staged_tile::<F, N>(block_m, head_dim);
    let mut q_span = staged_tile::<F, N>(span, head_dim);
    let mut do_span = staged_tile::<F, N>(span, head_dim);
    let mut lse_span = SharedMemory::<f32>::new_aligned(span, SMEM_ALIGN);
    let mut delta_span = SharedMemory::<f32>::new_aligned(span, SMEM_ALIGN);
    let mut scratch = output_scratch::<F>(block_m, head_dim);
    // Completes a phase when every unit has arrived and the copies they committed have landed.
    let copies = Barrier::shared(CUBE_DIM, UNIT_POS == 0);

    // A block past the sequence end is seen by no query (uniform over the cube).
    if range.k_lo < range.k_hi {
        // The span's first stage flies while lse, D and the plane's K and V rows are staged.
        copy_span_stage_async(
            q,
            d_out,
            &mut q_span,
            &mut do_span,
            &cube,
            0usize,
            window,
            head_dim,
            planes,
            DKV_CHUNK,
        );
        copies.commit_copy_async();
        // lse and D of the span's queries (zeros outside the sequence, whose scores are
        // masked): plain loads, visible to every unit once the barrier completes below.
        stage_shifted_row_values_pair(
            lse,
            delta,
            &mut lse_span,
            &mut delta_span,
            range.start,
            cube.row0,
            range.len,
            cube.head,
            cube.heads,
            cube.unit,
            comptime!(32 * planes),
            window,
            span,
        );
        let v_ops = own_operands(v, &mut own_tile, &cube, head_dim, planes, 1usize);
        let k_ops = own_operands(k, &mut own_tile, &cube, head_dim, planes, 1usize);
        copies.arrive_and_wait();

        let mut dk_acc = zero_accumulators(head_dim);
        let mut dv_acc = zero_accumulators(head_dim);
        let row0 = cube.row0 + cube.first_row;
        #[unroll]
        for c in 0..chunks {
            if comptime!(c + 1 < chunks) {
                copy_span_stage_async(
                    q,
                    d_out,
                    &mut q_span,
                    &mut do_span,
                    &cube,
                    comptime!(c + 1),
                    window,
                    head_dim,
                    planes,
                    DKV_CHUNK,
                );
                copies.commit_copy_async();
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
            if comptime!(c + 1 < chunks) {
                // The next stage has landed (every unit committed its copies before).
                copies.arrive_and_wait();
            }
        }

        write_scaled_rows(&dk_acc, scale, &mut scratch, dk, &cube, head_dim);
        write_scaled_rows(&dv_acc, 1.0, &mut scratch, dv, &cube, head_dim);
    }
}
