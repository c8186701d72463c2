"""Tests of the fused CPU attention on packed sequences (``minibert.kernels.
fused_attention_varlen_forward`` / ``fused_attention_varlen_backward``,
minibert/kernels/attention_varlen_cpu.py).

The reference is the textbook op on the padded batch: q, k, v (A, T, D) scattered into
(B, A, S, D) zeros, ``minibert.ops.attention.forward(..., implementation="eager")`` with the
right-padded mask (training=True with dropout, the same seed, offset and start), the real
rows gathered back; the backward likewise, dout scattered with zeros at the padding. Float64
results agree with it to 1e-12 of each tensor's scale (measured: about 1e-15); float32
results against the float64 reference are held to the float32 textbook's own error (see
``test_float32_as_accurate_as_textbook``). Odd lengths, a length-1 sequence, an empty one,
several blocks (both sweeps of the backward), no padding at all, dropout at a padded length
longer than the longest sequence with start > 0, the model's strided q, k, v, thread
counts, uninitialised outputs, bad input.
"""
import math

import numba
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from minibert.gradcheck import check_op
from minibert.kernels import (
    attention_varlen_cpu,
    fused_attention_varlen_backward,
    fused_attention_varlen_forward,
)
from minibert.ops import attention, readable_ops
from tests.helpers import assert_as_accurate_as_textbook, assert_close_to_scale

NAMES = ("out", "dq", "dk", "dv")

# float64: both sides round O(1) values about S + D times (~1e-15, measured); a wrong
# kernel is off by 1e-2 or more
TOL64 = 1e-12


def _offsets(lengths):
    return np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)        # (B + 1,)


def _problem(lengths, A, D, dtype, seed=0, magnitude=1.0):
    """q, k, v, dout (A, T, D) of the packed batch and its cu_seqlens."""
    r = np.random.default_rng(seed)
    T = int(np.sum(lengths))
    q, k = (magnitude * r.standard_normal((A, T, D)) for _ in range(2))
    v, dout = (r.standard_normal((A, T, D)) for _ in range(2))
    return tuple(x.astype(dtype) for x in (q, k, v, dout)) + (_offsets(lengths),)


def _pad(x, cu, S):
    """(A, T, D) packed -> (B, A, S, D) right padded with zeros."""
    A, _, D = x.shape
    y = np.zeros((len(cu) - 1, A, S, D), dtype=x.dtype)
    for b in range(len(cu) - 1):
        y[b, :, :cu[b + 1] - cu[b]] = x[:, cu[b]:cu[b + 1]]
    return y


def _unpad(y, cu):
    """(B, A, S, D) -> (A, T, D): the real rows, in packed order."""
    return np.concatenate([y[b, :, :cu[b + 1] - cu[b]] for b in range(len(cu) - 1)], axis=1)


def _reference(q, k, v, dout, cu, S=None, scale=None, p=0.0, seed=0, offset=0, start=0):
    """(out, dq, dk, dv), each (A, T, D): the textbook op on the right-padded batch (S: the
    longest sequence for None), the padded rows dropped."""
    lengths = np.diff(cu)
    S = int(lengths.max()) if S is None else S
    mask = (np.arange(S) < lengths[:, None]).astype(np.int64)                 # (B, S)
    with readable_ops():
        out, cache = attention.forward(*(_pad(x, cu, S) for x in (q, k, v)), mask, scale, p,
                                       seed, offset, training=p > 0, implementation="eager",
                                       start=start)
        grads = attention.backward(_pad(dout, cu, S), cache)
    return tuple(_unpad(x, cu) for x in (out,) + tuple(grads))


def _packed(q, k, v, dout, cu, scale=None, p=0.0, seed=0, offset=0, **kw):
    """(out, dq, dk, dv) and lse of the packed entry points."""
    out, lse = fused_attention_varlen_forward(q, k, v, cu, scale, p, seed, offset, **kw)
    grads = fused_attention_varlen_backward(dout, q, k, v, out, lse, cu, scale, p, seed, offset,
                                            **kw)
    return (out,) + tuple(grads), lse


def _kernel(q, k, v, dout, cu, scale, p, seed, offset, **kw):
    """(out, dq, dk, dv) and lse of the kernel itself (block sizes, no entry point)."""
    out, lse = attention_varlen_cpu.attention_varlen_forward(q, k, v, cu, scale, p, seed,
                                                             offset, **kw)
    grads = attention_varlen_cpu.attention_varlen_backward(dout, q, k, v, out, lse, cu, scale, p,
                                                           seed, offset, **kw)
    return (out,) + tuple(grads), lse


def _assert_matches(got, ref, label=""):
    for name, a, e in zip(NAMES, got, ref):
        assert a.shape == e.shape, f"{name}{label}: shape {a.shape} != {e.shape}"
        assert_close_to_scale(f"{name}{label}", a, e, TOL64)


# --------------------------------------------------------------------------- against the textbook

CASES = {
    "odd": [7, 1, 13, 5, 2],                 # odd lengths, a length-1 sequence
    "no-padding": [9, 9, 9],                 # every n_b = S
    "one-sequence": [1],
    "with-empty": [4, 0, 6, 0],              # n_b = 0: no rows, no work
}


@pytest.mark.parametrize("lengths", list(CASES.values()), ids=list(CASES))
@pytest.mark.parametrize("p", [0.0, 0.3], ids=["nodrop", "dropout"])
def test_float64_matches_padded_textbook(lengths, p):
    q, k, v, dout, cu = _problem(lengths, 3, 16, np.float64, seed=len(lengths), magnitude=2.0)
    ref = _reference(q, k, v, dout, cu, p=p, seed=11, offset=2**32 + 3)
    got, lse = _packed(q, k, v, dout, cu, p=p, seed=11, offset=2**32 + 3)
    _assert_matches(got, ref)
    assert lse.shape == q.shape[:2] and lse.flags.c_contiguous


@pytest.mark.parametrize("blocks", [(1, 1), (3, 5), (4, 8), (16, 4), (200, 200)])
def test_block_sizes_do_not_change_the_function(blocks):
    """Sequences longer than the blocks: several query blocks, several key blocks (the
    online softmax's rescaling, the backward's two sweeps) and ragged last blocks."""
    block_q, block_k = blocks
    q, k, v, dout, cu = _problem([23, 1, 17, 8], 2, 8, np.float64, seed=2, magnitude=3.0)
    ref = _reference(q, k, v, dout, cu, S=30, scale=0.25, p=0.2, seed=4, offset=1, start=7)
    got, _ = _kernel(q, k, v, dout, cu, 0.25, 0.2, 4, 1, seq_len=30, start=7, block_q=block_q,
                     block_k=block_k)
    _assert_matches(got, ref, f" (blocks {blocks})")


def test_lse_is_the_log_sum_exp_of_each_sequences_scores():
    q, k, v, _, cu = _problem([5, 1, 12], 2, 8, np.float64, seed=3, magnitude=3.0)
    _, lse = fused_attention_varlen_forward(q, k, v, cu, None)
    for b in range(len(cu) - 1):
        t0, t1 = cu[b], cu[b + 1]
        s = q[:, t0:t1] @ k[:, t0:t1].transpose(0, 2, 1) / math.sqrt(8)       # (A, n, n)
        top = s.max(axis=-1, keepdims=True)
        ref = (top + np.log(np.exp(s - top).sum(axis=-1, keepdims=True)))[..., 0]
        assert_close_to_scale(f"lse of sequence {b}", lse[:, t0:t1], ref, TOL64)


# --------------------------------------------------------------------------- dropout


def test_dropout_uses_the_padded_batchs_bits():
    """Dropout at a padded length S longer than the longest sequence and a start > 0: the
    probabilities keep the element index ((b A + a) S + i) S + j of the padded batch. Another
    seq_len, start, seed or offset gives other bits (a different output)."""
    q, k, v, dout, cu = _problem([6, 11, 1, 4], 3, 8, np.float64, seed=4)
    S, start = 16, 3 * 4 * 3 * 16 * 16 + 5              # rows 3.. of a larger batch, plus 5
    for seed, offset in ((1, 0), (2**40 + 7, 5), (3, 2**63 + 1)):
        ref = _reference(q, k, v, dout, cu, S=S, p=0.4, seed=seed, offset=offset, start=start)
        got, _ = _packed(q, k, v, dout, cu, p=0.4, seed=seed, offset=offset, seq_len=S,
                         start=start)
        _assert_matches(got, ref, f" (seed={seed}, offset={offset})")
    out = fused_attention_varlen_forward(q, k, v, cu, None, 0.4, 1, 0, seq_len=S, start=start)[0]
    for kw in (dict(seq_len=S + 1, start=start), dict(seq_len=S, start=start + 1),
               dict(seq_len=S, start=start, seed=2), dict(seq_len=S, start=start, offset=1)):
        args = dict(seed=1, offset=0) | kw
        other = fused_attention_varlen_forward(q, k, v, cu, None, 0.4, **args)[0]
        assert np.abs(other - out).max() > 0.1, kw
    # p = 0 is no dropout at all, whatever the seed
    got, _ = _packed(q, k, v, dout, cu, p=0.0, seed=123, offset=9, seq_len=S, start=start)
    _assert_matches(got, _reference(q, k, v, dout, cu))


# --------------------------------------------------------------------------- float32


@pytest.mark.parametrize("p", [0.0, 0.2], ids=["nodrop", "dropout"])
def test_float32_as_accurate_as_textbook(p):
    """float32 against the float64 reference. The kernel and the float32 textbook compute
    the same sums (D-term dot products for the scores, n_b-term sums for the softmax and
    the products with V and dO, the same exp up to 0.6 ulp) in different orders, so their
    errors are sums of the same number of float32 roundings of the same values: in norm they
    agree up to a spread that shrinks with the tensor's size. Held to 1.25 times the
    textbook's RMS error, tensor by tensor (the bound of the padded kernel's tests, whose
    docstring gives the measured spread: ratios 0.97 to 1.10); padding adds nothing to the
    textbook's error (its terms are exact zeros). A kernel that lost accuracy
    systematically (a stored rounding reused, a worse summation) fails it."""
    lengths = [97, 1, 64, 33, 128]
    q, k, v, dout, cu = _problem(lengths, 2, 32, np.float32, seed=5, magnitude=2.0)
    kw = dict(S=130, p=p, seed=7, offset=5, start=11)
    ref = _reference(*(x.astype(np.float64) for x in (q, k, v, dout)), cu, **kw)
    book = _reference(q, k, v, dout, cu, **kw)
    got, lse = _packed(q, k, v, dout, cu, p=p, seed=7, offset=5, seq_len=130, start=11)
    assert lse.dtype == np.float32
    assert_as_accurate_as_textbook("varlen", NAMES, got, book, ref, factor=1.25)


# --------------------------------------------------------------------------- layouts


def _split_qkv(qkv, A):
    """The model's split of its (T, 3H) product: three (A, T, D) views, strides (D, 3H, 1)."""
    T, H3 = qkv.shape
    return tuple(qkv.reshape(T, 3, A, H3 // (3 * A)).transpose(1, 2, 0, 3))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_strided_views_of_the_models_product(dtype):
    """q, k, v as views of one (T, 3H) matrix and dout as a view of (T, H): taken as they
    are (no copy) and giving the results of contiguous copies (float64: the reference)."""
    lengths, A, D = [5, 12, 1, 7], 3, 8
    r = np.random.default_rng(6)
    T = sum(lengths)
    qkv = r.standard_normal((T, 3 * A * D)).astype(dtype)
    q, k, v = _split_qkv(qkv, A)
    assert q.strides == (D * q.itemsize, 3 * A * D * q.itemsize, q.itemsize)
    dout = r.standard_normal((T, A * D)).astype(dtype).reshape(T, A, D).transpose(1, 0, 2)
    for x in (q, k, v, dout):
        assert attention_varlen_cpu._blas_operand(x) is x              # no copy
    cu = _offsets(lengths)
    got, _ = _packed(q, k, v, dout, cu, p=0.1, seed=3, seq_len=14)
    contiguous = tuple(np.ascontiguousarray(x) for x in (q, k, v, dout))
    plain, _ = _packed(*contiguous, cu, p=0.1, seed=3, seq_len=14)
    if dtype == np.float64:
        _assert_matches(got, _reference(*contiguous, cu, S=14, p=0.1, seed=3))
    for name, a, e in zip(NAMES, got, plain):
        assert_close_to_scale(name, a, e, 4 * np.finfo(dtype).eps)
    # an array whose last axis is not unit-stride is copied once, then computed alike
    q_f = np.asfortranarray(contiguous[0])
    assert attention_varlen_cpu._blas_operand(q_f) is not q_f
    out_f, _ = fused_attention_varlen_forward(q_f, *contiguous[1:3], cu, None, 0.1, 3, seq_len=14)
    assert_close_to_scale("out (Fortran q)", out_f, plain[0], 4 * np.finfo(dtype).eps)


def test_outputs_merge_into_the_models_layout_without_a_copy():
    """out is a view of a C-contiguous (T, A, D) buffer and dq, dk, dv views of one
    (T, 3, A, D) buffer: ``merged_heads`` gives (T, H) and (T, 3H) as views of them, equal
    to the copy it makes of any other (A, T, D) arrays."""
    q, k, v, dout, cu = _problem([4, 9, 2], 2, 8, np.float64, seed=7)
    (out, dq, dk, dv), _ = _packed(q, k, v, dout, cu)
    T, H = q.shape[1], 2 * 8
    merged = attention_varlen_cpu.merged_heads(out)
    assert merged.shape == (T, H) and np.shares_memory(merged, out)
    assert np.array_equal(merged, out.transpose(1, 0, 2).reshape(T, H))
    dqkv = attention_varlen_cpu.merged_heads(dq, dk, dv)
    assert dqkv.shape == (T, 3 * H) and np.shares_memory(dqkv, dq) and dqkv.flags.c_contiguous
    copies = [np.ascontiguousarray(x) for x in (dq, dk, dv)]
    expected = attention_varlen_cpu.merged_heads(*copies)
    assert not np.shares_memory(expected, copies[0])
    assert np.array_equal(dqkv, expected)
    assert np.array_equal(_split_qkv(dqkv, 2)[1], dk)                   # the model's split back
    # parts in another order are not the buffer's layout: copied, in the order given
    swapped = attention_varlen_cpu.merged_heads(dk, dq, dv)
    assert not np.shares_memory(swapped, dq)
    assert np.array_equal(_split_qkv(swapped, 2)[0], dk)


# --------------------------------------------------------------------------- threads, every element


@pytest.mark.skipif(numba.config.NUMBA_NUM_THREADS < 2, reason="needs 2 Numba threads")
def test_one_and_two_threads_give_the_same_bits(monkeypatch):
    """No element is written by two tasks and no sum crosses tasks: 1 and 2 threads agree
    bit for bit (many tasks per call, several blocks, dropout)."""
    monkeypatch.setattr(attention_varlen_cpu, "MIN_PARALLEL_WORK", 0)     # no serial shortcut
    q, k, v, dout, cu = _problem([13, 1, 29, 6, 17, 2], 3, 16, np.float32, seed=3)
    kw = dict(seq_len=32, start=3, block_q=8, block_k=16)
    threads = numba.get_num_threads()
    results = []
    try:
        for n in (1, 2):
            numba.set_num_threads(n)
            got, lse = _kernel(q, k, v, dout, cu, 0.25, 0.1, 5, 6, **kw)
            results.append(got + (lse,))
    finally:
        numba.set_num_threads(threads)
    for name, a, b in zip(NAMES + ("lse",), *results):
        assert np.array_equal(a, b), f"{name}: 2 threads differ from 1 thread"


@pytest.mark.parametrize("blocks", [(128, 512), (4, 8)])
def test_every_output_element_is_written(monkeypatch, blocks):
    """out, lse, dq, dk, dv are allocated uninitialised: with NaN-filled buffers the results
    still equal the reference, and no NaN is left (an empty sequence included)."""
    monkeypatch.setattr(attention_varlen_cpu, "_uninitialised",
                        lambda shape, dtype: np.full(shape, np.nan, dtype=dtype))
    q, k, v, dout, cu = _problem([11, 0, 1, 14], 2, 8, np.float64, seed=7)
    got, lse = _kernel(q, k, v, dout, cu, 1 / math.sqrt(8), 0.1, 2, 3, seq_len=20,
                       block_q=blocks[0], block_k=blocks[1])
    assert not np.isnan(lse).any()
    _assert_matches(got, _reference(q, k, v, dout, cu, S=20, p=0.1, seed=2, offset=3))


def test_no_tokens_at_all():
    """T = 0 (every sequence empty): empty outputs, nothing computed."""
    q, k, v, dout, cu = _problem([0, 0], 2, 4, np.float32)
    (out, dq, dk, dv), lse = _packed(q, k, v, dout, cu, seq_len=3)
    assert out.shape == dq.shape == (2, 0, 4) and lse.shape == (2, 0)


# --------------------------------------------------------------------------- gradients, hypothesis


def _op_forward(q, k, v, cu=None, dropout_p=0.0, seed=0, offset=0):
    out, lse = fused_attention_varlen_forward(q, k, v, cu, None, dropout_p, seed, offset,
                                              seq_len=9, start=2)
    return out, (q, k, v, out, lse, cu, None, dropout_p, seed, offset)


def _op_backward(dout, cache):
    return fused_attention_varlen_backward(dout, *cache, seq_len=9, start=2)


@pytest.mark.parametrize("p", [0.0, 0.3], ids=["nodrop", "dropout"])
def test_gradcheck_float64(p):
    q, k, v, _, cu = _problem([3, 1, 4], 2, 3, np.float64, seed=6)
    report = check_op(_op_forward, _op_backward, {"q": q, "k": k, "v": v},
                      kwargs=dict(cu=cu, dropout_p=p, seed=12345, offset=2**33), seed=1)
    assert report.passed and report.max_rel_err <= 1e-7


@st.composite
def _cases(draw):
    lengths = draw(st.lists(st.integers(0, 30), min_size=1, max_size=4))
    return dict(lengths=lengths, A=draw(st.integers(1, 3)), D=draw(st.integers(1, 12)),
                extra=draw(st.integers(0, 5)), p=draw(st.sampled_from([0.0, 0.1, 0.6])),
                seed=draw(st.integers(0, 2**64 - 1)), offset=draw(st.integers(0, 2**64 - 1)),
                start=draw(st.integers(0, 2**40)),
                block_q=draw(st.sampled_from([1, 4, 64])), block_k=draw(st.sampled_from([2, 7, 128])),
                data_seed=draw(st.integers(0, 2**32 - 1)))


@given(case=_cases())
def test_hypothesis_float64_matches_padded_textbook(case):
    lengths = case["lengths"]
    if max(lengths) == 0:
        lengths = lengths + [1]
    q, k, v, dout, cu = _problem(lengths, case["A"], case["D"], np.float64,
                                 seed=case["data_seed"], magnitude=2.0)
    S = max(lengths) + case["extra"]
    kw = dict(p=case["p"], seed=case["seed"], offset=case["offset"], start=case["start"])
    ref = _reference(q, k, v, dout, cu, S=S, **kw)
    got, _ = _kernel(q, k, v, dout, cu, 1.0 / math.sqrt(case["D"]), case["p"], case["seed"],
                     case["offset"], seq_len=S, start=case["start"], block_q=case["block_q"],
                     block_k=case["block_k"])
    _assert_matches(got, ref)


# --------------------------------------------------------------------------- bad input


def test_bad_inputs_raise():
    q, k, v, dout, cu = _problem([3, 2], 2, 4, np.float64)
    out, lse = fused_attention_varlen_forward(q, k, v, cu, None)
    f = fused_attention_varlen_forward

    def b(**kw):
        args = dict(dout=dout, q=q, k=k, v=v, out=out, lse=lse, cu_seqlens=cu, scale=None)
        args.update(kw)
        return fused_attention_varlen_backward(**args)

    with pytest.raises(ValueError, match=r"q has shape \(1, 2, 5, 4\), expected rank 3 \(A, T, D\)"):
        f(q[None], k, v, cu, None)
    with pytest.raises(ValueError, match=r"k has shape \(2, 6, 4\), expected the shape of q"):
        f(q, np.zeros((2, 6, 4)), v, cu, None)
    with pytest.raises(TypeError, match=r"v has dtype float32, expected the dtype of q \(float64\)"):
        f(q, k, v.astype(np.float32), cu, None)
    with pytest.raises(TypeError, match=r"q has dtype float16, expected float32 or float64"):
        f(*(x.astype(np.float16) for x in (q, k, v)), cu, None)
    with pytest.raises(TypeError, match=r"q has type list, expected a NumPy or CuPy array"):
        f(q.tolist(), k, v, cu, None)
    with pytest.raises(TypeError, match=r"cu_seqlens has type list, expected a NumPy array"):
        f(q, k, v, [0, 3, 5], None)
    with pytest.raises(TypeError, match=r"cu_seqlens has dtype float64, expected an integer dtype"):
        f(q, k, v, cu.astype(np.float64), None)
    with pytest.raises(TypeError, match=r"cu_seqlens has dtype bool"):
        f(q, k, v, np.array([False, True]), None)
    with pytest.raises(ValueError, match=r"cu_seqlens has shape \(1, 3\), expected \(B \+ 1,\)"):
        f(q, k, v, cu[None], None)
    with pytest.raises(ValueError, match=r"cu_seqlens has shape \(1,\), expected \(B \+ 1,\) with B >= 1"):
        f(q, k, v, np.array([0]), None)
    with pytest.raises(ValueError, match=r"cu_seqlens\[0\] = 1, expected 0"):
        f(q, k, v, np.array([1, 3, 5]), None)
    with pytest.raises(ValueError, match=r"cu_seqlens decreases at index 2 \(4 -> 3\)"):
        f(q, k, v, np.array([0, 4, 3, 5]), None)
    with pytest.raises(ValueError, match=r"cu_seqlens\[-1\] = 4, expected T = 5"):
        f(q, k, v, np.array([0, 3, 4]), None)
    with pytest.raises(ValueError, match=r"seq_len=2 is shorter than the longest sequence \(3 tokens\)"):
        f(q, k, v, cu, None, seq_len=2)
    with pytest.raises(TypeError, match=r"seq_len=3.0 has type float, expected an integer or None"):
        f(q, k, v, cu, None, seq_len=3.0)
    with pytest.raises(ValueError, match=r"dropout_p=1.0 is out of range, expected 0 <= dropout_p < 1"):
        f(q, k, v, cu, None, 1.0)
    with pytest.raises(ValueError, match=r"scale=nan is not finite"):
        f(q, k, v, cu, float("nan"))
    with pytest.raises(ValueError, match=r"seed=-1 is out of range"):
        f(q, k, v, cu, None, 0.1, -1)
    with pytest.raises(ValueError, match=r"offset=18446744073709551616 is out of range"):
        f(q, k, v, cu, None, 0.1, 0, 2**64)
    with pytest.raises(ValueError, match=r"start=-1 is out of range"):
        f(q, k, v, cu, None, start=-1)
    with pytest.raises(ValueError, match=r"block_q=0 is invalid, expected a positive integer"):
        attention_varlen_cpu.attention_varlen_forward(q, k, v, cu, 0.5, seq_len=3, block_q=0)
    # backward: the same checks, and lse, out and dout
    with pytest.raises(ValueError, match=r"lse has shape \(2,\), expected \(A, T\) = \(2, 5\)"):
        b(lse=lse[:, 0])
    with pytest.raises(TypeError, match=r"lse has dtype float32, expected the dtype of q"):
        b(lse=lse.astype(np.float32))
    with pytest.raises(ValueError, match=r"lse with strides .* is not C-contiguous"):
        b(lse=np.asfortranarray(lse))
    with pytest.raises(ValueError, match=r"dout has shape \(2, 5, 2\), expected the shape of q"):
        b(dout=dout[..., :2])
    with pytest.raises(TypeError, match=r"out has dtype float32, expected the dtype of q"):
        b(out=out.astype(np.float32))
    with pytest.raises(ValueError, match=r"cu_seqlens\[-1\] = 6, expected T = 5"):
        b(cu_seqlens=np.array([0, 3, 6]))
    with pytest.raises(ValueError, match=r"seq_len=1 is shorter"):
        b(seq_len=1)


def _fake_gpu_array(shape, dtype):
    """An object that ``minibert.backend.is_device_array`` takes for a CuPy array."""
    attrs = {"__module__": "cupy._core.core", "shape": shape, "ndim": len(shape),
             "dtype": np.dtype(dtype)}
    return type("ndarray", (), attrs)()


def test_gpu_arrays_never_reach_the_cpu_kernel():
    q, k, v, dout, cu = _problem([2, 1], 1, 2, np.float32)
    fake = _fake_gpu_array(q.shape, q.dtype)
    with pytest.raises(TypeError, match=r"k is a GPU array .* while q is a NumPy array"):
        fused_attention_varlen_forward(q, fake, v, cu, None)
    with pytest.raises(TypeError, match=r"cu_seqlens is a GPU array .* while q is a NumPy array"):
        fused_attention_varlen_forward(q, k, v, _fake_gpu_array(cu.shape, cu.dtype), None)
    with pytest.raises(TypeError, match=r"k has type numpy.ndarray, expected a GPU array"):
        fused_attention_varlen_backward(dout, fake, k, v, q, q[..., 0], cu, None)


def test_gpu_arrays_go_to_the_cuda_launcher(monkeypatch):
    """GPU arrays are validated and handed to ``attention_cuda_launch.varlen_forward`` /
    ``varlen_backward`` with the same arguments: scalars checked and typed, seq_len
    resolved to the longest sequence, cu_seqlens as given."""
    import minibert.kernels as kernels
    from minibert.kernels import attention_cuda_launch
    calls = []
    monkeypatch.setattr(kernels, "cuda_kernels_available", lambda: True)
    monkeypatch.setattr(attention_cuda_launch, "varlen_forward",
                        lambda *a, **kw: calls.append(("forward", a, kw)) or "fwd", raising=False)
    monkeypatch.setattr(attention_cuda_launch, "varlen_backward",
                        lambda *a, **kw: calls.append(("backward", a, kw)) or "bwd", raising=False)
    q = _fake_gpu_array((2, 7, 4), np.float32)
    lse = _fake_gpu_array((2, 7), np.float32)
    cu = np.array([0, 5, 7])
    assert fused_attention_varlen_forward(q, q, q, cu, None, 0.1, 3, 4, start=9) == "fwd"
    assert fused_attention_varlen_backward(q, q, q, q, q, lse, cu, 0.5, seq_len=8) == "bwd"
    (_, fa, fkw), (_, ba, bkw) = calls
    assert fa[:4] == (q, q, q, cu) and fa[4:] == (0.5, 0.1, 3, 4)
    assert fkw == dict(seq_len=5, start=9)
    assert ba[:7] == (q, q, q, q, q, lse, cu) and ba[7:] == (0.5, 0.0, 0, 0)
    assert bkw == dict(seq_len=8, start=0)
    with pytest.raises(ValueError, match=r"cu_seqlens\[-1\] = 7, expected T = 6"):
        fused_attention_varlen_forward(*(_fake_gpu_array((2, 6, 4), np.float32),) * 3, cu, None)
    with pytest.raises(ValueError, match=r"lse has shape \(7,\), expected \(A, T\) = \(2, 7\)"):
        fused_attention_varlen_backward(q, q, q, q, q, _fake_gpu_array((7,), np.float32), cu, None)
