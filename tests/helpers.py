"""Helpers shared by the test modules: array comparison, the tiny models and batches of the
model tests, the training tests' data, the optimizer tests' store, the tokenizer corpus,
minibert's import graph and the CUDA kernel tests' skip. Fixtures live in
``tests/conftest.py``; a test module imports helpers from here only, never from another test
module."""
import ast
import os
import pathlib
import re

import numpy as np

import minibert
from minibert import BertConfig, BertForPreTraining, gradcheck
from minibert.backend import gpu_available, to_numpy
from minibert.optim import AdamW
from minibert.params import FlatParams, ParamSpec

DATA = os.path.join(os.path.dirname(__file__), "data")


# ----------------------------------------------------------------------------- comparison
def to_np(a):
    """NumPy copy of a NumPy or CuPy array (for assertions)."""
    return a.get() if hasattr(a, "get") else np.asarray(a)


def max_abs_diff(a, b) -> float:
    return float(np.max(np.abs(to_np(a).astype(np.float64) - to_np(b).astype(np.float64)), initial=0.0))


def assert_close(name, actual, expected, atol=0.0, rtol=0.0):
    """Compare two tensors and name the tensor and its max difference on failure."""
    a = to_np(actual).astype(np.float64)
    e = to_np(expected).astype(np.float64)
    assert a.shape == e.shape, f"{name}: shape {a.shape} != expected {e.shape}"
    err = np.abs(a - e)
    bound = atol + rtol * np.abs(e)
    if not np.all(err <= bound):
        k = np.unravel_index(np.argmax(err - bound), err.shape)
        raise AssertionError(f"{name}: max abs diff {err.max():.3e} (atol {atol:.1e}, rtol {rtol:.1e}); "
                             f"worst at {k}: {a[k]!r} vs expected {e[k]!r}")


def assert_close_to_scale(name, got, ref, rel):
    """|got - ref| <= rel * max(1, max |ref|), element by element (the kernel tests' bound:
    relative to the tensor's scale, absolute below 1)."""
    got, ref = np.asarray(got, dtype=np.float64), np.asarray(ref, dtype=np.float64)
    assert got.shape == ref.shape, f"{name}: shape {got.shape} != {ref.shape}"
    scale = max(1.0, float(np.abs(ref).max(initial=0.0)))
    err = float(np.abs(got - ref).max(initial=0.0))
    assert err <= rel * scale, f"{name}: max diff {err:.3e} > {rel:.0e} x scale {scale:.3e}"


def rms_error(a, ref) -> float:
    """Root mean square of ``a - ref``, in float64."""
    return float(np.sqrt(np.mean((np.asarray(a, dtype=np.float64) - ref) ** 2)))


def assert_as_accurate_as_textbook(label, names, got, book, ref, factor=1.25, floor_rel=0.0,
                                   book_label="textbook"):
    """Tensor by tensor: ``got`` is float32 and its RMS error against the float64 ``ref``
    is at most ``factor`` times that of ``book``, the readable (textbook) op's float32
    result on the same inputs, plus ``floor_rel`` times the RMS of ``ref`` (0: no floor).
    ``label`` and ``book_label`` name the two in the message."""
    for name, a, t, e in zip(names, got, book, ref):
        assert a.dtype == np.float32, name
        err, book_err = rms_error(a, e), rms_error(t, e)
        floor = floor_rel * float(np.sqrt(np.mean(e ** 2)))
        assert err <= factor * book_err + floor, (
            f"{name}: {label} float32 RMS error {err:.3e} > {factor} x the {book_label} float32 RMS "
            f"error {book_err:.3e}" + (f" + {floor:.1e}" if floor_rel else ""))


# ----------------------------------------------------------------------------- tiny models
# Small enough for a float64 check of every parameter in a second; odd sizes on purpose.
TINY = dict(vocab_size=23, hidden_size=12, num_hidden_layers=2, num_attention_heads=3,
            intermediate_size=17, max_position_embeddings=16, type_vocab_size=2, num_labels=3)


# the encoder and every head, for tests that hold for all of them
MODEL_CLASSES = [minibert.BertModel, minibert.BertForPreTraining, minibert.BertForSequenceClassification,
                 minibert.BertForTokenClassification, minibert.BertForQuestionAnswering,
                 minibert.BertForMultipleChoice]


def tiny_config(**kw):
    """The model tests' configuration (``TINY``), with ``kw`` overriding its fields."""
    return BertConfig(**{**TINY, **kw})


def batch(rng, B=3, S=7, V=23, lengths=(7, 5, 2)):
    """(input_ids, attention_mask, token_type_ids): padded rows of the given real lengths,
    the second half of each real row sentence B, id 0 on padding."""
    ids = rng.integers(1, V, size=(B, S))
    mask = np.zeros((B, S), dtype=np.int64)
    tt = np.zeros((B, S), dtype=np.int64)
    for b, n in enumerate(lengths[:B]):
        mask[b, :n] = 1
        tt[b, n // 2:n] = 1
        ids[b, n:] = 0
    return ids, mask, tt


def perturb(model, rng, scale=0.3):
    """Move every parameter off its initial value so no gradient is trivially zero."""
    model.store.data[...] += model.xp.asarray(rng.standard_normal(model.store.size) * scale)


def frozen_dropout(model, fn):
    """Wrap ``fn`` so every call sees the same dropout masks (same RNG state)."""
    state = model.rng_state()

    def f():
        model.set_rng_state(state)
        return fn()
    return f


def encoder_gradcheck(model, dlast, dpool, **inputs):
    """(grads, report): a BertModel's backward against central differences along two random
    directions of all its parameters, for the loss <last_hidden_state, dlast> +
    <pooler_output, dpool> of ``model.forward(**inputs)``, every evaluation with the same
    dropout masks."""
    state = model.rng_state()

    def loss():
        out, _ = model.forward(**inputs)
        return (out.last_hidden_state * dlast).sum() + (out.pooler_output * dpool).sum()
    f = frozen_dropout(model, loss)
    f()
    model.set_rng_state(state)
    out, cache = model.forward(**inputs)
    grads = {k: v.copy() for k, v in model.backward(cache, dlast, dpool).items()}
    return grads, gradcheck(f, model.params, grads, mode="direction", n_directions=2)


def hf_twin(torch, transformers, model, hf_config):
    """A float64 Hugging Face ``BertModel`` in eval mode holding ``model``'s weights
    (``hf_config``: the transformers configuration to build it from)."""
    hf = transformers.BertModel(hf_config).double().eval()
    hf.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in model.state_dict().items()},
                       strict=False)
    return hf


def pretraining_step(device, dtype, lengths, n_predictions, seed=0, repeated_ids=False,
                     unpad=None):
    """One pretraining step with dropout of the ``tiny`` preset on ``device``, rows of the
    given real lengths, ``n_predictions`` masked positions a row among the first
    ``min(lengths)``: (loss, parameters after AdamW, gradients, module of the loss's type).
    ``repeated_ids`` repeats a token id so the embedding's scatter-add must sum; ``unpad``
    is the model's (None: padding-free by the default rule)."""
    cfg = BertConfig.preset("tiny")
    model = BertForPreTraining(cfg, dtype=dtype, seed=seed, device=device)
    model.unpad = unpad
    xp = model.xp
    r = np.random.default_rng(1)
    B, S, P = len(lengths), max(lengths), n_predictions
    ids = r.integers(5, cfg.vocab_size, (B, S))
    if repeated_ids:
        ids[1, 2] = ids[1, 3] = ids[0, 1]                  # repeated ids: the scatter-add sums
    mask = (np.arange(S)[None, :] < np.array(lengths)[:, None]).astype(np.int64)
    out, cache = model.forward(xp.asarray(ids), attention_mask=xp.asarray(mask),
                               token_type_ids=xp.zeros((B, S), dtype=np.int64),
                               masked_lm_positions=xp.asarray(r.integers(0, min(lengths), (B, P))),
                               masked_lm_ids=xp.asarray(r.integers(5, cfg.vocab_size, (B, P))),
                               next_sentence_labels=xp.asarray(r.integers(0, 2, B)),
                               training=True)
    grads = {n: to_numpy(g).copy() for n, g in model.backward(cache).items()}
    AdamW(model.store, lr=1e-3).step()
    return float(out.loss), to_numpy(model.store.data).copy(), grads, type(out.loss).__module__


# ----------------------------------------------------------------------------- training data
def train_config(vocab_size=50, **kw):
    """The training tests' model: 2 layers of width 16, sequences up to 32."""
    return BertConfig(vocab_size=vocab_size, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                      intermediate_size=32, max_position_embeddings=32, **kw)


def pretraining_arrays(n=24, seed=0, V=50, S=16, P=3):
    """Random but well-formed pretraining rows: padded sequences, masked slots, NSP labels."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(5, V, (n, S))
    lengths = rng.integers(S // 2, S + 1, n)
    mask = (np.arange(S)[None] < lengths[:, None]).astype(np.int64)
    ids = ids * mask
    tt = ((np.arange(S)[None] >= lengths[:, None] // 2) & (mask == 1)).astype(np.int64)
    pos = np.stack([np.sort(rng.choice(np.arange(1, n_), P, replace=False)) for n_ in lengths])
    return dict(input_ids=ids, token_type_ids=tt, attention_mask=mask, masked_lm_positions=pos,
                masked_lm_ids=rng.integers(5, V, (n, P)),
                masked_lm_weights=np.ones((n, P), np.float32),
                next_sentence_labels=rng.integers(0, 2, n))


# ----------------------------------------------------------------------------- optimizer store
# names as in a BERT checkpoint: weights decay; biases (incl. LayerNorm's and the MLM output
# bias) and LayerNorm gains do not
OPTIM_SPECS = [ParamSpec("bert.embeddings.word_embeddings.weight", (11, 4)),
               ParamSpec("bert.embeddings.LayerNorm.weight", (4,), "ones"),
               ParamSpec("bert.embeddings.LayerNorm.bias", (4,), "zeros"),
               ParamSpec("bert.encoder.layer.0.attention.self.query.weight", (4, 4)),
               ParamSpec("bert.encoder.layer.0.attention.self.query.bias", (4,), "zeros"),
               ParamSpec("cls.predictions.bias", (11,), "zeros")]


def make_store(xp, dtype=np.float64, seed=0):
    """The OPTIM_SPECS in one flat buffer, every element random (nothing trivially 0 or 1)."""
    store = FlatParams(OPTIM_SPECS, dtype, xp)
    store.data[...] = xp.asarray(np.random.default_rng(seed).standard_normal(store.size).astype(dtype))
    return store


def random_grad(rng, n):
    """Gradients spread over 9 orders of magnitude (some far below eps), a few exactly 0."""
    g = rng.standard_normal(n) * 10.0 ** rng.integers(-8, 1, n)
    g[rng.random(n) < 0.05] = 0.0
    return g


# ----------------------------------------------------------------------------- tokenizer corpus
CORPUS = os.path.join(DATA, "tokenizer_corpus.txt")
_ESCAPE = re.compile(r"\\(x[0-9A-Fa-f]{2}|u[0-9A-Fa-f]{4}|U[0-9A-Fa-f]{8}|[tnr\\])")


def _unescape(line: str) -> str:
    """The corpus writes control characters as escapes (\\x00, \\u200d, \\t, \\r, \\n, \\\\)."""
    def one(m):
        g = m.group(1)
        return {"t": "\t", "n": "\n", "r": "\r", "\\": "\\"}.get(g) or chr(int(g[1:], 16))
    return _ESCAPE.sub(one, line)


def corpus_lines() -> list[str]:
    """The lines of tests/data/tokenizer_corpus.txt, escapes decoded."""
    with open(CORPUS, encoding="utf-8", newline="") as fh:
        return [_unescape(line) for line in fh.read().split("\n") if line]


# ----------------------------------------------------------------------------- import graph
def minibert_modules():
    """module name -> source path, for minibert and its subpackages (kernels included)."""
    root = pathlib.Path(minibert.__file__).resolve().parent          # the installed package
    out = {}
    for path in root.rglob("*.py"):
        parts = path.relative_to(root).with_suffix("").parts
        name = ".".join(("minibert",) + parts)
        out[name[: -len(".__init__")] if name.endswith(".__init__") else name] = path
    return out


def import_edges(name, path, modules):
    """(target module, imported names, line) for every import statement in ``path``."""
    is_pkg = path.name == "__init__.py"
    package = name if is_pkg else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name in modules:
                    yield alias.name, [], node.lineno
        elif isinstance(node, ast.ImportFrom):
            base = package
            for _ in range(max(node.level - 1, 0)):
                base = base.rpartition(".")[0]
            target = (f"{base}.{node.module}" if node.module else base) if node.level else node.module
            if target not in modules:
                continue
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                if sub in modules:
                    yield sub, [], node.lineno
                else:
                    yield target, [alias.name], node.lineno


def import_graph():
    """module name -> its import edges (see ``import_edges``), for all of minibert."""
    modules = minibert_modules()
    return {name: list(import_edges(name, path, modules)) for name, path in modules.items()}


# ----------------------------------------------------------------------------- CUDA kernels
def skip_unless_cuda_kernels_can_run() -> bool:
    """Skip the calling test module (at import, ``allow_module_level``) unless its CUDA
    kernels can run: under Numba's CUDA simulator (``NUMBA_ENABLE_CUDASIM=1``) or where a GPU
    answers. Returns True under the simulator. Call it before importing ``numba.cuda``: the
    simulator is chosen by the environment at that first import, and the main run, which
    skips these modules, never imports it."""
    import pytest
    simulator = os.environ.get("NUMBA_ENABLE_CUDASIM", "0") == "1"
    if not simulator and not gpu_available():
        pytest.skip("CUDA kernels: set NUMBA_ENABLE_CUDASIM=1 (simulator) or run where a GPU "
                    "answers", allow_module_level=True)
    return simulator
