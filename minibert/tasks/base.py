"""What every fine-tuning task family provides, and the pieces they share.

A run (``minibert.finetuning.finetune``) drives a family through these steps::

    family = get_family("ner")
    train = family.read(path, options)            # or: train, test = family.builtin(seed)
    train, test = family.split(train, seed)       # only when no held-out file is given
    family.prepare(train)                         # label names etc. from the training data
    model = family.model_class.from_pretrained(ckpt, new_head=True, **family.model_kwargs())
    enc = family.encode(test, tokenizer, seq_len, options)      # Encoded: arrays + meta
    Trainer(model, enc_train.arrays, enc_test.arrays, ..., task=family)   # metrics/summarize/shares
    outputs = predict(model, enc, family)         # family.outputs(out, batch), row by row
    metrics, predictions = family.evaluate(test, enc, outputs, options)
    files = family.write_predictions(out_dir, test, enc, predictions, options)

Batches are padded to their own longest sequence (``trim_batch``), so per-token outputs of
different rows can have different lengths: ``outputs`` holds one array per row.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

TOKEN_KEYS = ("input_ids", "token_type_ids", "attention_mask")


@dataclass
class TaskOptions:
    """The options of ``minibert finetune`` that shape reading, encoding and decoding.
    Each family reads the ones it needs; None means "the family's default"."""
    # classification / regression: columns (CSV/TSV header names or JSON keys)
    text_column: str = "text"
    text_pair_column: str | None = "text_pair"
    label_column: str = "label"
    # ner: JSON-lines fields (None: the first of tokens/words and ner_tags/ner/tags present)
    tokens_field: str | None = None
    tags_field: str | None = None
    # classification labels or ner tags by id (for files whose labels are integers)
    label_list: list | None = None
    # qa
    doc_stride: int = 128
    max_query_length: int = 64
    max_answer_length: int = 30
    n_best: int = 20
    null_score_threshold: float = 0.0


@dataclass
class Encoded:
    """A data set made ready for the model.

    arrays: NumPy arrays, one row per model example, every per-token array (``token_keys``)
        padded to ``seq_len`` on its last axis (``trim_batch`` cuts a batch to its longest).
    example_index: (rows,) int64, the data-set example each row comes from (a QA question
        whose context needs several windows has several rows).
    meta: what decoding needs beyond the arrays (QA: each row's token -> character offsets).
    """
    arrays: dict
    example_index: np.ndarray
    meta: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.example_index)


def trim_batch(batch: dict, token_keys=TOKEN_KEYS) -> dict:
    """Dynamic padding: cut the per-token arrays of ``batch`` to its longest real sequence.

    The batch's length is the largest number of ones in any row of ``attention_mask``
    (shape (B, S), or (B, C, S) for multiple choice); every array named in ``token_keys``
    keeps ``[..., :length]``. Real tokens come first in every row (BERT's layout:
    [CLS] ... [SEP] ... [SEP] then [PAD]s), so nothing real is cut.
    """
    mask = np.asarray(batch["attention_mask"])
    length = max(int(mask.sum(axis=-1).max()), 1)
    return {k: (v[..., :length] if k in token_keys else v) for k, v in batch.items()}


def predict(model, encoded: Encoded, family, batch_size: int = 32) -> dict:
    """Run ``model`` (inference: no dropout) over every row of ``encoded`` in order, each
    batch padded to its longest row, and keep ``family.outputs`` of each batch:
    ``{key: [one NumPy array per row]}``. Targets are not fed to the model."""
    from ..backend import to_device
    device = "cpu" if model.xp is np else "gpu"
    inputs = [k for k in family.keys if k in family.input_keys]
    kept: dict = {}
    n = len(encoded)
    for start in range(0, n, batch_size):
        rows = np.arange(start, min(start + batch_size, n))
        batch = trim_batch({k: encoded.arrays[k][rows] for k in family.keys}, family.token_keys)
        out = model(**{k: to_device(batch[k], device) for k in inputs})
        for k, v in family.outputs(out, batch).items():
            kept.setdefault(k, []).extend(list(np.asarray(v)))
    return kept


class Family:
    """The interface of a task family (see the module docstring for the order of calls).

    Class attributes:
        name: the task's name on the command line (``--task``).
        model_class: the head class (``minibert.heads``).
        metric: the key of ``summarize``'s result that the progress bar shows.
        default_seq_len: ``--seq-len`` when not given (384 for qa, as the paper's SQuAD runs).
        keys: the arrays ``Trainer`` feeds the model (inputs and targets).
        token_keys: those whose last axis is the sequence (cut by ``trim_batch``).
        input_keys: those the model takes as inputs in inference (``predict``).
    """
    name = ""
    model_class = None
    metric = "acc"
    default_seq_len = 128
    keys = TOKEN_KEYS + ("labels",)
    token_keys = TOKEN_KEYS
    input_keys = TOKEN_KEYS

    # -------------------------------------------------------------- data
    def read(self, path, options: TaskOptions):
        """The data set of a file (the format chosen by its extension and content)."""
        raise NotImplementedError

    def builtin(self, seed: int = 0):
        """``(train, test)`` of the family's built-in task: real standard-library text,
        labels derived mechanically, no download; test shares no module with train."""
        raise NotImplementedError

    def split(self, data, seed: int = 0):
        """``(train, test)``: 80/20 when the user gave no held-out file."""
        raise NotImplementedError

    def prepare(self, train) -> None:
        """Learn what the run needs from the training data (label names, ...)."""

    def model_kwargs(self) -> dict:
        """Extra ``from_pretrained`` arguments of the head (``num_labels``, ...)."""
        return {}

    def encode(self, data, tokenizer, seq_len: int, options: TaskOptions) -> Encoded:
        raise NotImplementedError

    # -------------------------------------------------------------- Trainer protocol
    def metrics(self, out, batch) -> dict:
        """Poolable per-batch values: numbers are summed, lists concatenated."""
        raise NotImplementedError

    def summarize(self, m: dict) -> dict:
        """The pooled values of ``metrics`` -> the progress bar's metrics (``loss`` and
        ``self.metric`` at least)."""
        raise NotImplementedError

    def shares(self, batch, rows) -> dict:
        """The weight of a slice's mean loss in the batch's loss (one rank: ``{"loss": 1}``
        for the whole batch)."""
        from .. import distributed as dist
        B = len(batch["input_ids"])
        return dict(loss=dist.share(len(range(B)[rows]), B))

    # -------------------------------------------------------------- final evaluation
    def outputs(self, out, batch) -> dict:
        """What evaluation keeps of a batch's model output: ``{key: (B, ...) array}``
        (NumPy; per-token arrays as long as this batch)."""
        raise NotImplementedError

    def evaluate(self, data, encoded: Encoded, outputs: dict, options: TaskOptions):
        """``(metrics, predictions)``: the task's official metrics (a flat dict of floats)
        and its predictions, from ``outputs`` = ``{key: [one array per row]}``."""
        raise NotImplementedError

    def write_predictions(self, out_dir: str, data, encoded: Encoded, predictions,
                          options: TaskOptions) -> list:
        """Write the predictions in the task's standard format; returns the paths."""
        raise NotImplementedError
