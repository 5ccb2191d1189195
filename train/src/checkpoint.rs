//! Step checkpoints: everything needed to continue a run bit for bit.
//!
//! ```text
//! <output_dir>/checkpoints/step-00000500/
//!     model.bin        module record (Burn's BinFileRecorder, f32)
//!     optimizer.bin    StableAdamW moments and step counts, keyed by parameter id
//!     tokenizer.json   the run's tokenizer
//!     state.json       format/version, step, data stream state, host RNG, the config,
//!                      and the size and FNV-1a digest of every file above
//!     DONE             written last
//! ```
//! A checkpoint is written into `.tmp-step-…` and renamed into place only when complete,
//! so a crash mid-write never leaves a directory that looks valid. On resume, the format,
//! the version, `DONE` and every digest are checked before anything is loaded.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use burn::module::{AutodiffModule, Module};
use burn::optim::Optimizer;
use burn::record::{BinFileRecorder, FullPrecisionSettings, Recorder};
use burn::tensor::backend::AutodiffBackend;
use serde::{Deserialize, Serialize};

use crate::config::TrainConfig;
use crate::data::StreamState;
use crate::rng::Rng;

const FORMAT: &str = "modernbert-train checkpoint";
/// Version 2: the model record holds each LayerNorm's epsilon beside it (b65e5e1).
const VERSION: u32 = 2;
const FILES: [&str; 3] = ["model.bin", "optimizer.bin", "tokenizer.json"];

/// The host-side state of a run at a step boundary.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunState {
    /// Optimizer steps completed; training continues with this step.
    pub step: u64,
    /// Where the training data stands.
    pub data: StreamState,
    /// The masking RNG.
    pub rng: Rng,
    /// Real tokens trained on so far.
    pub tokens_seen: u64,
    /// The run's config.
    pub config: TrainConfig,
}

#[derive(Debug, Serialize, Deserialize)]
struct StateFile {
    format: String,
    version: u32,
    state: RunState,
    /// File name → (bytes, FNV-1a 64 digest in hex).
    files: BTreeMap<String, (u64, String)>,
}

fn recorder() -> BinFileRecorder<FullPrecisionSettings> {
    BinFileRecorder::new()
}

/// FNV-1a, 64-bit: enough to catch truncation and bit rot, no dependency.
fn digest(path: &Path) -> Result<(u64, String)> {
    let bytes = fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in &bytes {
        hash ^= b as u64;
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    Ok((bytes.len() as u64, format!("{hash:016x}")))
}

/// The directory of the checkpoint of `step` under `root`.
pub fn step_dir(root: &Path, step: u64) -> PathBuf {
    root.join(format!("step-{step:08}"))
}

/// Writes a checkpoint of `model`, `optim` and `state` under `root`, then deletes all but
/// the newest `keep` checkpoints. Returns its directory.
///
/// # Errors
/// When a file cannot be written (a full disk included); the previous checkpoints are then
/// untouched.
pub fn save<B, M, O>(
    root: &Path,
    model: &M,
    optim: &O,
    tokenizer: &Path,
    state: &RunState,
    keep: usize,
) -> Result<PathBuf>
where
    B: AutodiffBackend,
    M: AutodiffModule<B>,
    O: Optimizer<M, B>,
{
    let tmp = root.join(format!(".tmp-step-{:08}", state.step));
    if tmp.exists() {
        fs::remove_dir_all(&tmp).with_context(|| format!("removing {}", tmp.display()))?;
    }
    fs::create_dir_all(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    model
        .clone()
        .save_file(tmp.join("model"), &recorder())
        .with_context(|| format!("writing the model to {}", tmp.display()))?;
    Recorder::<B>::record(&recorder(), optim.to_record(), tmp.join("optimizer"))
        .with_context(|| format!("writing the optimizer state to {}", tmp.display()))?;
    fs::copy(tokenizer, tmp.join("tokenizer.json"))
        .with_context(|| format!("copying {} into {}", tokenizer.display(), tmp.display()))?;
    let mut files = BTreeMap::new();
    for name in FILES {
        files.insert(name.to_string(), digest(&tmp.join(name))?);
    }
    let file = StateFile {
        format: FORMAT.into(),
        version: VERSION,
        state: state.clone(),
        files,
    };
    let json = serde_json::to_string_pretty(&file).context("serializing state.json")?;
    fs::write(tmp.join("state.json"), json)
        .with_context(|| format!("writing {}/state.json", tmp.display()))?;
    fs::write(tmp.join("DONE"), state.step.to_string())
        .with_context(|| format!("writing {}/DONE", tmp.display()))?;
    let dir = step_dir(root, state.step);
    if dir.exists() {
        fs::remove_dir_all(&dir).with_context(|| format!("replacing {}", dir.display()))?;
    }
    fs::rename(&tmp, &dir)
        .with_context(|| format!("renaming {} to {}", tmp.display(), dir.display()))?;
    let all = list(root)?;
    for (_, old) in all.iter().rev().skip(keep) {
        fs::remove_dir_all(old)
            .with_context(|| format!("deleting old checkpoint {}", old.display()))?;
    }
    Ok(dir)
}

/// Complete checkpoints under `root`, oldest first.
fn list(root: &Path) -> Result<Vec<(u64, PathBuf)>> {
    let mut found = Vec::new();
    if !root.exists() {
        return Ok(found);
    }
    for entry in fs::read_dir(root).with_context(|| format!("listing {}", root.display()))? {
        let path = entry?.path();
        let step = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_prefix("step-"))
            .and_then(|n| n.parse::<u64>().ok());
        if let Some(step) = step.filter(|_| path.join("DONE").is_file()) {
            found.push((step, path));
        }
    }
    found.sort();
    Ok(found)
}

/// The newest complete checkpoint under `root`, if any.
///
/// # Errors
/// When `root` cannot be listed.
pub fn latest(root: &Path) -> Result<Option<PathBuf>> {
    Ok(list(root)?.pop().map(|(_, path)| path))
}

/// A verified checkpoint, ready to load.
#[derive(Debug)]
pub struct Checkpoint {
    /// Its directory.
    pub dir: PathBuf,
    /// The run state it holds.
    pub state: RunState,
}

impl Checkpoint {
    /// Opens `path`: a checkpoint directory, or a run's output directory (its newest
    /// checkpoint is taken). Checks format, version, completeness and every file's digest.
    ///
    /// # Errors
    /// A clear error for a missing, incomplete, foreign, newer-version or corrupt
    /// checkpoint.
    pub fn open(path: &Path) -> Result<Self> {
        let dir = if path.join("state.json").exists() || path.join("DONE").exists() {
            path.to_path_buf()
        } else {
            latest(&path.join("checkpoints"))?.with_context(|| {
                format!(
                    "{} is neither a checkpoint nor an output directory with checkpoints/",
                    path.display()
                )
            })?
        };
        let refuse = |why: String| -> Result<Self> {
            bail!("refusing to resume from {}: {why}", dir.display())
        };
        if !dir.join("DONE").is_file() {
            return refuse("the checkpoint is incomplete (no DONE marker)".into());
        }
        let text = match fs::read_to_string(dir.join("state.json")) {
            Ok(text) => text,
            Err(e) => return refuse(format!("cannot read state.json: {e}")),
        };
        let file: StateFile = match serde_json::from_str(&text) {
            Ok(file) => file,
            Err(e) => return refuse(format!("state.json is corrupt: {e}")),
        };
        if file.format != FORMAT {
            return refuse(format!(
                "state.json is a {:?}, not a {FORMAT:?}",
                file.format
            ));
        }
        if file.version != VERSION {
            return refuse(format!(
                "checkpoint version {} but this build reads version {VERSION}",
                file.version
            ));
        }
        for name in FILES {
            let Some(expected) = file.files.get(name) else {
                return refuse(format!("state.json lists no {name}"));
            };
            let found = match digest(&dir.join(name)) {
                Ok(found) => found,
                Err(e) => return refuse(format!("{e:#}")),
            };
            if &found != expected {
                return refuse(format!(
                    "{name} is corrupt: {} bytes with digest {}, expected {} bytes with digest {}",
                    found.0, found.1, expected.0, expected.1
                ));
            }
        }
        Ok(Self {
            dir,
            state: file.state,
        })
    }

    /// Loads the model weights (and parameter ids, which the optimizer state refers to)
    /// into `model`.
    ///
    /// # Errors
    /// When the record does not fit the model.
    pub fn load_model<B: AutodiffBackend, M: Module<B>>(
        &self,
        model: M,
        device: &B::Device,
    ) -> Result<M> {
        model
            .load_file(self.dir.join("model"), &recorder(), device)
            .with_context(|| format!("loading {}/model.bin", self.dir.display()))
    }

    /// Loads the optimizer state into `optim`.
    ///
    /// # Errors
    /// When the record cannot be read.
    pub fn load_optimizer<B, M, O>(&self, optim: O, device: &B::Device) -> Result<O>
    where
        B: AutodiffBackend,
        M: AutodiffModule<B>,
        O: Optimizer<M, B>,
    {
        let record = Recorder::<B>::load(&recorder(), self.dir.join("optimizer"), device)
            .with_context(|| format!("loading {}/optimizer.bin", self.dir.display()))?;
        Ok(optim.load_record(record))
    }

    /// The checkpoint's tokenizer.json.
    pub fn tokenizer(&self) -> PathBuf {
        self.dir.join("tokenizer.json")
    }
}
