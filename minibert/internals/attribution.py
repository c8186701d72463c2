"""Token attributions through ``inputs_embeds``: x = E_word[ids], (B, S, H).

    gradient_x_input      s_t = sum_h x_th dF/dx_th.
    integrated_gradients  s_t = sum_h (x - b)_th int_0^1 dF/dx_th(b + a (x - b)) da
                          (Sundararajan et al., 2017), the integral by Gauss-Legendre or the
                          trapezoid rule. Completeness: sum_t s_t = F(x) - F(b) up to the
                          quadrature error, reported as ``delta``.

``F`` is one scalar output: a masked-LM logit (position, token id) of a model with a
masked-LM head, or a class logit of sequence classification ((position, class) for token
classification).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..backend import to_numpy
from ..heads import BertForPreTraining, BertForSequenceClassification, BertForTokenClassification
from ..model import check_int_array
from ..packing import padded
from ._common import _encoder, _is_mlm, _mlm_logits


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
        kw["masked_lm_positions"] = rows[:, :1]
    with padded(model):     # a target may sit at a padded position: the padded model's output
        out, cache = model.forward(**kw)
    if kind == "mlm":
        logits = to_numpy(_mlm_logits(out))                                        # (n, 1, V)
        f = logits[r, 0, rows[:, 1]]
        d = np.zeros(logits.shape)
        d[r, 0, rows[:, 1]] = 1.0
        d = xp.asarray(d, dtype=model.dtype)
        grads = model.backward(cache, d_mlm_logits=d) if isinstance(model, BertForPreTraining) \
            else model.backward(cache, d_logits=d)
    else:
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

