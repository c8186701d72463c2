"""Benchmark of BERT on the CPU: minibert against Hugging Face transformers in PyTorch
eager, in the same run, interleaved; the ratios are the result.

    python benchmarks/bench_model.py --defaults [--preset NAME] [--repeat R] [--quick] [--out FILE]
    python benchmarks/bench_model.py [--threads N] [--presets mini,base] [--repeat R]
                                     [--readable] [--quick] [--out FILE]

**The default-settings run** (``--defaults``, the headline): the models built as a new
user builds them, with no settings at all: no ``attn_implementation``, no environment
variables, no thread counts (BLAS, Numba and torch at their own defaults), e.g.
``BertForPreTraining(BertConfig.preset("base"))``, called as documented. Three sections,
float32, each timed against its Hugging Face peer:

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

**The thread-controlled run** (without ``--defaults``), for each preset (``mini``: L=4
H=256 A=4; ``base``: L=12 H=768 A=12; both with BERT's vocabulary of 30522), B=8, S=128,
20 masked positions, dropout 0.1 for training:

* **train step**: as above, with ``attn_implementation="fused"``; the peers as above.
  Like the original BERT code minibert predicts the 20 masked positions only; Hugging
  Face's model predicts all S positions (a (B*S, 30522) logit matrix) and ignores the
  unmasked ones in the loss.
  - hf masked-only: the same Hugging Face modules, with the prediction head applied to the
    gathered masked positions only (``model.bert`` -> gather -> ``model.cls``): the same
    work as minibert, to separate the gain of predicting fewer positions from the rest.
* **inference**: the pretraining model's encoder, dropout off (minibert ``training=False``;
  torch ``eval()`` under ``no_grad``).

What it does, in order:

1. Sets the thread count of BLAS, Numba and torch to N before importing them
   (``machine.configure_environment``), measures SGEMM with N threads (the yardstick).
2. Checks that the two libraries compute the same function: Hugging Face's weights loaded
   into minibert, dropout off, the losses and the gradient of the word embeddings must
   agree to 1e-3 relative (float32 against float32).
3. Times every implementation, interleaved round by round (a noisy neighbour hurts all
   alike), after a 0.25 s pause per turn and 0.1 s of untimed calls for calls under a
   second; reports the median.
4. Profiles minibert's step (``profiling.py``): every op's forward and backward (and the
   optimizer), GFLOP/s of the matrix products against the SGEMM rate, and the "model
   glue" that no op covers.
5. Measures peak memory (``memory.py``): for each implementation a fresh process builds
   the model and runs two calls; its peak resident memory (Linux ``VmHWM``) above the
   resident memory after the imports.
6. Prints the tables and writes benchmarks/results/bench_model_cpu.json (or ``--out``).

The default-settings run does steps 2, 3 and 5 with the machine's defaults.

FLOPs of a step (matrix products only; N = B*S tokens, P = B*20 predicted positions, V the
vocabulary): per layer the forward does 2 N (4 H^2 + 2 H I) for the projections and
4 B A S^2 D for attention; the backward does twice the projections and, with the fused
attention's recomputation, 2.5x the attention forward; the MLM head does
2 P H (H + V) forward and twice that backward. The "at SGEMM" time is these FLOPs at the
measured SGEMM rate: the time of a step that did nothing but GEMMs at that rate.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

from machine import ROOT, configure_environment, cpu_model, sgemm_gflops

HERE = Path(__file__).resolve().parent
RESULT = HERE / "results" / "bench_model_cpu.json"
RESULT_DEFAULTS = HERE / "results" / "bench_model_defaults_cpu.json"
B, S, MASKED = 8, 128, 20
FT_B, FT_LABELS = 16, 5                      # fine-tuning: batch, classes
MINILM_L6 = dict(num_hidden_layers=6, hidden_size=384, num_attention_heads=12,
                 intermediate_size=1536)     # all-MiniLM-L6-v2's shape (D = 32)
SECTIONS = ("train", "inference", "finetune")
SETTLE_S = 0.25
WARM_S = 0.1
CHECK_RTOL = 1e-3
LR = 1e-4


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--defaults", action="store_true",
                    help="the default-settings run: models, threads and environment as a new "
                         "user gets them (train, inference, fine-tuning sections)")
    ap.add_argument("--preset", default=None,
                    help="with --defaults: size of the models (default: base)")
    ap.add_argument("--threads", type=int, default=None,
                    help="threads for BLAS, Numba and torch (default: all cores; "
                         "not with --defaults)")
    ap.add_argument("--presets", default="mini,base",
                    help="comma-separated minibert presets (default: mini,base)")
    ap.add_argument("--repeat", type=int, default=5, help="timed rounds (median)")
    ap.add_argument("--readable", action="store_true",
                    help="minibert on its readable ops (the kernels switched off)")
    ap.add_argument("--quick", action="store_true",
                    help="smoke run: 2 rounds of mini (with --defaults: of tiny)")
    ap.add_argument("--memory-of", default=None, help=argparse.SUPPRESS)   # internal
    ap.add_argument("--checkpoint", default=None, help=argparse.SUPPRESS)  # internal
    ap.add_argument("--out", type=Path, default=None,
                    help=f"JSON file to write (default: {RESULT.relative_to(ROOT)}, with "
                         f"--defaults {RESULT_DEFAULTS.relative_to(ROOT)})")
    args = ap.parse_args(argv)
    if args.repeat < 1:
        ap.error(f"--repeat={args.repeat} must be >= 1")
    if args.defaults:
        if args.threads is not None or args.readable:
            ap.error("--defaults runs with the machine's defaults: no --threads, no --readable")
        args.preset = args.preset or ("tiny" if args.quick else "base")
        if args.quick:
            args.repeat = min(args.repeat, 2)
        if args.out is None and args.preset == "base":
            args.out = RESULT_DEFAULTS
        elif args.out is None:
            args.out = RESULT_DEFAULTS.with_name(f"{RESULT_DEFAULTS.stem}_{args.preset}.json")
        return args
    if args.preset is not None:
        ap.error("--preset is for --defaults; the thread-controlled run takes --presets")
    args.threads = args.threads if args.threads is not None else os.cpu_count() or 1
    if args.threads < 1:
        ap.error(f"--threads={args.threads} must be >= 1")
    if args.quick:
        args.presets, args.repeat = "mini", min(args.repeat, 2)
    args.out = args.out or RESULT
    return args


ARGS = parse_args() if __name__ == "__main__" else None
# the default-settings run leaves the environment alone: nothing is set before the imports
NOTES = configure_environment(ARGS.threads) if ARGS is not None and not ARGS.defaults else []

import memory  # noqa: E402
import numba  # noqa: E402
import numpy as np  # noqa: E402  (after the thread environment is set)
import profiling  # noqa: E402

import minibert.ops as ops  # noqa: E402
from minibert.config import BertConfig  # noqa: E402
from minibert.heads import BertForPreTraining, BertForSequenceClassification  # noqa: E402
from minibert.model import BertModel  # noqa: E402
from minibert.optim import AdamW  # noqa: E402

try:
    import torch
    import transformers
    transformers.utils.logging.disable_progress_bar()     # no bars while loading/saving
except ImportError:                       # the peers are optional: minibert is still profiled
    torch = transformers = None


# --------------------------------------------------------------------------- problem


def make_batch(config, seed=0):
    """Token ids, two segments, every token real, 20 sorted masked positions per row."""
    r = np.random.default_rng(seed)
    ids = r.integers(0, config.vocab_size, (B, S))                      # (B, S)
    token_types = np.zeros((B, S), np.int64)
    token_types[:, S // 2:] = 1
    mask = np.ones((B, S), np.int64)
    positions = np.sort(np.stack([r.choice(np.arange(1, S), MASKED, replace=False)
                                  for _ in range(B)]), axis=1)          # (B, 20)
    labels = r.integers(0, config.vocab_size, (B, MASKED))             # (B, 20)
    nsp = r.integers(0, 2, B)                                           # (B,)
    return dict(ids=ids, token_types=token_types, mask=mask, positions=positions,
                labels=labels, nsp=nsp)


def make_finetune_batch(config, seed=1):
    """FT_B single-segment sequences of S real tokens, one label in [0, num_labels) each."""
    r = np.random.default_rng(seed)
    return dict(ids=r.integers(0, config.vocab_size, (FT_B, S)),                 # (FT_B, S)
                token_types=np.zeros((FT_B, S), np.int64), mask=np.ones((FT_B, S), np.int64),
                labels=r.integers(0, config.num_labels, FT_B))                   # (FT_B,)


def step_flops(config):
    """Matrix-product FLOPs of one training step and of one inference forward."""
    H, I, L, A = config.hidden_size, config.intermediate_size, config.num_hidden_layers, \
        config.num_attention_heads
    V, D, N, P = config.vocab_size, H // A, B * S, B * MASKED
    proj = 2 * N * (4 * H * H + 2 * H * I)
    attn = 4 * B * A * S * S * D
    head = 2 * P * H * (H + V)
    forward = L * (proj + attn) + 2 * B * H * H                          # + pooler
    train = L * (3 * proj + 3.5 * attn) + 3 * head + 3 * 2 * B * H * H
    return {"train": train, "inference": forward}


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
    return BertConfig(**{k: dims[k] for k in MINILM_L6}, num_labels=FT_LABELS)


# --------------------------------------------------------------------------- minibert


def minibert_model(config, attn="fused"):
    """BertForPreTraining and its AdamW; ``attn=None`` keeps the config's attention."""
    if attn is not None:
        config = BertConfig.from_dict(dict(config.to_dict(), attn_implementation=attn))
    model = BertForPreTraining(config)
    return model, AdamW(model.store, lr=LR)


def pretrain_step(model, opt, batch):
    def train():
        out, cache = model.forward(batch["ids"], attention_mask=batch["mask"],
                                   token_type_ids=batch["token_types"],
                                   masked_lm_positions=batch["positions"],
                                   masked_lm_ids=batch["labels"],
                                   next_sentence_labels=batch["nsp"], training=True)
        model.backward(cache)
        opt.step()
        return out.loss
    return train


def encoder_inference(encoder, batch):
    """``encoder(...)``: inference as documented, the outputs only, no cache."""
    def infer():
        return encoder(batch["ids"], attention_mask=batch["mask"],
                       token_type_ids=batch["token_types"]).last_hidden_state
    return infer


def minibert_fns(model, opt, batch):
    return {"train": pretrain_step(model, opt, batch),
            "inference": encoder_inference(model.bert, batch)}


def finetune_step(model, opt, batch):
    def step():
        out, cache = model.forward(batch["ids"], attention_mask=batch["mask"],
                                   token_type_ids=batch["token_types"],
                                   labels=batch["labels"], training=True)
        model.backward(cache)
        opt.step()
        return out.loss
    return step


# --------------------------------------------------------------------------- Hugging Face


def hf_config(config):
    return transformers.BertConfig(
        vocab_size=config.vocab_size, hidden_size=config.hidden_size,
        num_hidden_layers=config.num_hidden_layers,
        num_attention_heads=config.num_attention_heads,
        intermediate_size=config.intermediate_size,
        max_position_embeddings=config.max_position_embeddings,
        type_vocab_size=config.type_vocab_size, hidden_act=config.hidden_act,
        hidden_dropout_prob=config.hidden_dropout_prob,
        attention_probs_dropout_prob=config.attention_probs_dropout_prob,
        layer_norm_eps=config.layer_norm_eps, num_labels=config.num_labels)


def hf_pretrain(config):
    torch.manual_seed(0)
    return transformers.BertForPreTraining(hf_config(config)).train()


def hf_encoder(config):
    torch.manual_seed(0)
    return transformers.BertModel(hf_config(config), add_pooling_layer=True).eval()


def hf_masked_only_loss(pretrain, t):
    """The Hugging Face modules with the prediction head on the masked positions only."""
    rows = torch.arange(t["ids"].shape[0])[:, None]
    seq, pooled = pretrain.bert(input_ids=t["ids"], attention_mask=t["mask"],
                                token_type_ids=t["token_types"], return_dict=False)[:2]
    mlm, nsp = pretrain.cls(seq[rows, t["positions"]], pooled)          # (B, 20, V), (B, 2)
    return (torch.nn.functional.cross_entropy(mlm.reshape(-1, mlm.shape[-1]),
                                              t["labels"].reshape(-1))
            + torch.nn.functional.cross_entropy(nsp, t["nsp"]))


def hf_train_fns(pretrain, batch):
    t = {k: torch.as_tensor(v) for k, v in batch.items()}
    labels = torch.full((B, S), -100, dtype=torch.long)                 # (B, S)
    labels[torch.arange(B)[:, None], t["positions"]] = t["labels"]
    opt = torch.optim.AdamW(pretrain.parameters(), lr=LR)

    def train():
        opt.zero_grad(set_to_none=True)
        out = pretrain(input_ids=t["ids"], attention_mask=t["mask"],
                       token_type_ids=t["token_types"], labels=labels,
                       next_sentence_label=t["nsp"])
        out.loss.backward()
        opt.step()
        return out.loss

    def train_masked_only():
        opt.zero_grad(set_to_none=True)
        loss = hf_masked_only_loss(pretrain, t)
        loss.backward()
        opt.step()
        return loss

    return {"train": train, "train masked-only": train_masked_only}


def hf_inference_fn(encoder, batch):
    t = {k: torch.as_tensor(v) for k, v in batch.items()}

    def infer():
        with torch.no_grad():
            return encoder(input_ids=t["ids"], attention_mask=t["mask"],
                           token_type_ids=t["token_types"]).last_hidden_state
    return infer


def hf_finetune_step(model, batch):
    t = {k: torch.as_tensor(v) for k, v in batch.items()}
    opt = torch.optim.AdamW(model.parameters(), lr=LR)
    model.train()

    def step():
        opt.zero_grad(set_to_none=True)
        out = model(input_ids=t["ids"], attention_mask=t["mask"],
                    token_type_ids=t["token_types"], labels=t["labels"])
        out.loss.backward()
        opt.step()
        return out.loss
    return step


def save_checkpoint(config, path):
    """A randomly initialized Hugging Face BertModel of ``config``'s shape, as a
    pretrained checkpoint directory (config.json + model.safetensors)."""
    torch.manual_seed(0)
    transformers.BertModel(hf_config(config)).save_pretrained(path)


def load_finetune_models(path, which=("minibert", "hf")):
    """The checkpoint loaded for fine-tuning with 5 labels: the classifier is new."""
    models = {}
    if "minibert" in which:
        models["minibert"] = BertForSequenceClassification.from_pretrained(
            path, num_labels=FT_LABELS, new_head=True)
    if "hf" in which:
        transformers.logging.set_verbosity_error()      # "newly initialized: classifier.*"
        torch.manual_seed(0)
        models["hf"] = transformers.BertForSequenceClassification.from_pretrained(
            path, num_labels=FT_LABELS)
    return models


# --------------------------------------------------------------------------- checks


def _rel(a, b):
    return float(np.linalg.norm(np.asarray(a) - b) / np.linalg.norm(b))


def _verdict(errs):
    bad = {k: v for k, v in errs.items() if not v <= CHECK_RTOL}
    if bad:
        raise SystemExit(f"minibert and Hugging Face disagree beyond {CHECK_RTOL}: {bad}")
    return errs


def check_same_function(config, batch, attn="fused"):
    """Hugging Face's weights in minibert, dropout off: losses and one gradient agree."""
    pretrain = hf_pretrain(config).eval()
    model, _ = minibert_model(config, attn)
    state = {k: v.detach().numpy() for k, v in pretrain.state_dict().items()}
    model.load_state_dict({k: state[k] for k in model.params}, strict=True)
    loss = hf_masked_only_loss(pretrain, {k: torch.as_tensor(v) for k, v in batch.items()})
    loss.backward()
    out, cache = model.forward(batch["ids"], attention_mask=batch["mask"],
                               token_type_ids=batch["token_types"],
                               masked_lm_positions=batch["positions"],
                               masked_lm_ids=batch["labels"], next_sentence_labels=batch["nsp"])
    grads = model.backward(cache)
    name = "bert.embeddings.word_embeddings.weight"
    g_hf = pretrain.bert.embeddings.word_embeddings.weight.grad.numpy()
    return _verdict({"loss": abs(float(out.loss) - loss.item()) / abs(loss.item()),
                     "grad " + name: _rel(grads[name], g_hf)})


def check_inference(config, batch):
    """Hugging Face's encoder weights in minibert's BertModel: ``model(...)`` agrees."""
    encoder = hf_encoder(config)
    model = BertModel(config)
    state = {k: v.detach().numpy() for k, v in encoder.state_dict().items()}
    model.load_state_dict({k: state[k] for k in model.params}, strict=True)
    ours = encoder_inference(model, batch)()
    theirs = hf_inference_fn(encoder, batch)().numpy()
    return _verdict({"last_hidden_state": _rel(ours, theirs)})


def check_finetune(path, batch):
    """Both loaded from ``path``, Hugging Face's new classifier copied into minibert,
    dropout off: the loss and the word-embedding gradient agree."""
    models = load_finetune_models(path)
    ours, hf = models["minibert"], models["hf"].eval()
    ours.load_state_dict({"classifier." + k: v.detach().numpy()
                          for k, v in hf.classifier.state_dict().items()}, strict=False)
    t = {k: torch.as_tensor(v) for k, v in batch.items()}
    loss = hf(input_ids=t["ids"], attention_mask=t["mask"], token_type_ids=t["token_types"],
              labels=t["labels"]).loss
    loss.backward()
    out, cache = ours.forward(batch["ids"], attention_mask=batch["mask"],
                              token_type_ids=batch["token_types"], labels=batch["labels"])
    grads = ours.backward(cache)
    name = "bert.embeddings.word_embeddings.weight"
    g_hf = hf.bert.embeddings.word_embeddings.weight.grad.numpy()
    return _verdict({"loss": abs(float(out.loss) - loss.item()) / abs(loss.item()),
                     "grad " + name: _rel(grads[name], g_hf)})


# --------------------------------------------------------------------------- timing


def time_round_robin(fns, repeat):
    """Median seconds per named function, measured round by round."""
    times = {name: [] for name in fns}
    last = {name: 0.0 for name in fns}
    gc_was = gc.isenabled()
    gc.disable()
    try:
        for _ in range(repeat):
            for name, fn in fns.items():
                time.sleep(SETTLE_S)
                if last[name] < 10 * WARM_S:                  # short calls: warm the cores up
                    t_warm = time.perf_counter()
                    fn()
                    while time.perf_counter() - t_warm < WARM_S:
                        fn()
                t0 = time.perf_counter()
                fn()
                last[name] = time.perf_counter() - t0
                times[name].append(last[name])
                gc.collect()
    finally:
        if gc_was:
            gc.enable()
    return {k: statistics.median(v) for k, v in times.items()}, times


def time_peers(fns, repeat):
    """One untimed call each (compilation, first allocations), then ``time_round_robin``;
    returns (median ms, every round's ms) per name."""
    for f in fns.values():
        f()
    med, all_times = time_round_robin(fns, repeat)
    return ({k: v * 1e3 for k, v in med.items()},
            {k: [x * 1e3 for x in v] for k, v in all_times.items()})


def speedups(times_ms, mine):
    """Peer time / minibert time per peer; ``mine(name)`` names minibert's entry."""
    return {k: times_ms[k] / times_ms[mine(k)] for k in times_ms if k.startswith("hf")}


# --------------------------------------------------------------------------- the thread-controlled run


def threaded_work(name, preset):
    """The memory probe's work in a fresh process: build ``name``'s model, two calls."""
    def work():
        config = BertConfig.preset(preset)
        batch = make_batch(config)
        if name.startswith("minibert"):
            fns = minibert_fns(*minibert_model(config), batch)
        else:
            torch.set_num_threads(1)                    # memory does not depend on threads
            fns = (hf_train_fns(hf_pretrain(config), batch) if "train" in name
                   else {"inference": hf_inference_fn(hf_encoder(config), batch)})
        fn = fns[name.split(" ", 1)[1]]
        fn()
        fn()
    return work


def run_preset(preset, args):
    """Check, time, measure and profile one preset; returns its JSON entry."""
    config = BertConfig.preset(preset)
    batch = make_batch(config)
    entry = {"preset": preset, "config": config.to_dict(), "flops": step_flops(config)}
    model, opt = minibert_model(config)
    fns = {"minibert " + k: f for k, f in minibert_fns(model, opt, batch).items()}
    if torch is not None:
        entry["check"] = check_same_function(config, batch)
        fns.update({"hf " + k: f for k, f in hf_train_fns(hf_pretrain(config), batch).items()})
        fns["hf inference"] = hf_inference_fn(hf_encoder(config), batch)
    entry["times_ms"], entry["times_ms_all"] = time_peers(fns, args.repeat)
    entry["peak_rss_mib_above_start"] = {
        name: memory.peak_in_fresh_process(__file__, ["--memory-of", name, "--presets", preset,
                                                      "--threads", "1"])
        for name in fns}
    entry["speedups"] = speedups(entry["times_ms"], lambda k: "minibert " + (
        "inference" if "inference" in k else "train"))
    prof = profiling.profile_step(fns["minibert train"], opt, max(2, args.repeat // 2))
    entry["profile"] = prof.to_dict()
    return entry


def summary(entry, sgemm):
    """The issue's numbers for one preset, against the SGEMM rate ``sgemm``; the profile's
    rows gain their rates."""
    t, flops = entry["times_ms"], entry["flops"]
    prof = profiling.summarize(profiling.StepProfile(**entry["profile"]), sgemm)
    entry["profile"]["ops"] = prof["rows"]
    at_sgemm = flops["train"] / sgemm / 1e6
    entry["summary"] = {
        "train_speedup_vs_hf": entry["speedups"].get("hf train"),
        "train_speedup_vs_hf_masked_only": entry["speedups"].get("hf train masked-only"),
        "inference_speedup_vs_hf": entry["speedups"].get("hf inference"),
        "gemm_pct_of_sgemm": prof["gemm_pct_of_sgemm"],
        "step_over_flops_at_sgemm": t["minibert train"] / at_sgemm,
        "flops_at_sgemm_ms": at_sgemm,
        "peak_mib": entry["peak_rss_mib_above_start"]}
    return prof


def environment(args):
    """The command, the library versions and the device, as data."""
    command = "python " + " ".join([os.path.relpath(__file__, Path.cwd())] + sys.argv[1:])
    versions = {"python": platform.python_version(), "numpy": np.__version__,
                "numba": numba.__version__,
                "torch": torch.__version__ if torch is not None else None,
                "transformers": transformers.__version__ if transformers is not None else None}
    device = {"cpu": cpu_model(), "cores": os.cpu_count(),
              "load_average_start": list(os.getloadavg())}
    if args.defaults:
        device["threads"] = default_threads()
    else:
        device["threads"] = args.threads
    return command, versions, device


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


def main_threads(args):
    threads = args.threads
    numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
    if torch is not None:
        torch.set_num_threads(threads)
    ops.set_readable_ops(args.readable)
    command, versions, device = environment(args)
    notes = list(NOTES)
    if torch is None:
        notes.append("torch/transformers are not installed: only minibert is timed")
    print_header(command, versions, device, notes,
                 f"minibert ops: {'readable' if args.readable else 'kernels'}")
    sgemm_start = sgemm_gflops(threads)
    print(f"SGEMM (np.matmul 1024^3 float32, median): {sgemm_start:.1f} GFLOP/s "
          f"with {threads} threads")
    results = []
    for preset in args.presets.split(","):
        entry = run_preset(preset.strip(), args)
        print_preset(entry, sgemm_start)
        results.append(entry)
    sgemm_end = sgemm_gflops(threads)
    # a neighbour can only slow a yardstick down: the better of the two is the machine's rate
    sgemm = max(sgemm_start, sgemm_end)
    print(f"\nSGEMM at the end: {sgemm_end:.1f} GFLOP/s (start {sgemm_start:.1f}); the "
          f"percentages below are of the better, {sgemm:.1f}")
    for entry in results:
        print(f"\n== {entry['preset']}")
        prof = summary(entry, sgemm)
        print_profile(prof, entry["summary"]["flops_at_sgemm_ms"])
        print_summary(entry)
    if threads > 1:
        one = sgemm_gflops(1)
        if sgemm < 0.8 * threads * one:
            msg = (f"SGEMM ran only {sgemm / one:.2f}x faster with {threads} threads than with "
                   "1: the cores were not all free, the timings of this run are not fair")
            notes.append(msg)
            print("WARNING: " + msg)
    device["load_average_end"] = list(os.getloadavg())
    write_json(args.out, {
        "benchmark": "BERT pretraining step and inference on the CPU: minibert vs "
                     "Hugging Face transformers (PyTorch eager)",
        "command": command, "device": device, "versions": versions,
        "readable_ops": args.readable, "batch": {"B": B, "S": S, "masked": MASKED},
        "sgemm_gflops": {"start": sgemm_start, "end": sgemm_end, "used": sgemm},
        "statistic": "median of the rounds, interleaved",
        "speedup_note": "time of the peer / time of minibert (>1: minibert faster)",
        "memory_note": "peak RSS (VmHWM) of a fresh process that builds the model and "
                       "runs two calls, above its RSS after the imports",
        "results": results, "notes": notes})


# --------------------------------------------------------------------------- the default-settings run


def _section_of(name):
    return next(s for s in SECTIONS if name.split(" ", 1)[1].startswith(s))


def defaults_fns(section, preset, checkpoint, names=None):
    """A section's implementations, built as a new user builds them (no settings); name
    -> the timed call. ``names`` builds only those (the memory probe builds one)."""
    def want(n):
        return names is None or n in names
    fns = {}
    if section == "finetune":
        batch = make_finetune_batch(finetune_config(preset))
        which = [w for w in ("minibert", "hf") if want(w + " finetune")
                 and (w == "minibert" or torch is not None)]
        models = load_finetune_models(checkpoint, which)
        if "minibert" in models:
            m = models["minibert"]
            fns["minibert finetune"] = finetune_step(m, AdamW(m.store, lr=LR), batch)
        if "hf" in models:
            fns["hf finetune"] = hf_finetune_step(models["hf"], batch)
        return fns
    batch = make_batch(BertConfig.preset(preset))
    if section == "train":
        if want("minibert train"):
            model = BertForPreTraining(BertConfig.preset(preset))
            fns["minibert train"] = pretrain_step(model, AdamW(model.store, lr=LR), batch)
        if torch is not None and (want("hf train") or want("hf train masked-only")):
            hf = hf_train_fns(hf_pretrain(BertConfig.preset(preset)), batch)
            fns.update({"hf " + k: f for k, f in hf.items() if want("hf " + k)})
    else:
        if want("minibert inference"):
            fns["minibert inference"] = encoder_inference(BertModel(BertConfig.preset(preset)),
                                                          batch)
        if torch is not None and want("hf inference"):
            fns["hf inference"] = hf_inference_fn(hf_encoder(BertConfig.preset(preset)), batch)
    return fns


def defaults_work(name, preset, checkpoint):
    """The memory probe's work in a fresh process: build ``name``'s model, two calls."""
    def work():
        fn = defaults_fns(_section_of(name), preset, checkpoint, {name})[name]
        fn()
        fn()
    return work


def write_checkpoint(preset, path):
    """The fine-tuning start: Hugging Face's BertModel (minibert's where torch is missing)."""
    config = finetune_config(preset)
    if torch is not None:
        save_checkpoint(config, path)
    else:
        BertModel(config).save_pretrained(path)


def run_section(section, args, checkpoint):
    """Check, time and measure one section of the default-settings run; its JSON entry."""
    if section == "finetune":
        config = finetune_config(args.preset)
        batch, head = make_finetune_batch(config), "classifier"
    else:
        config = BertConfig.preset(args.preset)
        batch, head = make_batch(config), {"train": "pretraining"}.get(section, section)
    flops = nominal_flops(config, batch, head)
    entry = {"section": section, "config": config.to_dict(),
             "batch": dict(zip(("B", "S"), batch["ids"].shape)),
             "flops": flops["train" if head != "inference" else "forward"]}
    if section == "train":
        entry["batch"]["masked"] = MASKED
    if torch is not None:
        entry["check"] = {"train": lambda: check_same_function(config, batch, attn=None),
                          "inference": lambda: check_inference(config, batch),
                          "finetune": lambda: check_finetune(checkpoint, batch)}[section]()
    fns = defaults_fns(section, args.preset, checkpoint)
    entry["times_ms"], entry["times_ms_all"] = time_peers(fns, args.repeat)
    names = list(fns)
    del fns
    gc.collect()
    extra = ["--checkpoint", checkpoint] if section == "finetune" else []
    entry["peak_rss_mib_above_start"] = {
        name: memory.peak_in_fresh_process(
            __file__, ["--defaults", "--memory-of", name, "--preset", args.preset] + extra)
        for name in names}
    entry["speedups"] = speedups(entry["times_ms"], lambda k: "minibert " + section)
    return entry


def main_defaults(args):
    command, versions, device = environment(args)
    notes = [] if torch is not None else [
        "torch/transformers are not installed: only minibert is timed"]
    print_header(command, versions, device, notes,
                 "default settings: no attn_implementation, no thread or environment settings")
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
    print_defaults_summary(sections)
    device["load_average_end"] = list(os.getloadavg())
    write_json(args.out, {
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


def write_json(path, result):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwrote {os.path.relpath(path, Path.cwd())}")


def print_header(command, versions, device, notes, what):
    print(f"command: {command}")
    print(f"cpu: {device['cpu']}, {device['cores']} cores, threads {device['threads']}; numpy "
          f"{versions['numpy']}, numba {versions['numba']}, torch {versions['torch']}, "
          f"transformers {versions['transformers']}; {what}")
    for note in notes:
        print(f"note: {note}")


def _mib(v):
    return "n/a" if v is None else round(v)


def print_rows(times_ms, mine, flops, memory_mib, sgemm):
    """One line per implementation: ms, GFLOP/s, %SGEMM, speedup of minibert, peak MiB."""
    print(f"  {'implementation':<28}{'ms':>10}{'GFLOP/s':>9}{'%SGEMM':>8}"
          f"{'minibert x':>12}{'peak MiB':>10}")
    for name, t in times_ms.items():
        g = flops(name) / t / 1e6
        print(f"  {name:<28}{t:>10.1f}{g:>9.1f}{100 * g / sgemm:>8.1f}"
              f"{t / times_ms[mine(name)]:>12.2f}{_mib(memory_mib[name]):>10}")


def print_check(check):
    print("  check: minibert and Hugging Face agree (dropout off): "
          + ", ".join(f"{k} rel. error {v:.1e}" for k, v in check.items()))


def print_preset(entry, sgemm):
    c = entry["config"]
    flops = entry["flops"]
    print(f"\n== {entry['preset']}: L={c['num_hidden_layers']} H={c['hidden_size']} "
          f"A={c['num_attention_heads']} I={c['intermediate_size']} V={c['vocab_size']}; "
          f"B={B} S={S}, {MASKED} masked per sequence; step {flops['train'] / 1e9:.1f} GFLOP, "
          f"inference {flops['inference'] / 1e9:.1f} GFLOP (matrix products)")
    if "check" in entry:
        print_check(entry["check"])

    def kind(name):
        return "inference" if name.endswith("inference") else "train"
    print_rows(entry["times_ms"], lambda n: "minibert " + kind(n), lambda n: flops[kind(n)],
               entry["peak_rss_mib_above_start"], sgemm)


def print_section(entry, sgemm):
    c, b = entry["config"], entry["batch"]
    print(f"\n== {entry['section']}: L={c['num_hidden_layers']} H={c['hidden_size']} "
          f"A={c['num_attention_heads']} I={c['intermediate_size']} V={c['vocab_size']} "
          f"attn_implementation={c['attn_implementation']!r}; "
          + ", ".join(f"{k}={v}" for k, v in b.items())
          + f"; {entry['flops'] / 1e9:.1f} GFLOP (nominal)")
    if "check" in entry:
        print_check(entry["check"])
    print_rows(entry["times_ms"], lambda n: "minibert " + entry["section"],
               lambda n: entry["flops"], entry["peak_rss_mib_above_start"], sgemm)


def print_defaults_summary(sections):
    print("\nminibert with default settings (peer time / minibert time, >1: minibert faster):")
    for entry in sections:
        mine = entry["times_ms"]["minibert " + entry["section"]]
        peers = ", ".join(f"{x:.2f}x {k}" for k, x in entry["speedups"].items()) or "no peers"
        print(f"  {entry['section']:<10} {mine:>9.1f} ms: {peers}")


def print_profile(prof, at_sgemm_ms):
    print(f"  profile of minibert's train step ({prof['step_ms']:.0f} ms with the timers; "
          f"its FLOPs at SGEMM rate: {at_sgemm_ms:.0f} ms):")
    print(f"    {'op':<24}{'pass':<10}{'calls':>6}{'ms':>9}{'%step':>7}{'GFLOP/s':>9}"
          f"{'%SGEMM':>8}")
    for r in prof["rows"]:
        print(f"    {r['op']:<24}{r['pass']:<10}{r['calls']:>6}{r['ms']:>9.1f}{r['pct_step']:>7.1f}"
              + (f"{r['gflops']:>9.1f}{r['pct_sgemm']:>8.1f}" if r["gflops"] else ""))
    print(f"    {'model glue (the rest)':<34}{'':>6}{prof['glue_ms']:>9.1f}{prof['glue_pct']:>7.1f}")
    if prof["gemm_ms"]:
        print(f"    matrix-product ops: {prof['gemm_ms']:.0f} ms, {prof['gemm_gflops']:.1f} "
              f"GFLOP/s = {prof['gemm_pct_of_sgemm']:.0f}% of SGEMM")


def print_summary(entry):
    s, t = entry["summary"], entry["times_ms"]

    def x(v):
        return "n/a" if v is None else f"{v:.2f}x"
    gemm = "n/a" if s["gemm_pct_of_sgemm"] is None else f"{s['gemm_pct_of_sgemm']:.0f}%"
    print(f"  train step {t['minibert train']:.0f} ms: {x(s['train_speedup_vs_hf'])} "
          f"Hugging Face BertForPreTraining, {x(s['train_speedup_vs_hf_masked_only'])} "
          f"its masked-only variant; inference {x(s['inference_speedup_vs_hf'])} "
          f"BertModel; matrix products at {gemm} of SGEMM; "
          f"step = {s['step_over_flops_at_sgemm']:.2f}x its FLOPs at SGEMM "
          f"({s['flops_at_sgemm_ms']:.0f} ms)")


def main(args):
    if args.memory_of:
        work = (defaults_work(args.memory_of, args.preset, args.checkpoint) if args.defaults
                else threaded_work(args.memory_of, args.presets))
        print(json.dumps(memory.measure_peak(work)))
    elif args.defaults:
        main_defaults(args)
    else:
        main_threads(args)


if __name__ == "__main__":
    main(ARGS)
