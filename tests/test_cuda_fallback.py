"""What happens where minibert's CUDA kernels cannot run: ``backend.cuda_kernels_available``
probes once (compile and launch a tiny kernel), caches the answer, and on failure warns
once; the ops then keep their textbook code for GPU arrays. Run in the main test process:
the probe is replaced, so nothing here imports ``numba.cuda`` (the whole model on the
fallback path runs under the simulator: ``tests/kernels/test_model_cuda_sim.py``).
"""
import warnings

import numpy as np
import pytest

from minibert import backend
from minibert.ops import use_cuda_kernel


@pytest.fixture
def fresh(monkeypatch):
    """A process that has not asked yet, with numba-cuda "installed"."""
    monkeypatch.setattr(backend, "_numba_cuda_ok", None)
    monkeypatch.setattr(backend, "_numba_cuda_problem", None)
    monkeypatch.setattr(backend, "numba_cuda_installed", lambda: True)
    return monkeypatch


def _gpu_like():
    return type("ndarray", (), {"__module__": "cupy._core.core", "dtype": np.dtype(np.float32)})()


def test_failing_probe_warns_once_and_the_ops_fall_back(fresh):
    tries = []

    def probe():
        tries.append(1)
        raise RuntimeError("planted: driver older than the PTX")
    fresh.setattr(backend, "_probe_cuda_kernels", probe)
    x = _gpu_like()
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        answers = [use_cuda_kernel(x, x) for _ in range(3)] + [backend.cuda_kernels_available()]
    assert answers == [False] * 4
    assert len(tries) == 1                                   # probed once, cached
    assert [w.category for w in said] == [RuntimeWarning]    # said once
    assert "planted: driver older than the PTX" in str(said[0].message)
    assert "textbook" in str(said[0].message)
    assert "planted" in backend.cuda_kernels_problem()


def test_direct_kernel_call_says_why(fresh):
    """Called directly (not through an op), the fused attention refuses with the reason."""
    import types

    from minibert.kernels import fused_attention_forward

    def probe():
        raise RuntimeError("planted: no NVVM")
    fresh.setattr(backend, "_probe_cuda_kernels", probe)
    attrs = {"__module__": "cupy._core.core", "shape": (1, 1, 2, 2), "ndim": 4,
             "dtype": np.dtype(np.float32), "strides": (16, 16, 8, 4),
             "flags": types.SimpleNamespace(c_contiguous=True)}
    fake = type("ndarray", (), attrs)()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(ImportError, match=r"needs numba-cuda .*planted: no NVVM"):
            fused_attention_forward(fake, fake, fake, None, None)


def test_working_probe_runs_once_and_says_nothing(fresh):
    tries = []
    fresh.setattr(backend, "_probe_cuda_kernels", lambda: tries.append(1))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert all(use_cuda_kernel(_gpu_like()) for _ in range(3))
    assert len(tries) == 1 and backend.cuda_kernels_problem() is None


def test_not_installed_is_no_surprise(fresh):
    """Without numba-cuda: False, no probe, no warning (the textbook ops are the plan)."""
    fresh.setattr(backend, "numba_cuda_installed", lambda: False)
    fresh.setattr(backend, "_probe_cuda_kernels", lambda: pytest.fail("probed"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert backend.cuda_kernels_available() is False
    assert "not installed" in backend.cuda_kernels_problem()
