//! The same attention in plain tensor ops: one dense `[heads, len, len]` score matrix per
//! sequence. Exact on every backend, differentiable under `Autodiff`, and the oracle the
//! kernel is tested against.

use burn::tensor::{DType, Int, Tensor};

use super::VarlenMeta;
use crate::{matmul, Backend};

/// The most negative finite value of a float dtype: masked scores are filled with it
/// (HF uses `finfo(dtype).min`); unlike −∞ it cannot turn a fully masked row into NaN.
pub fn mask_value(dtype: DType) -> f64 {
    match dtype {
        DType::F16 => -65504.0,
        DType::BF16 => -3.389_531_4e38,
        DType::F64 => f64::MIN,
        _ => f32::MIN as f64,
    }
}

/// Reference varlen attention; returns `(out, lse)`.
///
/// # Shapes
/// - q, k, v: `[total, heads, head_dim]`
/// - out: `[total, heads, head_dim]`; lse: `[total, heads]`
pub fn varlen_attention_reference<B: Backend>(
    q: Tensor<B, 3>,
    k: Tensor<B, 3>,
    v: Tensor<B, 3>,
    meta: &VarlenMeta,
) -> (Tensor<B, 3>, Tensor<B, 2>) {
    let device = q.device();
    let mut outs = Vec::with_capacity(meta.offsets.len());
    let mut lses = Vec::with_capacity(meta.offsets.len());
    for bounds in meta.offsets.windows(2) {
        let (start, len) = (bounds[0] as usize, (bounds[1] - bounds[0]) as usize);
        // [len, heads, head_dim] → [heads, len, head_dim]
        let part = |t: &Tensor<B, 3>| t.clone().narrow(0, start, len).swap_dims(0, 1);
        let (qs, ks, vs) = (part(&q), part(&k), part(&v));
        let mut scores = matmul(qs, ks.swap_dims(1, 2)) * meta.scale as f64; // [heads, len, len]
        if let Some(window) = meta.window {
            let index = Tensor::<B, 1, Int>::arange(0..len as i64, &device);
            let far = (index.clone().reshape([len, 1]) - index.reshape([1, len]))
                .abs()
                .greater_elem(window as i64)
                .unsqueeze_dim::<3>(0)
                .expand(scores.shape());
            let fill = mask_value(scores.dtype());
            scores = scores.mask_fill(far, fill);
        }
        let max = scores.clone().max_dim(2); // [heads, len, 1]
        let exp = (scores - max.clone()).exp();
        let sum = exp.clone().sum_dim(2);
        outs.push(matmul(exp / sum.clone(), vs).swap_dims(0, 1));
        lses.push((max + sum.log()).squeeze_dim::<2>(2).swap_dims(0, 1));
    }
    (Tensor::cat(outs, 0), Tensor::cat(lses, 0))
}

/// Gradients of [`varlen_attention_reference`] from the forward's `out` and `lse`, in the
/// formulas the backward kernels implement: `P = exp(S − lse)`, `dV = Pᵀ·dO`,
/// `dS = P ∘ (dO·Vᵀ − rowsum(dO ∘ O))`, `dQ = scale·dS·K`, `dK = scale·dSᵀ·Q`; one dense
/// `[heads, len, len]` block per sequence, computed in f32 (f64 for f64). Returns `(dq, dk, dv)` in q's
/// dtype.
///
/// # Shapes
/// - q, k, v, out, d_out: `[total, heads, head_dim]`; lse: `[total, heads]`
#[allow(clippy::too_many_arguments)]
pub fn varlen_attention_backward_reference<B: Backend>(
    q: Tensor<B, 3>,
    k: Tensor<B, 3>,
    v: Tensor<B, 3>,
    out: Tensor<B, 3>,
    lse: Tensor<B, 2>,
    d_out: Tensor<B, 3>,
    meta: &VarlenMeta,
) -> (Tensor<B, 3>, Tensor<B, 3>, Tensor<B, 3>) {
    let dtype = q.dtype();
    let device = q.device();
    // At least f32 (f64 stays f64).
    let compute = if dtype == DType::F64 {
        DType::F64
    } else {
        DType::F32
    };
    let up = |t: Tensor<B, 3>| t.cast(compute);
    let (q, k, v, d_out) = (up(q), up(k), up(v), up(d_out));
    let lse = lse.cast(compute);
    // D = rowsum(dO ∘ O): [total, heads]
    let delta = (d_out.clone() * up(out)).sum_dim(2).squeeze_dim::<2>(2);
    let (mut dqs, mut dks, mut dvs) = (Vec::new(), Vec::new(), Vec::new());
    for bounds in meta.offsets.windows(2) {
        let (start, len) = (bounds[0] as usize, (bounds[1] - bounds[0]) as usize);
        // [len, heads, ...] → [heads, len, ...]
        let part = |t: &Tensor<B, 3>| t.clone().narrow(0, start, len).swap_dims(0, 1);
        let column = |t: &Tensor<B, 2>| {
            t.clone()
                .narrow(0, start, len)
                .swap_dims(0, 1)
                .unsqueeze_dim::<3>(2)
        };
        let (qs, ks, vs, dos) = (part(&q), part(&k), part(&v), part(&d_out));
        let mut p = (matmul(qs.clone(), ks.clone().swap_dims(1, 2)) * meta.scale as f64
            - column(&lse))
        .exp(); // [heads, len, len]
        if let Some(window) = meta.window {
            let index = Tensor::<B, 1, Int>::arange(0..len as i64, &device);
            let far = (index.clone().reshape([len, 1]) - index.reshape([1, len]))
                .abs()
                .greater_elem(window as i64)
                .unsqueeze_dim::<3>(0)
                .expand(p.shape());
            p = p.mask_fill(far, 0.0);
        }
        let dp = matmul(dos.clone(), vs.swap_dims(1, 2));
        let ds = p.clone() * (dp - column(&delta));
        dvs.push(matmul(p.swap_dims(1, 2), dos).swap_dims(0, 1));
        dqs.push((matmul(ds.clone(), ks) * meta.scale as f64).swap_dims(0, 1));
        dks.push((matmul(ds.swap_dims(1, 2), qs) * meta.scale as f64).swap_dims(0, 1));
    }
    let cat = |parts: Vec<Tensor<B, 3>>| Tensor::cat(parts, 0).cast(dtype);
    (cat(dqs), cat(dks), cat(dvs))
}
