//! The encoder-throughput benchmark of the ModernBERT paper (§4, Table 3): four document
//! sets, tokens per second over real tokens, and the memory the backend reserved.
//!
//! Document lengths come from a fixed seed (ChaCha8, portable across platforms); `--dump-lengths`
//! writes them so that `scripts/bench_infer_torch.py` runs HF transformers on the same documents.

use std::time::Instant;

use clap::ValueEnum;
use modernbert::{Backend, ModernBertModel, UnpaddedInput};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal};
use serde::Serialize;

use crate::batching::plan_batches;
use crate::error::InferError;
use crate::memory::DeviceMemory;

/// One of the paper's four document sets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BenchSetting {
    /// Every document 512 tokens.
    Fixed512,
    /// Lengths ~ N(256, 64), clipped to [32, 476].
    Variable256,
    /// Every document 8192 tokens.
    Fixed8192,
    /// Lengths ~ N(4096, 1024), clipped to [171, 7624].
    Variable4096,
}

impl BenchSetting {
    /// All four, in the paper's order.
    pub const ALL: [BenchSetting; 4] = [
        BenchSetting::Fixed512,
        BenchSetting::Variable256,
        BenchSetting::Fixed8192,
        BenchSetting::Variable4096,
    ];

    /// The name used in tables and in the lengths file.
    pub fn name(self) -> &'static str {
        match self {
            BenchSetting::Fixed512 => "fixed-512",
            BenchSetting::Variable256 => "variable-256",
            BenchSetting::Fixed8192 => "fixed-8192",
            BenchSetting::Variable4096 => "variable-4096",
        }
    }

    /// Whether this is a long-context (8192-token) setting.
    pub fn is_long(self) -> bool {
        matches!(self, BenchSetting::Fixed8192 | BenchSetting::Variable4096)
    }

    /// `docs` document lengths in tokens, the same for the same `seed` everywhere.
    pub fn lengths(self, docs: usize, seed: u64) -> Vec<usize> {
        let (mean, std, min, max) = match self {
            BenchSetting::Fixed512 => return vec![512; docs],
            BenchSetting::Fixed8192 => return vec![8192; docs],
            BenchSetting::Variable256 => (256.0, 64.0, 32.0, 476.0),
            BenchSetting::Variable4096 => (4096.0, 1024.0, 171.0, 7624.0),
        };
        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ self as u64);
        let normal = Normal::new(mean, std).expect("a positive standard deviation");
        (0..docs)
            .map(|_| {
                let x: f64 = normal.sample(&mut rng);
                x.round().clamp(min, max) as usize
            })
            .collect()
    }
}

impl Serialize for BenchSetting {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.name())
    }
}

/// One measured setting.
#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    /// Which model (e.g. "base").
    pub model: String,
    /// The document set.
    pub setting: BenchSetting,
    /// Documents run.
    pub docs: usize,
    /// Real tokens run (the sum of the lengths).
    pub tokens: usize,
    /// Wall-clock seconds of a timed pass, from the first upload to the final sync: the
    /// median of [`BenchReport::pass_seconds`].
    pub seconds: f64,
    /// Every timed pass's seconds, in order.
    pub pass_seconds: Vec<f64>,
    /// `tokens / seconds`.
    pub tokens_per_second: f64,
    /// High-water mark of [`DeviceMemory::reserved_bytes`] over the timed pass (sampled after
    /// every batch), or `None` where the backend does not report it.
    pub peak_reserved_bytes: Option<u64>,
}

/// How [`bench_encoder`] runs.
#[derive(Debug, Clone, Copy)]
pub struct BenchOptions {
    /// Token budget of a batch (see [`plan_batches`]).
    pub max_batch_tokens: usize,
    /// Documents in the untimed warm-up pass.
    pub warmup_docs: usize,
    /// Timed passes over the whole set (at least one); the report gives their median.
    pub repeats: usize,
    /// Seed of the random token ids.
    pub seed: u64,
}

/// Runs `model` on documents of `lengths` (random token ids), in length-sorted batches of
/// at most `options.max_batch_tokens`, packed with no padding (as the inference pipelines run),
/// and times it `options.repeats` times. A warm-up pass over `options.warmup_docs` documents
/// spread over the set comes first, so that kernel compilation and autotuning stay out of the
/// timing.
///
/// # Errors
/// [`InferError::Input`] for a length over the model's limit,
/// [`InferError::ReadBack`] if the device fails.
pub fn bench_encoder<B: Backend + DeviceMemory>(
    model: &ModernBertModel<B>,
    name: &str,
    setting: BenchSetting,
    lengths: &[usize],
    options: &BenchOptions,
    device: &B::Device,
) -> Result<BenchReport, InferError> {
    let BenchOptions {
        max_batch_tokens,
        warmup_docs,
        repeats,
        seed,
    } = *options;
    let config = &model.config;
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let vocab = config.vocab_size as u32;
    let documents: Vec<Vec<u32>> = lengths
        .iter()
        .map(|&n| (0..n).map(|_| rng.random_range(0..vocab)).collect())
        .collect();
    let run = |indices: &[usize]| -> Result<(), InferError> {
        let lens: Vec<usize> = indices.iter().map(|&i| lengths[i]).collect();
        for batch in plan_batches(&lens, max_batch_tokens) {
            let sequences: Vec<Vec<u32>> = batch
                .iter()
                .map(|&i| documents[indices[i]].clone())
                .collect();
            let input = UnpaddedInput::from_token_ids(&sequences, config, device)?;
            drop(model.forward_unpadded(&input));
        }
        B::sync(device).map_err(|e| InferError::ReadBack(format!("{e:?}")))
    };
    let all: Vec<usize> = (0..lengths.len()).collect();
    let step = (lengths.len() / warmup_docs.max(1)).max(1);
    let warmup: Vec<usize> = all
        .iter()
        .copied()
        .step_by(step)
        .take(warmup_docs)
        .collect();
    if !warmup.is_empty() {
        run(&warmup)?;
    }
    B::memory_cleanup(device);
    let mut peak = B::reserved_bytes(device);
    let mut pass_seconds = Vec::with_capacity(repeats.max(1));
    for _ in 0..repeats.max(1) {
        B::sync(device).map_err(|e| InferError::ReadBack(format!("{e:?}")))?;
        let start = Instant::now();
        for batch in plan_batches(lengths, max_batch_tokens) {
            let sequences: Vec<Vec<u32>> = batch.iter().map(|&i| documents[i].clone()).collect();
            let input = UnpaddedInput::from_token_ids(&sequences, config, device)?;
            drop(model.forward_unpadded(&input));
            peak = peak.max(B::reserved_bytes(device));
        }
        B::sync(device).map_err(|e| InferError::ReadBack(format!("{e:?}")))?;
        pass_seconds.push(start.elapsed().as_secs_f64());
        peak = peak.max(B::reserved_bytes(device));
    }
    let mut sorted = pass_seconds.clone();
    sorted.sort_by(f64::total_cmp);
    let seconds = sorted[sorted.len() / 2];
    let tokens: usize = lengths.iter().sum();
    Ok(BenchReport {
        model: name.to_string(),
        setting,
        docs: lengths.len(),
        tokens,
        seconds,
        pass_seconds,
        tokens_per_second: tokens as f64 / seconds,
        peak_reserved_bytes: peak,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lengths_are_seeded_and_clipped() {
        let a = BenchSetting::Variable256.lengths(2000, 7);
        assert_eq!(a, BenchSetting::Variable256.lengths(2000, 7));
        assert_ne!(a, BenchSetting::Variable256.lengths(2000, 8));
        assert!(a.iter().all(|&n| (32..=476).contains(&n)));
        let mean = a.iter().sum::<usize>() as f64 / a.len() as f64;
        assert!((mean - 256.0).abs() < 6.0, "mean {mean}");
        let b = BenchSetting::Variable4096.lengths(2000, 7);
        assert!(b.iter().all(|&n| (171..=7624).contains(&n)));
        assert_eq!(BenchSetting::Fixed8192.lengths(3, 7), vec![8192; 3]);
    }

    #[cfg(feature = "ndarray")]
    #[test]
    fn the_report_gives_the_median_of_the_timed_passes() {
        use modernbert::{LayerType, ModernBertConfig};
        type B = burn::backend::NdArray;
        let device = Default::default();
        let model = ModernBertConfig::base()
            .with_vocab_size(64)
            .with_hidden_size(32)
            .with_intermediate_size(48)
            .with_num_hidden_layers(2)
            .with_num_attention_heads(2)
            .with_layer_types(LayerType::every_nth_global(2, 3))
            .with_pad_token_id(0)
            .with_cls_token_id(1)
            .with_sep_token_id(2)
            .init::<B>(&device);
        let lengths = [5, 17, 3, 9];
        let options = BenchOptions {
            max_batch_tokens: 20,
            warmup_docs: 1,
            repeats: 3,
            seed: 0,
        };
        let report = bench_encoder(
            &model,
            "tiny",
            BenchSetting::Variable256,
            &lengths,
            &options,
            &device,
        )
        .unwrap();
        assert_eq!(report.tokens, 34);
        assert_eq!(report.pass_seconds.len(), 3);
        let mut sorted = report.pass_seconds.clone();
        sorted.sort_by(f64::total_cmp);
        assert_eq!(report.seconds, sorted[1]);
        assert_eq!(report.tokens_per_second, 34.0 / sorted[1]);
    }
}
