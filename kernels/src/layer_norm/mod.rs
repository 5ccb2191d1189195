//! LayerNorm over the last dimension, `y = (x − mean) / sqrt(var + ε) · γ (+ β)` with the
//! biased variance (torch's `nn.LayerNorm`; HF `ModernBertEmbeddings.norm`, `attn_norm`,
//! `mlp_norm`, `final_norm`, `head.norm`). ModernBERT's norms have a weight γ and, in every
//! released checkpoint, no bias β (`norm_bias = false`); the bias is still supported.
//!
//! In plain Burn ops this is about eight kernels each way (mean, subtract, square, mean, add
//! ε, sqrt, divide, scale), each a full pass over memory. CubeCL backends run one kernel
//! forward and one backward (plus a small column reduction for dγ and dβ, `kernel.rs`), in
//! f32 whatever the storage dtype; the exact reference formulas below serve every other
//! backend. The forward also returns each row's mean and `rstd = 1 / sqrt(var + ε)`, which
//! the backward reuses.

#[cfg(feature = "cube")]
pub(crate) mod kernel;

use burn::tensor::{DType, Tensor, TensorPrimitive};

use crate::Backend;

/// Why a [`layer_norm`] input is refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum LayerNormError {
    /// The normalised (last) dimension has no elements.
    #[error("LayerNorm needs a non-empty last dimension")]
    EmptyWidth,
    /// γ must hold one weight per feature of the last dimension.
    #[error("LayerNorm weight (gamma) has {got} elements, the last dimension has {expected}")]
    GammaLength {
        /// The last dimension of `x`.
        expected: usize,
        /// γ's length.
        got: usize,
    },
    /// β must hold one bias per feature of the last dimension.
    #[error("LayerNorm bias (beta) has {got} elements, the last dimension has {expected}")]
    BetaLength {
        /// The last dimension of `x`.
        expected: usize,
        /// β's length.
        got: usize,
    },
    /// ε must be finite and not negative.
    #[error("LayerNorm epsilon must be finite and >= 0, got {0}")]
    Epsilon(f64),
}

/// LayerNorm of `x` over its last dimension, `(x − mean) / sqrt(var + ε) · γ (+ β)`.
///
/// # Shapes
/// - x: `[..., W]`, gamma: `[W]`, beta: `[W]`
/// - output: `[..., W]`
pub fn layer_norm<B: Backend, const D: usize>(
    x: Tensor<B, D>,
    gamma: Tensor<B, 1>,
    beta: Option<Tensor<B, 1>>,
    epsilon: f64,
) -> Result<Tensor<B, D>, LayerNormError> {
    let dims = x.dims();
    let width = dims[D - 1];
    if width == 0 {
        return Err(LayerNormError::EmptyWidth);
    }
    let [got] = gamma.dims();
    if got != width {
        return Err(LayerNormError::GammaLength {
            expected: width,
            got,
        });
    }
    if let Some(beta) = &beta {
        let [got] = beta.dims();
        if got != width {
            return Err(LayerNormError::BetaLength {
                expected: width,
                got,
            });
        }
    }
    if !(epsilon.is_finite() && epsilon >= 0.0) {
        return Err(LayerNormError::Epsilon(epsilon));
    }
    let rows = x.shape().num_elements() / width;
    let (y, _mean, _rstd) = B::layer_norm_forward(
        x.reshape([rows, width]).into_primitive().tensor(),
        gamma.into_primitive().tensor(),
        beta.map(|b| b.into_primitive().tensor()),
        epsilon,
    );
    Ok(Tensor::<B, 2>::from_primitive(TensorPrimitive::Float(y)).reshape(dims))
}

/// The dtype of the per-row statistics in the reference: x's, widened to at least f32.
fn stats_dtype(dtype: DType) -> DType {
    match dtype {
        DType::F64 => DType::F64,
        _ => DType::F32,
    }
}

/// [`layer_norm`] in plain tensor ops (the formula of Burn's own `layer_norm`), with the
/// per-row statistics: returns `(y, mean, rstd)`, `rstd = 1 / sqrt(var + ε)`, the statistics
/// in x's dtype widened to at least f32.
///
/// # Shapes
/// - x: `[rows, W]`, gamma: `[W]`, beta: `[W]`
/// - output: y `[rows, W]`, mean `[rows]`, rstd `[rows]`
pub fn layer_norm_reference<B: burn::tensor::backend::Backend>(
    x: Tensor<B, 2>,
    gamma: Tensor<B, 1>,
    beta: Option<Tensor<B, 1>>,
    epsilon: f64,
) -> (Tensor<B, 2>, Tensor<B, 1>, Tensor<B, 1>) {
    let stats = stats_dtype(x.dtype());
    let mean = x.clone().mean_dim(1);
    let centered = x - mean.clone();
    let var = (centered.clone() * centered.clone()).mean_dim(1);
    let denom = var.add_scalar(epsilon).sqrt();
    let y = centered / denom.clone() * gamma.unsqueeze();
    let y = match beta {
        Some(beta) => y + beta.unsqueeze(),
        None => y,
    };
    let row_stat = |t: Tensor<B, 2>| t.squeeze_dim::<1>(1).cast(stats);
    (y, row_stat(mean), row_stat(denom.recip()))
}

/// Gradients of [`layer_norm`] from the output gradient `grad`, with `x̂ = (x − mean) · rstd`
/// and `g = grad`: `dx = rstd · (g·γ − mean(g·γ) − x̂ · mean(g·γ·x̂))` (means over the row),
/// `dγ = Σ_rows g·x̂` and, when `has_beta`, `dβ = Σ_rows g`. Computed in the statistics'
/// dtype; dx comes back in x's dtype, dγ and dβ in γ's.
///
/// # Shapes
/// - x, grad: `[rows, W]`, gamma: `[W]`, mean, rstd: `[rows]`
/// - output: dx `[rows, W]`, dγ `[W]`, dβ `[W]`
pub fn layer_norm_backward_reference<B: burn::tensor::backend::Backend>(
    x: Tensor<B, 2>,
    gamma: Tensor<B, 1>,
    mean: Tensor<B, 1>,
    rstd: Tensor<B, 1>,
    grad: Tensor<B, 2>,
    has_beta: bool,
) -> (Tensor<B, 2>, Tensor<B, 1>, Option<Tensor<B, 1>>) {
    let (x_dtype, gamma_dtype, stats) = (x.dtype(), gamma.dtype(), mean.dtype());
    let rstd = rstd.cast(stats).unsqueeze_dim::<2>(1);
    let x_hat = (x.cast(stats) - mean.unsqueeze_dim(1)) * rstd.clone();
    let grad = grad.cast(stats);
    let scaled = grad.clone() * gamma.cast(stats).unsqueeze();
    let mean_scaled = scaled.clone().mean_dim(1);
    let mean_scaled_x_hat = (scaled.clone() * x_hat.clone()).mean_dim(1);
    let d_x = (scaled - mean_scaled - x_hat.clone() * mean_scaled_x_hat) * rstd;
    let column_sum = |t: Tensor<B, 2>| t.sum_dim(0).squeeze_dim::<1>(0).cast(gamma_dtype);
    let d_beta = has_beta.then(|| column_sum(grad.clone()));
    let d_gamma = column_sum(grad * x_hat);
    (d_x.cast(x_dtype), d_gamma, d_beta)
}

#[cfg(all(test, feature = "ndarray"))]
mod tests {
    use burn::backend::{Autodiff, NdArray};
    use burn::tensor::{Tensor, TensorData, Tolerance};

    use super::*;

    type B = NdArray;

    /// `[rows, cols]` f64 values spread over about ±`amplitude` around `offset`.
    fn values(rows: usize, cols: usize, amplitude: f64, offset: f64) -> Vec<f64> {
        (0..rows * cols)
            .map(|i| offset + amplitude * (0.7 * i as f64 + 0.3).sin())
            .collect()
    }

    /// An f64 tensor (explicit dtype: the backend's default float may be changed by other
    /// tests of this process).
    fn tensor<Be: burn::tensor::backend::Backend, const D: usize>(
        v: Vec<f64>,
        shape: [usize; D],
    ) -> Tensor<Be, D> {
        Tensor::from_data(TensorData::new(v, shape), (&Default::default(), DType::F64))
    }

    /// The forward equals the definition computed on the host, with and without β; the
    /// rows sit far from zero (offset 100) so a one-pass `E[x²] − E[x]²` would show.
    #[test]
    fn forward_matches_the_definition() {
        let (rows, width, eps) = (3, 7, 1e-5);
        let x = values(rows, width, 2.0, 100.0);
        let gamma = values(1, width, 1.5, 0.5);
        let beta = values(1, width, 0.5, -0.2);
        for with_beta in [false, true] {
            let mut expected = Vec::new();
            for row in x.chunks(width) {
                let mean = row.iter().sum::<f64>() / width as f64;
                let var = row.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / width as f64;
                for (c, v) in row.iter().enumerate() {
                    let b = if with_beta { beta[c] } else { 0.0 };
                    expected.push((v - mean) / (var + eps).sqrt() * gamma[c] + b);
                }
            }
            let out = layer_norm(
                tensor::<B, 2>(x.clone(), [rows, width]),
                tensor(gamma.clone(), [width]),
                with_beta.then(|| tensor(beta.clone(), [width])),
                eps,
            )
            .unwrap();
            out.into_data().assert_approx_eq::<f64>(
                &TensorData::new(expected, [rows, width]),
                Tolerance::absolute(1e-10),
            );
        }
    }

    /// The hand-written backward (under `Autodiff`) equals autodiff through the forward
    /// formula, for x, γ and β.
    #[test]
    fn backward_matches_autodiff_of_the_formula() {
        let (rows, width, eps) = (5, 6, 1e-3);
        type A = Autodiff<B>;
        let inputs = || {
            (
                tensor::<A, 2>(values(rows, width, 3.0, 1.0), [rows, width]).require_grad(),
                tensor::<A, 1>(values(1, width, 1.0, 0.3), [width]).require_grad(),
                tensor::<A, 1>(values(1, width, 0.5, 0.0), [width]).require_grad(),
            )
        };
        let grad = || tensor::<A, 2>(values(rows, width, 1.0, 0.1), [rows, width]);
        let (x, gamma, beta) = inputs();
        let mean = x.clone().mean_dim(1);
        let centered = x.clone() - mean;
        let var = (centered.clone() * centered.clone()).mean_dim(1);
        let formula = centered / var.add_scalar(eps).sqrt() * gamma.clone().unsqueeze()
            + beta.clone().unsqueeze();
        let grads = (formula * grad()).sum().backward();
        let expected = [
            x.grad(&grads).unwrap().into_data(),
            gamma.grad(&grads).unwrap().into_data(),
            beta.grad(&grads).unwrap().into_data(),
        ];
        let (x, gamma, beta) = inputs();
        let y = layer_norm(x.clone(), gamma.clone(), Some(beta.clone()), eps).unwrap();
        let grads = (y * grad()).sum().backward();
        let ours = [
            x.grad(&grads).unwrap().into_data(),
            gamma.grad(&grads).unwrap().into_data(),
            beta.grad(&grads).unwrap().into_data(),
        ];
        for (ours, expected) in ours.iter().zip(&expected) {
            ours.assert_approx_eq::<f64>(expected, Tolerance::absolute(1e-10));
        }
    }

    #[test]
    fn bad_inputs_are_refused() {
        let device = Default::default();
        let x = Tensor::<B, 2>::zeros([2, 5], &device);
        let ones = |n| Tensor::<B, 1>::ones([n], &device);
        let run = |x: Tensor<B, 2>, gamma, beta, eps| layer_norm(x, gamma, beta, eps).unwrap_err();
        assert_eq!(
            run(Tensor::zeros([2, 0], &device), ones(0), None, 1e-5),
            LayerNormError::EmptyWidth
        );
        assert_eq!(
            run(x.clone(), ones(4), None, 1e-5),
            LayerNormError::GammaLength {
                expected: 5,
                got: 4
            }
        );
        assert_eq!(
            run(x.clone(), ones(5), Some(ones(6)), 1e-5),
            LayerNormError::BetaLength {
                expected: 5,
                got: 6
            }
        );
        assert_eq!(run(x, ones(5), None, -1.0), LayerNormError::Epsilon(-1.0));
    }

    #[test]
    fn leading_dims_are_kept() {
        let x = tensor::<B, 2>(values(6, 8, 2.0, 0.0), [6, 8]);
        let gamma = || tensor::<B, 1>(values(1, 8, 1.0, 1.0), [8]);
        let flat = layer_norm(x.clone(), gamma(), None, 1e-5).unwrap();
        let batched = layer_norm(x.reshape([2, 3, 8]), gamma(), None, 1e-5).unwrap();
        assert_eq!(batched.dims(), [2, 3, 8]);
        batched
            .reshape([6, 8])
            .into_data()
            .assert_eq(&flat.into_data(), true);
    }
}
