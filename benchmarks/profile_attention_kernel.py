"""Where the padded CPU attention kernel's time goes: BLAS, the Numba row passes, the rest.

    python benchmarks/profile_attention_kernel.py [--shape B,A,S,D] [--calls N]

float32, no mask, no dropout, C-contiguous inputs. Two measurements:

1. One thread: the kernel's forward and backward, first plain (the times), then with a
   timer around every ``np.matmul`` call of ``attention_cpu`` (BLAS, ``_matmul_add``'s
   additions included), every row pass (``_forward_block``, ``_forward_finish``,
   ``_backward_block``), each a share of the instrumented time; "the rest" is the Python
   between them, the argument checks and tables, the copies of the accumulator into out.
2. N threads (``numba.get_num_threads()``, default the machine's): per pass, the wall
   time, the tasks' time summed over the threads, and the idle part: the time before the
   first task (argument tables, allocation, the pool's start), the gap between the ends of
   the threads' last tasks, the time after the last task.

The timers cost a microsecond or so a call, against calls of 0.1 to 1 ms. Medians over
``--calls`` calls; prints, writes nothing.
"""
from __future__ import annotations

import argparse
import statistics
import threading
import time
import types
from collections import Counter


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shape", default="32,12,128,32", help="B,A,S,D (default 32,12,128,32)")
    p.add_argument("--calls", type=int, default=10)
    return p.parse_args(argv)


def _timed(totals, name, fn):
    def call(*args, **kwargs):
        t0 = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            totals[name] += time.perf_counter() - t0
    return call


def breakdown(m, q, k, v, dout, calls):
    """{pass: (plain ms, {part: ms})} on one thread, ``m`` the module ``attention_cpu``."""
    import numpy as np
    fns = {"forward": lambda: m.attention_forward(q, k, v, None, 1 / np.sqrt(q.shape[-1]))}
    out, lse = fns["forward"]()
    fns["backward"] = lambda: m.attention_backward(dout, q, k, v, out, lse, None,
                                                   1 / np.sqrt(q.shape[-1]))
    result = {}
    names = ("_forward_block", "_forward_finish", "_backward_block")
    for pss, fn in fns.items():
        fn()
        plain = statistics.median(_wall(fn) for _ in range(calls))
        totals = Counter()
        saved = {n: getattr(m, n) for n in names}
        shim = types.SimpleNamespace(**{n: getattr(np, n) for n in dir(np) if not n.startswith("__")})
        shim.matmul = _timed(totals, "BLAS (np.matmul)", np.matmul)
        m.np = shim
        for n in names:
            setattr(m, n, _timed(totals, n, saved[n]))
        try:
            instrumented = sum(_wall(fn) for _ in range(calls)) / calls
        finally:
            m.np = np
            for n, f in saved.items():
                setattr(m, n, f)
        parts = {n: t / calls * 1e3 for n, t in totals.items() if t > 0}
        parts["the rest"] = instrumented * 1e3 - sum(parts.values())
        result[pss] = (plain * 1e3, instrumented * 1e3, parts)
    return result


def _wall(fn):
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def threads_profile(m, q, k, v, dout, calls):
    """{pass: {quantity: median ms}} with the tasks timed on whatever thread runs them."""
    import numpy as np
    scale = 1 / np.sqrt(q.shape[-1])
    events = []
    saved = m._forward_task, m._backward_task

    def wrap(task):
        def run(*args):
            t0 = time.perf_counter()
            task(*args)
            events.append((threading.get_ident(), t0, time.perf_counter()))
        return run
    m._forward_task, m._backward_task = wrap(saved[0]), wrap(saved[1])
    rows = {"forward": [], "backward": []}
    try:
        for _ in range(calls + 2):
            for pss in rows:
                events.clear()
                t0 = time.perf_counter()
                if pss == "forward":
                    out, lse = m.attention_forward(q, k, v, None, scale)
                else:
                    m.attention_backward(dout, q, k, v, out, lse, None, scale)
                t1 = time.perf_counter()
                ends = {}
                for tid, _, end in events:
                    ends[tid] = max(ends.get(tid, 0.0), end)
                rows[pss].append({
                    "wall": t1 - t0, "tasks (sum)": sum(e - s for _, s, e in events),
                    "before the first task": min(s for _, s, _ in events) - t0,
                    "between the threads' ends": max(ends.values()) - min(ends.values()),
                    "after the last task": t1 - max(ends.values())})
    finally:
        m._forward_task, m._backward_task = saved
    return {pss: {key: statistics.median(r[key] for r in rs[2:]) * 1e3 for key in rs[0]}
            for pss, rs in rows.items()}


def main(argv=None):
    args = parse_args(argv)
    import numba
    import numpy as np

    from minibert.kernels import attention_cpu as m
    B, A, S, D = (int(x) for x in args.shape.split(","))
    r = np.random.default_rng(0)
    q, k, v, dout = (r.standard_normal((B, A, S, D)).astype(np.float32) for _ in range(4))
    threads = numba.get_num_threads()
    numba.set_num_threads(1)
    print(f"(B, A, S, D) = {(B, A, S, D)}, float32, no mask; one thread, median of {args.calls}")
    for pss, (plain, instrumented, parts) in breakdown(m, q, k, v, dout, args.calls).items():
        print(f"  {pss}: {plain:.2f} ms ({instrumented:.2f} ms instrumented)")
        for name, ms in parts.items():
            print(f"    {name:22s} {ms:7.2f} ms  {100 * ms / instrumented:5.1f}%")
    numba.set_num_threads(threads)
    print(f"{threads} threads, median of {args.calls}")
    for pss, row in threads_profile(m, q, k, v, dout, args.calls).items():
        print(f"  {pss}: " + ", ".join(f"{key} {ms:.2f} ms" for key, ms in row.items()))


if __name__ == "__main__":
    main()
