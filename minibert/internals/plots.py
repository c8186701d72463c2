"""Pictures: every matplotlib call of minibert, drawn with the Agg backend and written
atomically as PNG. matplotlib is imported on first use, never at import time.

    plot_attention_grid   every layer (rows) and head (columns) of one sequence
    plot_attention_layer  one layer's heads, the tokens on both axes
    plot_head_heatmap     an (L, A) table (head importance, a head statistic)
    plot_attributions     token attributions as bars, one panel per target
    plot_internals_log    the ``--log-internals`` records over the steps
    plot_history          the loss and accuracy curves of a training run
    plot_confusion_matrix gold classes (rows) against predicted ones (columns), with counts

An attention map is drawn as a matrix: row i is query token i, column j is key token j,
so a row shows where that token looks (it sums to one).
"""
from __future__ import annotations

import math
import textwrap

import numpy as np

from ..backend import to_numpy

# the colour scale of every attention map: probabilities, 0 to 1
ATTENTION_CMAP = "viridis"


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _save(fig, path, dpi=120):
    from ..io import atomic_write
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=dpi))
    _pyplot().close(fig)


def _token_fontsize(S: int) -> float:
    """Tick-label size for S tokens: smaller as the axis holds more of them."""
    return 8 if S <= 16 else 7 if S <= 28 else 6 if S <= 40 else 5


def _token_ticks(ax, tokens, fontsize, x=True, y=True):
    """Token labels on the x axis (keys) and y axis (queries) where asked; ticks without
    labels on an axis not asked for; nothing at all without tokens. Past 64 tokens every
    k-th token is labelled, so that the labels stay apart."""
    if tokens is None:
        ax.set_xticks([])
        ax.set_yticks([])
        return
    S = len(tokens)
    step = max(1, math.ceil(S / 64))
    n = np.arange(0, S, step)
    shown = [tokens[i] for i in n]
    ax.set_xticks(n, shown if x else [], rotation=90, fontsize=fontsize)
    ax.set_yticks(n, shown if y else [], fontsize=fontsize)
    ax.tick_params(length=2, pad=1)


def _attention_image(ax, P):
    return ax.imshow(P, cmap=ATTENTION_CMAP, vmin=0, vmax=1, interpolation="nearest")


def _attention_colorbar(fig, im, axes):
    cb = fig.colorbar(im, ax=axes, shrink=0.8, aspect=30, pad=0.02)
    cb.set_label("attention probability", fontsize=8)
    cb.ax.tick_params(labelsize=7)


def _grid_cell(L: int, A: int, S: int, labelled: bool) -> float:
    """Inches per attention map in the grid: room for S token labels when they are drawn,
    smaller panels when there are many of them."""
    if not labelled:
        return 1.2 if L * A > 36 else 1.6
    return min(max(1.8, 0.11 * S + 0.6), 4.0)


def plot_attention_grid(maps, path, tokens=None):
    """Every layer (rows) and head (columns) of one sequence's maps (L, A, S, S), one PNG.

    Tokens label the left column (queries) and the bottom row (keys) when they fit: up to
    48 tokens, or 24 when the grid has more than 36 maps; one colour bar for all maps."""
    P = to_numpy(maps)
    L, A, S, _ = P.shape
    plt = _pyplot()
    labelled = tokens is not None and S <= (24 if L * A > 36 else 48)
    cell = _grid_cell(L, A, S, labelled)
    extra = 1.0 if labelled else 0.4                 # room for the token labels
    fig, axes = plt.subplots(L, A, figsize=(cell * A + extra + 1.0, cell * L + extra + 0.6),
                             squeeze=False, layout="constrained")
    fs = _token_fontsize(S)
    for l in range(L):
        for a in range(A):
            ax = axes[l, a]
            im = _attention_image(ax, P[l, a])
            _token_ticks(ax, tokens if labelled else None, fs, x=l == L - 1, y=a == 0)
            if l == 0:
                ax.set_title(f"head {a}", fontsize=9)
            if a == 0:
                ax.set_ylabel(f"layer {l}\nquery token", fontsize=8)
            if l == L - 1:
                ax.set_xlabel("key token", fontsize=8)
    _attention_colorbar(fig, im, axes)
    fig.suptitle("attention probabilities per layer and head\n"
                 "row: query token, column: key token", fontsize=10)
    _save(fig, path, dpi=80 if L * A > 64 else 120)


def plot_attention_layer(maps_l, path, tokens=None, layer=0):
    """One layer's heads (A, S, S), four to a row, the tokens on both axes of every map
    (past 64 tokens every k-th); one colour bar."""
    P = to_numpy(maps_l)
    A, S, _ = P.shape
    plt = _pyplot()
    cols = min(A, 4)
    rows = math.ceil(A / cols)
    side = min(max(2.8, 0.14 * S + 1.0), 7.0) if tokens is not None else 2.6
    fig, axes = plt.subplots(rows, cols, figsize=(side * cols + 1.0, side * rows + 0.8),
                             squeeze=False, layout="constrained")
    fs = _token_fontsize(S)
    for a in range(rows * cols):
        ax = axes[a // cols, a % cols]
        if a >= A:
            ax.axis("off")
            continue
        im = _attention_image(ax, P[a])
        _token_ticks(ax, tokens, fs)
        ax.set_title(f"head {a}", fontsize=9)
        if a + cols >= A:                          # no map below: the axis is named here
            ax.set_xlabel("key token", fontsize=8)
        if a % cols == 0:
            ax.set_ylabel("query token", fontsize=8)
    _attention_colorbar(fig, im, axes)
    fig.suptitle(f"layer {layer}: attention probabilities (row: query token, column: key token)",
                 fontsize=10)
    _save(fig, path)


def plot_head_heatmap(values, path, title, cmap="magma"):
    """An (L, A) table as a heatmap with the numbers written in (head importance, stats)."""
    v = np.asarray(values, dtype=np.float64)
    L, A = v.shape
    plt = _pyplot()
    width = max(0.6 * A + 2.4, 5.5)
    fig, ax = plt.subplots(figsize=(width, 0.45 * L + 1.8), layout="constrained")
    im = ax.imshow(v, cmap=cmap, aspect="auto")
    ax.set_xticks(range(A))
    ax.set_yticks(range(L))
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    if L * A <= 400:
        hi = np.nanmax(v) if v.size else 0
        fs = 8 if L * A <= 16 else 6
        for l in range(L):
            for a in range(A):
                ax.text(a, l, f"{v[l, a]:.2g}", ha="center", va="center", fontsize=fs,
                        color="black" if v[l, a] > 0.6 * hi else "white")
    fig.colorbar(im, ax=ax)
    # wrapped to the figure's width (about 11 characters an inch at this size)
    ax.set_title("\n".join(textwrap.wrap(title, int(11 * width))), fontsize=9)
    _save(fig, path)


def plot_attributions(tokens, rows, path):
    """Bars of token attributions, one panel per target: rows = [(title, scores (S,))]."""
    plt = _pyplot()
    S = len(tokens)
    width = max(6, 0.32 * S + 1)
    fig, axes = plt.subplots(len(rows), 1, figsize=(width, 2.6 * len(rows)), squeeze=False,
                             layout="constrained")
    for ax, (title, s) in zip(axes[:, 0], rows):
        s = np.asarray(s)
        ax.bar(np.arange(S), s, color=np.where(s >= 0, "tab:red", "tab:blue"))
        ax.set_xticks(np.arange(S), tokens if S <= 80 else [""] * S, rotation=90, fontsize=7)
        ax.axhline(0, color="gray", lw=0.5)
        ax.set_ylabel("attribution", fontsize=8)
        ax.set_title("\n".join(textwrap.wrap(title, int(13 * width))), fontsize=9)
    _save(fig, path)


def plot_internals_log(records, path):
    """The ``--log-internals`` records as curves over steps: gradient norm and
    update/weight ratio per layer, activation std per layer, mean attention entropy."""
    if not records:
        return
    plt = _pyplot()
    steps = [r["step"] for r in records]
    groups = list(records[-1]["grad_norm"])
    fig, axes = plt.subplots(2, 2, figsize=(11, 7), layout="constrained")
    panels = [("grad_norm", "gradient norm", True), ("update_ratio", "|update| / |weight|", True),
              ("act_std", "activation std (layer output)", False),
              ("attn_entropy", "mean attention entropy (nats)", False)]
    for ax, (key, title, log) in zip(axes.ravel(), panels):
        names = groups if key in ("grad_norm", "update_ratio") else list(records[-1][key])
        for i, g in enumerate(names):
            ys = [r[key][g] if key != "attn_entropy" else float(np.mean(r[key][g]))
                  for r in records]
            ax.plot(steps, ys, lw=1, label=g, color=plt.cm.viridis(i / max(len(names) - 1, 1)))
        if log:
            ax.set_yscale("log")
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("step")
        ax.legend(fontsize=7, ncol=2)
    _save(fig, path)


def plot_history(history, evals, path, task="pretraining", metric="acc"):
    """Loss (train, per step, and held-out) and metric curves as a PNG, written atomically:
    masked-LM and NSP accuracy for pretraining, else ``metric`` (a fine-tuning family's)."""
    if not history:
        return
    plt = _pyplot()
    steps = [h["step"] for h in history]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4), layout="constrained")
    ax1.plot(steps, [h["loss"] for h in history], lw=0.8, label="train loss")
    if evals:
        ax1.plot([e["step"] for e in evals], [e["loss"] for e in evals], "o-", label="held-out loss")
    ax1.set_xlabel("step")
    ax1.set_ylabel("loss")
    ax1.legend()
    acc_keys = ("mlm_acc", "nsp_acc") if task == "pretraining" else (metric,)
    for k in acc_keys:
        if k not in history[-1]:
            continue                                    # e.g. nsp_acc in a run without NSP
        ax2.plot(steps, [h[k] for h in history], lw=0.8, label=f"train {k}")
        if evals:
            ax2.plot([e["step"] for e in evals], [e.get(k, np.nan) for e in evals], "o-",
                     label=f"held-out {k}")
    base = [e["mlm_baseline"] for e in evals if "mlm_baseline" in e]
    if base:                                            # the same held-out positions every time
        ax2.axhline(base[-1], color="gray", ls="--", lw=1,
                    label=f"held-out most-frequent-token baseline ({base[-1]:.3f})")
    ax2.set_xlabel("step")
    ax2.set_ylabel("accuracy" if task == "pretraining" or metric == "acc" else metric)
    ax2.legend()
    _save(fig, path)


def plot_confusion_matrix(labels, preds, names, path):
    """The confusion matrix of a classifier as a PNG, written atomically.

    Cell (i, j) counts the examples of gold class i (row) predicted as class j (column);
    ``labels`` and ``preds`` are class ids in ``[0, len(names))``. The diagonal holds the
    correct predictions; each cell shows its count, its colour the count's share of the row
    (so classes of different sizes compare).
    """
    labels = np.asarray(labels, dtype=np.int64)
    preds = np.asarray(preds, dtype=np.int64)
    K = len(names)
    if labels.shape != preds.shape or labels.ndim != 1:
        raise ValueError(f"labels has shape {labels.shape} and preds {preds.shape}, expected "
                         "two 1-D arrays of the same length")
    for what, a in (("labels", labels), ("preds", preds)):
        if a.size and (a.min() < 0 or a.max() >= K):
            raise ValueError(f"{what} has values in [{a.min()}, {a.max()}], expected class ids "
                             f"in [0, {K}) (len(names))")
    counts = np.zeros((K, K), dtype=np.int64)
    np.add.at(counts, (labels, preds), 1)
    share = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    plt = _pyplot()
    side = min(2.0 + 0.6 * K, 14.0)
    fig, ax = plt.subplots(figsize=(side + 1.5, side), layout="constrained")
    im = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    fontsize = 9 if K <= 8 else 7 if K <= 16 else 5
    for i in range(K):
        for j in range(K):
            ax.text(j, i, str(counts[i, j]), ha="center", va="center", fontsize=fontsize,
                    color="white" if share[i, j] > 0.5 else "black")
    shown = [str(n) if len(str(n)) <= 20 else str(n)[:19] + "…" for n in names]
    ax.set_xticks(range(K), shown, rotation=45, ha="right", fontsize=fontsize)
    ax.set_yticks(range(K), shown, fontsize=fontsize)
    ax.set_xlabel("predicted")
    ax.set_ylabel("gold")
    acc = float(np.trace(counts)) / max(int(counts.sum()), 1)
    ax.set_title(f"confusion matrix: {int(counts.sum())} examples, accuracy {acc:.3f}",
                 fontsize=10)
    fig.colorbar(im, ax=ax, label="share of the gold class")
    _save(fig, path)
    return counts
