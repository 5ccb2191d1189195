//! One pre-norm encoder layer:
//! `h = h + attn(attn_norm(h))`; `h = h + mlp(mlp_norm(h))`.
//! Layer 0 has no `attn_norm` (the embeddings end in a norm already).
//!
//! HF: `ModernBertEncoderLayer` in `modeling_modernbert.py`.

use burn::config::Config;
use burn::module::Module;
use burn::nn::{LayerNorm, LayerNormConfig};
use burn::tensor::backend::Backend;
use burn::tensor::Tensor;

use modernbert_kernels::Backend as KernelBackend;

use crate::attention::{AttentionBatch, ModernBertAttention, ModernBertAttentionConfig};
use crate::config::LayerType;
use crate::mlp::{ModernBertMlp, ModernBertMlpConfig};
use crate::norm::layer_norm;

/// Configuration of [`ModernBertEncoderLayer`]; made by
/// [`ModernBertConfig::layer`](crate::ModernBertConfig::layer).
#[derive(Config, Debug)]
pub struct ModernBertEncoderLayerConfig {
    /// Hidden size H.
    pub hidden_size: usize,
    /// LayerNorm epsilon.
    pub norm_eps: f64,
    /// Whether the LayerNorms have a bias.
    pub norm_bias: bool,
    /// `false` for layer 0, whose `attn_norm` is the identity.
    pub has_attn_norm: bool,
    /// Global or sliding-window attention.
    pub layer_type: LayerType,
    /// The attention block.
    pub attention: ModernBertAttentionConfig,
    /// The MLP block.
    pub mlp: ModernBertMlpConfig,
}

/// A pre-norm encoder layer.
#[derive(Module, Debug)]
pub struct ModernBertEncoderLayer<B: Backend> {
    /// `None` on layer 0 (HF: `nn.Identity`).
    pub attn_norm: Option<LayerNorm<B>>,
    /// Self-attention.
    pub attn: ModernBertAttention<B>,
    /// Norm before the MLP.
    pub mlp_norm: LayerNorm<B>,
    /// GeGLU MLP.
    pub mlp: ModernBertMlp<B>,
    /// Epsilon of both norms (Burn's `LayerNorm` keeps its own private).
    pub norm_eps: f64,
    /// Global or sliding-window attention.
    pub layer_type: LayerType,
}

impl ModernBertEncoderLayerConfig {
    /// Builds the layer on `device`.
    pub fn init<B: Backend>(&self, device: &B::Device) -> ModernBertEncoderLayer<B> {
        let norm = || {
            LayerNormConfig::new(self.hidden_size)
                .with_epsilon(self.norm_eps)
                .with_bias(self.norm_bias)
                .init(device)
        };
        ModernBertEncoderLayer {
            attn_norm: self.has_attn_norm.then(norm),
            attn: self.attention.init(device),
            mlp_norm: norm(),
            mlp: self.mlp.init(device),
            norm_eps: self.norm_eps,
            layer_type: self.layer_type,
        }
    }
}

impl<B: KernelBackend> ModernBertEncoderLayer<B> {
    /// `batch` must carry the mask (padded) or window (unpadded) and the RoPE angles of
    /// this layer's [`LayerType`].
    ///
    /// # Shapes
    /// - hidden: `[batch, seq, H]` (padded) or `[1, total_nnz, H]` (unpadded)
    /// - output: same as hidden
    pub fn forward(&self, hidden: Tensor<B, 3>, batch: AttentionBatch<'_, B>) -> Tensor<B, 3> {
        let normed = match &self.attn_norm {
            Some(norm) => layer_norm(norm, self.norm_eps, hidden.clone()),
            None => hidden.clone(),
        };
        let hidden = self.attn.forward(normed, batch, hidden);
        let normed = layer_norm(&self.mlp_norm, self.norm_eps, hidden.clone());
        self.mlp.forward(normed, hidden)
    }
}
