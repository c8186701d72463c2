"""Linear (fully connected) layer: ``y = x W^T + b``.

Shapes: x (..., I), W (O, I) stored [out, in] as in PyTorch / Hugging Face, b (O,),
y (..., O). The leading dimensions are flattened to N rows for the math below.

Backward. With ``dy = dL/dy`` of shape (N, O):

    y[n, o]  = sum_i x[n, i] W[o, i] + b[o]
    dx[n, i] = sum_o dy[n, o] W[o, i]          ->  dx = dy W        (N, I)
    dW[o, i] = sum_n dy[n, o] x[n, i]          ->  dW = dy^T x      (O, I)
    db[o]    = sum_n dy[n, o]                  ->  db = 1^T dy      (O,)
"""
from __future__ import annotations

from ..backend import get_array_module
from . import hooks
from .switch import Fused, use_kernel


@hooks.op("linear")
def forward(x, weight, bias=None):
    """``y = x @ weight.T + bias``; returns ``(y, cache)``."""
    if weight.ndim != 2 or x.shape[-1] != weight.shape[1]:
        raise ValueError(f"x has shape {tuple(x.shape)} and weight {tuple(weight.shape)}: "
                         "expected x (..., in) and weight (out, in)")
    if use_kernel(x, weight) and (bias is None or use_kernel(x, bias)):
        # the same products, split between the kernel threads (minibert.kernels.linear_cpu)
        from ..kernels import linear_cpu
        y, saved = linear_cpu.forward(x, weight, bias)
        return y, Fused(linear_cpu.backward, saved)
    x2 = x.reshape(-1, x.shape[-1])                   # (N, I): one GEMM, not one per batch row
    y = x2 @ weight.T                                 # (N, O)
    if bias is not None:
        y += bias
    return y.reshape(*x.shape[:-1], weight.shape[0]), (x, weight, bias is not None)


@hooks.op("linear")
def backward(dy, cache, dweight_out=None):
    """Returns ``(dx, dweight, dbias)``; ``dbias`` is None when the layer had no bias.

    ``dweight_out``: an (O, I) gradient buffer to add dweight into (and return as
    ``dweight``) instead of a fresh array, the one meaning a gradient-buffer argument has in
    every op (``embedding.backward(out=)`` too): for a large weight such as the masked-LM
    decoder's, tied to the word embeddings (30522 x H), whose gradient buffer the embedding
    backward adds into as well, in either order.
    """
    if dweight_out is not None and tuple(dweight_out.shape) != tuple(cache_weight(cache).shape):
        raise ValueError(f"dweight_out has shape {tuple(dweight_out.shape)}, expected the "
                         f"weight's {tuple(cache_weight(cache).shape)}")
    if isinstance(cache, Fused):
        return cache.backward(dy, *cache.saved, dweight_out=dweight_out)
    x, weight, has_bias = cache
    xp = get_array_module(dy)
    x2 = x.reshape(-1, x.shape[-1])                   # (N, I)
    dy2 = dy.reshape(-1, dy.shape[-1])                # (N, O)
    dx = (dy2 @ weight).reshape(x.shape)              # (..., I)   undoes y = x @ W.T
    dw = dy2.T @ x2                                   # (O, I)
    if dweight_out is not None:
        dweight_out += dw
        dw = dweight_out
    db = xp.sum(dy2, axis=0) if has_bias else None    # (O,)       undoes + bias
    return dx, dw, db


def cache_weight(cache):
    """The weight a forward saved (from either kind of cache)."""
    return (cache.saved if isinstance(cache, Fused) else cache)[1]
