"""Tests of the fused dropout kernel (minibert/kernels/dropout_cpu.py) behind ``minibert.ops.dropout``.

The readable op is the reference, and the kernel must reproduce it bit for bit, in float64
and in float32: both draw the same Philox bits (element i in C order over x.shape, any
seed and offset below 2**64) and do the same two roundings, (x * keep) / dtype(1 - p).
Equal bits make every accuracy statement of the readable op hold for the kernel as it is
(float32 against float64 included, tested below all the same). Odd sizes, shapes that
cross the kernel's rows of CHUNK elements, -0.0, inf and NaN inputs, a float64 gradient
check with the kernel selected, and the dispatch (a ``Fused`` cache on NumPy float arrays;
the readable cache under ``readable_ops()`` and for other dtypes).
"""
import numpy as np
import pytest

from minibert import rng as mrng
from minibert.gradcheck import check_op
from minibert.kernels import dropout_cpu
from minibert.ops import Fused, dropout, readable_ops

FLOATS = [pytest.param(np.float32, id="float32"), pytest.param(np.float64, id="float64")]
SHAPES = [(1,), (7,), (3, 97), (2, 5, 129), (3, dropout_cpu.CHUNK + 3)]
BITS = {np.dtype(np.float32): np.uint32, np.dtype(np.float64): np.uint64}


def _x(shape, dtype, seed=0, specials=True):
    """Normal draws; with ``specials`` some exact zeros of both signs, +-inf and NaN, whose
    products with 0 and 1 test that the kernel rounds as NumPy does (-0.0, NaN)."""
    x = np.random.default_rng(seed).standard_normal(shape).astype(dtype)
    if specials and x.size >= 7:
        flat = x.reshape(-1)
        flat[[0, 1, 2, 3, 4]] = [0.0, -0.0, np.inf, -np.inf, np.nan]
    return x


def _assert_same_bits(name, a, b):
    assert a.dtype == b.dtype and a.shape == b.shape, (name, a.dtype, b.dtype, a.shape, b.shape)
    ua, ub = a.view(BITS[a.dtype]), b.view(BITS[b.dtype])
    bad = np.flatnonzero(ua.reshape(-1) != ub.reshape(-1))
    assert bad.size == 0, (f"{name}: {bad.size} elements differ in their bits, first at flat "
                           f"index {bad[0]}: {a.reshape(-1)[bad[0]]!r} vs {b.reshape(-1)[bad[0]]!r}")


def _readable(x, p, seed, offset, dy):
    with readable_ops(), np.errstate(invalid="ignore"):          # inf * 0 is NaN, as intended
        y, cache = dropout.forward(x, p, seed, offset)
        return y, dropout.backward(dy, cache), cache


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_bit_equal_to_readable(shape, dtype, p):
    seed, offset = 2**63 + 12345, 2**40 + 3           # the seed needs uint64 (philox_cpu's note)
    x = _x(shape, dtype, seed=len(shape))
    dy = _x(shape, dtype, seed=len(shape) + 1)
    y, cache = dropout.forward(x, p, seed, offset)
    assert isinstance(cache, Fused)
    dx = dropout.backward(dy, cache)
    y_ref, dx_ref, cache_ref = _readable(x, p, seed, offset, dy)
    _assert_same_bits("y", y, y_ref)
    _assert_same_bits("dx", dx, dx_ref)
    np.testing.assert_array_equal(cache.saved[0], cache_ref[0])            # the mask itself


@pytest.mark.parametrize("seed,offset", [(0, 0), (2**64 - 1, 2**64 - 1), (7, 2**32 + 1)])
def test_mask_is_rng_keep_mask(seed, offset):
    shape, p = (5, 131), 0.3
    _, cache = dropout.forward(np.ones(shape, np.float32), p, seed, offset)
    np.testing.assert_array_equal(cache.saved[0], mrng.keep_mask(shape, p, seed, offset))


def test_element_index_is_c_order():
    # a transposed (non-contiguous) input takes the bits of its C-order index, as the readable op
    x = _x((97, 6), np.float64, specials=False).T                          # (6, 97) view
    y, _ = dropout.forward(x, 0.4, 3, 1)
    y_ref, _, _ = _readable(x, 0.4, 3, 1, x)
    _assert_same_bits("y", y, y_ref)
    z, _ = dropout.forward(np.ascontiguousarray(x).reshape(-1), 0.4, 3, 1)
    _assert_same_bits("y flat", y.reshape(-1), z)


def test_float32_error_equals_readable():
    """Against float64 on the same inputs (x rounded to float32 first), the float32 kernel
    has exactly the readable float32 op's error: its bits are the readable op's. Both are
    within one ulp: half for float32(1 - p), half for the division (the product by 0 or 1
    is exact)."""
    x64 = _x((4, 257), np.float64, seed=3, specials=False)
    x32 = x64.astype(np.float32)
    ref, _ = dropout.forward(x32.astype(np.float64), 0.1, 11, 2)
    y32, _ = dropout.forward(x32, 0.1, 11, 2)
    with readable_ops():
        r32, _ = dropout.forward(x32, 0.1, 11, 2)
    err_kernel = np.abs(y32.astype(np.float64) - ref)
    err_readable = np.abs(r32.astype(np.float64) - ref)
    np.testing.assert_array_equal(err_kernel, err_readable)
    assert np.all(err_kernel <= np.spacing(np.abs(y32)).astype(np.float64))


@pytest.mark.parametrize("shape", [(1,), (7,), (3, 97), (2, 5, 129)])
@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_gradcheck_float64_with_kernel(shape, p):
    x = _x(shape, np.float64, seed=sum(shape), specials=False)
    kwargs = {"p": p, "seed": 42, "offset": 3, "training": True}
    assert isinstance(dropout.forward(x, **kwargs)[1], Fused)
    check_op(dropout.forward, dropout.backward, {"x": x}, kwargs=kwargs, seed=sum(shape))


def test_dispatch():
    x32 = np.ones((3, 5), np.float32)
    assert isinstance(dropout.forward(x32, 0.2, 1)[1], Fused)
    assert isinstance(dropout.forward(x32.astype(np.float64), 0.2, 1)[1], Fused)
    with readable_ops():
        keep, p = dropout.forward(x32, 0.2, 1)[1]
        assert keep.dtype == bool and p == 0.2
    # other dtypes and the identity cases keep the readable op's caches
    y16, (keep16, _) = dropout.forward(x32.astype(np.float16), 0.2, 1)
    assert y16.dtype == np.float16 and keep16.dtype == bool
    for training, p in ((False, 0.2), (True, 0.0)):
        y, cache = dropout.forward(x32, p, 1, training=training)
        assert y is x32 and cache == (None, 0.0)


def test_zero_size_and_0d():
    for x in (np.zeros((0, 5), np.float32), np.float64(2.5) * np.ones(())):
        y, cache = dropout.forward(x, 0.5, 9, 1)
        y_ref, dx_ref, _ = _readable(x, 0.5, 9, 1, x)
        assert y.shape == x.shape
        _assert_same_bits("y", y, y_ref)
        _assert_same_bits("dx", dropout.backward(x, cache), dx_ref)


def test_backward_fresh_array_cache_untouched_and_dtype_of_dy():
    x = _x((4, 33), np.float32, specials=False)
    y, cache = dropout.forward(x, 0.25, 5, 6)
    keep0 = cache.saved[0].copy()
    dy = _x((4, 33), np.float32, seed=1, specials=False)
    dx = dropout.backward(dy, cache)
    assert dx is not dy and not np.shares_memory(dx, dy)
    np.testing.assert_array_equal(cache.saved[0], keep0)
    # a float64 upstream gradient gives what the readable line gives: float64
    dy64 = dy.astype(np.float64)
    dx64 = dropout.backward(dy64, cache)
    with readable_ops():
        dx64_ref = dropout.backward(dy64, dropout.forward(x, 0.25, 5, 6)[1])
    _assert_same_bits("dx float64", dx64, dx64_ref)


def test_errors_unchanged():
    x = np.ones(3, np.float32)
    with pytest.raises(ValueError, match=r"seed=-1 is out of range"):
        dropout.forward(x, 0.1, seed=-1)
    with pytest.raises(ValueError, match=r"offset=18446744073709551616 is out of range"):
        dropout.forward(x, 0.1, seed=0, offset=2**64)
    with pytest.raises(TypeError, match=r"offset=1.5 has type float"):
        dropout.forward(x, 0.1, seed=0, offset=1.5)
    with pytest.raises(ValueError, match=r"dropout_p=1.0 is out of range"):
        dropout.forward(x, 1.0, seed=0)


# --------------------------------------------------------------- rows of a larger layout
# (N, R, rows, start): R not a multiple of 4, R = 1, a row of two CHUNK pieces, unsorted
# rows with a repeat, odd rows, starts inside a counter block, N large enough to thread;
# runs of consecutive rows (a packed batch's sequences: lengths 400, 1, 199 padded to 400)
# of several CHUNK pieces, cut by the threads' row ranges
ROW_CASES = [
    ((5, 7), np.array([0, 1, 2, 5, 14]), 3),
    ((4, 1), np.array([9, 3, 3, 0]), 2**32 + 1),
    ((3, dropout_cpu.CHUNK + 3), np.array([1, 4, 2]), 6),
    ((700, 101), np.arange(1, 1400, 2), 0),
    ((600, 113), np.r_[0:400, 400, 800:999], 1),
]


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("shape,rows,start", ROW_CASES, ids=lambda v: str(getattr(v, "shape", v)))
def test_rows_bit_equal_to_readable_and_to_the_whole_layout(shape, rows, start, dtype):
    """The rows form gives the readable op's y, dx and mask bit for bit, and those are the
    rows of the whole layout's: dropout of the padded (rows.max() + 1, R) x gathered."""
    seed, offset, p = 2**63 + 12345, 2**40 + 3, 0.3
    n_all = int(rows.max()) + 1
    x_all = _x((n_all, shape[1]), dtype, seed=shape[1])
    dy_all = _x((n_all, shape[1]), dtype, seed=shape[1] + 1)
    x, dy = x_all[rows], dy_all[rows]
    y, cache = dropout.forward(x, p, seed, offset, start=start, rows=rows)
    assert isinstance(cache, Fused)
    dx = dropout.backward(dy, cache)
    with readable_ops(), np.errstate(invalid="ignore"):       # inf * 0 is NaN, as intended
        y_ref, cache_ref = dropout.forward(x, p, seed, offset, start=start, rows=rows)
        dx_ref = dropout.backward(dy, cache_ref)
        y_all, cache_all = dropout.forward(x_all, p, seed, offset, start=start)
        dx_all = dropout.backward(dy_all, cache_all)
    for name, got, ref in (("y", y, y_ref), ("dx", dx, dx_ref), ("y vs whole", y, y_all[rows]),
                           ("dx vs whole", dx, dx_all[rows])):
        _assert_same_bits(name, got, ref)
    np.testing.assert_array_equal(cache.saved[0], cache_ref[0])
    np.testing.assert_array_equal(cache.saved[0], mrng.keep_mask_rows(rows, shape[1], p, seed, offset,
                                                                       start=start))


def test_rows_of_a_3d_non_contiguous_x():
    """x (N, 3, 5), a transposed view: row t is its C-order 15 elements, at rows[t]."""
    x = _x((4, 5, 3), np.float64, specials=False).transpose(0, 2, 1)
    rows = np.array([2, 0, 7, 5], dtype=np.uint32)
    y, _ = dropout.forward(x, 0.4, 3, 1, start=1, rows=rows)
    y_ref, _ = dropout.forward(np.ascontiguousarray(x).reshape(4, 15), 0.4, 3, 1, start=1,
                               rows=rows.astype(np.int64))
    _assert_same_bits("y", y.reshape(4, 15), y_ref)
    with readable_ops():
        _assert_same_bits("readable", y, dropout.forward(x, 0.4, 3, 1, start=1, rows=rows)[0])


def test_rows_empty_batch_and_empty_rows():
    for x, rows in ((np.zeros((0, 5), np.float32), np.zeros(0, np.int64)),
                    (np.zeros((3, 0), np.float64), np.array([4, 0, 1]))):
        y, cache = dropout.forward(x, 0.5, 9, 1, rows=rows)
        assert y.shape == x.shape and cache.saved[0].shape == x.shape
        assert dropout.backward(x, cache).shape == x.shape
