//! The LayerNorm kernels (`modernbert_kernels::layer_norm`: one CubeCL kernel forward, one
//! backward plus a column sum) against the exact reference formulas (`layer_norm_reference`,
//! `layer_norm_backward_reference`, checked against f64 on NdArray in the kernels crate) and
//! against Burn's own `nn::LayerNorm` (forward, and gradients of x, γ, β through
//! `Autodiff`). Fresh random inputs each run, rows sitting away from zero; widths 7, 768,
//! 1000, 1024 and 2051 (wider than the unrolled register path on Wgpu), 1 to 3000 rows,
//! with and without β; the full outputs are compared, so an unwritten row fails. The
//! references run in f32 on the same rounded inputs. Wgpu (f32) and NdArray run in CI
//! (lavapipe); Cuda (f32, f16, bf16) through `scripts/gpu-check.sh`.

use burn::backend::Autodiff;
use burn::module::Param;
use burn::nn::LayerNormConfig;
use burn::tensor::{DType, Tensor};
use modernbert::Backend;
use modernbert_kernels::layer_norm::{layer_norm_backward_reference, layer_norm_reference};
use modernbert_tests::compare::relative_error;
use modernbert_tests::random::{uniform_tensor, Rng};

const EPSILON: f64 = 1e-5;

/// Output and gradients `(y, dx, dγ, dβ)` of one LayerNorm.
type Results<B> = (
    Tensor<B, 2>,
    Tensor<B, 2>,
    Tensor<B, 1>,
    Option<Tensor<B, 1>>,
);

/// Our layer norm forward and, through `Autodiff`, its gradients for output gradient `grad`.
fn ours<B: Backend>(
    x: &Tensor<B, 2>,
    gamma: &Tensor<B, 1>,
    beta: &Option<Tensor<B, 1>>,
    grad: &Tensor<B, 2>,
) -> Results<B> {
    let y =
        modernbert_kernels::layer_norm(x.clone(), gamma.clone(), beta.clone(), EPSILON).unwrap();
    let track = |t: &Tensor<B, 1>| Tensor::<Autodiff<B>, 1>::from_inner(t.clone()).require_grad();
    let x = Tensor::<Autodiff<B>, 2>::from_inner(x.clone()).require_grad();
    let (gamma, beta) = (track(gamma), beta.as_ref().map(track));
    let out =
        modernbert_kernels::layer_norm(x.clone(), gamma.clone(), beta.clone(), EPSILON).unwrap();
    let grads = (out * Tensor::from_inner(grad.clone())).sum().backward();
    (
        y,
        x.grad(&grads).expect("x is tracked"),
        gamma.grad(&grads).expect("gamma is tracked"),
        beta.map(|b| b.grad(&grads).expect("beta is tracked")),
    )
}

/// Burn's `nn::LayerNorm` forward and gradients (autodiff through its plain ops).
fn burns<B: Backend>(
    x: &Tensor<B, 2>,
    gamma: &Tensor<B, 1>,
    beta: &Option<Tensor<B, 1>>,
    grad: &Tensor<B, 2>,
) -> Results<B> {
    let device = x.device();
    let mut norm = LayerNormConfig::new(x.dims()[1])
        .with_epsilon(EPSILON)
        .with_bias(beta.is_some())
        .init::<Autodiff<B>>(&device);
    norm.gamma = Param::from_tensor(Tensor::from_inner(gamma.clone()));
    norm.beta = beta
        .as_ref()
        .map(|b| Param::from_tensor(Tensor::from_inner(b.clone())));
    let x_tracked = Tensor::<Autodiff<B>, 2>::from_inner(x.clone()).require_grad();
    let out = norm.forward(x_tracked.clone());
    let y = out.clone().inner();
    let grads = (out * Tensor::from_inner(grad.clone())).sum().backward();
    (
        y,
        x_tracked.grad(&grads).expect("x is tracked"),
        norm.gamma.val().grad(&grads).expect("gamma is tracked"),
        norm.beta
            .as_ref()
            .map(|b| b.val().grad(&grads).expect("beta is tracked")),
    )
}

/// The exact reference formulas.
fn reference<B: Backend>(
    x: &Tensor<B, 2>,
    gamma: &Tensor<B, 1>,
    beta: &Option<Tensor<B, 1>>,
    grad: &Tensor<B, 2>,
) -> Results<B> {
    let (y, mean, rstd) = layer_norm_reference(x.clone(), gamma.clone(), beta.clone(), EPSILON);
    let (d_x, d_gamma, d_beta) = layer_norm_backward_reference(
        x.clone(),
        gamma.clone(),
        mean,
        rstd,
        grad.clone(),
        beta.is_some(),
    );
    (y, d_x, d_gamma, d_beta)
}

/// The largest relative error of each result, `[y, dx, dγ, dβ]` (dβ 0 without β).
fn errors<B: Backend>(a: Results<B>, b: Results<B>) -> [f32; 4] {
    let d_beta = match (a.3, b.3) {
        (Some(a), Some(b)) => relative_error(a, b),
        (None, None) => 0.0,
        _ => panic!("dβ present on one side only"),
    };
    [
        relative_error(a.0, b.0),
        relative_error(a.1, b.1),
        relative_error(a.2, b.2),
        d_beta,
    ]
}

/// `[1.0e-6, …]`.
fn show(errors: &[f32; 4]) -> String {
    let shown: Vec<String> = errors.iter().map(|e| format!("{e:.1e}")).collect();
    format!("[{}]", shown.join(", "))
}

/// Our kernels in `dtype` vs the reference and Burn's LayerNorm in f32 on the same rounded
/// inputs, within `tolerance` (relative to each result's largest magnitude).
fn check_layer_norm<B: Backend>(device: &B::Device, dtype: DType, tolerance: f32) {
    let mut rng = Rng::from_env();
    let cases = [
        [1, 7],
        [3000, 768],
        [1, 1000],
        [257, 1000],
        [1000, 1024],
        [5, 2051],
    ];
    for [rows, width] in cases {
        for with_beta in [false, true] {
            let x = uniform_tensor::<B, 2>(&mut rng, device, [rows, width], 3.0, 2.0, dtype);
            let gamma = uniform_tensor::<B, 1>(&mut rng, device, [width], 0.5, 1.0, dtype);
            let beta = with_beta
                .then(|| uniform_tensor::<B, 1>(&mut rng, device, [width], 0.5, 0.0, dtype));
            let grad = uniform_tensor::<B, 2>(&mut rng, device, [rows, width], 1.0, 0.0, dtype);

            let ours = ours(&x, &gamma, &beta, &grad);
            assert_eq!(ours.0.dtype(), dtype, "output dtype");
            let f32 = |t: &Tensor<B, 2>| t.clone().cast(DType::F32);
            let f32_1 = |t: &Tensor<B, 1>| t.clone().cast(DType::F32);
            let (x, gamma, beta, grad) =
                (f32(&x), f32_1(&gamma), beta.as_ref().map(f32_1), f32(&grad));
            let vs_reference = errors(ours.clone(), reference(&x, &gamma, &beta, &grad));
            let vs_burn = errors(ours, burns(&x, &gamma, &beta, &grad));

            let case = format!("{dtype:?} [{rows}, {width}] beta {with_beta}");
            println!(
                "{case}: [y, dx, dgamma, dbeta] vs reference {}, vs Burn {}",
                show(&vs_reference),
                show(&vs_burn)
            );
            for (what, errors) in [("reference", vs_reference), ("Burn's LayerNorm", vs_burn)] {
                assert!(
                    errors.iter().all(|&e| e <= tolerance),
                    "{case}: [y, dx, dgamma, dbeta] vs {what} {} (tolerance {tolerance:e})",
                    show(&errors)
                );
            }
        }
    }
}

#[cfg(feature = "ndarray")]
#[test]
fn ndarray_layer_norm_matches_reference() {
    check_layer_norm::<burn::backend::NdArray>(&Default::default(), DType::F32, 1e-5);
}

#[cfg(feature = "wgpu")]
#[test]
fn wgpu_layer_norm_matches_reference_f32() {
    check_layer_norm::<burn::backend::Wgpu>(&Default::default(), DType::F32, 1e-5);
}

#[cfg(feature = "cuda")]
#[test]
fn cuda_layer_norm_matches_reference() {
    let device = Default::default();
    check_layer_norm::<burn::backend::Cuda>(&device, DType::F32, 1e-5);
    // The references run in f32 on the rounded inputs; the kernel rounds only its outputs.
    check_layer_norm::<burn::backend::Cuda>(&device, DType::F16, 2e-3);
    check_layer_norm::<burn::backend::Cuda>(&device, DType::BF16, 1e-2);
}
