#!/usr/bin/env python3
"""What other NVRTC options would buy a forward kernel that CubeCL generated, measured.

CubeCL 0.10 compiles every CUDA kernel with fixed NVRTC options (no `--ftz`, no register
cap), so its fast `exp` (`__expf`) carries the denormal fix-up of `ex2.approx.f32`. This
takes the exact source CubeCL generated for the band forward (`kernel_mma_band.rs`) and the
global forward (`kernel_mma.rs`), bf16 with head_dim 64, compiles it with CubeCL's options and
with `--ftz=true` (and with a 128-register cap as well), and for each build prints its
registers, its static SASS mix (`ptxas`, `cuobjdump`) and its time at B=64 S=512 and B=4
S=8192 with 12 heads, launched through the driver API with the arguments CubeCL's launch
passes (the six buffers, then the info struct: the scalars, then each buffer's length twice,
in vectors). Each build's output is checked against a float32 reference on the first
sequence, and every output row must be written.

Run a binary with `CUBECL_DEBUG_LOG=<file>` first, on the device (see `kernel_resources.py`):

    CUBECL_DEBUG_LOG=/tmp/cubecl.log attention-bench --backend cuda --dtype bf16 --iters 1
    python3 scripts/nvrtc_options_probe.py /tmp/cubecl.log
"""

import collections
import ctypes
import os
import re
import shutil
import subprocess
import sys

import torch

import kernel_resources as kr

VARIANTS = {"cubecl": [], "ftz": ["--ftz=true"], "ftz+r128": ["--ftz=true", "--maxrregcount=128"]}
HEADS, HEAD_DIM = 12, 64
SHAPES = [(64, 512), (4, 8192)]


def shared_bytes(source):
    """Dynamic shared memory: the end of the kernel's last allocation (each is declared after
    a `// Shared value size: B bytes` or `// Shared array size: N, B bytes` comment)."""
    ends = [
        int(offset) + int(size)
        for size, offset in re.findall(
            r"// Shared (?:value|array) size: (?:\d+, )?(\d+) bytes\n[^\n]*dynamic_shared_mem\[(\d+)\]",
            source,
        )
    ]
    return max(ends)


def static_mix(ptxas, ptx, stem):
    """Instructions in the SASS, in all and per `HMMA`, and the counts behind the exponential."""
    with open(stem + ".ptx", "wb") as out:
        out.write(ptx.rstrip(b"\0"))
    subprocess.run([ptxas, "-arch=sm_90a", stem + ".ptx", "-o", stem + ".cubin"], check=True)
    cuobjdump = shutil.which("cuobjdump") or os.path.join(os.path.dirname(ptxas), "cuobjdump")
    sass = subprocess.run([cuobjdump, "-sass", stem + ".cubin"], capture_output=True, text=True).stdout
    ops = collections.Counter()
    for line in sass.splitlines():
        match = re.match(r"\s*/\*[0-9a-f]{4,}\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_]*)", line)
        if match:
            ops[match.group(1)] += 1
    total = sum(ops.values())
    return f"static {total}, {total / ops['HMMA']:.2f} per HMMA, FMUL {ops['FMUL']}, FSETP {ops['FSETP']}, MUFU {ops['MUFU']}"


class Driver:
    def __init__(self):
        torch.zeros(1, device="cuda")  # the primary context, current on this thread
        self.cu = ctypes.CDLL("libcuda.so.1")

    def check(self, result, what):
        if result != 0:
            raise RuntimeError(f"{what}: CUresult {result}")

    def load(self, ptx, name, shared):
        module, function = ctypes.c_void_p(), ctypes.c_void_p()
        self.check(self.cu.cuModuleLoadData(ctypes.byref(module), ctypes.c_char_p(ptx)), "cuModuleLoadData")
        self.check(self.cu.cuModuleGetFunction(ctypes.byref(function), module, name.encode()), "cuModuleGetFunction")
        # CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, then CU_FUNC_ATTRIBUTE_NUM_REGS
        self.check(self.cu.cuFuncSetAttribute(function, 8, shared), "cuFuncSetAttribute")
        registers = ctypes.c_int()
        self.check(self.cu.cuFuncGetAttribute(ctypes.byref(registers), 4, function), "cuFuncGetAttribute")
        return function, registers.value


def info_type(source):
    """The kernel's `info_st`, as a ctypes structure."""
    body = re.search(r"struct info_st \{(.*?)\};", source, re.S).group(1)
    fields = [
        (field, (ctypes.c_float if ty == "float" else ctypes.c_uint32) * int(count))
        for ty, field, count in re.findall(r"(float|uint32)\s+(\w+)\[(\d+)\];", body)
    ]
    return type("Info", (ctypes.Structure,), {"_fields_": fields})


def inputs(batch, seq, window):
    total = batch * seq
    g = torch.Generator(device="cuda").manual_seed(1)
    q, k, v = (
        torch.randn(total, HEADS, HEAD_DIM, device="cuda", generator=g).to(torch.bfloat16) for _ in range(3)
    )
    cu_seqlens = torch.arange(0, total + 1, seq, device="cuda", dtype=torch.int32)
    scores = torch.einsum("qhd,khd->hqk", q[:seq].float(), k[:seq].float()) * HEAD_DIM**-0.5
    if window is not None:
        pos = torch.arange(seq, device="cuda")
        scores = scores.masked_fill((pos[:, None] - pos[None, :]).abs() > window, float("-inf"))
    reference = torch.einsum("hqk,khd->qhd", scores.softmax(-1), v[:seq].float())
    return q, k, v, cu_seqlens, reference


def probe(driver, nvrtc, ptxas, text, kernel, window, blocks, block_m_of_planes):
    name = kernel + "_f_bf16_i_i32_n_8"
    candidates = [source for _, source in kr.kernels_in_log(text) if name in source]
    if not candidates:
        sys.exit(f"{name} is not in the log")
    # Warm-up shapes may add smaller instances; the benchmark's is the largest.
    source = max(candidates, key=shared_bytes)
    shared = shared_bytes(source)
    threads = int(re.search(r"__launch_bounds__\((\d+)\)", source).group(1))
    block_m = block_m_of_planes(threads // 32)
    Info = info_type(source)
    print(f"== {kernel}: {shared} bytes of shared memory, {threads} units per cube")
    functions = {}
    for variant, extra in VARIANTS.items():
        ptx = kr.compile_ptx(nvrtc, source, "sm_90a", kr.CUDA_INCLUDE, extra).encode() + b"\0"
        functions[variant] = driver.load(ptx, name, shared)
        print(f"{variant:9s} {functions[variant][1]} registers, {static_mix(ptxas, ptx, f'/tmp/probe_{variant}')}")
    print("| shape | build | ms | rel. error (sequence 0) | rows unwritten |")
    print("|---|---|---|---|---|")
    for round_ in range(2):
        for batch, seq in SHAPES:
            q, k, v, cu_seqlens, reference = inputs(batch, seq, window)
            for variant, (function, _) in functions.items():
                out = torch.full_like(q, float("nan"))
                lse = torch.empty(q.shape[0], HEADS, device="cuda")
                info = Info()
                info.scalars_float[0] = HEAD_DIM**-0.5
                if blocks is not None:
                    info.scalars_uint32[0] = blocks
                lengths = [q.numel() // 8, k.numel() // 8, v.numel() // 8, batch + 1, out.numel() // 8, lse.numel()]
                for i, length in enumerate(lengths):
                    info.static_meta[i] = length
                    info.static_meta[len(lengths) + i] = length
                pointers = [ctypes.c_void_p(t.data_ptr()) for t in (q, k, v, cu_seqlens, out, lse)]
                params = (ctypes.c_void_p * 7)(*[ctypes.addressof(p) for p in pointers], ctypes.addressof(info))
                grid = (-(-seq // block_m), HEADS, batch)
                stream = ctypes.c_void_p(torch.cuda.current_stream().cuda_stream)

                def launch():
                    driver.check(
                        driver.cu.cuLaunchKernel(function, *grid, 32, threads // 32, 1, shared, stream, params, None),
                        "cuLaunchKernel",
                    )

                launch()
                torch.cuda.synchronize()
                error = ((out[:seq].float() - reference).abs().max() / reference.abs().max()).item()
                unwritten = torch.isnan(out).any(dim=-1).sum().item()
                for _ in range(10):
                    launch()
                iters = 200 if window is not None or seq == 512 else 20
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                for _ in range(iters):
                    launch()
                end.record()
                torch.cuda.synchronize()
                ms = start.elapsed_time(end) / iters
                print(f"| B={batch} S={seq} | {variant} | {ms:.4f} | {error:.2e} | {unwritten} |", flush=True)


def main():
    text = open(sys.argv[1], errors="replace").read()
    nvrtc, _ = kr.find_nvrtc()
    ptxas = kr.find_ptxas()
    driver = Driver()
    # The band forward: planes of one 16-row m-tile, 4 consecutive blocks per cube, ±64.
    probe(driver, nvrtc, ptxas, text, "flash_attention_varlen_band_kernel", 64, 4, lambda planes: 16 * planes * 4)
    # The global forward: planes of two 16-row m-tiles.
    probe(driver, nvrtc, ptxas, text, "flash_attention_varlen_mma_kernel", None, None, lambda planes: 32 * planes)


if __name__ == "__main__":
    main()
