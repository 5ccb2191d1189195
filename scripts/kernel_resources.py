#!/usr/bin/env python3
"""What each CubeCL CUDA kernel costs the SM, without a profiler: registers per thread,
spills, stack and shared memory, from `ptxas -v` on the exact source CubeCL generated.

Run a binary with `CUBECL_DEBUG_LOG=<file>` (CubeCL then logs every kernel's CUDA source as
it compiles it), then:

    python3 scripts/kernel_resources.py <file> [--match attention] [--arch sm_90a] [--keep DIR]

Each source is compiled to PTX with NVRTC (the CUDA toolkit's, or the one PyTorch ships) and
assembled with `ptxas -v` (the toolkit's, or Triton's copy), with the options CubeCL uses.
Prints one line per kernel; `--keep DIR` also writes each `.cu`, `.ptx` and the ptxas log.
"""

import argparse
import ctypes
import glob
import os
import re
import shutil
import subprocess
import sys


# CUDA's headers, which CubeCL's kernels include (CubeCL looks for them the same way).
CUDA_INCLUDE = os.environ.get("CUDA_PATH", "/usr/local/cuda") + "/include"


def find_nvrtc():
    candidates = sorted(glob.glob("/usr/local/cuda/lib64/libnvrtc.so*"))
    try:
        import nvidia.cuda_nvrtc

        for root in nvidia.cuda_nvrtc.__path__:
            candidates += sorted(glob.glob(os.path.join(root, "lib", "libnvrtc.so*")))
    except ImportError:
        pass
    for path in candidates:
        if "builtins" not in path:
            return ctypes.CDLL(path), path
    sys.exit("no libnvrtc found (looked in /usr/local/cuda/lib64 and nvidia.cuda_nvrtc)")


def find_ptxas():
    for path in [shutil.which("ptxas"), "/usr/local/cuda/bin/ptxas"]:
        if path and os.path.exists(path):
            return path
    try:
        import triton

        path = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas")
        if os.path.exists(path):
            return path
    except ImportError:
        pass
    sys.exit("no ptxas found (PATH, /usr/local/cuda/bin, triton/backends/nvidia/bin)")


def kernels_in_log(text):
    """(name, source) for every `[START_KERNEL_COMPILATION]` block of a CubeCL log."""
    blocks = re.findall(
        r"\[START_KERNEL_COMPILATION\](.*?)source:\n```\w*\n(.*?)\n```\n\[END_KERNEL_COMPILATION\]",
        text,
        re.S,
    )
    for header, source in blocks:
        name = re.search(r"name: (.*)", header)
        yield (name.group(1).strip() if name else "?"), source


def compile_ptx(nvrtc, source, arch, include, extra=()):
    """PTX of `source` under CubeCL's NVRTC options, plus `extra` ones."""
    program = ctypes.c_void_p()
    check(nvrtc, nvrtc.nvrtcCreateProgram(ctypes.byref(program), source.encode(), None, 0, None, None))
    options = [f"--gpu-architecture={arch}", f"--include-path={include}", "-lineinfo"]
    if os.path.isdir(os.path.join(include, "cccl")):
        options.append(f"--include-path={os.path.join(include, 'cccl')}")
    options += extra
    argv = (ctypes.c_char_p * len(options))(*[o.encode() for o in options])
    status = nvrtc.nvrtcCompileProgram(program, len(options), argv)
    if status != 0:
        size = ctypes.c_size_t()
        nvrtc.nvrtcGetProgramLogSize(program, ctypes.byref(size))
        log = ctypes.create_string_buffer(size.value)
        nvrtc.nvrtcGetProgramLog(program, log)
        raise RuntimeError(log.value.decode(errors="replace"))
    size = ctypes.c_size_t()
    check(nvrtc, nvrtc.nvrtcGetPTXSize(program, ctypes.byref(size)))
    ptx = ctypes.create_string_buffer(size.value)
    check(nvrtc, nvrtc.nvrtcGetPTX(program, ptx))
    return ptx.value.decode()


def check(nvrtc, status):
    if status != 0:
        nvrtc.nvrtcGetErrorString.restype = ctypes.c_char_p
        raise RuntimeError(nvrtc.nvrtcGetErrorString(status).decode())


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("log")
    parser.add_argument("--match", default="", help="only kernels whose name contains this")
    parser.add_argument("--arch", default="sm_90a")
    parser.add_argument("--include", default=CUDA_INCLUDE)
    parser.add_argument("--keep", help="write each kernel's .cu, .ptx and ptxas log here")
    args = parser.parse_args()

    nvrtc, nvrtc_path = find_nvrtc()
    ptxas = find_ptxas()
    print(f"nvrtc: {nvrtc_path}\nptxas: {ptxas}\n")
    print("| kernel | registers | spill stores | spill loads | stack | shared (static) |")
    print("|---|---|---|---|---|---|")
    seen = set()
    with open(args.log, errors="replace") as f:
        text = f.read()
    for index, (name, source) in enumerate(kernels_in_log(text)):
        if args.match not in name or source in seen:
            continue
        seen.add(source)
        short = name.split("<")[0] + (f" #{index}")
        try:
            ptx = compile_ptx(nvrtc, source, args.arch, args.include)
        except RuntimeError as error:
            print(f"| {short} | NVRTC failed: {str(error).splitlines()[0][:120]} |||||")
            continue
        stem = os.path.join(args.keep or "/tmp", f"kernel{index}")
        if args.keep:
            os.makedirs(args.keep, exist_ok=True)
            with open(stem + ".cu", "w") as out:
                out.write(f"// {name}\n{source}\n")
        with open(stem + ".ptx", "w") as out:
            out.write(ptx)
        run = subprocess.run(
            [ptxas, "-v", f"-arch={args.arch}", stem + ".ptx", "-o", stem + ".cubin"],
            capture_output=True,
            text=True,
        )
        log = run.stderr + run.stdout
        if args.keep:
            with open(stem + ".ptxas.txt", "w") as out:
                out.write(log)
        registers = re.search(r"Used (\d+) registers", log)
        spills = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", log)
        stack = re.search(r"(\d+) bytes stack frame", log)
        shared = re.search(r"(\d+) bytes smem", log)
        print(
            f"| {short} | {registers.group(1) if registers else '?'} | "
            f"{spills.group(1) if spills else '?'} | {spills.group(2) if spills else '?'} | "
            f"{stack.group(1) if stack else '?'} | {shared.group(1) if shared else '0'} |"
        )


if __name__ == "__main__":
    main()
