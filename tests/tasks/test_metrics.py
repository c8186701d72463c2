"""GLUE's classification and regression metrics: hand-computed cases, edge cases, and
scipy / scikit-learn as independent references."""
import numpy as np
import pytest

from minibert.tasks.metrics import (
    accuracy,
    average_ranks,
    confusion_matrix,
    f1_binary,
    matthews_corrcoef,
    mse,
    pearson,
    spearman,
)


# ----------------------------------------------------------------------------- by hand
def test_hand_computed_classification():
    gold = [1, 1, 1, 0, 0, 0, 1, 0]
    pred = [1, 1, 0, 0, 1, 0, 1, 0]
    # TP=3 (0,1,6), FN=1 (2), FP=1 (4), TN=3 (3,5,7)
    assert accuracy(gold, pred) == 6 / 8
    assert f1_binary(gold, pred) == pytest.approx(2 * 3 / (2 * 3 + 1 + 1))
    assert matthews_corrcoef(gold, pred) == pytest.approx((3 * 3 - 1 * 1) / np.sqrt(4 * 4 * 4 * 4))
    np.testing.assert_array_equal(confusion_matrix(gold, pred), [[3, 1], [1, 3]])
    # F1 of the positive class only: swapping which class is positive changes it
    assert f1_binary(gold, pred, positive=0) == pytest.approx(6 / 8)
    assert f1_binary([0, 0, 1], [1, 1, 1]) == pytest.approx(2 / (2 + 2))


def test_hand_computed_multiclass_matthews():
    gold = [0, 1, 2, 2]
    pred = [0, 2, 2, 2]
    # M = [[1,0,0],[0,0,1],[0,0,2]]; t = (1,1,2), p = (1,0,3), c = 3, s = 4
    expect = (3 * 4 - (1 * 1 + 0 * 1 + 3 * 2)) / np.sqrt((16 - (1 + 0 + 9)) * (16 - (1 + 1 + 4)))
    assert matthews_corrcoef(gold, pred) == pytest.approx(expect)
    assert confusion_matrix(gold, pred, num_labels=4).shape == (4, 4)


def test_hand_computed_regression():
    gold = [1.0, 2.0, 3.0, 4.0]
    assert pearson(gold, [2.0, 4.0, 6.0, 8.0]) == pytest.approx(1.0)
    assert pearson(gold, [4.0, 3.0, 2.0, 1.0]) == pytest.approx(-1.0)
    # a monotonic but not linear map: Spearman 1, Pearson below 1
    assert spearman(gold, [1.0, 10.0, 100.0, 1000.0]) == pytest.approx(1.0)
    assert pearson(gold, [1.0, 10.0, 100.0, 1000.0]) < 0.95
    assert mse(gold, [1.0, 2.0, 3.0, 6.0]) == pytest.approx(4 / 4)
    np.testing.assert_array_equal(average_ranks([10, 20, 20, 30]), [1, 2.5, 2.5, 4])
    np.testing.assert_array_equal(average_ranks([3, 3, 3]), [2, 2, 2])


def test_edge_cases_are_defined():
    # constant predictions (the mean baseline) or constant gold: correlation 0.0, not NaN
    assert pearson([1.0, 2.0, 3.0], [0.5, 0.5, 0.5]) == 0.0
    assert spearman([1.0, 2.0, 3.0], [0.5, 0.5, 0.5]) == 0.0
    assert pearson([2.0, 2.0], [1.0, 3.0]) == 0.0
    # one class only: MCC 0.0 (as scikit-learn), accuracy still defined
    assert matthews_corrcoef([1, 1, 0], [1, 1, 1]) == 0.0
    assert matthews_corrcoef([0, 0, 0], [0, 0, 0]) == 0.0
    # no positive anywhere: F1 0.0
    assert f1_binary([0, 0], [0, 0]) == 0.0
    for f in (accuracy, f1_binary, matthews_corrcoef, pearson, spearman, mse):
        with pytest.raises(ValueError, match="empty"):
            f([], [])
        with pytest.raises(ValueError, match="same length"):
            f([1, 0], [1])
    with pytest.raises(ValueError, match="num_labels"):
        confusion_matrix([0, 3], [0, 1], num_labels=2)


# ----------------------------------------------------------------------------- references
def test_against_scipy():
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(0)
    for n in (2, 5, 40):
        x = rng.standard_normal(n)
        y = x + rng.standard_normal(n)
        assert pearson(x, y) == pytest.approx(stats.pearsonr(x, y)[0], abs=1e-12)
        assert spearman(x, y) == pytest.approx(stats.spearmanr(x, y)[0], abs=1e-12)
    # ties on both sides (STS-B gold scores are rounded): average ranks
    x = rng.integers(0, 4, 60).astype(float)
    y = np.round(x + rng.standard_normal(60), 0)
    assert spearman(x, y) == pytest.approx(stats.spearmanr(x, y)[0], abs=1e-12)
    assert pearson(x, y) == pytest.approx(stats.pearsonr(x, y)[0], abs=1e-12)
    np.testing.assert_allclose(average_ranks(y), stats.rankdata(y), rtol=0, atol=0)


def test_against_sklearn():
    skm = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(1)
    for K in (2, 3, 5):
        for n in (3, 17, 200):
            gold = rng.integers(0, K, n)
            pred = np.where(rng.random(n) < 0.6, gold, rng.integers(0, K, n))
            assert matthews_corrcoef(gold, pred) == pytest.approx(skm.matthews_corrcoef(gold, pred),
                                                                  abs=1e-12)
            assert accuracy(gold, pred) == pytest.approx(skm.accuracy_score(gold, pred))
            np.testing.assert_array_equal(confusion_matrix(gold, pred, K),
                                          skm.confusion_matrix(gold, pred, labels=range(K)))
            if K == 2:
                assert f1_binary(gold, pred) == pytest.approx(skm.f1_score(gold, pred), abs=1e-12)
    x = rng.standard_normal(30)
    y = rng.standard_normal(30)
    assert mse(x, y) == pytest.approx(skm.mean_squared_error(x, y), abs=1e-12)
