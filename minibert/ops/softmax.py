"""Softmax along one axis: ``y = exp(x) / sum(exp(x))``.

Shapes: x and y of any shape; the sum runs over ``axis`` (the last one by default). Take one
slice along the axis, x and y of length K:

    y_j = exp(x_j - m) / sum_k exp(x_k - m),    m = max_k x_k

Subtracting the max changes nothing mathematically (it cancels between numerator and
denominator) but keeps every exponent <= 0, so exp never overflows and at least one term
of the sum is exactly 1.

Backward. The Jacobian is dy_j / dx_i = y_j (delta_ij - y_i), so with ``dy = dL/dy``:

    dx_i = sum_j dy_j y_j (delta_ij - y_i) = y_i (dy_i - sum_j dy_j y_j)       (same shape as x)

The gradient of ``sum(y)`` is zero (the sum is the constant 1): gradient checks must use a
random upstream gradient.
"""
from __future__ import annotations

from ..backend import get_array_module
from . import hooks


@hooks.op("softmax")
def forward(x, axis=-1):
    """``y = softmax(x, axis)``; returns ``(y, cache)``."""
    xp = get_array_module(x)
    e = xp.exp(x - xp.max(x, axis=axis, keepdims=True))   # every exponent <= 0
    y = e / xp.sum(e, axis=axis, keepdims=True)
    return y, (y, axis)


@hooks.op("softmax")
def backward(dy, cache):
    """Returns ``dx = y * (dy - sum(dy * y, axis))``."""
    y, axis = cache
    xp = get_array_module(dy)
    # undoes y = e / sum(e): the Jacobian y_j (delta_ij - y_i) applied to dy
    return y * (dy - xp.sum(dy * y, axis=axis, keepdims=True))
