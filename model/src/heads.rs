//! Task models on top of the encoder: masked language modelling, sequence classification
//! (cls or mean pooling) and token classification. Each shares
//! [`ModernBertPredictionHead`]: `norm(gelu(dense(x)))`.
//!
//! HF: `ModernBertPredictionHead`, `ModernBertForMaskedLM`,
//! `ModernBertForSequenceClassification`, `ModernBertForTokenClassification`.

use burn::config::Config;
use burn::module::{Initializer, Module, Param};
use burn::nn::{Dropout, DropoutConfig, LayerNorm, LayerNormConfig, Linear, LinearConfig};
use burn::tensor::activation::gelu;
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor};

use modernbert_kernels::{linear, linear_weight, Backend as KernelBackend};

use crate::config::{ModernBertConfig, Pooling};
use crate::error::InputError;
use crate::model::{ModernBertInput, ModernBertModel};
use crate::norm::layer_norm;

/// Configuration of [`ModernBertPredictionHead`]; made by
/// [`ModernBertConfig::prediction_head`].
#[derive(Config, Debug)]
pub struct ModernBertPredictionHeadConfig {
    /// Hidden size H.
    pub hidden_size: usize,
    /// Whether `dense` has a bias (HF `classifier_bias`).
    pub bias: bool,
    /// LayerNorm epsilon.
    pub norm_eps: f64,
    /// Whether the norm has a bias.
    pub norm_bias: bool,
    /// Std of the normal init of `dense`.
    pub init_std: f64,
}

/// `norm(gelu(dense(x)))`, shared by all task heads.
#[derive(Module, Debug)]
pub struct ModernBertPredictionHead<B: Backend> {
    /// `[H, H]`.
    pub dense: Linear<B>,
    /// LayerNorm over H.
    pub norm: LayerNorm<B>,
    /// The norm's epsilon (Burn's `LayerNorm` keeps its own private).
    pub norm_eps: f64,
}

impl ModernBertPredictionHeadConfig {
    /// Builds the head on `device`.
    pub fn init<B: Backend>(&self, device: &B::Device) -> ModernBertPredictionHead<B> {
        ModernBertPredictionHead {
            dense: LinearConfig::new(self.hidden_size, self.hidden_size)
                .with_bias(self.bias)
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
        }
    }
}

impl<B: KernelBackend> ModernBertPredictionHead<B> {
    /// # Shapes
    /// - x: `[..., H]`
    /// - output: `[..., H]`
    pub fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        layer_norm(&self.norm, self.norm_eps, gelu(linear(&self.dense, x)))
    }
}

/// The MLM decoder. Its weight is `tok_embeddings.weight` when tied (the usual case), so it
/// holds only the bias then.
#[derive(Module, Debug)]
pub struct ModernBertDecoder<B: Backend> {
    /// `[vocab, H]` (HF layout), present only when `tie_word_embeddings` is false.
    pub weight: Option<Param<Tensor<B, 2>>>,
    /// `[vocab]`, present when `decoder_bias` is true.
    pub bias: Option<Param<Tensor<B, 1>>>,
}

/// Output of the task models.
#[derive(Debug, Clone)]
pub struct TaskOutput<B: Backend, const D: usize> {
    /// MLM `[batch, seq, vocab]`; sequence classification `[batch, num_labels]`; token
    /// classification `[batch, seq, num_labels]`.
    pub logits: Tensor<B, D>,
    /// The encoder's output, `[batch, seq, H]`.
    pub last_hidden_state: Tensor<B, 3>,
}

/// ModernBERT with the masked-language-modelling head (HF `ModernBertForMaskedLM`).
#[derive(Module, Debug)]
pub struct ModernBertForMaskedLM<B: Backend> {
    /// The encoder.
    pub model: ModernBertModel<B>,
    /// Transform before the decoder.
    pub head: ModernBertPredictionHead<B>,
    /// Projection to the vocabulary.
    pub decoder: ModernBertDecoder<B>,
}

/// ModernBERT with a pooled classification head (HF `ModernBertForSequenceClassification`).
#[derive(Module, Debug)]
pub struct ModernBertForSequenceClassification<B: Backend> {
    /// The encoder.
    pub model: ModernBertModel<B>,
    /// Transform after pooling.
    pub head: ModernBertPredictionHead<B>,
    /// Dropout before the classifier (training only).
    pub drop: Dropout,
    /// `[H, num_labels]`, with bias.
    pub classifier: Linear<B>,
    /// `cls` or `mean`.
    pub pooling: Pooling,
}

/// ModernBERT with a per-token classification head (HF `ModernBertForTokenClassification`).
#[derive(Module, Debug)]
pub struct ModernBertForTokenClassification<B: Backend> {
    /// The encoder.
    pub model: ModernBertModel<B>,
    /// Transform of every token.
    pub head: ModernBertPredictionHead<B>,
    /// Dropout before the classifier (training only).
    pub drop: Dropout,
    /// `[H, num_labels]`, with bias.
    pub classifier: Linear<B>,
}

impl ModernBertConfig {
    /// Sub-config of the prediction head.
    pub fn prediction_head(&self) -> ModernBertPredictionHeadConfig {
        ModernBertPredictionHeadConfig::new(
            self.hidden_size,
            self.classifier_bias,
            self.norm_eps,
            self.norm_bias,
            self.out_std(),
        )
    }

    fn classifier<B: Backend>(&self, device: &B::Device) -> Linear<B> {
        LinearConfig::new(self.hidden_size, self.num_labels())
            .with_initializer(Initializer::Normal {
                mean: 0.0,
                std: self.initializer_range,
            })
            .init(device)
    }

    /// Builds a [`ModernBertForMaskedLM`] on `device`.
    ///
    /// # Panics
    /// If the config is invalid (see [`ModernBertConfig::init`]).
    pub fn init_masked_lm<B: Backend>(&self, device: &B::Device) -> ModernBertForMaskedLM<B> {
        let std = self.initializer_range;
        let weight = (!self.tie_word_embeddings).then(|| {
            Initializer::Normal { mean: 0.0, std }.init([self.vocab_size, self.hidden_size], device)
        });
        let bias = self
            .decoder_bias
            .then(|| Initializer::Zeros.init([self.vocab_size], device));
        ModernBertForMaskedLM {
            model: self.init(device),
            head: self.prediction_head().init(device),
            decoder: ModernBertDecoder { weight, bias },
        }
    }

    /// Builds a [`ModernBertForSequenceClassification`] with `id2label.len()` classes.
    ///
    /// # Panics
    /// If the config is invalid (see [`ModernBertConfig::init`]).
    pub fn init_sequence_classification<B: Backend>(
        &self,
        device: &B::Device,
    ) -> ModernBertForSequenceClassification<B> {
        ModernBertForSequenceClassification {
            model: self.init(device),
            head: self.prediction_head().init(device),
            drop: DropoutConfig::new(self.classifier_dropout).init(),
            classifier: self.classifier(device),
            pooling: self.classifier_pooling,
        }
    }

    /// Builds a [`ModernBertForTokenClassification`] with `id2label.len()` classes.
    ///
    /// # Panics
    /// If the config is invalid (see [`ModernBertConfig::init`]).
    pub fn init_token_classification<B: Backend>(
        &self,
        device: &B::Device,
    ) -> ModernBertForTokenClassification<B> {
        ModernBertForTokenClassification {
            model: self.init(device),
            head: self.prediction_head().init(device),
            drop: DropoutConfig::new(self.classifier_dropout).init(),
            classifier: self.classifier(device),
        }
    }
}

impl Pooling {
    /// One vector per sequence: the first token's state (`Cls`) or the mean over real
    /// tokens (`Mean`). Also what sentence-transformers' `Pooling` module computes.
    ///
    /// # Shapes
    /// - hidden: `[batch, seq, H]`, attention_mask: `[batch, seq]` (1 = real token)
    /// - output: `[batch, H]`
    pub fn pool<B: Backend>(
        self,
        hidden: Tensor<B, 3>,
        attention_mask: Tensor<B, 2, Int>,
    ) -> Tensor<B, 2> {
        let [batch, _, h] = hidden.dims();
        match self {
            Pooling::Cls => hidden.narrow(1, 0, 1).reshape([batch, h]),
            Pooling::Mean => {
                let mask = attention_mask.float().unsqueeze_dim::<3>(2);
                let count = mask.clone().sum_dim(1);
                (hidden * mask).sum_dim(1).div(count).reshape([batch, h])
            }
        }
    }
}

impl<B: KernelBackend> ModernBertForMaskedLM<B> {
    /// Logits over the vocabulary for every position.
    ///
    /// # Shapes
    /// - output.logits: `[batch, seq, vocab]`
    ///
    /// # Errors
    /// As [`ModernBertModel::forward`].
    pub fn forward(&self, input: ModernBertInput<B>) -> Result<TaskOutput<B, 3>, InputError> {
        let output = self.model.forward(input)?;
        Ok(TaskOutput {
            logits: self.logits(output.last_hidden_state.clone()),
            last_hidden_state: output.last_hidden_state,
        })
    }

    /// The head and decoder on given encoder states: lets a caller compute logits only at
    /// the positions it needs (HF's sparse prediction), e.g. the `[MASK]` rows.
    ///
    /// # Shapes
    /// - hidden: `[..., H]`
    /// - output: `[..., vocab]`
    pub fn logits<const D: usize>(&self, hidden: Tensor<B, D>) -> Tensor<B, D> {
        let hidden = self.head.forward(hidden);
        // Tied: the decoder is the transpose of the token-embedding matrix.
        let weight = match &self.decoder.weight {
            Some(weight) => weight.val(),
            None => self.model.embeddings.tok_embeddings.weight.val(),
        };
        linear_weight(
            hidden,
            weight.transpose(),
            self.decoder.bias.as_ref().map(Param::val),
        )
    }
}

impl<B: KernelBackend> ModernBertForSequenceClassification<B> {
    /// One vector of class logits per sequence.
    ///
    /// # Shapes
    /// - output.logits: `[batch, num_labels]`
    ///
    /// # Errors
    /// As [`ModernBertModel::forward`].
    pub fn forward(&self, input: ModernBertInput<B>) -> Result<TaskOutput<B, 2>, InputError> {
        let output = self.model.forward(input)?;
        let pooled = self
            .pooling
            .pool(output.last_hidden_state.clone(), output.attention_mask);
        let logits = linear(
            &self.classifier,
            self.drop.forward(self.head.forward(pooled)),
        );
        Ok(TaskOutput {
            logits,
            last_hidden_state: output.last_hidden_state,
        })
    }
}

impl<B: KernelBackend> ModernBertForTokenClassification<B> {
    /// Class logits for every position.
    ///
    /// # Shapes
    /// - output.logits: `[batch, seq, num_labels]`
    ///
    /// # Errors
    /// As [`ModernBertModel::forward`].
    pub fn forward(&self, input: ModernBertInput<B>) -> Result<TaskOutput<B, 3>, InputError> {
        let output = self.model.forward(input)?;
        let hidden = self.head.forward(output.last_hidden_state.clone());
        let logits = linear(&self.classifier, self.drop.forward(hidden));
        Ok(TaskOutput {
            logits,
            last_hidden_state: output.last_hidden_state,
        })
    }
}
