"""What every head model shares: the output records and ``_BertWithHead``, the plumbing of
one flat parameter buffer holding the encoder (names prefixed ``bert.``, as in Hugging Face)
and the head's own parameters, with the encoder as ``self.bert``."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..backend import get_xp
from ..checkpoint import PretrainedMixin
from ..config import BertConfig
from ..model import BertModel, bert_param_specs, check_int_array, reject_positional, weight_and_bias
from ..packing import check_unpad
from ..params import FlatParams
from ..validation import require


def check_class_labels(xp, name, labels, shape, num_classes, ignore_index=None):
    """``labels`` as an ``xp`` integer array of ``shape`` whose values are class ids in
    ``[0, num_classes)`` (or ``ignore_index``); a value out of range raises ValueError naming
    ``name`` (on the GPU the check is read once, with the model's other checks)."""
    labels = check_int_array(name, labels, len(shape))
    if tuple(labels.shape) != tuple(shape):
        raise ValueError(f"{name} has shape {tuple(labels.shape)}, expected {tuple(shape)}")
    labels = xp.asarray(labels)
    ok = (labels >= 0) & (labels < num_classes)
    if ignore_index is not None:
        ok |= labels == ignore_index

    def error():
        bad = labels[~ok].ravel()[0]
        return ValueError(f"{name} has value {int(bad)}, expected 0 <= {name} < {num_classes}"
                          + (f" or {ignore_index} (ignored)" if ignore_index is not None else ""))
    require(ok, error)
    return labels


@dataclass
class HeadOutput:
    loss: object = None
    logits: object = None
    last_hidden_state: object = None
    pooler_output: object = None
    hidden_states: list = field(default_factory=list)
    attentions: list = field(default_factory=list)


@dataclass
class PreTrainingOutput:
    loss: object = None               # mlm_loss + nsp_loss (0-d)
    mlm_loss: object = None
    nsp_loss: object = None
    mlm_logits: object = None         # (B, P, V) at the masked positions (all S when none given)
    nsp_logits: object = None         # (B, 2); class 0 = IsNext, 1 = NotNext
    last_hidden_state: object = None
    pooler_output: object = None
    hidden_states: list = field(default_factory=list)
    attentions: list = field(default_factory=list)


class _BertWithHead(PretrainedMixin):
    """Shared plumbing: one flat buffer, the encoder as ``self.bert``, names, loading.

    ``forward(input_ids, *, ..., training=False)`` returns ``(outputs, cache)`` for
    ``backward``; ``model(input_ids, *, ...)`` is inference: the outputs only, no cache kept.
    Every argument after ``input_ids`` is keyword-only, in Hugging Face's names.

    ``add_pooling_layer`` (keyword): keep the encoder's [CLS] pooler. None takes the class
    default (Hugging Face's: a pooler for the heads that read the pooled output, none for
    the masked LM and the token-level heads); a head that reads the pooled output
    (``needs_pooler``) refuses False."""
    add_pooling_layer = True        # the class default
    needs_pooler = True             # the head reads pooler_output: False is refused

    def __init__(self, config: BertConfig, dtype=np.float32, seed: int = 0, device: str = "cpu",
                 *, add_pooling_layer: bool | None = None):
        if not isinstance(config, BertConfig):
            raise TypeError(f"config has type {type(config).__name__}, expected BertConfig")
        if add_pooling_layer is None:
            add_pooling_layer = type(self).add_pooling_layer
        if not isinstance(add_pooling_layer, (bool, np.bool_)):
            raise TypeError(f"add_pooling_layer={add_pooling_layer!r} is invalid, expected True, "
                            "False or None (the class default)")
        if not add_pooling_layer and self.needs_pooler:
            raise ValueError(f"add_pooling_layer={add_pooling_layer!r}: {type(self).__name__} reads "
                             "the pooled [CLS] output, expected True (or None)")
        self.add_pooling_layer = add_pooling_layer
        specs = bert_param_specs(config, "bert.", self.add_pooling_layer) + self.head_specs(config)
        self.store = FlatParams(specs, np.dtype(dtype), get_xp(device))
        self.store.initialize(seed, config.initializer_range)
        self.bert = BertModel(config, dtype, seed, self.add_pooling_layer, device,
                              store=self.store, prefix="bert.")
        self.config, self.dtype, self.xp = config, self.bert.dtype, self.store.xp
        self.params, self.grads = self.store.params, self.store.grads

    def head_specs(self, config):
        raise NotImplementedError

    def num_parameters(self) -> int:
        return self.store.size

    def load_state_dict(self, state: dict, strict: bool = True):
        return self.store.load_state_dict(state, strict)

    def state_dict(self) -> dict:
        return self.store.state_dict()

    def rng_state(self) -> dict:
        return self.bert.rng_state()

    @property
    def batch_start(self) -> int:
        """The encoder's ``batch_start`` (``BertModel``): this batch's first row in a larger
        one, for the dropout masks."""
        return self.bert.batch_start

    @batch_start.setter
    def batch_start(self, row: int):
        self.bert.batch_start = int(row)

    @property
    def unpad(self):
        """The encoder's ``unpad`` (``BertModel``): None (padding-free when the batch has
        enough padding), True or False. A head whose loss reads padded positions (question
        answering's softmax over all S, labels at [PAD]) runs the padded encoder."""
        return self.bert.unpad

    @unpad.setter
    def unpad(self, value):
        self.bert.unpad = check_unpad(value)

    def set_rng_state(self, state: dict):
        self.bert.set_rng_state(state)

    def __call__(self, input_ids=None, *args, **kwargs):
        """Inference, as Hugging Face's ``model(...)``: the outputs of ``forward`` without
        dropout, keeping no cache for a backward."""
        reject_positional(type(self).__name__, args)
        for name in ("training", "keep_cache"):
            if name in kwargs:
                raise TypeError(f"{type(self).__name__}() is inference and takes no {name}=; "
                                "use forward(..., training=True) to train")
        return self.forward(input_ids, keep_cache=False, **kwargs)[0]

    def _encode(self, input_ids, args, attention_mask, token_type_ids, output_attentions,
                output_hidden_states, training, keep_cache, head_mask=None, inputs_embeds=None,
                reads_padding=False):
        """The encoder's forward for this head's ``forward`` (its positional arguments
        refused first): ``(outputs, cache, call)``, ``call`` the dropout call index the
        encoder used, which the head's own dropout joins. ``head_mask`` and
        ``inputs_embeds`` pass through to ``BertModel.forward`` (their gradients come back
        from ``backward`` as ``"head_mask"`` and ``"inputs_embeds"``). ``reads_padding``:
        the head's loss reads outputs at padded positions, so the encoder runs padded."""
        reject_positional(f"{type(self).__name__}.forward", args)
        call = self.bert.dropout_calls
        out, cache = self.bert.forward(input_ids, attention_mask=attention_mask,
                                       token_type_ids=token_type_ids, head_mask=head_mask,
                                       inputs_embeds=inputs_embeds,
                                       output_attentions=output_attentions,
                                       output_hidden_states=output_hidden_states,
                                       training=training, keep_cache=keep_cache,
                                       unpad=False if reads_padding else None)
        return out, cache, call

    def _targets_at_padding(self, attention_mask, targets, ignore_index=-100, gathered=False,
                            positions=None, weights=None):
        """Whether a loss target sits at a padded position, where the padding-free encoder
        computes no output: ``targets`` (B, S) not ``ignore_index`` where ``attention_mask``
        is 0; or, ``gathered`` (BERT's masked-LM form), targets (B, P) at ``positions``
        (B, P; None: all S), counted where ``weights`` (B, P) is nonzero. False without a
        mask, targets or padding. Read on the host: only where the encoder may pack (the CPU
        by default)."""
        if attention_mask is None or targets is None or not self.bert.may_pack():
            return False
        xp = self.xp
        real = xp.asarray(attention_mask) != 0                                  # (B, S)
        if real.ndim != 2:
            return False                  # the encoder's checks name the bad shape
        if not gathered:
            named = xp.asarray(targets) != ignore_index                         # (B, S)
        else:
            B, S = real.shape
            pos = xp.broadcast_to(xp.arange(S), (B, S)) if positions is None else xp.asarray(positions)
            if pos.ndim != 2 or pos.shape[0] != B or pos.dtype.kind not in "iu":
                return False              # the head's checks name the bad positions
            real = real[xp.arange(B)[:, None], xp.clip(pos, 0, S - 1)]
            named = xp.ones(pos.shape, dtype=bool) if weights is None else xp.asarray(weights) != 0
        return tuple(named.shape) == tuple(real.shape) and bool(xp.any(named & ~real))

    def _pair(self, name, grads=False):
        """(weight, bias) of the head module ``name`` (or their gradient views)."""
        return weight_and_bias(self.grads if grads else self.params, name)

    def _classifier_dropout_p(self, training):
        cfg = self.config
        p = cfg.classifier_dropout if cfg.classifier_dropout is not None else cfg.hidden_dropout_prob
        return p if training else 0.0

    def _labels(self, name, labels, shape, num_classes, ignore_index=None):
        return check_class_labels(self.xp, name, labels, shape, num_classes, ignore_index)

