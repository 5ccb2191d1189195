//! Launching the forward kernels on a CubeCL backend (Cuda, Wgpu): shape checks, the choice
//! of kernel, block sizes, output allocation.
//!
//! f16/bf16 inputs take, in order of preference:
//! - the `mma.sync` kernels where the device has m16n8k16 with f32 accumulators and
//!   `ldmatrix` for that dtype (CUDA sm80 and later): for a window of a multiple of 8 up to
//!   ±64 the band kernel (`kernel_mma_band.rs`, [`BandShape`]), else `kernel_mma.rs`, both
//!   with the softmax in registers;
//! - the cmma kernel (`kernel_cmma.rs`) where it has cmma 16×16×16 with f32 accumulators,
//!   fixed-size planes and enough shared memory;
//!
//! both for `head_dim` a multiple of 16 up to 128. Everything else (f32 always, lavapipe,
//! WGSL) takes the plain kernel (`kernel.rs`). [`PATH_ENV`] can force the cmma or the plain
//! kernel (see [`PathChoice`]).

use burn::tensor::{DType, Shape};
use burn_cubecl::kernel::{cast, into_contiguous};
use burn_cubecl::ops::numeric::empty_device_contiguous_dtype;
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::CubeRuntime;
use cubecl::features::{MmaConfig, Plane};
use cubecl::ir::{BarrierLevel, ElemType, FloatKind, OpaqueType, StorageType};
use cubecl::prelude::*;

use super::band::{band_columns, ring_rows, span_rows};
use super::kernel::flash_attention_varlen_kernel;
use super::kernel_cmma::{flash_attention_varlen_cmma_kernel, PAD, PAD_F32, TILE};
use super::kernel_mma::flash_attention_varlen_mma_kernel;
use super::kernel_mma_band::flash_attention_varlen_band_kernel;
use super::mma_tiles::MMA_N;
use super::passes::{head_dim_loop, staging_loop, walked_tiles, TilePasses};
use super::{record_kernel_path, KernelPath, VarlenMeta, PATH_ENV};

/// Query rows per cube of the plain kernels (one unit each; the backward's too).
pub(crate) const BLOCK_M: usize = 64;
/// Shared memory used for the K and V tiles, in bytes (fits WebGPU's 16 KiB default).
const TILE_BYTES: usize = 16 * 1024;

/// Planes (warps) per cube of the tensor-core forward kernels: 16 query rows each in the cmma
/// kernel, 16 per m-tile in the mma one ([`MmaShape`]).
const CMMA_PLANES: usize = 4;
/// Overrides [`CMMA_PLANES`] (and the mma forward's planes, [`MmaShape`]) for tuning runs of
/// the benchmark.
const PLANES_ENV: &str = "MODERNBERT_CMMA_PLANES";

/// Planes per cube of the tensor-core forward kernels: [`CMMA_PLANES`] unless [`PLANES_ENV`]
/// says otherwise ([`planes_override`]).
fn cmma_planes() -> usize {
    planes_override().unwrap_or(CMMA_PLANES)
}

/// What [`PLANES_ENV`] asks for: 2, 4 or 8 planes.
fn planes_override() -> Option<usize> {
    static PLANES: std::sync::OnceLock<Option<usize>> = std::sync::OnceLock::new();
    *PLANES.get_or_init(|| tuning_count(PLANES_ENV, &[2, 4, 8]))
}

/// The count the tuning variable `name` asks for, if it is set to one of `allowed`
/// (anything else is reported and ignored). Callers read it once.
fn tuning_count(name: &str, allowed: &[usize]) -> Option<usize> {
    let value = std::env::var(name).ok()?;
    match value.parse::<usize>() {
        Ok(count) if allowed.contains(&count) => Some(count),
        _ => {
            eprintln!("{name}={value:?} is not one of {allowed:?}; ignored");
            None
        }
    }
}

/// Keys per tile of the tensor-core kernels.
const CMMA_BLOCK_N: usize = 64;

/// Overrides the mma forward's m-tiles per plane (1 or 2) for tuning runs of the benchmark.
const M_TILES_ENV: &str = "MODERNBERT_MMA_M_TILES";

/// The cube of the mma forward: `planes` planes of `m_tiles` 16-row m-tiles each
/// (`mma_tiles.rs`).
#[derive(Debug, Clone, Copy)]
struct MmaShape {
    planes: usize,
    m_tiles: usize,
}

impl MmaShape {
    /// Global attention: [`CMMA_PLANES`] planes of two m-tiles (32 query rows, as
    /// FlashAttention-2's forward: each K or V operand read from shared memory feeds two
    /// products). A window that the band kernel ([`BandShape`]) does not take: 64 rows per
    /// cube (at ±64 three 64-key tiles, where 128 rows would see four for twice the rows, a
    /// lower share of visible pairs), as four planes of one m-tile: the kernel is
    /// latency-bound, and with 128 registers (two m-tiles take 238) an H200 SM holds four such
    /// cubes, 16 warps, where two planes of two m-tiles held 8 (BENCHMARKS.md, session 11). Beyond head_dim 64 one m-tile (the
    /// accumulators would not fit in registers). [`M_TILES_ENV`] and [`PLANES_ENV`] override
    /// the choice for tuning runs.
    fn forward(windowed: bool, head_dim: usize) -> Self {
        static M_TILES: std::sync::OnceLock<Option<usize>> = std::sync::OnceLock::new();
        let m_tiles = M_TILES
            .get_or_init(|| tuning_count(M_TILES_ENV, &[1, 2]))
            .unwrap_or(if windowed { 1 } else { 2 });
        let m_tiles = if head_dim > 64 { 1 } else { m_tiles };
        let planes = match planes_override() {
            Some(planes) => planes,
            None if windowed => 4 / m_tiles,
            None => CMMA_PLANES,
        };
        Self { planes, m_tiles }
    }

    /// Query rows per cube.
    fn block_m(self) -> usize {
        TILE * self.m_tiles * self.planes
    }

    /// Shared memory in bytes (see `kernel_mma.rs`): the Q tile, the double-buffered K and
    /// V tiles and the output scratch, all in the 2-byte input dtype, the barrier, each
    /// padded to its alignment.
    fn shared_bytes(self, head_dim: usize) -> usize {
        let rows = 2 * self.block_m() + 4 * CMMA_BLOCK_N;
        rows * (head_dim + PAD) * 2 + 5 * 128
    }
}

/// Overrides the band forward's query blocks per cube ([`BandShape::forward_blocks`]) for
/// tuning runs of the benchmark.
const BAND_BLOCKS_ENV: &str = "MODERNBERT_BAND_BLOCKS";

/// Cubes of the band forward an H200 SM holds at once: 157 registers per unit and 60 KB of
/// shared memory per cube of four planes allow three (Nsight Compute, BENCHMARKS.md).
const FORWARD_CUBES_PER_SM: usize = 3;

/// The cube of the sliding-window mma kernels (`band.rs`): `planes` planes of 16 own rows,
/// which stage the span of rows their block sees at ±`window` at once.
#[derive(Debug, Clone, Copy)]
pub(crate) struct BandShape {
    pub(crate) planes: usize,
    pub(crate) window: usize,
}

impl BandShape {
    /// Widest window the band kernels take: the span (and shared memory) grows with the
    /// window, and they were measured at ModernBERT's ±64 only.
    const MAX_WINDOW: usize = 64;

    /// The band cube of `planes` planes for a window of ±`window`, if the band kernels take
    /// it: a multiple of 8 up to [`Self::MAX_WINDOW`] (bands of whole 16-row blocks).
    pub(crate) fn new(window: Option<usize>, planes: usize) -> Option<Self> {
        let window = window.filter(|w| w % 8 == 0 && *w <= Self::MAX_WINDOW)?;
        Some(Self { planes, window })
    }

    /// The forward's cube: four planes. A cube walks consecutive query blocks and stages each
    /// key row once, whatever its size (`kernel_mma_band.rs`), and the walk takes 158
    /// registers: an H200 SM holds three cubes of four planes (12 warps) but one of eight
    /// (measured against 6, 8 and 12 planes, BENCHMARKS.md, session 13).
    fn forward(window: Option<usize>) -> Option<Self> {
        Self::new(window, 4)
    }

    /// Own rows per cube.
    pub(crate) fn block_m(self) -> usize {
        TILE * self.planes
    }

    /// Columns of a row of the backward's banded dS (`band_scores.rs`).
    pub(crate) fn score_columns(self) -> usize {
        band_columns(self.window)
    }

    /// Rows of the span on the other side.
    pub(crate) fn span_rows(self) -> usize {
        span_rows(self.window, self.planes)
    }

    /// Query blocks each cube of the forward walks (`kernel_mma_band.rs`) for a grid of
    /// `blocks_per_row` query blocks (of the longest sequence) by `rows` (heads × sequences),
    /// on `sms` streaming multiprocessors (unknown: four blocks). [`BAND_BLOCKS_ENV`]
    /// overrides the choice for tuning runs.
    ///
    /// A cube waits for its loads once, before its first block, so walking more blocks
    /// shares that wait, but leaves fewer cubes to spread over the SMs. Of 1, 2, 4 and 8
    /// blocks per cube, the choice takes the fewest block steps on the busiest SM (waves of
    /// [`FORWARD_CUBES_PER_SM`] cubes per SM, times the blocks each cube walks), and the most
    /// blocks among equals. At B=64 S=512 and B=4 S=8192 (12 heads) that is 8, which ran 4–5%
    /// faster than 4 and 10% faster than 2 (BENCHMARKS.md, session 20); a single sequence of
    /// 512 takes 1, for 96 cubes rather than 12.
    fn forward_blocks(blocks_per_row: usize, rows: usize, sms: Option<usize>) -> usize {
        static BLOCKS: std::sync::OnceLock<Option<usize>> = std::sync::OnceLock::new();
        if let Some(blocks) = *BLOCKS.get_or_init(|| tuning_count(BAND_BLOCKS_ENV, &[1, 2, 4, 8])) {
            return blocks;
        }
        let Some(sms) = sms else { return 4 };
        let slots = (sms * FORWARD_CUBES_PER_SM).max(1);
        [8, 4, 2, 1]
            .into_iter()
            .min_by_key(|&blocks| {
                let cubes = blocks_per_row.div_ceil(blocks) * rows;
                cubes.div_ceil(slots) * blocks
            })
            .unwrap_or(1)
    }

    /// Keys per step of the forward's online softmax: three 16-key blocks where the band is
    /// wider (the band of 144 keys at ±64 is three whole chunks; 32-key chunks took more
    /// registers and were slower, session 13), else one, so that every band has at least
    /// two chunks (`kernel_mma_band.rs`).
    fn forward_chunk(self) -> usize {
        if TILE + 2 * self.window > 3 * TILE {
            3 * TILE
        } else {
            TILE
        }
    }

    /// Shared memory of the forward, in bytes: the Q tile, the output scratch, the K and V
    /// rings ([`ring_rows`]) and the barrier.
    fn forward_bytes(self, head_dim: usize) -> usize {
        let ring = ring_rows(self.window, self.planes, self.forward_chunk());
        Self::tile_bytes(head_dim, 2 * self.block_m() + 2 * ring, 5)
    }

    /// Bytes of shared memory for `rows` rows of `head_dim` elements in the 2-byte input dtype
    /// and `arrays` arrays in all (with the barrier), each padded to its alignment.
    pub(crate) fn tile_bytes(head_dim: usize, rows: usize, arrays: usize) -> usize {
        rows * (head_dim + PAD) * 2 + arrays * 128
    }
}

/// Widest vector the tensor-core kernel moves to and from global memory (16 bytes of f16).
const CMMA_MAX_VECTOR: usize = 8;

/// Which kernels [`PATH_ENV`] asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PathChoice {
    /// The fastest kernel that applies (the default, `auto`).
    Auto,
    /// The cmma kernels wherever they apply, never the mma forward (`cmma`, for comparisons).
    Cmma,
    /// The plain kernels (`plain`).
    Plain,
}

/// The kernels [`PATH_ENV`] asks for. An unknown value is reported once on stderr and
/// treated as the default.
pub(crate) fn path_choice() -> PathChoice {
    static WARNED: std::sync::Once = std::sync::Once::new();
    match std::env::var(PATH_ENV).as_deref() {
        Ok("plain") => PathChoice::Plain,
        Ok("cmma") => PathChoice::Cmma,
        Ok("auto" | "") | Err(_) => PathChoice::Auto,
        Ok(other) => {
            WARNED.call_once(|| {
                eprintln!("{PATH_ENV}={other:?} is neither plain, cmma nor auto; using auto")
            });
            PathChoice::Auto
        }
    }
}

/// Rows per tile of a plain kernel: two tiles of `block_n × head_dim` f32 (K and V; Q and
/// dO in the backward) plus `extra_bytes` per row fill [`TILE_BYTES`].
pub(crate) fn plain_block_n(head_dim: usize, max_shared: usize, extra_bytes: usize) -> usize {
    let budget = TILE_BYTES.min(max_shared);
    (budget / (2 * head_dim * 4 + extra_bytes)).clamp(1, 64)
}

/// Whether the plain kernels unroll their loops over `head_dim`: NVRTC compiles unrolled
/// code quickly and it is what makes them fast there; lavapipe takes minutes on it.
pub(crate) fn plain_unroll<R: CubeRuntime>(client: &ComputeClient<R>) -> bool {
    R::name(client).starts_with("cuda")
}

/// Sizes of a tensor-core launch.
#[derive(Debug, Clone, Copy)]
pub(crate) struct CmmaPlan {
    /// Units per plane (fixed on this device).
    pub plane_dim: usize,
    /// Elements per global-memory vector.
    pub vector: usize,
}

/// Shared memory of the tensor-core kernel in bytes (see `kernel_cmma.rs`): Q, K and V tiles
/// and the per-plane P tiles in the 2-byte input dtype, the per-plane f32 scratch.
fn cmma_shared_bytes(head_dim: usize) -> usize {
    let block_m = TILE * cmma_planes();
    let tiles = (block_m + 2 * CMMA_BLOCK_N) * (head_dim + PAD) * 2;
    let p = block_m * (CMMA_BLOCK_N + PAD) * 2;
    let scratch = block_m * (CMMA_BLOCK_N.max(head_dim) + PAD_F32) * 4;
    // Each of the five arrays may be padded to its 128-byte alignment.
    tiles + p + scratch + 5 * 128
}

/// The launch of a tensor-core kernel (forward or backward) for these inputs on this device,
/// with `planes` planes per cube and `shared_bytes` of shared memory, or `None` where the
/// plain kernel must run.
pub(crate) fn cmma_plan<R: CubeRuntime>(
    client: &ComputeClient<R>,
    dtype: DType,
    head_dim: usize,
    planes: usize,
    shared_bytes: usize,
) -> Option<CmmaPlan> {
    if !matches!(dtype, DType::F16 | DType::BF16) || head_dim % TILE != 0 || head_dim > 128 {
        return None;
    }
    let properties = client.properties();
    let features = &properties.features;
    let input: StorageType = dtype.into();
    let config = MmaConfig {
        a_type: input,
        b_type: input,
        cd_type: ElemType::Float(FloatKind::F32).into(),
        m: TILE as u32,
        n: TILE as u32,
        k: TILE as u32,
    };
    let hardware = &properties.hardware;
    let plane_dim = hardware.plane_size_max as usize;
    let vector = [CMMA_MAX_VECTOR, 4, 2, 1]
        .into_iter()
        .find(|&v| v <= hardware.max_vector_size as usize && head_dim % v == 0)?;
    let usable = features.matmul.cmma.contains(&config)
        && features.plane.contains(Plane::Ops)
        && features.plane.contains(Plane::Sync)
        && hardware.plane_size_min == hardware.plane_size_max
        && plane_dim >= TILE
        && plane_dim % TILE == 0
        && (head_dim / vector) % (plane_dim / TILE) == 0
        && planes * plane_dim <= hardware.max_units_per_cube as usize
        && shared_bytes <= hardware.max_shared_memory_size;
    usable.then_some(CmmaPlan { plane_dim, vector })
}

/// The vector width of an mma launch (forward or backward) for these inputs on this device,
/// with `planes` planes per cube and `shared_bytes` of shared memory, or `None` where it
/// cannot run: it needs `mma.sync` m16n8k16 with f32 accumulators and `ldmatrix` for the
/// dtype, planes of exactly 32 lanes, cube barriers and `cp.async` widths (4, 8 or 16 bytes:
/// a vector of 2, 4 or 8 two-byte elements) for the asynchronous copies, and the cmma
/// kernels' other conditions.
pub(crate) fn mma_plan<R: CubeRuntime>(
    client: &ComputeClient<R>,
    dtype: DType,
    head_dim: usize,
    planes: usize,
    shared_bytes: usize,
) -> Option<usize> {
    let plan = cmma_plan(client, dtype, head_dim, planes, shared_bytes)?;
    let input: StorageType = dtype.into();
    let config = MmaConfig {
        a_type: input,
        b_type: input,
        cd_type: ElemType::Float(FloatKind::F32).into(),
        m: TILE as u32,
        n: MMA_N as u32,
        k: TILE as u32,
    };
    let matmul = &client.properties().features.matmul;
    let barrier = OpaqueType::Barrier(BarrierLevel::Cube);
    let usable = matmul.mma.contains(&config)
        && matmul.ldmatrix.contains(&input)
        && plan.plane_dim == 32
        && matches!(plan.vector, 2 | 4 | 8)
        && client.properties().supports_type(barrier);
    usable.then_some(plan.vector)
}

/// Flash-attention forward over packed sequences; returns `(out, lse)`.
///
/// # Shapes
/// - q, k, v: `[total, heads, head_dim]`; cu_seqlens: `[batch + 1]`
/// - out: `[total, heads, head_dim]` (q's dtype); lse: `[total, heads]` (f32)
pub fn varlen_attention_forward<R: CubeRuntime>(
    q: CubeTensor<R>,
    k: CubeTensor<R>,
    v: CubeTensor<R>,
    cu_seqlens: CubeTensor<R>,
    meta: &VarlenMeta,
) -> (CubeTensor<R>, CubeTensor<R>) {
    let [total, heads, head_dim] = q.meta.shape().dims::<3>();
    let (q, k, v, cu_seqlens) = (
        into_contiguous(q),
        into_contiguous(k),
        into_contiguous(v),
        into_contiguous(cu_seqlens),
    );
    let client = q.client.clone();
    let device = q.device.clone();
    let out = empty_device_contiguous_dtype(
        client.clone(),
        device.clone(),
        Shape::new([total, heads, head_dim]),
        q.dtype,
    );
    let lse = empty_device_contiguous_dtype(
        client.clone(),
        device,
        Shape::new([total, heads]),
        DType::F32,
    );
    let batch = meta.offsets.len() - 1;
    if total == 0 {
        return (out, lse);
    }
    let grid = |block_m: usize| {
        CubeCount::Static(
            meta.max_seqlen.div_ceil(block_m) as u32,
            heads as u32,
            batch as u32,
        )
    };
    let (f_dtype, i_dtype) = (q.dtype, cu_seqlens.dtype);
    let choice = path_choice();
    if choice == PathChoice::Auto {
        let band = BandShape::forward(meta.window);
        let band_plan = band.and_then(|band| {
            let shared_bytes = band.forward_bytes(head_dim);
            let plan = mma_plan(&client, f_dtype, head_dim, band.planes, shared_bytes);
            Some((band, plan?))
        });
        if let Some((band, vector)) = band_plan {
            let blocks = BandShape::forward_blocks(
                meta.max_seqlen.div_ceil(band.block_m()),
                heads * batch,
                client
                    .properties()
                    .hardware
                    .num_streaming_multiprocessors
                    .map(|sms| sms as usize),
            );
            flash_attention_varlen_band_kernel::launch::<R>(
                &client,
                grid(band.block_m() * blocks),
                CubeDim::new_2d(32, band.planes as u32),
                vector,
                q.into_array_arg(),
                k.into_array_arg(),
                v.into_array_arg(),
                cu_seqlens.into_array_arg(),
                out.clone().into_array_arg(),
                lse.clone().into_array_arg(),
                meta.scale,
                blocks as u32,
                band.window,
                head_dim,
                band.planes,
                band.forward_chunk(),
                [f_dtype.into(), i_dtype.into()],
            );
            record_kernel_path(KernelPath::MmaBand);
            return (out, lse);
        }
        let shape = MmaShape::forward(meta.window.is_some(), head_dim);
        let mma_vector = mma_plan(
            &client,
            f_dtype,
            head_dim,
            shape.planes,
            shape.shared_bytes(head_dim),
        );
        if let Some(vector) = mma_vector {
            flash_attention_varlen_mma_kernel::launch::<R>(
                &client,
                grid(shape.block_m()),
                CubeDim::new_2d(32, shape.planes as u32),
                vector,
                q.into_array_arg(),
                k.into_array_arg(),
                v.into_array_arg(),
                cu_seqlens.into_array_arg(),
                out.clone().into_array_arg(),
                lse.clone().into_array_arg(),
                meta.scale,
                meta.window.unwrap_or(0) as u32,
                head_dim,
                CMMA_BLOCK_N,
                shape.planes,
                shape.m_tiles,
                meta.window.is_some(),
                [f_dtype.into(), i_dtype.into()],
            );
            record_kernel_path(KernelPath::Mma);
            return (out, lse);
        }
    }
    let plan = if choice == PathChoice::Plain {
        None
    } else {
        cmma_plan(
            &client,
            f_dtype,
            head_dim,
            cmma_planes(),
            cmma_shared_bytes(head_dim),
        )
    };
    if let Some(plan) = plan {
        flash_attention_varlen_cmma_kernel::launch::<R>(
            &client,
            grid(TILE * cmma_planes()),
            CubeDim::new_2d(plan.plane_dim as u32, cmma_planes() as u32),
            plan.vector,
            q.into_array_arg(),
            k.into_array_arg(),
            v.into_array_arg(),
            cu_seqlens.into_array_arg(),
            out.clone().into_array_arg(),
            lse.clone().into_array_arg(),
            meta.scale,
            meta.window.unwrap_or(0) as u32,
            head_dim,
            CMMA_BLOCK_N,
            cmma_planes(),
            plan.plane_dim,
            meta.window.is_some(),
            [f_dtype.into(), i_dtype.into()],
        );
        record_kernel_path(KernelPath::TensorCore);
        return (out, lse);
    }
    let max_shared = client.properties().hardware.max_shared_memory_size;
    let unroll = plain_unroll(&client);
    let block_n = plain_block_n(head_dim, max_shared, 0);
    let passes = plain_forward_passes(meta, head_dim, block_n, unroll);
    // Between passes the normalised output is kept in f32.
    let state = if passes.count > 1 && f_dtype != DType::F32 {
        empty_device_contiguous_dtype(
            client.clone(),
            out.device.clone(),
            Shape::new([total, heads, head_dim]),
            DType::F32,
        )
    } else {
        out.clone()
    };
    for launch in passes.launches() {
        flash_attention_varlen_kernel::launch::<R>(
            &client,
            grid(BLOCK_M),
            CubeDim::new_1d(BLOCK_M as u32),
            q.clone().into_array_arg(),
            k.clone().into_array_arg(),
            v.clone().into_array_arg(),
            cu_seqlens.clone().into_array_arg(),
            state.clone().into_array_arg(),
            lse.clone().into_array_arg(),
            meta.scale,
            meta.window.unwrap_or(0) as u32,
            launch.tile_begin,
            passes.tiles_per_pass as u32,
            head_dim,
            block_n,
            meta.window.is_some(),
            unroll,
            launch.resume,
            [f_dtype.into(), i_dtype.into(), state.dtype.into()],
        );
    }
    record_kernel_path(KernelPath::Plain);
    let out = if state.dtype == f_dtype {
        state
    } else {
        cast(state, f_dtype)
    };
    (out, lse)
}

/// The launches of the plain forward kernel (`passes.rs`), from its loops per tile: staging,
/// then for each key a loop over `head_dim` for the score and one for the output, and one
/// rescaling loop; outside the tiles, loading q, resuming and writing out.
fn plain_forward_passes(
    meta: &VarlenMeta,
    head_dim: usize,
    block_n: usize,
    unroll: bool,
) -> TilePasses {
    let head = head_dim_loop(head_dim, unroll);
    let per_tile =
        staging_loop(block_n * head_dim, BLOCK_M) + 2 * (block_n + 1 + block_n * head) + head + 1;
    TilePasses::new(walked_tiles(meta, BLOCK_M, block_n), per_tile, 3 * head)
}

#[cfg(test)]
mod tests {
    use super::BandShape;

    /// The band forward's blocks per cube on an H200 (132 SMs): the most that keep every SM
    /// as busy, one where there are too few cubes to go round, four where the SM count is
    /// unknown.
    #[test]
    fn forward_blocks_keep_the_sms_busy() {
        let h200 = Some(132);
        // B=64 S=512 and B=4 S=8192, 12 heads: two waves of 8 blocks as good as four of 4.
        assert_eq!(BandShape::forward_blocks(8, 12 * 64, h200), 8);
        assert_eq!(BandShape::forward_blocks(128, 12 * 4, h200), 8);
        // One sequence of 512: 96 cubes of one block fit in one wave.
        assert_eq!(BandShape::forward_blocks(8, 12, h200), 1);
        // 480 one-block cubes need two waves, 240 two-block cubes one.
        assert_eq!(BandShape::forward_blocks(8, 60, h200), 2);
        assert_eq!(BandShape::forward_blocks(8, 12 * 64, None), 4);
    }
}
