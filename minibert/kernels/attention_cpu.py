"""Fused softmax attention on the CPU, the production kernel (rung 5 of the ladder):
FlashAttention-2's algorithm of ``kernels/attn_v4_tiled.py``, with the block products done
by BLAS.

The function, the tiles, the online softmax, the skipping of padded keys, the recomputing
backward and its row statistics are those of rung 4 (``kernels/attn_v4_tiled.py``, whose
docstring derives them); read that first. The building blocks the two share (exp, row max,
dropout factors, key-block spans) live in ``_blocks.py``; this kernel
imports no rung. What changes is who does which part of a tile:

* **The block products go to BLAS** (``np.matmul`` on stacks of blocks): S = Q K^T and
  O += P V forward; S = Q K^T, dP = dO V^T, dV += Pd^T dO, dK += dS^T Q, dQ += dS K
  backward. Rung 4 writes them as Numba loops, which reach 30 to 50% of the machine's
  SGEMM rate inside the kernel (an output row of D = 64 numbers is too short to keep the
  multiply-add units busy, and LLVM cannot be made to hold a register tile); BLAS packs its
  operands and runs a hand-written register tile, at 55 to 85% of SGEMM on these blocks
  (measured call by call inside this kernel, one thread). Transposes are views
  (``k.transpose``): BLAS reads them through its transpose flag, so no copy of K or V is
  made (a contiguous copy of each K^T block was tried: no measurable gain).
* **Everything between the products stays fused in Numba**: scale, mask, running max,
  exponentials, running sums, rescaling of the accumulator, the dropout factors regenerated
  from Philox, the final division; and backward the recomputed probabilities, the row
  statistics and dS = P (dP - D_i), all in one call per tile (``_forward_block``,
  ``_forward_finish``, ``_backward_block``). A row of a tile is walked as few times as the
  math allows: forward, once to scale, mask and take the max, once more for exp and the
  row sum together; backward, once for P and both row statistics (sum_j P_ij and
  sum_j P_ij dP_ij), once more for dS and Pd. exp is ``_blocks.exp_scalar``, which the
  loop inlines and vectorises (it builds 2^k in registers; ``exp_row``, which needs a
  scratch row and a pass of its own, computes the same bits).
* **A tile covers several heads**: G heads x ``block_q`` queries x up to ``block_k`` keys of
  one sequence, so one ``np.matmul`` call does G block products and the Python between
  calls is paid once per G blocks. The scratch of a tile is G block_q block_k numbers
  (0.75 MiB for G = 3, 128 x 512 in float32, two of them in the backward; never S x S per
  head for S > block_k, and never kept after the call).

Layouts. q, k, v and dout are read only by BLAS, as (G, rows, D) stacks: any array whose
rows BLAS reads as they are (a unit-stride last axis, ``_args.blas_rows``) is taken
without a copy, such as the model's heads, views of its (B, S, 3H) product (copying them
first made forward + backward with the model's splits and merges 1.15x slower, median of
21 interleaved rounds at B = 32, A = 12, S = 128, D = 32, float32, 2 threads:
``python benchmarks/bench_attention_layout.py --repeat 21``; ``attention_varlen_cpu.py``
measured the like for its packed form). The outputs are token-major: out, and dq, dk, dv,
are views of one C-contiguous (B, S, A, D), resp. (B, S, 3, A, D), buffer
(``layouts.token_major``), so that the model's merges of the heads back into (B, S, H) and
(B, S, 3H) are views (``minibert.model.merge_heads``); BLAS writes dq, dk, dv through their
strides, and the forward finishes each tile in C-contiguous scratch, then copies it into
out. Against C-contiguous outputs and copying merges: 1.10x on the same step (median of 15
interleaved rounds, the previous kernel against this one); one copy per merge costs as
much (``op, merge copies`` in ``python benchmarks/bench_attention_layout.py``: 1.11x).

Where the time goes (``python benchmarks/profile_attention_kernel.py``, B = 32, A = 12,
S = 128, D = 32, float32, no mask, a shared 2-core machine). One thread: forward 23 ms,
56% BLAS, 34% ``_forward_block``, 2% ``_forward_finish``, 8% the rest (Python between
the calls, the copy of each tile into out, the argument tables); backward 45 ms, 77% BLAS,
19% ``_backward_block``, 4% the rest. BLAS runs at 55 (forward) and 62 (backward)
GFLOP/s in the kernel, 69 to 78 on the same stacks called alone, 93 for a 1024^3 SGEMM;
the row passes cost 1.3 to 1.4 ns a score, half of it exp (0.75 ns a score alone, in L1;
0.59 to 0.64 since ``_blocks._pow2`` builds 2^k in all eight float32 lanes: the row
passes now take 1.1 to 1.2 ns a score, while the forward and backward totals did not
move beyond the machine's noise).
On one thread the kernel takes as long as torch's SDPA (0.98x to 1.01x, forward +
backward); on two its tasks take 16 to 20% longer each than on one (the cores
share the caches and the memory), and the threads idle about 1 ms a pass (the tables and
the pool's start before the first task, the last task's tail). Larger tasks were measured
faster: G = 12 heads a task beat G = 6 by 1.25x on two threads, G = 3 by 1.15x on one.

Threads. The work is cut into tasks (sequence b, group of G heads): a task owns the rows
of out, lse, dq, dk and dv of its heads, so no two tasks write the same element. The cut
depends on the shape only (at least ``MIN_TASKS`` tasks), never on the number of
threads, and each task computes the same operations whatever thread runs it, so every
thread count gives the same bits. ``numba.get_num_threads()`` threads run the tasks from a
thread pool, the calling thread one of them, largest task first; BLAS and the Numba
functions release the GIL, and BLAS itself is held to one thread meanwhile (threadpoolctl),
so that the two kinds of threads do not fight over the cores (measured: with BLAS's own
threads left on, two workers ran 1.3x slower at (2, 12, 512, 64)). Why not Numba's
``prange``: BLAS called from inside Numba's OpenMP threads warned that it "may hang".
"""
from __future__ import annotations

import math

import numpy as np
from numba import njit

from .. import _numba_cache  # noqa: F401  (before any @njit: see minibert/_numba_cache.py)
from ..validation import check_block_sizes
from ._blocks import (
    EXP_CONSTANTS,
    FASTMATH,
    INT_OF,
    exp_scalar,
    exp_sum,
    keep_factors,
    kernel_args,
    row_max,
)
from ._threads import run_tasks
from .layouts import token_major

#: Default tile: 128 queries x 512 keys. block_k = 512 covers a BERT sequence in one key
#: block (no online-softmax rescaling, and the backward's row statistics come with the
#: block); block_q = 128 makes the products of the backward (summed over queries) long
#: enough for BLAS while a tile of scores stays within the L2 cache for G <= 3 heads.
BLOCK_Q = 128
BLOCK_K = 512

#: Below this many multiply-adds (B A S^2 D) the tasks run on the calling thread: handing
#: them to the pool costs tens of microseconds, more than a small problem takes.
MIN_PARALLEL_WORK = 1 << 20

#: The cut into tasks aims at this many (sequence, head group) tasks, enough to balance
#: sequences of different lengths over a few threads.
MIN_TASKS = 8


# --------------------------------------------------------------------------- fused row passes


@njit(cache=True, nogil=True, fastmath=FASTMATH)
def _forward_block(s, acc, m, l, bias_blk, scale, first, dropout_p, keep_scale, seed, offset,
                   start, b, h0, A, S, i0, j0, exp_consts, int_type):
    """One key block of the online softmax, for a tile of G heads x nr queries, in place.

    ``s`` (G, nr, nc) holds Q K^T of the block and leaves with P~ = exp(scale s + mask -
    m_new), times the dropout factors; ``m`` and ``l`` (G, nr), the running max and sum,
    are updated; ``acc`` (G, nr, D), the unnormalised output, is rescaled by
    alpha = exp(m_old - m_new) unless ``first`` (then the caller overwrites it with P~ V).
    ``bias_blk`` (nc,) is the additive key mask; the keep bit of score (i0 + r, j0 + c) of
    head h0 + g is element start + ((b A + h0 + g) S + i0 + r) S + j0 + c of the Philox
    stream (``start`` int64: 0, or b0 A S S for rows b0.. of a larger batch).
    ``exp_consts`` is ``EXP_CONSTANTS[dtype]``; ``int_type`` (``INT_OF[dtype]``) is not
    read any more (exp needs no scratch viewed as integers) and stays in the signature
    that other kernels call.
    """
    G, nr, nc = s.shape
    D = acc.shape[2]
    zero = s.dtype.type(0)
    dropping = dropout_p > 0
    kf = np.empty(nc, dtype=s.dtype)
    for g in range(G):
        for r in range(nr):
            srow = s[g, r]
            # a block's span starts and ends at real keys, so m_new is finite; before the
            # first block m = -inf and alpha = exp(-inf) = 0 (no call to exp for it)
            for c in range(nc):
                srow[c] = srow[c] * scale + bias_blk[c]
            m_new = max(m[g, r], row_max(srow, nc))
            alpha = zero if first else np.exp(m[g, r] - m_new)
            row_sum = exp_sum(srow, nc, m_new, exp_consts)      # P~ = exp(s - m_new), its sum
            l[g, r] = l[g, r] * alpha + row_sum           # the sum is taken before dropout
            m[g, r] = m_new
            if dropping:
                base = start + ((b * A + h0 + g) * S + i0 + r) * S + j0
                keep_factors(seed, offset, base, nc, dropout_p, keep_scale, zero, kf)
                for c in range(nc):
                    srow[c] *= kf[c]
            if not first:
                for d in range(D):
                    acc[g, r, d] *= alpha


@njit(cache=True, nogil=True, fastmath=FASTMATH)
def _forward_finish(acc, m, l, lse):
    """out = acc / l and lse = m + log(l), in place in ``acc`` (G, nr, D); a row without a
    real key (l = 0: no block was processed) gets zeros and lse = +inf."""
    G, nr, D = acc.shape
    ftype = acc.dtype.type
    zero, pos_inf = ftype(0), ftype(np.inf)
    for g in range(G):
        for r in range(nr):
            lr = l[g, r]
            if lr > zero:
                for d in range(D):
                    acc[g, r, d] = acc[g, r, d] / lr         # one rounding, as P = e / sum
                lse[g, r] = m[g, r] + np.log(lr)
            else:
                for d in range(D):
                    acc[g, r, d] = zero
                lse[g, r] = pos_inf


@njit(cache=True, nogil=True, fastmath=FASTMATH)
def _backward_block(p, ds, bias_blk, lse, row_sum, row_pdp, scale, stats, grads, dropout_p,
                    keep_scale, seed, offset, start, b, h0, A, S, i0, j0, exp_consts, int_type):
    """The row pass of the backward for a tile of G heads x nr queries x nc keys, in place.

    ``p`` comes with Q K^T and ``ds`` with dO V^T (G, nr, nc). The probabilities are
    recomputed, P = exp(scale q k + mask - lse). With ``stats`` the tile's share of the row
    sums sum_j P_ij and sum_j P_ij dP_ij is added to ``row_sum`` and ``row_pdp`` (G, nr);
    with ``grads`` (the sums being complete) ``p`` leaves as Pd = P keep / (1 - p_drop) and
    ``ds`` as scale dS = scale P (dP - D_i), with P normalised by its row sum and
    D_i = rowsum(dP P) (see "The row statistics" in ``kernels/attn_v4_tiled.py``).
    ``exp_consts`` and ``int_type`` as in ``_forward_block``.
    """
    G, nr, nc = p.shape
    ftype = p.dtype.type
    zero, one = ftype(0), ftype(1)
    dropping = dropout_p > 0
    kf = np.empty(nc, dtype=p.dtype)
    for c in range(nc):
        kf[c] = one
    for g in range(G):
        for r in range(nr):
            prow, dsrow = p[g, r], ds[g, r]
            lse_i = lse[g, r]
            if dropping:
                base = start + ((b * A + h0 + g) * S + i0 + r) * S + j0
                keep_factors(seed, offset, base, nc, dropout_p, keep_scale, zero, kf)
            # one pass: P, and the tile's share of the row sums (dP = dPd keep / (1 - p_drop))
            t_sum = zero
            t_pdp = zero
            for c in range(nc):
                e = exp_scalar(prow[c] * scale + bias_blk[c] - lse_i, exp_consts)
                prow[c] = e
                t_sum += e
                t_pdp += e * (dsrow[c] * kf[c])
            if stats:
                row_sum[g, r] += t_sum
                row_pdp[g, r] += t_pdp
            if grads:
                inv_sum = one / row_sum[g, r] if row_sum[g, r] > zero else zero
                delta_i = row_pdp[g, r] * inv_sum                  # D_i = rowsum(dP * P)
                for c in range(nc):
                    pc = prow[c] * inv_sum
                    dsrow[c] = pc * (dsrow[c] * kf[c] - delta_i) * scale
                    prow[c] = pc * kf[c]


# --------------------------------------------------------------------------- tasks


def _forward_task(b, h0, h1, q, k, v, out, lse, args, start, block_q, block_k):
    """Rows of out and lse of sequence b, heads h0 .. h1 - 1."""
    key_bias, key_lo, key_hi, scale, dropout_p, keep_scale, seed, offset = args
    _, A, S, D = q.shape
    G = h1 - h0
    consts, int_type = EXP_CONSTANTS[q.dtype], INT_OF[q.dtype]
    s_buf = np.empty(G * block_q * block_k, dtype=q.dtype)              # scores, then P~
    t_buf = np.empty(G * block_q * D, dtype=q.dtype)                    # P~ V of a later block
    acc_buf = np.empty(G * block_q * D, dtype=q.dtype)                  # the accumulator
    m = np.empty((G, block_q), dtype=q.dtype)
    l = np.empty((G, block_q), dtype=q.dtype)
    for i0 in range(0, S, block_q):
        nr = min(S, i0 + block_q) - i0
        qi = q[b, h0:h1, i0:i0 + nr]                                    # (G, nr, D)
        # the accumulator in C-contiguous scratch, copied into the token-major out at the
        # end: Numba vectorises the row passes over a C-contiguous tile, not over a strided
        # view (``attention_varlen_cpu.py`` measured _forward_finish 10x slower on one)
        acc = acc_buf[:G * nr * D].reshape(G, nr, D)
        mi, li = m[:, :nr], l[:, :nr]
        mi[...] = -np.inf
        li[...] = 0
        first = True
        for kb in range(key_lo.shape[1]):
            j0, j1 = int(key_lo[b, kb]), int(key_hi[b, kb])
            if j0 == j1:                                                # padding only
                continue
            nc = j1 - j0
            s = s_buf[:G * nr * nc].reshape(G, nr, nc)
            np.matmul(qi, k[b, h0:h1, j0:j1].transpose(0, 2, 1), out=s)     # Q K^T
            _forward_block(s, acc, mi, li, key_bias[b, j0:j1], scale, first, dropout_p,
                           keep_scale, seed, offset, start, b, h0, A, S, i0, j0, consts, int_type)
            vj = v[b, h0:h1, j0:j1]                                     # (G, nc, D)
            if first:
                np.matmul(s, vj, out=acc)                               # acc = P~ V
            else:
                t = t_buf[:G * nr * D].reshape(G, nr, D)
                np.matmul(s, vj, out=t)
                acc += t                                                # acc = alpha acc + P~ V
            first = False
        _forward_finish(acc, mi, li, lse[b, h0:h1, i0:i0 + nr])
        out[b, h0:h1, i0:i0 + nr] = acc


def _backward_task(b, h0, h1, dout, q, k, v, lse, dq, dk, dv, args, start, block_q, block_k):
    """Rows of dq, dk and dv of sequence b, heads h0 .. h1 - 1 (all of them: the caller
    allocates them uninitialised)."""
    key_bias, key_lo, key_hi, scale, dropout_p, keep_scale, seed, offset = args
    _, A, S, D = q.shape
    G = h1 - h0
    consts, int_type = EXP_CONSTANTS[q.dtype], INT_OF[q.dtype]
    p_buf = np.empty(G * block_q * block_k, dtype=q.dtype)              # P, then Pd
    ds_buf = np.empty(G * block_q * block_k, dtype=q.dtype)             # dO V^T, then c dS
    t_buf = np.empty(G * max(block_q, block_k) * D, dtype=q.dtype)      # a product to add
    row_sum = np.zeros((G, S), dtype=q.dtype)
    row_pdp = np.zeros((G, S), dtype=q.dtype)
    blocks = [(int(key_lo[b, kb]), int(key_hi[b, kb])) for kb in range(key_lo.shape[1])
              if key_lo[b, kb] < key_hi[b, kb]]
    # with one key block the row sums come with the block; with several a first sweep over
    # all blocks computes them before any dS (see ``kernels/attn_v4_tiled.py``)
    sweeps = [(True, True)] if len(blocks) == 1 else [(True, False), (False, True)]
    # rows that no product writes are zero: dK and dV at keys outside every block span
    # (padding), dQ of a sequence without a real key
    prev = 0
    for j0, j1 in blocks + [(S, S)]:
        dk[b, h0:h1, prev:j0] = 0
        dv[b, h0:h1, prev:j0] = 0
        prev = j1
    if not blocks:
        dq[b, h0:h1] = 0
    for stats, grads in sweeps:
        for kb, (j0, j1) in enumerate(blocks):
            nc = j1 - j0
            kj, vj = k[b, h0:h1, j0:j1], v[b, h0:h1, j0:j1]             # (G, nc, D)
            for i0 in range(0, S, block_q):
                nr = min(S, i0 + block_q) - i0
                qi, doi = q[b, h0:h1, i0:i0 + nr], dout[b, h0:h1, i0:i0 + nr]
                p = p_buf[:G * nr * nc].reshape(G, nr, nc)
                ds = ds_buf[:G * nr * nc].reshape(G, nr, nc)
                np.matmul(qi, kj.transpose(0, 2, 1), out=p)                  # Q K^T
                np.matmul(doi, vj.transpose(0, 2, 1), out=ds)                # dO V^T
                _backward_block(p, ds, key_bias[b, j0:j1], lse[b, h0:h1, i0:i0 + nr],
                                row_sum[:, i0:i0 + nr], row_pdp[:, i0:i0 + nr], scale,
                                stats, grads, dropout_p, keep_scale, seed, offset, start,
                                b, h0, A, S, i0, j0, consts, int_type)
                if not grads:
                    continue
                # the first term of a sum is written in place, the others added
                # through t: dV_j += Pd^T dO_i, dK_j += c dS^T Q_i,
                # dQ_i += c dS K_j
                _matmul_add(p.transpose(0, 2, 1), doi, dv[b, h0:h1, j0:j1], i0 == 0, t_buf)
                _matmul_add(ds.transpose(0, 2, 1), qi, dk[b, h0:h1, j0:j1], i0 == 0, t_buf)
                _matmul_add(ds, kj, dq[b, h0:h1, i0:i0 + nr], kb == 0, t_buf)


def _matmul_add(x, y, dst, first, t_buf):
    """dst = x @ y if ``first`` else dst += x @ y (through the scratch ``t_buf``)."""
    if first:
        np.matmul(x, y, out=dst)
        return
    t = t_buf[:dst.size].reshape(dst.shape)
    np.matmul(x, y, out=t)
    dst += t


# --------------------------------------------------------------------------- threads


def head_groups(B, A):
    """The tasks: (b, h0, h1) for each sequence b and group of heads h0 .. h1 - 1, at least
    ``MIN_TASKS`` of them where B A allows; a function of the shape alone."""
    per_seq = min(A, max(1, math.ceil(MIN_TASKS / B)))        # groups per sequence
    G = math.ceil(A / per_seq)
    return [(b, h0, min(A, h0 + G)) for h0 in range(0, A, G) for b in range(B)]


def _longest_first(tasks, key_lo, key_hi):
    """The tasks ordered by their work, the largest first (the work of a task is
    proportional to its sequence's keys in block spans): threads that take the next task
    when free then end close together (longest-processing-time-first scheduling). Each
    task computes the same bits in any order."""
    keys = (key_hi - key_lo).sum(axis=1)                                 # (B,)
    return sorted(tasks, key=lambda t: -int(keys[t[0]]) * (t[2] - t[1]))


def _run(task, tasks, work):
    """``run_tasks`` (``_threads.py``): in parallel when the problem has at least
    ``MIN_PARALLEL_WORK`` multiply-adds."""
    run_tasks(task, tasks, parallel=work >= MIN_PARALLEL_WORK)


# --------------------------------------------------------------------------- entry points


def _block_sizes(block_q, block_k, S):
    """The tile sizes (``minibert.validation.check_block_sizes``), at most S."""
    block_q, block_k = check_block_sizes(block_q, block_k)
    return max(1, min(block_q, S)), max(1, min(block_k, S))


def _uninitialised(shape, dtype):
    """A C-contiguous array whose every element the kernel writes (a test fills it with
    NaN to prove it)."""
    return np.empty(shape, dtype=dtype)


def attention_forward(q, k, v, mask, scale, dropout_p=0.0, seed=0, offset=0, *, start=0,
                      block_q=BLOCK_Q, block_k=BLOCK_K):
    """``(out, lse)`` for inputs validated by ``minibert.kernels.fused_attention_forward``:
    NumPy arrays, ``scale`` a float, ``mask`` (B, S) of 0/1 or None, ``start`` the
    dropout stream's element index of the first probability."""
    B, A, S, D = q.shape
    block_q, block_k = _block_sizes(block_q, block_k, S)
    args = kernel_args(q, mask, scale, dropout_p, seed, offset, block_k)
    (out,) = token_major((B,), A, S, D, q.dtype, empty=_uninitialised)   # (B, A, S, D)
    lse = _uninitialised((B, A, S), q.dtype)                             # (B, A, S)
    start = np.int64(start)
    _run(lambda b, h0, h1: _forward_task(b, h0, h1, q, k, v, out, lse, args, start, block_q,
                                         block_k),
         _longest_first(head_groups(B, A), args[1], args[2]), B * A * S * S * D)
    return out, lse


def attention_backward(dout, q, k, v, out, lse, mask, scale, dropout_p=0.0, seed=0, offset=0,
                       *, start=0, block_q=BLOCK_Q, block_k=BLOCK_K):
    """``(dq, dk, dv)`` for inputs validated by ``minibert.kernels.fused_attention_backward``.
    ``out`` is not read (see ``kernels/attn_v4_tiled.py``); it stays in FlashAttention's
    signature."""
    B, A, S, D = q.shape
    block_q, block_k = _block_sizes(block_q, block_k, S)
    args = kernel_args(q, mask, scale, dropout_p, seed, offset, block_k)
    dq, dk, dv = token_major((B,), A, S, D, q.dtype, 3, _uninitialised)  # (B, A, S, D) each
    start = np.int64(start)
    _run(lambda b, h0, h1: _backward_task(b, h0, h1, dout, q, k, v, lse, dq, dk, dv, args,
                                          start, block_q, block_k),
         _longest_first(head_groups(B, A), args[1], args[2]), B * A * S * S * D)
    return dq, dk, dv
