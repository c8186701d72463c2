"""BertModel: embeddings -> L post-LN encoder layers -> pooler, forward and backward.

Reading order: the heads' loss and backward (``heads/``) hand dL/d(last hidden state) to
``BertModel.backward`` below, which undoes ``forward`` block by block: ``_pooler_backward``,
then ``_layer_backward`` for the layers from last to first, then ``_embeddings_backward``. Each
``*_backward`` is its ``*_forward`` read from the bottom up, one line undoing one line (quoted
on the right); the math of every step is derived in the op's docstring (``minibert/ops/``). To
step through the textbook NumPy code in a debugger rather than the fused kernels, run under
``with minibert.ops.readable_ops():`` (or ``MINIBERT_READABLE_OPS=1``): same functions, same
dropout bits.

Forward, for token ids (B, S):

    x   = LayerNorm(E_word[ids] + E_pos[0..S-1] + E_type[segments]); x = dropout(x)
    for each layer l = 0..L-1:                                        (post-LN, as in BERT)
        q, k, v = split_heads(x [Wq; Wk; Wv]^T + [bq; bk; bv])        (B, S, 3H) -> 3 x (B, A, S, D)
        c   = merge_heads(attention(q, k, v, mask))                   (B, A, S, D) -> (B, S, H)
        h   = LayerNorm(dropout(c Wo^T + bo) + x)                      attention block
        x   = LayerNorm(dropout(GELU(h Wi^T + bi) Wo2^T + bo2) + h)    feed-forward block
    last_hidden_state = x;  pooler_output = tanh(x[:, 0] Wp^T + bp)    ([CLS] token)

A batch with padding runs the same lines on its T real tokens alone (``minibert/packing.py``):
``unpad`` the inputs (B, S) -> (T,) before the embeddings, every layer on (T, H), attention per
sequence, and ``pad`` the output (T, H) -> (B, S, H) after the last layer; ``backward`` does the
reverse. A layer never needs to know which form it runs on.

Parameter gradients are added into the model's one flat gradient buffer (``accumulate``); the
gradients ``backward`` returns are views of it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from .backend import get_array_module, get_xp
from .checkpoint import PretrainedMixin, load_pretrained
from .config import BertConfig
from .kernels.layouts import merged_view
from .model_inputs import InputChecks, check_int_array, reject_positional  # noqa: F401 (re-exported)
from .model_run import Run
from .ops import attention, dropout, embedding, gelu, layernorm, linear, tanh
from .ops.switch import use_kernel
from .packing import UNPAD_THRESHOLD, check_unpad, pack, pad, padding_share, unpad
from .params import FlatParams, ParamSpec
from .validation import deferred_checks

# Dropout streams: each training forward call gets a call index, each dropout site an id;
# the Philox offset (call << 20) | site makes every (call, site) an independent stream.
SITE_EMBEDDINGS = 0
SITE_HEAD = (1 << 20) - 1        # the classifier dropout of a fine-tuning head


def _site(layer: int, which: int) -> int:
    """Site id of dropout ``which`` (0 attention probs, 1 attention output, 2 FFN output)."""
    return 1 + 3 * layer + which


@dataclass
class BertOutput:
    last_hidden_state: object = None            # (B, S, H)
    pooler_output: object = None                # (B, H), None without a pooler
    hidden_states: list | None = None           # output_hidden_states: L + 1 arrays (B, S, H),
    #                                             [0] = the embeddings
    attentions: list | None = None              # output_attentions: L arrays (B, A, S, S),
    #                                             the probabilities before dropout


def bert_param_specs(config: BertConfig, prefix: str = "", add_pooling_layer: bool = True):
    """The parameters of BertModel in Hugging Face's names, linear weights [out, in]; in
    Hugging Face's order except that each layer's query, key and value weights come first,
    then their three biases."""
    H, I, V = config.hidden_size, config.intermediate_size, config.vocab_size
    P, T = config.max_position_embeddings, config.type_vocab_size
    specs = [
        ParamSpec(prefix + "embeddings.word_embeddings.weight", (V, H)),
        ParamSpec(prefix + "embeddings.position_embeddings.weight", (P, H)),
        ParamSpec(prefix + "embeddings.token_type_embeddings.weight", (T, H)),
        ParamSpec(prefix + "embeddings.LayerNorm.weight", (H,), "ones"),
        ParamSpec(prefix + "embeddings.LayerNorm.bias", (H,), "zeros"),
    ]
    for l in range(config.num_hidden_layers):
        p = f"{prefix}encoder.layer.{l}."
        # the three projection weights back to back, then their biases: in the flat buffer
        # they form one (3H, H) matrix and one (3H,) vector, so q, k and v are one GEMM
        # (``LayerParams.qkv``). Biases draw no random numbers, so every weight is initialized
        # with the same numbers as in Hugging Face's order.
        qkv = ("attention.self.query", "attention.self.key", "attention.self.value")
        specs += [ParamSpec(p + sub + ".weight", (H, H)) for sub in qkv]
        specs += [ParamSpec(p + sub + ".bias", (H,), "zeros") for sub in qkv]
        specs += [ParamSpec(p + "attention.output.dense.weight", (H, H)),
                  ParamSpec(p + "attention.output.dense.bias", (H,), "zeros")]
        specs += [ParamSpec(p + "attention.output.LayerNorm.weight", (H,), "ones"),
                  ParamSpec(p + "attention.output.LayerNorm.bias", (H,), "zeros"),
                  ParamSpec(p + "intermediate.dense.weight", (I, H)),
                  ParamSpec(p + "intermediate.dense.bias", (I,), "zeros"),
                  ParamSpec(p + "output.dense.weight", (H, I)),
                  ParamSpec(p + "output.dense.bias", (H,), "zeros"),
                  ParamSpec(p + "output.LayerNorm.weight", (H,), "ones"),
                  ParamSpec(p + "output.LayerNorm.bias", (H,), "zeros")]
    if add_pooling_layer:
        specs += [ParamSpec(prefix + "pooler.dense.weight", (H, H)),
                  ParamSpec(prefix + "pooler.dense.bias", (H,), "zeros")]
    return specs


class LayerParams(NamedTuple):
    """One encoder layer's tensors as (weight, bias) pairs of views into a flat buffer (the
    parameters, or their gradients): what ``_layer_forward`` reads and ``_layer_backward``
    adds into."""
    qkv: tuple          # [Wq; Wk; Wv] (3H, H), [bq; bk; bv] (3H,)
    attn_out: tuple     # Wo (H, H), bo (H,)
    attn_ln: tuple      # LayerNorm weight (H,), bias (H,)
    inter: tuple        # Wi (I, H), bi (I,)
    out: tuple          # Wo2 (H, I), bo2 (H,)
    out_ln: tuple       # LayerNorm weight (H,), bias (H,)


def weight_and_bias(named: dict, module: str):
    """(weight, bias) of ``module`` from a name -> array dict (parameters or gradients)."""
    return named[module + ".weight"], named[module + ".bias"]


def accumulate(buffers, *grads):
    """Add each gradient into its view of the flat gradient buffer (None: no gradient)."""
    for buf, g in zip(buffers, grads):
        if g is not None:
            buf += g


def split_heads(t, A: int, n: int = 1):
    """(B, S, n*H) -> n arrays (B, A, S, D), strided views: part j, head a is columns
    [j*H + a*D, j*H + (a+1)*D). n = 3 splits the [q | k | v] product, n = 1 a context.
    A packed batch (T, n*H) gives n arrays (A, T, D): the same with no batch axis."""
    *tokens, nH = t.shape                                                       # (B, S) or (T,)
    D = nH // (n * A)
    parts = t.reshape(*tokens, n, A, D)                                         # (..., n, A, D)
    return tuple(get_array_module(t).moveaxis(parts, (-3, -2), (0, -3)))       # n x (..., A, S, D)


def merge_heads(*parts):
    """The inverse of ``split_heads``: n arrays (B, A, S, D) -> one (B, S, n*A*D); n packed
    arrays (A, T, D) -> one (T, n*A*D). A view, not a copy, where the parts already lie in
    that layout (``kernels.layouts.merged_view``: the CPU attention kernels' outputs); a new
    array otherwise."""
    *batch, A, S, D = parts[0].shape
    xp = get_array_module(parts[0])
    merged = merged_view(parts) if xp is np else None
    if merged is not None:
        return merged
    out = xp.empty((*batch, S, len(parts), A, D), dtype=parts[0].dtype)       # (..., S, n, A, D)
    for j, t in enumerate(parts):
        out[..., j, :, :] = xp.moveaxis(t, -3, -2)                             # (..., S, A, D)
    return out.reshape(*batch, S, len(parts) * A * D)


def per_head_sum(t):
    """(B, A, S, D) or packed (A, T, D) -> (A,): the sum over everything but the heads."""
    return t.sum(axis=tuple(i for i in range(t.ndim) if i != t.ndim - 3))


class BertModel(PretrainedMixin, InputChecks):
    """BERT encoder (Devlin et al., 2018) with hand-written forward and backward.

    Args:
        config: BertConfig.
        dtype: np.float32 (default) or np.float64 (gradient checks).
        seed: seeds the initialization and every dropout mask.
        add_pooling_layer: keep the [CLS] pooler (False for token-level heads, as Hugging Face);
            without it there are no pooler parameters and ``pooler_output`` is None.
        device: "cpu" (NumPy) or "gpu" (CuPy).
        store, prefix: used by the heads to carve this model out of their own flat buffer.
    """
    # read by checkpoint.load_pretrained: the default, and that the encoder can go without
    # a pooler (from_pretrained then keeps one exactly when the checkpoint has one)
    add_pooling_layer = True
    needs_pooler = False

    def __init__(self, config: BertConfig, dtype=np.float32, seed: int = 0,
                 add_pooling_layer: bool = True, device: str = "cpu", *,
                 store: FlatParams | None = None, prefix: str = ""):
        if not isinstance(config, BertConfig):
            raise TypeError(f"config has type {type(config).__name__}, expected BertConfig")
        dtype = np.dtype(dtype)
        if dtype not in (np.float32, np.float64):
            raise TypeError(f"dtype={dtype} is not supported, expected float32 or float64")
        self.config = config
        self.dtype = dtype
        self.seed = int(seed)
        if not isinstance(add_pooling_layer, (bool, np.bool_)):
            raise TypeError(f"add_pooling_layer={add_pooling_layer!r} is invalid, expected True "
                            "or False")
        self.add_pooling_layer = bool(add_pooling_layer)
        self.prefix = prefix
        self.dropout_calls = 0             # training forwards so far: the dropout call index
        # The row, within a larger batch, of the first row of the batches this model gets:
        # 0, unless each data-parallel rank runs its slice of one batch (minibert.distributed).
        # Dropout masks are drawn at the element indices of the whole batch, so the ranks
        # together draw the masks of one process running it all.
        self.batch_start = 0
        # None: the forward runs on the real tokens alone when the batch has enough padding
        # (minibert/packing.py); True: whenever it is right padded; False: never
        self.unpad = None
        if store is None:
            store = FlatParams(bert_param_specs(config, prefix, add_pooling_layer), dtype, get_xp(device))
            store.initialize(seed, config.initializer_range)
        self.store = store
        self.xp = store.xp
        self.params = store.params
        self.grads = store.grads

    # ---------------------------------------------------------------- parameters
    def _pair(self, name, grads=False):
        """(weight, bias) of the module ``name`` (parameters, or gradients with ``grads``)."""
        return weight_and_bias(self.grads if grads else self.params, self.prefix + name)

    def _layer_params(self, l: int, grads: bool = False) -> LayerParams:
        """Layer ``l``'s tensors (or their gradients): views into the flat buffer."""
        H = self.config.hidden_size
        p = f"{self.prefix}encoder.layer.{l}."
        w = self.store.span(p + "attention.self.query.weight", p + "attention.self.value.weight",
                            (3 * H, H))                                        # (3H, H)
        b = self.store.span(p + "attention.self.query.bias", p + "attention.self.value.bias",
                            (3 * H,))                                          # (3H,)
        n, j = f"encoder.layer.{l}.", 1 if grads else 0
        return LayerParams(qkv=(w[j], b[j]),
                           attn_out=self._pair(n + "attention.output.dense", grads),
                           attn_ln=self._pair(n + "attention.output.LayerNorm", grads),
                           inter=self._pair(n + "intermediate.dense", grads),
                           out=self._pair(n + "output.dense", grads),
                           out_ln=self._pair(n + "output.LayerNorm", grads))

    def num_parameters(self) -> int:
        return sum(int(v.size) for k, v in self.params.items() if k.startswith(self.prefix))

    def load_state_dict(self, state: dict, strict: bool = True):
        return self.store.load_state_dict(state, strict)

    def state_dict(self) -> dict:
        return self.store.state_dict()

    # ---------------------------------------------------------------- forward
    def forward(self, input_ids=None, *args, attention_mask=None, token_type_ids=None,
                head_mask=None, inputs_embeds=None, output_attentions=False,
                output_hidden_states=False, training=False, keep_cache=True, unpad=None):
        """Returns ``(BertOutput, cache)``; ``cache`` feeds ``backward``.

        Args:
            input_ids: (B, S) token ids; every other argument is keyword-only.
            attention_mask: (B, S), 1 = attend, 0 = padding (None: all ones).
            token_type_ids: (B, S) segment ids (None: all zeros).
            head_mask: (L, A), or (A,) for every layer, finite real numbers: multiplies head
                a's attention probabilities in layer l, as Hugging Face 4.x (after dropout,
                before ``@ v``; 1 keeps a head, 0 masks it, 2 doubles it). ``backward``
                then returns its gradient as ``"head_mask"``.
            inputs_embeds: (B, S, H) in place of the word-embedding lookup ``E_word[ids]``
                (position and segment embeddings are still added); instead of ``input_ids``.
                ``backward`` then returns its gradient as ``"inputs_embeds"``.
            output_attentions: return each layer's attention probabilities (runs the textbook
                attention, the only one that forms them), times the head mask if one is given
                (as Hugging Face 4.x).
            output_hidden_states: return the embeddings and every layer's output.
            training: dropout on, with the next call index of this model's dropout streams.
            keep_cache: False drops each layer's cache when the layer is done (``__call__``),
                so memory holds one layer's activations at a time; the cache returned is None.
                No backward can follow, so the ops keep nothing and GELU and LayerNorm
                write over the products they read (``model_run.Run.scratch``).
            unpad: run the encoder on the real tokens alone (``minibert/packing.py``): None
                (the default: the model's ``unpad`` attribute, itself None by default: when
                the batch is right padded with enough padding to gain), True (whenever it is
                right padded) or False (never). The outputs are the padded model's, with
                zeros at the padded positions (constants: a gradient there goes nowhere).
        """
        reject_positional("BertModel.forward", args)
        with deferred_checks():     # the inputs' value checks on the GPU: one sync, at the end
            return self._forward(input_ids, attention_mask, token_type_ids, head_mask,
                                 inputs_embeds, output_attentions, output_hidden_states,
                                 training, keep_cache, unpad)

    def _forward(self, input_ids, attention_mask, token_type_ids, head_mask, inputs_embeds,
                 output_attentions, output_hidden_states, training, keep_cache, unpad):
        ids, tt, mask, embeds = self._validate_inputs(input_ids, attention_mask, token_type_ids,
                                                      inputs_embeds)
        packing = self._plan_packing(mask, unpad, output_attentions)
        run = Run.start(self, training, output_attentions, self._check_head_mask(head_mask),
                        packing, keep_cache)
        # what attention reads: the padding mask, or (packed) where each sequence begins
        keys = mask if packing is None else packing
        x, emb_cache = self._embeddings_forward(ids, tt, run, embeds)          # (B, S, H) or (T, H)
        if not keep_cache:
            emb_cache = None
        hidden_states, attentions, layer_caches = [x], [], []
        for l in range(self.config.num_hidden_layers):
            x, c = self._layer_forward(l, x, keys, run)                        # (B, S, H) or (T, H)
            if output_attentions:
                probs = attention.probabilities(c["attn"])                             # (B, A, S, S)
                if run.head_mask is not None:
                    probs = probs * run.head_mask[l][:, None, None]
                attentions.append(probs)
            if output_hidden_states:
                hidden_states.append(x)
            if keep_cache:
                layer_caches.append(c)
            del c                   # without keep_cache: freed before the next layer runs
        if packing is not None:                            # back to the batch: (T, H) -> (B, S, H)
            x = pad(x, packing)
            hidden_states = [pad(h, packing) for h in hidden_states] if output_hidden_states else []
        pooled, pool_cache = self._pooler_forward(x)                                   # (B, H)
        if training:
            self.dropout_calls += 1
        out = BertOutput(x, pooled, hidden_states if output_hidden_states else None,
                         attentions if output_attentions else None)
        if not keep_cache:
            return out, None
        return out, dict(shape=ids.shape, emb=emb_cache, layers=layer_caches, pool=pool_cache,
                         call=run.call, head_mask=run.head_mask is not None, packing=packing)

    def may_pack(self, unpad=None, output_attentions=False) -> bool:
        """Whether a forward with these arguments may run padding-free (the batch decides):
        not with ``unpad`` (or the model's ``unpad``) False, nor for the (B, A, S, S)
        attention probabilities; by default only where the fused kernels run (the CPU; the
        GPU's gain is not measured yet) and the attention is not the textbook one."""
        unpad = check_unpad(self.unpad if unpad is None else unpad)
        if unpad is False or output_attentions:
            return False
        return unpad or (use_kernel(self.store.data) and self.config.attn_implementation != "eager")

    def _plan_packing(self, mask, unpad, output_attentions):
        """The ``Packing`` this forward runs on, or None for the padded model: the rule of
        ``minibert/packing.py`` (a right-padded batch, and by default a padding share above
        ``UNPAD_THRESHOLD``, where ``may_pack``)."""
        if not self.may_pack(unpad, output_attentions):
            return None
        unpad = check_unpad(self.unpad if unpad is None else unpad)
        packing = pack(mask)
        if packing is None and unpad:
            raise ValueError("unpad=True runs on the real tokens of a right-padded batch: "
                             "expected an attention_mask whose rows are ones then zeros, with "
                             "at least one 1")
        if packing is None or (unpad is None and padding_share(packing) <= UNPAD_THRESHOLD):
            return None
        return packing

    def __call__(self, input_ids=None, *args, attention_mask=None, token_type_ids=None,
                 head_mask=None, inputs_embeds=None, output_attentions=False,
                 output_hidden_states=False, unpad=None):
        """Inference, as Hugging Face's ``model(...)``: the ``BertOutput`` of a forward without
        dropout, keeping no cache for a backward."""
        reject_positional("BertModel", args)
        return self.forward(input_ids, attention_mask=attention_mask,
                            token_type_ids=token_type_ids, head_mask=head_mask,
                            inputs_embeds=inputs_embeds, output_attentions=output_attentions,
                            output_hidden_states=output_hidden_states, keep_cache=False,
                            unpad=unpad)[0]

    def _embeddings_forward(self, ids, token_type_ids, run, inputs_embeds=None):
        """x = dropout(LayerNorm(E_word[ids] + E_pos[0..S-1] + E_type[segments]))  (B, S, H);
        ``inputs_embeds`` (B, S, H), when given, stands for E_word[ids]. Packed, the real
        tokens' ids, positions and segments are gathered first: x is (T, H)."""
        B, S = ids.shape
        pos_ids = self.xp.broadcast_to(self.xp.arange(S), (B, S))
        if run.packing is not None:                                      # (B, S) -> (T,)
            ids, pos_ids, token_type_ids = (unpad(a, run.packing) for a in (ids, pos_ids,
                                                                            token_type_ids))
            if inputs_embeds is not None:                                # (B, S, H) -> (T, H)
                inputs_embeds = unpad(inputs_embeds, run.packing)
        table = {name: self.params[f"{self.prefix}embeddings.{name}.weight"]
                 for name in ("word_embeddings", "position_embeddings", "token_type_embeddings")}
        if inputs_embeds is None:
            we, c_we = embedding.forward(ids, table["word_embeddings"], name="input_ids")  # (B, S, H)
        else:
            we, c_we = inputs_embeds, None                         # the caller's E_word[ids]
        pe, c_pe = embedding.forward(pos_ids, table["position_embeddings"], name="position_ids")
        te, c_te = embedding.forward(token_type_ids, table["token_type_embeddings"],
                                     name="token_type_ids")
        x, c_ln = layernorm.forward(we + pe + te, *self._pair("embeddings.LayerNorm"),
                                    self.config.layer_norm_eps)
        x, c_do = dropout.forward(x, run.p_hidden, self.seed, run.offset(SITE_EMBEDDINGS),
                                  run.training, start=run.first_element(x), rows=run.rows)
        return x, (c_we, c_pe, c_te, c_ln, c_do)

    def _layer_forward(self, l: int, x, mask, run):
        """Encoder layer ``l``: (B, S, H) -> (B, S, H) and its cache (post-LN, as in BERT).
        A packed batch runs the same lines on (T, H), ``mask`` its ``Packing``; the comments
        give the padded shapes."""
        cfg, p, c = self.config, self._layer_params(l), {}
        A, eps, seed = cfg.num_attention_heads, cfg.layer_norm_eps, self.seed
        S = mask.shape[1]                                         # the padded length
        qkv, c["qkv"] = linear.forward(x, *p.qkv)                 # qkv = x Wqkv^T + bqkv   (B, S, 3H)
        q, k, v = split_heads(qkv, A, 3)                          # (B, A, S, D) each
        ctx, c["attn"] = attention.forward(                       # ctx = attention(q, k, v)
            q, k, v, mask, None, run.p_attn, seed, run.offset(_site(l, 0)), run.training,
            implementation=cfg.attn_implementation, return_probs=run.output_attentions,
            start=run.first_element(q, S * S * A))                        # P is (B, A, S, S)
        if run.head_mask is not None:
            # Hugging Face multiplies the probabilities: (P m_a) V = m_a (P V), so the mask
            # scales each head's context and the fused kernel still runs (see _layer_backward)
            m = run.head_mask[l][:, None, None]                   # (A, 1, 1)
            c["head_mask"] = (ctx, m)                             # the unmasked context, m
            ctx = ctx * m                                         # ctx = m_a ctx           (B, A, S, D)
        ctx = merge_heads(ctx)                                    # (B, A, S, D) -> (B, S, H)
        a, c["attn_out"] = linear.forward(ctx, *p.attn_out)       # a = ctx Wo^T + bo
        a, c["attn_do"] = dropout.forward(a, run.p_hidden, seed, run.offset(_site(l, 1)),
                                          run.training, start=run.first_element(a), rows=run.rows)
        h, c["attn_ln"] = layernorm.forward(a, *p.attn_ln, eps, residual=x,    # h = LN(a + x)
                                            grad=run.grad, out=run.scratch(a))
        # the intermediate bias is added by the GELU op (one pass over (B, S, I) less)
        i, c["inter"] = linear.forward(h, p.inter[0])             # i = h Wi^T              (B, S, I)
        g, c["gelu"] = gelu.bias_forward(i, p.inter[1], gelu.APPROXIMATE_FOR_ACT[cfg.hidden_act],
                                         grad=run.grad, out=run.scratch(i))
        o, c["out"] = linear.forward(g, *p.out)                   # o = g Wo2^T + bo2       (B, S, H)
        o, c["out_do"] = dropout.forward(o, run.p_hidden, seed, run.offset(_site(l, 2)),
                                         run.training, start=run.first_element(o), rows=run.rows)
        x, c["out_ln"] = layernorm.forward(o, *p.out_ln, eps, residual=h,      # x = LN(o + h)
                                           grad=run.grad, out=run.scratch(o))
        return x, c

    def _pooler_forward(self, x):
        """pooled = tanh(x[:, 0] Wp^T + bp) (B, H) on the [CLS] token; None without a pooler."""
        if not self.add_pooling_layer:
            return None, None
        z, c_pd = linear.forward(x[:, 0], *self._pair("pooler.dense"))                # (B, H)
        pooled, c_pt = tanh.forward(z)                                                 # (B, H)
        return pooled, (c_pd, c_pt)

    # ---------------------------------------------------------------- backward
    def backward(self, cache, d_last_hidden_state=None, d_pooler_output=None, *, zero_grad=True):
        """Gradients of every parameter, named as ``params`` (views into the flat buffer).

        Args:
            cache: from ``forward``.
            d_last_hidden_state: dL/d last_hidden_state (B, S, H), or None for zero.
            d_pooler_output: dL/d pooler_output (B, H), or None for zero.
            zero_grad: start from zero gradients (the heads pass False after writing their own).
        Returns:
            dict name -> gradient view; overwritten by the next ``backward``.
        """
        if cache is None:
            raise ValueError("cache is None: it comes from forward(..., keep_cache=True); "
                             "model(...) is inference and keeps none")
        dx = self._upstream(cache, d_last_hidden_state, d_pooler_output)               # (B, S, H)
        if zero_grad:
            self.store.zero_grad()
        if d_pooler_output is not None:
            dx[:, 0] += self._pooler_backward(d_pooler_output.astype(self.dtype), cache["pool"])
        packing = cache["packing"]
        if packing is not None:      # (B, S, H) -> (T, H): the padded rows' outputs were zeros
            dx = unpad(dx, packing)
        L, A = self.config.num_hidden_layers, self.config.num_attention_heads
        d_head_mask = self.xp.zeros((L, A), dtype=self.dtype) if cache.get("head_mask") else None
        for l in reversed(range(L)):
            dx = self._layer_backward(l, dx, cache["layers"][l], d_head_mask)          # (B, S, H)
        d_inputs_embeds = self._embeddings_backward(dx, cache["emb"])
        if packing is not None and d_inputs_embeds is not None:    # (T, H) -> (B, S, H)
            d_inputs_embeds = pad(d_inputs_embeds, packing)
        if d_head_mask is None and d_inputs_embeds is None:
            return self.grads
        grads = dict(self.grads)           # the parameters' views, plus the inputs' gradients
        if d_head_mask is not None:
            grads["head_mask"] = d_head_mask                                           # (L, A)
        if d_inputs_embeds is not None:
            grads["inputs_embeds"] = d_inputs_embeds                                   # (B, S, H)
        return grads

    def _upstream(self, cache, d_last_hidden_state, d_pooler_output):
        """Checks the upstream gradients' shapes; a fresh dL/d last_hidden_state to add into."""
        B, S = cache["shape"]
        H = self.config.hidden_size
        if d_pooler_output is not None:
            if not self.add_pooling_layer:
                raise ValueError("d_pooler_output was given but the model has no pooling layer")
            if tuple(d_pooler_output.shape) != (B, H):
                raise ValueError(f"d_pooler_output has shape {tuple(d_pooler_output.shape)}, "
                                 f"expected {(B, H)}")
        if d_last_hidden_state is None:
            return self.xp.zeros((B, S, H), dtype=self.dtype)
        if tuple(d_last_hidden_state.shape) != (B, S, H):
            raise ValueError(f"d_last_hidden_state has shape {tuple(d_last_hidden_state.shape)}, "
                             f"expected {(B, S, H)}")
        return self.xp.array(d_last_hidden_state, dtype=self.dtype)                  # a copy we add into

    def _pooler_backward(self, dpooled, pool_cache):
        """dL/d x[:, 0] (B, H) from dL/d pooled; adds the pooler's parameter gradients."""
        c_pd, c_pt = pool_cache
        dz = tanh.backward(dpooled, c_pt)                                  # pooled = tanh(z)
        dcls, dw, db = linear.backward(dz, c_pd)                           # z = x[:, 0] Wp^T + bp
        accumulate(self._pair("pooler.dense", grads=True), dw, db)
        return dcls

    @staticmethod
    def _output_backward(dx, c_ln, c_do, c_lin, g_ln, g_lin):
        """Backward of an output block x = LN(dropout(y W^T + b) + r) (Hugging Face's
        BertSelfOutput, BertOutput): (dL/dr, dL/dy); adds the W, b and LayerNorm gradients."""
        dz, dw, db = layernorm.backward(dx, c_ln)                 # x = LN(z + r): dL/dr = dz
        accumulate(g_ln, dw, db)
        dy, dw, db = linear.backward(dropout.backward(dz, c_do), c_lin)  # z = dropout(y W^T + b)
        accumulate(g_lin, dw, db)
        return dz, dy

    def _layer_backward(self, l: int, dx, c, d_head_mask=None):
        """dL/d x of layer ``l``'s input from dL/d its output; adds its parameter gradients
        (and writes row ``l`` of ``d_head_mask`` (L, A) when the forward had a head mask).
        ``_layer_forward`` read from the bottom up.

        The head mask: ``ctx_a = m_a * C_a`` with C_a the unmasked context (B, S, D) of head
        a, so dL/dm_a = sum over (B, S, D) of dL/dctx_a * C_a and dL/dC_a = m_a dL/dctx_a.
        That equals the gradient of Hugging Face's form ``(P m_a) V``: with P' = m_a P,
        dL/dm_a = sum(dL/dP' * P) = sum((dctx_a V^T) * P) = sum(dctx_a * (P V))."""
        g, A = self._layer_params(l, grads=True), self.config.num_attention_heads
        dh, dg = self._output_backward(dx, c["out_ln"], c["out_do"], c["out"],
                                       g.out_ln, g.out)   # x = LN(dropout(g Wo2^T + bo2) + h)
        di, db = gelu.bias_backward(dg, c["gelu"])                # g = GELU(i + bi)
        dh_i, dw, _ = linear.backward(di, c["inter"])             # i = h Wi^T
        accumulate(g.inter, dw, db)
        dh = dh + dh_i                                            # (B, S, H)
        dx, dctx = self._output_backward(dh, c["attn_ln"], c["attn_do"], c["attn_out"],
                                         g.attn_ln, g.attn_out)  # h = LN(dropout(ctx Wo^T + bo) + x)
        (dctx,) = split_heads(dctx, A)                            # ctx = merge_heads(ctx)
        if "head_mask" in c:                                      # ctx = m_a ctx
            ctx, m = c["head_mask"]
            d_head_mask[l] = per_head_sum(dctx * ctx)             # (A,)
            dctx = dctx * m                                       # (B, A, S, D)
        dq, dk, dv = attention.backward(dctx, c["attn"])          # ctx = attention(q, k, v)
        dqkv = merge_heads(dq, dk, dv)                            # q, k, v = split_heads(qkv, 3)
        dx_qkv, dw, db = linear.backward(dqkv, c["qkv"])          # qkv = x Wqkv^T + bqkv
        accumulate(g.qkv, dw, db)
        return dx + dx_qkv                                        # (B, S, H)

    def _embeddings_backward(self, dx, emb_cache):
        """Adds the gradients of the tables and the LayerNorm from dL/dx (B, S, H); returns
        dL/d inputs_embeds (B, S, H) when the forward took them, else None."""
        c_we, c_pe, c_te, c_ln, c_do = emb_cache
        dx = dropout.backward(dx, c_do)                                    # x = dropout(x)
        dsum, dw, db = layernorm.backward(dx, c_ln)                        # x = LN(we + pe + te)
        accumulate(self._pair("embeddings.LayerNorm", grads=True), dw, db)
        # added straight into the gradient buffer: the tables are large, the rows used few;
        # last lookup first, so that the whole backward is the forward read in reverse
        for name, c_e in (("token_type_embeddings", c_te), ("position_embeddings", c_pe),
                          ("word_embeddings", c_we)):                    # te = E_type[segments], ...
            if c_e is not None:
                embedding.backward(dsum, c_e, out=self.grads[self.prefix + f"embeddings.{name}.weight"])
        return dsum if c_we is None else None         # we = inputs_embeds: dL/d inputs_embeds

    # ---------------------------------------------------------------- RNG state
    def rng_state(self) -> dict:
        return {"seed": self.seed, "dropout_calls": self.dropout_calls}

    def set_rng_state(self, state: dict):
        self.seed = int(state["seed"])
        self.dropout_calls = int(state["dropout_calls"])


def from_pretrained(path, model_class=None, dtype=np.float32, device: str = "cpu",
                    new_head: bool = False, add_pooling_layer: bool | None = None,
                    output_loading_info: bool = False, **config_overrides):
    """``minibert.from_pretrained``: a ``model_class`` (default BertModel) loaded from the
    Hugging Face directory ``path``, as ``model_class.from_pretrained(path, ...)``. It lives
    here, beside its default class: ``checkpoint.py`` sits below the models and takes the
    class as an argument (``checkpoint.load_pretrained``, which documents the arguments)."""
    return load_pretrained(path, model_class or BertModel, dtype, device, new_head,
                           add_pooling_layer, output_loading_info, **config_overrides)
