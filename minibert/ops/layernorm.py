"""Layer normalization over the last axis (Ba, Kiros, Hinton, 2016), as ``torch.nn.LayerNorm``.

Shapes: x (..., H), weight (H,), bias (H,), y (..., H). Flatten the leading dimensions to
N rows; every row is normalized on its own:

    mu    = (1/H) sum_h x[h]                                  (N, 1)
    var   = (1/H) sum_h (x[h] - mu)^2                         (N, 1)  biased, as torch
    sigma = sqrt(var + eps),  rstd = 1 / sigma                (N, 1)
    xhat  = (x - mu) * rstd                                   (N, H)
    y     = xhat * weight + bias                              (N, H)

Backward. With ``dy = dL/dy`` (N, H):

    dbias   = sum_n dy                                        (H,)
    dweight = sum_n dy * xhat                                 (H,)
    dxhat   = dy * weight                                     (N, H)

For dx, take one row. xhat depends on x directly and through mu and sigma:

    d xhat_j / d x_i = (1/sigma) (delta_ij - 1/H) - (x_j - mu) / sigma^2 * d sigma / d x_i
    d sigma / d x_i  = (1 / (2 sigma)) * (2/H) (x_i - mu)  = xhat_i / H

(the mu-term of d var / d x_i is (2/H) sum_j (x_j - mu)(-1/H) = 0, since the deviations
sum to zero). Hence

    d xhat_j / d x_i = (1/sigma) (delta_ij - 1/H - xhat_j xhat_i / H)

and contracting with dxhat_j:

    dx_i = (1/sigma) (dxhat_i - mean_j(dxhat_j) - xhat_i mean_j(dxhat_j xhat_j))   (N, H)

The two means are the projections that make dx orthogonal to the constant vector and to
xhat: shifting or scaling a row of x leaves xhat unchanged, so it cannot change the loss.

With a residual. ``forward(x, weight, bias, residual=r)`` normalizes the sum
``x + r`` (r of x's shape), BERT's ``LayerNorm(dense(h) + h)`` in one call. The sum's two
terms enter with coefficient one, so the gradient with respect to x and the gradient with
respect to r are the same array: ``backward`` still returns ``(dx, dweight, dbias)``, and
dx is the gradient of the sum, to be used for both.

Fast path. On NumPy float32/float64 arrays (``minibert.ops.use_kernel``) the forward runs
``minibert.kernels.layernorm_cpu``: the sum, the row statistics and y in one pass per row
(statistics accumulated in float64), and a ``Fused`` cache that the backward hands back to
that module, which computes dx, dweight and dbias in one pass per row. The code below stays
the reference, and runs under ``minibert.ops.readable_ops()``.
"""
from __future__ import annotations

from ..backend import get_array_module
from . import hooks
from .switch import Fused, check_out, use_kernel


@hooks.op("layernorm")
def forward(x, weight, bias, eps=1e-12, residual=None, *, grad=True, out=None):
    """``y = (x - mean) / sqrt(var + eps) * weight + bias`` over the last axis; returns
    ``(y, cache)``. ``eps`` defaults to BERT's ``layer_norm_eps``.

    With ``residual`` (an array of x's shape) the op normalizes ``x + residual`` instead;
    the gradient ``dx`` that ``backward`` returns is then also the residual's gradient (the
    module docstring).

    Inference options, as ``gelu.bias_forward``'s: ``grad=False`` (no backward follows: the
    cache is None and the fast path keeps no statistics) and ``out`` (a C-contiguous array of
    x's shape and dtype that receives y; x itself with ``grad=False``)."""
    H = x.shape[-1]
    if tuple(weight.shape) != (H,) or tuple(bias.shape) != (H,):
        raise ValueError(f"x has shape {tuple(x.shape)}, weight {tuple(weight.shape)} and bias "
                         f"{tuple(bias.shape)}: expected x (..., H), weight (H,) and bias (H,)")
    if residual is not None and tuple(residual.shape) != tuple(x.shape):
        raise ValueError(f"residual has shape {tuple(residual.shape)}, expected x's shape "
                         f"{tuple(x.shape)}")
    if not eps >= 0:
        raise ValueError(f"eps={eps!r} is not valid, expected a number >= 0")
    eps = float(eps)      # a NumPy float64 scalar would promote float32 x to float64
    check_out(out, x)
    if use_kernel(x, weight, bias) and (residual is None or use_kernel(x, residual)):
        from ..kernels import layernorm_cpu  # lazy: Numba takes a while to import
        y, saved = layernorm_cpu.forward(x, weight, bias, eps, residual, grad, out)
        return y, (Fused(layernorm_cpu.backward, saved) if grad else None)
    if residual is not None:
        x = x + residual                                      # (..., H)
    xp = get_array_module(x)
    mu = xp.mean(x, axis=-1, keepdims=True)                   # (..., 1)
    xc = x - mu                                               # (..., H)
    var = xp.mean(xc * xc, axis=-1, keepdims=True)            # (..., 1)  biased variance
    rstd = 1.0 / xp.sqrt(var + eps)                           # (..., 1)
    xhat = xc * rstd                                          # (..., H)
    y = xhat * weight + bias                                  # (..., H)
    if out is not None:
        out[...] = y
        y = out
    return y, ((xhat, rstd, weight) if grad else None)


@hooks.op("layernorm")
def backward(dy, cache):
    """Returns ``(dx, dweight, dbias)``; with a residual, dx is its gradient too."""
    if isinstance(cache, Fused):
        return cache.backward(dy, *cache.saved)
    xhat, rstd, weight = cache
    xp = get_array_module(dy)
    H = xhat.shape[-1]
    dy2 = dy.reshape(-1, H)                                   # (N, H)
    # undoes y = xhat * weight + bias
    dbias = xp.sum(dy2, axis=0)                               # (H,)
    dweight = xp.sum(dy2 * xhat.reshape(-1, H), axis=0)       # (H,)
    dxhat = dy * weight                                       # (..., H)
    # undoes xhat = (x - mu) * rstd, with mu and rstd functions of x (docstring)
    mean_dxhat = xp.mean(dxhat, axis=-1, keepdims=True)               # (..., 1)
    mean_dxhat_xhat = xp.mean(dxhat * xhat, axis=-1, keepdims=True)   # (..., 1)
    dx = rstd * (dxhat - mean_dxhat - xhat * mean_dxhat_xhat)         # (..., H)
    return dx, dweight, dbias
