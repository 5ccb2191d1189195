//! Rotary position embeddings (RoPE), GPT-NeoX `rotate_half` style, as in HF's
//! `ModernBertRotaryEmbedding` / `apply_rotary_pos_emb`.
//!
//! The cos and sin tables of every position below `max_position_embeddings` are built once,
//! on the host, when the model is built, and uploaded; a forward pass gathers the rows of its
//! token positions, so that positions restart at 0 for every sequence whatever the batch
//! layout. Host math keeps the values independent of the device's `cos`/`sin` (SwiftShader's
//! WGSL `sin`/`cos` are off by up to 2e-4).

use burn::config::Config;
use burn::module::Module;
use burn::tensor::backend::Backend;
use burn::tensor::{DType, Element, Int, Tensor, TensorData};

/// Configuration of a [`RotaryEmbedding`].
#[derive(Config, Debug)]
pub struct RotaryEmbeddingConfig {
    /// Size of one attention head; rotated in two halves.
    pub head_dim: usize,
    /// Base θ of the inverse frequencies (160 000 on global layers, 10 000 on local ones).
    pub theta: f64,
    /// Rows of the tables: positions `0..max_position_embeddings` can be rotated.
    #[config(default = 8192)]
    pub max_position_embeddings: usize,
}

/// cos and sin of `position · inv_freq` for every position below `max_position_embeddings`,
/// where `inv_freq = 1 / θ^(2i / head_dim)` for `i < head_dim / 2`, duplicated over the two
/// halves of a head.
///
/// A module without parameters: the tables are constants (not saved, not trained), moved
/// with the model between devices.
#[derive(Module, Debug)]
pub struct RotaryEmbedding<B: Backend> {
    /// `[max_position_embeddings, head_dim]`, f32.
    cos: Tensor<B, 2>,
    /// `[max_position_embeddings, head_dim]`, f32.
    sin: Tensor<B, 2>,
}

/// cos and sin of the rotation angles of a padded batch, shaped to broadcast over the heads
/// of a `[batch, heads, seq, head_dim]` query or key tensor.
#[derive(Debug, Clone)]
pub struct RopeAngles<B: Backend> {
    /// `[batch, 1, seq, head_dim]`.
    pub cos: Tensor<B, 4>,
    /// Same shape as `cos`.
    pub sin: Tensor<B, 4>,
}

/// What the unpadded path's fused split-and-rotate needs: the whole f32 tables and the
/// packed tokens' positions (the kernel gathers each token's row as it rotates).
#[derive(Debug, Clone)]
pub struct PackedRope<B: Backend> {
    /// `[max_position_embeddings, head_dim]`, f32.
    pub cos: Tensor<B, 2>,
    /// `[max_position_embeddings, head_dim]`, f32.
    pub sin: Tensor<B, 2>,
    /// `[total_nnz]`: each token's position in its sequence.
    pub positions: Tensor<B, 1, Int>,
}

impl RotaryEmbeddingConfig {
    /// The angles `position · inv_freq` of every position, `[max_position_embeddings,
    /// head_dim / 2]` row-major, with HF's f32 arithmetic: `inv_freq = 1.0 / base **
    /// (arange(0, dim, 2).float() / dim)` (torch's f32 `pow` is correctly rounded there; f64
    /// `powf` rounded to f32 gives the same value on every target, where f32 `powf` of a
    /// wasm libm may be an ulp off) and the f32 product with the position (the angle's
    /// rounding is what decides cos/sin at large positions, so it must be HF's).
    fn angles(&self) -> Vec<f32> {
        let half = self.head_dim / 2;
        let inv_freq: Vec<f32> = (0..half)
            .map(|i| {
                let exponent = (2 * i) as f32 / self.head_dim as f32;
                1.0 / self.theta.powf(exponent as f64) as f32
            })
            .collect();
        (0..self.max_position_embeddings)
            .flat_map(|position| inv_freq.iter().map(move |&f| position as f32 * f))
            .collect()
    }

    /// Builds the cos and sin tables on the host (f64 `cos`/`sin` of HF's f32 angles,
    /// rounded to f32: HF's f32 values to within f32 rounding) and uploads them to `device`.
    pub fn init<B: Backend>(&self, device: &B::Device) -> RotaryEmbedding<B> {
        let half = self.head_dim / 2;
        let angles = self.angles();
        let table = |f: fn(f64) -> f64| {
            let values: Vec<f32> = angles
                .chunks_exact(half.max(1))
                .flat_map(|row| {
                    let row: Vec<f32> = row.iter().map(|&a| f(a as f64) as f32).collect();
                    [row.clone(), row].concat()
                })
                .collect();
            let shape = [self.max_position_embeddings, 2 * half];
            Tensor::from_data(TensorData::new(values, shape), (device, DType::F32))
        };
        RotaryEmbedding {
            cos: table(f64::cos),
            sin: table(f64::sin),
        }
    }
}

impl<B: Backend> RotaryEmbedding<B> {
    /// The table rows of `positions`, in the model's float dtype.
    ///
    /// # Shapes
    /// - positions: `[n]`, each below `max_position_embeddings` (the model's input checks
    ///   refuse longer sequences before any gather)
    /// - output: two `[n, head_dim]`
    fn table(&self, positions: Tensor<B, 1, Int>) -> (Tensor<B, 2>, Tensor<B, 2>) {
        // The tables stay f32 whatever the model's dtype (HF too builds them in f32 and casts
        // cos/sin to the activations' dtype); only the gathered rows are cast.
        let dtype = B::FloatElem::dtype();
        (
            self.cos.clone().select(0, positions.clone()).cast(dtype),
            self.sin.clone().select(0, positions).cast(dtype),
        )
    }

    /// Angles for a padded batch.
    ///
    /// # Shapes
    /// - positions: `[batch, seq]`
    /// - output: cos and sin, `[batch, 1, seq, head_dim]` (broadcast over heads)
    pub fn angles(&self, positions: Tensor<B, 2, Int>) -> RopeAngles<B> {
        let [batch, seq] = positions.dims();
        let (cos, sin) = self.table(positions.reshape([batch * seq]));
        let head_dim = cos.dims()[1];
        let shape = [batch, 1, seq, head_dim];
        RopeAngles {
            cos: cos.reshape(shape),
            sin: sin.reshape(shape),
        }
    }

    /// The f32 tables with the positions of packed tokens, for the unpadded path's fused
    /// q/k/v split and rotation (`modernbert_kernels::rope_qkv`, which gathers the rows
    /// itself, in f32).
    ///
    /// # Shapes
    /// - positions: `[total_nnz]`, each below `max_position_embeddings` (the model's input
    ///   checks refuse longer sequences)
    pub fn packed(&self, positions: Tensor<B, 1, Int>) -> PackedRope<B> {
        PackedRope {
            cos: self.cos.clone(),
            sin: self.sin.clone(),
            positions,
        }
    }
}

impl<B: Backend> RopeAngles<B> {
    /// Rotates queries or keys: `x * cos + rotate_half(x) * sin`.
    ///
    /// # Shapes
    /// - x: `[batch, heads, seq, head_dim]`
    /// - output: same as x
    pub fn apply(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let half = x.dims()[3] / 2;
        let x1 = x.clone().narrow(3, 0, half);
        let x2 = x.clone().narrow(3, half, half);
        let rotated = Tensor::cat(vec![x2.neg(), x1], 3);
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
    fn inv_freq_is_hf_bit_for_bit() {
        // torch 2.x: `1.0 / (160000.0 ** (torch.arange(0, 64, 2).float() / 64))`, as f32 bits.
        const HF: [u32; 32] = [
            0x3f800000, 0x3f300a3a, 0x3ef21c1f, 0x3ea67d01, 0x3e64f92e, 0x3e1d7475, 0x3dd88cb4,
            0x3d94e963, 0x3d4ccccd, 0x3d0cd4fb, 0x3cc1b019, 0x3c8530ce, 0x3c372dbf, 0x3bfbed88,
            0x3bad3d5e, 0x3b6e4237, 0x3b23d70a, 0x3ae154c5, 0x3a9af347, 0x3a551ae3, 0x3a128aff,
            0x39c98ad3, 0x398a977e, 0x393e9b60, 0x3903126f, 0x38b443d0, 0x3877eba6, 0x382a7be8,
            0x37ea77ff, 0x37a13bdc, 0x375dbf30, 0x37187c4d,
        ];
        let config = RotaryEmbeddingConfig::new(64, 160000.0).with_max_position_embeddings(2);
        let inv_freq: Vec<u32> = config.angles()[32..].iter().map(|f| f.to_bits()).collect();
        assert_eq!(inv_freq, HF);
    }

    #[test]
    fn host_tables_match_the_f32_formula_on_the_device() {
        // The formula the tables replace: f32 angles, cos/sin in f32 on the device (NdArray:
        // libm, within an ulp), at every position of a ModernBERT-base head.
        let device = Default::default();
        let config = RotaryEmbeddingConfig::new(64, 160000.0).with_max_position_embeddings(8192);
        let rope = config.init::<TestBackend>(&device);
        let angles = Tensor::<TestBackend, 2>::from_data(
            TensorData::new(config.angles(), [8192, 32]),
            &device,
        );
        let angles = Tensor::cat(vec![angles.clone(), angles], 1);
        let positions = Tensor::<TestBackend, 1, Int>::arange(0..8192, &device);
        let (cos, sin) = rope.table(positions);
        let max_diff = |a: Tensor<TestBackend, 2>, b: Tensor<TestBackend, 2>| -> f32 {
            (a - b).abs().max().into_scalar()
        };
        let (cos_diff, sin_diff) = (
            max_diff(cos, angles.clone().cos()),
            max_diff(sin, angles.sin()),
        );
        assert!(cos_diff <= 2.4e-7, "cos differs by {cos_diff}");
        assert!(sin_diff <= 2.4e-7, "sin differs by {sin_diff}");
        // Position 8191's largest angle, as HF rounds it.
        assert_eq!(config.angles()[8191 * 32], 8191.0);
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
