"""Tests of the fused CPU attention (``minibert.kernels.fused_attention_forward`` /
``fused_attention_backward``, minibert/kernels/attention_cpu.py) and its Philox bits
(minibert/kernels/philox_cpu.py).

The textbook op ``minibert.ops.attention`` is the reference: float64 results agree with it
to 1e-12, float32 results are held to twice the textbook float32's own error against the
float64 textbook. Odd sizes (S = 1, 7, 97, 129; D = 16, 64, 80), sequences with different
pad lengths, an all-padding sequence, masks with holes, mask None; dropout with the same
Philox bits as the textbook; gradient checks; parallel == serial bits; bad input.
"""
import math

import numba
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from minibert import rng as mrng
from minibert.gradcheck import check_op
from minibert.kernels import _blocks, attention_cpu, fused_attention_backward, fused_attention_forward
from minibert.kernels.philox_cpu import dropout_keep, philox_uint32
from minibert.ops import attention, readable_ops
from tests.helpers import assert_as_accurate_as_textbook, assert_close

FLOATS = [pytest.param(np.float32, id="float32"), pytest.param(np.float64, id="float64")]

# float64: both sides round O(1) values about S + D times, ~1e-15; a wrong kernel is off by
# O(1e-2) or more
TOL64 = 1e-12


def _problem(B, A, S, D, dtype, seed=0, magnitude=1.0):
    r = np.random.default_rng(seed)
    q, k = (magnitude * r.standard_normal((B, A, S, D)) for _ in range(2))
    v, dout = (r.standard_normal((B, A, S, D)) for _ in range(2))
    return tuple(x.astype(dtype) for x in (q, k, v, dout))


def _lengths_mask(S, lengths):
    """(len(lengths), S) 0/1 mask: sequence b has ``lengths[b]`` real tokens, then padding."""
    m = np.zeros((len(lengths), S), dtype=np.int64)
    for b, n in enumerate(lengths):
        m[b, :n] = 1
    return m


def _mixed_mask(S, seed=0):
    """(4, S): full, a third padded, no real key at all, random holes (some key real)."""
    m = _lengths_mask(S, [S, S - S // 3, 0, 0])
    m[3] = np.random.default_rng(seed).integers(0, 2, S)
    m[3, S // 2] = 1
    return m


def _textbook(q, k, v, dout, mask, scale=None, p=0.0, seed=0, offset=0):
    """(out, dq, dk, dv) of the textbook op (dropout with training=True when p > 0), under
    ``readable_ops()``: the readable code, never a kernel, is the reference."""
    with readable_ops():
        out, cache = attention.forward(q, k, v, attention_mask=mask, scale=scale, dropout_p=p,
                                       seed=seed, offset=offset, training=p > 0)
        return (out,) + tuple(attention.backward(dout, cache))


def _fused(q, k, v, dout, mask, scale=None, p=0.0, seed=0, offset=0):
    """(out, dq, dk, dv) and lse of the fused op."""
    out, lse = fused_attention_forward(q, k, v, mask, scale, p, seed, offset)
    grads = fused_attention_backward(dout, q, k, v, out, lse, mask, scale, p, seed, offset)
    return (out,) + tuple(grads), lse


def _as64(*xs):
    return tuple(x.astype(np.float64) for x in xs)


NAMES = ("out", "dq", "dk", "dv")


# --------------------------------------------------------------------------- Philox bits


@numba.njit
def _bits_and_keeps(seed, offset, start, n, p):
    bits = np.empty(n, dtype=np.uint32)
    keeps = np.empty(n, dtype=np.bool_)
    for i in range(n):
        bits[i] = philox_uint32(seed, offset, start + i)
        keeps[i] = dropout_keep(seed, offset, start + i, p)
    return bits, keeps


@pytest.mark.parametrize("seed,offset", [(0, 0), (42, 7), (2**32 + 5, 3), (9, 2**33 + 1),
                                         (2**64 - 1, 2**64 - 1), (2**63 + 11, 2**40)])
def test_philox_matches_rng_bit_for_bit(seed, offset):
    n = 1003                                           # not a multiple of 4
    for p in (0.1, 0.5, 0.9):
        # NumPy uint64: Numba's dispatcher cannot pass a Python int >= 2**63 to an int64
        bits, keeps = _bits_and_keeps(np.uint64(seed), np.uint64(offset), 0, n, p)
        np.testing.assert_array_equal(bits, mrng.random_bits(n, seed, offset))
        np.testing.assert_array_equal(keeps, mrng.keep_mask((n,), p, seed, offset))


def test_philox_high_element_indices():
    """Element indices whose counter block is >= 2**32 use both counter words."""
    seed, offset = np.uint64(1234), np.uint64(99)
    for start in (4 * (2**32 - 1), 4 * 5 * 2**32 + 2):
        bits, _ = _bits_and_keeps(seed, offset, start, 12, 0.5)
        for i in range(12):
            block = (start + i) // 4
            words = mrng.philox4x32(np.uint32(block & 0xFFFFFFFF), np.uint32(block >> 32),
                                    np.uint32(99), np.uint32(0), 1234, 0)
            assert int(bits[i]) == int(words[(start + i) % 4]), f"element {start + i}"


@pytest.mark.parametrize("dtype", FLOATS)
def test_exp_scalar_gives_exp_row_bits(dtype):
    """The row passes' exp (``_blocks.exp_sum``, one pass with the row sum) and the
    scratch-row exp (``_blocks.exp_row``) agree bit for bit, underflow and -inf included;
    the sum is the row's sum up to rounding. A NaN, whatever its sign and payload, gives NaN
    in both."""
    x = np.concatenate([np.linspace(-800.0, 0.0, 4001), [-np.inf, -0.0, -87.33, -87.34,
                        -708.3, -708.4, -745.2, -1e30]]).astype(dtype)
    ibits = _blocks.INT_OF[np.dtype(dtype)]
    consts = _blocks.EXP_CONSTANTS[np.dtype(dtype)]
    for shift in (0.0, 1.5, -3.25):
        a, b, scratch = x.copy(), x.copy(), np.empty_like(x)
        _blocks.exp_row(a, len(a), dtype(shift), scratch, scratch.view(ibits), consts)
        total = _blocks.exp_sum(b, len(b), dtype(shift), consts)
        np.testing.assert_array_equal(a.view(ibits), b.view(ibits))
        assert abs(total - a.sum(dtype=np.float64)) <= 1e-5 * a.sum(dtype=np.float64)
    # NaNs in the vectorised body of the loops, not only in the scalar remainder: quiet,
    # signalling (exponent all ones, lowest mantissa bit), negative, all bits set
    nan_bits = {np.int32: [0x7FC00000, 0x7F800001, -0x400000, -1],
                np.int64: [0x7FF8000000000000, 0x7FF0000000000001, -(1 << 51), -1]}[ibits]
    y = np.linspace(-20.0, 0.0, 257).astype(dtype)
    where = np.array([3, 64, 130, 255])
    y.view(ibits)[where] = nan_bits
    assert np.isnan(y[where]).all()
    a, b, scratch = y.copy(), y.copy(), np.empty_like(y)
    _blocks.exp_row(a, len(a), dtype(0), scratch, scratch.view(ibits), consts)
    assert np.isnan(_blocks.exp_sum(b, len(b), dtype(0), consts))
    assert np.isnan(a[where]).all() and np.isnan(b[where]).all()
    rest = np.setdiff1d(np.arange(len(y)), where)
    np.testing.assert_array_equal(a[rest].view(ibits), b[rest].view(ibits))
    assert not np.isnan(a[rest]).any()


# --------------------------------------------------------------------------- against the textbook


SIZES = [(1, 16), (7, 16), (7, 80), (97, 64), (129, 80), (129, 16)]


@pytest.mark.parametrize("S,D", SIZES, ids=[f"S{S}-D{D}" for S, D in SIZES])
@pytest.mark.parametrize("p", [0.0, 0.3], ids=["nodrop", "dropout"])
def test_float64_matches_textbook(S, D, p):
    mask = _mixed_mask(S, seed=S)
    q, k, v, dout = _problem(4, 2, S, D, np.float64, seed=S + D)
    ref = _textbook(q, k, v, dout, mask, p=p, seed=11, offset=2**32 + 3)
    got, lse = _fused(q, k, v, dout, mask, p=p, seed=11, offset=2**32 + 3)
    for name, a, e in zip(NAMES, got, ref):
        assert_close(name, a, e, atol=TOL64)


@pytest.mark.parametrize("mask_kind", ["none", "lengths", "holes"])
def test_float64_masks_and_scale(mask_kind):
    B, A, S, D = 3, 2, 23, 16
    mask = {"none": None, "lengths": _lengths_mask(S, [23, 9, 1]),
            "holes": (np.arange(B * S).reshape(B, S) % 3 != 1).astype(np.float64)}[mask_kind]
    q, k, v, dout = _problem(B, A, S, D, np.float64, seed=5, magnitude=2.0)
    for scale in (None, 0.7):
        ref = _textbook(q, k, v, dout, mask, scale=scale)
        got, _ = _fused(q, k, v, dout, mask, scale=scale)
        for name, a, e in zip(NAMES, got, ref):
            assert_close(f"{name} (scale={scale})", a, e, atol=TOL64)


#: the two tiled kernels that take block sizes: rung 5 (production, BLAS block products)
#: and rung 4 (all Numba, kernels/attn_v4_tiled.py, loaded by path)
TILED = [pytest.param("v5", id="v5"), pytest.param("v4", id="v4")]


@pytest.fixture
def mod(request, rung):
    return attention_cpu if request.param == "v5" else rung("attn_v4_tiled")


@pytest.mark.parametrize("mod", TILED, indirect=True)
@pytest.mark.parametrize("blocks", [(1, 1), (3, 5), (16, 8), (64, 128), (200, 200)])
def test_block_sizes_do_not_change_the_function(mod, blocks):
    """Many key blocks exercise the rescaling of the online softmax; blocks larger than S
    the single-block path. All within float64 rounding of the textbook."""
    block_q, block_k = blocks
    S, D = 37, 16
    mask = _mixed_mask(S, seed=1)
    q, k, v, dout = _problem(4, 2, S, D, np.float64, seed=2, magnitude=3.0)
    ref = _textbook(q, k, v, dout, mask, p=0.2, seed=4, offset=1)
    kw = dict(block_q=block_q, block_k=block_k)
    out, lse = mod.attention_forward(q, k, v, mask, 0.25, 0.2, 4, 1, **kw)
    grads = mod.attention_backward(dout, q, k, v, out, lse, mask, 0.25, 0.2, 4, 1, **kw)
    for name, a, e in zip(NAMES, (out,) + grads, ref):
        assert_close(name, a, e, atol=TOL64)


@pytest.mark.parametrize("S,D,p", [(97, 16, 0.0), (129, 16, 0.2), (97, 64, 0.0),
                                   (129, 80, 0.2), (64, 64, 0.1)])
def test_float32_as_accurate_as_textbook(S, D, p):
    """Both float32 results against the float64 textbook on the same (rounded) inputs: the
    fused error, measured normwise (root mean square over the tensor), at most 1.25 times
    the textbook's, tensor by tensor.

    Why the RMS and why 1.25. Both ops compute the same sums in float32 in different orders,
    so their errors are sums of roundings of the same size and number: in norm they should
    be equal up to a spread that shrinks with the tensor's size. Measured over 40 draws of
    each of these shapes (D = 16 to 80, with and without dropout): the RMS ratio has a
    median of 0.97 to 1.05 and a maximum of 1.10. Arithmetic that lost accuracy
    systematically (a rounding stored and reused, a worse summation) would move the whole
    distribution; 1.25 leaves room for the measured spread and little more, and is
    stricter than the issue's "twice the textbook's own error". The largest single error
    is the wrong statistic for this statement: it rests on a few roundings, and its ratio
    (median 1.0) passed 2 in 2 of the 160 draws (dk at D = 16, dv at D = 64), so it is not
    asserted."""
    mask = _mixed_mask(S, seed=S)
    q, k, v, dout = _problem(4, 2, S, D, np.float32, seed=S, magnitude=2.0)
    kw = dict(p=p, seed=7, offset=5)
    ref = _textbook(*_as64(q, k, v, dout), mask, **kw)
    book = _textbook(q, k, v, dout, mask, **kw)
    got, lse = _fused(q, k, v, dout, mask, **kw)
    assert lse.dtype == np.float32
    assert_as_accurate_as_textbook("fused", NAMES, got, book, ref, factor=1.25)


@pytest.mark.parametrize("dtype", FLOATS)
def test_lse_is_the_log_sum_exp_of_masked_scores(dtype):
    B, A, S, D = 4, 2, 45, 16
    mask = _mixed_mask(S, seed=3)
    q, k, v, _ = _problem(B, A, S, D, dtype, seed=8, magnitude=3.0)
    _, lse = fused_attention_forward(q, k, v, mask, None)
    assert lse.shape == (B, A, S) and lse.dtype == dtype
    q64, k64 = _as64(q, k)
    scale = 1.0 / math.sqrt(D)
    scores = scale * q64 @ k64.swapaxes(-1, -2)                            # (B, A, S, S)
    scores = scores + np.where(mask == 1, 0.0, np.finfo(np.float64).min / 2)[:, None, None, :]
    top = scores.max(axis=-1, keepdims=True)
    ref = (top + np.log(np.exp(scores - top).sum(axis=-1, keepdims=True)))[..., 0]
    real = mask.any(axis=1)                                                # sequences with a key
    # float32: a score carries a rounding error of a few eps |q| |k| (a D-term dot product),
    # and lse, a smooth maximum of the scores, at most that plus the rounding of lse itself
    eps = float(np.finfo(dtype).eps)
    s_max = float(np.abs(scale * q64 @ k64.swapaxes(-1, -2)).max())
    tol = 4 * math.sqrt(D) * eps * (1.0 + s_max)
    assert_close("lse", lse[real], ref[real], atol=tol)
    # no real key: lse = +inf (then exp(s - lse) = 0, the convention of FlashAttention)
    assert np.all(lse[~real] == np.inf)


# --------------------------------------------------------------------------- dropout


def test_dropout_uses_the_textbook_bits():
    """The same (seed, offset) gives the textbook's keep-mask: outputs agree to rounding,
    while another offset or seed (a different mask) gives a different output."""
    B, A, S, D = 2, 3, 19, 16
    q, k, v, dout = _problem(B, A, S, D, np.float64, seed=4)
    mask = _lengths_mask(S, [19, 12])
    for seed, offset in ((1, 0), (2**40 + 7, 5), (3, 2**63 + 1)):
        ref = _textbook(q, k, v, dout, mask, p=0.4, seed=seed, offset=offset)
        got, _ = _fused(q, k, v, dout, mask, p=0.4, seed=seed, offset=offset)
        for name, a, e in zip(NAMES, got, ref):
            assert_close(f"{name} (seed={seed}, offset={offset})", a, e, atol=TOL64)
    out, _ = fused_attention_forward(q, k, v, mask, None, 0.4, 1, 0)
    for other in ((1, 1), (2, 0)):
        assert np.abs(fused_attention_forward(q, k, v, mask, None, 0.4, *other)[0] - out).max() > 0.1
    # p = 0 is no dropout at all, whatever the seed
    plain = _textbook(q, k, v, dout, mask)
    got, _ = _fused(q, k, v, dout, mask, p=0.0, seed=123, offset=9)
    for name, a, e in zip(NAMES, got, plain):
        assert_close(name, a, e, atol=TOL64)


# --------------------------------------------------------------------------- gradients


def _fused_op_forward(q, k, v, mask=None, scale=None, dropout_p=0.0, seed=0, offset=0):
    out, lse = fused_attention_forward(q, k, v, mask, scale, dropout_p, seed, offset)
    return out, (q, k, v, out, lse, mask, scale, dropout_p, seed, offset)


def _fused_op_backward(dout, cache):
    q, k, v, out, lse, *rest = cache
    return fused_attention_backward(dout, q, k, v, out, lse, *rest)


@pytest.mark.parametrize("dropout", [False, True], ids=["nodrop", "dropout"])
def test_gradcheck_float64(dropout):
    B, A, S, D = 3, 2, 5, 4
    q, k, v, _ = _problem(B, A, S, D, np.float64, seed=6)
    kwargs = {"mask": _lengths_mask(S, [5, 2, 0])}      # the last sequence: all padding
    if dropout:
        # the keep-mask is a fixed function of (seed, offset): the op stays differentiable
        kwargs.update(dropout_p=0.3, seed=12345, offset=2**33)
    report = check_op(_fused_op_forward, _fused_op_backward, {"q": q, "k": k, "v": v},
                      kwargs=kwargs, seed=1)
    assert report.passed and report.max_rel_err <= 1e-7


@pytest.mark.parametrize("dtype", FLOATS)
def test_all_padding_sequence_gives_zeros_and_no_nan(dtype):
    B, A, S, D = 3, 2, 70, 16
    q, k, v, dout = _problem(B, A, S, D, dtype, seed=9, magnitude=4.0)
    mask = _lengths_mask(S, [70, 0, 3])
    for p in (0.0, 0.5):
        got, lse = _fused(q, k, v, dout, mask, p=p, seed=3)
        for name, x in zip(NAMES, got):
            assert np.all(np.isfinite(x)), f"{name} has non-finite entries (p={p})"
            assert np.all(x[1] == 0), f"{name} of the all-padding sequence is not zero (p={p})"
        assert np.all(lse[1] == np.inf) and np.all(np.isfinite(lse[[0, 2]]))


# --------------------------------------------------------------------------- threads and state


@pytest.mark.slow
@pytest.mark.parametrize("mod", TILED, indirect=True)
def test_parallel_and_serial_give_the_same_bits(monkeypatch, mod):
    """Each output element is written by exactly one task, with no reduction across
    threads: one thread and all threads must agree bit for bit (odd sizes, dropout, padding,
    and blocks small enough for many tasks per head)."""
    monkeypatch.setattr(mod, "MIN_PARALLEL_WORK", 0)    # no serial shortcut
    S, D = 53, 16
    mask = _mixed_mask(S, seed=2)
    q, k, v, dout = _problem(4, 3, S, D, np.float32, seed=3)
    kw = dict(block_q=8, block_k=16)

    def run():
        out, lse = mod.attention_forward(q, k, v, mask, 0.25, 0.1, 5, 6, **kw)
        return (out, lse) + mod.attention_backward(dout, q, k, v, out, lse, mask,
                                                   0.25, 0.1, 5, 6, **kw)
    threads = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        serial = run()
    finally:
        numba.set_num_threads(threads)
    parallel = run()
    for name, a, b in zip(("out", "lse", "dq", "dk", "dv"), serial, parallel):
        assert np.array_equal(a, b), f"{name}: {threads} threads differ from 1 thread"


@pytest.mark.parametrize("dtype", FLOATS)
def test_strided_views_of_the_models_product(dtype):
    """q, k, v as the model's views of one (B, S, 3H) product and dout as a view of
    (B, S, H) (``minibert.model.split_heads``): taken as they are, with the results of
    C-contiguous copies, padding and dropout included."""
    from minibert.model import split_heads
    B, A, S, D = 3, 2, 9, 8
    r = np.random.default_rng(4)
    q, k, v = split_heads(r.standard_normal((B, S, 3 * A * D)).astype(dtype), A, 3)
    (dout,) = split_heads(r.standard_normal((B, S, A * D)).astype(dtype), A)
    assert not q.flags.c_contiguous and q.strides[-1] == q.itemsize
    mask = _lengths_mask(S, [S, 5, 1])
    got, lse = _fused(q, k, v, dout, mask, p=0.1, seed=3)
    plain, lse_plain = _fused(*(np.ascontiguousarray(x) for x in (q, k, v, dout)), mask,
                              p=0.1, seed=3)
    for name, a, e in zip(("out", "dq", "dk", "dv", "lse"), got + (lse,), plain + (lse_plain,)):
        assert np.array_equal(a, e), name
    # a last axis that is not unit-stride is refused, as is any array that is not C-contiguous
    with pytest.raises(ValueError, match=r"q with shape .* is not C-contiguous, nor a view"):
        fused_attention_forward(q[..., ::2], k[..., ::2], v[..., ::2], mask, None)


def test_forward_saves_only_out_and_lse():
    B, A, S, D = 2, 3, 11, 8
    q, k, v, _ = _problem(B, A, S, D, np.float32)
    res = fused_attention_forward(q, k, v, None, None)
    assert isinstance(res, tuple) and len(res) == 2
    out, lse = res
    assert out.shape == (B, A, S, D) and lse.shape == (B, A, S)
    assert lse.flags.c_contiguous
    assert out.transpose(0, 2, 1, 3).flags.c_contiguous              # token-major (B, S, A, D)


# --------------------------------------------------------------------------- hypothesis


@st.composite
def _cases(draw):
    B, A = draw(st.integers(1, 3)), draw(st.integers(1, 2))
    S, D = draw(st.integers(1, 40)), draw(st.integers(1, 12))
    mask = draw(st.lists(st.lists(st.sampled_from([0, 1]), min_size=S, max_size=S),
                         min_size=B, max_size=B))
    return dict(shape=(B, A, S, D), mask=np.array(mask, dtype=np.int64),
                p=draw(st.sampled_from([0.0, 0.1, 0.6])),
                seed=draw(st.integers(0, 2**64 - 1)), offset=draw(st.integers(0, 2**64 - 1)),
                block_q=draw(st.sampled_from([1, 4, 64])), block_k=draw(st.sampled_from([2, 7, 128])),
                data_seed=draw(st.integers(0, 2**32 - 1)))


@given(case=_cases())
def test_hypothesis_float64_matches_textbook(case):
    q, k, v, dout = _problem(*case["shape"], np.float64, seed=case["data_seed"], magnitude=2.0)
    mask, p, seed, offset = case["mask"], case["p"], case["seed"], case["offset"]
    ref = _textbook(q, k, v, dout, mask, p=p, seed=seed, offset=offset)
    kw = dict(block_q=case["block_q"], block_k=case["block_k"])
    out, lse = attention_cpu.attention_forward(q, k, v, mask, 1.0 / math.sqrt(q.shape[3]), p,
                                               seed, offset, **kw)
    grads = attention_cpu.attention_backward(dout, q, k, v, out, lse, mask,
                                             1.0 / math.sqrt(q.shape[3]), p, seed, offset, **kw)
    for name, a, e in zip(NAMES, (out,) + grads, ref):
        assert_close(name, a, e, atol=TOL64)


# --------------------------------------------------------------------------- bad input


def test_bad_inputs_raise():
    q, k, v, dout = _problem(2, 2, 4, 3, np.float64)
    out, lse = fused_attention_forward(q, k, v, None, None)
    f = fused_attention_forward

    def b(**kw):
        args = dict(dout=dout, q=q, k=k, v=v, out=out, lse=lse, mask=None, scale=None)
        args.update(kw)
        return fused_attention_backward(**args)

    with pytest.raises(ValueError, match=r"q has shape \(2, 4, 3\), expected rank 4"):
        f(q[0], k, v, None, None)
    with pytest.raises(ValueError, match=r"k has shape \(2, 2, 5, 3\), expected the shape of q"):
        f(q, np.zeros((2, 2, 5, 3)), v, None, None)
    with pytest.raises(TypeError, match=r"v has dtype float32, expected the dtype of q \(float64\)"):
        f(q, k, v.astype(np.float32), None, None)
    with pytest.raises(TypeError, match=r"q has dtype float16, expected float32 or float64"):
        f(*(x.astype(np.float16) for x in (q, k, v)), None, None)
    with pytest.raises(TypeError, match=r"q has dtype int64, expected float32 or float64"):
        f(*(x.astype(np.int64) for x in (q, k, v)), None, None)
    with pytest.raises(TypeError, match=r"q has type list, expected a NumPy or CuPy array"):
        f(q.tolist(), k, v, None, None)
    with pytest.raises(ValueError, match=r"k with shape \(2, 2, 4, 3\) and strides .* is not "
                                         r"C-contiguous"):
        f(q, np.asfortranarray(k), v, None, None)
    with pytest.raises(ValueError, match=r"mask has shape \(2, 3\), expected \(B, S\) = \(2, 4\)"):
        f(q, k, v, np.ones((2, 3)), None)
    with pytest.raises(ValueError, match=r"mask contains the value -10000.0, expected only 0"):
        f(q, k, v, np.array([[0.0, 0, 0, 0], [0, 0, -1e4, 0]]), None)
    with pytest.raises(TypeError, match=r"mask has dtype <U1, expected bool, integer or float"):
        f(q, k, v, np.full((2, 4), "1"), None)
    with pytest.raises(TypeError, match=r"mask has type list, expected a NumPy array"):
        f(q, k, v, [[1, 1, 1, 1], [1, 1, 1, 1]], None)
    for p in (1.0, -0.1, float("nan")):
        with pytest.raises(ValueError, match=r"dropout_p=.* is out of range, expected 0 <= dropout_p < 1"):
            f(q, k, v, None, None, p)
    with pytest.raises(TypeError, match=r"dropout_p='0.1' has type str, expected a float"):
        f(q, k, v, None, None, "0.1")
    for scale in (float("inf"), float("nan")):
        with pytest.raises(ValueError, match=r"scale=.* is not finite, expected a finite number"):
            f(q, k, v, None, scale)
    with pytest.raises(TypeError, match=r"scale='x' has type str, expected a real number"):
        f(q, k, v, None, "x")
    with pytest.raises(ValueError, match=r"seed=-1 is out of range"):
        f(q, k, v, None, None, 0.1, -1)
    with pytest.raises(ValueError, match=r"offset=18446744073709551616 is out of range"):
        f(q, k, v, None, None, 0.1, 0, 2**64)
    with pytest.raises(TypeError, match=r"seed=1.5 has type float, expected an integer"):
        f(q, k, v, None, None, 0.1, 1.5)
    # backward: the same checks, and lse and out
    with pytest.raises(ValueError, match=r"lse has shape \(2, 2\), expected \(B, A, S\) = \(2, 2, 4\)"):
        b(lse=lse[..., 0])
    with pytest.raises(TypeError, match=r"lse has dtype float32, expected the dtype of q"):
        b(lse=lse.astype(np.float32))
    with pytest.raises(ValueError, match=r"lse with strides .* is not C-contiguous"):
        b(lse=np.asfortranarray(np.ones((2, 2, 4))))
    with pytest.raises(ValueError, match=r"dout has shape \(2, 2, 4, 2\), expected the shape of q"):
        b(dout=dout[..., :2].copy())
    with pytest.raises(ValueError, match=r"out with shape .* is not C-contiguous"):
        b(out=np.asfortranarray(out))
    with pytest.raises(ValueError, match=r"mask has shape \(4,\), expected \(B, S\)"):
        b(mask=np.ones(4))
    with pytest.raises(ValueError, match=r"dropout_p=1.5 is out of range"):
        b(dropout_p=1.5)


def test_gpu_arrays_never_reach_the_cpu_kernels():
    """A GPU array (a CuPy one is recognised by its type's module, as minibert.backend
    does) is never sent to the Numba CPU kernels: mixed with NumPy arrays it is refused by
    name, whichever side it is on."""
    q, k, v, dout = _problem(1, 1, 2, 2, np.float32)
    fake = type("ndarray", (), {"__module__": "cupy._core.core", "shape": q.shape,
                                "dtype": q.dtype, "ndim": 4})()
    with pytest.raises(TypeError, match=r"k is a GPU array .* while q is a NumPy array"):
        fused_attention_forward(q, fake, v, None, None)
    with pytest.raises(TypeError, match=r"k has type numpy.ndarray, expected a GPU array like q"):
        fused_attention_backward(dout, fake, k, v, q, q[..., 0], None, None)


def test_gpu_arrays_without_numba_cuda_say_how_to_get_it(monkeypatch):
    """Validated GPU inputs with Numba's CUDA target missing: an ImportError that names the
    package, before anything imports numba.cuda."""
    import types

    import minibert.kernels as kernels
    monkeypatch.setattr(kernels, "cuda_kernels_available", lambda: False)
    attrs = {"__module__": "cupy._core.core", "shape": (1, 1, 2, 2), "ndim": 4,
             "dtype": np.dtype(np.float32), "strides": (16, 16, 8, 4),
             "flags": types.SimpleNamespace(c_contiguous=True)}
    fake = type("ndarray", (), attrs)()
    with pytest.raises(ImportError, match=r"needs numba-cuda"):
        fused_attention_forward(fake, fake, fake, None, None)


def test_blas_thread_count_is_restored(monkeypatch):
    """The production kernel holds BLAS to one thread while its own threads run, and gives
    the user's setting back afterwards, also when a task fails."""
    from threadpoolctl import threadpool_info
    monkeypatch.setattr(attention_cpu, "MIN_PARALLEL_WORK", 0)
    before = [(i["filepath"], i["num_threads"]) for i in threadpool_info() if i["user_api"] == "blas"]
    q, k, v, dout = _problem(4, 3, 33, 16, np.float32, seed=5)
    mask = _mixed_mask(33, seed=5)
    threads = numba.get_num_threads()
    try:
        numba.set_num_threads(max(2, threads))
        out, lse = attention_cpu.attention_forward(q, k, v, mask, 0.25)
        attention_cpu.attention_backward(dout, q, k, v, out, lse, mask, 0.25)
        with pytest.raises(ValueError):                  # a task that fails inside the pool
            attention_cpu.attention_forward(q, k, v[:, :, :, :8], mask, 0.25)
    finally:
        numba.set_num_threads(threads)
    after = [(i["filepath"], i["num_threads"]) for i in threadpool_info() if i["user_api"] == "blas"]
    assert after == before


@pytest.mark.parametrize("blocks", [(128, 512), (4, 8)])
def test_every_output_element_is_written(monkeypatch, blocks):
    """The production kernel allocates out, lse, dq, dk, dv uninitialised and writes every
    element (zeros at padded keys, at rows without a real key): with NaN-filled buffers the
    results must still equal the textbook's."""
    monkeypatch.setattr(attention_cpu, "_uninitialised",
                        lambda shape, dtype: np.full(shape, np.nan, dtype=dtype))
    S, D = 29, 8
    mask = _mixed_mask(S, seed=7)
    q, k, v, dout = _problem(4, 2, S, D, np.float64, seed=7)
    ref = _textbook(q, k, v, dout, mask, p=0.1, seed=2, offset=3)
    kw = dict(block_q=blocks[0], block_k=blocks[1])
    out, lse = attention_cpu.attention_forward(q, k, v, mask, 1 / math.sqrt(D), 0.1, 2, 3, **kw)
    grads = attention_cpu.attention_backward(dout, q, k, v, out, lse, mask, 1 / math.sqrt(D),
                                             0.1, 2, 3, **kw)
    assert not np.isnan(lse).any()
    for name, a, e in zip(NAMES, (out,) + grads, ref):
        assert_close(name, a, e, atol=TOL64)


def test_concurrent_calls_give_the_blas_setting_back(monkeypatch):
    """Two user threads calling the kernel at once share one BLAS limit: the user's thread
    count comes back when both are done, and both results are right."""
    import threading

    from threadpoolctl import threadpool_info
    monkeypatch.setattr(attention_cpu, "MIN_PARALLEL_WORK", 0)
    before = [(i["filepath"], i["num_threads"]) for i in threadpool_info() if i["user_api"] == "blas"]
    q, k, v, dout = _problem(4, 3, 41, 16, np.float64, seed=9)
    mask = _mixed_mask(41, seed=9)
    ref = _textbook(q, k, v, dout, mask, scale=0.25)
    results, errors = [], []

    def work():
        try:
            for _ in range(5):
                out, lse = attention_cpu.attention_forward(q, k, v, mask, 0.25)
                grads = attention_cpu.attention_backward(dout, q, k, v, out, lse, mask, 0.25)
                results.append((out,) + grads)
        except BaseException as e:                           # pragma: no cover - reported below
            errors.append(e)
    threads = [threading.Thread(target=work) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert len(results) == 10
    for got in results:
        for name, a, e in zip(NAMES, got, ref):
            assert_close(name, a, e, atol=TOL64)
    after = [(i["filepath"], i["num_threads"]) for i in threadpool_info() if i["user_api"] == "blas"]
    assert after == before
