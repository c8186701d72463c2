"""The feature-based approach (Devlin et al., 2018, section 5.3; ELMo-style): a frozen
pretrained encoder whose chosen layers' hidden states feed a small task model, the only
part that is trained.

Features. ``BertModel(..., output_hidden_states=True)`` returns L + 1 arrays (B, S, H):
``hidden_states[0]`` the embeddings, ``hidden_states[l]`` the output of layer l, and
``hidden_states[L]`` (or ``[-1]``) the last layer. For the chosen indexes l_1 .. l_n::

    concat:  f = [h_{l_1} ; h_{l_2} ; ... ; h_{l_n}]      (B, S, n H)   in the order given
    sum:     f = h_{l_1} + h_{l_2} + ... + h_{l_n}          (B, S, H)     added in that order

The default is the paper's best feature-based choice, the last four layers (``-4,-3,-2,-1``),
or all L + 1 arrays when the model has fewer (the default pretrained model has L = 2:
the embeddings and both layers). Indexes count as Python's do, from -(L + 1) to L; the ones
kept (``layers``) are the non-negative forms, so 0 always means the embeddings.

The encoder is frozen: it runs as ``model(...)`` does in inference (no dropout, each layer's
activations dropped as soon as the next layer has them, no cache for a backward) in
training as in evaluation, and no backward ever runs through it. Its parameters live in
their own buffer whose gradient is a read-only zero-stride view of one number (no gradient
buffer: writing a gradient into it raises); the model's ``store`` is the task model's
buffer alone, so the optimizer's update, its moments and the gradient norm see only those
parameters.

The task model (the paper's was a two-layer 768-dimensional BiLSTM over the features)::

    head="mlp" (default):  logits = W2 dropout(GELU(W1 dropout(f) + b1)) + b2    hidden D = H
    head="linear":         logits = W dropout(f) + b

Chosen: the MLP by default. A frozen encoder cannot adapt its features to the task, so the
task model must carry some capacity of its own; the paper gives it a BiLSTM. A per-token
two-layer MLP adds a nonlinearity over the combined layers at the cost of F x D + D x K
parameters and two matrix products, while a BiLSTM's sequential recurrence (and its backward
through time) would cost more than the frozen encoder saves on the small models minibert
trains. The features are already contextual (each is the output of self-attention over the
whole sequence), which is what the BiLSTM added on top of non-contextual inputs in ELMo.
``head="linear"`` is BERT's own fine-tuning classifier on frozen features.

Feature cache (``cache_features=True``). Frozen and in inference mode, the encoder gives an
example the same features at every epoch, so they can be computed once: each row's real
tokens run through the encoder alone the first time the row is seen and are looked up after
that (``FeatureBasedModel.cached_features``), at the cost of keeping every distinct row's
(tokens, F) array in memory. Off by default.

Families. Token classification (``BertForTokenClassification``: NER; labels (B, S), -100
ignored, logits (B, S, K), mean cross-entropy over the counted tokens) and sequence
classification or regression (``BertForSequenceClassification``: the task model reads the
[CLS] position's features (B, F); labels (B,), cross-entropy, or mean squared error with
one output), as the family's ``model_class`` says.

Checkpoint layout (``save_pretrained(dir)``, loaded by ``FeatureBasedModel.from_pretrained``
and by ``Trainer``'s resume)::

    dir/config.json          the encoder's BertConfig (num_labels included), as Hugging Face
    dir/model.safetensors    the encoder's tensors in Hugging Face's names with the prefix
                             ``bert.`` (no pooler) and the task model's under ``classifier.``:
                             mlp ``classifier.dense.{weight,bias}`` (D, F), (D,) and
                             ``classifier.out_proj.{weight,bias}`` (K, D), (K,); linear
                             ``classifier.{weight,bias}`` (K, F), (K,)
    dir/feature_based.json   {"model_class", "layers", "combine", "head", "head_hidden_size",
                             "feature_size", "num_labels"}

``transformers.BertModel.from_pretrained(dir)`` reads the encoder from it as it is.

Exported features (``minibert encode --layers``): ``minibert.tasks.feature_export``.
"""
from __future__ import annotations

import json
import os

import numpy as np

from ..backend import to_numpy
from ..checkpoint import map_state_dict, read_state_dict, resolve_checkpoint
from ..checkpoint import save_pretrained as _save_checkpoint
from ..config import BertConfig
from ..heads import BertForSequenceClassification, BertForTokenClassification, HeadOutput
from ..heads.tasks import (
    class_loss_backward,
    class_loss_forward,
    token_loss_backward,
    token_loss_forward,
)
from ..model import SITE_HEAD, BertModel, accumulate, bert_param_specs, check_int_array, reject_positional
from ..ops import dropout, gelu, linear
from ..params import FlatParams, ParamSpec
from ..validation import deferred_checks

COMBINES = ("concat", "sum")
HEADS = ("mlp", "linear")
FEATURE_CONFIG = "feature_based.json"
ENCODER_PREFIX = "bert."
DEFAULT_LAST = 4                 # the paper's best: the last four layers
SITE_HEAD_HIDDEN = SITE_HEAD - 1  # the MLP's second dropout (its first is SITE_HEAD's)
# the family's head class -> which positions the task model reads
READS = {BertForTokenClassification: "tokens", BertForSequenceClassification: "cls"}


# ------------------------------------------------------------------------------ layers
def resolve_layers(layers, num_hidden_layers: int, name: str = "layers") -> list:
    """The hidden-state indexes ``layers`` (ints, or a string such as ``"-4,-3,-2,-1"``)
    as non-negative indexes into the L + 1 hidden states; None: the last four (all L + 1
    when there are fewer). An index outside -(L + 1) .. L, a repeated layer, or none at all
    is a ValueError naming it (as the argument ``name``)."""
    n = num_hidden_layers + 1
    if layers is None:
        return list(range(max(0, n - DEFAULT_LAST), n))
    given = layers
    if isinstance(layers, str):
        pieces = [p.strip() for p in layers.split(",")]
        try:
            layers = [int(p) for p in pieces]
        except ValueError:
            raise ValueError(f"{name}={given!r} is invalid, expected comma-separated integers "
                             f"such as '-4,-3,-2,-1'") from None
    try:
        layers = list(layers)
    except TypeError:
        raise ValueError(f"{name}={given!r} is invalid, expected a list of integers") from None
    if not layers:
        raise ValueError(f"{name}={given!r} is empty, expected at least one hidden-state index")
    out = []
    for v in layers:
        if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)):
            raise ValueError(f"{name}={given!r}: {v!r} is not an integer, expected indexes "
                             "into the hidden states")
        if not -n <= v < n:
            raise ValueError(f"{name}={given!r}: layer {int(v)} is out of range, expected "
                             f"{-n} .. {n - 1} (the model has {num_hidden_layers} layers: "
                             f"{n} hidden states, 0 the embeddings, -1 the last layer)")
        k = int(v) % n
        if k in out:
            raise ValueError(f"{name}={given!r}: layer {int(v)} (hidden state {k}) is given "
                             "twice, expected each layer once")
        out.append(k)
    return out


def check_combine(combine, name: str = "combine") -> str:
    if combine not in COMBINES:
        raise ValueError(f"{name}={combine!r} is unknown, expected one of {', '.join(COMBINES)}")
    return combine


def feature_size(hidden_size: int, layers, combine: str) -> int:
    """F: n H for concat, H for sum."""
    return hidden_size * (len(layers) if combine == "concat" else 1)


def combine_hidden_states(hidden_states, layers, combine: str):
    """The features (B, S, F) of ``hidden_states`` (L + 1 arrays (B, S, H)) at ``layers``
    (non-negative indexes), concatenated on the last axis or summed, in ``layers``' order."""
    chosen = [hidden_states[i] for i in layers]
    if combine == "concat":
        if len(chosen) == 1:
            return chosen[0]
        from ..backend import get_array_module
        return get_array_module(chosen[0]).concatenate(chosen, axis=-1)
    out = chosen[0].copy()
    for h in chosen[1:]:
        out += h
    return out


# ------------------------------------------------------------------------------ frozen encoder
class FrozenParams(FlatParams):
    """``FlatParams`` with no gradient buffer: ``grad`` is a read-only zero-stride view of
    one zero, so the views the encoder carves out of it cost nothing and any attempt to add
    a gradient into them raises (NumPy); ``zero_grad`` is refused."""

    def __init__(self, specs, dtype=np.float32, xp=np):
        self.specs = list(specs)
        self.dtype = np.dtype(dtype)
        self.xp = xp
        self.size = sum(int(np.prod(s.shape)) for s in self.specs)
        self.data = xp.zeros(self.size, dtype=self.dtype)
        self.grad = xp.broadcast_to(xp.zeros((), dtype=self.dtype), (self.size,))
        self.params, self.grads, self.offsets = {}, {}, {}
        start = 0
        for s in self.specs:
            n = int(np.prod(s.shape))
            self.offsets[s.name] = (start, start + n)
            self.params[s.name] = self.data[start:start + n].reshape(s.shape)
            self.grads[s.name] = self.grad[start:start + n].reshape(s.shape)
            start += n

    def zero_grad(self):
        raise RuntimeError("the encoder is frozen: it has no gradient buffer")


def load_frozen_encoder(model_dir, config: BertConfig, dtype=np.float32, device: str = "cpu"):
    """A ``BertModel`` without pooler, its parameters named ``bert.*`` in a ``FrozenParams``
    buffer, loaded from the checkpoint directory ``model_dir`` (any head's layout: other
    heads' tensors and the pooler are skipped; a missing encoder tensor is an error)."""
    from ..backend import get_xp
    store = FrozenParams(bert_param_specs(config, ENCODER_PREFIX, False), dtype, get_xp(device))
    encoder = BertModel(config, dtype, 0, False, device, store=store, prefix=ENCODER_PREFIX)
    mapped, _, _ = map_state_dict(read_state_dict(model_dir), encoder)
    store.load_state_dict(mapped, strict=True)
    return encoder


# ------------------------------------------------------------------------------ the model
class FeatureBasedModel:
    """A frozen ``encoder`` (``BertModel``) and a trained task model on its combined hidden
    states, with the interface ``Trainer`` drives (module docstring: the math, the layout).

    Args:
        encoder: a BertModel (its parameters are never changed here; ``load_state_dict``
            copies a checkpoint's into it).
        reads: "tokens" (token classification) or "cls" (sequence classification).
        layers, combine: as ``resolve_layers`` and ``COMBINES``.
        head: "mlp" or "linear".
        seed: the task model's initialization and its dropout streams.
        head_hidden_size: the MLP's width D (None: the encoder's H).
        cache_features: keep each row's features after its first forward and look them up
            afterwards (see ``cached_features``).
    """

    def __init__(self, encoder: BertModel, reads: str = "tokens", layers=None,
                 combine: str = "concat", head: str = "mlp", seed: int = 0,
                 head_hidden_size: int | None = None, cache_features: bool = False):
        if not isinstance(encoder, BertModel):
            raise TypeError(f"encoder has type {type(encoder).__name__}, expected BertModel")
        if reads not in ("tokens", "cls"):
            raise ValueError(f"reads={reads!r} is unknown, expected 'tokens' or 'cls'")
        if head not in HEADS:
            raise ValueError(f"head={head!r} is unknown, expected one of {', '.join(HEADS)}")
        cfg = encoder.config
        self.encoder, self.config, self.reads, self.head = encoder, cfg, reads, head
        self.layers = resolve_layers(layers, cfg.num_hidden_layers)
        self.combine = check_combine(combine)
        self.feature_size = feature_size(cfg.hidden_size, self.layers, self.combine)
        self.head_hidden_size = int(head_hidden_size or cfg.hidden_size) if head == "mlp" else None
        self.dtype, self.xp = encoder.dtype, encoder.xp
        self.seed, self.dropout_calls, self._batch_start = int(seed), 0, 0
        self.store = FlatParams(self.head_specs(), self.dtype, self.xp)
        self.store.initialize(self.seed, cfg.initializer_range)
        self.grads = self.store.grads
        self.cache_features = bool(cache_features)
        self._feature_cache = {}

    def head_specs(self) -> list:
        F, K, D = self.feature_size, self.num_labels, self.head_hidden_size
        if self.head == "linear":
            return [ParamSpec("classifier.weight", (K, F)), ParamSpec("classifier.bias", (K,), "zeros")]
        return [ParamSpec("classifier.dense.weight", (D, F)),
                ParamSpec("classifier.dense.bias", (D,), "zeros"),
                ParamSpec("classifier.out_proj.weight", (K, D)),
                ParamSpec("classifier.out_proj.bias", (K,), "zeros")]

    @property
    def num_labels(self) -> int:
        return self.config.num_labels

    # ------------------------------------------------------------------ parameters
    @property
    def params(self) -> dict:
        """Every tensor by name, the frozen encoder's (``bert.*``) and the task model's
        (``classifier.*``): what a checkpoint holds. Only the latter are in ``store``."""
        return {**self.encoder.params, **self.store.params}

    def num_parameters(self, only_trainable: bool = False) -> int:
        """All parameters (encoder and task model), or the trained ones only."""
        head = self.store.size
        return head if only_trainable else head + self.encoder.store.size

    def state_dict(self) -> dict:
        return {**self.encoder.store.state_dict(), **self.store.state_dict()}

    def load_state_dict(self, state: dict, strict: bool = True):
        """Copy ``state`` (name -> array) into the encoder and the task model, all names
        and shapes checked before anything is written."""
        params = self.params
        missing = [n for n in params if n not in state]
        unexpected = [n for n in state if n not in params]
        if strict and (missing or unexpected):
            raise ValueError(f"state dict does not match the feature-based model: missing keys "
                             f"{missing}, unexpected keys {unexpected}")
        wrong = [f"{n}: {tuple(np.shape(state[n]))} (expected {tuple(v.shape)})"
                 for n, v in params.items() if n in state and tuple(np.shape(state[n])) != tuple(v.shape)]
        if wrong:
            raise ValueError(f"state dict has tensors of the wrong shape: {wrong}")
        for store in (self.encoder.store, self.store):
            store.load_state_dict({n: state[n] for n in store.params if n in state}, strict=False)
        return missing, unexpected

    def rng_state(self) -> dict:
        return {"seed": self.seed, "dropout_calls": self.dropout_calls}

    def set_rng_state(self, state: dict):
        self.seed = int(state["seed"])
        self.dropout_calls = int(state["dropout_calls"])

    @property
    def batch_start(self) -> int:
        """This batch's first row in a larger one (data parallelism), for the dropout masks."""
        return self._batch_start

    @batch_start.setter
    def batch_start(self, row: int):
        self._batch_start = int(row)

    # ------------------------------------------------------------------ forward
    def features(self, input_ids=None, *args, attention_mask=None, token_type_ids=None):
        """The combined features (B, S, F) of a batch: the frozen encoder in inference."""
        reject_positional("FeatureBasedModel.features", args)
        out = self.encoder(input_ids, attention_mask=attention_mask,
                           token_type_ids=token_type_ids, output_hidden_states=True)
        return combine_hidden_states(out.hidden_states, self.layers, self.combine)

    def cached_features(self, input_ids, attention_mask=None, token_type_ids=None):
        """The features (B, S, F) of a batch with the per-example cache: each row's real
        tokens (its first ``attention_mask.sum()`` positions; real tokens must come first,
        as BERT lays rows out) are run through the encoder alone, once, and kept under the
        bytes of their ids and segment ids; padding positions get zero features.

        The encoder is frozen and in inference mode, so a row's features are the same at
        every epoch: after the first epoch a step is the task model's alone. A row run
        alone gives the same bits whatever batch it comes in, so a resumed run sees the
        features the uninterrupted one saw; they may differ from the batched features of
        ``features`` in the last bits (other padded lengths, other summation blocks). Memory:
        every distinct training and evaluation row's (tokens, F) array stays until
        ``clear_feature_cache``."""
        ids = to_numpy(check_int_array("input_ids", input_ids)).astype(np.int64)
        B, S = ids.shape
        mask = np.ones((B, S), np.int64) if attention_mask is None else to_numpy(attention_mask)
        tt = np.zeros((B, S), np.int64) if token_type_ids is None else to_numpy(token_type_ids)
        tt = tt.astype(np.int64)
        lengths = (mask != 0).sum(axis=1)
        prefix = np.arange(S)[None, :] < lengths[:, None]
        if tuple(mask.shape) != (B, S) or not np.array_equal(mask != 0, prefix):
            raise ValueError(f"attention_mask has shape {tuple(mask.shape)}, expected {(B, S)} "
                             "with each row's real tokens first (the feature cache keys a row "
                             "by its real tokens)")
        out = self.xp.zeros((B, S, self.feature_size), dtype=self.dtype)
        for b, n in enumerate(lengths.tolist()):
            key = (ids[b, :n].tobytes(), tt[b, :n].tobytes())
            f = self._feature_cache.get(key)
            if f is None:
                f = self.features(self.xp.asarray(ids[b:b + 1, :n]),
                                  token_type_ids=self.xp.asarray(tt[b:b + 1, :n]))[0]  # (n, F)
                self._feature_cache[key] = f
            out[b, :n] = f
        return out

    def clear_feature_cache(self):
        self._feature_cache = {}

    def forward(self, input_ids=None, *args, attention_mask=None, token_type_ids=None,
                labels=None, training=False, keep_cache=True):
        """Returns ``(HeadOutput, cache)``: ``logits`` (B, S, K) for tokens or (B, K) for
        [CLS], and ``loss`` when ``labels`` are given; ``cache`` (None without
        ``keep_cache``) feeds ``backward``. ``training`` turns the task model's dropout on;
        the encoder runs in inference either way."""
        reject_positional("FeatureBasedModel.forward", args)
        with deferred_checks():
            embed = self.cached_features if self.cache_features else self.features
            f = embed(input_ids, attention_mask=attention_mask,
                      token_type_ids=token_type_ids)                              # (B, S, F)
            if self.reads == "cls":
                f = self.xp.ascontiguousarray(f[:, 0])                             # (B, F)
            call = self.dropout_calls
            logits, hcache = self._head_forward(f, training, call)
            if training:
                self.dropout_calls += 1
            loss, lcache = (None, None) if labels is None else self._loss_forward(logits, labels)
        cache = dict(head=hcache, loss=lcache, logits_shape=logits.shape) if keep_cache else None
        return HeadOutput(loss=loss, logits=logits), cache

    def __call__(self, input_ids=None, *args, **kwargs):
        """Inference: the outputs of ``forward`` without dropout, no cache kept."""
        reject_positional("FeatureBasedModel", args)
        for name in ("training", "keep_cache"):
            if name in kwargs:
                raise TypeError(f"FeatureBasedModel() is inference and takes no {name}=; "
                                "use forward(..., training=True) to train")
        return self.forward(input_ids, keep_cache=False, **kwargs)[0]

    def _dropout_p(self, training) -> float:
        cfg = self.config
        p = cfg.classifier_dropout if cfg.classifier_dropout is not None else cfg.hidden_dropout_prob
        return p if training else 0.0

    def _dropout(self, x, training, call, site):
        # x's rows are the batch's rows: the masks of the whole batch from row batch_start on
        start = self.batch_start * (x.size // max(x.shape[0], 1))
        return dropout.forward(x, self._dropout_p(training), self.seed, (call << 20) | site,
                               training, start=start)

    def _head_forward(self, f, training, call):
        """logits from the features f (..., F) and the cache of each step."""
        p = self.store.params
        x, c_do = self._dropout(f, training, call, SITE_HEAD)             # x = dropout(f)
        if self.head == "linear":
            logits, c_out = linear.forward(x, p["classifier.weight"], p["classifier.bias"])
            return logits, (c_do, c_out)
        z, c_dense = linear.forward(x, p["classifier.dense.weight"])     # z = x W1^T      (..., D)
        g, c_gelu = gelu.bias_forward(z, p["classifier.dense.bias"])      # g = GELU(z + b1)
        g, c_do2 = self._dropout(g, training, call, SITE_HEAD_HIDDEN)    # g = dropout(g)
        logits, c_out = linear.forward(g, p["classifier.out_proj.weight"],
                                       p["classifier.out_proj.bias"])     # logits = g W2^T + b2
        return logits, (c_do, c_dense, c_gelu, c_do2, c_out)

    def _loss_forward(self, logits, labels):
        """The loss of the head class the family names: per-token cross-entropy (-100
        ignored), or on the [CLS] features cross-entropy / MSE with one output."""
        if self.reads == "tokens":
            return token_loss_forward(self.xp, logits, labels)
        return class_loss_forward(self.xp, self.dtype, logits, labels)

    # ------------------------------------------------------------------ backward
    def backward(self, cache, d_logits=None, d_loss=1.0):
        """Gradients of the task model's parameters for ``d_loss * loss`` (when labels
        were given) plus ``<d_logits, logits>``: views of ``store.grad`` by name. Nothing
        runs through the encoder: dL/d features is never formed."""
        xp = self.xp
        if cache is None:
            raise ValueError("cache is None: it comes from forward(..., keep_cache=True)")
        if d_logits is None and cache["loss"] is None:
            raise ValueError("backward needs labels in forward or d_logits")
        shape = tuple(cache["logits_shape"])
        self.store.zero_grad()
        dl = xp.zeros(shape, dtype=self.dtype)
        if d_logits is not None:
            if tuple(d_logits.shape) != shape:
                raise ValueError(f"d_logits has shape {tuple(d_logits.shape)}, expected {shape}")
            dl = dl + d_logits
        if cache["loss"] is not None:
            d = xp.asarray(d_loss, dtype=self.dtype)
            dl = dl + (token_loss_backward(d, cache["loss"], shape) if self.reads == "tokens"
                       else class_loss_backward(d, cache["loss"]))
        self._head_backward(dl, cache["head"])
        return self.grads

    def _head_backward(self, dlogits, hcache):
        """``_head_forward`` read from the bottom up, stopping at x = dropout(f): the
        features' gradient is not needed (the encoder is frozen), so the first layer's
        input gradient is computed but dropped."""
        g = self.store.grads
        if self.head == "linear":
            _, c_out = hcache
            _, dw, db = linear.backward(dlogits, c_out)                   # logits = x W^T + b
            accumulate((g["classifier.weight"], g["classifier.bias"]), dw, db)
            return
        _, c_dense, c_gelu, c_do2, c_out = hcache
        dg, dw, db = linear.backward(dlogits, c_out)                      # logits = g W2^T + b2
        accumulate((g["classifier.out_proj.weight"], g["classifier.out_proj.bias"]), dw, db)
        dg = dropout.backward(dg, c_do2)                                  # g = dropout(g)
        dz, db = gelu.bias_backward(dg, c_gelu)                           # g = GELU(z + b1)
        _, dw, _ = linear.backward(dz, c_dense)                           # z = x W1^T
        accumulate((g["classifier.dense.weight"], g["classifier.dense.bias"]), dw, db)

    # ------------------------------------------------------------------ checkpoints
    def feature_config(self) -> dict:
        return dict(model_class=("BertForTokenClassification" if self.reads == "tokens"
                                 else "BertForSequenceClassification"),
                    layers=list(self.layers), combine=self.combine, head=self.head,
                    head_hidden_size=self.head_hidden_size, feature_size=self.feature_size,
                    num_labels=self.num_labels, seed=self.seed)

    def save_pretrained(self, path):
        """Write the checkpoint directory (module docstring: config.json, model.safetensors,
        feature_based.json), each file atomically."""
        from ..io import atomic_write_text
        _save_checkpoint(self, path)
        atomic_write_text(os.path.join(os.fspath(path), FEATURE_CONFIG),
                          json.dumps(self.feature_config(), indent=2) + "\n")

    @classmethod
    def from_pretrained(cls, path, dtype=np.float32, device: str = "cpu"):
        """The model ``save_pretrained`` wrote to ``path`` (encoder and task model)."""
        path = os.fspath(path)
        spec_file = os.path.join(path, FEATURE_CONFIG)
        try:
            with open(spec_file, encoding="utf-8") as fh:
                spec = json.load(fh)
            reads = {"BertForTokenClassification": "tokens",
                     "BertForSequenceClassification": "cls"}[spec["model_class"]]
            layers, combine, head = spec["layers"], spec["combine"], spec["head"]
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise ValueError(f"directory {path!r} has no valid {FEATURE_CONFIG} (a feature-based "
                             f"checkpoint): {e}") from None
        config = BertConfig.from_json_file(os.path.join(path, "config.json"))
        encoder = load_frozen_encoder(path, config, dtype, device)
        model = cls(encoder, reads, layers, combine, head, int(spec.get("seed", 0)),
                    spec.get("head_hidden_size"))
        mapped, _, _ = map_state_dict(read_state_dict(path), model)
        model.load_state_dict(mapped, strict=True)
        return model


def feature_based_model(model_dir, family, layers=None, combine="concat", dtype=np.float32,
                        device="cpu", seed=0, *, head="mlp", head_hidden_size=None,
                        cache_features=False):
    """A ``FeatureBasedModel`` on the frozen encoder of the checkpoint ``model_dir`` (a model
    directory, or a training run: its latest checkpoint) for ``family``'s task: its
    ``model_class`` (BertForTokenClassification or BertForSequenceClassification) says which
    positions the task model reads, its ``model_kwargs()`` (``num_labels``, ...) complete
    the configuration. Everything is checked before a tensor is read."""
    model_class = getattr(family, "model_class", None)
    if model_class not in READS:
        name = getattr(model_class, "__name__", model_class)
        raise ValueError(f"family {getattr(family, 'name', family)!r} uses {name}, expected a "
                         "family of BertForTokenClassification or BertForSequenceClassification "
                         "(the feature-based approach covers token and sequence classification)")
    check_combine(combine)
    if head not in HEADS:
        raise ValueError(f"head={head!r} is unknown, expected one of {', '.join(HEADS)}")
    model_dir = resolve_checkpoint(os.fspath(model_dir))
    config = BertConfig.from_json_file(os.path.join(model_dir, "config.json"))
    kwargs = dict(family.model_kwargs()) if hasattr(family, "model_kwargs") else {}
    unknown = sorted(set(kwargs) - set(config.to_dict()))
    if unknown:
        raise ValueError(f"family {getattr(family, 'name', '')!r} model_kwargs {unknown} are not "
                         "BertConfig fields")
    if kwargs:
        config = BertConfig.from_dict({**config.to_dict(), **kwargs})
    resolve_layers(layers, config.num_hidden_layers)                     # before any reading
    encoder = load_frozen_encoder(model_dir, config, dtype, device)
    return FeatureBasedModel(encoder, READS[model_class], layers, combine, head, seed,
                             head_hidden_size, cache_features)
