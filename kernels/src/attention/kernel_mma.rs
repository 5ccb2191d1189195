//! The flash-attention forward kernel (cube code only) on `mma.sync` m16n8k16 with the
//! softmax in registers (FlashAttention-2's layout): f16/bf16 inputs, f32 accumulators, CUDA
//! sm80 and later (CubeCL's manual MMA, [`MmaDefinition`]).
//!
//! Unlike the cmma kernel (`kernel_cmma.rs`), whose fragments are opaque, the register layout
//! of `mma.sync` is known (`mma_tiles.rs`): the scores `S = Q·Kᵀ` are already the A operand of
//! `P·V` once exponentiated and narrowed, with no round trip through shared memory. Lane
//! `4g + t` holds rows `g` and `g + 8` of each of its plane's 16-row m-tiles; a row's max and
//! sum are reduced over the 4 lanes that share it (`t`), with shuffles.
//!
//! A cube is `planes` planes of 32 lanes; plane `p` owns the `16 · m_tiles` query rows from
//! `q0 + 16 · m_tiles · p` (two m-tiles for global attention up to head_dim 64, one with a
//! window, see `forward.rs`). Q and the key tiles are copied with `cp.async` into shared
//! memory, one key tile ahead: while the cube works on a key tile, the next one (K and V,
//! double-buffered) is in flight, without registers. A cube barrier completes when a tile's
//! copies have landed and every unit is done with the previous tile. Per cube:
//! 1. the Q rows are read as A operands (`ldmatrix`);
//! 2. for every key tile of `block_n` keys the block can see (`tiling.rs`), each plane
//!    computes its `16 · m_tiles × block_n` scores into registers, B operands of K read
//!    with `ldmatrix` once for all its m-tiles;
//! 3. masks them (sequence, window) unless the whole tile is visible to the plane's rows
//!    ([`mask_scores`]: only tiles at a sequence's end or a window's edge), raises
//!    the running max `m` per row (on unscaled scores), rescales the running sum `l` and,
//!    when a row of the plane raised its max, the output accumulators by
//!    `exp((m_old − m_new) · scale)`, and takes `P = exp(S · scale − m · scale)`, one fused
//!    multiply-add and one exponential each;
//! 4. `O += P·V`, B operands of V read with `ldmatrix.trans`.
//!
//! Exponentials use the fast `ex2`-based path: their arguments are ≤ 0 and the probabilities
//! are narrowed to f16/bf16 anyway.
//!
//! At the end each row is divided by its `l`, narrowed into a scratch of the input dtype
//! (half the shared memory of an f32 one: a 64-row window cube takes 56 KiB, so four fit on
//! an H200 SM) and written with vector stores; the log-sum-exp is `m · scale + ln l`. Every
//! `ldmatrix`/`mma` and barrier is reached by all lanes of a cube (the tile loop bound is
//! uniform per cube); rows past the sequence end are computed on zeros and never written.

use cubecl::prelude::barrier::Barrier;
use cubecl::prelude::*;

use super::kernel_cmma::{row_max, row_sum, TILE};
use super::mma_tiles::{
    accumulate_products, mask_scores, mma_cube, output_scratch, scores, staged_operands,
    staged_tile, tile_vectors, write_rows, zero_accumulators, AccPair, MmaCube, MMA_N, QUAD,
};
use super::staging::copy_rows_async;
use super::tiling::NEG_BIG;

#[cube(launch, fast_math = FastMath::ReducedPrecision | FastMath::NotNaN | FastMath::NotInf)]
#[allow(clippy::too_many_arguments)]
pub fn flash_attention_varlen_mma_kernel<F: Float, I: Numeric, N: Size>(
    q: &Tensor<Vector<F, N>>,       // [total, heads, head_dim], contiguous
    k: &Tensor<Vector<F, N>>,       // [total, heads, head_dim], contiguous
    v: &Tensor<Vector<F, N>>,       // [total, heads, head_dim], contiguous
    cu_seqlens: &Tensor<I>,         // [batch + 1]
    out: &mut Tensor<Vector<F, N>>, // [total, heads, head_dim]
    lse: &mut Tensor<f32>,          // [total, heads], natural-log sum of exp(scores)
    scale: f32,
    window: u32,
    #[comptime] head_dim: usize,
    #[comptime] block_n: usize,
    #[comptime] planes: usize,
    #[comptime] m_tiles: usize,
    #[comptime] windowed: bool,
    #[define(F, I)] _dtypes: [StorageType; 2],
) {
    let units = comptime!(32 * planes);
    let block_m = comptime!(TILE * m_tiles * planes);
    // Rows per lane: g and g + 8 of each m-tile; row r is row g + 8 (r % 2) of m-tile r / 2,
    // in element r % 2 of the m-tile's accumulators.
    let lane_rows = comptime!(2 * m_tiles);
    let s_per_tile = comptime!(block_n / MMA_N);
    let o_per_tile = comptime!(head_dim / MMA_N);
    let tile_vectors = tile_vectors::<N>(block_n, head_dim);
    let neg_big = f32::new(NEG_BIG);
    let window = window as usize;
    let cube = mma_cube(cu_seqlens, q.shape(1), window, planes, m_tiles, windowed);
    let block = cube.range.clone();
    let (g, head, heads, q0, first_row) =
        (cube.g, cube.head, cube.heads, cube.row0, cube.first_row);

    let mut q_tile = staged_tile::<F, N>(block_m, head_dim);
    // Double buffers: key tile `i` is in half `i % 2`.
    let mut k_tiles = staged_tile::<F, N>(comptime!(2 * block_n), head_dim);
    let mut v_tiles = staged_tile::<F, N>(comptime!(2 * block_n), head_dim);
    let mut scratch = output_scratch::<F>(block_m, head_dim);
    // Completes a phase when every unit has arrived and the copies they committed have landed.
    let copies = Barrier::shared(CUBE_DIM, UNIT_POS == 0);

    // A block past the sequence end sees no keys (uniform over the cube) and writes nothing.
    let tiles = (block.k_hi - block.k_lo).div_ceil(block_n);
    if tiles > 0 {
        copy_rows_async(
            q,
            &mut q_tile,
            0usize,
            block.start,
            q0,
            block.len,
            head,
            heads,
            cube.unit,
            block_m,
            head_dim,
            units,
        );
        copy_key_tile_async(
            k,
            v,
            &mut k_tiles,
            &mut v_tiles,
            0usize,
            &cube,
            block.k_lo,
            block_n,
            head_dim,
            units,
        );
        copies.commit_copy_async();
        // Q and the first key tile have landed: the plane's Q rows as A operands.
        copies.arrive_and_wait();
        let q_ops = staged_operands(&q_tile, &cube, head_dim, m_tiles);

        let mut o_acc = zero_accumulators(comptime!(head_dim * m_tiles));
        // Softmax state of the lane's rows: the running max of the unscaled scores (shared by
        // the row's 4 lanes) and this lane's partial sum over its columns.
        let mut m = Array::<f32>::new(lane_rows);
        let mut l = Array::<f32>::new(lane_rows);
        #[unroll]
        for r in 0..lane_rows {
            m[r] = neg_big;
            l[r] = 0.0;
        }

        for tile in 0..tiles {
            let kb = block.k_lo + tile * block_n;
            let half = tile % 2;
            if tile > 0 {
                // This key tile has landed; every unit is done with the previous one.
                copies.arrive_and_wait();
            }
            // The next key tile, into the other half.
            if tile + 1 < tiles {
                copy_key_tile_async(
                    k,
                    v,
                    &mut k_tiles,
                    &mut v_tiles,
                    1 - half,
                    &cube,
                    kb + block_n,
                    block_n,
                    head_dim,
                    units,
                );
                copies.commit_copy_async();
            }
            let tile_start = half * tile_vectors;

            let mut s_acc = scores(&q_ops, &k_tiles, tile_start, block_n, head_dim, m_tiles);
            // Scores hidden by the mask to NEG_BIG (tiles at a sequence's end or a window's
            // edge only); each row's max over this tile (its 4 lanes together), unscaled.
            mask_scores(
                &mut s_acc,
                q0 + first_row,
                block.len,
                kb,
                block.k_hi,
                window,
                block_n,
                m_tiles,
                windowed,
            );
            let mut tile_max = Array::<f32>::new(lane_rows);
            #[unroll]
            for r in 0..lane_rows {
                let mut row_tile_max = neg_big;
                #[unroll]
                for n in 0..s_per_tile {
                    let acc = s_acc.index(comptime!((r / 2) * s_per_tile + n));
                    let pair = acc[comptime!(r % 2)];
                    row_tile_max = max(row_tile_max, max(pair[0usize], pair[1usize]));
                }
                tile_max[r] = row_max(row_tile_max, QUAD);
            }

            // Online softmax: raise the max, rescale l (and O, below), P = exp((S − m) ·
            // scale). A row that has seen nothing yet keeps m = NEG_BIG; it subtracts 0
            // instead, so its masked scores still give exp(NEG_BIG · scale) = 0.
            let mut correction = Array::<f32>::new(lane_rows);
            let mut raised = false;
            #[unroll]
            for r in 0..lane_rows {
                let e = comptime!(r % 2);
                let m_new = max(tile_max[r], m[r]);
                raised = raised || m_new > m[r];
                // 0 for rows that saw nothing before (m = NEG_BIG), 1 while the max holds.
                correction[r] = ((m[r] - m_new) * scale).exp();
                m[r] = m_new;
                let m_scaled = select(m_new == neg_big, 0.0, m_new * scale);
                let mut row_sum_part = l[r] * correction[r];
                #[unroll]
                for n in 0..s_per_tile {
                    let acc = s_acc.index_mut(comptime!((r / 2) * s_per_tile + n));
                    let mut pair = acc[e];
                    #[unroll]
                    for c in 0..comptime!(2usize) {
                        let p = fma(pair[c], scale, -m_scaled).exp();
                        row_sum_part += p;
                        pair[c] = p;
                    }
                    acc[e] = pair;
                }
                l[r] = row_sum_part;
            }
            // O only when a row of the plane raised its max (a vote, uniform over the plane):
            // past the first tiles most rows keep theirs, and every correction is then 1.
            if plane_any(raised) {
                #[unroll]
                for r in 0..lane_rows {
                    #[unroll]
                    for n in 0..o_per_tile {
                        let acc = o_acc.index_mut(comptime!((r / 2) * o_per_tile + n));
                        let e = comptime!(r % 2);
                        acc[e] = acc[e] * AccPair::new(correction[r]);
                    }
                }
            }
            accumulate_products(
                &mut o_acc, &s_acc, &v_tiles, tile_start, block_n, head_dim, m_tiles,
            );
        }

        // Each row's sum over its 4 lanes; O / l out (rows past the sequence end have l = 0
        // and are not written), and the log-sum-exp.
        let mut inv_l = Array::<f32>::new(lane_rows);
        #[unroll]
        for r in 0..lane_rows {
            let l_row = row_sum(l[r], QUAD);
            inv_l[r] = select(l_row > 0.0, 1.0 / l_row, 0.0);
            let qi = q0 + first_row + (r / 2) * TILE + g + 8 * (r % 2);
            if cube.t == 0 && qi < block.len {
                lse[(block.start + qi) * heads + head] = m[r] * scale + l_row.ln();
            }
        }
        write_rows(&o_acc, &inv_l, &mut scratch, out, &cube, head_dim, m_tiles);
    }
}

/// Issues the asynchronous copies of the key tile from `kb` (K and V, `block_n` rows, zeros
/// past the range) into half `half` of the double buffers.
#[cube]
#[allow(clippy::too_many_arguments)]
fn copy_key_tile_async<F: Float, N: Size>(
    k: &Tensor<Vector<F, N>>,
    v: &Tensor<Vector<F, N>>,
    k_tiles: &mut SharedMemory<Vector<F, N>>,
    v_tiles: &mut SharedMemory<Vector<F, N>>,
    half: usize,
    cube: &MmaCube,
    kb: usize,
    #[comptime] block_n: usize,
    #[comptime] head_dim: usize,
    #[comptime] units: usize,
) {
    let range = &cube.range;
    let tile_start = half * tile_vectors::<N>(block_n, head_dim);
    copy_rows_async(
        k,
        k_tiles,
        tile_start,
        range.start,
        kb,
        range.k_hi,
        cube.head,
        cube.heads,
        cube.unit,
        block_n,
        head_dim,
        units,
    );
    copy_rows_async(
        v,
        v_tiles,
        tile_start,
        range.start,
        kb,
        range.k_hi,
        cube.head,
        cube.heads,
        cube.unit,
        block_n,
        head_dim,
        units,
    );
}
