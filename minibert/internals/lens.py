"""The logit lens (nostalgebraist, 2020): the masked-LM head applied to the embeddings and
to every layer's output, (L + 1, B, P, V); the last is the model's own logits."""
from __future__ import annotations

import numpy as np

from ..backend import get_array_module, to_numpy
from ..model import check_int_array
from ._common import _is_mlm, _mlm_logits


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
