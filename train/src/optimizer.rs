//! StableAdamW (Wortsman et al. 2023, as implemented by `optimi` and used for ModernBERT):
//! AdamW with optimi's bias-corrected betas, decoupled weight decay, and an update-clipping
//! learning rate `η = lr / max(1, rms)` per parameter tensor, which replaces gradient
//! clipping.
//!
//! Per tensor, step `t` from 1 (DESIGN.md, "Training recipe"):
//! ```text
//! β₁ₜ = (β₁ᵗ - β₁) / (β₁ᵗ - 1),  β₂ₜ likewise           (0 at t = 1: m, v start at g, g²)
//! m  = lerp(m, g, 1 - β₁ₜ);   v = β₂ₜ·v + (1 - β₂ₜ)·g²
//! rms = sqrt(mean(g² / max(v, ε²)));   η = lr / max(1, rms)
//! θ *= 1 - (η / lr_max)·λ             (no decay for 1-D tensors: norms and biases)
//! θ -= η · m / (sqrt(v) + ε)
//! ```
//! The update itself is [`modernbert_kernels::stable_adamw_step`]: two kernels per tensor on
//! CubeCL backends, plain tensor ops elsewhere.
//!
//! Burn's [`SimpleOptimizer`] sees tensors without names, so "no decay on norms and
//! biases" is decided by rank: in ModernBERT every 1-D parameter is a LayerNorm weight or
//! bias or the decoder bias, and every ≥2-D one is a projection or the embedding.

use burn::config::Config;
use burn::module::AutodiffModule;
use burn::optim::adaptor::OptimizerAdaptor;
use burn::optim::{LearningRate, SimpleOptimizer};
use burn::record::Record;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::Tensor;
use modernbert_kernels::{stable_adamw_step, Backend as KernelBackend, StableAdamWStep};

/// Configuration of [`StableAdamW`].
#[derive(Config, Debug)]
pub struct StableAdamWConfig {
    /// β₁.
    #[config(default = 0.9)]
    pub beta_1: f64,
    /// β₂.
    #[config(default = 0.98)]
    pub beta_2: f64,
    /// ε, added to sqrt(v) and squared as the floor of v in the rms.
    #[config(default = 1e-6)]
    pub epsilon: f64,
    /// λ, decoupled weight decay, scaled by `η / lr_max`.
    #[config(default = 1e-5)]
    pub weight_decay: f64,
    /// The schedule's peak learning rate, which the decay is relative to (optimi's
    /// `decouple_lr`).
    pub lr_max: f64,
}

/// The StableAdamW update rule; see the module docs.
#[derive(Clone, Debug)]
pub struct StableAdamW {
    beta_1: f64,
    beta_2: f64,
    epsilon: f64,
    weight_decay: f64,
    lr_max: f64,
}

/// Per-tensor state: the moments and the number of updates taken.
#[derive(Record, Clone)]
pub struct StableAdamWState<B: Backend, const D: usize> {
    /// First moment `m`.
    pub exp_avg: Tensor<B, D>,
    /// Second moment `v`.
    pub exp_avg_sq: Tensor<B, D>,
    /// Updates taken so far (`t` of the last update).
    pub step: usize,
}

impl StableAdamWConfig {
    /// The update rule alone.
    pub fn build(&self) -> StableAdamW {
        StableAdamW {
            beta_1: self.beta_1,
            beta_2: self.beta_2,
            epsilon: self.epsilon,
            weight_decay: self.weight_decay,
            lr_max: self.lr_max,
        }
    }

    /// The optimizer for module `M`, as Burn's [`burn::optim::Optimizer`].
    pub fn init<B: AutodiffBackend, M: AutodiffModule<B>>(
        &self,
    ) -> OptimizerAdaptor<StableAdamW, M, B>
    where
        B::InnerBackend: KernelBackend,
    {
        OptimizerAdaptor::from(self.build())
    }
}

/// optimi's `debias_beta`: the β that makes an EMA started at 0 unbiased at step `t`.
fn debias_beta(beta: f64, t: usize) -> f64 {
    let beta_t = beta.powi(t as i32);
    (beta_t - beta) / (beta_t - 1.0)
}

impl<B: KernelBackend> SimpleOptimizer<B> for StableAdamW {
    type State<const D: usize> = StableAdamWState<B, D>;

    fn step<const D: usize>(
        &self,
        lr: LearningRate,
        tensor: Tensor<B, D>,
        grad: Tensor<B, D>,
        state: Option<Self::State<D>>,
    ) -> (Tensor<B, D>, Option<Self::State<D>>) {
        let t = state.as_ref().map_or(0, |s| s.step) + 1;
        // β₁ₜ = β₂ₜ = 0 at t = 1, so zero moments become g and g².
        let (exp_avg, exp_avg_sq) = match state {
            Some(s) => (s.exp_avg, s.exp_avg_sq),
            None => (grad.zeros_like(), grad.zeros_like()),
        };
        let step = StableAdamWStep {
            lr,
            beta_1: debias_beta(self.beta_1, t),
            beta_2: debias_beta(self.beta_2, t),
            epsilon: self.epsilon,
            decay: if D > 1 {
                self.weight_decay / self.lr_max
            } else {
                0.0
            },
        };
        // Burn's optimizer hands each parameter over with its own gradient and the state this
        // rule produced for it, so the shapes agree by construction.
        let (tensor, exp_avg, exp_avg_sq) =
            stable_adamw_step(tensor, grad, exp_avg, exp_avg_sq, &step)
                .unwrap_or_else(|error| panic!("{error}"));
        let state = StableAdamWState {
            exp_avg,
            exp_avg_sq,
            step: t,
        };
        (tensor, Some(state))
    }

    fn to_device<const D: usize>(state: Self::State<D>, device: &B::Device) -> Self::State<D> {
        StableAdamWState {
            exp_avg: state.exp_avg.to_device(device),
            exp_avg_sq: state.exp_avg_sq.to_device(device),
            step: state.step,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::NdArray;
    use burn::tensor::TensorData;

    // f32, as in training; the reference runs in f64.
    type B = NdArray;

    /// The rule written out element by element in f64, independently of the tensor code.
    fn reference(
        theta: &mut [f64],
        m: &mut [f64],
        v: &mut [f64],
        g: &[f64],
        t: usize,
        lr: f64,
        decay: bool,
    ) -> bool {
        let (b1, b2, eps, wd, lr_max) = (0.9f64, 0.98f64, 1e-6f64, 0.1f64, 2e-2f64);
        let b1t = (b1.powi(t as i32) - b1) / (b1.powi(t as i32) - 1.0);
        let b2t = (b2.powi(t as i32) - b2) / (b2.powi(t as i32) - 1.0);
        for i in 0..g.len() {
            m[i] = m[i] + (g[i] - m[i]) * (1.0 - b1t);
            v[i] = b2t * v[i] + (1.0 - b2t) * g[i] * g[i];
        }
        let mean: f64 = (0..g.len())
            .map(|i| g[i] * g[i] / v[i].max(eps * eps))
            .sum::<f64>()
            / g.len() as f64;
        let eta = lr / mean.sqrt().max(1.0);
        for i in 0..g.len() {
            if decay {
                theta[i] *= 1.0 - eta / lr_max * wd;
            }
            theta[i] -= eta * m[i] / (v[i].sqrt() + eps);
        }
        mean.sqrt() > 1.0
    }

    fn optimizer() -> StableAdamW {
        StableAdamWConfig::new(2e-2).with_weight_decay(0.1).build()
    }

    /// Three steps on a `[2, 3]` (decayed) or `[6]` (not decayed) tensor, with gradients
    /// chosen so that the rms clip is active on some steps and not on others.
    fn check<const D: usize>(shape: [usize; D]) {
        let device = Default::default();
        let grads = [
            [0.5, -1.0, 2.0, 0.0, 3.0, -0.25],
            [50.0, -80.0, 100.0, 5.0, -200.0, 30.0], // a jump everywhere: rms > 1
            [0.5, -1.0, 2.0, 0.0, 3.0, -0.25],
        ];
        let lrs = [2e-2, 1e-2, 5e-3];
        let mut theta = vec![1.0, -2.0, 0.5, 3.0, 0.0, -1.0];
        let (mut m, mut v) = (vec![0.0; 6], vec![0.0; 6]);
        let optim = optimizer();
        let data =
            |v: &[f64]| TensorData::new(v.iter().map(|&x| x as f32).collect::<Vec<_>>(), shape);
        let mut tensor = Tensor::<B, D>::from_data(data(&theta), &device);
        let mut state = None;
        let mut clipped = 0;
        for (t, (g, lr)) in grads.iter().zip(lrs).enumerate() {
            let grad = Tensor::<B, D>::from_data(data(g), &device);
            (tensor, state) = optim.step(lr, tensor, grad, state);
            clipped += usize::from(reference(&mut theta, &mut m, &mut v, g, t + 1, lr, D > 1));
            let got: Vec<f32> = tensor.to_data().to_vec().unwrap();
            let diff = got
                .iter()
                .zip(&theta)
                .map(|(&a, b)| (a as f64 - b).abs())
                .fold(0.0, f64::max);
            println!("rank {D} step {}: max diff {diff:.2e}", t + 1);
            assert!(diff < 2e-6, "step {}: {got:?} vs {theta:?}", t + 1);
        }
        assert_eq!(
            clipped, 1,
            "the test must exercise the rms clip on step 2 only"
        );
        assert_eq!(state.unwrap().step, 3);
    }

    #[test]
    fn matrix_update_equals_the_hand_computed_rule_with_decay() {
        check([2, 3]);
    }

    #[test]
    fn vector_update_equals_the_hand_computed_rule_without_decay() {
        check([6]);
    }

    #[test]
    fn first_step_moves_each_element_by_lr_times_sign() {
        // t = 1: m = g, v = g², so the step is lr·g/(|g|+ε) ≈ lr·sign(g); rms = 1.
        let device = Default::default();
        let optim = StableAdamWConfig::new(1e-3).with_weight_decay(0.0).build();
        let tensor = Tensor::<B, 1>::from_data([1.0, 1.0, 1.0], &device);
        let grad = Tensor::<B, 1>::from_data([4.0, -0.5, 0.0], &device);
        let (out, _) = optim.step(1e-3, tensor, grad, None);
        let out: Vec<f32> = out.to_data().to_vec().unwrap();
        assert!((out[0] - (1.0 - 1e-3)).abs() < 1e-6, "{out:?}");
        assert!((out[1] - (1.0 + 1e-3)).abs() < 1e-6, "{out:?}");
        assert_eq!(out[2], 1.0);
    }
}
