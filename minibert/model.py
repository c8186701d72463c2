"""BertModel: embeddings -> L post-LN encoder layers -> pooler, forward and backward.

Forward, for token ids (B, S):

    x   = LayerNorm(E_word[ids] + E_pos[0..S-1] + E_type[segments]); x = dropout(x)
    for each layer l = 0..L-1:                                        (post-LN, as in BERT)
        q, k, v = x Wq^T + bq, x Wk^T + bk, x Wv^T + bv                 (B, S, H) -> (B, A, S, D)
                  (one GEMM: [Wq; Wk; Wv] is one (3H, H) view of the flat buffer)
        c   = attention(q, k, v, mask)                                 (B, A, S, D) -> (B, S, H)
        h   = LayerNorm(dropout(c Wo^T + bo) + x)                      attention block
        x   = LayerNorm(dropout(GELU(h Wi^T + bi) Wo2^T + bo2) + h)    feed-forward block
    last_hidden_state = x;  pooler_output = tanh(x[:, 0] Wp^T + bp)    ([CLS] token)

Backward calls the same ops in the reverse order, each op's ``backward`` fed with its own
cache; parameter gradients are accumulated into the model's flat gradient buffer.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .backend import get_xp
from .checkpoint import PretrainedMixin
from .config import BertConfig
from .params import FlatParams, ParamSpec
from .ops import attention, dropout, embedding, gelu, layernorm, linear, tanh

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
    hidden_states: list = field(default_factory=list)   # L + 1 arrays (B, S, H); [0] = embeddings
    attentions: list = field(default_factory=list)      # L arrays (B, A, S, S), pre-dropout;
    #                                                     None per layer with attn_implementation="fused"


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
        # (``BertModel._qkv``). Biases draw no random numbers, so every weight is initialized
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


def _check_int_array(name, a, ndim=2):
    if not hasattr(a, "dtype"):
        a = np.asarray(a)
    if a.dtype.kind not in "iu":
        raise TypeError(f"{name} has dtype {a.dtype}, expected an integer array")
    if a.ndim != ndim:
        raise ValueError(f"{name} has shape {tuple(a.shape)}, expected {ndim} dimensions")
    return a


class BertModel(PretrainedMixin):
    """BERT encoder (Devlin et al., 2018) with hand-written forward and backward.

    Args:
        config: BertConfig.
        dtype: np.float32 (default) or np.float64 (gradient checks).
        seed: seeds the initialization and every dropout mask.
        add_pooling_layer: keep the [CLS] pooler (False for token-level heads, as Hugging Face).
        device: "cpu" (NumPy) or "gpu" (CuPy).
        store, prefix: used by the heads to carve this model out of their own flat buffer.
    """

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
        self.add_pooling_layer = add_pooling_layer
        self.prefix = prefix
        self.dropout_calls = 0             # training forwards so far: the dropout call index
        if store is None:
            store = FlatParams(bert_param_specs(config, prefix, add_pooling_layer), dtype, get_xp(device))
            store.initialize(seed, config.initializer_range)
        self.store = store
        self.xp = store.xp
        self.params = store.params
        self.grads = store.grads

    # ---------------------------------------------------------------- helpers
    def _p(self, name):
        return self.params[self.prefix + name]

    def _acc(self, name, g):
        """Accumulate a parameter gradient into the flat gradient buffer."""
        if g is not None:
            self.grads[self.prefix + name] += g

    def _qkv(self, layer, grads=False):
        """Layer ``layer``'s query, key and value weights as one (3H, H) view and their biases
        as one (3H,) view (or the views of their gradients), rows [q; k; v]."""
        H = self.config.hidden_size
        p = f"{self.prefix}encoder.layer.{layer}.attention.self."
        w = self.store.span(p + "query.weight", p + "value.weight", (3 * H, H))
        b = self.store.span(p + "query.bias", p + "value.bias", (3 * H,))
        return (w[1], b[1]) if grads else (w[0], b[0])

    def num_parameters(self) -> int:
        return sum(int(v.size) for k, v in self.params.items() if k.startswith(self.prefix))

    def load_state_dict(self, state: dict, strict: bool = True):
        return self.store.load_state_dict(state, strict)

    def state_dict(self) -> dict:
        return self.store.state_dict()

    def _validate_inputs(self, input_ids, attention_mask, token_type_ids):
        cfg, xp = self.config, self.xp
        input_ids = _check_int_array("input_ids", input_ids)
        B, S = input_ids.shape
        if S > cfg.max_position_embeddings:
            raise ValueError(f"input_ids has sequence length {S}, longer than "
                             f"max_position_embeddings={cfg.max_position_embeddings}")
        if S == 0 or B == 0:
            raise ValueError(f"input_ids has shape {(B, S)}, expected at least one token per row")
        if token_type_ids is None:
            token_type_ids = xp.zeros((B, S), dtype=np.int64)
        token_type_ids = _check_int_array("token_type_ids", token_type_ids)
        if tuple(token_type_ids.shape) != (B, S):
            raise ValueError(f"token_type_ids has shape {tuple(token_type_ids.shape)}, "
                             f"expected the shape of input_ids {(B, S)}")
        if attention_mask is None:
            attention_mask = xp.ones((B, S), dtype=self.dtype)
        attention_mask = xp.asarray(attention_mask)
        if tuple(attention_mask.shape) != (B, S):
            raise ValueError(f"attention_mask has shape {tuple(attention_mask.shape)}, "
                             f"expected the shape of input_ids {(B, S)}")
        m = attention_mask.astype(self.dtype)
        if bool(xp.any((m != 0) & (m != 1))):
            raise ValueError("attention_mask has values other than 0 and 1, expected 1 = attend, "
                             "0 = padding")
        return xp.asarray(input_ids), xp.asarray(token_type_ids), m

    # ---------------------------------------------------------------- forward
    def forward(self, input_ids, attention_mask=None, token_type_ids=None, training=False):
        """Returns ``(BertOutput, cache)``; ``cache`` feeds ``backward``.

        With ``config.attn_implementation == "fused"`` attention runs in
        ``minibert.kernels`` (same function, same dropout bits), which never forms the
        (S, S) probabilities: ``outputs.attentions`` then holds None for every layer.
        """
        cfg, xp = self.config, self.xp
        ids, tt, mask = self._validate_inputs(input_ids, attention_mask, token_type_ids)
        B, S = ids.shape
        A, D = cfg.num_attention_heads, cfg.head_size
        call = self.dropout_calls
        if training:
            self.dropout_calls += 1
        p_hidden = cfg.hidden_dropout_prob if training else 0.0
        p_attn = cfg.attention_probs_dropout_prob if training else 0.0
        approx = gelu.APPROXIMATE_FOR_ACT[cfg.hidden_act]

        def offset(site):
            return (call << 20) | site

        # --- embeddings
        we, c_we = embedding.forward(ids, self._p("embeddings.word_embeddings.weight"), name="input_ids")
        pos_ids = xp.broadcast_to(xp.arange(S), (B, S))
        pe, c_pe = embedding.forward(pos_ids, self._p("embeddings.position_embeddings.weight"),
                                     name="position_ids")
        te, c_te = embedding.forward(tt, self._p("embeddings.token_type_embeddings.weight"),
                                     name="token_type_ids")
        x, c_ln = layernorm.forward(we + pe + te, self._p("embeddings.LayerNorm.weight"),
                                    self._p("embeddings.LayerNorm.bias"), cfg.layer_norm_eps)
        x, c_do = dropout.forward(x, p_hidden, self.seed, offset(SITE_EMBEDDINGS), training)
        emb_cache = (c_we, c_pe, c_te, c_ln, c_do)
        hidden_states, attentions, layer_caches = [x], [], []

        # --- encoder layers
        for l in range(cfg.num_hidden_layers):
            n = f"encoder.layer.{l}."
            c = {}
            w_qkv, b_qkv = self._qkv(l)                                                    # (3H, H), (3H,)
            qkv, c["qkv"] = linear.forward(x, w_qkv, b_qkv)                                # (B, S, 3H)
            heads = qkv.reshape(B, S, 3, A, D).transpose(2, 0, 3, 1, 4)                    # (3, B, A, S, D)
            if cfg.attn_implementation == "fused":
                # the fused kernel keeps only out and the row log-sum-exp (no (S, S) probabilities:
                # outputs.attentions gets None, as Hugging Face's sdpa path); same dropout bits
                from .kernels import fused_attention_forward
                q, k, v = xp.ascontiguousarray(heads)                                      # (B, A, S, D) each
                fused = dict(mask=mask, scale=1.0 / np.sqrt(D), dropout_p=p_attn, seed=self.seed,
                             offset=offset(_site(l, 0)))
                ctx, lse = fused_attention_forward(q, k, v, **fused)                        # (B, A, S, D)
                c["attn"] = dict(q=q, k=k, v=v, out=ctx, lse=lse, **fused)
                attentions.append(None)
            else:
                ctx, c["attn"] = attention.forward(*heads, attention_mask=mask, scale=1.0 / np.sqrt(D),
                                                   dropout_p=p_attn, seed=self.seed,
                                                   offset=offset(_site(l, 0)), training=training)
                attentions.append(c["attn"]["probs"])
            ctx = ctx.transpose(0, 2, 1, 3).reshape(B, S, A * D)                           # (B, S, H)
            a, c["attn_out"] = linear.forward(ctx, self._p(n + "attention.output.dense.weight"),
                                              self._p(n + "attention.output.dense.bias"))
            a, c["attn_do"] = dropout.forward(a, p_hidden, self.seed, offset(_site(l, 1)), training)
            h, c["attn_ln"] = layernorm.forward(a, self._p(n + "attention.output.LayerNorm.weight"),
                                                self._p(n + "attention.output.LayerNorm.bias"),
                                                cfg.layer_norm_eps, residual=x)             # LN(a + x)
            # the intermediate bias is added by the GELU op (one pass over (B, S, I) less)
            i, c["inter"] = linear.forward(h, self._p(n + "intermediate.dense.weight"))     # (B, S, I)
            g, c["gelu"] = gelu.bias_forward(i, self._p(n + "intermediate.dense.bias"), approx)
            o, c["out"] = linear.forward(g, self._p(n + "output.dense.weight"),
                                         self._p(n + "output.dense.bias"))                  # (B, S, H)
            o, c["out_do"] = dropout.forward(o, p_hidden, self.seed, offset(_site(l, 2)), training)
            x, c["out_ln"] = layernorm.forward(o, self._p(n + "output.LayerNorm.weight"),
                                               self._p(n + "output.LayerNorm.bias"), cfg.layer_norm_eps,
                                               residual=h)                                  # LN(o + h)
            layer_caches.append(c)
            hidden_states.append(x)

        # --- pooler: dense + tanh on the [CLS] token
        pooled = pool_cache = None
        if self.add_pooling_layer:
            z, c_pd = linear.forward(x[:, 0], self._p("pooler.dense.weight"), self._p("pooler.dense.bias"))
            pooled, c_pt = tanh.forward(z)                                                 # (B, H)
            pool_cache = (c_pd, c_pt)

        out = BertOutput(x, pooled, hidden_states, attentions)
        cache = dict(shape=(B, S), emb=emb_cache, layers=layer_caches, pool=pool_cache, call=call)
        return out, cache

    # ---------------------------------------------------------------- backward
    def backward(self, cache, d_last_hidden_state=None, d_pooler_output=None, zero_grad=True):
        """Gradients of every parameter, named as ``params`` (views into the flat buffer).

        Args:
            cache: from ``forward``.
            d_last_hidden_state: dL/d last_hidden_state (B, S, H), or None for zero.
            d_pooler_output: dL/d pooler_output (B, H), or None for zero.
            zero_grad: start from zero gradients (the heads pass False after writing their own).
        Returns:
            dict name -> gradient view; overwritten by the next ``backward``.
        """
        cfg, xp = self.config, self.xp
        B, S = cache["shape"]
        H, A, D = cfg.hidden_size, cfg.num_attention_heads, cfg.head_size
        if zero_grad:
            self.store.zero_grad()
        if d_last_hidden_state is None:
            dx = xp.zeros((B, S, H), dtype=self.dtype)
        else:
            if tuple(d_last_hidden_state.shape) != (B, S, H):
                raise ValueError(f"d_last_hidden_state has shape {tuple(d_last_hidden_state.shape)}, "
                                 f"expected {(B, S, H)}")
            dx = xp.array(d_last_hidden_state, dtype=self.dtype)       # a copy we may add into

        # --- pooler
        if d_pooler_output is not None:
            if not self.add_pooling_layer:
                raise ValueError("d_pooler_output was given but the model has no pooling layer")
            if tuple(d_pooler_output.shape) != (B, H):
                raise ValueError(f"d_pooler_output has shape {tuple(d_pooler_output.shape)}, "
                                 f"expected {(B, H)}")
            c_pd, c_pt = cache["pool"]
            dz = tanh.backward(d_pooler_output.astype(self.dtype), c_pt)  # undoes pooled = tanh(z)
            dcls, dw, db = linear.backward(dz, c_pd)                     # undoes z = x[:, 0] Wp^T + bp
            self._acc("pooler.dense.weight", dw)
            self._acc("pooler.dense.bias", db)
            dx[:, 0] += dcls                                             # undoes x[:, 0]

        # --- encoder layers, last to first
        for l in reversed(range(cfg.num_hidden_layers)):
            n = f"encoder.layer.{l}."
            c = cache["layers"][l]
            # x = LayerNorm(o + h): the gradient of the sum flows to both o and h
            dsum, dw, db = layernorm.backward(dx, c["out_ln"])
            self._acc(n + "output.LayerNorm.weight", dw)
            self._acc(n + "output.LayerNorm.bias", db)
            dh = dsum                                                    # residual branch
            do = dropout.backward(dsum, c["out_do"])                     # o = dropout(o)
            dg, dw, db = linear.backward(do, c["out"])                   # o = g Wo2^T + bo2
            self._acc(n + "output.dense.weight", dw)
            self._acc(n + "output.dense.bias", db)
            di, db = gelu.bias_backward(dg, c["gelu"])                   # g = GELU(i + bi)
            self._acc(n + "intermediate.dense.bias", db)
            dh2, dw, _ = linear.backward(di, c["inter"])                 # i = h Wi^T
            self._acc(n + "intermediate.dense.weight", dw)
            dh += dh2
            # h = LayerNorm(a + x)
            dsum, dw, db = layernorm.backward(dh, c["attn_ln"])
            self._acc(n + "attention.output.LayerNorm.weight", dw)
            self._acc(n + "attention.output.LayerNorm.bias", db)
            dx = dsum                                                    # residual branch
            da = dropout.backward(dsum, c["attn_do"])                    # a = dropout(a)
            dctx, dw, db = linear.backward(da, c["attn_out"])            # a = ctx Wo^T + bo
            self._acc(n + "attention.output.dense.weight", dw)
            self._acc(n + "attention.output.dense.bias", db)
            dctx = dctx.reshape(B, S, A, D).transpose(0, 2, 1, 3)       # (B, A, S, D)
            if cfg.attn_implementation == "fused":
                from .kernels import fused_attention_backward
                f = c["attn"]
                dheads = fused_attention_backward(xp.ascontiguousarray(dctx), f["q"], f["k"], f["v"],
                                                  f["out"], f["lse"], f["mask"], f["scale"],
                                                  f["dropout_p"], f["seed"], f["offset"])
            else:
                dheads = attention.backward(dctx, c["attn"])             # ctx = attention(q, k, v)
            dqkv = xp.empty((B, S, 3, A, D), dtype=self.dtype)           # undoes the head split
            for j, dt in enumerate(dheads):
                dqkv[:, :, j] = dt.transpose(0, 2, 1, 3)                 # (B, S, A, D)
            dxi, dw, db = linear.backward(dqkv.reshape(B, S, 3 * H), c["qkv"])  # qkv = x Wqkv^T + bqkv
            gw, gb = self._qkv(l, grads=True)
            gw += dw
            gb += db
            dx += dxi

        # --- embeddings
        c_we, c_pe, c_te, c_ln, c_do = cache["emb"]
        dx = dropout.backward(dx, c_do)
        dsum, dw, db = layernorm.backward(dx, c_ln)
        self._acc("embeddings.LayerNorm.weight", dw)
        self._acc("embeddings.LayerNorm.bias", db)
        # scatter-added straight into the gradient buffer: the tables are large, the rows few
        for name, c_e in (("word_embeddings", c_we), ("position_embeddings", c_pe),
                          ("token_type_embeddings", c_te)):
            embedding.backward(dsum, c_e, out=self.grads[self.prefix + f"embeddings.{name}.weight"])
        return self.grads

    # ---------------------------------------------------------------- RNG state
    def rng_state(self) -> dict:
        return {"seed": self.seed, "dropout_calls": self.dropout_calls}

    def set_rng_state(self, state: dict):
        self.seed = int(state["seed"])
        self.dropout_calls = int(state["dropout_calls"])

