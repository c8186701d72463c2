"""What freezing the encoder saves: a training step of full fine-tuning against the
feature-based approach (``minibert.tasks.features``), token classification, on the CPU.

    python benchmarks/bench_feature_based.py [--checkpoint DIR] [--repeat R] [--out FILE]

The problem: the pretrained checkpoint ``--checkpoint`` (default ``runs/pretrain``: the
``minibert pretrain`` default run, L=2, H=128), a batch of 16 rows of real text (the
standard library's docstrings, tokenized with the checkpoint's vocabulary, rows of 64 to 128
tokens, the batch padded to its longest row as Trainer pads it), 9 tags per token (CoNLL's
BIO tag count) with the padding ignored (-100). Float32, the libraries' default threads.

The implementations, each a whole optimizer step (forward with the loss, backward, AdamW
over the model's ``store``, as Trainer runs it):

* ``full fine-tuning``: ``BertForTokenClassification`` from the checkpoint (new classifier),
  dropout as the checkpoint's configuration says; every parameter trained.
* ``feature-based mlp`` / ``feature-based linear``: ``feature_based_model`` with the default
  layers (the last four hidden states, or all L + 1 when fewer) concatenated, the MLP or
  the linear task model: the frozen encoder runs in inference, only the task model trains.
* ``cached features``: the MLP model with ``cache_features=True``, after its first
  (untimed) step: each row's features come from the per-example cache (the encoder is
  frozen and in inference mode, so they are the same at every epoch), which is what every
  step after the first epoch costs.
* ``encoder inference``: the frozen encoder's forward alone with the hidden states (the
  part of a feature-based step that caching would remove).

Timed interleaved, round after round (``common.time_rounds``: a 0.25 s pause and 0.1 s of
untimed calls per turn); the median is reported with the spread. Also, for each: the
trained parameters, the bytes of the gradient buffer and of AdamW's two moments, and the
peak resident memory of building the model and running three steps (above the memory once
the batch is made and the kernels compiled), each in a fresh process (``memory.py``). JSON:
``results/bench_feature_based_cpu.json``.
"""
from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import common
import memory
from machine import ROOT

RESULT = common.result_path("bench_feature_based_cpu.json")
B, MIN_LEN, MAX_LEN, TAGS = 16, 64, 128, 9
PACKAGES = ("json", "email", "textwrap", "argparse", "logging", "collections", "unittest",
            "http", "urllib", "xml")
NAMES = ("full fine-tuning", "feature-based mlp", "feature-based linear", "cached features",
         "encoder inference")


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", default="runs/pretrain",
                    help="pretrained model directory or run (default: runs/pretrain)")
    ap.add_argument("--repeat", type=int, default=20, help="timed rounds (median; default: 20)")
    ap.add_argument("--out", type=Path, default=RESULT,
                    help=f"JSON file to write (default: {RESULT.relative_to(ROOT)})")
    ap.add_argument("--memory-of", default=None, help=argparse.SUPPRESS)   # internal
    args = ap.parse_args(argv)
    if args.repeat < 1:
        ap.error(f"--repeat={args.repeat} must be >= 1")
    return args


class TokenTags:
    """The fine-tuning family as ``feature_based_model`` reads one: a token-level head."""
    name = "tags"

    def __init__(self):
        from minibert.heads import BertForTokenClassification
        self.model_class = BertForTokenClassification

    def model_kwargs(self):
        return {"num_labels": TAGS}


def make_batch(model_dir, seed=0):
    """B rows of MIN_LEN..MAX_LEN tokens cut from the docstrings in a row, [CLS] first and
    [SEP] last, padded to the longest; tags random per token, -100 on [CLS], [SEP] and padding."""
    import numpy as np

    from minibert.tasks.stdlib_functions import stdlib_functions
    from minibert.tokenization import BertTokenizer
    tok = BertTokenizer.from_pretrained(model_dir)
    r = np.random.default_rng(seed)
    lengths = r.integers(MIN_LEN, MAX_LEN + 1, B)
    stream = []
    for fn in stdlib_functions(PACKAGES):
        stream += tok.convert_tokens_to_ids(tok.tokenize(fn.doc))
        if len(stream) > lengths.sum():
            break
    S = int(lengths.max())
    ids = np.zeros((B, S), np.int64)
    mask = np.zeros((B, S), np.int64)
    at = 0
    for b, n in enumerate(lengths):
        row = [tok.cls_token_id] + stream[at:at + n - 2] + [tok.sep_token_id]
        at += n - 2
        ids[b, :n], mask[b, :n] = row, 1
    labels = np.where(mask == 1, r.integers(0, TAGS, (B, S)), -100)
    labels[:, 0] = -100
    labels[np.arange(B), lengths - 1] = -100
    return dict(input_ids=ids, attention_mask=mask, token_type_ids=np.zeros_like(ids),
                labels=labels)


def build(name, model_dir):
    """(model, optimizer or None) of the implementation ``name``."""
    import numpy as np

    from minibert.heads import BertForTokenClassification
    from minibert.optim import AdamW
    from minibert.tasks.features import feature_based_model
    if name == "full fine-tuning":
        model = BertForTokenClassification.from_pretrained(model_dir, new_head=True,
                                                           num_labels=TAGS, dtype=np.float32)
    else:
        head = "linear" if name == "feature-based linear" else "mlp"
        model = feature_based_model(model_dir, TokenTags(), head=head,
                                    cache_features=name == "cached features")
    opt = None if name == "encoder inference" else AdamW(model.store, lr=1e-4)
    return model, opt


def step_fn(name, model, opt, batch):
    """The timed call of ``name``."""
    if name == "encoder inference":
        return lambda: model.features(batch["input_ids"], attention_mask=batch["attention_mask"],
                                      token_type_ids=batch["token_type_ids"])
    def step():
        out, cache = model.forward(**batch, training=True)
        model.backward(cache)
        opt.step()
        return out.loss
    return step


def sizes(name, model, opt):
    """Trained parameters and the bytes of their gradient buffer and AdamW moments."""
    if opt is None:
        return dict(trained_parameters=0, gradient_bytes=0, adam_moment_bytes=0)
    return dict(trained_parameters=int(model.store.size),
                gradient_bytes=int(model.store.grad.nbytes),
                adam_moment_bytes=int(opt.m.nbytes + opt.v.nbytes))


def probe(name, model_dir):
    """Child side of the memory probe: the batch made first (the docstrings read) and the
    kernels compiled (``name``'s step on two of its rows, in a model then dropped), then the
    peak of building ``name`` and running three of its steps on the whole batch."""
    import gc
    batch = make_batch(model_dir)
    small = {k: v[:2] for k, v in batch.items()}
    warm = build(name, model_dir)
    step_fn(name, *warm, small)()
    del warm
    gc.collect()

    def work():
        model, opt = build(name, model_dir)
        fn = step_fn(name, model, opt, batch)
        for _ in range(3):
            fn()
    return memory.measure_peak(work)


def main(argv=None):
    args = parse_args(argv)
    from minibert.checkpoint import resolve_checkpoint
    model_dir = resolve_checkpoint(args.checkpoint)
    if args.memory_of:
        import json
        print(json.dumps(probe(args.memory_of, model_dir)))
        return
    import numpy as np

    from minibert.config import BertConfig
    config = BertConfig.from_json_file(str(Path(model_dir) / "config.json"))
    batch = make_batch(model_dir)
    built = {n: build(n, model_dir) for n in NAMES}
    fns = {n: step_fn(n, *built[n], batch) for n in NAMES}
    print(f"model {model_dir}: L={config.num_hidden_layers} H={config.hidden_size}; batch "
          f"{B} x {batch['input_ids'].shape[1]} (real tokens {int(batch['attention_mask'].sum())}"
          f"), {TAGS} tags; {args.repeat} interleaved rounds")
    rounds = common.time_rounds(fns, args.repeat, warmup=3, settle_s=common.SETTLE_S,
                                warm_s=common.WARM_S, collect=True)
    peak = {n: memory.peak_in_fresh_process(Path(__file__), ["--checkpoint", args.checkpoint,
                                                             "--memory-of", n]) for n in NAMES}
    full = statistics.median(rounds["full fine-tuning"])
    rows = {}
    for n in NAMES:
        t = rounds[n]
        rows[n] = dict(median_ms=statistics.median(t), min_ms=min(t), max_ms=max(t),
                       speedup_vs_full=full / statistics.median(t),
                       peak_mib=peak[n], **sizes(n, *built[n]))
    print(f"  {'implementation':<22}{'ms':>9}{'min':>8}{'max':>8}{'x full':>8}"
          f"{'trained':>10}{'grad KiB':>10}{'Adam KiB':>10}{'peak MiB':>10}")
    for n, r in rows.items():
        pk = "n/a" if r["peak_mib"] is None else f"{r['peak_mib']:.0f}"
        print(f"  {n:<22}{r['median_ms']:>9.1f}{r['min_ms']:>8.1f}{r['max_ms']:>8.1f}"
              f"{r['speedup_vs_full']:>8.2f}{r['trained_parameters']:>10,}"
              f"{r['gradient_bytes'] / 1024:>10.0f}{r['adam_moment_bytes'] / 1024:>10.0f}{pk:>10}")
    common.write_json(args.out, dict(
        benchmark="bench_feature_based", checkpoint=model_dir,
        model=dict(layers=config.num_hidden_layers, hidden=config.hidden_size,
                   parameters=int(built["full fine-tuning"][0].store.size)),
        batch=dict(rows=B, padded_length=int(batch["input_ids"].shape[1]),
                   real_tokens=int(batch["attention_mask"].sum()), tags=TAGS),
        feature_based=dict(layers=built["feature-based mlp"][0].layers, combine="concat",
                           feature_size=built["feature-based mlp"][0].feature_size),
        repeat=args.repeat, results=rows,
        rounds_ms={n: [float(v) for v in t] for n, t in rounds.items()},
        dtype=str(np.dtype(np.float32))),
        versions=common.library_versions("numpy", "numba"))


if __name__ == "__main__":
    sys.exit(main())
