//! Launching the backward kernels on a CubeCL backend. Where the forward would take its
//! mma kernels: for a window the band kernels take (`forward.rs`'s `BandShape`) of whole
//! 16-row blocks (±64 among them), their deterministic pair (`kernel_backward_mma_band.rs`);
//! else `kernel_backward_mma.rs`, by default one kernel with dQ summed by f32 atomics
//! (head_dim a multiple of 32), two deterministic ones under
//! [`set_deterministic`](super::set_deterministic). Else the
//! tensor-core kernels (`kernel_backward_cmma.rs`) where the forward would take its
//! tensor-core kernel (f16/bf16, a device with cmma, enough shared memory, see `forward.rs`),
//! the plain ones (`kernel_backward.rs`) for every other dtype and device and when
//! `MODERNBERT_ATTENTION_PATH=plain` (see [`PATH_ENV`](super::PATH_ENV)). The last two are
//! deterministic (no atomics).

use burn::tensor::{DType, Shape};
use burn_cubecl::kernel::{cast, into_contiguous};
use burn_cubecl::ops::numeric::empty_device_contiguous_dtype;
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::CubeRuntime;
use cubecl::ir::{features::AtomicUsage, ElemType, FloatKind, StorageType, Type};
use cubecl::prelude::*;

use super::band_scores::band_score_rows;
use super::delta::attention_delta;
use super::forward::{
    cmma_plan, mma_plan, path_choice, plain_block_n, plain_unroll, BandShape, PathChoice, BLOCK_M,
};
use super::kernel_backward::{flash_attention_varlen_dkv_kernel, flash_attention_varlen_dq_kernel};
use super::kernel_backward_cmma::{
    flash_attention_varlen_dkv_cmma_kernel, flash_attention_varlen_dq_cmma_kernel, scratch_width,
};
use super::kernel_backward_mma::{
    flash_attention_varlen_dkv_mma_kernel, flash_attention_varlen_dq_mma_kernel,
};
use super::kernel_backward_mma_band::{
    flash_attention_varlen_dkv_band_kernel, flash_attention_varlen_dq_band_kernel,
};
use super::kernel_cmma::{PAD, PAD_F32, SMEM_ALIGN, TILE};
use super::passes::{head_dim_loop, staging_loop, walked_tiles, TilePasses};
use super::{deterministic, record_backward_kernel_path, KernelPath, VarlenMeta};

/// Planes (warps) per cube of the tensor-core backward kernels: 16 own rows each, and tiles
/// of `16 · planes` other rows.
const CMMA_PLANES: usize = 4;

/// Planes per cube of the mma backward kernels (16 own rows each).
const MMA_PLANES: usize = 4;
/// Other rows per tile of the mma dQ kernel (keys) and dK/dV kernel (queries): the dK/dV
/// kernel holds four `16 × head_dim` accumulators and so takes half the tile.
const MMA_DQ_BLOCK_N: usize = 64;
const MMA_DKV_BLOCK_N: usize = 32;

/// Shared memory of the mma backward kernels in bytes, the most any of them takes (see
/// `kernel_backward_mma.rs`): the own rows' staging tile, two tiles of other rows (the dK/dV
/// kernel double-buffers them) and (with the fused dQ) the dS tile in the 2-byte input dtype,
/// lse and D (double-buffered), the f32 output scratch, each padded to the alignment.
fn mma_shared_bytes(head_dim: usize) -> usize {
    let block_m = TILE * MMA_PLANES;
    let other_rows = (2 * MMA_DQ_BLOCK_N).max(4 * MMA_DKV_BLOCK_N);
    let tiles = (block_m + other_rows) * (head_dim + PAD) * 2;
    let ds = MMA_DKV_BLOCK_N * (block_m + PAD) * 2;
    let row_values = 4 * MMA_DKV_BLOCK_N * 4;
    let scratch = block_m * (head_dim + PAD_F32) * 4;
    tiles + ds + row_values + scratch + 7 * SMEM_ALIGN
}

/// Shared memory of the band backward pair in bytes, the larger of its two kernels'
/// (`kernel_backward_mma_band.rs`), in the 2-byte input dtype unless said, each array padded
/// to the alignment:
/// - dK/dV: its own-row tile, the Q and dO spans, the output scratch, lse and D (f32 per
///   span row) and the two barriers of its span;
/// - dQ: the K span and the two barriers (it reads the banded dS and writes dQ from its
///   registers).
fn band_shared_bytes(band: BandShape, head_dim: usize) -> usize {
    let (block_m, span) = (band.block_m(), band.span_rows());
    let dkv = BandShape::tile_bytes(head_dim, 2 * block_m + 2 * span, 8) + 2 * span * 4;
    let dq = BandShape::tile_bytes(head_dim, span, 3);
    dkv.max(dq)
}

/// Whether the dK/dV kernel's fused dQ applies to `head_dim`: its planes split the columns
/// of `dQ` in whole 16-column blocks (`kernel_backward_mma.rs`), so for head dims such as 48
/// or 80 the deterministic pair runs instead.
fn fused_dq_fits(head_dim: usize) -> bool {
    let parts = MMA_PLANES / (MMA_DKV_BLOCK_N / TILE);
    head_dim.is_multiple_of(parts * TILE)
}

/// Widest f32 vector the device adds atomically (sm90: 4) that divides `head_dim`.
fn atomic_vector<R: CubeRuntime>(client: &ComputeClient<R>, head_dim: usize) -> usize {
    [4, 2]
        .into_iter()
        .find(|&width| {
            let atomic = Type::new(StorageType::Atomic(ElemType::Float(FloatKind::F32)))
                .with_vector_size(width);
            head_dim.is_multiple_of(width)
                && client
                    .properties()
                    .atomic_type_usage(atomic)
                    .contains(AtomicUsage::Add)
        })
        .unwrap_or(1)
}

/// Shared memory of the tensor-core dK/dV kernel in bytes, the larger of the two (see
/// `kernel_backward_cmma.rs`): two staged tiles, lse and D, the per-plane Pᵀ and dSᵀ tiles
/// in the 2-byte input dtype, the per-plane f32 scratch.
fn cmma_shared_bytes(head_dim: usize) -> usize {
    let block = TILE * CMMA_PLANES;
    let tiles = 2 * block * (head_dim + PAD) * 2;
    let row_values = 2 * block * 4;
    let p_ds = 2 * block * (block + PAD) * 2;
    let scratch = block * (scratch_width(block, head_dim) + PAD_F32) * 4;
    // Each of the seven arrays may be padded to the alignment.
    tiles + row_values + p_ds + scratch + 7 * SMEM_ALIGN
}

/// Gradients of the forward for `d_out`, given its output `out` and `lse` (f32); returns
/// `(dq, dk, dv)` in q's dtype. First `D = rowsum(dO ∘ O)` (`delta.rs`).
///
/// # Shapes
/// - q, k, v, out, d_out: `[total, heads, head_dim]` (one dtype); lse: `[total, heads]`
#[allow(clippy::too_many_arguments)]
pub fn varlen_attention_backward<R: CubeRuntime>(
    q: CubeTensor<R>,
    k: CubeTensor<R>,
    v: CubeTensor<R>,
    out: CubeTensor<R>,
    d_out: CubeTensor<R>,
    lse: CubeTensor<R>,
    cu_seqlens: CubeTensor<R>,
    meta: &VarlenMeta,
) -> (CubeTensor<R>, CubeTensor<R>, CubeTensor<R>) {
    let [total, heads, head_dim] = q.meta.shape().dims::<3>();
    let [q, k, v, d_out, lse, cu_seqlens] = [q, k, v, d_out, lse, cu_seqlens].map(into_contiguous);
    let client = q.client.clone();
    let gradient = || {
        empty_device_contiguous_dtype(
            client.clone(),
            q.device.clone(),
            Shape::new([total, heads, head_dim]),
            q.dtype,
        )
    };
    let (dk, dv) = (gradient(), gradient());
    if total == 0 {
        return (gradient(), dk, dv);
    }
    // D for the kernels below; on the fused path the same launch zeroes the f32 dQ.
    let delta =
        |zeroed: Option<&CubeTensor<R>>| attention_delta(d_out.clone(), out.clone(), zeroed);
    let (scale, window, windowed) = (
        meta.scale,
        meta.window.unwrap_or(0) as u32,
        meta.window.is_some(),
    );
    let dtypes = [q.dtype.into(), cu_seqlens.dtype.into()];
    let grid = |block: usize| {
        CubeCount::Static(
            meta.max_seqlen.div_ceil(block) as u32,
            heads as u32,
            (meta.offsets.len() - 1) as u32,
        )
    };
    let choice = path_choice();
    // A window the band kernels take, of whole 16-row blocks (the banded dS): their
    // deterministic pair (`kernel_backward_mma_band.rs`).
    let band = BandShape::new(meta.window, MMA_PLANES)
        .filter(|band| band.window % TILE == 0 && choice == PathChoice::Auto);
    let band_plan = band.and_then(|band| {
        let bytes = band_shared_bytes(band, head_dim);
        Some((
            band,
            mma_plan(&client, q.dtype, head_dim, band.planes, bytes)?,
        ))
    });
    if let Some((band, vector)) = band_plan {
        // D, then dK/dV, which writes the banded dS (`band_scores.rs`), then dQ = dS·K.
        let delta = delta(None);
        let ds = empty_device_contiguous_dtype(
            client.clone(),
            q.device.clone(),
            Shape::new([
                band_score_rows(total, meta.offsets.len() - 1),
                heads,
                band.score_columns(),
            ]),
            q.dtype,
        );
        let dq = gradient();
        let cube_dim = CubeDim::new_2d(32, band.planes as u32);
        flash_attention_varlen_dkv_band_kernel::launch::<R>(
            &client,
            grid(band.block_m()),
            cube_dim,
            vector,
            q.into_array_arg(),
            k.clone().into_array_arg(),
            v.into_array_arg(),
            d_out.into_array_arg(),
            lse.into_array_arg(),
            delta.into_array_arg(),
            cu_seqlens.clone().into_array_arg(),
            dk.clone().into_array_arg(),
            dv.clone().into_array_arg(),
            ds.clone().into_array_arg(),
            scale,
            band.window,
            head_dim,
            band.planes,
            dtypes,
        );
        flash_attention_varlen_dq_band_kernel::launch::<R>(
            &client,
            grid(band.block_m()),
            cube_dim,
            vector,
            k.into_array_arg(),
            ds.into_array_arg(),
            cu_seqlens.into_array_arg(),
            dq.clone().into_array_arg(),
            scale,
            band.window,
            head_dim,
            band.planes,
            dtypes,
        );
        record_backward_kernel_path(KernelPath::MmaBand);
        return (dq, dk, dv);
    }
    let mma_vector = match choice {
        PathChoice::Auto => mma_plan(
            &client,
            q.dtype,
            head_dim,
            MMA_PLANES,
            mma_shared_bytes(head_dim),
        ),
        PathChoice::Cmma | PathChoice::Plain => None,
    };
    if let Some(vector) = mma_vector {
        let cube_dim = CubeDim::new_2d(32, MMA_PLANES as u32);
        let fused_dq = !deterministic() && fused_dq_fits(head_dim);
        let atomic_vector = atomic_vector(&client, head_dim);
        // With the fused dQ, the dK/dV kernel sums `dQ · scale` here in f32, from the zeros
        // the delta launch writes; else it takes a placeholder it never touches.
        let dq_sum = if fused_dq {
            empty_device_contiguous_dtype(
                client.clone(),
                q.device.clone(),
                Shape::new([total, heads, head_dim]),
                DType::F32,
            )
        } else {
            empty_device_contiguous_dtype(
                client.clone(),
                q.device.clone(),
                Shape::new([1, 1, atomic_vector]),
                DType::F32,
            )
        };
        let delta = delta(fused_dq.then_some(&dq_sum));
        flash_attention_varlen_dkv_mma_kernel::launch::<R>(
            &client,
            grid(TILE * MMA_PLANES),
            cube_dim,
            vector,
            atomic_vector,
            q.clone().into_array_arg(),
            k.clone().into_array_arg(),
            v.clone().into_array_arg(),
            d_out.clone().into_array_arg(),
            lse.clone().into_array_arg(),
            delta.clone().into_array_arg(),
            cu_seqlens.clone().into_array_arg(),
            dk.clone().into_array_arg(),
            dv.clone().into_array_arg(),
            dq_sum.clone().into_array_arg(),
            scale,
            window,
            head_dim,
            MMA_DKV_BLOCK_N,
            MMA_PLANES,
            windowed,
            fused_dq,
            dtypes,
        );
        if fused_dq {
            record_backward_kernel_path(KernelPath::MmaAtomicDq);
            return (cast(dq_sum, q.dtype), dk, dv);
        }
        let dq = gradient();
        flash_attention_varlen_dq_mma_kernel::launch::<R>(
            &client,
            grid(TILE * MMA_PLANES),
            cube_dim,
            vector,
            q.into_array_arg(),
            k.into_array_arg(),
            v.into_array_arg(),
            d_out.into_array_arg(),
            lse.into_array_arg(),
            delta.into_array_arg(),
            cu_seqlens.into_array_arg(),
            dq.clone().into_array_arg(),
            scale,
            window,
            head_dim,
            MMA_DQ_BLOCK_N,
            MMA_PLANES,
            windowed,
            dtypes,
        );
        record_backward_kernel_path(KernelPath::Mma);
        return (dq, dk, dv);
    }
    let dq = gradient();
    let delta = delta(None);
    let plan = if choice == PathChoice::Plain {
        None
    } else {
        cmma_plan(
            &client,
            q.dtype,
            head_dim,
            CMMA_PLANES,
            cmma_shared_bytes(head_dim),
        )
    };
    if let Some(plan) = plan {
        let cube_dim = CubeDim::new_2d(plan.plane_dim as u32, CMMA_PLANES as u32);
        flash_attention_varlen_dq_cmma_kernel::launch::<R>(
            &client,
            grid(TILE * CMMA_PLANES),
            cube_dim,
            plan.vector,
            q.clone().into_array_arg(),
            k.clone().into_array_arg(),
            v.clone().into_array_arg(),
            d_out.clone().into_array_arg(),
            lse.clone().into_array_arg(),
            delta.clone().into_array_arg(),
            cu_seqlens.clone().into_array_arg(),
            dq.clone().into_array_arg(),
            scale,
            window,
            head_dim,
            CMMA_PLANES,
            plan.plane_dim,
            windowed,
            dtypes,
        );
        flash_attention_varlen_dkv_cmma_kernel::launch::<R>(
            &client,
            grid(TILE * CMMA_PLANES),
            cube_dim,
            plan.vector,
            q.into_array_arg(),
            k.into_array_arg(),
            v.into_array_arg(),
            d_out.into_array_arg(),
            lse.into_array_arg(),
            delta.into_array_arg(),
            cu_seqlens.into_array_arg(),
            dk.clone().into_array_arg(),
            dv.clone().into_array_arg(),
            scale,
            window,
            head_dim,
            CMMA_PLANES,
            plan.plane_dim,
            windowed,
            dtypes,
        );
        record_backward_kernel_path(KernelPath::TensorCore);
        return (dq, dk, dv);
    }
    let max_shared = client.properties().hardware.max_shared_memory_size;
    // The dK/dV kernel also stages lse and D per tile (8 bytes per query row).
    let block_n = plain_block_n(head_dim, max_shared, 8);
    let unroll = plain_unroll(&client);
    let passes = PlainPasses::new(meta, head_dim, block_n, unroll);
    // Between passes the gradients are kept in f32.
    let state = |gradient: CubeTensor<R>, passes: TilePasses| {
        if passes.count > 1 && gradient.dtype != DType::F32 {
            empty_device_contiguous_dtype(
                client.clone(),
                gradient.device.clone(),
                Shape::new([total, heads, head_dim]),
                DType::F32,
            )
        } else {
            gradient
        }
    };
    let dq_state = state(dq, passes.dq);
    let (dk_state, dv_state) = (state(dk, passes.dkv), state(dv, passes.dkv));
    for launch in passes.dq.launches() {
        flash_attention_varlen_dq_kernel::launch::<R>(
            &client,
            grid(BLOCK_M),
            CubeDim::new_1d(BLOCK_M as u32),
            q.clone().into_array_arg(),
            k.clone().into_array_arg(),
            v.clone().into_array_arg(),
            d_out.clone().into_array_arg(),
            lse.clone().into_array_arg(),
            delta.clone().into_array_arg(),
            cu_seqlens.clone().into_array_arg(),
            dq_state.clone().into_array_arg(),
            scale,
            window,
            launch.tile_begin,
            passes.dq.tiles_per_pass as u32,
            head_dim,
            block_n,
            windowed,
            unroll,
            launch.resume,
            [dtypes[0], dtypes[1], dq_state.dtype.into()],
        );
    }
    for launch in passes.dkv.launches() {
        flash_attention_varlen_dkv_kernel::launch::<R>(
            &client,
            grid(BLOCK_M),
            CubeDim::new_1d(BLOCK_M as u32),
            q.clone().into_array_arg(),
            k.clone().into_array_arg(),
            v.clone().into_array_arg(),
            d_out.clone().into_array_arg(),
            lse.clone().into_array_arg(),
            delta.clone().into_array_arg(),
            cu_seqlens.clone().into_array_arg(),
            dk_state.clone().into_array_arg(),
            dv_state.clone().into_array_arg(),
            scale,
            window,
            launch.tile_begin,
            passes.dkv.tiles_per_pass as u32,
            head_dim,
            block_n,
            windowed,
            unroll,
            launch.resume,
            [dtypes[0], dtypes[1], dk_state.dtype.into()],
        );
    }
    record_backward_kernel_path(KernelPath::Plain);
    let f_dtype = q.dtype;
    let [dq, dk, dv] = [dq_state, dk_state, dv_state].map(|gradient| {
        if gradient.dtype == f_dtype {
            gradient
        } else {
            cast(gradient, f_dtype)
        }
    });
    (dq, dk, dv)
}

/// The launches of the two plain backward kernels (`passes.rs`).
struct PlainPasses {
    /// The dQ kernel's, over key tiles.
    dq: TilePasses,
    /// The dK/dV kernel's, over query tiles.
    dkv: TilePasses,
}

impl PlainPasses {
    /// From the kernels' loops per tile: staging (the dK/dV kernel also stages lse and D),
    /// then for each row of the tile two loops over `head_dim`; outside the tiles, loading
    /// the unit's rows, resuming and writing.
    fn new(meta: &VarlenMeta, head_dim: usize, block_n: usize, unroll: bool) -> Self {
        let head = head_dim_loop(head_dim, unroll);
        let rows = block_n + 1 + block_n * 2 * head + 1;
        let staging = staging_loop(block_n * head_dim, BLOCK_M);
        let tiles = walked_tiles(meta, BLOCK_M, block_n);
        Self {
            dq: TilePasses::new(tiles, staging + rows, 3 * head),
            dkv: TilePasses::new(
                tiles,
                staging + staging_loop(block_n, BLOCK_M) + rows,
                4 * head,
            ),
        }
    }
}
