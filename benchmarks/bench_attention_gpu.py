"""Benchmark of the GPU attention kernel (``minibert/kernels/attention_cuda.py``, Numba CUDA
on CuPy arrays) against the CuPy textbook op (``minibert.ops.attention`` under
``readable_ops()``) and torch's ``scaled_dot_product_attention`` with its efficient
(memory-efficient attention) and math backends, on one GPU, in the same run.

    python benchmarks/bench_attention_gpu.py [--repeat R] [--quick] [--out FILE]

Needs a CUDA GPU, CuPy, numba-cuda and torch built for CUDA. What it does, in order:

1. Pins TF32 off on both sides (``CUPY_TF32=0`` before CuPy is imported;
   ``torch.backends.cuda.matmul.allow_tf32 = False``, cuDNN too): float32 is float32.
2. For each shape (B, A, S, D) in (32, 12, 128, 64) and (8, 12, 512, 64), float32, with a
   key padding mask whose real lengths are drawn from a seeded generator between S/4 and
   S, runs every implementation's forward and backward once and checks out, dq, dk, dv
   against the float64 CuPy textbook result: the RMS error of each at most twice the
   float32 textbook's own. It stops if one is wrong. The first call also compiles the
   Numba kernels, so compilation is never timed.
3. Times forward and forward+backward with CUDA events (``torch.cuda.Event`` around the
   work, on the stream both libraries use), a few untimed runs first, the implementations
   interleaved round by round; reports the median.
4. Prints a table and writes ``benchmarks/results/bench_attention_gpu.json`` (or
   ``--out``) with the device name, driver, CUDA runtime, CuPy, Numba, numba-cuda and torch
   versions and the command.

FLOP counts (dense: padded keys counted as if real, so a ratio of TFLOP/s is a ratio of
times):

    forward           4 B A S^2 D     QK^T and P V
    forward+backward 14 B A S^2 D     + QK^T recomputed, dV, dP, dQ, dK (2 S^2 D each)

(minibert's backward does two more products per (query, key) pair for its row statistics,
and torch's math backend keeps P instead of recomputing it; neither is credited.)
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
from pathlib import Path

os.environ.setdefault("CUPY_TF32", "0")           # before CuPy is imported

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SHAPES = [(32, 12, 128, 64), (8, 12, 512, 64)]
QUICK_SHAPES = [(2, 4, 128, 64)]
CHECK_FACTOR = 2.0        # RMS error allowed, in units of the float32 textbook's own


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeat", type=int, default=20, help="timed rounds (median reported)")
    p.add_argument("--quick", action="store_true", help="one small shape, 3 rounds")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "bench_attention_gpu.json"))
    return p.parse_args(argv)


def versions():
    """Device, driver and library versions for the JSON."""
    import cupy
    import numba
    import torch
    info = {"python": platform.python_version(), "cupy": cupy.__version__,
            "numba": numba.__version__, "torch": torch.__version__}
    try:
        from importlib.metadata import version
        info["numba-cuda"] = version("numba-cuda")
    except Exception:                                            # noqa: BLE001
        info["numba-cuda"] = "not installed"
    props = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id)
    info["device"] = props["name"].decode() if isinstance(props["name"], bytes) else props["name"]
    info["driver"] = cupy.cuda.runtime.driverGetVersion()
    info["cuda_runtime"] = cupy.cuda.runtime.runtimeGetVersion()
    info["torch_cuda"] = torch.version.cuda
    return info


def problem(shape, seed=0):
    """q, k, v, dout float64 CuPy arrays and a (B, S) 0/1 mask (lengths S/4 .. S)."""
    import cupy as cp
    import numpy as np
    B, A, S, D = shape
    r = np.random.default_rng(seed)
    tensors = [cp.asarray(r.standard_normal(shape)) for _ in range(4)]
    lengths = r.integers(S // 4, S + 1, B)
    mask = cp.asarray((np.arange(S)[None, :] < lengths[:, None]).astype(np.int64))
    return tensors, mask


def implementations(mask):
    """name -> fn(q, k, v, dout, backward) returning (out,) or (out, dq, dk, dv), on CuPy
    float32 arrays (torch's work through DLPack views of the same memory)."""
    import cupy as cp
    import torch
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from minibert.kernels import fused_attention_backward, fused_attention_forward
    from minibert.ops import attention, readable_ops

    def fused(q, k, v, dout, backward):
        out, lse = fused_attention_forward(q, k, v, mask, None)
        if not backward:
            return (out,)
        return (out,) + tuple(fused_attention_backward(dout, q, k, v, out, lse, mask, None))

    def textbook(q, k, v, dout, backward):
        with readable_ops():
            out, cache = attention.forward(q, k, v, attention_mask=mask)
            return (out,) + (tuple(attention.backward(dout, cache)) if backward else ())

    keep = torch.from_dlpack(mask).bool()[:, None, None, :]          # (B, 1, 1, S)

    def torch_sdpa(backend):
        def run(q, k, v, dout, backward):
            tq, tk, tv = (torch.from_dlpack(x).requires_grad_(backward) for x in (q, k, v))
            with sdpa_kernel(backend):
                out = torch.nn.functional.scaled_dot_product_attention(tq, tk, tv, attn_mask=keep)
            if not backward:
                return (cp.from_dlpack(out.detach()),)
            out.backward(torch.from_dlpack(dout))
            return tuple(cp.from_dlpack(t.detach()) for t in (out, tq.grad, tk.grad, tv.grad))
        return run

    return {"minibert fused (Numba CUDA)": fused, "cupy textbook": textbook,
            "torch sdpa efficient": torch_sdpa(SDPBackend.EFFICIENT_ATTENTION),
            "torch sdpa math": torch_sdpa(SDPBackend.MATH)}


def check(fns, tensors, mask):
    """Every implementation's float32 results against the float64 textbook: RMS error at
    most CHECK_FACTOR times the float32 textbook's. Returns the error ratios."""
    import cupy as cp

    from minibert.ops import attention, readable_ops
    q, k, v, dout = tensors
    with readable_ops():
        out, cache = attention.forward(q, k, v, attention_mask=mask)
        ref = (out,) + tuple(attention.backward(dout, cache))
    t32 = [x.astype(cp.float32) for x in tensors]
    book = fns["cupy textbook"](*t32, True)
    ratios = {}
    for name, fn in fns.items():
        got = fn(*t32, True)
        for tname, a, t, e in zip(("out", "dq", "dk", "dv"), got, book, ref):
            err = float(cp.sqrt(cp.mean((a.astype(cp.float64) - e) ** 2)))
            book_err = float(cp.sqrt(cp.mean((t.astype(cp.float64) - e) ** 2)))
            ratios[f"{name} {tname}"] = err / book_err if book_err else float(err == 0)
            if not err <= CHECK_FACTOR * book_err:
                raise SystemExit(f"{name} {tname}: RMS error {err:.3e} > {CHECK_FACTOR} x the "
                                 f"float32 textbook's {book_err:.3e}; not timing a wrong result")
    return ratios


def time_interleaved(fns, repeat, args=(), warmup=3):
    """Median milliseconds per implementation, each called as ``fn(*args)``: CUDA events
    around each call, rounds interleaved (``bench_model_gpu.py`` times its steps with it too)."""
    import torch
    for fn in fns.values():
        for _ in range(warmup):
            fn(*args)
    times = {name: [] for name in fns}
    for _ in range(repeat):
        for name, fn in fns.items():
            start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            torch.cuda.synchronize()
            start.record()
            fn(*args)
            stop.record()
            torch.cuda.synchronize()
            times[name].append(start.elapsed_time(stop))
    return {name: statistics.median(t) for name, t in times.items()}


def main(argv=None):
    args = parse_args(argv)
    import cupy as cp
    import torch
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    shapes, repeat = (QUICK_SHAPES, 3) if args.quick else (SHAPES, args.repeat)
    results = {"command": " ".join([sys.executable] + sys.argv), "versions": versions(),
               "flops": {"forward": "4 B A S^2 D", "forward+backward": "14 B A S^2 D"},
               "tf32": False, "dtype": "float32", "shapes": []}
    print(f"{results['versions']['device']}: CuPy {cp.__version__}, torch {torch.__version__}")
    for shape in shapes:
        tensors, mask = problem(shape)
        fns = implementations(mask)
        ratios = check(fns, tensors, mask)
        t32 = [x.astype(cp.float32) for x in tensors]
        B, A, S, D = shape
        entry = {"shape": shape, "error_ratio_vs_textbook": ratios, "timings_ms": {}}
        for label, backward, flops in (("forward", False, 4 * B * A * S * S * D),
                                       ("forward+backward", True, 14 * B * A * S * S * D)):
            ms = time_interleaved(fns, repeat, args=(*t32, backward))
            mine = ms["minibert fused (Numba CUDA)"]
            entry["timings_ms"][label] = {
                name: {"ms": t, "tflops": flops / (t * 1e-3) / 1e12, "minibert_speedup": t / mine}
                for name, t in ms.items()}
            print(f"\n{shape} {label}")
            for name, t in ms.items():
                print(f"  {name:<28} {t:9.3f} ms {flops / (t * 1e-3) / 1e12:7.2f} TFLOP/s"
                      f"  minibert is {t / mine:5.2f}x")
        results["shapes"].append(entry)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
