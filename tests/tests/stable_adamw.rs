//! The StableAdamW kernels (`modernbert_kernels::stable_adamw`) against the plain-ops
//! reference on NdArray (the same inputs, copied over), on fresh random tensors each run: with and without weight
//! decay, with the rms below 1 (η = lr) and above it (the update is clipped), at a size that
//! takes several cubes and one that does not fill a cube. On NdArray both sides are the
//! reference, so this runs on Wgpu (lavapipe in CI) and on Cuda through
//! `scripts/gpu-check.sh`.

use burn::backend::NdArray;
use burn::tensor::{DType, Distribution, Tensor};
use modernbert::Backend;
use modernbert_kernels::stable_adamw::stable_adamw_reference;
use modernbert_kernels::{stable_adamw_step, StableAdamWError, StableAdamWStep};
use modernbert_tests::compare::relative_error;

/// Largest relative error of the three outputs, kernel vs reference, for one case. `v_scale`
/// sets the old second moment against `g²`: small values push the rms above 1.
fn compare<B: Backend>(
    device: &B::Device,
    n: usize,
    decay: f64,
    v_scale: f64,
    dtype: DType,
) -> f32 {
    let random = |low: f64, high: f64| {
        Tensor::<B, 1>::random([n], Distribution::Uniform(low, high), device).cast(dtype)
    };
    let param = random(-1.0, 1.0);
    let grad = random(-1e-2, 1e-2);
    let exp_avg = random(-1e-2, 1e-2);
    let exp_avg_sq = random(0.0, 1e-4 * v_scale);
    let step = StableAdamWStep {
        lr: 8e-4,
        beta_1: 0.9,
        beta_2: 0.98,
        epsilon: 1e-6,
        decay,
    };
    let (p, m, v) = stable_adamw_step(
        param.clone(),
        grad.clone(),
        exp_avg.clone(),
        exp_avg_sq.clone(),
        &step,
    )
    .unwrap();
    let cpu = |t: Tensor<B, 1>| {
        Tensor::<NdArray, 1>::from_data(t.cast(DType::F32).into_data(), &Default::default())
    };
    let (p_ref, m_ref, v_ref) = stable_adamw_reference(
        cpu(param.clone()),
        cpu(grad),
        cpu(exp_avg),
        cpu(exp_avg_sq),
        &step,
    );
    // The update is small against θ: compare it, not θ itself.
    let update = relative_error(cpu(p - param.clone()), p_ref - cpu(param));
    let moments = relative_error(cpu(m), m_ref).max(relative_error(cpu(v), v_ref));
    update.max(moments)
}

fn check<B: Backend>(device: &B::Device, dtype: DType, tolerance: f32) {
    let mut failures = Vec::new();
    for n in [1000, 100_000, 262_144, 300_000] {
        for decay in [0.0, 1e-5 / 8e-4] {
            for v_scale in [1.0, 1e-3] {
                let error = compare::<B>(device, n, decay, v_scale, dtype);
                println!("{dtype:?} n {n} decay {decay} v_scale {v_scale}: {error:.2e}");
                if !(error <= tolerance) {
                    failures.push(format!(
                        "n {n} decay {decay} v_scale {v_scale}: {error:.2e}"
                    ));
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "kernel differs from reference (tolerance {tolerance:e}):\n{}",
        failures.join("\n")
    );
}

#[cfg(feature = "wgpu")]
#[test]
fn wgpu_stable_adamw_matches_reference() {
    check::<burn::backend::Wgpu>(&Default::default(), DType::F32, 3e-5);
}

#[cfg(feature = "cuda")]
#[test]
fn cuda_stable_adamw_matches_reference() {
    check::<burn::backend::Cuda>(&Default::default(), DType::F32, 3e-5);
}

#[cfg(feature = "ndarray")]
#[test]
fn mismatched_shapes_are_refused() {
    type B = NdArray;
    let device = Default::default();
    let t = |n: usize| Tensor::<B, 2>::zeros([n, 4], &device);
    let step = StableAdamWStep {
        lr: 1e-3,
        beta_1: 0.0,
        beta_2: 0.0,
        epsilon: 1e-6,
        decay: 0.0,
    };
    let error = stable_adamw_step(t(3), t(3), t(2), t(3), &step).unwrap_err();
    assert!(matches!(error, StableAdamWError::Shape { .. }));
    assert!(error.to_string().contains("[2, 4]"), "{error}");
}
