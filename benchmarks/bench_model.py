"""Benchmark of a BERT pretraining step and an inference forward on the CPU: minibert
against Hugging Face transformers in PyTorch eager, same thread count, same run, and a
profile of where minibert's step spends its time.

    python benchmarks/bench_model.py [--threads N] [--presets mini,base] [--repeat R]
                                     [--readable] [--quick] [--out FILE]

The work, for each preset (``mini``: L=4 H=256 A=4; ``base``: L=12 H=768 A=12; both with
BERT's vocabulary of 30522), float32, B=8 sequences of S=128 tokens (two segments, every
token real), 20 masked positions per sequence, dropout on (0.1) for training:

* **train step**: forward with the masked-LM and next-sentence losses, backward, AdamW.
  - minibert: ``BertForPreTraining`` with ``attn_implementation="fused"``, the gradients
    into its flat buffer, ``AdamW.step`` over that buffer.
  - hf: ``transformers.BertForPreTraining`` (its default attention, sdpa) with labels,
    ``loss.backward()``, ``torch.optim.AdamW``. Like the original BERT code minibert
    predicts the 20 masked positions only; Hugging Face's model predicts all S positions
    (a (B*S, 30522) logit matrix) and ignores the unmasked ones in the loss.
  - hf masked-only: the same Hugging Face modules, with the prediction head applied to the
    gathered masked positions only (``model.bert`` -> gather -> ``model.cls``): the same
    work as minibert, to separate the gain of predicting fewer positions from the rest.
* **inference**: ``BertModel`` forward, dropout off (minibert ``training=False``; torch
  ``eval()`` under ``no_grad``).

What it does, in order:

1. Sets the thread count of BLAS, Numba and torch to N before importing them
   (``machine.configure_environment``), measures SGEMM with N threads (the yardstick).
2. Checks that the two libraries compute the same function: Hugging Face's weights loaded
   into minibert, dropout off, the losses and the gradient of the word embeddings must
   agree to 1e-3 relative (float32 against float32).
3. Times every implementation, interleaved round by round (a noisy neighbour hurts all
   alike), after a 0.25 s pause per turn and one untimed call for calls under a second;
   reports the median.
4. Profiles minibert's step: every op's forward and backward (and the optimizer) is
   wrapped with a timer, per call, nesting excluded; GFLOP/s of the matrix products
   against the SGEMM rate. What the ops do not cover (reshapes, residual adds, gradient
   accumulation, Python) is reported as "model glue".
5. Measures peak memory: for each implementation a fresh process builds the model and runs
   two calls; its peak resident memory (Linux ``VmHWM``) above the resident memory after
   the imports counts parameters, gradients, optimizer state, activations and what the
   allocators keep.
6. Prints the tables and writes benchmarks/results/bench_model_cpu.json (or ``--out``).

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
import subprocess
import sys
import time
from pathlib import Path

from machine import ROOT, configure_environment, cpu_model, sgemm_gflops

HERE = Path(__file__).resolve().parent
RESULT = HERE / "results" / "bench_model_cpu.json"
B, S, MASKED = 8, 128, 20
SETTLE_S = 0.25
WARM_S = 0.1
CHECK_RTOL = 1e-3


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                    help="threads for BLAS, Numba and torch (default: all cores)")
    ap.add_argument("--presets", default="mini,base",
                    help="comma-separated minibert presets (default: mini,base)")
    ap.add_argument("--repeat", type=int, default=5, help="timed rounds (median)")
    ap.add_argument("--readable", action="store_true",
                    help="minibert on its readable ops (the kernels switched off)")
    ap.add_argument("--quick", action="store_true", help="smoke run: mini only, 2 rounds")
    ap.add_argument("--memory-of", default=None, help=argparse.SUPPRESS)   # internal
    ap.add_argument("--out", type=Path, default=RESULT,
                    help=f"JSON file to write (default: {RESULT.relative_to(ROOT)})")
    args = ap.parse_args(argv)
    if args.threads < 1:
        ap.error(f"--threads={args.threads} must be >= 1")
    if args.repeat < 1:
        ap.error(f"--repeat={args.repeat} must be >= 1")
    if args.quick:
        args.presets, args.repeat = "mini", min(args.repeat, 2)
    return args


ARGS = parse_args() if __name__ == "__main__" else None
NOTES = configure_environment(ARGS.threads) if ARGS is not None else []

import numpy as np  # noqa: E402  (after the thread environment is set)
import numba  # noqa: E402

import minibert.ops as ops  # noqa: E402
import minibert.kernels as kernels  # noqa: E402
from minibert.config import BertConfig  # noqa: E402
from minibert.heads import BertForPreTraining  # noqa: E402
from minibert.optim import AdamW  # noqa: E402

try:
    import torch
    import transformers
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


# --------------------------------------------------------------------------- minibert


def minibert_model(config):
    model = BertForPreTraining(config.__class__.from_dict(
        dict(config.to_dict(), attn_implementation="fused")))
    return model, AdamW(model.store, lr=1e-4)


def minibert_fns(model, opt, batch):
    def train():
        out, cache = model.forward(input_ids=batch["ids"], attention_mask=batch["mask"],
                                   token_type_ids=batch["token_types"],
                                   masked_lm_positions=batch["positions"],
                                   masked_lm_ids=batch["labels"],
                                   next_sentence_labels=batch["nsp"], training=True)
        model.backward(cache)
        opt.step()
        return out.loss

    def infer():
        out, _ = model.bert.forward(batch["ids"], batch["mask"], batch["token_types"])
        return out.last_hidden_state

    return {"train": train, "inference": infer}


# --------------------------------------------------------------------------- Hugging Face


def hf_models(config):
    hc = transformers.BertConfig(
        vocab_size=config.vocab_size, hidden_size=config.hidden_size,
        num_hidden_layers=config.num_hidden_layers,
        num_attention_heads=config.num_attention_heads,
        intermediate_size=config.intermediate_size,
        max_position_embeddings=config.max_position_embeddings,
        type_vocab_size=config.type_vocab_size, hidden_act=config.hidden_act,
        hidden_dropout_prob=config.hidden_dropout_prob,
        attention_probs_dropout_prob=config.attention_probs_dropout_prob,
        layer_norm_eps=config.layer_norm_eps)
    torch.manual_seed(0)
    pretrain = transformers.BertForPreTraining(hc).train()
    encoder = transformers.BertModel(hc, add_pooling_layer=True).eval()
    return pretrain, encoder


def hf_fns(pretrain, encoder, batch):
    t = {k: torch.as_tensor(v) for k, v in batch.items()}
    labels = torch.full((B, S), -100, dtype=torch.long)                 # (B, S)
    labels[torch.arange(B)[:, None], t["positions"]] = t["labels"]
    opt = torch.optim.AdamW(pretrain.parameters(), lr=1e-4)
    rows = torch.arange(B)[:, None]

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
        seq, pooled = pretrain.bert(input_ids=t["ids"], attention_mask=t["mask"],
                                    token_type_ids=t["token_types"], return_dict=False)[:2]
        mlm, nsp = pretrain.cls(seq[rows, t["positions"]], pooled)          # (B, 20, V), (B, 2)
        loss = (torch.nn.functional.cross_entropy(mlm.reshape(-1, mlm.shape[-1]),
                                                  t["labels"].reshape(-1))
                + torch.nn.functional.cross_entropy(nsp, t["nsp"]))
        loss.backward()
        opt.step()
        return loss

    def infer():
        with torch.no_grad():
            return encoder(input_ids=t["ids"], attention_mask=t["mask"],
                           token_type_ids=t["token_types"]).last_hidden_state

    return {"train": train, "train masked-only": train_masked_only, "inference": infer}


def check_same_function(config, batch):
    """Hugging Face's weights in minibert, dropout off: losses and one gradient agree."""
    pretrain, _ = hf_models(config)
    pretrain.eval()
    model, _ = minibert_model(config)
    state = {k: v.detach().numpy() for k, v in pretrain.state_dict().items()}
    model.load_state_dict({k: state[k] for k in model.params}, strict=True)
    t = {k: torch.as_tensor(v) for k, v in batch.items()}
    rows = torch.arange(B)[:, None]
    seq, pooled = pretrain.bert(input_ids=t["ids"], attention_mask=t["mask"],
                                token_type_ids=t["token_types"], return_dict=False)[:2]
    mlm, nsp = pretrain.cls(seq[rows, t["positions"]], pooled)
    loss = (torch.nn.functional.cross_entropy(mlm.reshape(-1, mlm.shape[-1]),
                                              t["labels"].reshape(-1))
            + torch.nn.functional.cross_entropy(nsp, t["nsp"]))
    loss.backward()
    out, cache = model.forward(input_ids=batch["ids"], attention_mask=batch["mask"],
                               token_type_ids=batch["token_types"],
                               masked_lm_positions=batch["positions"],
                               masked_lm_ids=batch["labels"], next_sentence_labels=batch["nsp"])
    grads = model.backward(cache)
    name = "bert.embeddings.word_embeddings.weight"
    g_hf = pretrain.bert.embeddings.word_embeddings.weight.grad.numpy()
    errs = {"loss": abs(float(out.loss) - float(loss)) / abs(float(loss)),
            "grad " + name: float(np.linalg.norm(grads[name] - g_hf) / np.linalg.norm(g_hf))}
    bad = {k: v for k, v in errs.items() if not v <= CHECK_RTOL}
    if bad:
        raise SystemExit(f"minibert and Hugging Face disagree beyond {CHECK_RTOL}: {bad}")
    return errs


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


def _rss_mib(field):
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024                              # kB -> MiB
    return None


def memory_child(name, preset):
    """In a fresh process: resident memory after the imports, then the peak while building
    the model and running two calls of ``name`` (parameters, gradients, optimizer state,
    activations and whatever the allocators keep), printed as JSON."""
    base = _rss_mib("VmRSS")
    config = BertConfig.preset(preset)
    batch = make_batch(config)
    if name.startswith("minibert"):
        model, opt = minibert_model(config)
        fns = minibert_fns(model, opt, batch)
    else:
        torch.set_num_threads(1)                        # memory does not depend on threads
        fns = hf_fns(*hf_models(config), batch)
    fn = fns[name.split(" ", 1)[1]]
    fn()
    fn()
    print(json.dumps({"peak_mib": _rss_mib("VmHWM") - base}))


def peak_memory_mib(name, preset):
    """``memory_child`` in a subprocess (None where /proc is missing)."""
    if _rss_mib("VmHWM") is None:
        return None
    out = subprocess.run([sys.executable, __file__, "--memory-of", name, "--presets", preset,
                          "--threads", "1"], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])["peak_mib"]


# --------------------------------------------------------------------------- profile


class Profiler:
    """Wraps the ops' forward/backward functions (and the optimizer) with timers.

    The model calls ``linear.forward`` and friends through their modules, so replacing
    the module attributes reaches every call. Only the outermost wrapped call is timed:
    an op that calls another op counts once.
    """

    WRAPPED = {"embedding": ("forward", "backward"), "layernorm": ("forward", "backward"),
               "dropout": ("forward", "backward"), "linear": ("forward", "backward"),
               "gelu": ("forward", "backward", "bias_forward", "bias_backward"),
               "attention": ("forward", "backward"), "tanh": ("forward", "backward"),
               "cross_entropy": ("forward", "backward")}

    def __init__(self):
        self.records = {}              # (op, direction) -> [seconds, calls, flops]
        self.depth = 0
        self.saved = []

    def _add(self, key, seconds, flops):
        r = self.records.setdefault(key, [0.0, 0, 0])
        r[0] += seconds
        r[1] += 1
        r[2] += flops

    def _wrap(self, owner, attr, key_fn):
        orig = getattr(owner, attr)

        def timed(*a, **k):
            if self.depth:
                return orig(*a, **k)
            self.depth += 1
            t0 = time.perf_counter()
            try:
                return orig(*a, **k)
            finally:
                dt = time.perf_counter() - t0
                self.depth -= 1
                key, flops = key_fn(a, k)
                self._add(key, dt, flops)

        self.saved.append((owner, attr, orig))
        setattr(owner, attr, timed)

    def install(self, optimizer):
        for name, attrs in self.WRAPPED.items():
            mod = getattr(ops, name)
            for attr in attrs:
                if hasattr(mod, attr):
                    self._wrap(mod, attr, self._key(name, attr))
        for attr, direction in (("fused_attention_forward", "forward"),
                                ("fused_attention_backward", "backward")):
            self._wrap(kernels, attr, self._attention_key(direction))
        self._wrap(optimizer, "step", lambda a, k: (("AdamW", "step"), 0))

    def remove(self):
        for owner, attr, orig in reversed(self.saved):
            if isinstance(owner, type(ops)):                 # a module: put the function back
                setattr(owner, attr, orig)
            else:
                delattr(owner, attr)                 # the instance attribute hid the method
        self.saved = []

    @staticmethod
    def _key(name, attr):
        direction = "backward" if "backward" in attr else "forward"
        if name != "linear":
            return lambda a, k: ((name, direction), 0)

        def linear_key(a, k):
            if direction == "forward":
                x, w = a[0], a[1]
            else:
                cache = a[1].saved if isinstance(a[1], ops.Fused) else a[1]
                x, w = cache[0], cache[1]
            n = x.size // x.shape[-1]
            o, i = w.shape
            flops = 2 * n * i * o * (1 if direction == "forward" else 2)
            return (f"linear {i}->{o}", direction), flops
        return linear_key

    @staticmethod
    def _attention_key(direction):
        def key(a, k):
            Bq, A, Sq, D = a[0].shape
            return ("fused attention", direction), (4 if direction == "forward" else 10) \
                * Bq * A * Sq * Sq * D
        return key


def profile_step(fn, optimizer, repeat):
    """Per-op seconds of one step (median over ``repeat`` steps) and the step's total."""
    runs, totals = [], []
    prof = Profiler()
    prof.install(optimizer)
    try:
        fn()                                                         # warm-up
        for _ in range(repeat):
            prof.records = {}
            t0 = time.perf_counter()
            fn()
            totals.append(time.perf_counter() - t0)
            runs.append(prof.records)
    finally:
        prof.remove()
    keys = sorted({k for r in runs for k in r})
    table = []
    for key in keys:
        secs = statistics.median(r.get(key, [0.0])[0] for r in runs)
        calls, flops = runs[0].get(key, [0, 0, 0])[1:]
        table.append({"op": key[0], "pass": key[1], "calls": calls, "ms": secs * 1e3,
                      "gflop": flops / 1e9})
    return table, statistics.median(totals)


# --------------------------------------------------------------------------- main


def main(args):
    threads = args.threads
    numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
    if torch is not None:
        torch.set_num_threads(threads)
    ops.set_readable_ops(args.readable)
    command = "python " + " ".join([os.path.relpath(__file__, Path.cwd())] + sys.argv[1:])
    versions = {"python": platform.python_version(), "numpy": np.__version__,
                "numba": numba.__version__,
                "torch": torch.__version__ if torch is not None else None,
                "transformers": transformers.__version__ if transformers is not None else None}
    device = {"cpu": cpu_model(), "cores": os.cpu_count(), "threads": threads,
              "load_average_start": list(os.getloadavg())}
    notes = list(NOTES)
    if torch is None:
        notes.append("torch/transformers are not installed: only minibert is timed")
    print(f"command: {command}")
    print(f"cpu: {device['cpu']}, {device['cores']} cores, {threads} threads; numpy "
          f"{versions['numpy']}, numba {versions['numba']}, torch {versions['torch']}, "
          f"transformers {versions['transformers']}; minibert ops: "
          f"{'readable' if args.readable else 'kernels'}")
    for note in notes:
        print(f"note: {note}")
    sgemm_start = sgemm_gflops(threads)
    print(f"SGEMM (np.matmul 1024^3 float32, median): {sgemm_start:.1f} GFLOP/s "
          f"with {threads} threads")

    results = []
    for preset in args.presets.split(","):
        config = BertConfig.preset(preset.strip())
        batch = make_batch(config)
        flops = step_flops(config)
        print(f"\n== {preset}: L={config.num_hidden_layers} H={config.hidden_size} "
              f"A={config.num_attention_heads} I={config.intermediate_size} "
              f"V={config.vocab_size}; B={B} S={S}, {MASKED} masked per sequence; "
              f"step {flops['train'] / 1e9:.1f} GFLOP, inference "
              f"{flops['inference'] / 1e9:.1f} GFLOP (matrix products)")
        entry = {"preset": preset, "config": config.to_dict(), "flops": flops}
        model, opt = minibert_model(config)
        fns = {"minibert " + k: f for k, f in minibert_fns(model, opt, batch).items()}
        if torch is not None:
            entry["check"] = check_same_function(config, batch)
            print("  check: minibert and Hugging Face agree (dropout off): "
                  + ", ".join(f"{k} rel. error {v:.1e}" for k, v in entry["check"].items()))
            pretrain, encoder = hf_models(config)
            fns.update({"hf " + k: f for k, f in hf_fns(pretrain, encoder, batch).items()})
        for f in fns.values():                          # compile kernels, first allocations
            f()
        med, all_times = time_round_robin(fns, args.repeat)
        memory = {name: peak_memory_mib(name, preset) for name in fns}
        entry["times_ms"] = {k: v * 1e3 for k, v in med.items()}
        entry["times_ms_all"] = {k: [x * 1e3 for x in v] for k, v in all_times.items()}
        entry["peak_rss_mib_above_start"] = memory
        print(f"  {'implementation':<28}{'ms':>10}{'GFLOP/s':>9}{'%SGEMM':>8}"
              f"{'minibert x':>12}{'peak MiB':>10}")
        for name, t in med.items():
            kind = "inference" if name.endswith("inference") else "train"
            mine = med["minibert " + kind]
            g = flops[kind] / t / 1e9
            mem = memory[name]
            print(f"  {name:<28}{t * 1e3:>10.1f}{g:>9.1f}{100 * g / sgemm_start:>8.1f}"
                  f"{t / mine:>12.2f}{mem if mem is None else round(mem):>10}")
        entry["speedups"] = {k: med[k] / med["minibert " + ("inference" if "inference" in k
                                                            else "train")]
                             for k in med if k.startswith("hf")}

        table, total = profile_step(fns["minibert train"], opt, max(2, args.repeat // 2))
        entry["profile"] = {"step_ms": total * 1e3, "ops": table}
        results.append(entry)

    sgemm_end = sgemm_gflops(threads)
    # a neighbour can only slow a yardstick down: the better of the two is the machine's rate
    sgemm = max(sgemm_start, sgemm_end)
    print(f"\nSGEMM at the end: {sgemm_end:.1f} GFLOP/s (start {sgemm_start:.1f}); the "
          f"percentages below are of the better, {sgemm:.1f}")
    for entry in results:
        print(f"\n== {entry['preset']}")
        summarize(entry, sgemm)
    if threads > 1:
        one = sgemm_gflops(1)
        if max(sgemm_start, sgemm_end) < 0.8 * threads * one:
            msg = (f"SGEMM ran only {sgemm / one:.2f}x faster with {threads} threads than with "
                   "1: the cores were not all free, the timings of this run are not fair")
            notes.append(msg)
            print("WARNING: " + msg)
    device["load_average_end"] = list(os.getloadavg())
    result = {"benchmark": "BERT pretraining step and inference on the CPU: minibert vs "
                           "Hugging Face transformers (PyTorch eager)",
              "command": command, "device": device, "versions": versions,
              "readable_ops": args.readable, "batch": {"B": B, "S": S, "masked": MASKED},
              "sgemm_gflops": {"start": sgemm_start, "end": sgemm_end, "used": sgemm},
              "statistic": "median of the rounds, interleaved",
              "speedup_note": "time of the peer / time of minibert (>1: minibert faster)",
              "memory_note": "peak RSS (VmHWM) of a fresh process that builds the model and "
                             "runs two calls, above its RSS after the imports",
              "results": results, "notes": notes}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwrote {os.path.relpath(args.out, Path.cwd())}")


def summarize(entry, sgemm):
    """The issue's numbers for one preset, against the SGEMM rate ``sgemm``."""
    t, flops = entry["times_ms"], entry["flops"]
    gemm_ms = sum(r["ms"] for r in entry["profile"]["ops"] if r["gflop"])
    gemm_flop = sum(r["gflop"] for r in entry["profile"]["ops"])
    at_sgemm = flops["train"] / sgemm / 1e6
    summary = {
        "train_speedup_vs_hf": entry["speedups"].get("hf train"),
        "train_speedup_vs_hf_masked_only": entry["speedups"].get("hf train masked-only"),
        "inference_speedup_vs_hf": entry["speedups"].get("hf inference"),
        "gemm_pct_of_sgemm": 100 * gemm_flop / gemm_ms * 1e3 / sgemm if gemm_ms else None,
        "step_over_flops_at_sgemm": t["minibert train"] / at_sgemm,
        "peak_mib": entry["peak_rss_mib_above_start"]}
    entry["summary"] = summary
    print(print_profile(entry["profile"]["ops"], entry["profile"]["step_ms"] / 1e3, sgemm,
                        flops["train"]) or "", end="")

    def x(v):
        return "n/a" if v is None else f"{v:.2f}x"
    print(f"  train step {t['minibert train']:.0f} ms: {x(summary['train_speedup_vs_hf'])} "
          f"Hugging Face BertForPreTraining, {x(summary['train_speedup_vs_hf_masked_only'])} "
          f"its masked-only variant; inference {x(summary['inference_speedup_vs_hf'])} "
          f"BertModel; matrix products at {summary['gemm_pct_of_sgemm']:.0f}% of SGEMM; "
          f"step = {summary['step_over_flops_at_sgemm']:.2f}x its FLOPs at SGEMM "
          f"({at_sgemm:.0f} ms)")


def print_profile(table, total, sgemm, flops):
    print(f"  profile of minibert's train step ({total * 1e3:.0f} ms with the timers; "
          f"its FLOPs at SGEMM rate: {flops / sgemm / 1e6:.0f} ms):")
    print(f"    {'op':<24}{'pass':<10}{'calls':>6}{'ms':>9}{'%step':>7}{'GFLOP/s':>9}"
          f"{'%SGEMM':>8}")
    covered = 0.0
    for r in sorted(table, key=lambda r: -r["ms"]):
        covered += r["ms"]
        rate = r["gflop"] / (r["ms"] / 1e3) if r["gflop"] and r["ms"] else None
        r["gflops"] = rate
        r["pct_sgemm"] = 100 * rate / sgemm if rate else None
        print(f"    {r['op']:<24}{r['pass']:<10}{r['calls']:>6}{r['ms']:>9.1f}"
              f"{100 * r['ms'] / (total * 1e3):>7.1f}"
              + (f"{rate:>9.1f}{r['pct_sgemm']:>8.1f}" if rate else ""))
    glue = total * 1e3 - covered
    print(f"    {'model glue (the rest)':<34}{'':>6}{glue:>9.1f}{100 * glue / (total * 1e3):>7.1f}")
    gemm_ms = sum(r["ms"] for r in table if r["gflop"])
    gemm_flop = sum(r["gflop"] for r in table)
    if gemm_ms:
        print(f"    matrix-product ops: {gemm_ms:.0f} ms, {gemm_flop / gemm_ms * 1e3:.1f} GFLOP/s "
              f"= {100 * gemm_flop / gemm_ms * 1e3 / sgemm:.0f}% of SGEMM")


if __name__ == "__main__":
    if ARGS.memory_of:
        memory_child(ARGS.memory_of, ARGS.presets)
    else:
        main(ARGS)
