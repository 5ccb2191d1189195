//! A loaded masked-LM checkpoint on one backend, and the two tasks of the page. Generic over
//! `B: modernbert::Backend`, like every other user of the model; results are read back with
//! `into_data_async`, since a browser cannot block on the GPU.

use std::path::Path;

use burn::tensor::{Int, Tensor, TensorData};
use modernbert::checkpoint::SafetensorsReader;
use modernbert::{
    Backend, HfModel, ModernBertConfig, ModernBertForMaskedLM, ModernBertTokenizer, Truncation,
    UnpaddedInput,
};
use serde::Serialize;

use crate::error::DemoError;

/// The three files of a checkpoint directory, read into memory by the page.
#[derive(Debug, Clone)]
pub struct CheckpointFiles {
    /// `config.json`.
    pub config: String,
    /// `model.safetensors` (f32, f16 or bf16).
    pub weights: Vec<u8>,
    /// `tokenizer.json`.
    pub tokenizer: Vec<u8>,
}

impl CheckpointFiles {
    /// Parses and validates `config.json`.
    ///
    /// # Errors
    /// [`DemoError::Load`] when it is not a ModernBERT config.
    pub fn config(&self) -> Result<ModernBertConfig, DemoError> {
        Ok(ModernBertConfig::from_json("config.json", &self.config)?)
    }
}

/// One candidate token for a `[MASK]` (as HF's `pipeline("fill-mask")`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Prediction {
    /// Token id.
    pub token_id: u32,
    /// The token as decoded text.
    pub token: String,
    /// Softmax probability over the vocabulary.
    pub score: f32,
}

/// A masked-LM model with its tokenizer on one device.
#[derive(Debug)]
pub struct Session<B: Backend> {
    model: ModernBertForMaskedLM<B>,
    tokenizer: ModernBertTokenizer,
    mask_token_id: u32,
    device: B::Device,
}

impl<B: Backend> Session<B> {
    /// Builds the model from the checkpoint's files.
    ///
    /// # Errors
    /// [`DemoError::Load`] naming the file and key or field that is wrong,
    /// [`DemoError::NoMaskToken`] for a tokenizer without `[MASK]`.
    pub fn load(
        files: CheckpointFiles,
        config: &ModernBertConfig,
        device: &B::Device,
    ) -> Result<Self, DemoError> {
        let tokenizer =
            ModernBertTokenizer::from_bytes("tokenizer.json", &files.tokenizer, config)?;
        let mask_token_id = tokenizer.mask_token_id().ok_or(DemoError::NoMaskToken)?;
        let mut reader =
            SafetensorsReader::from_bytes(Path::new("model.safetensors"), files.weights)?;
        let model = ModernBertForMaskedLM::init_with(config, device).load(&mut reader, device)?;
        Ok(Self {
            model,
            tokenizer,
            mask_token_id,
            device: device.clone(),
        })
    }

    /// The architecture.
    pub fn config(&self) -> &ModernBertConfig {
        &self.model.model.config
    }

    /// Tokenizes `text` (with `[CLS]`/`[SEP]`); the page shows the count.
    ///
    /// # Errors
    /// [`DemoError::Input`] for an empty or over-long text.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, DemoError> {
        Ok(self.tokenizer.encode(text, Truncation::Refuse)?)
    }

    /// The `top_k` most likely tokens for every `[MASK]` of `text`, in order of appearance.
    ///
    /// # Errors
    /// [`DemoError::NoMask`] for a text without `[MASK]`, [`DemoError::Input`] for an empty
    /// or over-long one, [`DemoError::Readback`] if the device fails.
    pub async fn fill_mask(
        &self,
        text: &str,
        top_k: usize,
    ) -> Result<Vec<Vec<Prediction>>, DemoError> {
        let ids = self.encode(text)?;
        let masks: Vec<i64> = (0..ids.len())
            .filter(|&i| ids[i] == self.mask_token_id)
            .map(|i| i as i64)
            .collect();
        if masks.is_empty() {
            return Err(DemoError::NoMask {
                mask: self
                    .tokenizer
                    .id_to_token(self.mask_token_id)
                    .unwrap_or_default(),
            });
        }
        let input = UnpaddedInput::from_token_ids(&[ids], self.config(), &self.device)?;
        // One sequence: packed rows are token positions. Only the [MASK] rows go through the
        // head (HF's sparse prediction), so the vocab-sized logits stay small.
        let hidden = self.model.model.forward_unpadded(&input);
        let count = masks.len();
        let rows = Tensor::<B, 1, Int>::from_data(TensorData::new(masks, [count]), &self.device);
        let logits = self.model.logits(hidden.select(0, rows));
        let logits = read_f32(logits).await?;
        let vocab = logits.len() / count;
        Ok(logits
            .chunks_exact(vocab)
            .map(|row| self.top_k(row, top_k))
            .collect())
    }

    /// One embedding per text: the mean of the encoder's last hidden states over all tokens
    /// (sentence-transformers' mean pooling).
    ///
    /// # Shapes
    /// - output: `[texts][H]`
    ///
    /// # Errors
    /// [`DemoError::Input`] for an empty or over-long text, [`DemoError::Readback`] if the
    /// device fails.
    pub async fn embed(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>, DemoError> {
        let ids = texts
            .iter()
            .map(|text| self.encode(text))
            .collect::<Result<Vec<_>, _>>()?;
        let input = UnpaddedInput::from_token_ids(&ids, self.config(), &self.device)?;
        let hidden = self.model.model.forward_unpadded(&input);
        let mut offset = 0;
        let pooled: Vec<Tensor<B, 2>> = ids
            .iter()
            .map(|sequence| {
                let rows = hidden.clone().narrow(0, offset, sequence.len());
                offset += sequence.len();
                rows.mean_dim(0)
            })
            .collect();
        let values = read_f32(Tensor::cat(pooled, 0)).await?;
        let h = self.config().hidden_size;
        Ok(values.chunks_exact(h).map(<[f32]>::to_vec).collect())
    }

    fn top_k(&self, logits: &[f32], k: usize) -> Vec<Prediction> {
        let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let sum: f32 = logits.iter().map(|&l| (l - max).exp()).sum();
        let mut order: Vec<usize> = (0..logits.len()).collect();
        order.sort_unstable_by(|&a, &b| logits[b].total_cmp(&logits[a]));
        order
            .into_iter()
            .take(k)
            .map(|id| Prediction {
                token_id: id as u32,
                token: self.tokenizer.decode(&[id as u32]).unwrap_or_default(),
                score: (logits[id] - max).exp() / sum,
            })
            .collect()
    }
}

/// Cosine similarity of two vectors (0 when either is zero).
pub fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let norm = |v: &[f32]| v.iter().map(|x| x * x).sum::<f32>().sqrt();
    let denominator = norm(a) * norm(b);
    if denominator == 0.0 {
        0.0
    } else {
        dot / denominator
    }
}

async fn read_f32<B: Backend, const D: usize>(tensor: Tensor<B, D>) -> Result<Vec<f32>, DemoError> {
    tensor
        .into_data_async()
        .await
        .map_err(|e| DemoError::Readback(format!("{e:?}")))?
        .convert::<f32>()
        .to_vec::<f32>()
        .map_err(|e| DemoError::Readback(format!("{e:?}")))
}
