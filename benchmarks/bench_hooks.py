"""The cost of the op hooks (``minibert.ops.hooks``) when no hook is registered, and when
one is.

    python benchmarks/bench_hooks.py [--calls N] [--repeat R] [--step-repeat R] [--preset NAME]
                                     [--quick] [--out FILE]

Every public op function is decorated with ``@hooks.op(name)``; with no hook registered the
decorated function tests an empty tuple and calls the op. Its undecorated original is
``fn.__wrapped__``. In the same run, interleaved round by round (``common.time_rounds``),
the median of the rounds reported (many short turns: on a machine whose load changes, two
neighbouring turns see about the same load):

1. **per call, no hook**: ``N`` calls of the decorated function against ``N`` calls of its
   original, for a function that does nothing (the decorator's cost alone), for
   ``linear.forward`` on a small array (4 x 16 times 16 x 16, float64) and for
   ``tanh.forward`` on 16 numbers, both on the readable NumPy ops (the shortest op calls).
   The result: nanoseconds per call each way, their ratio and difference.
2. **a model step**: a ``BertForPreTraining`` forward and backward at the preset (default
   ``tiny``), B=8, S=128, dropout on, with no hook, with a hook that has no callbacks (the
   registry is not empty, so every op takes the hooked path) and with a hook counting the
   calls. The model calls its ops through their modules, which hold the decorated
   functions, so a step without the decorator cannot be run without replacing them; the
   no-hook cost of a step is computed instead: the number of op calls in a step times the
   decorator's cost per call (the no-op's difference in 1), against the step's time.

Threads: 1 for BLAS and Numba (``--threads``): the decorator's cost is Python's, and one
thread keeps the numbers steady on a shared machine. Prints a table and writes
``benchmarks/results/bench_hooks_cpu.json`` (or ``--out``).
"""
from __future__ import annotations

import argparse
import sys

import common
from machine import ROOT, configure_environment

RESULT = common.result_path("bench_hooks_cpu.json")


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--calls", type=int, default=200,
                    help="calls per timed turn of the per-call section (default: 200)")
    ap.add_argument("--repeat", type=int, default=201,
                    help="timed rounds of the per-call section (median; default: 201)")
    ap.add_argument("--step-repeat", type=int, default=11,
                    help="timed rounds of the model step (median; default: 11)")
    ap.add_argument("--preset", default="tiny", help="model of the step section (default: tiny)")
    ap.add_argument("--threads", type=int, default=1, help="BLAS and Numba threads (default: 1)")
    ap.add_argument("--quick", action="store_true",
                    help="short run: 100 calls, 11 rounds, 3 rounds of the step")
    ap.add_argument("--out", type=str, default=str(RESULT),
                    help=f"JSON file to write (default: {RESULT.relative_to(ROOT)})")
    args = ap.parse_args(argv)
    for name in ("calls", "repeat", "step_repeat", "threads"):
        if getattr(args, name) < 1:
            ap.error(f"--{name.replace('_', '-')}={getattr(args, name)} must be >= 1")
    if args.quick:
        args.calls, args.repeat = min(args.calls, 100), min(args.repeat, 11)
        args.step_repeat = min(args.step_repeat, 3)
    return args


def per_call(args):
    """ns per call, decorated and original, for a no-op, linear and tanh."""
    import numpy as np

    from minibert.ops import hooks, linear, readable_ops, tanh

    @hooks.op("nothing")
    def nothing(x):
        return x

    r = np.random.default_rng(0)
    x, w, b = r.standard_normal((4, 16)), r.standard_normal((16, 16)), r.standard_normal(16)
    cases = {"no-op": (nothing, (x,)), "linear.forward": (linear.forward, (x, w, b)),
             "tanh.forward": (tanh.forward, (x[0],))}
    rows = {}
    for label, (fn, call_args) in cases.items():
        def loop(f, a=call_args, n=args.calls):
            def run():
                for _ in range(n):
                    f(*a)
            return run
        fns = {"decorated": loop(fn), "original": loop(fn.__wrapped__)}
        with readable_ops():
            med = common.time_interleaved(fns, args.repeat, warmup=2, collect=True)
        dec, orig = (med[k] * 1e6 / args.calls for k in ("decorated", "original"))
        rows[label] = {"ns_decorated": dec, "ns_original": orig, "ratio": dec / orig,
                       "ns_added": dec - orig}
    return rows


class Counter:
    """A hook that counts the op calls of each phase."""

    def __init__(self):
        self.calls = {"forward": 0, "backward": 0}

    def forward_post(self, op, args, kwargs, result):
        self.calls["forward"] += 1

    def backward_post(self, op, args, kwargs, result):
        self.calls["backward"] += 1


def model_step(args, ns_added):
    """A model's forward+backward: no hook, an empty hook, a counting hook."""
    from minibert.config import BertConfig
    from minibert.heads import BertForPreTraining
    from minibert.ops import hooks

    config = BertConfig.preset(args.preset)
    model = BertForPreTraining(config)
    step = common.minibert_pretrain_step(model, None, common.make_batch(config))
    counter = Counter()

    def with_hook(hook):
        def run():
            with hooks.use(hook):
                step()
        return run
    fns = {"no hook": step, "empty hook": with_hook(object()), "counting hook": with_hook(counter)}
    repeat = args.step_repeat
    med = common.time_interleaved(fns, repeat, warmup=1, collect=True)
    calls = sum(counter.calls.values()) // (1 + repeat)          # the warm-up call counted too
    overhead_ms = calls * ns_added * 1e-6
    return {"preset": args.preset, "batch": {"B": common.B, "S": common.S},
            "step_ms": med, "op_calls_per_step": calls,
            "no_hook_overhead_ms_computed": overhead_ms,
            "no_hook_overhead_pct_of_step": 100 * overhead_ms / med["no hook"],
            "empty_hook_pct": 100 * (med["empty hook"] / med["no hook"] - 1),
            "counting_hook_pct": 100 * (med["counting hook"] / med["no hook"] - 1)}


def main(argv=None):
    args = parse_args(argv)
    notes = configure_environment(args.threads)          # before NumPy and Numba are loaded
    import numba
    numba.set_num_threads(min(args.threads, numba.config.NUMBA_NUM_THREADS))
    print(f"command: {common.command_line()}")
    rows = per_call(args)
    print(f"\nper call, no hook registered ({args.calls} calls a turn, median of {args.repeat} "
          "rounds, interleaved):")
    print(f"  {'function':<16}{'decorated ns':>14}{'original ns':>13}{'ratio':>8}{'added ns':>10}")
    for label, r in rows.items():
        print(f"  {label:<16}{r['ns_decorated']:>14.0f}{r['ns_original']:>13.0f}"
              f"{r['ratio']:>8.3f}{r['ns_added']:>10.0f}")
    step = model_step(args, rows["no-op"]["ns_added"])
    print(f"\nBertForPreTraining {args.preset} forward+backward, B={common.B} S={common.S} "
          f"({step['op_calls_per_step']} op calls):")
    for name, ms in step["step_ms"].items():
        print(f"  {name:<16}{ms:>10.2f} ms")
    print(f"  no hook: the decorators add {step['op_calls_per_step']} x "
          f"{rows['no-op']['ns_added']:.0f} ns = "
          f"{step['no_hook_overhead_ms_computed']:.4f} ms, "
          f"{step['no_hook_overhead_pct_of_step']:.4f}% of the step (computed)")
    common.write_json(args.out, {
        "benchmark": "cost of minibert.ops.hooks: decorated op vs its original with no hook; "
                     "a model step with no hook, an empty hook and a counting hook",
        "threads": args.threads, "calls_per_turn": args.calls, "repeat": args.repeat,
        "step_repeat": args.step_repeat,
        "statistic": "median of the rounds, interleaved", "per_call": rows, "model_step": step,
        "notes": notes},
        versions=common.library_versions("numpy", "numba"))


if __name__ == "__main__":
    sys.exit(main())
