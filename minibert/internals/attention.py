"""Attention maps and where each head looks.

    attention_maps     P_l = softmax(Q K^T / sqrt(D) + M) per layer and head, before dropout:
                       (L, B, A, S, S), rows summing to one over the real keys.
    head_stats         per (L, A): entropy, mass on [CLS], on [SEP], on the token itself, on
                       the previous and next token, mean attention distance.
    attention_rollout  Abnar & Zuidema (2020): R = prod_l renorm(0.5 mean_a P_l + 0.5 I).

Shapes: L layers, B batch, A heads, S tokens.
"""
from __future__ import annotations

import numpy as np

from ..backend import get_array_module, to_numpy
from ..model import check_int_array
from ._common import _encoder, _mask_or_ones, _stack_maps

HEAD_STATS = ("entropy", "cls", "sep", "self", "prev", "next", "distance")


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


def _cls_sep_keys(ids, real, special_ids):
    """Float (B, S) indicators of the keys holding [CLS] and [SEP], real tokens only. Without
    ids, position 0 is [CLS] and each row's last real token is [SEP]."""
    B, S = ids.shape
    cls_id, sep_id = _special_ids(special_ids)
    if cls_id is None:
        is_cls = np.zeros((B, S))
        is_cls[:, 0] = 1
    else:
        is_cls = (ids == cls_id).astype(np.float64)
    if sep_id is None:
        is_sep = np.zeros((B, S))
        is_sep[np.arange(B), np.maximum(real.sum(1).astype(int) - 1, 0)] = 1
    else:
        is_sep = (ids == sep_id).astype(np.float64)
    return is_cls * real, is_sep * real


def _neighbours(P, real):
    """The attention to the previous and next token per query, (L, B, A, S) each, and the
    weights (B, S) of the queries that have such a real neighbour."""
    L, B, A, S, _ = P.shape
    i = np.arange(S)
    prev_w = np.zeros((B, S))
    prev_w[:, 1:] = real[:, 1:] * real[:, :-1]
    next_w = np.zeros((B, S))
    next_w[:, :-1] = real[:, :-1] * real[:, 1:]
    prev = np.zeros((L, B, A, S))
    prev[..., 1:] = P[..., i[1:], i[1:] - 1]
    nxt = np.zeros((L, B, A, S))
    nxt[..., :-1] = P[..., i[:-1], i[:-1] + 1]
    return prev, prev_w, nxt, next_w


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
    P = _stack_maps(maps).astype(np.float64)
    if P.ndim != 5 or P.shape[-1] != P.shape[-2]:
        raise ValueError(f"maps has shape {P.shape}, expected (L, B, A, S, S)")
    L, B, A, S, _ = P.shape
    ids = to_numpy(check_int_array("input_ids", input_ids))
    if ids.shape != (B, S):
        raise ValueError(f"input_ids has shape {ids.shape}, expected {(B, S)} (the maps' B, S)")
    real = _mask_or_ones(attention_mask, (B, S))                                   # (B, S)
    is_cls, is_sep = _cls_sep_keys(ids, real, special_ids)

    def mean(per_query, weight):                      # (L, B, A, S), (B, S) -> (L, A)
        return (per_query * weight[None, :, None, :]).sum(axis=(1, 3)) / max(float(weight.sum()), 1.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        plogp = np.where(P > 0, P * np.log(P), 0.0)
    i = np.arange(S)
    dist = np.abs(i[:, None] - i[None, :]).astype(np.float64)                    # (S, S)
    prev, prev_w, nxt, next_w = _neighbours(P, real)
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
    P = _stack_maps(maps)
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
