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
//!    ([`mask_scores`]: only tiles at a sequence's end or a window's edge), and, in
//!    [`softmax_step`] (`mma_softmax.rs`), raises the running max `m` per row (on unscaled
//!    scores), rescales the running sum `l` and, when a row of the plane raised its max, the
//!    output accumulators by `exp((m_old − m_new) · scale)`, and takes
//!    `P = exp(S · scale − m · scale)`, one fused multiply-add and one exponential each;
//! 4. `O += P·V`, B operands of V read with `ldmatrix.trans`.
//!
//! At the end each row is divided by its `l`, narrowed into a scratch of the input dtype
//! (half the shared memory of an f32 one: a 64-row window cube takes 56 KiB, so four fit on
//! an H200 SM) and written with vector stores; the log-sum-exp is `m · scale + ln l`. Every
//! `ldmatrix`/`mma` and barrier is reached by all lanes of a cube (the tile loop bound is
//! uniform per cube); rows past the sequence end are computed on zeros and never written.

use cubecl::prelude::barrier::Barrier;
use cubecl::prelude::*;

use super::kernel_cmma::TILE;
use super::mma_softmax::{softmax_finish, softmax_start, softmax_step};
use super::mma_tiles::{
    accumulate_products, mask_scores, mma_cube, output_scratch, scores, staged_operands,
    staged_tile, tile_vectors, zero_accumulators, MmaCube,
};
use super::staging::copy_rows_async;

#[cube(launch, fast_math = FastMath::ReducedPrecision | FastMath::NotNaN | FastMath::NotInf)]
#[allow(clippy::too_many_arguments)]
pub fn flash_attention_varlen_mma_kernel<F: Float, I: Numeric, N: Size>(
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
    #[comptime] m_tiles: usize,
    #[comptime] windowed: bool,
    #[define(F, I)] _dtypes: [StorageType; 2],
) {
    let units = comptime!(32 * planes);
    let block_m = comptime!(TILE * m_tiles * planes);
    let tile_vectors = tile_vectors::<N>(block_n, head_dim);
    let window = window as usize;
    let cube = mma_cube(cu_seqlens, window, planes, m_tiles, windowed);
    let block = cube.range.clone();
    let (head, heads, q0, first_row) = (cube.head, cube.heads, cube.row0, cube.first_row);

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
        let (mut m, mut l) = softmax_start(comptime!(2 * m_tiles));

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
            softmax_step(
                &mut s_acc, &mut o_acc, &mut m, &mut l, scale, block_n, head_dim, m_tiles, false,
            );
            accumulate_products(
                &mut o_acc, &s_acc, &v_tiles, tile_start, block_n, head_dim, m_tiles,
            );
        }

        softmax_finish(
            &o_acc,
            &m,
            &l,
            scale,
            &mut scratch,
            out,
            lse,
            &cube,
            head_dim,
            m_tiles,
        );
    }
}

/// Issues the asynchronous copies of the key tile from `kb` (K and V, `block_n` rows, zeros
/// past the range) into half `half` of the double buffers.
#[cube]
#[allow(clippy::too_many_arguments)]
fn copy_key_tile_async<F: Float, N: Size>(
    k: &Array<Vector<F, N>>,
    v: &Array<Vector<F, N>>,
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
