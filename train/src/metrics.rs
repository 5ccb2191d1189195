//! metrics.jsonl: one JSON object per line, flushed at once, appended to on resume.
//! Training steps carry `loss`, `lr`, `tokens_per_s`; evaluations `eval_loss`,
//! `eval_accuracy`; skipped steps `skipped`.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde_json::Value;

/// An append-only JSONL file.
pub struct MetricsLog {
    path: PathBuf,
    file: BufWriter<File>,
}

impl MetricsLog {
    /// Opens (creating if needed) `path` for appending.
    ///
    /// # Errors
    /// When the file cannot be opened.
    pub fn open(path: &Path) -> Result<Self> {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .with_context(|| format!("opening {}", path.display()))?;
        Ok(Self {
            path: path.to_path_buf(),
            file: BufWriter::new(file),
        })
    }

    /// Writes one record as a line.
    ///
    /// # Errors
    /// When writing fails (for instance a full disk).
    pub fn write(&mut self, record: Value) -> Result<()> {
        writeln!(self.file, "{record}")
            .and_then(|()| self.file.flush())
            .with_context(|| format!("writing {}", self.path.display()))
    }
}
