"""The dropout and segment-sum CUDA kernels compile for a real GPU (``numba.cuda.compile_ptx``,
NVVM, no GPU or driver needed) with the signatures their host code launches them with, and
``ptxas`` (sm_90) gives them no local memory. The simulator runs them as Python and cannot
see a type that does not unify or an int64 mixed with a uint64 that silently becomes a
float64: so the float32 kernels are also checked to hold no float64 instruction. Skipped
where the CUDA compiler libraries (or, for the resource test, ``ptxas``) are missing, and
under the simulator, which replaces ``numba.cuda``.
"""
import os
import re
import shutil
import subprocess

import numpy as np
import pytest

pytestmark = pytest.mark.slow


def _kernels(dtype):
    from minibert.kernels import dropout_cuda, embedding_cuda
    chunk, span = embedding_cuda.build_kernels(np.dtype(dtype).str)
    sig_chunk, sig_span = embedding_cuda.signatures(dtype)
    return {"dropout": (dropout_cuda.build_kernel(np.dtype(dtype).str), dropout_cuda.signature(dtype)),
            "dropout rows": (dropout_cuda.build_rows_kernel(np.dtype(dtype).str),
                             dropout_cuda.signature_rows(dtype)),
            "segment chunks": (chunk, sig_chunk), "segment spans": (span, sig_span)}


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_kernels_compile_and_float32_stays_float32(compile_ptx, dtype):
    for name, (kernel, sig) in _kernels(dtype).items():
        ptx, _ = compile_ptx(kernel.py_func, sig, cc=(9, 0))
        assert ".entry" in ptx, name
        if dtype == "float32":
            f64 = [line.strip() for line in ptx.splitlines() if ".f64" in line]
            assert not f64, f"{name}: float64 instructions in the float32 kernel: {f64[:3]}"


@pytest.mark.skipif(shutil.which("ptxas") is None, reason="ptxas is not on the PATH")
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_no_local_memory(compile_ptx, dtype, tmp_path):
    for name, (kernel, sig) in _kernels(dtype).items():
        ptx, _ = compile_ptx(kernel.py_func, sig, cc=(9, 0))
        path = tmp_path / "k.ptx"
        path.write_text(ptx)
        run = subprocess.run(["ptxas", "-v", "--gpu-name", "sm_90", str(path), "-o", os.devnull],
                             capture_output=True, text=True, check=False)
        text = run.stdout + run.stderr
        frame = re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads",
                          text)
        assert run.returncode == 0 and frame, text[-500:]
        assert frame.groups() == ("0", "0", "0"), f"{name} {dtype}: {frame.group(0)}"
        regs = int(re.search(r"Used (\d+) registers", text).group(1))
        print(f"{name} {dtype}: {regs} registers, {frame.group(0)}")
