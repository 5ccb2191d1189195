//! Which keys a block of queries sees (cube code shared by the plain and the tensor-core
//! kernels): the sequence a cube works on, the key range its queries can reach, and the
//! per-pair mask.
//!
//! Both kernels launch the grid `(ceil(max_seqlen / block_m), heads, batch)`: cube
//! `(x, head, z)` owns queries `x·block_m ..` of sequence `z`. Key tiles wholly outside
//! [`QueryBlock::k_lo`]`..`[`QueryBlock::k_hi`] are never loaded.

use cubecl::prelude::*;

/// Stand-in for −∞ (WGSL has no infinity literal): far below any real score.
pub const NEG_BIG: f32 = -1.0e30;

/// A cube's queries and the keys they can see, as positions within the sequence.
#[derive(CubeType, Clone)]
pub struct QueryBlock {
    /// First token of the sequence in the packed tensors.
    pub start: usize,
    /// Tokens in the sequence.
    pub len: usize,
    /// First key any query of the block sees.
    pub k_lo: usize,
    /// One past the last key any query of the block sees; `k_lo == k_hi` when the block lies
    /// past the sequence end (every unit of the cube agrees, so barriers stay uniform).
    pub k_hi: usize,
}

/// The block of queries `q0 .. q0 + block_m` of sequence `sequence`: global attention sees
/// the whole sequence, a window of ±`window` sees `[q0 − window, q_last + window]`.
#[cube]
pub fn query_block<I: Numeric>(
    cu_seqlens: &Array<I>,
    sequence: usize,
    q0: usize,
    block_m: usize,
    window: usize,
    #[comptime] windowed: bool,
) -> QueryBlock {
    let start = u32::cast_from(cu_seqlens[sequence]) as usize;
    let len = u32::cast_from(cu_seqlens[sequence + 1]) as usize - start;
    let mut k_lo = 0;
    let mut k_hi = 0;
    if q0 < len {
        k_hi = len;
        if windowed {
            let q_last = select(q0 + block_m < len, q0 + block_m, len) - 1;
            k_lo = q0 - select(q0 < window, q0, window);
            k_hi = select(len < q_last + window + 1, len, q_last + window + 1);
        }
    }
    QueryBlock {
        start,
        len,
        k_lo,
        k_hi,
    }
}

/// The tiles of a cube's range that one launch of a plain kernel walks (`passes.rs`).
#[derive(CubeType)]
pub struct PassTiles {
    /// First tile (index from the range's start).
    pub begin: usize,
    /// One past the last tile; `begin` when the launch has none for this cube.
    pub end: usize,
    /// Whether the launch has tiles for this cube (uniform over the cube).
    pub active: bool,
    /// Whether the launch walks the cube's last tile.
    pub last: bool,
}

/// Tiles `tile_begin .. tile_begin + tile_count` of the `block_n`-row tiles over
/// `lo .. hi`, clipped to those that exist.
#[cube]
pub fn pass_tiles(
    lo: usize,
    hi: usize,
    tile_begin: u32,
    tile_count: u32,
    #[comptime] block_n: usize,
) -> PassTiles {
    let tiles = (hi - lo).div_ceil(block_n);
    let begin = tile_begin as usize;
    let active = begin < tiles;
    let end = begin + tile_count as usize;
    let end = select(active, select(tiles < end, tiles, end), begin);
    PassTiles {
        begin,
        end,
        active,
        last: active && end == tiles,
    }
}

/// Whether query `qi` sees key `key` (positions in the sequence), given that keys at or past
/// `k_hi` are outside the block's range (or the sequence).
#[cube]
pub fn key_visible(
    qi: usize,
    key: usize,
    k_hi: usize,
    window: usize,
    #[comptime] windowed: bool,
) -> bool {
    let mut visible = key < k_hi;
    if windowed {
        visible = visible && qi <= key + window && key <= qi + window;
    }
    visible
}

/// Whether every pair of a tile is visible, so that it needs no mask: own rows
/// `row0 .. row0 + rows` all lie in the sequence of `len`, columns `col0 .. col0 + cols` all
/// before `col_hi`, and, with a window, every row within `window` of every column. The
/// mask is symmetric, so rows may be queries (columns keys) or the other way round.
#[cube]
#[allow(clippy::too_many_arguments)]
pub fn tile_unmasked(
    row0: usize,
    len: usize,
    col0: usize,
    col_hi: usize,
    window: usize,
    #[comptime] rows: usize,
    #[comptime] cols: usize,
    #[comptime] windowed: bool,
) -> bool {
    let mut unmasked = row0 + rows <= len && col0 + cols <= col_hi;
    if windowed {
        unmasked = unmasked && row0 + rows <= col0 + window + 1 && col0 + cols <= row0 + window + 1;
    }
    unmasked
}

/// Where a unit of a plain kernel works: cube `(x, head, sequence)` of the grid
/// `(ceil(max_seqlen / units), heads, batch)` owns `units` consecutive rows (queries, or keys
/// in the dK/dV kernel), one per unit.
#[derive(CubeType)]
pub struct UnitRow {
    /// The cube's sequence and the range of rows on the other side its rows see.
    pub range: QueryBlock,
    /// The attention head.
    pub head: usize,
    /// This unit's index in the cube.
    pub unit: usize,
    /// Units (and rows) per cube.
    pub units: usize,
    /// This unit's row (position in the sequence; at or past its end for idle units).
    pub position: usize,
}

/// Attention heads of the launch: every attention kernel's grid is `(query blocks, heads,
/// sequences)`. Taken from the grid so that the kernels can take q, k, v as `Array`s: a
/// `Tensor` argument makes CubeCL upload its shape and strides before every launch.
#[cube]
pub fn heads() -> usize {
    CUBE_COUNT_Y as usize
}

/// The cube's rows and this unit's row, for a 1-D cube of `CUBE_DIM_X` units.
#[cube]
pub fn unit_row<I: Numeric>(
    cu_seqlens: &Array<I>,
    window: usize,
    #[comptime] windowed: bool,
) -> UnitRow {
    let units = CUBE_DIM_X as usize;
    let unit = UNIT_POS_X as usize;
    let first = CUBE_POS_X as usize * units;
    let range = query_block(
        cu_seqlens,
        CUBE_POS_Z as usize,
        first,
        units,
        window,
        windowed,
    );
    UnitRow {
        range,
        head: CUBE_POS_Y as usize,
        unit,
        units,
        position: first + unit,
    }
}
