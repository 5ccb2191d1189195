//! The flash-attention backward kernels (cube code only) on `mma.sync` m16n8k16 with the
//! element-wise work in registers: f16/bf16 inputs, f32 accumulators, CUDA sm80 and later;
//! deterministic (each gradient row is owned by one plane, summed in a fixed order).
//!
//! The products and the register layout are those of the forward (`mma_tiles.rs`): with
//! `S = Q·Kᵀ`, `P = exp(S·scale − lse)` recomputed from the forward's log-sum-exp,
//! `dP = dO·Vᵀ`, `dS = P ∘ (dP − D)` and `D = rowsum(dO ∘ O)` precomputed:
//! - [`flash_attention_varlen_dq_mma_kernel`]: a cube owns a block of queries (16 per
//!   plane, kept as A operands of Q and dO) and walks the key tiles they see:
//!   `S`, `dP` into registers, `dS` in place, then `dQ += dS·K`; at the end `dQ · scale`;
//! - [`flash_attention_varlen_dkv_mma_kernel`]: a cube owns a block of keys (A operands of K
//!   and V) and walks the query tiles that see them, with the transposed products
//!   `Sᵀ = K·Qᵀ`, `dPᵀ = V·dOᵀ` (the per-query lse and D come from shared memory):
//!   `dV += Pᵀ·dO`, `dK += dSᵀ·Q`; at the end `dK · scale`.
//!
//! Because a score accumulator is the A operand of the next product, `P`, `Pᵀ` and `dS`,
//! `dSᵀ` never leave registers. The mask is symmetric, so a block of keys sees its range of
//! queries exactly as a block of queries sees keys ([`query_block`]); tiles outside it are
//! never loaded. Every `ldmatrix`/`mma` and barrier is reached by all lanes (the tile loop
//! bound is uniform per cube); own rows past the sequence end are computed on zeros and
//! never written.

use cubecl::prelude::*;

use super::kernel_cmma::{PAD, PAD_F32, SMEM_ALIGN, TILE};
use super::mma_tiles::{
    accumulate_products, row_operands, scores, write_rows, zero_accumulators, AccPair, MMA_N,
    QUAD,
};
use super::staging::{stage_row_values_pair, stage_rows};
use super::tiling::{key_visible, query_block};

/// `dQ` for a block of `16 · planes` queries per cube, key tiles of `block_n`.
#[cube(launch, fast_math = FastMath::ReducedPrecision | FastMath::NotNaN | FastMath::NotInf)]
#[allow(clippy::too_many_arguments)]
pub fn flash_attention_varlen_dq_mma_kernel<F: Float, I: Numeric, N: Size>(
    q: &Tensor<Vector<F, N>>, // [total, heads, head_dim], contiguous (as are all below)
    k: &Tensor<Vector<F, N>>, // [total, heads, head_dim]
    v: &Tensor<Vector<F, N>>, // [total, heads, head_dim]
    d_out: &Tensor<Vector<F, N>>, // [total, heads, head_dim]
    lse: &Tensor<f32>,        // [total, heads]
    delta: &Tensor<f32>,      // [total, heads], rowsum(dO ∘ O)
    cu_seqlens: &Tensor<I>,   // [batch + 1]
    dq: &mut Tensor<Vector<F, N>>, // [total, heads, head_dim]
    scale: f32,
    window: u32,
    #[comptime] head_dim: usize,
    #[comptime] block_n: usize,
    #[comptime] planes: usize,
    #[comptime] windowed: bool,
    #[define(F, I)] _dtypes: [StorageType; 2],
) {
    let block_m = comptime!(TILE * planes);
    let units = comptime!(32 * planes);
    let tile_stride = comptime!(head_dim + PAD);
    let scratch_stride = comptime!(head_dim + PAD_F32);
    let vector = N::value();
    let lane = UNIT_POS_X as usize;
    let plane = UNIT_POS_Y as usize;
    let unit = plane * 32 + lane;
    let head = CUBE_POS_Y as usize;
    let heads = q.shape(1);
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
    let g = lane / QUAD;
    let t = lane % QUAD;
    let first_row = plane * TILE;

    let mut own_tile = SharedMemory::<Vector<F, N>>::new_aligned(
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
    let mut scratch =
        SharedMemory::<f32>::new_aligned(comptime!(block_m * scratch_stride), SMEM_ALIGN);

    // The plane's Q and dO rows as A operands, staged one after the other.
    stage_rows(
        q,
        &mut own_tile,
        block.start,
        q0,
        block.len,
        head,
        heads,
        unit,
        block_m,
        head_dim,
        units,
    );
    sync_cube();
    let q_ops = row_operands(&own_tile, first_row, head_dim);
    sync_cube();
    stage_rows(
        d_out,
        &mut own_tile,
        block.start,
        q0,
        block.len,
        head,
        heads,
        unit,
        block_m,
        head_dim,
        units,
    );
    sync_cube();
    let do_ops = row_operands(&own_tile, first_row, head_dim);

    // lse and D of the lane's rows g and g + 8.
    let mut row_lse = Array::<f32>::new(2usize);
    let mut row_delta = Array::<f32>::new(2usize);
    #[unroll]
    for e in 0..comptime!(2usize) {
        let qi = q0 + first_row + g + 8 * e;
        row_lse[e] = 0.0;
        row_delta[e] = 0.0;
        if qi < block.len {
            let index = (block.start + qi) * heads + head;
            row_lse[e] = lse[index];
            row_delta[e] = delta[index];
        }
    }

    let mut dq_acc = zero_accumulators(head_dim);
    let tiles = (block.k_hi - block.k_lo).div_ceil(block_n);
    for tile in 0..tiles {
        let kb = block.k_lo + tile * block_n;
        sync_cube(); // every plane is done with the previous tiles
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
            units,
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
            units,
        );
        sync_cube();

        let mut ds = scores(&q_ops, &k_tile, block_n, head_dim);
        let dp = scores(&do_ops, &v_tile, block_n, head_dim);
        #[unroll]
        for e in 0..comptime!(2usize) {
            let qi = q0 + first_row + g + 8 * e;
            let q_valid = qi < block.len;
            #[unroll]
            for n in 0..comptime!(block_n / MMA_N) {
                let s_acc = ds.index(n);
                let s_pair = s_acc[e];
                let dp_acc = dp.index(n);
                let dp_pair = dp_acc[e];
                let mut pair = AccPair::new(0.0);
                #[unroll]
                for c in 0..comptime!(2usize) {
                    let key = kb + n * MMA_N + 2 * t + c;
                    let visible = q_valid && key_visible(qi, key, block.k_hi, window, windowed);
                    let p = select(visible, (s_pair[c] * scale - row_lse[e]).exp(), 0.0);
                    pair[c] = p * (dp_pair[c] - row_delta[e]);
                }
                let acc = ds.index_mut(n);
                acc[e] = pair;
            }
        }
        accumulate_products(&mut dq_acc, &ds, &k_tile, block_n, head_dim);
    }

    let mut row_scale = Array::<f32>::new(2usize);
    row_scale[0usize] = scale;
    row_scale[1usize] = scale;
    write_rows(
        &dq_acc,
        &row_scale,
        &mut scratch,
        dq,
        first_row,
        q0,
        block.start,
        block.len,
        head,
        heads,
        head_dim,
        scratch_stride,
    );
}

/// `dK` and `dV` for a block of `16 · planes` keys per cube, query tiles of `block_n`.
#[cube(launch, fast_math = FastMath::ReducedPrecision | FastMath::NotNaN | FastMath::NotInf)]
#[allow(clippy::too_many_arguments)]
pub fn flash_attention_varlen_dkv_mma_kernel<F: Float, I: Numeric, N: Size>(
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
    window: u32,
    #[comptime] head_dim: usize,
    #[comptime] block_n: usize,
    #[comptime] planes: usize,
    #[comptime] windowed: bool,
    #[define(F, I)] _dtypes: [StorageType; 2],
) {
    let block_m = comptime!(TILE * planes);
    let units = comptime!(32 * planes);
    let tile_stride = comptime!(head_dim + PAD);
    let scratch_stride = comptime!(head_dim + PAD_F32);
    let vector = N::value();
    let lane = UNIT_POS_X as usize;
    let plane = UNIT_POS_Y as usize;
    let unit = plane * 32 + lane;
    let head = CUBE_POS_Y as usize;
    let heads = q.shape(1);
    let window = window as usize;
    let k0 = CUBE_POS_X as usize * block_m;
    // The queries that see this block of keys (the mask is symmetric).
    let range = query_block(
        cu_seqlens,
        CUBE_POS_Z as usize,
        k0,
        block_m,
        window,
        windowed,
    );
    let g = lane / QUAD;
    let t = lane % QUAD;
    let first_row = plane * TILE;

    let mut own_tile = SharedMemory::<Vector<F, N>>::new_aligned(
        comptime!(block_m * tile_stride / vector),
        SMEM_ALIGN,
    );
    let mut q_tile = SharedMemory::<Vector<F, N>>::new_aligned(
        comptime!(block_n * tile_stride / vector),
        SMEM_ALIGN,
    );
    let mut do_tile = SharedMemory::<Vector<F, N>>::new_aligned(
        comptime!(block_n * tile_stride / vector),
        SMEM_ALIGN,
    );
    let mut lse_tile = SharedMemory::<f32>::new_aligned(block_n, SMEM_ALIGN);
    let mut delta_tile = SharedMemory::<f32>::new_aligned(block_n, SMEM_ALIGN);
    let mut scratch =
        SharedMemory::<f32>::new_aligned(comptime!(block_m * scratch_stride), SMEM_ALIGN);

    // The plane's K and V rows as A operands, staged one after the other.
    stage_rows(
        k,
        &mut own_tile,
        range.start,
        k0,
        range.len,
        head,
        heads,
        unit,
        block_m,
        head_dim,
        units,
    );
    sync_cube();
    let k_ops = row_operands(&own_tile, first_row, head_dim);
    sync_cube();
    stage_rows(
        v,
        &mut own_tile,
        range.start,
        k0,
        range.len,
        head,
        heads,
        unit,
        block_m,
        head_dim,
        units,
    );
    sync_cube();
    let v_ops = row_operands(&own_tile, first_row, head_dim);

    let mut dk_acc = zero_accumulators(head_dim);
    let mut dv_acc = zero_accumulators(head_dim);
    let tiles = (range.k_hi - range.k_lo).div_ceil(block_n);
    for tile in 0..tiles {
        let qb = range.k_lo + tile * block_n;
        sync_cube(); // every plane is done with the previous tiles
        stage_rows(
            q,
            &mut q_tile,
            range.start,
            qb,
            range.k_hi,
            head,
            heads,
            unit,
            block_n,
            head_dim,
            units,
        );
        stage_rows(
            d_out,
            &mut do_tile,
            range.start,
            qb,
            range.k_hi,
            head,
            heads,
            unit,
            block_n,
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
            head,
            heads,
            unit,
            units,
            block_n,
        );
        sync_cube();

        // Sᵀ → Pᵀ and dPᵀ → dSᵀ in place, rows = this plane's keys, columns = the queries.
        let mut p_t = scores(&k_ops, &q_tile, block_n, head_dim);
        let mut ds_t = scores(&v_ops, &do_tile, block_n, head_dim);
        #[unroll]
        for e in 0..comptime!(2usize) {
            let key = k0 + first_row + g + 8 * e;
            let k_valid = key < range.len;
            #[unroll]
            for n in 0..comptime!(block_n / MMA_N) {
                let s_acc = p_t.index(n);
                let s_pair = s_acc[e];
                let dp_acc = ds_t.index(n);
                let dp_pair = dp_acc[e];
                let mut p_pair = AccPair::new(0.0);
                let mut ds_pair = AccPair::new(0.0);
                #[unroll]
                for c in 0..comptime!(2usize) {
                    let column = n * MMA_N + 2 * t + c;
                    let visible =
                        k_valid && key_visible(key, qb + column, range.k_hi, window, windowed);
                    let p = select(
                        visible,
                        (s_pair[c] * scale - lse_tile[column]).exp(),
                        0.0,
                    );
                    p_pair[c] = p;
                    ds_pair[c] = p * (dp_pair[c] - delta_tile[column]);
                }
                let p_acc = p_t.index_mut(n);
                p_acc[e] = p_pair;
                let ds_acc = ds_t.index_mut(n);
                ds_acc[e] = ds_pair;
            }
        }
        accumulate_products(&mut dv_acc, &p_t, &do_tile, block_n, head_dim);
        accumulate_products(&mut dk_acc, &ds_t, &q_tile, block_n, head_dim);
    }

    let mut row_scale = Array::<f32>::new(2usize);
    row_scale[0usize] = scale;
    row_scale[1usize] = scale;
    write_rows(
        &dk_acc,
        &row_scale,
        &mut scratch,
        dk,
        first_row,
        k0,
        range.start,
        range.len,
        head,
        heads,
        head_dim,
        scratch_stride,
    );
    sync_plane(); // the scratch rows are read before they are reused
    row_scale[0usize] = 1.0;
    row_scale[1usize] = 1.0;
    write_rows(
        &dv_acc,
        &row_scale,
        &mut scratch,
        dv,
        first_row,
        k0,
        range.start,
        range.len,
        head,
        heads,
        head_dim,
        scratch_stride,
    );
}
