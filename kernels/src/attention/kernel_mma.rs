//! The flash-attention forward kernel (cube code only) on `mma.sync` m16n8k16 with the
//! softmax in registers (FlashAttention-2's layout): f16/bf16 inputs, f32 accumulators, CUDA
//! sm80 and later (CubeCL's manual MMA, [`MmaDefinition`]).
//!
//! Unlike the cmma kernel (`kernel_cmma.rs`), whose fragments are opaque, the register layout
//! of `mma.sync` is known (PTX ISA, "Matrix fragments for mma.m16n8k16"). With lane
//! `l = 4g + t` of a plane (`g = l / 4`, `t = l % 4`):
//! - an accumulator (16 × 8, f32) holds rows `g` and `g + 8`, columns `2t, 2t + 1` of each;
//! - an A operand (16 × 16) holds rows `g`, `g + 8` and columns `2t, 2t + 1, 2t + 8, 2t + 9`.
//!
//! So the scores `S = Q·Kᵀ` of 16 rows × 16 keys, two accumulators, are already the A operand
//! of `P·V` once exponentiated and narrowed: no round trip through shared memory. A row's
//! max and sum are reduced over the 4 lanes that share it (`t`), with shuffles.
//!
//! A cube is `planes` planes of 32 lanes; plane `p` owns query rows `q0 + 16p ..`. Per cube:
//! the Q block is staged once and kept as A operands (`ldmatrix`), and the first K tile is
//! staged. Then, for every key tile of `block_n` keys the block can see (`tiling.rs`):
//! 1. the loads of the tile's V are issued into registers;
//! 2. each plane computes its `16 × block_n` scores into registers, B operands of K read with
//!    `ldmatrix`;
//! 3. masks (sequence, window) and scales them, raises the running max `m` per row, rescales
//!    the output accumulators and the running sum `l` by `exp(m_old − m_new)`, and takes
//!    `P = exp(S − m)`;
//! 4. V goes to shared memory and the loads of the next K are issued; after a barrier,
//!    `O += P·V`, B operands of V read with `ldmatrix.trans`; the next K goes to shared
//!    memory, and a barrier.
//!
//! So global loads are in flight while the tensor cores work (shared memory holds one K and
//! one V tile; zeros past the visible range). Exponentials use the fast `ex2`-based path:
//! their arguments are ≤ 0 and the probabilities are narrowed to f16/bf16 anyway.
//!
//! At the end each row is divided by its `l`, staged through an f32 scratch and written with
//! vector stores; the log-sum-exp is `m + ln l`. Every `ldmatrix`/`mma` is reached by all
//! lanes of a plane (the tile loop bound is uniform per cube); rows past the sequence end are
//! computed on zeros and never written.

use cubecl::cmma::{MatrixIdent, MmaDefinition};
use cubecl::prelude::*;

use super::kernel_cmma::{row_max, row_sum, PAD, PAD_F32, SMEM_ALIGN, TILE};
use super::staging::{load_rows, stage_rows, store_rows};
use super::tiling::{key_visible, query_block, NEG_BIG};

/// Columns of one `mma.sync` accumulator (m16n8k16: 16 rows × 8 columns).
pub const MMA_N: usize = 8;
/// Lanes that share a row of an accumulator (`t = lane % 4`).
const QUAD: usize = 4;

/// One 32-bit register of an operand: two f16/bf16 values.
type Pair<F> = Vector<F, Const<2>>;
/// Two f32 values of an accumulator row.
type AccPair = Vector<f32, Const<2>>;

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
    #[comptime] windowed: bool,
    #[define(F, I)] _dtypes: [StorageType; 2],
) {
    let plane_dim = comptime!(32usize);
    let block_m = comptime!(TILE * planes);
    let tile_stride = comptime!(head_dim + PAD); // elements per row of the Q/K/V tiles
    let scratch_stride = comptime!(head_dim + PAD_F32);
    let vector = N::value();
    let neg_big = f32::new(NEG_BIG);
    let def = MmaDefinition::<F, F, f32>::new(TILE, MMA_N, TILE);

    let lane = UNIT_POS_X as usize;
    let plane = UNIT_POS_Y as usize;
    let unit = plane * plane_dim + lane;
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
    // This lane's accumulator coordinates: rows `g`, `g + 8` of the plane's 16, columns
    // `2t, 2t + 1` of every 8.
    let g = lane / QUAD;
    let t = lane % QUAD;
    let first_row = plane * TILE;

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
    let mut scratch =
        SharedMemory::<f32>::new_aligned(comptime!(block_m * scratch_stride), SMEM_ALIGN);

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

    // The plane's Q rows as A operands, one per 16 columns of head_dim. `ldmatrix.x4`: lanes
    // `8j .. 8j + 8` give the rows of 8×8 matrix `j` = (rows +8 if j odd, columns +8 if j ≥ 2).
    let sub_row = lane % 8;
    let sub_matrix = lane / 8;
    let mut q_frags = Sequence::<Array<Pair<F>>>::new();
    #[unroll]
    for d in 0..comptime!(head_dim / TILE) {
        let row = first_row + (sub_matrix % 2) * 8 + sub_row;
        let offset = (row * tile_stride + d * TILE + (sub_matrix / 2) * 8) / vector;
        q_frags.push(def.load_matrix::<Vector<F, N>, Const<2>>(
            &q_tile.slice(offset, offset + 1),
            MatrixIdent::A,
            4usize,
            false,
        ));
    }

    let mut o_acc = zero_accumulators(head_dim);
    // Softmax state of rows g and g + 8: the running max (shared by the row's 4 lanes) and
    // this lane's partial sum over its columns.
    let mut m = Array::<f32>::new(2usize);
    let mut l = Array::<f32>::new(2usize);
    #[unroll]
    for e in 0..comptime!(2usize) {
        m[e] = neg_big;
        l[e] = 0.0;
    }

    // K of the first tile; every iteration loads the next one while it computes `P·V`.
    let tiles = (block.k_hi - block.k_lo).div_ceil(block_n);
    let units = comptime!(plane_dim * planes);
    stage_rows(
        k,
        &mut k_tile,
        block.start,
        block.k_lo,
        block.k_hi,
        head,
        heads,
        unit,
        block_n,
        head_dim,
        units,
    );
    sync_cube();
    for tile in 0..tiles {
        let kb = block.k_lo + tile * block_n;
        // V of this tile, in flight while the scores are computed.
        let v_held = load_rows(
            v,
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

        // S = Q·Kᵀ, 8 keys per accumulator. One `ldmatrix.x4` of K (rows = keys) gives the B
        // operands of 16 keys × 16 dims: matrices (keys +8 if j ≥ 2, dims +8 if j odd).
        let mut s_acc = zero_accumulators(block_n);
        #[unroll]
        for n2 in 0..comptime!(block_n / TILE) {
            #[unroll]
            for d in 0..comptime!(head_dim / TILE) {
                let key = n2 * TILE + (sub_matrix / 2) * 8 + sub_row;
                let offset = (key * tile_stride + d * TILE + (sub_matrix % 2) * 8) / vector;
                let b = def.load_matrix::<Vector<F, N>, Const<2>>(
                    &k_tile.slice(offset, offset + 1),
                    MatrixIdent::B,
                    4usize,
                    false,
                );
                def.execute_inplace(
                    q_frags.index(d),
                    &pair_half(&b, 0usize),
                    s_acc.index_mut(2 * n2),
                );
                def.execute_inplace(
                    q_frags.index(d),
                    &pair_half(&b, 1usize),
                    s_acc.index_mut(2 * n2 + 1),
                );
            }
        }

        // Mask and scale; each row's max over this tile (its 4 lanes together).
        let mut tile_max = Array::<f32>::new(2usize);
        #[unroll]
        for e in 0..comptime!(2usize) {
            let qi = q0 + first_row + g + 8 * e;
            let q_valid = qi < block.len;
            let mut row_tile_max = neg_big;
            #[unroll]
            for n in 0..comptime!(block_n / MMA_N) {
                let acc = s_acc.index(n);
                let mut pair = acc[e];
                #[unroll]
                for c in 0..comptime!(2usize) {
                    let key = kb + n * MMA_N + 2 * t + c;
                    let visible = q_valid && key_visible(qi, key, block.k_hi, window, windowed);
                    let s = select(visible, pair[c] * scale, neg_big);
                    pair[c] = s;
                    row_tile_max = select(s > row_tile_max, s, row_tile_max);
                }
                let acc = s_acc.index_mut(n);
                acc[e] = pair;
            }
            tile_max[e] = row_max(row_tile_max, QUAD);
        }

        // Online softmax: raise the max, rescale O and l, P = exp(S − m).
        #[unroll]
        for e in 0..comptime!(2usize) {
            let m_new = select(tile_max[e] > m[e], tile_max[e], m[e]);
            // 0 for rows that saw nothing before (m = NEG_BIG), 1 while the max holds.
            let correction = (m[e] - m_new).exp();
            m[e] = m_new;
            let mut row_sum_part = l[e] * correction;
            #[unroll]
            for n in 0..comptime!(head_dim / MMA_N) {
                let acc = o_acc.index_mut(n);
                acc[e] = acc[e] * AccPair::new(correction);
            }
            #[unroll]
            for n in 0..comptime!(block_n / MMA_N) {
                let acc = s_acc.index_mut(n);
                let mut pair = acc[e];
                #[unroll]
                for c in 0..comptime!(2usize) {
                    let s = pair[c];
                    let p = select(s > neg_big * 0.5, (s - m_new).exp(), 0.0);
                    row_sum_part += p;
                    pair[c] = p;
                }
                acc[e] = pair;
            }
            l[e] = row_sum_part;
        }

        // Every plane is done with K: V in, the next K in flight while `P·V` is computed (past
        // the last tile `load_rows` reads nothing and returns zeros).
        store_rows(&v_held, &mut v_tile, unit, block_n, head_dim, units);
        let k_held = load_rows(
            k,
            block.start,
            kb + block_n,
            block.k_hi,
            head,
            heads,
            unit,
            block_n,
            head_dim,
            units,
        );
        sync_cube();

        // O += P·V, 16 keys at a time. P's A operand for keys 16j.. is accumulators 2j and
        // 2j + 1 narrowed; `ldmatrix.x4.trans` of V (rows = keys) gives the B operands of
        // 16 keys × 16 dims: matrices (keys +8 if j odd, dims +8 if j ≥ 2).
        #[unroll]
        for j in 0..comptime!(block_n / TILE) {
            let p = probabilities_operand::<F>(s_acc.index(2 * j), s_acc.index(2 * j + 1));
            #[unroll]
            for d2 in 0..comptime!(head_dim / TILE) {
                let key = j * TILE + (sub_matrix % 2) * 8 + sub_row;
                let offset = (key * tile_stride + d2 * TILE + (sub_matrix / 2) * 8) / vector;
                let b = def.load_matrix::<Vector<F, N>, Const<2>>(
                    &v_tile.slice(offset, offset + 1),
                    MatrixIdent::B,
                    4usize,
                    true,
                );
                def.execute_inplace(&p, &pair_half(&b, 0usize), o_acc.index_mut(2 * d2));
                def.execute_inplace(&p, &pair_half(&b, 1usize), o_acc.index_mut(2 * d2 + 1));
            }
        }
        // Every plane is done with V: the next K in.
        store_rows(&k_held, &mut k_tile, unit, block_n, head_dim, units);
        sync_cube();
    }

    // Each row's sum over its 4 lanes, then O / l into the plane's scratch rows.
    #[unroll]
    for e in 0..comptime!(2usize) {
        let l_row = row_sum(l[e], QUAD);
        // Rows past the sequence end have l = 0 and are never written.
        let inv_l = select(l_row > 0.0, 1.0 / l_row, 0.0);
        let row = first_row + g + 8 * e;
        #[unroll]
        for n in 0..comptime!(head_dim / MMA_N) {
            let acc = o_acc.index(n);
            let pair = acc[e];
            #[unroll]
            for c in 0..comptime!(2usize) {
                scratch[row * scratch_stride + n * MMA_N + 2 * t + c] = pair[c] * inv_l;
            }
        }
        let qi = q0 + row;
        if t == 0 && qi < block.len {
            lse[(block.start + qi) * heads + head] = m[e] + l_row.ln();
        }
    }
    sync_plane();

    // The plane's 16 rows, `vector` elements per store: 2 lanes per row.
    let lanes_per_row = comptime!(plane_dim / TILE);
    let row = first_row + lane / lanes_per_row;
    let part = lane % lanes_per_row;
    let qi = q0 + row;
    if qi < block.len {
        let token_head = (block.start + qi) * heads + head;
        let row_vectors = comptime!(head_dim / vector);
        #[unroll]
        for j in 0..comptime!(row_vectors / lanes_per_row) {
            let chunk = j * lanes_per_row + part;
            let mut value = Vector::<F, N>::empty();
            #[unroll]
            for e in 0..vector {
                value[e] = F::cast_from(scratch[row * scratch_stride + chunk * vector + e]);
            }
            out[token_head * row_vectors + chunk] = value;
        }
    }
}

/// `columns / 8` accumulators (16 × 8 f32 each, two pairs per lane) set to zero.
#[cube]
fn zero_accumulators(#[comptime] columns: usize) -> Sequence<Array<AccPair>> {
    let mut accs = Sequence::<Array<AccPair>>::new();
    #[unroll]
    for _ in 0..comptime!(columns / MMA_N) {
        let mut acc = Array::<AccPair>::new(2usize);
        acc[0usize] = AccPair::new(0.0);
        acc[1usize] = AccPair::new(0.0);
        accs.push(acc);
    }
    accs
}

/// Registers `2h, 2h + 1` of an `ldmatrix.x4` result: the B operand of one 8-column half.
#[cube]
fn pair_half<F: Float>(regs: &Array<Pair<F>>, #[comptime] h: usize) -> Array<Pair<F>> {
    let mut half = Array::<Pair<F>>::new(2usize);
    half[0usize] = regs[2 * h];
    half[1usize] = regs[2 * h + 1];
    half
}

/// The A operand (16 rows × 16 keys, input dtype) of two score accumulators (keys `0..8` and
/// `8..16`): `a0 = (row g, keys 2t..)`, `a1 = (row g + 8, keys 2t..)`, `a2`, `a3` the same
/// for keys `8 + 2t..`, which is where the accumulators hold them.
#[cube]
fn probabilities_operand<F: Float>(low: &Array<AccPair>, high: &Array<AccPair>) -> Array<Pair<F>> {
    let mut a = Array::<Pair<F>>::new(4usize);
    a[0usize] = Pair::<F>::cast_from(low[0usize]);
    a[1usize] = Pair::<F>::cast_from(low[1usize]);
    a[2usize] = Pair::<F>::cast_from(high[0usize]);
    a[3usize] = Pair::<F>::cast_from(high[1usize]);
    a
}
