//! The flash-attention forward kernel (cube code only) on `mma.sync` m16n8k16 with the
//! softmax in registers (FlashAttention-2's layout): f16/bf16 inputs, f32 accumulators, CUDA
//! sm80 and later (CubeCL's manual MMA, [`MmaDefinition`]).
//!
//! Unlike the cmma kernel (`kernel_cmma.rs`), whose fragments are opaque, the register layout
//! of `mma.sync` is known (`mma_tiles.rs`): the scores `S = Q·Kᵀ` are already the A operand of
//! `P·V` once exponentiated and narrowed, with no round trip through shared memory. Lane
//! `4g + t` holds rows `g` and `g + 8` of its plane's 16; a row's max and sum are reduced over
//! the 4 lanes that share it (`t`), with shuffles.
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

use cubecl::prelude::*;

use super::kernel_cmma::{row_max, row_sum, TILE};
use super::mma_tiles::{
    accumulate_products, mma_cube, output_scratch, own_operands, scores, stage_and_wait,
    staged_tile, write_rows, zero_accumulators, AccPair, MMA_N, QUAD,
};
use super::staging::{load_rows, store_rows};
use super::tiling::{key_visible, NEG_BIG};

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
    let units = comptime!(32 * planes);
    let neg_big = f32::new(NEG_BIG);
    let window = window as usize;
    let cube = mma_cube(cu_seqlens, q.shape(1), window, planes, windowed);
    let block = cube.range.clone();
    let (g, t, unit) = (cube.g, cube.t, cube.unit);
    let (head, heads, q0, first_row) = (cube.head, cube.heads, cube.row0, cube.first_row);

    let mut q_tile = staged_tile::<F, N>(comptime!(TILE * planes), head_dim);
    let mut k_tile = staged_tile::<F, N>(block_n, head_dim);
    let mut v_tile = staged_tile::<F, N>(block_n, head_dim);
    let mut scratch = output_scratch(planes, head_dim);

    // The plane's Q rows as A operands, and K of the first tile; every iteration loads the
    // next K while it computes `P·V`.
    let q_ops = own_operands(q, &mut q_tile, &cube, head_dim, planes);
    stage_and_wait(
        k,
        &mut k_tile,
        &cube,
        block.k_lo,
        block.k_hi,
        block_n,
        head_dim,
        planes,
    );

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

    let tiles = (block.k_hi - block.k_lo).div_ceil(block_n);
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
        let mut s_acc = scores(&q_ops, &k_tile, block_n, head_dim);

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
        accumulate_products(&mut o_acc, &s_acc, &v_tile, block_n, head_dim);
        // Every plane is done with V: the next K in.
        store_rows(&k_held, &mut k_tile, unit, block_n, head_dim, units);
        sync_cube();
    }

    // Each row's sum over its 4 lanes; O / l out (rows past the sequence end have l = 0 and
    // are not written), and the log-sum-exp.
    let mut inv_l = Array::<f32>::new(2usize);
    #[unroll]
    for e in 0..comptime!(2usize) {
        let l_row = row_sum(l[e], QUAD);
        inv_l[e] = select(l_row > 0.0, 1.0 / l_row, 0.0);
        let qi = q0 + first_row + g + 8 * e;
        if t == 0 && qi < block.len {
            lse[(block.start + qi) * heads + head] = m[e] + l_row.ln();
        }
    }
    write_rows(&o_acc, &inv_l, &mut scratch, out, &cube, head_dim);
}
