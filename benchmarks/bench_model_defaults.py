"""Benchmark of BERT on the CPU with default settings: minibert against Hugging Face
transformers in PyTorch eager, in the same run, interleaved; the ratios are the result.
(The same models with the thread count under control and a per-op profile:
``bench_model.py``.)

    python benchmarks/bench_model_defaults.py [--preset NAME] [--repeat R] [--quick] [--out FILE]

The models are built as a new user builds them, with no settings at all: no
``attn_implementation``, no environment variables, no thread counts (BLAS, Numba and torch
at their own defaults), e.g. ``BertForPreTraining(BertConfig.preset("base"))``, called as
documented. Three sections, float32, each timed against its Hugging Face peer:

* **train**: ``BertForPreTraining`` step, B=8, S=128 (two segments, every token real),
  20 masked positions per sequence, dropout 0.1 (``training=True``): forward with the
  masked-LM and next-sentence losses, ``model.backward(cache)``, ``minibert.optim.AdamW``
  over the flat buffer (as the Trainer does). Peers: ``transformers.BertForPreTraining``
  (which predicts all S positions) with ``torch.optim.AdamW``, and its "masked-only"
  variant (below).
* **inference**: ``BertModel`` called as ``model(ids, attention_mask=..., token_type_ids=...)``
  against ``transformers.BertModel`` in ``eval()`` under ``torch.no_grad()``, B=8, S=128.
* **finetune**: ``BertForSequenceClassification`` of all-MiniLM-L6-v2's shape (L=6, H=384,
  A=12, I=1536, V=30522), 5 labels, loaded from a checkpoint (a randomly initialized
  ``transformers.BertModel`` of that shape written with ``save_pretrained``; the
  classifier is new in both libraries), B=16, S=128 (every token real), dropout on:
  forward with the cross-entropy loss, backward, AdamW; peer
  ``transformers.BertForSequenceClassification.from_pretrained`` with ``torch.optim.AdamW``.

``--preset NAME`` (default ``base``) sizes the train and inference models; the fine-tuning
model is all-MiniLM-L6-v2's shape at ``base`` and the preset's shape otherwise (``--preset
tiny`` shrinks all three for a smoke run; ``--quick`` = ``--preset tiny --repeat 2``).
GFLOP/s are nominal: the matrix products of the forward (the prediction head on the
masked positions only), times 3 for a training step. JSON:
``results/bench_model_defaults_cpu.json`` (``..._cpu_<preset>.json`` for another preset).

What it does, in order: for each section, checks that the two libraries compute the same
function (Hugging Face's weights in minibert, dropout off: the losses and the word
embeddings' gradient, or the hidden states, agree to 1e-3 relative), times every
implementation interleaved round by round (``common.time_rounds``: a 0.25 s pause per turn
and 0.1 s of untimed calls for calls under a second; the median is reported), and measures
each one's peak memory in a fresh process (``memory.py``). Prints the tables and writes the
JSON.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

import common
import memory
from machine import ROOT, sgemm_gflops

RESULT = common.result_path("bench_model_defaults_cpu.json")
MINILM_L6 = dict(num_hidden_layers=6, hidden_size=384, num_attention_heads=12,
                 intermediate_size=1536)     # all-MiniLM-L6-v2's shape (D = 32)
SECTIONS = ("train", "inference", "finetune")

# imported by import_libraries(): nothing is set before (the run leaves the defaults alone)
np = numba = torch = transformers = None
BertConfig = BertModel = BertForPreTraining = BertForSequenceClassification = AdamW = None


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default=None,
                    help="size of the models (default: base; tiny for a short run)")
    ap.add_argument("--repeat", type=int, default=5, help="timed rounds (median; default: 5)")
    ap.add_argument("--quick", action="store_true", help="smoke run: 2 rounds of tiny")
    ap.add_argument("--memory-of", default=None, help=argparse.SUPPRESS)   # internal
    ap.add_argument("--checkpoint", default=None, help=argparse.SUPPRESS)  # internal
    ap.add_argument("--out", type=Path, default=None,
                    help=f"JSON file to write (default: {RESULT.relative_to(ROOT)}, "
                         f"{RESULT.stem}_<preset>.json for another preset)")
    args = ap.parse_args(argv)
    if args.repeat < 1:
        ap.error(f"--repeat={args.repeat} must be >= 1")
    args.preset = args.preset or ("tiny" if args.quick else "base")
    if args.quick:
        args.repeat = min(args.repeat, 2)
    if args.out is None:
        args.out = RESULT if args.preset == "base" else \
            RESULT.with_name(f"{RESULT.stem}_{args.preset}.json")
    return args


def import_libraries():
    global np, numba, torch, transformers
    global BertConfig, BertModel, BertForPreTraining, BertForSequenceClassification, AdamW
    import numba
    import numpy as np

    from minibert.config import BertConfig
    from minibert.heads import BertForPreTraining, BertForSequenceClassification
    from minibert.model import BertModel
    from minibert.optim import AdamW
    try:
        import torch
        import transformers
        transformers.utils.logging.disable_progress_bar()     # no bars while loading/saving
    except ImportError:                       # the peers are optional: minibert is still timed
        torch = transformers = None


# --------------------------------------------------------------------------- the problem


def nominal_flops(config, batch, head):
    """Matrix-product FLOPs of the forward of ``head`` ("pretraining": MLM on the masked
    positions + NSP; "inference": none; "classifier") on ``batch``, and 3x that for a step."""
    H, I, L = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    b, s = batch["ids"].shape
    N = b * s
    encoder = L * (2 * N * (4 * H * H + 2 * H * I) + 4 * b * s * s * H) + 2 * b * H * H
    if head == "pretraining":
        extra = 2 * batch["positions"].size * H * (H + config.vocab_size) + 2 * b * H * 2
    else:
        extra = 2 * b * H * config.num_labels if head == "classifier" else 0
    return {"forward": encoder + extra, "train": 3 * (encoder + extra)}


def finetune_config(preset):
    """all-MiniLM-L6-v2's shape at "base", the preset's shape otherwise; 5 labels."""
    dims = MINILM_L6 if preset == "base" else BertConfig.preset(preset).to_dict()
    return BertConfig(**{k: dims[k] for k in MINILM_L6}, num_labels=common.FT_LABELS)


def load_finetune_models(path, which=("minibert", "hf")):
    """The checkpoint loaded for fine-tuning with 5 labels: the classifier is new."""
    models = {}
    if "minibert" in which:
        models["minibert"] = BertForSequenceClassification.from_pretrained(
            path, num_labels=common.FT_LABELS, new_head=True)
    if "hf" in which:
        transformers.logging.set_verbosity_error()      # "newly initialized: classifier.*"
        torch.manual_seed(0)
        models["hf"] = transformers.BertForSequenceClassification.from_pretrained(
            path, num_labels=common.FT_LABELS)
    return models


def write_checkpoint(preset, path):
    """The fine-tuning start: Hugging Face's BertModel (minibert's where torch is missing)."""
    config = finetune_config(preset)
    if torch is not None:
        common.save_hf_checkpoint(config, path)
    else:
        BertModel(config).save_pretrained(path)


def check_finetune(path, batch):
    """Both loaded from ``path``, Hugging Face's new classifier copied into minibert,
    dropout off: the loss and the word-embedding gradient agree."""
    models = load_finetune_models(path)
    ours, hf = models["minibert"], models["hf"].eval()
    ours.load_state_dict({"classifier." + k: v.detach().numpy()
                          for k, v in hf.classifier.state_dict().items()}, strict=False)
    t = common.to_torch(batch)
    loss = hf(input_ids=t["ids"], attention_mask=t["mask"], token_type_ids=t["token_types"],
              labels=t["labels"]).loss
    loss.backward()
    out, cache = ours.forward(batch["ids"], attention_mask=batch["mask"],
                              token_type_ids=batch["token_types"], labels=batch["labels"])
    grads = ours.backward(cache)
    name = common.WORD_EMBEDDINGS
    g_hf = hf.bert.embeddings.word_embeddings.weight.grad.numpy()
    return common.verdict({"loss": abs(float(out.loss) - loss.item()) / abs(loss.item()),
                           "grad " + name: common.relative_error(grads[name], g_hf)})


def _section_of(name):
    return next(s for s in SECTIONS if name.split(" ", 1)[1].startswith(s))


def section_fns(section, preset, checkpoint, names=None):
    """A section's implementations, built as a new user builds them (no settings); name
    -> the timed call. ``names`` builds only those (the memory probe builds one)."""
    def want(n):
        return names is None or n in names
    fns = {}
    if section == "finetune":
        batch = common.make_finetune_batch(finetune_config(preset))
        which = [w for w in ("minibert", "hf") if want(w + " finetune")
                 and (w == "minibert" or torch is not None)]
        models = load_finetune_models(checkpoint, which)
        if "minibert" in models:
            m = models["minibert"]
            fns["minibert finetune"] = common.minibert_finetune_step(
                m, AdamW(m.store, lr=common.LR), batch)
        if "hf" in models:
            fns["hf finetune"] = common.hf_finetune_step(models["hf"], batch)
        return fns
    batch = common.make_batch(BertConfig.preset(preset))
    if section == "train":
        if want("minibert train"):
            model = BertForPreTraining(BertConfig.preset(preset))
            fns["minibert train"] = common.minibert_pretrain_step(
                model, AdamW(model.store, lr=common.LR), batch)
        if torch is not None and (want("hf train") or want("hf train masked-only")):
            hf = common.hf_train_fns(common.hf_pretrain(BertConfig.preset(preset)), batch)
            fns.update({"hf " + k: f for k, f in hf.items() if want("hf " + k)})
    else:
        if want("minibert inference"):
            fns["minibert inference"] = common.minibert_inference(
                BertModel(BertConfig.preset(preset)), batch)
        if torch is not None and want("hf inference"):
            fns["hf inference"] = common.hf_inference_fn(
                common.hf_encoder(BertConfig.preset(preset)), batch)
    return fns


def memory_work(name, preset, checkpoint):
    """The memory probe's work in a fresh process: build ``name``'s model, two calls."""
    def work():
        fn = section_fns(_section_of(name), preset, checkpoint, {name})[name]
        fn()
        fn()
    return work


# --------------------------------------------------------------------------- the run


def run_section(section, args, checkpoint):
    """Check, time and measure one section; its JSON entry."""
    if section == "finetune":
        config = finetune_config(args.preset)
        batch, head = common.make_finetune_batch(config), "classifier"
    else:
        config = BertConfig.preset(args.preset)
        batch, head = common.make_batch(config), {"train": "pretraining"}.get(section, section)
    flops = nominal_flops(config, batch, head)
    entry = {"section": section, "config": config.to_dict(),
             "batch": dict(zip(("B", "S"), batch["ids"].shape)),
             "flops": flops["train" if head != "inference" else "forward"]}
    if section == "train":
        entry["batch"]["masked"] = common.MASKED
    if torch is not None:
        entry["check"] = {"train": lambda: common.check_pretraining(config, batch, attn=None),
                          "inference": lambda: common.check_inference(config, batch),
                          "finetune": lambda: check_finetune(checkpoint, batch)}[section]()
    fns = section_fns(section, args.preset, checkpoint)
    rounds = common.time_rounds(fns, args.repeat, warmup=1, settle_s=common.SETTLE_S,
                                warm_s=common.WARM_S, collect=True)
    entry["times_ms"] = {k: statistics.median(v) for k, v in rounds.items()}
    entry["times_ms_all"] = rounds
    names = list(fns)
    del fns
    gc.collect()
    extra = ["--checkpoint", checkpoint] if section == "finetune" else []
    entry["peak_rss_mib_above_start"] = {
        name: memory.peak_in_fresh_process(
            __file__, ["--memory-of", name, "--preset", args.preset] + extra)
        for name in names}
    entry["speedups"] = common.speedups(entry["times_ms"], lambda k: "minibert " + section)
    return entry


def default_threads():
    """The thread counts the libraries chose by themselves (read, never set)."""
    threads = {"numba": numba.get_num_threads(),
               "torch": torch.get_num_threads() if torch is not None else None}
    try:
        from threadpoolctl import threadpool_info
        threads["blas"] = {i["internal_api"]: i["num_threads"] for i in threadpool_info()}
    except ImportError:
        threads["blas"] = None
    return threads


def run(args):
    command = common.command_line()
    versions = common.library_versions("numpy", "numba", "torch", "transformers")
    device = dict(common.cpu_device(), threads=default_threads())
    notes = [] if torch is not None else [
        "torch/transformers are not installed: only minibert is timed"]
    common.print_header(command, versions, device, notes, "default settings: no "
                        "attn_implementation, no thread or environment settings")
    sgemm = sgemm_gflops(None)
    print(f"SGEMM (np.matmul 1024^3 float32, median): {sgemm:.1f} GFLOP/s with the BLAS "
          "library's default threads")
    sections = []
    with tempfile.TemporaryDirectory(prefix="bench_model_checkpoint_") as checkpoint:
        write_checkpoint(args.preset, checkpoint)
        for section in SECTIONS:
            entry = run_section(section, args, checkpoint)
            print_section(entry, sgemm)
            sections.append(entry)
    print_summary(sections)
    device["load_average_end"] = list(os.getloadavg())
    common.write_json(args.out, {
        "benchmark": "BERT with default settings on the CPU: minibert vs Hugging Face "
                     "transformers (PyTorch eager): pretraining step, inference, fine-tuning",
        "command": command, "device": device, "versions": versions, "preset": args.preset,
        "sgemm_gflops": sgemm, "statistic": "median of the rounds, interleaved",
        "flops_note": "nominal matrix-product FLOPs: the forward's (MLM head on the masked "
                      "positions only), 3x for a training step",
        "speedup_note": "time of the peer / time of minibert (>1: minibert faster)",
        "memory_note": "peak RSS (VmHWM) of a fresh process that builds the model and "
                       "runs two calls, above its RSS after the imports",
        "sections": sections, "notes": notes})


# --------------------------------------------------------------------------- output


def print_section(entry, sgemm):
    c, b = entry["config"], entry["batch"]
    print(f"\n== {entry['section']}: L={c['num_hidden_layers']} H={c['hidden_size']} "
          f"A={c['num_attention_heads']} I={c['intermediate_size']} V={c['vocab_size']} "
          f"attn_implementation={c['attn_implementation']!r}; "
          + ", ".join(f"{k}={v}" for k, v in b.items())
          + f"; {entry['flops'] / 1e9:.1f} GFLOP (nominal)")
    if "check" in entry:
        common.print_check(entry["check"])
    common.print_rows(entry["times_ms"], lambda n: "minibert " + entry["section"],
                      lambda n: entry["flops"], entry["peak_rss_mib_above_start"], sgemm)


def print_summary(sections):
    print("\nminibert with default settings (peer time / minibert time, >1: minibert faster):")
    for entry in sections:
        mine = entry["times_ms"]["minibert " + entry["section"]]
        peers = ", ".join(f"{x:.2f}x {k}" for k, x in entry["speedups"].items()) or "no peers"
        print(f"  {entry['section']:<10} {mine:>9.1f} ms: {peers}")


def main(argv=None):
    args = parse_args(argv)
    import_libraries()
    if args.memory_of:
        work = memory_work(args.memory_of, args.preset, args.checkpoint)
        print(json.dumps(memory.measure_peak(work)))
    else:
        run(args)


if __name__ == "__main__":
    sys.exit(main())
