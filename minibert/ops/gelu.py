"""GELU, the Gaussian Error Linear Unit (Hendrycks and Gimpel, 2016), exact and tanh forms.

Shapes: x and y of any shape, elementwise.

Exact form (``approximate="none"``, BERT's ``hidden_act="gelu"``), with Phi the standard
normal CDF and phi its density:

    y     = x Phi(x),     Phi(x) = (1/2) (1 + erf(x / sqrt(2))),   phi(x) = exp(-x^2/2) / sqrt(2 pi)
    dy/dx = Phi(x) + x phi(x)

Tanh form (``approximate="tanh"``, Hugging Face's ``"gelu_new"`` and ``"gelu_pytorch_tanh"``),
with beta = sqrt(2/pi) and kappa = 0.044715:

    u     = beta (x + kappa x^3),   t = tanh(u)
    y     = (1/2) x (1 + t)
    dy/dx = (1/2) (1 + t) + (1/2) x (1 - t^2) beta (1 + 3 kappa x^2)

Backward: ``dx = dy * dy/dx`` elementwise, from the ``Phi`` (or ``t``) kept in the cache.

With a bias (``bias_forward`` / ``bias_backward``), the GELU of a linear layer's output
``x + bias``, x (..., C) and bias (C,) broadcast over the leading dimensions. With
``z = x + bias``: ``y = GELU(z)``, and since dz/dx is the identity and the bias is added to
every row, ``dx = dy * GELU'(z)`` and ``dbias = sum of dx over the leading dimensions`` (C,).
The readable pair is those lines around ``forward`` and ``backward``; the fast path computes
them in one pass.

Where erf comes from. NumPy has no erf. On the CPU minibert compiles ``math.erf`` (the C
library's ``erf``, within about one ulp in float64, and ``erff`` for float32 input) into a
NumPy ufunc with Numba's ``@vectorize``: accurate to float64 rounding, which the float64
gradient check and the comparison with ``torch.erf`` need, at C speed, and without a SciPy
dependency for one function. Numba is imported the first time exact GELU runs on NumPy
arrays, so ``import minibert`` stays light; the compiled ufunc is cached on disk, or built
in memory when no cache directory is writable. On the GPU ``cupyx.scipy.special.erf``
(CUDA's ``erf`` / ``erff``) is used.

Fast path. On NumPy float32/float64 arrays (``minibert.ops.use_kernel``) ``forward`` and
``bias_forward`` run ``minibert.kernels.gelu_cpu``: z, GELU(z) and GELU'(z) in one pass,
with a ``Fused`` cache holding GELU'(z), which the backward hands back to that module for
dx and dbias in one more. Its float64 path computes these lines with the same ``erf``; its
float32 path computes Phi without erf, to within 0.51 ulp (that module's docstring). The
code below stays the reference, and runs under ``minibert.ops.readable_ops()``.
"""
from __future__ import annotations

import math

import numpy as np

from ..backend import get_array_module
from ..constants import BETA as _BETA
from ..constants import INV_SQRT_2PI as _INV_SQRT_2PI
from ..constants import KAPPA as _KAPPA
from ..constants import SQRT_HALF as _SQRT_HALF
from . import hooks
from .switch import Fused, check_out, use_kernel

#: Hugging Face ``hidden_act`` names -> the ``approximate`` argument of this op.
APPROXIMATE_FOR_ACT = {
    "gelu": "none",
    "gelu_new": "tanh",
    "gelu_pytorch_tanh": "tanh",
}

_numba_erf = None     # the compiled ufunc, built on first use


def _erf_scalar(v):
    return math.erf(v)


def _build_numba_erf():
    """Compile ``math.erf`` into a float64/float32 ufunc, cached on disk when possible."""
    from numba import vectorize  # lazy: Numba takes ~0.5 s to import
    # float32 first: NumPy takes the first loop the input casts to safely, and float32 casts
    # safely to float64, so the other order would silently compute float32 input in float64
    signatures = ["float32(float32)", "float64(float64)"]
    try:
        return vectorize(signatures, cache=True)(_erf_scalar)
    except RuntimeError:
        # Numba found no writable cache directory (a read-only install without
        # NUMBA_CACHE_DIR): compile in memory on every process start instead.
        return vectorize(signatures)(_erf_scalar)


def erf(x):
    """Elementwise error function of a NumPy (Numba ufunc) or CuPy (cupyx) array."""
    global _numba_erf
    xp = get_array_module(x)
    if xp is not np:
        from cupyx.scipy.special import erf as cupy_erf
        return cupy_erf(x)
    if _numba_erf is None:
        _numba_erf = _build_numba_erf()
    return _numba_erf(x)


def approximate_for_act(hidden_act: str) -> str:
    """The ``approximate`` argument for a Hugging Face ``hidden_act`` name."""
    if hidden_act not in APPROXIMATE_FOR_ACT:
        raise ValueError(f"hidden_act={hidden_act!r} is not a GELU known to minibert, expected one "
                         f"of {sorted(APPROXIMATE_FOR_ACT)}")
    return APPROXIMATE_FOR_ACT[hidden_act]


def _check_approximate(approximate):
    if approximate not in ("none", "tanh"):
        raise ValueError(f"approximate={approximate!r} is not known, expected 'none' or 'tanh'")


@hooks.op("gelu")
def forward(x, approximate="none"):
    """``y = GELU(x)``, exact (``"none"``) or tanh-approximated (``"tanh"``); returns
    ``(y, cache)``."""
    _check_approximate(approximate)
    if use_kernel(x):
        from ..kernels import gelu_cpu  # lazy: Numba takes a while to import
        y, saved = gelu_cpu.bias_forward(x, None, approximate)
        return y, Fused(gelu_cpu.backward, saved)
    if approximate == "none":
        cdf = 0.5 * (1.0 + erf(x * _SQRT_HALF))           # Phi(x)
        y = x * cdf
        return y, (x, cdf, approximate)
    xp = get_array_module(x)
    t = xp.tanh(_BETA * (x + _KAPPA * (x * x * x)))        # tanh(u)
    y = 0.5 * x * (1.0 + t)
    return y, (x, t, approximate)


@hooks.op("gelu.bias")
def bias_forward(x, bias, approximate="none", *, grad=True, out=None):
    """``y = GELU(x + bias)`` for x (..., C) and bias (C,); returns ``(y, cache)`` for
    ``bias_backward``.

    Inference options: ``grad=False`` says no backward follows (the cache is None, and the
    fast path skips GELU'(z)); ``out``, a C-contiguous array of x's shape and dtype, receives
    y (it may be x itself: the model's inference overwrites the intermediate product, which
    nothing else reads, and so allocates no (N, I) array for y)."""
    _check_approximate(approximate)
    C = x.shape[-1] if x.ndim else None
    if C is None or tuple(bias.shape) != (C,):
        raise ValueError(f"x has shape {tuple(x.shape)} and bias {tuple(bias.shape)}: expected "
                         f"x (..., C) and bias (C,)")
    check_out(out, x)
    if use_kernel(x, bias):
        from ..kernels import gelu_cpu
        y, saved = gelu_cpu.bias_forward(x, bias, approximate, grad, out)
        return y, (Fused(gelu_cpu.bias_backward, saved) if grad else None)
    z = x + bias                                           # (..., C)
    y, cache = forward(z, approximate)
    if out is not None:
        out[...] = y
        y = out
    return y, ((cache, C) if grad else None)


def forward_act(x, hidden_act="gelu"):
    """GELU selected by a Hugging Face ``hidden_act`` name; returns ``(y, cache)``."""
    return forward(x, approximate_for_act(hidden_act))


@hooks.op("gelu")
def backward(dy, cache):
    """Returns ``dx``."""
    if isinstance(cache, Fused):
        return cache.backward(dy, *cache.saved)
    x, s, approximate = cache
    xp = get_array_module(dy)
    if approximate == "none":
        cdf = s
        pdf = _INV_SQRT_2PI * xp.exp(-0.5 * (x * x))       # phi(x)
        return dy * (cdf + x * pdf)                        # undoes y = x * Phi(x)
    t = s
    # undoes t = tanh(beta (x + kappa x^3)), then y = 0.5 x (1 + t)
    du_dx = _BETA * (1.0 + 3.0 * _KAPPA * (x * x))
    return dy * (0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * du_dx)


@hooks.op("gelu.bias")
def bias_backward(dy, cache):
    """Returns ``(dx, dbias)``: dx of x's shape, dbias (C,)."""
    if isinstance(cache, Fused):
        return cache.backward(dy, *cache.saved)
    cache, C = cache
    dx = backward(dy, cache)                               # undoes y = GELU(z)
    dbias = dx.reshape(-1, C).sum(axis=0)                  # undoes z = x + bias, (C,)
    return dx, dbias
