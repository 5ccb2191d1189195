//! Token embeddings: `drop(norm(tok_embeddings(input_ids)))`. No position embeddings:
//! positions enter through RoPE in attention.
//!
//! HF: `ModernBertEmbeddings` in `modeling_modernbert.py`.

use burn::config::Config;
use burn::module::{Initializer, Module};
use burn::nn::{Dropout, DropoutConfig, Embedding, EmbeddingConfig, LayerNorm, LayerNormConfig};
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor};
use modernbert_kernels::{select_rows, Backend as KernelBackend};

use crate::norm::layer_norm;

/// Configuration of [`ModernBertEmbeddings`]; made by
/// [`ModernBertConfig::embeddings`](crate::ModernBertConfig::embeddings).
#[derive(Config, Debug)]
pub struct ModernBertEmbeddingsConfig {
    /// Vocabulary size.
    pub vocab_size: usize,
    /// Hidden size.
    pub hidden_size: usize,
    /// LayerNorm epsilon.
    pub norm_eps: f64,
    /// Whether the LayerNorm has a bias.
    pub norm_bias: bool,
    /// Dropout after the norm.
    pub dropout: f64,
    /// Std of the normal init of `tok_embeddings`.
    pub init_std: f64,
}

/// Token embedding, LayerNorm and dropout.
#[derive(Module, Debug)]
pub struct ModernBertEmbeddings<B: Backend> {
    /// `[vocab_size, hidden_size]`; also the MLM decoder's weight when tied.
    pub tok_embeddings: Embedding<B>,
    /// LayerNorm over the hidden size.
    pub norm: LayerNorm<B>,
    /// The norm's epsilon (Burn's `LayerNorm` keeps its own private).
    pub norm_eps: f64,
    /// Embedding dropout (training only).
    pub drop: Dropout,
}

impl ModernBertEmbeddingsConfig {
    /// Builds the module on `device` (parameters are initialized lazily).
    pub fn init<B: Backend>(&self, device: &B::Device) -> ModernBertEmbeddings<B> {
        ModernBertEmbeddings {
            tok_embeddings: EmbeddingConfig::new(self.vocab_size, self.hidden_size)
                .with_initializer(Initializer::Normal {
                    mean: 0.0,
                    std: self.init_std,
                })
                .init(device),
            norm: LayerNormConfig::new(self.hidden_size)
                .with_epsilon(self.norm_eps)
                .with_bias(self.norm_bias)
                .init(device),
            norm_eps: self.norm_eps,
            drop: DropoutConfig::new(self.dropout).init(),
        }
    }
}

impl<B: KernelBackend> ModernBertEmbeddings<B> {
    /// # Shapes
    /// - input_ids: `[batch, seq]`
    /// - output: `[batch, seq, hidden_size]`
    pub fn forward(&self, input_ids: Tensor<B, 2, Int>) -> Tensor<B, 3> {
        let [batch, seq] = input_ids.dims();
        // `select_rows` is `Embedding::forward` with a fast, deterministic gradient.
        let embedded = select_rows(
            self.tok_embeddings.weight.val(),
            input_ids.reshape([batch * seq]),
        )
        .reshape([batch, seq, self.tok_embeddings.weight.dims()[1]]);
        self.drop
            .forward(layer_norm(&self.norm, self.norm_eps, embedded))
    }
}
