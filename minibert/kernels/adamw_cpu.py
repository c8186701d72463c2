"""AdamW as one fused Numba pass over the flat parameter buffer (NumPy float32/float64).

The update rules, the two variants ("bert" and "torch") and the order of their operations
are ``minibert/optim.py``'s (its docstring derives and justifies them). The readable step
is a dozen NumPy expressions, each a pass over the whole flat buffer (110 M numbers for
BERT-base) and most of them a temporary of that size; the kernel reads p, g, m, v and the
decay mask once and writes p, m, v once, element by element.

Bit for bit the readable step. Every NumPy operation there is one IEEE operation per
element (no fused multiply-add), in an order this kernel repeats: the same operands, the
same operation, the same dtype. The scalars are where the dtypes are easy to get wrong.
The readable code computes them as Python floats (float64: ``1 - b1``, ``1 - lr wd``,
``lr / (1 - b1^t)``, ``sqrt(1 - b2^t)``), and NumPy converts a Python float to the array's
dtype when it meets a float32 array (a "weak" scalar), so ``(1 - b1) * g`` is
``float32(1 - b1) * g`` in float32. ``AdamW.step`` therefore computes each scalar with the
same Python expression as the readable code, and converts it to the buffer's dtype before
the call; the kernel then does only dtype arithmetic (Numba without ``fastmath`` neither
contracts a multiply and an add into an FMA nor reorders anything). The tests compare both
paths bit for bit, both variants, both dtypes, several steps.

Compiled with ``error_model="numpy"``: a division by zero then gives inf or NaN as in
NumPy, and ``np.sqrt`` becomes the vectorisable square-root instruction. With Numba's
default ("python") the division carries a ZeroDivisionError test and the square root is a
call to the C library's sqrtf, and neither loop vectorised: 42 ms instead of 10 ms for a
step on 11 M float32 numbers (one thread; the results are the same bits either way).

The work is cut into rows of ``CHUNK`` consecutive flat indices, the unit ``run_rows``
hands out, so that threading can be decided in one place (``_threads.py``); every element
is computed the same way whichever row it falls in.
"""
from __future__ import annotations

import numpy as np
from numba import njit

from .. import _numba_cache  # noqa: F401  (before any @njit: see minibert/_numba_cache.py)
from ._threads import run_rows

#: Flat indices per row of the kernels (256 KiB of each float32 array).
CHUNK = 1 << 16


@njit(nogil=True, cache=True, error_model="numpy")
def bert_rows(p, g, m, v, decay, b1, c1, b2, c2, eps, wd, lr, use_decay, chunk, r0, r1):
    """The "bert" step on flat indices [r0 chunk, r1 chunk) of p, g, m, v (n,) and the bool
    decay mask. Scalars of the arrays' dtype: b1, c1 = 1 - b1, b2, c2 = 1 - b2, eps, wd, lr;
    ``use_decay`` is ``wd != 0``."""
    n = p.shape[0]
    for r in range(r0, r1):
        # unsigned indices: no negative-index test in the loop, which then vectorises
        for i in range(np.uint64(r * chunk), np.uint64(min((r + 1) * chunk, n))):
            gi = g[i]
            mi = m[i] * b1 + c1 * gi                  # m *= b1; m += (1 - b1) * g
            vi = v[i] * b2 + c2 * (gi * gi)           # v *= b2; v += (1 - b2) * (g * g)
            u = mi / (np.sqrt(vi) + eps)              # update = m / (sqrt(v) + eps)
            pi = p[i]
            if use_decay and decay[i]:
                u = u + wd * pi                       # where(mask, update + wd * p, update)
            p[i] = pi - lr * u                        # p -= lr * update
            m[i] = mi
            v[i] = vi


@njit(nogil=True, cache=True, error_model="numpy")
def torch_rows(p, g, m, v, decay, shrink, w, one_minus_w, small_w, b2, c2, sqrt_bc2, eps,
               neg_step, use_decay, chunk, r0, r1):
    """The "torch" step on flat indices [r0 chunk, r1 chunk). Scalars of the arrays' dtype:
    shrink = 1 - lr wd, w = 1 - b1 and 1 - w (torch's lerp weight), b2, c2 = 1 - b2,
    sqrt_bc2 = (1 - b2^t)^0.5, eps, neg_step = -lr / (1 - b1^t); ``small_w`` is
    ``|w| < 0.5`` (which branch of lerp), ``use_decay`` is ``wd != 0``."""
    n = p.shape[0]
    for r in range(r0, r1):
        for i in range(np.uint64(r * chunk), np.uint64(min((r + 1) * chunk, n))):
            pi = p[i]
            if use_decay and decay[i]:
                pi = pi * shrink                      # p = where(mask, p * (1 - lr wd), p)
            gi = g[i]
            mi = m[i]
            if small_w:
                mi = mi + w * (gi - mi)               # m += w * (g - m)
            else:
                mi = gi - (gi - mi) * one_minus_w     # m = g - (g - m) * (1 - w)
            vi = v[i] * b2 + (c2 * gi) * gi           # v *= b2; v += ((1 - b2) * g) * g
            denom = np.sqrt(vi) / sqrt_bc2 + eps      # sqrt(v) / bc2 ** 0.5 + eps
            p[i] = pi + (neg_step * mi) / denom       # p += (-step_size * m) / denom
            m[i] = mi
            v[i] = vi


def _rows(n):
    return -(-n // CHUNK)


def step_bert(p, g, m, v, decay, b1, b2, eps, wd, lr):
    """One "bert" step in place on the flat p, m, v from g; the hyper-parameters are
    Python floats, converted here exactly as NumPy converts them in the readable step."""
    f = p.dtype.type
    run_rows(bert_rows, _rows(p.shape[0]), p, g, m, v, decay, f(b1), f(1.0 - b1), f(b2),
             f(1.0 - b2), f(eps), f(wd), f(lr), wd != 0.0, CHUNK)


def step_torch(p, g, m, v, decay, b1, b2, eps, wd, lr, t):
    """One "torch" step (step number t >= 1) in place; scalars as for ``step_bert``."""
    f = p.dtype.type
    w = 1.0 - b1
    bias_correction1 = 1.0 - b1 ** t                  # the readable step's Python floats
    bias_correction2 = 1.0 - b2 ** t
    step_size = lr / bias_correction1
    run_rows(torch_rows, _rows(p.shape[0]), p, g, m, v, decay, f(1.0 - lr * wd), f(w),
             f(1.0 - w), abs(w) < 0.5, f(b2), f(1.0 - b2), f(bias_correction2 ** 0.5), f(eps),
             f(-step_size), wd != 0.0, CHUNK)
