//! `modernbert_kernels::select_rows` and its gradient, on fresh random inputs each run,
//! against the plain-ops reference on NdArray: indices with a heavy repeat (like `[MASK]`
//! in an MLM batch), unused table rows, one index, widths that leave partial column lanes
//! and one that takes two column passes. The gradient must also be bitwise the same when
//! computed twice (the kernels sum in a fixed order). On NdArray both sides are the
//! reference, so this runs on Wgpu (lavapipe in CI) and on Cuda through
//! `scripts/gpu-check.sh`.

use burn::backend::{Autodiff, NdArray};
use burn::tensor::{DType, Tensor};
use modernbert::Backend;
use modernbert_kernels::select_rows;
use modernbert_kernels::select_rows::select_rows_backward_reference;
use modernbert_tests::compare::relative_error;
use modernbert_tests::random::{int_tensor, uniform_tensor, Rng};

/// One case's `(forward error, gradient error)` against the reference, after checking that
/// two runs give the same gradient bit for bit.
fn compare<B: Backend>(
    rng: &mut Rng,
    device: &B::Device,
    rows: usize,
    width: usize,
    n: usize,
    dtype: DType,
) -> (f32, f32) {
    // A third of the indices hit row 3, the rest are uniform over the table.
    let indices: Vec<i64> = (0..n)
        .map(|_| match rng.below(3) {
            0 => 3.min(rows as u64 - 1) as i64,
            _ => rng.below(rows as u64) as i64,
        })
        .collect();
    let table = uniform_tensor::<B, 2>(rng, device, [rows, width], 1.0, 0.0, dtype);
    let grad = uniform_tensor::<B, 2>(rng, device, [n, width], 1.0, 0.0, dtype);

    let run = || {
        let table = Tensor::<Autodiff<B>, 2>::from_inner(table.clone()).require_grad();
        let out = select_rows(table.clone(), int_tensor::<Autodiff<B>>(&indices, device));
        let grads = (out.clone() * Tensor::from_inner(grad.clone()))
            .sum()
            .backward();
        (out.inner(), table.grad(&grads).expect("table gradient"))
    };
    let (out, d_table) = run();
    let (_, again) = run();
    assert_eq!(
        d_table.to_data(),
        again.to_data(),
        "gradient differs between two runs (rows {rows}, width {width}, n {n})"
    );

    let cpu = |t: Tensor<B, 2>| {
        Tensor::<NdArray, 2>::from_data(t.cast(DType::F32).into_data(), &Default::default())
    };
    let cpu_indices = int_tensor::<NdArray>(&indices, &Default::default());
    let out_ref = cpu(table).select(0, cpu_indices.clone());
    let d_ref = select_rows_backward_reference(cpu(grad), cpu_indices, rows);
    (
        relative_error(cpu(out), out_ref),
        relative_error(cpu(d_table), d_ref),
    )
}

fn check<B: Backend>(device: &B::Device, dtype: DType, tolerance: f32) {
    let mut rng = Rng::from_env();
    let mut failures = Vec::new();
    // (rows, width, n): an MLM-like batch, partial lanes, two passes, one index, few rows.
    for (rows, width, n) in [
        (512, 64, 3000),
        (97, 37, 700),
        (40, 1100, 300),
        (8, 16, 1),
        (5, 48, 2000),
    ] {
        let (forward, backward) = compare::<B>(&mut rng, device, rows, width, n, dtype);
        println!("{dtype:?} rows {rows} width {width} n {n}: forward {forward:.2e}, gradient {backward:.2e}");
        if !(forward <= tolerance && backward <= tolerance) {
            failures.push(format!(
                "rows {rows} width {width} n {n}: {forward:.2e} / {backward:.2e}"
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "differs from reference (tolerance {tolerance:e}):\n{}",
        failures.join("\n")
    );
}

#[cfg(feature = "wgpu")]
#[test]
fn wgpu_select_rows_matches_reference() {
    // Rows summing hundreds of gradients in another order than the reference: ~1e-6.
    check::<burn::backend::Wgpu>(&Default::default(), DType::F32, 1e-5);
}

/// Under Burn's fusion: the gradient is our custom op in the fusion stream.
#[cfg(feature = "wgpu")]
#[test]
fn fused_wgpu_select_rows_matches_reference() {
    check::<modernbert_tests::FusedWgpu>(&Default::default(), DType::F32, 1e-5);
}

#[cfg(feature = "cuda")]
#[test]
fn cuda_select_rows_matches_reference() {
    let device = Default::default();
    check::<burn::backend::Cuda>(&device, DType::F32, 1e-5);
    // The sums are f32 in the kernel; only the output's rounding differs.
    check::<burn::backend::Cuda>(&device, DType::BF16, 1e-2);
    check::<modernbert_tests::FusedCuda>(&device, DType::BF16, 1e-2);
}
