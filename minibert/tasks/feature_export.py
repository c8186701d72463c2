"""Exported features (``minibert encode --layers ... --out FILE.npz``): each text's combined
hidden states from a frozen encoder, as ``minibert.tasks.features`` computes them for the
feature-based approach, one text at a time (no padding), (S_i, F) float32 each; the ``.npz``
layout is documented at ``write_features_npz``.
"""
from __future__ import annotations

import os

import numpy as np

from ..backend import to_numpy
from ..checkpoint import resolve_checkpoint
from ..config import BertConfig
from ..io import atomic_write
from .features import check_combine, combine_hidden_states, load_frozen_encoder, resolve_layers


def encode_features(checkpoint, texts, layers=None, combine="concat") -> dict:
    """The features of each text from the frozen encoder of ``checkpoint`` (a model
    directory with vocab.txt, or a training run: its latest checkpoint).

    Each text is tokenized as ``minibert encode`` does ([CLS] ... [SEP], truncated to the
    model's positions) and run alone (no padding). Returns a dict::

        tokens     [list of S_i token strings per text]
        ids        [list of S_i token ids per text]
        features   [(S_i, F) float32 array per text]
        layers     the hidden-state indexes used, non-negative (0 the embeddings, L the last)
        combine    "concat" or "sum"
    """
    from ..tokenization import BertTokenizer
    if isinstance(texts, str):
        texts = [texts]
    texts = list(texts)
    if not texts:
        raise ValueError("texts is empty, expected at least one text")
    for i, t in enumerate(texts):
        if not isinstance(t, str) or not t.strip():
            raise ValueError(f"texts[{i}]={t!r} is empty, expected some text")
    check_combine(combine)
    model_dir = resolve_checkpoint(os.fspath(checkpoint))
    if not os.path.isfile(os.path.join(model_dir, "vocab.txt")):
        raise ValueError(f"checkpoint {model_dir!r} has no vocab.txt, expected the tokenizer's "
                         "vocabulary next to config.json")
    config = BertConfig.from_json_file(os.path.join(model_dir, "config.json"))
    layers = resolve_layers(layers, config.num_hidden_layers)
    tokenizer = BertTokenizer.from_pretrained(model_dir)
    if len(tokenizer) > config.vocab_size:
        raise ValueError(f"checkpoint {model_dir!r}: vocab.txt has {len(tokenizer)} tokens but "
                         f"the model only {config.vocab_size}")
    encoder = load_frozen_encoder(model_dir, config)
    result = dict(tokens=[], ids=[], features=[], layers=layers, combine=combine)
    for text in texts:
        enc = tokenizer(text, truncation=True, max_length=config.max_position_embeddings)
        out = encoder(enc["input_ids"], attention_mask=enc["attention_mask"],
                      token_type_ids=enc["token_type_ids"], output_hidden_states=True)
        f = combine_hidden_states(out.hidden_states, layers, combine)[0]            # (S_i, F)
        ids = [int(i) for i in enc["input_ids"][0]]
        result["ids"].append(ids)
        result["tokens"].append(tokenizer.convert_ids_to_tokens(ids))
        result["features"].append(np.ascontiguousarray(to_numpy(f), dtype=np.float32))
    return result


def _check_result(result) -> int:
    """The number of texts of an ``encode_features`` result, after checking its form."""
    if not isinstance(result, dict):
        raise ValueError(f"result has type {type(result).__name__}, expected the dict of "
                         "encode_features")
    missing = [k for k in ("tokens", "ids", "features", "layers", "combine") if k not in result]
    if missing:
        raise ValueError(f"result lacks {missing}, expected the keys of encode_features "
                         f"(found {sorted(result)})")
    check_combine(result["combine"])
    n = len(result["features"])
    if len(result["tokens"]) != n or len(result["ids"]) != n:
        raise ValueError(f"result has {len(result['tokens'])} token lists, {len(result['ids'])} "
                         f"id lists and {n} feature arrays, expected one of each per text")
    for i, (toks, ids, f) in enumerate(zip(result["tokens"], result["ids"], result["features"])):
        shape = np.shape(f)
        if len(shape) != 2 or shape[0] != len(toks) or len(ids) != len(toks):
            raise ValueError(f"result text {i}: features of shape {shape} for {len(toks)} tokens "
                             f"and {len(ids)} ids, expected (tokens, F)")
    return n


def write_features_npz(path, result) -> str:
    """Write an ``encode_features`` result to the ``.npz`` file ``path`` atomically (a
    temporary file renamed into place: the file is complete or absent). Layout, no pickled
    objects (``np.load(path)`` reads it as it is)::

        num_texts      ()  int64     N
        layers         (n,) int64    hidden-state indexes (0 the embeddings, L the last layer)
        combine        ()  str       "concat" or "sum"
        features_<i>   (S_i, F) float32, i = 0 .. N - 1, the features of text i
        tokens_<i>     (S_i,) str    its tokens ([CLS] first)
        ids_<i>        (S_i,) int64  its token ids

    Returns the path. The result is checked before anything is written."""
    n = _check_result(result)
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise ValueError(f"path {path!r}: directory {directory!r} does not exist")
    arrays = dict(num_texts=np.asarray(n, dtype=np.int64),
                  layers=np.asarray(result["layers"], dtype=np.int64),
                  combine=np.asarray(result["combine"]))
    for i in range(n):
        arrays[f"features_{i}"] = np.asarray(result["features"][i], dtype=np.float32)
        arrays[f"tokens_{i}"] = np.asarray(list(result["tokens"][i]), dtype=str)
        arrays[f"ids_{i}"] = np.asarray(result["ids"][i], dtype=np.int64)

    def write(tmp):
        with open(tmp, "wb") as fh:             # a file object: np.savez adds no suffix
            np.savez(fh, **arrays)
    atomic_write(path, write)
    return path


def read_features_npz(path) -> dict:
    """The ``encode_features`` dict back from a file ``write_features_npz`` wrote."""
    try:
        with np.load(os.fspath(path), allow_pickle=False) as z:
            n = int(z["num_texts"])
            return dict(tokens=[[str(t) for t in z[f"tokens_{i}"]] for i in range(n)],
                        ids=[[int(v) for v in z[f"ids_{i}"]] for i in range(n)],
                        features=[z[f"features_{i}"] for i in range(n)],
                        layers=[int(v) for v in z["layers"]], combine=str(z["combine"]))
    except (OSError, ValueError, KeyError) as e:
        raise ValueError(f"features file {os.fspath(path)!r} is unreadable or not in the "
                         f"layout of write_features_npz: {e}") from None
