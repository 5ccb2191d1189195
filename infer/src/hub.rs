//! Where a checkpoint comes from: a local directory, or a HuggingFace hub id downloaded
//! into the hub cache with the `hf-hub` crate (sync API). Offline (no network, or
//! `HF_HUB_OFFLINE=1`), only the cache is read, and a miss is an error that names
//! `--model DIR`.

use std::path::{Path, PathBuf};

use hf_hub::api::sync::ApiBuilder;
use hf_hub::Cache;
use serde::Deserialize;

use crate::error::InferError;
use crate::sentence_transformers::MODULES_FILE;

/// How hub ids are fetched.
#[derive(Debug, Clone, Default)]
pub struct HubOptions {
    /// Read the local cache only, never the network (`HF_HUB_OFFLINE=1`).
    pub offline: bool,
    /// The hub cache (default: `$HF_HOME/hub`, else `~/.cache/huggingface/hub`).
    pub cache_dir: Option<PathBuf>,
}

impl HubOptions {
    /// Offline when `HF_HUB_OFFLINE` is `1`/`true`/`yes`/`on`, as `huggingface_hub` reads it.
    pub fn from_env() -> Self {
        let offline = std::env::var("HF_HUB_OFFLINE")
            .is_ok_and(|v| matches!(v.to_ascii_lowercase().as_str(), "1" | "true" | "yes" | "on"));
        Self {
            offline,
            cache_dir: None,
        }
    }
}

#[derive(Deserialize)]
struct Index {
    weight_map: std::collections::BTreeMap<String, String>,
}

/// One file source: the cache alone (offline) or the hub through the cache.
enum Fetcher {
    Cache(hf_hub::CacheRepo),
    Api(hf_hub::api::sync::ApiRepo),
}

impl Fetcher {
    fn get(&self, file: &str) -> Result<PathBuf, String> {
        match self {
            Fetcher::Cache(repo) => repo
                .get(file)
                .ok_or_else(|| format!("offline (HF_HUB_OFFLINE) and {file} is not in the cache")),
            Fetcher::Api(repo) => repo.get(file).map_err(|e| format!("{file}: {e}")),
        }
    }
}

/// The checkpoint directory for `model`: itself when it is a directory, else the hub
/// cache's snapshot after fetching `config.json`, `tokenizer.json`, the weights (single
/// file or index and shards) and, when present, the sentence-transformers pooling config.
///
/// # Errors
/// [`InferError::Hub`] when `model` is no directory and cannot be fetched (offline, not
/// found, no such repository); its message tells how to pass a local directory instead.
pub fn resolve_model(model: &str, options: &HubOptions) -> Result<PathBuf, InferError> {
    let path = Path::new(model);
    if path.is_dir() {
        return Ok(path.to_path_buf());
    }
    let fail = |reason: String| InferError::Hub {
        model: model.to_string(),
        reason,
    };
    let looks_like_id = model.split('/').count() == 2
        && !model.starts_with('.')
        && !model.starts_with('/')
        && !path.exists();
    if !looks_like_id {
        return Err(fail(
            "it is not a checkpoint directory, nor a hub id of the form owner/name".into(),
        ));
    }
    let cache = options
        .cache_dir
        .clone()
        .map_or_else(Cache::from_env, Cache::new);
    let fetcher = if options.offline {
        Fetcher::Cache(cache.model(model.to_string()))
    } else {
        let api = ApiBuilder::from_cache(cache)
            .with_progress(true)
            .build()
            .map_err(|e| fail(e.to_string()))?;
        Fetcher::Api(api.model(model.to_string()))
    };
    let config = fetcher.get("config.json").map_err(fail)?;
    fetcher.get("tokenizer.json").map_err(fail)?;
    if let Err(single) = fetcher.get(modernbert::checkpoint::WEIGHTS_FILE) {
        let index_path = fetcher
            .get(modernbert::checkpoint::WEIGHTS_INDEX_FILE)
            .map_err(|_| fail(single))?;
        let text = std::fs::read_to_string(&index_path).map_err(|e| fail(e.to_string()))?;
        let index: Index = serde_json::from_str(&text)
            .map_err(|e| fail(format!("{}: {e}", index_path.display())))?;
        let shards: std::collections::BTreeSet<&String> = index.weight_map.values().collect();
        for shard in shards {
            fetcher.get(shard).map_err(fail)?;
        }
    }
    // Optional: embedders published for sentence-transformers say how to pool.
    if let Ok(modules) = fetcher.get(MODULES_FILE) {
        for file in crate::sentence_transformers::module_files(&modules).unwrap_or_default() {
            fetcher.get(&file).map_err(fail)?;
        }
    }
    Ok(config
        .parent()
        .expect("a cached file lives in a snapshot directory")
        .to_path_buf())
}
