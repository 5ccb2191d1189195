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
//! Both launch the forward's grid, `(ceil(max_seqlen / block_m), heads, batch)`. The mask is
//! symmetric (same sequence, `|i − j| ≤ window`), so a block of keys sees queries exactly as
//! a block of queries sees keys: both use [`query_block`] and skip tiles outside it.

use cubecl::prelude::*;

use super::tiling::{key_visible, query_block};

/// `dQ` for one query row per unit.
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
pub fn flash_attention_varlen_dq_kernel<F: Float, I: Numeric>(
    q: &Tensor<F>,          // [total, heads, head_dim], contiguous (as are all below)
    k: &Tensor<F>,          // [total, heads, head_dim]
    v: &Tensor<F>,          // [total, heads, head_dim]
    d_out: &Tensor<F>,      // [total, heads, head_dim]
    lse: &Tensor<f32>,      // [total, heads]
    delta: &Tensor<f32>,    // [total, heads], rowsum(dO ∘ O)
    cu_seqlens: &Tensor<I>, // [batch + 1]
    dq: &mut Tensor<F>,     // [total, heads, head_dim]
    scale: f32,
    window: u32,
    #[comptime] head_dim: usize,
    #[comptime] block_n: usize,
    #[comptime] windowed: bool,
    #[comptime] unroll: bool,
    #[define(F, I)] _dtypes: [StorageType; 2],
) {
    let block_m = CUBE_DIM_X as usize;
    let unit = UNIT_POS_X as usize;
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
    let start = block.start;
    let k_lo = block.k_lo;
    let k_hi = block.k_hi;
    let qi = q0 + unit;
    let q_valid = qi < block.len;

    let row = (start + qi) * heads + head;
    let mut q_row = Array::<f32>::new(head_dim);
    let mut do_row = Array::<f32>::new(head_dim);
    let mut acc = Array::<f32>::new(head_dim);
    let mut row_lse = f32::new(0.0);
    let mut row_delta = f32::new(0.0);
    if q_valid {
        row_lse = lse[row];
        row_delta = delta[row];
    }
    #[unroll(unroll)]
    for d in 0..head_dim {
        let mut qv = 0.0;
        let mut dov = 0.0;
        if q_valid {
            qv = f32::cast_from(q[row * head_dim + d]) * scale;
            dov = f32::cast_from(d_out[row * head_dim + d]);
        }
        q_row[d] = qv;
        do_row[d] = dov;
        acc[d] = 0.0;
    }

    let mut k_tile = SharedMemory::<f32>::new(block_n * head_dim);
    let mut v_tile = SharedMemory::<f32>::new(block_n * head_dim);
    let tiles = (k_hi - k_lo).div_ceil(block_n);
    for tile in 0..tiles {
        let kb = k_lo + tile * block_n;
        let mut e = unit;
        while e < block_n * head_dim {
            let key = kb + e / head_dim;
            let mut kv = 0.0;
            let mut vv = 0.0;
            if key < k_hi {
                let index = ((start + key) * heads + head) * head_dim + e % head_dim;
                kv = f32::cast_from(k[index]);
                vv = f32::cast_from(v[index]);
            }
            k_tile[e] = kv;
            v_tile[e] = vv;
            e += block_m;
        }
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

    if q_valid {
        #[unroll(unroll)]
        for d in 0..head_dim {
            dq[row * head_dim + d] = F::cast_from(acc[d] * scale);
        }
    }
}

/// `dK` and `dV` for one key row per unit.
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
pub fn flash_attention_varlen_dkv_kernel<F: Float, I: Numeric>(
    q: &Tensor<F>,          // [total, heads, head_dim], contiguous (as are all below)
    k: &Tensor<F>,          // [total, heads, head_dim]
    v: &Tensor<F>,          // [total, heads, head_dim]
    d_out: &Tensor<F>,      // [total, heads, head_dim]
    lse: &Tensor<f32>,      // [total, heads]
    delta: &Tensor<f32>,    // [total, heads], rowsum(dO ∘ O)
    cu_seqlens: &Tensor<I>, // [batch + 1]
    dk: &mut Tensor<F>,     // [total, heads, head_dim]
    dv: &mut Tensor<F>,     // [total, heads, head_dim]
    scale: f32,
    window: u32,
    #[comptime] head_dim: usize,
    #[comptime] block_n: usize,
    #[comptime] windowed: bool,
    #[comptime] unroll: bool,
    #[define(F, I)] _dtypes: [StorageType; 2],
) {
    let block_m = CUBE_DIM_X as usize;
    let unit = UNIT_POS_X as usize;
    let head = CUBE_POS_Y as usize;
    let heads = q.shape(1);
    let window = window as usize;

    // The same range computation as for queries: the mask is symmetric.
    let k0 = CUBE_POS_X as usize * block_m;
    let block = query_block(
        cu_seqlens,
        CUBE_POS_Z as usize,
        k0,
        block_m,
        window,
        windowed,
    );
    let start = block.start;
    let q_lo = block.k_lo;
    let q_hi = block.k_hi;
    let kj = k0 + unit;
    let k_valid = kj < block.len;

    let row = (start + kj) * heads + head;
    let mut k_row = Array::<f32>::new(head_dim);
    let mut v_row = Array::<f32>::new(head_dim);
    let mut dk_acc = Array::<f32>::new(head_dim);
    let mut dv_acc = Array::<f32>::new(head_dim);
    #[unroll(unroll)]
    for d in 0..head_dim {
        let mut kv = 0.0;
        let mut vv = 0.0;
        if k_valid {
            kv = f32::cast_from(k[row * head_dim + d]) * scale;
            vv = f32::cast_from(v[row * head_dim + d]);
        }
        k_row[d] = kv;
        v_row[d] = vv;
        dk_acc[d] = 0.0;
        dv_acc[d] = 0.0;
    }

    let mut q_tile = SharedMemory::<f32>::new(block_n * head_dim);
    let mut do_tile = SharedMemory::<f32>::new(block_n * head_dim);
    let mut lse_tile = SharedMemory::<f32>::new(block_n);
    let mut delta_tile = SharedMemory::<f32>::new(block_n);
    let tiles = (q_hi - q_lo).div_ceil(block_n);
    for tile in 0..tiles {
        let qb = q_lo + tile * block_n;
        let mut e = unit;
        while e < block_n * head_dim {
            let query = qb + e / head_dim;
            let mut qv = 0.0;
            let mut dov = 0.0;
            if query < q_hi {
                let index = ((start + query) * heads + head) * head_dim + e % head_dim;
                qv = f32::cast_from(q[index]);
                dov = f32::cast_from(d_out[index]);
            }
            q_tile[e] = qv;
            do_tile[e] = dov;
            e += block_m;
        }
        let mut i = unit;
        while i < block_n {
            let query = qb + i;
            // Rows past the range are masked below (`key_visible`).
            let mut l = 0.0;
            let mut dl = 0.0;
            if query < q_hi {
                l = lse[(start + query) * heads + head];
                dl = delta[(start + query) * heads + head];
            }
            lse_tile[i] = l;
            delta_tile[i] = dl;
            i += block_m;
        }
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

    if k_valid {
        #[unroll(unroll)]
        for d in 0..head_dim {
            dk[row * head_dim + d] = F::cast_from(dk_acc[d] * scale);
            dv[row * head_dim + d] = F::cast_from(dv_acc[d]);
        }
    }
}
