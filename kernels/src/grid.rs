//! Launch grids for kernels that number their cubes linearly (`CUBE_POS`).

use cubecl::prelude::CubeCount;

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
