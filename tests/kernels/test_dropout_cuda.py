"""The GPU dropout kernel (``minibert/kernels/dropout_cuda.py``) under Numba's CUDA simulator
(or on a GPU where one answers): the keep bits of ``minibert.rng`` for the same (seed,
offset, start), and the readable op's y and dx bit for bit, at odd sizes, with a ``start``
that is not a multiple of 4, seeds and offsets above 2**32 and 2**63.

Run in its own process, the simulator on before ``numba.cuda`` is first imported::

    NUMBA_ENABLE_CUDASIM=1 python -m pytest -q tests/kernels/test_dropout_cuda.py
"""
import numpy as np
import pytest

from minibert import rng as mrng
from minibert.ops import dropout, readable_ops
from tests.helpers import skip_unless_cuda_kernels_can_run

skip_unless_cuda_kernels_can_run()

from numba import cuda  # noqa: E402  (after the skip: the main run never imports numba.cuda)

from minibert.kernels import dropout_cuda  # noqa: E402

# (shape, p, seed, offset, start): odd sizes, one element, starts inside a counter block,
# 64-bit seeds and offsets, several thread blocks (THREADS counter blocks each)
CASES = [
    ((7,), 0.5, 0, 0, 0),
    ((1,), 0.3, 5, 1, 3),
    ((3, 5, 7), 0.1, 2**32 + 7, 2**40 + 3, 1),
    ((2, 3, 11), 0.9, 2**63 + 11, 5, 2**32 - 2),
    ((1031,), 0.25, 12345, 2**64 - 1, 6),
    ((2, 9, 67), 0.1, 3, 2, 0),
]


def _x(shape, dtype, seed=0):
    x = np.random.default_rng(seed).standard_normal(shape).astype(dtype)
    x.reshape(-1)[::5] *= -1                       # negatives: dropped ones give -0.0
    return x


def _same_bits(a, b):
    assert a.dtype == b.dtype and a.shape == b.shape
    assert np.array_equal(a.view(np.uint8), b.view(np.uint8)), "the bits differ"


@pytest.mark.parametrize("case", CASES, ids=str)
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
def test_forward_and_backward_bits(case, dtype):
    """y and dx equal the readable op's bit for bit (NumPy, mask from ``minibert.rng``), and
    y is nonzero exactly where ``keep_mask`` keeps."""
    shape, p, seed, offset, start = case
    x, dy = _x(shape, dtype, 1), _x(shape, dtype, 2)
    with readable_ops():
        y_ref, cache = dropout.forward(x, p, seed, offset, training=True, start=start)
        dx_ref = dropout.backward(dy, cache)
    y = dropout_cuda.forward(cuda.to_device(x), p, seed, offset, start).copy_to_host()
    dx = dropout_cuda.backward(cuda.to_device(dy), p, seed, offset, start).copy_to_host()
    _same_bits(y, y_ref)
    _same_bits(dx, dx_ref)
    keep = mrng.keep_mask(shape, p, seed, offset, start=start)
    ones = dropout_cuda.forward(cuda.to_device(np.ones(shape, dtype)), p, seed, offset,
                                start).copy_to_host()
    assert np.array_equal(ones != 0, keep)


def test_start_draws_the_rows_of_the_whole_batch():
    """Rows r0.. of a batch, with start = r0 * row size, get the whole batch's bits."""
    x = _x((5, 13), np.float32)
    whole = dropout_cuda.forward(cuda.to_device(x), 0.4, 9, 4).copy_to_host()
    part = dropout_cuda.forward(cuda.to_device(np.ascontiguousarray(x[2:])), 0.4, 9, 4,
                                start=2 * 13).copy_to_host()
    _same_bits(part, whole[2:])


def test_two_runs_give_the_same_bits():
    x = cuda.to_device(_x((4, 33), np.float64))
    a = dropout_cuda.forward(x, 0.2, 1, 2, 3).copy_to_host()
    b = dropout_cuda.forward(x, 0.2, 1, 2, 3).copy_to_host()
    _same_bits(a, b)


def test_empty_input():
    y = dropout_cuda.forward(cuda.to_device(np.zeros((0, 3), np.float32)), 0.5, 1, 2)
    assert tuple(y.shape) == (0, 3)


def test_backward_of_another_dtype_takes_the_readable_line():
    """A host dy (or one the kernel is not compiled for) gets the readable formula with the
    same mask."""
    dy = _x((3, 7), np.float32)
    with readable_ops():
        _, cache = dropout.forward(dy, 0.3, 4, 5, training=True, start=2)
        ref = dropout.backward(dy, cache)
    _same_bits(dropout_cuda.backward(dy, 0.3, 4, 5, 2), ref)


# ---------------------------------------------------------------- rows of a larger layout
# (lengths, S, R, p, seed, offset, start): a packed batch of right-padded sequences; R = 1 and
# R = 6, 7 (rows starting at lane 3 touch (R + 6) // 4 counter blocks), a length-1 sequence,
# odd rows, 64-bit seeds, starts inside a block
ROW_CASES = [
    ((3, 1, 2), 3, 6, 0.5, 2**63 + 11, 2**40 + 3, 1),
    ((2, 3), 3, 1, 0.3, 7, 1, 2**32 - 2),
    ((1, 2), 2, 7, 0.1, 2**32 + 7, 5, 6),
]


def _rows_of(lengths, S):
    """Padded positions b * S + i (i < n_b) of the real tokens of a right-padded batch."""
    return np.array([b * S + i for b, n in enumerate(lengths) for i in range(n)], dtype=np.int64)


@pytest.mark.parametrize("case", ROW_CASES, ids=str)
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
def test_rows_packed_equals_padded_gathered(case, dtype):
    """The rows form on x_packed = x_padded.reshape(B * S, R)[rows] gives the readable op's
    y and dx on x_padded, gathered at rows, bit for bit."""
    lengths, S, R, p, seed, offset, start = case
    B = len(lengths)
    rows = _rows_of(lengths, S)
    x_pad, dy_pad = _x((B * S, R), dtype, 1), _x((B * S, R), dtype, 2)
    with readable_ops():
        y_pad, cache = dropout.forward(x_pad, p, seed, offset, training=True, start=start)
        dx_pad = dropout.backward(dy_pad, cache)
    d_rows = cuda.to_device(rows.astype(np.uint64))
    x, dy = np.ascontiguousarray(x_pad[rows]), np.ascontiguousarray(dy_pad[rows])
    y = dropout_cuda.forward(cuda.to_device(x), p, seed, offset, start, d_rows).copy_to_host()
    dx = dropout_cuda.backward(cuda.to_device(dy), p, seed, offset, start, d_rows).copy_to_host()
    _same_bits(y, y_pad[rows])
    _same_bits(dx, dx_pad[rows])
    # the host fallback of the backward (rows copied back) draws the same mask
    _same_bits(dropout_cuda.backward(dy, p, seed, offset, start, d_rows), dx_pad[rows])


def test_rows_of_every_row_is_the_plain_form():
    x = cuda.to_device(_x((3, 6), np.float64))
    rows = cuda.to_device(np.arange(3, dtype=np.uint64))
    _same_bits(dropout_cuda.forward(x, 0.4, 3, 2, 5, rows).copy_to_host(),
               dropout_cuda.forward(x, 0.4, 3, 2, 5).copy_to_host())


def test_rows_empty():
    rows = cuda.to_device(np.zeros(0, np.uint64))
    y = dropout_cuda.forward(cuda.to_device(np.zeros((0, 3), np.float32)), 0.5, 1, 2, 0, rows)
    assert tuple(y.shape) == (0, 3)
