"""Tests of the attention op: gradients, masks, dropout, precision, torch, errors.

Every test runs twice: on the readable (textbook) op under ``readable_ops()`` and with the
kernels on, where the op's default ``implementation="auto"`` hands NumPy float arrays to the
fused CPU kernel (tested against the textbook op in tests/kernels/test_fused_attention.py)
and CuPy float arrays to the CUDA kernel (tests/kernels/test_attention_cuda.py). Tests of
what only the textbook op keeps (the probabilities, the keep-mask) ask for it with
``implementation="eager"``.
"""
import functools
import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from minibert import rng as mrng
from minibert.gradcheck import check_op
from minibert.ops import Fused, attention
from tests.helpers import assert_close, to_np

EPS32 = float(np.finfo(np.float32).eps)


# the textbook op, whichever mode: the only one that forms the probabilities
_forward_with_probs = functools.partial(attention.forward, return_probs=True)


pytestmark = pytest.mark.usefixtures("ops_mode")    # every test on the kernels and the readable ops


def _qkv(xp, shape, dtype=np.float64, seed=0, scale=1.0):
    r = np.random.default_rng(seed)
    return tuple(xp.asarray((scale * r.standard_normal(shape)).astype(dtype)) for _ in range(3))


def _padding_mask(xp, B, S, real_lengths):
    """(B, S) int mask: the first ``real_lengths[b]`` tokens of sequence b are real."""
    m = np.zeros((B, S), dtype=np.int64)
    for b, n in enumerate(real_lengths):
        m[b, :n] = 1
    return xp.asarray(m)


def _reference(q, k, v, mask, scale, keep, p):
    """float64 NumPy reference, written differently from the op: per (b, a), softmax over the
    real keys only (selected by index, no additive mask); no real key -> zero output."""
    q, k, v = (to_np(x).astype(np.float64) for x in (q, k, v))
    B, A, S, D = q.shape
    mask = np.ones((B, S)) if mask is None else to_np(mask)
    out = np.zeros((B, A, S, D))
    probs = np.zeros((B, A, S, S))
    for b in range(B):
        idx = np.flatnonzero(mask[b] == 1)
        if idx.size == 0:
            continue
        for a in range(A):
            s = scale * q[b, a] @ k[b, a, idx].T                       # (S, n_real)
            e = np.exp(s - s.max(axis=1, keepdims=True))
            probs[b, a][:, idx] = e / e.sum(axis=1, keepdims=True)
    dropped = probs if keep is None else probs * to_np(keep) / (1.0 - p)
    for b in range(B):
        for a in range(A):
            out[b, a] = dropped[b, a] @ v[b, a]
    return out, probs


# --------------------------------------------------------------------------- gradients


# (S, D) = (7, 4), the largest check in full mode (3 x 168 elements), in the full run only
@pytest.mark.parametrize("D,S", [pytest.param(D, S, marks=pytest.mark.slow) if (S, D) == (7, 4) else (D, S)
                                 for S in (1, 7, 13) for D in (4, 16)])
@pytest.mark.parametrize("masked", [False, True], ids=["nomask", "padmask"])
@pytest.mark.parametrize("dropout", [False, True], ids=["nodrop", "dropout"])
def test_gradcheck_float64(xp, S, D, masked, dropout):
    B, A = 3, 2
    q, k, v = _qkv(xp, (B, A, S, D), seed=S * 100 + D)
    kwargs = {}
    if masked:
        # three different pad lengths: none, a third, all but one token
        kwargs["attention_mask"] = _padding_mask(xp, B, S, [S, S - S // 3, 1])
    if dropout:
        # the keep-mask is a function of (seed, offset): fixed, so the op is differentiable
        kwargs.update(dropout_p=0.3, seed=12345, offset=7, training=True)
    # tiny: an input whose gradient is exactly zero (S = 1: one key, so the softmax is the
    # constant 1 and q, k cannot change the output) is judged on an absolute scale,
    # 1e-8 x rtol = 1e-15: the fused kernel gets that zero as a difference of two sums of O(1)
    # terms (dP - rowsum(dO * O)), a few float64 roundings away from 0
    check_op(attention.forward, attention.backward, {"q": q, "k": k, "v": v},
             kwargs=kwargs, seed=S + D, tiny=1e-8)


def test_gradcheck_custom_scale(xp):
    q, k, v = _qkv(xp, (2, 2, 5, 3), seed=3)
    check_op(attention.forward, attention.backward, {"q": q, "k": k, "v": v},
             kwargs={"scale": 0.7, "attention_mask": _padding_mask(xp, 2, 5, [5, 2])})


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_all_padding_sequence_gives_exact_zeros(xp, dtype):
    B, A, S, D = 3, 2, 6, 4
    q, k, v = _qkv(xp, (B, A, S, D), dtype, seed=1, scale=3.0)
    mask = _padding_mask(xp, B, S, [6, 0, 3])                          # sequence 1: no real key
    for kw in ({}, {"dropout_p": 0.2, "seed": 9, "training": True}):
        ctx, cache = _forward_with_probs(q, k, v, attention_mask=mask, **kw)
        dctx = xp.asarray(np.random.default_rng(2).standard_normal(ctx.shape).astype(dtype))
        grads = attention.backward(dctx, cache)
        assert bool(xp.all(ctx[1] == 0)), "context of the all-padding sequence is not zero"
        assert bool(xp.all(attention.probabilities(cache)[1] == 0)), "probs of the all-padding sequence"
        for name, g in zip("qkv", grads):
            assert bool(xp.all(xp.isfinite(g))), f"d{name} is not finite"
            assert bool(xp.all(g[1] == 0)), f"d{name} of the all-padding sequence is not zero"
        # the other sequences are untouched and finite
        assert bool(xp.all(xp.isfinite(ctx)))
        rows = to_np(attention.probabilities(cache)).sum(axis=-1)                       # (B, A, S)
        np.testing.assert_allclose(rows[[0, 2]], 1.0, rtol=0, atol=8 * np.finfo(dtype).eps)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_padded_keys_do_not_change_real_outputs(xp, dtype):
    B, A, S, D, extra = 2, 3, 7, 8, 5
    q, k, v = _qkv(xp, (B, A, S + extra, D), dtype, seed=4)
    mask_long = _padding_mask(xp, B, S + extra, [S, 4])
    mask_short = mask_long[:, :S]
    dctx = xp.asarray(np.random.default_rng(5).standard_normal((B, A, S + extra, D)).astype(dtype))

    ctx_l, cache_l = _forward_with_probs(q, k, v, attention_mask=mask_long)
    ctx_s, cache_s = _forward_with_probs(q[:, :, :S], k[:, :, :S], v[:, :, :S],
                                       attention_mask=mask_short)
    # upstream gradient only at the first S queries, so the two problems are the same
    dctx[:, :, S:] = 0
    g_l = attention.backward(dctx, cache_l)
    g_s = attention.backward(dctx[:, :, :S], cache_s)

    # Same math, different summation lengths: only the rounding of sums differs (a few eps).
    tol = 16 * float(np.finfo(dtype).eps)
    assert_close("context", ctx_l[:, :, :S], ctx_s, atol=tol, rtol=tol)
    probs_l = attention.probabilities(cache_l)
    assert_close("probs", probs_l[:, :, :S, :S], attention.probabilities(cache_s), atol=tol, rtol=tol)
    assert bool(xp.all(probs_l[..., S:] == 0)), "appended padded keys got probability"
    for name, a, b in zip("qkv", g_l, g_s):
        assert_close(f"d{name}", a[:, :, :S], b, atol=tol, rtol=tol)
    for name, g in zip("kv", g_l[1:]):
        assert bool(xp.all(g[:, :, S:] == 0)), f"d{name} at padded keys is not zero"


def test_float32_matches_float64(xp):
    """float32 forward and backward against the float64 results from the same inputs.

    Tolerance: rounding errors grow like sqrt(n) eps along a chain of n sums; the longest
    chains here are the length-D score dot product and the length-S softmax sum and P V
    product, so n = S + D. A score error delta gives a relative probability error of at
    most 2 delta (dp/p = ds - <p, ds>). With inputs and outputs of order one, 8 sqrt(S + D)
    eps32 (about 5e-6 at S = 13, D = 16) bounds the float32 error with a margin for the input
    rounding, exp and the division; measured errors are 1 to 6 eps32. A wrong formula gives
    errors of order 1e-1. Gradients are compared relative to their largest entry.
    """
    B, A, S, D = 2, 3, 13, 16
    q, k, v = _qkv(xp, (B, A, S, D), np.float64, seed=6)
    dctx = xp.asarray(np.random.default_rng(7).standard_normal((B, A, S, D)))
    mask = _padding_mask(xp, B, S, [S, 5])
    kw = dict(attention_mask=mask, dropout_p=0.1, seed=3, offset=1, training=True)
    c64, cache64 = _forward_with_probs(q, k, v, **kw)
    g64 = attention.backward(dctx, cache64)
    f32 = [x.astype(np.float32) for x in (q, k, v, dctx)]
    c32, cache32 = _forward_with_probs(*f32[:3], **kw)
    g32 = attention.backward(f32[3], cache32)

    assert c32.dtype == np.float32 and all(g.dtype == np.float32 for g in g32)
    tol = 8 * math.sqrt(S + D) * EPS32
    assert_close("context", c32, c64, atol=tol, rtol=tol)
    assert_close("probs", attention.probabilities(cache32), attention.probabilities(cache64),
                 atol=tol, rtol=tol)
    for name, a, b in zip("qkv", g32, g64):
        scale = float(np.abs(to_np(b)).max())
        assert_close(f"d{name}", a, b, atol=tol * scale, rtol=tol)


def test_backward_leaves_cache_untouched_and_returns_fresh_arrays(xp):
    q, k, v = _qkv(xp, (2, 2, 5, 4), seed=8)
    mask = _padding_mask(xp, 2, 5, [5, 3])
    ctx, cache = attention.forward(q, k, v, attention_mask=mask, dropout_p=0.2, training=True)
    items = dict(enumerate(cache.saved)) if isinstance(cache, Fused) else cache   # the kernel's
    before = {key: (val.copy() if hasattr(val, "copy") else val) for key, val in items.items()}
    grads = attention.backward(xp.ones_like(ctx), cache)
    for key, val in items.items():
        if hasattr(val, "shape"):
            assert bool(xp.all(val == before[key])), f"backward wrote into cache[{key!r}]"
    cached = [val for val in items.values() if hasattr(val, "shape")]
    for name, g in zip("qkv", grads):
        assert not any(xp.may_share_memory(g, c) for c in cached), f"d{name} aliases the cache"


# --------------------------------------------------------------------------- torch


def _torch_manual(torch, q, k, v, mask, scale, keep, p):
    """softmax(q k^T scale + additive mask) v with the same all-padding rule, in torch autograd."""
    s = (q @ k.transpose(-1, -2)) * scale
    if mask is not None:
        big = torch.tensor(torch.finfo(q.dtype).min / 2, dtype=q.dtype)
        add = torch.where(mask == 1, torch.zeros((), dtype=q.dtype), big)    # (B, S)
        s = s + add[:, None, None, :]
    probs = torch.softmax(s, dim=-1)
    if mask is not None:
        probs = probs * (mask == 1).any(dim=1).to(q.dtype)[:, None, None, None]
    dropped = probs if keep is None else probs * keep / (1.0 - p)
    return dropped @ v, probs


@pytest.mark.parametrize("S,D", [(1, 4), (7, 16), (13, 8)])
@pytest.mark.parametrize("dropout", [False, True], ids=["nodrop", "dropout"])
def test_matches_torch(xp, S, D, dropout):
    """Values and gradients against torch in float64. Both sides compute the same float64
    math in different summation orders: differences are a few tens of eps64 (~1e-14), so
    1e-12 catches any wrong formula while allowing rounding."""
    torch = pytest.importorskip("torch")
    import torch.nn.functional as F

    B, A = 3, 2
    q, k, v = _qkv(xp, (B, A, S, D), seed=S + D)
    dctx = xp.asarray(np.random.default_rng(11).standard_normal((B, A, S, D)))
    lengths = [S, max(1, S - 3), 1]
    mask = _padding_mask(xp, B, S, lengths)
    kw = dict(attention_mask=mask)
    if dropout:
        kw.update(dropout_p=0.25, seed=77, offset=3, training=True)
    ctx, cache = _forward_with_probs(q, k, v, **kw)
    dq, dk, dv = attention.backward(dctx, cache)

    tq, tk, tv = (torch.tensor(to_np(x), requires_grad=True) for x in (q, k, v))
    tmask = torch.tensor(to_np(mask))
    tdctx = torch.tensor(to_np(dctx))
    scale = 1.0 / math.sqrt(D)
    keep = None
    if dropout:
        keep = torch.tensor(mrng.keep_mask((B, A, S, S), 0.25, 77, 3)).to(torch.float64)
    t_ctx, t_probs = _torch_manual(torch, tq, tk, tv, tmask, scale, keep, 0.25)
    t_ctx.backward(tdctx)
    tol = 1e-12
    assert_close("context vs torch manual", ctx, t_ctx.detach().numpy(), atol=tol, rtol=tol)
    assert_close("probs vs torch manual", attention.probabilities(cache), t_probs.detach().numpy(),
                 atol=tol, rtol=tol)
    for name, g, tg in (("dq", dq, tq.grad), ("dk", dk, tk.grad), ("dv", dv, tv.grad)):
        assert_close(f"{name} vs torch manual", g, tg.numpy(), atol=tol, rtol=tol)

    if not dropout:
        # torch's fused entry point: boolean attn_mask, True = attend (every sequence here
        # has a real key; torch's handling of all-masked rows differs between versions)
        sq, sk, sv = (torch.tensor(to_np(x), requires_grad=True) for x in (q, k, v))
        bool_mask = (tmask == 1)[:, None, None, :]                     # (B, 1, 1, S)
        s_ctx = F.scaled_dot_product_attention(sq, sk, sv, attn_mask=bool_mask)
        s_ctx.backward(tdctx)
        assert_close("context vs torch sdpa", ctx, s_ctx.detach().numpy(), atol=tol, rtol=tol)
        for name, g, tg in (("dq", dq, sq.grad), ("dk", dk, sk.grad), ("dv", dv, sv.grad)):
            assert_close(f"{name} vs torch sdpa", g, tg.numpy(), atol=tol, rtol=tol)


# --------------------------------------------------------------------------- dropout


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_dropout_uses_the_philox_keep_mask(xp, dtype):
    # v = identity makes the context equal to the dropped probabilities themselves
    B, A, S = 2, 3, 9
    q, k, _ = _qkv(xp, (B, A, S, S), dtype, seed=12)
    v = xp.broadcast_to(xp.eye(S, dtype=dtype), (B, A, S, S)).copy()
    mask = _padding_mask(xp, B, S, [S, 6])
    p, seed, offset = 0.4, 2024, 5
    ctx, cache = _forward_with_probs(q, k, v, attention_mask=mask, dropout_p=p, seed=seed,
                                   offset=offset, training=True)
    keep = mrng.keep_mask((B, A, S, S), p, seed, offset, xp)
    real = to_np(mask)[:, None, None, :].astype(bool) & np.ones((B, A, S, S), bool)
    ctx_np, keep_np, probs_np = to_np(ctx), to_np(keep), to_np(attention.probabilities(cache))
    assert np.all(ctx_np[~keep_np] == 0), "an entry was kept where keep_mask is False"
    assert np.all(ctx_np[keep_np & real] != 0), "an entry was dropped where keep_mask is True"
    expected = probs_np * keep_np / dtype(1.0 - p)
    np.testing.assert_array_equal(ctx_np, expected)
    # the cache holds the pre-dropout probabilities
    np.testing.assert_allclose(probs_np.sum(-1), 1.0, atol=8 * np.finfo(dtype).eps)

    # same seed and offset: the same bits
    ctx2, _ = _forward_with_probs(q, k, v, attention_mask=mask, dropout_p=p, seed=seed,
                                offset=offset, training=True)
    np.testing.assert_array_equal(to_np(ctx2), ctx_np)
    # another offset or seed: another mask
    for kw in ({"seed": seed, "offset": offset + 1}, {"seed": seed + 1, "offset": offset}):
        other, _ = _forward_with_probs(q, k, v, attention_mask=mask, dropout_p=p, training=True, **kw)
        assert not np.array_equal(to_np(other), ctx_np), f"{kw} gave the same dropout mask"


def test_training_false_or_p_zero_ignores_dropout(xp):
    q, k, v = _qkv(xp, (2, 2, 6, 4), seed=13)
    plain, plain_cache = _forward_with_probs(q, k, v)
    for kw in ({"dropout_p": 0.5, "seed": 1, "training": False},
               {"dropout_p": 0.0, "seed": 1, "training": True}):
        ctx, cache = _forward_with_probs(q, k, v, **kw)
        np.testing.assert_array_equal(to_np(ctx), to_np(plain))
        assert cache["keep"] is None


# --------------------------------------------------------------------------- hypothesis


@st.composite
def _problems(draw):
    B = draw(st.integers(1, 3))
    A = draw(st.integers(1, 2))
    S = draw(st.integers(1, 8))
    D = draw(st.integers(1, 8))
    mask = draw(st.lists(st.lists(st.booleans(), min_size=S, max_size=S), min_size=B, max_size=B))
    return dict(shape=(B, A, S, D), mask=np.array(mask, dtype=np.int64),
                seed=draw(st.integers(0, 2**64 - 1)), offset=draw(st.integers(0, 2**64 - 1)),
                p=draw(st.sampled_from([0.0, 0.1, 0.5, 0.9])), training=draw(st.booleans()),
                dtype=draw(st.sampled_from([np.float32, np.float64])),
                magnitude=draw(st.sampled_from([0.1, 1.0, 8.0])),
                data_seed=draw(st.integers(0, 2**32 - 1)))


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(prob=_problems())
def test_hypothesis_matches_float64_reference(xp, prob):
    B, A, S, D = prob["shape"]
    dtype, p = prob["dtype"], prob["p"]
    q, k, v = _qkv(xp, prob["shape"], dtype, seed=prob["data_seed"], scale=prob["magnitude"])
    mask = xp.asarray(prob["mask"])
    ctx, cache = _forward_with_probs(q, k, v, attention_mask=mask, dropout_p=p, seed=prob["seed"],
                                   offset=prob["offset"], training=prob["training"])
    dctx = xp.ones_like(ctx)
    grads = attention.backward(dctx, cache)
    assert ctx.dtype == dtype
    named = [("context", ctx), ("probs", attention.probabilities(cache))]
    named += list(zip(("dq", "dk", "dv"), grads))
    for name, x in named:
        assert bool(xp.all(xp.isfinite(x))), f"{name} has non-finite entries"

    dropping = prob["training"] and p > 0
    keep = mrng.keep_mask((B, A, S, S), p, prob["seed"], prob["offset"]) if dropping else None
    scale = 1.0 / math.sqrt(D)
    ref, ref_probs = _reference(q, k, v, prob["mask"], scale, keep, p)
    # Reference from the same (rounded) inputs in float64. A score error delta ~ eps |s|
    # moves each probability by at most 2 delta relatively (dp/p = ds - <p, ds>), and the
    # output by that times sum p |v| / (1 - p); sums of n = S + D terms add sqrt(n) eps.
    eps = float(np.finfo(dtype).eps)
    q64, k64 = to_np(q).astype(np.float64), to_np(k).astype(np.float64)
    s_max = float(np.abs(scale * q64 @ k64.swapaxes(-1, -2)).max())
    v_max = float(np.abs(to_np(v)).max())
    tol = 8 * math.sqrt(S + D) * eps * (1.0 + s_max)
    assert_close("probs", attention.probabilities(cache), ref_probs, atol=tol)
    assert_close("context", ctx, ref, atol=tol * v_max / (1.0 - (p if dropping else 0.0)))


# --------------------------------------------------------------------------- errors


def test_additive_mask_values_and_dtype(xp):
    m = xp.asarray(np.array([[1, 1, 0], [0, 0, 0]]))
    for dtype in (np.float16, np.float32, np.float64):
        add = attention.additive_mask(m, dtype)
        assert add.shape == (2, 1, 1, 3) and add.dtype == dtype
        big = np.finfo(dtype).min / 2
        np.testing.assert_array_equal(to_np(add)[:, 0, 0], [[0, 0, big], [big, big, big]])
        assert np.all(np.isfinite(to_np(add)))
        # adding a score just inside the promised range cannot reach -inf
        assert np.isfinite(dtype(big) - dtype(np.finfo(dtype).max / 2 * 0.99))
    # boolean masks are accepted too
    np.testing.assert_array_equal(to_np(attention.additive_mask(m == 1, np.float32)),
                                  to_np(attention.additive_mask(m, np.float32)))


def test_bad_inputs_raise(xp):
    q, k, v = _qkv(xp, (2, 2, 4, 3))
    f = attention.forward
    with pytest.raises(ValueError, match=r"q has shape \(2, 4, 3\), expected rank 4"):
        f(q[0], k, v)
    with pytest.raises(ValueError, match=r"k has shape \(2, 2, 5, 3\), expected the shape of q"):
        f(q, xp.zeros((2, 2, 5, 3)), v)
    with pytest.raises(TypeError, match=r"v has dtype float32, expected the dtype of q \(float64\)"):
        f(q, k, v.astype(np.float32))
    with pytest.raises(TypeError, match=r"q has dtype int64, expected a floating dtype"):
        f(xp.zeros((2, 2, 4, 3), dtype=np.int64), k, v)
    with pytest.raises(ValueError, match=r"attention_mask has shape \(2, 3\), expected \(B, S\) = \(2, 4\)"):
        f(q, k, v, attention_mask=xp.ones((2, 3)))
    with pytest.raises(ValueError, match=r"attention_mask contains the value -10000.0, expected only 0"):
        f(q, k, v, attention_mask=xp.asarray([[0.0, 0, 0, 0], [0, 0, -1e4, 0]]))
    for p in (1.0, -0.1, float("nan")):
        with pytest.raises(ValueError, match=r"dropout_p=.* is out of range, expected 0 <= dropout_p < 1"):
            f(q, k, v, dropout_p=p)
    with pytest.raises(TypeError, match=r"dropout_p='0.1' has type str, expected a float"):
        f(q, k, v, dropout_p="0.1")
    with pytest.raises(TypeError, match=r"scale='x' has type str, expected a real number"):
        f(q, k, v, scale="x")
    with pytest.raises(ValueError, match=r"seed=-1 is out of range"):
        f(q, k, v, dropout_p=0.1, seed=-1, training=True)
    with pytest.raises(TypeError, match=r"dtype=int32 is not a floating dtype"):
        attention.additive_mask(xp.ones((2, 4)), np.int32)
    with pytest.raises(ValueError, match=r"attention_mask has shape \(2, 1, 4\), expected \(B, S\)"):
        attention.additive_mask(xp.ones((2, 1, 4)), np.float32)
