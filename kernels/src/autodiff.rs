//! [`Backend`] under Burn's autodiff: every operation registers its own backward.
//! - matmul: both backward products (`dX = dY·Wᵀ`, `dW = Xᵀ·dY`) go through the inner
//!   backend's [`Backend::matmul`] (cuBLASLt on Cuda) instead of Burn's generic matmul; the
//!   transposes are views, read in place.
//! - fused linear: a residual folded into the product passes the output gradient through;
//!   the bias is left to autodiff's own add.
//! - GeGLU: the backward is [`Backend::geglu_backward`], the exact gradient.
//! - LayerNorm: the forward saves x, γ and the per-row mean and rstd it returns; the
//!   backward is [`Backend::layer_norm_backward`] (dx, dγ and, with a bias, dβ). The op has
//!   two parents without β and three with it.
//! - cross-entropy: the forward saves the logits, labels and lse; the backward is
//!   [`Backend::cross_entropy_backward`]. lse and the arg-max are returned untracked.
//! - row selection: the table's gradient is [`Backend::select_rows_backward`] (a
//!   deterministic segment sum on CubeCL backends), from the saved indices.
//! - RoPE q/k/v split: one op with parent qkv (the tables and positions are constants),
//!   saving only the tables and positions; the backward is [`Backend::rope_qkv_backward`].
//! - varlen attention: the forward runs the inner backend's kernel and saves only its
//!   inputs, `out`, `lse` and `cu_seqlens`; the backward calls
//!   [`Backend::varlen_attention_backward`] (our backward kernels on CubeCL backends, the
//!   exact reference formulas elsewhere). No `S²` tensor is kept. `lse` is returned
//!   untracked (nothing differentiates through it). On a q/k/v stack the op has the stack
//!   as its one parent and registers dq, dk, dv stacked.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{binary, broadcast_shape, unary, Backward, Ops, OpsKind};
use burn::backend::autodiff::NodeId;
use burn::backend::Autodiff;
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::ops::{FloatTensor, IntTensor};
use burn::tensor::{Shape, Tensor, TensorMetadata, TensorPrimitive};

use crate::{Backend, VarlenMeta};

/// What the attention backward needs (owned copies of the forward's arguments).
#[derive(Debug, Clone)]
struct SavedAttention<B: Backend> {
    q: FloatTensor<B>,
    k: FloatTensor<B>,
    v: FloatTensor<B>,
    out: FloatTensor<B>,
    lse: FloatTensor<B>,
    cu_seqlens: IntTensor<B>,
    offsets: Vec<u32>,
    max_seqlen: usize,
    window: Option<usize>,
    scale: f32,
}

impl<B: Backend> SavedAttention<B> {
    /// Owned copies of the forward's inputs and outputs.
    fn new(
        [q, k, v]: [FloatTensor<B>; 3],
        out: FloatTensor<B>,
        lse: FloatTensor<B>,
        cu_seqlens: IntTensor<B>,
        meta: &VarlenMeta,
    ) -> Self {
        Self {
            q,
            k,
            v,
            out,
            lse,
            cu_seqlens,
            offsets: meta.offsets.to_vec(),
            max_seqlen: meta.max_seqlen,
            window: meta.window,
            scale: meta.scale,
        }
    }

    /// `(dq, dk, dv)` from the output gradient, by [`Backend::varlen_attention_backward`].
    fn gradients(self, d_out: FloatTensor<B>) -> (FloatTensor<B>, FloatTensor<B>, FloatTensor<B>) {
        let meta = VarlenMeta {
            offsets: &self.offsets,
            max_seqlen: self.max_seqlen,
            window: self.window,
            scale: self.scale,
        };
        B::varlen_attention_backward(
            self.q,
            self.k,
            self.v,
            self.out,
            self.lse,
            d_out,
            self.cu_seqlens,
            &meta,
        )
    }
}

#[derive(Debug)]
struct VarlenAttention;

impl<B: Backend> Backward<B, 3> for VarlenAttention {
    type State = SavedAttention<B>;

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let d_out = grads.consume::<B>(&ops.node);
        let (dq, dk, dv) = ops.state.gradients(d_out);
        for (parent, grad) in ops.parents.into_iter().zip([dq, dk, dv]) {
            if let Some(node) = parent {
                grads.register::<B>(node.id, grad);
            }
        }
    }
}

/// Attention on a q/k/v stack: one parent, the stack, whose gradient is dq, dk and dv
/// stacked (one copy, where three slices would each add a zero-filled stack).
#[derive(Debug)]
struct PackedVarlenAttention;

impl<B: Backend> Backward<B, 1> for PackedVarlenAttention {
    type State = SavedAttention<B>;

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let d_out = grads.consume::<B>(&ops.node);
        let (dq, dk, dv) = ops.state.gradients(d_out);
        if let [Some(node)] = ops.parents {
            let part = |t| Tensor::<B, 3>::from_primitive(TensorPrimitive::Float(t));
            let stacked = Tensor::stack::<4>(vec![part(dq), part(dk), part(dv)], 0);
            grads.register::<B>(node.id, stacked.into_primitive().tensor());
        }
    }
}

/// What the LayerNorm backward needs: the forward's input, weight and statistics.
#[derive(Debug, Clone)]
struct SavedLayerNorm<B: Backend> {
    x: FloatTensor<B>,
    gamma: FloatTensor<B>,
    mean: FloatTensor<B>,
    rstd: FloatTensor<B>,
}

/// LayerNorm with parents `[x, γ]` (`P = 2`) or `[x, γ, β]` (`P = 3`).
#[derive(Debug)]
struct LayerNorm;

impl<B: Backend, const P: usize> Backward<B, P> for LayerNorm {
    type State = SavedLayerNorm<B>;

    fn backward(self, ops: Ops<Self::State, P>, grads: &mut Gradients, _: &mut Checkpointer) {
        let grad = grads.consume::<B>(&ops.node);
        let saved = ops.state;
        let (d_x, d_gamma, d_beta) =
            B::layer_norm_backward(saved.x, saved.gamma, saved.mean, saved.rstd, grad, P == 3);
        for (parent, grad) in ops
            .parents
            .into_iter()
            .zip([Some(d_x), Some(d_gamma), d_beta])
        {
            if let (Some(node), Some(grad)) = (parent, grad) {
                grads.register::<B>(node.id, grad);
            }
        }
    }
}

impl LayerNorm {
    /// Records the op (prepared with its parents) on the output `y`.
    fn finish<B: Backend, C: CheckpointStrategy, const P: usize>(
        kind: OpsKind<Self, B, SavedLayerNorm<B>, C, P>,
        saved: SavedLayerNorm<B>,
        y: FloatTensor<B>,
    ) -> FloatTensor<Autodiff<B, C>> {
        match kind {
            OpsKind::Tracked(prep) => prep.finish(saved, y),
            OpsKind::UnTracked(prep) => prep.finish(y),
        }
    }
}

impl<B: Backend, C: CheckpointStrategy> Backend for Autodiff<B, C> {
    fn matmul(lhs: FloatTensor<Self>, rhs: FloatTensor<Self>) -> FloatTensor<Self> {
        #[derive(Debug)]
        struct Matmul;

        impl<B: Backend> Backward<B, 2> for Matmul {
            /// The forward inputs each gradient needs, and their shapes for broadcast dims.
            type State = (Option<NodeId>, Option<NodeId>, Shape, Shape);

            fn backward(
                self,
                ops: Ops<Self::State, 2>,
                grads: &mut Gradients,
                checkpointer: &mut Checkpointer,
            ) {
                let (lhs, rhs, lhs_shape, rhs_shape) = ops.state;
                let mut input = |id: Option<NodeId>| {
                    id.map(|id| checkpointer.retrieve_node_output::<FloatTensor<B>>(id))
                };
                let (lhs, rhs) = (input(lhs), input(rhs));
                binary::<B, _, _>(
                    ops.parents,
                    ops.node,
                    grads,
                    |grad| {
                        let rhs_t = B::float_transpose(rhs.expect("rhs saved for d(lhs)"));
                        broadcast_shape::<B>(B::matmul(grad, rhs_t), &lhs_shape)
                    },
                    |grad| {
                        let lhs_t = B::float_transpose(lhs.expect("lhs saved for d(rhs)"));
                        broadcast_shape::<B>(B::matmul(lhs_t, grad), &rhs_shape)
                    },
                );
            }
        }

        let (lhs_shape, rhs_shape) = (lhs.primitive.shape(), rhs.primitive.shape());
        let (lhs_tracked, rhs_tracked) = (lhs.is_tracked(), rhs.is_tracked());
        match Matmul
            .prepare::<C>([lhs.node.clone(), rhs.node.clone()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(mut prep) => {
                // d(lhs) needs rhs and d(rhs) needs lhs: save only what a tracked input needs.
                let lhs_state = rhs_tracked.then(|| prep.checkpoint(&lhs));
                let rhs_state = lhs_tracked.then(|| prep.checkpoint(&rhs));
                prep.finish(
                    (lhs_state, rhs_state, lhs_shape, rhs_shape),
                    B::matmul(lhs.primitive, rhs.primitive),
                )
            }
            OpsKind::UnTracked(prep) => prep.finish(B::matmul(lhs.primitive, rhs.primitive)),
        }
    }

    fn fused_linear(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: Option<FloatTensor<Self>>,
        residual: Option<FloatTensor<Self>>,
    ) -> FloatTensor<Self> {
        /// `x · W + residual` in one product of the inner backend.
        #[derive(Debug)]
        struct LinearResidual;

        impl<B: Backend> Backward<B, 3> for LinearResidual {
            /// x (for dW) and W (for dX), each saved only if the other is tracked.
            type State = (Option<NodeId>, Option<NodeId>);

            fn backward(
                self,
                ops: Ops<Self::State, 3>,
                grads: &mut Gradients,
                checkpointer: &mut Checkpointer,
            ) {
                let [x_node, weight_node, residual_node] = ops.parents;
                let grad = grads.consume::<B>(&ops.node);
                let (x, weight) = ops.state;
                let mut input = |id: Option<NodeId>| {
                    id.map(|id| checkpointer.retrieve_node_output::<FloatTensor<B>>(id))
                };
                let (x, weight) = (input(x), input(weight));
                if let Some(node) = x_node {
                    let weight_t = B::float_transpose(weight.expect("W saved for dX"));
                    grads.register::<B>(node.id, B::matmul(grad.clone(), weight_t));
                }
                if let Some(node) = weight_node {
                    let x_t = B::float_transpose(x.expect("x saved for dW"));
                    grads.register::<B>(node.id, B::matmul(x_t, grad.clone()));
                }
                if let Some(node) = residual_node {
                    grads.register::<B>(node.id, grad);
                }
            }
        }

        // The bias (heads only, small) is added by autodiff's own broadcast add.
        if let Some(bias) = bias {
            let y = Self::fused_linear(x, weight, None, residual);
            return crate::add_epilogue::<Self>(y, Some(bias), None);
        }
        let Some(residual) = residual else {
            return Self::matmul(x, weight);
        };
        let (x_tracked, weight_tracked) = (x.is_tracked(), weight.is_tracked());
        let nodes = [x.node.clone(), weight.node.clone(), residual.node.clone()];
        match LinearResidual
            .prepare::<C>(nodes)
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(mut prep) => {
                let x_state = weight_tracked.then(|| prep.checkpoint(&x));
                let weight_state = x_tracked.then(|| prep.checkpoint(&weight));
                let y = B::fused_linear(
                    x.primitive,
                    weight.primitive,
                    None,
                    Some(residual.primitive),
                );
                prep.finish((x_state, weight_state), y)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::fused_linear(
                x.primitive,
                weight.primitive,
                None,
                Some(residual.primitive),
            )),
        }
    }

    fn geglu(x: FloatTensor<Self>) -> FloatTensor<Self> {
        /// GeGLU with its exact gradient (Burn's gelu backward is the tanh approximation's).
        #[derive(Debug)]
        struct Geglu;

        impl<B: Backend> Backward<B, 1> for Geglu {
            type State = NodeId;

            fn backward(
                self,
                ops: Ops<Self::State, 1>,
                grads: &mut Gradients,
                checkpointer: &mut Checkpointer,
            ) {
                let x = checkpointer.retrieve_node_output::<FloatTensor<B>>(ops.state);
                unary::<B, _>(ops.parents, ops.node, grads, |grad| {
                    B::geglu_backward(x, grad)
                });
            }
        }

        match Geglu
            .prepare::<C>([x.node.clone()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(mut prep) => {
                let state = prep.checkpoint(&x);
                prep.finish(state, B::geglu(x.primitive))
            }
            OpsKind::UnTracked(prep) => prep.finish(B::geglu(x.primitive)),
        }
    }

    fn cross_entropy(
        logits: FloatTensor<Self>,
        labels: IntTensor<Self>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, IntTensor<Self>) {
        /// The per-row loss; the state is the logits, labels and lse.
        #[derive(Debug)]
        struct CrossEntropy;

        impl<B: Backend> Backward<B, 1> for CrossEntropy {
            type State = (FloatTensor<B>, IntTensor<B>, FloatTensor<B>);

            fn backward(
                self,
                ops: Ops<Self::State, 1>,
                grads: &mut Gradients,
                _: &mut Checkpointer,
            ) {
                let (logits, labels, lse) = ops.state;
                unary::<B, _>(ops.parents, ops.node, grads, |grad| {
                    B::cross_entropy_backward(logits, labels, lse, grad)
                });
            }
        }

        let (loss, lse, predicted) = B::cross_entropy(logits.primitive.clone(), labels.clone());
        let untracked_lse = <Self as AutodiffBackend>::from_inner(lse.clone());
        let loss = match CrossEntropy
            .prepare::<C>([logits.node])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => prep.finish((logits.primitive, labels, lse), loss),
            OpsKind::UnTracked(prep) => prep.finish(loss),
        };
        (loss, untracked_lse, predicted)
    }

    fn select_rows(table: FloatTensor<Self>, indices: IntTensor<Self>) -> FloatTensor<Self> {
        /// Row selection; the state is the indices and the table's row count.
        #[derive(Debug)]
        struct SelectRows;

        impl<B: Backend> Backward<B, 1> for SelectRows {
            type State = (IntTensor<B>, usize);

            fn backward(
                self,
                ops: Ops<Self::State, 1>,
                grads: &mut Gradients,
                _: &mut Checkpointer,
            ) {
                let (indices, num_rows) = ops.state;
                unary::<B, _>(ops.parents, ops.node, grads, |grad| {
                    B::select_rows_backward(grad, indices, num_rows)
                });
            }
        }

        let num_rows = table.primitive.shape().dims::<2>()[0];
        let out = B::select_rows(table.primitive, indices.clone());
        match SelectRows
            .prepare::<C>([table.node])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => prep.finish((indices, num_rows), out),
            OpsKind::UnTracked(prep) => prep.finish(out),
        }
    }

    fn layer_norm_forward(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: Option<FloatTensor<Self>>,
        epsilon: f64,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        let (y, mean, rstd) = B::layer_norm_forward(
            x.primitive.clone(),
            gamma.primitive.clone(),
            beta.as_ref().map(|b| b.primitive.clone()),
            epsilon,
        );
        let untracked = |t: FloatTensor<B>| <Self as AutodiffBackend>::from_inner(t);
        let (untracked_mean, untracked_rstd) = (untracked(mean.clone()), untracked(rstd.clone()));
        let saved = SavedLayerNorm {
            x: x.primitive,
            gamma: gamma.primitive,
            mean,
            rstd,
        };
        let y = match beta {
            Some(beta) => {
                let nodes = [x.node, gamma.node, beta.node];
                let kind = LayerNorm.prepare::<C>(nodes).compute_bound().stateful();
                LayerNorm::finish(kind, saved, y)
            }
            None => {
                let kind = LayerNorm
                    .prepare::<C>([x.node, gamma.node])
                    .compute_bound()
                    .stateful();
                LayerNorm::finish(kind, saved, y)
            }
        };
        (y, untracked_mean, untracked_rstd)
    }

    fn rope_qkv(
        qkv: FloatTensor<Self>,
        cos: FloatTensor<Self>,
        sin: FloatTensor<Self>,
        positions: IntTensor<Self>,
        heads: usize,
    ) -> FloatTensor<Self> {
        /// The q/k/v split with RoPE; the state is `(cos, sin, positions)`.
        #[derive(Debug)]
        struct RopeQkv;

        impl<B: Backend> Backward<B, 1> for RopeQkv {
            type State = (FloatTensor<B>, FloatTensor<B>, IntTensor<B>);

            fn backward(
                self,
                ops: Ops<Self::State, 1>,
                grads: &mut Gradients,
                _: &mut Checkpointer,
            ) {
                let (cos, sin, positions) = ops.state;
                unary::<B, _>(ops.parents, ops.node, grads, |grad| {
                    B::rope_qkv_backward(grad, cos, sin, positions)
                });
            }
        }

        let (cos, sin) = (cos.primitive, sin.primitive);
        let out = B::rope_qkv(
            qkv.primitive,
            cos.clone(),
            sin.clone(),
            positions.clone(),
            heads,
        );
        match RopeQkv.prepare::<C>([qkv.node]).compute_bound().stateful() {
            OpsKind::Tracked(prep) => prep.finish((cos, sin, positions), out),
            OpsKind::UnTracked(prep) => prep.finish(out),
        }
    }

    fn varlen_attention(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        cu_seqlens: IntTensor<Self>,
        meta: &VarlenMeta,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        let (out, lse) = B::varlen_attention(
            q.primitive.clone(),
            k.primitive.clone(),
            v.primitive.clone(),
            cu_seqlens.clone(),
            meta,
        );
        let untracked_lse = <Self as AutodiffBackend>::from_inner(lse.clone());
        let prep = VarlenAttention
            .prepare::<C>([q.node.clone(), k.node.clone(), v.node.clone()])
            .compute_bound()
            .stateful();
        let out = match prep {
            OpsKind::Tracked(prep) => {
                let qkv = [q.primitive, k.primitive, v.primitive];
                let saved = SavedAttention::new(qkv, out.clone(), lse, cu_seqlens, meta);
                prep.finish(saved, out)
            }
            OpsKind::UnTracked(prep) => prep.finish(out),
        };
        (out, untracked_lse)
    }

    fn varlen_attention_packed(
        qkv: FloatTensor<Self>,
        cu_seqlens: IntTensor<Self>,
        meta: &VarlenMeta,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        let [q, k, v] = crate::attention::split_packed::<B>(qkv.primitive);
        let (out, lse) =
            B::varlen_attention(q.clone(), k.clone(), v.clone(), cu_seqlens.clone(), meta);
        let untracked_lse = <Self as AutodiffBackend>::from_inner(lse.clone());
        let prep = PackedVarlenAttention
            .prepare::<C>([qkv.node])
            .compute_bound()
            .stateful();
        let out = match prep {
            OpsKind::Tracked(prep) => {
                let saved = SavedAttention::new([q, k, v], out.clone(), lse, cu_seqlens, meta);
                prep.finish(saved, out)
            }
            OpsKind::UnTracked(prep) => prep.finish(out),
        };
        (out, untracked_lse)
    }
}

#[cfg(all(test, feature = "ndarray"))]
mod tests {
    use burn::backend::{Autodiff, NdArray};
    use burn::tensor::{Distribution, Tensor};

    use crate::matmul;

    type B = Autodiff<NdArray>;

    /// Gradients through our matmul equal those through Burn's, for a plain product, a
    /// transposed operand and a broadcast batch.
    #[test]
    fn matmul_gradients_match_burns() {
        let device = Default::default();
        let x = Tensor::<NdArray, 3>::random([2, 5, 7], Distribution::Default, &device);
        let w = Tensor::<NdArray, 3>::random([1, 3, 7], Distribution::Default, &device);
        let dy = Tensor::<NdArray, 3>::random([2, 5, 3], Distribution::Default, &device);
        let run = |ours: bool| {
            let x = Tensor::<B, 3>::from_inner(x.clone()).require_grad();
            let w = Tensor::<B, 3>::from_inner(w.clone()).require_grad();
            let w_t = w.clone().swap_dims(1, 2);
            let y = if ours {
                matmul(x.clone(), w_t)
            } else {
                x.clone().matmul(w_t)
            };
            let grads = (y * Tensor::from_inner(dy.clone())).sum().backward();
            (x.grad(&grads).unwrap(), w.grad(&grads).unwrap())
        };
        let ((dx, dw), (dx_ref, dw_ref)) = (run(true), run(false));
        assert_eq!(dw.dims(), [1, 3, 7]);
        dx.into_data()
            .assert_approx_eq::<f32>(&dx_ref.into_data(), Default::default());
        dw.into_data()
            .assert_approx_eq::<f32>(&dw_ref.into_data(), Default::default());
    }
}
