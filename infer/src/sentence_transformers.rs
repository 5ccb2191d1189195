//! How a sentence-transformers embedder pools: `modules.json` lists the modules
//! (Transformer, Pooling, Normalize), and the Pooling module's `config.json` names the
//! mode. ModernBERT embedders on the hub (e.g. gte-modernbert-base: cls + Normalize,
//! modernbert-embed-base: mean + Normalize) are published this way.

use std::path::{Path, PathBuf};

use modernbert::Pooling;
use serde::Deserialize;

use crate::error::InferError;

/// The module list of a sentence-transformers checkpoint.
pub const MODULES_FILE: &str = "modules.json";

#[derive(Deserialize)]
struct Module {
    path: String,
    #[serde(rename = "type")]
    kind: String,
}

#[derive(Deserialize)]
struct PoolingConfig {
    #[serde(default)]
    pooling_mode_cls_token: bool,
    #[serde(default)]
    pooling_mode_mean_tokens: bool,
    #[serde(default)]
    pooling_mode_max_tokens: bool,
    #[serde(default)]
    pooling_mode_mean_sqrt_len_tokens: bool,
    #[serde(default)]
    pooling_mode_weightedmean_tokens: bool,
    #[serde(default)]
    pooling_mode_lasttoken: bool,
}

/// What a sentence-transformers checkpoint says about its embeddings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SentenceTransformersConfig {
    /// The Pooling module's mode.
    pub pooling: Pooling,
    /// Whether a Normalize module (L2) follows.
    pub normalize: bool,
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, InferError> {
    let fail = |reason: String| InferError::SentenceTransformers {
        path: path.to_path_buf(),
        reason,
    };
    let text = std::fs::read_to_string(path).map_err(|e| fail(e.to_string()))?;
    serde_json::from_str(&text).map_err(|e| fail(e.to_string()))
}

/// Files the modules need besides `modules.json` (the Pooling module's `config.json`).
///
/// # Errors
/// [`InferError::SentenceTransformers`] for an unreadable `modules.json`.
pub fn module_files(modules_json: &Path) -> Result<Vec<String>, InferError> {
    let modules: Vec<Module> = read_json(modules_json)?;
    Ok(modules
        .iter()
        .filter(|m| m.kind.ends_with(".Pooling"))
        .map(|m| format!("{}/config.json", m.path))
        .collect())
}

impl SentenceTransformersConfig {
    /// Reads `dir/modules.json` and the Pooling config; `Ok(None)` when the checkpoint is
    /// not a sentence-transformers one.
    ///
    /// # Errors
    /// [`InferError::SentenceTransformers`] for unreadable files and for modules this crate
    /// does not implement (Dense layers, max / last-token pooling, several modes at once).
    pub fn from_dir(dir: &Path) -> Result<Option<Self>, InferError> {
        let modules_path = dir.join(MODULES_FILE);
        if !modules_path.is_file() {
            return Ok(None);
        }
        let modules: Vec<Module> = read_json(&modules_path)?;
        let unsupported =
            |path: PathBuf, reason: String| InferError::SentenceTransformers { path, reason };
        let mut pooling = None;
        let mut normalize = false;
        for module in &modules {
            match module.kind.rsplit('.').next().unwrap_or_default() {
                "Transformer" => {}
                "Normalize" => normalize = true,
                "Pooling" => {
                    let path = dir.join(&module.path).join("config.json");
                    let config: PoolingConfig = read_json(&path)?;
                    let others = config.pooling_mode_max_tokens
                        || config.pooling_mode_mean_sqrt_len_tokens
                        || config.pooling_mode_weightedmean_tokens
                        || config.pooling_mode_lasttoken;
                    pooling = Some(
                        match (
                            config.pooling_mode_cls_token,
                            config.pooling_mode_mean_tokens,
                            others,
                        ) {
                            (true, false, false) => Pooling::Cls,
                            (false, true, false) => Pooling::Mean,
                            _ => {
                                return Err(unsupported(
                                    path,
                                    "only a single cls or mean pooling mode is supported".into(),
                                ))
                            }
                        },
                    );
                }
                _ => {
                    return Err(unsupported(
                        modules_path.clone(),
                        format!("module type {} is not supported", module.kind),
                    ))
                }
            }
        }
        Ok(pooling.map(|pooling| Self { pooling, normalize }))
    }
}
