//! Reading and writing safetensors files: one `model.safetensors`, or shards listed by
//! `model.safetensors.index.json`. Tensors are converted to f32 on read (F32, F16, BF16, F64
//! are accepted). Knows nothing about ModernBERT's key names; that lives in `weights.rs`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};

use safetensors::{Dtype, SafeTensors};
use serde::Deserialize;

use crate::error::{LoadError, SaveError};

/// Name of a single-file checkpoint's weights.
pub const WEIGHTS_FILE: &str = "model.safetensors";
/// Name of a sharded checkpoint's index.
pub const WEIGHTS_INDEX_FILE: &str = "model.safetensors.index.json";

/// A tensor read from a checkpoint, converted to f32.
#[derive(Debug, Clone)]
pub struct RawTensor {
    /// Row-major values.
    pub values: Vec<f32>,
    /// Shape as stored.
    pub shape: Vec<usize>,
    /// The file it came from.
    pub path: PathBuf,
}

/// The safetensors files of one checkpoint, with a record of which keys were read.
#[derive(Debug)]
pub struct SafetensorsReader {
    /// `model.safetensors` or the index file; named in key errors.
    source: PathBuf,
    /// Each file's path and bytes (validated at open).
    files: Vec<(PathBuf, Vec<u8>)>,
    /// Key → index into `files`.
    location: BTreeMap<String, usize>,
    /// Keys handed out by [`take`](Self::take).
    taken: HashSet<String>,
}

#[derive(Deserialize)]
struct Index {
    weight_map: HashMap<String, String>,
}

fn read(path: &Path) -> Result<Vec<u8>, LoadError> {
    std::fs::read(path).map_err(|error| LoadError::Io {
        path: path.to_path_buf(),
        error,
    })
}

fn corrupt(path: &Path, reason: impl ToString) -> LoadError {
    LoadError::Corrupt {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    }
}

impl SafetensorsReader {
    /// Opens the weights of a checkpoint directory: `model.safetensors` if present, else
    /// `model.safetensors.index.json` and its shards. Every file's header is validated.
    ///
    /// # Errors
    /// [`LoadError::NoWeights`] when neither file exists; [`LoadError::Io`],
    /// [`LoadError::Json`] or [`LoadError::Corrupt`] for unreadable, malformed or truncated
    /// files.
    pub fn open_dir(dir: &Path) -> Result<Self, LoadError> {
        let single = dir.join(WEIGHTS_FILE);
        let index = dir.join(WEIGHTS_INDEX_FILE);
        if single.is_file() {
            Self::open_file(&single)
        } else if index.is_file() {
            Self::open_index(&index)
        } else {
            Err(LoadError::NoWeights {
                dir: dir.to_path_buf(),
            })
        }
    }

    /// Opens one safetensors file.
    ///
    /// # Errors
    /// As [`open_dir`](Self::open_dir).
    pub fn open_file(path: &Path) -> Result<Self, LoadError> {
        Self::from_bytes(path, read(path)?)
    }

    /// Reads one safetensors file held in memory (e.g. a file picked in a browser, where
    /// there is no file system); `path` only names it in errors.
    ///
    /// # Errors
    /// [`LoadError::Corrupt`] for a malformed or truncated file.
    pub fn from_bytes(path: &Path, bytes: Vec<u8>) -> Result<Self, LoadError> {
        let names = SafeTensors::deserialize(&bytes)
            .map_err(|e| corrupt(path, e))?
            .names()
            .into_iter()
            .map(String::from)
            .collect::<Vec<_>>();
        Ok(Self {
            source: path.to_path_buf(),
            location: names.into_iter().map(|name| (name, 0)).collect(),
            files: vec![(path.to_path_buf(), bytes)],
            taken: HashSet::new(),
        })
    }

    /// Opens a sharded checkpoint through its index.
    ///
    /// # Errors
    /// As [`open_dir`](Self::open_dir); also [`LoadError::Corrupt`] when the index names a
    /// key that its shard lacks.
    pub fn open_index(index_path: &Path) -> Result<Self, LoadError> {
        let text = read(index_path)?;
        let index: Index = serde_json::from_slice(&text).map_err(|e| LoadError::Json {
            path: index_path.to_path_buf(),
            what: "safetensors index",
            reason: e.to_string(),
        })?;
        let dir = index_path.parent().unwrap_or(Path::new("."));
        let shard_names: Vec<&String> = {
            let set: std::collections::BTreeSet<&String> = index.weight_map.values().collect();
            set.into_iter().collect()
        };
        let mut files = Vec::new();
        let mut location = BTreeMap::new();
        for shard in shard_names {
            let path = dir.join(shard);
            let bytes = read(&path)?;
            let names: HashSet<String> = SafeTensors::deserialize(&bytes)
                .map_err(|e| corrupt(&path, e))?
                .names()
                .into_iter()
                .map(String::from)
                .collect();
            for (key, file) in &index.weight_map {
                if file == shard {
                    if !names.contains(key) {
                        return Err(corrupt(
                            &path,
                            format!("the index lists `{key}` in this shard, but it is not there"),
                        ));
                    }
                    location.insert(key.clone(), files.len());
                }
            }
            files.push((path, bytes));
        }
        Ok(Self {
            source: index_path.to_path_buf(),
            files,
            location,
            taken: HashSet::new(),
        })
    }

    /// The file named in errors about the checkpoint as a whole.
    pub fn source(&self) -> &Path {
        &self.source
    }

    /// Whether the checkpoint holds `key`.
    pub fn contains(&self, key: &str) -> bool {
        self.location.contains_key(key)
    }

    /// All keys, sorted.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.location.keys().map(String::as_str)
    }

    /// Reads `key` without marking it as used.
    ///
    /// # Errors
    /// [`LoadError::Dtype`] for a non-float tensor.
    pub fn read(&self, key: &str) -> Result<Option<RawTensor>, LoadError> {
        let Some(&file) = self.location.get(key) else {
            return Ok(None);
        };
        let (path, bytes) = &self.files[file];
        // Validated at open, so these cannot fail.
        let tensors = SafeTensors::deserialize(bytes).map_err(|e| corrupt(path, e))?;
        let view = tensors.tensor(key).map_err(|e| corrupt(path, e))?;
        let data = view.data();
        let values: Vec<f32> = match view.dtype() {
            Dtype::F32 => data
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
            Dtype::F16 => data
                .chunks_exact(2)
                .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            Dtype::BF16 => data
                .chunks_exact(2)
                .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            Dtype::F64 => data
                .chunks_exact(8)
                .map(|b| f64::from_le_bytes(b.try_into().expect("8 bytes")) as f32)
                .collect(),
            other => {
                return Err(LoadError::Dtype {
                    path: path.clone(),
                    key: key.to_string(),
                    dtype: format!("{other:?}"),
                })
            }
        };
        Ok(Some(RawTensor {
            values,
            shape: view.shape().to_vec(),
            path: path.clone(),
        }))
    }

    /// Reads `key` and marks it as used; `Ok(None)` when absent.
    ///
    /// # Errors
    /// As [`read`](Self::read).
    pub fn take(&mut self, key: &str) -> Result<Option<RawTensor>, LoadError> {
        let tensor = self.read(key)?;
        if tensor.is_some() {
            self.taken.insert(key.to_string());
        }
        Ok(tensor)
    }

    /// Keys not yet taken, sorted.
    pub fn untaken(&self) -> Vec<String> {
        self.location
            .keys()
            .filter(|k| !self.taken.contains(*k))
            .cloned()
            .collect()
    }
}

/// Writes f32 tensors to one safetensors file with `{"format": "pt"}` metadata, as
/// `transformers` expects.
///
/// # Errors
/// [`SaveError`] if the file cannot be written.
pub fn write_safetensors(
    path: &Path,
    tensors: Vec<(String, Vec<f32>, Vec<usize>)>,
) -> Result<(), SaveError> {
    let buffers: Vec<(String, Vec<u8>, Vec<usize>)> = tensors
        .into_iter()
        .map(|(key, values, shape)| {
            (
                key,
                values.iter().flat_map(|v| v.to_le_bytes()).collect(),
                shape,
            )
        })
        .collect();
    let views = buffers
        .iter()
        .map(|(key, bytes, shape)| {
            safetensors::tensor::TensorView::new(Dtype::F32, shape.clone(), bytes)
                .map(|view| (key.clone(), view))
        })
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| SaveError::Serialize {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
    let metadata = HashMap::from([("format".to_string(), "pt".to_string())]);
    safetensors::serialize_to_file(views, Some(metadata), path).map_err(|e| match e {
        safetensors::SafeTensorError::IoError(error) => SaveError::Io {
            path: path.to_path_buf(),
            error,
        },
        other => SaveError::Serialize {
            path: path.to_path_buf(),
            reason: other.to_string(),
        },
    })
}
