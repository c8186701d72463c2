"""minibert.kernels: fast kernels behind the same contracts as the readable ops.

Installed as the subpackage ``minibert.kernels`` (``package_dir`` in setup.cfg), so a plain
``pip install .`` ships it. The readable op in ``minibert/ops/`` stays the reference every
kernel here is tested against.

Fused attention
---------------
::

    out, lse = fused_attention_forward(q, k, v, mask, scale, dropout_p=0.0, seed=0, offset=0)
    dq, dk, dv = fused_attention_backward(dout, q, k, v, out, lse, mask, scale,
                                          dropout_p=0.0, seed=0, offset=0)

The function of ``minibert.ops.attention`` (``softmax(scale q k^T + mask) v`` with attention
dropout), computed block by block without ever forming the (S, S) matrices: the forward
saves only ``out`` and the per-row log-sum-exp ``lse``, from which the backward recomputes
the probabilities (FlashAttention-2; the algorithm is derived in ``attn_v4_tiled.py``).

* q, k, v, out, dout: (B, A, S, D), C-contiguous, all float32 or all float64. ``out`` is
  the forward's output, as in FlashAttention's signature (the CPU backward recomputes the
  row statistics it would give from the probabilities instead, for accuracy in float32:
  see ``attn_v4_tiled.py``; it is validated all the same).
* mask: (B, S) of 0/1 (1 = attend, 0 = padding; bool, integer or float), or None.
* scale: multiplies the scores; None means 1/sqrt(D).
* lse: (B, A, S) in q's dtype, ``log sum_j exp(scale q_i . k_j + mask_j)`` over the real
  keys; ``+inf`` for the rows of a sequence with no real key, whose outputs and gradients
  are zeros (never NaN).
* dropout_p in [0, 1): a probability is kept where ``minibert.rng.keep_mask((B, A, S, S),
  dropout_p, seed, offset)`` is True, element ``((b*A + a)*S + i)*S + j``, and scaled by
  1/(1 - dropout_p): the same bits as ``minibert.ops.attention.forward(..., training=True)``.
  0 means no dropout at all. ``offset`` selects the Philox stream, as for the textbook op
  (the model gives each dropout site of each forward its own).

NumPy arrays run ``attention_cpu.py``: block products in BLAS, everything between them in
fused Numba passes, tasks on ``numba.get_num_threads()`` threads (results do not
depend on the thread count). CuPy arrays are reserved for CUDA
kernels behind the same names. Every argument is validated here, before any compiled code
runs: a bad input raises ValueError or TypeError naming the argument.
"""
from __future__ import annotations

import math
import numbers

import numpy as np

from minibert.rng import _check_u64

__all__ = ["fused_attention_forward", "fused_attention_backward"]

_FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def _is_cupy(x) -> bool:
    return type(x).__module__.startswith("cupy")


def _check_tensors(named, shape_of=None):
    """Rank 4, C-contiguous, float32/float64, one shape and one dtype for all of ``named``
    (a list of (name, array)); the first one sets the shape and dtype."""
    first_name, first = named[0]
    for name, x in named:
        if not isinstance(x, np.ndarray):
            raise TypeError(f"{name} has type {type(x).__name__}, expected a NumPy or CuPy array")
        if x.ndim != 4:
            raise ValueError(f"{name} has shape {tuple(x.shape)}, expected rank 4 (B, A, S, D)")
        if x.dtype not in _FLOAT_DTYPES:
            raise TypeError(f"{name} has dtype {x.dtype}, expected float32 or float64")
        if x is not first:
            if tuple(x.shape) != tuple(first.shape):
                raise ValueError(f"{name} has shape {tuple(x.shape)}, expected the shape of "
                                 f"{first_name} {tuple(first.shape)} (B, A, S, D)")
            if x.dtype != first.dtype:
                raise TypeError(f"{name} has dtype {x.dtype}, expected the dtype of "
                                f"{first_name} ({first.dtype})")
        if not x.flags.c_contiguous:
            raise ValueError(f"{name} with shape {tuple(x.shape)} and strides {x.strides} is not "
                             "C-contiguous, expected a C-contiguous array "
                             "(np.ascontiguousarray)")


def _check_mask(mask, B, S):
    if mask is None:
        return None
    if not isinstance(mask, np.ndarray):
        raise TypeError(f"mask has type {type(mask).__name__}, expected a NumPy array (B, S) "
                        "of 0/1 or None")
    if mask.ndim != 2 or tuple(mask.shape) != (B, S):
        raise ValueError(f"mask has shape {tuple(mask.shape)}, expected (B, S) = {(B, S)} "
                         "with 1 = attend and 0 = padding")
    if mask.dtype.kind not in "biuf":
        raise TypeError(f"mask has dtype {mask.dtype}, expected bool, integer or float 0/1")
    valid = (mask == 0) | (mask == 1)
    if not bool(np.all(valid)):
        bad = mask[~valid].reshape(-1)[0]
        raise ValueError(f"mask contains the value {bad.item()!r}, expected only 0 (padding) "
                         "and 1 (attend); pass the 0/1 mask, not an additive one")
    return mask


def _check_scalars(scale, dropout_p, seed, offset, D):
    if scale is not None and (isinstance(scale, (bool, np.bool_))
                              or not isinstance(scale, numbers.Real)):
        raise TypeError(f"scale={scale!r} has type {type(scale).__name__}, expected a real "
                        "number or None (1/sqrt(D))")
    if scale is not None and not math.isfinite(scale):
        raise ValueError(f"scale={scale!r} is not finite, expected a finite number or None")
    if isinstance(dropout_p, (bool, np.bool_)) or not isinstance(dropout_p, numbers.Real):
        raise TypeError(f"dropout_p={dropout_p!r} has type {type(dropout_p).__name__}, "
                        "expected a float in [0, 1)")
    if not 0.0 <= dropout_p < 1.0:
        raise ValueError(f"dropout_p={dropout_p!r} is out of range, expected 0 <= dropout_p < 1")
    seed = _check_u64("seed", seed)
    offset = _check_u64("offset", offset)
    scale = 1.0 / math.sqrt(D) if scale is None else float(scale)
    return scale, float(dropout_p), seed, offset


def _reject_cupy(*arrays):
    if any(_is_cupy(x) for x in arrays):
        raise NotImplementedError("fused attention on CuPy arrays needs the CUDA kernels, which "
                                  "are not available yet; use NumPy arrays or "
                                  "attn_implementation='eager'")


def fused_attention_forward(q, k, v, mask, scale, dropout_p=0.0, seed=0, offset=0):
    """``(out, lse)``: out (B, A, S, D) = softmax(scale q k^T + mask) (with dropout) v, and
    lse (B, A, S) the log-sum-exp of each row of masked scores. See the module docstring."""
    args = _forward_args(q, k, v, mask, scale, dropout_p, seed, offset)
    from .attention_cpu import attention_forward   # lazy: Numba takes a while to import
    return attention_forward(q, k, v, *args)


def fused_attention_backward(dout, q, k, v, out, lse, mask, scale, dropout_p=0.0, seed=0,
                             offset=0):
    """``(dq, dk, dv)``, each (B, A, S, D): the gradients of the forward's ``out`` given
    ``dout`` = dL/d out. ``out`` and ``lse`` are what the forward returned for the same
    q, k, v, mask, scale, dropout_p, seed and offset."""
    args = _backward_args(dout, q, k, v, out, lse, mask, scale, dropout_p, seed, offset)
    from .attention_cpu import attention_backward
    return attention_backward(dout, q, k, v, out, lse, *args)


def _forward_args(q, k, v, mask, scale, dropout_p, seed, offset):
    """Validates the forward's inputs; returns ``(mask, scale, dropout_p, seed, offset)``
    as the CPU kernels take them (also used by the ladder's rung 4)."""
    _reject_cupy(q, k, v, mask)
    _check_tensors([("q", q), ("k", k), ("v", v)])
    B, A, S, D = q.shape
    mask = _check_mask(mask, B, S)
    return (mask,) + tuple(_check_scalars(scale, dropout_p, seed, offset, D))


def _backward_args(dout, q, k, v, out, lse, mask, scale, dropout_p, seed, offset):
    """Validates the backward's inputs; returns what ``_forward_args`` returns."""
    _reject_cupy(dout, q, k, v, out, lse, mask)
    _check_tensors([("q", q), ("k", k), ("v", v), ("out", out), ("dout", dout)])
    B, A, S, D = q.shape
    if not isinstance(lse, np.ndarray):
        raise TypeError(f"lse has type {type(lse).__name__}, expected a NumPy array (B, A, S)")
    if tuple(lse.shape) != (B, A, S):
        raise ValueError(f"lse has shape {tuple(lse.shape)}, expected (B, A, S) = {(B, A, S)}")
    if lse.dtype != q.dtype:
        raise TypeError(f"lse has dtype {lse.dtype}, expected the dtype of q ({q.dtype})")
    if not lse.flags.c_contiguous:
        raise ValueError(f"lse with strides {lse.strides} is not C-contiguous, expected a "
                         "C-contiguous array")
    mask = _check_mask(mask, B, S)
    return (mask,) + tuple(_check_scalars(scale, dropout_p, seed, offset, D))
