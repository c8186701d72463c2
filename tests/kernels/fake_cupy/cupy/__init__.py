"""A stand-in for CuPy, for one test only (``tests/kernels/test_model_on_fake_cupy.py``, which
puts this folder on ``sys.path`` of a subprocess): NumPy arrays whose type says it is
``cupy._core.core.ndarray``, so that minibert takes every GPU branch (``xp`` is this module,
attention goes to the CUDA kernel, which the CUDA simulator runs). It proves the plumbing,
not CuPy's API: the functions are NumPy's, their array results re-typed.
"""
import numpy as _np


class ndarray(_np.ndarray):
    """A NumPy array that calls itself a CuPy array."""

    def get(self):
        return _np.asarray(self).copy()


ndarray.__module__ = "cupy._core.core"


def _wrap(x):
    if isinstance(x, _np.ndarray) and not isinstance(x, ndarray):
        return x.view(ndarray)
    if isinstance(x, tuple):
        return tuple(_wrap(y) for y in x)
    if isinstance(x, list):
        return [_wrap(y) for y in x]
    return x


def __getattr__(name):
    obj = getattr(_np, name)
    if isinstance(obj, type) or not callable(obj):
        return obj

    def call(*args, **kwargs):
        return _wrap(obj(*args, **kwargs))
    call.__name__ = name
    return call


class _Stream:
    ptr = 0


class _Runtime:
    @staticmethod
    def getDeviceCount():
        return 1


class cuda:                                        # noqa: N801  (CuPy's name)
    runtime = _Runtime

    @staticmethod
    def get_current_stream():
        return _Stream()
