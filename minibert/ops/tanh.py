"""Hyperbolic tangent, the activation of BERT's pooler.

Shapes: x and y of any shape, elementwise.

    y     = tanh(x)
    dy/dx = 1 - tanh(x)^2 = 1 - y^2

Backward: ``dx = dy * (1 - y^2)``, from the output kept in the cache (no second tanh).
"""
from __future__ import annotations

from ..backend import get_array_module
from . import hooks


@hooks.op("tanh")
def forward(x):
    """``y = tanh(x)``; returns ``(y, cache)``."""
    xp = get_array_module(x)
    y = xp.tanh(x)
    return y, y


@hooks.op("tanh")
def backward(dy, cache):
    """Returns ``dx = dy * (1 - y^2)``."""
    y = cache
    return dy * (1.0 - y * y)                        # undoes y = tanh(x)
