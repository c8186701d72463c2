"""Head importance and pruning (Michel, Levy & Neubig, 2019).

    head_importance    I_la = dLoss/dm_la at m = 1, the gradient with respect to the head
                       mask (``BertModel.backward`` returns it), summed over batches: one
                       forward and one backward per batch.
    prune_heads_curve  the loss with the k least important heads masked, k = 0 .. L*A.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..backend import to_numpy


def _batches(batch):
    if isinstance(batch, dict):
        return [batch]
    batches = list(batch)
    if not batches or not all(isinstance(b, dict) for b in batches):
        raise TypeError("batch is not a dict of model inputs (or a list of them), expected e.g. "
                        "dict(input_ids=..., attention_mask=..., masked_lm_ids=..., ...)")
    return batches


def _head_shape(model):
    cfg = model.config
    return cfg.num_hidden_layers, cfg.num_attention_heads


def head_importance(model, batch) -> np.ndarray:
    """Head importance of Michel et al. (2019): I = sum over batches of dLoss/d head_mask at
    head_mask = 1, signed (plot |I|); each batch costs one forward and one backward.

    Args:
        model: a head model whose ``forward(**batch)`` returns a loss (BertForPreTraining
            with masked_lm_ids and/or next_sentence_labels, a classifier with labels, ...).
        batch: a dict of ``forward``'s keyword arguments, or a list of them.
    Returns:
        (L, A) float64.
    """
    L, A = _head_shape(model)
    total = np.zeros((L, A))
    ones = model.xp.ones((L, A), dtype=model.dtype)
    for b in _batches(batch):
        out, cache = model.forward(**b, head_mask=ones, training=False)
        if getattr(out, "loss", None) is None:
            raise ValueError(f"batch gives {type(model).__name__} no loss, expected its labels "
                             "(masked_lm_ids, next_sentence_labels or labels)")
        total += to_numpy(model.backward(cache)["head_mask"])
    return total


@dataclass
class PruneCurve:
    """``loss[i]`` is the loss with the ``n_pruned[i]`` least important heads masked;
    ``order`` lists the heads (layer, head) from least to most important."""
    n_pruned: np.ndarray
    loss: np.ndarray
    order: list
    importance: np.ndarray


def prune_heads_curve(model, batch, importance=None, num_points: int | None = None) -> PruneCurve:
    """Mask heads in order of importance (least |I| first) and report the loss each time.

    Args:
        model, batch: as ``head_importance`` (the loss is averaged over the batches).
        importance: (L, A); None computes ``head_importance(model, batch)``.
        num_points: how many pruning levels between 0 and L*A heads (None: every level).
    """
    L, A = _head_shape(model)
    batches = _batches(batch)
    imp = head_importance(model, batches) if importance is None else to_numpy(importance)
    imp = np.asarray(imp, dtype=np.float64)
    if imp.shape != (L, A):
        raise ValueError(f"importance has shape {imp.shape}, expected {(L, A)}")
    flat = np.argsort(np.abs(imp).ravel(), kind="stable")
    levels = np.arange(L * A + 1) if num_points is None else \
        np.unique(np.linspace(0, L * A, int(num_points)).round().astype(int))
    losses = []
    for k in levels:
        m = np.ones(L * A)
        m[flat[:k]] = 0.0
        hm = model.xp.asarray(m.reshape(L, A), dtype=model.dtype)
        losses.append(np.mean([float(model(**b, head_mask=hm).loss) for b in batches]))
    order = [(int(i // A), int(i % A)) for i in flat]
    return PruneCurve(levels, np.asarray(losses), order, imp)
