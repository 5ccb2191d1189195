//! Our extension ops on Burn's fusion backend over Wgpu ([`FusedWgpu`], lavapipe in CI),
//! where each op is a custom operation of the fusion stream: attention forward and
//! gradients against the reference on mixed-length batches, window on and off; a tiny
//! model's gradients unpadded against padded; and a chain of extension ops with element-wise
//! ops between them (which fusion compiles into kernels around ours) against the plain Wgpu
//! backend. The attention checks assert that our kernels ran (`last_kernel_path`,
//! `last_backward_kernel_path`): the fused backend must not fall back to the reference
//! defaults. The path is recorded process-wide, so no test in this file runs attention on
//! another backend. (`hf_parity.rs` checks the fused model's outputs against HF's.)

#![cfg(feature = "wgpu")]

use burn::backend::{Autodiff, Wgpu};
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
use modernbert_tests::compare::relative_error;
use modernbert_tests::random::{uniform_tensor, Rng};
use modernbert_tests::FusedWgpu;

#[test]
fn fused_attention_matches_reference() {
    let device = Default::default();
    let mut rng = Rng::from_env();
    let mut failures = Vec::new();
    for (head_dim, window) in [(64, None), (32, Some(5))] {
        let lengths = random_lengths(&mut rng, max_len_from_env(300), 6);
        let case = Case {
            lengths: &lengths,
            head_dim,
            window,
            dtype: DType::F32,
        };
        failures.extend(check_case::<FusedWgpu>(
            &device,
            case,
            1e-5,
            KernelPath::Plain,
        ));
    }
    assert_no_failures(&failures, 1e-5);
}

#[test]
fn fused_attention_gradients_match_reference_autodiff() {
    check_gradients::<Autodiff<FusedWgpu>>(
        &Default::default(),
        DType::F32,
        1e-4,
        max_len_from_env(200),
        &[(64, None), (32, Some(3))],
        Some(KernelPath::Plain),
    );
}

#[test]
fn fused_model_gradients_unpadded_match_padded() {
    check_model_gradients::<Autodiff<FusedWgpu>>(&Default::default(), 1e-4);
    assert_eq!(last_kernel_path(), Some(KernelPath::Plain), "forward kernel");
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

/// Element-wise ops between extension ops on the fused backend give what the plain backend
/// gives: fusion keeps our custom ops in order with the kernels it builds around them.
#[test]
fn fused_elementwise_between_extension_ops_matches_plain_wgpu() {
    let device = Default::default();
    let mut rng = Rng::from_env();
    let (rows, width, d_out) = (37, 64, 24);
    let n = rows * d_out;
    let mut random = |shape: &[usize], amplitude: f32, offset: f32| {
        uniform_tensor::<FusedWgpu, 1>(
            &mut rng,
            &device,
            [shape.iter().product()],
            amplitude,
            offset,
            DType::F32,
        )
    };
    let x = random(&[rows, width], 2.0, 0.5).reshape([rows, width]);
    let gamma = random(&[width], 0.5, 1.0);
    let beta = random(&[width], 0.5, 0.0);
    let weight = random(&[width / 2, d_out], 0.3, 0.0).reshape([width / 2, d_out]);
    let param = random(&[n], 1.0, 0.0);
    let exp_avg = random(&[n], 1e-2, 0.0);
    let exp_avg_sq = random(&[n], 5e-5, 5e-5);
    let fused = ChainInputs {
        x,
        gamma,
        beta,
        weight,
        param,
        exp_avg,
        exp_avg_sq,
    };
    fn plain<const D: usize>(t: &Tensor<FusedWgpu, D>) -> Tensor<Wgpu, D> {
        Tensor::from_data(t.to_data(), &Default::default())
    }
    let plain_inputs = ChainInputs {
        x: plain(&fused.x),
        gamma: plain(&fused.gamma),
        beta: plain(&fused.beta),
        weight: plain(&fused.weight),
        param: plain(&fused.param),
        exp_avg: plain(&fused.exp_avg),
        exp_avg_sq: plain(&fused.exp_avg_sq),
    };
    let ours = extension_chain(fused);
    let reference = extension_chain(plain_inputs);
    let names = ["product", "update", "exp_avg", "exp_avg_sq"];
    let mut failures = Vec::new();
    for ((name, ours), reference) in names.into_iter().zip(ours).zip(reference) {
        let error = relative_error(plain(&ours), reference);
        println!("{name}: fused vs plain {error:.2e}");
        if error > 1e-5 {
            failures.push(format!("{name}: {error:.2e}"));
        }
    }
    assert!(failures.is_empty(), "fused differs from plain: {failures:?}");
}
