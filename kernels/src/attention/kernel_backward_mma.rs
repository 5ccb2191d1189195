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
//! `dSᵀ` never leave registers. As in the forward, global loads are in flight while the
//! tensor cores work: a tile's second operand (V, dO) is loaded while the first product
//! runs, the next tile's first operand (K, Q with its lse and D) while the gradients are
//! accumulated; shared memory holds one tile of each. The mask is symmetric, so a block of keys sees its range of
//! queries exactly as a block of queries sees keys ([`query_block`]); tiles outside it are
//! never loaded. Every `ldmatrix`/`mma` and barrier is reached by all lanes (the tile loop
//! bound is uniform per cube); own rows past the sequence end are computed on zeros and
//! never written.

use cubecl::prelude::*;

use super::kernel_cmma::{SMEM_ALIGN, TILE};
use super::mma_tiles::{
    accumulate_products, mask_scores, mma_cube, output_scratch, own_operands, scores, staged_tile,
    write_rows, zero_accumulators, MMA_N,
};
use super::staging::{load_row_values_pair, load_rows, store_row_values_pair, store_rows};

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
    let window = window as usize;
    let units = comptime!(32 * planes);
    let cube = mma_cube(cu_seqlens, q.shape(1), window, planes, 1usize, windowed);
    let block = cube.range.clone();
    let (g, head, heads, q0) = (cube.g, cube.head, cube.heads, cube.row0);

    let mut own_tile = staged_tile::<F, N>(comptime!(TILE * planes), head_dim);
    let mut k_tile = staged_tile::<F, N>(block_n, head_dim);
    let mut v_tile = staged_tile::<F, N>(block_n, head_dim);
    let mut scratch = output_scratch(comptime!(TILE * planes), head_dim);

    // K of the first tile, its loads issued first so that they land while Q and dO are
    // staged; every iteration loads its V while the scores are computed and the next K while
    // `dQ += dS·K` is (as the forward does).
    let k_held = load_rows(
        k,
        block.start,
        block.k_lo,
        block.k_hi,
        head,
        heads,
        cube.unit,
        block_n,
        head_dim,
        units,
    );
    // The plane's Q and dO rows as A operands.
    let q_ops = own_operands(q, &mut own_tile, &cube, head_dim, planes, 1usize);
    let do_ops = own_operands(d_out, &mut own_tile, &cube, head_dim, planes, 1usize);

    // lse and D of the lane's rows g and g + 8.
    let mut row_lse = Array::<f32>::new(2usize);
    let mut row_delta = Array::<f32>::new(2usize);
    #[unroll]
    for e in 0..comptime!(2usize) {
        let qi = q0 + cube.first_row + g + 8 * e;
        row_lse[e] = 0.0;
        row_delta[e] = 0.0;
        if qi < block.len {
            let index = (block.start + qi) * heads + head;
            row_lse[e] = lse[index];
            row_delta[e] = delta[index];
        }
    }

    store_rows(&k_held, &mut k_tile, cube.unit, block_n, head_dim, units);
    sync_cube();
    let mut dq_acc = zero_accumulators(head_dim);
    let tiles = (block.k_hi - block.k_lo).div_ceil(block_n);
    for tile in 0..tiles {
        let kb = block.k_lo + tile * block_n;
        let v_held = load_rows(
            v,
            block.start,
            kb,
            block.k_hi,
            head,
            heads,
            cube.unit,
            block_n,
            head_dim,
            units,
        );
        // S, masked, then P = exp(S · scale − lse) in place.
        let mut ds = scores(&q_ops, &k_tile, block_n, head_dim, 1usize);
        mask_scores(
            &mut ds,
            q0 + cube.first_row,
            block.len,
            kb,
            block.k_hi,
            window,
            block_n,
            1usize,
            windowed,
        );
        #[unroll]
        for e in 0..comptime!(2usize) {
            #[unroll]
            for n in 0..comptime!(block_n / MMA_N) {
                let acc = ds.index_mut(n);
                let mut pair = acc[e];
                #[unroll]
                for c in 0..comptime!(2usize) {
                    pair[c] = fma(pair[c], scale, -row_lse[e]).exp();
                }
                acc[e] = pair;
            }
        }
        // Every plane is done with the previous V (the barrier that ended the last
        // iteration): this one in, then dP and dS = P ∘ (dP − D) in place.
        store_rows(&v_held, &mut v_tile, cube.unit, block_n, head_dim, units);
        sync_cube();
        let dp = scores(&do_ops, &v_tile, block_n, head_dim, 1usize);
        #[unroll]
        for e in 0..comptime!(2usize) {
            #[unroll]
            for n in 0..comptime!(block_n / MMA_N) {
                let dp_pair = dp.index(n)[e];
                let acc = ds.index_mut(n);
                let mut pair = acc[e];
                #[unroll]
                for c in 0..comptime!(2usize) {
                    pair[c] = pair[c] * (dp_pair[c] - row_delta[e]);
                }
                acc[e] = pair;
            }
        }
        // The next K in flight (zeros past the last tile) while `dQ += dS·K`.
        let k_held = load_rows(
            k,
            block.start,
            kb + block_n,
            block.k_hi,
            head,
            heads,
            cube.unit,
            block_n,
            head_dim,
            units,
        );
        accumulate_products(&mut dq_acc, &ds, &k_tile, block_n, head_dim, 1usize);
        sync_cube(); // every plane is done with K
        store_rows(&k_held, &mut k_tile, cube.unit, block_n, head_dim, units);
        sync_cube();
    }

    let mut row_scale = Array::<f32>::new(2usize);
    row_scale[0usize] = scale;
    row_scale[1usize] = scale;
    write_rows(
        &dq_acc,
        &row_scale,
        &mut scratch,
        dq,
        &cube,
        head_dim,
        1usize,
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
    let window = window as usize;
    let units = comptime!(32 * planes);
    // The cube's own rows are keys; its range is the queries that see them.
    let cube = mma_cube(cu_seqlens, q.shape(1), window, planes, 1usize, windowed);
    let range = cube.range.clone();
    let (t, head, heads, k0) = (cube.t, cube.head, cube.heads, cube.row0);

    let mut own_tile = staged_tile::<F, N>(comptime!(TILE * planes), head_dim);
    let mut q_tile = staged_tile::<F, N>(block_n, head_dim);
    let mut do_tile = staged_tile::<F, N>(block_n, head_dim);
    let mut lse_tile = SharedMemory::<f32>::new_aligned(block_n, SMEM_ALIGN);
    let mut delta_tile = SharedMemory::<f32>::new_aligned(block_n, SMEM_ALIGN);
    let mut scratch = output_scratch(comptime!(TILE * planes), head_dim);

    // Q, lse and D of the first tile, their loads issued first so that they land while K and
    // V are staged; every iteration loads its dO while the scores are computed and the next
    // Q, lse and D while the gradients are accumulated.
    let q_held = load_rows(
        q,
        range.start,
        range.k_lo,
        range.k_hi,
        head,
        heads,
        cube.unit,
        block_n,
        head_dim,
        units,
    );
    let values_held = load_row_values_pair(
        lse,
        delta,
        range.start,
        range.k_lo,
        range.k_hi,
        head,
        heads,
        cube.unit,
        block_n,
        units,
    );
    // The plane's K and V rows as A operands.
    let k_ops = own_operands(k, &mut own_tile, &cube, head_dim, planes, 1usize);
    let v_ops = own_operands(v, &mut own_tile, &cube, head_dim, planes, 1usize);

    store_rows(&q_held, &mut q_tile, cube.unit, block_n, head_dim, units);
    store_row_values_pair(
        &values_held,
        &mut lse_tile,
        &mut delta_tile,
        cube.unit,
        block_n,
        units,
    );
    sync_cube();
    let mut dk_acc = zero_accumulators(head_dim);
    let mut dv_acc = zero_accumulators(head_dim);
    let tiles = (range.k_hi - range.k_lo).div_ceil(block_n);
    for tile in 0..tiles {
        let qb = range.k_lo + tile * block_n;
        let do_held = load_rows(
            d_out,
            range.start,
            qb,
            range.k_hi,
            head,
            heads,
            cube.unit,
            block_n,
            head_dim,
            units,
        );
        // Sᵀ → Pᵀ in place, rows = this plane's keys, columns = the queries.
        let mut p_t = scores(&k_ops, &q_tile, block_n, head_dim, 1usize);
        mask_scores(
            &mut p_t,
            k0 + cube.first_row,
            range.len,
            qb,
            range.k_hi,
            window,
            block_n,
            1usize,
            windowed,
        );
        #[unroll]
        for e in 0..comptime!(2usize) {
            #[unroll]
            for n in 0..comptime!(block_n / MMA_N) {
                let acc = p_t.index_mut(n);
                let mut pair = acc[e];
                #[unroll]
                for c in 0..comptime!(2usize) {
                    let column = n * MMA_N + 2 * t + c;
                    pair[c] = fma(pair[c], scale, -lse_tile[column]).exp();
                }
                acc[e] = pair;
            }
        }
        // Every plane is done with the previous dO (the barrier that ended the last
        // iteration): this one in, then dPᵀ → dSᵀ = Pᵀ ∘ (dPᵀ − D) in place.
        store_rows(&do_held, &mut do_tile, cube.unit, block_n, head_dim, units);
        sync_cube();
        let mut ds_t = scores(&v_ops, &do_tile, block_n, head_dim, 1usize);
        #[unroll]
        for e in 0..comptime!(2usize) {
            #[unroll]
            for n in 0..comptime!(block_n / MMA_N) {
                let p_pair = p_t.index(n)[e];
                let acc = ds_t.index_mut(n);
                let mut pair = acc[e];
                #[unroll]
                for c in 0..comptime!(2usize) {
                    let column = n * MMA_N + 2 * t + c;
                    pair[c] = p_pair[c] * (pair[c] - delta_tile[column]);
                }
                acc[e] = pair;
            }
        }
        // The next Q, lse and D in flight (zeros past the last tile) while the gradients are
        // accumulated.
        let q_held = load_rows(
            q,
            range.start,
            qb + block_n,
            range.k_hi,
            head,
            heads,
            cube.unit,
            block_n,
            head_dim,
            units,
        );
        let values_held = load_row_values_pair(
            lse,
            delta,
            range.start,
            qb + block_n,
            range.k_hi,
            head,
            heads,
            cube.unit,
            block_n,
            units,
        );
        accumulate_products(&mut dv_acc, &p_t, &do_tile, block_n, head_dim, 1usize);
        accumulate_products(&mut dk_acc, &ds_t, &q_tile, block_n, head_dim, 1usize);
        sync_cube(); // every plane is done with Q, lse and D
        store_rows(&q_held, &mut q_tile, cube.unit, block_n, head_dim, units);
        store_row_values_pair(
            &values_held,
            &mut lse_tile,
            &mut delta_tile,
            cube.unit,
            block_n,
            units,
        );
        sync_cube();
    }

    let mut row_scale = Array::<f32>::new(2usize);
    row_scale[0usize] = scale;
    row_scale[1usize] = scale;
    write_rows(
        &dk_acc,
        &row_scale,
        &mut scratch,
        dk,
        &cube,
        head_dim,
        1usize,
    );
    row_scale[0usize] = 1.0;
    row_scale[1usize] = 1.0;
    write_rows(
        &dv_acc,
        &row_scale,
        &mut scratch,
        dv,
        &cube,
        head_dim,
        1usize,
    );
}
