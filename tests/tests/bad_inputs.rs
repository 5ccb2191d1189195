//! Every bad input named in the foundation issue gives a clear error naming the problem:
//! missing file, corrupt or truncated safetensors, wrong shape, missing or unexpected keys,
//! config field out of range, over-long or empty input.

use std::path::{Path, PathBuf};

use burn::backend::NdArray;
use burn::tensor::{Int, Tensor};
use modernbert::checkpoint::{write_safetensors, SafetensorsReader};
use modernbert::{
    HfModel, InputError, LoadError, ModernBertConfig, ModernBertForMaskedLM, ModernBertInput,
    ModernBertModel, ModernBertTokenizer, Truncation,
};
use modernbert_tests::fixtures_dir;

type B = NdArray;

/// A writable copy of a fixture checkpoint.
fn copy_fixture(name: &str) -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join(name);
    std::fs::create_dir(&dir).unwrap();
    for entry in std::fs::read_dir(fixtures_dir().join(name)).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, dir.join(path.file_name().unwrap())).unwrap();
    }
    (tmp, dir)
}

fn load_mlm(dir: &Path) -> Result<ModernBertForMaskedLM<B>, LoadError> {
    ModernBertForMaskedLM::<B>::from_pretrained(dir, &Default::default())
}

/// Rewrites `model.safetensors` after `edit` changes its (key, values, shape) list.
fn edit_weights(dir: &Path, edit: impl FnOnce(&mut Vec<(String, Vec<f32>, Vec<usize>)>)) {
    let path = dir.join("model.safetensors");
    let reader = SafetensorsReader::open_file(&path).unwrap();
    let mut tensors: Vec<_> = reader
        .keys()
        .map(|k| {
            let raw = reader.read(k).unwrap().unwrap();
            (k.to_string(), raw.values, raw.shape)
        })
        .collect();
    edit(&mut tensors);
    write_safetensors(&path, tensors).unwrap();
}

fn edit_config(dir: &Path, edit: impl FnOnce(&mut serde_json::Value)) {
    let path = dir.join("config.json");
    let mut config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    edit(&mut config);
    std::fs::write(&path, serde_json::to_vec(&config).unwrap()).unwrap();
}

fn message<T: std::fmt::Debug, E: std::fmt::Display>(result: Result<T, E>) -> String {
    let message = result.expect_err("expected an error").to_string();
    println!("error: {message}");
    message
}

#[test]
fn missing_config_names_the_file() {
    let (_tmp, dir) = copy_fixture("mlm_long_v4");
    std::fs::remove_file(dir.join("config.json")).unwrap();
    let err = message(load_mlm(&dir));
    assert!(err.contains("config.json"), "{err}");
}

#[test]
fn missing_weights_name_both_accepted_files() {
    let (_tmp, dir) = copy_fixture("mlm_long_v4");
    std::fs::remove_file(dir.join("model.safetensors")).unwrap();
    let err = message(load_mlm(&dir));
    assert!(
        err.contains("model.safetensors") && err.contains("index.json"),
        "{err}"
    );
}

#[test]
fn missing_shard_names_the_shard() {
    let (_tmp, dir) = copy_fixture("mlm_window_v5_bf16_sharded");
    std::fs::remove_file(dir.join("model-00002-of-00003.safetensors")).unwrap();
    let err = message(load_mlm(&dir));
    assert!(err.contains("model-00002-of-00003.safetensors"), "{err}");
}

#[test]
fn truncated_safetensors_is_corrupt() {
    let (_tmp, dir) = copy_fixture("mlm_long_v4");
    let path = dir.join("model.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
    let err = message(load_mlm(&dir));
    assert!(
        matches!(load_mlm(&dir), Err(LoadError::Corrupt { .. })),
        "{err}"
    );
    assert!(
        err.contains("model.safetensors") && err.contains("not a valid safetensors"),
        "{err}"
    );
}

#[test]
fn garbage_header_is_corrupt() {
    let (_tmp, dir) = copy_fixture("mlm_long_v4");
    let path = dir.join("model.safetensors");
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[8..40].copy_from_slice(&[b'#'; 32]);
    std::fs::write(&path, &bytes).unwrap();
    assert!(matches!(load_mlm(&dir), Err(LoadError::Corrupt { .. })));
}

#[test]
fn wrong_shape_names_key_and_shapes() {
    let (_tmp, dir) = copy_fixture("mlm_long_v4");
    edit_weights(&dir, |tensors| {
        let wqkv = tensors
            .iter_mut()
            .find(|(k, _, _)| k == "model.layers.1.attn.Wqkv.weight")
            .unwrap();
        wqkv.1.truncate(191 * 64);
        wqkv.2 = vec![191, 64];
    });
    let err = message(load_mlm(&dir));
    assert!(
        err.contains("model.layers.1.attn.Wqkv.weight")
            && err.contains("[191, 64]")
            && err.contains("[192, 64]"),
        "{err}"
    );
}

#[test]
fn config_weight_mismatch_is_a_shape_error() {
    // A config that disagrees with the weights (wider MLP) is caught at the first tensor.
    let (_tmp, dir) = copy_fixture("mlm_long_v4");
    edit_config(&dir, |c| c["intermediate_size"] = 128.into());
    let err = message(load_mlm(&dir));
    assert!(
        err.contains("mlp.Wi.weight") && err.contains("[256, 64]"),
        "{err}"
    );
}

#[test]
fn missing_and_unexpected_keys_are_listed_by_name() {
    let (_tmp, dir) = copy_fixture("mlm_long_v4");
    edit_weights(&dir, |tensors| {
        tensors.retain(|(k, _, _)| k != "model.final_norm.weight" && k != "head.norm.weight");
        tensors.push((
            "model.layers.0.attn.Wqkv.bias".into(),
            vec![0.0; 192],
            vec![192],
        ));
    });
    let err = message(load_mlm(&dir));
    for key in [
        "model.final_norm.weight",
        "head.norm.weight",
        "model.layers.0.attn.Wqkv.bias",
    ] {
        assert!(err.contains(key), "{err} lacks {key}");
    }
    assert!(
        err.contains("missing keys (2)") && err.contains("unexpected keys (1)"),
        "{err}"
    );
}

#[test]
fn a_task_head_missing_from_the_checkpoint_is_refused() {
    // A bare encoder checkpoint has no MLM head: loading it as MaskedLM must fail by name.
    let dir = fixtures_dir().join("encoder_only_v5");
    let err = message(load_mlm(&dir));
    assert!(
        err.contains("missing keys")
            && err.contains("decoder.bias")
            && err.contains("head.dense.weight"),
        "{err}"
    );
}

#[test]
fn the_encoder_loads_from_a_task_checkpoint() {
    // The common case of taking embeddings from an MLM checkpoint: head keys are not ours.
    let dir = fixtures_dir().join("mlm_long_v4");
    ModernBertModel::<B>::from_pretrained(&dir, &Default::default())
        .expect("encoder from MLM checkpoint");
}

#[test]
fn non_float_tensor_names_its_dtype() {
    let (_tmp, dir) = copy_fixture("encoder_only_v5");
    let path = dir.join("model.safetensors");
    // Re-write one tensor as I32 with the safetensors crate directly.
    let reader = SafetensorsReader::open_file(&path).unwrap();
    let keys: Vec<String> = reader.keys().map(String::from).collect();
    let raws: Vec<_> = keys
        .iter()
        .map(|k| reader.read(k).unwrap().unwrap())
        .collect();
    let bytes: Vec<Vec<u8>> = raws
        .iter()
        .zip(&keys)
        .map(|(r, k)| match k.as_str() {
            "final_norm.weight" => r
                .values
                .iter()
                .flat_map(|v| (*v as i32).to_le_bytes())
                .collect(),
            _ => r.values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        })
        .collect();
    let views: Vec<_> = keys
        .iter()
        .zip(&raws)
        .zip(&bytes)
        .map(|((k, r), b)| {
            let dtype = if k == "final_norm.weight" {
                safetensors::Dtype::I32
            } else {
                safetensors::Dtype::F32
            };
            (
                k.clone(),
                safetensors::tensor::TensorView::new(dtype, r.shape.clone(), b).unwrap(),
            )
        })
        .collect();
    safetensors::serialize_to_file(views, None, &path).unwrap();
    let err = message(ModernBertModel::<B>::from_pretrained(
        &dir,
        &Default::default(),
    ));
    assert!(
        err.contains("final_norm.weight") && err.contains("I32"),
        "{err}"
    );
}

#[test]
fn tied_decoder_that_differs_is_refused() {
    let (_tmp, dir) = copy_fixture("mlm_tied_present_f16");
    edit_weights(&dir, |tensors| {
        let decoder = tensors
            .iter_mut()
            .find(|(k, _, _)| k == "decoder.weight")
            .unwrap();
        decoder.1[0] += 1.0;
    });
    let err = message(load_mlm(&dir));
    assert!(
        err.contains("decoder.weight") && err.contains("tie_word_embeddings"),
        "{err}"
    );
}

#[test]
fn config_fields_out_of_range_are_named() {
    for (field, value) in [
        ("num_attention_heads", serde_json::json!(5)),
        ("local_attention", serde_json::json!(7)),
        ("norm_eps", serde_json::json!(0.0)),
        ("hidden_activation", serde_json::json!("relu")),
        ("vocab_size", serde_json::json!(2)),
    ] {
        let (_tmp, dir) = copy_fixture("mlm_long_v4");
        edit_config(&dir, |c| c[field] = value.clone());
        let err = message(load_mlm(&dir));
        assert!(err.contains("config.json"), "{err}");
        // vocab_size 2 is caught through the special-token ids it no longer contains.
        let named = if field == "vocab_size" {
            "pad_token_id"
        } else {
            field
        };
        assert!(err.contains(named), "{field}: {err}");
    }
}

#[test]
fn malformed_config_json_is_named() {
    let (_tmp, dir) = copy_fixture("mlm_long_v4");
    std::fs::write(dir.join("config.json"), "{ not json").unwrap();
    let err = message(load_mlm(&dir));
    assert!(
        err.contains("config.json") && err.contains("not a valid"),
        "{err}"
    );
}

#[test]
fn tokenizer_disagreeing_with_config_is_refused() {
    let dir = fixtures_dir().join("mlm_long_v4");
    let config = ModernBertConfig::from_file(dir.join("config.json"))
        .unwrap()
        .with_pad_token_id(7);
    let err = message(ModernBertTokenizer::from_file(
        dir.join("tokenizer.json"),
        &config,
    ));
    assert!(err.contains("[PAD]") && err.contains('7'), "{err}");
    let err = message(ModernBertTokenizer::from_file(
        dir.join("missing.json"),
        &config,
    ));
    assert!(err.contains("missing.json"), "{err}");
}

#[test]
fn over_long_and_empty_inputs_are_refused() {
    let dir = fixtures_dir().join("mlm_long_v4");
    let device = Default::default();
    let model = load_mlm(&dir).unwrap();
    let config = &model.model.config;
    let max = config.max_position_embeddings;

    // Token ids: too long, empty sequence, empty batch, id out of range.
    let too_long = vec![vec![5u32; max + 1]];
    let err = ModernBertInput::<B>::from_token_ids(&too_long, config, &device).unwrap_err();
    assert_eq!(
        err,
        InputError::TooLong {
            index: 0,
            len: max + 1,
            max
        }
    );
    assert!(err.to_string().contains("max_position_embeddings"));
    assert!(matches!(
        ModernBertInput::<B>::from_token_ids(&[vec![1], vec![]], config, &device),
        Err(InputError::Empty(_))
    ));
    assert!(matches!(
        ModernBertInput::<B>::from_token_ids(&[], config, &device),
        Err(InputError::Empty(_))
    ));
    assert!(matches!(
        ModernBertInput::<B>::from_token_ids(&[vec![1, 320]], config, &device),
        Err(InputError::TokenOutOfRange { id: 320, .. })
    ));

    // Tensors straight into forward.
    let ids = Tensor::<B, 2, Int>::ones([1, max + 1], &device);
    assert!(matches!(
        model.forward(ModernBertInput::new(ids)),
        Err(InputError::TooLong { .. })
    ));
    let ids = Tensor::<B, 2, Int>::ones([2, 0], &device);
    assert!(matches!(
        model.forward(ModernBertInput::new(ids)),
        Err(InputError::Empty(_))
    ));
    let ids = Tensor::<B, 2, Int>::ones([2, 4], &device);
    let mask = Tensor::<B, 2, Int>::ones([2, 5], &device);
    assert!(matches!(
        model.forward(ModernBertInput::new(ids).with_attention_mask(mask)),
        Err(InputError::Shape(_))
    ));

    // Text: refused when too long, cut when asked, and never beyond the model's limit.
    let tokenizer = ModernBertTokenizer::from_file(dir.join("tokenizer.json"), config).unwrap();
    let long_text = "lobster ".repeat(max);
    assert!(matches!(
        tokenizer.encode(&long_text, Truncation::Refuse),
        Err(InputError::TooLong { .. })
    ));
    let cut = tokenizer
        .encode(&long_text, Truncation::MaxLength(32))
        .unwrap();
    assert_eq!(cut.len(), 32);
    assert_eq!(
        (cut[0], cut[31]),
        (config.cls_token_id, config.sep_token_id)
    );
    assert!(matches!(
        tokenizer.encode("x", Truncation::MaxLength(max + 1)),
        Err(InputError::TooLong { .. })
    ));
    assert!(matches!(
        tokenizer.encode_batch(&[], Truncation::Refuse),
        Err(InputError::Empty(_))
    ));
}
