"""Small pieces the analyses share: the encoder inside a head model, the attention mask as
floats, the masked-LM head and its logits."""
from __future__ import annotations

import numpy as np

from ..backend import to_numpy


def _encoder(model):
    """The BertModel inside ``model`` (a head model's ``.bert``) or ``model`` itself."""
    return getattr(model, "bert", model)


def _mask_or_ones(attention_mask, shape):
    """The attention mask as float64 (B, S) on the host, all ones when None."""
    if attention_mask is None:
        return np.ones(shape, dtype=np.float64)
    m = to_numpy(attention_mask).astype(np.float64)
    if m.shape != tuple(shape):
        raise ValueError(f"attention_mask has shape {m.shape}, expected {tuple(shape)}")
    return m


def _stack_maps(maps):
    """(L, B, A, S, S) host array from an array or a list of L (B, A, S, S) arrays."""
    if isinstance(maps, (list, tuple)):
        return np.stack([to_numpy(m) for m in maps])
    return to_numpy(maps)


def _is_mlm(model) -> bool:
    """A model with a masked-LM head (BertForPreTraining, BertForMaskedLM)."""
    return hasattr(model, "mlm_head_logits")


def _mlm_logits(out):
    """The masked-LM logits of BertForPreTraining's output (``mlm_logits``) or
    BertForMaskedLM's (``logits``)."""
    return out.mlm_logits if hasattr(out, "mlm_logits") else out.logits
