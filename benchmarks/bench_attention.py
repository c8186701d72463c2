"""Benchmark of the CPU attention kernels: the kernel ladder (v1 naive, v2 fused softmax,
v3 online softmax, v4 tiled, v5 = ``minibert.kernels``, the production kernel) against the
NumPy textbook op (``minibert.ops.attention``) and torch's ``scaled_dot_product_attention``.

v1-v3 run on one thread (they are serial); v4 runs with N threads; v5 runs with N threads,
again with one thread, and with every key real (a mask of ones: v5 then has no padded key
block to skip and does the same work as v1-v3) on one thread and on N, so that the table
separates the gain of the kernel, of the threads and of skipping padding. torch runs with
the padding mask and with a mask of ones; a row without padding is compared with torch
without padding (the "x torch" of the N-thread v5 row without padding is the kernel
against torch on batches with little padding).

    python benchmarks/bench_attention.py [--threads N] [--repeat R] [--quick] [--out FILE]

What it does, in order:

1. Sets the thread count of every library to N *before* importing them (OpenBLAS/OpenMP
   through the environment, then ``numba.set_num_threads`` and ``torch.set_num_threads``),
   and points Numba's cache to ~/.cache/minibert/numba if the kernels' directory is not
   writable (compiled kernels are cached either way: ``@njit(cache=True)``).
2. Measures the machine's SGEMM rate (``np.matmul`` of two 1024 x 1024 float32 matrices,
   median), with N threads and with one thread (in a subprocess), as the yardstick, and
   the cost of one float32 ``math.exp`` in a Numba loop (the softmax pays one per score);
   again after the timings, keeping the better of the two (a neighbour only slows down).
3. For each shape (B, A, S, D), float32, with a key padding mask whose real lengths are drawn
   from a seeded generator between S/4 and S: runs every implementation once and checks its
   out, dq, dk, dv (and lse) against the float64 textbook result, and stops if one is wrong.
   That first call also compiles the Numba kernels, so compilation is never timed.
4. Times forward and forward+backward, the implementations interleaved round by round
   (so that a noisy neighbour hurts them all alike). Each implementation's turn starts
   with a pause of 0.25 s (the idle threads of the previous library stop spinning) and
   0.1 s of untimed forwards (its own threads and the cores reach their steady speed), so
   the timed calls run back to back, as attention does layer after layer. Reports the
   median.
5. Measures the peak of traced memory of one forward+backward with ``tracemalloc`` (which
   sees the arrays NumPy and Numba-compiled code allocate, not torch's allocator), and
   states what each implementation saves for the backward.
6. Prints a table and writes benchmarks/results/bench_attention_cpu.json (or ``--out``).

FLOP counts (dense: the padded keys are counted as if real, so that every implementation
is credited with the same work and a ratio of GFLOP/s is a ratio of times):

    forward           4 B A S^2 D       S = QK^T (2 S^2 D) and O = P V (2 S^2 D)
    forward+backward 14 B A S^2 D       + backward 10 B A S^2 D: the recomputed QK^T,
                                          dV = Pd^T dO, dPd = dO V^T, dQ = dS K, dK = dS^T Q
                                          (2 S^2 D each; FlashAttention's 2.5x the forward)

The exponentials and the softmax arithmetic (O(S^2), not O(S^2 D)) are not counted. The
textbook op keeps P instead of recomputing QK^T, so it does 8 B A S^2 D of backward work
for the 10 credited: the formula favours it slightly. torch, on the CPU with this mask,
runs its own flash-attention kernel (the run records which), which recomputes like ours.
"""
from __future__ import annotations

import argparse
import gc
import math
import os
import statistics
import sys
import time
import tracemalloc
import types
from pathlib import Path

import common
from machine import SGEMM_N, configure_environment, sgemm_gflops

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULT = HERE / "results" / "bench_attention_cpu.json"

SHAPES = [(8, 12, 128, 64), (2, 12, 512, 64)]
QUICK_SHAPES = [(8, 12, 128, 64)]

# each implementation's turn: a pause, then untimed forwards (common.SETTLE_S / WARM_S)
SETTLE_S, WARM_S = common.SETTLE_S, common.WARM_S

# float32 results against the float64 textbook, relative to the largest entry: rounding
# gives ~1e-6 at these sizes (a few eps32 times sqrt(S + D)); a wrong kernel is off by 1e-2
# or more
CHECK_RTOL = 1e-4

# the names of the torch rows: with the padding mask, and with a mask of ones
TORCH, TORCH_DENSE = "torch sdpa", "torch sdpa (no padding)"

# imported by import_libraries(), once main() has set the thread environment
np = numba = torch = F = fused = attention = _exp_loop = None
attn_v1_naive = attn_v2_fused_softmax = attn_v3_online_softmax = attn_v4_tiled = None


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                    help="threads for BLAS, Numba and torch (default: all cores)")
    ap.add_argument("--repeat", type=int, default=7, help="timed runs per measurement (median)")
    ap.add_argument("--quick", action="store_true",
                    help="smoke run: the first shape only, 3 repeats")
    ap.add_argument("--out", type=Path, default=RESULT,
                    help=f"JSON file to write (default: {RESULT.relative_to(ROOT)})")
    args = ap.parse_args(argv)
    if args.threads < 1:
        ap.error(f"--threads={args.threads} must be >= 1")
    if args.repeat < 1:
        ap.error(f"--repeat={args.repeat} must be >= 1")
    if args.quick:
        args.repeat = min(args.repeat, 3)
    return args


def _rung(name):
    """A rung of the study ladder: ``kernels/<name>.py`` at the repository root, loaded by
    path (the folder is not a package) under its file name, as the tests load it
    (``tests/kernels/conftest.py``): Numba's cache records the module name, and a cache
    entry written under another name fails to load in the other process."""
    import importlib.util
    path = ROOT / "kernels" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module                 # Numba's cache wants a findable module
    spec.loader.exec_module(module)
    return module


def import_libraries():
    """NumPy, Numba, torch and minibert: imported after the thread environment is set."""
    global numba, np, fused, attn_v1_naive, attn_v2_fused_softmax, attn_v3_online_softmax
    global attn_v4_tiled, attention, torch, F
    import numba
    import numpy as np

    from minibert import kernels as fused
    from minibert.ops import attention
    attn_v1_naive, attn_v2_fused_softmax, attn_v3_online_softmax, attn_v4_tiled = (
        _rung(n) for n in ("attn_v1_naive", "attn_v2_fused_softmax", "attn_v3_online_softmax",
                           "attn_v4_tiled"))
    try:
        import torch
        import torch.nn.functional as F
    except ImportError:                          # torch is optional: that peer is skipped
        torch = F = None
    _define_exp_loop()


# --------------------------------------------------------------------------- machine






def measure_yardsticks(threads):
    """SGEMM GFLOP/s with 1 and ``threads`` threads and ns per exp, printed."""
    rates = {1: sgemm_gflops(1)}
    if threads > 1:
        rates[threads] = sgemm_gflops(threads)
    t_exp = exp_ns()
    print("SGEMM (np.matmul 1024^3 float32, median): "
          + ", ".join(f"{g:.1f} GFLOP/s with {n} thread{'s' if n > 1 else ''}"
                      for n, g in sorted(rates.items()))
          + f"; float32 exp in a Numba loop: {t_exp:.2f} ns")
    return {"sgemm": rates, "exp_ns": t_exp}




def _exp_loop_py(x, out):
    for i in range(x.size):
        out[i] = math.exp(x[i])


def _define_exp_loop():
    """The Numba-compiled ``_exp_loop`` (compiled on its first call, cached on disk)."""
    global _exp_loop
    _exp_loop = numba.njit(cache=True, fastmath={"reassoc", "contract"})(_exp_loop_py)


def exp_ns(n=1 << 20, repeat=9):
    """Median nanoseconds per float32 ``math.exp`` in a Numba loop (the kernels' softmax
    exponential: a scalar call, not vectorized without Intel's SVML), one thread."""
    x = -10 * np.random.default_rng(0).random(n, dtype=np.float32)
    out = np.empty_like(x)
    _exp_loop(x, out)
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        _exp_loop(x, out)
        times.append(time.perf_counter() - t0)
    return statistics.median(times) / n * 1e9


# --------------------------------------------------------------------------- problems


def make_problem(shape, seed=0):
    B, A, S, D = shape
    r = np.random.default_rng(seed)
    q, k, v, dout = (r.standard_normal(shape).astype(np.float32) for _ in range(4))
    lengths = r.integers(S // 4, S + 1, size=B)              # real tokens per sequence
    mask = (np.arange(S)[None, :] < lengths[:, None]).astype(np.int64)   # (B, S)
    return dict(q=q, k=k, v=v, dout=dout, mask=mask, lengths=[int(n) for n in lengths])


def reference(prob):
    """float64 textbook out, dq, dk, dv and lse from the float32 inputs."""
    q, k, v, dout = (prob[n].astype(np.float64) for n in ("q", "k", "v", "dout"))
    out, cache = attention.forward(q, k, v, attention_mask=prob["mask"])
    dq, dk, dv = attention.backward(dout, cache)
    D = q.shape[-1]
    s = (q @ k.swapaxes(-1, -2)) / np.sqrt(D)
    s = np.where(prob["mask"][:, None, None, :] == 1, s, -np.inf)            # (B, A, S, S)
    m = s.max(axis=-1, keepdims=True)
    lse = (m + np.log(np.exp(s - m).sum(axis=-1, keepdims=True)))[..., 0]     # (B, A, S)
    return dict(out=out, dq=dq, dk=dk, dv=dv, lse=lse)


# --------------------------------------------------------------------------- implementations


class Impl:
    """One implementation: ``fwd()`` and ``fwd_bwd()`` closures over a problem, the Numba
    thread count it runs with, and what it keeps for the backward."""

    def __init__(self, name, threads, make, saved, scratch, dense=False):
        self.name, self.threads, self.make = name, threads, make
        self.saved, self.scratch, self.dense = saved, scratch, dense


def ladder_impl(name, mod, threads, scratch, dense=False):
    """A rung of the ladder; ``dense=True`` runs it with every key real (mask of ones)."""
    def make(prob):
        q, k, v, dout, mask = (prob[n] for n in ("q", "k", "v", "dout", "mask"))
        if dense:
            mask = np.ones_like(mask)

        def fwd():
            return mod.forward(q, k, v, mask, None)

        def fwd_bwd():
            out, lse = mod.forward(q, k, v, mask, None)
            return (out,) + tuple(mod.backward(dout, q, k, v, out, lse, mask, None)) + (lse,)
        return fwd, fwd_bwd
    return Impl(name, threads, make, "lse (B, A, S)", scratch, dense)


def _v5():
    """v5, the production kernels, under a rung's names ``forward`` / ``backward``."""
    return types.SimpleNamespace(forward=fused.fused_attention_forward,
                                 backward=fused.fused_attention_backward)


def numpy_impl(threads):
    def make(prob):
        q, k, v, dout, mask = (prob[n] for n in ("q", "k", "v", "dout", "mask"))

        def fwd():
            return attention.forward(q, k, v, attention_mask=mask)

        def fwd_bwd():
            out, cache = attention.forward(q, k, v, attention_mask=mask)
            return (out,) + tuple(attention.backward(dout, cache))
        return fwd, fwd_bwd
    return Impl("numpy textbook", threads, make, "P (B, A, S, S)",
                "scores, exp, P, dP, dS: several (B, A, S, S)")


def torch_impl(threads, dense=False):
    """torch's SDPA with the padding mask, or with a mask of ones (``dense``)."""
    def make(prob):
        q, k, v, dout = (torch.from_numpy(prob[n]) for n in ("q", "k", "v", "dout"))
        mask = np.ones_like(prob["mask"]) if dense else prob["mask"]
        # boolean attn_mask, True = attend, broadcast over heads and queries: (B, 1, 1, S)
        attn_mask = torch.from_numpy(mask == 1)[:, None, None, :]
        leaves = [x.clone().requires_grad_(True) for x in (q, k, v)]

        def fwd():
            with torch.no_grad():
                return (F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask).numpy(),)

        def fwd_bwd():
            for x in leaves:
                x.grad = None
            out = F.scaled_dot_product_attention(*leaves, attn_mask=attn_mask)
            out.backward(dout)
            return (out.detach().numpy(),) + tuple(x.grad.numpy() for x in leaves)
        return fwd, fwd_bwd
    return Impl(TORCH_DENSE if dense else TORCH, threads, make, "see torch_backward_node", "n/a",
                dense)


def implementations(threads, itemsize=4):
    bk = attn_v3_online_softmax.BLOCK_K
    v5 = _v5()
    from minibert.kernels import attention_cpu
    bq4, bk4 = attn_v4_tiled.BLOCK_Q, attn_v4_tiled.BLOCK_K
    bq5, bk5 = attention_cpu.BLOCK_Q, attention_cpu.BLOCK_K
    scratch5 = (f"tiles of G heads x {bq5} queries x {bk5} keys per task, G = A / ceil("
                f"{attention_cpu.MIN_TASKS} / B) (see attention_cpu.py)")
    impls = [
        ladder_impl("v1 naive", attn_v1_naive, 1,
                    "fwd 1, bwd 2 (S, S) buffers per (b, a)"),
        ladder_impl("v2 fused softmax", attn_v2_fused_softmax, 1, "fwd 1, bwd 2 rows of S"),
        ladder_impl("v3 online softmax", attn_v3_online_softmax, 1,
                    f"fwd {bk} scores + D accumulators, bwd {bk}"),
        ladder_impl("v4 tiled", attn_v4_tiled, threads,
                    f"blocks of {bq4} queries x {bk4} keys per task "
                    "(see kernels/attn_v4_tiled.py)"),
        ladder_impl("v5 minibert.kernels", v5, threads, scratch5),
    ]
    if threads > 1:
        impls.append(ladder_impl("v5 (1 thread)", v5, 1, scratch5))
    # the same work as v1-v3 (nothing to skip): separates the kernel from the skipping
    impls.append(ladder_impl("v5 (1 thr, no padding)", v5, 1, scratch5, dense=True))
    if threads > 1:
        impls.append(ladder_impl("v5 (no padding)", v5, threads, scratch5, dense=True))
    impls.append(numpy_impl(threads))
    if torch is not None:
        impls += [torch_impl(threads), torch_impl(threads, dense=True)]
    return impls


# --------------------------------------------------------------------------- measurement


def check(impl, fns, ref):
    """Run forward+backward once (compiling Numba kernels) and compare with float64."""
    got = fns[1]()
    names = ["out", "dq", "dk", "dv", "lse"][:len(got)]
    errors = {}
    for name, a in zip(names, got):
        r = ref[name]
        finite = np.isfinite(r)
        err = float(np.abs(a[finite].astype(np.float64) - r[finite]).max())
        rel = err / float(np.abs(r[finite]).max())
        errors[name] = rel
        if not (rel <= CHECK_RTOL):
            raise SystemExit(f"WRONG RESULT: {impl.name} {name} differs from the float64 textbook "
                             f"by {rel:.2e} of its largest entry (allowed {CHECK_RTOL:.0e})")
    return errors


def set_threads(n):
    numba.set_num_threads(min(n, numba.config.NUMBA_NUM_THREADS))
    if torch is not None:
        torch.set_num_threads(n)


def measure(impls, fns, repeat, threads):
    """Milliseconds of every round per (implementation, pass), interleaved
    (``common.time_rounds``): each turn sets the implementation's thread count, pauses
    SETTLE_S so that the previous implementation's idle threads stop spinning (OpenBLAS
    spins ~0.1 s after a call), then brings it to its steady state with untimed calls for
    WARM_S: timed calls run back to back, as attention does layer after layer."""
    calls = {(im.name, p): fn for im in impls for p, fn in zip(("fwd", "fwd+bwd"), fns[im.name])}
    n_threads = {im.name: im.threads for im in impls}
    try:
        return common.time_rounds(calls, repeat, warmup=0, settle_s=SETTLE_S, warm_s=WARM_S,
                                  before=lambda key: set_threads(n_threads[key[0]]),
                                  collect=True)
    finally:
        set_threads(threads)


def traced_peak_mib(fn):
    """Peak of tracemalloc-traced memory (NumPy and Numba arrays) during ``fn()`` above what was
    allocated before, and the size of what ``fn`` returned (allocated during the call, so
    part of the peak): ``(peak_mib, outputs_mib)``."""
    gc.collect()
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    result = fn()
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    outputs = sum(x.nbytes for x in result)
    return (peak - base) / 2**20, outputs / 2**20


# --------------------------------------------------------------------------- main


def main(argv=None):
    args = parse_args(argv)
    notes = configure_environment(args.threads)          # before NumPy and Numba are loaded
    import_libraries()
    threads = args.threads
    set_threads(threads)
    shapes = QUICK_SHAPES if args.quick else SHAPES
    command = common.command_line()
    versions = common.library_versions("numpy", "numba", "torch")
    device = dict(common.cpu_device(), threads=threads)
    if torch is None:
        notes.append("torch is not installed: the torch sdpa peer is skipped")
    print(f"command: {command}")
    plural = "s" if threads > 1 else ""
    print(f"cpu: {device['cpu']}, {device['cores']} cores, {threads} thread{plural}; "
          f"numpy {versions['numpy']}, numba {versions['numba']}, torch {versions['torch']}")
    for note in notes:
        print(f"note: {note}")

    # the yardsticks, measured before and again after the timings (see measure_yardsticks)
    start = measure_yardsticks(threads)

    if torch is not None:
        # which SDPA kernel torch picks for a boolean mask on the CPU (its backward node)
        t = torch.zeros((1, 1, 8, 8), requires_grad=True)
        node = F.scaled_dot_product_attention(t, t, t, attn_mask=torch.ones(
            (1, 1, 1, 8), dtype=torch.bool)).grad_fn
        versions["torch_backward_node"] = type(node).__name__
        print(f"torch sdpa backward node: {versions['torch_backward_node']}")

    impls = implementations(threads)
    rows, memory, checks, problems = [], [], [], []
    for shape in shapes:
        B, A, S, D = shape
        prob = make_problem(shape)
        real_fraction = sum(prob["lengths"]) / (B * S)
        problems.append({"shape": list(shape), "real_lengths": prob["lengths"],
                         "real_key_fraction": real_fraction})
        print(f"\n(B, A, S, D) = {shape}, float32, real lengths {prob['lengths']} "
              f"(seeded, between S/4 and S: {100 * real_fraction:.0f}% of the keys are real; "
              "v4 and v5 skip padded key blocks, v1-v3 do not), dropout off")
        refs = {False: reference(prob),
                True: reference(dict(prob, mask=np.ones_like(prob["mask"])))}
        fns = {}
        for im in impls:
            fns[im.name] = im.make(prob)
            set_threads(im.threads)
            err = check(im, fns[im.name], refs[im.dense])
            checks.append({"impl": im.name, "shape": list(shape), "max_rel_error": err})
        set_threads(threads)
        print("  correctness: every implementation within "
              f"{CHECK_RTOL:.0e} (relative) of the float64 textbook; largest "
              + ", ".join(f"{c['impl']} {max(c['max_rel_error'].values()):.1e}"
                          for c in checks[-len(impls):]))
        all_times = measure(impls, fns, args.repeat, threads)
        med = {key: statistics.median(v) / 1e3 for key, v in all_times.items()}     # seconds
        flops = {"fwd": 4 * B * A * S * S * D, "fwd+bwd": 14 * B * A * S * S * D}
        for im in impls:
            set_threads(im.threads)
            peak = outputs = None
            if im.name not in (TORCH, TORCH_DENSE):       # torch's allocator is not traced
                peak, outputs = traced_peak_mib(fns[im.name][1])
            memory.append({"impl": im.name, "shape": list(shape), "traced_peak_mib_fwd_bwd": peak,
                           "of_which_outputs_mib": outputs, "saved_for_backward": im.saved,
                           "kernel_scratch": im.scratch})
            for p in ("fwd", "fwd+bwd"):
                t = med[(im.name, p)]
                gflops = flops[p] / t / 1e9
                t_np = med[("numpy textbook", p)]
                # a row without padding against torch without padding
                t_torch = med.get((TORCH_DENSE if im.dense else TORCH, p))
                rows.append({
                    "impl": im.name, "shape": list(shape), "pass": p, "threads": im.threads,
                    "padding_mask": not im.dense,
                    "ms": t * 1e3, "ms_all": all_times[(im.name, p)],
                    "gflops": gflops, "speedup_vs_numpy": t_np / t,
                    "speedup_vs_torch": (t_torch / t) if t_torch else None,
                    "traced_peak_mib": peak})
        set_threads(threads)

    end = measure_yardsticks(threads)
    # a neighbour can only slow a yardstick down: the better of the two measurements is
    # the machine's rate
    sgemm_rate = {n: max(start["sgemm"][n], end["sgemm"][n]) for n in start["sgemm"]}
    t_exp = min(start["exp_ns"], end["exp_ns"])
    sgemm = {"n": SGEMM_N, "statistic": "median of 15, the better of start and end",
             **{f"gflops_{n}_thread{'s' if n > 1 else ''}": g for n, g in sgemm_rate.items()},
             "start": {str(n): g for n, g in start["sgemm"].items()},
             "end": {str(n): g for n, g in end["sgemm"].items()}}
    print("\nyardsticks (the better of start and end): SGEMM (np.matmul "
          f"{SGEMM_N}^3 float32, median) "
          + ", ".join(f"{g:.1f} GFLOP/s with {n} thread{'s' if n > 1 else ''}"
                      for n, g in sorted(sgemm_rate.items()))
          + f"; float32 exp in a Numba loop {t_exp:.2f} ns")
    if threads > 1:
        # the machine is shared: if a neighbour took a core, the N-thread rows ran on fewer
        # cores than they asked for (and so did their peers): say so, loudly
        for when, y in (("start", start), ("end", end)):
            scaling = y["sgemm"][threads] / y["sgemm"][1]
            if scaling < 0.8 * threads:
                msg = (f"at the {when} of the run SGEMM ran only {scaling:.2f}x faster with "
                       f"{threads} threads than with 1: the cores were not all free, and the "
                       f"{threads}-thread rows of this run are not a fair measurement")
                notes.append(msg)
                print("WARNING: " + msg)
    for r in rows:
        r["pct_sgemm"] = 100 * r["gflops"] / sgemm_rate.get(r["threads"], sgemm_rate[threads])
    for shape, pr in zip(shapes, problems):
        B, A, S, D = shape
        # the exponentials alone: one per (query, real key) in the forward, again in the
        # backward's recomputation (v4 and v5 take exp of real keys only)
        n_exp = A * S * sum(pr["real_lengths"])
        pr.update(exp_per_pass=n_exp, exp_ms_one_thread=n_exp * t_exp * 1e-6,
                  exp_ms_one_thread_dense=B * A * S * S * t_exp * 1e-6)
        print(f"\n(B, A, S, D) = {shape}, real lengths {pr['real_lengths']}")
        print_table([r for r in rows if r["shape"] == list(shape)], B, A, S, D)
        print(f"  exponentials alone, one thread, per pass: {pr['exp_ms_one_thread']:.1f} ms "
              f"for the real keys, {pr['exp_ms_one_thread_dense']:.1f} ms for all keys")
        print(f"  peak MiB: tracemalloc peak of one fwd+bwd (arrays allocated by NumPy and by "
              f"Numba-compiled code; torch's allocator is not traced), including the outputs "
              f"out, dq, dk, dv ({4 * B * A * S * D * 4 / 2**20:.1f} MiB)")

    saved = {"kernels (v1-v5)": "lse: B*A*S numbers",
             "numpy textbook": "P: B*A*S*S numbers (and the keep mask with dropout)"}
    print("\nsaved for the backward, float32, per shape: "
          + "; ".join(f"{s}: lse {s[0] * s[1] * s[2] * 4 / 2**20:.2f} MiB vs P "
                      f"{s[0] * s[1] * s[2] ** 2 * 4 / 2**20:.1f} MiB" for s in shapes))
    device["load_average_end"] = list(os.getloadavg())
    result = {
        "benchmark": "attention on the CPU: kernel ladder vs NumPy textbook vs torch sdpa",
        "command": command, "device": device, "versions": versions, "dtype": "float32",
        "repeat": args.repeat, "statistic": "median seconds of the repeats, interleaved",
        "flop_formula": {"fwd": "4*B*A*S^2*D", "fwd+bwd": "14*B*A*S^2*D",
                         "note": "dense count (padding not discounted); backward = recomputed "
                                 "QK^T, dV, dPd, dQ, dK at 2*S^2*D each"},
        "sgemm": sgemm, "exp_ns_one_thread": t_exp, "problems": problems, "dropout_p": 0.0,
        "pct_sgemm_note": "against the SGEMM rate with the implementation's own thread count "
                          "(1 for v1-v3 and 'v5 (1 thread)')",
        "speedup_note": "time of the peer / time of the implementation (>1: faster)",
        "memory_note": "tracemalloc sees the arrays allocated by NumPy and by Numba-compiled "
                       "code (inputs excluded, outputs included, see of_which_outputs_mib); "
                       "torch's allocator is not traced",
        "saved_for_backward": saved, "checks": checks, "results": rows, "memory": memory,
        "notes": notes,
    }
    common.write_json(args.out, result)


def print_table(rows, B, A, S, D):
    print(f"  GFLOP/s from fwd = 4*B*A*S^2*D = {4 * B * A * S * S * D / 1e9:.2f} GFLOP, "
          f"fwd+bwd = 14*B*A*S^2*D = {14 * B * A * S * S * D / 1e9:.2f} GFLOP (dense); "
          "speedup = peer time / time; %SGEMM at the row's own thread count")
    head = (f"  {'variant':<25}{'thr':>4}{'pass':>9}{'ms':>10}{'GFLOP/s':>9}{'%SGEMM':>8}"
            f"{'x numpy':>9}{'x torch':>9}{'peak MiB':>10}")
    print(head)
    print("  " + "-" * (len(head) - 2))
    for r in rows:
        torch_s = f"{r['speedup_vs_torch']:.2f}" if r["speedup_vs_torch"] else "-"
        peak = f"{r['traced_peak_mib']:.1f}" if r["traced_peak_mib"] is not None else "n/a"
        print(f"  {r['impl']:<25}{r['threads']:>4}{r['pass']:>9}{r['ms']:>10.2f}"
              f"{r['gflops']:>9.1f}{r['pct_sgemm']:>8.1f}{r['speedup_vs_numpy']:>9.2f}"
              f"{torch_s:>9}{peak:>10}")


if __name__ == "__main__":
    sys.exit(main())
