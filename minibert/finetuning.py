"""One fine-tuning run for any task family of the BERT paper, end to end.

    finetune(task="ner", train="train.conll", eval="dev.conll", checkpoint="runs/pretrain")

does, in this order (``minibert.tasks.base`` describes the family's part of each step):

    1. check the arguments, the checkpoint (config.json, weights, vocab.txt) and ``out_dir``
    2. family = get_family(task); read the training file (or the family's built-in task) and
       the held-out file (or split the training data 80/20); family.prepare(train)
    3. encode both at ``seq_len`` (default: the family's), checked against the model's positions
    4. load the head (``family.model_class``, a new head on the pretrained encoder), or the
       feature-based model (a frozen encoder, only the head trained: ``minibert.tasks.features``)
    5. train with ``Trainer`` (each batch padded to its own longest row)
    6. predict the held-out set, score it with the family's official metrics, and write
       ``metrics.json``, the predictions in the task's standard format and (classification)
       ``confusion_matrix.png``

Every validation and encoding error is raised (ValueError) in steps 1-4, before anything is
written to ``out_dir``. Nothing here prints: progress goes through ``on_stage`` (one-line
messages) and ``on_step`` / ``on_eval`` (the training loop's records).
"""
from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass, field

import numpy as np

from .checkpoint import latest_checkpoint, list_checkpoints, read_trainer_state
from .config import BertConfig
from .tasks import get_family
from .tasks.base import TaskOptions, predict
from .train import TrainConfig, Trainer, TrainResult

METRICS_FILE = "metrics.json"
CONFUSION_MATRIX_FILE = "confusion_matrix.png"

# the run's facts in metrics.json, beside the family's metrics and baselines
FACTS = ("task", "steps", "train_examples", "eval_examples", "train_rows", "eval_rows",
         "seq_len", "feature_based", "loss", "seconds")

# what a run says when it reads the family's own task instead of a file
BUILTIN = "the built-in {} task (standard-library text, no download)"


def _noop(*_):
    pass


@dataclass
class FinetuneResult:
    """What a run produced.

    train: the training loop's result (final step, last checkpoint, metric history).
    metrics: the held-out metrics as written to ``metrics.json`` (the family's official
        metrics and their ``baseline_*`` values, plus the run's facts).
    files: the paths written after training (metrics.json, predictions, pictures).
    label_names: the class or tag names (None for tasks without a label set).
    family: the task family object of the run.
    """
    train: TrainResult
    metrics: dict
    files: list = field(default_factory=list)
    label_names: list | None = None
    family: object = None


def _positive_int(name, v):
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v <= 0:
        raise ValueError(f"{name}={v!r} is invalid, expected a positive integer")


def _check_out_dir(out_dir, resume):
    """A new run refuses a directory with checkpoints; a resumed one needs a readable one."""
    if resume:
        read_trainer_state(latest_checkpoint(out_dir))
    elif list_checkpoints(out_dir):
        raise ValueError(f"--out {out_dir!r} already holds a training run "
                         f"({os.path.basename(list_checkpoints(out_dir)[-1])}); pass --resume to "
                         "continue it or choose another --out")


def _count(data):
    try:
        return len(data)
    except TypeError:
        return None


def _read_data(family, train, eval, options, seed, on_stage):
    """``(train, held_out)`` from the files, the family's split, or its built-in task."""
    if train is None:
        if eval is not None:
            raise ValueError(f"eval={eval!r} is given without train, expected a training file "
                             "with it (or neither, for the built-in task)")
        on_stage("reading " + BUILTIN.format(family.name))
        return family.builtin(seed)
    for name, path in (("train", train), ("eval", eval)):
        if path is not None and not os.path.isfile(path):
            raise ValueError(f"{name} file {os.fspath(path)!r} does not exist, expected a data file")
    on_stage(f"reading {os.fspath(train)!r}")
    data = family.read(train, options)
    if eval is None:
        on_stage("  no held-out file: 20% of the examples are held out")
        return family.split(data, seed)
    on_stage(f"reading {os.fspath(eval)!r}")
    return data, family.read(eval, options)


def _label_names(family):
    for attr in ("label_names", "labels", "label_list"):
        v = getattr(family, attr, None)
        if isinstance(v, (list, tuple)) and v:
            return list(v)
    return None


def _check_features(feature_layers, feature_combine, config):
    """The feature-based model's own checks, run before anything is read or written."""
    from .tasks.features import check_combine, resolve_layers
    check_combine(feature_combine, "feature_combine")
    return resolve_layers(feature_layers, config.num_hidden_layers, "feature_layers")


def _load_model(family, model_dir, config, device, seed, feature_based, layers, combine,
                on_stage):
    """The model to train: the family's head on the pretrained encoder, or the
    feature-based model (frozen encoder, head only)."""
    if feature_based:
        from .tasks.features import feature_based_model
        model = feature_based_model(model_dir, family, layers, combine, dtype=np.float32,
                                    device=device, seed=seed)
        on_stage(f"model: feature-based {family.model_class.__name__} task from {model_dir}: "
                 f"frozen encoder, hidden states {model.layers} combined by {combine}, only the "
                 f"head trained ({model.num_parameters(only_trainable=True):,} parameters); "
                 f"device {device}")
        return model
    from .recipes import _loading_report
    model, info = family.model_class.from_pretrained(
        model_dir, dtype=np.float32, device=device, new_head=True, output_loading_info=True,
        **family.model_kwargs())
    model.set_rng_state({"seed": seed, "dropout_calls": 0})
    on_stage(f"model: {family.model_class.__name__} from {model_dir} "
             f"({model.num_parameters():,} parameters), device {device}")
    for line in _loading_report(info):
        on_stage("  " + line)
    return model


FINETUNE_LR = 2e-4
FEATURE_BASED_LR = 1e-3


def finetune(task="classification", train=None, eval=None, checkpoint="runs/pretrain",
             out_dir="runs/finetune", steps=300, batch_size=16, seq_len=None, lr=None,
             warmup_steps=None, seed=0, device="cpu", resume=False, stop_at=None, options=None,
             feature_based=False, feature_layers=None, feature_combine="concat",
             on_stage=_noop, on_step=None, on_eval=None) -> FinetuneResult:
    """Fine-tune a pretrained BERT on one task and score it on held-out data.

    Args:
        task: a name of ``minibert.tasks.TASK_NAMES`` (classification, regression, ner, qa,
            multiple-choice), or a ``Family`` object.
        train: the training file (its format found by the family from its extension and
            content); None runs the family's built-in task.
        eval: the held-out file; None holds out 20% of ``train`` (``family.split``).
        checkpoint: a minibert run directory (its latest checkpoint) or any BERT directory
            with config.json, model.safetensors and vocab.txt (Hugging Face's too).
        out_dir: checkpoints, loss_curve.png, metrics.json and the predictions go here.
        steps, batch_size, lr, warmup_steps, seed: the run (``TrainConfig``, AdamW "torch",
            linear warmup then decay; warmup default 10% of steps). ``lr`` None: 2e-4
            (``FINETUNE_LR``), or 1e-3 with ``feature_based`` (``FEATURE_BASED_LR``: a task
            model trained from scratch on frozen features takes larger steps than a
            pretrained encoder can).
        seq_len: tokens per row (default ``family.default_seq_len``: 128, 384 for qa); each
            batch is then padded only to its own longest row.
        resume: continue the run in ``out_dir`` from its latest checkpoint.
        stop_at: stop after this step (a checkpoint is written, the held-out set scored),
            to be continued with ``resume``.
        options: ``TaskOptions`` (column and field names, label list, QA decoding).
        feature_based: freeze the encoder and train only the head on the hidden states of
            ``feature_layers`` (None: the feature model's default) combined by
            ``feature_combine`` ("concat" or "sum"): the paper's feature-based approach.
    Returns:
        FinetuneResult.
    """
    t0 = time.perf_counter()
    from .recipes import _check_common, _check_seq_len, _model_dir
    from .tokenization import BertTokenizer
    options = TaskOptions() if options is None else options
    if not isinstance(options, TaskOptions):
        raise TypeError(f"options has type {type(options).__name__}, expected TaskOptions")
    for name, v in (("steps", steps), ("batch_size", batch_size)):
        _positive_int(name, v)
    out_dir = os.fspath(out_dir)
    family = get_family(task) if isinstance(task, str) else task
    model_dir = _model_dir(checkpoint)
    config = BertConfig.from_json_file(os.path.join(model_dir, "config.json"))
    seq_len = family.default_seq_len if seq_len is None else seq_len
    _check_common(None, seq_len, batch_size, device)
    _check_seq_len(seq_len, config, model_dir)
    if not feature_based and feature_layers is not None:
        raise ValueError(f"feature_layers={list(feature_layers)!r} is given without "
                         "feature_based, expected feature_based=True (--feature-based) with it")
    layers = _check_features(feature_layers, feature_combine, config) if feature_based else None
    _check_out_dir(out_dir, resume)
    tokenizer = BertTokenizer.from_pretrained(model_dir)

    train_data, eval_data = _read_data(family, train, eval, options, seed, on_stage)
    family.prepare(train_data)
    names = _label_names(family)
    on_stage(f"encoding at seq_len {seq_len} (each batch padded to its longest row)")
    enc_train = family.encode(train_data, tokenizer, seq_len, options)
    enc_eval = family.encode(eval_data, tokenizer, seq_len, options)
    if len(enc_train) == 0 or len(enc_eval) == 0:
        raise ValueError(f"the data give {len(enc_train)} training and {len(enc_eval)} held-out "
                         "rows, expected at least one of each")
    n_train, n_eval = _count(train_data), _count(eval_data)
    n_train = len(enc_train) if n_train is None else n_train    # a data set without len
    n_eval = len(enc_eval) if n_eval is None else n_eval
    rows = "" if (len(enc_train), len(enc_eval)) == (n_train, n_eval) else \
        f" ({len(enc_train):,} and {len(enc_eval):,} model rows)"
    on_stage(f"  {n_train:,} training and {n_eval:,} held-out examples{rows}"
             + (f", {len(names)} labels: {', '.join(map(str, names))}" if names else ""))
    model = _load_model(family, model_dir, config, device, seed, feature_based, layers,
                        feature_combine, on_stage)

    if lr is None:
        lr = FEATURE_BASED_LR if feature_based else FINETUNE_LR
    tc = TrainConfig(steps=steps, batch_size=batch_size, lr=lr, warmup_steps=warmup_steps,
                     seed=seed, eval_every=max(steps // 4, 1),
                     eval_batches=math.ceil(len(enc_eval) / batch_size),
                     save_every=steps, optimizer="torch").validate()
    trainer = Trainer(model, {k: enc_train.arrays[k] for k in family.keys},
                      {k: enc_eval.arrays[k] for k in family.keys}, out_dir, tc, task=family,
                      save_extra=tokenizer.save_pretrained)
    result = trainer.train(resume=resume, stop_at=stop_at, on_step=on_step, on_eval=on_eval)

    on_stage("scoring the held-out examples")
    outputs = predict(model, enc_eval, family, batch_size)
    metrics, predictions = family.evaluate(eval_data, enc_eval, outputs, options)
    last = result.evals[-1] if result.evals and result.evals[-1]["step"] == result.step else None
    record = dict(task=family.name, steps=result.step, train_examples=n_train,
                  eval_examples=n_eval, train_rows=len(enc_train), eval_rows=len(enc_eval),
                  seq_len=seq_len, feature_based=bool(feature_based),
                  **{k: float(v) for k, v in metrics.items()})
    if last is not None and "loss" in last:
        record["loss"] = float(last["loss"])
    files = _write_results(out_dir, family, record, eval_data, enc_eval, outputs, predictions,
                           options, names, t0)
    return FinetuneResult(result, record, files, names, family)


def _write_results(out_dir, family, record, eval_data, enc_eval, outputs, predictions, options,
                   names, t0):
    """metrics.json, the family's predictions and (classification) the confusion matrix;
    only rank 0 writes under MPI. Returns the paths."""
    from .distributed import world
    from .io import atomic_write_text
    if not world().is_root:
        return []
    os.makedirs(out_dir, exist_ok=True)
    files = list(family.write_predictions(out_dir, eval_data, enc_eval, predictions, options))
    if family.name == "classification" and names:
        gold, pred = classification_ids(enc_eval, outputs, predictions, names)
        if gold is not None:
            from .internals.plots import plot_confusion_matrix
            path = os.path.join(out_dir, CONFUSION_MATRIX_FILE)
            plot_confusion_matrix(gold, pred, names, path)
            files.append(path)
    record["seconds"] = round(time.perf_counter() - t0, 3)
    path = os.path.join(out_dir, METRICS_FILE)
    atomic_write_text(path, json.dumps(record, indent=1) + "\n")
    return [path] + files


def classification_ids(encoded, outputs, predictions, names):
    """``(gold, predicted)`` class ids of a classification run's held-out rows, or
    ``(None, None)`` when they cannot be told.

    gold: the encoded ``labels``. predicted: ``predictions`` when they are class ids or
    label names (one per row), else the argmax of the kept ``logits``.
    """
    gold = np.asarray(encoded.arrays.get("labels", []), dtype=np.int64)
    pred = None
    seq = predictions.get("pred", predictions.get("preds")) if isinstance(predictions, dict) \
        else predictions
    try:
        values = list(seq)
    except TypeError:
        values = None
    if values is not None and len(values) == len(gold):
        index = {str(n): k for k, n in enumerate(names)}
        if all(isinstance(v, (int, np.integer)) for v in values):
            pred = np.asarray(values, dtype=np.int64)
        elif all(str(v) in index for v in values):
            pred = np.asarray([index[str(v)] for v in values], dtype=np.int64)
    if pred is None and "logits" in outputs and len(outputs["logits"]) == len(gold):
        pred = np.asarray([int(np.argmax(v)) for v in outputs["logits"]], dtype=np.int64)
    if pred is None or len(gold) == 0:
        return None, None
    return gold, pred
