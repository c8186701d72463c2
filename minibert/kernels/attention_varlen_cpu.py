"""Fused softmax attention on the CPU in the packed ("varlen") form: the T real tokens of a
batch of B sequences of lengths n_0 .. n_{B-1}, with no padding anywhere.

The packed layout. q, k, v (A, T, D): heads first, then the packed tokens of all sequences
one after the other, T = n_0 + ... + n_{B-1} (the padded (B, A, S, D) with the batch folded
into the token axis and the padding left out). ``cu_seqlens`` (B + 1,) holds the offsets:
sequence b is the tokens t0 = cu_seqlens[b] .. t1 - 1 = cu_seqlens[b + 1] - 1, and attends
to itself only. For each (b, head a), with c = ``scale``, the local positions i, j < n_b
and the dropout rate p,

    s_ij = c q_{t0+i} . k_{t0+j},    P_ij = exp(s_ij - lse_i),    lse_i = log sum_j exp(s_ij)
    out_{t0+i} = sum_j P_ij keep_ij / (1 - p) v_{t0+j}

which is what the padded kernel (``attention_cpu.py``) and the textbook op compute for the
real rows of the same batch right padded to S >= max n_b: a padded key has probability
exactly 0 there, so leaving it out changes no real row. There is no mask here, and the
padded rows (queries at padding), which the padded kernel computes and throws away, are not
computed at all.

Dropout keeps the padded layout's bits: keep_ij is the Philox bit of element

    start + ((b A + a) S + i) S + j            (S = ``seq_len``, the PADDED length)

of ``minibert.rng``'s stream, the index the padded kernel and the textbook op give the same
probability, so a packed forward with dropout equals the padded one.

The algorithm is the padded kernel's (FlashAttention-2, derived in ``kernels/attn_v4_tiled.py``
at the repository root), and so are its fused Numba row passes, imported from
``attention_cpu.py``: ``_forward_block`` and ``_forward_finish`` (online softmax of a tile,
then out = acc / l, lse = m + log l) and ``_backward_block`` (recomputed probabilities, the
row statistics, dS). They take the tile's key mask as an additive bias row: here a row of
zeros, since every key of a sequence is real; and (b, S, i0, j0) for the dropout index
above, with S = ``seq_len`` and i0, j0 local to the sequence. The block products are BLAS's
(``np.matmul`` on (G, rows, D) stacks). A task is (sequence b, group of G heads), the cut of
``attention_cpu.head_groups``; it reads q[h0:h1, t0:t1] (G, n_b, D) and writes the same rows
of out, lse, dq, dk and dv, which no other task writes.

Layouts, chosen by measurement (B = 32, A = 12, D = 32, S = 128, float32, dropout 0.1, 2
threads, forward + backward with the layout work each choice implies, interleaved, process
CPU time on a shared machine; ratios per repetition, median):

* q, k, v, dout may be strided views, such as the model's split of its (T, 3H) product,
  ``qkv.reshape(T, 3, A, D).transpose(1, 2, 0, 3)[j]`` (strides (D, 3H, 1) elements): a
  (n, D) slice with a unit last stride is a BLAS operand as it is, so they are not copied
  (copying them first cost 6% at 73% padding and 12% with none). An array whose last axis
  is not unit-stride is copied once.
* out (A, T, D) is a view of a C-contiguous (T, A, D) buffer, and dq, dk, dv (A, T, D) are
  views of one C-contiguous (T, 3, A, D) buffer: the model's merges of the heads,
  ``out.transpose(1, 0, 2).reshape(T, H)`` and ``merged_heads(dq, dk, dv)`` (T, 3H), are
  views, not copies (head-major (A, T, D) outputs and their merges cost 4.5% at 73% padding
  and 7% with none). lse (A, T) is C-contiguous.

Threads and determinism as in ``attention_cpu.py``: the cut depends on the shape and the
lengths only, every task computes the same operations whatever thread runs it, and no
element is written by two tasks, so the bits do not depend on the number of threads. Tasks
run the longest first (work ~ G n_b^2). A sequence of length 0 is no work and no rows.
"""
from __future__ import annotations

import numpy as np

from ..validation import check_block_sizes
from ._args import blas_rows
from ._blocks import EXP_CONSTANTS, INT_OF
from ._threads import run_tasks
from .attention_cpu import (
    BLOCK_K,
    BLOCK_Q,
    MIN_PARALLEL_WORK,
    _backward_block,
    _forward_block,
    _forward_finish,
    _matmul_add,
    _uninitialised,
    head_groups,
)
from .layouts import merged_view, token_major

__all__ = ["attention_varlen_forward", "attention_varlen_backward", "merged_heads"]


# --------------------------------------------------------------------------- layouts


def _blas_operand(x):
    """``x`` (A, T, D) as it is when each (n, D) slice of a head is a BLAS operand
    (``_args.blas_rows``: unit last stride, a non-negative row stride of at least D
    elements), else a C-contiguous copy."""
    return x if blas_rows(x) else np.ascontiguousarray(x)


def _token_major(A, T, D, dtype, n=1):
    """n arrays (A, T, D) that are views of one C-contiguous (T, n, A, D) buffer
    (``layouts.token_major``; uninitialised: the kernel writes every element, a test fills
    it with NaN to prove it). Viewed as (T, n A D), the buffer is the heads merged back
    into the model's (T, n H) layout, so the merge costs no copy. BLAS writes the products
    straight into the row-strided (G, rows, D) tiles of such views (faster in all than
    head-major outputs and their merge: the module docstring's measurement); the forward's
    row passes work on contiguous scratch, copied into out at the end of each tile (see
    ``_forward_task``)."""
    return token_major((), A, T, D, dtype, n, _uninitialised)


def merged_heads(*parts):
    """n arrays (A, T, D) -> one (T, n A D) = (T, n H), part j in columns j H .. (j+1) H - 1,
    head a of it in columns j H + a D .. j H + (a+1) D - 1 (the inverse of the model's split
    of a (T, 3H) product). Free (a view) for the kernel's outputs, which are views of such a
    buffer (``_token_major``); a copy otherwise."""
    A, T, D = parts[0].shape
    n = len(parts)
    merged = merged_view(parts)
    if merged is not None:
        return merged
    out = np.empty((T, n, A, D), dtype=parts[0].dtype)
    for j, p in enumerate(parts):
        out[:, j] = p.transpose(1, 0, 2)                                       # (T, A, D)
    return out.reshape(T, n * A * D)


# --------------------------------------------------------------------------- tasks


def _kernel_scalars(dtype, scale, dropout_p, seed, offset, start, seq_len, block_k):
    """The typed scalars of the row passes (typed as ``attention_cpu`` types them, so that
    the same compiled code runs): scale and 1 / (1 - p) in the data's dtype, p float32 (the
    keep test compares float32 numbers), seed and offset uint64, start int64, S an int; and
    the zero key bias (block_k,) of the data's dtype."""
    ftype = np.dtype(dtype).type
    return (ftype(scale), np.float32(dropout_p), ftype(1.0 / (1.0 - dropout_p)), np.uint64(seed),
            np.uint64(offset), np.int64(start), int(seq_len), np.zeros(block_k, dtype=dtype))


def _forward_task(b, h0, h1, q, k, v, out, lse, cu, scalars, block_q, block_k):
    """Rows t0 .. t1 - 1 (sequence b) of out and lse, heads h0 .. h1 - 1."""
    scale, dropout_p, keep_scale, seed, offset, start, S, zero_bias = scalars
    t0, t1 = int(cu[b]), int(cu[b + 1])
    n = t1 - t0
    if n == 0:
        return
    A, _, D = q.shape
    G = h1 - h0
    bq, bk = min(block_q, n), min(block_k, n)
    consts, int_type = EXP_CONSTANTS[q.dtype], INT_OF[q.dtype]
    s_buf = np.empty(G * bq * bk, dtype=q.dtype)                        # scores, then P~
    t_buf = np.empty(G * bq * D, dtype=q.dtype)                         # P~ V of a later block
    acc_buf = np.empty(G * bq * D, dtype=q.dtype)                       # the accumulator
    m = np.empty(G * bq, dtype=q.dtype)
    l = np.empty(G * bq, dtype=q.dtype)
    qs, ks, vs = q[h0:h1, t0:t1], k[h0:h1, t0:t1], v[h0:h1, t0:t1]      # (G, n, D) each
    outs, lses = out[h0:h1, t0:t1], lse[h0:h1, t0:t1]                   # (G, n, D), (G, n)
    for i0 in range(0, n, bq):
        nr = min(n, i0 + bq) - i0
        qi = qs[:, i0:i0 + nr]                                          # (G, nr, D)
        # the accumulator and the row statistics in C-contiguous scratch: Numba vectorises
        # the row passes' loops over a C-contiguous tile, not over a strided view of out
        # (measured: _forward_finish on a (12, 128, 32) view of out 10x slower, 4 ms of a
        # 55 ms forward); the finished tile is copied into out
        acc = acc_buf[:G * nr * D].reshape(G, nr, D)
        mi, li = m[:G * nr].reshape(G, nr), l[:G * nr].reshape(G, nr)
        mi[...] = -np.inf
        li[...] = 0
        for j0 in range(0, n, bk):
            nc = min(n, j0 + bk) - j0
            s = s_buf[:G * nr * nc].reshape(G, nr, nc)
            np.matmul(qi, ks[:, j0:j0 + nc].transpose(0, 2, 1), out=s)      # Q K^T
            _forward_block(s, acc, mi, li, zero_bias[:nc], scale, j0 == 0, dropout_p,
                           keep_scale, seed, offset, start, b, h0, A, S, i0, j0, consts, int_type)
            vj = vs[:, j0:j0 + nc]                                      # (G, nc, D)
            if j0 == 0:
                np.matmul(s, vj, out=acc)                               # acc = P~ V
            else:
                t = t_buf[:G * nr * D].reshape(G, nr, D)
                np.matmul(s, vj, out=t)
                acc += t                                                # acc = alpha acc + P~ V
        _forward_finish(acc, mi, li, lses[:, i0:i0 + nr])
        outs[:, i0:i0 + nr] = acc


def _backward_task(b, h0, h1, dout, q, k, v, lse, dq, dk, dv, cu, scalars, block_q, block_k):
    """Rows t0 .. t1 - 1 (sequence b) of dq, dk and dv, heads h0 .. h1 - 1: every element
    of them (the first product of each sum is written, the others added)."""
    scale, dropout_p, keep_scale, seed, offset, start, S, zero_bias = scalars
    t0, t1 = int(cu[b]), int(cu[b + 1])
    n = t1 - t0
    if n == 0:
        return
    A, _, D = q.shape
    G = h1 - h0
    bq, bk = min(block_q, n), min(block_k, n)
    consts, int_type = EXP_CONSTANTS[q.dtype], INT_OF[q.dtype]
    p_buf = np.empty(G * bq * bk, dtype=q.dtype)                        # P, then Pd
    ds_buf = np.empty(G * bq * bk, dtype=q.dtype)                       # dO V^T, then c dS
    t_buf = np.empty(G * max(bq, bk) * D, dtype=q.dtype)                # a product to add
    row_sum = np.zeros((G, n), dtype=q.dtype)
    row_pdp = np.zeros((G, n), dtype=q.dtype)
    qs, ks, vs, dos = (x[h0:h1, t0:t1] for x in (q, k, v, dout))        # (G, n, D) each
    dqs, dks, dvs = (x[h0:h1, t0:t1] for x in (dq, dk, dv))
    lses = lse[h0:h1, t0:t1]                                            # (G, n)
    # with one key block the row sums come with the block; with several a first sweep over
    # all blocks computes them before any dS (see ``kernels/attn_v4_tiled.py``)
    sweeps = [(True, True)] if n <= bk else [(True, False), (False, True)]
    for stats, grads in sweeps:
        for j0 in range(0, n, bk):
            nc = min(n, j0 + bk) - j0
            kj, vj = ks[:, j0:j0 + nc], vs[:, j0:j0 + nc]               # (G, nc, D)
            for i0 in range(0, n, bq):
                nr = min(n, i0 + bq) - i0
                qi, doi = qs[:, i0:i0 + nr], dos[:, i0:i0 + nr]         # (G, nr, D)
                p = p_buf[:G * nr * nc].reshape(G, nr, nc)
                ds = ds_buf[:G * nr * nc].reshape(G, nr, nc)
                np.matmul(qi, kj.transpose(0, 2, 1), out=p)                  # Q K^T
                np.matmul(doi, vj.transpose(0, 2, 1), out=ds)                # dO V^T
                _backward_block(p, ds, zero_bias[:nc], lses[:, i0:i0 + nr],
                                row_sum[:, i0:i0 + nr], row_pdp[:, i0:i0 + nr], scale, stats,
                                grads, dropout_p, keep_scale, seed, offset, start, b, h0, A, S,
                                i0, j0, consts, int_type)
                if not grads:
                    continue
                # dV_j += Pd^T dO_i, dK_j += c dS^T Q_i, dQ_i += c dS K_j
                _matmul_add(p.transpose(0, 2, 1), doi, dvs[:, j0:j0 + nc], i0 == 0, t_buf)
                _matmul_add(ds.transpose(0, 2, 1), qi, dks[:, j0:j0 + nc], i0 == 0, t_buf)
                _matmul_add(ds, kj, dqs[:, i0:i0 + nr], j0 == 0, t_buf)


def _tasks(lengths, A):
    """The tasks (b, h0, h1) of ``attention_cpu.head_groups`` without the empty sequences,
    the largest first (work ~ G n_b^2; ties in sequence order): threads that take the next
    task when free then end close together. The order depends on the lengths only."""
    tasks = [t for t in head_groups(len(lengths), A) if lengths[t[0]] > 0]
    return sorted(tasks, key=lambda t: -int(lengths[t[0]]) ** 2 * (t[2] - t[1]))


def _run(task, lengths, A, D):
    """The tasks on ``numba.get_num_threads()`` threads (``_threads.run_tasks``), on the
    calling thread below ``MIN_PARALLEL_WORK`` multiply-adds (A D sum n_b^2)."""
    work = A * D * int((lengths.astype(np.int64) ** 2).sum())
    run_tasks(task, _tasks(lengths, A), parallel=work >= MIN_PARALLEL_WORK)


# --------------------------------------------------------------------------- entry points


def attention_varlen_forward(q, k, v, cu_seqlens, scale, dropout_p=0.0, seed=0, offset=0, *,
                             seq_len, start=0, block_q=BLOCK_Q, block_k=BLOCK_K):
    """``(out, lse)``: out (A, T, D) (a view of a C-contiguous (T, A, D) buffer) and lse
    (A, T), for inputs validated by ``minibert.kernels.fused_attention_varlen_forward``:
    NumPy q, k, v (A, T, D) of one float dtype, any strides; ``cu_seqlens`` (B + 1,) int64
    offsets; ``scale`` a float; ``seq_len`` the padded length S >= max n_b of the dropout
    index; ``start`` the stream's element index of the padded batch's first probability."""
    A, T, D = q.shape
    cu = np.asarray(cu_seqlens, dtype=np.int64)
    lengths = np.diff(cu)
    block_q, block_k = check_block_sizes(block_q, block_k)
    block_k = min(block_k, max(1, int(lengths.max(initial=0))))    # no scratch beyond n_b
    q, k, v = _blas_operand(q), _blas_operand(k), _blas_operand(v)
    (out,) = _token_major(A, T, D, q.dtype)                             # (A, T, D)
    lse = _uninitialised((A, T), q.dtype)                               # (A, T)
    scalars = _kernel_scalars(q.dtype, scale, dropout_p, seed, offset, start, seq_len, block_k)
    _run(lambda b, h0, h1: _forward_task(b, h0, h1, q, k, v, out, lse, cu, scalars, block_q,
                                         block_k), lengths, A, D)
    return out, lse


def attention_varlen_backward(dout, q, k, v, out, lse, cu_seqlens, scale, dropout_p=0.0, seed=0,
                              offset=0, *, seq_len, start=0, block_q=BLOCK_Q, block_k=BLOCK_K):
    """``(dq, dk, dv)``, each (A, T, D), views of one C-contiguous (T, 3, A, D) buffer
    (``merged_heads(dq, dk, dv)`` is then the (T, 3H) gradient without a copy), for inputs
    validated by ``minibert.kernels.fused_attention_varlen_backward``. ``out`` is not read
    (the row statistics are recomputed, see ``kernels/attn_v4_tiled.py``); it stays in
    FlashAttention's signature."""
    A, T, D = q.shape
    cu = np.asarray(cu_seqlens, dtype=np.int64)
    lengths = np.diff(cu)
    block_q, block_k = check_block_sizes(block_q, block_k)
    block_k = min(block_k, max(1, int(lengths.max(initial=0))))    # no scratch beyond n_b
    dout, q, k, v = (_blas_operand(x) for x in (dout, q, k, v))
    dq, dk, dv = _token_major(A, T, D, q.dtype, 3)                      # (A, T, D) each
    scalars = _kernel_scalars(q.dtype, scale, dropout_p, seed, offset, start, seq_len, block_k)
    _run(lambda b, h0, h1: _backward_task(b, h0, h1, dout, q, k, v, lse, dq, dk, dv, cu,
                                          scalars, block_q, block_k), lengths, A, D)
    return dq, dk, dv
