//! `modernbert_kernels::cross_entropy` (per-row loss, arg-max, gradient) against the
//! plain-ops reference on NdArray, on fresh random logits each run: fewer classes than a
//! cube's units, a vocabulary-sized row, rows with ties at the maximum (the first column
//! must win), large logits (the online max must keep exp finite), and a label outside the
//! classes (NaN loss). On NdArray both sides are the reference, so this runs on Wgpu
//! (lavapipe in CI) and on Cuda through `scripts/gpu-check.sh`.

use burn::backend::{Autodiff, NdArray};
use burn::tensor::{DType, Int, Tensor};
use modernbert::Backend;
use modernbert_kernels::cross_entropy::{
    cross_entropy_backward_reference, cross_entropy_reference,
};
use modernbert_kernels::{cross_entropy, CrossEntropyError, CrossEntropyOutput};
use modernbert_tests::compare::relative_error;
use modernbert_tests::random::{int_tensor, uniform_tensor, Rng};

/// `(loss error, gradient error)` against the reference for random `[rows, classes]` logits
/// of amplitude `amplitude`; rows 0 and 1 are constant (all classes tie), and the arg-max
/// must equal the reference's everywhere.
fn compare<B: Backend>(
    rng: &mut Rng,
    device: &B::Device,
    rows: usize,
    classes: usize,
    amplitude: f32,
    dtype: DType,
) -> (f32, f32) {
    let logits = uniform_tensor::<B, 2>(rng, device, [rows, classes], amplitude, 0.0, dtype);
    let ties = Tensor::<B, 2>::ones([2.min(rows), classes], device).cast(dtype);
    let logits = logits.slice_assign([0..2.min(rows), 0..classes], ties);
    let labels: Vec<i64> = (0..rows)
        .map(|_| rng.below(classes as u64) as i64)
        .collect();
    let weights = uniform_tensor::<B, 1>(rng, device, [rows], 1.0, 0.0, DType::F32);

    let tracked = Tensor::<Autodiff<B>, 2>::from_inner(logits.clone()).require_grad();
    let CrossEntropyOutput { loss, predicted } =
        cross_entropy(tracked.clone(), int_tensor::<Autodiff<B>>(&labels, device))
            .expect("valid shapes");
    let grads = (loss.clone() * Tensor::from_inner(weights.clone()))
        .sum()
        .backward();
    let d_logits = tracked.grad(&grads).expect("logits gradient");

    let cpu2 = |t: Tensor<B, 2>| {
        Tensor::<NdArray, 2>::from_data(t.cast(DType::F32).into_data(), &Default::default())
    };
    let cpu1 =
        |t: Tensor<B, 1>| Tensor::<NdArray, 1>::from_data(t.into_data(), &Default::default());
    let x = cpu2(logits);
    let (loss_ref, lse_ref, predicted_ref) = cross_entropy_reference(
        x.clone(),
        int_tensor::<NdArray>(&labels, &Default::default()),
    );
    let d_ref = cross_entropy_backward_reference(
        x,
        int_tensor::<NdArray>(&labels, &Default::default()),
        lse_ref,
        cpu1(weights),
    );
    assert_eq!(
        predicted.into_data().convert::<i64>(),
        predicted_ref.into_data().convert::<i64>(),
        "arg-max (rows {rows}, classes {classes})"
    );
    (
        relative_error(cpu1(loss.inner()), loss_ref),
        relative_error(cpu2(d_logits), d_ref),
    )
}

fn check<B: Backend>(device: &B::Device, dtype: DType, loss_tolerance: f32, grad_tolerance: f32) {
    let mut rng = Rng::from_env();
    let mut failures = Vec::new();
    for (rows, classes, amplitude) in [
        (37, 7, 3.0),
        (64, 1000, 8.0),
        (5, 50368, 4.0),
        (9, 300, 80.0),
    ] {
        let (loss, grad) = compare::<B>(&mut rng, device, rows, classes, amplitude, dtype);
        println!("{dtype:?} rows {rows} classes {classes} amplitude {amplitude}: loss {loss:.2e}, gradient {grad:.2e}");
        if !(loss <= loss_tolerance && grad <= grad_tolerance) {
            failures.push(format!(
                "rows {rows} classes {classes}: {loss:.2e} / {grad:.2e}"
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "differs from reference:\n{}",
        failures.join("\n")
    );

    // A label outside the classes gives NaN for its row only.
    let logits = Tensor::<B, 2>::zeros([2, 4], device);
    let labels = int_tensor::<B>(&[1, 4], device);
    let loss: Vec<f32> = cross_entropy(logits, labels)
        .unwrap()
        .loss
        .into_data()
        .to_vec()
        .unwrap();
    assert!(
        (loss[0] - 4f32.ln()).abs() < 1e-6 && loss[1].is_nan(),
        "{loss:?}"
    );
}

#[cfg(feature = "wgpu")]
#[test]
fn wgpu_cross_entropy_matches_reference() {
    check::<burn::backend::Wgpu>(&Default::default(), DType::F32, 1e-5, 1e-5);
}

/// Under Burn's fusion: forward and gradient are our custom ops in the fusion stream.
#[cfg(feature = "wgpu")]
#[test]
fn fused_wgpu_cross_entropy_matches_reference() {
    check::<modernbert_tests::FusedWgpu>(&Default::default(), DType::F32, 1e-5, 1e-5);
}

#[cfg(feature = "cuda")]
#[test]
fn cuda_cross_entropy_matches_reference() {
    let device = Default::default();
    check::<burn::backend::Cuda>(&device, DType::F32, 1e-5, 1e-5);
    // bf16 logits: the loss is still f32 arithmetic on the same values; the gradient is
    // rounded to bf16.
    check::<burn::backend::Cuda>(&device, DType::BF16, 1e-5, 1e-2);
    check::<modernbert_tests::FusedCuda>(&device, DType::BF16, 1e-5, 1e-2);
}

#[cfg(feature = "ndarray")]
#[test]
fn mismatched_labels_are_refused() {
    let device = Default::default();
    let logits = Tensor::<NdArray, 2>::zeros([3, 5], &device);
    let labels = Tensor::<NdArray, 1, Int>::zeros([2], &device);
    let error = cross_entropy(logits, labels).unwrap_err();
    assert_eq!(error, CrossEntropyError::Labels { rows: 3, labels: 2 });
    let empty = cross_entropy(
        Tensor::<NdArray, 2>::zeros([3, 0], &device),
        Tensor::zeros([3], &device),
    );
    assert!(
        matches!(empty, Err(CrossEntropyError::NoClasses(_))),
        "{empty:?}"
    );
}
