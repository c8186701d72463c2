"""Multi-head scaled dot-product attention, the textbook "eager" version.

Every head of every sequence attends on its own, so all shapes carry (B, A) in front:
q, k, v (B, A, S, D) with the same S for queries and keys (self-attention), the padding
mask ``attention_mask`` (B, S) with Hugging Face's convention 1 = attend, 0 = padding.
This file is the readable reference of ``minibert.kernels.fused_attention_*``: the fused
kernels compute the same function without materialising the (S, S) matrices, and this op
hands its work to them (see "Implementations" below).

Forward, per (b, a), with ``c = scale`` (default 1/sqrt(D)) and ``p`` the dropout rate:

    S  = c * Q K^T + M                     scores          (S_q, S_k)    M: additive mask
    P  = h * softmax_rows(S)               probabilities   (S_q, S_k)    h: 1 if the sequence
                                                                           has a key, else 0
    Pd = P * keep / (1 - p)                attention dropout (training only)
    C  = Pd V                              context         (S_q, D)

    softmax_rows(S)[i, j] = exp(S[i, j] - m_i) / sum_l exp(S[i, l] - m_i),  m_i = max_l S[i, l]

Subtracting the row max changes nothing mathematically and keeps every exponent <= 0, so
exp never overflows. ``M`` is 0 at real keys and ``finfo(dtype).min / 2`` at padded keys
(see ``additive_mask``): exp of it underflows to exactly 0, so a padded key gets exactly zero
probability. A sequence with no real key at all would get a uniform softmax over padding;
the factor ``h`` (B, 1, 1, 1) turns those rows into exact zeros, so their outputs are zeros
and their gradients zeros, never NaN. ``keep`` is ``rng.keep_mask((B, A, S, S), p, seed,
offset)``, element index in C order over (B, A, S_q, S_k), the bits the fused kernels
regenerate.

Backward. Given dC = dL/dC (S_q, D), undo each line in reverse:

    C  = Pd V         ->  dV  = Pd^T dC                                  (S_k, D)
                          dPd = dC V^T                                   (S_q, S_k)
    Pd = P keep/(1-p) ->  dP  = dPd * keep / (1 - p)                     (S_q, S_k)
    P  = h softmax(S) ->  dS  = P * (dP - rowsum(dP * P))                (S_q, S_k)
    S  = c Q K^T + M  ->  dQ  = c dS K                                   (S_q, D)
                          dK  = c dS^T Q                                 (S_k, D)

The softmax step: for one row, y = softmax(s) has Jacobian dy_j/ds_i = y_j (delta_ij - y_i),
so ds_i = sum_j dy_j y_j (delta_ij - y_i) = y_i (dy_i - sum_j dy_j y_j). With the factor h
the Jacobian is h times that, which the same formula gives when evaluated at P = h y (for
h in {0, 1}, h^2 = h). M is a constant: no gradient flows to the mask.

Implementations. ``forward(..., implementation=)`` chooses who computes the function:

* ``"eager"``: the code below, which forms S, P and Pd and keeps P in its cache;
* ``"fused"``: the fused kernel (``minibert.kernels.fused_attention_forward``), which keeps
  only the context and the row log-sum-exp and recomputes P block by block in its backward
  (FlashAttention-2); same function, same dropout bits; it never forms P, so it cannot
  return the probabilities;
* ``"auto"`` (the default): the kernel wherever one exists for the arrays (NumPy float32 or
  float64, ``minibert.ops.use_kernel``: the CPU kernel; CuPy float32 or float64 with
  Numba's CUDA target installed, ``use_cuda_kernel``: the CUDA kernel), the code below when
  the caller asks for the probabilities (``return_probs=True``) or under
  ``minibert.ops.readable_ops()``.

The kernel's cache is a ``Fused`` that ``backward`` hands back to the kernel, as for the
other ops; ``probabilities(cache)`` gives P from an eager cache.

Packed batches. With a ``minibert.packing.Packing`` in place of the mask, q, k and v hold the
real tokens of a right-padded batch only: (A, T, D), sequence b the tokens
``cu_seqlens[b] .. cu_seqlens[b+1] - 1``, each attending to its own tokens (FlashAttention's
"varlen" form). The function is the padded one at the real rows, dropout bits included (the
bits of probability (b, a, i, j) are those of the padded (B, A, S, S) layout). The fused
kernels compute it with no padding anywhere (``minibert.kernels.fused_attention_varlen_*``);
the eager code scatters the tokens into the padded batch, runs the textbook function above
and gathers the real rows back: the definition, which the kernels are tested against.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from ..backend import get_array_module
from ..packing import Packing, pad, unpad
from ..rng import keep_mask
from ..validation import AttentionMask, check_attention_mask, check_dropout_p, check_scale
from . import hooks
from .switch import Fused, use_cuda_kernel, use_kernel

IMPLEMENTATIONS = ("auto", "eager", "fused")


def additive_mask(attention_mask, dtype):
    """Turn a (B, S) 0/1 padding mask into an additive (B, 1, 1, S) mask of ``dtype``.

    0 where ``attention_mask == 1`` (attend), ``finfo(dtype).min / 2`` where it is 0.

    Why that value: it must be so negative that ``exp(score + mask - row_max)`` underflows to
    exactly 0 in ``dtype`` whatever the scores (the fixed -1e4 of the original BERT code only
    works while real scores stay far below 1e4 apart), yet finite, so that no ``-inf`` appears
    and ``-inf - (-inf) = NaN`` cannot happen in a row whose keys are all padding. Half of
    ``finfo.min`` leaves room: adding any score of magnitude below ``finfo.max / 2`` cannot
    overflow to ``-inf``.
    """
    dtype = np.dtype(dtype)
    if dtype.kind != "f":
        raise TypeError(f"dtype={dtype} is not a floating dtype, expected e.g. float32 or float64")
    if not isinstance(attention_mask, AttentionMask):
        attention_mask = get_array_module(attention_mask).asarray(attention_mask)
    if len(attention_mask.shape) != 2:
        raise ValueError(f"attention_mask has shape {tuple(attention_mask.shape)}, "
                         "expected (B, S) with 1 = attend and 0 = padding")
    B, S = attention_mask.shape
    return check_attention_mask(attention_mask, B, S).additive(dtype)              # (B, 1, 1, S)


def _validate(q, k, v, attention_mask, scale, dropout_p):
    """Checks the inputs of ``forward``; returns ``(attention_mask, scale, dropout_p)`` with
    the mask an ``AttentionMask`` (or None) and the scalars floats (scale: 1/sqrt(D) for
    None), from the checks the model and the kernels share (``minibert.validation``)."""
    for name, x in (("q", q), ("k", k), ("v", v)):
        if not hasattr(x, "ndim") or x.ndim != 4:
            raise ValueError(f"{name} has shape {tuple(getattr(x, 'shape', ()))}, "
                             "expected rank 4 (B, A, S, D)")
        if np.dtype(x.dtype).kind != "f":
            raise TypeError(f"{name} has dtype {x.dtype}, expected a floating dtype "
                            "(float32 or float64)")
    for name, x in (("k", k), ("v", v)):
        if tuple(x.shape) != tuple(q.shape):
            raise ValueError(f"{name} has shape {tuple(x.shape)}, expected the shape of q "
                             f"{tuple(q.shape)} (B, A, S, D)")
        if x.dtype != q.dtype:
            raise TypeError(f"{name} has dtype {x.dtype}, expected the dtype of q ({q.dtype})")
    B, _, S, D = q.shape
    attention_mask = check_attention_mask(attention_mask, B, S, xp=get_array_module(q))
    return attention_mask, check_scale(scale, D), check_dropout_p(dropout_p)


@hooks.op("attention")
def forward(q, k, v, attention_mask=None, scale=None, dropout_p=0.0, seed=0, offset=0,
            training=False, *, implementation="auto", return_probs=False, start=0):
    """Attention core ``softmax(q k^T * scale + mask) @ v`` with attention dropout.

    Args:
        q, k, v: (B, A, S, D) queries, keys, values, one dtype.
        attention_mask: (B, S) of 0/1 (1 = attend, 0 = padding), or None (all ones), or a
            ``minibert.validation.AttentionMask`` (checked once by the caller; the forms
            built from it are kept: the model passes one to every layer).
        scale: multiplies the scores; None means 1/sqrt(D).
        dropout_p: probability of dropping an attention probability (training only).
        seed, offset: the Philox stream of the dropout mask (see ``minibert.rng``).
        training: dropout is applied only when True and ``dropout_p > 0``.
        implementation: "auto", "eager" or "fused" (the module docstring).
        return_probs: the caller will read the probabilities (``probabilities(cache)``):
            "auto" then runs the eager code; "fused" cannot and raises ValueError.
        start: the dropout stream's element index of P's first element: 0, or
            b0 A S S when q holds rows b0.. of a larger batch (a data-parallel rank's share).

    Returns:
        ``(context, cache)``: context (B, A, S, D); cache feeds ``backward``, and for the
        eager code ``probabilities(cache)`` is the post-softmax, pre-dropout P (B, A, S, S)
        (Hugging Face's attentions).
    """
    if isinstance(attention_mask, Packing):                    # q, k, v: (A, T, D)
        return _packed_forward(q, k, v, attention_mask, scale, dropout_p, seed, offset,
                               training, implementation, return_probs, start)
    xp = get_array_module(q)
    # the mask (B, S) on q's device, checked once: an AttentionMask is not checked again
    attention_mask, scale, dropout_p = _validate(q, k, v, attention_mask, scale, dropout_p)
    B, A, S, D = q.shape
    path = _choose(implementation, return_probs, q, k, v)
    if path == "fused":
        return _fused_forward(q, k, v, attention_mask, scale, dropout_p if training else 0.0,
                              seed, offset, start)

    scores = (q @ k.swapaxes(-1, -2)) * scale                         # (B, A, S, S)
    has_key = None
    if attention_mask is not None:
        scores = scores + attention_mask.additive(q.dtype)            # (B, A, S, S)
        # 1 for a sequence with at least one real key, 0 for an all-padding one
        has_key = attention_mask.has_key(q.dtype)                     # (B, 1, 1, 1)

    row_max = xp.max(scores, axis=-1, keepdims=True)                  # (B, A, S, 1)
    e = xp.exp(scores - row_max)                                      # (B, A, S, S), each <= 1
    probs = e / xp.sum(e, axis=-1, keepdims=True)                     # (B, A, S, S)
    if has_key is not None:
        probs = probs * has_key                                       # all-padding rows -> 0

    keep = None
    dropped = probs
    if training and dropout_p > 0:
        keep = keep_mask((B, A, S, S), dropout_p, seed, offset, xp, start)  # (B, A, S, S) bool
        dropped = probs * keep / (1.0 - dropout_p)                    # (B, A, S, S)

    context = dropped @ v                                             # (B, A, S, D)
    cache = {"q": q, "k": k, "v": v, "probs": probs, "keep": keep,
             "scale": scale, "dropout_p": float(dropout_p)}
    return context, cache


@hooks.op("attention")
def backward(dcontext, cache):
    """Returns ``(dq, dk, dv)``, each (B, A, S, D) (packed: (A, T, D)); see the module
    docstring."""
    if isinstance(cache, Fused):
        return cache.backward(dcontext, *cache.saved)
    if isinstance(cache, _PackedEager):          # the textbook backward on the padded batch
        grads = backward(_to_padded(dcontext, cache.packing), cache.padded)
        return tuple(_to_packed(g, cache.packing) for g in grads)
    q, k, v = cache["q"], cache["k"], cache["v"]
    probs, keep, scale, p = cache["probs"], cache["keep"], cache["scale"], cache["dropout_p"]
    xp = get_array_module(dcontext)

    # rebuild Pd rather than storing it: one (S, S) buffer less per layer in the cache
    dropped = probs if keep is None else probs * keep / (1.0 - p)     # (B, A, S, S)
    # context = dropped @ v
    dv = dropped.swapaxes(-1, -2) @ dcontext                          # (B, A, S, D)
    ddropped = dcontext @ v.swapaxes(-1, -2)                          # (B, A, S, S)
    # dropped = probs * keep / (1.0 - dropout_p)
    dprobs = ddropped if keep is None else ddropped * keep / (1.0 - p)
    # probs = has_key * exp(scores - row_max) / sum(...): the softmax Jacobian-vector product
    # (has_key and row_max are already in probs; the mask is a constant)
    row_dot = xp.sum(dprobs * probs, axis=-1, keepdims=True)          # (B, A, S, 1)
    dscores = probs * (dprobs - row_dot)                              # (B, A, S, S)
    # scores = (q @ k.swapaxes(-1, -2)) * scale
    dq = (dscores @ k) * scale                                        # (B, A, S, D)
    dk = (dscores.swapaxes(-1, -2) @ q) * scale                       # (B, A, S, D)
    return dq, dk, dv


def probabilities(cache):
    """P (B, A, S, S), the post-softmax, pre-dropout probabilities an eager forward kept;
    None for a fused forward's cache (the kernel never forms them)."""
    if isinstance(cache, _PackedEager):
        return probabilities(cache.padded)
    return None if isinstance(cache, Fused) else cache["probs"]


# --------------------------------------------------------------------------- packed batches


class _PackedEager(NamedTuple):
    """The cache of the eager code on a packed batch: its packing and the padded cache."""
    packing: Packing
    padded: dict


def _to_padded(t, packing):
    """(A, T, D) -> (B, A, S, D), zeros at the padded positions."""
    return pad(t.transpose(1, 0, 2), packing).transpose(0, 2, 1, 3)


def _to_packed(t, packing):
    """(B, A, S, D) -> (A, T, D), the real rows."""
    return unpad(t.transpose(0, 2, 1, 3), packing).transpose(1, 0, 2)


def _packed_forward(q, k, v, packing, scale, dropout_p, seed, offset, training,
                    implementation, return_probs, start):
    """``forward`` on a packed batch q, k, v (A, T, D): see "Packed batches" above."""
    xp = get_array_module(q)
    B, S = packing.shape
    for name, x in (("q", q), ("k", k), ("v", v)):
        if getattr(x, "ndim", None) != 3 or x.shape[1] != packing.num_tokens:
            raise ValueError(f"{name} has shape {tuple(getattr(x, 'shape', ()))}, expected "
                             f"(A, T, D) with T = {packing.num_tokens} packed tokens")
    if _choose(implementation, return_probs, q, k, v) == "eager":
        real = xp.arange(S) < xp.asarray(packing.lengths)[:, None]             # (B, S)
        context, padded = forward(*(_to_padded(t, packing) for t in (q, k, v)), real, scale,
                                  dropout_p, seed, offset, training, implementation="eager",
                                  return_probs=return_probs, start=start)
        return _to_packed(context, packing), _PackedEager(packing, padded)
    from ..kernels import fused_attention_varlen_forward  # lazy: Numba takes a while to import
    D = q.shape[-1]
    scale, dropout_p = check_scale(scale, D), check_dropout_p(dropout_p)   # checked as padded
    dropout_p = dropout_p if training else 0.0
    if xp is not np:     # the CUDA kernels take C-contiguous heads; the CPU kernel, the views
        q, k, v = (xp.ascontiguousarray(t) for t in (q, k, v))            # (A, T, D) each
    out, lse = fused_attention_varlen_forward(q, k, v, packing.cu_seqlens, scale, dropout_p,
                                              seed, offset, seq_len=S, start=start)
    saved = (q, k, v, out, lse, packing.cu_seqlens, scale, dropout_p, seed, offset, S, start)
    return out, Fused(_varlen_backward, saved)


def _varlen_backward(dout, q, k, v, out, lse, cu_seqlens, scale, dropout_p, seed, offset,
                     seq_len, start):
    """The varlen kernel's backward: ``(dq, dk, dv)`` (A, T, D) each."""
    from ..kernels import fused_attention_varlen_backward
    xp = get_array_module(dout)
    if xp is not np:
        dout = xp.ascontiguousarray(dout)                                 # (A, T, D)
    return fused_attention_varlen_backward(dout, q, k, v, out, lse, cu_seqlens, scale,
                                           dropout_p, seed, offset, seq_len=seq_len, start=start)


def _choose(implementation, return_probs, q, k, v) -> str:
    """"eager" or "fused" for ``forward``'s ``implementation`` and ``return_probs``."""
    if implementation not in IMPLEMENTATIONS:
        raise ValueError(f"implementation={implementation!r} is not known, expected one of "
                         f"{IMPLEMENTATIONS}")
    if implementation == "fused" and return_probs:
        raise ValueError("output_attentions=True asks for the attention probabilities, which "
                         "attn_implementation='fused' never forms; use 'eager' or 'auto' "
                         "(both return them)")
    if implementation == "auto":
        kernel = use_kernel(q, k, v) or (use_cuda_kernel(q, k, v) and _cuda_covers(q))
        return "fused" if kernel and not return_probs else "eager"
    return implementation


def _cuda_covers(q) -> bool:
    """Whether the CUDA kernels cover q's head size and dtype (``attention_cuda_launch.supports``:
    D <= 128); the textbook code runs the others."""
    from ..kernels.attention_cuda_launch import supports  # lazy: ops import no kernel at load
    return supports(int(q.shape[-1]), q.dtype)


def _fused_forward(q, k, v, attention_mask, scale, dropout_p, seed, offset, start):
    """The kernel's forward behind the op's contract: ``(context, Fused cache)``. The model's
    heads are strided views of one (B, S, 3H) product: the CPU kernel reads them as they are
    (copying them made the step 1.15x slower, see ``attention_cpu.py``'s "Layouts"); the
    CUDA kernels take C-contiguous heads, and any array whose last axis is not unit-stride
    is copied."""
    from ..kernels import fused_attention_forward  # lazy: Numba takes a while to import
    q, k, v = (_kernel_operand(t) for t in (q, k, v))                     # (B, A, S, D) each
    out, lse = fused_attention_forward(q, k, v, attention_mask, scale, dropout_p, seed, offset,
                                       start=start)
    saved = (q, k, v, out, lse, attention_mask, scale, dropout_p, seed, offset, start)
    return out, Fused(_fused_backward, saved)


def _kernel_operand(x):
    """``x`` as the fused kernel takes it: a NumPy array as it is where BLAS reads its rows
    as they are (``minibert.kernels._args.blas_rows``), else a C-contiguous copy (always
    for GPU arrays)."""
    if type(x) is np.ndarray:                  # not a GPU array (nor the tests' stand-in)
        from ..kernels._args import blas_rows
        if x.flags.c_contiguous or blas_rows(x):
            return x
        return np.ascontiguousarray(x)
    return get_array_module(x).ascontiguousarray(x)


def _fused_backward(dout, q, k, v, out, lse, attention_mask, scale, dropout_p, seed, offset,
                    start):
    """The kernel's backward: ``(dq, dk, dv)`` from the saved context and log-sum-exp."""
    from ..kernels import fused_attention_backward
    dout = _kernel_operand(dout)                                          # (B, A, S, D)
    return fused_attention_backward(dout, q, k, v, out, lse, attention_mask, scale,
                                    dropout_p, seed, offset, start=start)
