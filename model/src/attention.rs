//! Multi-head self-attention with a fused `Wqkv` projection, RoPE, and either global or
//! sliding-window attention.
//!
//! Two layouts: the padded reference path (dense `[batch, heads, seq, seq]` scores with a
//! boolean mask for padding and the sliding window; exact on every backend, the oracle) and
//! the unpadded path (packed real tokens, `modernbert_kernels::varlen_attention`: our
//! flash-attention kernel on CubeCL backends).
//!
//! HF: `ModernBertAttention` + `eager_attention_forward` in `modeling_modernbert.py`.
#![allow(non_snake_case)]

use burn::config::Config;
use burn::module::{Initializer, Module};
use burn::nn::{Dropout, DropoutConfig, Linear, LinearConfig};
use burn::tensor::activation::softmax;
use burn::tensor::backend::Backend;
use burn::tensor::{Bool, Int, Tensor};

use modernbert_kernels::attention::reference::mask_value;
use modernbert_kernels::{
    linear, matmul, rope_qkv_packed, varlen_attention_packed, Backend as KernelBackend, CuSeqlens,
    VarlenAttentionOptions,
};

use crate::residual::add_projection;
use crate::rope::{PackedRope, RopeAngles};

/// Configuration of [`ModernBertAttention`]; made by
/// [`ModernBertConfig::attention`](crate::ModernBertConfig::attention).
#[derive(Config, Debug)]
pub struct ModernBertAttentionConfig {
    /// Hidden size H.
    pub hidden_size: usize,
    /// Number of heads; `head_dim = H / heads`.
    pub num_attention_heads: usize,
    /// Whether `Wqkv` and `Wo` have a bias.
    pub bias: bool,
    /// Dropout on the attention probabilities and on the output.
    pub dropout: f64,
    /// Std of the normal init of `Wqkv`.
    pub in_std: f64,
    /// Std of the normal init of `Wo`.
    pub out_std: f64,
}

/// Self-attention of one encoder layer.
#[derive(Module, Debug)]
pub struct ModernBertAttention<B: Backend> {
    /// `[H, 3H]` (HF stores `[3H, H]`): outputs are Q, K, V, each head-major.
    pub Wqkv: Linear<B>,
    /// `[H, H]`.
    pub Wo: Linear<B>,
    /// Dropout on attention probabilities (training only).
    pub attn_drop: Dropout,
    /// Dropout on the output (training only; HF `out_drop`).
    pub out_drop: Dropout,
    /// Number of heads.
    pub num_heads: usize,
}

/// The keys each query must not see, for the padded path; `true` = masked.
#[derive(Debug, Clone)]
pub struct AttentionMask<B: Backend> {
    /// Padding only, for global layers. `[batch, 1, seq, seq]`.
    pub global: Tensor<B, 4, Bool>,
    /// Padding or farther than `local_attention / 2` positions, for local layers.
    /// `[batch, 1, seq, seq]`.
    pub local: Tensor<B, 4, Bool>,
}

impl<B: Backend> AttentionMask<B> {
    /// Builds both masks from HF's `attention_mask` (1 = real token, 0 = padding).
    ///
    /// # Shapes
    /// - attention_mask: `[batch, seq]`
    pub fn new(attention_mask: Tensor<B, 2, Int>, local_attention: usize) -> Self {
        let [batch, seq] = attention_mask.dims();
        let device = attention_mask.device();
        let padding = attention_mask
            .equal_elem(0)
            .reshape([batch, 1, 1, seq])
            .expand([batch, 1, seq, seq]);
        let index = Tensor::<B, 1, Int>::arange(0..seq as i64, &device);
        let distance = (index.clone().reshape([seq, 1]) - index.reshape([1, seq])).abs();
        let outside_window = distance
            .greater_elem(local_attention as i64 / 2)
            .reshape([1, 1, seq, seq])
            .expand([batch, 1, seq, seq]);
        Self {
            local: padding.clone().bool_or(outside_window),
            global: padding,
        }
    }
}

impl ModernBertAttentionConfig {
    /// Builds the module on `device`.
    pub fn init<B: Backend>(&self, device: &B::Device) -> ModernBertAttention<B> {
        let linear = |d_out, std| {
            LinearConfig::new(self.hidden_size, d_out)
                .with_bias(self.bias)
                .with_initializer(Initializer::Normal { mean: 0.0, std })
                .init(device)
        };
        ModernBertAttention {
            Wqkv: linear(3 * self.hidden_size, self.in_std),
            Wo: linear(self.hidden_size, self.out_std),
            attn_drop: DropoutConfig::new(self.dropout).init(),
            out_drop: DropoutConfig::new(self.dropout).init(),
            num_heads: self.num_attention_heads,
        }
    }
}

/// How a batch is laid out, with what attention needs for that layout.
#[derive(Debug, Clone)]
pub enum AttentionBatch<'a, B: KernelBackend> {
    /// Hidden states `[batch, seq, H]`; the reference path with a dense mask
    /// `[batch, 1, seq, seq]` (`true` = masked, from [`AttentionMask`]).
    Padded {
        /// The global or local mask, for this layer's type.
        mask: Tensor<B, 4, Bool>,
        /// RoPE angles for this layer's θ.
        rope: &'a RopeAngles<B>,
    },
    /// Hidden states `[1, total_nnz, H]`, real tokens only; variable-length attention.
    Unpadded {
        /// Sequence offsets.
        cu_seqlens: &'a CuSeqlens<B>,
        /// `Some(local_attention / 2)` on local layers.
        window: Option<usize>,
        /// RoPE tables for this layer's θ, with the tokens' positions.
        rope: &'a PackedRope<B>,
    },
}

impl<B: KernelBackend> ModernBertAttention<B> {
    /// `residual + out_drop(Wo(attention(x)))`.
    ///
    /// # Shapes
    /// - x, residual: `[batch, seq, H]` (padded) or `[1, total_nnz, H]` (unpadded)
    /// - output: same as x
    ///
    /// Probability dropout (`attn_drop`) applies on the padded path only; both paths apply
    /// `out_drop`.
    pub fn forward(
        &self,
        x: Tensor<B, 3>,
        batch: AttentionBatch<'_, B>,
        residual: Tensor<B, 3>,
    ) -> Tensor<B, 3> {
        let [rows, seq, hidden] = x.dims();
        let (heads, head_dim) = (self.num_heads, hidden / self.num_heads);
        let qkv = linear(&self.Wqkv, x);
        let out = match batch {
            AttentionBatch::Padded { mask, rope } => {
                // [batch, seq, 3, heads, head_dim] → three [batch, heads, seq, head_dim].
                let qkv = qkv.reshape([rows, seq, 3, heads, head_dim]);
                let part = |i| {
                    qkv.clone()
                        .narrow(2, i, 1)
                        .reshape([rows, seq, heads, head_dim])
                        .swap_dims(1, 2)
                };
                let (q, k, v) = (rope.apply(part(0)), rope.apply(part(1)), part(2));
                let scale = (head_dim as f64).powf(-0.5);
                let fill = mask_value(q.dtype());
                let scores = matmul(q, k.swap_dims(2, 3)) * scale;
                let probs = softmax(scores.mask_fill(mask, fill), 3);
                let out = matmul(self.attn_drop.forward(probs), v);
                out.swap_dims(1, 2).reshape([rows, seq, hidden])
            }
            AttentionBatch::Unpadded {
                cu_seqlens,
                window,
                rope,
            } => {
                // [total_nnz, 3·H] → q, k, v stacked as [3, total_nnz, heads, head_dim], q
                // and k rotated, in one kernel; attention takes the stack as it is.
                let qkv = rope_qkv_packed(
                    qkv.reshape([seq, 3 * hidden]),
                    rope.cos.clone(),
                    rope.sin.clone(),
                    rope.positions.clone(),
                    heads,
                )
                .expect("Wqkv's width, the tables and the positions come from one model");
                let options = VarlenAttentionOptions {
                    window,
                    scale: None,
                };
                varlen_attention_packed(qkv, cu_seqlens, options)
                    .expect("q, k, v and cu_seqlens come from one unpadded batch")
                    .out
                    .reshape([1, seq, hidden])
            }
        };
        add_projection(residual, &self.Wo, &self.out_drop, out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::TestBackend;

    #[test]
    fn local_mask_is_a_band_of_half_width_and_respects_padding() {
        let device = Default::default();
        let attention_mask =
            Tensor::<TestBackend, 2, Int>::from_data([[1, 1, 1, 1, 1, 0]], &device);
        let masks = AttentionMask::new(attention_mask, 4);
        let local: Vec<bool> = masks.local.into_data().to_vec().unwrap();
        for i in 0..6 {
            for j in 0..6 {
                let visible = (i as i64 - j as i64).abs() <= 2 && j < 5;
                assert_eq!(!local[i * 6 + j], visible, "query {i} key {j}");
            }
        }
        let global: Vec<bool> = masks.global.into_data().to_vec().unwrap();
        assert!(global.iter().enumerate().all(|(n, &m)| m == (n % 6 == 5)));
    }
}
