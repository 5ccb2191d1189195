//! The flash-attention backward kernels (cube code only), plain path, deterministic: each
//! gradient row is owned by one unit and summed in a fixed order, no atomics.
//!
//! With `s = scale·q·k`, `p = exp(s − lse)` recomputed from the forward's log-sum-exp (no
//! `S²` buffer) and `D = rowsum(dO ∘ O)` precomputed per (token, head):
//! - [`flash_attention_varlen_dq_kernel`], one unit per query row i:
//!   `dQᵢ = scale · Σⱼ pᵢⱼ (dOᵢ·vⱼ − Dᵢ) kⱼ`, with K and V tiles staged in shared memory;
//! - [`flash_attention_varlen_dkv_kernel`], one unit per key row j:
//!   `dVⱼ = Σᵢ pᵢⱼ dOᵢ` and `dKⱼ = scale · Σᵢ pᵢⱼ (dOᵢ·vⱼ − Dᵢ) qᵢ`, with Q, dO, lse and D
//!   tiles staged in shared memory.
//!
//! Both launch the forward's grid, `(ceil(max_seqlen / block_m), heads, batch)`, and stage
//! their tiles with `staging.rs`. The mask is symmetric (same sequence, `|i − j| ≤ window`),
//! so a block of keys sees queries exactly as a block of queries sees keys: both take their
//! range from [`unit_row`] and skip tiles outside it.
//!
//! Like the forward, one launch walks tiles `tile_begin .. tile_begin + tile_count`
//! (`passes.rs`); with `resume` it adds to the gradients the previous launch wrote (f32
//! between launches, dQ and dK without their factor `scale`, which only the launch with the
//! cube's last tile applies).

use cubecl::prelude::*;

use super::staging::{stage_row_values_pair, stage_rows_f32_pair};
use super::tiling::{heads, key_visible, pass_tiles, unit_row};

/// `dQ` for one query row per unit.
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
pub fn flash_attention_varlen_dq_kernel<F: Float, I: Numeric, O: Float>(
    q: &Array<F>,          // [total, heads, head_dim], contiguous (as are all below)
    k: &Array<F>,          // [total, heads, head_dim]
    v: &Array<F>,          // [total, heads, head_dim]
    d_out: &Array<F>,      // [total, heads, head_dim]
    lse: &Array<f32>,      // [total, heads]
    delta: &Array<f32>,    // [total, heads], rowsum(dO ∘ O)
    cu_seqlens: &Array<I>, // [batch + 1]
    dq: &mut Array<O>,     // [total, heads, head_dim]
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
    let rows = unit_row(cu_seqlens, window, windowed);
    let (start, head) = (rows.range.start, rows.head);
    let (k_lo, k_hi) = (rows.range.k_lo, rows.range.k_hi);
    let qi = rows.position;
    let q_valid = qi < rows.range.len;

    let row = (start + qi) * heads + head;
    let mut q_row = Array::<f32>::new(head_dim);
    let mut do_row = Array::<f32>::new(head_dim);
    let mut acc = Array::<f32>::new(head_dim);
    load_row_pair(
        q,
        d_out,
        &mut q_row,
        &mut do_row,
        &mut acc,
        row,
        q_valid,
        scale,
        head_dim,
        unroll,
    );
    let mut row_lse = f32::new(0.0);
    let mut row_delta = f32::new(0.0);
    if q_valid {
        row_lse = lse[row];
        row_delta = delta[row];
    }

    let pass = pass_tiles(k_lo, k_hi, tile_begin, tile_count, block_n);
    let written_scale = select(pass.last, scale, f32::new(1.0));
    if resume {
        if q_valid && pass.active {
            #[unroll(unroll)]
            for d in 0..head_dim {
                acc[d] = f32::cast_from(dq[row * head_dim + d]);
            }
        }
    }

    let mut k_tile = SharedMemory::<f32>::new(block_n * head_dim);
    let mut v_tile = SharedMemory::<f32>::new(block_n * head_dim);
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

        for j in 0..block_n {
            let visible = q_valid && key_visible(qi, kb + j, k_hi, window, windowed);
            let mut s = 0.0;
            let mut dp = 0.0;
            #[unroll(unroll)]
            for d in 0..head_dim {
                s += q_row[d] * k_tile[j * head_dim + d];
                dp += do_row[d] * v_tile[j * head_dim + d];
            }
            let p = select(visible, (s - row_lse).exp(), f32::new(0.0));
            let ds = p * (dp - row_delta);
            #[unroll(unroll)]
            for d in 0..head_dim {
                acc[d] += ds * k_tile[j * head_dim + d];
            }
        }
        sync_cube();
    }

    if q_valid && pass.active {
        #[unroll(unroll)]
        for d in 0..head_dim {
            dq[row * head_dim + d] = O::cast_from(acc[d] * written_scale);
        }
    }
}

/// `dK` and `dV` for one key row per unit.
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
pub fn flash_attention_varlen_dkv_kernel<F: Float, I: Numeric, O: Float>(
    q: &Array<F>,          // [total, heads, head_dim], contiguous (as are all below)
    k: &Array<F>,          // [total, heads, head_dim]
    v: &Array<F>,          // [total, heads, head_dim]
    d_out: &Array<F>,      // [total, heads, head_dim]
    lse: &Array<f32>,      // [total, heads]
    delta: &Array<f32>,    // [total, heads], rowsum(dO ∘ O)
    cu_seqlens: &Array<I>, // [batch + 1]
    dk: &mut Array<O>,     // [total, heads, head_dim]
    dv: &mut Array<O>,     // [total, heads, head_dim]
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
    // The same range computation as for queries: the mask is symmetric.
    let rows = unit_row(cu_seqlens, window, windowed);
    let (start, head) = (rows.range.start, rows.head);
    let (q_lo, q_hi) = (rows.range.k_lo, rows.range.k_hi);
    let kj = rows.position;
    let k_valid = kj < rows.range.len;

    let row = (start + kj) * heads + head;
    let mut k_row = Array::<f32>::new(head_dim);
    let mut v_row = Array::<f32>::new(head_dim);
    let mut dk_acc = Array::<f32>::new(head_dim);
    let mut dv_acc = Array::<f32>::new(head_dim);
    load_row_pair(
        k,
        v,
        &mut k_row,
        &mut v_row,
        &mut dk_acc,
        row,
        k_valid,
        scale,
        head_dim,
        unroll,
    );
    let pass = pass_tiles(q_lo, q_hi, tile_begin, tile_count, block_n);
    let written_scale = select(pass.last, scale, f32::new(1.0));
    #[unroll(unroll)]
    for d in 0..head_dim {
        dv_acc[d] = 0.0;
    }
    if resume {
        if k_valid && pass.active {
            #[unroll(unroll)]
            for d in 0..head_dim {
                dk_acc[d] = f32::cast_from(dk[row * head_dim + d]);
                dv_acc[d] = f32::cast_from(dv[row * head_dim + d]);
            }
        }
    }

    let mut q_tile = SharedMemory::<f32>::new(block_n * head_dim);
    let mut do_tile = SharedMemory::<f32>::new(block_n * head_dim);
    let mut lse_tile = SharedMemory::<f32>::new(block_n);
    let mut delta_tile = SharedMemory::<f32>::new(block_n);
    for tile in pass.begin..pass.end {
        let qb = q_lo + tile * block_n;
        stage_rows_f32_pair(
            q,
            d_out,
            &mut q_tile,
            &mut do_tile,
            start,
            qb,
            q_hi,
            head,
            heads,
            rows.unit,
            rows.units,
            block_n,
            head_dim,
        );
        // Rows past the range are masked below (`key_visible`).
        stage_row_values_pair(
            lse,
            delta,
            &mut lse_tile,
            &mut delta_tile,
            start,
            qb,
            q_hi,
            head,
            heads,
            rows.unit,
            rows.units,
            block_n,
        );
        sync_cube();

        for i in 0..block_n {
            let visible = k_valid && key_visible(kj, qb + i, q_hi, window, windowed);
            let mut s = 0.0;
            let mut dp = 0.0;
            #[unroll(unroll)]
            for d in 0..head_dim {
                s += k_row[d] * q_tile[i * head_dim + d];
                dp += v_row[d] * do_tile[i * head_dim + d];
            }
            let p = select(visible, (s - lse_tile[i]).exp(), f32::new(0.0));
            let ds = p * (dp - delta_tile[i]);
            #[unroll(unroll)]
            for d in 0..head_dim {
                dv_acc[d] += p * do_tile[i * head_dim + d];
                dk_acc[d] += ds * q_tile[i * head_dim + d];
            }
        }
        sync_cube();
    }

    if k_valid && pass.active {
        #[unroll(unroll)]
        for d in 0..head_dim {
            dk[row * head_dim + d] = O::cast_from(dk_acc[d] * written_scale);
            dv[row * head_dim + d] = O::cast_from(dv_acc[d]);
        }
    }
}

/// Row `row` of `a` times `a_scale` and of `b` in f32 registers (zeros for an idle unit),
/// and a zeroed accumulator: the start of both backward kernels.
#[cube]
#[allow(clippy::too_many_arguments)]
fn load_row_pair<F: Float>(
    a: &Array<F>,
    b: &Array<F>,
    a_row: &mut Array<f32>,
    b_row: &mut Array<f32>,
    acc: &mut Array<f32>,
    row: usize,
    valid: bool,
    a_scale: f32,
    #[comptime] head_dim: usize,
    #[comptime] unroll: bool,
) {
    #[unroll(unroll)]
    for d in 0..head_dim {
        let mut av = 0.0;
        let mut bv = 0.0;
        if valid {
            av = f32::cast_from(a[row * head_dim + d]) * a_scale;
            bv = f32::cast_from(b[row * head_dim + d]);
        }
        a_row[d] = av;
        b_row[d] = bv;
        acc[d] = 0.0;
    }
}
