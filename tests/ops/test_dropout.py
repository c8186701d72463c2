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
