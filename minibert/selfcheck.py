"""The gradient-check table: every op (its whole Jacobian) and a tiny model (random
directions over all parameters), checked in float64 against central differences.

``run_all()`` returns one row per check; ``minibert demo`` and ``minibert gradcheck`` print
them. The checks are small and use random upstream gradients.
"""
from __future__ import annotations

from functools import partial

import numpy as np

from .config import BertConfig
from .gradcheck import check_op as _check_op
from .gradcheck import gradcheck
from .ops import attention, cross_entropy, dropout, embedding, gelu, layernorm, linear, softmax, tanh

# every entry of each op's Jacobian; a table reports failures instead of raising at the first
check_op = partial(_check_op, mode="jacobian", raise_on_failure=False)


def _op_checks(rng):
    x = rng.standard_normal((3, 5, 7))
    mask = np.array([[1, 1, 1, 1, 1, 0], [1, 1, 1, 0, 0, 0]])
    logits = rng.standard_normal((6, 5))
    return [
        ("embedding", lambda: check_op(embedding.forward, embedding.backward,
                                       {"weight": rng.standard_normal((11, 4))},
                                       kwargs={"ids": np.array([[1, 3, 3], [10, 0, 1]])})),
        ("linear", lambda: check_op(linear.forward, linear.backward,
                                    {"x": x, "weight": rng.standard_normal((4, 7)),
                                     "bias": rng.standard_normal(4)})),
        ("layernorm", lambda: check_op(layernorm.forward, layernorm.backward,
                                       {"x": x, "weight": 1 + 0.1 * rng.standard_normal(7),
                                        "bias": rng.standard_normal(7)}, kwargs={"eps": 1e-12})),
        ("gelu (erf)", lambda: check_op(gelu.forward, gelu.backward, {"x": 2 * x})),
        ("gelu (tanh)", lambda: check_op(gelu.forward, gelu.backward, {"x": 2 * x},
                                         kwargs={"approximate": "tanh"})),
        ("softmax", lambda: check_op(softmax.forward, softmax.backward, {"x": 3 * x})),
        ("tanh", lambda: check_op(tanh.forward, tanh.backward, {"x": x})),
        ("dropout (p=0.3)", lambda: check_op(dropout.forward, dropout.backward, {"x": x},
                                             kwargs={"p": 0.3, "seed": 7, "offset": 1})),
        ("cross_entropy (weighted, ignored)", lambda: check_op(
            cross_entropy.forward, cross_entropy.backward, {"logits": logits},
            kwargs={"labels": np.array([0, 4, -100, 2, 2, 1]),
                    "weights": np.array([1.0, 0.5, 1.0, 2.0, 0.0, 1.0])})),
        ("attention (mask, dropout)", lambda: check_op(
            attention.forward, attention.backward,
            {"q": rng.standard_normal((2, 2, 6, 4)), "k": rng.standard_normal((2, 2, 6, 4)),
             "v": rng.standard_normal((2, 2, 6, 4))},
            kwargs={"attention_mask": mask, "dropout_p": 0.25, "seed": 3, "training": True})),
    ]


def _model_check(rng):
    from .heads import BertForPreTraining
    cfg = BertConfig(vocab_size=31, hidden_size=12, num_hidden_layers=2, num_attention_heads=3,
                     intermediate_size=20, max_position_embeddings=16)
    model = BertForPreTraining(cfg, dtype=np.float64, seed=0)
    model.store.data[...] += rng.standard_normal(model.store.size) * 0.3
    ids = rng.integers(1, 31, size=(2, 8))
    mask = np.ones((2, 8), dtype=np.int64)
    mask[1, 5:] = 0
    args = dict(input_ids=ids, token_type_ids=(np.arange(8) >= 4).astype(np.int64)[None].repeat(2, 0),
                attention_mask=mask, masked_lm_positions=np.array([[1, 6], [2, 3]]),
                masked_lm_ids=np.array([[4, 5], [6, 7]]), next_sentence_labels=np.array([0, 1]))
    out, cache = model.forward(**args)
    grads = {k: v.copy() for k, v in model.backward(cache).items()}
    return gradcheck(lambda: model.forward(**args)[0].loss, model.params, grads,
                     mode="direction", n_directions=3, raise_on_failure=False)


def _masked_lm_check(rng):
    from .heads import BertForMaskedLM
    cfg = BertConfig(vocab_size=31, hidden_size=12, num_hidden_layers=2, num_attention_heads=3,
                     intermediate_size=20, max_position_embeddings=16)
    model = BertForMaskedLM(cfg, dtype=np.float64, seed=0)
    model.store.data[...] += rng.standard_normal(model.store.size) * 0.3
    labels = np.full((2, 8), -100)                      # Hugging Face's: -100 = not predicted
    labels[0, [1, 6]], labels[1, 3] = [4, 5], 6
    args = dict(input_ids=rng.integers(1, 31, size=(2, 8)), labels=labels)
    out, cache = model.forward(**args)
    grads = {k: v.copy() for k, v in model.backward(cache).items()}
    return gradcheck(lambda: model.forward(**args)[0].loss, model.params, grads,
                     mode="direction", n_directions=3, raise_on_failure=False)


def run_all(seed: int = 0):
    """Run every check; returns rows ``(name, max relative error, tolerance, passed)``."""
    rng = np.random.default_rng(seed)
    rows = []
    models = [("BertForPreTraining (all parameters)", lambda: _model_check(rng)),
              ("BertForMaskedLM (labels, -100 ignored)", lambda: _masked_lm_check(rng))]
    for name, check in _op_checks(rng) + models:
        report = check()
        rows.append((name, report.max_rel_err, report.rtol, report.passed))
    return rows
