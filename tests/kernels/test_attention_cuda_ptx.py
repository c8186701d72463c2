"""The CUDA kernels compile for a real GPU: Numba's CUDA compiler (NVVM, driven by
``numba.cuda.compile_ptx``) turns every kernel of ``attention_cuda.py`` and of the GPU
ladder into PTX for compute capability 8.0, without a GPU or a driver.

The simulator (``test_attention_cuda.py``) runs the kernels as Python, so it cannot see
what only the compiler sees: a construct Numba CUDA does not support, a type that does not
unify, an integer mixed with a uint64 that silently becomes a float64. This test
compiles them with the types the host code passes, and checks that the float32 kernels
hold no float64 arithmetic at all. It runs where the CUDA compiler libraries are found
(NVVM and NVRTC, e.g. the ``nvidia-cuda-nvrtc`` wheel next to a CUDA toolkit) and skips
elsewhere, and under the simulator, which replaces ``numba.cuda``.
"""
import os

import numpy as np
import pytest

if os.environ.get("NUMBA_ENABLE_CUDASIM", "0") == "1":
    pytest.skip("the simulator replaces numba.cuda: compile checks run without it",
                allow_module_level=True)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def compiler():
    """``(cuda, numba.types)``, or a skip where NVVM/NVRTC cannot be loaded. The kernels are
    written for ``numba-cuda`` (the gpu and sim extras install it); Numba's older bundled
    CUDA target, found where numba-cuda is not installed, wants a driver to compile them."""
    pytest.importorskip("numba_cuda", reason="numba-cuda is not installed (the gpu or sim extra)")
    try:
        from numba import cuda, types

        def probe(x):
            x[0] = 1.0
        cuda.compile_ptx(probe, (types.float32[::1],), cc=(8, 0))
    except Exception as exc:                   # no CUDA compiler libraries on this machine
        pytest.skip(f"numba.cuda cannot compile here ({type(exc).__name__}: {exc})"[:300])
    return cuda, types


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
def test_production_kernels_compile(compiler, dtype):
    cuda, types = compiler
    from minibert.kernels import attention_cuda
    D = 64
    tile = attention_cuda.default_tile(D, np.dtype(dtype).itemsize)
    kernels = attention_cuda.build_kernels(np.dtype(dtype).str, D, tile, tile)
    sigs = _signatures(types, getattr(types, dtype))
    for name in ("forward", "dq", "dkdv"):
        ptx, _ = cuda.compile_ptx(getattr(kernels, name).py_func, sigs[name], cc=(8, 0))
        assert ".entry" in ptx, name
        if dtype == "float32":
            assert ".f64" not in ptx, f"{name}: float64 arithmetic in the float32 kernel"


def test_ladder_rungs_compile(compiler, rung):
    cuda, types = compiler
    attn_cuda_v1_naive, attn_cuda_v2_shared_tiles, attn_cuda_v3_online_softmax = map(
        rung, ("attn_cuda_v1_naive", "attn_cuda_v2_shared_tiles", "attn_cuda_v3_online_softmax"))
    sig = _signatures(types, types.float32)["rung"]
    kernels = {"v1": attn_cuda_v1_naive.build_kernel("<f4", 64),
               "v2": attn_cuda_v2_shared_tiles.build_kernel("<f4", 64, 64, 64),
               "v3": attn_cuda_v3_online_softmax.build_kernel("<f4", 64, 64, 64)}
    for name, kernel in kernels.items():
        ptx, _ = cuda.compile_ptx(kernel.py_func, sig, cc=(8, 0))
        assert ".entry" in ptx and ".f64" not in ptx, name
