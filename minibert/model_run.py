"""``Run``: what one forward call of ``BertModel`` needs besides its inputs, in one place.

The dropout rates of the call (0 outside training), its dropout streams (a call index and a
site per dropout, ``offset``), the element index of the batch's first row in the stream
(``first_element``: a data-parallel slice draws the whole batch's bits), the padding-free
``Packing`` if the batch runs on its real tokens, and whether a backward follows (``grad``:
False in inference, where the ops keep nothing and may write over what they read,
``scratch``).
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from .ops import hooks


class Run(NamedTuple):
    """What one forward call needs besides its inputs: dropout rates and streams, whether
    the caller reads the attention probabilities, the head mask, the packing, and whether a
    backward follows (the module docstring)."""
    training: bool
    call: int                   # this forward's dropout call index
    p_hidden: float             # hidden-state dropout (0 outside training)
    p_attn: float               # attention-probability dropout (0 outside training)
    output_attentions: bool
    batch_start: int            # the model's batch_start: this batch's first row in the whole
    head_mask: object = None    # (L, A) multiplying each head's probabilities, or None
    packing: object = None      # the Packing of a padding-free forward, or None
    grad: bool = True           # whether a backward follows (False: inference, no cache kept)

    @classmethod
    def start(cls, model, training, output_attentions, head_mask=None, packing=None, grad=True):
        """The run of ``model``'s next forward call."""
        cfg = model.config
        return cls(bool(training), model.dropout_calls,
                   cfg.hidden_dropout_prob if training else 0.0,
                   cfg.attention_probs_dropout_prob if training else 0.0,
                   bool(output_attentions), int(model.batch_start), head_mask, packing,
                   bool(grad))

    @property
    def rows(self):
        """Packed: each token's row in the padded (B, S) batch, where its dropout bits are
        drawn (``minibert.ops.dropout``); None for a padded batch."""
        return None if self.packing is None else self.packing.rows

    def scratch(self, a):
        """``a`` if an op may write its result over it, else None: in inference (no backward
        reads ``a``), with no op hook registered (a hook may hold ``a``), on NumPy arrays."""
        if self.grad or hooks.registered() or type(a) is not np.ndarray:
            return None        # on the GPU (the readable ops) out= would only add a copy
        return a

    def offset(self, site: int) -> int:
        """The Philox offset of dropout ``site`` in this call: (call << 20) | site."""
        return (self.call << 20) | site

    def first_element(self, x, per_row=None) -> int:
        """The element index, in the dropout stream, of the first element of a mask over
        ``x`` (batch rows first, ``per_row`` elements each: by default x's own, or for a
        packed (T, H) the padded row's S H): the mask of the whole batch, from row
        ``batch_start`` on."""
        if per_row is None and self.packing is not None:
            per_row = self.packing.shape[1] * x.shape[-1]
        elif per_row is None:
            per_row = x.size // x.shape[0] if x.shape[0] else 0
        return self.batch_start * per_row
