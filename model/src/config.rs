//! Model configuration: `HfConfig` mirrors HuggingFace's `config.json` (both dialects) and
//! converts, with validation, into the Burn [`ModernBertConfig`] the modules are built from.
//!
//! HF source mirrored: `transformers/models/modernbert/configuration_modernbert.py`.
//! Two dialects exist: v4 (transformers 4.48, what the hub's official checkpoints use:
//! `global_rope_theta`, `local_rope_theta`, `global_attn_every_n_layers`) and v5
//! (`layer_types`, `rope_parameters` keyed by layer type). We read both and write both.

use std::collections::BTreeMap;
use std::path::Path;

use burn::config::Config;
use serde::{Deserialize, Serialize};

use crate::error::{ConfigError, LoadError};

/// Attention kind of one encoder layer.
#[derive(Config, Debug, Copy, PartialEq, Eq)]
pub enum LayerType {
    /// Every token attends to every token of its sequence (RoPE θ = `global_rope_theta`).
    Global,
    /// Sliding window: a token attends to tokens at most `local_attention / 2` positions
    /// away (RoPE θ = `local_rope_theta`).
    Local,
}

impl LayerType {
    /// The name HF v5 uses in `layer_types`.
    pub fn hf_name(self) -> &'static str {
        match self {
            LayerType::Global => "full_attention",
            LayerType::Local => "sliding_attention",
        }
    }
}

/// How a sequence is reduced to one vector for sequence classification.
#[derive(Config, Debug, Copy, PartialEq, Eq)]
pub enum Pooling {
    /// The first token's hidden state (`[CLS]`).
    Cls,
    /// The mean over the sequence's real tokens (`attention_mask == 1`).
    Mean,
}

/// The ModernBERT architecture, as Burn modules need it. Built from a HF `config.json`
/// with [`ModernBertConfig::from_file`], or from the presets [`base`](Self::base) and
/// [`large`](Self::large). Field names are HF's.
#[derive(Config, Debug)]
pub struct ModernBertConfig {
    /// Vocabulary size (rows of `tok_embeddings`).
    #[config(default = 50368)]
    pub vocab_size: usize,
    /// Hidden size H.
    #[config(default = 768)]
    pub hidden_size: usize,
    /// GeGLU inner size; `Wi` projects H to `2 * intermediate_size`.
    #[config(default = 1152)]
    pub intermediate_size: usize,
    /// Number of encoder layers.
    #[config(default = 22)]
    pub num_hidden_layers: usize,
    /// Attention heads; `head_dim = hidden_size / num_attention_heads`.
    #[config(default = 12)]
    pub num_attention_heads: usize,
    /// Longest sequence the model accepts.
    #[config(default = 8192)]
    pub max_position_embeddings: usize,
    /// LayerNorm epsilon.
    #[config(default = 1e-5)]
    pub norm_eps: f64,
    /// Whether the LayerNorms have a bias (false in all released checkpoints).
    #[config(default = false)]
    pub norm_bias: bool,
    /// Whether `Wqkv` and attention `Wo` have a bias.
    #[config(default = false)]
    pub attention_bias: bool,
    /// Whether the MLP's `Wi` and `Wo` have a bias.
    #[config(default = false)]
    pub mlp_bias: bool,
    /// Whether the MLM `decoder` has a bias.
    #[config(default = true)]
    pub decoder_bias: bool,
    /// Whether the prediction head's `dense` has a bias.
    #[config(default = false)]
    pub classifier_bias: bool,
    /// Sliding-window width: local layers see `local_attention / 2` tokens on each side.
    #[config(default = 128)]
    pub local_attention: usize,
    /// Attention kind of each layer (length `num_hidden_layers`).
    #[config(default = "LayerType::every_nth_global(22, 3)")]
    pub layer_types: Vec<LayerType>,
    /// RoPE θ of global layers.
    #[config(default = 160000.0)]
    pub global_rope_theta: f64,
    /// RoPE θ of local layers.
    #[config(default = 10000.0)]
    pub local_rope_theta: f64,
    /// Pooling of the sequence-classification head.
    #[config(default = "Pooling::Mean")]
    pub classifier_pooling: Pooling,
    /// Id of `[PAD]`.
    #[config(default = 50283)]
    pub pad_token_id: u32,
    /// Id of `[CLS]`.
    #[config(default = 50281)]
    pub cls_token_id: u32,
    /// Id of `[SEP]`.
    #[config(default = 50282)]
    pub sep_token_id: u32,
    /// Dropout after the embedding norm.
    #[config(default = 0.0)]
    pub embedding_dropout: f64,
    /// Dropout on attention probabilities and on the attention output (`out_drop`).
    #[config(default = 0.0)]
    pub attention_dropout: f64,
    /// Dropout inside the MLP, before `Wo`.
    #[config(default = 0.0)]
    pub mlp_dropout: f64,
    /// Dropout between the classification head and `classifier`.
    #[config(default = 0.0)]
    pub classifier_dropout: f64,
    /// Class names, indexed by label id (HF `id2label`); its length is `num_labels`.
    #[config(default = "vec![\"LABEL_0\".to_string(), \"LABEL_1\".to_string()]")]
    pub id2label: Vec<String>,
    /// Whether the MLM decoder reuses `tok_embeddings.weight`.
    #[config(default = true)]
    pub tie_word_embeddings: bool,
    /// Std of the truncated-normal init of in-projections and embeddings.
    #[config(default = 0.02)]
    pub initializer_range: f64,
    /// Truncation of the init, in standard deviations.
    #[config(default = 2.0)]
    pub initializer_cutoff_factor: f64,
}

impl LayerType {
    /// `n` layers where layer `i` is global when `i % every == 0` (HF v4
    /// `global_attn_every_n_layers`), local otherwise.
    pub fn every_nth_global(n: usize, every: usize) -> Vec<LayerType> {
        (0..n)
            .map(|i| match every > 0 && i % every == 0 {
                true => LayerType::Global,
                false => LayerType::Local,
            })
            .collect()
    }
}

impl ModernBertConfig {
    /// ModernBERT-base: 22 layers, hidden 768, 12 heads, 149M parameters.
    pub fn base() -> Self {
        Self::new()
    }

    /// ModernBERT-large: 28 layers, hidden 1024, 16 heads, 395M parameters.
    pub fn large() -> Self {
        Self::new()
            .with_hidden_size(1024)
            .with_intermediate_size(2624)
            .with_num_hidden_layers(28)
            .with_num_attention_heads(16)
            .with_layer_types(LayerType::every_nth_global(28, 3))
    }

    /// Reads a HF `config.json` (either dialect) and validates it.
    ///
    /// # Errors
    /// [`LoadError::Io`] if the file cannot be read, [`LoadError::Json`] if it is not a
    /// config, [`LoadError::Config`] if a field is out of range or unsupported.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self, LoadError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|error| LoadError::Io {
            path: path.to_path_buf(),
            error,
        })?;
        Self::from_json(path, &text)
    }

    /// Parses and validates the text of a HF `config.json` (either dialect) held in memory,
    /// e.g. a file picked in a browser; `path` only names it in errors.
    ///
    /// # Errors
    /// As [`from_file`](Self::from_file), less the I/O error.
    pub fn from_json(path: impl AsRef<Path>, text: &str) -> Result<Self, LoadError> {
        let path = path.as_ref();
        let hf: HfConfig = serde_json::from_str(text).map_err(|e| LoadError::Json {
            path: path.to_path_buf(),
            what: "ModernBERT config.json",
            reason: e.to_string(),
        })?;
        ModernBertConfig::try_from(hf).map_err(|error| LoadError::Config {
            path: path.to_path_buf(),
            error,
        })
    }

    /// `hidden_size / num_attention_heads`.
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }

    /// Number of classes of the classification heads (`id2label.len()`).
    pub fn num_labels(&self) -> usize {
        self.id2label.len()
    }

    /// Checks every field's range; called by `TryFrom<HfConfig>` and before building modules.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] naming the first offending field.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |field, reason: String| Err(ConfigError::Invalid { field, reason });
        for (field, value) in [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("max_position_embeddings", self.max_position_embeddings),
        ] {
            if value == 0 {
                return invalid(field, "must be positive".into());
            }
        }
        if self.hidden_size % self.num_attention_heads != 0 {
            return invalid(
                "num_attention_heads",
                format!(
                    "hidden_size {} is not divisible by {} heads",
                    self.hidden_size, self.num_attention_heads
                ),
            );
        }
        if self.head_dim() % 2 != 0 {
            return invalid(
                "num_attention_heads",
                format!("head_dim {} must be even for RoPE", self.head_dim()),
            );
        }
        if self.local_attention < 2 || self.local_attention % 2 != 0 {
            return invalid(
                "local_attention",
                format!("{} must be an even number ≥ 2", self.local_attention),
            );
        }
        if self.layer_types.len() != self.num_hidden_layers {
            return invalid(
                "layer_types",
                format!(
                    "has {} entries for {} layers",
                    self.layer_types.len(),
                    self.num_hidden_layers
                ),
            );
        }
        if !(self.norm_eps > 0.0 && self.norm_eps.is_finite()) {
            return invalid("norm_eps", format!("{} must be positive", self.norm_eps));
        }
        for (field, theta) in [
            ("global_rope_theta", self.global_rope_theta),
            ("local_rope_theta", self.local_rope_theta),
        ] {
            if !(theta > 0.0 && theta.is_finite()) {
                return invalid(field, format!("{theta} must be positive"));
            }
        }
        for (field, p) in [
            ("embedding_dropout", self.embedding_dropout),
            ("attention_dropout", self.attention_dropout),
            ("mlp_dropout", self.mlp_dropout),
            ("classifier_dropout", self.classifier_dropout),
        ] {
            if !(0.0..1.0).contains(&p) {
                return invalid(field, format!("{p} must be in [0, 1)"));
            }
        }
        for (field, id) in [
            ("pad_token_id", self.pad_token_id),
            ("cls_token_id", self.cls_token_id),
            ("sep_token_id", self.sep_token_id),
        ] {
            if id as usize >= self.vocab_size {
                return invalid(
                    field,
                    format!("{id} is not below vocab_size {}", self.vocab_size),
                );
            }
        }
        if self.id2label.is_empty() {
            return invalid("id2label", "needs at least one label".into());
        }
        Ok(())
    }
}

/// The keys of a HF `config.json`, as written, in both dialects. Unknown keys are ignored
/// (hub configs carry many that do not affect the math, e.g. `reference_compile`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HfConfig {
    /// `["ModernBertForMaskedLM"]` and the like.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub architectures: Option<Vec<String>>,
    /// Must be `"modernbert"` when present.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_type: Option<String>,
    #[serde(default = "d::vocab_size")]
    pub vocab_size: usize,
    #[serde(default = "d::hidden_size")]
    pub hidden_size: usize,
    #[serde(default = "d::intermediate_size")]
    pub intermediate_size: usize,
    #[serde(default = "d::num_hidden_layers")]
    pub num_hidden_layers: usize,
    #[serde(default = "d::num_attention_heads")]
    pub num_attention_heads: usize,
    #[serde(default = "d::max_position_embeddings")]
    pub max_position_embeddings: usize,
    /// Hub configs also carry `layer_norm_eps`; HF ignores it, and so do we.
    #[serde(default = "d::norm_eps")]
    pub norm_eps: f64,
    #[serde(default)]
    pub norm_bias: bool,
    #[serde(default)]
    pub attention_bias: bool,
    #[serde(default)]
    pub mlp_bias: bool,
    #[serde(default = "d::yes")]
    pub decoder_bias: bool,
    #[serde(default)]
    pub classifier_bias: bool,
    #[serde(default = "d::gelu")]
    pub hidden_activation: String,
    #[serde(default = "d::gelu")]
    pub classifier_activation: String,
    #[serde(default = "d::local_attention")]
    pub local_attention: usize,
    /// v4: layer `i` is global when `i % global_attn_every_n_layers == 0`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub global_attn_every_n_layers: Option<usize>,
    /// v5: `"full_attention"` / `"sliding_attention"` per layer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layer_types: Option<Vec<String>>,
    /// v4.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub global_rope_theta: Option<f64>,
    /// v4.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local_rope_theta: Option<f64>,
    /// v5: `{"full_attention": {"rope_theta": .., "rope_type": "default"}, "sliding_attention": ..}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rope_parameters: Option<BTreeMap<String, HfRopeParameters>>,
    #[serde(default = "d::pooling")]
    pub classifier_pooling: String,
    #[serde(default = "d::pad")]
    pub pad_token_id: Option<u32>,
    #[serde(default = "d::cls")]
    pub cls_token_id: Option<u32>,
    #[serde(default = "d::sep")]
    pub sep_token_id: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bos_token_id: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eos_token_id: Option<u32>,
    #[serde(default)]
    pub embedding_dropout: f64,
    #[serde(default)]
    pub attention_dropout: f64,
    #[serde(default)]
    pub mlp_dropout: f64,
    #[serde(default)]
    pub classifier_dropout: f64,
    /// Label names by id; keys are decimal strings as HF writes them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id2label: Option<BTreeMap<String, String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label2id: Option<BTreeMap<String, usize>>,
    #[serde(default = "d::yes")]
    pub tie_word_embeddings: bool,
    #[serde(default = "d::initializer_range")]
    pub initializer_range: f64,
    #[serde(default = "d::initializer_cutoff_factor")]
    pub initializer_cutoff_factor: f64,
    /// Free-form extra keys written back unchanged (e.g. `torch_dtype`).
    #[serde(flatten)]
    pub extra: BTreeMap<String, serde_json::Value>,
}

/// One entry of v5 `rope_parameters`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HfRopeParameters {
    /// θ.
    pub rope_theta: f64,
    /// Only `"default"` is supported.
    #[serde(default = "d::rope_type")]
    pub rope_type: String,
}

/// HF's defaults (`ModernBertConfig.__init__`).
mod d {
    pub fn vocab_size() -> usize {
        50368
    }
    pub fn hidden_size() -> usize {
        768
    }
    pub fn intermediate_size() -> usize {
        1152
    }
    pub fn num_hidden_layers() -> usize {
        22
    }
    pub fn num_attention_heads() -> usize {
        12
    }
    pub fn max_position_embeddings() -> usize {
        8192
    }
    pub fn norm_eps() -> f64 {
        1e-5
    }
    pub fn yes() -> bool {
        true
    }
    pub fn gelu() -> String {
        "gelu".into()
    }
    pub fn local_attention() -> usize {
        128
    }
    pub fn pooling() -> String {
        "cls".into()
    }
    pub fn pad() -> Option<u32> {
        Some(50283)
    }
    pub fn cls() -> Option<u32> {
        Some(50281)
    }
    pub fn sep() -> Option<u32> {
        Some(50282)
    }
    pub fn initializer_range() -> f64 {
        0.02
    }
    pub fn initializer_cutoff_factor() -> f64 {
        2.0
    }
    pub fn rope_type() -> String {
        "default".into()
    }
}

impl HfConfig {
    /// θ for a layer type: v5 `rope_parameters` first, then the v4 key, then HF's default.
    fn rope_theta(&self, layer_type: LayerType) -> Result<f64, ConfigError> {
        if let Some(params) = self
            .rope_parameters
            .as_ref()
            .and_then(|p| p.get(layer_type.hf_name()))
        {
            if params.rope_type != "default" {
                return Err(ConfigError::Unsupported {
                    field: "rope_parameters",
                    value: format!("rope_type {:?}", params.rope_type),
                    reason: "only \"default\" RoPE is implemented".into(),
                });
            }
            return Ok(params.rope_theta);
        }
        Ok(match layer_type {
            LayerType::Global => self.global_rope_theta.unwrap_or(160000.0),
            LayerType::Local => self.local_rope_theta.unwrap_or(10000.0),
        })
    }

    fn layer_types(&self) -> Result<Vec<LayerType>, ConfigError> {
        match &self.layer_types {
            Some(names) => names
                .iter()
                .map(|name| match name.as_str() {
                    "full_attention" => Ok(LayerType::Global),
                    "sliding_attention" => Ok(LayerType::Local),
                    other => Err(ConfigError::Unsupported {
                        field: "layer_types",
                        value: format!("{other:?}"),
                        reason: "expected \"full_attention\" or \"sliding_attention\"".into(),
                    }),
                })
                .collect(),
            None => {
                let every = self.global_attn_every_n_layers.unwrap_or(3);
                if every == 0 {
                    return Err(ConfigError::Invalid {
                        field: "global_attn_every_n_layers",
                        reason: "must be positive".into(),
                    });
                }
                Ok(LayerType::every_nth_global(self.num_hidden_layers, every))
            }
        }
    }

    fn id2label(&self) -> Result<Vec<String>, ConfigError> {
        let Some(map) = &self.id2label else {
            let n = self
                .extra
                .get("num_labels")
                .and_then(|v| v.as_u64())
                .unwrap_or(2) as usize;
            return Ok((0..n).map(|i| format!("LABEL_{i}")).collect());
        };
        let mut labels = vec![None; map.len()];
        for (id, name) in map {
            let index = id.parse::<usize>().ok().filter(|&i| i < map.len());
            let Some(i) = index else {
                return Err(ConfigError::Invalid {
                    field: "id2label",
                    reason: format!("key {id:?} is not an id in 0..{}", map.len()),
                });
            };
            labels[i] = Some(name.clone());
        }
        Ok(labels
            .into_iter()
            .map(|l| l.expect("ids 0..n are all present"))
            .collect())
    }
}

fn require_gelu(field: &'static str, value: &str) -> Result<(), ConfigError> {
    match value {
        "gelu" => Ok(()),
        other => Err(ConfigError::Unsupported {
            field,
            value: format!("{other:?}"),
            reason:
                "only \"gelu\" (exact erf GELU, as in all ModernBERT checkpoints) is implemented"
                    .into(),
        }),
    }
}

impl TryFrom<HfConfig> for ModernBertConfig {
    type Error = ConfigError;

    fn try_from(hf: HfConfig) -> Result<Self, ConfigError> {
        if let Some(model_type) = hf.model_type.as_deref().filter(|t| *t != "modernbert") {
            return Err(ConfigError::Unsupported {
                field: "model_type",
                value: format!("{model_type:?}"),
                reason: "this crate loads \"modernbert\" checkpoints only".into(),
            });
        }
        require_gelu("hidden_activation", &hf.hidden_activation)?;
        require_gelu("classifier_activation", &hf.classifier_activation)?;
        let classifier_pooling = match hf.classifier_pooling.as_str() {
            "cls" => Pooling::Cls,
            "mean" => Pooling::Mean,
            other => {
                return Err(ConfigError::Unsupported {
                    field: "classifier_pooling",
                    value: format!("{other:?}"),
                    reason: "expected \"cls\" or \"mean\"".into(),
                })
            }
        };
        let token = |field, id: Option<u32>| {
            id.ok_or(ConfigError::Invalid {
                field,
                reason: "must be set".into(),
            })
        };
        let config = ModernBertConfig::new()
            .with_vocab_size(hf.vocab_size)
            .with_hidden_size(hf.hidden_size)
            .with_intermediate_size(hf.intermediate_size)
            .with_num_hidden_layers(hf.num_hidden_layers)
            .with_num_attention_heads(hf.num_attention_heads)
            .with_max_position_embeddings(hf.max_position_embeddings)
            .with_norm_eps(hf.norm_eps)
            .with_norm_bias(hf.norm_bias)
            .with_attention_bias(hf.attention_bias)
            .with_mlp_bias(hf.mlp_bias)
            .with_decoder_bias(hf.decoder_bias)
            .with_classifier_bias(hf.classifier_bias)
            .with_local_attention(hf.local_attention)
            .with_layer_types(hf.layer_types()?)
            .with_global_rope_theta(hf.rope_theta(LayerType::Global)?)
            .with_local_rope_theta(hf.rope_theta(LayerType::Local)?)
            .with_classifier_pooling(classifier_pooling)
            .with_pad_token_id(token("pad_token_id", hf.pad_token_id)?)
            .with_cls_token_id(token("cls_token_id", hf.cls_token_id)?)
            .with_sep_token_id(token("sep_token_id", hf.sep_token_id)?)
            .with_embedding_dropout(hf.embedding_dropout)
            .with_attention_dropout(hf.attention_dropout)
            .with_mlp_dropout(hf.mlp_dropout)
            .with_classifier_dropout(hf.classifier_dropout)
            .with_id2label(hf.id2label()?)
            .with_tie_word_embeddings(hf.tie_word_embeddings)
            .with_initializer_range(hf.initializer_range)
            .with_initializer_cutoff_factor(hf.initializer_cutoff_factor);
        config.validate()?;
        Ok(config)
    }
}

impl ModernBertConfig {
    /// The HF `config.json` for this config, written in both dialects at once (v4 keys and
    /// v5 `layer_types`/`rope_parameters`) so that transformers 4.48+ and 5.x read it alike.
    /// `architecture` is the HF class name, e.g. `"ModernBertForMaskedLM"`.
    pub fn to_hf(&self, architecture: &str) -> HfConfig {
        let every_n = (1..=self.num_hidden_layers)
            .find(|&n| LayerType::every_nth_global(self.num_hidden_layers, n) == self.layer_types);
        let rope = |theta| HfRopeParameters {
            rope_theta: theta,
            rope_type: "default".into(),
        };
        let mut extra = BTreeMap::new();
        extra.insert("num_labels".into(), serde_json::json!(self.num_labels()));
        HfConfig {
            architectures: Some(vec![architecture.to_string()]),
            model_type: Some("modernbert".into()),
            vocab_size: self.vocab_size,
            hidden_size: self.hidden_size,
            intermediate_size: self.intermediate_size,
            num_hidden_layers: self.num_hidden_layers,
            num_attention_heads: self.num_attention_heads,
            max_position_embeddings: self.max_position_embeddings,
            norm_eps: self.norm_eps,
            norm_bias: self.norm_bias,
            attention_bias: self.attention_bias,
            mlp_bias: self.mlp_bias,
            decoder_bias: self.decoder_bias,
            classifier_bias: self.classifier_bias,
            hidden_activation: "gelu".into(),
            classifier_activation: "gelu".into(),
            local_attention: self.local_attention,
            global_attn_every_n_layers: every_n,
            layer_types: Some(
                self.layer_types
                    .iter()
                    .map(|t| t.hf_name().to_string())
                    .collect(),
            ),
            global_rope_theta: Some(self.global_rope_theta),
            local_rope_theta: Some(self.local_rope_theta),
            rope_parameters: Some(BTreeMap::from([
                ("full_attention".to_string(), rope(self.global_rope_theta)),
                ("sliding_attention".to_string(), rope(self.local_rope_theta)),
            ])),
            classifier_pooling: match self.classifier_pooling {
                Pooling::Cls => "cls".into(),
                Pooling::Mean => "mean".into(),
            },
            pad_token_id: Some(self.pad_token_id),
            cls_token_id: Some(self.cls_token_id),
            sep_token_id: Some(self.sep_token_id),
            bos_token_id: Some(self.cls_token_id),
            eos_token_id: Some(self.sep_token_id),
            embedding_dropout: self.embedding_dropout,
            attention_dropout: self.attention_dropout,
            mlp_dropout: self.mlp_dropout,
            classifier_dropout: self.classifier_dropout,
            id2label: Some(
                self.id2label
                    .iter()
                    .enumerate()
                    .map(|(i, l)| (i.to_string(), l.clone()))
                    .collect(),
            ),
            label2id: Some(
                self.id2label
                    .iter()
                    .enumerate()
                    .map(|(i, l)| (l.clone(), i))
                    .collect(),
            ),
            tie_word_embeddings: self.tie_word_embeddings,
            initializer_range: self.initializer_range,
            initializer_cutoff_factor: self.initializer_cutoff_factor,
            extra,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Result<ModernBertConfig, ConfigError> {
        ModernBertConfig::try_from(serde_json::from_str::<HfConfig>(json).unwrap())
    }

    #[test]
    fn v4_dialect() {
        let c = parse(
            r#"{"model_type": "modernbert", "num_hidden_layers": 4, "global_attn_every_n_layers": 3,
                "global_rope_theta": 1000.0, "local_rope_theta": 50.0, "norm_eps": 1e-6,
                "layer_norm_eps": 1e-3,
                "classifier_pooling": "mean", "reference_compile": null}"#,
        )
        .unwrap();
        use LayerType::*;
        assert_eq!(c.layer_types, vec![Global, Local, Local, Global]);
        assert_eq!((c.global_rope_theta, c.local_rope_theta), (1000.0, 50.0));
        assert_eq!(c.norm_eps, 1e-6);
        assert_eq!(c.classifier_pooling, Pooling::Mean);
    }

    #[test]
    fn v5_dialect() {
        let c = parse(
            r#"{"num_hidden_layers": 3,
                "layer_types": ["sliding_attention", "full_attention", "sliding_attention"],
                "rope_parameters": {"full_attention": {"rope_theta": 7.0, "rope_type": "default"},
                                    "sliding_attention": {"rope_theta": 3.0, "rope_type": "default"}},
                "id2label": {"1": "b", "0": "a"}}"#,
        )
        .unwrap();
        use LayerType::*;
        assert_eq!(c.layer_types, vec![Local, Global, Local]);
        assert_eq!((c.global_rope_theta, c.local_rope_theta), (7.0, 3.0));
        assert_eq!(c.id2label, vec!["a", "b"]);
    }

    #[test]
    fn written_config_reads_back() {
        let c = ModernBertConfig::large().with_id2label(vec!["x".into(), "y".into(), "z".into()]);
        let json = serde_json::to_string(&c.to_hf("ModernBertForMaskedLM")).unwrap();
        let back = parse(&json).unwrap();
        assert_eq!(back.layer_types, c.layer_types);
        assert_eq!(back.hidden_size, 1024);
        assert_eq!(back.id2label, c.id2label);
    }

    #[test]
    fn out_of_range_fields_are_named() {
        let cases = [
            (r#"{"num_attention_heads": 7}"#, "num_attention_heads"),
            (r#"{"local_attention": 3}"#, "local_attention"),
            (r#"{"vocab_size": 100}"#, "pad_token_id"),
            (r#"{"layer_types": ["full_attention"]}"#, "layer_types"),
            (r#"{"norm_eps": -1.0}"#, "norm_eps"),
            (r#"{"attention_dropout": 1.5}"#, "attention_dropout"),
            (r#"{"hidden_activation": "relu"}"#, "hidden_activation"),
            (r#"{"classifier_pooling": "max"}"#, "classifier_pooling"),
            (r#"{"model_type": "bert"}"#, "model_type"),
            (r#"{"id2label": {"0": "a", "5": "b"}}"#, "id2label"),
        ];
        for (json, field) in cases {
            let err = parse(json).unwrap_err().to_string();
            assert!(
                err.contains(field),
                "{json}: error {err:?} does not name {field}"
            );
        }
    }
}
