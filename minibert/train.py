"""Training loops: BERT pretraining (masked LM + next sentence) and fine-tuning.

One loop serves both. A *step* is

    batch      = the rows ``batch_indices(step)`` of the training arrays
    loss       = model.forward(**batch, training=True)        dropout on
    grads      = model.backward(cache)                        into the flat gradient buffer
    norm       = clip_grad_norm(grads, max_grad_norm)         one global L2 norm
    params    -= AdamW update at lr = schedule(step)          over the flat parameter buffer

and every ``eval_every`` steps the model is evaluated on held-out data with dropout off,
every ``save_every`` steps a checkpoint is written.

Exact resume
------------
Everything that decides the next step is a function of saved state, so a run of N steps and
a run of N/2 steps + resume + N/2 steps produce the same bits:

* the batch of step t is a pure function of (seed, t): epoch e = t * batch_size // n uses
  the permutation ``default_rng([seed, e]).permutation(n)`` (``batch_indices``);
* dropout masks come from Philox(seed, offset) with the offset built from the model's
  forward-call counter, saved as ``model.rng_state()``;
* the optimizer's moments and step count are saved bit for bit (float32 in .npz), the
  parameters likewise (model.safetensors).

Checkpoints
-----------
``out/checkpoint-0000100/`` holds ``config.json`` + ``model.safetensors`` (a directory
Hugging Face transformers loads as is), ``optimizer.npz``, ``trainer_state.json`` (step, RNG
state, configuration, metric history, a fingerprint of the training data) and whatever the
caller adds (the tokenizer's vocab.txt). It is written into a hidden temporary directory and
renamed into place, then ``out/latest`` (the name of the newest checkpoint) is replaced
atomically; only then are older checkpoints pruned. A run killed at any moment therefore
leaves the previous checkpoint complete and ``latest`` pointing at a complete checkpoint.
The names and the functions that find them (``list_checkpoints``, ``latest_checkpoint``,
``resolve_checkpoint``, ``read_trainer_state``) live in ``minibert.checkpoint``.

A non-finite loss or gradient norm stops the run with ``TrainingError`` before the update is
applied, naming the step and the last good checkpoint, which is left untouched.

Data parallelism
----------------
Under an MPI launcher (``mpiexec -n N``) every rank runs this loop on its slice of each
global batch (``minibert.distributed``): the batch of step t is still the pure function of
(seed, t) above, of which rank r takes rows r B/N .. (r+1) B/N - 1 (B must divide by N);
its dropout masks are its rows of the whole batch's masks (``model.batch_start``); its
loss parts are weighted by its share of the batch, so that one in-place allreduce of the
flat gradient buffer gives every rank the global batch's gradient; clipping and AdamW then
make the same update on every rank. N ranks follow the trajectory of one rank (to the
rounding of the gradient sums), and a run saved on N ranks resumes on any number.
Only rank 0 writes checkpoints and the loss curve (each save first checks that every rank
holds the same parameter bits); every rank reads the checkpoint it resumes from.
A non-finite loss on any rank stops every rank at the same step (the flag is reduced with
the loss). Without MPI the communicator is a one-rank stand-in and the code path is the same.

Nothing here prints: progress is reported through the ``on_step`` / ``on_eval`` callbacks
(the command line draws a tqdm bar with them).
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import time
from collections import Counter
from dataclasses import asdict, dataclass, field, fields

import numpy as np

from . import distributed as dist
from .backend import to_device, to_numpy
from .checkpoint import (  # noqa: F401 - the directory helpers, importable from here as before
    CHECKPOINT_PREFIX,
    LATEST,
    OPTIMIZER_STATE,
    TRAINER_STATE,
    latest_checkpoint,
    list_checkpoints,
    map_state_dict,
    read_state_dict,
    read_trainer_state,
    resolve_checkpoint,
)
from .io import atomic_directory, atomic_write_text
from .optim import AdamW, LRSchedule, clip_grad_norm, global_norm
from .tasks.base import trim_batch
from .validation import deferred_checks


class TrainingError(RuntimeError):
    """The run cannot go on (a non-finite loss, data that changed under a resumed run)."""


@dataclass
class TrainConfig:
    """Hyper-parameters of a run. Defaults follow BERT's recipe at a small scale."""
    steps: int = 300                    # total optimizer steps; the schedule decays to 0 here
    batch_size: int = 16
    lr: float = 1e-3                    # peak learning rate (small models tolerate 1e-3)
    warmup_steps: int | None = None     # None: 10% of steps, as BERT
    schedule: str = "linear"            # "linear" (warmup, then linear decay) or "constant"
    optimizer: str = "bert"             # AdamW variant: "bert" (no bias correction) or "torch"
    weight_decay: float = 0.01          # not applied to LayerNorm parameters and biases
    adam_eps: float = 1e-6
    max_grad_norm: float | None = 1.0   # global-norm clipping; None disables it
    eval_every: int = 100
    eval_batches: int = 8
    save_every: int = 100
    keep_checkpoints: int = 2           # the newest ones are kept, older ones pruned
    seed: int = 0                       # data order (and, through the model, dropout)

    def validate(self):
        def positive_int(name):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v <= 0:
                raise ValueError(f"{name}={v!r} is invalid, expected a positive integer")
        for name in ("steps", "batch_size", "eval_every", "eval_batches", "save_every",
                     "keep_checkpoints"):
            positive_int(name)
        if not (isinstance(self.lr, (int, float)) and math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"lr={self.lr!r} is invalid, expected a positive finite number")
        if self.warmup_steps is not None and not 0 <= self.warmup_steps <= self.steps:
            raise ValueError(f"warmup_steps={self.warmup_steps!r} is invalid, expected "
                             f"0..steps ({self.steps})")
        if self.max_grad_norm is not None and not self.max_grad_norm > 0:
            raise ValueError(f"max_grad_norm={self.max_grad_norm!r} is invalid, expected a "
                             "positive number or None")
        if self.schedule not in ("linear", "constant"):
            raise ValueError(f"schedule={self.schedule!r} is unknown, expected 'linear' or 'constant'")
        return self

    @property
    def warmup(self) -> int:
        return self.warmup_steps if self.warmup_steps is not None else self.steps // 10

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


def batch_indices(step: int, n: int, batch_size: int, seed: int) -> np.ndarray:
    """Rows of the training arrays that form the batch of ``step`` (0-based).

    The examples are read epoch after epoch, each epoch in its own random order
    ``default_rng([seed, epoch]).permutation(n)``; step t takes positions
    t * batch_size ... (t + 1) * batch_size - 1 of that endless sequence. A pure function of
    its arguments: resuming at step t needs no saved data-loader state.
    """
    g = step * batch_size + np.arange(batch_size)              # positions in the stream
    epochs, within = np.divmod(g, n)
    out = np.empty(batch_size, dtype=np.int64)
    for e in np.unique(epochs):
        perm = np.random.default_rng([seed, int(e)]).permutation(n)
        sel = epochs == e
        out[sel] = perm[within[sel]]
    return out


def fingerprint(arrays: dict) -> str:
    """A short hash of a dict of arrays: resume refuses data that changed under the run."""
    h = hashlib.sha256()
    for k in sorted(arrays):
        a = np.ascontiguousarray(arrays[k])
        h.update(k.encode())
        h.update(str(a.dtype).encode() + str(a.shape).encode())
        h.update(a.tobytes())
    return h.hexdigest()[:16]


# ------------------------------------------------------------------------------ the tasks
class PretrainingTask:
    """BertForPreTraining on arrays made by ``minibert.pretraining_data``; without
    ``next_sentence_labels`` the run is masked LM only (no NSP loss, no NSP accuracy)."""
    name = "pretraining"
    keys = ("input_ids", "token_type_ids", "attention_mask", "masked_lm_positions",
            "masked_lm_ids", "masked_lm_weights")
    optional_keys = ("next_sentence_labels",)

    @staticmethod
    def metrics(out, batch) -> dict:
        """Sums (not means), so that batches can be pooled: loss parts, correct counts, and
        the count of every masked token (``mlm_labels``, a Counter) for the baseline."""
        w = to_numpy(batch["masked_lm_weights"]).astype(np.float64)                    # (B, P)
        ids = to_numpy(batch["masked_lm_ids"])
        pred = to_numpy(out.mlm_logits.argmax(axis=-1))                                 # (B, P)
        hit = (pred == ids) * w
        B = w.shape[0]
        m = dict(examples=B, loss=float(out.loss) * B, mlm_loss=float(out.mlm_loss) * B,
                 mlm_correct=float(hit.sum()), mlm_count=float(w.sum()),
                 mlm_labels=Counter(ids[w > 0].tolist()),
                 tokens=float(to_numpy(batch["attention_mask"]).sum()))
        if out.nsp_loss is not None:
            nsp = to_numpy(out.nsp_logits.argmax(axis=-1)) == to_numpy(batch["next_sentence_labels"])
            m.update(nsp_loss=float(out.nsp_loss) * B, nsp_correct=float(nsp.sum()), nsp_count=B)
        return m

    @staticmethod
    def summarize(m: dict) -> dict:
        """Means; ``mlm_baseline`` is the accuracy of the best constant guess on the same
        positions (always the most frequent masked token there): what a model that ignores
        the context scores."""
        n = max(m["examples"], 1)
        count = max(m["mlm_count"], 1)
        labels = m["mlm_labels"]
        r = dict(loss=m["loss"] / n, mlm_loss=m["mlm_loss"] / n,
                 mlm_acc=m["mlm_correct"] / count,
                 mlm_baseline=(max(labels.values()) if labels else 0) / count)
        if m.get("nsp_count"):
            r.update(nsp_loss=m["nsp_loss"] / n, nsp_acc=m["nsp_correct"] / m["nsp_count"])
        return r

    @staticmethod
    def shares(batch, rows) -> dict:
        """The weight of each of a slice's mean losses in the global batch's loss: its share
        of the masked-LM weights and of the sequences (``backward``'s d_mlm_loss,
        d_nsp_loss)."""
        w = np.asarray(batch["masked_lm_weights"], dtype=np.float64)
        B = len(w)
        s = dict(mlm_loss=dist.share(w[rows].sum(), w.sum()))
        if "next_sentence_labels" in batch:
            s["nsp_loss"] = dist.share(len(range(B)[rows]), B)
        return s


class ClassificationTask:
    """BertForSequenceClassification on tokenized text arrays plus ``labels``."""
    name = "classification"
    keys = ("input_ids", "token_type_ids", "attention_mask", "labels")

    @staticmethod
    def metrics(out, batch) -> dict:
        pred = to_numpy(out.logits.argmax(axis=-1))
        labels = to_numpy(batch["labels"])
        B = labels.shape[0]
        return dict(examples=B, loss=float(out.loss) * B, correct=float((pred == labels).sum()),
                    tokens=float(to_numpy(batch["attention_mask"]).sum()))

    @staticmethod
    def summarize(m: dict) -> dict:
        n = max(m["examples"], 1)
        return dict(loss=m["loss"] / n, acc=m["correct"] / n)

    @staticmethod
    def shares(batch, rows) -> dict:
        """A slice's share of the sequences: its mean loss's weight (``backward``'s d_loss)."""
        B = len(batch["labels"])
        return dict(loss=dist.share(len(range(B)[rows]), B))


TASKS = {t.name: t for t in (PretrainingTask, ClassificationTask)}


def _pool(parts):
    """Sum each key over the parts (numbers, or Counters)."""
    out = {}
    for m in parts:
        for k, v in m.items():
            out[k] = out[k] + v if k in out else v
    return out


@dataclass
class TrainResult:
    step: int
    checkpoint: str | None
    history: list = field(default_factory=list)          # one dict per step
    evals: list = field(default_factory=list)            # one dict per evaluation


# ------------------------------------------------------------------------------ the loop
class Trainer:
    """Runs ``config.steps`` optimizer steps of ``model`` on ``train_data``.

    Args:
        model: BertForPreTraining or BertForSequenceClassification (any dtype/device).
        train_data, eval_data: dicts of NumPy arrays with the task's keys, one row per example.
        out_dir: where checkpoints, ``latest`` and ``loss_curve.png`` go.
        config: TrainConfig.
        task: "pretraining" or "classification", or a fine-tuning family
            (``minibert.tasks.base.Family``: its ``keys``, ``metrics``, ``summarize`` and
            ``shares``); a family's batches are padded to their longest row (``trim_batch``).
        save_extra: optional ``f(directory)`` called inside every checkpoint directory before
            it is renamed into place (the command line saves the tokenizer with it).
        batch_transform: optional ``f(batch, step) -> batch`` applied to every training batch
            (NumPy arrays, before they move to the device), e.g. dynamic masking. It must be
            a pure function of its arguments (seed its randomness from ``step``), so that a
            resumed run sees the same batches. It sees the global batch on every rank.
        monitor: optional observer of the steps it ``wants(step)``: ``before_update(model,
            batch)`` after the backward (gradients unclipped), ``after_update(model, batch,
            step)`` after the optimizer step (``minibert.internals.InternalsMonitor``). With
            several ranks it sees this rank's slice and the reduced (global) gradients.
        comm: the ranks (``minibert.distributed``); None: ``distributed.world()``, the MPI
            ranks under a launcher, else one rank.
    """

    def __init__(self, model, train_data: dict, eval_data: dict | None, out_dir: str,
                 config: TrainConfig, task: str = "pretraining", save_extra=None,
                 batch_transform=None, monitor=None, comm=None):
        if isinstance(task, str):
            if task not in TASKS:
                raise ValueError(f"task={task!r} is unknown, expected one of {sorted(TASKS)}")
            task = TASKS[task]
        self.task = task                    # or a fine-tuning family (minibert.tasks.base.Family)
        self.config = config.validate()
        self.model = model
        self.train_data = self._check_data("train_data", train_data)
        self.eval_data = None if eval_data is None else self._check_data("eval_data", eval_data)
        self.n = len(next(iter(self.train_data.values())))
        self.out_dir = os.fspath(out_dir)
        self.save_extra = save_extra
        self.batch_transform = batch_transform
        self.monitor = monitor
        c = config
        self.optimizer = AdamW(model.store, lr=c.lr, eps=c.adam_eps, weight_decay=c.weight_decay,
                               variant=c.optimizer)
        kind = "linear_warmup_linear_decay" if c.schedule == "linear" else "constant"
        self.schedule = LRSchedule(kind, c.lr, warmup_steps=c.warmup, total_steps=c.steps)
        self.step = 0                       # optimizer steps taken so far
        self.history, self.evals = [], []
        self.last_checkpoint = None
        self.data_fingerprint = fingerprint(self.train_data)
        self.comm = dist.world() if comm is None else comm
        self.rows = dist.rank_rows(c.batch_size, self.comm)       # this rank's slice
        model.batch_start = self.rows.start                        # ... and its dropout masks
        if self.comm.size > 1:
            dist.configure_threads(self.comm)
            dist.broadcast_parameters(self.comm, model.store.data)

    def _check_data(self, name, data):
        if not isinstance(data, dict):
            raise TypeError(f"{name} has type {type(data).__name__}, expected a dict of arrays")
        missing = [k for k in self.task.keys if k not in data]
        if missing:
            raise ValueError(f"{name} lacks {missing}, expected the keys {list(self.task.keys)}")
        keys = self.task.keys + tuple(k for k in getattr(self.task, "optional_keys", ())
                                      if k in data)
        sizes = {k: len(data[k]) for k in keys}
        if len(set(sizes.values())) != 1 or 0 in sizes.values():
            raise ValueError(f"{name} has rows {sizes}, expected the same positive count for every key")
        return {k: np.asarray(data[k]) for k in keys}

    def _batch(self, data, rows, step=None):
        """The batch of ``rows`` (the transform applied when ``step`` is given), host arrays."""
        batch = {k: v[rows] for k, v in data.items()}
        if getattr(self.task, "token_keys", None):        # fine-tuning: dynamic padding
            batch = trim_batch(batch, self.task.token_keys)
        if step is not None and self.batch_transform is not None:
            batch = self.batch_transform(batch, step)
        return batch

    def _to_device(self, batch):
        device = "gpu" if self.model.xp is not np else "cpu"
        return {k: to_device(v, device) for k, v in batch.items()}

    # ------------------------------------------------------------------ one step
    def train_step(self) -> dict:
        """One optimizer step; returns the step's metrics. Raises TrainingError when the loss
        or the gradient norm is not finite (the parameters are left as they were)."""
        c, model = self.config, self.model
        rows = batch_indices(self.step, self.n, c.batch_size, c.seed)
        whole = self._batch(self.train_data, rows, self.step)            # the global batch
        batch = self._to_device({k: v[self.rows] for k, v in whole.items()})   # this rank's
        shares = self.task.shares(whole, self.rows)
        t0 = time.perf_counter()
        grad = model.store.grad
        with deferred_checks() as checks:
            out, cache = model.forward(**batch, training=True)
            model.backward(cache, **{f"d_{k}": v for k, v in shares.items()})
            dist.allreduce_gradients(self.comm, grad)             # the global batch's gradient
            norm = (global_norm(grad) if c.max_grad_norm is not None
                    else model.xp.sqrt((grad.astype(np.float64) ** 2).sum()))
            # the step's one read of the device: the inputs' checks, the loss, its parts and
            # the gradient norm (the parameters are untouched until the checks pass)
            *values, local, norm = checks.read([getattr(out, k) for k in shares]
                                               + [out.loss, norm])
        parts = dict(zip(shares, values))
        # the global loss (each rank's parts weighted by its share) and the ranks whose loss
        # is not finite, in one small reduction: every rank stops at the same step
        reduced = self.comm.allreduce_sum([shares[k] * parts[k] for k in shares]
                                          + [not math.isfinite(local)])
        if reduced[-1]:
            bad = [(r, v) for r, v in enumerate(self.comm.allgather(local)) if not math.isfinite(v)]
            where = "" if self.comm.size == 1 else " on rank " + ", ".join(str(r) for r, _ in bad)
            raise self._diverged(f"loss is {bad[0][1]}{where}")
        watch = self.monitor is not None and self.monitor.wants(self.step + 1)
        if watch:
            self.monitor.before_update(model, batch)
        if c.max_grad_norm is not None:
            clip_grad_norm(grad, c.max_grad_norm, norm=norm)
        if not math.isfinite(norm):
            raise self._diverged(f"gradient norm is {norm}")
        lr = self.schedule.lr(self.step)
        self.optimizer.step(lr=lr)
        self.step += 1
        if watch:
            self.monitor.after_update(model, batch, self.step)
        m = self.task.metrics(out, batch)
        seconds = time.perf_counter() - t0
        if self.comm.size > 1:
            m = _pool(self.comm.allgather(m))       # the global batch's counts and sums
        summary = self.task.summarize(m)
        if self.comm.size > 1:                      # ... and its loss, each part exactly
            summary.update(zip(shares, (float(v) for v in reduced[:-1])))
            summary["loss"] = float(sum(reduced[:-1]))
        tokens = m["tokens"] if "tokens" in m else float(np.asarray(whole["attention_mask"]).sum())
        rec = dict(step=self.step, lr=lr, grad_norm=norm, seconds=seconds,
                   tokens_per_s=tokens / max(seconds, 1e-9), **summary)
        self.history.append(rec)
        return rec

    def _diverged(self, what):
        where = (f"the last good checkpoint {self.last_checkpoint!r} is intact"
                 if self.last_checkpoint else "no checkpoint had been written yet")
        return TrainingError(f"training stopped at step {self.step + 1}: {what}; {where}")

    def evaluate(self) -> dict:
        """Metrics on the held-out data (dropout off), over at most ``eval_batches`` batches."""
        if self.eval_data is None:
            return {}
        n = len(self.eval_data["input_ids"])
        bs = self.config.batch_size
        parts = []
        starts = range(0, min(n, bs * self.config.eval_batches), bs)
        # batch i on rank i mod N; pooled in batch order, as one rank would
        for i in range(self.comm.rank, len(starts), self.comm.size):
            start = starts[i]
            batch = self._to_device(self._batch(self.eval_data, np.arange(start, min(start + bs, n))))
            out = self.model(**batch)                     # inference: no dropout, no caches kept
            parts.append((i, self.task.metrics(out, batch)))
        parts = sorted((p for ps in self.comm.allgather(parts) for p in ps), key=lambda p: p[0])
        rec = dict(step=self.step, **self.task.summarize(_pool(m for _, m in parts)))
        self.evals.append(rec)
        return rec

    # ------------------------------------------------------------------ the run
    def train(self, resume: bool = False, stop_at: int | None = None, on_step=None,
              on_eval=None) -> TrainResult:
        """Train up to ``config.steps`` (or ``stop_at``) steps.

        Args:
            resume: continue from ``out_dir``'s latest checkpoint. Without it, an ``out_dir``
                that already holds checkpoints is refused (they are never overwritten).
            stop_at: stop after this step (a checkpoint is written there), to be resumed.
            on_step(record), on_eval(record): progress callbacks.
        """
        c = self.config
        if resume:
            self.load_checkpoint(latest_checkpoint(self.out_dir))     # every rank reads it
            dist.check_same_bits(self.comm, self.model.store.data, "parameters after resuming")
        elif list_checkpoints(self.out_dir):
            raise ValueError(f"out_dir {self.out_dir!r} already holds checkpoints "
                             f"({os.path.basename(list_checkpoints(self.out_dir)[-1])}); resume "
                             "them or choose another directory")
        end = c.steps if stop_at is None else min(int(stop_at), c.steps)
        if end < self.step:
            raise ValueError(f"stop_at={stop_at} is before the resumed step {self.step}")
        if self.step == 0 and self.step < end:           # the baseline the curves start from
            ev = self.evaluate()
            if ev and on_eval:
                on_eval(ev)
        while self.step < end:
            rec = self.train_step()
            if on_step:
                on_step(rec)
            if self.step % c.eval_every == 0 or self.step == c.steps:
                ev = self.evaluate()
                if ev and on_eval:
                    on_eval(ev)
            if self.step % c.save_every == 0 or self.step == end:
                self.save_checkpoint()
        if self.last_checkpoint is None and self.step > 0:
            self.save_checkpoint()
        return TrainResult(self.step, self.last_checkpoint, self.history, self.evals)

    # ------------------------------------------------------------------ checkpoints
    def state(self) -> dict:
        return dict(step=self.step, task=self.task.name, rng_state=self.model.rng_state(),
                    train_config=asdict(self.config), data_fingerprint=self.data_fingerprint,
                    history=self.history, evals=self.evals)

    def save_checkpoint(self) -> str:
        """Write ``checkpoint-<step>`` atomically, point ``latest`` at it, prune old ones.
        With several ranks: all of them check that they hold the same parameters, rank 0
        writes."""
        name = f"{CHECKPOINT_PREFIX}{self.step:07d}"
        final = os.path.join(self.out_dir, name)
        dist.check_same_bits(self.comm, self.model.store.data, f"parameters at step {self.step}")
        if self.comm.is_root:
            self._write_checkpoint(name, final)
        self.last_checkpoint = final
        return final

    def _write_checkpoint(self, name, final):
        os.makedirs(self.out_dir, exist_ok=True)
        # the same step may be saved again (resume): atomic_directory replaces it
        with atomic_directory(final) as tmp:
            self.model.save_pretrained(tmp)
            opt = self.optimizer.state_dict()
            with open(os.path.join(tmp, OPTIMIZER_STATE), "wb") as fh:
                np.savez(fh, **{k: to_numpy(v) for k, v in opt.items()})
            with open(os.path.join(tmp, TRAINER_STATE), "w", encoding="utf-8") as fh:
                json.dump(self.state(), fh, indent=1)
            if self.save_extra is not None:
                self.save_extra(tmp)
        atomic_write_text(os.path.join(self.out_dir, LATEST), name + "\n")
        for old in list_checkpoints(self.out_dir)[:-self.config.keep_checkpoints]:
            shutil.rmtree(old, ignore_errors=True)
        # matplotlib is loaded at the first save, not when training starts
        from .internals.plots import plot_history
        plot_history(self.history, self.evals, os.path.join(self.out_dir, "loss_curve.png"),
                     self.task.name, getattr(self.task, "metric", "acc"))

    def load_checkpoint(self, path: str):
        """Restore parameters, optimizer, step, RNG state and history from ``path``."""
        state = read_trainer_state(path)
        if state.get("task") != self.task.name:
            raise ValueError(f"checkpoint {path!r} is from a {state.get('task')!r} run, "
                             f"expected {self.task.name!r}")
        if state.get("data_fingerprint") != self.data_fingerprint:
            raise TrainingError(f"checkpoint {path!r} was trained on other data (fingerprint "
                                f"{state.get('data_fingerprint')}, now {self.data_fingerprint}): "
                                "the corpus, vocabulary or data options changed, so the run "
                                "cannot be resumed exactly")
        mapped, _, _ = map_state_dict(read_state_dict(path), self.model)
        self.model.load_state_dict(mapped, strict=True)
        try:
            with np.load(os.path.join(path, OPTIMIZER_STATE)) as z:
                opt = {k: z[k] for k in z.files}
        except (OSError, ValueError) as e:
            raise ValueError(f"checkpoint {path!r} has no readable {OPTIMIZER_STATE}: {e}") from None
        self.optimizer.load_state_dict(opt)
        self.model.set_rng_state(state["rng_state"])
        self.step = int(state["step"])
        self.history, self.evals = list(state["history"]), list(state["evals"])
        self.last_checkpoint = path
