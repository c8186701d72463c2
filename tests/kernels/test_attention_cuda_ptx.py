"""The CUDA kernels compile for a real GPU, and fit it: Numba's CUDA compiler (NVVM, driven by
``numba.cuda.compile_ptx``) turns every kernel of ``attention_cuda.py`` and of the GPU
ladder into PTX, without a GPU or a driver, and ``ptxas`` (the CUDA toolkit's assembler)
reports what the hardware would get for Hopper (sm_90): registers, stack frame, spills.

The simulator (``test_attention_cuda.py``) runs the kernels as Python, so it cannot see
what only the compiler sees: a construct Numba CUDA does not support, a type that does not
unify, an integer mixed with a uint64 that silently becomes a float64, a register array
indexed at run time that lands in local memory. These tests compile the kernels with the
types the host code passes; the float32 kernels hold no float64 arithmetic, and at D = 64
they use no local memory at all (no stack frame, no spills) and at most 128 registers a
thread, so that four blocks of 128 threads fit an SM's 65536 registers. They run where
the CUDA compiler libraries are found (NVVM and NVRTC, e.g. the ``nvidia-cuda-nvrtc``
wheel of the ``sim`` extra next to a CUDA toolkit) and, for the resource test, ``ptxas``;
they skip elsewhere, and under the simulator, which replaces ``numba.cuda``.
"""
import shutil

import numpy as np
import pytest

pytestmark = pytest.mark.slow


def _signatures(types, ft):
    a4, a3, a2 = (types.Array(ft, n, "C") for n in (4, 3, 2))
    tiles = types.Array(types.int32, 2, "C")
    scalars = (ft, types.float32, ft, types.uint64, types.uint64)   # attention_cuda.kernel_scalars
    start = (types.uint64,)             # the production kernels' element of the first probability
    return {
        "forward": (a4, a4, a4, a2, tiles) + scalars + start + (a4, a3),
        "dq": (a4, a4, a4, a4, a3, a2, tiles) + scalars + start + (a3, a3, a4),
        "dkdv": (a4, a4, a4, a4, a3, a3, a3, a2, tiles) + scalars + start + (a4, a4),
        "rung": (a4, a4, a4, a2) + scalars + (a4, a3),
    }


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_production_kernels_compile(compile_ptx, dtype):
    from numba import types

    from minibert.kernels import attention_cuda, attention_cuda_resources
    cfg = attention_cuda.launch_config(64, dtype)
    kernels = attention_cuda.build_kernels(np.dtype(dtype).str, 64, cfg.block_q, cfg.block_k,
                                           cfg.lanes)
    sigs = attention_cuda_resources.kernel_signatures(dtype)
    assert sigs["forward"] == _signatures(types, getattr(types, dtype))["forward"]
    for name in attention_cuda.KERNELS:
        ptx, _ = compile_ptx(getattr(kernels, name).py_func, sigs[name], cc=(8, 0))
        assert ".entry" in ptx, name
        if dtype == "float32":
            assert ".f64" not in ptx, f"{name}: float64 arithmetic in the float32 kernel"


def test_float32_kernels_fit_registers_without_local_memory(compile_ptx):
    """ptxas for sm_90 on the float32 kernels at D = 64 with the default tiles and lanes, the
    padded ones and the varlen ones (the same bodies; their compile check is this one):
    0 bytes of stack frame and of spill stores and loads, registers <= 65536 / (4 x 128)."""
    if shutil.which("ptxas") is None:
        pytest.skip("ptxas is not on the PATH (the CUDA toolkit)")
    from minibert.kernels import attention_cuda, attention_cuda_resources
    report = attention_cuda_resources.ptxas_report(
        "float32", 64, names=attention_cuda.KERNELS + attention_cuda.VARLEN_KERNELS)
    print(attention_cuda_resources.format_report(report, "float32, D = 64, sm_90 (ptxas -v)"))
    for name, r in report.items():
        assert r.threads == 128, f"{name}: {r.threads} threads a block, expected 128"
        assert r.stack_bytes == 0, f"{name}: {r.stack_bytes} bytes of stack frame"
        assert r.spill_stores == 0 and r.spill_loads == 0, (
            f"{name}: spills {r.spill_stores} B stored, {r.spill_loads} B loaded")
        assert r.registers <= 65536 // (4 * 128), f"{name}: {r.registers} registers a thread"
        assert r.blocks_by_registers >= 4, name
        assert r.shared_bytes <= attention_cuda.STATIC_SHARED_LIMIT, name


def test_ladder_rungs_compile(compile_ptx, rung):
    from numba import types
    attn_cuda_v1_naive, attn_cuda_v2_shared_tiles, attn_cuda_v3_online_softmax = map(
        rung, ("attn_cuda_v1_naive", "attn_cuda_v2_shared_tiles", "attn_cuda_v3_online_softmax"))
    sig = _signatures(types, types.float32)["rung"]
    kernels = {"v1": attn_cuda_v1_naive.build_kernel("<f4", 64),
               "v2": attn_cuda_v2_shared_tiles.build_kernel("<f4", 64, 64, 64),
               "v3": attn_cuda_v3_online_softmax.build_kernel("<f4", 64, 64, 64)}
    for name, kernel in kernels.items():
        ptx, _ = compile_ptx(kernel.py_func, sig, cc=(8, 0))
        assert ".entry" in ptx and ".f64" not in ptx, name
