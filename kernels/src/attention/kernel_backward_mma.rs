//! The flash-attention backward kernels (cube code only) on `mma.sync` m16n8k16 with the
//! element-wise work in registers: f16/bf16 inputs, f32 accumulators, CUDA sm80 and later.
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
//!   `dV += Pᵀ·dO`, `dK += dSᵀ·Q`; at the end `dK · scale`. Its query tiles (Q, dO, lse, D)
//!   are double-buffered: the next one is copied in with `cp.async` (no registers) while
//!   this one is worked on, and a cube barrier completes when the copies have landed.
//!
//! Run as a pair they are deterministic: each gradient row is owned by one plane and summed
//! in a fixed order. The default is the dK/dV kernel alone with `fused_dq`
//! (FlashAttention-2's scheme, 5 products per tile pair instead of the pair's 7): it also
//! writes `dSᵀ · scale` of each query tile to shared memory, query-major, and after a barrier
//! plane `p` computes the partial `dQ` of query m-tile `p % 2` and half `p / 2` of `head_dim`
//! over the cube's keys (`dS` from shared memory, `K` kept staged) into the f32 scratch, from
//! which the cube adds it to an f32 `dQ` with coalesced vector atomics (4 floats each on
//! sm90). Their order varies from run to run, so the last bits of `dQ` do too.
//!
//! Because a score accumulator is the A operand of the next product, `P`, `Pᵀ` and `dS`,
//! `dSᵀ` never leave registers. The mask is symmetric, so a block of keys sees its range of
//! queries exactly as a block of queries sees keys ([`query_block`]); tiles outside it are
//! never loaded. Every `ldmatrix`/`mma` and barrier is reached by all lanes (the tile loop
//! bound is uniform per cube); own rows past the sequence end are computed on zeros and
//! never written.

use cubecl::prelude::barrier::Barrier;
use cubecl::prelude::*;

use super::kernel_cmma::{PAD, SMEM_ALIGN, TILE};
use super::mma_tiles::{
    accumulate_block_products, accumulate_products, load_own_rows, mask_scores, mma_cube,
    output_scratch, own_operand_pair, scores, scratch_stride, stage_and_wait, staged_tile,
    tile_operand, tile_vectors, write_rows, zero_accumulators, AccPair, MmaCube, Pair, MMA_N, QUAD,
};
use super::staging::{copy_row_values_pair_async, copy_rows_async, stage_rows};

/// `dQ` for a block of `16 · planes` queries per cube, key tiles of `block_n`.
#[cube(launch, fast_math = FastMath::ReducedPrecision | FastMath::NotNaN | FastMath::NotInf)]
#[allow(clippy::too_many_arguments)]
pub fn flash_attention_varlen_dq_mma_kernel<F: Float, I: Numeric, N: Size>(
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
    #[comptime] block_n: usize,
    #[comptime] planes: usize,
    #[comptime] windowed: bool,
    #[define(F, I)] _dtypes: [StorageType; 2],
) {
    let window = window as usize;
    let cube = mma_cube(cu_seqlens, window, planes, 1usize, windowed);
    let block = cube.range.clone();
    let (head, heads, q0) = (cube.head, cube.heads, cube.row0);

    let mut own_tile = staged_tile::<F, N>(comptime!(TILE * planes), head_dim);
    let mut k_tile = staged_tile::<F, N>(block_n, head_dim);
    let mut v_tile = staged_tile::<F, N>(block_n, head_dim);
    let mut scratch = output_scratch::<F>(comptime!(TILE * planes), head_dim);

    // The plane's Q and dO rows as A operands.
    let held_q = load_own_rows(q, &cube, head_dim, planes);
    let held_do = load_own_rows(d_out, &cube, head_dim, planes);
    let (q_ops, do_ops) =
        own_operand_pair(&held_q, &held_do, &mut own_tile, &cube, head_dim, planes);

    let row_lse = lane_row_values(lse, &cube);
    let row_delta = lane_row_values(delta, &cube);

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
            cube.unit,
            block_n,
            head_dim,
            comptime!(32 * planes),
        );
        stage_and_wait(
            v,
            &mut v_tile,
            &cube,
            kb,
            block.k_hi,
            block_n,
            head_dim,
            planes,
        );

        let mut ds = scores(&q_ops, &k_tile, 0usize, block_n, head_dim, 1usize);
        let dp = scores(&do_ops, &v_tile, 0usize, block_n, head_dim, 1usize);
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
        score_gradients(&mut ds, &dp, &row_lse, &row_delta, scale, block_n);
        accumulate_products(&mut dq_acc, &ds, &k_tile, 0usize, block_n, head_dim, 1usize);
    }

    write_scaled_rows(&dq_acc, scale, &mut scratch, dq, &cube, head_dim);
}

/// `dK` and `dV` for a block of `16 · planes` keys per cube, query tiles of `block_n`.
#[cube(launch, fast_math = FastMath::ReducedPrecision | FastMath::NotNaN | FastMath::NotInf)]
#[allow(clippy::too_many_arguments)]
pub fn flash_attention_varlen_dkv_mma_kernel<F: Float, I: Numeric, N: Size, A: Size>(
    q: &Array<Vector<F, N>>, // [total, heads, head_dim], contiguous (as are all below)
    k: &Array<Vector<F, N>>, // [total, heads, head_dim]
    v: &Array<Vector<F, N>>, // [total, heads, head_dim]
    d_out: &Array<Vector<F, N>>, // [total, heads, head_dim]
    lse: &Array<f32>,        // [total, heads]
    delta: &Array<f32>,      // [total, heads], rowsum(dO ∘ O)
    cu_seqlens: &Array<I>,   // [batch + 1]
    dk: &mut Array<Vector<F, N>>, // [total, heads, head_dim]
    dv: &mut Array<Vector<F, N>>, // [total, heads, head_dim]
    dq_sum: &mut Array<Atomic<Vector<f32, A>>>, // [total, heads, head_dim], zeros (fused_dq)
    scale: f32,
    window: u32,
    #[comptime] head_dim: usize,
    #[comptime] block_n: usize,
    #[comptime] planes: usize,
    #[comptime] windowed: bool,
    #[comptime] fused_dq: bool,
    #[define(F, I)] _dtypes: [StorageType; 2],
) {
    let window = window as usize;
    // The cube's own rows are keys; its range is the queries that see them.
    let cube = mma_cube(cu_seqlens, window, planes, 1usize, windowed);
    let range = cube.range.clone();
    let k0 = cube.row0;

    let units = comptime!(32 * planes);
    let mut own_tile = staged_tile::<F, N>(comptime!(TILE * planes), head_dim);
    // Double buffers: the next query tile is copied in while this one is worked on.
    let mut q_tiles = staged_tile::<F, N>(comptime!(2 * block_n), head_dim);
    let mut do_tiles = staged_tile::<F, N>(comptime!(2 * block_n), head_dim);
    let mut lse_tiles = SharedMemory::<f32>::new_aligned(comptime!(2 * block_n), SMEM_ALIGN);
    let mut delta_tiles = SharedMemory::<f32>::new_aligned(comptime!(2 * block_n), SMEM_ALIGN);
    let tile_vectors = tile_vectors::<N>(block_n, head_dim);
    let mut scratch = output_scratch(comptime!(TILE * planes), head_dim);
    let block_m = comptime!(TILE * planes);
    // With `fused_dq`: `dSᵀ · scale` of the tile, query-major (`block_n` rows of the cube's
    // `block_m` keys).
    let mut ds_tile = SharedMemory::<F>::new_aligned(
        comptime!(if fused_dq {
            block_n * (block_m + PAD)
        } else {
            1
        }),
        SMEM_ALIGN,
    );
    // Completes a phase when every unit has arrived and the copies they committed have landed.
    let copies = Barrier::shared(CUBE_DIM, UNIT_POS == 0);

    // The first query tile's copies fly while K and V are staged.
    let tiles = (range.k_hi - range.k_lo).div_ceil(block_n);
    if tiles > 0 {
        copy_query_tile_async(
            q,
            d_out,
            lse,
            delta,
            &mut q_tiles,
            &mut do_tiles,
            &mut lse_tiles,
            &mut delta_tiles,
            0usize,
            &cube,
            range.k_lo,
            block_n,
            head_dim,
            units,
        );
        copies.commit_copy_async();
    }

    // The plane's K and V rows as A operands; K stays staged in `own_tile` (for `fused_dq`).
    let held_v = load_own_rows(v, &cube, head_dim, planes);
    let held_k = load_own_rows(k, &cube, head_dim, planes);
    let (v_ops, k_ops) = own_operand_pair(&held_v, &held_k, &mut own_tile, &cube, head_dim, planes);

    let mut dk_acc = zero_accumulators(head_dim);
    let mut dv_acc = zero_accumulators(head_dim);
    for tile in 0..tiles {
        let qb = range.k_lo + tile * block_n;
        let half = tile % 2;
        // This tile has landed, and every unit is done with the previous one (whose half of
        // the buffers takes the next).
        copies.arrive_and_wait();
        if tile + 1 < tiles {
            copy_query_tile_async(
                q,
                d_out,
                lse,
                delta,
                &mut q_tiles,
                &mut do_tiles,
                &mut lse_tiles,
                &mut delta_tiles,
                1 - half,
                &cube,
                qb + block_n,
                block_n,
                head_dim,
                units,
            );
            copies.commit_copy_async();
        }
        let tile_start = half * tile_vectors;
        let row_values = half * block_n;

        // Sᵀ → Pᵀ and dPᵀ → dSᵀ in place, rows = this plane's keys, columns = the queries.
        let mut p_t = scores(&k_ops, &q_tiles, tile_start, block_n, head_dim, 1usize);
        let mut ds_t = scores(&v_ops, &do_tiles, tile_start, block_n, head_dim, 1usize);
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
        transposed_score_gradients(
            &mut p_t,
            &mut ds_t,
            &lse_tiles,
            &delta_tiles,
            row_values,
            scale,
            block_n,
        );
        if comptime!(fused_dq) {
            store_scaled_transpose(&ds_t, scale, &mut ds_tile, &cube, block_n, block_m);
        }
        accumulate_products(
            &mut dv_acc,
            &p_t,
            &do_tiles,
            tile_start,
            block_n,
            head_dim,
            1usize,
        );
        accumulate_products(
            &mut dk_acc,
            &ds_t,
            &q_tiles,
            tile_start,
            block_n,
            head_dim,
            1usize,
        );
        if comptime!(fused_dq) {
            sync_cube(); // every plane's dSᵀ is in `ds_tile`
            add_dq_products(
                &ds_tile,
                &own_tile,
                &mut scratch,
                dq_sum,
                &cube,
                qb,
                head_dim,
                block_n,
                planes,
            );
        }
    }
    if comptime!(fused_dq) {
        sync_cube(); // every unit is done with the scratch's dQ
    }

    write_scaled_rows(&dk_acc, scale, &mut scratch, dk, &cube, head_dim);
    write_scaled_rows(&dv_acc, 1.0, &mut scratch, dv, &cube, head_dim);
}

/// Writes the plane's 16 own rows of `acc` (`head_dim / 8` accumulators) times `scale` to
/// `out`, through `scratch` ([`write_rows`]).
#[cube]
pub fn write_scaled_rows<F: Float, N: Size, E: Float>(
    acc: &Sequence<Array<AccPair>>,
    scale: f32,
    scratch: &mut SharedMemory<E>,
    out: &mut Array<Vector<F, N>>,
    cube: &MmaCube,
    #[comptime] head_dim: usize,
) {
    let mut row_scale = Array::<f32>::new(2usize);
    row_scale[0usize] = scale;
    row_scale[1usize] = scale;
    write_rows(acc, &row_scale, scratch, out, cube, head_dim, 1usize);
}

/// Values of the lane's own query rows `g` and `g + 8` in a `[total, heads]` f32 tensor (lse
/// or D; zeros past the sequence end).
#[cube]
pub fn lane_row_values(values: &Array<f32>, cube: &MmaCube) -> Array<f32> {
    let block = &cube.range;
    let mut row_values = Array::<f32>::new(2usize);
    #[unroll]
    for e in 0..comptime!(2usize) {
        let qi = cube.row0 + cube.first_row + cube.g + 8 * e;
        row_values[e] = 0.0;
        if qi < block.len {
            row_values[e] = values[(block.start + qi) * cube.heads + cube.head];
        }
    }
    row_values
}

/// `dS = P ∘ (dP − D)` in place of the plane's (masked) scores `S` over `cols` keys, with
/// `P = exp(S · scale − lse)` recomputed from its rows' lse and D ([`lane_row_values`]).
#[cube]
pub fn score_gradients(
    s: &mut Sequence<Array<AccPair>>,
    dp: &Sequence<Array<AccPair>>,
    row_lse: &Array<f32>,
    row_delta: &Array<f32>,
    scale: f32,
    #[comptime] cols: usize,
) {
    #[unroll]
    for e in 0..comptime!(2usize) {
        #[unroll]
        for n in 0..comptime!(cols / MMA_N) {
            let s_pair = s.index(n)[e];
            let dp_pair = dp.index(n)[e];
            let mut pair = AccPair::new(0.0);
            #[unroll]
            for c in 0..comptime!(2usize) {
                let p = fma(s_pair[c], scale, -row_lse[e]).exp();
                pair[c] = p * (dp_pair[c] - row_delta[e]);
            }
            let acc = s.index_mut(n);
            acc[e] = pair;
        }
    }
}

/// The transposed form for the dK/dV kernels: the plane's (masked) `Sᵀ` (rows = its keys,
/// `cols` columns = queries) becomes `Pᵀ` and its `dPᵀ` becomes `dSᵀ`, in place, with each
/// query's lse and D from shared memory (column `j` at `first_column + j`).
#[cube]
#[allow(clippy::too_many_arguments)]
pub fn transposed_score_gradients(
    p_t: &mut Sequence<Array<AccPair>>,
    ds_t: &mut Sequence<Array<AccPair>>,
    lse_tile: &SharedMemory<f32>,
    delta_tile: &SharedMemory<f32>,
    first_column: usize,
    scale: f32,
    #[comptime] cols: usize,
) {
    let t = UNIT_POS_X as usize % QUAD;
    #[unroll]
    for e in 0..comptime!(2usize) {
        #[unroll]
        for n in 0..comptime!(cols / MMA_N) {
            let s_pair = p_t.index(n)[e];
            let dp_pair = ds_t.index(n)[e];
            let mut p_pair = AccPair::new(0.0);
            let mut ds_pair = AccPair::new(0.0);
            #[unroll]
            for c in 0..comptime!(2usize) {
                let column = first_column + n * MMA_N + 2 * t + c;
                let p = fma(s_pair[c], scale, -lse_tile[column]).exp();
                p_pair[c] = p;
                ds_pair[c] = p * (dp_pair[c] - delta_tile[column]);
            }
            let p_acc = p_t.index_mut(n);
            p_acc[e] = p_pair;
            let ds_acc = ds_t.index_mut(n);
            ds_acc[e] = ds_pair;
        }
    }
}

/// Issues the asynchronous copies of query tile `qb ..` (`block_n` rows, zeros past the
/// range) of `Q`, `dO`, lse and D into half `half` (0 or 1) of the dK/dV kernel's double
/// buffers.
#[cube]
#[allow(clippy::too_many_arguments)]
fn copy_query_tile_async<F: Float, N: Size>(
    q: &Array<Vector<F, N>>,
    d_out: &Array<Vector<F, N>>,
    lse: &Array<f32>,
    delta: &Array<f32>,
    q_tiles: &mut SharedMemory<Vector<F, N>>,
    do_tiles: &mut SharedMemory<Vector<F, N>>,
    lse_tiles: &mut SharedMemory<f32>,
    delta_tiles: &mut SharedMemory<f32>,
    half: usize,
    cube: &MmaCube,
    qb: usize,
    #[comptime] block_n: usize,
    #[comptime] head_dim: usize,
    #[comptime] units: usize,
) {
    let range = &cube.range;
    let (start, end, head, heads, unit) =
        (range.start, range.k_hi, cube.head, cube.heads, cube.unit);
    let tile_start = half * tile_vectors::<N>(block_n, head_dim);
    copy_rows_async(
        q, q_tiles, tile_start, start, qb, end, head, heads, unit, block_n, head_dim, units,
    );
    copy_rows_async(
        d_out, do_tiles, tile_start, start, qb, end, head, heads, unit, block_n, head_dim, units,
    );
    copy_row_values_pair_async(
        lse,
        delta,
        lse_tiles,
        delta_tiles,
        half * block_n,
        start,
        qb,
        end,
        head,
        heads,
        unit,
        0usize,
        block_n,
        units,
    );
}

/// Writes the plane's `dSᵀ` accumulators (rows = its 16 keys, columns = the tile's
/// `block_n` queries) times `scale` to `ds_tile` transposed: row = query, column = the key's
/// place among the cube's `block_m`.
#[cube]
fn store_scaled_transpose<F: Float>(
    ds_t: &Sequence<Array<AccPair>>,
    scale: f32,
    ds_tile: &mut SharedMemory<F>,
    cube: &MmaCube,
    #[comptime] block_n: usize,
    #[comptime] block_m: usize,
) {
    let stride = comptime!(block_m + PAD);
    #[unroll]
    for e in 0..comptime!(2usize) {
        let key = cube.first_row + cube.g + 8 * e;
        #[unroll]
        for n in 0..comptime!(block_n / MMA_N) {
            let pair = ds_t.index(n)[e];
            #[unroll]
            for c in 0..comptime!(2usize) {
                let query = n * MMA_N + 2 * cube.t + c;
                ds_tile[query * stride + key] = F::cast_from(pair[c] * scale);
            }
        }
    }
}

/// `dQ += dS · K` for the query tile from `qb`, this cube's share: plane `p` computes query
/// m-tile `p % (block_n / 16)` and its part of `head_dim` (the planes split the columns),
/// over all the cube's keys (`dS` from `ds_tile`, `K` from `k_tile`), into the f32
/// `scratch`; then every unit of the cube adds consecutive vectors of it to `dq_sum` with
/// atomics (a plane's 32 lanes cover consecutive elements of a row), skipping queries at or
/// past the range's end.
#[cube]
#[allow(clippy::too_many_arguments)]
fn add_dq_products<F: Float, N: Size, A: Size>(
    ds_tile: &SharedMemory<F>,
    k_tile: &SharedMemory<Vector<F, N>>,
    scratch: &mut SharedMemory<f32>,
    dq_sum: &mut Array<Atomic<Vector<f32, A>>>,
    cube: &MmaCube,
    qb: usize,
    #[comptime] head_dim: usize,
    #[comptime] block_n: usize,
    #[comptime] planes: usize,
) {
    let block_m = comptime!(TILE * planes);
    let m_tiles = comptime!(block_n / TILE);
    let columns = comptime!(head_dim * m_tiles / planes);
    let stride = scratch_stride::<f32>(head_dim);
    let plane = UNIT_POS_Y as usize;
    let m_tile = plane % m_tiles;
    let first_column = (plane / m_tiles) * columns;
    let mut acc = zero_accumulators(columns);
    #[unroll]
    for j in 0..comptime!(block_m / TILE) {
        let mut a = Sequence::<Array<Pair<F>>>::new();
        a.push(tile_operand(ds_tile, m_tile * TILE, j * TILE, block_m));
        accumulate_block_products(
            &mut acc,
            &a,
            k_tile,
            0usize,
            j,
            first_column,
            columns,
            head_dim,
            1usize,
        );
    }
    #[unroll]
    for e in 0..comptime!(2usize) {
        let row = m_tile * TILE + cube.g + 8 * e;
        #[unroll]
        for n in 0..comptime!(columns / MMA_N) {
            let pair = acc.index(n)[e];
            #[unroll]
            for c in 0..comptime!(2usize) {
                scratch[row * stride + first_column + n * MMA_N + 2 * cube.t + c] = pair[c];
            }
        }
    }
    sync_cube();
    let range = &cube.range;
    let vector = A::value();
    #[unroll]
    for i in 0..comptime!(block_n * head_dim / (32 * planes * vector)) {
        let element = (i * comptime!(32 * planes) + cube.unit) * vector;
        let row = element / head_dim;
        let column = element % head_dim;
        let query = qb + row;
        if query < range.k_hi {
            let index = ((range.start + query) * cube.heads + cube.head) * head_dim + column;
            let mut value = Vector::<f32, A>::empty();
            #[unroll]
            for e in 0..vector {
                value[e] = scratch[row * stride + column + e];
            }
            dq_sum[index / vector].fetch_add(value);
        }
    }
}
