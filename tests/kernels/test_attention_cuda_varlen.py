"""Tests of the GPU fused attention in the packed ("varlen") form
(``attention_cuda_launch.varlen_forward`` / ``varlen_backward``), run by Numba's CUDA
simulator on the CPU, or on a GPU where one answers::

    NUMBA_ENABLE_CUDASIM=1 python -m pytest -q tests/kernels/test_attention_cuda_varlen.py

The packed batch: q, k, v (A, T, D) hold the T real tokens of B sequences of lengths n_b,
sequence b at tokens cu_seqlens[b] .. cu_seqlens[b + 1] - 1. The reference scatters them
into a right-padded (B, A, S, D) batch (S = ``seq_len``, the padded length), runs the
textbook op (``minibert.ops.attention``, "eager", NumPy) with the padding mask, and gathers
the real rows back: with dropout on, the packed kernels must draw the padded batch's bits
(probability (b, a, i, j) at Philox element start + ((b A + a) S + i) S + j), so S > max
n_b and start > 0 are exercised. The simulator runs every thread as a Python thread: the
shapes are tiny, the tiles small (several query and key tiles, partial last ones).
"""
import math

import numpy as np
import pytest

from minibert.ops import attention
from tests.helpers import assert_as_accurate_as_textbook, assert_close, skip_unless_cuda_kernels_can_run

skip_unless_cuda_kernels_can_run()

from numba import cuda  # noqa: E402  (after the skip: the main run never imports numba.cuda)

from minibert.kernels import attention_cuda_launch  # noqa: E402

TOL64 = 1e-12
NAMES = ("out", "dq", "dk", "dv")


def _packing(lengths, S):
    """(cu_seqlens (B + 1,) int64, rows (T,): padded position b S + i of each packed token,
    the (B, S) right-padded mask)."""
    lengths = np.asarray(lengths, dtype=np.int64)
    cu = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    rows = np.concatenate([b * S + np.arange(n) for b, n in enumerate(lengths)]).astype(np.int64)
    mask = (np.arange(S)[None, :] < lengths[:, None]).astype(np.int64)
    return cu, rows, mask


def _pad(x, rows, B, S):
    """Packed (A, T, D) -> padded (B, A, S, D), zeros at padding."""
    A, _, D = x.shape
    flat = np.zeros((B * S, A, D), dtype=x.dtype)
    flat[rows] = x.transpose(1, 0, 2)
    return np.ascontiguousarray(flat.reshape(B, S, A, D).transpose(0, 2, 1, 3))


def _gather(x, rows):
    """Padded (B, A, S, D) -> the packed (A, T, D) rows."""
    B, A, S, D = x.shape
    return x.transpose(0, 2, 1, 3).reshape(B * S, A, D)[rows].transpose(1, 0, 2)


def _problem(A, T, D, dtype, seed):
    r = np.random.default_rng(seed)
    return tuple((2.0 * r.standard_normal((A, T, D))).astype(dtype) for _ in range(4))


def _textbook(q, k, v, dout, lengths, S, p, seed, offset, start):
    """(out, dq, dk, dv) packed, from the textbook op on the padded batch."""
    B = len(lengths)
    _, rows, mask = _packing(lengths, S)
    padded = [_pad(x, rows, B, S) for x in (q, k, v, dout)]
    out, cache = attention.forward(*padded[:3], attention_mask=mask,
                                   scale=1.0 / math.sqrt(q.shape[2]), dropout_p=p, seed=seed,
                                   offset=offset, training=p > 0, implementation="eager",
                                   start=start)
    grads = attention.backward(padded[3], cache)
    return tuple(_gather(x, rows) for x in (out,) + tuple(grads))


def _varlen(q, k, v, dout, lengths, S, p, seed, offset, start, cu_on_device=False, **tiles):
    """(out, dq, dk, dv) and lse of the varlen kernels, on the host; ``cu_seqlens`` as a
    NumPy array or a Numba device array."""
    cu, _, _ = _packing(lengths, S)
    cu = cuda.to_device(cu) if cu_on_device else cu
    dq_, dk_, dv_, ddo = (cuda.to_device(x) for x in (q, k, v, dout))
    scale = 1.0 / math.sqrt(q.shape[2])
    out, lse = attention_cuda_launch.varlen_forward(dq_, dk_, dv_, cu, scale, p, seed, offset,
                                                    seq_len=S, start=start, **tiles)
    grads = attention_cuda_launch.varlen_backward(ddo, dq_, dk_, dv_, out, lse, cu, scale, p,
                                                  seed, offset, seq_len=S, start=start, **tiles)
    for x in (out, lse) + tuple(grads):
        assert cuda.devicearray.is_cuda_ndarray(x) or hasattr(x, "copy_to_host"), type(x)
    A, T, D = q.shape
    assert out.shape == (A, T, D) and lse.shape == (A, T)
    return tuple(x.copy_to_host() for x in (out,) + tuple(grads)), lse.copy_to_host()


#: (lengths, S, A, D, tiles): odd lengths with a length-1 sequence, an empty one and one of
#: three query and key tiles (the last partial), S > max n_b; a batch with no padding
#: (every n_b = S), cu_seqlens on the device.
CASES = {
    "ragged": ([5, 1, 0, 9], 11, 2, 8, dict(block_q=4, block_k=4, lanes=2)),
    "unpadded": ([6, 6], 6, 1, 8, dict(block_q=4, block_k=2, lanes=2)),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", list(CASES))
def test_float64_matches_the_padded_textbook(case):
    """Dropout on (p = 0.3, start > 0, an offset past 2^32): the packed kernels give the
    padded textbook's real rows within 1e-12 relative, forward and backward."""
    lengths, S, A, D, tiles = CASES[case]
    T = sum(lengths)
    q, k, v, dout = _problem(A, T, D, np.float64, seed=len(lengths))
    kw = dict(p=0.3, seed=11, offset=2**32 + 3, start=7 * A * S * S + 5)
    ref = _textbook(q, k, v, dout, lengths, S, **kw)
    got, lse = _varlen(q, k, v, dout, lengths, S, cu_on_device=case == "unpadded", **kw, **tiles)
    for name, a, e in zip(NAMES, got, ref):
        assert_close(f"{name} ({case})", a, e, rtol=TOL64, atol=TOL64 * np.abs(e).max())
    assert np.all(np.isfinite(lse))


def test_float32_as_accurate_as_textbook():
    """float32 against the float64 textbook on the same rounded inputs: the kernel's RMS
    error at most 1.25 times the textbook float32's (the padded kernel's statement)."""
    lengths, S = [7, 1, 3], 9
    q, k, v, dout = _problem(1, sum(lengths), 16, np.float32, seed=3)
    kw = dict(p=0.2, seed=7, offset=5, start=3)
    ref = _textbook(*(x.astype(np.float64) for x in (q, k, v, dout)), lengths, S, **kw)
    book = _textbook(q, k, v, dout, lengths, S, **kw)
    got, lse = _varlen(q, k, v, dout, lengths, S, **kw, block_q=4, block_k=4, lanes=4)
    assert lse.dtype == np.float32
    assert_as_accurate_as_textbook("CUDA varlen", NAMES, got, book, ref, factor=1.25)


@pytest.mark.slow
def test_the_padded_kernels_bits_on_the_real_rows():
    """The varlen kernels run the padded kernels' bodies on the real keys only; the padded
    kernels' masked keys add exact zeros, so the real rows agree bit for bit (float64,
    dropout on), and lse too."""
    from minibert.kernels import attention_cuda
    lengths, S, A, D = [3, 6], 7, 2, 8
    cu, rows, mask = _packing(lengths, S)
    q, k, v, dout = _problem(A, sum(lengths), D, np.float64, seed=9)
    kw = dict(p=0.3, seed=5, offset=1, start=2)
    tiles = dict(block_q=4, block_k=4, lanes=2)
    got, lse = _varlen(q, k, v, dout, lengths, S, **kw, **tiles)
    dq_, dk_, dv_, ddo = (cuda.to_device(_pad(x, rows, 2, S)) for x in (q, k, v, dout))
    scale = 1.0 / math.sqrt(D)
    out_p, lse_p = attention_cuda.attention_forward(dq_, dk_, dv_, mask, scale, kw["p"], kw["seed"],
                                                    kw["offset"], start=kw["start"], **tiles)
    grads_p = attention_cuda.attention_backward(ddo, dq_, dk_, dv_, out_p, lse_p, mask, scale,
                                                kw["p"], kw["seed"], kw["offset"],
                                                start=kw["start"], **tiles)
    padded = [_gather(x.copy_to_host(), rows) for x in (out_p,) + tuple(grads_p)]
    for name, a, e in zip(NAMES, got, padded):
        assert np.array_equal(a, e), f"{name}: varlen and padded kernels differ"
    lse_rows = lse_p.copy_to_host().transpose(0, 2, 1).reshape(2 * S, A)[rows].T
    assert np.array_equal(lse, lse_rows)


def test_empty_batches_and_bad_layouts():
    """No tokens at all: empty results, nothing launched. A strided Numba array is refused
    by name (the kernels index C-contiguous rows)."""
    z = cuda.to_device(np.zeros((2, 0, 8)))
    out, lse = attention_cuda_launch.varlen_forward(z, z, z, np.array([0, 0]), 0.5, seq_len=0)
    assert out.shape == (2, 0, 8) and lse.shape == (2, 0)
    dq, dk, dv = attention_cuda_launch.varlen_backward(z, z, z, z, out, lse, np.array([0, 0]),
                                                       0.5, seq_len=0)
    assert dq.shape == dk.shape == dv.shape == (2, 0, 8)
    wide = cuda.to_device(np.zeros((1, 3, 16)))[:, :, :8]
    if not hasattr(wide, "is_c_contiguous") or wide.is_c_contiguous():
        pytest.skip("this array kind has no strided views")
    with pytest.raises(ValueError, match=r"is not C-contiguous, expected a C-contiguous array"):
        attention_cuda_launch.varlen_forward(wide, wide, wide, np.array([0, 3]), 0.5, seq_len=3)
