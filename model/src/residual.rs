//! The residual branch of a pre-norm layer: `h + drop(W(x))`, ending both the attention and
//! the MLP block.
//!
//! When the dropout is inactive (inference, or probability 0, ModernBERT's default) the
//! add is folded into the projection (`modernbert_kernels::linear_residual`, cuBLASLt's
//! epilogue on Cuda), saving a pass over the hidden states.

use burn::nn::{Dropout, Linear};
use burn::tensor::Tensor;
use modernbert_kernels::{linear, linear_residual, Backend as KernelBackend};

/// `residual + drop(layer(x))`.
///
/// # Shapes
/// - x: `[..., d_in]`, residual: `[..., d_out]`
/// - output: `[..., d_out]`
pub fn add_projection<B: KernelBackend, const D: usize>(
    residual: Tensor<B, D>,
    layer: &Linear<B>,
    drop: &Dropout,
    x: Tensor<B, D>,
) -> Tensor<B, D> {
    // `Dropout::forward` is the identity exactly in these cases.
    if drop.prob == 0.0 || !B::ad_enabled(&x.device()) {
        linear_residual(layer, x, residual)
    } else {
        residual + drop.forward(linear(layer, x))
    }
}
