"""Tests of the weighted softmax cross-entropy: gradients, ignore_index, weights, the empty
case, float32 against float64, torch, properties, errors."""
import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from minibert.gradcheck import check_op
from minibert.ops import Fused, cross_entropy
from tests.helpers import assert_close, to_np

EPS32 = float(np.finfo(np.float32).eps)
EPS64 = float(np.finfo(np.float64).eps)


def _problem(xp, N, C, dtype=np.float64, seed=0, scale=2.0, ignore_frac=0.0, weighted=False,
             ignore_index=-100):
    r = np.random.default_rng(seed)
    logits = xp.asarray((scale * r.standard_normal((N, C))).astype(dtype))
    labels = r.integers(0, C, N)
    labels[r.random(N) < ignore_frac] = ignore_index
    weights = xp.asarray(r.uniform(0.0, 2.0, N).astype(dtype)) if weighted else None
    return logits, xp.asarray(labels), weights


def _reference(logits, labels, weights, ignore_index=-100):
    """float64 loss written row by row, from the definition."""
    L = to_np(logits).astype(np.float64)
    lab = to_np(labels)
    w = np.ones(len(lab)) if weights is None else to_np(weights).astype(np.float64)
    num = den = 0.0
    for n in range(len(lab)):
        if lab[n] == ignore_index:
            continue
        m = L[n].max()
        lse = m + math.log(np.exp(L[n] - m).sum())
        num += w[n] * (lse - L[n, lab[n]])
        den += w[n]
    return num / den if den > 0 else 0.0


@pytest.mark.parametrize("N,C", [(1, 1), (1, 5), (7, 3), (13, 11)])
@pytest.mark.parametrize("ignore_frac,weighted", [(0.0, False), (0.3, False), (0.3, True)],
                         ids=["plain", "ignored", "ignored+weighted"])
def test_gradcheck_float64(xp, N, C, ignore_frac, weighted):
    logits, labels, weights = _problem(xp, N, C, seed=N * C, ignore_frac=ignore_frac,
                                       weighted=weighted)
    if not bool((labels != -100).any()):
        labels[0] = 0                        # keep at least one row that counts
    check_op(cross_entropy.forward, cross_entropy.backward, {"logits": logits},
             kwargs={"labels": labels, "weights": weights}, seed=N + C)


def test_gradcheck_large_logits(xp):
    logits, labels, _ = _problem(xp, 5, 7, seed=1)
    check_op(cross_entropy.forward, cross_entropy.backward, {"logits": 300.0 + logits},
             kwargs={"labels": labels})


def test_value_matches_definition(xp):
    logits, labels, weights = _problem(xp, 9, 6, seed=2, ignore_frac=0.3, weighted=True)
    loss, _ = cross_entropy.forward(logits, labels, weights)
    assert loss.shape == () and loss.dtype == np.float64
    assert abs(float(loss) - _reference(logits, labels, weights)) < 1e-14


def test_ignored_rows_have_zero_gradient(xp):
    logits, labels, _ = _problem(xp, 8, 5, seed=3)
    labels[[1, 4, 5]] = -100
    loss, cache = cross_entropy.forward(logits, labels)
    dlogits = to_np(cross_entropy.backward(1.0, cache))
    np.testing.assert_array_equal(dlogits[[1, 4, 5]], 0.0)
    assert np.all(np.abs(dlogits[[0, 2, 3, 6, 7]]).sum(1) > 0)
    # ignored rows change nothing: the same as dropping them
    keep = xp.asarray(np.array([0, 2, 3, 6, 7]))
    loss2, _ = cross_entropy.forward(logits[keep], labels[keep])
    assert abs(float(loss) - float(loss2)) < 1e-15


def test_weights_are_applied(xp):
    logits, labels, _ = _problem(xp, 6, 4, seed=4)
    w = xp.asarray(np.array([1.0, 0.0, 2.0, 1.0, 0.0, 0.5]))
    loss, cache = cross_entropy.forward(logits, labels, w)
    assert abs(float(loss) - _reference(logits, labels, w)) < 1e-14
    dlogits = to_np(cross_entropy.backward(1.0, cache))
    np.testing.assert_array_equal(dlogits[[1, 4]], 0.0)      # zero weight, zero gradient
    # integer weights are the same as repeating rows: weight 2 = the row twice
    rep = xp.asarray(np.array([0, 2, 2, 3]))
    loss_rep, _ = cross_entropy.forward(logits[rep], labels[rep])
    w2 = xp.asarray(np.array([1.0, 0.0, 2.0, 1.0, 0.0, 0.0]))
    assert abs(float(cross_entropy.forward(logits, labels, w2)[0]) - float(loss_rep)) < 1e-14


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("how", ["all_ignored", "zero_weights", "no_rows"])
def test_nothing_counts_gives_zero_loss_and_gradient(xp, dtype, how):
    # torch returns NaN here (0 / 0); minibert returns a finite 0 with zero gradient
    N = 0 if how == "no_rows" else 4
    logits, labels, _ = _problem(xp, N, 3, dtype, seed=5)
    weights = None
    if how == "all_ignored":
        labels[:] = -100
    if how == "zero_weights":
        weights = xp.zeros(N, dtype=dtype)
    loss, cache = cross_entropy.forward(logits, labels, weights)
    dlogits = cross_entropy.backward(1.0, cache)
    assert loss.shape == () and loss.dtype == dtype and float(loss) == 0.0
    assert dlogits.shape == (N, 3) and dlogits.dtype == dtype
    np.testing.assert_array_equal(to_np(dlogits), 0.0)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_extreme_logits_stay_finite(xp, dtype):
    big = float(np.finfo(dtype).max) / 4
    logits = xp.asarray(np.array([[big, 0.0, -big], [-big, big, 0.0], [0.0, 0.0, 0.0]], dtype=dtype))
    labels = xp.asarray(np.array([0, 0, 2]))
    loss, cache = cross_entropy.forward(logits, labels)
    dlogits = to_np(cross_entropy.backward(1.0, cache))
    assert np.isfinite(float(loss)) and np.all(np.isfinite(dlogits))
    # row 0 is certain and right (loss 0), row 1 certain and wrong (loss 2 big, finite here
    # only because big = max / 4), row 2 uniform (log 3)
    assert float(loss) == pytest.approx((0 + 2 * big + math.log(3)) / 3, rel=1e-6)


def test_float32_matches_float64(xp):
    N, C = 64, 97
    logits32, labels, weights32 = _problem(xp, N, C, np.float32, seed=6, scale=4.0,
                                           ignore_frac=0.2, weighted=True)
    l32, c32 = cross_entropy.forward(logits32, labels, weights32)
    l64, c64 = cross_entropy.forward(logits32.astype(np.float64), labels, weights32.astype(np.float64))
    d32 = cross_entropy.backward(np.float64(1.0), c32)      # a float64 upstream must not promote
    d64 = cross_entropy.backward(1.0, c64)
    assert l32.dtype == np.float32 and d32.dtype == np.float32
    # per row: lse of C terms is accurate to ~(|logit - max| + sqrt(C)) eps32 ~ 30 eps32 with
    # logits of scale 4; the weighted mean of N rows adds sqrt(N) eps32. The gradient is
    # w/W (p - onehot) with |w/W| <= 2/N: the same relative error on entries <= 1.
    tol = 4 * (30 + math.sqrt(C) + math.sqrt(N)) * EPS32
    assert_close("loss", l32, l64, atol=0, rtol=tol)
    assert_close("dlogits", d32, d64, atol=tol * 2 / N, rtol=tol)


@pytest.mark.parametrize("ignore_index", [-100, 2])
def test_matches_torch(xp, ignore_index):
    torch = pytest.importorskip("torch")
    N, C = 12, 7
    logits, labels, _ = _problem(xp, N, C, seed=7, ignore_frac=0.25, ignore_index=ignore_index)
    dloss = 0.7
    loss, cache = cross_entropy.forward(logits, labels, ignore_index=ignore_index)
    dlogits = cross_entropy.backward(dloss, cache)
    tl = torch.tensor(to_np(logits), requires_grad=True)
    tloss = torch.nn.functional.cross_entropy(tl, torch.tensor(to_np(labels)), ignore_index=ignore_index)
    tloss.backward(torch.tensor(dloss, dtype=torch.float64))
    tol = 1e-14       # float64 on both sides
    assert_close("loss vs torch", loss, tloss.detach().numpy(), atol=tol, rtol=tol)
    assert_close("dlogits vs torch", dlogits, tl.grad.numpy(), atol=tol, rtol=tol)


def test_weighted_matches_torch(xp):
    # torch has per-class weights, not per-row ones: build the weighted mean from reduction="none"
    torch = pytest.importorskip("torch")
    logits, labels, weights = _problem(xp, 10, 5, seed=8, ignore_frac=0.2, weighted=True)
    loss, cache = cross_entropy.forward(logits, labels, weights)
    dlogits = cross_entropy.backward(1.0, cache)
    tl = torch.tensor(to_np(logits), requires_grad=True)
    tlab = torch.tensor(to_np(labels))
    per_row = torch.nn.functional.cross_entropy(tl, tlab, reduction="none", ignore_index=-100)
    tw = torch.tensor(to_np(weights)) * (tlab != -100)
    tloss = (tw * per_row).sum() / tw.sum()
    tloss.backward()
    assert_close("loss vs torch", loss, tloss.detach().numpy(), atol=1e-14, rtol=1e-14)
    assert_close("dlogits vs torch", dlogits, tl.grad.numpy(), atol=1e-14, rtol=1e-14)


def test_question_answering_style_ignore_index(xp):
    # the QA head clamps positions to S and ignores S: ignore_index == C is valid, C + 1 is not
    logits, _, _ = _problem(xp, 3, 5, seed=9)
    labels = xp.asarray(np.array([1, 5, 4]))
    loss, _ = cross_entropy.forward(logits, labels, ignore_index=5)
    assert abs(float(loss) - _reference(logits, labels, None, ignore_index=5)) < 1e-14
    with pytest.raises(ValueError, match=r"labels contains 6"):
        cross_entropy.forward(logits, xp.asarray(np.array([1, 6, 4])), ignore_index=5)


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(N=st.integers(1, 12), C=st.integers(1, 12), seed=st.integers(0, 2**32 - 1),
       ignore_frac=st.sampled_from([0.0, 0.5, 1.0]), weighted=st.booleans(),
       scale=st.floats(0.1, 10.0))
def test_hypothesis_gradcheck_and_reference(xp, N, C, seed, ignore_frac, weighted, scale):
    logits, labels, weights = _problem(xp, N, C, seed=seed, scale=scale, ignore_frac=ignore_frac,
                                       weighted=weighted)
    loss, cache = cross_entropy.forward(logits, labels, weights)
    ref = _reference(logits, labels, weights)
    assert np.isfinite(float(loss)) and float(loss) >= 0
    assert abs(float(loss) - ref) <= 1e-13 * (1 + abs(ref))
    dlogits = to_np(cross_entropy.backward(1.0, cache))
    # each counted row's gradient sums to zero (softmax minus one-hot), ignored rows are 0
    np.testing.assert_allclose(dlogits.sum(axis=1), 0.0, atol=1e-15 * C)
    np.testing.assert_array_equal(dlogits[to_np(labels) == -100], 0.0)
    # Gradients of a confident row are ~exp(-gap), as small as the stencil's own rounding
    # error. f = dy * loss is rounded in ~4 operations and the N- and C-term sums, each to
    # eps64 relative, and each l_n = lse_n - logits[n, label] carries ~eps64 2 max|logits|;
    # the stencil divides f's error by h = 1e-3 (weights summing to < 2). The floor ``tiny``
    # = that error / rtol judges such gradients by the absolute error the stencil can
    # resolve; larger gradients are still held to the relative 1e-7.
    dy = float(np.random.default_rng(seed).standard_normal())      # check_op's own dy
    f_round = (4 + math.log2(N * C)) * EPS64 * abs(dy) * (
        1 + abs(ref) + 2 * float(np.abs(to_np(logits)).max()))
    check_op(cross_entropy.forward, cross_entropy.backward, {"logits": logits},
             kwargs={"labels": labels, "weights": weights}, seed=seed, tiny=2 * f_round / 1e-3 / 1e-7)


def test_backward_does_not_write_into_cache(xp):
    logits, labels, _ = _problem(xp, 4, 3, seed=10)
    _, cache = cross_entropy.forward(logits, labels)
    arrays = cache.saved if isinstance(cache, Fused) else cache
    before = [to_np(a).copy() for a in arrays]
    cross_entropy.backward(2.0, cache)
    for a, a0 in zip(arrays, before):
        np.testing.assert_array_equal(to_np(a), a0)


# --------------------------------------------------------------------------- errors


def test_float_labels_raise(xp):
    logits, _, _ = _problem(xp, 3, 4)
    with pytest.raises(TypeError, match=r"labels has dtype float64, expected an integer array"):
        cross_entropy.forward(logits, xp.asarray(np.array([0.0, 1.0, 2.0])))


def test_labels_shape_mismatch_raises(xp):
    logits, _, _ = _problem(xp, 3, 4)
    with pytest.raises(ValueError,
                       match=r"labels has shape \(2,\), expected \(3,\) to match logits \(3, 4\)"):
        cross_entropy.forward(logits, xp.asarray(np.array([0, 1])))
    with pytest.raises(ValueError, match=r"labels has shape \(3, 1\), expected \(3,\)"):
        cross_entropy.forward(logits, xp.asarray(np.array([[0], [1], [2]])))


@pytest.mark.parametrize("bad", [4, -1, -99])
def test_labels_out_of_range_raise(xp, bad):
    logits, _, _ = _problem(xp, 3, 4)
    with pytest.raises(ValueError, match=rf"labels contains {bad}, out of range: expected "
                                         r"0 <= labels < 4 .* or labels == ignore_index \(-100\)"):
        cross_entropy.forward(logits, xp.asarray(np.array([0, bad, 1])))


def test_logits_not_2d_raise(xp):
    with pytest.raises(ValueError, match=r"logits has shape \(2, 3, 4\), expected \(N, C\)"):
        cross_entropy.forward(xp.zeros((2, 3, 4)), xp.asarray(np.array([0, 1])))


def test_bad_weights_raise(xp):
    logits, labels, _ = _problem(xp, 3, 4)
    with pytest.raises(ValueError, match=r"weights has shape \(4,\), expected \(3,\)"):
        cross_entropy.forward(logits, labels, xp.ones(4))
    with pytest.raises(ValueError, match=r"weights contains -1.0, expected weights >= 0"):
        cross_entropy.forward(logits, labels, xp.asarray(np.array([1.0, -1.0, 1.0])))


def test_bad_ignore_index_raises(xp):
    logits, labels, _ = _problem(xp, 3, 4)
    with pytest.raises(TypeError, match=r"ignore_index=-100.0 has type float, expected an integer"):
        cross_entropy.forward(logits, labels, ignore_index=-100.0)
