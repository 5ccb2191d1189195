//! Plane-level `mma.sync` m16n8k16 products with known register layouts (cube code shared by
//! the mma forward and backward kernels, CUDA sm80+ through CubeCL's [`MmaDefinition`]).
//!
//! With lane `l = 4g + t` of a 32-lane plane (`g = l / 4`, `t = l % 4`), PTX's layouts are:
//! - an accumulator (16 × 8, f32): rows `g` (pair 0) and `g + 8` (pair 1), columns
//!   `2t, 2t + 1`;
//! - an A operand (16 × 16, f16/bf16): registers 0–3 hold (row `g`, columns `2t..`),
//!   (row `g + 8`, `2t..`), (row `g`, `8 + 2t..`), (row `g + 8`, `8 + 2t..`);
//! - so two accumulators over columns `0..8` and `8..16`, narrowed, *are* the A operand of
//!   those 16 columns ([`accumulate_products`] uses scores as the left factor this way).
//!
//! Operands come from tiles staged in shared memory (rows of `head_dim` elements, row stride
//! `head_dim + PAD`, `staging.rs`) with `ldmatrix.x4`: lanes `8j .. 8j + 8` give the row
//! addresses of 8×8 matrix `j`, and the register `j` of every lane receives its part of
//! matrix `j`. The padding makes the 8 rows of a matrix fall in distinct banks.
//!
//! A plane owns `16 · m_tiles` rows (`m_tiles` is a comptime parameter of every function
//! here): row operands and accumulators of m-tile `m` follow those of m-tile `m − 1` in their
//! sequence, and each B operand read from shared memory feeds the products of all m-tiles,
//! so two m-tiles halve the shared-memory reads per product (FlashAttention-2 gives each warp
//! of its forward 32 query rows for this reason).
//!
//! Every call must be made by all 32 lanes of the plane together.

use cubecl::cmma::{MatrixIdent, MmaDefinition};
use cubecl::prelude::*;

use super::kernel_cmma::{PAD, PAD_F32, SMEM_ALIGN, TILE};
use super::staging::{load_rows, stage_rows, store_rows};
use super::tiling::{heads, key_visible, query_block, tile_unmasked, QueryBlock, NEG_BIG};

/// Columns of one accumulator (m16n8k16: 16 rows × 8 columns).
pub const MMA_N: usize = 8;
/// Lanes that share the rows of an accumulator (`t = lane % 4`).
pub const QUAD: usize = 4;

/// One 32-bit operand register: two f16/bf16 values.
pub type Pair<F> = Vector<F, Const<2>>;
/// Two f32 values of one accumulator row.
pub type AccPair = Vector<f32, Const<2>>;
/// A plane's A operands: one `16 × 16` operand per 16 columns of its rows (per m-tile).
pub type Operands<F> = Sequence<Array<Pair<F>>>;

/// Where a unit of an mma kernel works. All of them launch the grid
/// `(ceil(max_seqlen / block_m), heads, batch)` with cubes of `planes` planes of 32 lanes,
/// `block_m = 16 · m_tiles · planes`: cube `(x, head, sequence)` owns rows `x · block_m ..`
/// of the sequence (queries in the forward and dQ, keys in dK/dV), plane `p` the
/// `16 · m_tiles` from `16 · m_tiles · p`, and walks the rows on the other side that they see.
/// (The band forward's cubes walk several blocks in turn, each with its own [`mma_cube_at`].)
#[derive(CubeType)]
pub struct MmaCube {
    /// The sequence, and the range of rows on the other side (the mask is symmetric).
    pub range: QueryBlock,
    /// The attention head, and how many there are.
    pub head: usize,
    pub heads: usize,
    /// Position in the sequence of the cube's first own row.
    pub row0: usize,
    /// This unit's index in the cube (for staging).
    pub unit: usize,
    /// The plane's first row within the cube's block.
    pub first_row: usize,
    /// The lane's accumulator coordinates (`mma_tiles.rs`): rows `g`, `g + 8`, columns
    /// `2t, 2t + 1`.
    pub g: usize,
    pub t: usize,
}

/// This unit's [`MmaCube`].
#[cube]
pub fn mma_cube<I: Numeric>(
    cu_seqlens: &Array<I>,
    window: usize,
    #[comptime] planes: usize,
    #[comptime] m_tiles: usize,
    #[comptime] windowed: bool,
) -> MmaCube {
    let block = CUBE_POS_X as usize;
    mma_cube_at(cu_seqlens, window, block, planes, m_tiles, windowed)
}

/// This unit's [`MmaCube`] for block `block` of its sequence, for cubes that walk several
/// (rows `block · block_m ..`).
#[cube]
pub fn mma_cube_at<I: Numeric>(
    cu_seqlens: &Array<I>,
    window: usize,
    block: usize,
    #[comptime] planes: usize,
    #[comptime] m_tiles: usize,
    #[comptime] windowed: bool,
) -> MmaCube {
    let block_m = comptime!(TILE * m_tiles * planes);
    let lane = UNIT_POS_X as usize;
    let plane = UNIT_POS_Y as usize;
    let row0 = block * block_m;
    let range = query_block(
        cu_seqlens,
        CUBE_POS_Z as usize,
        row0,
        block_m,
        window,
        windowed,
    );
    let head = CUBE_POS_Y as usize;
    let unit = plane * 32 + lane;
    let first_row = plane * comptime!(TILE * m_tiles);
    let g = lane / QUAD;
    let t = lane % QUAD;
    MmaCube {
        range,
        head,
        heads: heads(),
        row0,
        unit,
        first_row,
        g,
        t,
    }
}

/// A shared tile of `rows` rows of `head_dim` elements, as [`stage_rows`] fills it.
#[cube]
pub fn staged_tile<F: Float, N: Size>(
    #[comptime] rows: usize,
    #[comptime] head_dim: usize,
) -> SharedMemory<Vector<F, N>> {
    SharedMemory::<Vector<F, N>>::new_aligned(tile_vectors::<N>(rows, head_dim), SMEM_ALIGN)
}

/// Vectors of `N` in a [`staged_tile`] of `rows` rows: where the second half of a double
/// buffer of two such tiles starts.
#[cube]
pub fn tile_vectors<N: Size>(
    #[comptime] rows: usize,
    #[comptime] head_dim: usize,
) -> comptime_type!(usize) {
    let vector = N::value();
    comptime!(rows * (head_dim + PAD) / vector)
}

/// Stages rows `first ..` (zeros at and past `end`) of one head of `src`, `rows` of them,
/// into `tile`, every unit of the cube together, and waits for all of them.
#[cube]
pub fn stage_and_wait<F: Float, N: Size>(
    src: &Array<Vector<F, N>>,
    tile: &mut SharedMemory<Vector<F, N>>,
    cube: &MmaCube,
    first: usize,
    end: usize,
    #[comptime] rows: usize,
    #[comptime] head_dim: usize,
    #[comptime] planes: usize,
) {
    stage_rows(
        src,
        tile,
        cube.range.start,
        first,
        end,
        cube.head,
        cube.heads,
        cube.unit,
        rows,
        head_dim,
        comptime!(32 * planes),
    );
    sync_cube();
}

/// This unit's share of the cube's `16 · planes` own rows of `src` (zeros past the sequence
/// end), loaded into registers for [`own_operand_pair`]. Loading both tensors' rows before
/// staging either makes the cube wait for one round trip to global memory, not two; loading
/// them before issuing a span's copies puts them ahead of those in the memory pipeline.
#[cube]
pub fn load_own_rows<F: Float, N: Size>(
    src: &Array<Vector<F, N>>,
    cube: &MmaCube,
    #[comptime] head_dim: usize,
    #[comptime] planes: usize,
) -> Array<Vector<F, N>> {
    let range = &cube.range;
    load_rows(
        src,
        range.start,
        cube.row0,
        range.len,
        cube.head,
        cube.heads,
        cube.unit,
        comptime!(TILE * planes),
        head_dim,
        comptime!(32 * planes),
    )
}

/// The plane's own rows of two tensors as A operands (one m-tile, one operand per 16 columns
/// of `head_dim`), from the rows [`load_own_rows`] returned for each, staged in turn through
/// `tile` (`16 · planes` rows), which holds `b`'s rows when this returns.
#[cube]
pub fn own_operand_pair<F: Float, N: Size>(
    a: &Array<Vector<F, N>>,
    b: &Array<Vector<F, N>>,
    tile: &mut SharedMemory<Vector<F, N>>,
    cube: &MmaCube,
    #[comptime] head_dim: usize,
    #[comptime] planes: usize,
) -> (Operands<F>, Operands<F>) {
    let rows = comptime!(TILE * planes);
    let units = comptime!(32 * planes);
    store_rows(a, tile, cube.unit, rows, head_dim, units);
    sync_cube();
    let a_ops = staged_operands(tile, cube, head_dim, 1usize);
    sync_cube();
    store_rows(b, tile, cube.unit, rows, head_dim, units);
    sync_cube();
    let b_ops = staged_operands(tile, cube, head_dim, 1usize);
    sync_cube();
    (a_ops, b_ops)
}

/// The plane's own rows of a staged tile of the cube's `16 · m_tiles · planes` own rows, as
/// A operands ([`own_operand_pair`]).
#[cube]
pub fn staged_operands<F: Float, N: Size>(
    tile: &SharedMemory<Vector<F, N>>,
    cube: &MmaCube,
    #[comptime] head_dim: usize,
    #[comptime] m_tiles: usize,
) -> Operands<F> {
    let def = MmaDefinition::<F, F, f32>::new(TILE, MMA_N, TILE);
    let lane = UNIT_POS_X as usize;
    let sub_row = lane % 8;
    let matrix = lane / 8;
    let mut operands = Sequence::<Array<Pair<F>>>::new();
    #[unroll]
    for m in 0..m_tiles {
        #[unroll]
        for d in 0..comptime!(head_dim / TILE) {
            // Matrix j: rows +8 if j is odd, columns +8 if j ≥ 2.
            let row = cube.first_row + m * TILE + (matrix % 2) * 8 + sub_row;
            let offset = tile_offset::<N>(row, d * TILE + (matrix / 2) * 8, head_dim);
            operands.push(def.load_matrix::<Vector<F, N>, Const<2>>(
                &tile.slice(offset, offset + 1),
                MatrixIdent::A,
                4usize,
                false,
            ));
        }
    }
    operands
}

/// `columns / 8` accumulators set to zero.
#[cube]
pub fn zero_accumulators(#[comptime] columns: usize) -> Sequence<Array<AccPair>> {
    let mut accs = Sequence::<Array<AccPair>>::new();
    #[unroll]
    for _ in 0..comptime!(columns / MMA_N) {
        let mut acc = Array::<AccPair>::new(2usize);
        acc[0usize] = AccPair::new(0.0);
        acc[1usize] = AccPair::new(0.0);
        accs.push(acc);
    }
    accs
}

/// `A·Bᵀ` for the plane's `16 · m_tiles` rows `A` (operands over `head_dim`) and the first
/// `rows` rows of a staged tile `B` that starts at vector `tile_start` of `b_tile` (0, or
/// the second half of a double buffer): `rows / 8` accumulators per m-tile, accumulator
/// `m · rows / 8 + n` for rows `8n..` of `B`.
#[cube]
pub fn scores<F: Float, N: Size>(
    a: &Operands<F>,
    b_tile: &SharedMemory<Vector<F, N>>,
    tile_start: usize,
    #[comptime] rows: usize,
    #[comptime] head_dim: usize,
    #[comptime] m_tiles: usize,
) -> Sequence<Array<AccPair>> {
    ring_scores(a, b_tile, tile_start, 0usize, rows, head_dim, m_tiles)
}

/// [`scores`] for rows staged in a ring of `ring` rows (0: a plain tile), which wraps to
/// its start ([`ring_block_start`]); `tile_start` lies within the ring.
#[cube]
pub fn ring_scores<F: Float, N: Size>(
    a: &Operands<F>,
    b_tile: &SharedMemory<Vector<F, N>>,
    tile_start: usize,
    #[comptime] ring: usize,
    #[comptime] rows: usize,
    #[comptime] head_dim: usize,
    #[comptime] m_tiles: usize,
) -> Sequence<Array<AccPair>> {
    let def = MmaDefinition::<F, F, f32>::new(TILE, MMA_N, TILE);
    let lane = UNIT_POS_X as usize;
    let sub_row = lane % 8;
    let matrix = lane / 8;
    let a_per_tile = comptime!(head_dim / TILE);
    let acc_per_tile = comptime!(rows / MMA_N);
    // B = rows of the tile, read as they are (k = columns): matrix j holds rows +8 if j ≥ 2,
    // columns +8 if j is odd, so registers 0–1 serve rows 16·n2.. and 2–3 the next 8. The
    // lane's place in a block; block (n2, d) is a constant further ([`block_offset`]).
    let lane_offset = tile_offset::<N>((matrix / 2) * 8 + sub_row, (matrix % 2) * 8, head_dim);
    let mut acc = zero_accumulators(comptime!(rows * m_tiles));
    #[unroll]
    for n2 in 0..comptime!(rows / TILE) {
        let block_start = ring_block_start::<N>(tile_start, n2, ring, head_dim) + lane_offset;
        #[unroll]
        for d in 0..comptime!(head_dim / TILE) {
            let offset = block_start + block_offset::<N>(0usize, d, head_dim);
            let b = def.load_matrix::<Vector<F, N>, Const<2>>(
                &b_tile.slice(offset, offset + 1),
                MatrixIdent::B,
                4usize,
                false,
            );
            let b_low = register_pair(&b, 0usize);
            let b_high = register_pair(&b, 1usize);
            #[unroll]
            for m in 0..m_tiles {
                let a_m = a.index(m * a_per_tile + d);
                def.execute_inplace(a_m, &b_low, acc.index_mut(m * acc_per_tile + 2 * n2));
                def.execute_inplace(a_m, &b_high, acc.index_mut(m * acc_per_tile + 2 * n2 + 1));
            }
        }
    }
    acc
}

/// Sets the scores that the mask hides to `NEG_BIG` in the plane's `16 · m_tiles × cols`
/// accumulators ([`scores`]) over own rows `row0 ..` (of a sequence of `len`) and columns
/// `col0 ..` (those at or past `col_hi` are outside the range), unless the whole tile is
/// visible ([`tile_unmasked`], uniform over the plane): then it costs one comparison. An
/// exponential of a hidden score, scaled, is 0.
#[cube]
#[allow(clippy::too_many_arguments)]
pub fn mask_scores(
    acc: &mut Sequence<Array<AccPair>>,
    row0: usize,
    len: usize,
    col0: usize,
    col_hi: usize,
    window: usize,
    #[comptime] cols: usize,
    #[comptime] m_tiles: usize,
    #[comptime] windowed: bool,
) {
    let rows = comptime!(TILE * m_tiles);
    if !tile_unmasked(row0, len, col0, col_hi, window, rows, cols, windowed) {
        let lane = UNIT_POS_X as usize;
        let g = lane / QUAD;
        let t = lane % QUAD;
        #[unroll]
        for r in 0..comptime!(2 * m_tiles) {
            let row = row0 + (r / 2) * TILE + g + 8 * (r % 2);
            let row_valid = row < len;
            #[unroll]
            for n in 0..comptime!(cols / MMA_N) {
                let index = comptime!((r / 2) * (cols / MMA_N) + n);
                let e = comptime!(r % 2);
                let mut pair = acc.index(index)[e];
                #[unroll]
                for c in 0..comptime!(2usize) {
                    let col = col0 + n * MMA_N + 2 * t + c;
                    let visible = row_valid && key_visible(row, col, col_hi, window, windowed);
                    pair[c] = select(visible, pair[c], f32::new(NEG_BIG));
                }
                let acc_n = acc.index_mut(index);
                acc_n[e] = pair;
            }
        }
    }
}

/// `acc += P·B` for the plane's `16 · m_tiles × depth` accumulators `P` (narrowed to the
/// input dtype; laid out as [`scores`] returns them) and the first `depth` rows of a staged
/// tile `B` from vector `tile_start` of `b_tile`, one accumulator per 8 columns of `head_dim`
/// per m-tile.
#[cube]
pub fn accumulate_products<F: Float, N: Size>(
    acc: &mut Sequence<Array<AccPair>>,
    p: &Sequence<Array<AccPair>>,
    b_tile: &SharedMemory<Vector<F, N>>,
    tile_start: usize,
    #[comptime] depth: usize,
    #[comptime] head_dim: usize,
    #[comptime] m_tiles: usize,
) {
    accumulate_ring_products(acc, p, b_tile, tile_start, 0usize, depth, head_dim, m_tiles);
}

/// [`accumulate_products`] for rows staged in a ring of `ring` rows (0: a plain tile), as
/// [`ring_scores`] reads them.
#[cube]
#[allow(clippy::too_many_arguments)]
pub fn accumulate_ring_products<F: Float, N: Size>(
    acc: &mut Sequence<Array<AccPair>>,
    p: &Sequence<Array<AccPair>>,
    b_tile: &SharedMemory<Vector<F, N>>,
    tile_start: usize,
    #[comptime] ring: usize,
    #[comptime] depth: usize,
    #[comptime] head_dim: usize,
    #[comptime] m_tiles: usize,
) {
    let p_per_tile = comptime!(depth / MMA_N);
    #[unroll]
    for j in 0..comptime!(depth / TILE) {
        let mut a = Sequence::<Array<Pair<F>>>::new();
        #[unroll]
        for m in 0..m_tiles {
            a.push(narrowed_operand::<F>(
                p.index(m * p_per_tile + 2 * j),
                p.index(m * p_per_tile + 2 * j + 1),
            ));
        }
        let block_start = ring_block_start::<N>(tile_start, j, ring, head_dim);
        accumulate_block_products(
            acc,
            &a,
            b_tile,
            block_start,
            0usize,
            0usize,
            head_dim,
            head_dim,
            m_tiles,
        );
    }
}

/// `acc += A·B` over one 16-row block `j` of a staged tile `B` (rows `16j..` as the depth)
/// from vector `tile_start` of `b_tile`, for the plane's A operands `a` (one per m-tile, the 16 columns of depth `16j..`) and the
/// `columns` columns of `B` from `first_column` (both multiples of 16): one accumulator per 8
/// of those columns per m-tile.
#[cube]
#[allow(clippy::too_many_arguments)]
pub fn accumulate_block_products<F: Float, N: Size>(
    acc: &mut Sequence<Array<AccPair>>,
    a: &Operands<F>,
    b_tile: &SharedMemory<Vector<F, N>>,
    tile_start: usize,
    #[comptime] j: usize,
    first_column: usize,
    #[comptime] columns: usize,
    #[comptime] head_dim: usize,
    #[comptime] m_tiles: usize,
) {
    let def = MmaDefinition::<F, F, f32>::new(TILE, MMA_N, TILE);
    let lane = UNIT_POS_X as usize;
    let sub_row = lane % 8;
    let matrix = lane / 8;
    let acc_per_tile = comptime!(columns / MMA_N);
    // B = the tile's rows j·16.. as k, transposed by `ldmatrix.trans`: matrix j holds rows +8
    // if j is odd, columns +8 if j ≥ 2, so registers 0–1 serve columns 16·d2.. and 2–3 the
    // next 8. The lane's address for block (0, 0), as in [`scores`].
    let lane_offset = tile_start
        + tile_offset::<N>(
            (matrix % 2) * 8 + sub_row,
            first_column + (matrix / 2) * 8,
            head_dim,
        );
    #[unroll]
    for d2 in 0..comptime!(columns / TILE) {
        let offset = lane_offset + block_offset::<N>(j, d2, head_dim);
        let b = def.load_matrix::<Vector<F, N>, Const<2>>(
            &b_tile.slice(offset, offset + 1),
            MatrixIdent::B,
            4usize,
            true,
        );
        let b_low = register_pair(&b, 0usize);
        let b_high = register_pair(&b, 1usize);
        #[unroll]
        for m in 0..m_tiles {
            let a_m = a.index(m);
            def.execute_inplace(a_m, &b_low, acc.index_mut(m * acc_per_tile + 2 * d2));
            def.execute_inplace(a_m, &b_high, acc.index_mut(m * acc_per_tile + 2 * d2 + 1));
        }
    }
}

/// The A operand (16 × 16) of rows `row..row + 16`, columns `column..column + 16` of a
/// scalar shared tile whose rows are `width + PAD` elements.
#[cube]
pub fn tile_operand<F: Float>(
    tile: &SharedMemory<F>,
    row: usize,
    column: usize,
    #[comptime] width: usize,
) -> Array<Pair<F>> {
    let def = MmaDefinition::<F, F, f32>::new(TILE, MMA_N, TILE);
    let lane = UNIT_POS_X as usize;
    // Matrix j: rows +8 if j is odd, columns +8 if j ≥ 2 (as in [`own_operand_pair`]).
    let matrix = lane / 8;
    let offset = tile_offset::<Const<1>>(
        row + (matrix % 2) * 8 + lane % 8,
        column + (matrix / 2) * 8,
        width,
    );
    def.load_matrix::<F, Const<2>>(
        &tile.slice(offset, offset + 1),
        MatrixIdent::A,
        4usize,
        false,
    )
}

/// The scratch of [`write_rows`]: `block_m` rows of `head_dim` (+ padding) elements of `E`,
/// the output's dtype where nothing else needs f32 (half the shared memory).
#[cube]
pub fn output_scratch<E: Float>(
    #[comptime] block_m: usize,
    #[comptime] head_dim: usize,
) -> SharedMemory<E> {
    let stride = scratch_stride::<E>(head_dim);
    SharedMemory::<E>::new_aligned(comptime!(block_m * stride), SMEM_ALIGN)
}

/// Elements per row of an [`output_scratch`] of `E`: padded so that the lanes of a plane
/// writing their accumulator pairs hit distinct banks.
#[cube]
pub fn scratch_stride<E: Float>(#[comptime] head_dim: usize) -> comptime_type!(usize) {
    let bytes = E::type_size();
    comptime!(head_dim + if bytes == 4 { PAD_F32 } else { PAD })
}

/// Writes the plane's `16 · m_tiles` own rows of `head_dim / 8` accumulators per m-tile,
/// row `g + 8e` of m-tile `m` multiplied by `row_scale[2m + e]`, to `out` (one head),
/// skipping rows at or past the sequence end ([`write_row_columns`] over whole rows).
#[cube]
#[allow(clippy::too_many_arguments)]
pub fn write_rows<F: Float, N: Size, E: Float>(
    acc: &Sequence<Array<AccPair>>,
    row_scale: &Array<f32>,
    scratch: &mut SharedMemory<E>,
    out: &mut Array<Vector<F, N>>,
    cube: &MmaCube,
    #[comptime] head_dim: usize,
    #[comptime] m_tiles: usize,
) {
    write_row_columns(
        acc, row_scale, scratch, out, cube, 0usize, head_dim, head_dim, head_dim, m_tiles,
    );
}

/// Writes the plane's `16 · m_tiles` own rows of `columns / 8` accumulators per m-tile, row
/// `g + 8e` of m-tile `m` multiplied by `row_scale[2m + e]`, to columns `first_column ..
/// first_column + columns` of rows of `row_width` elements of `out` (one head), skipping
/// rows at or past the sequence end. The rows go through the plane's rows of `scratch`
/// ([`output_scratch`] for `head_dim`, f32 or `F`, `columns ≤ head_dim`) to leave as vector
/// stores, two lanes per row; the scratch is free again when this returns.
#[cube]
#[allow(clippy::too_many_arguments)]
pub fn write_row_columns<F: Float, N: Size, E: Float>(
    acc: &Sequence<Array<AccPair>>,
    row_scale: &Array<f32>,
    scratch: &mut SharedMemory<E>,
    out: &mut Array<Vector<F, N>>,
    cube: &MmaCube,
    #[comptime] first_column: usize,
    #[comptime] columns: usize,
    #[comptime] row_width: usize,
    #[comptime] head_dim: usize,
    #[comptime] m_tiles: usize,
) {
    let scratch_stride = scratch_stride::<E>(head_dim);
    let acc_per_tile = comptime!(columns / MMA_N);
    let lane = UNIT_POS_X as usize;
    let first_row = cube.first_row;
    let g = cube.g;
    let t = cube.t;
    #[unroll]
    for r in 0..comptime!(2 * m_tiles) {
        let row = first_row + (r / 2) * TILE + g + 8 * (r % 2);
        #[unroll]
        for n in 0..acc_per_tile {
            let acc_n = acc.index(comptime!((r / 2) * acc_per_tile + n));
            let pair = acc_n[comptime!(r % 2)];
            #[unroll]
            for c in 0..comptime!(2usize) {
                scratch[row * scratch_stride + n * MMA_N + 2 * t + c] =
                    E::cast_from(pair[c] * row_scale[r]);
            }
        }
    }
    sync_plane();
    let vector = N::value();
    let lanes_per_row = comptime!(32 / TILE);
    let row_vectors = comptime!(row_width / vector);
    let first_vector = comptime!(first_column / vector);
    #[unroll]
    for m in 0..m_tiles {
        let row = first_row + m * TILE + lane / lanes_per_row;
        let part = lane % lanes_per_row;
        let position = cube.row0 + row;
        if position < cube.range.len {
            let token_head = (cube.range.start + position) * cube.heads + cube.head;
            #[unroll]
            for j in 0..comptime!(columns / vector / lanes_per_row) {
                let chunk = j * lanes_per_row + part;
                let mut value = Vector::<F, N>::empty();
                #[unroll]
                for e in 0..vector {
                    value[e] = F::cast_from(scratch[row * scratch_stride + chunk * vector + e]);
                }
                out[token_head * row_vectors + first_vector + chunk] = value;
            }
        }
    }
    sync_plane();
}

/// Writes the plane's 16 own rows of `head_dim / 8` accumulators, times `scale`, straight
/// from the registers to `out` (one head, rows of `head_dim` elements stored as pairs): each
/// lane stores its pair of each 8-column block, rows at or past the sequence end skipped.
/// Unlike [`write_rows`] it needs no shared memory, so a kernel whose cubes per SM the
/// scratch would limit (the band dQ kernel) keeps them; the stores are 4 bytes where the
/// scratch's are vectors, which costs little once per cube.
#[cube]
pub fn write_scaled_pairs<F: Float>(
    acc: &Sequence<Array<AccPair>>,
    scale: f32,
    out: &mut Array<Pair<F>>,
    cube: &MmaCube,
    #[comptime] head_dim: usize,
) {
    let row_pairs = comptime!(head_dim / 2);
    #[unroll]
    for e in 0..comptime!(2usize) {
        let position = cube.row0 + cube.first_row + cube.g + 8 * e;
        if position < cube.range.len {
            let first_pair = ((cube.range.start + position) * cube.heads + cube.head) * row_pairs;
            #[unroll]
            for n in 0..comptime!(head_dim / MMA_N) {
                let pair = acc.index(n)[e];
                let mut scaled = AccPair::empty();
                scaled[0] = pair[0] * scale;
                scaled[1] = pair[1] * scale;
                out[first_pair + n * comptime!(MMA_N / 2) + cube.t] = Pair::<F>::cast_from(scaled);
            }
        }
    }
}

/// Offset, in vectors of `N`, of element `column` of row `row` of a staged tile.
#[cube]
pub fn tile_offset<N: Size>(row: usize, column: usize, #[comptime] head_dim: usize) -> usize {
    (row * comptime!(head_dim + PAD) + column) / N::value()
}

/// Offset, in vectors of `N`, of the 16 × 16 block `(block_row, block_column)` of a staged
/// tile: a constant, so that an `ldmatrix` address is the lane's register plus an immediate.
/// (Rows are `head_dim + PAD` elements, a multiple of 8, so every block and every lane's
/// 8-element row start is a whole number of vectors.)
#[cube]
fn block_offset<N: Size>(
    #[comptime] block_row: usize,
    #[comptime] block_column: usize,
    #[comptime] head_dim: usize,
) -> comptime_type!(usize) {
    let vector = N::value();
    comptime!((block_row * TILE * (head_dim + PAD) + block_column * TILE) / vector)
}

/// Offset, in vectors of `N`, of the 16-row block `block` of the rows staged from vector
/// `tile_start` of a ring of `ring` rows (0: a plain tile, where it is a constant further):
/// past the ring's end the rows continue at its start. `tile_start` lies within the ring and
/// the block less than a ring further, so one wrap suffices.
#[cube]
pub fn ring_block_start<N: Size>(
    tile_start: usize,
    #[comptime] block: usize,
    #[comptime] ring: usize,
    #[comptime] head_dim: usize,
) -> usize {
    let start = tile_start + block_offset::<N>(block, 0usize, head_dim);
    if comptime!(ring > 0) {
        let ring_vectors = tile_vectors::<N>(ring, head_dim);
        select(start >= ring_vectors, start - ring_vectors, start)
    } else {
        start
    }
}

/// Registers `2h, 2h + 1` of an `ldmatrix.x4` result: one B operand (16 × 8).
#[cube]
fn register_pair<F: Float>(regs: &Array<Pair<F>>, #[comptime] h: usize) -> Array<Pair<F>> {
    let mut pair = Array::<Pair<F>>::new(2usize);
    pair[0usize] = regs[2 * h];
    pair[1usize] = regs[2 * h + 1];
    pair
}

/// The A operand of two accumulators over columns `0..8` (`low`) and `8..16` (`high`),
/// narrowed to the input dtype (see the module doc).
#[cube]
fn narrowed_operand<F: Float>(low: &Array<AccPair>, high: &Array<AccPair>) -> Array<Pair<F>> {
    let mut a = Array::<Pair<F>>::new(4usize);
    a[0usize] = Pair::<F>::cast_from(low[0usize]);
    a[1usize] = Pair::<F>::cast_from(low[1usize]);
    a[2usize] = Pair::<F>::cast_from(high[0usize]);
    a[3usize] = Pair::<F>::cast_from(high[1usize]);
    a
}
