"""Hugging Face checkpoints: read a BERT directory into a minibert model, write one back.

A Hugging Face BERT directory holds ``config.json`` and ``model.safetensors`` (older ones
``pytorch_model.bin``, a torch pickle: read only when torch is installed). minibert's
parameter names are Hugging Face's state-dict names, so loading is a rename at most:

* the encoder's names may carry the ``bert.`` prefix (head models) or not (BertModel);
* old checkpoints call LayerNorm's weight and bias ``gamma`` and ``beta``;
* the MLM decoder weight is tied to the word embeddings and its bias to
  ``cls.predictions.bias``: they are not separate parameters here (a decoder weight that
  differs from the word embeddings is refused: minibert always ties them);
* buffers such as ``embeddings.position_ids`` and ``embeddings.token_type_ids`` are not
  parameters and are skipped.

Every layout Hugging Face writes loads: BertModel with or without its pooler,
BertForMaskedLM (no pooler, no NSP head), BertForPreTraining, the fine-tuning heads.
The pooler is optional where the class reads no pooled output: with
``add_pooling_layer=None`` BertModel keeps it exactly when the checkpoint has one,
BertForMaskedLM and the token-level heads go without it (as Hugging Face's), and the heads
that read the pooled [CLS] vector require it.

Loading checks everything before it writes anything: missing tensors, unexpected tensors
and wrong shapes are one error that lists the names, never a silent initialization.
Tensors of another head (``cls.seq_relationship.*`` in a BertForPreTraining checkpoint
loaded as BertForMaskedLM, say) and a pooler the model does not use are skipped and
reported (``output_loading_info=True``, Hugging Face's ``unexpected_keys``); a head or
pooler that the checkpoint lacks is freshly initialized only when ``new_head=True`` (as
when fine-tuning starts from a pretrained encoder) and reported as ``missing_keys``.

A training run's directory holds several checkpoints: ``out/checkpoint-0000100/`` and so on
(each a Hugging Face directory plus the trainer's state) and ``out/latest``, a file naming
the newest. ``list_checkpoints``, ``latest_checkpoint`` and ``resolve_checkpoint`` find them
(``minibert.train`` writes them); ``resolve_checkpoint`` lets every command take either a
run directory or a model directory.
"""
from __future__ import annotations

import json
import os
import re

import numpy as np

from .config import BertConfig
from .io import atomic_write, atomic_write_text

HEAD_PREFIXES = ("cls.", "classifier.", "qa_outputs.")
POOLER_PREFIX = "pooler."
# buffers that Hugging Face models register (older versions saved them): not parameters
IGNORED = ("embeddings.position_ids", "embeddings.token_type_ids")
DECODER_WEIGHT = "cls.predictions.decoder.weight"
DECODER_BIAS = "cls.predictions.decoder.bias"
WORD_EMBEDDINGS = "embeddings.word_embeddings.weight"


def _normalize_name(name: str) -> str:
    name = re.sub(r"LayerNorm\.gamma$", "LayerNorm.weight", name)
    return re.sub(r"LayerNorm\.beta$", "LayerNorm.bias", name)


def _read_safetensors(file: str) -> dict:
    """name -> NumPy array of one .safetensors file. bfloat16 tensors, which NumPy has no
    dtype for, are widened to float32 exactly (a bf16 is the top half of a float32)."""
    import struct
    try:
        with open(file, "rb") as fh:
            (n,) = struct.unpack("<Q", fh.read(8))
            if n > 100_000_000:
                raise ValueError(f"header length {n} is implausible")
            header = json.loads(fh.read(n))
            blob = fh.read()
        out = {}
        for name, info in header.items():
            if name == "__metadata__":
                continue
            start, stop = info["data_offsets"]
            raw = np.frombuffer(blob[start:stop], dtype=np.uint8)
            dt = info["dtype"]
            if dt == "BF16":
                a = (raw.view("<u2").astype(np.uint32) << 16).view(np.float32)
            else:
                a = raw.view(np.dtype(_SAFETENSORS_DTYPES[dt]))
            out[name] = a.reshape(info["shape"]).copy()
        return out
    except (OSError, ValueError, KeyError, TypeError, struct.error, UnicodeDecodeError) as e:
        raise ValueError(f"checkpoint file {file!r} is corrupt or unreadable: {e}") from None


_SAFETENSORS_DTYPES = {"F64": "<f8", "F32": "<f4", "F16": "<f2", "I64": "<i8", "I32": "<i4",
                       "I16": "<i2", "I8": "i1", "U8": "u1", "BOOL": "?"}


def read_state_dict(path: str) -> dict:
    """name -> NumPy array from ``model.safetensors`` (or its sharded index) or
    ``pytorch_model.bin`` in ``path``."""
    st = os.path.join(path, "model.safetensors")
    index = os.path.join(path, "model.safetensors.index.json")
    pt = os.path.join(path, "pytorch_model.bin")
    if os.path.isfile(st):
        return _read_safetensors(st)
    if os.path.isfile(index):
        try:
            with open(index, encoding="utf-8") as fh:
                shards = sorted(set(json.load(fh)["weight_map"].values()))
        except (ValueError, KeyError) as e:
            raise ValueError(f"checkpoint index {index!r} is corrupt: {e}") from None
        state = {}
        for shard in shards:
            state.update(_read_safetensors(os.path.join(path, shard)))
        return state
    if os.path.isfile(pt):
        try:
            import torch
        except ImportError:
            raise ValueError(f"checkpoint {pt!r} is a torch pickle and torch is not installed; "
                             "expected model.safetensors (or install torch)") from None
        try:
            sd = torch.load(pt, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - torch raises many kinds
            raise ValueError(f"checkpoint file {pt!r} is corrupt or unreadable: {e}") from None
        return {k: v.float().numpy() if v.dtype.is_floating_point else v.numpy() for k, v in sd.items()}
    raise ValueError(f"checkpoint directory {path!r} has neither model.safetensors nor "
                     "pytorch_model.bin")


def tensor_names(path: str) -> list:
    """The tensor names of the checkpoint in ``path``, in Hugging Face's spelling, without
    reading the tensors where the format allows it (safetensors: its header only)."""
    import struct
    path = os.fspath(path)
    st = os.path.join(path, "model.safetensors")
    index = os.path.join(path, "model.safetensors.index.json")
    try:
        if os.path.isfile(st):
            with open(st, "rb") as fh:
                (n,) = struct.unpack("<Q", fh.read(8))
                if n > 100_000_000:
                    raise ValueError(f"header length {n} is implausible")
                return sorted(k for k in json.loads(fh.read(n)) if k != "__metadata__")
        if os.path.isfile(index):
            with open(index, encoding="utf-8") as fh:
                return sorted(json.load(fh)["weight_map"])
    except (OSError, ValueError, KeyError, TypeError, struct.error, UnicodeDecodeError) as e:
        raise ValueError(f"checkpoint in {path!r} is corrupt or unreadable: {e}") from None
    return sorted(read_state_dict(path))


def has_pooler(names) -> bool:
    """Whether a checkpoint with these tensor names holds BERT's pooler."""
    return any(_strip(_normalize_name(n)).startswith(POOLER_PREFIX) for n in names)


def _strip(name: str) -> str:
    return name[len("bert."):] if name.startswith("bert.") else name


def map_state_dict(state: dict, model, new_head: bool = False):
    """Rename checkpoint tensors to ``model.params`` names and check them all.

    Returns ``(mapped, skipped, new)``: the tensors to load, the checkpoint names that were
    skipped (another head's, or a pooler the model has none of), and the model names left
    to their fresh initialization (only with ``new_head``: a head or pooler the checkpoint
    lacks). Raises one ValueError listing the missing, unexpected and wrongly shaped
    tensors; a decoder weight not tied to the word embeddings is refused.
    """
    wanted = set(model.params)
    encoder_prefix = "bert." if any(n.startswith("bert.") for n in wanted) else ""
    has_mlm_head = "cls.predictions.bias" in wanted
    mapped, skipped, unexpected = {}, [], []
    tied_bias = decoder = None
    for raw, value in state.items():
        name = _strip(_normalize_name(raw))
        if name in IGNORED:
            continue
        if name in (DECODER_WEIGHT, DECODER_BIAS) and not has_mlm_head:
            skipped.append(raw)                      # another head's, as the rest of cls.*
            continue
        if name == DECODER_WEIGHT:
            decoder = (raw, value)                   # tied to the word embeddings: checked below
            continue
        if name == DECODER_BIAS:
            tied_bias = value                        # tied to cls.predictions.bias
            continue
        full = name if name.startswith(HEAD_PREFIXES) else encoder_prefix + name
        if full in wanted:
            mapped[full] = value
        elif name.startswith(HEAD_PREFIXES) or name.startswith(POOLER_PREFIX):
            skipped.append(raw)                      # another head, or a pooler we do not use
        else:
            unexpected.append(raw)
    if has_mlm_head and "cls.predictions.bias" not in mapped and tied_bias is not None:
        mapped["cls.predictions.bias"] = tied_bias
    words = mapped.get(encoder_prefix + WORD_EMBEDDINGS)
    if decoder is not None and words is not None:
        raw, value = decoder
        if np.shape(value) != np.shape(words) or not np.array_equal(value, words):
            raise ValueError(f"checkpoint tensor {raw!r} differs from the word embeddings: the "
                             "masked-LM decoder is not tied (tie_word_embeddings=False?), "
                             "expected it tied, as BERT's")
    missing = sorted(wanted - set(mapped))
    fresh = HEAD_PREFIXES + (encoder_prefix + POOLER_PREFIX,)
    new = [n for n in missing if n.startswith(fresh)] if new_head else []
    missing = [n for n in missing if n not in new]
    wrong = [f"{n}: {tuple(np.shape(v))} (expected {tuple(model.params[n].shape)})"
             for n, v in sorted(mapped.items()) if tuple(np.shape(v)) != tuple(model.params[n].shape)]
    if missing or unexpected or wrong:
        hint = ""
        if missing and all(n.startswith(fresh) for n in missing):
            hint = (" (the checkpoint has no such head or pooler; new_head=True initializes "
                    "them, as when fine-tuning starts)")
        raise ValueError(f"checkpoint does not match {type(model).__name__}: missing keys {missing}, "
                         f"unexpected keys {sorted(unexpected)}, tensors of the wrong shape "
                         f"{wrong}{hint}")
    return mapped, sorted(skipped), new


def load_pretrained(path, model_class, dtype=np.float32, device: str = "cpu",
                    new_head: bool = False, add_pooling_layer: bool | None = None,
                    output_loading_info: bool = False, **config_overrides):
    """Load a Hugging Face (or minibert-saved) BERT directory into a new ``model_class``.

    Args:
        path: directory with config.json and model.safetensors (or pytorch_model.bin).
        model_class: BertModel or one of the head classes; it is passed in (this module sits
            below the model classes and imports none of them). Its class attributes say
            whether it can go without a pooler (``needs_pooler``) and whether it has one by
            default (``add_pooling_layer``).
        dtype, device: of the new model.
        new_head: initialize head parameters (and a pooler) the checkpoint lacks
            (fine-tuning start).
        add_pooling_layer: keep BERT's [CLS] pooler, as Hugging Face's argument. None: the
            class default, except that a class whose default is a pooler but that can do
            without one (BertModel) follows the checkpoint. True on a checkpoint without a
            pooler is an error unless ``new_head``.
        output_loading_info: also return Hugging Face's loading report, a dict with
            ``missing_keys`` (model tensors freshly initialized), ``unexpected_keys``
            (checkpoint tensors not used: another head's, a pooler the model has none of),
            ``mismatched_keys`` and ``error_msgs`` (always empty: those are errors here).
        config_overrides: BertConfig fields to change (e.g. num_labels for a new head).
    Returns:
        the model, or ``(model, loading_info)`` with ``output_loading_info``.
    """
    path = os.fspath(path)
    if not os.path.isdir(path):
        raise ValueError(f"checkpoint directory {path!r} does not exist")
    cfg_file = os.path.join(path, "config.json")
    if not os.path.isfile(cfg_file):
        raise ValueError(f"checkpoint directory {path!r} has no config.json")
    if add_pooling_layer not in (None, True, False):
        raise TypeError(f"add_pooling_layer={add_pooling_layer!r} is invalid, expected True, "
                        "False or None (None: as the class and the checkpoint have it)")
    config = BertConfig.from_json_file(cfg_file)
    if config_overrides:
        unknown = sorted(set(config_overrides) - set(config.to_dict()))
        if unknown:
            raise ValueError(f"config overrides {unknown} are not BertConfig fields")
        config = BertConfig.from_dict({**config.to_dict(), **config_overrides})
    state = read_state_dict(path)
    if add_pooling_layer is None:
        add_pooling_layer = bool(model_class.add_pooling_layer)
        if add_pooling_layer and not model_class.needs_pooler:
            add_pooling_layer = has_pooler(state)    # BertModel: as the checkpoint has it
    model = model_class(config, dtype=dtype, device=device, add_pooling_layer=add_pooling_layer)
    mapped, skipped, new = map_state_dict(state, model, new_head=new_head)
    model.load_state_dict(mapped, strict=False)
    if output_loading_info:
        return model, dict(missing_keys=new, unexpected_keys=skipped, mismatched_keys=[],
                           error_msgs=[])
    return model


def save_pretrained(model, path):
    """Write ``config.json`` and ``model.safetensors`` that ``transformers`` loads as is.

    Every file is written to a temporary name and renamed into place (``minibert.io``): a
    crash mid-save leaves each file either as it was or completely new.
    """
    from safetensors.numpy import save_file
    path = os.fspath(path)
    os.makedirs(path, exist_ok=True)
    state = {n: np.ascontiguousarray(v) for n, v in model.state_dict().items()}
    if "cls.predictions.bias" in state:      # Hugging Face reads the tied decoder from these
        state["cls.predictions.decoder.weight"] = state["bert.embeddings.word_embeddings.weight"].copy()
        state["cls.predictions.decoder.bias"] = state["cls.predictions.bias"].copy()
    cfg = model.config.to_dict()
    cfg["architectures"] = [type(model).__name__]
    # the attention kernel is a run-time choice, not part of the model; transformers refuses
    # names it does not know ("fused"), so the exported config says nothing about it
    cfg.pop("attn_implementation", None)
    # "pt", as torch writes it: transformers 4.x refuses any other format tag (the bytes are
    # the same little-endian tensors whichever library reads them)
    atomic_write(os.path.join(path, "model.safetensors"),
                 lambda tmp: save_file(state, tmp, metadata={"format": "pt"}))
    atomic_write_text(os.path.join(path, "config.json"),
                      json.dumps(cfg, indent=2, sort_keys=True) + "\n")


class PretrainedMixin:
    """``Model.from_pretrained(dir)`` and ``model.save_pretrained(dir)``, as in transformers."""

    @classmethod
    def from_pretrained(cls, path, dtype=np.float32, device: str = "cpu", new_head: bool = False,
                        add_pooling_layer: bool | None = None, output_loading_info: bool = False,
                        **config_overrides):
        """A new ``cls`` with the parameters of the checkpoint directory ``path``
        (``load_pretrained``: its arguments, Hugging Face's names)."""
        return load_pretrained(path, cls, dtype, device, new_head, add_pooling_layer,
                               output_loading_info, **config_overrides)

    def save_pretrained(self, path):
        save_pretrained(self, path)


# ------------------------------------------------------------------ a training run's directory
CHECKPOINT_PREFIX = "checkpoint-"
LATEST = "latest"
TRAINER_STATE = "trainer_state.json"
OPTIMIZER_STATE = "optimizer.npz"


def list_checkpoints(out_dir: str) -> list:
    """Complete checkpoint directories in ``out_dir``, oldest first."""
    if not os.path.isdir(out_dir):
        return []
    names = sorted(n for n in os.listdir(out_dir)
                   if n.startswith(CHECKPOINT_PREFIX) and n[len(CHECKPOINT_PREFIX):].isdigit())
    return [os.path.join(out_dir, n) for n in names]


def latest_checkpoint(out_dir: str) -> str:
    """The checkpoint ``out_dir/latest`` names (or the newest complete one)."""
    out_dir = os.fspath(out_dir)
    if not os.path.isdir(out_dir):
        raise ValueError(f"directory {out_dir!r} does not exist, expected a training output "
                         "directory with checkpoints")
    pointer = os.path.join(out_dir, LATEST)
    if os.path.isfile(pointer):
        with open(pointer, encoding="utf-8") as fh:
            path = os.path.join(out_dir, fh.read().strip())
        if os.path.isdir(path):
            return path
    found = list_checkpoints(out_dir)
    if not found:
        raise ValueError(f"directory {out_dir!r} holds no checkpoint ({CHECKPOINT_PREFIX}NNNNNNN)")
    return found[-1]


def resolve_checkpoint(path: str) -> str:
    """A model directory: ``path`` itself if it has config.json, else its latest checkpoint."""
    path = os.fspath(path)
    if os.path.isfile(os.path.join(path, "config.json")):
        return path
    return latest_checkpoint(path)


def read_trainer_state(path: str) -> dict:
    """The ``trainer_state.json`` of a checkpoint, checked to hold the keys a resume needs."""
    f = os.path.join(path, TRAINER_STATE)
    try:
        with open(f, encoding="utf-8") as fh:
            state = json.load(fh)
        for key in ("step", "rng_state", "history", "evals"):
            state[key]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ValueError(f"checkpoint {path!r} has no valid {TRAINER_STATE}: {e}") from None
    return state
