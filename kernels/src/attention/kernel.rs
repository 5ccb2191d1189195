//! The flash-attention forward kernel (cube code only), plain path: one unit per query row,
//! keys and values staged through shared memory in f32, online softmax in f32.
//!
//! Grid: `(ceil(max_seqlen / block_m), heads, batch)`; cube: `block_m` units. The cube of
//! query block `x` of sequence `z` walks only the key blocks that its queries can see: the
//! whole sequence (global) or `[q0 − window, q_last + window]` (sliding window).
//! `unroll` unrolls the loops over `head_dim` (registers instead of local memory); it is
//! off where shader compilation is slow for long unrolled code (lavapipe takes minutes).
//!
//! One launch walks tiles `tile_begin .. tile_begin + tile_count` of each cube's range
//! (`passes.rs`: llvmpipe caps the loop iterations of an invocation). A launch with `resume`
//! starts from the state the previous one left in `out` and `lse`: with `m = lse`, `l = 1`
//! and `acc = out`, the online softmax carries on exactly as if it had never stopped.

use cubecl::prelude::*;

use super::staging::stage_rows_f32_pair;
use super::tiling::{heads, key_visible, pass_tiles, unit_row, NEG_BIG};

#[cube(launch)]
#[allow(clippy::too_many_arguments)]
pub fn flash_attention_varlen_kernel<F: Float, I: Numeric, O: Float>(
    q: &Array<F>,          // [total, heads, head_dim], contiguous
    k: &Array<F>,          // [total, heads, head_dim], contiguous
    v: &Array<F>,          // [total, heads, head_dim], contiguous
    cu_seqlens: &Array<I>, // [batch + 1]
    out: &mut Array<O>,    // [total, heads, head_dim], f32 between passes
    lse: &mut Array<f32>,  // [total, heads], natural-log sum of exp(scores)
    scale: f32,
    window: u32,
    tile_begin: u32,
    tile_count: u32,
    #[comptime] head_dim: usize,
    #[comptime] block_n: usize,
    #[comptime] windowed: bool,
    #[comptime] unroll: bool,
    #[comptime] resume: bool,
    #[define(F, I, O)] _dtypes: [StorageType; 3],
) {
    let heads = heads();
    let window = window as usize;
    let neg_big = f32::new(NEG_BIG);
    let zero = f32::new(0.0);

    let rows = unit_row(cu_seqlens, window, windowed);
    let start = rows.range.start;
    let k_lo = rows.range.k_lo;
    let k_hi = rows.range.k_hi;
    let head = rows.head;
    let qi = rows.position;
    let q_valid = qi < rows.range.len;
    let pass = pass_tiles(k_lo, k_hi, tile_begin, tile_count, block_n);
    let active = pass.active;

    let row = (start + qi) * heads + head;
    let mut q_row = Array::<f32>::new(head_dim);
    let mut acc = Array::<f32>::new(head_dim);
    #[unroll(unroll)]
    for d in 0..head_dim {
        let mut value = 0.0;
        if q_valid {
            value = f32::cast_from(q[row * head_dim + d]) * scale;
        }
        q_row[d] = value;
        acc[d] = 0.0;
    }

    let mut k_tile = SharedMemory::<f32>::new(block_n * head_dim);
    let mut v_tile = SharedMemory::<f32>::new(block_n * head_dim);
    let mut scores = Array::<f32>::new(block_n);
    let mut m = neg_big;
    let mut l = 0.0;
    if resume {
        if q_valid && active {
            m = lse[row];
            l = select(m > neg_big * 0.5, f32::new(1.0), zero);
            #[unroll(unroll)]
            for d in 0..head_dim {
                acc[d] = f32::cast_from(out[row * head_dim + d]);
            }
        }
    }

    for tile in pass.begin..pass.end {
        let kb = k_lo + tile * block_n;
        stage_rows_f32_pair(
            k,
            v,
            &mut k_tile,
            &mut v_tile,
            start,
            kb,
            k_hi,
            head,
            heads,
            rows.unit,
            rows.units,
            block_n,
            head_dim,
        );
        sync_cube();

        let mut tile_max = neg_big;
        for j in 0..block_n {
            let visible = q_valid && key_visible(qi, kb + j, k_hi, window, windowed);
            let mut s = 0.0;
            #[unroll(unroll)]
            for d in 0..head_dim {
                s += q_row[d] * k_tile[j * head_dim + d];
            }
            s = select(visible, s, neg_big);
            scores[j] = s;
            tile_max = select(s > tile_max, s, tile_max);
        }

        // Online softmax: rescale what was accumulated to the new running max.
        let m_new = select(tile_max > m, tile_max, m);
        let correction = (m - m_new).exp();
        l *= correction;
        #[unroll(unroll)]
        for d in 0..head_dim {
            acc[d] *= correction;
        }
        for j in 0..block_n {
            let s = scores[j];
            let p = select(s > neg_big * 0.5, (s - m_new).exp(), zero);
            l += p;
            #[unroll(unroll)]
            for d in 0..head_dim {
                acc[d] += p * v_tile[j * head_dim + d];
            }
        }
        m = m_new;
        sync_cube();
    }

    if q_valid && active {
        // Every query sees at least itself, so l > 0 after the last pass; before, a query
        // may have seen no key yet (l = 0), which `resume` reads back as such.
        let seen = l > zero;
        let inv_l = select(seen, 1.0 / l, zero);
        #[unroll(unroll)]
        for d in 0..head_dim {
            out[row * head_dim + d] = O::cast_from(acc[d] * inv_l);
        }
        lse[row] = select(seen, m + l.ln(), neg_big);
    }
}
