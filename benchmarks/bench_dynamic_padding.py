"""What dynamic padding buys: fine-tuning steps and held-out evaluation on the built-in
classification task, each batch padded to its own longest row against padded to --seq-len.

    python benchmarks/bench_dynamic_padding.py [CHECKPOINT] [--seq-len 128] [--batch-size 16]
                                               [--batches 8] [--repeat 5] [--out FILE]

The task and the model are ``minibert finetune``'s defaults: the built-in classification
task (``get_family("classification").builtin(0)``), encoded at ``--seq-len`` 128, and a
``BertForSequenceClassification`` with a new head on the default pretraining run
(runs/pretrain, what `minibert pretrain` writes, or the CHECKPOINT given), float32, on the CPU.

* **train**: the first ``--batches`` batches of a fine-tuning run (``train.batch_indices``,
  seed 0, ``--batch-size`` 16), each a full training step (forward with dropout and the loss,
  backward, AdamW "torch"); one timed call runs all of them in order. "trimmed" cuts each
  batch to its longest row (``tasks.base.trim_batch``, as ``Trainer`` does), "padded" feeds
  it at --seq-len. The same batches, the same order.
* **eval**: every held-out example in batches of ``--batch-size`` (inference, no dropout),
  trimmed as ``tasks.base.predict`` does, against padded to --seq-len.

The two variants are timed interleaved, round after round (``common.time_rounds``, a 0.25 s
pause per turn), and the medians compared. Also reported: the share of padding tokens in the
batches of a whole default run (300 steps) and of the held-out pass, at --seq-len and
trimmed. Writes ``results/bench_dynamic_padding_cpu.json``.
"""
from __future__ import annotations

import argparse
import statistics

import common

DEFAULT_CHECKPOINT = "runs/pretrain"


def _padding(masks, trim):
    """The share of the tokens fed to the model that are padding, over ``masks``."""
    real = fed = 0
    for m in masks:
        real += int(m.sum())
        fed += m.shape[0] * (int(m.sum(axis=-1).max()) if trim else m.shape[-1])
    return 1.0 - real / fed


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoint", nargs="?", default=DEFAULT_CHECKPOINT,
                   help="pretrained model (default: %(default)s)")
    p.add_argument("--seq-len", type=int, default=128, help="(default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=16, help="(default: %(default)s)")
    p.add_argument("--batches", type=int, default=8, help="training batches per timed call "
                   "(default: %(default)s)")
    p.add_argument("--steps", type=int, default=300, help="the run whose padding is counted "
                   "(default: %(default)s)")
    p.add_argument("--repeat", type=int, default=5, help="rounds (default: %(default)s)")
    p.add_argument("--out", default=str(common.result_path("bench_dynamic_padding_cpu.json")),
                   help="(default: %(default)s)")
    args = p.parse_args(argv)

    import numpy as np

    from minibert.optim import AdamW
    from minibert.recipes import _model_dir
    from minibert.tasks import get_family
    from minibert.tasks.base import TaskOptions, trim_batch
    from minibert.tokenization import BertTokenizer
    from minibert.train import batch_indices

    model_dir = _model_dir(args.checkpoint)
    family = get_family("classification")
    train, test = family.builtin(0)
    family.prepare(train)
    tokenizer = BertTokenizer.from_pretrained(model_dir)
    opts = TaskOptions()
    enc_train = family.encode(train, tokenizer, args.seq_len, opts)
    enc_test = family.encode(test, tokenizer, args.seq_len, opts)
    model = family.model_class.from_pretrained(model_dir, new_head=True, **family.model_kwargs())
    opt = AdamW(model.store, lr=2e-4, variant="torch")
    keys, B = family.keys, args.batch_size

    def rows_batch(enc, rows):
        return {k: enc.arrays[k][rows] for k in keys}

    n = len(enc_train)
    train_batches = [rows_batch(enc_train, batch_indices(s, n, B, 0)) for s in range(args.batches)]
    eval_batches = [rows_batch(enc_test, np.arange(i, min(i + B, len(enc_test))))
                    for i in range(0, len(enc_test), B)]
    variants = {"trimmed": lambda b: trim_batch(b, family.token_keys), "padded": lambda b: b}

    def train_pass(shape):
        def run():
            for b in train_batches:
                out, cache = model.forward(**shape(b), training=True)
                model.backward(cache)
                opt.step()
        return run

    def eval_pass(shape):
        def run():
            for b in eval_batches:
                x = shape(b)
                model(**{k: x[k] for k in family.input_keys})
        return run

    result = dict(checkpoint=model_dir, task="classification (built-in)", seq_len=args.seq_len,
                  batch_size=B, train_examples=n, eval_examples=len(enc_test),
                  train_batches_timed=args.batches, eval_batches=len(eval_batches),
                  repeat=args.repeat)
    all_train = [enc_train.arrays["attention_mask"][batch_indices(s, n, B, 0)]
                 for s in range(args.steps)]
    eval_masks = [b["attention_mask"] for b in eval_batches]
    lengths = enc_train.arrays["attention_mask"].sum(-1)
    result["padding_share"] = {
        f"train_{args.steps}_steps": dict(padded=_padding(all_train, False),
                                          trimmed=_padding(all_train, True)),
        "train_timed": dict(padded=_padding(all_train[:args.batches], False),
                            trimmed=_padding(all_train[:args.batches], True)),
        "eval": dict(padded=_padding(eval_masks, False), trimmed=_padding(eval_masks, True))}
    result["train_row_length"] = dict(mean=float(lengths.mean()), median=float(np.median(lengths)),
                                      max=int(lengths.max()),
                                      truncated_share=float((lengths == args.seq_len).mean()))
    print(f"{family.name}: {n} training, {len(enc_test)} held-out examples, seq_len {args.seq_len}, "
          f"batch {B}; real row length mean {lengths.mean():.1f}, max {lengths.max()}")
    for section, make in (("train", train_pass), ("eval", eval_pass)):
        rounds = common.time_rounds({k: make(v) for k, v in variants.items()}, args.repeat,
                                    warmup=1, settle_s=common.SETTLE_S)
        med = {k: statistics.median(v) for k, v in rounds.items()}
        per = args.batches if section == "train" else len(eval_batches)
        result[section] = dict(ms_per_batch={k: med[k] / per for k in med},
                               rounds_ms=rounds, speedup=med["padded"] / med["trimmed"])
        share = result["padding_share"]["eval" if section == "eval" else "train_timed"]
        print(f"{section:>5}: padded {med['padded'] / per:8.1f} ms/batch, trimmed "
              f"{med['trimmed'] / per:8.1f} ms/batch: {med['padded'] / med['trimmed']:.2f}x "
              f"(padding {share['padded']:.0%} of the tokens at seq_len, {share['trimmed']:.0%} "
              "trimmed)")
    common.write_json(args.out, result, versions=common.library_versions("numpy", "numba"))


if __name__ == "__main__":
    main()
