//! Launch geometry shared by kernels: grids for kernels that number their cubes linearly
//! (`CUBE_POS`), and the vector width of row-wise loads.

use burn::tensor::DType;
use cubecl::prelude::{ComputeClient, CubeCount, Runtime};

/// Most cubes of one launch dimension (WebGPU's limit; more take a second dimension).
const MAX_CUBES_X: usize = 65535;

/// A grid of at least `cubes` cubes, numbered `0..` by `CUBE_POS`: one row of up to
/// [`MAX_CUBES_X`], then more rows. The last row may hold cubes past `cubes`, which the
/// kernels skip.
pub(crate) fn linear_grid(cubes: usize) -> CubeCount {
    let x = cubes.clamp(1, MAX_CUBES_X);
    let y = cubes.div_ceil(MAX_CUBES_X).max(1);
    CubeCount::Static(x as u32, y as u32, 1)
}

/// Widest vector read, in bytes.
const MAX_VECTOR_BYTES: usize = 16;

/// The widest vector (in elements of `dtype`) that divides `width`, that the device allows,
/// and that reads at most 16 bytes at once.
pub(crate) fn widest_vector<R: Runtime>(
    client: &ComputeClient<R>,
    width: usize,
    dtype: DType,
) -> usize {
    let max = client.properties().hardware.max_vector_size;
    [8, 4, 2, 1]
        .into_iter()
        .find(|&v| v <= max && v * dtype.size() <= MAX_VECTOR_BYTES && width.is_multiple_of(v))
        .unwrap_or(1)
}
