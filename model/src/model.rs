//! The encoder: embeddings, `num_hidden_layers` pre-norm layers alternating global and
//! sliding-window attention, and `final_norm`. Returns the last hidden states.
//!
//! HF: `ModernBertModel` in `modeling_modernbert.py`.

use burn::module::Module;
use burn::nn::{LayerNorm, LayerNormConfig};
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};

use modernbert_kernels::Backend as KernelBackend;

use crate::attention::{AttentionBatch, AttentionMask, ModernBertAttentionConfig};
use crate::config::{LayerType, ModernBertConfig};
use crate::embeddings::{ModernBertEmbeddings, ModernBertEmbeddingsConfig};
use crate::error::InputError;
use crate::layer::{ModernBertEncoderLayer, ModernBertEncoderLayerConfig};
use crate::mlp::ModernBertMlpConfig;
use crate::norm::layer_norm;
use crate::rope::{RotaryEmbedding, RotaryEmbeddingConfig};
use crate::unpad::{check_token_ids, UnpaddedInput};

/// How the encoder runs a padded batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Execution {
    /// Unpad, run every layer on real tokens only with variable-length attention (our
    /// kernel on Cuda/Wgpu), pad the output back. The fast path.
    #[default]
    Unpadded,
    /// Dense attention with masks over the whole `[batch, seq]` grid: the exact reference.
    Padded,
}

/// A batch of right-padded token sequences.
#[derive(Debug, Clone)]
pub struct ModernBertInput<B: Backend> {
    /// `[batch, seq]` token ids, right-padded.
    pub input_ids: Tensor<B, 2, Int>,
    /// `[batch, seq]`, 1 for real tokens, 0 for padding (HF convention).
    pub attention_mask: Tensor<B, 2, Int>,
    /// Unpadded (default) or padded reference execution.
    pub execution: Execution,
}

impl<B: Backend> ModernBertInput<B> {
    /// A batch without padding: every position is a real token.
    pub fn new(input_ids: Tensor<B, 2, Int>) -> Self {
        let attention_mask = input_ids.ones_like();
        Self {
            input_ids,
            attention_mask,
            execution: Execution::default(),
        }
    }

    /// Sets the padding mask (1 = real token, 0 = padding). Padding must be on the right.
    pub fn with_attention_mask(mut self, attention_mask: Tensor<B, 2, Int>) -> Self {
        self.attention_mask = attention_mask;
        self
    }

    /// Chooses unpadded (default) or padded reference execution.
    pub fn with_execution(mut self, execution: Execution) -> Self {
        self.execution = execution;
        self
    }

    /// Pads token-id sequences on the right with `config.pad_token_id` and builds the mask.
    ///
    /// # Errors
    /// [`InputError::Empty`] for an empty batch or sequence, [`InputError::TooLong`] for a
    /// sequence longer than `max_position_embeddings`, [`InputError::TokenOutOfRange`] for an
    /// id not below `vocab_size`.
    pub fn from_token_ids(
        sequences: &[Vec<u32>],
        config: &ModernBertConfig,
        device: &B::Device,
    ) -> Result<Self, InputError> {
        check_token_ids(sequences, config)?;
        let seq = sequences.iter().map(Vec::len).max().unwrap_or(0);
        let mut ids = Vec::with_capacity(sequences.len() * seq);
        let mut mask = Vec::with_capacity(sequences.len() * seq);
        for sequence in sequences {
            let pad = seq - sequence.len();
            ids.extend(sequence.iter().map(|&id| id as i64));
            ids.extend(std::iter::repeat_n(config.pad_token_id as i64, pad));
            mask.extend(std::iter::repeat_n(1i64, sequence.len()));
            mask.extend(std::iter::repeat_n(0i64, pad));
        }
        let shape = [sequences.len(), seq];
        Ok(Self {
            input_ids: Tensor::from_data(TensorData::new(ids, shape), device),
            attention_mask: Tensor::from_data(TensorData::new(mask, shape), device),
            execution: Execution::default(),
        })
    }
}

/// The encoder's output.
#[derive(Debug, Clone)]
pub struct ModernBertOutput<B: Backend> {
    /// `[batch, seq, H]`, after `final_norm`. Rows at padded positions hold no meaning.
    pub last_hidden_state: Tensor<B, 3>,
    /// `[batch, seq]`, the input's mask, passed on for pooling.
    pub attention_mask: Tensor<B, 2, Int>,
}

/// The ModernBERT encoder (HF `ModernBertModel`).
#[derive(Module, Debug)]
pub struct ModernBertModel<B: Backend> {
    /// Token embeddings and their norm.
    pub embeddings: ModernBertEmbeddings<B>,
    /// The encoder layers.
    pub layers: Vec<ModernBertEncoderLayer<B>>,
    /// Norm after the last layer.
    pub final_norm: LayerNorm<B>,
    /// RoPE tables of the global layers (θ = `global_rope_theta`); constants, not saved.
    pub global_rotary_emb: RotaryEmbedding<B>,
    /// RoPE tables of the sliding-window layers (θ = `local_rope_theta`); constants, not saved.
    pub local_rotary_emb: RotaryEmbedding<B>,
    /// The architecture this model was built from (saved as config.json).
    pub config: ModernBertConfig,
}

impl ModernBertConfig {
    /// Std of the init of output projections: `initializer_range / sqrt(2 · num_layers)`.
    pub(crate) fn out_std(&self) -> f64 {
        self.initializer_range / (2.0 * self.num_hidden_layers as f64).sqrt()
    }

    /// Sub-config of the embeddings.
    pub fn embeddings(&self) -> ModernBertEmbeddingsConfig {
        ModernBertEmbeddingsConfig::new(
            self.vocab_size,
            self.hidden_size,
            self.norm_eps,
            self.norm_bias,
            self.embedding_dropout,
            self.initializer_range,
        )
    }

    /// Sub-config of the attention block.
    pub fn attention(&self) -> ModernBertAttentionConfig {
        ModernBertAttentionConfig::new(
            self.hidden_size,
            self.num_attention_heads,
            self.attention_bias,
            self.attention_dropout,
            self.initializer_range,
            self.out_std(),
        )
    }

    /// Sub-config of the MLP block.
    pub fn mlp(&self) -> ModernBertMlpConfig {
        ModernBertMlpConfig::new(
            self.hidden_size,
            self.intermediate_size,
            self.mlp_bias,
            self.mlp_dropout,
            self.initializer_range,
            self.out_std(),
        )
    }

    /// Sub-config of the rotary embedding with base `theta`.
    pub fn rotary_emb(&self, theta: f64) -> RotaryEmbeddingConfig {
        RotaryEmbeddingConfig::new(self.head_dim(), theta)
            .with_max_position_embeddings(self.max_position_embeddings)
    }

    /// Sub-config of layer `index`.
    pub fn layer(&self, index: usize) -> ModernBertEncoderLayerConfig {
        ModernBertEncoderLayerConfig::new(
            self.hidden_size,
            self.norm_eps,
            self.norm_bias,
            index != 0,
            self.layer_types[index],
            self.attention(),
            self.mlp(),
        )
    }

    /// Builds the encoder on `device`. Parameters are initialized lazily, so loading weights
    /// right after costs no random initialization; the RoPE cos/sin tables
    /// (`max_position_embeddings` rows) are built on the host and uploaded.
    ///
    /// # Panics
    /// If the config is invalid; configs from [`ModernBertConfig::from_file`] are validated,
    /// hand-built ones can be checked with [`ModernBertConfig::validate`].
    pub fn init<B: Backend>(&self, device: &B::Device) -> ModernBertModel<B> {
        if let Err(e) = self.validate() {
            panic!("invalid ModernBertConfig: {e}");
        }
        ModernBertModel {
            embeddings: self.embeddings().init(device),
            layers: (0..self.num_hidden_layers)
                .map(|i| self.layer(i).init(device))
                .collect(),
            final_norm: LayerNormConfig::new(self.hidden_size)
                .with_epsilon(self.norm_eps)
                .with_bias(self.norm_bias)
                .init(device),
            global_rotary_emb: self.rotary_emb(self.global_rope_theta).init(device),
            local_rotary_emb: self.rotary_emb(self.local_rope_theta).init(device),
            config: self.clone(),
        }
    }
}

impl<B: KernelBackend> ModernBertModel<B> {
    /// Runs the encoder on a right-padded batch, as `input.execution` says: by default it
    /// unpads the batch, runs every layer on real tokens only (variable-length attention,
    /// our kernel on Cuda/Wgpu) and pads the result back; [`Execution::Padded`] runs the
    /// dense reference instead.
    ///
    /// # Shapes
    /// - input.input_ids, input.attention_mask: `[batch, seq]`
    /// - output.last_hidden_state: `[batch, seq, H]`; rows at padding hold no meaning
    ///
    /// # Errors
    /// [`InputError::Empty`] for a zero-sized batch or a row without real tokens,
    /// [`InputError::TooLong`] when `seq` exceeds `max_position_embeddings`,
    /// [`InputError::Shape`] when the mask's shape differs from the ids'.
    pub fn forward(&self, input: ModernBertInput<B>) -> Result<ModernBertOutput<B>, InputError> {
        self.check(&input)?;
        if input.execution == Execution::Padded {
            return Ok(self.forward_padded(input));
        }
        let unpadded = UnpaddedInput::from_padded(&input)?;
        let hidden = self.forward_unpadded(&unpadded);
        Ok(ModernBertOutput {
            last_hidden_state: unpadded.pad(hidden),
            attention_mask: input.attention_mask,
        })
    }

    /// The encoder on packed tokens (see [`UnpaddedInput`]).
    ///
    /// # Shapes
    /// - output: `[total_nnz, H]`
    pub fn forward_unpadded(&self, input: &UnpaddedInput<B>) -> Tensor<B, 2> {
        let [total] = input.input_ids.dims();
        let (global_rope, local_rope) = self.rope(|rope| rope.packed(input.positions.clone()));
        let window = self.config.local_attention / 2;
        let hidden = self
            .embeddings
            .forward(input.input_ids.clone().reshape([1, total]));
        let hidden = self.layers(hidden, |layer_type| match layer_type {
            LayerType::Global => AttentionBatch::Unpadded {
                cu_seqlens: &input.cu_seqlens,
                window: None,
                rope: &global_rope,
            },
            LayerType::Local => AttentionBatch::Unpadded {
                cu_seqlens: &input.cu_seqlens,
                window: Some(window),
                rope: &local_rope,
            },
        });
        let [_, _, h] = hidden.dims();
        hidden.reshape([total, h])
    }

    /// The padded reference path ([`Execution::Padded`]), on a checked input.
    fn forward_padded(&self, input: ModernBertInput<B>) -> ModernBertOutput<B> {
        let [batch, seq] = input.input_ids.dims();
        let device = input.input_ids.device();
        // Right padding: position = index in the row, restarting at 0 for every sequence.
        let positions = Tensor::<B, 1, Int>::arange(0..seq as i64, &device)
            .reshape([1, seq])
            .expand([batch, seq]);
        let (global_rope, local_rope) = self.rope(|rope| rope.angles(positions.clone()));
        let masks = AttentionMask::new(input.attention_mask.clone(), self.config.local_attention);
        let hidden = self.embeddings.forward(input.input_ids);
        let hidden = self.layers(hidden, |layer_type| match layer_type {
            LayerType::Global => AttentionBatch::Padded {
                mask: masks.global.clone(),
                rope: &global_rope,
            },
            LayerType::Local => AttentionBatch::Padded {
                mask: masks.local.clone(),
                rope: &local_rope,
            },
        });
        ModernBertOutput {
            last_hidden_state: hidden,
            attention_mask: input.attention_mask,
        }
    }

    fn check(&self, input: &ModernBertInput<B>) -> Result<(), InputError> {
        let [batch, seq] = input.input_ids.dims();
        if batch == 0 || seq == 0 {
            return Err(InputError::Empty(format!(
                "input_ids has shape [{batch}, {seq}]"
            )));
        }
        if input.attention_mask.dims() != [batch, seq] {
            return Err(InputError::Shape(format!(
                "attention_mask is {:?} but input_ids is [{batch}, {seq}]",
                input.attention_mask.dims()
            )));
        }
        let max = self.config.max_position_embeddings;
        if seq > max {
            return Err(InputError::TooLong {
                index: 0,
                len: seq,
                max,
            });
        }
        Ok(())
    }

    /// `angles` of the global and the local rotary embedding.
    fn rope<T>(&self, angles: impl Fn(&RotaryEmbedding<B>) -> T) -> (T, T) {
        (
            angles(&self.global_rotary_emb),
            angles(&self.local_rotary_emb),
        )
    }

    /// Every layer, then `final_norm`; `batch` gives each layer what its type needs.
    fn layers<'a>(
        &self,
        mut hidden: Tensor<B, 3>,
        batch: impl Fn(LayerType) -> AttentionBatch<'a, B>,
    ) -> Tensor<B, 3> {
        for layer in &self.layers {
            hidden = layer.forward(hidden, batch(layer.layer_type));
        }
        layer_norm(&self.final_norm, self.config.norm_eps, hidden)
    }
}
