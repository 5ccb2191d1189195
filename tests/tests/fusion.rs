//! Our extension ops on Burn's fusion backend ([`FusedWgpu`] on lavapipe in CI,
//! `FusedCuda` through `scripts/gpu-check.sh`), where each op is a custom operation of the
//! fusion stream: attention forward and gradients against the reference on mixed-length
//! batches, window on and off; a tiny model's gradients unpadded against padded; and a chain
//! of extension ops with element-wise ops between them (which fusion compiles into kernels
//! around ours) against the plain backend. The attention checks assert that our kernels ran
//! (`last_kernel_path`, `last_backward_kernel_path`): the fused backend must not fall back
//! to the reference defaults. The path is recorded process-wide, so no test in this file
//! runs attention on a plain backend (and the Cuda tests run with `--test-threads 1`).
//! (`hf_parity.rs` checks the fused Wgpu model's outputs against HF's.)

#![cfg(any(feature = "wgpu", feature = "cuda"))]

use burn::backend::Autodiff;
use burn::tensor::backend::Backend as BurnBackend;
use burn::tensor::{DType, Tensor};
use modernbert::Backend;
use modernbert_kernels::{
    geglu, last_backward_kernel_path, last_kernel_path, layer_norm, matmul, stable_adamw_step,
    KernelPath, StableAdamWStep,
};
use modernbert_tests::attention::{
    assert_no_failures, check_case, check_gradients, check_model_gradients, max_len_from_env,
    random_lengths, Case,
};
#[cfg(feature = "cuda")]
use modernbert_tests::attention::{cuda_half_backward_path, cuda_half_path};
use modernbert_tests::compare::relative_error;
use modernbert_tests::random::{uniform_tensor, Rng};
#[cfg(feature = "cuda")]
use modernbert_tests::FusedCuda;
#[cfg(feature = "wgpu")]
use modernbert_tests::FusedWgpu;

/// The forward kernel (`expected_path`) against the reference, window off and on, on a
/// mixed-length batch of up to 300 tokens per sequence.
fn check_attention<B: Backend>(dtype: DType, tolerance: f32, expected_path: KernelPath) {
    let device = Default::default();
    let mut rng = Rng::from_env();
    let mut failures = Vec::new();
    for (head_dim, window) in [(64, None), (32, Some(5))] {
        let lengths = random_lengths(&mut rng, max_len_from_env(300), 6);
        let case = Case {
            lengths: &lengths,
            head_dim,
            window,
            dtype,
        };
        failures.extend(check_case::<B>(&device, case, tolerance, expected_path));
    }
    assert_no_failures(&failures, tolerance);
}

/// The tiny model's gradients, unpadded against padded, then that our kernels (the plain
/// ones, f32) ran forward and backward.
fn check_model<B: Backend>() {
    check_model_gradients::<Autodiff<B>>(&Default::default(), 1e-4);
    assert_eq!(
        last_kernel_path(),
        Some(KernelPath::Plain),
        "forward kernel"
    );
    assert_eq!(
        last_backward_kernel_path(),
        Some(KernelPath::Plain),
        "backward kernels"
    );
}

/// The inputs of [`extension_chain`], made once and copied to each backend.
struct ChainInputs<B: BurnBackend> {
    x: Tensor<B, 2>,
    gamma: Tensor<B, 1>,
    beta: Tensor<B, 1>,
    weight: Tensor<B, 2>,
    param: Tensor<B, 1>,
    exp_avg: Tensor<B, 1>,
    exp_avg_sq: Tensor<B, 1>,
}

impl<B: BurnBackend> ChainInputs<B> {
    /// Random inputs: `rows` rows of width `width`, a product to `d_out` columns.
    fn random(rng: &mut Rng, rows: usize, width: usize, d_out: usize) -> Self {
        let device = Default::default();
        let n = rows * d_out;
        let mut random = |len: usize, amplitude: f32, offset: f32| {
            uniform_tensor::<B, 1>(rng, &device, [len], amplitude, offset, DType::F32)
        };
        Self {
            x: random(rows * width, 2.0, 0.5).reshape([rows, width]),
            gamma: random(width, 0.5, 1.0),
            beta: random(width, 0.5, 0.0),
            weight: random(width / 2 * d_out, 0.3, 0.0).reshape([width / 2, d_out]),
            param: random(n, 1.0, 0.0),
            exp_avg: random(n, 1e-2, 0.0),
            exp_avg_sq: random(n, 5e-5, 5e-5),
        }
    }

    /// The same values on backend `C`.
    fn copy<C: BurnBackend>(&self) -> ChainInputs<C> {
        ChainInputs {
            x: copy(&self.x),
            gamma: copy(&self.gamma),
            beta: copy(&self.beta),
            weight: copy(&self.weight),
            param: copy(&self.param),
            exp_avg: copy(&self.exp_avg),
            exp_avg_sq: copy(&self.exp_avg_sq),
        }
    }
}

/// `t`'s values on backend `C`'s default device.
fn copy<B: BurnBackend, C: BurnBackend, const D: usize>(t: &Tensor<B, D>) -> Tensor<C, D> {
    Tensor::from_data(t.to_data(), &Default::default())
}

/// LayerNorm, GeGLU, a matmul and a StableAdamW step on its output, with element-wise ops
/// between each two (tanh of an affine map, exp, a scale: each fused into one kernel on
/// the fused backend); returns the product, the parameter update and both moments.
fn extension_chain<B: Backend>(inputs: ChainInputs<B>) -> [Tensor<B, 1>; 4] {
    let ChainInputs {
        x,
        gamma,
        beta,
        weight,
        param,
        exp_avg,
        exp_avg_sq,
    } = inputs;
    let h = layer_norm(x, gamma, Some(beta), 1e-5).unwrap();
    let h = h.mul_scalar(1.5).add_scalar(0.25).tanh();
    let y = geglu(h).unwrap().exp().sub_scalar(1.0);
    let z = matmul(y, weight);
    let n = z.shape().num_elements();
    let grad = z.clone().mul_scalar(1e-2).reshape([n]);
    let step = StableAdamWStep {
        lr: 8e-4,
        beta_1: 0.9,
        beta_2: 0.98,
        epsilon: 1e-6,
        decay: 1e-5 / 8e-4,
    };
    let (updated, exp_avg, exp_avg_sq) =
        stable_adamw_step(param.clone(), grad, exp_avg, exp_avg_sq, &step).unwrap();
    [z.reshape([n]), updated - param, exp_avg, exp_avg_sq]
}

/// Element-wise ops between extension ops on the fused backend `Fused` give what the plain
/// backend `Plain` gives: fusion keeps our custom ops in order with the kernels it builds
/// around them.
fn check_chain<Fused: Backend, Plain: Backend>() {
    let fused = ChainInputs::<Fused>::random(&mut Rng::from_env(), 37, 64, 24);
    let plain = fused.copy::<Plain>();
    let ours = extension_chain(fused);
    let reference = extension_chain(plain);
    let names = ["product", "update", "exp_avg", "exp_avg_sq"];
    let mut failures = Vec::new();
    for ((name, ours), reference) in names.into_iter().zip(ours).zip(reference) {
        let error = relative_error(copy(&ours), reference);
        println!("{name}: fused vs plain {error:.2e}");
        if error > 1e-5 {
            failures.push(format!("{name}: {error:.2e}"));
        }
    }
    assert!(
        failures.is_empty(),
        "fused differs from plain: {failures:?}"
    );
}

#[cfg(feature = "wgpu")]
#[test]
fn wgpu_fused_attention_matches_reference() {
    check_attention::<FusedWgpu>(DType::F32, 1e-5, KernelPath::Plain);
}

#[cfg(feature = "wgpu")]
#[test]
fn wgpu_fused_attention_gradients_match_reference_autodiff() {
    check_gradients::<Autodiff<FusedWgpu>>(
        &Default::default(),
        DType::F32,
        1e-4,
        max_len_from_env(200),
        &[(64, None), (32, Some(3))],
        Some(KernelPath::Plain),
    );
}

#[cfg(feature = "wgpu")]
#[test]
fn wgpu_fused_model_gradients_unpadded_match_padded() {
    check_model::<FusedWgpu>();
}

#[cfg(feature = "wgpu")]
#[test]
fn wgpu_fused_elementwise_between_extension_ops_matches_plain() {
    check_chain::<FusedWgpu, burn::backend::Wgpu>();
}

/// f32 on the plain kernel, bf16 on the half-precision one (mma.sync on the H200).
#[cfg(feature = "cuda")]
#[test]
fn cuda_fused_attention_matches_reference() {
    check_attention::<FusedCuda>(DType::F32, 1e-5, KernelPath::Plain);
    check_attention::<FusedCuda>(DType::BF16, 1e-2, cuda_half_path());
}

#[cfg(feature = "cuda")]
#[test]
fn cuda_fused_attention_gradients_match_reference_autodiff() {
    let cases = &[(64, None), (64, Some(64)), (128, None)];
    let max_len = max_len_from_env(600);
    let device = Default::default();
    type B = Autodiff<FusedCuda>;
    check_gradients::<B>(
        &device,
        DType::F32,
        1e-4,
        max_len,
        cases,
        Some(KernelPath::Plain),
    );
    check_gradients::<B>(
        &device,
        DType::BF16,
        2e-2,
        max_len,
        cases,
        Some(cuda_half_backward_path()),
    );
}

#[cfg(feature = "cuda")]
#[test]
fn cuda_fused_model_gradients_unpadded_match_padded() {
    check_model::<FusedCuda>();
}

#[cfg(feature = "cuda")]
#[test]
fn cuda_fused_elementwise_between_extension_ops_matches_plain() {
    check_chain::<FusedCuda, burn::backend::Cuda>();
}
