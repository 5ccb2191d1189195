//! What every task pipeline shares: loading a task model and its tokenizer from a
//! checkpoint directory (checking the checkpoint has the task's head), and running texts
//! through it in length-sorted, token-capped batches.

use std::path::{Path, PathBuf};

use burn::tensor::{DType, Tensor};
use modernbert::{Backend, HfConfig, HfModel, LoadError, ModernBertConfig, ModernBertTokenizer};

use crate::batching::run_batched;
use crate::encode::{encode_texts, EncodedText};
use crate::error::InferError;
use crate::options::InferOptions;

/// A task and the HF class whose head it needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Task {
    FillMask,
    Embed,
    Classify,
    TokenClassify,
}

impl Task {
    fn name(self) -> &'static str {
        match self {
            Task::FillMask => "fill-mask",
            Task::Embed => "embed",
            Task::Classify => "sequence classification",
            Task::TokenClassify => "token classification",
        }
    }

    /// The HF class a checkpoint must be; any will do for embeddings (the encoder of a
    /// task checkpoint loads on its own).
    fn architecture(self) -> Option<&'static str> {
        match self {
            Task::FillMask => Some("ModernBertForMaskedLM"),
            Task::Embed => None,
            Task::Classify => Some("ModernBertForSequenceClassification"),
            Task::TokenClassify => Some("ModernBertForTokenClassification"),
        }
    }
}

/// A loaded task model, its tokenizer and the batching options.
#[derive(Debug)]
pub(crate) struct Pipeline<B: Backend, M> {
    pub model: M,
    pub tokenizer: ModernBertTokenizer,
    pub device: B::Device,
    pub options: InferOptions,
    pub dir: PathBuf,
}

/// `config.json`'s `architectures`, if the file parses and has them.
fn architectures(dir: &Path) -> Option<Vec<String>> {
    let text = std::fs::read_to_string(dir.join("config.json")).ok()?;
    serde_json::from_str::<HfConfig>(&text).ok()?.architectures
}

impl<B: Backend, M: HfModel<B>> Pipeline<B, M> {
    /// Loads `M` and `tokenizer.json` from `dir` for `task`.
    ///
    /// # Errors
    /// [`InferError::NoHead`] when config.json's `architectures` (or the weights) show the
    /// checkpoint lacks the task's head, [`InferError::LabelCount`] when the classifier's
    /// size disagrees with `id2label`, [`InferError::Load`] otherwise.
    pub fn load(dir: &Path, task: Task, device: &B::Device) -> Result<Self, InferError> {
        let no_head = |needs, found| InferError::NoHead {
            task: task.name(),
            dir: dir.to_path_buf(),
            needs,
            found,
        };
        if let (Some(needs), Some(found)) = (task.architecture(), architectures(dir)) {
            if !found.iter().any(|a| a == needs) {
                return Err(no_head(needs, format!("{found:?}")));
            }
        }
        let model = M::from_pretrained(dir, device).map_err(|error| match error {
            LoadError::Shape {
                path,
                key,
                expected,
                found,
            } if key.starts_with("classifier.") => InferError::LabelCount {
                path,
                id2label: expected[0],
                weights: found[0],
            },
            LoadError::Keys { missing, .. }
                if task.architecture().is_some()
                    && missing.iter().any(|k| {
                        k.starts_with("head.")
                            || k.starts_with("decoder.")
                            || k.starts_with("classifier.")
                    }) =>
            {
                no_head(
                    task.architecture().unwrap_or_default(),
                    format!("nothing (and the weights lack {})", missing.join(", ")),
                )
            }
            other => InferError::Load(other),
        })?;
        let tokenizer = ModernBertTokenizer::from_file(dir.join("tokenizer.json"), model.config())?;
        Ok(Self {
            model,
            tokenizer,
            device: device.clone(),
            options: InferOptions::default(),
            dir: dir.to_path_buf(),
        })
    }

    /// The model's architecture.
    pub fn config(&self) -> &ModernBertConfig {
        self.model.config()
    }

    /// Tokenizes `texts` under the over-long policy.
    ///
    /// # Errors
    /// As [`encode_texts`].
    pub fn encode(&self, texts: &[&str]) -> Result<Vec<EncodedText>, InferError> {
        self.options.check()?;
        encode_texts(
            &self.tokenizer,
            texts,
            self.options.over_long,
            self.config().max_position_embeddings,
        )
    }

    /// Runs `run` on length-sorted, token-capped batches of `encoded` (it gets the batch's
    /// texts and returns one result each) and returns the results in input order.
    ///
    /// # Errors
    /// The first error of `run`.
    pub fn run<T>(
        &self,
        encoded: &[EncodedText],
        mut run: impl FnMut(&[&EncodedText]) -> Result<Vec<T>, InferError>,
    ) -> Result<Vec<T>, InferError> {
        self.options.check()?;
        let lengths: Vec<usize> = encoded.iter().map(|e| e.ids.len()).collect();
        run_batched(
            &lengths,
            self.options.max_batch_tokens,
            self.options.progress.as_ref(),
            |batch| {
                let texts: Vec<&EncodedText> = batch.iter().map(|&i| &encoded[i]).collect();
                run(&texts)
            },
        )
    }
}

/// The token ids of a batch, for `ModernBertInput::from_token_ids`.
pub(crate) fn token_ids(batch: &[&EncodedText]) -> Vec<Vec<u32>> {
    batch.iter().map(|e| e.ids.clone()).collect()
}

/// Reads a tensor back to the host as f32 (a device-host sync point).
///
/// # Errors
/// [`InferError::ReadBack`].
pub(crate) fn to_host<B: Backend, const D: usize>(
    tensor: Tensor<B, D>,
) -> Result<Vec<f32>, InferError> {
    tensor
        .cast(DType::F32)
        .into_data()
        .convert::<f32>()
        .to_vec::<f32>()
        .map_err(|e| InferError::ReadBack(format!("{e:?}")))
}
