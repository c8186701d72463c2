"""Numerical constants shared by the readable ops and the kernels.

A module of its own, below both ``minibert.ops`` and ``minibert.kernels``: the ops import
the kernels, so a kernel that took a constant from an op's module would close a cycle.
"""
from __future__ import annotations

import math

# GELU (``minibert/ops/gelu.py`` derives both forms; ``minibert/kernels/gelu_cpu.py`` uses them too)
SQRT_HALF = 1.0 / math.sqrt(2.0)               # 1/sqrt(2): Phi(x) = (1 + erf(x / sqrt(2))) / 2
INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)  # 1/sqrt(2 pi): phi(x) = exp(-x^2 / 2) / sqrt(2 pi)
BETA = math.sqrt(2.0 / math.pi)                # sqrt(2/pi): tanh form, u = BETA (x + KAPPA x^3)
KAPPA = 0.044715                               # cubic coefficient of the tanh form (Hendrycks, Gimpel)
