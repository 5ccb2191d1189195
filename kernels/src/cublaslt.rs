//! Dense matmul on NVIDIA GPUs through cuBLASLt (NVIDIA's GEMM library, loaded at run time).
//!
//! ModernBERT's time goes mostly into its linear layers, and Burn 0.21's own CUDA matmul
//! reaches about 0.3× of cuBLAS on their shapes (DESIGN.md). On the Cuda backend every
//! [`crate::matmul`] therefore lands here: f32 (computed in full f32, never TF32), f16 and
//! bf16 (f32 accumulation), with either operand row- or column-major, so the transposed
//! operands of the backward products (`dY·Wᵀ`, `Xᵀ·dY`) are read in place.
//!
//! # Ordering with Burn's kernels
//! CubeCL 0.10 keeps the CUDA stream it launches on private, so a GEMM cannot be enqueued
//! on it. We run cuBLASLt on a stream of our own and order it against CubeCL's work on the
//! device, without blocking the CPU: before a GEMM, `cuCtxRecordEvent` captures all work
//! submitted to the (primary) context so far and our stream waits for it; after it,
//! `cuCtxWaitEvent` makes all work submitted later to the context wait for the GEMM. These
//! need a CUDA 12.5+ driver.
//!
//! When something is unavailable (no libcublasLt, an older driver) this path turns itself
//! off with one warning on stderr and Burn's matmul is used; `MODERNBERT_CUBLASLT=0` turns
//! it off on purpose (benchmarks compare both).

use std::any::Any;
use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::ffi::c_void;
use std::sync::{Mutex, OnceLock};

use burn::tensor::DType;
use burn_cubecl::ops::numeric::empty_device_contiguous_dtype;
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::CubeRuntime;
use cubecl::cuda::{CudaDevice, CudaRuntime};
use cubecl::prelude::ComputeClient;
use cudarc::cublaslt::result as lt;
use cudarc::cublaslt::sys as lt_sys;
use cudarc::driver::result as cu;
use cudarc::driver::sys as cu_sys;

use crate::gemm_layout::Problem;

/// cuBLASLt's scratch space per device; Hopper's fastest kernels want tens of MiB.
const WORKSPACE_BYTES: usize = 32 << 20;
/// Plans are cached per shape; serving with many distinct token counts would grow the
/// cache without end, so it is cleared past this size.
const MAX_CACHED_PLANS: usize = 4096;
/// Algorithms the heuristic proposes for a new problem size; each is timed and the fastest
/// kept (cuBLASLt's first choice is not always its fastest on Hopper).
const CANDIDATES: usize = 16;
/// Timed runs per candidate and round (after one warm-up run).
const TIMED_RUNS: usize = 3;
/// Rounds over all candidates; each candidate keeps its fastest round.
const TIMING_ROUNDS: usize = 3;

/// What the GEMM's epilogue adds to the product `lhs · rhs` before it is stored.
pub(crate) struct Epilogue<'a, R: CubeRuntime> {
    /// `[n]`, added to every row (cuBLASLt's `BIAS` epilogue).
    pub(crate) bias: Option<&'a CubeTensor<R>>,
    /// `[m, n]`, added element-wise (`beta = 1` with it as the `C` matrix).
    pub(crate) residual: Option<&'a CubeTensor<R>>,
}

impl<R: CubeRuntime> Epilogue<'_, R> {
    /// Nothing added: a plain product.
    pub(crate) const NONE: Self = Self {
        bias: None,
        residual: None,
    };

    /// Whether cuBLASLt can read these operands in place for `problem` (2-D, contiguous,
    /// the product's dtype and shape).
    fn fits(&self, problem: &Problem, dtype: DType) -> bool {
        let plain = |t: &CubeTensor<R>, shape: &[usize]| {
            t.dtype == dtype && t.meta.shape().as_slice() == shape && t.is_contiguous()
        };
        let batched = problem.batch > 1 || problem.out_shape.len() != 2;
        let bias_ok = self.bias.is_none_or(|b| !batched && plain(b, &[problem.n]));
        let residual_ok = self
            .residual
            .is_none_or(|r| !batched && plain(r, &[problem.m, problem.n]));
        bias_ok && residual_ok
    }
}

/// `lhs · rhs (+ bias) (+ residual)` through cuBLASLt, or `None` when this path does not
/// apply (not Cuda, an unsupported dtype or layout, or cuBLASLt unavailable): the caller
/// then uses Burn's ops.
///
/// # Shapes
/// - lhs: `[..., m, k]`, rhs: `[..., k, n]`; batch dims equal or 1 (broadcast)
/// - epilogue (2-D products only): bias `[n]`, residual `[m, n]`
/// - output: `[..., m, n]`, contiguous
pub(crate) fn matmul<R: CubeRuntime>(
    lhs: &CubeTensor<R>,
    rhs: &CubeTensor<R>,
    epilogue: Epilogue<'_, R>,
) -> Option<CubeTensor<R>> {
    let client = (&lhs.client as &dyn Any).downcast_ref::<ComputeClient<CudaRuntime>>()?;
    let device = (&lhs.device as &dyn Any).downcast_ref::<CudaDevice>()?;
    let data_type = data_type(lhs.dtype)?;
    if rhs.dtype != lhs.dtype || !enabled() {
        return None;
    }
    let problem = Problem::new(
        lhs.meta.shape(),
        lhs.meta.strides(),
        rhs.meta.shape(),
        rhs.meta.strides(),
    )?;
    if problem.k == 0 || !epilogue.fits(&problem, lhs.dtype) {
        return None; // k = 0: an all-zero output, which Burn's ops handle
    }
    // CubeCL runs every server call on its device thread, and each blocking call from here
    // waits for that thread's queue: one blocking round trip for the whole GEMM (output
    // allocation, device pointers, cuBLASLt enqueue), not one per call. Nested client calls
    // on the device thread run inline.
    let enqueue = || {
        let out = empty_device_contiguous_dtype(
            lhs.client.clone(),
            lhs.device.clone(),
            problem.out_shape.clone().into(),
            lhs.dtype,
        );
        if problem.m * problem.n * problem.batch == 0 {
            return Some(out);
        }
        let pointer = |tensor: &CubeTensor<R>| {
            let resource = client.get_resource(tensor.handle.clone()).ok()?;
            Some(resource.resource().ptr)
        };
        let optional = |tensor: Option<&CubeTensor<R>>| match tensor {
            Some(tensor) => pointer(tensor).map(Some),
            None => Some(None),
        };
        let ptrs = Pointers {
            lhs: pointer(lhs)?,
            rhs: pointer(rhs)?,
            out: pointer(&out)?,
            bias: optional(epilogue.bias)?,
            residual: optional(epilogue.residual)?,
        };
        let mut devices = devices()
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let state = match devices.entry(device.index) {
            Entry::Occupied(entry) => entry.into_mut(),
            Entry::Vacant(entry) => match DeviceState::new(device.index) {
                Ok(state) => entry.insert(state),
                Err(error) => {
                    disable(&format!(
                        "cannot set up cuBLASLt on cuda:{}: {error}",
                        device.index
                    ));
                    return None;
                }
            },
        };
        match state.run(&problem, data_type, ptrs) {
            Ok(()) => Some(out),
            Err(error) => {
                disable(&format!("cuBLASLt matmul {problem:?} failed: {error}"));
                None
            }
        }
    };
    client.exclusive(enqueue).ok().flatten()
}

fn data_type(dtype: DType) -> Option<lt_sys::cudaDataType> {
    match dtype {
        DType::F32 => Some(lt_sys::cudaDataType::CUDA_R_32F),
        DType::F16 => Some(lt_sys::cudaDataType::CUDA_R_16F),
        DType::BF16 => Some(lt_sys::cudaDataType::CUDA_R_16BF),
        _ => None,
    }
}

static DISABLED: OnceLock<String> = OnceLock::new();

fn enabled() -> bool {
    static CHECKED: OnceLock<bool> = OnceLock::new();
    let allowed = *CHECKED.get_or_init(|| {
        if std::env::var("MODERNBERT_CUBLASLT").is_ok_and(|v| v == "0") {
            return false;
        }
        // SAFETY: only probes whether the shared library can be opened.
        let present = unsafe { lt_sys::is_culib_present() };
        if !present {
            disable("libcublasLt was not found (is the CUDA toolkit's lib64 on LD_LIBRARY_PATH?)");
        }
        present
    });
    allowed && DISABLED.get().is_none()
}

/// Turns this path off for the rest of the process, saying why once.
fn disable(reason: &str) {
    if DISABLED.set(reason.to_string()).is_ok() {
        eprintln!("modernbert: {reason}; falling back to Burn's matmul (about 3x slower)");
    }
}

/// Whether cuBLASLt serves this process's Cuda matmuls; `Err` holds the reason it does not.
pub fn status() -> Result<(), String> {
    if !enabled() {
        return Err(DISABLED
            .get()
            .cloned()
            .unwrap_or_else(|| "turned off by MODERNBERT_CUBLASLT=0".into()));
    }
    Ok(())
}

/// Device addresses of one GEMM's operands.
#[derive(Debug, Clone, Copy)]
struct Pointers {
    lhs: u64,
    rhs: u64,
    out: u64,
    bias: Option<u64>,
    residual: Option<u64>,
}

/// cuBLASLt objects of one device: handle, our stream, the ordering events, the workspace
/// and the plans chosen per problem.
struct DeviceState {
    context: cu_sys::CUcontext,
    stream: cu_sys::CUstream,
    /// Recorded on the whole context before a GEMM, waited on by our stream.
    before: cu_sys::CUevent,
    /// Recorded on our stream after a GEMM, waited on by the whole context.
    after: cu_sys::CUevent,
    /// Timing events for choosing among the candidate algorithms.
    timing: [cu_sys::CUevent; 2],
    handle: lt_sys::cublasLtHandle_t,
    workspace: cu_sys::CUdeviceptr,
    plans: HashMap<PlanKey, Plan>,
    /// The fastest algorithm measured per [`SizeClass`], reused for problems of the same
    /// class (inference sees a new token count in nearly every batch).
    fastest: HashMap<SizeClass, lt_sys::cublasLtMatmulAlgo_t>,
}

/// What identifies a plan: the problem, the dtype, and whether the epilogue adds a bias.
type PlanKey = (Problem, u32, bool);

/// Problems that share a measured algorithm: the same dtype, epilogue, operand transposes,
/// batch count and weight-sized dims, with the token-sized dim rounded up to a power of two. In
/// a linear layer the tokens are `m` (forward `X·W`, `dY·Wᵀ`) unless the left operand is
/// read transposed (`Xᵀ·dY`), where they are `k`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct SizeClass {
    data_type: u32,
    bias: bool,
    transposed: [bool; 2],
    mnk: [usize; 3],
    batch: usize,
}

impl SizeClass {
    fn of(problem: &Problem, data_type: lt_sys::cudaDataType, bias: bool) -> Self {
        let Problem { m, n, k, .. } = *problem;
        let mnk = if problem.b.transposed {
            [m, n, k.next_power_of_two()]
        } else {
            [m.next_power_of_two(), n, k]
        };
        Self {
            data_type: data_type as u32,
            bias,
            transposed: [problem.a.transposed, problem.b.transposed],
            mnk,
            batch: problem.batch,
        }
    }
}

// SAFETY: the raw CUDA objects are only used under the `devices()` mutex, with the device's
// primary context made current first.
unsafe impl Send for DeviceState {}

fn devices() -> &'static Mutex<HashMap<usize, DeviceState>> {
    static DEVICES: OnceLock<Mutex<HashMap<usize, DeviceState>>> = OnceLock::new();
    DEVICES.get_or_init(Default::default)
}

/// Errors from the driver or from cuBLASLt, as text for the one-time warning.
type SetupError = String;

fn driver(result: Result<(), cu::DriverError>, what: &str) -> Result<(), SetupError> {
    result.map_err(|error| format!("{what}: {error:?}"))
}

impl DeviceState {
    fn new(index: usize) -> Result<Self, SetupError> {
        let ordinal = i32::try_from(index).map_err(|_| format!("device index {index}"))?;
        let device = cu::device::get(ordinal).map_err(|e| format!("cuDeviceGet: {e:?}"))?;
        // SAFETY: plain driver calls on a valid device; the primary context is the one
        // CubeCL uses (cubecl-cuda retains it too), so pointers from Burn are valid in it.
        unsafe {
            let context =
                cu::primary_ctx::retain(device).map_err(|e| format!("primary context: {e:?}"))?;
            driver(cu::ctx::set_current(context), "cuCtxSetCurrent")?;
            let stream = cu::stream::create(cu::stream::StreamKind::NonBlocking)
                .map_err(|e| format!("cuStreamCreate: {e:?}"))?;
            let event = || {
                cu::event::create(cu_sys::CUevent_flags::CU_EVENT_DISABLE_TIMING)
                    .map_err(|e| format!("cuEventCreate: {e:?}"))
            };
            let (before, after) = (event()?, event()?);
            let timing_event = || {
                cu::event::create(cu_sys::CUevent_flags::CU_EVENT_DEFAULT)
                    .map_err(|e| format!("cuEventCreate: {e:?}"))
            };
            let timing = [timing_event()?, timing_event()?];
            let handle = lt::create_handle().map_err(|e| format!("cublasLtCreate: {e}"))?;
            let workspace = cu::malloc_sync(WORKSPACE_BYTES)
                .map_err(|e| format!("workspace of {WORKSPACE_BYTES} bytes: {e:?}"))?;
            Ok(Self {
                context,
                stream,
                before,
                after,
                timing,
                handle,
                workspace,
                plans: HashMap::new(),
                fastest: HashMap::new(),
            })
        }
    }

    /// Enqueues `D = A·B` (column-major terms, see [`Problem`]) ordered after everything
    /// already submitted to the device and before everything submitted later.
    fn run(
        &mut self,
        problem: &Problem,
        data_type: lt_sys::cudaDataType,
        pointers: Pointers,
    ) -> Result<(), SetupError> {
        // SAFETY: every object below was created in `new` for this context; the pointers
        // come from live Burn tensors that the caller holds until this returns, and the
        // event ordering keeps their memory from being reused before the GEMM ran.
        unsafe {
            driver(cu::ctx::set_current(self.context), "cuCtxSetCurrent")?;
            if self.plans.len() >= MAX_CACHED_PLANS {
                self.plans.clear();
            }
            driver(
                cu_sys::cuCtxRecordEvent(self.context, self.before).result(),
                "cuCtxRecordEvent",
            )?;
            driver(
                cu::stream::wait_event(
                    self.stream,
                    self.before,
                    cu_sys::CUevent_wait_flags::CU_EVENT_WAIT_DEFAULT,
                ),
                "cuStreamWaitEvent",
            )?;
            let key = (problem.clone(), data_type as u32, pointers.bias.is_some());
            if !self.plans.contains_key(&key) {
                let plan = self.new_plan(problem, data_type, pointers)?;
                self.plans.insert(key.clone(), plan);
            }
            let plan = &self.plans[&key];
            self.matmul(plan, &plan.algo, pointers)?;
            driver(cu::event::record(self.after, self.stream), "cuEventRecord")?;
            driver(
                cu_sys::cuCtxWaitEvent(self.context, self.after).result(),
                "cuCtxWaitEvent",
            )
        }
    }

    /// Enqueues one cuBLASLt matmul of `plan` with `algo` on our stream.
    ///
    /// # Safety
    /// The pointers must be live device memory of the plan's layouts; `plan` has a bias
    /// epilogue exactly when `pointers.bias` is set.
    unsafe fn matmul(
        &self,
        plan: &Plan,
        algo: &lt_sys::cublasLtMatmulAlgo_t,
        pointers: Pointers,
    ) -> Result<(), SetupError> {
        if let Some(bias) = pointers.bias {
            lt::set_matmul_desc_attribute(
                plan.desc,
                lt_sys::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_BIAS_POINTER,
                &bias as *const u64 as *const c_void,
                std::mem::size_of::<u64>(),
            )
            .map_err(|e| format!("bias pointer: {e}"))?;
        }
        // D = A·B + beta·C, with C the residual (same layout as D) when there is one.
        let (c, beta) = match pointers.residual {
            Some(residual) => (residual, 1.0f32),
            None => (pointers.out, 0.0f32),
        };
        let alpha = 1.0f32;
        lt::matmul(
            self.handle,
            plan.desc,
            &alpha as *const f32 as *const c_void,
            &beta as *const f32 as *const c_void,
            pointers.rhs as *const c_void,
            plan.a,
            pointers.lhs as *const c_void,
            plan.b,
            c as *const c_void,
            plan.d,
            pointers.out as *mut c_void,
            plan.d,
            algo,
            self.workspace as *mut c_void,
            WORKSPACE_BYTES,
            self.stream as lt_sys::cudaStream_t,
        )
        .map_err(|e| format!("cublasLtMatmul: {e}"))
    }

    /// Time of `TIMED_RUNS` runs of `algo` in ms, after one warm-up run; `None` when
    /// cuBLASLt refuses the algorithm for this problem.
    ///
    /// # Safety
    /// As for [`Self::matmul`].
    unsafe fn time(
        &self,
        plan: &Plan,
        algo: &lt_sys::cublasLtMatmulAlgo_t,
        pointers: Pointers,
    ) -> Result<Option<f32>, SetupError> {
        if self.matmul(plan, algo, pointers).is_err() {
            return Ok(None);
        }
        driver(
            cu::event::record(self.timing[0], self.stream),
            "cuEventRecord",
        )?;
        for _ in 0..TIMED_RUNS {
            self.matmul(plan, algo, pointers)?;
        }
        driver(
            cu::event::record(self.timing[1], self.stream),
            "cuEventRecord",
        )?;
        driver(cu::event::synchronize(self.timing[1]), "cuEventSynchronize")?;
        let ms = cu::event::elapsed(self.timing[0], self.timing[1])
            .map_err(|e| format!("cuEventElapsedTime: {e:?}"))?;
        Ok(Some(ms))
    }

    /// The descriptors of a new problem and its algorithm: the one measured fastest for its
    /// [`SizeClass`] if cuBLASLt accepts it for this exact problem, else the fastest of the
    /// heuristic's candidates, timed on these operands (this blocks the host once per size
    /// class; the output is overwritten by the real run that follows).
    ///
    /// Each candidate is timed in [`TIMING_ROUNDS`] interleaved rounds and keeps its best
    /// round, so that one slow moment (clocks ramping up, another process) does not decide.
    /// `MODERNBERT_CUBLASLT_LOG=1` prints the timings and the choice per size class.
    ///
    /// # Safety
    /// As for [`Self::matmul`]; our stream must already wait for the operands.
    unsafe fn new_plan(
        &mut self,
        problem: &Problem,
        data_type: lt_sys::cudaDataType,
        pointers: Pointers,
    ) -> Result<Plan, SetupError> {
        let bias = pointers.bias.is_some();
        let (mut plan, candidates) = Plan::new(self.handle, problem, data_type, bias)?;
        let class = SizeClass::of(problem, data_type, bias);
        if let Some(known) = self.fastest.get(&class) {
            let mut check = std::mem::MaybeUninit::uninit();
            let accepted = lt_sys::cublasLtMatmulAlgoCheck(
                self.handle,
                plan.desc,
                plan.a,
                plan.b,
                plan.d,
                plan.d,
                known,
                check.as_mut_ptr(),
            );
            if accepted == lt_sys::cublasStatus_t::CUBLAS_STATUS_SUCCESS
                && check.assume_init().workspaceSize <= WORKSPACE_BYTES
            {
                plan.algo = *known;
                return Ok(plan);
            }
        }
        if candidates.len() > 1 {
            let mut best_ms = vec![f32::INFINITY; candidates.len()];
            for _ in 0..TIMING_ROUNDS {
                for (algo, best) in candidates.iter().zip(&mut best_ms) {
                    if let Some(ms) = self.time(&plan, algo, pointers)? {
                        *best = best.min(ms);
                    }
                }
            }
            let fastest = (0..candidates.len())
                .min_by(|&i, &j| best_ms[i].total_cmp(&best_ms[j]))
                .expect("at least two candidates");
            plan.algo = candidates[fastest];
            if log_choices() {
                let timings: Vec<String> = best_ms
                    .iter()
                    .zip(&candidates)
                    .map(|(ms, algo)| format!("{} {ms:.4}", describe(algo)))
                    .collect();
                eprintln!(
                    "cuBLASLt {class:?}: chose #{fastest} of [{}] (ms per {TIMED_RUNS} runs)",
                    timings.join(", ")
                );
            }
        }
        self.fastest.insert(class, plan.algo);
        Ok(plan)
    }
}

/// Whether `MODERNBERT_CUBLASLT_LOG=1` asks for each size class's candidate timings on
/// stderr (for tuning runs of the benchmark).
fn log_choices() -> bool {
    static LOG: OnceLock<bool> = OnceLock::new();
    *LOG.get_or_init(|| std::env::var("MODERNBERT_CUBLASLT_LOG").is_ok_and(|v| v == "1"))
}

/// An algorithm as `id/tile/stages/split-k` (cuBLASLt's configuration attributes).
fn describe(algo: &lt_sys::cublasLtMatmulAlgo_t) -> String {
    use lt_sys::cublasLtMatmulAlgoConfigAttributes_t as Attr;
    let attribute = |attr: Attr| {
        let mut value = 0u32;
        let mut written = 0usize;
        // SAFETY: reads one 4-byte attribute of a live algorithm descriptor.
        let status = unsafe {
            lt_sys::cublasLtMatmulAlgoConfigGetAttribute(
                algo,
                attr,
                &mut value as *mut u32 as *mut c_void,
                std::mem::size_of::<u32>(),
                &mut written,
            )
        };
        (status == lt_sys::cublasStatus_t::CUBLAS_STATUS_SUCCESS).then_some(value)
    };
    let [id, tile, stages, split_k] = [
        Attr::CUBLASLT_ALGO_CONFIG_ID,
        Attr::CUBLASLT_ALGO_CONFIG_TILE_ID,
        Attr::CUBLASLT_ALGO_CONFIG_STAGES_ID,
        Attr::CUBLASLT_ALGO_CONFIG_SPLITK_NUM,
    ]
    .map(|attr| attribute(attr).map_or("?".to_string(), |v| v.to_string()));
    format!("{id}/{tile}/{stages}/{split_k}")
}

/// The descriptors of one problem and the algorithm that runs it.
struct Plan {
    desc: lt_sys::cublasLtMatmulDesc_t,
    a: lt_sys::cublasLtMatrixLayout_t,
    b: lt_sys::cublasLtMatrixLayout_t,
    d: lt_sys::cublasLtMatrixLayout_t,
    algo: lt_sys::cublasLtMatmulAlgo_t,
}

impl Plan {
    /// The descriptors of `p` (with a bias epilogue if `bias`), with the heuristic's first
    /// algorithm chosen, and the heuristic's candidates (up to [`CANDIDATES`], best guess first).
    ///
    /// # Safety
    /// `handle` must be a live cuBLASLt handle.
    unsafe fn new(
        handle: lt_sys::cublasLtHandle_t,
        p: &Problem,
        data_type: lt_sys::cudaDataType,
        bias: bool,
    ) -> Result<(Self, Vec<lt_sys::cublasLtMatmulAlgo_t>), SetupError> {
        fn err(what: &'static str) -> impl Fn(lt::CublasError) -> SetupError {
            move |e| format!("{what}: {e}")
        }
        // f32 stays f32 (no TF32); f16/bf16 accumulate in f32, as torch.matmul does.
        let desc = lt::create_matmul_desc(
            lt_sys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
            lt_sys::cudaDataType::CUDA_R_32F,
        )
        .map_err(err("cublasLtMatmulDescCreate"))?;
        for (attr, operand) in [
            (
                lt_sys::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_TRANSA,
                &p.a,
            ),
            (
                lt_sys::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_TRANSB,
                &p.b,
            ),
        ] {
            // cublasOperation_t (from cuBLAS proper, not in cuBLASLt's bindings): N = 0, T = 1.
            let op: i32 = operand.transposed.into();
            lt::set_matmul_desc_attribute(
                desc,
                attr,
                &op as *const _ as *const c_void,
                std::mem::size_of_val(&op),
            )
            .map_err(err("cublasLtMatmulDescSetAttribute"))?;
        }
        if bias {
            // The bias has D's dtype (cuBLASLt's default for f16/bf16/f32 outputs); its
            // pointer is set per call.
            let epilogue = lt_sys::cublasLtEpilogue_t::CUBLASLT_EPILOGUE_BIAS;
            lt::set_matmul_desc_attribute(
                desc,
                lt_sys::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_EPILOGUE,
                &epilogue as *const _ as *const c_void,
                std::mem::size_of_val(&epilogue),
            )
            .map_err(err("epilogue"))?;
        }
        let layout = |rows: usize, cols: usize, ld: usize, batch_stride: usize| {
            let layout = lt::create_matrix_layout(data_type, rows as u64, cols as u64, ld as i64)
                .map_err(err("cublasLtMatrixLayoutCreate"))?;
            if p.batch > 1 {
                let count = p.batch as i32;
                let stride = batch_stride as i64;
                lt::set_matrix_layout_attribute(
                    layout,
                    lt_sys::cublasLtMatrixLayoutAttribute_t::CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT,
                    &count as *const i32 as *const c_void,
                    std::mem::size_of::<i32>(),
                )
                .map_err(err("batch count"))?;
                lt::set_matrix_layout_attribute(
                    layout,
                    lt_sys::cublasLtMatrixLayoutAttribute_t::CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET,
                    &stride as *const i64 as *const c_void,
                    std::mem::size_of::<i64>(),
                )
                .map_err(err("batch stride"))?;
            }
            Ok::<_, SetupError>(layout)
        };
        let a = layout(p.a.rows, p.a.cols, p.a.ld, p.a.batch_stride)?;
        let b = layout(p.b.rows, p.b.cols, p.b.ld, p.b.batch_stride)?;
        let d = layout(p.n, p.m, p.n, p.n * p.m)?;
        let pref = lt::create_matmul_pref().map_err(err("cublasLtMatmulPreferenceCreate"))?;
        let workspace = WORKSPACE_BYTES as u64;
        lt::set_matmul_pref_attribute(
            pref,
            lt_sys::cublasLtMatmulPreferenceAttributes_t::CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
            &workspace as *const u64 as *const c_void,
            std::mem::size_of::<u64>(),
        )
        .map_err(err("workspace preference"))?;
        let mut results =
            [std::mem::zeroed::<lt_sys::cublasLtMatmulHeuristicResult_t>(); CANDIDATES];
        let mut count = 0;
        let status = lt_sys::cublasLtMatmulAlgoGetHeuristic(
            handle,
            desc,
            a,
            b,
            d,
            d,
            pref,
            CANDIDATES as i32,
            results.as_mut_ptr(),
            &mut count,
        );
        let _ = lt::destroy_matmul_pref(pref);
        status
            .result()
            .map_err(err("cublasLtMatmulAlgoGetHeuristic"))?;
        let candidates: Vec<_> = results[..count.max(0) as usize]
            .iter()
            .filter(|r| r.state == lt_sys::cublasStatus_t::CUBLAS_STATUS_SUCCESS)
            .map(|r| r.algo)
            .collect();
        let Some(&first) = candidates.first() else {
            return Err("no cuBLASLt algorithm for this problem".into());
        };
        Ok((
            Self {
                desc,
                a,
                b,
                d,
                algo: first,
            },
            candidates,
        ))
    }
}

impl Drop for Plan {
    fn drop(&mut self) {
        // SAFETY: created in `Plan::new` and dropped once.
        unsafe {
            let _ = lt::destroy_matrix_layout(self.a);
            let _ = lt::destroy_matrix_layout(self.b);
            let _ = lt::destroy_matrix_layout(self.d);
            let _ = lt::destroy_matmul_desc(self.desc);
        }
    }
}
