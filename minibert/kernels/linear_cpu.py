"""The linear layer ``y = x W^T + b`` with its matrix products split between the kernel
threads (NumPy float32/float64), forward and backward.

The function and its gradient are ``minibert/ops/linear.py``'s (its docstring derives
them): ``dx = dy W``, ``dW = dy^T x``, ``db = 1^T dy``, the leading dimensions flattened to
N rows. What changes is who runs the products. Each is cut into parts that write disjoint
blocks of the output, every part one BLAS call on one thread, and the parts go to the
threads of ``_threads.run_tasks``:

    y  = x W^T   rows of x and y, ``ROWS`` at a time              (N, O)
    dx = dy W    rows of dy and dx, ``ROWS`` at a time             (N, I)
    dW = dy^T x  rows of dW (columns of dy), ~ O / ``PARTS``       (O, I)
    db = 1^T dy  the same columns of dy as dW's part               (O,)

With fewer than 2 ``ROWS`` rows (the masked-LM decoder: 160 rows, 30522 outputs) a cut
by rows would leave one part, so y is cut by columns instead (``PARTS`` blocks of W's rows,
each written into its columns of y), and dx = dy W by its sum over O: ``PARTS`` partial
products ``dy[:, part] W[part]`` added in a fixed order.

Why not BLAS's own threads: see ``_threads.py`` (one threading policy for every kernel;
BLAS's idle threads spin and slow down whatever runs next). Why these cuts: a part's
BLAS call packs the operand it shares with the other parts again, a cost of about one
load and store per element against 2 x (part rows) flops per element of compute, so parts
keep at least 256 rows (a few per cent of packing); and the cut depends on the shape
alone, so every thread count gives the same bits. Small products (below
``MIN_PARALLEL_MACS`` multiply-adds) are one call on the calling thread.
"""
from __future__ import annotations

import numpy as np

from ._threads import run_tasks

#: rows of x (and dy) per part of y = x W^T and dx = dy W
ROWS = 256
#: dW = dy^T x is cut into about this many parts of at least ``MIN_DW_ROWS`` rows of dW
PARTS = 4
MIN_DW_ROWS = 64
#: below this many multiply-adds a product runs as one call on the calling thread
MIN_PARALLEL_MACS = 1 << 22


def _cut(n, size):
    """[(lo, hi), ...] covering [0, n) in pieces of ``size`` (the last one shorter)."""
    return [(lo, min(n, lo + size)) for lo in range(0, n, size)]


def forward(x, weight, bias=None):
    """``y = x @ weight.T + bias`` (shapes as the op's); returns ``(y, saved)`` where
    ``saved`` feeds ``backward``."""
    I = x.shape[-1]
    O = weight.shape[0]
    x2 = x.reshape(-1, I)                                              # (N, I)
    N = x2.shape[0]
    y = np.empty((N, O), dtype=x.dtype)                                # (N, O)
    wt = weight.T                                                      # (I, O) view

    def rows(lo, hi):
        np.matmul(x2[lo:hi], wt, out=y[lo:hi])
        if bias is not None:
            y[lo:hi] += bias

    def columns(lo, hi):
        np.matmul(x2, wt[:, lo:hi], out=y[:, lo:hi])                  # (N, hi - lo)
        if bias is not None:
            y[:, lo:hi] += bias[lo:hi]

    parallel = N * I * O >= MIN_PARALLEL_MACS
    if N >= 2 * ROWS or not parallel:
        run_tasks(rows, _cut(N, ROWS), parallel=parallel)
    else:
        run_tasks(columns, _cut(O, max(ROWS, -(-O // PARTS))), parallel=parallel)
    return y.reshape(*x.shape[:-1], O), (x, weight, bias is not None)


def backward(dy, x, weight, has_bias, dweight_out=None):
    """Returns ``(dx, dweight, dbias)``; ``dbias`` is None when the layer had no bias;
    dweight is added into ``dweight_out`` when given (see the op): each part's rows are
    computed into a scratch block of at most ``ROWS`` rows and added, so no (O, I) array is
    allocated."""
    O, I = weight.shape
    x2 = x.reshape(-1, I)                                              # (N, I)
    dy2 = dy.reshape(-1, O)                                            # (N, O)
    N = dy2.shape[0]
    dx = np.empty((N, I), dtype=dy.dtype)                              # (N, I)
    dw = np.empty((O, I), dtype=dy.dtype) if dweight_out is None else dweight_out  # (O, I)
    db = np.empty(O, dtype=dy.dtype) if has_bias else None             # (O,)

    parallel = N * I * O >= MIN_PARALLEL_MACS
    by_sum = N < 2 * ROWS and O >= 2 * ROWS and parallel    # few rows: cut dx's sum over O
    sums = _cut(O, max(ROWS, -(-O // PARTS))) if by_sum else []
    partial = np.empty((len(sums), N, I), dtype=dy.dtype) if by_sum else None

    def part(kind, lo, hi):
        if kind == "dx":                                               # undoes y = x @ W.T
            np.matmul(dy2[lo:hi], weight, out=dx[lo:hi])
        elif kind == "dx sum":
            np.matmul(dy2[:, lo:hi], weight[lo:hi], out=partial[sums.index((lo, hi))])
        elif dweight_out is None:
            np.matmul(dy2[:, lo:hi].T, x2, out=dw[lo:hi])             # (hi - lo, I)
        else:
            dw[lo:hi] += dy2[:, lo:hi].T @ x2                          # (hi - lo, I) scratch
        if kind == "dw" and has_bias:                                  # undoes + bias
            np.sum(dy2[:, lo:hi], axis=0, out=db[lo:hi])

    # adding into a buffer goes through scratch blocks: keep them small
    dw_rows = ROWS if dweight_out is not None else max(MIN_DW_ROWS, -(-O // PARTS))
    tasks = [("dw", lo, hi) for lo, hi in _cut(O, dw_rows)]
    if by_sum:
        tasks += [("dx sum", lo, hi) for lo, hi in sums]
    else:
        tasks += [("dx", lo, hi) for lo, hi in _cut(N, ROWS)]
    run_tasks(part, tasks, parallel=parallel)
    if by_sum:
        np.sum(partial, axis=0, out=dx)                               # in the order of the parts
    return dx.reshape(x.shape), dw, db
