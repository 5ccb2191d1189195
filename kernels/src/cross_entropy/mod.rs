//! Cross-entropy of each row of logits against its label, and the row's arg-max: the MLM
//! loss and accuracy over the vocabulary (about 50k classes), in f32 whatever the logits'
//! dtype.
//!
//! ```text
//! lse = log Σ_c exp(x_c);   loss = lse − x_label;   ∂loss/∂x_c = softmax(x)_c − [c = label]
//! ```
//!
//! In plain tensor ops that is a cast to f32, a log-softmax (max, exp, sum, log, each a
//! pass over the `[rows, classes]` copy), a gather and an arg-max, and as many passes again
//! for the gradient. CubeCL backends read the logits once each way instead (`kernel.rs`):
//! one cube per row for the forward, one unit per logit for the gradient. The reference
//! below serves every other backend.

#[cfg(feature = "cube")]
pub(crate) mod kernel;

use burn::tensor::{DType, FloatDType, IndexingUpdateOp, Int, Tensor, TensorPrimitive};

use crate::Backend;

/// Why a [`cross_entropy`] input is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CrossEntropyError {
    /// One label per row of logits.
    #[error("cross-entropy: {labels} labels for {rows} rows of logits")]
    Labels {
        /// Rows of logits.
        rows: usize,
        /// Labels given.
        labels: usize,
    },
    /// A row needs at least one class.
    #[error("cross-entropy: logits of shape {0:?} have no classes")]
    NoClasses([usize; 2]),
}

/// What [`cross_entropy`] gives for each row.
#[derive(Debug, Clone)]
pub struct CrossEntropyOutput<B: Backend> {
    /// `lse − x_label` per row, f32; NaN for a label outside `0..classes`. Differentiable
    /// with respect to the logits. `[rows]`
    pub loss: Tensor<B, 1>,
    /// The arg-max of each row (the first on ties). `[rows]`
    pub predicted: Tensor<B, 1, Int>,
}

/// Per-row cross-entropy of `logits` against `labels`, and the arg-max.
///
/// # Shapes
/// - logits: `[rows, classes]`, labels: `[rows]`
///
/// # Errors
/// [`CrossEntropyError`] when the label count differs from the rows, or there are no
/// classes.
pub fn cross_entropy<B: Backend>(
    logits: Tensor<B, 2>,
    labels: Tensor<B, 1, Int>,
) -> Result<CrossEntropyOutput<B>, CrossEntropyError> {
    let [rows, classes] = logits.dims();
    let [count] = labels.dims();
    if count != rows {
        return Err(CrossEntropyError::Labels {
            rows,
            labels: count,
        });
    }
    if classes == 0 {
        return Err(CrossEntropyError::NoClasses([rows, classes]));
    }
    let (loss, _lse, predicted) =
        B::cross_entropy(logits.into_primitive().tensor(), labels.into_primitive());
    Ok(CrossEntropyOutput {
        loss: Tensor::from_primitive(TensorPrimitive::Float(loss)),
        predicted: Tensor::from_primitive(predicted),
    })
}

/// [`cross_entropy`] in plain tensor ops: `(loss, lse, predicted)`, loss and lse in f32.
///
/// # Shapes
/// - logits: `[rows, classes]`, labels: `[rows]`; outputs `[rows]`
pub fn cross_entropy_reference<B: burn::tensor::backend::Backend>(
    logits: Tensor<B, 2>,
    labels: Tensor<B, 1, Int>,
) -> (Tensor<B, 1>, Tensor<B, 1>, Tensor<B, 1, Int>) {
    let [rows, classes] = logits.dims();
    let predicted = logits.clone().argmax(1).reshape([rows]);
    let x = logits.cast(FloatDType::F32);
    let max = x.clone().max_dim(1);
    let lse = ((x.clone() - max.clone()).exp().sum_dim(1).log() + max).reshape([rows]);
    let outside = labels
        .clone()
        .lower_elem(0)
        .bool_or(labels.clone().greater_equal_elem(classes as i64));
    let picked = x
        .gather(1, labels.clamp(0, classes as i64 - 1).reshape([rows, 1]))
        .reshape([rows]);
    let loss = (lse.clone() - picked).mask_fill(outside, f32::NAN);
    (loss, lse, predicted)
}

/// Gradient of [`cross_entropy_reference`]'s loss with respect to the logits, from the
/// forward's `lse` and the loss's gradient `grad`, in the logits' dtype:
/// `(softmax(x) − onehot(label)) · grad`.
///
/// # Shapes
/// - logits: `[rows, classes]`, labels, lse, grad: `[rows]`; output `[rows, classes]`
pub fn cross_entropy_backward_reference<B: burn::tensor::backend::Backend>(
    logits: Tensor<B, 2>,
    labels: Tensor<B, 1, Int>,
    lse: Tensor<B, 1>,
    grad: Tensor<B, 1>,
) -> Tensor<B, 2> {
    let [rows, classes] = logits.dims();
    let dtype = logits.dtype();
    let softmax = (logits.cast(FloatDType::F32) - lse.reshape([rows, 1])).exp();
    let device = softmax.device();
    let labels = labels.clamp(0, classes as i64 - 1).reshape([rows, 1]);
    let one_hot = Tensor::<B, 2>::zeros([rows, classes], (&device, DType::F32)).scatter(
        1,
        labels,
        Tensor::ones([rows, 1], (&device, DType::F32)),
        IndexingUpdateOp::Add,
    );
    ((softmax - one_hot) * grad.cast(FloatDType::F32).reshape([rows, 1])).cast(dtype)
}
