"""The argument checks of fused attention's entry points (``minibert.kernels.
fused_attention_forward`` / ``fused_attention_backward``), before any kernel runs: the
tensors' kinds, shapes, dtypes and layouts here, the padding mask, scale and dropout rate
through ``minibert.validation``, the checks the model and the attention op use too.

* ``check_tensors``, ``check_mask``, ``check_scalars``, ``reject_gpu_arrays`` and the two
  that combine them, ``forward_args`` and ``backward_args``, for NumPy arrays;
* ``check_cuda_tensors``, ``check_cuda_mask``, ``cuda_forward_args`` and
  ``cuda_backward_args``, the same for GPU arrays (CuPy, anything with
  ``__cuda_array_interface__``, Numba device arrays). They need neither CuPy nor
  ``numba.cuda``: they read only attributes of the arrays;
* ``check_varlen_tensors``, ``check_cu_seqlens``, ``check_seq_len`` and the two that
  combine them, ``varlen_forward_args`` and ``varlen_backward_args``, for the packed
  ("varlen") entry points (``fused_attention_varlen_*``), NumPy or GPU arrays (``device``):
  q, k, v (A, T, D) of any strides, the offsets ``cu_seqlens`` (B + 1,), and the padded
  length ``seq_len`` of the dropout index.

The mask comes back as it came: a checked 0/1 array, or the ``AttentionMask`` it was (not
checked again: the model checks its mask once per forward); ``cuda_*_args`` give the CUDA
kernel the array inside an ``AttentionMask``.
"""
from __future__ import annotations

import numpy as np

from minibert.backend import is_device_array
from minibert.rng import check_u64
from minibert.validation import AttentionMask, check_attention_mask, check_dropout_p, check_scale

#: The dtypes the kernels compute in.
FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


# --------------------------------------------------------------------------- argument checks


def reject_gpu_arrays(named):
    """Raises TypeError if any of ``named`` (a list of (name, array)) is a GPU array
    (``minibert.backend.is_device_array``) on the CPU path: NumPy and GPU arrays are not
    mixed in one call, and the CPU kernels are never handed a GPU array."""
    for name, x in named:
        if is_device_array(x):
            raise TypeError(f"{name} is a GPU array ({type(x).__module__}.{type(x).__name__}) "
                            "while q is a NumPy array, expected all arrays on one device")


def _values(mask):
    """The array of an ``AttentionMask``, or ``mask``."""
    return mask.values if isinstance(mask, AttentionMask) else mask


def blas_rows(x):
    """Whether every (rows, D) matrix of ``x`` (its last two axes) is a BLAS operand as it
    is: unit stride along the last axis, a row stride of at least its length, no negative
    stride. The model's heads, views of its (B, S, 3H) product split by
    ``minibert.model.split_heads`` (strides (S 3H, D, 3H, 1) elements), are."""
    isz, D, S = x.itemsize, x.shape[-1], x.shape[-2]
    return ((x.strides[-1] == isz or D <= 1) and (x.strides[-2] >= D * isz or S <= 1)
            and all(s >= 0 for s in x.strides))


def check_tensors(named, strided=()):
    """Rank 4, float32/float64, one shape and one dtype for all of ``named`` (a list of
    (name, array)); the first one sets the shape and dtype. C-contiguous, except the arrays
    named in ``strided``, which need only rows that BLAS reads as they are (``blas_rows``).
    Raises TypeError or ValueError naming the argument."""
    first_name, first = named[0]
    for name, x in named:
        if not isinstance(x, np.ndarray):
            raise TypeError(f"{name} has type {type(x).__name__}, expected a NumPy or CuPy array")
        if x.ndim != 4:
            raise ValueError(f"{name} has shape {tuple(x.shape)}, expected rank 4 (B, A, S, D)")
        if x.dtype not in FLOAT_DTYPES:
            raise TypeError(f"{name} has dtype {x.dtype}, expected float32 or float64")
        if x is not first:
            if tuple(x.shape) != tuple(first.shape):
                raise ValueError(f"{name} has shape {tuple(x.shape)}, expected the shape of "
                                 f"{first_name} {tuple(first.shape)} (B, A, S, D)")
            if x.dtype != first.dtype:
                raise TypeError(f"{name} has dtype {x.dtype}, expected the dtype of "
                                f"{first_name} ({first.dtype})")
        if name in strided and not x.flags.c_contiguous and not blas_rows(x):
            raise ValueError(f"{name} with shape {tuple(x.shape)} and strides {x.strides} is not "
                             "C-contiguous, nor a view with a unit-stride last axis, expected "
                             "such an array (np.ascontiguousarray)")
        if name not in strided and not x.flags.c_contiguous:
            raise ValueError(f"{name} with shape {tuple(x.shape)} and strides {x.strides} is not "
                             "C-contiguous, expected a C-contiguous array "
                             "(np.ascontiguousarray)")


def check_mask(mask, B, S):
    """The key padding mask: None, an ``AttentionMask`` or a NumPy (B, S) array of 0/1
    (bool, integer or float; 1 = attend, 0 = padding), checked by
    ``minibert.validation.check_attention_mask``. Returns it unchanged; raises TypeError
    or ValueError (an additive mask, with large negative values, is refused by name)."""
    if mask is not None and not isinstance(mask, (np.ndarray, AttentionMask)):
        raise TypeError(f"mask has type {type(mask).__name__}, expected a NumPy array (B, S) "
                        "of 0/1 or None")
    check_attention_mask(mask, B, S, name="mask")
    return mask


def check_scalars(scale, dropout_p, seed, offset, D):
    """``(scale, dropout_p, seed, offset)`` as float, float, int, int: ``scale`` a finite
    real or None (then 1/sqrt(D)), ``dropout_p`` a real in [0, 1)
    (``minibert.validation``), seed and offset integers in [0, 2**64)
    (``minibert.rng.check_u64``). Raises TypeError or ValueError."""
    scale = check_scale(scale, D)
    dropout_p = check_dropout_p(dropout_p)
    return scale, dropout_p, check_u64("seed", seed), check_u64("offset", offset)


def forward_args(q, k, v, mask, scale, dropout_p, seed, offset):
    """Validates the inputs of fused attention's forward; returns ``(mask, scale, dropout_p,
    seed, offset)`` as the CPU kernels take them (``kernel_args`` types them further)."""
    reject_gpu_arrays([("q", q), ("k", k), ("v", v), ("mask", _values(mask))])
    check_tensors([("q", q), ("k", k), ("v", v)], strided=("q", "k", "v"))
    B, A, S, D = q.shape
    mask = check_mask(mask, B, S)
    return (mask,) + tuple(check_scalars(scale, dropout_p, seed, offset, D))


def backward_args(dout, q, k, v, out, lse, mask, scale, dropout_p, seed, offset):
    """Validates the inputs of fused attention's backward (``out`` and ``dout`` like q,
    ``lse`` (B, A, S) of q's dtype, C-contiguous); returns what ``forward_args`` returns."""
    reject_gpu_arrays([("dout", dout), ("q", q), ("k", k), ("v", v), ("out", out),
                       ("lse", lse), ("mask", _values(mask))])
    check_tensors([("q", q), ("k", k), ("v", v), ("out", out), ("dout", dout)],
                  strided=("q", "k", "v", "out", "dout"))
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
    mask = check_mask(mask, B, S)
    return (mask,) + tuple(check_scalars(scale, dropout_p, seed, offset, D))


# --------------------------------------------------------------------------- GPU arguments


def _c_contiguous(x):
    """C-contiguity of a CuPy array (``flags``), a Numba device array
    (``is_c_contiguous()``) or another ``__cuda_array_interface__`` object (strides None or
    the C strides)."""
    if hasattr(x, "is_c_contiguous"):
        return bool(x.is_c_contiguous())
    flags = getattr(x, "flags", None)
    if flags is not None and hasattr(flags, "c_contiguous"):
        return bool(flags.c_contiguous)
    cai = getattr(x, "__cuda_array_interface__", None)
    if cai is None:
        return False
    if cai.get("strides") is None:
        return True
    expected, step = [], np.dtype(cai["typestr"]).itemsize
    for n in reversed(cai["shape"]):
        expected.append(step)
        step *= n
    return tuple(cai["strides"]) == tuple(reversed(expected))


def check_cuda_tensors(named):
    """``check_tensors`` for GPU arrays: each of ``named`` (a list of (name, array)) a GPU
    array (``minibert.backend.is_device_array``) of the first one's kind (CuPy or Numba),
    rank 4, float32/float64, C-contiguous, with the first one's shape and dtype (and, for
    CuPy, device). Raises TypeError or ValueError naming the argument."""
    first_name, first = named[0]
    for name, x in named:                   # the kinds first: the checks below read attributes
        if not is_device_array(x):
            raise TypeError(f"{name} has type {type(x).__module__}.{type(x).__name__}, expected a "
                            f"GPU array like {first_name} (CuPy or a Numba device array)")
        if type(x).__module__.split(".")[0] != type(first).__module__.split(".")[0]:
            raise TypeError(f"{name} has type {type(x).__module__}.{type(x).__name__}, expected "
                            f"the array kind of {first_name} ({type(first).__name__})")
    for name, x in named:
        shape = tuple(x.shape)
        if len(shape) != 4:
            raise ValueError(f"{name} has shape {shape}, expected rank 4 (B, A, S, D)")
        if np.dtype(x.dtype) not in FLOAT_DTYPES:
            raise TypeError(f"{name} has dtype {x.dtype}, expected float32 or float64")
        if x is not first:
            if shape != tuple(first.shape):
                raise ValueError(f"{name} has shape {shape}, expected the shape of "
                                 f"{first_name} {tuple(first.shape)} (B, A, S, D)")
            if np.dtype(x.dtype) != np.dtype(first.dtype):
                raise TypeError(f"{name} has dtype {x.dtype}, expected the dtype of "
                                f"{first_name} ({first.dtype})")
            dev, first_dev = getattr(x, "device", None), getattr(first, "device", None)
            if hasattr(dev, "id") and hasattr(first_dev, "id") and dev.id != first_dev.id:
                raise ValueError(f"{name} is on GPU {dev.id}, expected the GPU of {first_name} "
                                 f"({first_dev.id})")
        if not _c_contiguous(x):
            raise ValueError(f"{name} with shape {shape} and strides {tuple(x.strides)} is not "
                             "C-contiguous, expected a C-contiguous array (ascontiguousarray)")
    if first.shape[3] == 0:
        raise ValueError(f"{first_name} has shape {tuple(first.shape)}, expected a head size "
                         "D >= 1 on the GPU")


def check_cuda_mask(mask, B, S, cupy_inputs=True):
    """``check_mask`` for the GPU path: None, an ``AttentionMask``, a NumPy (B, S) array of
    0/1, a CuPy one (with CuPy inputs: ``cupy_inputs``), or a Numba device array (copied to
    the host, B S numbers). Returns None or an ``AttentionMask``, whose kernel tables are
    built once however many layers use it. Checking a CuPy mask's values waits for the
    device unless it runs inside ``minibert.validation.deferred_checks``."""
    if mask is None:
        return None
    if isinstance(mask, AttentionMask):
        return check_attention_mask(mask, B, S, name="mask")
    if isinstance(mask, np.ndarray):
        return AttentionMask(check_mask(mask, B, S))
    if not is_device_array(mask):
        raise TypeError(f"mask has type {type(mask).__name__}, expected a NumPy, CuPy or Numba "
                        "device array (B, S) of 0/1, or None")
    if hasattr(mask, "copy_to_host"):                       # Numba: small, check on the host
        return AttentionMask(check_mask(mask.copy_to_host(), B, S))
    if not type(mask).__module__.startswith("cupy") or not cupy_inputs:
        raise TypeError(f"mask has type {type(mask).__name__}, expected a NumPy, CuPy or Numba "
                        "device array (B, S) of 0/1, or None")
    return check_attention_mask(mask, B, S, name="mask")


def cuda_forward_args(q, k, v, mask, scale, dropout_p, seed, offset):
    """Validates the inputs of fused attention's forward on GPU arrays; returns ``(mask,
    scale, dropout_p, seed, offset)`` as ``attention_cuda_launch.attention_forward`` takes them."""
    check_cuda_tensors([("q", q), ("k", k), ("v", v)])
    B, A, S, D = q.shape
    mask = check_cuda_mask(mask, B, S, type(q).__module__.startswith("cupy"))
    return (mask,) + tuple(check_scalars(scale, dropout_p, seed, offset, D))


def cuda_backward_args(dout, q, k, v, out, lse, mask, scale, dropout_p, seed, offset):
    """``cuda_forward_args`` for the backward (``lse`` (B, A, S) of q's kind and dtype)."""
    check_cuda_tensors([("q", q), ("k", k), ("v", v), ("out", out), ("dout", dout)])
    B, A, S, D = q.shape
    if not is_device_array(lse) or type(lse).__module__.split(".")[0] != type(q).__module__.split(".")[0]:
        raise TypeError(f"lse has type {type(lse).__module__}.{type(lse).__name__}, expected a "
                        f"GPU array (B, A, S) of the kind of q ({type(q).__name__})")
    if tuple(lse.shape) != (B, A, S):
        raise ValueError(f"lse has shape {tuple(lse.shape)}, expected (B, A, S) = {(B, A, S)}")
    if np.dtype(lse.dtype) != np.dtype(q.dtype):
        raise TypeError(f"lse has dtype {lse.dtype}, expected the dtype of q ({q.dtype})")
    if not _c_contiguous(lse):
        raise ValueError(f"lse with strides {tuple(lse.strides)} is not C-contiguous, expected "
                         "a C-contiguous array")
    mask = check_cuda_mask(mask, B, S, type(q).__module__.startswith("cupy"))
    return (mask,) + tuple(check_scalars(scale, dropout_p, seed, offset, D))


# --------------------------------------------------------------------------- packed (varlen) form


def check_varlen_tensors(named, device=False):
    """Rank 3 (A, T, D), float32/float64, one shape and one dtype for all of ``named`` (a
    list of (name, array)), the first one setting them; NumPy arrays, or with ``device``
    GPU arrays of the first one's kind. Any strides (the kernels take strided views).
    Raises TypeError or ValueError naming the argument."""
    first_name, first = named[0]
    for name, x in named:
        if device:
            if not is_device_array(x) or (type(x).__module__.split(".")[0]
                                          != type(first).__module__.split(".")[0]):
                raise TypeError(f"{name} has type {type(x).__module__}.{type(x).__name__}, "
                                f"expected a GPU array of the kind of {first_name} "
                                f"({type(first).__name__})")
        elif not isinstance(x, np.ndarray):
            raise TypeError(f"{name} has type {type(x).__name__}, expected a NumPy or CuPy array")
        shape = tuple(x.shape)
        if len(shape) != 3:
            raise ValueError(f"{name} has shape {shape}, expected rank 3 (A, T, D)")
        if np.dtype(x.dtype) not in FLOAT_DTYPES:
            raise TypeError(f"{name} has dtype {x.dtype}, expected float32 or float64")
        if x is not first:
            if shape != tuple(first.shape):
                raise ValueError(f"{name} has shape {shape}, expected the shape of "
                                 f"{first_name} {tuple(first.shape)} (A, T, D)")
            if np.dtype(x.dtype) != np.dtype(first.dtype):
                raise TypeError(f"{name} has dtype {x.dtype}, expected the dtype of "
                                f"{first_name} ({first.dtype})")


def _host(x):
    """A NumPy copy of a small GPU array (CuPy ``get``, Numba ``copy_to_host``)."""
    return x.get() if hasattr(x, "get") else x.copy_to_host()


def check_cu_seqlens(cu_seqlens, T, device=False):
    """The offsets of the packed batch: a 1-D integer array (B + 1,), B >= 1, cu_seqlens[0]
    = 0, non-decreasing (a sequence may be empty), cu_seqlens[B] = T. NumPy, or with
    ``device`` also a GPU array (its B + 1 values are read back to check them). Returns the
    values as a NumPy int64 array; raises TypeError or ValueError naming ``cu_seqlens``."""
    if device and is_device_array(cu_seqlens):
        values = _host(cu_seqlens)
    elif isinstance(cu_seqlens, np.ndarray):
        values = cu_seqlens
    else:
        raise TypeError(f"cu_seqlens has type {type(cu_seqlens).__name__}, expected a NumPy "
                        "array (B + 1,) of int64 offsets")
    if values.ndim != 1 or values.shape[0] < 2:
        raise ValueError(f"cu_seqlens has shape {tuple(values.shape)}, expected (B + 1,) with "
                         "B >= 1 sequences")
    if values.dtype.kind not in "iu":
        raise TypeError(f"cu_seqlens has dtype {values.dtype}, expected an integer dtype (int64)")
    values = values.astype(np.int64)
    if values[0] != 0:
        raise ValueError(f"cu_seqlens[0] = {int(values[0])}, expected 0 (sequence 0 starts at "
                         "token 0)")
    steps = np.diff(values)
    if (steps < 0).any():
        b = int(np.argmax(steps < 0))
        raise ValueError(f"cu_seqlens decreases at index {b + 1} ({int(values[b])} -> "
                         f"{int(values[b + 1])}), expected non-decreasing offsets")
    if values[-1] != T:
        raise ValueError(f"cu_seqlens[-1] = {int(values[-1])}, expected T = {T}, the packed "
                         "tokens of q (A, T, D)")
    return values


def check_seq_len(seq_len, lengths):
    """The padded length S of the dropout index: None (then the longest sequence) or an
    integer >= the longest sequence. Returns an int."""
    longest = int(lengths.max(initial=0))
    if seq_len is None:
        return longest
    if isinstance(seq_len, (bool, np.bool_)) or not isinstance(seq_len, (int, np.integer)):
        raise TypeError(f"seq_len={seq_len!r} has type {type(seq_len).__name__}, expected an "
                        "integer or None")
    if seq_len < longest:
        raise ValueError(f"seq_len={seq_len} is shorter than the longest sequence "
                         f"({longest} tokens), expected the padded length S >= {longest}")
    return int(seq_len)


def varlen_forward_args(q, k, v, cu_seqlens, scale, dropout_p, seed, offset, seq_len,
                        device=False):
    """Validates the inputs of the packed forward (``fused_attention_varlen_forward``), NumPy
    arrays or with ``device`` GPU arrays; returns ``(cu_seqlens, scale, dropout_p, seed,
    offset, seq_len)``: the offsets as a NumPy int64 array, scale a float (1/sqrt(D) for
    None), seq_len an int (the longest sequence for None)."""
    if not device:
        reject_gpu_arrays([("q", q), ("k", k), ("v", v), ("cu_seqlens", cu_seqlens)])
    check_varlen_tensors([("q", q), ("k", k), ("v", v)], device)
    _, T, D = q.shape
    cu = check_cu_seqlens(cu_seqlens, T, device)
    return (cu,) + tuple(check_scalars(scale, dropout_p, seed, offset, D)) + (
        check_seq_len(seq_len, np.diff(cu)),)


def varlen_backward_args(dout, q, k, v, out, lse, cu_seqlens, scale, dropout_p, seed, offset,
                         seq_len, device=False):
    """``varlen_forward_args`` for the packed backward: ``dout`` and ``out`` like q, ``lse``
    (A, T) of q's dtype (and kind); NumPy's lse C-contiguous."""
    named = [("dout", dout), ("q", q), ("k", k), ("v", v), ("out", out), ("lse", lse)]
    if not device:
        reject_gpu_arrays(named + [("cu_seqlens", cu_seqlens)])
    check_varlen_tensors([("q", q), ("k", k), ("v", v), ("out", out), ("dout", dout)], device)
    A, T, _ = q.shape
    if device:
        if not is_device_array(lse) or (type(lse).__module__.split(".")[0]
                                        != type(q).__module__.split(".")[0]):
            raise TypeError(f"lse has type {type(lse).__module__}.{type(lse).__name__}, expected "
                            f"a GPU array (A, T) of the kind of q ({type(q).__name__})")
    elif not isinstance(lse, np.ndarray):
        raise TypeError(f"lse has type {type(lse).__name__}, expected a NumPy array (A, T)")
    if tuple(lse.shape) != (A, T):
        raise ValueError(f"lse has shape {tuple(lse.shape)}, expected (A, T) = {(A, T)}")
    if np.dtype(lse.dtype) != np.dtype(q.dtype):
        raise TypeError(f"lse has dtype {lse.dtype}, expected the dtype of q ({q.dtype})")
    if not device and not lse.flags.c_contiguous:
        raise ValueError(f"lse with strides {lse.strides} is not C-contiguous, expected a "
                         "C-contiguous array (A, T), as the forward returns it")
    return varlen_forward_args(q, k, v, cu_seqlens, scale, dropout_p, seed, offset, seq_len,
                               device)
