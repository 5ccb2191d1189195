//! Rotary position embeddings (RoPE), GPT-NeoX `rotate_half` style, as in HF's
//! `ModernBertRotaryEmbedding` / `apply_rotary_pos_emb`.
//!
//! Angles are computed in f32 from integer positions, so that positions restart at 0 for
//! every sequence whatever the batch layout.

use burn::config::Config;
use burn::tensor::backend::Backend;
use burn::tensor::{DType, Element, FloatDType, Int, Tensor, TensorData};

/// Configuration of a [`RotaryEmbedding`].
#[derive(Config, Debug)]
pub struct RotaryEmbeddingConfig {
    /// Size of one attention head; rotated in two halves.
    pub head_dim: usize,
    /// Base θ of the inverse frequencies (160 000 on global layers, 10 000 on local ones).
    pub theta: f64,
}

/// Inverse frequencies `1 / θ^(2i / head_dim)` for `i < head_dim / 2`.
///
/// Not a learnable module: it holds no parameters, only the frequencies.
#[derive(Debug, Clone)]
pub struct RotaryEmbedding<B: Backend> {
    /// `[head_dim / 2]`.
    inv_freq: Tensor<B, 1>,
}

/// cos and sin of the rotation angles, shaped to broadcast over the heads of a rank-`D`
/// query or key tensor.
#[derive(Debug, Clone)]
pub struct RopeAngles<B: Backend, const D: usize> {
    /// Padded: `[batch, 1, seq, head_dim]`; unpadded: `[total_nnz, 1, head_dim]`.
    pub cos: Tensor<B, D>,
    /// Same shape as `cos`.
    pub sin: Tensor<B, D>,
}

impl RotaryEmbeddingConfig {
    /// Builds the inverse-frequency table on `device`.
    pub fn init<B: Backend>(&self, device: &B::Device) -> RotaryEmbedding<B> {
        let half = self.head_dim / 2;
        // Same arithmetic as HF (`1.0 / base ** (arange(0, dim, 2).float() / dim)`), in f32.
        let inv_freq: Vec<f32> = (0..half)
            .map(|i| 1.0 / (self.theta as f32).powf((2 * i) as f32 / self.head_dim as f32))
            .collect();
        RotaryEmbedding {
            inv_freq: Tensor::from_data(TensorData::new(inv_freq, [half]), (device, DType::F32)),
        }
    }
}

impl<B: Backend> RotaryEmbedding<B> {
    /// `(cos, sin)` of `position · inv_freq`, duplicated over the two halves.
    ///
    /// # Shapes
    /// - positions: `[n]`
    /// - output: two `[n, head_dim]`
    fn table(&self, positions: Tensor<B, 1, Int>) -> (Tensor<B, 2>, Tensor<B, 2>) {
        let [half] = self.inv_freq.dims();
        // f32 whatever the model's dtype: bf16 holds integers exactly only up to 256, so
        // positions and angles in bf16 would be wrong for long sequences. HF likewise builds
        // the table in f32 and casts cos/sin to the activations' dtype.
        let freqs = positions.cast(FloatDType::F32).unsqueeze_dim::<2>(1)
            * self.inv_freq.clone().reshape([1, half]);
        let emb = Tensor::cat(vec![freqs.clone(), freqs], 1);
        let dtype = B::FloatElem::dtype();
        (emb.clone().cos().cast(dtype), emb.sin().cast(dtype))
    }

    /// Angles for a padded batch.
    ///
    /// # Shapes
    /// - positions: `[batch, seq]`
    /// - output: cos and sin, `[batch, 1, seq, head_dim]` (broadcast over heads)
    pub fn angles(&self, positions: Tensor<B, 2, Int>) -> RopeAngles<B, 4> {
        let [batch, seq] = positions.dims();
        let (cos, sin) = self.table(positions.reshape([batch * seq]));
        let head_dim = cos.dims()[1];
        let shape = [batch, 1, seq, head_dim];
        RopeAngles {
            cos: cos.reshape(shape),
            sin: sin.reshape(shape),
        }
    }

    /// Angles for packed tokens.
    ///
    /// # Shapes
    /// - positions: `[total_nnz]`
    /// - output: cos and sin, `[total_nnz, 1, head_dim]` (broadcast over heads)
    pub fn angles_unpadded(&self, positions: Tensor<B, 1, Int>) -> RopeAngles<B, 3> {
        let (cos, sin) = self.table(positions);
        RopeAngles {
            cos: cos.unsqueeze_dim(1),
            sin: sin.unsqueeze_dim(1),
        }
    }
}

impl<B: Backend, const D: usize> RopeAngles<B, D> {
    /// Rotates queries or keys: `x * cos + rotate_half(x) * sin`.
    ///
    /// # Shapes
    /// - x: `[batch, heads, seq, head_dim]` (padded) or `[total_nnz, heads, head_dim]`
    /// - output: same as x
    pub fn apply(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        let head_dim = x.dims()[D - 1];
        let half = head_dim / 2;
        let x1 = x.clone().narrow(D - 1, 0, half);
        let x2 = x.clone().narrow(D - 1, half, half);
        let rotated = Tensor::cat(vec![x2.neg(), x1], D - 1);
        x * self.cos.clone() + rotated * self.sin.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::TestBackend;

    #[test]
    fn position_zero_is_identity_and_rotation_preserves_norm() {
        let device = Default::default();
        let rope = RotaryEmbeddingConfig::new(8, 10000.0).init::<TestBackend>(&device);
        let positions = Tensor::<TestBackend, 2, Int>::from_data([[0, 1, 2, 700]], &device);
        let angles = rope.angles(positions);
        let x = Tensor::<TestBackend, 4>::random(
            [1, 2, 4, 8],
            burn::tensor::Distribution::Default,
            &device,
        );
        let y = angles.apply(x.clone());
        let diff0: f32 = (y.clone().narrow(2, 0, 1) - x.clone().narrow(2, 0, 1))
            .abs()
            .max()
            .into_scalar();
        assert!(diff0 < 1e-7, "position 0 must not rotate, diff {diff0}");
        let norm = |t: Tensor<TestBackend, 4>| t.powf_scalar(2.0).sum_dim(3);
        let norm_diff: f32 = (norm(y) - norm(x)).abs().max().into_scalar();
        assert!(norm_diff < 1e-5, "rotation changed the norm by {norm_diff}");
    }

    #[test]
    fn relative_positions_only_matter_for_dot_products() {
        // RoPE's defining property: <R(p)q, R(p+d)k> depends on d alone.
        let device = Default::default();
        let rope = RotaryEmbeddingConfig::new(16, 160000.0).init::<TestBackend>(&device);
        let q = Tensor::<TestBackend, 4>::random(
            [1, 1, 1, 16],
            burn::tensor::Distribution::Default,
            &device,
        );
        let k = Tensor::<TestBackend, 4>::random(
            [1, 1, 1, 16],
            burn::tensor::Distribution::Default,
            &device,
        );
        let dot = |pq: i64, pk: i64| -> f32 {
            let rq = rope
                .angles(Tensor::from_data([[pq]], &device))
                .apply(q.clone());
            let rk = rope
                .angles(Tensor::from_data([[pk]], &device))
                .apply(k.clone());
            (rq * rk).sum().into_scalar()
        };
        let (a, b) = (dot(3, 10), dot(103, 110));
        assert!((a - b).abs() < 1e-4, "{a} vs {b}");
    }
}
