//! The flash-attention forward kernel (cube code only), tensor-core path: f16/bf16 inputs,
//! both products on cmma tiles of 16×16×16 with f32 accumulators, online softmax in f32.
//!
//! A cube is `planes` planes (warps) of `plane_dim` units; plane `p` owns the 16 query rows
//! `q0 + 16p ..` of the cube's block (`block_m = 16 · planes`). The launcher picks the
//! sizes and checks that the device has the cmma configuration (`forward.rs`).
//!
//! Per cube: the Q block is staged once through shared memory and kept as `head_dim / 16`
//! A fragments per plane. Then, for every key tile of `block_n` keys that the block can see
//! (`tiling.rs`):
//! 1. all units stage the K and V tiles in shared memory (zeros past the visible range);
//! 2. each plane computes `S = Q·Kᵀ` (B = K read column-major) into f32 fragments and stores
//!    them in its scratch;
//! 3. the plane's units take `plane_dim / 16` units per row: mask (sequence, window), row
//!    max (shuffles), `P = exp(S·scale − m)` in f32, written to the plane's P tile in the
//!    input dtype; the running sum `l` stays per unit (partial over its columns);
//! 4. `O += P·V` into the plane's f32 output fragments (`head_dim / 16` of them).
//!
//! The running max `m` is only raised when a row's tile max exceeds it by more than
//! [`RESCALE_THRESHOLD`] (so `P ≤ e^threshold`, harmless in f16/bf16 and f32 sums); only
//! then, and only for planes where some row needs it, are the output fragments bounced
//! through the scratch to be rescaled row-wise (a fragment's element layout is opaque).
//! The final `O / l` is exact whatever `m` was used. At the end the output fragments are
//! stored to the scratch and each row is normalised and written with vector stores.
//!
//! Control flow: every cmma call and barrier is reached by all units of a plane (the
//! tile loop bound is uniform per cube, the rescale branch uniform per plane); rows past
//! the sequence end are computed on zeros and never written.

use cubecl::prelude::*;

use super::cmma_tiles::{
    accumulate_products, products_to_scratch, row_fragments, zero_accumulators,
};
use super::staging::stage_rows;
use super::tiling::{heads, key_visible, query_block, NEG_BIG};

/// Side of a cmma tile (m = n = k = 16).
pub const TILE: usize = 16;
/// Elements of padding after each row of a shared f16/bf16 tile (16 bytes): consecutive rows
/// start in different banks, and row offsets of 16-row fragments stay 32-byte aligned.
pub const PAD: usize = 8;
/// Elements of padding after each row of the shared f32 scratch.
pub const PAD_F32: usize = 4;
/// Alignment of every shared array in bytes (cmma loads and stores need 32).
pub const SMEM_ALIGN: usize = 128;
/// How far (natural log) a row's max may exceed the max its probabilities are taken
/// against before the output is rescaled (FlashAttention-4's conditional rescaling).
pub const RESCALE_THRESHOLD: f32 = 8.0;

#[cube(launch)]
#[allow(clippy::too_many_arguments)]
pub fn flash_attention_varlen_cmma_kernel<F: Float, I: Numeric, N: Size>(
    q: &Array<Vector<F, N>>,       // [total, heads, head_dim], contiguous
    k: &Array<Vector<F, N>>,       // [total, heads, head_dim], contiguous
    v: &Array<Vector<F, N>>,       // [total, heads, head_dim], contiguous
    cu_seqlens: &Array<I>,         // [batch + 1]
    out: &mut Array<Vector<F, N>>, // [total, heads, head_dim]
    lse: &mut Array<f32>,          // [total, heads], natural-log sum of exp(scores)
    scale: f32,
    window: u32,
    #[comptime] head_dim: usize,
    #[comptime] block_n: usize,
    #[comptime] planes: usize,
    #[comptime] plane_dim: usize,
    #[comptime] windowed: bool,
    #[define(F, I)] _dtypes: [StorageType; 2],
) {
    let block_m = comptime!(TILE * planes);
    let lanes_per_row = comptime!(plane_dim / TILE);
    let tile_stride = comptime!(head_dim + PAD); // elements per row of the Q/K/V tiles
    let p_stride = comptime!(block_n + PAD);
    let scratch_stride = comptime!(block_n.max(head_dim) + PAD_F32);
    let vector = N::value();
    let neg_big = f32::new(NEG_BIG);

    let lane = UNIT_POS_X as usize;
    let plane = UNIT_POS_Y as usize;
    let unit = plane * plane_dim + lane;
    let head = CUBE_POS_Y as usize;
    let heads = heads();
    let window = window as usize;
    let q0 = CUBE_POS_X as usize * block_m;
    let block = query_block(
        cu_seqlens,
        CUBE_POS_Z as usize,
        q0,
        block_m,
        window,
        windowed,
    );

    // This unit's row of the plane's 16, and which of the row's `lanes_per_row` units it is:
    // it handles columns `part, part + lanes_per_row, …` of the row.
    let row = lane / lanes_per_row;
    let part = lane % lanes_per_row;
    let qi = q0 + plane * TILE + row;
    let q_valid = qi < block.len;

    let mut q_tile = SharedMemory::<Vector<F, N>>::new_aligned(
        comptime!(block_m * tile_stride / vector),
        SMEM_ALIGN,
    );
    let mut k_tile = SharedMemory::<Vector<F, N>>::new_aligned(
        comptime!(block_n * tile_stride / vector),
        SMEM_ALIGN,
    );
    let mut v_tile = SharedMemory::<Vector<F, N>>::new_aligned(
        comptime!(block_n * tile_stride / vector),
        SMEM_ALIGN,
    );
    // Per plane: P (16 × block_n, input dtype) and an f32 scratch (16 × max(block_n, head_dim))
    // for S, for rescaling O and for the final O.
    let mut p_tiles =
        SharedMemory::<F>::new_aligned(comptime!(planes * TILE * p_stride), SMEM_ALIGN);
    let mut scratch =
        SharedMemory::<f32>::new_aligned(comptime!(planes * TILE * scratch_stride), SMEM_ALIGN);
    let p_base = plane * TILE * p_stride;
    let scratch_base = plane * TILE * scratch_stride;
    let p_end = p_base + TILE * p_stride;
    let scratch_end = scratch_base + TILE * scratch_stride;
    let my_scratch_row = scratch_base + row * scratch_stride;

    stage_rows(
        q,
        &mut q_tile,
        block.start,
        q0,
        block.len,
        head,
        heads,
        unit,
        block_m,
        head_dim,
        comptime!(plane_dim * planes),
    );
    sync_cube();

    // The plane's Q rows as A fragments and its output rows as f32 accumulators, one per
    // 16 columns of head_dim.
    let q_frags = row_fragments(&q_tile, plane * TILE, block_m, head_dim);
    let o_frags = zero_accumulators(head_dim);

    // Softmax state of this unit's row: the max probabilities are taken against (shared by
    // the row's units) and this unit's partial sum of them.
    let mut m = neg_big;
    let mut l = f32::new(0.0);
    let mut scores = Array::<f32>::new(comptime!(block_n / lanes_per_row));

    let tiles = (block.k_hi - block.k_lo).div_ceil(block_n);
    for tile in 0..tiles {
        let kb = block.k_lo + tile * block_n;
        stage_rows(
            k,
            &mut k_tile,
            block.start,
            kb,
            block.k_hi,
            head,
            heads,
            unit,
            block_n,
            head_dim,
            comptime!(plane_dim * planes),
        );
        stage_rows(
            v,
            &mut v_tile,
            block.start,
            kb,
            block.k_hi,
            head,
            heads,
            unit,
            block_n,
            head_dim,
            comptime!(plane_dim * planes),
        );
        sync_cube();

        // S = Q·Kᵀ, 16 keys at a time, into the plane's scratch.
        products_to_scratch(
            &q_frags,
            &k_tile,
            &mut scratch,
            scratch_base,
            scratch_end,
            block_n,
            head_dim,
            scratch_stride,
        );
        sync_plane();

        // Masked, scaled scores of this unit's columns, and the row's max.
        let mut tile_max = neg_big;
        #[unroll]
        for j in 0..comptime!(block_n / lanes_per_row) {
            let column = j * lanes_per_row + part;
            let visible = q_valid && key_visible(qi, kb + column, block.k_hi, window, windowed);
            let s = select(visible, scratch[my_scratch_row + column] * scale, neg_big);
            scores[j] = s;
            tile_max = select(s > tile_max, s, tile_max);
        }
        tile_max = row_max(tile_max, lanes_per_row);

        let rescale = tile_max > m + f32::new(RESCALE_THRESHOLD);
        let m_new = select(rescale, tile_max, m);
        // 1 for rows that keep their max; 0 for rows that saw nothing before.
        let correction = (m - m_new).exp();
        l *= correction;
        #[unroll]
        for j in 0..comptime!(block_n / lanes_per_row) {
            let s = scores[j];
            let p = select(s > neg_big * 0.5, (s - m_new).exp(), 0.0);
            l += p;
            p_tiles[p_base + row * p_stride + j * lanes_per_row + part] = F::cast_from(p);
        }

        // Before the first tile O is zero; later, rescale O where some row's max was raised.
        let plane_rescales = plane_any(rescale);
        if plane_rescales && tile > 0 {
            sync_plane(); // every unit has read its scores: the scratch is free
            #[unroll]
            for d in 0..comptime!(head_dim / TILE) {
                cmma::store(
                    &mut scratch.slice_mut(scratch_base + d * TILE, scratch_end),
                    o_frags.index(d),
                    comptime!(scratch_stride as u32),
                    cmma::MatrixLayout::RowMajor,
                );
            }
            sync_plane();
            #[unroll]
            for j in 0..comptime!(head_dim / lanes_per_row) {
                let index = my_scratch_row + j * lanes_per_row + part;
                scratch[index] = scratch[index] * correction;
            }
            sync_plane();
            #[unroll]
            for d in 0..comptime!(head_dim / TILE) {
                cmma::load_with_layout(
                    o_frags.index(d),
                    &scratch.slice(scratch_base + d * TILE, scratch_end),
                    comptime!(scratch_stride as u32),
                    cmma::MatrixLayout::RowMajor,
                );
            }
        }
        sync_plane(); // P is complete

        // O += P·V, 16 keys at a time.
        accumulate_products(
            &o_frags, &p_tiles, p_base, p_end, &v_tile, block_n, p_stride, head_dim,
        );
        m = m_new;
        sync_cube(); // the K/V tiles and P are free for the next tile
    }

    // O to the scratch, then each row normalised and written, `vector` elements at a time.
    #[unroll]
    for d in 0..comptime!(head_dim / TILE) {
        cmma::store(
            &mut scratch.slice_mut(scratch_base + d * TILE, scratch_end),
            o_frags.index(d),
            comptime!(scratch_stride as u32),
            cmma::MatrixLayout::RowMajor,
        );
    }
    sync_plane();
    let l_row = row_sum(l, lanes_per_row);
    if q_valid {
        // Every query sees at least itself, so l > 0.
        let inv_l = 1.0 / l_row;
        let token_head = (block.start + qi) * heads + head;
        let row_vectors = comptime!(head_dim / vector);
        #[unroll]
        for j in 0..comptime!(row_vectors / lanes_per_row) {
            let chunk = j * lanes_per_row + part;
            let mut value = Vector::<F, N>::empty();
            #[unroll]
            for e in 0..vector {
                value[e] = F::cast_from(scratch[my_scratch_row + chunk * vector + e] * inv_l);
            }
            out[token_head * row_vectors + chunk] = value;
        }
        if part == 0 {
            lse[token_head] = m + l_row.ln();
        }
    }
}

/// Max of `value` over the `lanes_per_row` consecutive units that share a row.
#[cube]
pub(super) fn row_max(value: f32, #[comptime] lanes_per_row: usize) -> f32 {
    let mut result = value;
    let mut mask = 1u32;
    #[unroll]
    for _ in 0..comptime!(lanes_per_row.trailing_zeros()) {
        result = max(result, plane_shuffle_xor(result, mask));
        mask *= 2;
    }
    result
}

/// Sum of `value` over the `lanes_per_row` consecutive units that share a row.
#[cube]
pub(super) fn row_sum(value: f32, #[comptime] lanes_per_row: usize) -> f32 {
    let mut result = value;
    let mut mask = 1u32;
    #[unroll]
    for _ in 0..comptime!(lanes_per_row.trailing_zeros()) {
        result += plane_shuffle_xor(result, mask);
        mask *= 2;
    }
    result
}
