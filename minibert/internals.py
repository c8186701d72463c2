"""Looking inside BERT: what the hand-written forward and backward already compute.

Every function here reads a model through its public interface (``forward``, ``backward``,
``head_mask``, ``inputs_embeds``, ``output_attentions``, ``output_hidden_states``); the
models know nothing of this module. Shapes: L layers, B batch, A heads, S tokens, H hidden,
V vocabulary, P predicted positions.

Attention
    ``attention_maps``     P_l = softmax(Q K^T / sqrt(D) + M) per layer and head, before
                           dropout: (L, B, A, S, S), rows summing to one over real keys.
    ``head_stats``         per (L, A): entropy, mass on [CLS], on [SEP], on the token itself,
                           on the previous and next token, mean attention distance.
    ``attention_rollout``  Abnar & Zuidema (2020): R = prod_l renorm(0.5 mean_a P_l + 0.5 I).

Heads (Michel, Levy & Neubig, 2019)
    ``head_importance``    I_la = dLoss/dm_la at m = 1, the gradient with respect to the
                           head mask (``BertModel.backward`` returns it), summed over batches:
                           one forward and one backward per batch.
    ``prune_heads_curve``  the loss with the k least important heads masked, k = 0 .. L*A.

Attribution (through ``inputs_embeds`` x = E_word[ids], (B, S, H))
    ``gradient_x_input``      s_t = sum_h x_th dF/dx_th.
    ``integrated_gradients``  s_t = sum_h (x - b)_th int_0^1 dF/dx_th(b + a (x - b)) da
                              (Sundararajan et al., 2017), the integral by Gauss-Legendre or
                              the trapezoid rule. Completeness: sum_t s_t = F(x) - F(b) up to
                              the quadrature error, reported as ``delta``.

``F`` is one scalar output: a masked-LM logit (position, token id) of a model with a
masked-LM head, or a class logit of sequence classification ((position, class) for token
classification).

Logit lens (nostalgebraist, 2020)
    ``logit_lens``         the masked-LM head applied to the embeddings and every layer's
                           output: (L + 1, B, P, V); the last is the model's own logits.

Training
    ``InternalsMonitor``   gradient norm, update-to-weight ratio, activation mean/std and
                           attention entropy per layer, as JSON lines (``--log-internals``).

Pictures (matplotlib, Agg) and the ``minibert inspect`` pipeline (``inspect_checkpoint``)
are at the end.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass

import numpy as np

from .backend import get_array_module, to_numpy
from .heads import (
    BertForMaskedLM,
    BertForPreTraining,
    BertForSequenceClassification,
    BertForTokenClassification,
)
from .model import check_int_array

__all__ = ["attention_maps", "head_stats", "attention_rollout", "head_importance",
           "prune_heads_curve", "PruneCurve", "gradient_x_input", "integrated_gradients",
           "Attribution", "logit_lens", "InternalsMonitor", "inspect_checkpoint"]

HEAD_STATS = ("entropy", "cls", "sep", "self", "prev", "next", "distance")


def _encoder(model):
    """The BertModel inside ``model`` (a head model's ``.bert``) or ``model`` itself."""
    return getattr(model, "bert", model)


def _mask_or_ones(attention_mask, shape):
    if attention_mask is None:
        return np.ones(shape, dtype=np.float64)
    m = to_numpy(attention_mask).astype(np.float64)
    if m.shape != tuple(shape):
        raise ValueError(f"attention_mask has shape {m.shape}, expected {tuple(shape)}")
    return m


# ------------------------------------------------------------------------------ attention
def attention_maps(model, input_ids, attention_mask=None, token_type_ids=None):
    """The attention probabilities of every layer and head, before dropout.

    Args:
        model: BertModel or any head model (its encoder is used).
        input_ids, attention_mask, token_type_ids: as ``BertModel.forward``.
    Returns:
        array (L, B, A, S, S) on the model's device: ``[l, b, a, i, j]`` is how much query i
        attends to key j. Rows sum to one over the real keys; padded keys get exactly 0.
    """
    out = _encoder(model)(input_ids, attention_mask=attention_mask,
                          token_type_ids=token_type_ids, output_attentions=True)
    return get_array_module(out.attentions[0]).stack(out.attentions)            # (L, B, A, S, S)


def _special_ids(special_ids):
    """(cls_id, sep_id) from a pair, a dict or a tokenizer; None entries: not given."""
    if special_ids is None:
        return None, None
    if hasattr(special_ids, "cls_token_id"):
        return special_ids.cls_token_id, special_ids.sep_token_id
    if isinstance(special_ids, dict):
        def pick(*keys):
            return next((special_ids[k] for k in keys if k in special_ids), None)
        return (pick("cls", "[CLS]", "cls_token_id", "cls_id"),
                pick("sep", "[SEP]", "sep_token_id", "sep_id"))
    if isinstance(special_ids, (tuple, list)) and len(special_ids) == 2:
        return special_ids[0], special_ids[1]
    raise TypeError(f"special_ids={special_ids!r} is not understood, expected (cls_id, sep_id), "
                    "a dict with 'cls' and 'sep', or a tokenizer")


def head_stats(maps, input_ids, attention_mask=None, special_ids=None) -> dict:
    """Where each head looks, averaged over the real (unpadded) query tokens of the batch.

    Args:
        maps: (L, B, A, S, S) from ``attention_maps`` (or a list of L (B, A, S, S) arrays).
        input_ids: (B, S), to find [CLS] and [SEP].
        attention_mask: (B, S), 1 = real token (None: all real).
        special_ids: (cls_id, sep_id), a dict {"cls": id, "sep": id}, or a tokenizer; None
            counts position 0 as [CLS] and each row's last real token as [SEP].
    Returns:
        dict name -> (L, A) float64 array, for the names in ``HEAD_STATS``:

        entropy   -sum_j p_ij ln p_ij (nats): 0 = one key, ln(n) = uniform over n keys
        cls, sep  sum of p_ij over the keys j holding [CLS] / [SEP]
        self      p_ii
        prev      p_i,i-1 (over queries i that have a previous real token)
        next      p_i,i+1 (over queries i that have a next real token)
        distance  sum_j p_ij |i - j|, in tokens
    """
    P = np.stack([to_numpy(m) for m in maps]) if isinstance(maps, (list, tuple)) else to_numpy(maps)
    P = P.astype(np.float64)
    if P.ndim != 5 or P.shape[-1] != P.shape[-2]:
        raise ValueError(f"maps has shape {P.shape}, expected (L, B, A, S, S)")
    L, B, A, S, _ = P.shape
    ids = to_numpy(check_int_array("input_ids", input_ids))
    if ids.shape != (B, S):
        raise ValueError(f"input_ids has shape {ids.shape}, expected {(B, S)} (the maps' B, S)")
    real = _mask_or_ones(attention_mask, (B, S))                                   # (B, S)
    cls_id, sep_id = _special_ids(special_ids)
    if cls_id is None:
        is_cls = np.zeros((B, S)); is_cls[:, 0] = 1
    else:
        is_cls = (ids == cls_id).astype(np.float64)
    if sep_id is None:
        is_sep = np.zeros((B, S))
        is_sep[np.arange(B), np.maximum(real.sum(1).astype(int) - 1, 0)] = 1
    else:
        is_sep = (ids == sep_id).astype(np.float64)
    is_sep, is_cls = is_sep * real, is_cls * real

    def mean(per_query, weight):                      # (L, B, A, S), (B, S) -> (L, A)
        return (per_query * weight[None, :, None, :]).sum(axis=(1, 3)) / max(float(weight.sum()), 1.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        plogp = np.where(P > 0, P * np.log(P), 0.0)
    i = np.arange(S)
    dist = np.abs(i[:, None] - i[None, :]).astype(np.float64)                    # (S, S)
    prev_w = np.zeros((B, S)); prev_w[:, 1:] = real[:, 1:] * real[:, :-1]
    next_w = np.zeros((B, S)); next_w[:, :-1] = real[:, :-1] * real[:, 1:]
    prev = np.zeros((L, B, A, S)); prev[..., 1:] = P[..., i[1:], i[1:] - 1]
    nxt = np.zeros((L, B, A, S)); nxt[..., :-1] = P[..., i[:-1], i[:-1] + 1]
    return {
        "entropy": mean(-plogp.sum(-1), real),
        "cls": mean(np.einsum("lbaij,bj->lbai", P, is_cls), real),
        "sep": mean(np.einsum("lbaij,bj->lbai", P, is_sep), real),
        "self": mean(P[..., i, i], real),
        "prev": mean(prev, prev_w),
        "next": mean(nxt, next_w),
        "distance": mean((P * dist).sum(-1), real),
    }


def attention_rollout(maps, attention_mask=None, all_layers: bool = False):
    """Attention rollout (Abnar & Zuidema, 2020): how much each output token draws on each
    input token through the attention of all layers, the residual counted as attention to
    oneself.

        R_0 = I;   A_l = renorm_rows(0.5 mean_a P_l + 0.5 I);   R_l = A_l R_{l-1}

    restricted to the real tokens (padded rows and columns are zero, real rows of A_l sum to
    one, so real rows of R_l do too).

    Args:
        maps: (L, B, A, S, S) from ``attention_maps`` (or a list of L (B, A, S, S)).
        attention_mask: (B, S), 1 = real token (None: all real).
        all_layers: return every R_l, (L, B, S, S), instead of the last.
    Returns:
        (B, S, S) float64: R_L[b, i, j], the share of token j in output token i.
    """
    P = np.stack([to_numpy(m) for m in maps]) if isinstance(maps, (list, tuple)) else to_numpy(maps)
    if P.ndim != 5:
        raise ValueError(f"maps has shape {P.shape}, expected (L, B, A, S, S)")
    L, B, _, S, _ = P.shape
    real = _mask_or_ones(attention_mask, (B, S))
    keep = real[:, :, None] * real[:, None, :]                                  # (B, S, S)
    R = np.broadcast_to(np.eye(S), (B, S, S)) * keep
    out = []
    for l in range(L):
        a = (0.5 * P[l].astype(np.float64).mean(axis=1) + 0.5 * np.eye(S)) * keep   # (B, S, S)
        rows = a.sum(-1, keepdims=True)
        a = np.divide(a, rows, out=np.zeros_like(a), where=rows > 0)
        R = a @ R                                                                # (B, S, S)
        out.append(R)
    return np.stack(out) if all_layers else R


# ------------------------------------------------------------------------------ heads
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


# ------------------------------------------------------------------------------ attribution
@dataclass
class Attribution:
    """Token attributions to one scalar output F per sequence.

    scores      (B, S) attribution per token (summed over H)
    f_input     (B,)   F at the input
    f_baseline  (B,)   F at the baseline (None for gradient x input)
    delta       (B,)   sum_t scores - (f_input - f_baseline): the completeness error
    """
    scores: np.ndarray
    f_input: np.ndarray
    f_baseline: np.ndarray | None = None
    delta: np.ndarray | None = None
    method: str = ""
    steps: int = 0

    @property
    def relative_delta(self):
        """|delta| / |f_input - f_baseline| per sequence."""
        return np.abs(self.delta) / np.maximum(np.abs(self.f_input - self.f_baseline), 1e-300)


def _is_mlm(model) -> bool:
    """A model with a masked-LM head (BertForPreTraining, BertForMaskedLM)."""
    return hasattr(model, "mlm_head_logits")


def _mlm_logits(out):
    """The masked-LM logits of BertForPreTraining's output (``mlm_logits``) or
    BertForMaskedLM's (``logits``)."""
    return out.mlm_logits if hasattr(out, "mlm_logits") else out.logits


def _target(model, target, B: int, S: int):
    """(kind, rows): kind "mlm" with (position, token) per row, "class" with (class,) per
    row, or "token" with (position, class) per row."""
    cfg = model.config
    if _is_mlm(model):
        kind, n_out, what = "mlm", cfg.vocab_size, "(position, token_id)"
    elif isinstance(model, BertForSequenceClassification):
        kind, n_out, what = "class", cfg.num_labels, "a class index"
    elif isinstance(model, BertForTokenClassification):
        kind, n_out, what = "token", cfg.num_labels, "(position, class)"
    else:
        raise ValueError(f"{type(model).__name__} has no masked-LM or classification logits to "
                         "attribute, expected BertForPreTraining or BertForMaskedLM, "
                         "BertForSequenceClassification or BertForTokenClassification")
    t = np.asarray(target)
    width = 1 if kind == "class" else 2
    if t.dtype.kind not in "iu" or t.shape not in ((), (width,), (B,), (B, width)) or \
            (width == 2 and t.shape in ((), (B,))) or (width == 1 and t.shape == (2,) and B != 2):
        raise ValueError(f"target={target!r} is not understood, expected {what} (or one per "
                         f"sequence) for {type(model).__name__}")
    rows = np.broadcast_to(t.reshape(-1, width) if t.ndim else t.reshape(1, 1), (B, width))
    if width == 2:
        bad = (rows[:, 0] < 0) | (rows[:, 0] >= S)
        if bad.any():
            raise ValueError(f"target position {int(rows[bad][0, 0])} is outside the sequence, "
                             f"expected 0 <= position < {S}")
    cls = rows[:, -1]
    if ((cls < 0) | (cls >= n_out)).any():
        bad = int(cls[(cls < 0) | (cls >= n_out)][0])
        noun = "token id" if kind == "mlm" else "class index"
        raise ValueError(f"target {noun} {bad} is out of range, expected 0 <= {noun} < {n_out}")
    return kind, np.ascontiguousarray(rows)


def _value_and_grad(model, embeds, rows, kind, attention_mask, token_type_ids):
    """F per row (n,) and dF/d inputs_embeds (n, S, H) for the embeddings (n, S, H); one
    forward and one backward with a one-hot upstream gradient on the target logit."""
    xp = model.xp
    n = embeds.shape[0]
    r = np.arange(n)
    kw = dict(inputs_embeds=embeds, attention_mask=attention_mask, token_type_ids=token_type_ids)
    if kind == "mlm":
        out, cache = model.forward(**kw, masked_lm_positions=rows[:, :1])
        logits = to_numpy(_mlm_logits(out))                                        # (n, 1, V)
        f = logits[r, 0, rows[:, 1]]
        d = np.zeros(logits.shape)
        d[r, 0, rows[:, 1]] = 1.0
        d = xp.asarray(d, dtype=model.dtype)
        grads = model.backward(cache, d_mlm_logits=d) if isinstance(model, BertForPreTraining) \
            else model.backward(cache, d_logits=d)
    else:
        out, cache = model.forward(**kw)
        logits = to_numpy(out.logits)                   # (n, C) or (n, S, C)
        d = np.zeros(logits.shape)
        if kind == "class":
            f = logits[r, rows[:, 0]]
            d[r, rows[:, 0]] = 1.0
        else:
            f = logits[r, rows[:, 0], rows[:, 1]]
            d[r, rows[:, 0], rows[:, 1]] = 1.0
        grads = model.backward(cache, d_logits=xp.asarray(d, dtype=model.dtype))
    return f.astype(np.float64), to_numpy(grads["inputs_embeds"]).astype(np.float64)


def _inputs(model, input_ids, attention_mask, token_type_ids):
    ids = check_int_array("input_ids", input_ids)
    B, S = ids.shape
    xp = model.xp
    if S > model.config.max_position_embeddings:
        raise ValueError(f"input_ids has sequence length {S}, longer than "
                         f"max_position_embeddings={model.config.max_position_embeddings}")
    mask = xp.ones((B, S), dtype=np.int64) if attention_mask is None else xp.asarray(attention_mask)
    tt = xp.zeros((B, S), dtype=np.int64) if token_type_ids is None else xp.asarray(token_type_ids)
    E = _encoder(model).params[_encoder(model).prefix + "embeddings.word_embeddings.weight"]
    return ids, mask, tt, E


def gradient_x_input(model, input_ids, target, attention_mask=None, token_type_ids=None):
    """Gradient x input: scores[b, t] = sum_h x[b, t, h] dF/dx[b, t, h], x = E_word[ids].

    Args:
        model: a masked-LM model (target (position, token_id)), BertForSequenceClassification
            (target: class index) or BertForTokenClassification (target (position, class));
            one target for every sequence, or one per sequence.
        input_ids, attention_mask, token_type_ids: as ``forward`` (B, S).
    Returns:
        ``Attribution`` (``f_baseline`` and ``delta`` None: no completeness here).
    """
    ids, mask, tt, E = _inputs(model, input_ids, attention_mask, token_type_ids)
    kind, rows = _target(model, target, *ids.shape)
    x = E[model.xp.asarray(ids)]                                                   # (B, S, H)
    f, g = _value_and_grad(model, x, rows, kind, mask, tt)
    return Attribution((to_numpy(x).astype(np.float64) * g).sum(-1), f, method="gradient_x_input")


def _quadrature(method: str, steps: int):
    """Nodes a_k in [0, 1] and weights w_k with sum_k w_k f(a_k) ~ int_0^1 f(a) da."""
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 1:
        raise ValueError(f"steps={steps!r} is invalid, expected a positive integer")
    if method in ("gauss-legendre", "gausslegendre", "gauss_legendre"):
        x, w = np.polynomial.legendre.leggauss(int(steps))        # on [-1, 1]
        return (x + 1) / 2, w / 2
    if method == "trapezoid":
        if steps < 2:
            raise ValueError(f"steps={steps} is too few for the trapezoid rule, expected >= 2")
        a = np.linspace(0.0, 1.0, int(steps))
        w = np.full(int(steps), 1.0 / (steps - 1))
        w[[0, -1]] /= 2
        return a, w
    raise ValueError(f"method={method!r} is unknown, expected 'gauss-legendre' or 'trapezoid'")


def integrated_gradients(model, input_ids, target, steps: int = 50, baseline="pad",
                         method: str = "gauss-legendre", attention_mask=None,
                         token_type_ids=None, internal_batch_size: int = 16) -> Attribution:
    """Integrated gradients (Sundararajan, Taly & Yan, 2017) in the word-embedding space.

        scores[b, t] = sum_h (x - x')[b, t, h] * sum_k w_k dF/dx[b, t, h] at x' + a_k (x - x')

    with x = E_word[ids] and x' the baseline; the position and segment embeddings are not
    interpolated (they are the same at both ends). By the fundamental theorem of calculus
    along the path, sum_t scores[b, t] = F(x) - F(x') up to the quadrature error: ``delta``.

    Args:
        model, input_ids, target, attention_mask, token_type_ids: as ``gradient_x_input``.
        steps: quadrature points (each one forward and one backward per sequence).
        baseline: "pad" (the [PAD] embedding, ``config.pad_token_id``, at every position),
            "zero", token ids (B, S) (e.g. [CLS] [PAD] ... [PAD] [SEP]), or embeddings (B, S, H).
        method: "gauss-legendre" (exact for polynomials of degree < 2 steps; the default) or
            "trapezoid" (``steps`` evenly spaced points, ends included).
        internal_batch_size: sequences per forward; memory stays flat in ``steps``.
    Returns:
        ``Attribution`` with ``f_input``, ``f_baseline`` and ``delta``.
    """
    ids, mask, tt, E = _inputs(model, input_ids, attention_mask, token_type_ids)
    B, S = ids.shape
    kind, rows = _target(model, target, B, S)
    alphas, weights = _quadrature(method, steps)
    if isinstance(internal_batch_size, bool) or not isinstance(internal_batch_size, int) \
            or internal_batch_size < 1:
        raise ValueError(f"internal_batch_size={internal_batch_size!r} is invalid, expected a "
                         "positive integer")
    xp = model.xp
    x = E[xp.asarray(ids)]                                                         # (B, S, H)
    base = _baseline(model, baseline, x, E)                                        # (B, S, H)
    f_in, _ = _value_and_grad(model, x, rows, kind, mask, tt)
    f_base, _ = _value_and_grad(model, base, rows, kind, mask, tt)
    # the (sequence, node) pairs, run internal_batch_size at a time
    pairs = [(b, k) for b in range(B) for k in range(len(alphas))]
    mask, tt = xp.asarray(mask), xp.asarray(tt)
    avg = np.zeros(x.shape)                                                        # (B, S, H)
    for start in range(0, len(pairs), internal_batch_size):
        bs, ks = map(np.array, zip(*pairs[start:start + internal_batch_size]))
        a = xp.asarray(alphas[ks], dtype=model.dtype)[:, None, None]
        path = base[bs] + a * (x[bs] - base[bs])                                   # (n, S, H)
        _, g = _value_and_grad(model, path, rows[bs], kind, mask[bs], tt[bs])
        np.add.at(avg, bs, weights[ks][:, None, None] * g)
    diff = to_numpy(x).astype(np.float64) - to_numpy(base).astype(np.float64)
    scores = (diff * avg).sum(-1)                                                  # (B, S)
    delta = scores.sum(-1) - (f_in - f_base)
    return Attribution(scores, f_in, f_base, delta, method, int(steps))


def _baseline(model, baseline, x, E):
    xp = model.xp
    if isinstance(baseline, str):
        if baseline == "pad":
            return xp.broadcast_to(E[model.config.pad_token_id], x.shape).astype(x.dtype)
        if baseline == "zero":
            return xp.zeros_like(x)
        raise ValueError(f"baseline={baseline!r} is unknown, expected 'pad', 'zero', token ids "
                         "(B, S) or embeddings (B, S, H)")
    b = xp.asarray(baseline)
    if b.shape == x.shape[:2] and b.dtype.kind in "iu":
        return E[b]
    if b.shape == x.shape:
        return b.astype(x.dtype)
    raise ValueError(f"baseline has shape {tuple(b.shape)}, expected token ids {x.shape[:2]} or "
                     f"embeddings {x.shape}")


# ------------------------------------------------------------------------------ logit lens
def logit_lens(model, input_ids, positions, attention_mask=None, token_type_ids=None):
    """The masked-LM head read off every layer: (L + 1, B, P, V) logits at ``positions``.

    ``[0]`` is the head applied to the embeddings' output, ``[l]`` to layer l's output;
    ``[L]`` is the model's own ``mlm_logits``, bit for bit (the same head on the same array).

    Args:
        model: a model with a masked-LM head (BertForPreTraining, BertForMaskedLM).
        positions: (B, P) or (P,) (the same for every sequence).
    """
    if not _is_mlm(model):
        raise ValueError(f"logit_lens needs a model with a masked-LM head (BertForPreTraining or "
                         f"BertForMaskedLM), "
                         f"got {type(model).__name__}")
    ids = check_int_array("input_ids", input_ids)
    B, S = ids.shape
    pos = np.asarray(to_numpy(positions))
    if pos.ndim == 1:
        pos = np.broadcast_to(pos, (B, pos.shape[0]))
    if pos.dtype.kind not in "iu" or pos.ndim != 2 or pos.shape[0] != B:
        raise ValueError(f"positions has shape {pos.shape} and dtype {pos.dtype}, expected "
                         f"integer positions (P,) or (B, P) = ({B}, P)")
    if ((pos < 0) | (pos >= S)).any():
        raise ValueError(f"positions has the value {int(pos[(pos < 0) | (pos >= S)][0])}, "
                         f"expected 0 <= position < {S}")
    pos = model.xp.asarray(np.ascontiguousarray(pos))
    out = model(ids, attention_mask=attention_mask, token_type_ids=token_type_ids,
                masked_lm_positions=pos, output_hidden_states=True)
    xp = get_array_module(_mlm_logits(out))
    return xp.stack([model.mlm_head_logits(h, pos) for h in out.hidden_states])  # (L+1, B, P, V)


# ------------------------------------------------------------------------------ training
def param_group(name: str) -> str:
    """The group a parameter is logged in: "embeddings", "layer.<l>.attention" (q, k, v and
    the output projection), "layer.<l>.ffn", "layer.<l>.layernorm", "pooler" or "head"."""
    n = name[len("bert."):] if name.startswith("bert.") else name
    if n.startswith("embeddings."):
        return "embeddings"
    if n.startswith("encoder.layer."):
        l = n.split(".")[2]
        if "LayerNorm" in n:
            return f"layer.{l}.layernorm"
        return f"layer.{l}.attention" if ".attention." in n else f"layer.{l}.ffn"
    if n.startswith("pooler."):
        return "pooler"
    return "head"


class InternalsMonitor:
    """Gradient flow during training, every ``every`` steps, as JSON lines in
    ``out_dir/internals.jsonl`` (one object per logged step) and ``internals.png``:

        grad_norm[group]      ||g|| over the group's parameters, before clipping
        update_ratio[group]   ||w_after - w_before|| / ||w_before||  (the optimizer's step)
        act_mean/act_std[l]   mean and std of layer l's output over the real tokens
                              ("embeddings" = the embeddings' output)
        attn_entropy[l]       per head, the mean entropy (nats) of the attention rows

    The trainer calls ``before_update`` after the backward and ``after_update`` after the
    optimizer step, only at the steps ``wants`` picks. The activations and entropies come
    from one extra inference forward (dropout off, eager attention) on the first
    ``rows`` sequences of the step's batch; it draws no dropout call, so resuming a run is
    as exact with the monitor as without.
    """

    FILE, PLOT = "internals.jsonl", "internals.png"

    def __init__(self, every: int, out_dir, rows: int = 2):
        if isinstance(every, bool) or not isinstance(every, (int, np.integer)) or every <= 0:
            raise ValueError(f"log_internals={every!r} is invalid, expected a positive number "
                             "of steps")
        self.every, self.out_dir, self.rows = int(every), os.fspath(out_dir), int(rows)
        self._before = None

    def wants(self, step: int) -> bool:
        """Whether optimizer step ``step`` (1-based) is logged."""
        return step % self.every == 0

    @staticmethod
    def _group_norms(store, flat):
        """Per group, the L2 norm of a flat buffer's entries (one BLAS dot per parameter)."""
        out = {}
        for name, (a, b) in store.offsets.items():
            v = flat[a:b]
            g = param_group(name)
            out[g] = out.get(g, 0.0) + float(np.dot(v, v))
        return {g: math.sqrt(v) for g, v in out.items()}

    def before_update(self, model, batch):
        store = model.store
        self._before = (np.array(to_numpy(store.data)), self._group_norms(store, to_numpy(store.grad)))

    def after_update(self, model, batch, step: int):
        store = model.store
        w0, grad_norm = self._before
        self._before = None
        upd = self._group_norms(store, to_numpy(store.data) - w0)
        wn = self._group_norms(store, w0)
        rec = dict(step=int(step), grad_norm=grad_norm,
                   update_ratio={k: upd[k] / max(wn[k], 1e-30) for k in upd})
        rec.update(self._activations(model, batch))
        os.makedirs(self.out_dir, exist_ok=True)
        with open(os.path.join(self.out_dir, self.FILE), "a", encoding="utf-8") as fh:
            fh.write(json.dumps(rec) + "\n")
        return rec

    def _activations(self, model, batch):
        from threadpoolctl import threadpool_limits
        r = slice(0, self.rows)
        mask = batch.get("attention_mask")
        mask = None if mask is None else mask[r]
        # BLAS on one thread, as the kernels hold it during a step: the eager attention's
        # small products on BLAS's own threads, next to the kernels' pool, ran up to 20x
        # slower on 2 cores (0.05-0.1 s -> 0.07-1.8 s for this probe, preset mini)
        with threadpool_limits(1, "blas"):
            out = _encoder(model)(batch["input_ids"][r], attention_mask=mask,
                                  token_type_ids=None if batch.get("token_type_ids") is None
                                  else batch["token_type_ids"][r],
                                  output_attentions=True, output_hidden_states=True)
        real = np.ones(out.hidden_states[0].shape[:2]) if mask is None else \
            to_numpy(mask).astype(np.float64)                                       # (b, S)
        n = max(real.sum(), 1.0)
        act_mean, act_std, ent = {}, {}, {}
        for l, h in enumerate(out.hidden_states):
            name = "embeddings" if l == 0 else f"layer.{l - 1}"
            x = to_numpy(h).astype(np.float64) * real[..., None]
            m = x.sum() / (n * x.shape[-1])
            act_mean[name] = float(m)
            act_std[name] = float(math.sqrt(max((x * x).sum() / (n * x.shape[-1]) - m * m, 0.0)))
        for l, p in enumerate(out.attentions):
            P = to_numpy(p).astype(np.float64)                                      # (b, A, S, S)
            with np.errstate(divide="ignore", invalid="ignore"):
                e = -np.where(P > 0, P * np.log(P), 0.0).sum(-1)                     # (b, A, S)
            ent[f"layer.{l}"] = [float(v) for v in (e * real[:, None]).sum((0, 2)) / n]
        return dict(act_mean=act_mean, act_std=act_std, attn_entropy=ent)

    def records(self) -> list:
        path = os.path.join(self.out_dir, self.FILE)
        if not os.path.isfile(path):
            return []
        with open(path, encoding="utf-8") as fh:
            by_step = {}                        # a resumed run logs its steps again: keep the last
            for line in fh:
                if line.strip():
                    rec = json.loads(line)
                    by_step[rec["step"]] = rec
        return [by_step[k] for k in sorted(by_step)]

    def close(self):
        """Draw ``internals.png`` from everything logged in the run directory so far."""
        plot_internals_log(self.records(), os.path.join(self.out_dir, self.PLOT))


# ------------------------------------------------------------------------------ pictures
def _pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _save(fig, path, dpi=100):
    from .io import atomic_write
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=dpi))
    _pyplot().close(fig)


def _token_ticks(ax, tokens, fontsize):
    """Token labels on both axes when they fit, nothing otherwise."""
    if tokens is not None and len(tokens) <= 40:
        n = np.arange(len(tokens))
        ax.set_xticks(n, tokens, rotation=90, fontsize=fontsize)
        ax.set_yticks(n, tokens, fontsize=fontsize)
    else:
        ax.set_xticks([])
        ax.set_yticks([])


def plot_attention_grid(maps, path, tokens=None):
    """Every layer (rows) and head (columns) of one sequence's maps (L, A, S, S), one PNG."""
    P = to_numpy(maps)
    L, A, S, _ = P.shape
    plt = _pyplot()
    cell = 1.6 if S <= 40 else 1.2
    fig, axes = plt.subplots(L, A, figsize=(cell * A + 0.6, cell * L + 0.6), squeeze=False)
    for l in range(L):
        for a in range(A):
            ax = axes[l, a]
            ax.imshow(P[l, a], cmap="viridis", vmin=0, vmax=1, interpolation="nearest")
            ax.set_xticks([]); ax.set_yticks([])
            if l == 0:
                ax.set_title(f"head {a}", fontsize=8)
            if a == 0:
                ax.set_ylabel(f"layer {l}", fontsize=8)
    fig.suptitle("attention probabilities (row: query token, column: key token)", fontsize=9)
    fig.tight_layout()
    _save(fig, path, dpi=80 if L * A > 64 else 100)


def plot_attention_layer(maps_l, path, tokens=None, layer=0):
    """One layer's heads (A, S, S) side by side, with the tokens on the axes when they fit."""
    P = to_numpy(maps_l)
    A, S, _ = P.shape
    plt = _pyplot()
    cols = min(A, 4)
    rows = math.ceil(A / cols)
    side = 3.2 if S <= 40 else 2.6
    fig, axes = plt.subplots(rows, cols, figsize=(side * cols, side * rows + 0.4), squeeze=False)
    for a in range(rows * cols):
        ax = axes[a // cols, a % cols]
        if a >= A:
            ax.axis("off")
            continue
        ax.imshow(P[a], cmap="viridis", vmin=0, vmax=1, interpolation="nearest")
        _token_ticks(ax, tokens, 5 if S > 20 else 7)
        ax.set_title(f"layer {layer}, head {a}", fontsize=9)
    fig.tight_layout()
    _save(fig, path)


def plot_head_heatmap(values, path, title, cmap="magma"):
    """An (L, A) table as a heatmap with the numbers written in (head importance, stats)."""
    v = np.asarray(values, dtype=np.float64)
    L, A = v.shape
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(0.6 * A + 2.2, 0.45 * L + 1.4))
    im = ax.imshow(v, cmap=cmap, aspect="auto")
    ax.set_xticks(range(A)); ax.set_yticks(range(L))
    ax.set_xlabel("head"); ax.set_ylabel("layer")
    if L * A <= 400:
        hi = np.nanmax(v) if v.size else 0
        for l in range(L):
            for a in range(A):
                ax.text(a, l, f"{v[l, a]:.2g}", ha="center", va="center", fontsize=6,
                        color="black" if v[l, a] > 0.6 * hi else "white")
    fig.colorbar(im, ax=ax)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    _save(fig, path)


def plot_attributions(tokens, rows, path):
    """Bars of token attributions, one panel per target: rows = [(title, scores (S,))]."""
    plt = _pyplot()
    S = len(tokens)
    fig, axes = plt.subplots(len(rows), 1, figsize=(max(6, 0.32 * S + 1), 2.4 * len(rows)),
                             squeeze=False)
    for ax, (title, s) in zip(axes[:, 0], rows):
        s = np.asarray(s)
        ax.bar(np.arange(S), s, color=np.where(s >= 0, "tab:red", "tab:blue"))
        ax.set_xticks(np.arange(S), tokens if S <= 80 else [""] * S, rotation=90, fontsize=7)
        ax.axhline(0, color="gray", lw=0.5)
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    _save(fig, path)


def plot_internals_log(records, path):
    """The ``--log-internals`` records as curves over steps: gradient norm and
    update/weight ratio per layer, activation std per layer, mean attention entropy."""
    if not records:
        return
    plt = _pyplot()
    steps = [r["step"] for r in records]
    groups = list(records[-1]["grad_norm"])
    fig, axes = plt.subplots(2, 2, figsize=(11, 7))
    panels = [("grad_norm", "gradient norm", True), ("update_ratio", "|update| / |weight|", True),
              ("act_std", "activation std (layer output)", False),
              ("attn_entropy", "mean attention entropy (nats)", False)]
    for ax, (key, title, log) in zip(axes.ravel(), panels):
        names = groups if key in ("grad_norm", "update_ratio") else list(records[-1][key])
        for i, g in enumerate(names):
            ys = [r[key][g] if key != "attn_entropy" else float(np.mean(r[key][g]))
                  for r in records]
            ax.plot(steps, ys, lw=1, label=g, color=plt.cm.viridis(i / max(len(names) - 1, 1)))
        if log:
            ax.set_yscale("log")
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("step")
        ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    _save(fig, path)


# ------------------------------------------------------------------------------ minibert inspect
def load_for_inspection(path, dtype=np.float32):
    """``(model, tokenizer, kind)`` for a minibert run directory (its latest checkpoint) or
    any Hugging Face BERT directory (config.json, vocab.txt, model.safetensors or
    pytorch_model.bin). ``kind`` is "mlm" when the checkpoint has a masked-LM head (loaded as
    BertForMaskedLM, from a BertForPreTraining checkpoint too), "classification" with a
    sequence classifier, else "encoder" (BertModel: attention only). The tensor names decide,
    read before any tensor."""
    from .checkpoint import has_pooler, tensor_names
    from .config import BertConfig
    from .model import BertModel
    from .tokenization import BertTokenizer
    from .train import resolve_checkpoint
    model_dir = resolve_checkpoint(path)
    if not os.path.isfile(os.path.join(model_dir, "vocab.txt")):
        raise ValueError(f"checkpoint {model_dir!r} has no vocab.txt, expected the tokenizer "
                         "next to the model")
    tokenizer = BertTokenizer.from_pretrained(model_dir)
    names = tensor_names(model_dir)
    short = {n[len("bert."):] if n.startswith("bert.") else n for n in names}
    if any(n.startswith("cls.predictions.") for n in short):
        kind, model = "mlm", BertForMaskedLM.from_pretrained(model_dir, dtype=dtype)
    elif "classifier.weight" in short:
        config = BertConfig.from_json_file(os.path.join(model_dir, "config.json"))
        kind = "classification"
        model = BertForSequenceClassification.from_pretrained(
            model_dir, dtype=dtype, num_labels=config.num_labels, new_head=not has_pooler(names))
    else:
        kind, model = "encoder", BertModel.from_pretrained(
            model_dir, dtype=dtype, add_pooling_layer=has_pooler(names))
    if len(tokenizer) > model.config.vocab_size:
        raise ValueError(f"checkpoint {model_dir!r}: vocab.txt has {len(tokenizer)} tokens but "
                         f"the model only {model.config.vocab_size}")
    return model, tokenizer, kind


def _mlm_rows(tokenizer, ids, tt, max_rows=64):
    """The text as a masked-LM batch: one row per ordinary token, that token masked and its
    id the label (at most ``max_rows`` rows, evenly spread)."""
    special = {tokenizer.cls_token_id, tokenizer.sep_token_id, tokenizer.pad_token_id,
               tokenizer.mask_token_id}
    cand = [i for i, t in enumerate(ids) if int(t) not in special]
    if len(cand) > max_rows:
        cand = [cand[int(k)] for k in np.linspace(0, len(cand) - 1, max_rows).round()]
    if not cand:
        return None
    rows = np.repeat(ids[None], len(cand), 0)
    rows[np.arange(len(cand)), cand] = tokenizer.mask_token_id
    return dict(input_ids=rows, token_type_ids=np.repeat(tt[None], len(cand), 0),
                masked_lm_positions=np.array(cand)[:, None],
                masked_lm_ids=ids[np.array(cand)][:, None])


def _chunks(batch, size=8):
    n = len(batch["input_ids"])
    return [{k: v[i:i + size] for k, v in batch.items()} for i in range(0, n, size)]


def _data_batch(path, tokenizer, model, kind, max_lines=32, seq_len=128, seed=0):
    """A held-out batch from a text file (one text per line): 15% of the ordinary tokens
    masked (masked-LM), or the predicted classes as labels (classification)."""
    if not os.path.isfile(path):
        raise ValueError(f"--data {path!r} does not exist, expected a text file, one text a line")
    with open(path, encoding="utf-8") as fh:
        lines = [l.strip() for l in fh if l.strip()][:max_lines]
    if not lines:
        raise ValueError(f"--data {path!r} has no text")
    enc = tokenizer(lines, truncation=True, max_length=min(seq_len, model.config.max_position_embeddings))
    ids, tt, mask = enc["input_ids"], enc["token_type_ids"], enc["attention_mask"]
    if kind == "classification":
        pred = np.argmax(to_numpy(model(ids, attention_mask=mask, token_type_ids=tt).logits), -1)
        return _chunks(dict(input_ids=ids, token_type_ids=tt, attention_mask=mask, labels=pred))
    rng = np.random.default_rng(seed)
    special = np.isin(ids, [tokenizer.cls_token_id, tokenizer.sep_token_id,
                            tokenizer.pad_token_id, tokenizer.mask_token_id])
    P = max(1, int(round(0.15 * ids.shape[1])))
    pos = np.zeros((len(ids), P), dtype=np.int64)
    w = np.zeros((len(ids), P))
    labels = np.zeros((len(ids), P), dtype=np.int64)
    masked = ids.copy()
    for b in range(len(ids)):
        cand = np.nonzero(~special[b])[0]
        k = min(P, max(1, int(round(0.15 * len(cand))))) if len(cand) else 0
        chosen = np.sort(rng.choice(cand, size=k, replace=False)) if k else []
        pos[b, :k], w[b, :k], labels[b, :k] = chosen, 1.0, ids[b, chosen]
        masked[b, chosen] = tokenizer.mask_token_id
    return _chunks(dict(input_ids=masked, token_type_ids=tt, attention_mask=mask,
                        masked_lm_positions=pos, masked_lm_ids=labels, masked_lm_weights=w))


def _bertviz(tokens, maps):
    """bertviz's input: the tokens and, per layer, (batch=1, heads, S, S) as nested lists (what
    ``bertviz.head_view(attention, tokens)`` takes, after ``torch.tensor``)."""
    return {"tokens": tokens,
            "attention": [np.round(to_numpy(m).astype(np.float64), 4).tolist() for m in maps],
            "format": "bertviz: attention[layer][batch][head][query][key]"}


def inspect_checkpoint(checkpoint, text, pair=None, out_dir="runs/inspect", data=None,
                       steps=50, seed=0, on_stage=lambda msg: None) -> dict:
    """Everything ``minibert inspect`` shows about one text, computed and written to
    ``out_dir`` (built in a temporary directory and moved into place: bad input writes
    nothing). Returns the report the command prints (JSON-ready).

    Files: attention_grid.png (every layer and head), attention_layer_<l>.png,
    head_stats.json, head_importance.png/.json, attributions.png/.json, logit_lens.json,
    attention.json (bertviz), report.json.
    """
    from .io import atomic_directory, atomic_write_text
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"text={text!r} is empty, expected some text")
    if pair is not None and (not isinstance(pair, str) or not pair.strip()):
        raise ValueError(f"--pair {pair!r} is empty, expected some text")
    out_dir = os.fspath(out_dir)
    if os.path.isdir(out_dir) and os.listdir(out_dir) and \
            not os.path.isfile(os.path.join(out_dir, "report.json")):
        raise ValueError(f"--out {out_dir!r} holds other files, expected a new directory (or one "
                         "an earlier inspect wrote)")
    model, tok, kind = load_for_inspection(checkpoint)
    cfg = model.config
    enc = tok(text, pair, truncation=False)
    ids, tt, mask = enc["input_ids"], enc["token_type_ids"], enc["attention_mask"]
    S = ids.shape[1]
    if S > cfg.max_position_embeddings:
        raise ValueError(f"text has {S} tokens, longer than the model's "
                         f"max_position_embeddings={cfg.max_position_embeddings}")
    tokens = tok.convert_ids_to_tokens([int(i) for i in ids[0]])
    L, A = cfg.num_hidden_layers, cfg.num_attention_heads
    report = dict(checkpoint=os.fspath(checkpoint), kind=kind, model=type(model).__name__,
                  tokens=tokens, layers=L, heads=A)
    on_stage(f"{type(model).__name__} ({kind}), L={L} A={A}, {S} tokens")
    maps = attention_maps(model, ids, mask, tt)                                # (L, 1, A, S, S)
    stats = head_stats(maps, ids, mask, tok)
    report["head_stats"] = {k: np.round(v, 5).tolist() for k, v in stats.items()}
    report["rollout_from_cls"] = np.round(attention_rollout(maps, mask)[0, 0], 5).tolist()

    # head importance: the text as a masked-LM batch, or --data
    batches = None
    if data is not None:
        if kind == "encoder":
            raise ValueError("--data needs a model with a masked-LM or classification head, "
                             f"and {report['checkpoint']!r} has none")
        batches = _data_batch(data, tok, model, kind, seed=seed)
    elif kind == "mlm":
        b = _mlm_rows(tok, ids[0], tt[0])
        batches = None if b is None else _chunks(b)
    elif kind == "classification":
        pred = np.argmax(to_numpy(model(ids, attention_mask=mask, token_type_ids=tt).logits), -1)
        batches = [dict(input_ids=ids, token_type_ids=tt, attention_mask=mask, labels=pred)]
    importance = None
    if batches:
        on_stage(f"head importance on {sum(len(b['input_ids']) for b in batches)} sequences")
        importance = head_importance(model, batches)
        report["head_importance"] = np.round(importance, 6).tolist()

    # attributions and the logit lens, per [MASK] (or the predicted class)
    report["targets"] = []
    baseline = np.where(np.isin(ids, [tok.cls_token_id, tok.sep_token_id]), ids, tok.pad_token_id)
    targets = []
    if kind == "mlm":
        mpos = [int(p) for p in np.nonzero(ids[0] == tok.mask_token_id)[0]]
        if mpos:
            out = model(ids, attention_mask=mask, token_type_ids=tt,
                        masked_lm_positions=np.array([mpos]))
            logits = to_numpy(_mlm_logits(out)[0]).astype(np.float64)[:, :len(tok)]   # (P, V)
            lens = to_numpy(logit_lens(model, ids, np.array([mpos]), mask, tt))[:, 0]  # (L+1, P, V)
            for j, p in enumerate(mpos):
                best = int(np.argmax(logits[j]))
                targets.append(dict(position=p, target=(p, best),
                                    label=f"[MASK] at {p} -> {tok.convert_ids_to_tokens(best)}"))
                table = []
                for l in range(L + 1):
                    z = lens[l, j, :len(tok)].astype(np.float64)
                    pr = np.exp(z - z.max()); pr /= pr.sum()
                    top = np.argsort(-pr, kind="stable")[:3]
                    table.append(dict(layer=("embeddings" if l == 0 else f"layer {l - 1}"),
                                      top=[(tok.convert_ids_to_tokens(int(t)), float(pr[t])) for t in top],
                                      p_final=float(pr[best])))
                targets[-1]["logit_lens"] = table
    elif kind == "classification":
        logits = to_numpy(model(ids, attention_mask=mask, token_type_ids=tt).logits[0])
        best = int(np.argmax(logits))
        targets.append(dict(position=None, target=best, label=f"class {best}"))
    for t in targets:
        on_stage(f"integrated gradients for {t['label']} ({steps} steps)")
        ig = integrated_gradients(model, ids, t["target"], steps=steps, baseline=baseline,
                                  attention_mask=mask, token_type_ids=tt)
        gx = gradient_x_input(model, ids, t["target"], attention_mask=mask, token_type_ids=tt)
        report["targets"].append(dict(
            label=t["label"], position=t["position"],
            integrated_gradients=np.round(ig.scores[0], 6).tolist(),
            gradient_x_input=np.round(gx.scores[0], 6).tolist(),
            f_input=float(ig.f_input[0]), f_baseline=float(ig.f_baseline[0]),
            delta=float(ig.delta[0]),
            relative_delta=float(ig.relative_delta[0]) if ig.f_input[0] != ig.f_baseline[0] else None,
            logit_lens=t.get("logit_lens")))

    on_stage(f"writing {out_dir}")
    parent = os.path.dirname(os.path.abspath(out_dir))
    os.makedirs(parent, exist_ok=True)
    with atomic_directory(out_dir) as tmp:
        m = to_numpy(maps)[:, 0]                                                   # (L, A, S, S)
        plot_attention_grid(m, os.path.join(tmp, "attention_grid.png"), tokens)
        for l in range(L):
            plot_attention_layer(m[l], os.path.join(tmp, f"attention_layer_{l}.png"), tokens, l)
        atomic_write_text(os.path.join(tmp, "head_stats.json"),
                          json.dumps(report["head_stats"], indent=1) + "\n")
        if importance is not None:
            plot_head_heatmap(np.abs(importance), os.path.join(tmp, "head_importance.png"),
                              "head importance |dLoss/d head_mask| (Michel et al. 2019)")
            atomic_write_text(os.path.join(tmp, "head_importance.json"),
                              json.dumps(report["head_importance"]) + "\n")
        if report["targets"]:
            plot_attributions(tokens, [(f"integrated gradients: {t['label']} "
                                        f"(sum - difference: {t['delta']:.1e})",
                                        t["integrated_gradients"]) for t in report["targets"]],
                              os.path.join(tmp, "attributions.png"))
            atomic_write_text(os.path.join(tmp, "attributions.json"),
                              json.dumps(report["targets"], indent=1) + "\n")
            if kind == "mlm":
                atomic_write_text(os.path.join(tmp, "logit_lens.json"), json.dumps(
                    [dict(label=t["label"], table=t["logit_lens"]) for t in report["targets"]],
                    indent=1) + "\n")
        atomic_write_text(os.path.join(tmp, "attention.json"),
                          json.dumps(_bertviz(tokens, [to_numpy(x) for x in maps])) + "\n")
        atomic_write_text(os.path.join(tmp, "report.json"), json.dumps(report, indent=1) + "\n")
        report["files"] = sorted(os.listdir(tmp))
    report["out_dir"] = out_dir
    return report
