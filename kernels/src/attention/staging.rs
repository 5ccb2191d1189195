//! Staging tiles of one head's rows from global into shared memory (cube code shared by all
//! attention kernels): every unit of the cube takes part, and rows at or past the end of the
//! visible range are filled with zeros, so products over a partial tile need no mask of
//! their own (the mask is applied to the scores, `tiling.rs`).
//!
//! Rows are positions within the sequence that starts at packed token `start`; the tensors
//! are `[total, heads, head_dim]` (or `[total, heads]` for per-row values), contiguous.

use cubecl::prelude::barrier::copy_async;
use cubecl::prelude::*;

use super::kernel_cmma::PAD;

/// Copies rows `first .. first + rows` of one head of `src` into `tile` (row stride
/// `head_dim + PAD`, in the input dtype, as the cmma kernels read it), zeros at and past
/// `end`. All `units` units of the cube take part: [`load_rows`] then [`store_rows`].
#[cube]
#[allow(clippy::too_many_arguments)]
pub fn stage_rows<F: Float, N: Size>(
    src: &Array<Vector<F, N>>,
    tile: &mut SharedMemory<Vector<F, N>>,
    start: usize,
    first: usize,
    end: usize,
    head: usize,
    heads: usize,
    unit: usize,
    #[comptime] rows: usize,
    #[comptime] head_dim: usize,
    #[comptime] units: usize,
) {
    let held = load_rows(
        src, start, first, end, head, heads, unit, rows, head_dim, units,
    );
    store_rows(&held, tile, unit, rows, head_dim, units);
}

/// This unit's share of rows `first .. first + rows` of one head of `src`, in registers:
/// vector `unit + i · units` of the rows (row-major, `head_dim / vector` per row) as element
/// `i`, zeros at and past `end` and past the rows ([`stage_rows`] stores them).
///
/// A tile wholly before `end` (every tile but a sequence's last) takes whole vectors
/// without a per-element choice: `first`, `rows` and `end` are the same for the whole cube,
/// so the branch is uniform. There a unit's vectors are `units / (head_dim / vector)` rows
/// apart in the same column, one multiply-add from the first's index each, and they are read
/// without the launch's bounds check: every row lies before `end`, which is within the
/// sequence (`cu_seqlens` is validated on the host against the tensors' shapes), and a
/// checked read of an f16/bf16 vector would select zero element by element.
#[cube]
#[allow(clippy::too_many_arguments)]
pub fn load_rows<F: Float, N: Size>(
    src: &Array<Vector<F, N>>,
    start: usize,
    first: usize,
    end: usize,
    head: usize,
    heads: usize,
    unit: usize,
    #[comptime] rows: usize,
    #[comptime] head_dim: usize,
    #[comptime] units: usize,
) -> Array<Vector<F, N>> {
    let vector = N::value();
    let row_vectors = comptime!(head_dim / vector);
    let count = comptime!(rows * head_dim / vector);
    let per_unit = comptime!(count.div_ceil(units));
    let mut held = Array::<Vector<F, N>>::new(per_unit);
    if first + rows <= end && comptime!(count % units == 0 && units % row_vectors == 0) {
        let row_step = comptime!(units / row_vectors);
        let position = first + unit / row_vectors;
        let base = ((start + position) * heads + head) * row_vectors + unit % row_vectors;
        let stride = row_step * heads * row_vectors;
        #[unroll]
        for i in 0..per_unit {
            held[i] = src.read_unchecked(base + i * stride);
        }
    } else {
        #[unroll]
        for i in 0..per_unit {
            let e = unit + i * units;
            let position = first + e / row_vectors;
            let mut value = Vector::<F, N>::new(F::new(0.0));
            if e < count && position < end {
                value = src[((start + position) * heads + head) * row_vectors + e % row_vectors];
            }
            held[i] = value;
        }
    }
    held
}

/// Writes what [`load_rows`] returned into `tile` (row stride `head_dim + PAD`).
#[cube]
pub fn store_rows<F: Float, N: Size>(
    held: &Array<Vector<F, N>>,
    tile: &mut SharedMemory<Vector<F, N>>,
    unit: usize,
    #[comptime] rows: usize,
    #[comptime] head_dim: usize,
    #[comptime] units: usize,
) {
    let vector = N::value();
    let row_vectors = comptime!(head_dim / vector);
    let tile_row_vectors = comptime!((head_dim + PAD) / vector);
    let count = comptime!(rows * head_dim / vector);
    if comptime!(count % units == 0 && units % row_vectors == 0) {
        // As in `load_rows`: the unit's vectors are rows apart in one column.
        let base = (unit / row_vectors) * tile_row_vectors + unit % row_vectors;
        #[unroll]
        for i in 0..comptime!(count / units) {
            tile[base + comptime!(i * (units / row_vectors) * tile_row_vectors)] = held[i];
        }
    } else {
        #[unroll]
        for i in 0..comptime!(count.div_ceil(units)) {
            let e = unit + i * units;
            if e < count {
                tile[(e / row_vectors) * tile_row_vectors + e % row_vectors] = held[i];
            }
        }
    }
}

/// Copies rows `first .. first + rows` of one head of two tensors into two f32 tiles (row
/// stride `head_dim`, no padding, as the plain kernels read them), zeros at and past `end`.
/// The `units` units of the cube (`unit` is this one) take elements in turn.
#[cube]
#[allow(clippy::too_many_arguments)]
pub fn stage_rows_f32_pair<F: Float>(
    a: &Array<F>,
    b: &Array<F>,
    a_tile: &mut SharedMemory<f32>,
    b_tile: &mut SharedMemory<f32>,
    start: usize,
    first: usize,
    end: usize,
    head: usize,
    heads: usize,
    unit: usize,
    units: usize,
    #[comptime] rows: usize,
    #[comptime] head_dim: usize,
) {
    let mut e = unit;
    while e < rows * head_dim {
        let position = first + e / head_dim;
        let mut av = 0.0;
        let mut bv = 0.0;
        if position < end {
            let index = ((start + position) * heads + head) * head_dim + e % head_dim;
            av = f32::cast_from(a[index]);
            bv = f32::cast_from(b[index]);
        }
        a_tile[e] = av;
        b_tile[e] = bv;
        e += units;
    }
}

/// Copies the per-row values `first .. first + rows` of one head of two `[total, heads]` f32
/// tensors (lse and D in the backward) into two tiles, zeros at and past `end`.
#[cube]
#[allow(clippy::too_many_arguments)]
pub fn stage_row_values_pair(
    a: &Array<f32>,
    b: &Array<f32>,
    a_tile: &mut SharedMemory<f32>,
    b_tile: &mut SharedMemory<f32>,
    start: usize,
    first: usize,
    end: usize,
    head: usize,
    heads: usize,
    unit: usize,
    units: usize,
    #[comptime] rows: usize,
) {
    let mut i = unit;
    while i < rows {
        let position = first + i;
        let mut av = 0.0;
        let mut bv = 0.0;
        if position < end {
            let index = (start + position) * heads + head;
            av = a[index];
            bv = b[index];
        }
        a_tile[i] = av;
        b_tile[i] = bv;
        i += units;
    }
}

/// Issues asynchronous copies (`cp.async`, CUDA sm80+, `N` of 2, 4 or 8 two-byte elements)
/// of rows `first .. first + rows` of one head of `src` into `tile` from vector `tile_start`
/// (row stride `head_dim + PAD`, as [`store_rows`] writes it), and stores zeros at and past
/// `end`. All `units` units of the cube take part. The copies bypass registers and land
/// when the caller's barrier, to which each unit then commits them
/// (`Barrier::commit_copy_async`), completes its phase; the zeros are visible from then too.
#[cube]
#[allow(clippy::too_many_arguments)]
pub fn copy_rows_async<F: Float, N: Size>(
    src: &Array<Vector<F, N>>,
    tile: &mut SharedMemory<Vector<F, N>>,
    tile_start: usize,
    start: usize,
    first: usize,
    end: usize,
    head: usize,
    heads: usize,
    unit: usize,
    #[comptime] rows: usize,
    #[comptime] head_dim: usize,
    #[comptime] units: usize,
) {
    copy_shifted_rows_async(
        src, tile, tile_start, start, first, end, head, heads, unit, 0usize, 0usize, rows,
        head_dim, units,
    );
}

/// As [`copy_rows_async`], with the rows counted from `shift` positions before the sequence
/// start (the sliding-window kernel's key span begins `window` before its first query, which
/// may lie before the sequence): tile row `i` holds position `first + i − shift`, zeros where
/// that lies before the sequence or at and past `end`. With a `ring` of rows (0: none), the
/// tile is that many rows from vector 0 and rows past its end continue at its start
/// (`tile_start` lies within it).
#[cube]
#[allow(clippy::too_many_arguments)]
pub fn copy_shifted_rows_async<F: Float, N: Size>(
    src: &Array<Vector<F, N>>,
    tile: &mut SharedMemory<Vector<F, N>>,
    tile_start: usize,
    start: usize,
    first: usize,
    end: usize,
    head: usize,
    heads: usize,
    unit: usize,
    #[comptime] shift: usize,
    #[comptime] ring: usize,
    #[comptime] rows: usize,
    #[comptime] head_dim: usize,
    #[comptime] units: usize,
) {
    let vector = N::value();
    let row_vectors = comptime!(head_dim / vector);
    let tile_row_vectors = comptime!((head_dim + PAD) / vector);
    let count = comptime!(rows * head_dim / vector);
    #[unroll]
    for i in 0..comptime!(count.div_ceil(units)) {
        let e = unit + i * units;
        if comptime!(count % units == 0) || e < count {
            let row = e / row_vectors;
            let column = e % row_vectors;
            let mut at = tile_start + row * tile_row_vectors + column;
            if comptime!(ring > 0) {
                at %= comptime!(ring * tile_row_vectors);
            }
            let mut destination = tile.slice_mut(at, at + 1);
            let shifted = first + row;
            if shifted >= shift && shifted < end + shift {
                // In range: `cu_seqlens` is validated on the host against the shapes.
                let index = ((start + shifted - shift) * heads + head) * row_vectors + column;
                copy_async(
                    &src.slice(index, index + 1),
                    &mut destination,
                    comptime!(vector as u32),
                );
            } else {
                destination[0] = Vector::new(F::new(0.0));
            }
        }
    }
}

/// As [`copy_shifted_rows_async`], for the per-row values of one head of two `[total, heads]`
/// f32 tensors (lse and D in the backward) into two tiles from `tile_start`: tile row `i`
/// holds position `first + i − shift`, zero where that lies before the sequence or at and
/// past `end`. The `units` units of the cube take the `2 · rows` values in turn, those of `a`
/// first.
#[cube]
#[allow(clippy::too_many_arguments)]
pub fn copy_row_values_pair_async(
    a: &Array<f32>,
    b: &Array<f32>,
    a_tile: &mut SharedMemory<f32>,
    b_tile: &mut SharedMemory<f32>,
    tile_start: usize,
    start: usize,
    first: usize,
    end: usize,
    head: usize,
    heads: usize,
    unit: usize,
    #[comptime] shift: usize,
    #[comptime] rows: usize,
    #[comptime] units: usize,
) {
    let count = comptime!(2 * rows);
    #[unroll]
    for i in 0..comptime!(count.div_ceil(units)) {
        let e = unit + i * units;
        if comptime!(count % units == 0) || e < count {
            let row = e % rows;
            let shifted = first + row;
            let in_range = shifted >= shift && shifted < end + shift;
            // Wraps outside the range, where it is not read.
            let index = (start + shifted - shift) * heads + head;
            let at = tile_start + row;
            if e < rows {
                copy_value_async(a, index, a_tile, at, in_range);
            } else {
                copy_value_async(b, index, b_tile, at, in_range);
            }
        }
    }
}

/// Issues the asynchronous copy of `src[index]` into `tile[at]` (as [`copy_rows_async`]), or
/// stores zero there when the value lies outside the range.
#[cube]
fn copy_value_async(
    src: &Array<f32>,
    index: usize,
    tile: &mut SharedMemory<f32>,
    at: usize,
    in_range: bool,
) {
    let mut destination = tile.slice_mut(at, at + 1);
    if in_range {
        copy_async(
            &src.slice(index, index + 1),
            &mut destination,
            comptime!(1u32),
        );
    } else {
        destination[0] = 0.0;
    }
}
