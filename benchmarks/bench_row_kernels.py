"""One-thread timings of the layernorm and bias + GELU kernels against their readable ops,
at BERT-base sizes, float32 (the numbers quoted in minibert/kernels/layernorm_cpu.py and
minibert/kernels/gelu_cpu.py).

    export MALLOC_MMAP_THRESHOLD_=4294967296 MALLOC_TRIM_THRESHOLD_=4294967296
    python benchmarks/bench_row_kernels.py [layernorm|gelu|all]

(the variables keep glibc from returning freed temporaries to the system, whose page
faults would otherwise dominate the readable ops' times: see layernorm_cpu.py). Prints
only; the model benchmark (bench_model.py) is the one with peers and a JSON.
"""
from __future__ import annotations

import sys
import time

from machine import configure_environment

configure_environment(1)

import numba  # noqa: E402
import numpy as np  # noqa: E402

from minibert.ops import gelu, layernorm, readable_ops  # noqa: E402


def median_ms(f, repeats=21):
    f()                                                     # compilation, first touch
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        f()
        times.append(time.perf_counter() - t0)
    return 1e3 * float(np.median(times))


def time_layernorm(rng):
    N, H = 1024, 768
    x, residual, dy = (rng.standard_normal((N, H)).astype(np.float32) for _ in range(3))
    weight = (1.0 + 0.1 * rng.standard_normal(H)).astype(np.float32)
    bias = (0.1 * rng.standard_normal(H)).astype(np.float32)
    print(f"LayerNorm, float32 ({N}, {H}), one thread: ms")
    for res_name, res in (("no residual", None), ("residual", residual)):
        for name, readable in (("readable", True), ("kernel", False)):
            with readable_ops(readable):
                t_fwd = median_ms(lambda: layernorm.forward(x, weight, bias, residual=res))
                _, cache = layernorm.forward(x, weight, bias, residual=res)
                t_bwd = median_ms(lambda: layernorm.backward(dy, cache))
            print(f"  {res_name:11s} {name:9s} forward {t_fwd:6.2f}   backward {t_bwd:6.2f}")


def time_gelu(rng):
    shape = (1024, 3072)
    x = rng.standard_normal(shape).astype(np.float32)
    bias = (0.1 * rng.standard_normal(shape[-1])).astype(np.float32)
    dy = rng.standard_normal(shape).astype(np.float32)
    print(f"bias + GELU, float32 {shape}, one thread: ms (ns per element)")
    for approximate in ("none", "tanh"):
        for name, readable in (("readable", True), ("kernel", False)):
            with readable_ops(readable):
                t_fwd = median_ms(lambda: gelu.bias_forward(x, bias, approximate), repeats=11)
                _, cache = gelu.bias_forward(x, bias, approximate)
                t_bwd = median_ms(lambda: gelu.bias_backward(dy, cache), repeats=11)
            per = 1e6 / x.size
            print(f"  {approximate:5s} {name:9s} forward {t_fwd:7.2f} ({t_fwd * per:5.2f})   "
                  f"backward {t_bwd:7.2f} ({t_bwd * per:5.2f})")


def main(which):
    if which not in ("layernorm", "gelu", "all"):
        raise SystemExit(f"which={which!r} is not known, expected layernorm, gelu or all")
    numba.set_num_threads(1)           # run_rows's tasks then all run on the calling thread
    rng = np.random.default_rng(0)
    if which in ("layernorm", "all"):
        time_layernorm(rng)
    if which in ("gelu", "all"):
        time_gelu(rng)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "all")
