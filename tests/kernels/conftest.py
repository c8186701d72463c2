"""Fixtures of the kernel tests: ``rung``, which loads a rung of the study ladder by path, and
``compile_ptx``, Numba's CUDA compiler where it can run without a GPU.

The rungs live in ``kernels/`` at the repository root, a folder of standalone scripts and
not a package (a top-level ``kernels`` package would shadow Hugging Face's, which
transformers imports), so the tests cannot import them by name.
"""
import importlib.util
import os
import pathlib
import sys

import pytest

#: The ladder's folder: kernels/ beside tests/
KERNELS = pathlib.Path(__file__).resolve().parents[2] / "kernels"


def load_rung(name):
    """The module of ``kernels/<name>.py`` (e.g. ``"attn_v1_naive"``), loaded once per
    process and registered in ``sys.modules`` under its file name, where Numba's cache and
    monkeypatch find it."""
    path = KERNELS / f"{name}.py"
    module = sys.modules.get(name)
    if module is not None and pathlib.Path(module.__file__).resolve() == path.resolve():
        return module
    if not path.is_file():
        raise FileNotFoundError(f"no rung {name!r}: {path} does not exist")
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


@pytest.fixture(scope="session")
def rung():
    """``rung(name)``: the module of ``kernels/<name>.py``."""
    return load_rung


@pytest.fixture(scope="session")
def compile_ptx():
    """``numba.cuda.compile_ptx`` (NVVM: no GPU or driver needed), or a skip where it cannot
    run: under the simulator, which replaces ``numba.cuda``; where numba-cuda is not
    installed (the kernels are written for it: Numba's older bundled CUDA target wants a
    driver to compile them); where the CUDA compiler libraries (NVVM, NVRTC) are missing."""
    if os.environ.get("NUMBA_ENABLE_CUDASIM", "0") == "1":
        pytest.skip("the simulator replaces numba.cuda: compile checks run without it")
    pytest.importorskip("numba_cuda", reason="numba-cuda is not installed (the gpu or sim extra)")
    try:
        from numba import cuda, types

        def probe(x):
            x[0] = 1.0
        cuda.compile_ptx(probe, (types.float32[::1],), cc=(8, 0))
    except Exception as exc:                   # no CUDA compiler libraries on this machine
        pytest.skip(f"numba.cuda cannot compile here ({type(exc).__name__}: {exc})"[:300])
    return cuda.compile_ptx
