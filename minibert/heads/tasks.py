"""The fine-tuning heads: a linear classifier on the pooled [CLS] output (sequence
classification, multiple choice) or on every token (token classification, question
answering), after the classifier dropout."""
from __future__ import annotations

import numpy as np

from ..model import SITE_HEAD, accumulate, check_int_array
from ..ops import cross_entropy, dropout, linear
from ..params import ParamSpec
from ..validation import checks_deferred
from .base import HeadOutput, _BertWithHead, check_class_labels


def class_loss_forward(xp, dtype, logits, labels):
    """``(loss, cache)`` of class logits (B, C) against ``labels`` (B,): cross-entropy, or
    with one output (C = 1, regression) the mean squared error against float targets, as
    Hugging Face."""
    B, C = logits.shape
    if C == 1:                                                   # regression
        y = xp.asarray(labels, dtype=dtype).reshape(B, 1)
        diff = logits - y
        return (diff * diff).mean(), ("mse", diff)
    loss, c = cross_entropy.forward(logits, check_class_labels(xp, "labels", labels, (B,), C))
    return loss, ("ce", c)


def class_loss_backward(d_loss, cache):
    """dL/dlogits (B, C) of ``class_loss_forward``'s loss scaled by ``d_loss``."""
    kind, c = cache
    if kind == "mse":
        return d_loss * 2.0 * c / c.size                             # loss = mean(diff^2)
    return cross_entropy.backward(d_loss, c)


def token_loss_forward(xp, logits, labels):
    """``(loss, cache)`` of per-token logits (B, S, C) against ``labels`` (B, S): the mean
    cross-entropy over the tokens whose label is not -100."""
    B, S, C = logits.shape
    lab = check_class_labels(xp, "labels", labels, (B, S), C, ignore_index=-100)
    return cross_entropy.forward(logits.reshape(B * S, C), lab.reshape(-1), ignore_index=-100)


def token_loss_backward(d_loss, cache, logits_shape):
    """dL/dlogits (B, S, C) of ``token_loss_forward``'s loss scaled by ``d_loss``."""
    return cross_entropy.backward(d_loss, cache).reshape(logits_shape)


class _ClassifierHead(_BertWithHead):
    """dropout -> linear classifier on the pooled output or on every token."""
    head_name = "classifier"

    def _n_out(self, config):
        return config.num_labels

    def head_specs(self, config):
        n = self._n_out(config)
        return [ParamSpec(f"{self.head_name}.weight", (n, config.hidden_size)),
                ParamSpec(f"{self.head_name}.bias", (n,), "zeros")]

    @checks_deferred
    def forward(self, input_ids=None, *args, attention_mask=None, token_type_ids=None,
                head_mask=None, inputs_embeds=None, labels=None,
                output_attentions=False, output_hidden_states=False, training=False,
                keep_cache=True):
        """Returns ``(HeadOutput, cache)``: ``logits``, and ``loss`` when ``labels`` are given.

        Args:
            input_ids: (B, S); every other argument is keyword-only, in Hugging Face's names.
            attention_mask, token_type_ids, head_mask, inputs_embeds, output_attentions,
                output_hidden_states, training, keep_cache: as ``BertModel.forward``.
            labels: the targets, as the class's docstring says.
        """
        reads = not self.needs_pooler and self._targets_at_padding(attention_mask, labels)
        out, bcache, call = self._encode(input_ids, args, attention_mask, token_type_ids,
                                         output_attentions, output_hidden_states, training,
                                         keep_cache, head_mask, inputs_embeds, reads)
        logits, hcache = self._head_forward(self._features(out), training, call)
        loss, lcache = (None, None) if labels is None else self._loss_forward(logits, labels)
        return self._outputs(out, bcache, hcache, logits, loss, lcache, keep_cache)

    def _features(self, out):
        """What the classifier reads: the pooled [CLS] output (B, H) or every token (B, S, H)."""
        return out.pooler_output if self.needs_pooler else out.last_hidden_state

    def _loss_forward(self, logits, labels):
        """``(loss, cache)`` of ``logits`` against ``labels``."""
        raise NotImplementedError

    def _outputs(self, out, bcache, hcache, logits, loss, lcache, keep_cache):
        """``(HeadOutput, cache)``, the cache None unless ``keep_cache``."""
        cache = dict(bert=bcache, head=hcache, loss=lcache, logits_shape=logits.shape) \
            if keep_cache else None
        pooled = out.pooler_output if self.needs_pooler else None
        return HeadOutput(loss, logits, out.last_hidden_state, pooled, out.hidden_states,
                          out.attentions), cache

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

    def _backward_from_logits(self, dl, cache):
        """The head's backward, then the encoder's from the pooled output or every token."""
        d = self._head_backward(dl, cache["head"])
        if self.needs_pooler:
            return self.bert.backward(cache["bert"], None, d, zero_grad=False)
        return self.bert.backward(cache["bert"], d, None, zero_grad=False)


class BertForSequenceClassification(_ClassifierHead):
    """[CLS] pooled output -> dropout -> linear (num_labels). Loss: cross-entropy, or mean
    squared error when ``num_labels == 1`` (regression), as Hugging Face."""

    def _loss_forward(self, logits, labels):
        return class_loss_forward(self.xp, self.dtype, logits, labels)

    def _loss_backward(self, d_loss, cache):
        return class_loss_backward(d_loss, cache["loss"])


class BertForTokenClassification(_ClassifierHead):
    """Every token's hidden state -> dropout -> linear (num_labels). No pooler. Loss:
    cross-entropy averaged over tokens whose label is not -100."""
    add_pooling_layer = False
    needs_pooler = False

    def _loss_forward(self, logits, labels):
        return token_loss_forward(self.xp, logits, labels)

    def _loss_backward(self, d_loss, cache):
        return token_loss_backward(d_loss, cache["loss"], cache["logits_shape"])


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
        # the loss is a softmax over all S positions, padding included (as Hugging Face):
        # with targets, the encoder computes the padded positions too
        out, bcache, call = self._encode(input_ids, args, attention_mask, token_type_ids,
                                         output_attentions, output_hidden_states, training,
                                         keep_cache, head_mask, inputs_embeds,
                                         reads_padding=start_positions is not None)
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
        return self._outputs(out, bcache, hcache, logits, loss, lcache, keep_cache)

    def _loss_backward(self, d_loss, cache):
        c_start, c_end = cache["loss"]
        ds = cross_entropy.backward(d_loss / 2, c_start)                 # (B, S)
        de = cross_entropy.backward(d_loss / 2, c_end)
        return self.xp.stack([ds, de], axis=-1)                          # (B, S, 2)


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
        return self._outputs(out, bcache, hcache, logits, loss, lcache, keep_cache)

    def _loss_backward(self, d_loss, cache):
        return cross_entropy.backward(d_loss, cache["loss"])

    def _backward_from_logits(self, dl, cache):
        grads = super()._backward_from_logits(dl.reshape(-1, 1), cache)      # (B*C, 1) scores
        if "inputs_embeds" in grads:              # (B*C, S, H) -> the caller's (B, C, S, H)
            grads["inputs_embeds"] = grads["inputs_embeds"].reshape(
                *dl.shape, *cache["bert"]["shape"][1:], -1)
        return grads
