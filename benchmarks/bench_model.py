"""Benchmark of BERT on the CPU with the thread count under control: minibert against
Hugging Face transformers in PyTorch eager, in the same run, interleaved; the ratios are the
result. (The models as a new user builds them, with no settings: ``bench_model_defaults.py``.)

    python benchmarks/bench_model.py [--threads N] [--presets mini,base] [--repeat R]
                                     [--readable] [--quick] [--out FILE]

``--presets tiny --repeat 1`` is a short run; ``--quick`` = ``--presets mini --repeat 2``.

For each preset (``mini``: L=4 H=256 A=4; ``base``: L=12 H=768 A=12; ``tiny``: L=2 H=128
A=2; all with BERT's vocabulary of 30522), B=8, S=128 (two segments, every token real),
20 masked positions per sequence, dropout 0.1 for training, float32:

* **train step**: ``BertForPreTraining`` with ``attn_implementation="fused"``: forward with
  the masked-LM and next-sentence losses, ``model.backward(cache)``, ``minibert.optim.AdamW``
  over the flat buffer (as the Trainer does). Peer: ``transformers.BertForPreTraining`` with
  ``torch.optim.AdamW``. Like the original BERT code minibert predicts the 20 masked
  positions only; Hugging Face's model predicts all S positions (a (B*S, 30522) logit
  matrix) and ignores the unmasked ones in the loss.
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

FLOPs of a step (matrix products only; N = B*S tokens, P = B*20 predicted positions, V the
vocabulary): per layer the forward does 2 N (4 H^2 + 2 H I) for the projections and
4 B A S^2 D for attention; the backward does twice the projections and, with the fused
attention's recomputation, 2.5x the attention forward; the MLM head does
2 P H (H + V) forward and twice that backward. The "at SGEMM" time is these FLOPs at the
measured SGEMM rate: the time of a step that did nothing but GEMMs at that rate.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path

import common
import memory
from machine import ROOT, configure_environment, sgemm_gflops

RESULT = common.result_path("bench_model_cpu.json")
B, S, MASKED, LR = common.B, common.S, common.MASKED, common.LR

# imported by import_libraries(), once main() has set the thread environment
np = numba = torch = transformers = ops = profiling = None
BertConfig = BertForPreTraining = AdamW = None


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=None,
                    help="threads for BLAS, Numba and torch (default: all cores)")
    ap.add_argument("--presets", default="mini,base",
                    help="comma-separated minibert presets, tiny for a short run "
                         "(default: mini,base)")
    ap.add_argument("--repeat", type=int, default=5, help="timed rounds (median; default: 5)")
    ap.add_argument("--readable", action="store_true",
                    help="minibert on its readable ops (the kernels switched off)")
    ap.add_argument("--quick", action="store_true", help="smoke run: 2 rounds of mini")
    ap.add_argument("--memory-of", default=None, help=argparse.SUPPRESS)   # internal
    ap.add_argument("--out", type=Path, default=None,
                    help=f"JSON file to write (default: {RESULT.relative_to(ROOT)})")
    args = ap.parse_args(argv)
    if args.repeat < 1:
        ap.error(f"--repeat={args.repeat} must be >= 1")
    args.threads = args.threads if args.threads is not None else os.cpu_count() or 1
    if args.threads < 1:
        ap.error(f"--threads={args.threads} must be >= 1")
    if args.quick:
        args.presets, args.repeat = "mini", min(args.repeat, 2)
    args.out = args.out or RESULT
    return args


def import_libraries():
    """NumPy, Numba, torch and minibert: imported after the thread environment is set."""
    global np, numba, torch, transformers, ops, profiling, BertConfig, BertForPreTraining, AdamW
    import numba
    import numpy as np
    import profiling

    import minibert.ops as ops
    from minibert.config import BertConfig
    from minibert.heads import BertForPreTraining
    from minibert.optim import AdamW
    try:
        import torch
        import transformers
        transformers.utils.logging.disable_progress_bar()
    except ImportError:                   # the peers are optional: minibert is still profiled
        torch = transformers = None


# --------------------------------------------------------------------------- the problem


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


def minibert_model(config):
    """BertForPreTraining with the fused attention, and its AdamW."""
    config = BertConfig.from_dict(dict(config.to_dict(), attn_implementation="fused"))
    model = BertForPreTraining(config)
    return model, AdamW(model.store, lr=LR)


def minibert_fns(model, opt, batch):
    return {"train": common.minibert_pretrain_step(model, opt, batch),
            "inference": common.minibert_inference(model.bert, batch)}


def memory_work(name, preset):
    """The memory probe's work in a fresh process: build ``name``'s model, two calls."""
    def work():
        config = BertConfig.preset(preset)
        batch = common.make_batch(config)
        if name.startswith("minibert"):
            fns = minibert_fns(*minibert_model(config), batch)
        else:
            torch.set_num_threads(1)                    # memory does not depend on threads
            fns = (common.hf_train_fns(common.hf_pretrain(config), batch) if "train" in name
                   else {"inference": common.hf_inference_fn(common.hf_encoder(config), batch)})
        fn = fns[name.split(" ", 1)[1]]
        fn()
        fn()
    return work


def run_preset(preset, args):
    """Check, time, measure and profile one preset; returns its JSON entry."""
    config = BertConfig.preset(preset)
    batch = common.make_batch(config)
    entry = {"preset": preset, "config": config.to_dict(), "flops": step_flops(config)}
    model, opt = minibert_model(config)
    fns = {"minibert " + k: f for k, f in minibert_fns(model, opt, batch).items()}
    if torch is not None:
        entry["check"] = common.check_pretraining(config, batch)
        fns.update({"hf " + k: f for k, f in
                    common.hf_train_fns(common.hf_pretrain(config), batch).items()})
        fns["hf inference"] = common.hf_inference_fn(common.hf_encoder(config), batch)
    rounds = common.time_rounds(fns, args.repeat, warmup=1, settle_s=common.SETTLE_S,
                                warm_s=common.WARM_S, collect=True)
    entry["times_ms"] = {k: statistics.median(v) for k, v in rounds.items()}
    entry["times_ms_all"] = rounds
    entry["peak_rss_mib_above_start"] = {
        name: memory.peak_in_fresh_process(__file__, ["--memory-of", name, "--presets", preset,
                                                      "--threads", "1"])
        for name in fns}
    entry["speedups"] = common.speedups(entry["times_ms"], lambda k: "minibert " + (
        "inference" if "inference" in k else "train"))
    forward_backward = common.minibert_pretrain_step(model, None, batch)
    prof = profiling.profile_step(forward_backward, opt, max(2, args.repeat // 2))
    entry["profile"] = prof.to_dict()
    return entry


def summary(entry, sgemm):
    """The headline numbers of one preset, against the SGEMM rate ``sgemm``; the profile's
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


# --------------------------------------------------------------------------- the run


def run(args, notes):
    threads = args.threads
    numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
    if torch is not None:
        torch.set_num_threads(threads)
    ops.set_readable_ops(args.readable)
    command = common.command_line()
    versions = common.library_versions("numpy", "numba", "torch", "transformers")
    device = dict(common.cpu_device(), threads=threads)
    notes = list(notes)
    if torch is None:
        notes.append("torch/transformers are not installed: only minibert is timed")
    common.print_header(command, versions, device, notes,
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
    common.write_json(args.out, {
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


# --------------------------------------------------------------------------- output


def print_preset(entry, sgemm):
    c = entry["config"]
    flops = entry["flops"]
    print(f"\n== {entry['preset']}: L={c['num_hidden_layers']} H={c['hidden_size']} "
          f"A={c['num_attention_heads']} I={c['intermediate_size']} V={c['vocab_size']}; "
          f"B={B} S={S}, {MASKED} masked per sequence; step {flops['train'] / 1e9:.1f} GFLOP, "
          f"inference {flops['inference'] / 1e9:.1f} GFLOP (matrix products)")
    if "check" in entry:
        common.print_check(entry["check"])

    def kind(name):
        return "inference" if name.endswith("inference") else "train"
    common.print_rows(entry["times_ms"], lambda n: "minibert " + kind(n),
                      lambda n: flops[kind(n)], entry["peak_rss_mib_above_start"], sgemm)


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


def main(argv=None):
    args = parse_args(argv)
    notes = configure_environment(args.threads)          # before NumPy and Numba are loaded
    import_libraries()
    if args.memory_of:
        print(json.dumps(memory.measure_peak(memory_work(args.memory_of, args.presets))))
    else:
        run(args, notes)


if __name__ == "__main__":
    sys.exit(main())
