"""Padding-free BERT on real, ragged text: minibert against Hugging Face transformers
(PyTorch eager) on the CPU, in the same run, interleaved, at default settings; the ratios
are the result.

    python benchmarks/bench_padding_free.py [--repeat R] [--batches N] [--no-sweep]
                                            [--no-memory] [--quick] [--out FILE]

The model is all-MiniLM-L6-v2's shape (L=6, H=384, A=12, I=1536, V=30522), float32, loaded
by both libraries from one checkpoint (a randomly initialized ``transformers.BertModel``
written with ``save_pretrained``), with no settings at all (no thread counts, no
``attn_implementation``, no environment variables). The text is the standard library's
docstrings (``tasks.stdlib_functions``), tokenized by minibert's ``BertTokenizer`` with a
WordPiece vocabulary learnt from those docstrings (``wordpiece_trainer``, vocab_size 30522,
min_frequency 1: it runs out of pairs at about 11k tokens, every id is a row of the model's
30522; cached in the temporary directory, never committed). Three batch sets, batch 32,
length cap 128, each batch padded on the right to its own longest row (as Hugging Face's
``DataCollatorWithPadding`` does):

* **paragraphs**: each text one docstring paragraph, ``[CLS] text [SEP]`` truncated at 128,
  in source order; ``--batches`` batches of 32 consecutive paragraphs, evenly spaced over
  the whole standard library (about 70% padding);
* **docstrings**: each text one whole docstring (its prose paragraphs joined), for the
  functions whose docstring is at least 56 tokens long (the length that gives this set
  about 30% padding), in source order, evenly spaced batches likewise;
* **full**: no padding: the paragraphs' tokens as one stream cut into rows of
  ``[CLS]`` + 126 tokens + ``[SEP]``.

For each set, two sections, each a pass over the set's batches (the times are per batch):

* **finetune**: a ``BertForSequenceClassification`` step (2 labels, dropout on,
  ``training=True``): forward with the labels, ``model.backward(cache)``,
  ``minibert.optim.AdamW`` over the flat buffer; peer ``transformers.
  BertForSequenceClassification`` with ``torch.optim.AdamW`` on the same batches;
* **inference**: ``BertModel`` called as ``model(ids, attention_mask=..., token_type_ids=...)``
  against ``transformers.BertModel`` in ``eval()`` under ``torch.no_grad()``.

minibert runs as called by default and, where the model takes the ``unpad`` argument, also
with ``unpad=False`` (the padded path) and ``unpad=True`` (the real tokens only). Before the
timing, a check that both libraries compute the same function on a padded batch (dropout
off: the loss and the word-embedding gradient; the last hidden state at the real tokens).
Peak memory of each implementation: a fresh process that loads the model and runs two
calls on the set's longest batch (``memory.py``).

The threshold sweep (``--no-sweep`` skips it): batches of 32 rows, padded length 128, with a
controlled padding share (row lengths falling linearly from 128), ``unpad=True`` against
``unpad=False`` for the fine-tuning step and for inference: the padding share at which
running on the real tokens starts to win. Writes ``results/bench_padding_free_cpu.json``.
"""
from __future__ import annotations

import argparse
import gc
import hashlib
import inspect
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

import common
import memory

RESULT = common.result_path("bench_padding_free_cpu.json")
MINILM_L6 = dict(num_hidden_layers=6, hidden_size=384, num_attention_heads=12,
                 intermediate_size=1536, vocab_size=30522)
TINY = dict(num_hidden_layers=2, hidden_size=32, num_attention_heads=2, intermediate_size=64,
            vocab_size=30522)
LABELS = 2
VOCAB_SIZE = 30522
SECTIONS = ("finetune", "inference")
SWEEP_SHARES = (0.0, 0.02, 0.05, 0.10, 0.20, 0.30)
LONG_DOC_TOKENS = 56            # the "docstrings" set: docstrings at least this long
VOCAB_DIR = Path(tempfile.gettempdir()) / "minibert_bench_padding_free"


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeat", type=int, default=5, help="timed rounds (median; default: 5)")
    ap.add_argument("--batches", type=int, default=4,
                    help="batches per set, one pass = one timed call (default: 4)")
    ap.add_argument("--batch-size", type=int, default=32, help="(default: 32)")
    ap.add_argument("--max-length", type=int, default=128, help="length cap (default: 128)")
    ap.add_argument("--no-sweep", action="store_true", help="skip the threshold sweep")
    ap.add_argument("--no-memory", action="store_true", help="skip the peak-memory probes")
    ap.add_argument("--quick", action="store_true",
                    help="smoke run: tiny model, batch 4, cap 32, 2 batches, 1 round")
    ap.add_argument("--memory-of", default=None, help=argparse.SUPPRESS)     # internal
    ap.add_argument("--data", default=None, help=argparse.SUPPRESS)          # internal
    ap.add_argument("--out", type=Path, default=None,
                    help="JSON file to write (default: results/bench_padding_free_cpu.json; "
                         "with --quick: ..._quick.json)")
    args = ap.parse_args(argv)
    if args.quick:
        args.repeat, args.batches = min(args.repeat, 1), min(args.batches, 2)
        args.batch_size, args.max_length = min(args.batch_size, 4), min(args.max_length, 32)
    for name in ("repeat", "batches", "batch_size"):
        if getattr(args, name) < 1:
            ap.error(f"--{name.replace('_', '-')}={getattr(args, name)} must be >= 1")
    if args.max_length < 8:
        ap.error(f"--max-length={args.max_length} must be >= 8")
    if args.out is None:
        args.out = RESULT.with_name(RESULT.stem + "_quick.json") if args.quick else RESULT
    return args


# --------------------------------------------------------------------------- the text


def vocabulary(functions):
    """A WordPiece vocabulary learnt from the docstrings of ``functions``, cached by content
    under the temporary directory; its path."""
    from minibert.tokenization import write_vocab
    from minibert.wordpiece_trainer import train_wordpiece_vocab
    docs = [f.doc for f in functions]
    key = hashlib.sha256("\0".join(docs).encode()).hexdigest()[:16]
    path = VOCAB_DIR / f"vocab_{VOCAB_SIZE}_{key}.txt"
    if not path.is_file():
        VOCAB_DIR.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        write_vocab(train_wordpiece_vocab(docs, VOCAB_SIZE, min_frequency=1), tmp)
        os.replace(tmp, path)
    return path


def _pad(rows, cls_id, sep_id, cap, rng):
    """Rows of token ids (without specials) -> a batch padded to its longest row:
    ``[CLS] ids[:cap-2] [SEP]`` then [PAD] (id 0); (B, S) int64 arrays and random labels."""
    import numpy as np
    rows = [[cls_id] + list(r[:cap - 2]) + [sep_id] for r in rows]
    B, S = len(rows), max(len(r) for r in rows)
    ids, mask = np.zeros((B, S), np.int64), np.zeros((B, S), np.int64)           # (B, S)
    for b, r in enumerate(rows):
        ids[b, :len(r)], mask[b, :len(r)] = r, 1
    return dict(ids=ids, mask=mask, token_types=np.zeros((B, S), np.int64),
                labels=rng.integers(0, LABELS, B))


def _spaced(texts, B, n):
    """``n`` batches of ``B`` consecutive texts, the batches evenly spaced over ``texts``."""
    import numpy as np
    total = len(texts) // B
    if total < n:
        raise SystemExit(f"only {total} batches of {B} in the text, {n} asked")
    return [texts[k * B:(k + 1) * B] for k in np.linspace(0, total - 1, n).round().astype(int)]


def batch_sets(tokenizer, functions, B, cap, n):
    """The three batch sets: name -> (description, list of batches)."""
    import numpy as np
    rng = np.random.default_rng(0)
    enc = tokenizer.convert_tokens_to_ids
    paragraphs = [enc(tokenizer.tokenize(p)) for f in functions for p in f.paragraphs]
    paragraphs = [p for p in paragraphs if p]
    docs = [enc(tokenizer.tokenize(" ".join(f.paragraphs))) for f in functions]
    long_docs = [d for d in docs if len(d) + 2 >= min(LONG_DOC_TOKENS, cap)]
    stream = [t for p in paragraphs for t in p]
    full = [stream[i:i + cap - 2] for i in range(0, len(stream) - cap, cap - 2)]
    cls_id, sep_id = tokenizer.cls_token_id, tokenizer.sep_token_id

    def make(texts):
        return [_pad(rows, cls_id, sep_id, cap, rng) for rows in _spaced(texts, B, n)]
    return {
        "paragraphs": ("each text one docstring paragraph, in source order", make(paragraphs)),
        "docstrings": (f"each text one whole docstring (prose paragraphs joined) of at least "
                       f"{LONG_DOC_TOKENS} tokens, in source order", make(long_docs)),
        "full": (f"no padding: rows of {cap} real tokens cut from the paragraphs' token stream",
                 make(full))}


def padding_share(batches) -> float:
    """Padding tokens / fed tokens (B * S summed over ``batches``)."""
    real = sum(int(b["mask"].sum()) for b in batches)
    return 1.0 - real / sum(b["mask"].size for b in batches)


def sweep_batch(tokens, B, S, share, seed):
    """A batch of ``B`` rows padded to ``S`` whose padding share is ``share``: row lengths
    fall linearly from ``S`` (row 0, so the batch stays ``S`` long) with mean ``(1-share) S``;
    ids from ``tokens`` (a long id stream), labels random."""
    import numpy as np
    if not 0.0 <= share < 0.5:
        raise ValueError(f"share={share!r}: expected 0 <= share < 0.5 (row lengths fall "
                         "linearly from S)")
    if B < 2:
        raise ValueError(f"B={B}: expected at least 2 rows (row 0 is full, the others carry "
                         "the padding)")
    ramp = S - 2 * share * S * np.arange(B) / max(B - 1, 1)          # (B,), mean (1-share) S
    lengths = np.floor(ramp).astype(int)
    extra = int(round((1 - share) * S * B)) - int(lengths.sum())     # 0 <= extra < B
    lengths[1:1 + extra] += 1                                         # the share to the token
    lengths = np.clip(lengths, 1, S)
    ids, mask = np.zeros((B, S), np.int64), np.zeros((B, S), np.int64)
    for b, n in enumerate(lengths):
        ids[b, :n], mask[b, :n] = tokens[b * S:b * S + n], 1
    return dict(ids=ids, mask=mask, token_types=np.zeros((B, S), np.int64),
                labels=np.random.default_rng(seed).integers(0, LABELS, B))


# --------------------------------------------------------------------------- the models


def supports_unpad() -> bool:
    """Whether minibert's models can run padding-free (``BertModel.forward(unpad=)`` and the
    models' ``unpad`` attribute, which the heads pass to their encoder)."""
    from minibert.heads import BertForSequenceClassification
    from minibert.model import BertModel
    return ("unpad" in inspect.signature(BertModel.forward).parameters
            and isinstance(getattr(BertForSequenceClassification, "unpad", None), property))


def variants(with_unpad):
    """minibert's implementations: name -> the model's ``unpad`` (None: as by default)."""
    out = {"minibert": None}
    if with_unpad:
        out.update({"minibert unpad=False": False, "minibert unpad=True": True})
    return out


def load(path, section, which):
    """The models of ``section`` loaded from ``path``: "minibert" and/or "hf"."""
    models = {}
    if "minibert" in which:
        from minibert.heads import BertForSequenceClassification
        from minibert.model import BertModel
        models["minibert"] = (BertForSequenceClassification.from_pretrained(
            path, num_labels=LABELS, new_head=True) if section == "finetune"
            else BertModel.from_pretrained(path))
    if "hf" in which:
        import torch
        import transformers
        transformers.logging.set_verbosity_error()       # "newly initialized: classifier.*"
        transformers.utils.logging.disable_progress_bar()     # no bars while loading
        torch.manual_seed(0)
        models["hf"] = (transformers.BertForSequenceClassification.from_pretrained(
            path, num_labels=LABELS) if section == "finetune"
            else transformers.BertModel.from_pretrained(path).eval())
    return models


def minibert_pass(model, section, batches, unpad):
    """One call = every batch once: a fine-tuning step each (AdamW) or an inference call;
    ``unpad`` set on the model unless None (the default left alone)."""
    if unpad is not None:
        model.unpad = unpad
    if section == "inference":
        def infer():
            for b in batches:
                model(b["ids"], attention_mask=b["mask"], token_type_ids=b["token_types"])
        return infer
    from minibert.optim import AdamW
    opt = AdamW(model.store, lr=common.LR)

    def train():
        for b in batches:
            _, cache = model.forward(b["ids"], attention_mask=b["mask"],
                                     token_type_ids=b["token_types"], labels=b["labels"],
                                     training=True)
            model.backward(cache)
            opt.step()
    return train


def hf_pass(model, section, batches):
    """Hugging Face's pass: ``torch.optim.AdamW`` steps, or ``no_grad`` inference calls."""
    import torch
    tb = [common.to_torch(b) for b in batches]
    if section == "inference":
        def infer():
            with torch.no_grad():
                for t in tb:
                    model(input_ids=t["ids"], attention_mask=t["mask"],
                          token_type_ids=t["token_types"])
        return infer
    opt = torch.optim.AdamW(model.parameters(), lr=common.LR)
    model.train()

    def train():
        for t in tb:
            opt.zero_grad(set_to_none=True)
            model(input_ids=t["ids"], attention_mask=t["mask"], token_type_ids=t["token_types"],
                  labels=t["labels"]).loss.backward()
            opt.step()
    return train


def section_fns(path, section, batches, names):
    """name -> the timed pass, for the implementations in ``names``."""
    mine = variants(True)
    which = {"hf" if n == "hf" else "minibert" for n in names}
    fns = {}
    for n in names:                  # a model each: the optimizer steps change the weights
        m = load(path, section, which & {"hf" if n == "hf" else "minibert"})
        fns[n] = hf_pass(m["hf"], section, batches) if n == "hf" else \
            minibert_pass(m["minibert"], section, batches, mine[n])
    return fns


def check(path, batch, unpad):
    """Both libraries from ``path``, Hugging Face's new classifier copied into minibert,
    dropout off, on a padded batch: the loss, the word-embedding gradient and the last
    hidden state at the real tokens agree (minibert as by default, and each ``unpad``)."""
    import numpy as np
    import torch
    ft, enc = load(path, "finetune", {"minibert", "hf"}), load(path, "inference",
                                                               {"minibert", "hf"})
    ours, hf = ft["minibert"], ft["hf"].eval()
    ours.load_state_dict({"classifier." + k: v.detach().numpy()
                          for k, v in hf.classifier.state_dict().items()}, strict=False)
    t = common.to_torch(batch)
    loss = hf(input_ids=t["ids"], attention_mask=t["mask"], token_type_ids=t["token_types"],
              labels=t["labels"]).loss
    loss.backward()
    g_hf = hf.bert.embeddings.word_embeddings.weight.grad.numpy()
    with torch.no_grad():
        h_hf = enc["hf"](input_ids=t["ids"], attention_mask=t["mask"],
                         token_type_ids=t["token_types"]).last_hidden_state.numpy()
    real = batch["mask"].astype(bool)
    errors = {}
    for name, value in variants(unpad).items():
        if value is not None:
            ours.unpad = enc["minibert"].unpad = value
        out, cache = ours.forward(batch["ids"], attention_mask=batch["mask"],
                                  token_type_ids=batch["token_types"], labels=batch["labels"])
        grads = ours.backward(cache)
        h = enc["minibert"](batch["ids"], attention_mask=batch["mask"],
                            token_type_ids=batch["token_types"]).last_hidden_state
        errors[f"{name}: loss"] = abs(float(out.loss) - loss.item()) / abs(loss.item())
        errors[f"{name}: grad word_embeddings"] = common.relative_error(
            grads[common.WORD_EMBEDDINGS], g_hf)
        errors[f"{name}: last_hidden_state (real tokens)"] = common.relative_error(
            np.asarray(h)[real], h_hf[real])
    return common.verdict(errors)


# --------------------------------------------------------------------------- the run


def save_batches(path, batches):
    import numpy as np
    np.savez(path, **{f"{k}_{i}": v for i, b in enumerate(batches) for k, v in b.items()})


def load_batches(path):
    import numpy as np
    with np.load(path) as z:
        n = len({k.rsplit("_", 1)[1] for k in z.files})
        return [{k: z[f"{k}_{i}"] for k in ("ids", "mask", "token_types", "labels")}
                for i in range(n)]


def memory_work(what, data):
    """The memory probe's work in a fresh process: ``what`` = "SET/SECTION/NAME"; the
    model loaded and two calls on the set's longest batch (the first of the longest)."""
    name_set, section, name = what.split("/", 2)

    def work():
        batches = load_batches(Path(data) / f"batches_{name_set}.npz")
        batches = [max(batches, key=lambda b: b["ids"].shape[1])]
        fn = section_fns(Path(data) / "checkpoint", section, batches, [name])[name]
        fn()
        fn()
    return work


def probe(what, data):
    """Peak MiB of ``what`` ("SET/SECTION/NAME") in a fresh process; None (and a warning)
    where the probe fails, so that the timings already taken are still written."""
    try:
        return memory.peak_in_fresh_process(__file__, ["--memory-of", what, "--data", str(data)])
    except RuntimeError as e:
        print(f"warning: {e}", file=sys.stderr)
        return None


def ratios(ms, names):
    """The ratios of a section: Hugging Face / each minibert variant, the padded path /
    the padding-free one and / the default."""
    out = {f"hf / {n}": ms["hf"] / ms[n] for n in names if n != "hf" and "hf" in ms}
    if "minibert unpad=True" in ms:
        out["unpad=False / unpad=True"] = ms["minibert unpad=False"] / ms["minibert unpad=True"]
        out["unpad=False / default"] = ms["minibert unpad=False"] / ms["minibert"]
    return out


def run_set(name, description, batches, args, data, names):
    """Time and measure one batch set (both sections); its JSON entry."""
    save_batches(Path(data) / f"batches_{name}.npz", batches)
    entry = {"set": name, "text": description, "batches": len(batches),
             "batch_size": int(batches[0]["ids"].shape[0]),
             "padded_lengths": [int(b["ids"].shape[1]) for b in batches],
             "padding_share": padding_share(batches), "sections": {}}
    print(f"\n== {name}: {description}; {len(batches)} batches of {entry['batch_size']}, "
          f"padded lengths {entry['padded_lengths']}, padding {entry['padding_share']:.1%}")
    for section in SECTIONS:
        fns = section_fns(Path(data) / "checkpoint", section, batches, names)
        rounds = common.time_rounds(fns, args.repeat, warmup=1, settle_s=common.SETTLE_S,
                                    warm_s=common.WARM_S, collect=True)
        del fns
        gc.collect()
        per = {k: [t / len(batches) for t in v] for k, v in rounds.items()}
        ms = {k: statistics.median(v) for k, v in per.items()}
        peak = {n: None if args.no_memory else probe(f"{name}/{section}/{n}", data)
                for n in names}
        entry["sections"][section] = {"ms_per_batch": ms, "ms_per_batch_all": per,
                                      "peak_rss_mib_above_start": peak,
                                      "ratios": ratios(ms, names)}
        print_section(section, ms, peak, entry["sections"][section]["ratios"])
    return entry


def run_sweep(args, data, tokens):
    """unpad=True against unpad=False at controlled padding shares."""
    B, S = args.batch_size, args.max_length
    shares = (0.0, 0.3) if args.quick else SWEEP_SHARES
    mine = {"unpad=False": False, "unpad=True": True}
    models = {(section, n): load(Path(data) / "checkpoint", section, {"minibert"})["minibert"]
              for section in SECTIONS for n in mine}
    points = []
    print(f"\n== threshold sweep: batch {B}, padded length {S}, rows falling linearly from {S}")
    print(f"  {'padding':>8} {'section':<10}{'unpad=False ms':>16}{'unpad=True ms':>15}"
          f"{'False / True':>14}")
    for i, share in enumerate(shares):
        batch = sweep_batch(tokens, B, S, share, seed=i)
        fns = {f"{section} {n}": minibert_pass(models[section, n], section, [batch], mine[n])
               for section in SECTIONS for n in mine}
        rounds = common.time_rounds(fns, args.repeat, warmup=1, settle_s=common.SETTLE_S,
                                    warm_s=common.WARM_S, collect=True)
        ms = {k: statistics.median(v) for k, v in rounds.items()}
        point = {"padding_share": padding_share([batch]), "ms": ms, "ms_all": rounds}
        for section in SECTIONS:
            f, t = (ms[f"{section} {n}"] for n in mine)
            point[f"{section} unpad=False / unpad=True"] = f / t
            print(f"  {point['padding_share']:>8.1%} {section:<10}{f:>16.1f}{t:>15.1f}"
                  f"{f / t:>14.2f}", flush=True)
        points.append(point)
    return {"batch_size": B, "padded_length": S, "points": points,
            "crossover": {section: crossover(points, section) for section in SECTIONS}}


def crossover(points, section):
    """The padding share from which on unpad=True wins: where unpad=False / unpad=True
    last rises through 1 (linear between the two points around it; ``points`` by rising
    share), 0.0 where it wins at every point, None where it loses at the last one."""
    key = f"{section} unpad=False / unpad=True"
    if points[-1][key] < 1.0:
        return None
    for p, q in zip(points[-2::-1], points[:0:-1]):             # (p, q): neighbours, backwards
        if p[key] < 1.0:
            x0, y0, x1, y1 = p["padding_share"], p[key], q["padding_share"], q[key]
            return x0 + (1.0 - y0) * (x1 - x0) / (y1 - y0)
    return 0.0


def default_threads():
    """The thread counts the libraries chose by themselves (read, never set)."""
    import numba
    import torch
    threads = {"numba": numba.get_num_threads(), "torch": torch.get_num_threads()}
    try:
        from threadpoolctl import threadpool_info
        threads["blas"] = {i["internal_api"]: i["num_threads"] for i in threadpool_info()}
    except ImportError:
        threads["blas"] = None
    return threads


def run(args):
    from minibert.config import BertConfig
    from minibert.tasks.stdlib_functions import stdlib_functions
    from minibert.tokenization import BertTokenizer
    command = common.command_line()
    versions = common.library_versions("numpy", "numba", "torch", "transformers")
    device = dict(common.cpu_device(), threads=default_threads())
    common.print_header(command, versions, device, [], "default settings: no "
                        "attn_implementation, no thread or environment settings")
    functions = stdlib_functions(("json", "textwrap", "email") if args.quick else None)
    vocab = vocabulary(functions)
    tokenizer = BertTokenizer(vocab)
    sets = batch_sets(tokenizer, functions, args.batch_size, args.max_length, args.batches)
    with_unpad = supports_unpad()
    names = list(variants(with_unpad)) + ["hf"]
    config = BertConfig(**(TINY if args.quick else MINILM_L6), num_labels=LABELS)
    notes = [] if with_unpad else ["this minibert has no `unpad` argument: its one path"]
    print(f"vocabulary: {len(tokenizer)} WordPiece tokens learnt from {len(functions)} "
          f"docstrings ({vocab}); model V={config.vocab_size}")
    result = {"benchmark": "padding-free BERT on ragged real text at default settings on the "
                           "CPU: minibert vs Hugging Face transformers (PyTorch eager), "
                           "fine-tuning step and inference",
              "command": command, "device": device, "versions": versions,
              "config": config.to_dict(),
              "vocabulary": {"tokens": len(tokenizer), "trained_on": f"{len(functions)} "
                             "standard-library docstrings", "min_frequency": 1},
              "statistic": "median of the rounds, interleaved; ms per batch",
              "ratio_note": "time of the numerator / time of the denominator (>1: the "
                            "denominator is faster)",
              "memory_note": "peak RSS (VmHWM) of a fresh process that loads the model and "
                             "runs two calls on the set's longest batch, above its RSS after "
                             "the imports"}
    with tempfile.TemporaryDirectory(prefix="bench_padding_free_") as data:
        common.save_hf_checkpoint(config, Path(data) / "checkpoint")
        first = sets["paragraphs"][1][0]
        result["check"] = check(Path(data) / "checkpoint", first, with_unpad)
        common.print_check(result["check"])
        result["sets"] = [run_set(k, d, b, args, data, names) for k, (d, b) in sets.items()]
        if with_unpad and not args.no_sweep:
            tokens = [t for b in sets["full"][1] for t in b["ids"][:, 1:-1].ravel()]
            tokens = (tokens * (args.batch_size * args.max_length // len(tokens) + 1))
            result["sweep"] = run_sweep(args, data, tokens)
    print_table(result)
    device["load_average_end"] = list(os.getloadavg())
    result["notes"] = notes
    common.write_json(args.out, result)


# --------------------------------------------------------------------------- output


def print_section(section, ms, peak, r):
    print(f"  {section}:")
    for n, t in ms.items():
        mib = "" if peak[n] is None else f"{peak[n]:8.0f} MiB"
        print(f"    {n:<24}{t:>10.1f} ms/batch{mib}")
    print("    " + ", ".join(f"{k} {v:.2f}x" for k, v in r.items()))


def print_table(result):
    """The markdown table of the sets (README-ready)."""
    names = list(result["sets"][0]["sections"]["finetune"]["ms_per_batch"])
    mine = [n for n in names if n != "hf"]
    head = ["set", "padding", "section"] + [f"{n} ms" for n in names] + \
        [f"HF / {n}" for n in mine]
    if "minibert unpad=True" in names:
        head += ["unpad=False / default"]
    head += [f"peak MiB {n}" for n in names]
    print("\n| " + " | ".join(head) + " |\n|" + "---|" * len(head))
    for s in result["sets"]:
        for section, e in s["sections"].items():
            ms, r, pk = e["ms_per_batch"], e["ratios"], e["peak_rss_mib_above_start"]
            row = [s["set"], f"{s['padding_share']:.0%}", section] + \
                [f"{ms[n]:.0f}" for n in names] + [f"{r[f'hf / {n}']:.2f}x" for n in mine]
            if "minibert unpad=True" in names:
                row += [f"{r['unpad=False / default']:.2f}x"]
            row += ["n/a" if pk[n] is None else f"{pk[n]:.0f}" for n in names]
            print("| " + " | ".join(row) + " |")
    if "sweep" in result:
        sw = result["sweep"]
        print(f"\nthreshold sweep (batch {sw['batch_size']}, S={sw['padded_length']}): "
              "unpad=False time / unpad=True time")
        print("| padding | " + " | ".join(SECTIONS) + " |\n|---|" + "---|" * len(SECTIONS))
        for p in sw["points"]:
            print(f"| {p['padding_share']:.0%} | " + " | ".join(
                f"{p[f'{s} unpad=False / unpad=True']:.2f}x" for s in SECTIONS) + " |")
        print("crossover (padding share where unpad=True starts to win): " + ", ".join(
            f"{s} {'never' if c is None else f'{c:.1%}'}" for s, c in sw["crossover"].items()))


def main(argv=None):
    args = parse_args(argv)
    if args.memory_of:
        print(json.dumps(memory.measure_peak(memory_work(args.memory_of, args.data))))
    else:
        run(args)


if __name__ == "__main__":
    sys.exit(main())
