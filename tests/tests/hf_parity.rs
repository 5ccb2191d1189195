//! Our outputs vs HF transformers' on the committed fixtures, per backend:
//! NdArray ≤ 1e-5, Wgpu (plain and fused) ≤ 1e-4, Cuda ≤ 1e-4 (max relative error, f32).

use modernbert::{ModernBertConfig, ModernBertTokenizer, Truncation};
use modernbert_tests::{fixtures_dir, parity, Fixture};

fn check_all<B: modernbert::Backend>(device: &B::Device, tolerance: f32) {
    let fixtures = Fixture::all();
    assert!(
        fixtures.len() >= 7,
        "expected the 7 committed fixtures, found {}",
        fixtures.len()
    );
    let mut failures = Vec::new();
    for fixture in &fixtures {
        match parity::<B>(fixture, device) {
            Ok(err) if err <= tolerance => {}
            Ok(err) => failures.push(format!("{}: {err:.3e} > {tolerance:e}", fixture.name())),
            Err(e) => failures.push(format!("{}: {e:#}", fixture.name())),
        }
    }
    assert!(
        failures.is_empty(),
        "parity failures:\n{}",
        failures.join("\n")
    );
}

#[cfg(feature = "ndarray")]
#[test]
fn ndarray_matches_hf() {
    check_all::<burn::backend::NdArray>(&Default::default(), 1e-5);
}

#[cfg(feature = "wgpu")]
#[test]
fn wgpu_matches_hf() {
    check_all::<burn::backend::Wgpu>(&Default::default(), 1e-4);
}

/// Wgpu under Burn's fusion, our kernels as custom ops of the fusion stream.
#[cfg(feature = "wgpu")]
#[test]
fn wgpu_fusion_matches_hf() {
    check_all::<modernbert_tests::FusedWgpu>(&Default::default(), 1e-4);
}

#[cfg(feature = "cuda")]
#[test]
fn cuda_matches_hf() {
    check_all::<burn::backend::Cuda>(&Default::default(), 1e-4);
}

#[derive(serde::Deserialize)]
struct TokenizerCases {
    single: Vec<Single>,
    batch: Batch,
}
#[derive(serde::Deserialize)]
struct Single {
    text: String,
    ids: Vec<u32>,
}
#[derive(serde::Deserialize)]
struct Batch {
    texts: Vec<String>,
    max_length: usize,
    input_ids: Vec<Vec<u32>>,
    attention_mask: Vec<Vec<u32>>,
}

#[test]
fn tokenizer_matches_hf_tokenizers() {
    let dir = fixtures_dir();
    let cases: TokenizerCases =
        serde_json::from_slice(&std::fs::read(dir.join("tokenizer_cases.json")).unwrap()).unwrap();
    let config = ModernBertConfig::from_file(dir.join("mlm_long_v4/config.json")).unwrap();
    let tokenizer =
        ModernBertTokenizer::from_file(dir.join("mlm_long_v4/tokenizer.json"), &config).unwrap();
    for case in &cases.single {
        assert_eq!(
            tokenizer.encode(&case.text, Truncation::Refuse).unwrap(),
            case.ids,
            "{:?}",
            case.text
        );
    }
    let texts: Vec<&str> = cases.batch.texts.iter().map(String::as_str).collect();
    let batch = tokenizer
        .encode_batch(&texts, Truncation::MaxLength(cases.batch.max_length))
        .unwrap();
    assert_eq!(batch.input_ids, cases.batch.input_ids);
    assert_eq!(batch.attention_mask, cases.batch.attention_mask);
    assert!(
        batch.truncated.iter().any(|&t| t),
        "the batch case is meant to exercise truncation"
    );
}
