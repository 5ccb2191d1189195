//! The banded `dS` of the sliding-window backward (cube code shared by the two kernels of
//! `kernel_backward_mma_band.rs`): the dK/dV kernel computes `dSᵀ = Pᵀ ∘ (dPᵀ − D)` for its
//! keys anyway and writes it here; the dQ kernel reads it for `dQ = dS·K` instead of
//! recomputing `S` and `dP` (two of its three products) from Q, K, V and dO.
//!
//! The buffer holds, for every 16-query block of a sequence and every head, the block's
//! band of `16 + 2 · window` keys (144 at ±64; `window` a multiple of 16) as 16 × 16 tiles:
//! tile `kt` of query block `qb` (positions `qb ..`, a multiple of 16) is `dS` against keys
//! `qb − window + 16 · kt ..`. That is `O(total · window)` elements, never `S²`: 117 MB
//! for 32 768 tokens in 64 sequences of 12 heads in bf16 (113 MB of tiles, and room for
//! each sequence's last block, below).
//!
//! A tile is stored as the dQ kernel's A operand: the 8 values lane `l` of a plane holds
//! (registers 0–3, two values each, `mma_tiles.rs`) at elements `8l .. 8l + 8`, so that each
//! lane loads them with one 16-byte read and a plane reads 512 contiguous bytes
//! ([`band_score_operand`]); the dK/dV kernel, which holds the tile's transpose (its 16 keys
//! against a chunk's 16 queries), reorders it through shared memory and writes it the same
//! way ([`write_band_scores`]). The tiles of a head lie together, those of a block's heads
//! after one another, and sequence `b`'s blocks from block `⌊start / 16⌋ + b` on (`start` its
//! first token), which leaves each sequence's last block room for 16 rows: the buffer has
//! `⌊total / 16⌋ + batch` blocks ([`band_score_rows`]). Tiles of keys wholly outside the
//! sequence are never written and read as zeros; the dK/dV kernel writes every other tile of
//! every block of the sequence, masked entries and rows past its end as zeros.

use cubecl::prelude::*;

use super::band::band_columns;
use super::kernel_cmma::TILE;
use super::mma_tiles::{scratch_stride, AccPair, MmaCube, Pair, MMA_N};

/// Rows of the banded dS buffer, `[rows, heads, 16 + 2 · window]` (see the module doc), for
/// `total` tokens in `batch` sequences.
pub fn band_score_rows(total: usize, batch: usize) -> usize {
    TILE * (total / TILE + batch)
}

/// Vector (of `N`) of the banded dS where tile `kt` of the 16-query block at position
/// `block_start` of the cube's sequence starts.
#[cube]
fn tile_start<N: Size>(
    cube: &MmaCube,
    block_start: usize,
    #[comptime] kt: usize,
    #[comptime] window: usize,
) -> usize {
    let tiles = comptime!(band_columns(window) / TILE);
    let vector = N::value();
    let block = cube.range.start / TILE + CUBE_POS_Z as usize + block_start / TILE;
    ((block * cube.heads + cube.head) * tiles + kt) * comptime!(TILE * TILE / vector)
}

/// Element of a tile stored as an A operand (see the module doc) that holds row (query)
/// `q`, column (key) `k`: lane `4 (q % 8) + (k % 8) / 2`, register `q / 8 + 2 (k / 8)`,
/// value `k % 2`.
fn operand_element(q: usize, k: usize) -> usize {
    8 * (4 * (q % 8) + (k % 8) / 2) + 2 * (q / 8 + 2 * (k / 8)) + k % 2
}

/// Writes one tile of the banded dS from the dK/dV kernel: `ds_t`, the plane's `dSᵀ` over
/// the 16 queries of its band's columns `j0 ..` (rows = the plane's keys, columns = queries,
/// unscaled), reordered through the plane's 16 rows of the kernel's output `scratch` (free
/// while the chunks run). A block of queries wholly outside the sequence (uniform over the
/// plane) is skipped.
#[cube]
pub fn write_band_scores<F: Float, N: Size>(
    ds_t: &Sequence<Array<AccPair>>,
    scratch: &mut SharedMemory<F>,
    ds: &mut Array<Vector<F, N>>,
    cube: &MmaCube,
    #[comptime] j0: usize,
    #[comptime] window: usize,
    #[comptime] head_dim: usize,
) {
    let base = cube.first_row * scratch_stride::<F>(head_dim);
    let lane = UNIT_POS_X as usize;
    let g = cube.g;
    let t = cube.t;
    // The lane holds dSᵀ[key g + 8e][query 8n + 2t + c]: element (query, key) of the tile,
    // stored with 2 elements of padding after every 64 (64t + ..., so 2t), which puts the
    // lanes' stores of one accumulator pair in distinct banks.
    #[unroll]
    for n in 0..comptime!(TILE / MMA_N) {
        #[unroll]
        for e in 0..comptime!(2usize) {
            let pair = ds_t.index(n)[e];
            #[unroll]
            for c in 0..comptime!(2usize) {
                // operand_element(8n + 2t + c, g + 8e), split into its constant and lane parts.
                let constant = comptime!(operand_element(n * MMA_N + c, 8 * e));
                let element = constant + 64 * t + 8 * (g / 2) + g % 2;
                scratch[base + element + 2 * t] = F::cast_from(pair[c]);
            }
        }
    }
    sync_plane();
    // The queries' block starts at position row0 + first_row − window + j0; the keys' block
    // (row0 + first_row) is tile (2 · window − j0) / 16 of its band.
    let shifted = cube.row0 + cube.first_row + j0;
    if shifted >= window && shifted < cube.range.len + window {
        let vector = N::value();
        let first = tile_start::<N>(
            cube,
            shifted - window,
            comptime!((2 * window - j0) / TILE),
            window,
        );
        #[unroll]
        for p in 0..comptime!(8 / vector) {
            let mut value = Vector::<F, N>::empty();
            #[unroll]
            for v in 0..vector {
                // Element 8 · lane + p · vector + v, padded by 2 per 64 as stored above.
                value[v] = scratch[base + 8 * lane + 2 * (lane / 8) + p * vector + v];
            }
            ds[first + lane * comptime!(8 / vector) + p] = value;
        }
    }
    sync_plane();
}

/// The A operand (16 queries × 16 keys) of `dS` for the plane's 16 queries against tile `kt`
/// of their band (keys `qb − window + 16 · kt ..`), one 16-byte load per lane: zeros for a
/// tile whose keys or queries lie wholly outside the sequence (uniform over the plane).
#[cube]
pub fn band_score_operand<F: Float, N: Size>(
    ds: &Array<Vector<F, N>>,
    cube: &MmaCube,
    #[comptime] kt: usize,
    #[comptime] window: usize,
) -> Array<Pair<F>> {
    let vector = N::value();
    let range = &cube.range;
    let block_start = cube.row0 + cube.first_row;
    // The tile's first key, counted from `window` before it.
    let key_shifted = block_start + comptime!(TILE * kt);
    let in_sequence =
        block_start < range.len && key_shifted + TILE > window && key_shifted < range.len + window;
    let mut values = Array::<F>::new(8usize);
    #[unroll]
    for e in 0..comptime!(8usize) {
        values[e] = F::new(0.0);
    }
    if in_sequence {
        let lane = UNIT_POS_X as usize;
        let first = tile_start::<N>(cube, block_start, kt, window) + lane * comptime!(8 / vector);
        #[unroll]
        for p in 0..comptime!(8 / vector) {
            let value = ds[first + p];
            #[unroll]
            for v in 0..vector {
                values[p * vector + v] = value[v];
            }
        }
    }
    let mut a = Array::<Pair<F>>::new(4usize);
    #[unroll]
    for r in 0..comptime!(4usize) {
        let mut pair = Pair::<F>::empty();
        pair[0] = values[2 * r];
        pair[1] = values[2 * r + 1];
        a[r] = pair;
    }
    a
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Where element `e` of a tile lies in its plane's part of the dK/dV kernel's scratch
    /// (`write_band_scores`): 2 elements of padding after every 64.
    fn scratch_element(e: usize) -> usize {
        e + 2 * (e / 64)
    }

    /// Sequence `b`'s 16-query blocks, from block `⌊start / 16⌋ + b` on, never overlap the
    /// next sequence's and end within `band_score_rows`, for every split of up to 70 tokens
    /// into up to 5 sequences (empty ones included).
    #[test]
    fn sequences_blocks_fit_the_buffer_without_overlap() {
        fn check(lengths: &[usize]) {
            let total: usize = lengths.iter().sum();
            let mut start = 0;
            let mut next_free = 0;
            for (b, &len) in lengths.iter().enumerate() {
                let first = start / TILE + b;
                assert!(first >= next_free, "{lengths:?}: sequence {b} overlaps");
                next_free = first + len.div_ceil(TILE);
                start += len;
            }
            let rows = band_score_rows(total, lengths.len());
            assert!(
                next_free * TILE <= rows,
                "{lengths:?}: {next_free} blocks, {rows} rows"
            );
        }
        let mut lengths = Vec::new();
        fn splits(lengths: &mut Vec<usize>, left: usize, check: &dyn Fn(&[usize])) {
            if !lengths.is_empty() {
                check(lengths);
            }
            if lengths.len() == 5 {
                return;
            }
            for len in 0..=left {
                lengths.push(len);
                splits(lengths, left - len, check);
                lengths.pop();
            }
        }
        splits(&mut lengths, 70, &check);
    }

    /// The A-operand order is a permutation of the tile, the dK/dV kernel's padded scratch
    /// places its lanes' stores of one accumulator pair in distinct banks (two lanes per
    /// 4-byte word), and its split of the element into constant and lane parts is exact.
    #[test]
    fn operand_order_and_scratch_banks() {
        let mut seen = vec![false; TILE * TILE];
        for q in 0..TILE {
            for k in 0..TILE {
                let e = operand_element(q, k);
                assert!(!seen[e], "element {e} twice");
                seen[e] = true;
            }
        }
        for n in 0..TILE / MMA_N {
            for e in 0..2 {
                for c in 0..2 {
                    let mut words = std::collections::HashMap::new();
                    for lane in 0..32 {
                        let (g, t) = (lane / 4, lane % 4);
                        let element = operand_element(n * MMA_N + 2 * t + c, g + 8 * e);
                        let split =
                            operand_element(n * MMA_N + c, 8 * e) + 64 * t + 8 * (g / 2) + g % 2;
                        assert_eq!(element, split, "lane {lane}");
                        assert_eq!(scratch_element(element), element + 2 * t);
                        let word = scratch_element(element) / 2;
                        words.entry(word % 32).or_insert_with(Vec::new).push(word);
                    }
                    for (bank, list) in words {
                        let distinct: std::collections::HashSet<_> = list.iter().collect();
                        assert_eq!(distinct.len(), 1, "bank {bank}: words {list:?}");
                    }
                }
            }
        }
        // Reading lane l's 8 elements: 8l .. 8l + 8, padded as the kernel reads them.
        for lane in 0..32 {
            for v in 0..8 {
                assert_eq!(scratch_element(8 * lane + v), 8 * lane + 2 * (lane / 8) + v);
            }
        }
    }
}
