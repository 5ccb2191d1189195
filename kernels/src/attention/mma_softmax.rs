//! The online softmax of the mma forward kernels (cube code shared by `kernel_mma.rs` and
//! `kernel_mma_band.rs`), over score accumulators laid out as `mma_tiles.rs` describes.
//!
//! A lane holds `2 · m_tiles` rows (row `r` is row `g + 8 (r % 2)` of m-tile `r / 2`, element
//! `r % 2` of its accumulators). Per row it keeps the running max `m` of the unscaled scores
//! (shared by the row's 4 lanes) and this lane's partial sum `l` of the probabilities over its
//! columns; the 4 lanes' sums are added once, at the end.

use cubecl::prelude::*;

use super::kernel_cmma::{row_max, row_sum, TILE};
use super::mma_tiles::{write_rows, AccPair, MmaCube, MMA_N, QUAD};
use super::tiling::NEG_BIG;

/// The softmax state of a lane's `lane_rows` rows before any key: `(m, l)` with every max at
/// `NEG_BIG` and every sum at 0.
#[cube]
pub fn softmax_start(#[comptime] lane_rows: usize) -> (Array<f32>, Array<f32>) {
    let mut m = Array::<f32>::new(lane_rows);
    let mut l = Array::<f32>::new(lane_rows);
    #[unroll]
    for r in 0..lane_rows {
        m[r] = f32::new(NEG_BIG);
        l[r] = 0.0;
    }
    (m, l)
}

/// One step of the online softmax over a tile of `cols` (masked) scores per row: raises each
/// row's max `m`, rescales its sum `l` and, when a row of the plane raised its max, the
/// output accumulators `o_acc` (`head_dim / 8` per m-tile) by `exp((m_old − m_new) · scale)`,
/// and turns the scores into `P = exp(S · scale − m · scale)` in place (one fused
/// multiply-add and one exponential each), adding them to `l`.
///
/// A row that has seen nothing yet keeps `m = NEG_BIG`; it subtracts 0 instead, so its masked
/// scores still give `exp(NEG_BIG · scale) = 0`. Exponentials take the fast `ex2`-based path
/// where the kernel allows it: their arguments are ≤ 0 and the probabilities are narrowed to
/// f16/bf16 anyway.
///
/// `first` promises, at compile time, that this is the first tile since [`softmax_start`]
/// (`l` and `O` still zero): then nothing is rescaled, which saves a correction factor per row,
/// the vote and a product per output accumulator.
#[cube]
// The rescaling sits in an `if` on `first`, which CubeCL resolves while expanding the kernel,
// around the `if` on the vote, which runs: clippy would merge the two.
#[allow(clippy::too_many_arguments, clippy::collapsible_if)]
pub fn softmax_step(
    s_acc: &mut Sequence<Array<AccPair>>,
    o_acc: &mut Sequence<Array<AccPair>>,
    m: &mut Array<f32>,
    l: &mut Array<f32>,
    scale: f32,
    #[comptime] cols: usize,
    #[comptime] head_dim: usize,
    #[comptime] m_tiles: usize,
    #[comptime] first: bool,
) {
    let lane_rows = comptime!(2 * m_tiles);
    let s_per_tile = comptime!(cols / MMA_N);
    let o_per_tile = comptime!(head_dim / MMA_N);
    let neg_big = f32::new(NEG_BIG);
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

    let mut correction = Array::<f32>::new(lane_rows);
    let mut raised = false;
    #[unroll]
    for r in 0..lane_rows {
        let e = comptime!(r % 2);
        let m_new = max(tile_max[r], m[r]);
        let mut row_sum_part = 0.0;
        if comptime!(!first) {
            raised = raised || m_new > m[r];
            // 0 for rows that saw nothing before (m = NEG_BIG), 1 while the max holds.
            correction[r] = ((m[r] - m_new) * scale).exp();
            row_sum_part = l[r] * correction[r];
        }
        m[r] = m_new;
        let m_scaled = select(m_new == neg_big, 0.0, m_new * scale);
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
    // O only when a row of the plane raised its max (a vote, uniform over the plane): past
    // the first tiles most rows keep theirs, and every correction is then 1.
    if comptime!(!first) {
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
    }
}

/// The end of the online softmax: each row's sum over its 4 lanes, `O / l` written to `out`
/// through `scratch` ([`write_rows`]; rows past the sequence end have `l = 0` and are not
/// written), and the log-sum-exp `m · scale + ln l` to `lse`.
#[cube]
#[allow(clippy::too_many_arguments)]
pub fn softmax_finish<F: Float, N: Size>(
    o_acc: &Sequence<Array<AccPair>>,
    m: &Array<f32>,
    l: &Array<f32>,
    scale: f32,
    scratch: &mut SharedMemory<F>,
    out: &mut Array<Vector<F, N>>,
    lse: &mut Array<f32>,
    cube: &MmaCube,
    #[comptime] head_dim: usize,
    #[comptime] m_tiles: usize,
) {
    let lane_rows = comptime!(2 * m_tiles);
    let block = &cube.range;
    let mut inv_l = Array::<f32>::new(lane_rows);
    #[unroll]
    for r in 0..lane_rows {
        let l_row = row_sum(l[r], QUAD);
        inv_l[r] = select(l_row > 0.0, 1.0 / l_row, 0.0);
        let qi = cube.row0 + cube.first_row + (r / 2) * TILE + cube.g + 8 * (r % 2);
        if cube.t == 0 && qi < block.len {
            lse[(block.start + qi) * cube.heads + cube.head] = m[r] * scale + l_row.ln();
        }
    }
    write_rows(o_acc, &inv_l, scratch, out, cube, head_dim, m_tiles);
}
