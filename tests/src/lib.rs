//! Shared code of the tests: reading the HF fixtures of `fixtures/` (made by
//! `fixtures/generate.py`) and comparing our outputs with HF's; the attention checks
//! ([`attention`]); the fused Wgpu and Cuda backends (`FusedWgpu`, `FusedCuda`).

pub mod attention;
pub mod compare;
pub mod random;

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use burn::tensor::{Int, Tensor, TensorData};
use modernbert::Backend;
use modernbert::{
    Execution, HfModel, ModernBertForMaskedLM, ModernBertForSequenceClassification,
    ModernBertForTokenClassification, ModernBertInput, ModernBertModel,
};
use safetensors::SafeTensors;
use serde::Deserialize;

/// Burn's fusion backend over Wgpu, with our kernels as custom ops of the fusion stream.
/// (`burn::backend::Wgpu` is this type only with Burn's `fusion` feature, which this
/// workspace leaves off, so the other tests' `Wgpu` stays the plain CubeCL backend.)
#[cfg(feature = "wgpu")]
pub type FusedWgpu = burn_fusion::Fusion<
    burn::backend::wgpu::CubeBackend<burn::backend::wgpu::WgpuRuntime, f32, i32, u32>,
>;

/// Burn's fusion backend over Cuda, with our kernels as custom ops of the fusion stream
/// (`burn::backend::Cuda` is the plain CubeCL backend here, as `Wgpu` is).
#[cfg(feature = "cuda")]
pub type FusedCuda = burn_fusion::Fusion<burn::backend::Cuda>;

/// The fixtures folder: `MODERNBERT_FIXTURES` if set (for test binaries copied to another
/// machine), else this crate's `fixtures/`.
pub fn fixtures_dir() -> PathBuf {
    match std::env::var_os("MODERNBERT_FIXTURES") {
        Some(dir) => PathBuf::from(dir),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures"),
    }
}

/// Which HF class a fixture checkpoint is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Task {
    /// `ModernBertModel`.
    Model,
    /// `ModernBertForMaskedLM`.
    MaskedLm,
    /// `ModernBertForSequenceClassification`.
    SequenceClassification,
    /// `ModernBertForTokenClassification`.
    TokenClassification,
}

#[derive(Deserialize)]
struct Case {
    task: Task,
}

/// A row-major f32 array and its shape.
#[derive(Debug, Clone)]
pub struct Array {
    /// Values.
    pub values: Vec<f32>,
    /// Shape.
    pub shape: Vec<usize>,
}

/// A checkpoint directory with HF's outputs for one batch.
#[derive(Debug, Clone)]
pub struct Fixture {
    /// The checkpoint directory.
    pub dir: PathBuf,
    /// Its HF class.
    pub task: Task,
    /// `[batch, seq]`, right-padded.
    pub input_ids: Vec<i64>,
    /// `[batch, seq]`, 1 = real token.
    pub attention_mask: Vec<i64>,
    /// `[batch, seq]`.
    pub batch_seq: [usize; 2],
    /// HF's `last_hidden_state`, `[batch, seq, H]`.
    pub last_hidden_state: Array,
    /// HF's logits, absent for a bare encoder.
    pub logits: Option<Array>,
}

fn array(tensors: &SafeTensors, key: &str) -> Result<Option<Array>> {
    let Ok(view) = tensors.tensor(key) else {
        return Ok(None);
    };
    if view.dtype() != safetensors::Dtype::F32 {
        bail!("{key} is {:?}, expected F32", view.dtype());
    }
    let values = view
        .data()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    Ok(Some(Array {
        values,
        shape: view.shape().to_vec(),
    }))
}

fn ints(tensors: &SafeTensors, key: &str) -> Result<(Vec<i64>, Vec<usize>)> {
    let view = tensors
        .tensor(key)
        .with_context(|| format!("missing {key}"))?;
    if view.dtype() != safetensors::Dtype::I64 {
        bail!("{key} is {:?}, expected I64", view.dtype());
    }
    let values = view
        .data()
        .chunks_exact(8)
        .map(|b| i64::from_le_bytes(b.try_into().unwrap()))
        .collect();
    Ok((values, view.shape().to_vec()))
}

impl Fixture {
    /// Reads `dir/case.json` and `dir/expected.safetensors`.
    ///
    /// # Errors
    /// If a file is missing or malformed.
    pub fn load(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref().to_path_buf();
        let case: Case =
            serde_json::from_slice(&std::fs::read(dir.join("case.json")).context("case.json")?)?;
        let bytes =
            std::fs::read(dir.join("expected.safetensors")).context("expected.safetensors")?;
        let tensors = SafeTensors::deserialize(&bytes)?;
        let (input_ids, shape) = ints(&tensors, "input_ids")?;
        let (attention_mask, _) = ints(&tensors, "attention_mask")?;
        Ok(Self {
            task: case.task,
            input_ids,
            attention_mask,
            batch_seq: [shape[0], shape[1]],
            last_hidden_state: array(&tensors, "last_hidden_state")?
                .context("missing last_hidden_state")?,
            logits: array(&tensors, "logits")?,
            dir,
        })
    }

    /// Every case folder under [`fixtures_dir`].
    pub fn all() -> Vec<Self> {
        let mut dirs: Vec<PathBuf> = std::fs::read_dir(fixtures_dir())
            .expect("fixtures folder")
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.join("case.json").is_file())
            .collect();
        dirs.sort();
        dirs.into_iter()
            .map(|d| Fixture::load(&d).unwrap_or_else(|e| panic!("{}: {e:#}", d.display())))
            .collect()
    }

    /// The case name (folder name).
    pub fn name(&self) -> String {
        self.dir
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned()
    }

    /// The fixture's batch as model input.
    pub fn input<B: Backend>(
        &self,
        device: &B::Device,
        execution: Execution,
    ) -> ModernBertInput<B> {
        let ids = Tensor::<B, 2, Int>::from_data(
            TensorData::new(self.input_ids.clone(), self.batch_seq),
            device,
        );
        let mask = Tensor::<B, 2, Int>::from_data(
            TensorData::new(self.attention_mask.clone(), self.batch_seq),
            device,
        );
        ModernBertInput::new(ids)
            .with_attention_mask(mask)
            .with_execution(execution)
    }
}

/// Our outputs for a fixture's batch.
#[derive(Debug, Clone)]
pub struct Outputs {
    /// `[batch, seq, H]`.
    pub last_hidden_state: Array,
    /// The task's logits, absent for a bare encoder.
    pub logits: Option<Array>,
}

fn to_array<B: Backend, const D: usize>(t: Tensor<B, D>) -> Array {
    let data = t.into_data().convert::<f32>();
    Array {
        shape: data.shape.dims::<D>().to_vec(),
        values: data.to_vec().expect("f32"),
    }
}

/// Loads `dir` as the fixture's class on `B` and runs its batch.
///
/// # Errors
/// If loading or the forward pass fails.
pub fn run<B: Backend>(
    fixture: &Fixture,
    dir: &Path,
    device: &B::Device,
    execution: Execution,
) -> Result<Outputs> {
    let input = fixture.input::<B>(device, execution);
    let (hidden, logits) = match fixture.task {
        Task::Model => (
            ModernBertModel::<B>::from_pretrained(dir, device)?
                .forward(input)?
                .last_hidden_state,
            None,
        ),
        Task::MaskedLm => {
            let out = ModernBertForMaskedLM::<B>::from_pretrained(dir, device)?.forward(input)?;
            (out.last_hidden_state, Some(to_array(out.logits)))
        }
        Task::SequenceClassification => {
            let out = ModernBertForSequenceClassification::<B>::from_pretrained(dir, device)?
                .forward(input)?;
            (out.last_hidden_state, Some(to_array(out.logits)))
        }
        Task::TokenClassification => {
            let out = ModernBertForTokenClassification::<B>::from_pretrained(dir, device)?
                .forward(input)?;
            (out.last_hidden_state, Some(to_array(out.logits)))
        }
    };
    Ok(Outputs {
        last_hidden_state: to_array(hidden),
        logits,
    })
}

/// Max relative error `max|ours - ref| / max|ref|`, over real tokens only when the arrays
/// are per token (`[batch, seq, ...]`).
pub fn max_relative_error(ours: &Array, reference: &Array, fixture: &Fixture) -> Result<f32> {
    if ours.shape != reference.shape {
        bail!(
            "shape {:?} differs from the reference's {:?}",
            ours.shape,
            reference.shape
        );
    }
    let [batch, seq] = fixture.batch_seq;
    let per_token = reference.shape.len() >= 2 && reference.shape[..2] == [batch, seq];
    let inner = if per_token {
        reference.values.len() / (batch * seq)
    } else {
        0
    };
    let (mut max_diff, mut max_ref) = (0f32, 0f32);
    for (i, (&a, &b)) in ours.values.iter().zip(&reference.values).enumerate() {
        if per_token && fixture.attention_mask[i / inner] == 0 {
            continue;
        }
        if !a.is_finite() {
            bail!("non-finite output {a} at flat index {i}");
        }
        max_diff = max_diff.max((a - b).abs());
        max_ref = max_ref.max(b.abs());
    }
    Ok(max_diff / max_ref.max(f32::MIN_POSITIVE))
}

/// Runs a fixture on `B` both ways (unpadded and padded) and returns the worst relative
/// error of hidden states and logits.
///
/// # Errors
/// If a run fails or shapes differ.
pub fn parity<B: Backend>(fixture: &Fixture, device: &B::Device) -> Result<f32> {
    let mut worst = 0f32;
    for execution in [Execution::Unpadded, Execution::Padded] {
        let ours = run::<B>(fixture, &fixture.dir, device, execution)?;
        print!("{execution:?} ");
        worst = worst.max(compare(&ours, fixture)?);
    }
    Ok(worst)
}

/// Worst relative error of `ours` against the fixture's HF outputs; prints both.
///
/// # Errors
/// If shapes differ or an output is not finite.
pub fn compare(ours: &Outputs, fixture: &Fixture) -> Result<f32> {
    let hidden = max_relative_error(&ours.last_hidden_state, &fixture.last_hidden_state, fixture)
        .context("last_hidden_state")?;
    let logits = match (&ours.logits, &fixture.logits) {
        (Some(a), Some(b)) => max_relative_error(a, b, fixture).context("logits")?,
        (None, None) => 0.0,
        _ => bail!("logits present on one side only"),
    };
    println!(
        "{}: max relative error hidden {hidden:.3e}, logits {logits:.3e}",
        fixture.name()
    );
    Ok(hidden.max(logits))
}
