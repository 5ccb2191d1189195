//! Comparing a result with its reference in the randomized kernel tests.

use burn::tensor::backend::Backend;
use burn::tensor::Tensor;

/// `max |ours − reference| / max |reference|`, both read back as f32.
///
/// # Panics
/// If the shapes differ, or if `ours` holds a non-finite value (the kernels' outputs are
/// never poisoned on purpose, so NaN or ∞ means a row was not written or overflowed).
pub fn relative_error<B: Backend, const D: usize>(
    ours: Tensor<B, D>,
    reference: Tensor<B, D>,
) -> f32 {
    assert_eq!(ours.dims(), reference.dims(), "shape");
    let ours: Vec<f32> = ours.into_data().convert::<f32>().to_vec().unwrap();
    let reference: Vec<f32> = reference.into_data().convert::<f32>().to_vec().unwrap();
    assert!(
        ours.iter().all(|v| v.is_finite()),
        "non-finite output: a row was not written, or overflowed"
    );
    let diff = ours
        .iter()
        .zip(&reference)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    let scale = reference.iter().map(|b| b.abs()).fold(0f32, f32::max);
    diff / scale.max(f32::MIN_POSITIVE)
}
