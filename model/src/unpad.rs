//! Unpadding: a right-padded batch `[batch, seq]` becomes one packed sequence of its real
//! tokens `[total_nnz]` with `cu_seqlens` offsets, so that every layer runs on real tokens
//! only; `pad` puts the result back into `[batch, seq, H]`.
//!
//! HF: `_unpad_modernbert_input` / `_pad_modernbert_output` in `modeling_modernbert.py`.

use burn::tensor::{IndexingUpdateOp, Int, Tensor, TensorData};
use modernbert_kernels::{Backend, CuSeqlens};

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
    fn a_row_without_tokens_is_refused() {
        let device = Default::default();
        let ids = Tensor::<TestBackend, 2, Int>::from_data([[5, 6], [0, 0]], &device);
        let mask = Tensor::<TestBackend, 2, Int>::from_data([[1, 1], [0, 0]], &device);
        let err = UnpaddedInput::from_padded(&ModernBertInput::new(ids).with_attention_mask(mask))
            .unwrap_err();
        assert!(matches!(err, InputError::Empty(_)), "{err}");
    }
}
