//! Unpadding: a right-padded batch `[batch, seq]` becomes one packed sequence of its real
//! tokens `[total_nnz]` with `cu_seqlens` offsets, so that every layer runs on real tokens
//! only; `pad` puts the result back into `[batch, seq, H]`.
//!
//! HF: `_unpad_modernbert_input` / `_pad_modernbert_output` in `modeling_modernbert.py`.

use burn::tensor::{IndexingUpdateOp, Int, Tensor, TensorData};
use modernbert_kernels::{Backend, CuSeqlens};

use crate::config::ModernBertConfig;
use crate::error::InputError;
use crate::model::ModernBertInput;

/// A batch with its padding removed.
#[derive(Debug, Clone)]
pub struct UnpaddedInput<B: Backend> {
    /// Real tokens of all sequences, packed. `[total_nnz]`
    pub input_ids: Tensor<B, 1, Int>,
    /// Position of each token in its own sequence (restarting at 0). `[total_nnz]`
    pub positions: Tensor<B, 1, Int>,
    /// Flat index of each token in the padded `[batch * seq]` layout. `[total_nnz]`
    pub indices: Tensor<B, 1, Int>,
    /// Sequence offsets, `[batch + 1]`.
    pub cu_seqlens: CuSeqlens<B>,
    /// Rows of the padded batch.
    pub batch: usize,
    /// Columns of the padded batch.
    pub seq: usize,
}

impl<B: Backend> UnpaddedInput<B> {
    /// Removes the padding of `input`. Reads `attention_mask` back to the host (one
    /// device-host sync, as HF's `max_seqlen_in_batch.item()`).
    ///
    /// # Errors
    /// [`InputError::Empty`] when a row of the mask has no real token.
    pub fn from_padded(input: &ModernBertInput<B>) -> Result<Self, InputError> {
        let [batch, seq] = input.input_ids.dims();
        let device = input.input_ids.device();
        let mask: Vec<i64> = input
            .attention_mask
            .to_data()
            .convert::<i64>()
            .to_vec()
            .map_err(|e| InputError::Shape(format!("attention_mask: {e:?}")))?;
        let mut indices = Vec::new();
        let mut positions = Vec::new();
        let mut lengths = Vec::with_capacity(batch);
        for row in 0..batch {
            let before = indices.len();
            for col in 0..seq {
                if mask[row * seq + col] != 0 {
                    positions.push((indices.len() - before) as i64);
                    indices.push((row * seq + col) as i64);
                }
            }
            let len = indices.len() - before;
            if len == 0 {
                return Err(InputError::Empty(format!(
                    "sequence {row} has no real token in attention_mask"
                )));
            }
            lengths.push(len);
        }
        let total = indices.len();
        let cu_seqlens = CuSeqlens::from_lengths(&lengths, &device)
            .map_err(|e| InputError::Shape(e.to_string()))?;
        let indices = Tensor::<B, 1, Int>::from_data(TensorData::new(indices, [total]), &device);
        Ok(Self {
            input_ids: input
                .input_ids
                .clone()
                .reshape([batch * seq])
                .select(0, indices.clone()),
            positions: Tensor::from_data(TensorData::new(positions, [total]), &device),
            indices,
            cu_seqlens,
            batch,
            seq,
        })
    }

    /// Packs token-id sequences directly, with no padded tensor and no device-host sync:
    /// the serving and benchmark path. `indices` then address a `[batch, max_seqlen]`
    /// layout, so [`pad`](Self::pad) still works.
    ///
    /// # Errors
    /// As [`ModernBertInput::from_token_ids`]: empty batch or sequence, a sequence over
    /// `max_position_embeddings`, a token id not below `vocab_size`.
    pub fn from_token_ids(
        sequences: &[Vec<u32>],
        config: &ModernBertConfig,
        device: &B::Device,
    ) -> Result<Self, InputError> {
        check_token_ids(sequences, config)?;
        let seq = sequences.iter().map(Vec::len).max().unwrap_or(0);
        let total: usize = sequences.iter().map(Vec::len).sum();
        let mut ids = Vec::with_capacity(total);
        let mut positions = Vec::with_capacity(total);
        let mut indices = Vec::with_capacity(total);
        for (row, sequence) in sequences.iter().enumerate() {
            ids.extend(sequence.iter().map(|&id| id as i64));
            positions.extend(0..sequence.len() as i64);
            indices.extend((0..sequence.len()).map(|col| (row * seq + col) as i64));
        }
        let lengths: Vec<usize> = sequences.iter().map(Vec::len).collect();
        let cu_seqlens = CuSeqlens::from_lengths(&lengths, device)
            .map_err(|e| InputError::Shape(e.to_string()))?;
        let tensor = |values: Vec<i64>| Tensor::from_data(TensorData::new(values, [total]), device);
        Ok(Self {
            input_ids: tensor(ids),
            positions: tensor(positions),
            indices: tensor(indices),
            cu_seqlens,
            batch: sequences.len(),
            seq,
        })
    }

    /// Scatters packed rows back into the padded layout; padding positions hold zeros.
    ///
    /// # Shapes
    /// - hidden: `[total_nnz, H]`
    /// - output: `[batch, seq, H]`
    pub fn pad(&self, hidden: Tensor<B, 2>) -> Tensor<B, 3> {
        let [_, h] = hidden.dims();
        let zeros = Tensor::<B, 2>::zeros(
            [self.batch * self.seq, h],
            (&hidden.device(), hidden.dtype()),
        );
        zeros
            .select_assign(0, self.indices.clone(), hidden, IndexingUpdateOp::Add)
            .reshape([self.batch, self.seq, h])
    }
}

/// Checks a batch of token-id sequences: not empty, no empty sequence, none over
/// `max_position_embeddings`, every id below `vocab_size`.
pub(crate) fn check_token_ids(
    sequences: &[Vec<u32>],
    config: &ModernBertConfig,
) -> Result<(), InputError> {
    if sequences.is_empty() {
        return Err(InputError::Empty("the batch holds no sequences".into()));
    }
    for (index, ids) in sequences.iter().enumerate() {
        if ids.is_empty() {
            return Err(InputError::Empty(format!("sequence {index} has no tokens")));
        }
        if ids.len() > config.max_position_embeddings {
            return Err(InputError::TooLong {
                index,
                len: ids.len(),
                max: config.max_position_embeddings,
            });
        }
        if let Some(&id) = ids.iter().find(|&&id| id as usize >= config.vocab_size) {
            return Err(InputError::TokenOutOfRange {
                index,
                id,
                vocab_size: config.vocab_size,
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::TestBackend;

    #[test]
    fn unpad_then_pad_keeps_real_tokens_and_zeroes_padding() {
        let device = Default::default();
        let ids = Tensor::<TestBackend, 2, Int>::from_data([[5, 6, 7], [8, 0, 0]], &device);
        let mask = Tensor::<TestBackend, 2, Int>::from_data([[1, 1, 1], [1, 0, 0]], &device);
        let input = ModernBertInput::new(ids).with_attention_mask(mask);
        let unpadded = UnpaddedInput::from_padded(&input).unwrap();
        assert_eq!(unpadded.cu_seqlens.offsets(), &[0, 3, 4]);
        assert_eq!(
            unpadded.input_ids.to_data().to_vec::<i64>().unwrap(),
            vec![5, 6, 7, 8]
        );
        assert_eq!(
            unpadded.positions.to_data().to_vec::<i64>().unwrap(),
            vec![0, 1, 2, 0]
        );
        let hidden = unpadded
            .input_ids
            .clone()
            .float()
            .unsqueeze_dim::<2>(1)
            .repeat_dim(1, 2);
        let padded: Vec<f32> = unpadded.pad(hidden).into_data().to_vec().unwrap();
        assert_eq!(padded, vec![5., 5., 6., 6., 7., 7., 8., 8., 0., 0., 0., 0.]);
    }

    #[test]
    fn from_token_ids_matches_from_padded() {
        let device = Default::default();
        let config = ModernBertConfig::new().with_vocab_size(10);
        let sequences = vec![vec![5, 6, 7], vec![8]];
        let direct =
            UnpaddedInput::<TestBackend>::from_token_ids(&sequences, &config, &device).unwrap();
        let padded =
            ModernBertInput::<TestBackend>::from_token_ids(&sequences, &config, &device).unwrap();
        let via_pad = UnpaddedInput::from_padded(&padded).unwrap();
        let ints = |t: &Tensor<TestBackend, 1, Int>| t.to_data().to_vec::<i64>().unwrap();
        assert_eq!(direct.cu_seqlens.offsets(), via_pad.cu_seqlens.offsets());
        assert_eq!(ints(&direct.input_ids), ints(&via_pad.input_ids));
        assert_eq!(ints(&direct.positions), ints(&via_pad.positions));
        assert_eq!(ints(&direct.indices), ints(&via_pad.indices));
        assert_eq!((direct.batch, direct.seq), (via_pad.batch, via_pad.seq));
        let bad = vec![vec![5], vec![]];
        assert!(matches!(
            UnpaddedInput::<TestBackend>::from_token_ids(&bad, &config, &device),
            Err(InputError::Empty(_))
        ));
    }

    #[test]
    fn a_row_without_tokens_is_refused() {
        let device = Default::default();
        let ids = Tensor::<TestBackend, 2, Int>::from_data([[5, 6], [0, 0]], &device);
        let mask = Tensor::<TestBackend, 2, Int>::from_data([[1, 1], [0, 0]], &device);
        let err = UnpaddedInput::from_padded(&ModernBertInput::new(ids).with_attention_mask(mask))
            .unwrap_err();
        assert!(matches!(err, InputError::Empty(_)), "{err}");
    }
}
