//! MLM masking (BERT's 80/10/10 at ModernBERT's 30% rate): each token other than
//! `[CLS]`/`[SEP]`/`[PAD]` is selected with probability `rate`; a selected token becomes
//! `[MASK]` with probability 0.8, a random non-special token with 0.1, and stays with 0.1.
//! The loss is taken on selected positions only.
//!
//! HF: `DataCollatorForLanguageModeling.torch_mask_tokens` (Bernoulli per token, same split).

use crate::rng::Rng;

/// The token ids masking must know.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MaskingTokens {
    /// `[MASK]`.
    pub mask: u32,
    /// Ids never selected: `[CLS]`, `[SEP]`, `[PAD]`.
    pub never: [u32; 3],
    /// Random replacements are drawn from `0..vocab_size` (the tokenizer's size), skipping
    /// the special ids above and `[MASK]`.
    pub vocab_size: u32,
}

/// A masked row of packed tokens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Masked {
    /// The corrupted ids, same length as the input.
    pub input_ids: Vec<u32>,
    /// Positions of the selected tokens, increasing.
    pub positions: Vec<usize>,
    /// The original ids at `positions`.
    pub labels: Vec<u32>,
}

/// Masks `ids` at `rate`. At least one eligible token is always selected (when there is
/// one), so that the loss of a tiny batch is defined.
pub fn mask_tokens(ids: &[u32], rate: f64, tokens: &MaskingTokens, rng: &mut Rng) -> Masked {
    let eligible = |id: &u32| !tokens.never.contains(id);
    let mut positions: Vec<usize> = (0..ids.len())
        .filter(|&i| eligible(&ids[i]) && rng.next_f64() < rate)
        .collect();
    if positions.is_empty() {
        let candidates: Vec<usize> = (0..ids.len()).filter(|&i| eligible(&ids[i])).collect();
        if !candidates.is_empty() {
            positions.push(candidates[rng.below(candidates.len() as u64) as usize]);
        }
    }
    let mut input_ids = ids.to_vec();
    let labels = positions.iter().map(|&i| ids[i]).collect();
    for &i in &positions {
        let r = rng.next_f64();
        if r < 0.8 {
            input_ids[i] = tokens.mask;
        } else if r < 0.9 {
            input_ids[i] = random_token(tokens, rng);
        }
    }
    Masked {
        input_ids,
        positions,
        labels,
    }
}

fn random_token(tokens: &MaskingTokens, rng: &mut Rng) -> u32 {
    loop {
        let id = rng.below(tokens.vocab_size as u64) as u32;
        if id != tokens.mask && !tokens.never.contains(&id) {
            return id;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOKENS: MaskingTokens = MaskingTokens {
        mask: 4,
        never: [1, 2, 3],
        vocab_size: 1000,
    };

    fn row(rng: &mut Rng) -> Vec<u32> {
        // Packed sequences: [CLS] ... [SEP] [CLS] ... [SEP]
        let mut ids = vec![1];
        ids.extend((0..500).map(|_| 5 + rng.below(995) as u32));
        ids.extend([2, 1]);
        ids.extend((0..497).map(|_| 5 + rng.below(995) as u32));
        ids.push(2);
        ids
    }

    #[test]
    fn rates_and_the_80_10_10_split_match_within_sampling_error() {
        let mut rng = Rng::new(11);
        let (mut eligible, mut selected, mut masked, mut random, mut kept) = (0, 0, 0, 0, 0);
        for _ in 0..100 {
            let ids = row(&mut rng);
            let out = mask_tokens(&ids, 0.3, &TOKENS, &mut rng);
            eligible += ids.iter().filter(|id| !TOKENS.never.contains(id)).count();
            selected += out.positions.len();
            for (&pos, &label) in out.positions.iter().zip(&out.labels) {
                assert_eq!(ids[pos], label);
                assert!(
                    !TOKENS.never.contains(&label),
                    "a special token was selected"
                );
                match out.input_ids[pos] {
                    4 => masked += 1,
                    id if id == label => kept += 1,
                    id => {
                        assert!(!TOKENS.never.contains(&id) && id < 1000);
                        random += 1
                    }
                }
            }
            for i in 0..ids.len() {
                if !out.positions.contains(&i) {
                    assert_eq!(out.input_ids[i], ids[i], "unselected token changed");
                }
            }
        }
        // 100 rows × 997 eligible tokens: σ of the rate ≈ 0.0015.
        let rate = selected as f64 / eligible as f64;
        assert!((rate - 0.3).abs() < 0.006, "rate {rate}");
        let n = selected as f64;
        // A random draw can hit the original id (p = 1/995): counted as kept.
        for (name, count, p) in [
            ("mask", masked, 0.8),
            ("random", random, 0.1),
            ("kept", kept, 0.1),
        ] {
            let frac = count as f64 / n;
            assert!((frac - p).abs() < 0.01, "{name}: {frac}");
        }
    }

    #[test]
    fn eval_rate_and_the_minimum_of_one() {
        let mut rng = Rng::new(5);
        let ids = row(&mut rng);
        let out = mask_tokens(&ids, 0.15, &TOKENS, &mut rng);
        let rate = out.positions.len() as f64 / 997.0;
        assert!((rate - 0.15).abs() < 0.04, "{rate}");
        let tiny = mask_tokens(&[1, 77, 2], 0.0, &TOKENS, &mut rng);
        assert_eq!(tiny.positions, vec![1]);
        let specials_only = mask_tokens(&[1, 2], 0.5, &TOKENS, &mut rng);
        assert!(specials_only.positions.is_empty());
        assert_eq!(specials_only.input_ids, vec![1, 2]);
    }
}
