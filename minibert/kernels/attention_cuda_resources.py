"""What the compiler gives the CUDA attention kernels: registers, stack frame, spills and
shared memory per kernel, from ``ptxas -v`` on their PTX (no GPU needed: the CUDA toolkit
and NVRTC suffice) or from Numba's own counts on a device; and ``precompile``, which
compiles the kernels with explicit signatures ahead of their first launch.

A kernel that keeps its per-thread state in registers has no stack frame and no spills;
``tests/kernels/test_attention_cuda_ptx.py`` holds the float32 kernels at D = 64 to that.
"""
from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from typing import NamedTuple

import numpy as np
from numba import cuda

from .attention_cuda import build_kernels
from .attention_cuda_launch import KERNELS, MIN_BLOCKS, launch_config


def kernel_signatures(dtype):
    """Numba signatures of the six kernels (the padded three, then the varlen three) for
    C-contiguous arrays of ``dtype``, with the scalar types the host code passes
    (``kernel_scalars``, then ``start``, and ``seq_len`` for the varlen ones): for
    ``compile_ptx`` and for compiling ahead of the first launch."""
    from numba import types
    ft = types.float32 if np.dtype(dtype) == np.float32 else types.float64
    a4, a3, a2 = (types.Array(ft, n, "C") for n in (4, 3, 2))
    tiles = types.Array(types.int32, 2, "C")
    scalars = (ft, types.float32, ft, types.uint64, types.uint64, types.uint64)
    cu, vscalars = types.Array(types.int64, 1, "C"), scalars + (types.int64,)   # + seq_len
    return {
        "forward": (a4, a4, a4, a2, tiles) + scalars + (a4, a3),
        "dq": (a4, a4, a4, a4, a3, a2, tiles) + scalars + (a3, a3, a4),
        "dkdv": (a4, a4, a4, a4, a3, a3, a3, a2, tiles) + scalars + (a4, a4),
        "varlen_forward": (a4, a4, a4, cu) + vscalars + (a4, a3),
        "varlen_dq": (a4, a4, a4, a4, a3, cu) + vscalars + (a3, a3, a4),
        "varlen_dkdv": (a4, a4, a4, a4, a3, a3, a3, cu) + vscalars + (a4, a4),
    }


def precompile(dtype, D=64, block_q=None, block_k=None, lanes=None, names=KERNELS):
    """Compiles the kernels ``names`` (the padded three by default; ``VARLEN_KERNELS`` of
    ``attention_cuda_launch`` the varlen ones) for ``dtype`` and head size D with explicit
    signatures (``kernel_signatures``), ahead of their first launch, so that a timed or
    time-limited run does not compile inside it; returns the ``Kernels``. Needs a GPU (Numba loads the
    module into the current context)."""
    cfg = launch_config(D, dtype, block_q, block_k, lanes)
    kernels = build_kernels(np.dtype(dtype).str, cfg.D, cfg.block_q, cfg.block_k, cfg.lanes)
    sigs = kernel_signatures(dtype)
    for name in names:
        getattr(kernels, name).compile(sigs[name])
    return kernels


class Resources(NamedTuple):
    """What the compiler gives one kernel: registers a thread, stack frame and spill bytes a
    thread (local memory), static shared memory a block, and the blocks of
    ``threads`` threads an SM can hold by registers alone (65536 a Hopper SM)."""
    registers: int
    stack_bytes: int
    spill_stores: int
    spill_loads: int
    shared_bytes: int
    threads: int

    @property
    def blocks_by_registers(self):
        per_warp = -(-self.registers * 32 // 256) * 256     # allocated per warp in 256s
        warps = -(-self.threads // 32)
        return 65536 // (per_warp * warps) if self.registers else 0


_PTXAS = re.compile(r"Used (\d+) registers")
_FRAME = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
_SMEM = re.compile(r"(\d+) bytes smem")


def ptxas_report(dtype, D=64, block_q=None, block_k=None, lanes=None, arch="sm_90",
                 names=KERNELS):
    """``{kernel: Resources}`` for the kernels ``names`` (as ``precompile``) from ``ptxas -v``
    on the PTX Numba's CUDA compiler (NVVM) makes for ``arch``: what the hardware would get,
    with no GPU. Needs numba-cuda, the
    CUDA compiler libraries (NVVM, NVRTC) and ``ptxas`` on the PATH; raises RuntimeError
    naming what is missing."""
    ptxas = shutil.which("ptxas")
    if ptxas is None:
        raise RuntimeError("ptxas is not on the PATH (the CUDA toolkit)")
    cfg = launch_config(D, dtype, block_q, block_k, lanes)
    kernels = build_kernels(np.dtype(dtype).str, cfg.D, cfg.block_q, cfg.block_k, cfg.lanes)
    sigs = kernel_signatures(dtype)
    cc = (int(arch[3]), int(arch[4:]))
    report = {}
    for name in names:
        ptx, _ = cuda.compile_ptx(getattr(kernels, name).py_func, sigs[name], cc=cc,
                                  launch_bounds=(cfg.threads(name), MIN_BLOCKS))
        with tempfile.NamedTemporaryFile("w", suffix=".ptx") as f:
            f.write(ptx)
            f.flush()
            run = subprocess.run([ptxas, "-v", "--gpu-name", arch, f.name, "-o", "/dev/null"],
                                 capture_output=True, text=True, check=False)
        text = run.stdout + run.stderr
        regs, frame, smem = _PTXAS.search(text), _FRAME.search(text), _SMEM.search(text)
        if run.returncode or regs is None or frame is None:
            raise RuntimeError(f"ptxas failed on the {name} kernel: {text[-500:]}")
        report[name] = Resources(int(regs.group(1)), *(int(x) for x in frame.groups()),
                                 int(smem.group(1)) if smem else 0, cfg.threads(name))
    return report


def device_report(dtype, D=64, block_q=None, block_k=None, lanes=None, names=KERNELS):
    """``{kernel: Resources}`` from Numba's own counts on the current GPU: the compiled
    kernel's ``regs_per_thread``, ``local_mem_per_thread`` and ``shared_mem_per_block``
    (what the dispatcher's ``get_regs_per_thread`` etc. return), read off the module the
    driver loaded. Local memory is the stack frame with the spills in it; the driver does
    not split it, so ``spill_stores`` and ``spill_loads`` read -1. Compiles the kernels
    ``names`` (as ``precompile``) for ``dtype`` and D (ahead of their first launch) if they
    are not yet; needs a GPU."""
    cfg = launch_config(D, dtype, block_q, block_k, lanes)
    kernels = build_kernels(np.dtype(dtype).str, cfg.D, cfg.block_q, cfg.block_k, cfg.lanes)
    sigs = kernel_signatures(dtype)
    report = {}
    for name in names:
        compiled = getattr(kernels, name).compile(sigs[name])
        report[name] = Resources(int(compiled.regs_per_thread),
                                 int(compiled.local_mem_per_thread), -1, -1,
                                 int(compiled.shared_mem_per_block), cfg.threads(name))
    return report


def format_report(report, title=""):
    """A table of ``{kernel: Resources}`` for printing."""
    lines = [title] if title else []
    lines.append(f"  {'kernel':<14} {'regs':>5} {'stack B':>8} {'spill st/ld B':>14} "
                 f"{'smem B':>7} {'threads':>7} {'blocks/SM by regs':>18}")
    for name, r in report.items():
        spills = "n/a" if r.spill_stores < 0 else f"{r.spill_stores}/{r.spill_loads}"
        lines.append(f"  {name:<14} {r.registers:>5} {r.stack_bytes:>8} {spills:>14} "
                     f"{r.shared_bytes:>7} {r.threads:>7} {r.blocks_by_registers:>18}")
    return "\n".join(lines)
