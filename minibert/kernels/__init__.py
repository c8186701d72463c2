"""minibert.kernels: fast kernels behind the same contracts as the readable ops.

A plain subpackage of minibert, shipped by ``pip install .``. The readable op in
``minibert/ops/`` stays the reference every kernel here is tested against; the study ladder
that derives the attention kernels is ``kernels/`` at the repository root, which nothing
here imports.

Fused attention
---------------
::

    out, lse = fused_attention_forward(q, k, v, mask, scale, dropout_p=0.0, seed=0, offset=0)
    dq, dk, dv = fused_attention_backward(dout, q, k, v, out, lse, mask, scale,
                                          dropout_p=0.0, seed=0, offset=0)

The function of ``minibert.ops.attention`` (``softmax(scale q k^T + mask) v`` with attention
dropout), computed block by block without ever forming the (S, S) matrices: the forward
saves only ``out`` and the per-row log-sum-exp ``lse``, from which the backward recomputes
the probabilities (FlashAttention-2; the algorithm is derived in ``kernels/attn_v4_tiled.py``).

* q, k, v, out, dout: (B, A, S, D), all float32 or all float64. On the CPU they may be views
  whose last axis has unit stride, such as the model's heads (``minibert.model.split_heads``
  of its (B, S, 3H) product: the kernel's BLAS calls read them as they are, no copy), on a
  GPU C-contiguous. The CPU kernel returns out, dq, dk and dv token-major (views of
  (B, S, A, D) and (B, S, 3, A, D) buffers: ``minibert.model.merge_heads`` of them is a
  view), the CUDA kernels C-contiguous. ``out`` is
  the forward's output, as in FlashAttention's signature (the CPU backward recomputes the
  row statistics it would give from the probabilities instead, for accuracy in float32:
  see ``kernels/attn_v4_tiled.py``; it is validated all the same).
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
depend on the thread count). GPU arrays run ``attention_cuda.py``, FlashAttention-2's
kernels in Numba CUDA: CuPy arrays (recognised by their type, or any object with
``__cuda_array_interface__``) on CuPy's current stream, giving CuPy arrays back, and
Numba device arrays (``numba.cuda.to_device(x)``, also the CUDA simulator's
``FakeCUDAArray``), giving Numba device arrays back. ``numba.cuda`` is imported only then.
Every argument is validated here, before any compiled code runs (the checks are
``_args.forward_args`` / ``backward_args``, and ``cuda_forward_args`` /
``cuda_backward_args`` for GPU arrays): a bad input raises ValueError or TypeError naming
the argument.

Fused attention on packed sequences ("varlen")
----------------------------------------------
::

    out, lse = fused_attention_varlen_forward(q, k, v, cu_seqlens, scale, dropout_p=0.0,
                                              seed=0, offset=0, *, seq_len=None, start=0)
    dq, dk, dv = fused_attention_varlen_backward(dout, q, k, v, out, lse, cu_seqlens, scale,
                                                 dropout_p=0.0, seed=0, offset=0, *,
                                                 seq_len=None, start=0)

The same function on the real tokens of a right-padded batch only, with no mask and no
padding anywhere (FlashAttention's "varlen" form):

* q, k, v, out, dout: (A, T, D), heads first, then the T = n_0 + ... + n_{B-1} tokens of the
  B sequences one after the other; one float dtype; any strides (the model's q, k, v are
  views of its (T, 3H) product, ``qkv.reshape(T, 3, A, D).transpose(1, 2, 0, 3)``).
* cu_seqlens: (B + 1,) integer offsets, cu_seqlens[0] = 0, non-decreasing, cu_seqlens[B] =
  T: sequence b is tokens cu_seqlens[b] .. cu_seqlens[b + 1] - 1 and attends to itself
  only (a sequence may be empty: no rows, no work).
* lse: (A, T), the log-sum-exp of each row's scores over its own sequence.
* dropout: probability (b, a, i, j), i and j positions inside sequence b, is kept by the
  Philox bit of element ``start + ((b*A + a)*S + i)*S + j`` with S = ``seq_len`` the PADDED
  length (None: the longest sequence): the bit the padded entry points and the textbook op
  give it in the right-padded (B, A, S, S) batch, so the packed results are the padded
  results at the real rows.
* scale, dropout_p, seed, offset, start: as above.

NumPy arrays run ``attention_varlen_cpu.py`` (the CPU kernel's tiles and row passes, per
sequence); its out (A, T, D) is a view of a C-contiguous (T, A, D) buffer and its dq, dk,
dv views of one (T, 3, A, D) buffer, so that the merges back to (T, H) and (T, 3H)
(``attention_varlen_cpu.merged_heads``) are free. GPU arrays go to
``attention_cuda_launch.varlen_forward`` / ``varlen_backward`` with the same arguments
(cu_seqlens as given, NumPy or on the device; its B + 1 values are read back once to check
them), scale, dropout_p, seed, offset and start validated and seq_len resolved to an int.
Checks: ``_args.varlen_forward_args`` / ``varlen_backward_args``.
"""
from __future__ import annotations

from minibert.backend import cuda_kernels_available, is_device_array

__all__ = ["fused_attention_forward", "fused_attention_backward", "fused_attention_varlen_forward",
           "fused_attention_varlen_backward"]


def fused_attention_forward(q, k, v, mask, scale, dropout_p=0.0, seed=0, offset=0, *, start=0):
    """``(out, lse)``: out (B, A, S, D) = softmax(scale q k^T + mask) (with dropout) v, and
    lse (B, A, S) the log-sum-exp of each row of masked scores. See the module docstring;
    ``start`` is the stream's element index of the first probability (0, or b0 A S S for
    rows b0.. of a larger batch: a data-parallel rank's share)."""
    from ..rng import check_u64
    start = check_u64("start", start)
    if is_device_array(q):
        from ._args import cuda_forward_args
        args = cuda_forward_args(q, k, v, mask, scale, dropout_p, seed, offset)
        _require_numba_cuda()
        from .attention_cuda_launch import attention_forward as cuda_forward
        return cuda_forward(q, k, v, *args, start=start)
    # lazy: Numba takes a while to import, and ``import minibert.kernels`` should not
    from ._args import forward_args
    args = forward_args(q, k, v, mask, scale, dropout_p, seed, offset)
    from .attention_cpu import attention_forward
    return attention_forward(q, k, v, *args, start=start)


def fused_attention_backward(dout, q, k, v, out, lse, mask, scale, dropout_p=0.0, seed=0,
                             offset=0, *, start=0):
    """``(dq, dk, dv)``, each (B, A, S, D): the gradients of the forward's ``out`` given
    ``dout`` = dL/d out. ``out`` and ``lse`` are what the forward returned for the same
    q, k, v, mask, scale, dropout_p, seed, offset and start."""
    from ..rng import check_u64
    start = check_u64("start", start)
    if is_device_array(q):
        from ._args import cuda_backward_args
        args = cuda_backward_args(dout, q, k, v, out, lse, mask, scale, dropout_p, seed, offset)
        _require_numba_cuda()
        from .attention_cuda_launch import attention_backward as cuda_backward
        return cuda_backward(dout, q, k, v, out, lse, *args, start=start)
    from ._args import backward_args
    args = backward_args(dout, q, k, v, out, lse, mask, scale, dropout_p, seed, offset)
    from .attention_cpu import attention_backward
    return attention_backward(dout, q, k, v, out, lse, *args, start=start)


def fused_attention_varlen_forward(q, k, v, cu_seqlens, scale, dropout_p=0.0, seed=0, offset=0, *,
                                   seq_len=None, start=0):
    """``(out, lse)`` on packed sequences: out (A, T, D) = per sequence softmax(scale q k^T)
    (with dropout) v, lse (A, T). See "Fused attention on packed sequences" in the module
    docstring; ``seq_len`` is the padded length S of the dropout index (None: the longest
    sequence), ``start`` the stream's element index of the padded batch's first
    probability."""
    from ..rng import check_u64
    from ._args import varlen_forward_args
    start = check_u64("start", start)
    device = is_device_array(q)
    cu, *scalars, seq_len = varlen_forward_args(q, k, v, cu_seqlens, scale, dropout_p, seed,
                                                offset, seq_len, device)
    if device:
        _require_numba_cuda()
        from .attention_cuda_launch import varlen_forward
        return varlen_forward(q, k, v, cu_seqlens, *scalars, seq_len=seq_len, start=start)
    from .attention_varlen_cpu import attention_varlen_forward
    return attention_varlen_forward(q, k, v, cu, *scalars, seq_len=seq_len, start=start)


def fused_attention_varlen_backward(dout, q, k, v, out, lse, cu_seqlens, scale, dropout_p=0.0,
                                    seed=0, offset=0, *, seq_len=None, start=0):
    """``(dq, dk, dv)``, each (A, T, D): the gradients of the packed forward's ``out`` given
    ``dout``; ``out`` and ``lse`` are what the forward returned for the same arguments."""
    from ..rng import check_u64
    from ._args import varlen_backward_args
    start = check_u64("start", start)
    device = is_device_array(q)
    cu, *scalars, seq_len = varlen_backward_args(dout, q, k, v, out, lse, cu_seqlens, scale,
                                                 dropout_p, seed, offset, seq_len, device)
    if device:
        _require_numba_cuda()
        from .attention_cuda_launch import varlen_backward
        return varlen_backward(dout, q, k, v, out, lse, cu_seqlens, *scalars, seq_len=seq_len,
                               start=start)
    from .attention_varlen_cpu import attention_varlen_backward
    return attention_varlen_backward(dout, q, k, v, out, lse, cu, *scalars, seq_len=seq_len,
                                     start=start)


def _require_numba_cuda():
    """The CUDA kernels need Numba's CUDA target, and a device it can compile for and launch
    on (``backend.cuda_kernels_available`` probes both once): say what is missing, rather
    than fail inside Numba. The ops never get here then: they run their textbook code."""
    if not cuda_kernels_available():
        from minibert.backend import NOT_INSTALLED, cuda_kernels_problem
        raise ImportError("fused attention on GPU arrays needs numba-cuda and a device it can "
                          f"launch on: {cuda_kernels_problem() or NOT_INSTALLED}; "
                          "attn_implementation='eager' runs the textbook op on CuPy without it")
