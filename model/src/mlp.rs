//! The GeGLU feed-forward block: `Wo(drop(gelu(input) * gate))` with
//! `input, gate = Wi(x).chunk(2)` (one kernel on CubeCL backends:
//! `modernbert_kernels::geglu`), added to the residual stream.
//!
//! HF: `ModernBertMLP` in `modeling_modernbert.py`.
#![allow(non_snake_case)]

use burn::config::Config;
use burn::module::{Initializer, Module};
use burn::nn::{Dropout, DropoutConfig, Linear, LinearConfig};
use burn::tensor::backend::Backend;
use burn::tensor::Tensor;
use modernbert_kernels::{geglu, linear, Backend as KernelBackend};

use crate::residual::add_projection;

/// Configuration of [`ModernBertMlp`]; made by
/// [`ModernBertConfig::mlp`](crate::ModernBertConfig::mlp).
#[derive(Config, Debug)]
pub struct ModernBertMlpConfig {
    /// Hidden size H.
    pub hidden_size: usize,
    /// Inner size I (`Wi` outputs `2 * I`).
    pub intermediate_size: usize,
    /// Whether `Wi` and `Wo` have a bias.
    pub bias: bool,
    /// Dropout before `Wo`.
    pub dropout: f64,
    /// Std of the normal init of `Wi`.
    pub in_std: f64,
    /// Std of the normal init of `Wo`.
    pub out_std: f64,
}

/// GeGLU MLP.
#[derive(Module, Debug)]
pub struct ModernBertMlp<B: Backend> {
    /// `[H, 2I]` (HF stores `[2I, H]`): the first `I` outputs are the input, the rest the gate.
    pub Wi: Linear<B>,
    /// `[I, H]`.
    pub Wo: Linear<B>,
    /// Dropout before `Wo` (training only).
    pub drop: Dropout,
}

impl ModernBertMlpConfig {
    /// Builds the module on `device`.
    pub fn init<B: Backend>(&self, device: &B::Device) -> ModernBertMlp<B> {
        let linear = |d_in, d_out, std| {
            LinearConfig::new(d_in, d_out)
                .with_bias(self.bias)
                .with_initializer(Initializer::Normal { mean: 0.0, std })
                .init(device)
        };
        ModernBertMlp {
            Wi: linear(self.hidden_size, 2 * self.intermediate_size, self.in_std),
            Wo: linear(self.intermediate_size, self.hidden_size, self.out_std),
            drop: DropoutConfig::new(self.dropout).init(),
        }
    }
}

impl<B: KernelBackend> ModernBertMlp<B> {
    /// `residual + Wo(drop(geglu(Wi(x))))`.
    ///
    /// # Shapes
    /// - x, residual: `[..., hidden_size]`
    /// - output: `[..., hidden_size]`
    pub fn forward<const D: usize>(&self, x: Tensor<B, D>, residual: Tensor<B, D>) -> Tensor<B, D> {
        let act = geglu(linear(&self.Wi, x)).expect("Wi has 2 * intermediate_size outputs");
        add_projection(residual, &self.Wo, &self.drop, act)
    }
}
