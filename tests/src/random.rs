//! A small seeded generator for randomized tests: fresh inputs every run, with the seed
//! printed so that a failure can be replayed.

use burn::tensor::backend::Backend;
use burn::tensor::{DType, Int, Tensor, TensorData};

/// xorshift64*, seeded from the clock unless `MODERNBERT_SEED` is set.
pub struct Rng(u64);

impl Rng {
    /// Seeds from `MODERNBERT_SEED` or the clock, printing the seed.
    pub fn from_env() -> Self {
        let seed = std::env::var("MODERNBERT_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_nanos() as u64)
                    .unwrap_or(0x9e37_79b9)
            });
        println!("seed {seed} (rerun with MODERNBERT_SEED={seed})");
        Rng(seed | 1)
    }

    /// A uniform integer in `0..n` (`n > 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n
    }

    /// A uniform float in `[-1, 1)`.
    pub fn symmetric(&mut self) -> f32 {
        (self.below(1 << 24) as f32 / (1 << 23) as f32) - 1.0
    }
}

/// A `shape` tensor of `offset + amplitude · u` with `u` uniform in `[-1, 1)` from `rng`,
/// made in f32 and cast to `dtype`.
pub fn uniform_tensor<B: Backend, const D: usize>(
    rng: &mut Rng,
    device: &B::Device,
    shape: [usize; D],
    amplitude: f32,
    offset: f32,
    dtype: DType,
) -> Tensor<B, D> {
    let n = shape.iter().product();
    let values: Vec<f32> = (0..n)
        .map(|_| offset + amplitude * rng.symmetric())
        .collect();
    Tensor::<B, D>::from_data(TensorData::new(values, shape), device).cast(dtype)
}

/// `values` (indices or labels drawn by a test) as an int tensor on `device`.
pub fn int_tensor<B: Backend>(values: &[i64], device: &B::Device) -> Tensor<B, 1, Int> {
    Tensor::from_data(TensorData::new(values.to_vec(), [values.len()]), device)
}
