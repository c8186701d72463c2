"""Tests of dropout: the Philox mask (determinism, streams, rate), scaling, gradients, errors."""
import math

import numpy as np
import pytest

from minibert import rng
from minibert.gradcheck import check_op
from minibert.ops import Fused, dropout
from tests.helpers import to_np


def _randn(xp, shape, dtype=np.float64, seed=0):
    return xp.asarray(np.random.default_rng(seed).standard_normal(shape).astype(dtype))


def _keep_of(cache):
    """The saved keep-mask: ``cache[0]`` of the readable op, ``saved[0]`` of the kernel's."""
    return cache.saved[0] if isinstance(cache, Fused) else cache[0]


def _mask_of(y):
    """Which elements were kept, read off an output whose input has no zeros."""
    return to_np(y) != 0


@pytest.mark.parametrize("shape", [(1,), (7,), (3, 5), (2, 3, 7)])
@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_gradcheck_float64(xp, shape, p):
    # the mask is a function of (seed, offset), fixed between evaluations: y is linear in x
    x = _randn(xp, shape, seed=len(shape))
    check_op(dropout.forward, dropout.backward, {"x": x},
             kwargs={"p": p, "seed": 42, "offset": 3, "training": True}, seed=sum(shape))


@pytest.mark.parametrize("training,p", [(False, 0.3), (True, 0.0), (False, 0.0)])
def test_gradcheck_identity(xp, training, p):
    x = _randn(xp, (3, 5), seed=1)
    check_op(dropout.forward, dropout.backward, {"x": x},
             kwargs={"p": p, "seed": 42, "training": training})


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_mask_is_philox_keep_mask(xp, dtype):
    shape, p, seed, offset = (4, 6, 9), 0.3, 2**40 + 17, 5
    x = xp.asarray(np.random.default_rng(2).uniform(1.0, 2.0, shape).astype(dtype))   # no zeros
    y, cache = dropout.forward(x, p, seed, offset)
    expected = to_np(rng.keep_mask(shape, p, seed, offset))
    np.testing.assert_array_equal(to_np(_keep_of(cache)), expected)
    np.testing.assert_array_equal(_mask_of(y), expected)
    # the same bits from the documented convention: element i (C order) takes word i
    words = to_np(rng.random_bits(int(np.prod(shape)), seed, offset))
    u = (words >> np.uint32(8)).astype(np.float64) * 2.0 ** -24
    np.testing.assert_array_equal(expected.reshape(-1), u >= p)
    # kept elements scaled by 1/(1 - p), in the input's dtype
    assert y.dtype == dtype
    np.testing.assert_array_equal(to_np(y), to_np(x * xp.asarray(expected) / (1.0 - p)))


def test_same_seed_and_offset_same_mask(xp):
    x = xp.ones((8, 33))
    a, _ = dropout.forward(x, 0.4, seed=7, offset=11)
    b, _ = dropout.forward(x, 0.4, seed=7, offset=11)
    np.testing.assert_array_equal(to_np(a), to_np(b))


def test_different_offset_or_seed_different_mask(xp):
    x = xp.ones((8, 33))
    base = _mask_of(dropout.forward(x, 0.5, seed=7, offset=11)[0])
    for seed, offset in ((7, 12), (8, 11), (7, 11 + 2**32)):
        other = _mask_of(dropout.forward(x, 0.5, seed=seed, offset=offset)[0])
        # independent masks of 264 elements at p = 0.5 agree on about half of them
        agree = float(np.mean(base == other))
        assert 0.35 < agree < 0.65, (seed, offset, agree)


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_keep_fraction_and_mean(xp, p):
    n = 1 << 20
    x = xp.ones(n, dtype=np.float32)
    y, cache = dropout.forward(x, p, seed=123, offset=0)
    kept = float(to_np(_keep_of(cache)).mean())
    # binomial: the kept fraction has standard deviation sqrt(p (1 - p) / n) < 5e-4
    sd = math.sqrt(p * (1 - p) / n)
    assert abs(kept - (1 - p)) < 6 * sd, (kept, 1 - p)
    # inverted dropout keeps the mean: E[y] = x
    assert abs(float(to_np(y).astype(np.float64).mean()) - 1.0) < 6 * sd / (1 - p)


def test_mask_depends_only_on_element_index(xp):
    # C-order element index: the same stream laid out as (12, 5) or (60,) gives the same bits
    a = dropout.forward(xp.ones((12, 5)), 0.5, seed=3, offset=1)[0]
    b = dropout.forward(xp.ones(60), 0.5, seed=3, offset=1)[0]
    np.testing.assert_array_equal(to_np(a).reshape(-1), to_np(b))


@pytest.mark.parametrize("training,p", [(False, 0.3), (True, 0.0), (False, 0.0)])
def test_identity_when_not_dropping(xp, training, p):
    x = _randn(xp, (3, 4), seed=5)
    y, cache = dropout.forward(x, p, seed=1, offset=2, training=training)
    np.testing.assert_array_equal(to_np(y), to_np(x))
    dy = _randn(xp, (3, 4), seed=6)
    dx = dropout.backward(dy, cache)
    np.testing.assert_array_equal(to_np(dx), to_np(dy))
    assert dx is not dy                 # a fresh array, as every backward returns


def test_backward_applies_the_same_mask(xp):
    x = _randn(xp, (5, 7), seed=8)
    dy = _randn(xp, (5, 7), seed=9)
    p = 0.25
    y, cache = dropout.forward(x, p, seed=99, offset=4)
    keep0 = to_np(_keep_of(cache)).copy()
    dx = dropout.backward(dy, cache)
    np.testing.assert_array_equal(to_np(dx), to_np(dy) * keep0 / (1 - p))
    np.testing.assert_array_equal(to_np(_keep_of(cache)), keep0)       # the cache is not written


def test_float32_kept_with_numpy_scalar_p(xp):
    y, cache = dropout.forward(xp.ones(10, dtype=np.float32), np.float64(0.2), seed=0)
    assert y.dtype == np.float32
    assert dropout.backward(xp.ones(10, dtype=np.float32), cache).dtype == np.float32


@pytest.mark.parametrize("p", [1.0, -0.1, 1.5, float("nan")])
def test_p_out_of_range_raises(xp, p):
    with pytest.raises(ValueError, match=r"dropout_p=.* is out of range, expected 0 <= dropout_p < 1"):
        dropout.forward(xp.ones(3), p, seed=0)


@pytest.mark.parametrize("p", ["0.1", True, None])
def test_p_of_wrong_type_raises(xp, p):
    with pytest.raises(TypeError, match=r"dropout_p=.* has type .*, expected a float in \[0, 1\)"):
        dropout.forward(xp.ones(3), p, seed=0)


def test_bad_seed_raises(xp):
    with pytest.raises(ValueError, match=r"seed=-1 is out of range"):
        dropout.forward(xp.ones(3), 0.1, seed=-1)
    with pytest.raises(TypeError, match=r"offset=1.5 has type float"):
        dropout.forward(xp.ones(3), 0.1, seed=0, offset=1.5)


# ------------------------------------------------- rows: a packed batch draws the padded bits
def _rows_of(lengths, S):
    """Padded positions b * S + i (i < n_b) of the real tokens of a right-padded batch."""
    return np.array([b * S + i for b, n in enumerate(lengths) for i in range(n)], dtype=np.int64)


def _same_bits(name, a, b):
    a, b = to_np(a), to_np(b)
    assert a.dtype == b.dtype and a.shape == b.shape, (name, a.dtype, b.dtype, a.shape, b.shape)
    assert np.array_equal(a.view(np.uint8), b.view(np.uint8)), f"{name}: the bits differ"


# (lengths, S, feature shape, start): odd lengths and rows, a length-1 sequence, rows of
# 7 and of 1 element, a (T, 2, 3) packed x, a batch with no padding, start inside a block
ROW_CASES = [((3, 1, 5), 5, (7,), 0), ((2, 4, 1), 4, (1,), 5), ((4, 4), 4, (6,), 2**32 + 2),
             ((2, 3), 5, (2, 3), 3)]


@pytest.mark.parametrize("case", ROW_CASES, ids=str)
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
def test_rows_packed_equals_padded_gathered(xp, ops_mode, case, dtype):
    """Dropout of x_packed = x_padded.reshape(B * S, ...)[rows] with ``rows`` is dropout of
    x_padded gathered at rows, bit for bit, forward and backward (kernels and readable)."""
    lengths, S, feat, start = case
    B, p, seed, offset = len(lengths), 0.3, 2**63 + 5, 2**33 + 1
    rows = _rows_of(lengths, S)
    x_pad = _randn(xp, (B, S) + feat, dtype, seed=1)
    dy_pad = _randn(xp, (B, S) + feat, dtype, seed=2)
    y_pad, c_pad = dropout.forward(x_pad, p, seed, offset, start=start)
    dx_pad = dropout.backward(dy_pad, c_pad)
    x, dy = (a.reshape((B * S,) + feat)[xp.asarray(rows)] for a in (x_pad, dy_pad))
    y, cache = dropout.forward(x, p, seed, offset, start=start, rows=xp.asarray(rows))
    _same_bits("y", y, y_pad.reshape((B * S,) + feat)[rows])
    _same_bits("dx", dropout.backward(dy, cache), dx_pad.reshape((B * S,) + feat)[rows])
    assert y.dtype == dtype and y.shape == x.shape


def test_rows_of_every_row_is_the_plain_mask(xp, ops_mode):
    """rows = 0, 1, ..., N - 1 draws what rows=None draws (and rows=None is the default)."""
    x = _randn(xp, (6, 11), seed=3)
    plain = dropout.forward(x, 0.5, 7, 2, start=9)[0]
    _same_bits("rows=None", dropout.forward(x, 0.5, 7, 2, start=9, rows=None)[0], plain)
    _same_bits("arange", dropout.forward(x, 0.5, 7, 2, start=9, rows=xp.arange(6))[0], plain)


@pytest.mark.parametrize("p", [0.1, 0.9])
def test_gradcheck_rows_float64(xp, ops_mode, p):
    x = _randn(xp, (4, 5), seed=4)
    check_op(dropout.forward, dropout.backward, {"x": x},
             kwargs={"p": p, "seed": 42, "offset": 3, "rows": xp.asarray([7, 0, 2, 3])}, seed=5)


def test_bad_rows_raise(xp, ops_mode):
    x = xp.ones((3, 4))
    cases = [([0, 1, 2], TypeError, r"rows has type builtins.list, expected a \w+ integer array"),
             (xp.asarray([0.0, 1.0, 2.0]), TypeError, r"rows has dtype float64, expected an integer"),
             (xp.asarray([[0, 1, 2]]), ValueError, r"rows has shape \(1, 3\), expected a 1-D array"),
             (xp.asarray([0, 1]), ValueError, r"rows has length 2, expected 3"),
             (xp.asarray([0, -1, 2]), ValueError, r"rows holds -1 \(at index 1\), expected row "
                                                  r"indices >= 0"),
             (xp.asarray([0, 2**62, 2]), ValueError, r"rows holds 4611686018427387904: with "
                                                     r"row_size=4 .* >= 2\*\*64")]
    for rows, error, message in cases:
        with pytest.raises(error, match=message):
            dropout.forward(x, 0.1, seed=0, rows=rows)
    with pytest.raises(ValueError, match=r"x has shape \(\), expected .* with rows"):
        dropout.forward(xp.ones(()), 0.1, seed=0, rows=xp.asarray([0]))
    # no mask drawn, nothing checked (as seed and offset)
    assert dropout.forward(x, 0.1, seed=0, training=False, rows=[0])[0] is x
