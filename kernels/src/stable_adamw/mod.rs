//! One StableAdamW update of one parameter tensor (Wortsman et al. 2023, optimi's rule as
//! ModernBERT trains with it; `modernbert-train`'s optimizer calls it for every tensor):
//!
//! ```text
//! m  = β₁ₜ·m + (1 - β₁ₜ)·g;   v = β₂ₜ·v + (1 - β₂ₜ)·g²       (β debiased for step t)
//! rms = sqrt(mean(g² / max(v, ε²)));   η = lr / max(1, rms)
//! θ  = θ·(1 - η·decay) - η · m / (sqrt(v) + ε)                (decay = λ / lr_max, or 0)
//! ```
//!
//! In plain tensor ops that is about 20 kernels per tensor, and ModernBERT-base has 140
//! tensors: the launches, not the memory traffic, set the optimizer's time on a GPU.
//! CubeCL backends run two kernels per tensor instead (`kernel.rs`): the moments with each
//! cube's partial sum of `g² / max(v, ε²)`, then the update, each cube first summing the
//! partials (a fixed order: deterministic). Arithmetic is f32 whatever the storage dtype.
//! The reference below serves every other backend.

#[cfg(feature = "cube")]
pub(crate) mod kernel;

use burn::tensor::{Tensor, TensorPrimitive};

use crate::Backend;

/// The scalars of one update (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StableAdamWStep {
    /// This step's learning rate.
    pub lr: f64,
    /// β₁ₜ, debiased for the step (0 at the first step).
    pub beta_1: f64,
    /// β₂ₜ, debiased for the step (0 at the first step).
    pub beta_2: f64,
    /// ε, added to `sqrt(v)` and squared as the floor of `v` in the rms.
    pub epsilon: f64,
    /// Decoupled weight decay per unit of `η`: `λ / lr_max`, or 0 for no decay.
    pub decay: f64,
}

/// Why a [`stable_adamw_step`] is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StableAdamWError {
    /// The parameter, its gradient and its moments must have one shape.
    #[error("StableAdamW: parameter {param:?}, gradient {grad:?}, moments {exp_avg:?} and {exp_avg_sq:?} must have one shape")]
    Shape {
        /// The parameter's shape.
        param: Vec<usize>,
        /// The gradient's shape.
        grad: Vec<usize>,
        /// The first moment's shape.
        exp_avg: Vec<usize>,
        /// The second moment's shape.
        exp_avg_sq: Vec<usize>,
    },
}

/// One update of `param` from its gradient and moments; returns the new
/// `(param, exp_avg, exp_avg_sq)`. At the first step pass zero moments (with `β = 0` they
/// become `g` and `g²`).
///
/// # Errors
/// [`StableAdamWError::Shape`] unless the four tensors have one shape.
pub fn stable_adamw_step<B: Backend, const D: usize>(
    param: Tensor<B, D>,
    grad: Tensor<B, D>,
    exp_avg: Tensor<B, D>,
    exp_avg_sq: Tensor<B, D>,
    step: &StableAdamWStep,
) -> Result<(Tensor<B, D>, Tensor<B, D>, Tensor<B, D>), StableAdamWError> {
    let dims = param.dims();
    if grad.dims() != dims || exp_avg.dims() != dims || exp_avg_sq.dims() != dims {
        return Err(StableAdamWError::Shape {
            param: dims.to_vec(),
            grad: grad.dims().to_vec(),
            exp_avg: exp_avg.dims().to_vec(),
            exp_avg_sq: exp_avg_sq.dims().to_vec(),
        });
    }
    let flat = |t: Tensor<B, D>| {
        t.reshape([dims.iter().product::<usize>()])
            .into_primitive()
            .tensor()
    };
    let (param, exp_avg, exp_avg_sq) = B::stable_adamw_step(
        flat(param),
        flat(grad),
        flat(exp_avg),
        flat(exp_avg_sq),
        step,
    );
    let back = |t| Tensor::<B, 1>::from_primitive(TensorPrimitive::Float(t)).reshape(dims);
    Ok((back(param), back(exp_avg), back(exp_avg_sq)))
}

/// [`stable_adamw_step`] in plain tensor ops (in the tensors' dtype), for flat tensors.
///
/// # Shapes
/// - param, grad, exp_avg, exp_avg_sq: `[n]`; outputs likewise
pub fn stable_adamw_reference<B: burn::tensor::backend::Backend>(
    param: Tensor<B, 1>,
    grad: Tensor<B, 1>,
    exp_avg: Tensor<B, 1>,
    exp_avg_sq: Tensor<B, 1>,
    step: &StableAdamWStep,
) -> (Tensor<B, 1>, Tensor<B, 1>, Tensor<B, 1>) {
    let grad_sq = grad.clone().square();
    let exp_avg = exp_avg.mul_scalar(step.beta_1) + grad.mul_scalar(1.0 - step.beta_1);
    let exp_avg_sq =
        exp_avg_sq.mul_scalar(step.beta_2) + grad_sq.clone().mul_scalar(1.0 - step.beta_2);
    // η / lr = 1 / max(1, rms), kept on the device (no host sync).
    let inv_rms = (grad_sq / exp_avg_sq.clone().clamp_min(step.epsilon * step.epsilon))
        .mean()
        .sqrt()
        .clamp_min(1.0)
        .recip();
    let param = if step.decay > 0.0 {
        param
            * inv_rms
                .clone()
                .mul_scalar(-step.lr * step.decay)
                .add_scalar(1.0)
    } else {
        param
    };
    let update = exp_avg.clone() / exp_avg_sq.clone().sqrt().add_scalar(step.epsilon);
    let param = param - update * inv_rms.mul_scalar(step.lr);
    (param, exp_avg, exp_avg_sq)
}
