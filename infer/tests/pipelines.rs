//! The inference API on the committed HF fixtures (NdArray, f32): pipeline results equal
//! the model's direct outputs, results keep input order under length sorting, over-long
//! texts are truncated or refused, and bad inputs give clear errors.

use std::path::{Path, PathBuf};

use burn::backend::NdArray;
use burn::tensor::activation::softmax;
use burn::tensor::Tensor;
use modernbert::{
    HfModel, InputError, ModernBertForMaskedLM, ModernBertForSequenceClassification,
    ModernBertForTokenClassification, ModernBertModel, ModernBertTokenizer, Pooling, Truncation,
};
use modernbert_infer::{
    resolve_model, Classifier, Embedder, FillMask, HubOptions, InferError, InferOptions, OverLong,
    TokenClassifier,
};

type B = NdArray;

/// Largest absolute difference allowed between a pipeline's result and the model's direct
/// output: both are the same f32 computation, batched differently.
const TOLERANCE: f32 = 1e-5;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures")
        .join(name)
}

fn host<const D: usize>(t: Tensor<B, D>) -> Vec<f32> {
    t.into_data().to_vec::<f32>().unwrap()
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

const TEXTS: [&str; 4] = [
    "The European lobster is a species of clawed lobster.",
    "Short.",
    "A somewhat longer sentence, so that padding and sorting both matter here.",
    "Mid length text here.",
];

#[test]
fn classify_equals_the_models_softmax() {
    for name in ["seqcls_cls_v5", "seqcls_mean_v4"] {
        let device = Default::default();
        let dir = fixture(name);
        let classifier = Classifier::<B>::from_pretrained(&dir, &device).unwrap();
        let outputs = classifier.classify(&TEXTS).unwrap();
        let model =
            ModernBertForSequenceClassification::<B>::from_pretrained(&dir, &device).unwrap();
        let config = &model.model.config;
        let tokenizer = ModernBertTokenizer::from_file(dir.join("tokenizer.json"), config).unwrap();
        let batch = tokenizer.encode_batch(&TEXTS, Truncation::Refuse).unwrap();
        let logits = model
            .forward(batch.to_input(config, &device).unwrap())
            .unwrap()
            .logits;
        let expected = host(softmax(logits, 1));
        let got: Vec<f32> = outputs
            .iter()
            .flat_map(|o| o.scores.iter().map(|s| s.score))
            .collect();
        let diff = max_diff(&got, &expected);
        println!("{name}: max diff {diff:.2e}");
        assert!(diff <= TOLERANCE, "{name}: max diff {diff}");
        for o in &outputs {
            let top = o
                .scores
                .iter()
                .max_by(|a, b| a.score.total_cmp(&b.score))
                .unwrap();
            assert_eq!((&o.label, o.score), (&top.label, top.score));
            assert_eq!(o.scores.len(), config.id2label.len());
        }
        assert_eq!(outputs[0].scores[0].label, config.id2label[0]);
    }
}

#[test]
fn token_classification_equals_the_models_softmax() {
    let device = Default::default();
    let dir = fixture("tokcls_v5");
    let outputs = TokenClassifier::<B>::from_pretrained(&dir, &device)
        .unwrap()
        .classify(&TEXTS)
        .unwrap();
    let model = ModernBertForTokenClassification::<B>::from_pretrained(&dir, &device).unwrap();
    let config = &model.model.config;
    let tokenizer = ModernBertTokenizer::from_file(dir.join("tokenizer.json"), config).unwrap();
    let batch = tokenizer.encode_batch(&TEXTS, Truncation::Refuse).unwrap();
    let logits = model
        .forward(batch.to_input(config, &device).unwrap())
        .unwrap()
        .logits;
    let [_, seq, classes] = logits.dims();
    let probs = host(softmax(logits, 2));
    let mut diff = 0f32;
    for (row, output) in outputs.iter().enumerate() {
        let real = batch.attention_mask[row]
            .iter()
            .filter(|&&m| m == 1)
            .count();
        // Every token but [CLS] and [SEP].
        assert_eq!(output.tokens.len(), real - 2);
        for token in &output.tokens {
            assert_eq!(token.token_id, batch.input_ids[row][token.index]);
            let start = (row * seq + token.index) * classes;
            let row_probs = &probs[start..start + classes];
            let best = row_probs.iter().cloned().fold(f32::MIN, f32::max);
            diff = diff.max((best - token.score).abs());
            let label = row_probs.iter().position(|&p| p == best).unwrap();
            assert_eq!(token.label, config.id2label[label]);
        }
    }
    println!("tokcls_v5: max diff {diff:.2e}");
    assert!(diff <= TOLERANCE, "max diff {diff}");
}

#[test]
fn fill_mask_equals_the_models_softmax() {
    let device = Default::default();
    let dir = fixture("mlm_tied_present_f16");
    let texts = [
        "Paris is the [MASK] of France.",
        "A [MASK] and a [MASK] here, and longer text.",
    ];
    let outputs = FillMask::<B>::from_pretrained(&dir, &device)
        .unwrap()
        .predict(&texts, 3)
        .unwrap();
    let model = ModernBertForMaskedLM::<B>::from_pretrained(&dir, &device).unwrap();
    let config = &model.model.config;
    let tokenizer = ModernBertTokenizer::from_file(dir.join("tokenizer.json"), config).unwrap();
    let mask = tokenizer.mask_token_id().unwrap();
    let batch = tokenizer.encode_batch(&texts, Truncation::Refuse).unwrap();
    let logits = model
        .forward(batch.to_input(config, &device).unwrap())
        .unwrap()
        .logits;
    let [_, seq, vocab] = logits.dims();
    let probs = host(softmax(logits, 2));
    let mut diff = 0f32;
    for (row, output) in outputs.iter().enumerate() {
        let positions: Vec<usize> = (0..seq)
            .filter(|&i| batch.input_ids[row][i] == mask)
            .collect();
        assert_eq!(output.masks.len(), positions.len());
        for (candidates, pos) in output.masks.iter().zip(positions) {
            let start = (row * seq + pos) * vocab;
            let row_probs = &probs[start..start + vocab];
            let mut order: Vec<usize> = (0..vocab).collect();
            order.sort_by(|&a, &b| row_probs[b].total_cmp(&row_probs[a]));
            assert_eq!(candidates.len(), 3);
            for (c, &id) in candidates.iter().zip(&order) {
                assert_eq!(c.token_id as usize, id);
                diff = diff.max((c.score - row_probs[id]).abs());
            }
        }
    }
    println!("mlm_tied_present_f16: max diff {diff:.2e}");
    assert!(diff <= TOLERANCE, "max diff {diff}");
}

#[test]
fn embeddings_equal_pooled_hidden_states() {
    let device = Default::default();
    let dir = fixture("encoder_only_v5");
    let model = ModernBertModel::<B>::from_pretrained(&dir, &device).unwrap();
    let config = &model.config;
    let tokenizer = ModernBertTokenizer::from_file(dir.join("tokenizer.json"), config).unwrap();
    let batch = tokenizer.encode_batch(&TEXTS, Truncation::Refuse).unwrap();
    let output = model
        .forward(batch.to_input(config, &device).unwrap())
        .unwrap();
    let [_, seq, h] = output.last_hidden_state.dims();
    let hidden = host(output.last_hidden_state);
    for pooling in [Pooling::Cls, Pooling::Mean] {
        for normalize in [false, true] {
            let got = Embedder::<B>::from_pretrained(&dir, &device)
                .unwrap()
                .with_pooling(pooling)
                .with_normalize(normalize)
                .embed(&TEXTS)
                .unwrap();
            for (row, e) in got.iter().enumerate() {
                let real = batch.attention_mask[row]
                    .iter()
                    .filter(|&&m| m == 1)
                    .count();
                assert_eq!(e.tokens, real);
                let used = if pooling == Pooling::Cls { 1 } else { real };
                let mut expected: Vec<f32> = (0..h)
                    .map(|j| {
                        (0..used)
                            .map(|t| hidden[(row * seq + t) * h + j])
                            .sum::<f32>()
                            / used as f32
                    })
                    .collect();
                if normalize {
                    let norm = expected.iter().map(|x| x * x).sum::<f32>().sqrt();
                    expected.iter_mut().for_each(|x| *x /= norm);
                    let got_norm = e.embedding.iter().map(|x| x * x).sum::<f32>().sqrt();
                    assert!((got_norm - 1.0).abs() < 1e-5, "norm {got_norm}");
                }
                let diff = max_diff(&e.embedding, &expected);
                assert!(
                    diff <= TOLERANCE,
                    "{pooling:?} normalize={normalize}: diff {diff}"
                );
            }
        }
    }
}

#[test]
fn results_keep_input_order_under_length_sorting() {
    let device = Default::default();
    let dir = fixture("seqcls_mean_v4");
    let texts = [
        "one",
        "a much longer text than the first one, with many more tokens in it",
        "two words",
        "a medium length text for the middle",
        "x",
    ];
    // A budget of 40 tokens forces several batches, longest first.
    let batched = Classifier::<B>::from_pretrained(&dir, &device)
        .unwrap()
        .with_options(InferOptions::default().with_max_batch_tokens(40))
        .classify(&texts)
        .unwrap();
    let single = Classifier::<B>::from_pretrained(&dir, &device).unwrap();
    for (text, got) in texts.iter().zip(&batched) {
        let alone = &single.classify(&[text]).unwrap()[0];
        let a: Vec<f32> = got.scores.iter().map(|s| s.score).collect();
        let b: Vec<f32> = alone.scores.iter().map(|s| s.score).collect();
        let diff = max_diff(&a, &b);
        assert!(diff <= TOLERANCE, "{text:?}: diff {diff}");
    }
    let embedder = Embedder::<B>::from_pretrained(&dir, &device)
        .unwrap()
        .with_options(InferOptions::default().with_max_batch_tokens(40));
    let tokens: Vec<usize> = embedder
        .embed(&texts)
        .unwrap()
        .iter()
        .map(|e| e.tokens)
        .collect();
    let expected: Vec<usize> = texts
        .iter()
        .map(|t| embedder.embed(&[t]).unwrap()[0].tokens)
        .collect();
    assert_eq!(tokens, expected);
}

#[test]
fn over_long_texts_are_truncated_or_refused() {
    let device = Default::default();
    let dir = fixture("seqcls_cls_v5"); // max_position_embeddings = 512
    let long = "word ".repeat(700);
    let texts = ["short text", long.as_str()];
    let embedder = Embedder::<B>::from_pretrained(&dir, &device).unwrap();
    let out = embedder.embed(&texts).unwrap();
    assert!(!out[0].truncated);
    assert!(out[1].truncated);
    assert_eq!(out[1].tokens, 512);
    let refused = embedder
        .with_options(InferOptions::default().with_over_long(OverLong::Refuse))
        .embed(&texts)
        .unwrap_err();
    assert!(
        matches!(
            refused,
            InferError::Input(InputError::TooLong {
                index: 1,
                max: 512,
                ..
            })
        ),
        "{refused}"
    );
}

#[test]
fn bad_inputs_give_clear_errors() {
    let device = Default::default();
    let fill = FillMask::<B>::from_pretrained(fixture("mlm_tied_present_f16"), &device).unwrap();
    let err = fill.predict(&["fine [MASK]", ""], 5).unwrap_err();
    assert!(matches!(err, InferError::EmptyText { index: 1 }), "{err}");
    let err = fill
        .predict(&["fine [MASK]", "no mask at all"], 5)
        .unwrap_err();
    assert!(matches!(err, InferError::NoMask { index: 1, .. }), "{err}");
    assert!(err.to_string().contains("no mask at all"), "{err}");
    assert!(matches!(
        fill.predict(&["a [MASK]"], 0),
        Err(InferError::ZeroTopK)
    ));
    assert!(matches!(fill.predict(&[], 5), Err(InferError::NoTexts)));

    // A checkpoint without the head the task needs.
    let err = Classifier::<B>::from_pretrained(fixture("mlm_long_v4"), &device).unwrap_err();
    assert!(matches!(err, InferError::NoHead { .. }), "{err}");
    assert!(
        err.to_string()
            .contains("ModernBertForSequenceClassification"),
        "{err}"
    );
    let err = FillMask::<B>::from_pretrained(fixture("seqcls_cls_v5"), &device).unwrap_err();
    assert!(matches!(err, InferError::NoHead { .. }), "{err}");
    let err = TokenClassifier::<B>::from_pretrained(fixture("seqcls_cls_v5"), &device).unwrap_err();
    assert!(matches!(err, InferError::NoHead { .. }), "{err}");

    // id2label names 2 classes, the classifier has 3.
    let dir = tempfile::tempdir().unwrap();
    let source = fixture("seqcls_cls_v5");
    for file in ["model.safetensors", "tokenizer.json"] {
        std::fs::copy(source.join(file), dir.path().join(file)).unwrap();
    }
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(source.join("config.json")).unwrap())
            .unwrap();
    config["id2label"] = serde_json::json!({"0": "no", "1": "yes"});
    config["label2id"] = serde_json::json!({"no": 0, "yes": 1});
    std::fs::write(dir.path().join("config.json"), config.to_string()).unwrap();
    let err = Classifier::<B>::from_pretrained(dir.path(), &device).unwrap_err();
    assert!(
        matches!(
            err,
            InferError::LabelCount {
                id2label: 2,
                weights: 3,
                ..
            }
        ),
        "{err}"
    );

    let classifier = Classifier::<B>::from_pretrained(fixture("seqcls_cls_v5"), &device)
        .unwrap()
        .with_options(InferOptions::default().with_max_batch_tokens(0));
    assert!(matches!(
        classifier.classify(&["x"]),
        Err(InferError::ZeroBatchTokens)
    ));
}

#[test]
fn offline_hub_miss_names_the_local_directory_option() {
    let cache = tempfile::tempdir().unwrap();
    let options = HubOptions {
        offline: true,
        cache_dir: Some(cache.path().to_path_buf()),
    };
    let err = resolve_model("answerdotai/ModernBERT-base", &options).unwrap_err();
    assert!(matches!(err, InferError::Hub { .. }), "{err}");
    assert!(err.to_string().contains("--model DIR"), "{err}");
    let dir = fixture("seqcls_cls_v5");
    assert_eq!(resolve_model(dir.to_str().unwrap(), &options).unwrap(), dir);
    let err = resolve_model("not/a/hub/id", &options).unwrap_err();
    assert!(err.to_string().contains("owner/name"), "{err}");
}
