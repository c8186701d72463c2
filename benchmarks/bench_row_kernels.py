"""One-thread timings of the layernorm and bias + GELU kernels against their readable ops,
float32, at BERT-base sizes by default (1024 rows of 768 for layernorm, of 3072 for GELU).

    export MALLOC_MMAP_THRESHOLD_=4294967296 MALLOC_TRIM_THRESHOLD_=4294967296
    python benchmarks/bench_row_kernels.py [layernorm|gelu|all] [--rows N] [--repeat R]

(the variables keep glibc from returning freed temporaries to the system, whose page
faults would otherwise dominate the readable ops' times: see layernorm_cpu.py). The
readable op and the kernel are timed in the same run, interleaved round by round
(``common.time_interleaved``), the median reported. ``--rows 64 --repeat 3`` is a short
run. Prints only; the model benchmark (bench_model.py) is the one with peers and a JSON.
"""
from __future__ import annotations

import argparse
import sys

import common
from machine import configure_environment


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("which", nargs="?", default="all", choices=("layernorm", "gelu", "all"),
                    help="the kernels to time (default: all)")
    ap.add_argument("--rows", type=int, default=1024, help="rows of the inputs (default: 1024)")
    ap.add_argument("--repeat", type=int, default=21, help="timed rounds (median; default: 21)")
    args = ap.parse_args(argv)
    for name in ("rows", "repeat"):
        if getattr(args, name) < 1:
            ap.error(f"--{name}={getattr(args, name)} must be >= 1")
    return args


def _pair(make):
    """{"readable": ..., "kernel": ...}: ``make()``'s call under each setting of the ops.
    ``make`` builds the call's inputs (a backward's cache) under the same setting."""
    from minibert.ops import readable_ops
    fns = {}
    for name, readable in (("readable", True), ("kernel", False)):
        with readable_ops(readable):
            call = make()

        def run(call=call, readable=readable):
            with readable_ops(readable):
                call()
        fns[name] = run
    return fns


def time_layernorm(rng, rows, repeat):
    import numpy as np

    from minibert.ops import layernorm
    H = 768
    x, residual, dy = (rng.standard_normal((rows, H)).astype(np.float32) for _ in range(3))
    weight = (1.0 + 0.1 * rng.standard_normal(H)).astype(np.float32)
    bias = (0.1 * rng.standard_normal(H)).astype(np.float32)
    print(f"LayerNorm, float32 ({rows}, {H}), one thread: ms")
    for res_name, res in (("no residual", None), ("residual", residual)):
        def forward(res=res):
            return lambda: layernorm.forward(x, weight, bias, residual=res)

        def backward(res=res):
            _, cache = layernorm.forward(x, weight, bias, residual=res)
            return lambda: layernorm.backward(dy, cache)
        t_fwd = common.time_interleaved(_pair(forward), repeat, warmup=1)
        t_bwd = common.time_interleaved(_pair(backward), repeat, warmup=1)
        for name in t_fwd:
            print(f"  {res_name:11s} {name:9s} forward {t_fwd[name]:6.2f}   "
                  f"backward {t_bwd[name]:6.2f}")


def time_gelu(rng, rows, repeat):
    import numpy as np

    from minibert.ops import gelu
    shape = (rows, 3072)
    x = rng.standard_normal(shape).astype(np.float32)
    bias = (0.1 * rng.standard_normal(shape[-1])).astype(np.float32)
    dy = rng.standard_normal(shape).astype(np.float32)
    print(f"bias + GELU, float32 {shape}, one thread: ms (ns per element)")
    per = 1e6 / x.size
    for approximate in ("none", "tanh"):
        def forward(approximate=approximate):
            return lambda: gelu.bias_forward(x, bias, approximate)

        def backward(approximate=approximate):
            _, cache = gelu.bias_forward(x, bias, approximate)
            return lambda: gelu.bias_backward(dy, cache)
        out = np.empty_like(x)
        fns = _pair(forward)
        # inference: no slope, y into a buffer (the model writes over its input instead,
        # which repeated calls here would drive into subnormal numbers)
        fns["kernel, inference"] = lambda a=approximate, out=out: gelu.bias_forward(
            x, bias, a, grad=False, out=out)
        t_fwd = common.time_interleaved(fns, repeat, warmup=1)
        t_bwd = common.time_interleaved(_pair(backward), repeat, warmup=1)
        for name in t_fwd:
            f, b = t_fwd[name], t_bwd.get(name)
            back = "" if b is None else f"   backward {b:7.2f} ({b * per:5.2f})"
            print(f"  {approximate:5s} {name:17s} forward {f:7.2f} ({f * per:5.2f}){back}")


def main(argv=None):
    args = parse_args(argv)
    configure_environment(1)                         # before NumPy and Numba are loaded
    import numba
    import numpy as np
    numba.set_num_threads(1)           # run_rows's tasks then all run on the calling thread
    rng = np.random.default_rng(0)
    if args.which in ("layernorm", "all"):
        time_layernorm(rng, args.rows, args.repeat)
    if args.which in ("gelu", "all"):
        time_gelu(rng, args.rows, args.repeat)


if __name__ == "__main__":
    sys.exit(main())
