//! The backward of [`select_rows`](super::select_rows) on a CubeCL backend: a counting sort
//! of the indices, then one cube per table row summing its gradient rows in a fixed order.
//!
//! 1. `tile_ranks`: the indices in tiles of [`UNITS`]; in its tile, index `i` finds how many
//!    equal it before it (`rank`) and, at its first occurrence, how many in all
//!    (`tile_counts[tile, row]`, zero elsewhere). O(n · UNITS) work, no atomics.
//! 2. `tile_offsets`: per table row, the tile counts become exclusive offsets over the
//!    tiles, and their sum the row's count.
//! 3. `offsets`: one cube scans the row counts into exclusive offsets (`offsets[r]` = indices
//!    of rows before `r`, and the total at `offsets[num_rows]`).
//! 4. `scatter`: `order[offsets[row] + tile_offsets[tile, row] + rank] = i`, so the gradient
//!    rows of table row `r` are `order[offsets[r]..offsets[r + 1]]`, in increasing `i`.
//! 5. `row_sums`: cube `r` sums those rows into `d_table[r]` (zeros when there are none).
//!    Its units form [`GROUPS`] groups of [`LANES`]: group `g` takes every `GROUPS`-th
//!    gradient row, each lane a strided set of columns, in f32; the groups' partial sums are
//!    then added in group order. The result never depends on scheduling.
//!
//! Indices outside `0..num_rows` contribute nothing. Scratch: `⌈n / UNITS⌉ · num_rows`
//! u32 tile counts (13 MB for 16k tokens over a 50k vocabulary).

use burn::tensor::{DType, Shape};
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::ops::numeric::{empty_device_contiguous_dtype, zeros_client};
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::CubeRuntime;
use cubecl::prelude::*;

use crate::grid::linear_grid;

/// Units per cube of every kernel here (WebGPU's default limit).
const UNITS: usize = 256;
/// Column lanes of a `row_sums` group.
const LANES: usize = 32;
/// Groups of a `row_sums` cube, each walking every `GROUPS`-th gradient row.
const GROUPS: usize = UNITS / LANES;
/// Most columns one lane accumulates per pass in `row_sums` (registers).
const MAX_COLUMNS_PER_LANE: usize = 32;

#[cube(launch)]
#[allow(clippy::legacy_numeric_constants)] // `u32::MAX` is not a cube expression
fn tile_ranks_kernel<I: Int>(
    indices: &Tensor<I>,           // [n]
    ranks: &mut Tensor<u32>,       // [n]
    tile_counts: &mut Tensor<u32>, // [tiles, num_rows], zeroed
    num_rows: usize,
    #[comptime] units: usize,
    #[define(I)] _dtype: StorageType,
) {
    let unit = UNIT_POS as usize;
    let i = CUBE_POS * units + unit;
    let n = indices.len();
    // `u32::MAX` pads the last tile; it is never a row.
    let mut mine = u32::max_value();
    if i < n {
        mine = u32::cast_from(indices[i]);
    }
    let mut tile = SharedMemory::<u32>::new(units);
    tile[unit] = mine;
    sync_cube();
    let mut before = 0u32;
    let mut count = 0u32;
    for k in 0..units {
        let same = tile[k] == mine;
        count += select(same, 1u32, 0u32);
        before += select(same && k < unit, 1u32, 0u32);
    }
    if i < n && (mine as usize) < num_rows {
        ranks[i] = before;
        if before == 0 {
            tile_counts[CUBE_POS * num_rows + mine as usize] = count;
        }
    }
}

#[cube(launch)]
fn tile_offsets_kernel(
    tile_counts: &mut Tensor<u32>, // [tiles, num_rows]: counts in, exclusive offsets out
    counts: &mut Tensor<u32>,      // [num_rows]
    tiles: usize,
    #[comptime] units: usize,
) {
    let row = CUBE_POS * units + UNIT_POS as usize;
    let rows = counts.len();
    if row < rows {
        let mut running = 0u32;
        for t in 0..tiles {
            let at = t * rows + row;
            let count = tile_counts[at];
            tile_counts[at] = running;
            running += count;
        }
        counts[row] = running;
    }
}

#[cube(launch)]
fn offsets_kernel(
    counts: &Tensor<u32>,      // [num_rows]
    offsets: &mut Tensor<u32>, // [num_rows + 1]
    #[comptime] units: usize,
) {
    let unit = UNIT_POS as usize;
    let rows = counts.len();
    let chunk = rows.div_ceil(units);
    let start = select(unit * chunk < rows, unit * chunk, rows);
    let end = select(start + chunk < rows, start + chunk, rows);
    let mut own = 0u32;
    for r in start..end {
        own += counts[r];
    }
    // Inclusive scan of the units' sums (Hillis–Steele).
    let mut scan = SharedMemory::<u32>::new(units);
    scan[unit] = own;
    sync_cube();
    #[unroll]
    for level in 0..comptime!(units.trailing_zeros() as usize) {
        let stride = comptime!(1usize << level);
        let mut add = 0u32;
        if unit >= stride {
            add = scan[unit - stride];
        }
        sync_cube();
        scan[unit] += add;
        sync_cube();
    }
    let mut running = scan[unit] - own;
    for r in start..end {
        offsets[r] = running;
        running += counts[r];
    }
    if unit == units - 1 {
        offsets[rows] = scan[unit];
    }
}

#[cube(launch)]
fn scatter_kernel<I: Int>(
    indices: &Tensor<I>,        // [n]
    ranks: &Tensor<u32>,        // [n]
    tile_offsets: &Tensor<u32>, // [tiles, num_rows]
    offsets: &Tensor<u32>,      // [num_rows + 1]
    order: &mut Tensor<u32>,    // [n]
    #[comptime] units: usize,
    #[define(I)] _dtype: StorageType,
) {
    let i = CUBE_POS * units + UNIT_POS as usize;
    let rows = offsets.len() - 1;
    if i < indices.len() {
        let row = u32::cast_from(indices[i]) as usize;
        if row < rows {
            let slot = (offsets[row] + tile_offsets[CUBE_POS * rows + row] + ranks[i]) as usize;
            order[slot] = i as u32;
        }
    }
}

#[cube(launch)]
fn row_sums_kernel<F: Float>(
    grad: &Tensor<F>,        // [n, width]
    order: &Tensor<u32>,     // [n]
    offsets: &Tensor<u32>,   // [num_rows + 1]
    d_table: &mut Tensor<F>, // [num_rows, width]
    #[comptime] columns_per_lane: usize,
    #[define(F)] _dtype: StorageType,
) {
    let row = CUBE_POS;
    let unit = UNIT_POS as usize;
    let group = unit / LANES;
    let lane = unit % LANES;
    let width = grad.shape(1);
    let live = row + 1 < offsets.len();
    let mut first = 0usize;
    let mut last = 0usize;
    if live {
        first = offsets[row] as usize;
        last = offsets[row + 1] as usize;
    }
    let per_pass = LANES * columns_per_lane;
    let mut partials = SharedMemory::<f32>::new(UNITS);
    let mut base = 0usize;
    while base < width {
        let mut sums = Array::<f32>::new(columns_per_lane);
        #[unroll]
        for c in 0..columns_per_lane {
            sums[c] = 0.0;
        }
        // Two gradient rows per step (their loads in flight together), added in order.
        let mut at = first + group;
        while at < last {
            let source = order[at] as usize * width;
            let next = at + GROUPS;
            let mut second = source;
            if next < last {
                second = order[next] as usize * width;
            }
            #[unroll]
            for c in 0..columns_per_lane {
                let column = base + c * LANES + lane;
                if column < width {
                    let a = f32::cast_from(grad[source + column]);
                    let b = f32::cast_from(grad[second + column]);
                    sums[c] += a;
                    if next < last {
                        sums[c] += b;
                    }
                }
            }
            at += 2 * GROUPS;
        }
        #[unroll]
        for c in 0..columns_per_lane {
            partials[unit] = sums[c];
            sync_cube();
            let column = base + c * LANES + lane;
            if group == 0 && live && column < width {
                let mut total = 0.0f32;
                #[unroll]
                for g in 0..GROUPS {
                    total += partials[g * LANES + lane];
                }
                d_table[row * width + column] = F::cast_from(total);
            }
            sync_cube();
        }
        base += per_pass;
    }
}

/// Gradient of the table from the selected rows' gradient (see the module docs).
///
/// # Shapes
/// - grad: `[n, width]`, indices: `[n]`
/// - output: `[num_rows, width]`, grad's dtype
pub(crate) fn select_rows_backward<R: CubeRuntime>(
    grad: CubeTensor<R>,
    indices: CubeTensor<R>,
    num_rows: usize,
) -> CubeTensor<R> {
    let grad = into_contiguous(grad);
    let indices = into_contiguous(indices);
    let [n, width] = grad.meta.shape().dims();
    let (client, device) = (grad.client.clone(), grad.device.clone());
    let shape = Shape::new([num_rows, width]);
    if n == 0 || width == 0 || num_rows == 0 {
        return zeros_client(client, device, shape, grad.dtype);
    }
    let u32_buffer = |len: usize| {
        empty_device_contiguous_dtype(
            client.clone(),
            device.clone(),
            Shape::new([len]),
            DType::U32,
        )
    };
    let tiles = n.div_ceil(UNITS);
    let (ranks, counts, offsets, order) = (
        u32_buffer(n),
        u32_buffer(num_rows),
        u32_buffer(num_rows + 1),
        u32_buffer(n),
    );
    let tile_counts = zeros_client(
        client.clone(),
        device.clone(),
        Shape::new([tiles * num_rows]),
        DType::U32,
    );
    let units = CubeDim::new_1d(UNITS as u32);
    let index_dtype: StorageType = indices.dtype.into();
    tile_ranks_kernel::launch::<R>(
        &client,
        linear_grid(tiles),
        units,
        indices.clone().into_tensor_arg(),
        ranks.clone().into_tensor_arg(),
        tile_counts.clone().into_tensor_arg(),
        num_rows,
        UNITS,
        index_dtype,
    );
    tile_offsets_kernel::launch::<R>(
        &client,
        linear_grid(num_rows.div_ceil(UNITS)),
        units,
        tile_counts.clone().into_tensor_arg(),
        counts.clone().into_tensor_arg(),
        tiles,
        UNITS,
    );
    offsets_kernel::launch::<R>(
        &client,
        CubeCount::Static(1, 1, 1),
        units,
        counts.into_tensor_arg(),
        offsets.clone().into_tensor_arg(),
        UNITS,
    );
    scatter_kernel::launch::<R>(
        &client,
        linear_grid(tiles),
        units,
        indices.into_tensor_arg(),
        ranks.into_tensor_arg(),
        tile_counts.into_tensor_arg(),
        offsets.clone().into_tensor_arg(),
        order.clone().into_tensor_arg(),
        UNITS,
        index_dtype,
    );
    let d_table = empty_device_contiguous_dtype(client.clone(), device, shape, grad.dtype);
    let columns_per_lane = width.div_ceil(LANES).min(MAX_COLUMNS_PER_LANE);
    let dtype = grad.dtype.into();
    row_sums_kernel::launch::<R>(
        &client,
        linear_grid(num_rows),
        units,
        grad.into_tensor_arg(),
        order.into_tensor_arg(),
        offsets.into_tensor_arg(),
        d_table.clone().into_tensor_arg(),
        columns_per_lane,
        dtype,
    );
    d_table
}
