//! Greedy best-fit sequence packing: documents (each wrapped as `[CLS] … [SEP]`, long ones
//! cut into pieces that fit) are packed into rows of at most `max_seq_len` tokens, with
//! the row's `cu_seqlens` kept so that attention never crosses a document boundary.
//!
//! Best fit over a pool of pending pieces: a row starts with the longest piece, then keeps
//! taking the longest piece that still fits the room left, until none does.

use serde::{Deserialize, Serialize};

/// One packed row.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PackedRow {
    /// Token ids of every sequence in the row, back to back. `[sum(seqlens)]`
    pub input_ids: Vec<u32>,
    /// Length of each sequence (each starts with `[CLS]` and ends with `[SEP]`).
    pub seqlens: Vec<usize>,
}

/// The packer: a pool of pending pieces and the packing statistics.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Packer {
    /// Row capacity in tokens.
    pub max_seq_len: usize,
    /// Pieces kept for best fit; the stream refills the pool to this size before a row.
    pub pool_size: usize,
    cls: u32,
    sep: u32,
    pool: Vec<Vec<u32>>,
    /// Rows packed so far.
    pub rows: u64,
    /// Tokens (with `[CLS]`/`[SEP]`) in those rows.
    pub tokens: u64,
}

impl Packer {
    /// An empty packer.
    ///
    /// # Panics
    /// If `max_seq_len < 3` (a piece needs `[CLS]`, a token and `[SEP]`); the training
    /// config is validated against this.
    pub fn new(max_seq_len: usize, pool_size: usize, cls: u32, sep: u32) -> Self {
        assert!(max_seq_len >= 3, "max_seq_len must be at least 3");
        Self {
            max_seq_len,
            pool_size: pool_size.max(1),
            cls,
            sep,
            pool: Vec::new(),
            rows: 0,
            tokens: 0,
        }
    }

    /// Whether the pool wants more documents before the next row.
    pub fn wants_documents(&self) -> bool {
        self.pool.len() < self.pool_size
    }

    /// Pieces waiting in the pool.
    pub fn pending(&self) -> usize {
        self.pool.len()
    }

    /// Adds a document (token ids without special tokens), cut into pieces of at most
    /// `max_seq_len - 2` tokens, each wrapped as `[CLS] … [SEP]`. An empty document adds
    /// nothing.
    pub fn push_document(&mut self, ids: &[u32]) {
        for chunk in ids.chunks(self.max_seq_len - 2) {
            let mut piece = Vec::with_capacity(chunk.len() + 2);
            piece.push(self.cls);
            piece.extend_from_slice(chunk);
            piece.push(self.sep);
            self.pool.push(piece);
        }
    }

    /// Packs one row from the pool by greedy best fit; `None` when the pool is empty.
    pub fn pack_row(&mut self) -> Option<PackedRow> {
        let mut row = PackedRow {
            input_ids: Vec::with_capacity(self.max_seq_len),
            seqlens: Vec::new(),
        };
        loop {
            let room = self.max_seq_len - row.input_ids.len();
            // Longest piece that fits; on ties the oldest, so the order is deterministic.
            let best = self
                .pool
                .iter()
                .enumerate()
                .filter(|(_, p)| p.len() <= room)
                .max_by(|(i, a), (j, b)| a.len().cmp(&b.len()).then(j.cmp(i)))
                .map(|(i, _)| i);
            let Some(index) = best else { break };
            let piece = self.pool.remove(index);
            row.seqlens.push(piece.len());
            row.input_ids.extend(piece);
        }
        if row.seqlens.is_empty() {
            return None;
        }
        self.rows += 1;
        self.tokens += row.input_ids.len() as u64;
        Some(row)
    }

    /// Real tokens over row capacity, over all rows packed so far (1.0 = no padding).
    pub fn efficiency(&self) -> f64 {
        if self.rows == 0 {
            return 0.0;
        }
        self.tokens as f64 / (self.rows as f64 * self.max_seq_len as f64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CLS: u32 = 1;
    const SEP: u32 = 2;

    fn doc(len: usize, start: u32) -> Vec<u32> {
        (start..start + len as u32).collect()
    }

    #[test]
    fn pieces_are_wrapped_and_long_documents_split() {
        let mut packer = Packer::new(6, 8, CLS, SEP);
        packer.push_document(&doc(9, 10)); // 4 + 4 + 1 tokens → pieces of 6, 6, 3
        packer.push_document(&[]);
        assert_eq!(packer.pending(), 3);
        let rows: Vec<PackedRow> = std::iter::from_fn(|| packer.pack_row()).collect();
        assert_eq!(rows[0].input_ids, vec![CLS, 10, 11, 12, 13, SEP]);
        assert_eq!(rows[1].input_ids, vec![CLS, 14, 15, 16, 17, SEP]);
        assert_eq!(rows[2].input_ids, vec![CLS, 18, SEP]);
        assert_eq!(packer.efficiency(), 15.0 / 18.0);
    }

    #[test]
    fn best_fit_fills_the_room_with_the_longest_piece_that_fits() {
        let mut packer = Packer::new(10, 16, CLS, SEP);
        for (len, start) in [(5, 100), (1, 200), (3, 300), (2, 400), (6, 500)] {
            packer.push_document(&doc(len, start)); // pieces of 7, 3, 5, 4, 8 tokens
        }
        let rows: Vec<PackedRow> = std::iter::from_fn(|| packer.pack_row()).collect();
        let seqlens: Vec<Vec<usize>> = rows.iter().map(|r| r.seqlens.clone()).collect();
        // 8 first, nothing of ≤ 2 left → row 1 = [8]; then 7 + 3; then 5 + 4.
        assert_eq!(seqlens, vec![vec![8], vec![7, 3], vec![5, 4]]);
        for row in &rows {
            assert!(row.input_ids.len() <= 10);
            assert_eq!(row.input_ids.len(), row.seqlens.iter().sum::<usize>());
            // Every sequence starts with CLS and ends with SEP.
            let mut offset = 0;
            for &len in &row.seqlens {
                assert_eq!(row.input_ids[offset], CLS);
                assert_eq!(row.input_ids[offset + len - 1], SEP);
                offset += len;
            }
        }
        assert_eq!(packer.rows, 3);
        assert!((packer.efficiency() - 27.0 / 30.0).abs() < 1e-12);
        assert!(packer.pack_row().is_none());
    }

    #[test]
    fn many_random_documents_pack_densely() {
        let mut packer = Packer::new(128, 256, CLS, SEP);
        let mut lens = crate::rng::Rng::new(3);
        let mut total = 0;
        for i in 0..2000 {
            let len = 1 + lens.below(150) as usize;
            total += len + 2 * len.div_ceil(126);
            packer.push_document(&doc(len, i));
            if !packer.wants_documents() {
                packer.pack_row().unwrap();
            }
        }
        while packer.pack_row().is_some() {}
        assert_eq!(packer.tokens, total as u64, "no token lost or duplicated");
        assert!(
            packer.efficiency() > 0.95,
            "efficiency {}",
            packer.efficiency()
        );
    }
}
