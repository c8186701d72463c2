"""Tests of the fused LayerNorm kernel (minibert/kernels/layernorm_cpu.py) behind
``minibert.ops.layernorm``, with and without a residual.

The readable op (run under ``readable_ops()``) is the reference: float64 results agree with
it to 1e-12 of each tensor's scale; float32 results are at least as accurate as the
readable float32 op against the float64 readable op (RMS error at most 1.25 times its, plus
the one rounding of a float32 result); the kernel passes the float64 gradient check on its
own. Odd widths (H = 1, 7, 97, 129, 768), several leading shapes, non-contiguous inputs,
the dispatch, and the row blocks of dweight and dbias.
"""
import numpy as np
import pytest

from minibert.gradcheck import check_op
from minibert.kernels import layernorm_cpu
from minibert.ops import Fused, layernorm, readable_ops
from tests.helpers import assert_as_accurate_as_textbook, assert_close_to_scale

FLOATS = [pytest.param(np.float32, id="float32"), pytest.param(np.float64, id="float64")]
EPS32 = float(np.finfo(np.float32).eps)
#: float64: both sides round O(1) values a few times per element and sum H or N of them
#: (~1e-15 of the scale); a wrong term is O(1e-2) or more
TOL64 = 1e-12
NAMES = ("y", "dx", "dweight", "dbias")


def _problem(shape, dtype, seed=0, residual=False, shift=0.0):
    """x, weight, bias, residual (or None), dy: x of ``shape``, weight and bias (H,)."""
    r = np.random.default_rng(seed)
    H = shape[-1]
    x = r.standard_normal(shape) + shift
    w = 1.0 + 0.5 * r.standard_normal(H)
    b = 0.5 * r.standard_normal(H)
    res = r.standard_normal(shape) if residual else None
    dy = r.standard_normal(shape)
    return tuple(_cast(a, dtype) for a in (x, w, b, res, dy))


def _cast(a, dtype):
    """``a`` as ``dtype``; None (no residual) stays None."""
    return None if a is None else a.astype(dtype)


def _run(x, w, b, res, dy, eps=1e-12):
    """(y, dx, dweight, dbias) of the op in the current mode, and its cache."""
    y, cache = layernorm.forward(x, w, b, eps, residual=res)
    return (y,) + tuple(layernorm.backward(dy, cache)), cache


def _readable(*args, **kwargs):
    with readable_ops():
        return _run(*args, **kwargs)[0]


# ---------------------------------------------------------------------- against the readable op


LEADS = [(), (3,), (2, 5), (1, 1), (70,)]


@pytest.mark.parametrize("H", [1, 7, 97, 129, 768])
@pytest.mark.parametrize("lead", LEADS, ids=[str(lead) for lead in LEADS])
@pytest.mark.parametrize("residual", [False, True], ids=["plain", "residual"])
def test_float64_matches_readable(H, lead, residual):
    x, w, b, res, dy = _problem(lead + (H,), np.float64, seed=H + len(lead), residual=residual)
    got, cache = _run(x, w, b, res, dy)
    assert isinstance(cache, Fused)
    for name, a, e in zip(NAMES, got, _readable(x, w, b, res, dy)):
        assert a.dtype == np.float64, name
        assert_close_to_scale(name, a, e, rel=TOL64)


@pytest.mark.parametrize("eps", [0.0, 1e-5])
def test_float64_eps_and_large_offset(eps):
    """Rows of mean 1000 and unit spread: the two-pass variance keeps the signal."""
    x, w, b, res, dy = _problem((6, 33), np.float64, seed=3, residual=True, shift=1000.0)
    got, _ = _run(x, w, b, res, dy, eps=eps)
    for name, a, e in zip(NAMES, got, _readable(x, w, b, res, dy, eps=eps)):
        assert_close_to_scale(name, a, e, rel=TOL64)


@pytest.mark.parametrize("shape", [(5, 7), (33, 97), (70, 129), (64, 768)])
@pytest.mark.parametrize("residual", [False, True], ids=["plain", "residual"])
@pytest.mark.parametrize("shift", [0.0, 30.0], ids=["centred", "offset"])
def test_float32_as_accurate_as_readable(shape, residual, shift):
    """Both float32 results against the float64 readable op on the same (rounded) inputs:
    the kernel's RMS error at most 1.25 times the readable float32 op's, tensor by tensor,
    plus half an eps32 of the reference's RMS (the kernel's one final rounding, the floor of
    its error where a tiny tensor's readable result happens to round exactly).

    The kernel accumulates every statistic in float64 and rounds once, where the readable op
    rounds each step to float32: measured over 30 draws of each case, its RMS error is 0.2 to
    0.6 times the readable op's at H >= 97, and at most 1.07 times at (5, 7)."""
    x, w, b, res, dy = _problem(shape, np.float32, seed=shape[-1], residual=residual, shift=shift)
    ref = _readable(*(_cast(a, np.float64) for a in (x, w, b, res, dy)))
    book = _readable(x, w, b, res, dy)
    got, _ = _run(x, w, b, res, dy)
    assert_as_accurate_as_textbook("kernel", NAMES, got, book, ref, factor=1.25, floor_rel=0.5 * EPS32,
                                   book_label="readable")


# --------------------------------------------------------------------------- gradients


def _forward_with_residual(x, weight, bias, residual):
    return layernorm.forward(x, weight, bias, residual=residual)


def _backward_with_residual(dy, cache):
    dx, dw, db = layernorm.backward(dy, cache)
    return dx, dw, db, dx                   # the residual's gradient is dx


@pytest.mark.parametrize("shape", [(7,), (3, 7), (2, 3, 5), (40, 6)])
@pytest.mark.parametrize("residual", [False, True], ids=["plain", "residual"])
def test_gradcheck_float64(shape, residual):
    x, w, b, res, _ = _problem(shape, np.float64, seed=sum(shape), residual=residual)
    inputs = {"x": x, "weight": w, "bias": b}
    if residual:
        inputs["residual"] = res
        check_op(_forward_with_residual, _backward_with_residual, inputs, seed=len(shape))
    else:
        check_op(layernorm.forward, layernorm.backward, inputs, seed=len(shape))
    # the check ran the kernel
    assert isinstance(layernorm.forward(x, w, b)[1], Fused)


def test_one_feature_gives_zero_input_gradient():
    """H = 1: every row normalizes to 0, y = bias, so dx is exactly zero (not rstd = 1e6
    times a rounding) and dweight = 0."""
    x, w, b, res, dy = _problem((9, 1), np.float64, seed=4, residual=True)
    y, dx, dw, db = _run(x, w, b, res, dy)[0]
    np.testing.assert_array_equal(y, np.broadcast_to(b, (9, 1)))
    np.testing.assert_array_equal(dx, 0.0)
    np.testing.assert_array_equal(dw, 0.0)
    assert_close_to_scale("dbias", db, dy.sum(axis=0), rel=TOL64)


# --------------------------------------------------------------------------- layouts and dispatch


@pytest.mark.parametrize("dtype", FLOATS)
def test_non_contiguous_inputs(dtype):
    r = np.random.default_rng(5)
    x = r.standard_normal((12, 2 * 33)).astype(dtype)[::2, ::2]         # (6, 33), strided
    res = np.asfortranarray(r.standard_normal((6, 33)).astype(dtype))
    w = (1.0 + r.standard_normal(66)).astype(dtype)[::2]
    b = r.standard_normal(66).astype(dtype)[1::2]
    dy = r.standard_normal((33, 6)).astype(dtype).T                      # (6, 33), transposed
    got, cache = _run(x, w, b, res, dy)
    assert isinstance(cache, Fused)
    contiguous = [np.ascontiguousarray(a) for a in (x, w, b, res, dy)]
    ref = _run(*contiguous)[0]
    for name, a, e in zip(NAMES, got, ref):
        np.testing.assert_array_equal(a, e, err_msg=name)               # the same arithmetic


def test_dispatch():
    x, w, b, res, dy = _problem((2, 3, 8), np.float32, residual=True)
    for residual in (None, res):
        y, cache = layernorm.forward(x, w, b, residual=residual)
        assert isinstance(cache, Fused) and cache.backward is layernorm_cpu.backward
        assert y.shape == x.shape and y.dtype == np.float32
        with readable_ops():
            _, cache = layernorm.forward(x, w, b, residual=residual)
        assert not isinstance(cache, Fused)
    # mixed dtypes keep the readable op (NumPy promotes, as it would there)
    w64, res64 = w.astype(np.float64), res.astype(np.float64)
    for args, kwargs in (((x, w64, b), {}), ((x, w, b), {"residual": res64})):
        y, cache = layernorm.forward(*args, **kwargs)
        assert not isinstance(cache, Fused) and y.dtype == np.float64


def test_backward_converts_dy_and_checks_its_shape():
    x, w, b, _, dy = _problem((4, 5), np.float32, seed=6)
    _, cache = layernorm.forward(x, w, b)
    dx, dw, db = layernorm.backward(dy.astype(np.float64), cache)
    assert dx.dtype == dw.dtype == db.dtype == np.float32
    ref = layernorm.backward(dy, cache)
    for a, e in zip((dx, dw, db), ref):
        np.testing.assert_array_equal(a, e)
    with pytest.raises(ValueError, match=r"dy has shape \(5, 4\), expected the forward's output "
                                         r"shape \(4, 5\)"):
        layernorm.backward(dy.T, cache)


@pytest.mark.parametrize("dtype", FLOATS)
def test_row_blocks_can_be_split(dtype):
    """Any split of the blocks between calls (threads, later) gives the same bits."""
    N, H = 3 * layernorm_cpu.ROWS_PER_BLOCK + 5, 19
    x, w, b, res, dy = _problem((N, H), dtype, seed=7, residual=True)
    _, (s, mean, rstd, weight, shape) = layernorm_cpu.forward(x, w, b, 1e-12, res)
    whole = layernorm_cpu.backward(dy, s, mean, rstd, weight, shape)
    n_blocks = -(-N // layernorm_cpu.ROWS_PER_BLOCK)
    dx = np.empty_like(s)
    dw_part = np.empty((n_blocks, H))
    db_part = np.empty((n_blocks, H))
    for b0, b1 in ((2, 4), (0, 1), (1, 2)):                         # out of order on purpose
        layernorm_cpu.backward_blocks(dy, s, mean, rstd, weight, dx, dw_part, db_part, b0, b1)
    np.testing.assert_array_equal(dx, whole[0])
    np.testing.assert_array_equal(dw_part.sum(axis=0).astype(dtype), whole[1])
    np.testing.assert_array_equal(db_part.sum(axis=0).astype(dtype), whole[2])
    # and the forward's rows the same way
    y = np.empty_like(s)
    s2 = np.empty_like(s)
    m2, r2 = np.empty(N), np.empty(N)
    for r0, r1 in ((40, N), (0, 40)):
        layernorm_cpu.forward_rows(x, res, True, w, b, 1e-12, y, s2, m2, r2, r0, r1)
    np.testing.assert_array_equal(y, layernorm.forward(x, w, b, residual=res)[0])


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("residual", [False, True], ids=["plain", "residual"])
def test_inference_forms_give_the_same_bits(dtype, residual):
    """grad=False keeps nothing, and out=x (y written over x, its own kernel) gives the
    bits of the training forward; on the readable path too; out is checked."""
    x, w, b, res, _ = _problem((3, 5, 97), dtype, seed=11, residual=residual)
    y, _ = layernorm_cpu.forward(x, w, b, 1e-12, res)
    y_value, saved = layernorm_cpu.forward(x, w, b, 1e-12, res, grad=False)
    assert saved is None
    np.testing.assert_array_equal(y_value, y)
    over = x.copy()
    y_over, _ = layernorm_cpu.forward(over, w, b, 1e-12, res, False, over)
    assert np.shares_memory(y_over, over)
    np.testing.assert_array_equal(over, y)
    with readable_ops():
        ref, _ = layernorm.forward(x, w, b, 1e-12, res)
        over = x.copy()
        y_over, cache = layernorm.forward(over, w, b, 1e-12, res, grad=False, out=over)
        assert cache is None and y_over is over
        np.testing.assert_array_equal(over, ref)
    for bad in (np.empty((5, 3, 97), dtype), np.empty((3, 5, 194), dtype)[..., ::2]):
        with pytest.raises(ValueError, match="out has shape .* expected a writeable C-contiguous array"):
            layernorm.forward(x, w, b, 1e-12, res, out=bad)
    buf = np.zeros((16, 97), dtype)
    with pytest.raises(ValueError, match="out overlaps x without being x"):
        layernorm_cpu.forward(buf[:15], w, b, 1e-12, None, False, buf[1:])


def test_out_may_not_overlap_what_the_op_reads():
    """out = x needs grad=False (without a residual the backward reads x as the sum); out
    may not overlap the residual or overlap x other than exactly; the same memory seen
    through another shape of its size-1 axes is x."""
    x, w, b, res, _ = _problem((4, 16), np.float32, seed=12, residual=True)
    over = x.copy()
    with pytest.raises(ValueError, match="out is x, which the backward reads: expected grad=False"):
        layernorm.forward(over, w, b, 1e-12, out=over)
    buf = np.concatenate([x, res])                                     # (8, 16): x then res
    with pytest.raises(ValueError, match="out overlaps residual, which the op reads"):
        layernorm.forward(x, w, b, 1e-12, buf[4:], grad=False, out=buf[4:])
    with pytest.raises(ValueError, match="out overlaps x without being x"):
        layernorm.forward(buf[:4], w, b, 1e-12, grad=False, out=buf[1:5])
    with pytest.raises(ValueError, match="out overlaps residual, which the op reads"):
        layernorm.forward(buf[:4].copy(), w, b, 1e-12, buf[4:], grad=False, out=buf[2:6])
    base = x[:1].copy()
    y, _ = layernorm_cpu.forward(base[0:1], w, b, 1e-12, None, False, base[None, 0][0:1])
    np.testing.assert_array_equal(y, layernorm_cpu.forward(x[:1], w, b, 1e-12)[0])
    with pytest.raises(TypeError, match="out is a list, expected an array of x's type"):
        layernorm.forward(x, w, b, out=[0.0])
    frozen = np.empty_like(x)
    frozen.flags.writeable = False
    with pytest.raises(ValueError, match="expected a writeable C-contiguous array"):
        layernorm.forward(x, w, b, out=frozen)
