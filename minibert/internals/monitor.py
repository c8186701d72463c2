"""Gradient flow during training: the monitor behind ``minibert pretrain --log-internals``.

    InternalsMonitor   gradient norm, update-to-weight ratio, activation mean/std and
                       attention entropy per layer, as JSON lines (``internals.jsonl``) and a
                       picture (``internals.png``).
"""
from __future__ import annotations

import json
import math
import os

import numpy as np

from ..backend import to_numpy
from ._common import _encoder


def param_group(name: str) -> str:
    """The group a parameter is logged in: "embeddings", "layer.<l>.attention" (q, k, v and
    the output projection), "layer.<l>.ffn", "layer.<l>.layernorm", "pooler" or "head"."""
    n = name[len("bert."):] if name.startswith("bert.") else name
    if n.startswith("embeddings."):
        return "embeddings"
    if n.startswith("encoder.layer."):
        l = n.split(".")[2]
        if "LayerNorm" in n:
            return f"layer.{l}.layernorm"
        return f"layer.{l}.attention" if ".attention." in n else f"layer.{l}.ffn"
    if n.startswith("pooler."):
        return "pooler"
    return "head"


class InternalsMonitor:
    """Gradient flow during training, every ``every`` steps, as JSON lines in
    ``out_dir/internals.jsonl`` (one object per logged step) and ``internals.png``:

        grad_norm[group]      ||g|| over the group's parameters, before clipping
        update_ratio[group]   ||w_after - w_before|| / ||w_before||  (the optimizer's step)
        act_mean/act_std[l]   mean and std of layer l's output over the real tokens
                              ("embeddings" = the embeddings' output)
        attn_entropy[l]       per head, the mean entropy (nats) of the attention rows

    The trainer calls ``before_update`` after the backward and ``after_update`` after the
    optimizer step, only at the steps ``wants`` picks. The activations and entropies come
    from one extra inference forward (dropout off, eager attention) on the first
    ``rows`` sequences of the step's batch; it draws no dropout call, so resuming a run is
    as exact with the monitor as without.
    """

    FILE, PLOT = "internals.jsonl", "internals.png"

    def __init__(self, every: int, out_dir, rows: int = 2):
        if isinstance(every, bool) or not isinstance(every, (int, np.integer)) or every <= 0:
            raise ValueError(f"log_internals={every!r} is invalid, expected a positive number "
                             "of steps")
        self.every, self.out_dir, self.rows = int(every), os.fspath(out_dir), int(rows)
        self._before = None

    def wants(self, step: int) -> bool:
        """Whether optimizer step ``step`` (1-based) is logged."""
        return step % self.every == 0

    @staticmethod
    def _group_norms(store, flat):
        """Per group, the L2 norm of a flat buffer's entries (one BLAS dot per parameter)."""
        out = {}
        for name, (a, b) in store.offsets.items():
            v = flat[a:b]
            g = param_group(name)
            out[g] = out.get(g, 0.0) + float(np.dot(v, v))
        return {g: math.sqrt(v) for g, v in out.items()}

    def before_update(self, model, batch):
        store = model.store
        self._before = (np.array(to_numpy(store.data)), self._group_norms(store, to_numpy(store.grad)))

    def after_update(self, model, batch, step: int):
        store = model.store
        w0, grad_norm = self._before
        self._before = None
        upd = self._group_norms(store, to_numpy(store.data) - w0)
        wn = self._group_norms(store, w0)
        rec = dict(step=int(step), grad_norm=grad_norm,
                   update_ratio={k: upd[k] / max(wn[k], 1e-30) for k in upd})
        rec.update(self._activations(model, batch))
        os.makedirs(self.out_dir, exist_ok=True)
        with open(os.path.join(self.out_dir, self.FILE), "a", encoding="utf-8") as fh:
            fh.write(json.dumps(rec) + "\n")
        return rec

    def _activations(self, model, batch):
        from threadpoolctl import threadpool_limits
        r = slice(0, self.rows)
        mask = batch.get("attention_mask")
        mask = None if mask is None else mask[r]
        # BLAS on one thread, as the kernels hold it during a step: the eager attention's
        # small products on BLAS's own threads, next to the kernels' pool, ran up to 20x
        # slower on 2 cores (0.05-0.1 s -> 0.07-1.8 s for this probe, preset mini)
        with threadpool_limits(1, "blas"):
            out = _encoder(model)(batch["input_ids"][r], attention_mask=mask,
                                  token_type_ids=None if batch.get("token_type_ids") is None
                                  else batch["token_type_ids"][r],
                                  output_attentions=True, output_hidden_states=True)
        real = np.ones(out.hidden_states[0].shape[:2]) if mask is None else \
            to_numpy(mask).astype(np.float64)                                       # (b, S)
        n = max(real.sum(), 1.0)
        act_mean, act_std, ent = {}, {}, {}
        for l, h in enumerate(out.hidden_states):
            name = "embeddings" if l == 0 else f"layer.{l - 1}"
            x = to_numpy(h).astype(np.float64) * real[..., None]
            m = x.sum() / (n * x.shape[-1])
            act_mean[name] = float(m)
            act_std[name] = float(math.sqrt(max((x * x).sum() / (n * x.shape[-1]) - m * m, 0.0)))
        for l, p in enumerate(out.attentions):
            P = to_numpy(p).astype(np.float64)                                      # (b, A, S, S)
            with np.errstate(divide="ignore", invalid="ignore"):
                e = -np.where(P > 0, P * np.log(P), 0.0).sum(-1)                     # (b, A, S)
            ent[f"layer.{l}"] = [float(v) for v in (e * real[:, None]).sum((0, 2)) / n]
        return dict(act_mean=act_mean, act_std=act_std, attn_entropy=ent)

    def records(self) -> list:
        path = os.path.join(self.out_dir, self.FILE)
        if not os.path.isfile(path):
            return []
        with open(path, encoding="utf-8") as fh:
            by_step = {}                        # a resumed run logs its steps again: keep the last
            for line in fh:
                if line.strip():
                    rec = json.loads(line)
                    by_step[rec["step"]] = rec
        return [by_step[k] for k in sorted(by_step)]

    def close(self):
        """Draw ``internals.png`` from everything logged in the run directory so far."""
        from .plots import plot_internals_log
        plot_internals_log(self.records(), os.path.join(self.out_dir, self.PLOT))
