//! Our matmul (`modernbert_kernels::matmul`: cuBLASLt on Cuda, the exact f32 CubeCL matmul
//! on Wgpu) against an f64 product of the same (rounded) inputs computed on the host, and
//! against Burn's own matmul: odd sizes, a single token, transposed operands (the layouts of
//! the backward products), batches and a broadcast operand, on fresh random inputs each run.
//! The fused linear (`Backend::fused_linear`: bias and residual in cuBLASLt's epilogue on
//! Cuda, Burn's adds elsewhere) against the same f64 product plus the additions.
//! Wgpu (f32) runs in CI on lavapipe; Cuda (f32, f16, bf16, a dependency chain that would
//! expose an ordering bug between cuBLASLt's stream and Burn's, and gradients under autodiff)
//! runs through `scripts/gpu-check.sh`.

use burn::tensor::{DType, Tensor, TensorData, TensorPrimitive};
use modernbert::Backend;
use modernbert_tests::random::Rng;

/// One product `lhs [batch, m, k] · rhs [rhs_batch, k, n]`, each operand stored either as
/// laid out or transposed (then viewed through `swap_dims`).
#[derive(Debug, Clone, Copy)]
struct Case {
    batch: usize,
    /// 1 broadcasts rhs over the batch.
    rhs_batch: usize,
    m: usize,
    k: usize,
    n: usize,
    lhs_transposed: bool,
    rhs_transposed: bool,
}

const fn case(m: usize, k: usize, n: usize, lhs_t: bool, rhs_t: bool) -> Case {
    Case {
        batch: 1,
        rhs_batch: 1,
        m,
        k,
        n,
        lhs_transposed: lhs_t,
        rhs_transposed: rhs_t,
    }
}

const CASES: [Case; 9] = [
    case(1, 768, 2304, false, false),  // one token through Wqkv
    case(37, 77, 53, false, false),    // nothing a multiple of 8
    case(129, 768, 768, false, false), // attention Wo
    case(65, 1152, 768, false, true),  // dX = dY·Wᵀ (W read transposed)
    case(384, 131, 200, true, false),  // dW = Xᵀ·dY (X read transposed)
    case(33, 19, 41, true, true),      // both transposed
    Case {
        batch: 6,
        rhs_batch: 6,
        m: 33,
        k: 64,
        n: 47,
        lhs_transposed: false,
        rhs_transposed: true, // q·kᵀ in the padded attention path
    },
    Case {
        batch: 3,
        rhs_batch: 1, // one weight for every batch entry
        m: 21,
        k: 40,
        n: 9,
        lhs_transposed: false,
        rhs_transposed: false,
    },
    case(1, 1, 1, false, false),
];

/// A `[batch, rows, cols]` operand with random values, stored transposed when asked; also
/// returns its values as the device holds them in `dtype`, in `[batch, rows, cols]` order.
fn operand<B: Backend>(
    rng: &mut Rng,
    device: &B::Device,
    [batch, rows, cols]: [usize; 3],
    transposed: bool,
    dtype: DType,
) -> (Tensor<B, 3>, Vec<f32>) {
    let stored = if transposed {
        [batch, cols, rows]
    } else {
        [batch, rows, cols]
    };
    let values: Vec<f32> = (0..batch * rows * cols).map(|_| rng.symmetric()).collect();
    let tensor = Tensor::<B, 3>::from_data(TensorData::new(values, stored), device).cast(dtype);
    let tensor = if transposed {
        tensor.swap_dims(1, 2)
    } else {
        tensor
    };
    let rounded = tensor
        .clone()
        .cast(DType::F32)
        .into_data()
        .convert::<f32>()
        .to_vec()
        .unwrap();
    (tensor, rounded)
}

/// `lhs · rhs` in f64 on the host, for `[batch, m, k] · [rhs_batch, k, n]`.
fn host_matmul(lhs: &[f32], rhs: &[f32], case: &Case) -> Vec<f64> {
    let Case { batch, m, k, n, .. } = *case;
    let mut out = vec![0f64; batch * m * n];
    for b in 0..batch {
        let rb = if case.rhs_batch == 1 { 0 } else { b };
        for i in 0..m {
            for p in 0..k {
                let a = lhs[(b * m + i) * k + p] as f64;
                let row = &rhs[(rb * k + p) * n..(rb * k + p + 1) * n];
                let dst = &mut out[(b * m + i) * n..(b * m + i + 1) * n];
                for (d, &r) in dst.iter_mut().zip(row) {
                    *d += a * r as f64;
                }
            }
        }
    }
    out
}

/// `max |ours - reference| / max |reference|`, refusing non-finite values.
fn relative_error(ours: &[f32], reference: &[f64]) -> f64 {
    assert_eq!(ours.len(), reference.len(), "output size");
    assert!(ours.iter().all(|v| v.is_finite()), "non-finite output");
    let diff = ours
        .iter()
        .zip(reference)
        .map(|(&a, &b)| (a as f64 - b).abs())
        .fold(0f64, f64::max);
    let scale = reference.iter().map(|b| b.abs()).fold(0f64, f64::max);
    diff / scale.max(f64::MIN_POSITIVE)
}

fn values<B: Backend>(t: Tensor<B, 3>) -> Vec<f32> {
    t.cast(DType::F32)
        .into_data()
        .convert::<f32>()
        .to_vec()
        .unwrap()
}

/// Every case in `dtype`: ours vs the host (≤ `tolerance`) and vs Burn's matmul
/// (≤ `burn_tolerance`, looser where Burn computes f32 in TF32).
fn check_matmul<B: Backend>(device: &B::Device, dtype: DType, tolerance: f64, burn_tolerance: f64) {
    let mut rng = Rng::from_env();
    let mut failures = Vec::new();
    for case in CASES {
        let (lhs, lhs_values) = operand::<B>(
            &mut rng,
            device,
            [case.batch, case.m, case.k],
            case.lhs_transposed,
            dtype,
        );
        let (rhs, rhs_values) = operand::<B>(
            &mut rng,
            device,
            [case.rhs_batch, case.k, case.n],
            case.rhs_transposed,
            dtype,
        );
        let reference = host_matmul(&lhs_values, &rhs_values, &case);
        let ours = values(modernbert_kernels::matmul(lhs.clone(), rhs.clone()));
        let burns = B::float_matmul(lhs.into_primitive().tensor(), rhs.into_primitive().tensor());
        let burns = values(Tensor::<B, 3>::from_primitive(TensorPrimitive::Float(
            burns,
        )));
        let (error, vs_burn) = (
            relative_error(&ours, &reference),
            relative_error(&ours, &burns.iter().map(|&v| v as f64).collect::<Vec<_>>()),
        );
        println!("{dtype:?} {case:?}: vs f64 {error:.2e}, vs Burn {vs_burn:.2e}");
        if error > tolerance || vs_burn > burn_tolerance {
            failures.push(format!(
                "{case:?}: vs f64 {error:.2e}, vs Burn {vs_burn:.2e}"
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{dtype:?} matmul off (tolerance {tolerance:e}, vs Burn {burn_tolerance:e}):\n{}",
        failures.join("\n")
    );
}

/// `x [m, k] · W [k, n] (+ bias [n]) (+ residual [m, n])` for each case, in `dtype`, vs the
/// host (≤ `tolerance`).
fn check_fused_linear<B: Backend>(device: &B::Device, dtype: DType, tolerance: f64) {
    let mut rng = Rng::from_env();
    let mut failures = Vec::new();
    // (m, k, n, bias, residual): a token through Wqkv, odd sizes, attention Wo, mlp Wo.
    let cases = [
        (1, 768, 2304, true, true),
        (37, 77, 53, true, false),
        (129, 768, 768, false, true),
        (65, 1152, 768, true, true),
    ];
    for (m, k, n, with_bias, with_residual) in cases {
        let case = case(m, k, n, false, false);
        let mut draw = |shape: [usize; 2]| {
            let (t, v) = operand::<B>(&mut rng, device, [1, shape[0], shape[1]], false, dtype);
            (t.reshape(shape), v)
        };
        let ((x, x_values), (w, w_values)) = (draw([m, k]), draw([k, n]));
        let (bias, bias_values) = draw([1, n]);
        let (residual, residual_values) = draw([m, n]);
        let mut reference = host_matmul(&x_values, &w_values, &case);
        for (i, r) in reference.iter_mut().enumerate() {
            if with_bias {
                *r += bias_values[i % n] as f64;
            }
            if with_residual {
                *r += residual_values[i] as f64;
            }
        }
        let primitive = |t: Tensor<B, 2>| t.into_primitive().tensor();
        let ours = B::fused_linear(
            primitive(x),
            primitive(w),
            with_bias.then(|| bias.reshape([n]).into_primitive().tensor()),
            with_residual.then(|| primitive(residual)),
        );
        let ours = Tensor::<B, 2>::from_primitive(TensorPrimitive::Float(ours));
        let error = relative_error(&values(ours.unsqueeze()), &reference);
        println!("{dtype:?} fused linear {m}x{k}x{n} bias {with_bias} residual {with_residual}: {error:.2e}");
        if error > tolerance {
            failures.push(format!(
                "{m}x{k}x{n} bias {with_bias} residual {with_residual}: {error:.2e}"
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{dtype:?} fused linear off (tolerance {tolerance:e}):\n{}",
        failures.join("\n")
    );
}

#[cfg(feature = "wgpu")]
#[test]
fn wgpu_fused_linear_matches_f64_f32() {
    check_fused_linear::<burn::backend::Wgpu>(&Default::default(), DType::F32, 1e-5);
}

#[cfg(feature = "wgpu")]
#[test]
fn wgpu_matmul_matches_f64_f32() {
    check_matmul::<burn::backend::Wgpu>(&Default::default(), DType::F32, 1e-5, 1e-5);
}

#[cfg(feature = "cuda")]
mod cuda {
    use super::*;
    use burn::backend::{Autodiff, Cuda};

    #[test]
    fn cuda_matmul_runs_on_cublaslt() {
        assert_eq!(modernbert_kernels::cublaslt_status(), Ok(()));
    }

    #[test]
    fn cuda_matmul_matches_f64() {
        let device = Default::default();
        // Burn's Cuda matmul computes f32 in TF32 (~1e-3); ours must not.
        check_matmul::<Cuda>(&device, DType::F32, 1e-5, 5e-3);
        check_matmul::<Cuda>(&device, DType::F16, 2e-3, 2e-2);
        check_matmul::<Cuda>(&device, DType::BF16, 1e-2, 2e-2);
    }

    #[test]
    fn cuda_fused_linear_matches_f64() {
        let device = Default::default();
        check_fused_linear::<Cuda>(&device, DType::F32, 1e-5);
        check_fused_linear::<Cuda>(&device, DType::F16, 2e-3);
        check_fused_linear::<Cuda>(&device, DType::BF16, 1e-2);
    }

    /// Twenty dependent products, each feeding Burn kernels that feed the next one: if
    /// cuBLASLt's stream were not ordered against Burn's, some step would read stale data.
    #[test]
    fn cuda_matmul_chain_is_ordered() {
        let device = Default::default();
        let mut rng = Rng::from_env();
        let size = 256;
        let case = case(size, size, size, false, false);
        let (w, w_values) = operand::<Cuda>(&mut rng, &device, [1, size, size], false, DType::F32);
        let (mut x, mut x_values) =
            operand::<Cuda>(&mut rng, &device, [1, size, size], false, DType::F32);
        for step in 0..20 {
            // x ← tanh(x·w / 8) + x / 2, on the device and on the host.
            let y = modernbert_kernels::matmul(x.clone(), w.clone());
            x = (y / 8.0).tanh() + x / 2.0;
            let y_host = host_matmul(&x_values, &w_values, &case);
            x_values = y_host
                .iter()
                .zip(&x_values)
                .map(|(&y, &x)| ((y / 8.0).tanh() + x as f64 / 2.0) as f32)
                .collect();
            let reference: Vec<f64> = x_values.iter().map(|&v| v as f64).collect();
            let error = relative_error(&values(x.clone()), &reference);
            // f32 rounding differences (device vs host tanh, summation order) compound
            // over the steps (1.0e-5 seen at step 18); a stale operand is off by O(0.1).
            assert!(error < 1e-4, "step {step}: relative error {error:.2e}");
        }
    }

    /// `dX = dY·Wᵀ` and `dW = Xᵀ·dY` through autodiff, in bf16, vs the host.
    #[test]
    fn cuda_matmul_gradients_match_f64() {
        type B = Autodiff<Cuda>;
        let device = Default::default();
        let mut rng = Rng::from_env();
        let (tokens, d_in, d_out) = (77, 96, 40);
        for dtype in [DType::F32, DType::BF16] {
            let (x, x_values) = operand::<B>(&mut rng, &device, [1, tokens, d_in], false, dtype);
            let (w, w_values) = operand::<B>(&mut rng, &device, [1, d_in, d_out], false, dtype);
            let (dy, dy_values) = operand::<B>(&mut rng, &device, [1, tokens, d_out], false, dtype);
            let (x, w) = (x.require_grad(), w.require_grad());
            let y = modernbert_kernels::matmul(x.clone(), w.clone());
            let grads = (y.cast(DType::F32) * dy.cast(DType::F32)).sum().backward();
            let dx = values(x.grad(&grads).unwrap());
            let dw = values(w.grad(&grads).unwrap());
            let transpose = |v: &[f32], rows: usize, cols: usize| -> Vec<f32> {
                (0..cols * rows)
                    .map(|i| v[(i % rows) * cols + i / rows])
                    .collect()
            };
            let dx_ref = host_matmul(
                &dy_values,
                &transpose(&w_values, d_in, d_out),
                &case(tokens, d_out, d_in, false, false),
            );
            let dw_ref = host_matmul(
                &transpose(&x_values, tokens, d_in),
                &dy_values,
                &case(d_in, tokens, d_out, false, false),
            );
            let tolerance = if dtype == DType::F32 { 1e-5 } else { 2e-2 };
            let (e_dx, e_dw) = (relative_error(&dx, &dx_ref), relative_error(&dw, &dw_ref));
            println!("{dtype:?} gradients: dX {e_dx:.2e}, dW {e_dw:.2e}");
            assert!(
                e_dx < tolerance && e_dw < tolerance,
                "{dtype:?}: dX {e_dx:.2e}, dW {e_dw:.2e}"
            );
        }
    }
}
