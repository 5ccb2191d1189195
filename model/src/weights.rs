//! HF checkpoint ↔ Burn module mapping: loading `from_pretrained` and writing
//! `save_pretrained`, with the key names `transformers` uses.
//!
//! | HF key (`P` = `model.` in task checkpoints, empty for a bare `ModernBertModel`) | Burn field | layout |
//! |---|---|---|
//! | `P embeddings.tok_embeddings.weight` `[V, H]` | `embeddings.tok_embeddings.weight` | same |
//! | `P embeddings.norm.{weight,bias}` | `embeddings.norm.{gamma,beta}` | same |
//! | `P layers.N.attn_norm.{weight,bias}` (absent for N = 0) | `layers[N].attn_norm` | same |
//! | `P layers.N.attn.Wqkv.{weight,bias}` `[3H, H]` | `layers[N].attn.Wqkv` `[H, 3H]` | transposed |
//! | `P layers.N.attn.Wo.{weight,bias}` `[H, H]` | `layers[N].attn.Wo` | transposed |
//! | `P layers.N.mlp_norm.{weight,bias}` | `layers[N].mlp_norm` | same |
//! | `P layers.N.mlp.Wi.{weight,bias}` `[2I, H]` | `layers[N].mlp.Wi` `[H, 2I]` | transposed |
//! | `P layers.N.mlp.Wo.{weight,bias}` `[H, I]` | `layers[N].mlp.Wo` `[I, H]` | transposed |
//! | `P final_norm.{weight,bias}` | `final_norm` | same |
//! | `head.dense.{weight,bias}`, `head.norm.{weight,bias}` | `head.dense`, `head.norm` | transposed / same |
//! | `decoder.weight` `[V, H]` | tied: `tok_embeddings.weight`; untied: `decoder.weight` | same |
//! | `decoder.bias` `[V]` | `decoder.bias` | same |
//! | `classifier.{weight,bias}` `[L, H]`, `[L]` | `classifier` `[H, L]` | transposed |
//!
//! `{weight,bias}`: LayerNorm `weight`/`bias` are Burn's `gamma`/`beta`; biases exist only
//! where the config enables them. HF writes no `decoder.weight` when tied; when a file has
//! one anyway, it must equal `tok_embeddings.weight`.

use std::path::Path;

use burn::module::{Module, Param};
use burn::nn::{Embedding, LayerNorm, Linear};
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};

use crate::checkpoint::{write_safetensors, SafetensorsReader, WEIGHTS_FILE};
use crate::config::ModernBertConfig;
use crate::error::{LoadError, SaveError};
use crate::heads::{
    ModernBertForMaskedLM, ModernBertForSequenceClassification, ModernBertForTokenClassification,
    ModernBertPredictionHead,
};
use crate::model::ModernBertModel;

/// Visits every parameter of a model with its HF key, and may replace it.
pub trait ParamVisitor<B: Backend> {
    /// `transposed`: the Burn tensor is the transpose of the HF one (linear weights).
    fn visit<const D: usize>(
        &mut self,
        key: &str,
        param: Param<Tensor<B, D>>,
        transposed: bool,
    ) -> Param<Tensor<B, D>>;

    /// `key` is a tied copy of `source` (the MLM decoder of `tok_embeddings`).
    fn tied(&mut self, _key: &str, _source: &str) {}
}

fn visit_linear<B: Backend, V: ParamVisitor<B>>(
    v: &mut V,
    key: &str,
    mut linear: Linear<B>,
) -> Linear<B> {
    linear.weight = v.visit(&format!("{key}.weight"), linear.weight, true);
    linear.bias = linear
        .bias
        .map(|b| v.visit(&format!("{key}.bias"), b, false));
    linear
}

fn visit_norm<B: Backend, V: ParamVisitor<B>>(
    v: &mut V,
    key: &str,
    mut norm: LayerNorm<B>,
) -> LayerNorm<B> {
    norm.gamma = v.visit(&format!("{key}.weight"), norm.gamma, false);
    norm.beta = norm.beta.map(|b| v.visit(&format!("{key}.bias"), b, false));
    norm
}

fn visit_embedding<B: Backend, V: ParamVisitor<B>>(
    v: &mut V,
    key: &str,
    mut embedding: Embedding<B>,
) -> Embedding<B> {
    embedding.weight = v.visit(&format!("{key}.weight"), embedding.weight, false);
    embedding
}

fn visit_head<B: Backend, V: ParamVisitor<B>>(
    v: &mut V,
    mut head: ModernBertPredictionHead<B>,
) -> ModernBertPredictionHead<B> {
    head.dense = visit_linear(v, "head.dense", head.dense);
    head.norm = visit_norm(v, "head.norm", head.norm);
    head
}

/// A model class with a HF counterpart: it can be loaded from and saved to a checkpoint
/// directory that `transformers` reads.
pub trait HfModel<B: Backend>: Module<B> {
    /// The HF class name written to `architectures` in config.json.
    const ARCHITECTURE: &'static str;

    /// Builds the model (parameters initialized lazily).
    fn init_with(config: &ModernBertConfig, device: &B::Device) -> Self;

    /// The architecture.
    fn config(&self) -> &ModernBertConfig;

    /// Passes every parameter through `v` with its HF key; the encoder's keys start with
    /// `encoder_prefix` (`"model."` or `""`).
    fn visit_hf<V: ParamVisitor<B>>(self, v: &mut V, encoder_prefix: &str) -> Self;

    /// Loads a checkpoint directory holding `config.json` and `model.safetensors` (or a
    /// sharded `model.safetensors.index.json`), weights in f32, f16 or bf16.
    ///
    /// # Errors
    /// [`LoadError`] naming the file, and the keys or field, that is missing, corrupt,
    /// mis-shaped or unexpected.
    fn from_pretrained(dir: impl AsRef<Path>, device: &B::Device) -> Result<Self, LoadError> {
        let dir = dir.as_ref();
        let config = ModernBertConfig::from_file(dir.join("config.json"))?;
        let mut reader = SafetensorsReader::open_dir(dir)?;
        Self::init_with(&config, device).load(&mut reader, device)
    }

    /// Loads weights from an open reader into this model, checking that the checkpoint's
    /// keys are exactly the model's.
    ///
    /// # Errors
    /// As [`from_pretrained`](Self::from_pretrained).
    fn load(self, reader: &mut SafetensorsReader, device: &B::Device) -> Result<Self, LoadError> {
        // A bare encoder (`ModernBertModel`) can be loaded from a task checkpoint: its
        // keys then carry the `model.` prefix and the head's keys are not ours to check.
        let encoder_only = Self::ARCHITECTURE == ModernBertModel::<B>::ARCHITECTURE;
        let prefixed = reader.keys().any(|k| k.starts_with("model."));
        let prefix = if encoder_only && !prefixed {
            ""
        } else {
            "model."
        };
        let mut loader = Loader {
            reader,
            device,
            missing: Vec::new(),
            error: None,
        };
        let model = self.visit_hf(&mut loader, prefix);
        let Loader {
            reader,
            missing,
            error,
            ..
        } = loader;
        if let Some(error) = error {
            return Err(error);
        }
        let unexpected: Vec<String> = reader
            .untaken()
            .into_iter()
            .filter(|k| !(encoder_only && prefixed) || k.starts_with(prefix))
            .collect();
        if !missing.is_empty() || !unexpected.is_empty() {
            return Err(LoadError::Keys {
                path: reader.source().to_path_buf(),
                missing,
                unexpected,
            });
        }
        Ok(model)
    }

    /// Writes `config.json` and `model.safetensors` (f32, HF key names) into `dir`, creating
    /// it if needed. `transformers` loads the result with `from_pretrained`.
    ///
    /// # Errors
    /// [`SaveError`] if a file cannot be written.
    fn save_pretrained(&self, dir: impl AsRef<Path>) -> Result<(), SaveError> {
        let dir = dir.as_ref();
        std::fs::create_dir_all(dir).map_err(|error| SaveError::Io {
            path: dir.to_path_buf(),
            error,
        })?;
        let prefix = if Self::ARCHITECTURE == ModernBertModel::<B>::ARCHITECTURE {
            ""
        } else {
            "model."
        };
        let mut saver = Saver {
            tensors: Vec::new(),
        };
        self.clone().visit_hf(&mut saver, prefix);
        write_safetensors(&dir.join(WEIGHTS_FILE), saver.tensors)?;
        let config_path = dir.join("config.json");
        let json = serde_json::to_string_pretty(&self.config().to_hf(Self::ARCHITECTURE))
            .expect("HfConfig serializes to JSON");
        std::fs::write(&config_path, json).map_err(|error| SaveError::Io {
            path: config_path,
            error,
        })
    }
}

/// Replaces each parameter with the checkpoint's tensor; records missing keys and the
/// first hard error.
struct Loader<'a, B: Backend> {
    reader: &'a mut SafetensorsReader,
    device: &'a B::Device,
    missing: Vec<String>,
    error: Option<LoadError>,
}

impl<B: Backend> ParamVisitor<B> for Loader<'_, B> {
    fn visit<const D: usize>(
        &mut self,
        key: &str,
        param: Param<Tensor<B, D>>,
        transposed: bool,
    ) -> Param<Tensor<B, D>> {
        if self.error.is_some() {
            return param;
        }
        let mut expected = param.lazy_shape().dims::<D>().to_vec();
        if transposed {
            expected.reverse();
        }
        let raw = match self.reader.take(key) {
            Ok(Some(raw)) => raw,
            Ok(None) => {
                self.missing.push(key.to_string());
                return param;
            }
            Err(e) => {
                self.error = Some(e);
                return param;
            }
        };
        if raw.shape != expected {
            self.error = Some(LoadError::Shape {
                path: raw.path,
                key: key.to_string(),
                expected,
                found: raw.shape,
            });
            return param;
        }
        let tensor = Tensor::<B, D>::from_data(TensorData::new(raw.values, raw.shape), self.device);
        let tensor = if transposed {
            tensor.transpose()
        } else {
            tensor
        };
        Param::initialized(param.id, tensor.require_grad())
    }

    fn tied(&mut self, key: &str, source: &str) {
        if self.error.is_some() {
            return;
        }
        // Absent (as HF writes it) is fine; present must be an exact copy.
        match (self.reader.take(key), self.reader.read(source)) {
            (Ok(Some(copy)), Ok(Some(original)))
                if copy.values != original.values || copy.shape != original.shape =>
            {
                self.error = Some(LoadError::TiedWeightMismatch { path: copy.path });
            }
            (Err(e), _) | (_, Err(e)) => self.error = Some(e),
            _ => {}
        }
    }
}

/// Collects every parameter as an f32 tensor in HF layout.
struct Saver {
    tensors: Vec<(String, Vec<f32>, Vec<usize>)>,
}

impl<B: Backend> ParamVisitor<B> for Saver {
    fn visit<const D: usize>(
        &mut self,
        key: &str,
        param: Param<Tensor<B, D>>,
        transposed: bool,
    ) -> Param<Tensor<B, D>> {
        let tensor = if transposed {
            param.val().transpose()
        } else {
            param.val()
        };
        let data = tensor.into_data().convert::<f32>();
        let values = data.to_vec::<f32>().expect("converted to f32 above");
        self.tensors
            .push((key.to_string(), values, data.shape.dims::<D>().to_vec()));
        param
    }
}

impl<B: Backend> HfModel<B> for ModernBertModel<B> {
    const ARCHITECTURE: &'static str = "ModernBertModel";

    fn init_with(config: &ModernBertConfig, device: &B::Device) -> Self {
        config.init(device)
    }

    fn config(&self) -> &ModernBertConfig {
        &self.config
    }

    fn visit_hf<V: ParamVisitor<B>>(mut self, v: &mut V, p: &str) -> Self {
        self.embeddings.tok_embeddings = visit_embedding(
            v,
            &format!("{p}embeddings.tok_embeddings"),
            self.embeddings.tok_embeddings,
        );
        self.embeddings.norm = visit_norm(v, &format!("{p}embeddings.norm"), self.embeddings.norm);
        self.layers = self
            .layers
            .into_iter()
            .enumerate()
            .map(|(n, mut layer)| {
                let key = format!("{p}layers.{n}");
                layer.attn_norm = layer
                    .attn_norm
                    .map(|norm| visit_norm(v, &format!("{key}.attn_norm"), norm));
                layer.attn.Wqkv = visit_linear(v, &format!("{key}.attn.Wqkv"), layer.attn.Wqkv);
                layer.attn.Wo = visit_linear(v, &format!("{key}.attn.Wo"), layer.attn.Wo);
                layer.mlp_norm = visit_norm(v, &format!("{key}.mlp_norm"), layer.mlp_norm);
                layer.mlp.Wi = visit_linear(v, &format!("{key}.mlp.Wi"), layer.mlp.Wi);
                layer.mlp.Wo = visit_linear(v, &format!("{key}.mlp.Wo"), layer.mlp.Wo);
                layer
            })
            .collect();
        self.final_norm = visit_norm(v, &format!("{p}final_norm"), self.final_norm);
        self
    }
}

impl<B: Backend> HfModel<B> for ModernBertForMaskedLM<B> {
    const ARCHITECTURE: &'static str = "ModernBertForMaskedLM";

    fn init_with(config: &ModernBertConfig, device: &B::Device) -> Self {
        config.init_masked_lm(device)
    }

    fn config(&self) -> &ModernBertConfig {
        &self.model.config
    }

    fn visit_hf<V: ParamVisitor<B>>(mut self, v: &mut V, p: &str) -> Self {
        self.model = self.model.visit_hf(v, p);
        self.head = visit_head(v, self.head);
        match self.decoder.weight {
            Some(weight) => self.decoder.weight = Some(v.visit("decoder.weight", weight, false)),
            None => v.tied(
                "decoder.weight",
                &format!("{p}embeddings.tok_embeddings.weight"),
            ),
        }
        self.decoder.bias = self.decoder.bias.map(|b| v.visit("decoder.bias", b, false));
        self
    }
}

impl<B: Backend> HfModel<B> for ModernBertForSequenceClassification<B> {
    const ARCHITECTURE: &'static str = "ModernBertForSequenceClassification";

    fn init_with(config: &ModernBertConfig, device: &B::Device) -> Self {
        config.init_sequence_classification(device)
    }

    fn config(&self) -> &ModernBertConfig {
        &self.model.config
    }

    fn visit_hf<V: ParamVisitor<B>>(mut self, v: &mut V, p: &str) -> Self {
        self.model = self.model.visit_hf(v, p);
        self.head = visit_head(v, self.head);
        self.classifier = visit_linear(v, "classifier", self.classifier);
        self
    }
}

impl<B: Backend> HfModel<B> for ModernBertForTokenClassification<B> {
    const ARCHITECTURE: &'static str = "ModernBertForTokenClassification";

    fn init_with(config: &ModernBertConfig, device: &B::Device) -> Self {
        config.init_token_classification(device)
    }

    fn config(&self) -> &ModernBertConfig {
        &self.model.config
    }

    fn visit_hf<V: ParamVisitor<B>>(mut self, v: &mut V, p: &str) -> Self {
        self.model = self.model.visit_hf(v, p);
        self.head = visit_head(v, self.head);
        self.classifier = visit_linear(v, "classifier", self.classifier);
        self
    }
}
