"""The pretraining heads: masked LM on the masked positions (the decoder tied to the word
embeddings) and next-sentence prediction (``BertForPreTraining``), and the masked LM alone
(``BertForMaskedLM``)."""
from __future__ import annotations

import numpy as np

from ..backend import scatter_add
from ..config import BertConfig
from ..model import accumulate
from ..ops import cross_entropy, gelu, layernorm, linear
from ..params import ParamSpec
from ..validation import checks_deferred
from .base import HeadOutput, PreTrainingOutput, _BertWithHead


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
        reads = self._targets_at_padding(attention_mask, masked_lm_ids, gathered=True,
                                         positions=masked_lm_positions,
                                         weights=masked_lm_weights)
        out, bcache, _ = self._encode(input_ids, args, attention_mask, token_type_ids,
                                      output_attentions, output_hidden_states, training, keep_cache,
                                      head_mask, inputs_embeds, reads)
        x = out.last_hidden_state                                        # (B, S, H)
        B, S, H = x.shape
        pos = self._mlm_positions(masked_lm_positions, B, S)    # None: all S, as HF's prediction_logits
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
        reads = (self._targets_at_padding(attention_mask, labels)
                 or self._targets_at_padding(attention_mask, masked_lm_ids, gathered=True,
                                             positions=masked_lm_positions,
                                             weights=masked_lm_weights))
        out, bcache, _ = self._encode(input_ids, args, attention_mask, token_type_ids,
                                      output_attentions, output_hidden_states, training, keep_cache,
                                      head_mask, inputs_embeds, reads)
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

