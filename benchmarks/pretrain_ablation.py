"""Pretraining ablation: which change of the recipe makes `minibert pretrain` leave the
unigram plateau, measured on the built-in corpus (standard-library docstrings).

Each variant is a set of `minibert.recipes.pretrain` settings. A run prints one JSON line:
held-out MLM accuracy at every evaluation, the most-frequent-token baseline on the same
positions, NSP accuracy where the variant has NSP, the training throughput (tokens/s over
the training steps only: evaluation, checkpoints and data preparation excluded) and the
seconds per step.

Same wall-clock budget. On a shared machine wall-clock times are noisy, so every variant
runs a fixed number of steps, and a variant that changes the cost of a step (sequence
length, batch size, model size, vocabulary) is given the number of steps that costs the
same compute as the reference, from the seconds per step measured back to back by
``--probe`` (a few timed steps of each shape, in one process, so that the load of the
machine is the same for all of them):

    steps(variant) = steps(reference) * sec_per_step(reference) / sec_per_step(variant)

Usage:
    python benchmarks/pretrain_ablation.py --probe                  # seconds per step of each shape
    python benchmarks/pretrain_ablation.py --run fast no_dynamic    # the named variants
    python benchmarks/pretrain_ablation.py --list
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np

# settings of the "fast" default; each variant below changes one thing (or names its own)
VARIANTS = {
    "bert": dict(recipe="bert"),
    "fast": dict(recipe="fast"),
    "x_all": dict(preset="tiny", seq_len=64, batch_size=32, steps=1500, lr=2e-3,
                  warmup_steps=90, masked_lm_prob=0.25, dropout=0.0, nsp=False,
                  masking="dynamic", optimizer="torch"),
    "x_probe": dict(preset="tiny", seq_len=64, batch_size=32, steps=1500, lr=1e-3),
}
_X = dict(preset="tiny", seq_len=64, batch_size=32, steps=600, lr=2e-3, warmup_steps=36,
          masked_lm_prob=0.25, dropout=0.0, nsp=False, masking="dynamic", optimizer="torch")
VARIANTS.update(xa=_X, xb=dict(_X, lr=5e-3), xc=dict(_X, vocab_size=4096),
                xd=dict(_X, vocab_size=2048))
# The README's table: the "fast" recipe with batch 32 for 400 steps (a 400-step schedule;
# 12,800 sequences, 1/6.25 of the default run's 80,000), and one change at a time. seq128
# keeps 2048 tokens per step (batch 16); bs16 takes twice the steps of half the batch;
# mini costs about 5x a tiny step, so it gets the steps of the same compute (see --probe).
_A = dict(recipe="fast", steps=400, batch_size=32)
VARIANTS.update(
    a_fast=_A,
    a_vocab8192=dict(_A, vocab_size=8192),
    a_nsp=dict(_A, nsp=True),
    a_static=dict(_A, masking="static"),
    a_dropout=dict(_A, dropout=0.1),
    a_mlm15=dict(_A, masked_lm_prob=0.15),
    a_bertadam=dict(_A, optimizer="bert"),
    a_lr5e4=dict(_A, lr=5e-4),
    a_lr1e3=dict(_A, lr=1e-3),
    a_lr3e3=dict(_A, lr=3e-3),
    a_lr5e3=dict(_A, lr=5e-3),
    a_seq128=dict(_A, seq_len=128, batch_size=16),
    a_bs16=dict(_A, batch_size=16, steps=800),
    a_mini=dict(_A, preset="mini", steps=80),
)


def settings_of(name, steps=None):
    from minibert.recipes import PRETRAIN_RECIPES
    v = dict(VARIANTS[name])
    recipe = v.pop("recipe", "fast")
    s = dict(PRETRAIN_RECIPES[recipe], **v)
    if "warmup_steps" not in s:
        s["warmup_steps"] = int(round(s["warmup"] * s["steps"]))
    s.pop("warmup")
    if steps is not None:
        s["steps"] = steps
        s["warmup_steps"] = int(round(PRETRAIN_RECIPES[recipe]["warmup"] * steps))
    return recipe, s


def vocab_file(size, cache):
    """A WordPiece vocabulary of ``size`` trained on the built-in corpus, cached on disk
    (every variant with this size uses the same file)."""
    from minibert import corpora
    from minibert.tokenization import write_vocab
    from minibert.wordpiece_trainer import train_wordpiece_vocab
    path = os.path.join(cache, f"vocab-{size}.txt")
    if not os.path.exists(path):
        docs = corpora.stdlib_documents()
        write_vocab(train_wordpiece_vocab((s for d in docs for s in d), size), path)
    return path


def run_variant(name, steps, cache, out_root):
    from minibert.recipes import pretrain
    recipe, s = settings_of(name, steps)
    kw = {k: v for k, v in s.items() if k != "vocab_size"}
    out = os.path.join(out_root, name)
    t0 = time.perf_counter()
    evals = []

    def on_eval(rec):
        evals.append(rec)
        print(f"  {name} step {rec['step']}: mlm_acc {rec['mlm_acc']:.4f} (baseline "
              f"{rec['mlm_baseline']:.4f}) loss {rec['loss']:.3f}"
              + (f" nsp {rec['nsp_acc']:.3f}" if "nsp_acc" in rec else ""), file=sys.stderr,
              flush=True)

    result, _ = pretrain(out_dir=out, recipe=recipe, vocab=vocab_file(s["vocab_size"], cache),
                         on_eval=on_eval, **kw)
    wall = time.perf_counter() - t0
    sec = sum(h["seconds"] for h in result.history)
    tokens = sum(h["tokens_per_s"] * h["seconds"] for h in result.history)
    last = evals[-1]
    rec = dict(variant=name, settings=s, steps=result.step, wall_s=round(wall, 1),
               train_s=round(sec, 1), sec_per_step=round(sec / result.step, 4),
               tokens_per_s=round(tokens / sec), mlm_acc=round(last["mlm_acc"], 4),
               best_mlm_acc=round(max(e["mlm_acc"] for e in evals), 4),
               mlm_baseline=round(last["mlm_baseline"], 4),
               ratio=round(last["mlm_acc"] / last["mlm_baseline"], 2),
               nsp_acc=round(last["nsp_acc"], 4) if "nsp_acc" in last else None,
               curve=[(e["step"], round(e["mlm_acc"], 4)) for e in evals],
               load=os.getloadavg())
    print(json.dumps(rec), flush=True)
    return rec


def probe(names, cache, steps=12):
    """Seconds per training step of each variant's shape, measured back to back."""
    from minibert.recipes import pretrain
    for name in names:
        recipe, s = settings_of(name)
        kw = {k: v for k, v in s.items() if k not in ("vocab_size", "steps")}
        with tempfile.TemporaryDirectory() as out:
            result, _ = pretrain(out_dir=out, recipe=recipe, steps=200, stop_at=steps,
                                 eval_every=10**6, save_every=10**6,
                                 vocab=vocab_file(s["vocab_size"], cache), **kw)
        h = result.history[2:]                   # the first steps compile and warm caches
        sec = float(np.median([x["seconds"] for x in h]))
        tok = float(np.median([x["tokens_per_s"] for x in h]))
        print(json.dumps(dict(variant=name, sec_per_step=round(sec, 4), tokens_per_s=round(tok),
                              load=os.getloadavg())), flush=True)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run", nargs="*", default=[], help="variants to train")
    p.add_argument("--probe", nargs="*", default=None, help="variants to time (none: all)")
    p.add_argument("--steps", type=int, default=None, help="override every variant's steps")
    p.add_argument("--cache", default=os.path.join(tempfile.gettempdir(), "minibert-ablation"))
    p.add_argument("--list", action="store_true")
    a = p.parse_args()
    os.makedirs(a.cache, exist_ok=True)
    if a.list:
        for n in VARIANTS:
            print(n, settings_of(n))
        return
    if a.probe is not None:
        probe(a.probe or list(VARIANTS), a.cache)
    for n in a.run:
        with tempfile.TemporaryDirectory() as out_root:
            run_variant(n, a.steps, a.cache, out_root)


if __name__ == "__main__":
    main()
