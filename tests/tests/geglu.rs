//! The GeGLU kernel (`modernbert_kernels::geglu`: one CubeCL kernel each way) against the
//! exact reference formulas (`geglu_reference`, `geglu_backward_reference`, themselves
//! checked against f64 on NdArray in the kernels crate), on the same device from the same
//! rounded inputs: widths that take every vector size (I = 1152, 6, 5), a single row, fresh
//! random inputs each run. The backward runs through `Autodiff`. Wgpu (f32) runs in CI on
//! lavapipe; Cuda (f32, f16, bf16) through `scripts/gpu-check.sh`.

use burn::backend::Autodiff;
use burn::tensor::{DType, Tensor};
use modernbert::Backend;
use modernbert_kernels::geglu::{geglu_backward_reference, geglu_reference};
use modernbert_tests::compare::relative_error;
use modernbert_tests::random::{uniform_tensor, Rng};

/// Forward and backward of the kernel vs the reference in `dtype`, within `tolerance`.
fn check_geglu<B: Backend>(device: &B::Device, dtype: DType, tolerance: f32) {
    let mut rng = Rng::from_env();
    for [rows, half] in [[37, 1152], [1, 6], [19, 5]] {
        let x = uniform_tensor::<B, 2>(&mut rng, device, [rows, 2 * half], 4.0, 0.0, dtype);
        let grad = uniform_tensor::<B, 2>(&mut rng, device, [rows, half], 4.0, 0.0, dtype);

        let out = modernbert_kernels::geglu(x.clone()).unwrap();
        assert_eq!(out.dims(), [rows, half]);
        let forward = relative_error(out, geglu_reference(x.clone()));

        let tracked = Tensor::<Autodiff<B>, 2>::from_inner(x.clone()).require_grad();
        let y = modernbert_kernels::geglu(tracked.clone()).unwrap();
        let grads = (y * Tensor::from_inner(grad.clone())).sum().backward();
        let d_x = tracked.grad(&grads).expect("x is tracked");
        let backward = relative_error(d_x, geglu_backward_reference(x, grad));

        println!("{dtype:?} rows {rows}, I {half}: forward {forward:.2e}, backward {backward:.2e}");
        assert!(
            forward <= tolerance && backward <= tolerance,
            "{dtype:?} rows {rows}, I {half}: forward {forward:.2e}, backward {backward:.2e} \
             (tolerance {tolerance:e})"
        );
    }
}

#[cfg(feature = "wgpu")]
#[test]
fn wgpu_geglu_matches_reference_f32() {
    check_geglu::<burn::backend::Wgpu>(&Default::default(), DType::F32, 1e-5);
}

#[cfg(feature = "cuda")]
#[test]
fn cuda_geglu_matches_reference() {
    let device = Default::default();
    check_geglu::<burn::backend::Cuda>(&device, DType::F32, 1e-5);
    // The reference rounds every intermediate to the dtype; the kernel only its output.
    check_geglu::<burn::backend::Cuda>(&device, DType::F16, 5e-3);
    check_geglu::<burn::backend::Cuda>(&device, DType::BF16, 3e-2);
}
