//! The flash-attention backward kernels (cube code only), tensor-core path: f16/bf16
//! inputs, every product on cmma tiles of 16×16×16 with f32 accumulators, deterministic
//! (each gradient row is owned by one plane and summed in a fixed order, no atomics).
//!
//! With `S = Q·Kᵀ`, `P = exp(S·scale − lse)` recomputed from the forward's log-sum-exp (no
//! `S²` buffer), `dP = dO·Vᵀ`, `dS = P ∘ (dP − D)` and `D = rowsum(dO ∘ O)` precomputed
//! (FlashAttention-2's backward, split in two kernels so that no gradient is shared):
//! - [`flash_attention_varlen_dq_cmma_kernel`]: a cube owns a block of queries and walks the
//!   key tiles they see: `dQ = scale · dS·K`;
//! - [`flash_attention_varlen_dkv_cmma_kernel`]: a cube owns a block of keys and walks the
//!   query tiles that see them, computing the transposed products `Sᵀ = K·Qᵀ` and
//!   `dPᵀ = V·dOᵀ`: `dV = Pᵀ·dO`, `dK = scale · dSᵀ·Q`.
//!
//! Layout of both (as in the forward, `kernel_cmma.rs`): a cube is `planes` planes of
//! `plane_dim` units; plane `p` owns 16 rows of the cube's `block = 16 · planes` rows
//! ("own" rows: queries for dQ, keys for dK/dV) and keeps their operand fragments and its
//! `head_dim / 16` f32 gradient accumulators in registers. Tiles of `block` "other" rows
//! (keys for dQ, queries for dK/dV) are staged in shared memory, zeros past the visible
//! range (`staging.rs`); the own rows are staged once through the same shared arrays before
//! the loop. Per tile, each plane:
//! 1. computes its two score products (`S`/`Sᵀ` and `dP`/`dPᵀ`, `B` read column-major from
//!    the staged tile) into its f32 scratch, side by side;
//! 2. has `plane_dim / 16` units per row apply the mask (sequence, window), `P` and `dS` in
//!    f32, written to the plane's shared tiles in the input dtype;
//! 3. accumulates its gradient products with those tiles as `A` and the staged tile as `B`.
//!
//! At the end the accumulators go through the scratch to be scaled and written row-wise
//! with vector stores. The mask is symmetric, so a block of keys sees a range of queries
//! exactly as a block of queries sees keys: both kernels take the range from
//! [`query_block`] and never load a tile outside it.
//!
//! Control flow: every cmma call and barrier is reached by all units of a plane (the tile
//! loop bound is uniform per cube); own rows past the sequence end are computed on zeros
//! and never written.

use cubecl::prelude::*;

use super::cmma_tiles::{
    accumulate_products, products_to_scratch, row_fragments, zero_accumulators,
};
use super::kernel_cmma::{PAD, PAD_F32, SMEM_ALIGN, TILE};
use super::staging::{stage_row_values_pair, stage_rows};
use super::tiling::{heads, key_visible, query_block, QueryBlock};

/// `dQ` for a block of `16 · planes` queries per cube.
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
pub fn flash_attention_varlen_dq_cmma_kernel<F: Float, I: Numeric, N: Size>(
    q: &Array<Vector<F, N>>, // [total, heads, head_dim], contiguous (as are all below)
    k: &Array<Vector<F, N>>, // [total, heads, head_dim]
    v: &Array<Vector<F, N>>, // [total, heads, head_dim]
    d_out: &Array<Vector<F, N>>, // [total, heads, head_dim]
    lse: &Array<f32>,        // [total, heads]
    delta: &Array<f32>,      // [total, heads], rowsum(dO ∘ O)
    cu_seqlens: &Array<I>,   // [batch + 1]
    dq: &mut Array<Vector<F, N>>, // [total, heads, head_dim]
    scale: f32,
    window: u32,
    #[comptime] head_dim: usize,
    #[comptime] planes: usize,
    #[comptime] plane_dim: usize,
    #[comptime] windowed: bool,
    #[define(F, I)] _dtypes: [StorageType; 2],
) {
    let block = comptime!(TILE * planes);
    let units = comptime!(plane_dim * planes);
    let lanes_per_row = comptime!(plane_dim / TILE);
    let ds_stride = comptime!(block + PAD);
    let scratch_stride = comptime!(scratch_width(block, head_dim) + PAD_F32);
    let vector = N::value();
    let tile_len = comptime!(block * (head_dim + PAD) / vector);
    let window = window as usize;
    let rows = plane_rows(cu_seqlens, window, planes, plane_dim, windowed);
    let range = rows.range;
    let heads = heads();
    let q_valid = rows.position < range.len;
    let token_head = (range.start + rows.position) * heads + rows.head;
    let mut row_lse = f32::new(0.0);
    let mut row_delta = f32::new(0.0);
    if q_valid {
        row_lse = lse[token_head];
        row_delta = delta[token_head];
    }

    let mut k_tile = SharedMemory::<Vector<F, N>>::new_aligned(tile_len, SMEM_ALIGN);
    let mut v_tile = SharedMemory::<Vector<F, N>>::new_aligned(tile_len, SMEM_ALIGN);
    let mut ds_tiles = SharedMemory::<F>::new_aligned(comptime!(block * ds_stride), SMEM_ALIGN);
    let mut scratch =
        SharedMemory::<f32>::new_aligned(comptime!(block * scratch_stride), SMEM_ALIGN);
    let ds_base = rows.plane * TILE * ds_stride;
    let ds_end = ds_base + TILE * ds_stride;
    let scratch_base = rows.plane * TILE * scratch_stride;
    let scratch_end = scratch_base + TILE * scratch_stride;
    let my_scratch_row = scratch_base + rows.row * scratch_stride;

    // The plane's Q and dO rows as A fragments, staged through the K and V tiles.
    stage_rows(
        q,
        &mut k_tile,
        range.start,
        rows.first,
        range.len,
        rows.head,
        heads,
        rows.unit,
        block,
        head_dim,
        units,
    );
    stage_rows(
        d_out,
        &mut v_tile,
        range.start,
        rows.first,
        range.len,
        rows.head,
        heads,
        rows.unit,
        block,
        head_dim,
        units,
    );
    sync_cube();
    let q_frags = row_fragments(&k_tile, rows.plane * TILE, block, head_dim);
    let do_frags = row_fragments(&v_tile, rows.plane * TILE, block, head_dim);
    let dq_acc = zero_accumulators(head_dim);
    sync_cube(); // every plane holds its fragments: the tiles are free

    let tiles = (range.k_hi - range.k_lo).div_ceil(block);
    for tile in 0..tiles {
        let kb = range.k_lo + tile * block;
        stage_rows(
            k,
            &mut k_tile,
            range.start,
            kb,
            range.k_hi,
            rows.head,
            heads,
            rows.unit,
            block,
            head_dim,
            units,
        );
        stage_rows(
            v,
            &mut v_tile,
            range.start,
            kb,
            range.k_hi,
            rows.head,
            heads,
            rows.unit,
            block,
            head_dim,
            units,
        );
        sync_cube();

        // S = Q·Kᵀ in columns 0..block of the scratch, dP = dO·Vᵀ in block..2·block.
        products_to_scratch(
            &q_frags,
            &k_tile,
            &mut scratch,
            scratch_base,
            scratch_end,
            block,
            head_dim,
            scratch_stride,
        );
        products_to_scratch(
            &do_frags,
            &v_tile,
            &mut scratch,
            scratch_base + block,
            scratch_end,
            block,
            head_dim,
            scratch_stride,
        );
        sync_plane();

        // dS = P ∘ (dP − D) of this unit's columns, in the input dtype.
        #[unroll]
        for j in 0..comptime!(block / lanes_per_row) {
            let column = j * lanes_per_row + rows.part;
            let visible =
                q_valid && key_visible(rows.position, kb + column, range.k_hi, window, windowed);
            let s = scratch[my_scratch_row + column];
            let dp = scratch[my_scratch_row + block + column];
            let p = select(visible, (s * scale - row_lse).exp(), f32::new(0.0));
            ds_tiles[ds_base + rows.row * ds_stride + column] = F::cast_from(p * (dp - row_delta));
        }
        sync_plane();

        // dQ += dS·K.
        accumulate_products(
            &dq_acc, &ds_tiles, ds_base, ds_end, &k_tile, block, ds_stride, head_dim,
        );
        sync_cube(); // the K/V tiles, dS and the scratch are free for the next tile
    }

    write_rows(
        &dq_acc,
        &mut scratch,
        scratch_base,
        dq,
        token_head,
        q_valid,
        scale,
        rows.row,
        rows.part,
        head_dim,
        lanes_per_row,
        scratch_stride,
    );
}

/// `dK` and `dV` for a block of `16 · planes` keys per cube.
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
pub fn flash_attention_varlen_dkv_cmma_kernel<F: Float, I: Numeric, N: Size>(
    q: &Array<Vector<F, N>>, // [total, heads, head_dim], contiguous (as are all below)
    k: &Array<Vector<F, N>>, // [total, heads, head_dim]
    v: &Array<Vector<F, N>>, // [total, heads, head_dim]
    d_out: &Array<Vector<F, N>>, // [total, heads, head_dim]
    lse: &Array<f32>,        // [total, heads]
    delta: &Array<f32>,      // [total, heads], rowsum(dO ∘ O)
    cu_seqlens: &Array<I>,   // [batch + 1]
    dk: &mut Array<Vector<F, N>>, // [total, heads, head_dim]
    dv: &mut Array<Vector<F, N>>, // [total, heads, head_dim]
    scale: f32,
    window: u32,
    #[comptime] head_dim: usize,
    #[comptime] planes: usize,
    #[comptime] plane_dim: usize,
    #[comptime] windowed: bool,
    #[define(F, I)] _dtypes: [StorageType; 2],
) {
    let block = comptime!(TILE * planes);
    let units = comptime!(plane_dim * planes);
    let lanes_per_row = comptime!(plane_dim / TILE);
    let p_stride = comptime!(block + PAD);
    let scratch_stride = comptime!(scratch_width(block, head_dim) + PAD_F32);
    let vector = N::value();
    let tile_len = comptime!(block * (head_dim + PAD) / vector);
    let window = window as usize;
    // The range of a block of keys is that of a block of queries: the mask is symmetric.
    let rows = plane_rows(cu_seqlens, window, planes, plane_dim, windowed);
    let range = rows.range;
    let heads = heads();
    let k_valid = rows.position < range.len;
    let token_head = (range.start + rows.position) * heads + rows.head;

    let mut q_tile = SharedMemory::<Vector<F, N>>::new_aligned(tile_len, SMEM_ALIGN);
    let mut do_tile = SharedMemory::<Vector<F, N>>::new_aligned(tile_len, SMEM_ALIGN);
    let mut lse_tile = SharedMemory::<f32>::new(block);
    let mut delta_tile = SharedMemory::<f32>::new(block);
    // Per plane: Pᵀ and dSᵀ (16 keys × block queries, input dtype).
    let mut p_tiles = SharedMemory::<F>::new_aligned(comptime!(block * p_stride), SMEM_ALIGN);
    let mut ds_tiles = SharedMemory::<F>::new_aligned(comptime!(block * p_stride), SMEM_ALIGN);
    let mut scratch =
        SharedMemory::<f32>::new_aligned(comptime!(block * scratch_stride), SMEM_ALIGN);
    let p_base = rows.plane * TILE * p_stride;
    let p_end = p_base + TILE * p_stride;
    let scratch_base = rows.plane * TILE * scratch_stride;
    let scratch_end = scratch_base + TILE * scratch_stride;
    let my_scratch_row = scratch_base + rows.row * scratch_stride;

    // The plane's K and V rows as A fragments, staged through the Q and dO tiles.
    stage_rows(
        k,
        &mut q_tile,
        range.start,
        rows.first,
        range.len,
        rows.head,
        heads,
        rows.unit,
        block,
        head_dim,
        units,
    );
    stage_rows(
        v,
        &mut do_tile,
        range.start,
        rows.first,
        range.len,
        rows.head,
        heads,
        rows.unit,
        block,
        head_dim,
        units,
    );
    sync_cube();
    let k_frags = row_fragments(&q_tile, rows.plane * TILE, block, head_dim);
    let v_frags = row_fragments(&do_tile, rows.plane * TILE, block, head_dim);
    let dk_acc = zero_accumulators(head_dim);
    let dv_acc = zero_accumulators(head_dim);
    sync_cube(); // every plane holds its fragments: the tiles are free

    let tiles = (range.k_hi - range.k_lo).div_ceil(block);
    for tile in 0..tiles {
        let qb = range.k_lo + tile * block;
        stage_rows(
            q,
            &mut q_tile,
            range.start,
            qb,
            range.k_hi,
            rows.head,
            heads,
            rows.unit,
            block,
            head_dim,
            units,
        );
        stage_rows(
            d_out,
            &mut do_tile,
            range.start,
            qb,
            range.k_hi,
            rows.head,
            heads,
            rows.unit,
            block,
            head_dim,
            units,
        );
        stage_row_values_pair(
            lse,
            delta,
            &mut lse_tile,
            &mut delta_tile,
            range.start,
            qb,
            range.k_hi,
            rows.head,
            heads,
            rows.unit,
            units,
            block,
        );
        sync_cube();

        // Sᵀ = K·Qᵀ in columns 0..block of the scratch, dPᵀ = V·dOᵀ in block..2·block.
        products_to_scratch(
            &k_frags,
            &q_tile,
            &mut scratch,
            scratch_base,
            scratch_end,
            block,
            head_dim,
            scratch_stride,
        );
        products_to_scratch(
            &v_frags,
            &do_tile,
            &mut scratch,
            scratch_base + block,
            scratch_end,
            block,
            head_dim,
            scratch_stride,
        );
        sync_plane();

        // Pᵀ and dSᵀ = Pᵀ ∘ (dPᵀ − D) of this unit's columns (queries), in the input dtype.
        #[unroll]
        for j in 0..comptime!(block / lanes_per_row) {
            let column = j * lanes_per_row + rows.part;
            let visible =
                k_valid && key_visible(rows.position, qb + column, range.k_hi, window, windowed);
            let s = scratch[my_scratch_row + column];
            let dp = scratch[my_scratch_row + block + column];
            let p = select(visible, (s * scale - lse_tile[column]).exp(), f32::new(0.0));
            let index = p_base + rows.row * p_stride + column;
            p_tiles[index] = F::cast_from(p);
            ds_tiles[index] = F::cast_from(p * (dp - delta_tile[column]));
        }
        sync_plane();

        // dV += Pᵀ·dO, dK += dSᵀ·Q.
        accumulate_products(
            &dv_acc, &p_tiles, p_base, p_end, &do_tile, block, p_stride, head_dim,
        );
        accumulate_products(
            &dk_acc, &ds_tiles, p_base, p_end, &q_tile, block, p_stride, head_dim,
        );
        sync_cube(); // the Q/dO/lse/D tiles, Pᵀ, dSᵀ and the scratch are free for the next tile
    }

    write_rows(
        &dv_acc,
        &mut scratch,
        scratch_base,
        dv,
        token_head,
        k_valid,
        f32::new(1.0),
        rows.row,
        rows.part,
        head_dim,
        lanes_per_row,
        scratch_stride,
    );
    write_rows(
        &dk_acc,
        &mut scratch,
        scratch_base,
        dk,
        token_head,
        k_valid,
        scale,
        rows.row,
        rows.part,
        head_dim,
        lanes_per_row,
        scratch_stride,
    );
}

/// Columns of a plane's f32 scratch: the two score products side by side, or a row of
/// gradients.
pub fn scratch_width(block: usize, head_dim: usize) -> usize {
    (2 * block).max(head_dim)
}

/// Where a unit of a backward cube works: the cube's block of own rows and this unit's
/// place in it.
#[derive(CubeType)]
struct PlaneRows {
    /// The cube's sequence and the range of other rows its own rows see.
    range: QueryBlock,
    /// The attention head (`CUBE_POS_Y`).
    head: usize,
    /// First own row of the cube (position in the sequence).
    first: usize,
    /// This unit's index in the cube.
    unit: usize,
    /// This unit's plane (16 own rows each).
    plane: usize,
    /// This unit's row within its plane's 16.
    row: usize,
    /// Which of the row's `plane_dim / 16` units this is: it takes columns `part`,
    /// `part + plane_dim / 16`, ….
    part: usize,
    /// This unit's own row (position in the sequence; past its end for padding rows).
    position: usize,
}

/// The block of own rows of cube `(x, head, sequence)` of the grid
/// `(ceil(max_seqlen / block), heads, batch)`, and this unit's place in it.
#[cube]
fn plane_rows<I: Numeric>(
    cu_seqlens: &Array<I>,
    window: usize,
    #[comptime] planes: usize,
    #[comptime] plane_dim: usize,
    #[comptime] windowed: bool,
) -> PlaneRows {
    let block = comptime!(TILE * planes);
    let lanes_per_row = comptime!(plane_dim / TILE);
    let lane = UNIT_POS_X as usize;
    let plane = UNIT_POS_Y as usize;
    let first = CUBE_POS_X as usize * block;
    let range = query_block(
        cu_seqlens,
        CUBE_POS_Z as usize,
        first,
        block,
        window,
        windowed,
    );
    let row = lane / lanes_per_row;
    PlaneRows {
        range,
        head: CUBE_POS_Y as usize,
        first,
        unit: plane * plane_dim + lane,
        plane,
        row,
        part: lane % lanes_per_row,
        position: first + plane * TILE + row,
    }
}

/// Writes the plane's accumulated rows times `factor` to row `token_head` of `out` (for the
/// units whose row is `valid`), through the plane's scratch; the plane's units must all
/// call it.
#[cube]
#[allow(clippy::too_many_arguments)]
fn write_rows<F: Float, N: Size>(
    acc: &Sequence<cmma::Matrix<f32>>,
    scratch: &mut SharedMemory<f32>,
    scratch_base: usize,
    out: &mut Array<Vector<F, N>>,
    token_head: usize,
    valid: bool,
    factor: f32,
    row: usize,
    part: usize,
    #[comptime] head_dim: usize,
    #[comptime] lanes_per_row: usize,
    #[comptime] scratch_stride: usize,
) {
    let vector = N::value();
    let scratch_end = scratch_base + TILE * scratch_stride;
    sync_plane(); // the plane's units are done reading the scratch
    #[unroll]
    for d in 0..comptime!(head_dim / TILE) {
        cmma::store(
            &mut scratch.slice_mut(scratch_base + d * TILE, scratch_end),
            acc.index(d),
            comptime!(scratch_stride as u32),
            cmma::MatrixLayout::RowMajor,
        );
    }
    sync_plane();
    if valid {
        let my_scratch_row = scratch_base + row * scratch_stride;
        let row_vectors = comptime!(head_dim / vector);
        #[unroll]
        for j in 0..comptime!(row_vectors / lanes_per_row) {
            let chunk = j * lanes_per_row + part;
            let mut value = Vector::<F, N>::empty();
            #[unroll]
            for e in 0..vector {
                value[e] = F::cast_from(scratch[my_scratch_row + chunk * vector + e] * factor);
            }
            out[token_head * row_vectors + chunk] = value;
        }
    }
}
