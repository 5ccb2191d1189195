//! LayerNorm through `modernbert_kernels::layer_norm` (one kernel each way on CubeCL
//! backends, the exact reference elsewhere). The parameters stay in Burn's `nn::LayerNorm`
//! (`gamma`, `beta`), so module paths, checkpoints and the HF key mapping are unchanged;
//! its epsilon is private, so each owner keeps `norm_eps` beside it.
//!
//! HF: `nn.LayerNorm(hidden_size, eps=norm_eps, bias=norm_bias)`.

use burn::module::Param;
use burn::nn::LayerNorm;
use burn::tensor::Tensor;
use modernbert_kernels::Backend as KernelBackend;

/// `norm(x)` over the last dimension with epsilon `epsilon`.
///
/// # Shapes
/// - x: `[..., H]` (H = the norm's size)
/// - output: `[..., H]`
///
/// # Panics
/// If x does not end in the norm's size or epsilon is negative or not finite: the model's
/// norms are built over the hidden size that every input to them ends in, with the
/// validated `norm_eps` of [`ModernBertConfig`](crate::ModernBertConfig), and loaded
/// weights are shape-checked, so this cannot happen from the model's own forward passes.
pub fn layer_norm<B: KernelBackend, const D: usize>(
    norm: &LayerNorm<B>,
    epsilon: f64,
    x: Tensor<B, D>,
) -> Tensor<B, D> {
    let beta = norm.beta.as_ref().map(Param::val);
    modernbert_kernels::layer_norm(x, norm.gamma.val(), beta, epsilon)
        .expect("LayerNorm built over the hidden size, with a validated epsilon")
}
