//! Pure functions of the step: the warmup-stable-decay learning rate with 1-sqrt decay
//! (ModernBERT §2.2, "trapezoidal"; Hägele et al. 2024 for the 1-sqrt shape) and the
//! batch-size warmup. Steps count from 0; step `t` is the `t+1`-th optimizer update.

use serde::{Deserialize, Serialize};

/// Warmup-stable-decay learning rate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WsdSchedule {
    /// Peak learning rate, held during the stable phase.
    pub lr_max: f64,
    /// Steps of linear warmup from `lr_max / warmup_steps` to `lr_max`.
    pub warmup_steps: u64,
    /// Steps of 1-sqrt decay at the end of the run.
    pub decay_steps: u64,
    /// Total optimizer steps of the run.
    pub total_steps: u64,
    /// `α_f`: the final learning rate as a fraction of `lr_max`.
    pub final_lr_ratio: f64,
}

impl WsdSchedule {
    /// Learning rate of step `t`:
    /// - warmup (`t < T_w`): `lr_max · (t+1)/T_w`
    /// - stable: `lr_max`
    /// - decay (`t ≥ T_s = total - T_d`): `lr_max · (α_f + (1-α_f)·(1 - sqrt((t+1 - T_s)/T_d)))`,
    ///   which reaches `α_f · lr_max` on the last step.
    ///
    /// # Panics
    /// If the phases overlap (`warmup_steps + decay_steps > total_steps`); the training
    /// config is validated against this before a run starts.
    pub fn lr(&self, t: u64) -> f64 {
        assert!(
            self.warmup_steps + self.decay_steps <= self.total_steps,
            "warmup ({}) + decay ({}) steps exceed total_steps ({})",
            self.warmup_steps,
            self.decay_steps,
            self.total_steps
        );
        let stable_end = self.total_steps - self.decay_steps;
        let scale = if t < self.warmup_steps {
            (t + 1) as f64 / self.warmup_steps as f64
        } else if t < stable_end {
            1.0
        } else {
            let progress = ((t + 1 - stable_end) as f64 / self.decay_steps as f64).min(1.0);
            self.final_lr_ratio + (1.0 - self.final_lr_ratio) * (1.0 - progress.sqrt())
        };
        self.lr_max * scale
    }
}

/// Batch-size warmup: the global batch grows linearly from `start_rows` to `rows` over
/// `warmup_steps`, in whole micro-batches (ModernBERT warms up the batch size, §2.2).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BatchSizeWarmup {
    /// Rows (packed sequences of `max_seq_len`) per optimizer step after the warmup.
    pub rows: usize,
    /// Rows at step 0.
    pub start_rows: usize,
    /// Steps until `rows` is reached; 0 disables the warmup.
    pub warmup_steps: u64,
    /// Rows per forward/backward pass; the global batch is a multiple of it.
    pub micro_batch_rows: usize,
}

impl BatchSizeWarmup {
    /// Micro-batches (gradient-accumulation steps) of step `t`: at least one, and
    /// `rows / micro_batch_rows` once the warmup is over.
    pub fn micro_batches(&self, t: u64) -> usize {
        let full = (self.rows / self.micro_batch_rows).max(1);
        if t >= self.warmup_steps {
            return full;
        }
        let start = (self.start_rows / self.micro_batch_rows).max(1);
        let grown =
            start as f64 + (full as f64 - start as f64) * t as f64 / self.warmup_steps as f64;
        (grown.floor() as usize).clamp(1, full)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schedule() -> WsdSchedule {
        WsdSchedule {
            lr_max: 1e-3,
            warmup_steps: 10,
            decay_steps: 20,
            total_steps: 100,
            final_lr_ratio: 0.1,
        }
    }

    #[test]
    fn warmup_is_linear_then_stable_then_one_minus_sqrt_decay() {
        let s = schedule();
        assert!((s.lr(0) - 1e-4).abs() < 1e-15);
        assert!((s.lr(4) - 5e-4).abs() < 1e-15);
        for t in 9..80 {
            assert_eq!(s.lr(t), 1e-3, "stable phase at {t}");
        }
        // Decay: t = 80 is the first decayed step, progress 1/20.
        let expected = 1e-3 * (0.1 + 0.9 * (1.0 - (1.0f64 / 20.0).sqrt()));
        assert!((s.lr(80) - expected).abs() < 1e-15);
        let quarter = 1e-3 * (0.1 + 0.9 * 0.5); // progress 1/4 → sqrt = 1/2
        assert!((s.lr(84) - quarter).abs() < 1e-15);
        assert!((s.lr(99) - 1e-4).abs() < 1e-15, "ends at α_f · lr_max");
        let lrs: Vec<f64> = (0..100).map(|t| s.lr(t)).collect();
        assert!(lrs[..10].windows(2).all(|w| w[0] < w[1]));
        assert!(lrs[80..].windows(2).all(|w| w[0] > w[1]));
    }

    #[test]
    fn no_warmup_and_no_decay_is_constant() {
        let s = WsdSchedule {
            warmup_steps: 0,
            decay_steps: 0,
            ..schedule()
        };
        assert!((0..100).all(|t| s.lr(t) == 1e-3));
    }

    #[test]
    #[should_panic(expected = "exceed total_steps")]
    fn overlapping_phases_panic() {
        WsdSchedule {
            warmup_steps: 60,
            decay_steps: 60,
            ..schedule()
        }
        .lr(0);
    }

    #[test]
    fn batch_size_grows_in_micro_batches_to_the_target() {
        let w = BatchSizeWarmup {
            rows: 64,
            start_rows: 8,
            warmup_steps: 7,
            micro_batch_rows: 8,
        };
        let counts: Vec<usize> = (0..10).map(|t| w.micro_batches(t)).collect();
        assert_eq!(counts, vec![1, 2, 3, 4, 5, 6, 7, 8, 8, 8]);
        let none = BatchSizeWarmup {
            warmup_steps: 0,
            ..w
        };
        assert_eq!(none.micro_batches(0), 8);
    }
}
