//! [`Backend`] on Burn's fusion backend over CubeCL, `Fusion<CubeBackend<…>>` (what
//! `burn::backend::Wgpu` and `Cuda` are when Burn's `fusion` feature is on).
//!
//! Fusion records operations lazily in a stream and compiles runs of element-wise ops into
//! one kernel. Each extension op is put in that stream as one custom operation
//! (`OperationIr::Custom`): when the stream reaches it, it takes the inner tensors out of
//! the handle container, runs the inner CubeCL backend's op (our kernels, see `cube.rs`)
//! and registers the outputs. The stream keeps it in order with the ops around it, and the
//! element-wise ops before and after it still fuse among themselves. The outputs' shapes
//! and dtypes are declared when the op is recorded, before it runs; they are those of the
//! CubeCL kernels, and every run checks the kernel's outputs against them.

use std::marker::PhantomData;

use burn::tensor::ops::{FloatTensor, FloatTensorOps, IntTensor};
use burn::tensor::{calculate_matmul_output, DType, Shape, TensorMetadata};
use burn_fusion::stream::{Operation, OperationStreams};
use burn_fusion::{Fusion, FusionBackend, FusionHandle, FusionTensor};
use burn_ir::{CustomOpIr, HandleContainer, OperationIr, TensorIr};

use crate::{Backend, StableAdamWStep, VarlenMeta};

/// An extension op's inputs on the inner backend, handed out in the order they were
/// registered (floats and ints each in their own order).
struct InnerInputs<B: Backend> {
    floats: std::vec::IntoIter<FloatTensor<B>>,
    ints: std::vec::IntoIter<IntTensor<B>>,
}

impl<B: Backend> InnerInputs<B> {
    /// The next float input.
    fn float(&mut self) -> FloatTensor<B> {
        self.floats
            .next()
            .expect("an extension op takes no more float inputs than it registered")
    }

    /// The next float input if `present` (an optional input that was registered only when
    /// given).
    fn float_if(&mut self, present: bool) -> Option<FloatTensor<B>> {
        present.then(|| self.float())
    }

    /// The next int input.
    fn int(&mut self) -> IntTensor<B> {
        self.ints
            .next()
            .expect("an extension op takes no more int inputs than it registered")
    }
}

/// What an extension op's closure returns on the inner backend: float outputs, then int
/// outputs (most ops have only floats, and return a `Vec` of them).
struct InnerOutputs<B: Backend> {
    floats: Vec<FloatTensor<B>>,
    ints: Vec<IntTensor<B>>,
}

impl<B: Backend> From<Vec<FloatTensor<B>>> for InnerOutputs<B> {
    fn from(floats: Vec<FloatTensor<B>>) -> Self {
        Self {
            floats,
            ints: Vec::new(),
        }
    }
}

impl<B: Backend> From<(Vec<FloatTensor<B>>, Vec<IntTensor<B>>)> for InnerOutputs<B> {
    fn from((floats, ints): (Vec<FloatTensor<B>>, Vec<IntTensor<B>>)) -> Self {
        Self { floats, ints }
    }
}

/// An extension op in the fusion stream: its IR (inputs, then declared outputs) and the
/// closure that runs it on the inner backend.
struct CustomOp<B, Run, Out> {
    ir: CustomOpIr,
    /// How many of `ir.inputs` are floats (they come first; the rest are ints).
    floats: usize,
    run: Run,
    _backend: PhantomData<fn() -> (B, Out)>,
}

impl<B, Run, Out> core::fmt::Debug for CustomOp<B, Run, Out> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("CustomOp")
            .field("ir", &self.ir)
            .finish_non_exhaustive()
    }
}

impl<B, Run, Out> Operation<B::FusionRuntime> for CustomOp<B, Run, Out>
where
    B: FusionBackend + Backend,
    Run: Fn(InnerInputs<B>) -> Out + Send + Sync,
    Out: Into<InnerOutputs<B>>,
{
    fn execute(&self, handles: &mut HandleContainer<FusionHandle<B::FusionRuntime>>) {
        let (floats, ints) = self.ir.inputs.split_at(self.floats);
        let floats: Vec<_> = floats
            .iter()
            .map(|t| handles.get_float_tensor::<B>(t))
            .collect();
        let ints: Vec<_> = ints
            .iter()
            .map(|t| handles.get_int_tensor::<B>(t))
            .collect();
        let outputs: InnerOutputs<B> = (self.run)(InnerInputs {
            floats: floats.into_iter(),
            ints: ints.into_iter(),
        })
        .into();
        assert_eq!(
            outputs.floats.len() + outputs.ints.len(),
            self.ir.outputs.len(),
            "{}: outputs returned vs declared",
            self.ir.id
        );
        let (float_outputs, int_outputs) = self.ir.outputs.split_at(outputs.floats.len());
        for (declared, tensor) in float_outputs.iter().zip(outputs.floats) {
            self.check(declared, &tensor);
            handles.register_float_tensor::<B>(&declared.id, tensor);
        }
        for (declared, tensor) in int_outputs.iter().zip(outputs.ints) {
            self.check(declared, &tensor);
            handles.register_int_tensor::<B>(&declared.id, tensor);
        }
    }
}

impl<B, Run, Out> CustomOp<B, Run, Out> {
    /// Later ops were recorded against the declared metadata: the kernel's output must match.
    fn check(&self, declared: &TensorIr, tensor: &impl TensorMetadata) {
        assert!(
            tensor.shape() == declared.shape && tensor.dtype() == declared.dtype,
            "{}: the kernel returned {:?} {:?}, the stream expects {:?} {:?}",
            self.ir.id,
            tensor.shape(),
            tensor.dtype(),
            declared.shape,
            declared.dtype,
        );
    }
}

/// Records `op` in the fusion stream: its float inputs `floats` (at least one), its int
/// inputs `ints`, and outputs of the given shapes and dtypes (floats first, then ints),
/// which `run` returns in that order when the stream executes it on the inner backend.
/// Returns the outputs.
fn custom_op<B, Run, Out>(
    op: &'static str,
    floats: Vec<FloatTensor<Fusion<B>>>,
    ints: Vec<IntTensor<Fusion<B>>>,
    outputs: Vec<(Shape, DType)>,
    run: Run,
) -> Vec<FloatTensor<Fusion<B>>>
where
    B: FusionBackend + Backend,
    Run: Fn(InnerInputs<B>) -> Out + Send + Sync + 'static,
    Out: Into<InnerOutputs<B>> + 'static,
{
    let client = floats[0].client.clone();
    let streams = OperationStreams::with_inputs(floats.iter().chain(&ints));
    let float_count = floats.len();
    let inputs: Vec<TensorIr> = floats
        .into_iter()
        .chain(ints)
        .map(FusionTensor::into_ir)
        .collect();
    let outputs: Vec<TensorIr> = outputs
        .into_iter()
        .map(|(shape, dtype)| TensorIr::uninit(client.create_empty_handle(), shape, dtype))
        .collect();
    let ir = CustomOpIr::new(op, &inputs, &outputs);
    let operation = CustomOp {
        ir: ir.clone(),
        floats: float_count,
        run,
        _backend: PhantomData::<fn() -> (B, Out)>,
    };
    client.register(streams, OperationIr::Custom(ir), operation)
}

/// `N` outputs of [`custom_op`] as an array.
fn outputs<T, const N: usize>(outputs: Vec<T>) -> [T; N] {
    let Ok(outputs) = <[T; N]>::try_from(outputs) else {
        unreachable!("the stream returns one tensor per declared output")
    };
    outputs
}

/// [`VarlenMeta`] owned, for an op that runs after the call returns.
#[derive(Debug, Clone)]
struct OwnedVarlenMeta {
    offsets: Vec<u32>,
    max_seqlen: usize,
    window: Option<usize>,
    scale: f32,
}

impl OwnedVarlenMeta {
    fn new(meta: &VarlenMeta) -> Self {
        Self {
            offsets: meta.offsets.to_vec(),
            max_seqlen: meta.max_seqlen,
            window: meta.window,
            scale: meta.scale,
        }
    }

    fn borrow(&self) -> VarlenMeta<'_> {
        VarlenMeta {
            offsets: &self.offsets,
            max_seqlen: self.max_seqlen,
            window: self.window,
            scale: self.scale,
        }
    }
}

/// For `B` a CubeCL backend (the only fusion backends in Burn 0.21). The outputs' shapes and
/// dtypes declared below are those the trait documents and the CubeCL implementations
/// return (`cube.rs`); an inner backend returning others fails the check in
/// `CustomOp::execute`.
impl<B: FusionBackend + Backend> Backend for Fusion<B> {
    fn matmul(lhs: FloatTensor<Self>, rhs: FloatTensor<Self>) -> FloatTensor<Self> {
        let Ok(shape) = calculate_matmul_output(&lhs.shape, &rhs.shape) else {
            // Burn's matmul reports the mismatch.
            return Self::float_matmul(lhs, rhs);
        };
        let dtype = lhs.dtype;
        let [out] = outputs(custom_op::<B, _, _>(
            "modernbert::matmul",
            vec![lhs, rhs],
            vec![],
            vec![(shape, dtype)],
            |mut t| vec![B::matmul(t.float(), t.float())],
        ));
        out
    }

    fn fused_linear(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: Option<FloatTensor<Self>>,
        residual: Option<FloatTensor<Self>>,
    ) -> FloatTensor<Self> {
        let shape = Shape::new([x.shape[0], weight.shape[1]]);
        let dtype = x.dtype;
        let (has_bias, has_residual) = (bias.is_some(), residual.is_some());
        let floats = [Some(x), Some(weight), bias, residual];
        let [out] = outputs(custom_op::<B, _, _>(
            "modernbert::fused_linear",
            floats.into_iter().flatten().collect(),
            vec![],
            vec![(shape, dtype)],
            move |mut t| {
                let (x, weight) = (t.float(), t.float());
                let bias = t.float_if(has_bias);
                let residual = t.float_if(has_residual);
                vec![B::fused_linear(x, weight, bias, residual)]
            },
        ));
        out
    }

    fn geglu(x: FloatTensor<Self>) -> FloatTensor<Self> {
        let shape = Shape::new([x.shape[0], x.shape[1] / 2]);
        let dtype = x.dtype;
        let [out] = outputs(custom_op::<B, _, _>(
            "modernbert::geglu",
            vec![x],
            vec![],
            vec![(shape, dtype)],
            |mut t| vec![B::geglu(t.float())],
        ));
        out
    }

    fn geglu_backward(x: FloatTensor<Self>, grad: FloatTensor<Self>) -> FloatTensor<Self> {
        let output = (x.shape.clone(), x.dtype);
        let [d_x] = outputs(custom_op::<B, _, _>(
            "modernbert::geglu_backward",
            vec![x, grad],
            vec![],
            vec![output],
            |mut t| vec![B::geglu_backward(t.float(), t.float())],
        ));
        d_x
    }

    fn stable_adamw_step(
        param: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        exp_avg: FloatTensor<Self>,
        exp_avg_sq: FloatTensor<Self>,
        step: &StableAdamWStep,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        let step = *step;
        let declared = [&param, &exp_avg, &exp_avg_sq].map(|t| (t.shape.clone(), t.dtype));
        let [param, exp_avg, exp_avg_sq] = outputs(custom_op::<B, _, _>(
            "modernbert::stable_adamw_step",
            vec![param, grad, exp_avg, exp_avg_sq],
            vec![],
            declared.to_vec(),
            move |mut t| {
                let (param, grad, m, v) = (t.float(), t.float(), t.float(), t.float());
                let (param, m, v) = B::stable_adamw_step(param, grad, m, v, &step);
                vec![param, m, v]
            },
        ));
        (param, exp_avg, exp_avg_sq)
    }

    fn select_rows_backward(
        grad: FloatTensor<Self>,
        indices: IntTensor<Self>,
        num_rows: usize,
    ) -> FloatTensor<Self> {
        let shape = Shape::new([num_rows, grad.shape[1]]);
        let dtype = grad.dtype;
        let [d_table] = outputs(custom_op::<B, _, _>(
            "modernbert::select_rows_backward",
            vec![grad],
            vec![indices],
            vec![(shape, dtype)],
            move |mut t| vec![B::select_rows_backward(t.float(), t.int(), num_rows)],
        ));
        d_table
    }

    fn cross_entropy(
        logits: FloatTensor<Self>,
        labels: IntTensor<Self>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, IntTensor<Self>) {
        let rows = Shape::new([logits.shape[0]]);
        let declared = vec![
            (rows.clone(), DType::F32),
            (rows.clone(), DType::F32),
            (rows, labels.dtype),
        ];
        let [loss, lse, predicted] = outputs(custom_op::<B, _, _>(
            "modernbert::cross_entropy",
            vec![logits],
            vec![labels],
            declared,
            |mut t| {
                let (loss, lse, predicted) = B::cross_entropy(t.float(), t.int());
                (vec![loss, lse], vec![predicted])
            },
        ));
        (loss, lse, predicted)
    }

    fn cross_entropy_backward(
        logits: FloatTensor<Self>,
        labels: IntTensor<Self>,
        lse: FloatTensor<Self>,
        grad: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        let output = (logits.shape.clone(), logits.dtype);
        let [d_logits] = outputs(custom_op::<B, _, _>(
            "modernbert::cross_entropy_backward",
            vec![logits, lse, grad],
            vec![labels],
            vec![output],
            |mut t| {
                let (logits, lse, grad) = (t.float(), t.float(), t.float());
                vec![B::cross_entropy_backward(logits, t.int(), lse, grad)]
            },
        ));
        d_logits
    }

    fn layer_norm_forward(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: Option<FloatTensor<Self>>,
        epsilon: f64,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        let rows = Shape::new([x.shape[0]]);
        let declared = vec![
            (x.shape.clone(), x.dtype),
            (rows.clone(), DType::F32),
            (rows, DType::F32),
        ];
        let has_beta = beta.is_some();
        let [y, mean, rstd] = outputs(custom_op::<B, _, _>(
            "modernbert::layer_norm_forward",
            [Some(x), Some(gamma), beta].into_iter().flatten().collect(),
            vec![],
            declared,
            move |mut t| {
                let (x, gamma) = (t.float(), t.float());
                let beta = t.float_if(has_beta);
                let (y, mean, rstd) = B::layer_norm_forward(x, gamma, beta, epsilon);
                vec![y, mean, rstd]
            },
        ));
        (y, mean, rstd)
    }

    fn layer_norm_backward(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        mean: FloatTensor<Self>,
        rstd: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        has_beta: bool,
    ) -> (
        FloatTensor<Self>,
        FloatTensor<Self>,
        Option<FloatTensor<Self>>,
    ) {
        let d_weight = (gamma.shape.clone(), gamma.dtype);
        let mut declared = vec![(x.shape.clone(), x.dtype), d_weight.clone()];
        if has_beta {
            declared.push(d_weight);
        }
        let mut grads = custom_op::<B, _, _>(
            "modernbert::layer_norm_backward",
            vec![x, gamma, mean, rstd, grad],
            vec![],
            declared,
            move |mut t| {
                let (x, gamma, mean, rstd, grad) =
                    (t.float(), t.float(), t.float(), t.float(), t.float());
                let (d_x, d_gamma, d_beta) =
                    B::layer_norm_backward(x, gamma, mean, rstd, grad, has_beta);
                [Some(d_x), Some(d_gamma), d_beta]
                    .into_iter()
                    .flatten()
                    .collect::<Vec<_>>()
            },
        )
        .into_iter();
        let [d_x, d_gamma] = [grads.next(), grads.next()]
            .map(|g| g.expect("the stream returns d_x and d_gamma as declared"));
        (d_x, d_gamma, grads.next())
    }

    fn rope_qkv(
        qkv: FloatTensor<Self>,
        cos: FloatTensor<Self>,
        sin: FloatTensor<Self>,
        positions: IntTensor<Self>,
        heads: usize,
    ) -> FloatTensor<Self> {
        let [total, width] = [qkv.shape[0], qkv.shape[1]];
        let shape = Shape::new([3, total, heads, width / (3 * heads)]);
        let dtype = qkv.dtype;
        let [out] = outputs(custom_op::<B, _, _>(
            "modernbert::rope_qkv",
            vec![qkv, cos, sin],
            vec![positions],
            vec![(shape, dtype)],
            move |mut t| {
                let (qkv, cos, sin) = (t.float(), t.float(), t.float());
                vec![B::rope_qkv(qkv, cos, sin, t.int(), heads)]
            },
        ));
        out
    }

    fn rope_qkv_backward(
        grad: FloatTensor<Self>,
        cos: FloatTensor<Self>,
        sin: FloatTensor<Self>,
        positions: IntTensor<Self>,
    ) -> FloatTensor<Self> {
        let [_, total, heads, head_dim] = [0, 1, 2, 3].map(|d| grad.shape[d]);
        let shape = Shape::new([total, 3 * heads * head_dim]);
        let dtype = grad.dtype;
        let [d_qkv] = outputs(custom_op::<B, _, _>(
            "modernbert::rope_qkv_backward",
            vec![grad, cos, sin],
            vec![positions],
            vec![(shape, dtype)],
            |mut t| {
                let (grad, cos, sin) = (t.float(), t.float(), t.float());
                vec![B::rope_qkv_backward(grad, cos, sin, t.int())]
            },
        ));
        d_qkv
    }

    fn varlen_attention(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        cu_seqlens: IntTensor<Self>,
        meta: &VarlenMeta,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        let declared = attention_outputs(&q.shape, q.dtype);
        let meta = OwnedVarlenMeta::new(meta);
        let [out, lse] = outputs(custom_op::<B, _, _>(
            "modernbert::varlen_attention",
            vec![q, k, v],
            vec![cu_seqlens],
            declared,
            move |mut t| {
                let (q, k, v) = (t.float(), t.float(), t.float());
                let (out, lse) = B::varlen_attention(q, k, v, t.int(), &meta.borrow());
                vec![out, lse]
            },
        ));
        (out, lse)
    }

    fn varlen_attention_packed(
        qkv: FloatTensor<Self>,
        cu_seqlens: IntTensor<Self>,
        meta: &VarlenMeta,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        let declared = attention_outputs(&Shape::from(&qkv.shape[1..]), qkv.dtype);
        let meta = OwnedVarlenMeta::new(meta);
        let [out, lse] = outputs(custom_op::<B, _, _>(
            "modernbert::varlen_attention_packed",
            vec![qkv],
            vec![cu_seqlens],
            declared,
            move |mut t| {
                let (qkv, cu_seqlens) = (t.float(), t.int());
                let (out, lse) = B::varlen_attention_packed(qkv, cu_seqlens, &meta.borrow());
                vec![out, lse]
            },
        ));
        (out, lse)
    }

    fn varlen_attention_backward(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        out: FloatTensor<Self>,
        lse: FloatTensor<Self>,
        d_out: FloatTensor<Self>,
        cu_seqlens: IntTensor<Self>,
        meta: &VarlenMeta,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        let gradient = (q.shape.clone(), q.dtype);
        let meta = OwnedVarlenMeta::new(meta);
        let [dq, dk, dv] = outputs(custom_op::<B, _, _>(
            "modernbert::varlen_attention_backward",
            vec![q, k, v, out, lse, d_out],
            vec![cu_seqlens],
            vec![gradient; 3],
            move |mut t| {
                let (q, k, v) = (t.float(), t.float(), t.float());
                let (out, lse, d_out) = (t.float(), t.float(), t.float());
                let (dq, dk, dv) =
                    B::varlen_attention_backward(q, k, v, out, lse, d_out, t.int(), &meta.borrow());
                vec![dq, dk, dv]
            },
        ));
        (dq, dk, dv)
    }
}

/// The attention forward's outputs for q of shape `[total, heads, head_dim]`: `out` (q's
/// shape and dtype) and `lse` (`[total, heads]`, f32).
fn attention_outputs(q: &Shape, dtype: DType) -> Vec<(Shape, DType)> {
    vec![(q.clone(), dtype), (Shape::new([q[0], q[1]]), DType::F32)]
}
