"""Argument checks that the model, the ops and the kernels share, and the one place where
checks of values on the GPU wait for the device.

Attention's arguments
---------------------
The model, the attention op (``ops/attention.py``) and both fused kernels
(``kernels/attention_cpu.py``, ``kernels/attention_cuda.py``) take the same padding mask,
scale and dropout rate; each used to check them itself. They now call:

* ``check_attention_mask(mask, B, S)``: a (B, S) array of 0/1 (bool, integer or float;
  1 = attend, 0 = padding) becomes an ``AttentionMask``, checked once. Every form the
  attention code builds from it (the additive mask of the textbook op, its
  sequence-has-a-key factor, the key bias and key-block spans of the CPU kernel, the key
  tiles of the CUDA kernel) is built on first use and kept, so a model forward that hands
  one ``AttentionMask`` to every layer, forward and backward, builds each form once. An
  ``AttentionMask`` passed again is not checked again.
* ``check_scale(scale, D)``: a finite real, or None for 1/sqrt(D).
* ``check_dropout_p(p)``: a real in [0, 1).
* ``check_block_sizes(block_q, block_k, default)``: the tile sizes of both kernels.

Checks of values on the device
------------------------------
Checking that ids are in range or that a mask holds only 0 and 1 reads a boolean back
from the array. For NumPy arrays that costs nothing; for a GPU array it is a
device-to-host transfer that waits for every queued kernel (a host sync). The ops call
``require(ok, error)``: with NumPy arrays, or GPU arrays outside ``deferred_checks()``,
it raises ``error()`` at once when ``ok`` is False (as every op always did); inside
``deferred_checks()`` a GPU flag is kept, and all kept flags are read in ONE transfer when
the outermost ``deferred_checks`` block ends, or earlier, together with the caller's own
scalars, by ``Checks.read``. The model's ``forward`` opens such a block around its inputs'
checks (one sync per forward for all of them), and a training step opens one around
forward and backward and reads the checks with its loss and gradient norm (one sync per
step). The error raised is the first failed check's, with the message the op gives
without deferral.
"""
from __future__ import annotations

import functools
import math
import numbers
import threading
from contextlib import contextmanager

import numpy as np

from .backend import get_array_module, is_device_array

# --------------------------------------------------------------------------- deferred checks

_state = threading.local()


class Checks:
    """The flags kept by one ``deferred_checks()`` block: ``(ok, error)`` pairs, ``ok`` a
    0-d boolean GPU array, ``error()`` the exception to raise when it is False."""

    def __init__(self):
        self.pending = []

    def read(self, scalars=()):
        """Reads the kept flags and ``scalars`` (0-d arrays or numbers) in one transfer;
        raises the first failed check's error, else returns the scalars as Python floats."""
        pending, self.pending = self.pending, []
        arrays = [ok for ok, _ in pending] + list(scalars)
        if not arrays:
            return []
        device = [a for a in arrays if is_device_array(a)]
        xp = get_array_module(*device) if device else np
        stacked = xp.stack([xp.asarray(a, dtype=np.float64).reshape(()) for a in arrays])
        values = stacked.get() if hasattr(stacked, "get") else np.asarray(stacked)  # one transfer
        for (_, error), ok in zip(pending, values):
            if not ok:
                raise error()
        return [float(v) for v in values[len(pending):]]


@contextmanager
def deferred_checks():
    """Keeps the GPU checks made inside (``require``) for one transfer at the end of the
    outermost block; an inner block shares the outer one's ``Checks``. Yields them."""
    outer = getattr(_state, "checks", None)
    if outer is not None:
        yield outer
        return
    _state.checks = checks = Checks()
    try:
        yield checks
    except Exception as failure:
        # a bad input may make a later op fail first: the failed check says what was wrong
        _state.checks = None
        try:
            checks.read()
        except (ValueError, TypeError) as error:
            raise error from failure
        raise
    finally:
        _state.checks = None
    checks.read()


def checks_deferred(method):
    """``method`` run inside ``deferred_checks()`` (the heads' ``forward``: their labels'
    checks join the encoder's in one transfer)."""
    @functools.wraps(method)
    def run(*args, **kwargs):
        with deferred_checks():
            return method(*args, **kwargs)
    return run


def require(ok, error):
    """Raises ``error()`` unless ``ok`` (a boolean array, reduced with ``all``) holds; for a
    GPU array inside ``deferred_checks()`` the check is kept for its one transfer."""
    ok = ok.all()
    checks = getattr(_state, "checks", None)
    if checks is not None and is_device_array(ok):
        checks.pending.append((ok, error))
    elif not bool(ok):
        raise error()


# --------------------------------------------------------------------------- the padding mask


class AttentionMask:
    """A checked (B, S) key padding mask (``values``: 1 = attend, 0 = padding, on the device
    of the arrays it came with) and the forms built from it, each once."""

    def __init__(self, values):
        self.values = values
        self.shape = tuple(values.shape)
        self._forms = {}

    def _form(self, key, build):
        if key not in self._forms:
            self._forms[key] = build()
        return self._forms[key]

    def real(self):
        """(B, S) bool: True at real keys."""
        return self._form("real", lambda: self.values != 0)

    def additive(self, dtype):
        """(B, 1, 1, S) of ``dtype``: 0 at real keys, ``finfo(dtype).min / 2`` at padding
        (``ops.attention.additive_mask`` says why that value)."""
        dtype = np.dtype(dtype)

        def build():
            xp = get_array_module(self.values)
            mask = xp.where(self.real(), dtype.type(0), dtype.type(np.finfo(dtype).min / 2))
            return mask.astype(dtype, copy=False)[:, None, None, :]
        return self._form(("additive", dtype), build)

    def has_key(self, dtype):
        """(B, 1, 1, 1) of ``dtype``: 1 for a sequence with at least one real key, else 0."""
        dtype = np.dtype(dtype)

        def build():
            xp = get_array_module(self.values)
            return xp.any(self.real(), axis=1).astype(dtype).reshape(-1, 1, 1, 1)
        return self._form(("has_key", dtype), build)

    def key_bias(self, dtype):
        """(B, S) of ``dtype``, C-contiguous: 0 at real keys, -inf at padding (the kernels'
        additive mask: exp of it is exactly 0)."""
        dtype = np.dtype(dtype)

        def build():
            xp = get_array_module(self.values)
            bias = xp.where(self.real(), dtype.type(0), dtype.type(-np.inf)).astype(dtype)
            return xp.ascontiguousarray(bias)
        return self._form(("key_bias", dtype), build)

    def tile_has_key(self, block_k):
        """(B, ceil(S / block_k)) int32: 1 where the tile of ``block_k`` keys holds a real
        key (the CUDA kernel's table; on the mask's device)."""
        def build():
            xp = get_array_module(self.values)
            B, S = self.shape
            nk = -(-S // block_k)
            padded = xp.zeros((B, nk * block_k), dtype=bool)
            padded[:, :S] = self.real()
            return xp.ascontiguousarray(padded.reshape(B, nk, block_k).any(axis=-1)
                                        .astype(np.int32))
        return self._form(("tile_has_key", block_k), build)

    def key_spans(self, block_k, spans):
        """``spans(real, block_k)`` (the CPU kernel's key-block spans, NumPy), kept."""
        return self._form(("key_spans", block_k), lambda: spans(np.asarray(self.real()), block_k))


def check_attention_mask(mask, B, S, name="attention_mask", xp=None):
    """``mask`` as a checked ``AttentionMask`` of shape (B, S), or None for None.

    ``mask``: an ``AttentionMask`` (returned as it is once its shape is checked) or an array
    of 0/1 (bool, integer or float); with ``xp`` it is first converted by ``xp.asarray``
    (the op and the model take lists and NumPy masks with GPU inputs), without it it must
    be an array already. Raises TypeError or ValueError naming ``name``; an additive mask,
    with large negative values, is refused by name. On the GPU the value check is a
    ``require`` (deferred inside ``deferred_checks``).
    """
    if mask is None:
        return None
    if isinstance(mask, AttentionMask):
        values = mask.values
    else:
        values = xp.asarray(mask) if xp is not None else mask
        if not hasattr(values, "shape") or not hasattr(values, "dtype"):
            raise TypeError(f"{name} has type {type(mask).__name__}, expected an array (B, S) "
                            "of 0/1 or None")
    if len(values.shape) != 2 or tuple(values.shape) != (B, S):
        raise ValueError(f"{name} has shape {tuple(values.shape)}, expected (B, S) = {(B, S)} "
                         "with 1 = attend and 0 = padding")
    if isinstance(mask, AttentionMask):
        return mask
    if np.dtype(values.dtype).kind not in "biuf":
        raise TypeError(f"{name} has dtype {values.dtype}, expected bool, integer or float 0/1")

    def error():
        bad = values[(values != 0) & (values != 1)].reshape(-1)[0]
        return ValueError(f"{name} contains the value {bad.item()!r}, expected only 0 "
                          "(padding) and 1 (attend); pass the 0/1 mask, not an additive one")
    require((values == 0) | (values == 1), error)
    return AttentionMask(values)


# --------------------------------------------------------------------------- scalars, tiles


def check_scale(scale, D):
    """The score scale as a float: a finite real, or None for 1/sqrt(D)."""
    if scale is None:
        return 1.0 / math.sqrt(D)
    if isinstance(scale, (bool, np.bool_)) or not isinstance(scale, numbers.Real):
        raise TypeError(f"scale={scale!r} has type {type(scale).__name__}, expected a real "
                        "number or None (1/sqrt(D))")
    if not math.isfinite(scale):
        raise ValueError(f"scale={scale!r} is not finite, expected a finite number or None")
    return float(scale)


def check_dropout_p(p):
    """The dropout rate as a float in [0, 1)."""
    if isinstance(p, (bool, np.bool_)) or not isinstance(p, numbers.Real):
        raise TypeError(f"dropout_p={p!r} has type {type(p).__name__}, expected a float in [0, 1)")
    if not 0.0 <= p < 1.0:
        raise ValueError(f"dropout_p={p!r} is out of range, expected 0 <= dropout_p < 1")
    return float(p)


def check_block_sizes(block_q, block_k, default=None):
    """``(block_q, block_k)`` as ints: positive integers (not bool), None meaning
    ``default``. The one rule of both kernels' tile sizes."""
    sizes = []
    for name, value in (("block_q", block_q), ("block_k", block_k)):
        if value is None:
            value = default
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"{name}={value!r} is invalid, expected a positive integer")
        sizes.append(int(value))
    return tuple(sizes)
