"""The metrics of GLUE's classification and regression tasks, NumPy only.

Every function takes the gold values first and the predictions second, as 1-D sequences of
the same length (class ids for the classification metrics, floats for the regression ones),
and returns a Python float (``confusion_matrix``: an int64 array).

Undefined cases have one documented value each, never NaN: a correlation of a constant
sequence is 0.0 (no linear or monotonic relation can be measured; this is also the
"always predict the mean" baseline's correlation), F1 with no positive example in the gold
labels or the predictions is 0.0, Matthews correlation with a single class on either side
is 0.0 (as scikit-learn), and every metric of an empty input raises ValueError.
"""
from __future__ import annotations

import numpy as np


def _pair(gold, pred, dtype, name):
    g = np.asarray(gold, dtype=dtype)
    p = np.asarray(pred, dtype=dtype)
    if g.ndim != 1 or p.ndim != 1 or g.shape != p.shape:
        raise ValueError(f"{name}: gold has shape {g.shape} and pred {p.shape}, expected two 1-D "
                         "arrays of the same length")
    if g.size == 0:
        raise ValueError(f"{name}: gold and pred are empty, expected at least one example")
    return g, p


def accuracy(gold, pred) -> float:
    """The fraction of examples whose predicted class equals the gold class:
    ``acc = (1/N) sum_i [pred_i == gold_i]``."""
    g, p = _pair(gold, pred, np.int64, "accuracy")
    return float(np.mean(g == p))


def confusion_matrix(gold, pred, num_labels: int | None = None) -> np.ndarray:
    """``M[k, j]`` = the number of examples of gold class k predicted as class j, a
    (K, K) int64 array with ``K = num_labels`` (default: 1 + the largest id seen). Rows are
    the gold classes, columns the predictions (scikit-learn's layout)."""
    g, p = _pair(gold, pred, np.int64, "confusion_matrix")
    if g.min() < 0 or p.min() < 0:
        raise ValueError("confusion_matrix: class ids must be >= 0")
    K = int(max(g.max(), p.max())) + 1 if num_labels is None else int(num_labels)
    if max(g.max(), p.max()) >= K:
        raise ValueError(f"confusion_matrix: a class id is >= num_labels={K}")
    m = np.zeros((K, K), dtype=np.int64)
    np.add.at(m, (g, p), 1)
    return m


def f1_binary(gold, pred, positive: int = 1) -> float:
    """F1 of the positive class (class id ``positive``, 1 as MRPC and QQP report it):
    ``F1 = 2 TP / (2 TP + FP + FN)``, the harmonic mean of precision ``TP / (TP + FP)`` and
    recall ``TP / (TP + FN)``. 0.0 when ``TP + FP + FN = 0`` (no positive anywhere)."""
    g, p = _pair(gold, pred, np.int64, "f1_binary")
    tp = int(np.sum((g == positive) & (p == positive)))
    fp = int(np.sum((g != positive) & (p == positive)))
    fn = int(np.sum((g == positive) & (p != positive)))
    return 0.0 if tp + fp + fn == 0 else 2.0 * tp / (2.0 * tp + fp + fn)


def matthews_corrcoef(gold, pred, num_labels: int | None = None) -> float:
    """Matthews correlation coefficient for K classes (Gorodkin's R_K, as scikit-learn):
    with the confusion matrix M, ``t_k`` = examples of gold class k (row sums), ``p_k`` =
    examples predicted as k (column sums), ``c = trace(M)`` (correct) and ``s = N``::

        MCC = (c s - sum_k p_k t_k) / sqrt((s^2 - sum_k p_k^2) (s^2 - sum_k t_k^2))

    For two classes this is ``(TP TN - FP FN) / sqrt((TP+FP)(TP+FN)(TN+FP)(TN+FN))``. 1 is
    perfect, 0 no better than chance, -1 (two classes) always wrong. 0.0 when the
    denominator is 0 (all gold labels, or all predictions, are one class)."""
    m = confusion_matrix(gold, pred, num_labels).astype(np.float64)
    t, p = m.sum(axis=1), m.sum(axis=0)
    c, s = np.trace(m), m.sum()
    den = (s * s - p @ p) * (s * s - t @ t)
    return 0.0 if den == 0 else float((c * s - p @ t) / np.sqrt(den))


def pearson(gold, pred) -> float:
    """Pearson correlation: ``r = sum_i (x_i - mx)(y_i - my) / sqrt(sum_i (x_i - mx)^2
    sum_i (y_i - my)^2)`` with x the gold values and y the predictions (in float64).
    0.0 when either side is constant (the denominator is 0)."""
    x, y = _pair(gold, pred, np.float64, "pearson")
    dx, dy = x - x.mean(), y - y.mean()
    den = np.sqrt((dx @ dx) * (dy @ dy))
    if den == 0:
        return 0.0
    return float(np.clip((dx @ dy) / den, -1.0, 1.0))


def average_ranks(values) -> np.ndarray:
    """The ranks 1..N of ``values`` (float64), tied values sharing the mean of the ranks they
    occupy: ``[10, 20, 20, 30] -> [1, 2.5, 2.5, 4]``."""
    v = np.asarray(values, dtype=np.float64)
    order = np.argsort(v, kind="stable")
    sorted_v = v[order]
    # runs of equal values: [start, end) in sorted order; each gets the mean of start+1 .. end
    starts = np.flatnonzero(np.r_[True, sorted_v[1:] != sorted_v[:-1]])
    ends = np.r_[starts[1:], len(v)]
    ranks = np.empty(len(v), dtype=np.float64)
    for a, b in zip(starts, ends):
        ranks[order[a:b]] = (a + 1 + b) / 2.0
    return ranks


def spearman(gold, pred) -> float:
    """Spearman rank correlation: the Pearson correlation of the average ranks
    (``average_ranks``: ties get the mean of their ranks) of the gold values and of the
    predictions. 0.0 when either side is constant."""
    x, y = _pair(gold, pred, np.float64, "spearman")
    return pearson(average_ranks(x), average_ranks(y))


def mse(gold, pred) -> float:
    """Mean squared error: ``(1/N) sum_i (pred_i - gold_i)^2``."""
    x, y = _pair(gold, pred, np.float64, "mse")
    return float(np.mean((y - x) ** 2))
