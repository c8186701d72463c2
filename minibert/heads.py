"""BERT with a head on top: pretraining (masked LM + next sentence), masked LM alone, and
fine-tuning heads.

Each head model owns one flat parameter buffer holding the encoder (names prefixed
``bert.``, as in Hugging Face) and its own parameters, and runs:

    forward:  encoder forward -> head forward -> loss
    backward: loss backward -> head backward -> encoder backward (gradients accumulate
              into the one flat gradient buffer)
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .backend import get_xp, scatter_add
from .checkpoint import PretrainedMixin
from .config import BertConfig
from .model import (
    SITE_HEAD,
    BertModel,
    accumulate,
    bert_param_specs,
    check_int_array,
    reject_positional,
    weight_and_bias,
)
from .ops import cross_entropy, dropout, gelu, layernorm, linear
from .params import FlatParams, ParamSpec
from .validation import checks_deferred, require


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
                output_hidden_states, training, keep_cache, head_mask=None, inputs_embeds=None):
        """The encoder's forward for this head's ``forward`` (its positional arguments
        refused first): ``(outputs, cache, call)``, ``call`` the dropout call index the
        encoder used, which the head's own dropout joins. ``head_mask`` and
        ``inputs_embeds`` pass through to ``BertModel.forward`` (their gradients come back
        from ``backward`` as ``"head_mask"`` and ``"inputs_embeds"``)."""
        reject_positional(f"{type(self).__name__}.forward", args)
        call = self.bert.dropout_calls
        out, cache = self.bert.forward(input_ids, attention_mask=attention_mask,
                                       token_type_ids=token_type_ids, head_mask=head_mask,
                                       inputs_embeds=inputs_embeds,
                                       output_attentions=output_attentions,
                                       output_hidden_states=output_hidden_states,
                                       training=training, keep_cache=keep_cache)
        return out, cache, call

    def _pair(self, name, grads=False):
        """(weight, bias) of the head module ``name`` (or their gradient views)."""
        return weight_and_bias(self.grads if grads else self.params, name)

    def _classifier_dropout_p(self, training):
        cfg = self.config
        p = cfg.classifier_dropout if cfg.classifier_dropout is not None else cfg.hidden_dropout_prob
        return p if training else 0.0

    def _labels(self, name, labels, shape, num_classes, ignore_index=None):
        labels = check_int_array(name, labels, len(shape))
        if tuple(labels.shape) != tuple(shape):
            raise ValueError(f"{name} has shape {tuple(labels.shape)}, expected {tuple(shape)}")
        labels = self.xp.asarray(labels)
        ok = (labels >= 0) & (labels < num_classes)
        if ignore_index is not None:
            ok |= labels == ignore_index

        def error():
            bad = labels[~ok].ravel()[0]
            return ValueError(f"{name} has value {int(bad)}, expected 0 <= {name} < {num_classes}"
                              + (f" or {ignore_index} (ignored)" if ignore_index is not None
                                 else ""))
        require(ok, error)      # on the GPU: read once, with the model's other checks
        return labels


def mlm_head_specs(config: BertConfig) -> list:
    """The masked-LM head's parameters in Hugging Face's names (``cls.predictions.*``): the
    transform (dense H -> H, LayerNorm) and the decoder's bias; the decoder's weight is the
    word embedding table (tied), so it is no parameter of its own."""
    H, V = config.hidden_size, config.vocab_size
    return [ParamSpec("cls.predictions.transform.dense.weight", (H, H)),
            ParamSpec("cls.predictions.transform.dense.bias", (H,), "zeros"),
            ParamSpec("cls.predictions.transform.LayerNorm.weight", (H,), "ones"),
            ParamSpec("cls.predictions.transform.LayerNorm.bias", (H,), "zeros"),
            ParamSpec("cls.predictions.bias", (V,), "zeros")]


class _WithMLMHead(_BertWithHead):
    """The masked-LM head that BertForPreTraining and BertForMaskedLM share (Hugging Face's
    ``BertLMPredictionHead``), on the P positions ``pos`` (B, P) of the hidden states:

        t = LayerNorm(GELU(x[pos] Wt^T + bt));  logits = t E_word^T + b_dec     (B, P, V)

    with the decoder tied to the word embeddings (its gradient adds to theirs)."""

    def _mlm_positions(self, masked_lm_positions, B, S):
        """The checked positions (B, P) to predict; None: every position (P = S)."""
        if masked_lm_positions is None:
            masked_lm_positions = self.xp.broadcast_to(self.xp.arange(S), (B, S))
        return self._labels("masked_lm_positions", masked_lm_positions,
                            (B, np.shape(masked_lm_positions)[-1]), S)

    def _mlm_head_forward(self, x, pos):
        """logits (B, P, V) at positions ``pos`` (B, P) of x (B, S, H):
        t = LayerNorm(GELU(x[pos] Wt^T + bt));  logits = t E_word^T + b_dec (decoder tied)."""
        cfg = self.config
        gathered = x[self.xp.arange(x.shape[0])[:, None], pos]                     # (B, P, H)
        t, c_td = linear.forward(gathered, *self._pair("cls.predictions.transform.dense"))
        t, c_tg = gelu.forward(t, approximate=gelu.APPROXIMATE_FOR_ACT[cfg.hidden_act])
        t, c_tl = layernorm.forward(t, *self._pair("cls.predictions.transform.LayerNorm"),
                                    cfg.layer_norm_eps)
        logits, c_dec = linear.forward(t, self.params["bert.embeddings.word_embeddings.weight"],
                                       self.params["cls.predictions.bias"])        # (B, P, V)
        return logits, (pos, c_td, c_tg, c_tl, c_dec)

    def mlm_head_logits(self, hidden_states, positions):
        """The masked-LM head on any hidden states (B, S, H) at ``positions`` (B, P): logits
        (B, P, V), computed exactly as ``forward``'s masked-LM logits (the logit lens applies
        it to every layer's output). Inference: no cache is kept."""
        x = self.xp.asarray(hidden_states)
        if x.ndim != 3 or x.shape[2] != self.config.hidden_size:
            raise ValueError(f"hidden_states has shape {tuple(x.shape)}, expected (B, S, H) with "
                             f"H = {self.config.hidden_size}")
        B, S, _ = x.shape
        pos = self._labels("positions", positions, (B, np.shape(positions)[-1]), S)
        return self._mlm_head_forward(x, pos)[0]

    def _mlm_head_backward(self, dlogits, c, dseq):
        """Adds dL/dx into ``dseq`` (B, S, H) and the head's parameter gradients."""
        pos, c_td, c_tg, c_tl, c_dec = c
        B, P = pos.shape
        # logits = t E^T + b_dec: the decoder is tied, so its weight gradient adds into E's
        dt, _, db = linear.backward(dlogits, c_dec,
                                    dweight_out=self.grads["bert.embeddings.word_embeddings.weight"])
        accumulate((self.grads["cls.predictions.bias"],), db)
        dt, dw, db = layernorm.backward(dt, c_tl)                               # t = LayerNorm(t)
        accumulate(self._pair("cls.predictions.transform.LayerNorm", grads=True), dw, db)
        dt = gelu.backward(dt, c_tg)                                             # t = GELU(t)
        dg, dw, db = linear.backward(dt, c_td)                                   # t = gathered Wt^T + bt
        accumulate(self._pair("cls.predictions.transform.dense", grads=True), dw, db)
        # gathered = x[rows, pos]: scatter-add back (a position may repeat, e.g. padded slots)
        rows = self.xp.broadcast_to(self.xp.arange(B)[:, None], (B, P))
        scatter_add(dseq, (rows, pos), dg)

    def _mlm_loss(self, mlm_logits, masked_lm_ids, masked_lm_weights):
        """sum(w * l) / sum(w) over the predicted positions, and its cache; (None, None)
        without labels."""
        if masked_lm_ids is None:
            return None, None
        B, P, V = mlm_logits.shape
        ids = self._labels("masked_lm_ids", masked_lm_ids, (B, P), V)
        if masked_lm_weights is None:
            w = self.xp.ones((B, P), dtype=self.dtype)
        else:
            w = self.xp.asarray(masked_lm_weights, dtype=self.dtype)
            if tuple(w.shape) != (B, P):
                raise ValueError(f"masked_lm_weights has shape {tuple(w.shape)}, expected {(B, P)}")
        return cross_entropy.forward(mlm_logits.reshape(B * P, V), ids.reshape(-1), w.reshape(-1))


class BertForPreTraining(_WithMLMHead):
    """BERT pretraining: masked LM on the gathered masked positions + next sentence prediction.

    MLM head (on the P masked positions of each sequence only, as the original BERT):
        t = LayerNorm(GELU(h Wt^T + bt));  logits = t E_word^T + b_dec     (B, P, V)
    with the decoder tied to the word embeddings (its gradient adds to theirs).
    NSP head: logits = pooled Wnsp^T + bnsp (B, 2), label 0 = IsNext.
    loss = sum(w * l_mlm) / sum(w) + mean(l_nsp).
    """

    def head_specs(self, config):
        H = config.hidden_size
        return mlm_head_specs(config) + [ParamSpec("cls.seq_relationship.weight", (2, H)),
                                         ParamSpec("cls.seq_relationship.bias", (2,), "zeros")]

    @checks_deferred
    def forward(self, input_ids=None, *args, attention_mask=None, token_type_ids=None,
                head_mask=None, inputs_embeds=None,
                masked_lm_positions=None, masked_lm_ids=None, masked_lm_weights=None,
                next_sentence_labels=None, output_attentions=False, output_hidden_states=False,
                training=False, keep_cache=True):
        """Returns ``(PreTrainingOutput, cache)``.

        Args:
            input_ids: (B, S); every other argument is keyword-only, in Hugging Face's names.
            attention_mask, token_type_ids, head_mask, inputs_embeds, output_attentions,
                output_hidden_states, training, keep_cache: as ``BertModel.forward``.
            masked_lm_positions: (B, P) positions to predict (None: all S, as Hugging Face's
                prediction_logits).
            masked_lm_ids: (B, P) the original tokens there; gives the MLM loss.
            masked_lm_weights: (B, P), 1 for real predictions, 0 for padded slots.
            next_sentence_labels: (B,), 0 = IsNext, 1 = NotNext; gives the NSP loss.
        """
        xp = self.xp
        out, bcache, _ = self._encode(input_ids, args, attention_mask, token_type_ids,
                                      output_attentions, output_hidden_states, training, keep_cache,
                                      head_mask, inputs_embeds)
        x = out.last_hidden_state                                        # (B, S, H)
        B, S, H = x.shape
        if masked_lm_positions is None:                      # every position, as HF's prediction_logits
            masked_lm_positions = xp.broadcast_to(xp.arange(S), (B, S))
        pos = self._labels("masked_lm_positions", masked_lm_positions,
                           (B, np.shape(masked_lm_positions)[-1]), S)
        mlm_logits, c_mlm_head = self._mlm_head_forward(x, pos)         # (B, P, V)
        nsp_logits, c_nsp = linear.forward(out.pooler_output, *self._pair("cls.seq_relationship"))  # (B, 2)
        mlm_loss, c_mlm = self._mlm_loss(mlm_logits, masked_lm_ids, masked_lm_weights)
        nsp_loss = c_nspl = None
        if next_sentence_labels is not None:
            nsl = self._labels("next_sentence_labels", next_sentence_labels, (B,), 2)
            nsp_loss, c_nspl = cross_entropy.forward(nsp_logits, nsl)
        losses = [v for v in (mlm_loss, nsp_loss) if v is not None]
        loss = sum(losses) if losses else None
        outputs = PreTrainingOutput(loss, mlm_loss, nsp_loss, mlm_logits, nsp_logits, x,
                                    out.pooler_output, out.hidden_states, out.attentions)
        if not keep_cache:
            return outputs, None
        return outputs, dict(bert=bcache, shape=(B, S, H), mlm_head=c_mlm_head, nsp=c_nsp,
                             mlm_loss=c_mlm, nsp_loss=c_nspl)

    def backward(self, cache, d_loss=1.0, *, d_mlm_logits=None, d_mlm_loss=None,
                 d_nsp_loss=None):
        """Gradients of ``d_loss * loss`` (plus ``sum(d_mlm_logits * mlm_logits)`` when
        ``d_mlm_logits`` (B, P, V) is given, e.g. to differentiate one logit) for every
        parameter (dict named as ``params``). ``d_mlm_loss`` and ``d_nsp_loss``, when given,
        weigh the two parts of the loss apart: ``d_mlm_loss * mlm_loss + d_nsp_loss *
        nsp_loss``. (A data-parallel rank weighs its slice's parts by its share of the whole
        batch's masked positions and sequences, so that the ranks' gradients add up to the
        gradient of the whole batch's loss.)"""
        if cache is None:
            raise ValueError("cache is None: it comes from forward(..., keep_cache=True)")
        if cache["mlm_loss"] is None and cache["nsp_loss"] is None and d_mlm_logits is None:
            raise ValueError("backward needs a loss: pass masked_lm_ids and/or next_sentence_labels "
                             "to forward (or d_mlm_logits to backward)")
        xp = self.xp
        B, S, H = cache["shape"]
        P = cache["mlm_head"][0].shape[1]
        self.store.zero_grad()
        dseq = xp.zeros((B, S, H), dtype=self.dtype)
        dpooled = None
        d_mlm = xp.asarray(d_loss if d_mlm_loss is None else d_mlm_loss, dtype=self.dtype)
        d_nsp = xp.asarray(d_loss if d_nsp_loss is None else d_nsp_loss, dtype=self.dtype)
        dlogits = None
        if cache["mlm_loss"] is not None:
            dlogits = cross_entropy.backward(d_mlm, cache["mlm_loss"]).reshape(B, P, -1)   # (B, P, V)
        if d_mlm_logits is not None:
            V = self.config.vocab_size
            if tuple(np.shape(d_mlm_logits)) != (B, P, V):
                raise ValueError(f"d_mlm_logits has shape {tuple(np.shape(d_mlm_logits))}, "
                                 f"expected {(B, P, V)}")
            d = xp.asarray(d_mlm_logits, dtype=self.dtype)
            dlogits = d if dlogits is None else dlogits + d
        if dlogits is not None:
            self._mlm_head_backward(dlogits, cache["mlm_head"], dseq)
        if cache["nsp_loss"] is not None:
            dnsp = cross_entropy.backward(d_nsp, cache["nsp_loss"])                 # (B, 2)
            dpooled, dw, db = linear.backward(dnsp, cache["nsp"])                   # nsp = pooled W^T + b
            accumulate(self._pair("cls.seq_relationship", grads=True), dw, db)
        return self.bert.backward(cache["bert"], dseq, dpooled, zero_grad=False)


class BertForMaskedLM(_WithMLMHead):
    """Masked language model (Hugging Face's ``BertForMaskedLM``): the encoder, by default
    without its pooler, and the masked-LM head of BertForPreTraining, without the
    next-sentence head. Parameters: ``bert.*`` and ``cls.predictions.*`` (decoder tied to
    the word embeddings), so checkpoints of either class load into it.

        logits = LayerNorm(GELU(h[pos] Wt^T + bt)) E_word^T + b_dec              (B, P, V)

    at every position (P = S, Hugging Face's ``logits``) or at ``masked_lm_positions``.
    Two ways to give the targets, each giving the mean cross-entropy over the predictions
    that count:

    * ``labels`` (B, S), Hugging Face's: the token at each position, -100 where nothing is
      predicted; loss = sum_{labels != -100} l / #{labels != -100}.
    * ``masked_lm_positions``, ``masked_lm_ids``, ``masked_lm_weights`` (B, P), BERT's (and
      BertForPreTraining's): logits only at the gathered positions, which is what makes
      pretraining cheap (the (B, S, V) product shrinks to (B, P, V));
      loss = sum(w * l) / sum(w).

    No position to predict (all labels -100, or all weights 0) gives a loss of 0 with zero
    gradients, where torch returns NaN (``ops/cross_entropy.py``).
    """
    add_pooling_layer = False
    needs_pooler = False

    def head_specs(self, config):
        return mlm_head_specs(config)

    @checks_deferred
    def forward(self, input_ids=None, *args, attention_mask=None, token_type_ids=None,
                head_mask=None, inputs_embeds=None, labels=None,
                masked_lm_positions=None, masked_lm_ids=None, masked_lm_weights=None,
                output_attentions=False, output_hidden_states=False, training=False,
                keep_cache=True):
        """Returns ``(HeadOutput, cache)``: ``logits`` (B, S, V), or (B, P, V) at
        ``masked_lm_positions``, and ``loss`` when targets are given.

        Args:
            input_ids: (B, S); every other argument is keyword-only, in Hugging Face's names.
            attention_mask, token_type_ids, head_mask, inputs_embeds, output_attentions,
                output_hidden_states, training, keep_cache: as ``BertModel.forward``.
            labels: (B, S) target ids, -100 = not predicted (Hugging Face's convention).
            masked_lm_positions: (B, P) positions to predict (None: all S).
            masked_lm_ids: (B, P) the targets there (BERT's convention; not with ``labels``).
            masked_lm_weights: (B, P), 1 for real predictions, 0 for padded slots.
        """
        if labels is not None and (masked_lm_positions is not None or masked_lm_ids is not None):
            raise ValueError("labels (Hugging Face's targets over all positions) was given with "
                             "masked_lm_positions/masked_lm_ids (BERT's gathered targets), "
                             "expected one of the two")
        out, bcache, _ = self._encode(input_ids, args, attention_mask, token_type_ids,
                                      output_attentions, output_hidden_states, training, keep_cache,
                                      head_mask, inputs_embeds)
        x = out.last_hidden_state                                        # (B, S, H)
        B, S, H = x.shape
        V = self.config.vocab_size
        pos = self._mlm_positions(masked_lm_positions, B, S)            # (B, P)
        logits, c_head = self._mlm_head_forward(x, pos)                 # (B, P, V)
        if labels is not None:
            lab = self._labels("labels", labels, (B, S), V, ignore_index=-100)
            loss, c_loss = cross_entropy.forward(logits.reshape(B * S, V), lab.reshape(-1),
                                                 ignore_index=-100)
        else:
            loss, c_loss = self._mlm_loss(logits, masked_lm_ids, masked_lm_weights)
        outputs = HeadOutput(loss, logits, x, out.pooler_output, out.hidden_states,
                             out.attentions)
        if not keep_cache:
            return outputs, None
        return outputs, dict(bert=bcache, shape=(B, S, H), mlm_head=c_head, loss=c_loss,
                             logits_shape=logits.shape)

    def backward(self, cache, d_logits=None, d_loss=1.0):
        """Gradients of ``d_loss * loss`` (when targets were given) plus ``sum(d_logits *
        logits)``, for every parameter (dict named as ``params``)."""
        if cache is None:
            raise ValueError("cache is None: it comes from forward(..., keep_cache=True)")
        if d_logits is None and cache["loss"] is None:
            raise ValueError("backward needs a loss (labels or masked_lm_ids in forward) or "
                             "d_logits")
        xp = self.xp
        B, S, H = cache["shape"]
        shape = tuple(cache["logits_shape"])                            # (B, P, V)
        self.store.zero_grad()
        dlogits = xp.zeros(shape, dtype=self.dtype)
        if d_logits is not None:
            if tuple(d_logits.shape) != shape:
                raise ValueError(f"d_logits has shape {tuple(d_logits.shape)}, expected {shape}")
            dlogits += xp.asarray(d_logits, dtype=self.dtype)
        if cache["loss"] is not None:
            d = cross_entropy.backward(xp.asarray(d_loss, dtype=self.dtype), cache["loss"])
            dlogits += d.reshape(shape)                                 # (B*P, V) -> (B, P, V)
        dseq = xp.zeros((B, S, H), dtype=self.dtype)
        self._mlm_head_backward(dlogits, cache["mlm_head"], dseq)
        return self.bert.backward(cache["bert"], dseq, None, zero_grad=False)


class _ClassifierHead(_BertWithHead):
    """dropout -> linear classifier on the pooled output or on every token."""
    head_name = "classifier"

    def _n_out(self, config):
        return config.num_labels

    def head_specs(self, config):
        n = self._n_out(config)
        return [ParamSpec(f"{self.head_name}.weight", (n, config.hidden_size)),
                ParamSpec(f"{self.head_name}.bias", (n,), "zeros")]

    def _head_forward(self, features, training, call):
        """Classifier dropout (stream ``call``, the encoder's call index) then the linear layer."""
        p = self._classifier_dropout_p(training)
        # features' rows are the encoder's batch rows (B, or B*C for multiple choice)
        start = self.bert.batch_start * (features.size // max(features.shape[0], 1))
        f, c_do = dropout.forward(features, p, self.bert.seed,
                                  (call << 20) | SITE_HEAD, training, start=start)
        logits, c_lin = linear.forward(f, *self._pair(self.head_name))
        return logits, (c_do, c_lin)

    def _head_backward(self, dlogits, hcache):
        c_do, c_lin = hcache
        df, dw, db = linear.backward(dlogits, c_lin)                   # logits = f W^T + b
        accumulate(self._pair(self.head_name, grads=True), dw, db)
        return dropout.backward(df, c_do)

    def backward(self, cache, d_logits=None, d_loss=1.0):
        """Gradients for ``d_loss * loss`` (when labels were given) plus ``d_logits``."""
        xp = self.xp
        if cache is None:
            raise ValueError("cache is None: it comes from forward(..., keep_cache=True)")
        if d_logits is None and cache["loss"] is None:
            raise ValueError("backward needs labels in forward or d_logits")
        self.store.zero_grad()
        dl = xp.zeros(cache["logits_shape"], dtype=self.dtype)
        if d_logits is not None:
            if tuple(d_logits.shape) != tuple(cache["logits_shape"]):
                raise ValueError(f"d_logits has shape {tuple(d_logits.shape)}, "
                                 f"expected {tuple(cache['logits_shape'])}")
            dl = dl + d_logits
        if cache["loss"] is not None:
            dl = dl + self._loss_backward(xp.asarray(d_loss, dtype=self.dtype), cache)
        return self._backward_from_logits(dl, cache)


class BertForSequenceClassification(_ClassifierHead):
    """[CLS] pooled output -> dropout -> linear (num_labels). Loss: cross-entropy, or mean
    squared error when ``num_labels == 1`` (regression), as Hugging Face."""

    @checks_deferred
    def forward(self, input_ids=None, *args, attention_mask=None, token_type_ids=None,
                head_mask=None, inputs_embeds=None, labels=None,
                output_attentions=False, output_hidden_states=False, training=False,
                keep_cache=True):
        out, bcache, call = self._encode(input_ids, args, attention_mask, token_type_ids,
                                         output_attentions, output_hidden_states, training,
                                         keep_cache, head_mask, inputs_embeds)
        logits, hcache = self._head_forward(out.pooler_output, training, call)    # (B, C)
        loss, lcache = None, None
        if labels is not None:
            B, C = logits.shape
            if C == 1:
                y = self.xp.asarray(labels, dtype=self.dtype).reshape(B, 1)
                diff = logits - y
                loss, lcache = (diff * diff).mean(), ("mse", diff)
            else:
                lab = self._labels("labels", labels, (B,), C)
                loss, c = cross_entropy.forward(logits, lab)
                lcache = ("ce", c)
        cache = dict(bert=bcache, head=hcache, loss=lcache, logits_shape=logits.shape) \
            if keep_cache else None
        return HeadOutput(loss, logits, out.last_hidden_state, out.pooler_output,
                          out.hidden_states, out.attentions), cache

    def _loss_backward(self, d_loss, cache):
        kind, c = cache["loss"]
        if kind == "mse":
            return d_loss * 2.0 * c / c.size                                 # loss = mean(diff^2)
        return cross_entropy.backward(d_loss, c)

    def _backward_from_logits(self, dl, cache):
        dpooled = self._head_backward(dl, cache["head"])
        return self.bert.backward(cache["bert"], None, dpooled, zero_grad=False)


class BertForTokenClassification(_ClassifierHead):
    """Every token's hidden state -> dropout -> linear (num_labels). No pooler. Loss:
    cross-entropy averaged over tokens whose label is not -100."""
    add_pooling_layer = False
    needs_pooler = False

    @checks_deferred
    def forward(self, input_ids=None, *args, attention_mask=None, token_type_ids=None,
                head_mask=None, inputs_embeds=None, labels=None,
                output_attentions=False, output_hidden_states=False, training=False,
                keep_cache=True):
        out, bcache, call = self._encode(input_ids, args, attention_mask, token_type_ids,
                                         output_attentions, output_hidden_states, training,
                                         keep_cache, head_mask, inputs_embeds)
        logits, hcache = self._head_forward(out.last_hidden_state, training, call)  # (B, S, C)
        loss = lcache = None
        if labels is not None:
            B, S, C = logits.shape
            lab = self._labels("labels", labels, (B, S), C, ignore_index=-100)
            loss, lcache = cross_entropy.forward(logits.reshape(B * S, C), lab.reshape(-1),
                                                 ignore_index=-100)
        cache = dict(bert=bcache, head=hcache, loss=lcache, logits_shape=logits.shape) \
            if keep_cache else None
        return HeadOutput(loss, logits, out.last_hidden_state, None,
                          out.hidden_states, out.attentions), cache

    def _loss_backward(self, d_loss, cache):
        return cross_entropy.backward(d_loss, cache["loss"]).reshape(cache["logits_shape"])

    def _backward_from_logits(self, dl, cache):
        dseq = self._head_backward(dl, cache["head"])
        return self.bert.backward(cache["bert"], dseq, None, zero_grad=False)


class BertForQuestionAnswering(_ClassifierHead):
    """Span extraction: every token -> linear (2) -> start and end logits (B, S). No pooler,
    no dropout on the head (as Hugging Face). Loss: mean of the start and end cross-entropies;
    positions outside [0, S) are clamped to S and ignored, as Hugging Face."""
    add_pooling_layer = False
    needs_pooler = False
    head_name = "qa_outputs"

    def _n_out(self, config):
        return 2

    def _classifier_dropout_p(self, training):
        return 0.0

    @checks_deferred
    def forward(self, input_ids=None, *args, attention_mask=None, token_type_ids=None,
                head_mask=None, inputs_embeds=None,
                start_positions=None, end_positions=None, output_attentions=False,
                output_hidden_states=False, training=False, keep_cache=True):
        xp = self.xp
        out, bcache, call = self._encode(input_ids, args, attention_mask, token_type_ids,
                                         output_attentions, output_hidden_states, training,
                                         keep_cache, head_mask, inputs_embeds)
        logits, hcache = self._head_forward(out.last_hidden_state, training, call)  # (B, S, 2)
        B, S, _ = logits.shape
        start_logits = logits[..., 0]
        end_logits = logits[..., 1]
        loss = lcache = None
        if (start_positions is None) != (end_positions is None):
            raise ValueError("start_positions and end_positions must be given together")
        if start_positions is not None:
            caches = []
            loss = 0.0
            for name, pos, lg in (("start_positions", start_positions, start_logits),
                                  ("end_positions", end_positions, end_logits)):
                pos = check_int_array(name, pos, 1)
                if tuple(pos.shape) != (B,):
                    raise ValueError(f"{name} has shape {tuple(pos.shape)}, expected {(B,)}")
                pos = xp.clip(xp.asarray(pos), 0, S)                     # S = ignored, as HF
                l, c = cross_entropy.forward(xp.ascontiguousarray(lg), pos, ignore_index=S)
                loss = loss + l / 2
                caches.append(c)
            lcache = caches
        cache = dict(bert=bcache, head=hcache, loss=lcache, logits_shape=logits.shape) \
            if keep_cache else None
        return HeadOutput(loss, logits, out.last_hidden_state, None, out.hidden_states,
                          out.attentions), cache

    def _loss_backward(self, d_loss, cache):
        c_start, c_end = cache["loss"]
        ds = cross_entropy.backward(d_loss / 2, c_start)                 # (B, S)
        de = cross_entropy.backward(d_loss / 2, c_end)
        return self.xp.stack([ds, de], axis=-1)                          # (B, S, 2)

    def _backward_from_logits(self, dl, cache):
        dseq = self._head_backward(dl, cache["head"])
        return self.bert.backward(cache["bert"], dseq, None, zero_grad=False)


class BertForMultipleChoice(_ClassifierHead):
    """Each of the C choices (B, C, S) is encoded separately; its pooled output -> dropout
    -> linear (1) gives one score; the C scores are a softmax over choices."""

    def _n_out(self, config):
        return 1

    @checks_deferred
    def forward(self, input_ids=None, *args, attention_mask=None, token_type_ids=None,
                head_mask=None, inputs_embeds=None, labels=None,
                output_attentions=False, output_hidden_states=False, training=False,
                keep_cache=True):
        if input_ids is not None:
            input_ids = check_int_array("input_ids", input_ids, 3)
            B, C, S = input_ids.shape
        elif inputs_embeds is not None:                  # (B, C, S, H): encoded as (B*C, S, H)
            if np.ndim(inputs_embeds) != 4:
                raise ValueError(f"inputs_embeds has shape {tuple(np.shape(inputs_embeds))}, "
                                 "expected (B, C, S, H)")
            B, C, S, H = np.shape(inputs_embeds)
            inputs_embeds = self.xp.asarray(inputs_embeds).reshape(B * C, S, H)
        else:
            raise ValueError("input_ids and inputs_embeds: neither was given, expected "
                             "exactly one of them")

        def flat(a):
            return None if a is None else self.xp.asarray(a).reshape(B * C, S)
        for name, a in (("attention_mask", attention_mask), ("token_type_ids", token_type_ids)):
            if a is not None and tuple(np.shape(a)) != (B, C, S):
                raise ValueError(f"{name} has shape {tuple(np.shape(a))}, expected {(B, C, S)}")
        out, bcache, call = self._encode(flat(input_ids), args, flat(attention_mask),
                                         flat(token_type_ids), output_attentions,
                                         output_hidden_states, training, keep_cache,
                                         head_mask, inputs_embeds)
        scores, hcache = self._head_forward(out.pooler_output, training, call)    # (B*C, 1)
        logits = scores.reshape(B, C)
        loss = lcache = None
        if labels is not None:
            lab = self._labels("labels", labels, (B,), C)
            loss, lcache = cross_entropy.forward(logits, lab)
        cache = dict(bert=bcache, head=hcache, loss=lcache, logits_shape=logits.shape) \
            if keep_cache else None
        return HeadOutput(loss, logits, out.last_hidden_state, out.pooler_output,
                          out.hidden_states, out.attentions), cache

    def _loss_backward(self, d_loss, cache):
        return cross_entropy.backward(d_loss, cache["loss"])

    def _backward_from_logits(self, dl, cache):
        dpooled = self._head_backward(dl.reshape(-1, 1), cache["head"])
        grads = self.bert.backward(cache["bert"], None, dpooled, zero_grad=False)
        if "inputs_embeds" in grads:              # (B*C, S, H) -> the caller's (B, C, S, H)
            grads["inputs_embeds"] = grads["inputs_embeds"].reshape(
                *dl.shape, *cache["bert"]["shape"][1:], -1)
        return grads
