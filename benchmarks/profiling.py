"""Per-op profile of one minibert training step: where the step's time goes.

Every op's forward and backward in ``minibert.ops`` (and the fused attention kernels, and
the optimizer's ``step``) is wrapped with a timer for the duration of the profile. The
model calls ``linear.forward`` and friends through their modules, so replacing the module
attributes reaches every call. Only the outermost wrapped call is timed: an op that calls
another op counts once. What the ops do not cover (reshapes, residual adds, gradient
accumulation, Python) is the "model glue".

Nothing here prints: ``profile_step`` returns a ``StepProfile`` and ``summarize`` a dict.
Import this module after the thread environment is set (it imports minibert, hence NumPy).
"""
from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field

import minibert.kernels as kernels
import minibert.ops as ops


@dataclass
class StepProfile:
    """One step's time (median over the profiled steps) and its rows, one per (op, pass):
    ``op``, ``pass``, ``calls``, ``ms`` (median), ``gflop`` (matrix products only)."""
    step_ms: float
    ops: list = field(default_factory=list)

    def to_dict(self):
        return {"step_ms": self.step_ms, "ops": self.ops}


class Profiler:
    """Installs timers on the ops (``install``) and takes them off (``remove``)."""

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


def profile_step(fn, optimizer, repeat) -> StepProfile:
    """Per-op milliseconds of the step ``fn`` (median over ``repeat`` steps, after one
    untimed step) and the step's median total, timers included."""
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
