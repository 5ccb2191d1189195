//! The run's configuration: one TOML file with the sections below, every key optional
//! (defaults are the ModernBERT recipe at `small` size), and `--set section.key=value`
//! overrides from the command line. The resolved config is printed at start and stored in
//! every checkpoint (nanoGPT's habit).
//!
//! Plain serde rather than Burn's `Config` derive: a TOML file that names only some keys
//! needs serde's per-field defaults, which the derive does not forward (STYLE.md, point 3).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use modernbert::{LayerType, ModernBertConfig};
use serde::{Deserialize, Serialize};

use crate::data::TextSplit;

/// Everything a run needs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct TrainConfig {
    /// Corpus, tokenizer, packing.
    pub data: DataConfig,
    /// Architecture.
    pub model: ModelConfig,
    /// StableAdamW.
    pub optimizer: OptimizerConfig,
    /// Steps, learning rate and batch size over time.
    pub schedule: ScheduleConfig,
    /// Output, seeds, masking, evaluation and checkpoint cadence.
    pub run: RunConfig,
}

/// `[data]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DataConfig {
    /// Training files: paths or globs (`.txt`, `.jsonl`, `.parquet`).
    pub train: Vec<String>,
    /// Evaluation files; when empty, documents held out of `train` (see `holdout_every`).
    pub eval: Vec<String>,
    /// How plain-text files are cut into documents: `"blocks"` (blank-line separated) or
    /// `"lines"`.
    pub text_split: TextSplit,
    /// Without `eval` files, about one training document in this many is held out for
    /// evaluation (never trained on). 0 disables evaluation then.
    pub holdout_every: u64,
    /// A `tokenizer.json` to use; when absent a byte-level BPE is trained on `train`.
    pub tokenizer: Option<PathBuf>,
    /// Vocabulary size of a trained tokenizer (special tokens included).
    pub tokenizer_vocab_size: usize,
    /// Row length of the packed batches, in tokens.
    pub max_seq_len: usize,
    /// Document pieces kept for best-fit packing.
    pub pack_pool: usize,
    /// Packed rows in the evaluation set.
    pub eval_rows: usize,
}

impl Default for DataConfig {
    fn default() -> Self {
        Self {
            train: Vec::new(),
            eval: Vec::new(),
            text_split: TextSplit::Blocks,
            holdout_every: 50,
            tokenizer: None,
            tokenizer_vocab_size: 16384,
            max_seq_len: 1024,
            pack_pool: 1024,
            eval_rows: 64,
        }
    }
}

/// Model sizes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Preset {
    /// 4 layers, hidden 128, 4 heads, intermediate 192: tests and smoke runs.
    Tiny,
    /// 8 layers, hidden 512, 8 heads, intermediate 768.
    Small,
    /// ModernBERT-base: 22 layers, hidden 768, 12 heads.
    Base,
    /// ModernBERT-large: 28 layers, hidden 1024, 16 heads.
    Large,
}

/// `[model]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ModelConfig {
    /// Size preset.
    pub preset: Preset,
    /// RoPE θ of the global-attention layers (ModernBERT: 10000 in its 1024-token phase,
    /// 160000 for the context extension and in the released config, the default here).
    pub global_rope_theta: f64,
    /// RoPE θ of the sliding-window layers.
    pub local_rope_theta: f64,
    /// Dropout after the attention output projection `Wo` (and on attention probabilities
    /// on the padded path), training only; saved as `attention_dropout` in config.json.
    pub attention_dropout: f64,
}

impl Default for ModelConfig {
    fn default() -> Self {
        Self {
            preset: Preset::Small,
            global_rope_theta: 160_000.0,
            local_rope_theta: 10_000.0,
            attention_dropout: 0.1,
        }
    }
}

/// `[optimizer]`: StableAdamW (DESIGN.md, "Training recipe").
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OptimizerConfig {
    /// Peak learning rate.
    pub lr: f64,
    /// β₁.
    pub beta_1: f64,
    /// β₂.
    pub beta_2: f64,
    /// ε.
    pub epsilon: f64,
    /// Decoupled weight decay (not applied to 1-D tensors).
    pub weight_decay: f64,
}

impl Default for OptimizerConfig {
    fn default() -> Self {
        Self {
            lr: 8e-4,
            beta_1: 0.9,
            beta_2: 0.98,
            epsilon: 1e-6,
            weight_decay: 1e-5,
        }
    }
}

/// `[schedule]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ScheduleConfig {
    /// Optimizer steps of the run.
    pub total_steps: u64,
    /// Linear learning-rate warmup steps.
    pub warmup_steps: u64,
    /// 1-sqrt decay steps at the end.
    pub decay_steps: u64,
    /// Final learning rate as a fraction of the peak.
    pub final_lr_ratio: f64,
    /// Packed rows per optimizer step (after the batch-size warmup).
    pub batch_rows: usize,
    /// Rows per forward/backward pass; `batch_rows / micro_batch_rows` passes are
    /// accumulated per step.
    pub micro_batch_rows: usize,
    /// Steps of batch-size warmup; 0 disables it.
    pub batch_warmup_steps: u64,
    /// Rows per step at the start of the batch-size warmup.
    pub batch_warmup_start_rows: usize,
}

impl Default for ScheduleConfig {
    fn default() -> Self {
        Self {
            total_steps: 2000,
            warmup_steps: 100,
            decay_steps: 400,
            final_lr_ratio: 0.0,
            batch_rows: 16,
            micro_batch_rows: 16,
            batch_warmup_steps: 0,
            batch_warmup_start_rows: 16,
        }
    }
}

/// What to do when a step's loss is NaN or infinite.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnNonFinite {
    /// Stop with an error naming the step; the last checkpoint stays.
    Stop,
    /// Drop the step's gradients, log it, and go on with the next batch.
    Skip,
}

/// `[run]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RunConfig {
    /// Where tokenizer.json, metrics.jsonl, checkpoints/ and final/ go.
    pub output_dir: PathBuf,
    /// Seed of the initialization, the masking and dropout.
    pub seed: u64,
    /// MLM masking rate in training.
    pub mask_rate: f64,
    /// MLM masking rate in evaluation.
    pub eval_mask_rate: f64,
    /// Evaluate every this many steps (and at the end); 0 = only at the end.
    pub eval_every: u64,
    /// Checkpoint every this many steps (and at the end); 0 = only at the end.
    pub checkpoint_every: u64,
    /// Checkpoints kept on disk (older ones are deleted); at least 1.
    pub keep_checkpoints: usize,
    /// NaN/Inf loss: `"stop"` or `"skip"`.
    pub on_nonfinite: OnNonFinite,
    /// Wall-clock limit of one invocation in minutes (0 = none): when reached, the run
    /// evaluates, checkpoints, exports and stops; `--resume` continues it.
    pub max_minutes: f64,
}

impl Default for RunConfig {
    fn default() -> Self {
        Self {
            output_dir: PathBuf::from("runs/mlm"),
            seed: 42,
            mask_rate: 0.3,
            eval_mask_rate: 0.15,
            eval_every: 200,
            checkpoint_every: 500,
            keep_checkpoints: 2,
            on_nonfinite: OnNonFinite::Stop,
            max_minutes: 0.0,
        }
    }
}

impl TrainConfig {
    /// Reads `path` (when given), applies `overrides` (`section.key=value`, the value in
    /// TOML syntax, or a bare string), and validates.
    ///
    /// # Errors
    /// An unreadable file, bad TOML, an unknown key, a value of the wrong type, or a value
    /// out of range.
    pub fn load(path: Option<&Path>, overrides: &[String]) -> Result<Self> {
        let mut table = match path {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("reading config {}", path.display()))?;
                toml::from_str::<toml::Table>(&text)
                    .with_context(|| format!("parsing config {}", path.display()))?
            }
            None => toml::Table::new(),
        };
        for item in overrides {
            apply_override(&mut table, item)?;
        }
        let config: TrainConfig = toml::Value::Table(table)
            .try_into()
            .context("invalid training config")?;
        config.validate()?;
        Ok(config)
    }

    /// The config as TOML, as printed at start.
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("TrainConfig serializes to TOML")
    }

    /// Checks every range the run relies on.
    ///
    /// # Errors
    /// The first field out of range, named.
    pub fn validate(&self) -> Result<()> {
        let (d, s, r, o) = (&self.data, &self.schedule, &self.run, &self.optimizer);
        let checks: [(bool, &str); 17] = [
            (!d.train.is_empty(), "data.train names no file"),
            (d.max_seq_len >= 3, "data.max_seq_len must be at least 3"),
            (
                d.max_seq_len <= 8192,
                "data.max_seq_len must be at most 8192 (max_position_embeddings)",
            ),
            (
                d.holdout_every != 1,
                "data.holdout_every = 1 would hold out every document",
            ),
            (
                d.tokenizer_vocab_size >= 300,
                "data.tokenizer_vocab_size must be at least 300 (256 bytes + specials)",
            ),
            (
                d.pack_pool >= 1 && d.eval_rows >= 1,
                "data.pack_pool and data.eval_rows must be at least 1",
            ),
            (
                s.total_steps >= 1,
                "schedule.total_steps must be at least 1",
            ),
            (
                s.warmup_steps + s.decay_steps <= s.total_steps,
                "schedule.warmup_steps + schedule.decay_steps exceed schedule.total_steps",
            ),
            (
                (0.0..=1.0).contains(&s.final_lr_ratio),
                "schedule.final_lr_ratio must be in [0, 1]",
            ),
            (
                s.micro_batch_rows >= 1,
                "schedule.micro_batch_rows must be at least 1",
            ),
            (
                s.batch_rows >= s.micro_batch_rows && s.batch_rows % s.micro_batch_rows == 0,
                "schedule.batch_rows must be a multiple of schedule.micro_batch_rows",
            ),
            (
                s.batch_warmup_steps == 0 || s.batch_warmup_start_rows <= s.batch_rows,
                "schedule.batch_warmup_start_rows exceeds schedule.batch_rows",
            ),
            (
                r.mask_rate > 0.0
                    && r.mask_rate < 1.0
                    && r.eval_mask_rate > 0.0
                    && r.eval_mask_rate < 1.0,
                "run.mask_rate and run.eval_mask_rate must be in (0, 1)",
            ),
            (
                r.keep_checkpoints >= 1 && r.max_minutes >= 0.0,
                "run.keep_checkpoints must be at least 1, run.max_minutes non-negative",
            ),
            (
                o.lr > 0.0 && o.epsilon > 0.0 && o.weight_decay >= 0.0,
                "optimizer.lr and optimizer.epsilon must be positive, weight_decay non-negative",
            ),
            (
                (0.0..1.0).contains(&o.beta_1) && (0.0..1.0).contains(&o.beta_2),
                "optimizer betas must be in [0, 1)",
            ),
            (
                (0.0..1.0).contains(&self.model.attention_dropout),
                "model.attention_dropout must be in [0, 1)",
            ),
        ];
        for (ok, message) in checks {
            if !ok {
                bail!("invalid training config: {message}");
            }
        }
        Ok(())
    }

    /// The architecture: the preset, this config's RoPE θs and dropout, and the
    /// tokenizer's vocabulary (rounded up to a multiple of 64, as ModernBERT's 50368) and
    /// special ids.
    pub fn model_config(
        &self,
        vocab_size: usize,
        pad: u32,
        cls: u32,
        sep: u32,
    ) -> ModernBertConfig {
        let (layers, hidden, heads, intermediate) = match self.model.preset {
            Preset::Tiny => (4, 128, 4, 192),
            Preset::Small => (8, 512, 8, 768),
            Preset::Base => (22, 768, 12, 1152),
            Preset::Large => (28, 1024, 16, 2624),
        };
        ModernBertConfig::base()
            .with_num_hidden_layers(layers)
            .with_hidden_size(hidden)
            .with_num_attention_heads(heads)
            .with_intermediate_size(intermediate)
            .with_layer_types(LayerType::every_nth_global(layers, 3))
            .with_vocab_size(vocab_size.div_ceil(64) * 64)
            .with_pad_token_id(pad)
            .with_cls_token_id(cls)
            .with_sep_token_id(sep)
            .with_global_rope_theta(self.model.global_rope_theta)
            .with_local_rope_theta(self.model.local_rope_theta)
            .with_attention_dropout(self.model.attention_dropout)
    }
}

/// Sets `section.key` in `table` from `section.key=value`.
fn apply_override(table: &mut toml::Table, item: &str) -> Result<()> {
    let Some((key, value)) = item.split_once('=') else {
        bail!("override {item:?} is not of the form section.key=value");
    };
    let value = value.trim();
    // A TOML value if it parses as one (numbers, booleans, arrays, quoted strings),
    // otherwise the bare text as a string (paths, "stop", "small").
    let value = toml::from_str::<toml::Table>(&format!("v = {value}"))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(value.to_string()));
    let mut parts: Vec<&str> = key.trim().split('.').collect();
    let last = parts.pop().filter(|k| !k.is_empty());
    let Some(last) = last else {
        bail!("override {item:?} has an empty key");
    };
    let mut node = table;
    for part in parts {
        node = node
            .entry(part.to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()))
            .as_table_mut()
            .with_context(|| format!("override {item:?}: {part} is not a section"))?;
    }
    node.insert(last.to_string(), value);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_values_overrides_and_defaults_combine() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let path = dir.join("run.toml");
        std::fs::write(
            &path,
            "[data]\ntrain = [\"a.txt\"]\nmax_seq_len = 128\n[model]\npreset = \"tiny\"\n",
        )
        .unwrap();
        let overrides = [
            "schedule.total_steps=600".to_string(),
            "run.output_dir=/tmp/x y".to_string(),
            "run.on_nonfinite=skip".to_string(),
            "model.global_rope_theta=80000".to_string(),
        ];
        let config = TrainConfig::load(Some(&path), &overrides).unwrap();
        assert_eq!(config.data.max_seq_len, 128);
        assert_eq!(config.model.preset, Preset::Tiny);
        assert_eq!(config.schedule.total_steps, 600);
        assert_eq!(config.run.output_dir, PathBuf::from("/tmp/x y"));
        assert_eq!(config.run.on_nonfinite, OnNonFinite::Skip);
        assert_eq!(config.optimizer.lr, 8e-4, "default kept");
        let model = config.model_config(1000, 3, 1, 2);
        assert_eq!(model.vocab_size, 1024);
        assert_eq!(model.global_rope_theta, 80000.0);
        assert_eq!(model.layer_types.len(), 4);
        model.validate().unwrap();
        let printed = config.to_toml();
        let reparsed: TrainConfig = toml::from_str(&printed).unwrap();
        assert_eq!(reparsed, config);
    }

    #[test]
    fn unknown_keys_and_bad_values_are_named() {
        let train = "data.train=[\"a.txt\"]".to_string();
        let err =
            TrainConfig::load(None, &[train.clone(), "schedule.totl_steps=5".into()]).unwrap_err();
        assert!(format!("{err:#}").contains("totl_steps"), "{err:#}");
        let err = TrainConfig::load(None, &[train.clone(), "schedule.warmup_steps=5000".into()])
            .unwrap_err();
        assert!(
            err.to_string().contains("exceed schedule.total_steps"),
            "{err}"
        );
        let err = TrainConfig::load(None, &[]).unwrap_err();
        assert!(err.to_string().contains("data.train"), "{err}");
        let err = TrainConfig::load(None, &[train, "nonsense".into()]).unwrap_err();
        assert!(err.to_string().contains("section.key=value"), "{err}");
    }
}
