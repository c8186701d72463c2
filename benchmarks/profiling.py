"""Per-op profile of one minibert training step: where the step's time goes.

The profiler is an op hook (``minibert.ops.hooks``): every op's forward and backward calls
it, and it times each call between its pre and post callbacks. The hooks see only the
outermost op call (an op that calls another op counts once, the fused attention kernels
within the attention op). The optimizer is not an op: ``profile_step`` times its ``step()``
itself, after the forward and backward. What the ops do not cover (reshapes, residual adds,
gradient accumulation, Python) is the "model glue".

Nothing here prints: ``profile_step`` returns a ``StepProfile`` and ``summarize`` a dict.
Import this module after the thread environment is set (it imports minibert, hence NumPy).
"""
from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field

import minibert.ops as ops
from minibert.ops import hooks


@dataclass
class StepProfile:
    """One step's time (median over the profiled steps) and its rows, one per (op, pass):
    ``op``, ``pass``, ``calls``, ``ms`` (median), ``gflop`` (matrix products only)."""
    step_ms: float
    ops: list = field(default_factory=list)

    def to_dict(self):
        return {"step_ms": self.step_ms, "ops": self.ops}


class Profiler(hooks.OpHook):
    """Times every op call while registered (``with hooks.use(Profiler()):``); ``records``
    maps (op, pass) to [seconds, calls, matrix-product FLOPs]. The gelu op and its bias
    variant count as one row, "gelu"."""

    def __init__(self):
        self.records = {}
        self._t0 = 0.0

    def add(self, key, seconds, flops=0):
        r = self.records.setdefault(key, [0.0, 0, 0])
        r[0] += seconds
        r[1] += 1
        r[2] += flops

    def forward_pre(self, op, args, kwargs):
        self._t0 = time.perf_counter()          # the hooks see no nested call: one slot

    def forward_post(self, op, args, kwargs, result):
        self._done(op, "forward", args, kwargs)

    backward_pre = forward_pre

    def backward_post(self, op, args, kwargs, result):
        self._done(op, "backward", args, kwargs)

    def _done(self, op, direction, args, kwargs):
        dt = time.perf_counter() - self._t0
        if op == "linear":
            key, flops = self._linear_key(direction, args, kwargs)
        else:
            key, flops = (op.partition(".")[0], direction), 0
        self.add(key, dt, flops)

    @staticmethod
    def _linear_key(direction, args, kwargs):
        """("linear I->O", pass) and the pass's matrix-product FLOPs."""
        if direction == "forward":
            x = args[0] if args else kwargs["x"]
            w = args[1] if len(args) > 1 else kwargs["weight"]
        else:
            cache = args[1] if len(args) > 1 else kwargs["cache"]
            cache = cache.saved if isinstance(cache, ops.Fused) else cache
            x, w = cache[0], cache[1]
        n = x.size // x.shape[-1]
        o, i = w.shape
        flops = 2 * n * i * o * (1 if direction == "forward" else 2)
        return (f"linear {i}->{o}", direction), flops


def profile_step(forward_backward, optimizer, repeat) -> StepProfile:
    """Per-op milliseconds of a training step (median over ``repeat`` steps, after one
    untimed step) and the step's median total, timers included. A step is
    ``forward_backward()`` (the model's forward and backward, no optimizer step) then
    ``optimizer.step()``, which is timed as the row (optimizer class, "step")."""
    runs, totals = [], []
    prof = Profiler()
    step_key = (type(optimizer).__name__, "step")

    def step():
        forward_backward()
        t0 = time.perf_counter()
        optimizer.step()
        prof.add(step_key, time.perf_counter() - t0)

    with hooks.use(prof):
        step()                                                       # warm-up
        for _ in range(repeat):
            prof.records = {}
            t0 = time.perf_counter()
            step()
            totals.append(time.perf_counter() - t0)
            runs.append(prof.records)
    rows = []
    for key in sorted({k for r in runs for k in r}):
        secs = statistics.median(r.get(key, [0.0])[0] for r in runs)
        calls, flops = runs[0].get(key, [0, 0, 0])[1:]
        rows.append({"op": key[0], "pass": key[1], "calls": calls, "ms": secs * 1e3,
                     "gflop": flops / 1e9})
    return StepProfile(statistics.median(totals) * 1e3, rows)


def summarize(profile: StepProfile, sgemm_gflops) -> dict:
    """Rates against the SGEMM rate: each row (slowest first) gains ``gflops`` and
    ``pct_sgemm`` (None for ops without matrix products); plus the glue and the matrix
    products' total time and rate."""
    rows = []
    for r in sorted(profile.ops, key=lambda r: -r["ms"]):
        rate = r["gflop"] / (r["ms"] / 1e3) if r["gflop"] and r["ms"] else None
        rows.append(dict(r, pct_step=100 * r["ms"] / profile.step_ms, gflops=rate,
                         pct_sgemm=100 * rate / sgemm_gflops if rate else None))
    glue_ms = profile.step_ms - sum(r["ms"] for r in rows)
    gemm_ms = sum(r["ms"] for r in rows if r["gflop"])
    gemm_gflop = sum(r["gflop"] for r in rows)
    gemm_rate = gemm_gflop / gemm_ms * 1e3 if gemm_ms else None
    return {"step_ms": profile.step_ms, "rows": rows, "glue_ms": glue_ms,
            "glue_pct": 100 * glue_ms / profile.step_ms, "gemm_ms": gemm_ms,
            "gemm_gflops": gemm_rate,
            "gemm_pct_of_sgemm": 100 * gemm_rate / sgemm_gflops if gemm_rate else None}
