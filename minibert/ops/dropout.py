"""Inverted dropout (Srivastava et al., 2014) with a counter-based keep-mask.

Shapes: x and y of any shape, elementwise. With ``p`` the probability of dropping an
element and ``keep`` a boolean mask of x's shape, True with probability 1 - p:

    y = x * keep / (1 - p)          (training and p > 0)
    y = x                           (evaluation, or p == 0)

Scaling the kept elements by 1/(1 - p) keeps E[y] = x, so evaluation needs no rescaling.

The mask is ``rng.keep_mask(x.shape, p, seed, offset, start=start)``: Philox4x32-10 of
(seed, offset, start + element index in C order over x.shape). ``start`` is 0 unless x is
a slice of rows of a larger batch (a data-parallel rank's share): then the slice draws its
rows of the whole batch's mask. The same (seed, offset) gives the same bits in the
NumPy op, the Numba kernel and the CUDA kernel, so a fused kernel can regenerate the mask
instead of storing it.

Rows of a larger batch (``rows``). With ``rows`` (N,), N = x.shape[0], x is N rows of a
larger C-order layout of rows of R = x.size // N elements, row t of x being row rows[t]
there: element j (C order) of x[t] is stream element

    start + rows[t] * R + j            (the mask is ``rng.keep_mask_rows(rows, R, ...)``)

Why: padding-free execution runs the model on the packed (T, H) matrix of a batch's T real
tokens, token t being row rows[t] = b * S + i of the padded (B * S, H) layout. Drawn this
way, every token keeps the bits it has in the padded (B, S, H) batch, so the packed forward
and backward give the padded model's numbers, bit for bit on the tokens (dropout of
``x_padded.reshape(B * S, H)[rows]`` with ``rows`` equals dropout of ``x_padded`` gathered at
``rows``). Without ``rows`` the mask is the one above (rows = 0, 1, ..., N - 1).

Backward. For a fixed mask y is linear in x, so with ``dy = dL/dy``:

    dx = dy * keep / (1 - p)        (identity, dx = dy, when no mask was drawn)

Fast path. On NumPy float32/float64 arrays (``minibert.ops.use_kernel``) the forward runs
``minibert.kernels.dropout_cpu``: the Philox bits, the mask and y in one pass, bit for bit
this op's result, and a ``Fused`` cache holding the mask (why the mask and not its
regeneration: that module's docstring, with the measurements). The code below stays the
reference, and runs under ``minibert.ops.readable_ops()``.
"""
from __future__ import annotations

import math

from ..backend import get_array_module
from ..rng import check_rows, check_u64, keep_mask, keep_mask_rows
from ..validation import check_dropout_p
from . import hooks
from .switch import Fused, use_cuda_kernel, use_kernel


@hooks.op("dropout")
def forward(x, p, seed, offset=0, training=True, start=0, rows=None):
    """Inverted dropout of ``x`` with drop probability ``p``; returns ``(y, cache)``.

    Args:
        x: any array (at least 1-D with ``rows``).
        p: drop probability in [0, 1).
        seed, offset: the Philox stream of the mask (see ``minibert.rng``).
        training: the mask is applied only when True and ``p > 0``; otherwise ``y = x``.
        start: the stream's element index of x's first element, or with ``rows`` of the
            larger layout's first element.
        rows: None, or (N,) integer row indices (>= 0) into a larger layout, on x's device,
            N = x.shape[0]: element j of x[t] is stream element
            ``start + rows[t] * (x.size // N) + j`` (module docstring). Checked only when a
            mask is drawn, as seed, offset and start.
    """
    p = check_dropout_p(p)  # a Python float: a NumPy float64 would promote float32 x
    if not training or p == 0:
        return x, (None, 0.0)                        # identity: no mask is drawn
    xp = get_array_module(x)
    # the same checks, with the same messages, as keep_mask's
    seed, offset, start = check_u64("seed", seed), check_u64("offset", offset), check_u64("start", start)
    if rows is not None:
        if x.ndim == 0:
            raise ValueError("x has shape (), expected an array of at least one dimension with rows "
                             "(one row index per x[t])")
        row_size = math.prod(x.shape[1:])           # x.size // N, also when N = 0
        rows = check_rows(rows, x.shape[0], row_size, start, xp)     # uint64 (N,)
    if use_kernel(x):
        from ..kernels import dropout_cpu  # lazy: Numba takes a while to import
        y, keep = dropout_cpu.forward(x, p, seed, offset, start, rows)
        return y, Fused(dropout_cpu.backward, (keep, p))
    if use_cuda_kernel(x):                           # one launch: kernels/dropout_cuda.py
        from ..kernels import dropout_cuda
        saved = (p, seed, offset, start, rows)
        return dropout_cuda.forward(x, *saved), Fused(dropout_cuda.backward, saved)
    if rows is None:
        keep = keep_mask(x.shape, p, seed, offset, xp, start)   # bool, shape of x
    else:
        keep = keep_mask_rows(rows, row_size, p, seed, offset, xp, start).reshape(x.shape)
    y = x * keep / (1.0 - p)
    return y, (keep, p)


@hooks.op("dropout")
def backward(dy, cache):
    """Returns ``dx``."""
    if isinstance(cache, Fused):
        return cache.backward(dy, *cache.saved)
    keep, p = cache
    if keep is None:
        return dy.copy()                             # undoes y = x (a fresh array, as every op)
    return dy * keep / (1.0 - p)                     # undoes y = x * keep / (1 - p)
