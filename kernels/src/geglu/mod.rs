//! GeGLU, ModernBERT's MLP activation: `Wi`'s output `[..., 2I]` is split into `input` (the
//! first `I` features) and `gate` (the last `I`), and `gelu(input) · gate` goes on to `Wo`
//! (HF `ModernBertMLP`). gelu is the exact one, `x · Φ(x) = x/2 · (1 + erf(x/√2))`.
//!
//! In plain Burn ops this is a slice, five kernels of gelu and a product, each a full pass
//! over memory, and under `Autodiff` Burn differentiates gelu with its tanh approximation.
//! CubeCL backends run one kernel each way instead (`kernel.rs`), in f32 whatever the
//! storage dtype; the exact reference formulas below serve every other backend.

#[cfg(feature = "cube")]
pub(crate) mod kernel;

use std::f64::consts::{FRAC_1_SQRT_2, PI};

use burn::tensor::{Tensor, TensorPrimitive};

use crate::Backend;

/// Why a [`geglu`] input is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GegluError {
    /// The last dimension holds `input` and `gate` side by side, so it must be even.
    #[error("GeGLU needs an even last dimension (input and gate halves), got {0}")]
    OddWidth(usize),
}

/// `gelu(input) · gate` over the two halves of the last dimension.
///
/// # Shapes
/// - x: `[..., 2I]`
/// - output: `[..., I]`
pub fn geglu<B: Backend, const D: usize>(x: Tensor<B, D>) -> Result<Tensor<B, D>, GegluError> {
    let mut dims = x.dims();
    let width = dims[D - 1];
    if !width.is_multiple_of(2) {
        return Err(GegluError::OddWidth(width));
    }
    let rows = x.shape().num_elements() / width.max(1);
    let out = B::geglu(x.reshape([rows, width]).into_primitive().tensor());
    dims[D - 1] = width / 2;
    Ok(Tensor::<B, 2>::from_primitive(TensorPrimitive::Float(out)).reshape(dims))
}

/// The two halves of the last dimension: `(input, gate)`.
fn halves<B: burn::tensor::backend::Backend, const D: usize>(
    x: Tensor<B, D>,
) -> (Tensor<B, D>, Tensor<B, D>) {
    let half = x.dims()[D - 1] / 2;
    (
        x.clone().narrow(D - 1, 0, half),
        x.narrow(D - 1, half, half),
    )
}

/// Exact gelu, `x/2 · (1 + erf(x/√2))`.
fn gelu<B: burn::tensor::backend::Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    (x.clone().mul_scalar(FRAC_1_SQRT_2).erf().add_scalar(1.0) * x).mul_scalar(0.5)
}

/// [`geglu`] in plain tensor ops.
///
/// # Shapes
/// - x: `[rows, 2I]`; output: `[rows, I]`
pub fn geglu_reference<B: burn::tensor::backend::Backend>(x: Tensor<B, 2>) -> Tensor<B, 2> {
    let (input, gate) = halves(x);
    gelu(input) * gate
}

/// Gradient of [`geglu`] with respect to `x`, from the output gradient `grad`:
/// `d input = grad · gate · gelu'(input)` with `gelu'(x) = Φ(x) + x·φ(x)`, and
/// `d gate = grad · gelu(input)`, side by side like `x`.
///
/// # Shapes
/// - x: `[rows, 2I]`, grad: `[rows, I]`; output: `[rows, 2I]`
pub fn geglu_backward_reference<B: burn::tensor::backend::Backend>(
    x: Tensor<B, 2>,
    grad: Tensor<B, 2>,
) -> Tensor<B, 2> {
    let (input, gate) = halves(x);
    let cdf = input
        .clone()
        .mul_scalar(FRAC_1_SQRT_2)
        .erf()
        .add_scalar(1.0)
        .mul_scalar(0.5);
    let pdf = input
        .clone()
        .powi_scalar(2)
        .mul_scalar(-0.5)
        .exp()
        .mul_scalar(1.0 / (2.0 * PI).sqrt());
    let d_gelu = cdf.clone() + input.clone() * pdf;
    let d_input = grad.clone() * gate * d_gelu;
    let d_gate = grad * cdf * input;
    Tensor::cat(vec![d_input, d_gate], 1)
}

#[cfg(all(test, feature = "ndarray"))]
mod tests {
    use burn::backend::{Autodiff, NdArray};
    use burn::tensor::{DType, Tensor, TensorData, Tolerance};

    use super::*;

    type B = NdArray;

    /// `[rows, cols]` f64 values spread over about ±`amplitude` (deterministic).
    fn values(rows: usize, cols: usize, amplitude: f64) -> Vec<f64> {
        (0..rows * cols)
            .map(|i| amplitude * (0.7 * i as f64 + 0.3).sin())
            .collect()
    }

    /// An f64 tensor (explicit dtype: the backend's default float may be changed by other
    /// tests of this process).
    fn tensor<Be: burn::tensor::backend::Backend>(v: Vec<f64>, shape: [usize; 2]) -> Tensor<Be, 2> {
        Tensor::from_data(TensorData::new(v, shape), (&Default::default(), DType::F64))
    }

    /// erf-based gelu on the host (erf by its Taylor series, exact to f64 for |z| ≤ 3).
    fn gelu_host(x: f64) -> f64 {
        let z = x * FRAC_1_SQRT_2;
        let (mut term, mut sum) = (z, z);
        for n in 1..80 {
            term *= -z * z / n as f64;
            sum += term / (2 * n + 1) as f64;
        }
        0.5 * x * (1.0 + 2.0 / PI.sqrt() * sum)
    }

    #[test]
    fn forward_matches_the_definition() {
        let x = values(3, 8, 3.0);
        let expected: Vec<f64> = (0..3)
            .flat_map(|r| (0..4).map(move |c| (r, c)))
            .map(|(r, c)| gelu_host(x[r * 8 + c]) * x[r * 8 + 4 + c])
            .collect();
        let out = geglu(tensor::<B>(x, [3, 8])).unwrap();
        out.into_data().assert_approx_eq::<f64>(
            &TensorData::new(expected, [3, 4]),
            Tolerance::absolute(1e-12),
        );
    }

    /// The hand-written backward (under `Autodiff`) equals autodiff through the forward
    /// formula.
    #[test]
    fn backward_matches_autodiff_of_the_formula() {
        let x = || tensor::<Autodiff<B>>(values(5, 6, 4.0), [5, 6]).require_grad();
        let grad = || tensor::<Autodiff<B>>(values(5, 3, 1.0).into_iter().rev().collect(), [5, 3]);
        let tracked = x();
        let (input, gate) = halves(tracked.clone());
        let formula = (input
            .clone()
            .mul_scalar(FRAC_1_SQRT_2)
            .erf()
            .add_scalar(1.0)
            * input)
            .mul_scalar(0.5)
            * gate;
        let grads = (formula * grad()).sum().backward();
        let expected = tracked.grad(&grads).unwrap();
        let tracked = x();
        let grads = (geglu(tracked.clone()).unwrap() * grad()).sum().backward();
        tracked
            .grad(&grads)
            .unwrap()
            .into_data()
            .assert_approx_eq::<f64>(&expected.into_data(), Tolerance::absolute(1e-12));
    }

    #[test]
    fn odd_width_is_refused() {
        let x = Tensor::<B, 2>::zeros([2, 5], &Default::default());
        assert_eq!(geglu(x).unwrap_err(), GegluError::OddWidth(5));
    }

    #[test]
    fn leading_dims_are_kept() {
        let x = tensor::<B>(values(6, 8, 2.0), [6, 8]);
        let flat = geglu(x.clone()).unwrap();
        let batched = geglu(x.reshape([2, 3, 8])).unwrap();
        assert_eq!(batched.dims(), [2, 3, 4]);
        batched
            .reshape([6, 4])
            .into_data()
            .assert_eq(&flat.into_data(), true);
    }
}
