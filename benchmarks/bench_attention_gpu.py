"""Benchmark of the GPU attention kernel (``minibert/kernels/attention_cuda.py``, Numba CUDA
on CuPy arrays) against the CuPy textbook op (``minibert.ops.attention`` under
``readable_ops()``) and torch's ``scaled_dot_product_attention`` with its efficient
(memory-efficient attention) and math backends, on one GPU, in the same run.

    python benchmarks/bench_attention_gpu.py [--repeat R] [--quick] [--out FILE]
    python benchmarks/bench_attention_gpu.py --dry-run      # no GPU: the model and the sweep

Needs a CUDA GPU, CuPy, numba-cuda and torch built for CUDA. What it does, in order:

1. Pins TF32 off on both sides (``CUPY_TF32=0`` before CuPy is imported;
   ``torch.backends.cuda.matmul.allow_tf32 = False``, cuDNN too): float32 is float32.
2. For each shape (B, A, S, D) in (32, 12, 128, 64) and (8, 12, 512, 64), float32, with a
   key padding mask whose real lengths are drawn from a seeded generator between S/4 and
   S, runs every implementation's forward and backward once and checks out, dq, dk, dv
   against the float64 CuPy textbook result: the RMS error of each at most twice the
   float32 textbook's own. It stops if one is wrong. The first call also compiles the
   Numba kernels, so compilation is never timed.
3. Times forward and forward+backward with CUDA events (``common.time_interleaved``: CuPy's
   events around the work, on the default stream both libraries use), a few untimed runs
   first, the implementations interleaved round by round; reports the median.
4. Sweeps the kernel's launch settings (``SWEEP``: rows per block and tile ``block_q``,
   ``block_k``, and ``lanes`` a row; the first is the default of
   ``attention_cuda_launch.launch_config``): per setting and shape, checks out, dq, dk, dv as in
   2, prints Numba's resource counts of its kernels (registers, local memory), times each
   kernel (forward, dq, dkdv) on its own, and prints measured over expected, the expected
   time from the model below. One lease tells which setting to keep.
5. Prints a table and writes ``benchmarks/results/bench_attention_gpu.json`` (or
   ``--out``) with the device name, driver, CUDA runtime, CuPy, Numba, numba-cuda and torch
   versions and the command.

``--dry-run`` needs no GPU and no CuPy: it prints the sweep's launch sizes (threads,
shared memory, grid) and each kernel's FLOP and byte counts and expected times, and exits.

Expected time of a kernel (``expected_ms``): the larger of FLOPs over the FP32 (FP64)
CUDA-core rate, the kernels using no tensor cores, and the fewest bytes (each input read
once, each output written once) over the copy bandwidth. Per (b, a), counting a D-long dot
product or update as 2 S^2 D FLOPs over all (query, key) pairs:

    forward   2 products (s, P V)                 4 S^2 D    reads q, k, v; writes O, lse
    dq        s, dP twice (two sweeps), dQ       10 S^2 D    reads q, k, v, dO, lse;
                                                             writes dQ, 1/sigma, D_i
    dkdv      s, dP, dV, dK                       8 S^2 D    reads q, k, v, dO, lse,
                                                             1/sigma, D_i; writes dK, dV

The exps, the Philox draws and the shuffles are not counted, so measured over expected
also says what they and the re-reads of K and V (a tile per block) cost. Rates
(``DEVICES``): bandwidth as measured by a device-to-device copy on this workplace's
machines (3.0 TB/s H100, 4.3 TB/s H200), FP32 67 and FP64 34 TFLOP/s by the datasheet
(the two chips share the SMs); a device not listed is modelled as an H100.

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
import sys
from pathlib import Path

os.environ.setdefault("CUPY_TF32", "0")           # before CuPy is imported

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from common import time_interleaved  # noqa: E402  (CUDA events where CuPy arrays are args)

SHAPES = [(32, 12, 128, 64), (8, 12, 512, 64)]
#: (block_q, block_k, lanes) settings of the kernel sweep; None: the default.
SWEEP = [(None, None, None), (16, 16, 4), (16, 16, 8), (32, 16, 4), (64, 16, 2), (32, 32, 8)]
#: name -> (copy bandwidth bytes/s, FP32 FLOP/s, FP64 FLOP/s): see the docstring.
DEVICES = {"H100": (3.0e12, 67e12, 34e12), "H200": (4.3e12, 67e12, 34e12)}
QUICK_SHAPES = [(2, 4, 128, 64)]
CHECK_FACTOR = 2.0        # RMS error allowed, in units of the float32 textbook's own


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeat", type=int, default=20, help="timed rounds (median reported)")
    p.add_argument("--quick", action="store_true", help="one small shape, 3 rounds")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "bench_attention_gpu.json"))
    p.add_argument("--dry-run", action="store_true",
                   help="no GPU: print the sweep's launch sizes and the FLOP/byte model, exit")
    p.add_argument("--sweep", type=int, default=None, metavar="N",
                   help="run the first N settings of SWEEP (default all; 2 with --quick: each "
                        "setting compiles three kernels)")
    p.add_argument("--no-peers", action="store_true",
                   help="skip the comparison with the textbook op and torch; sweep only")
    return p.parse_args(argv)


# --------------------------------------------------------------------------- the model


def kernel_counts(shape, itemsize):
    """{kernel: (FLOPs, fewest bytes)} for one (B, A, S, D) problem: see the docstring."""
    B, A, S, D = shape
    pairs, vec, row = B * A * S * S, B * A * S * D * itemsize, B * A * S * itemsize
    return {"forward": (4 * pairs * D, 3 * vec + vec + row),
            "dq": (10 * pairs * D, 4 * vec + row + vec + 2 * row),
            "dkdv": (8 * pairs * D, 4 * vec + 3 * row + 2 * vec)}


def expected_ms(flops, nbytes, device="H100", itemsize=4):
    """max(FLOPs / rate, bytes / bandwidth) in milliseconds on ``device`` (``DEVICES``)."""
    bandwidth, fp32, fp64 = DEVICES.get(device, DEVICES["H100"])
    rate = fp32 if itemsize == 4 else fp64
    return 1e3 * max(flops / rate, nbytes / bandwidth)


def device_kind(name):
    """"H200" or "H100" from a device name (an unknown device is modelled as an H100)."""
    return "H200" if "H200" in name.upper() else "H100"


def sweep_configs(D=64, dtype="float32"):
    """[(setting, LaunchConfig or the ValueError it raises)] for ``SWEEP``."""
    from minibert.kernels.attention_cuda_launch import launch_config
    out = []
    for setting in SWEEP:
        try:
            out.append((setting, launch_config(D, dtype, *setting)))
        except ValueError as exc:
            out.append((setting, exc))
    return out


def dry_run(shapes, dtype="float32"):
    """The sweep's launch sizes and the model's expected times, with no GPU; returns the
    lines printed."""
    import numpy as np
    itemsize = np.dtype(dtype).itemsize
    lines = [f"sweep of attention_cuda launch settings ({dtype}, D = 64; first = default):"]
    for setting, cfg in sweep_configs(64, dtype):
        if isinstance(cfg, ValueError):
            lines.append(f"  {setting}: refused: {cfg}")
            continue
        sizes = ", ".join(f"{k} {cfg.threads(k)} threads {cfg.shared_bytes(k)} B smem"
                          for k in ("forward", "dq", "dkdv"))
        lines.append(f"  block_q={cfg.block_q} block_k={cfg.block_k} lanes={cfg.lanes}: {sizes}")
    for shape in shapes:
        lines.append(f"expected per kernel, {shape} {dtype}:")
        for name, (flops, nbytes) in kernel_counts(shape, itemsize).items():
            times = "  ".join(f"{dev} {expected_ms(flops, nbytes, dev, itemsize):.3f} ms"
                              for dev in DEVICES)
            lines.append(f"  {name:<8} {flops / 1e9:8.2f} GFLOP {nbytes / 1e6:8.2f} MB  {times}")
    print("\n".join(lines))
    return lines


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


def kernel_launches(tensors, mask, setting):
    """{kernel: fn()} launching each kernel of ``attention_cuda`` alone with ``setting``
    (block_q, block_k, lanes) on float32 CuPy tensors, the forward run once first so that
    the backward kernels read its lse; and the four results of one full run."""
    import cupy as cp
    import numpy as np

    from minibert.kernels import attention_cuda as ac
    from minibert.kernels import attention_cuda_launch as launch
    q, k, v, dout = tensors
    B, A, S, D = q.shape
    cfg = launch.launch_config(D, q.dtype, *setting)
    kern = ac.build_kernels(q.dtype.str, D, cfg.block_q, cfg.block_k, cfg.lanes, launch.MIN_BLOCKS)
    dev = launch.Device(q)
    key_bias, tiles = dev.mask_tables(mask, B, S, cfg.block_k, q.dtype)
    scalars = launch.kernel_scalars(q.dtype, D ** -0.5, 0.0, 0, 0) + (np.uint64(0),)
    out, lse = cp.empty_like(q), cp.empty((B, A, S), q.dtype)
    inv_sum, delta = cp.empty_like(lse), cp.empty_like(lse)
    dq, dk, dv = cp.empty_like(q), cp.empty_like(q), cp.empty_like(q)
    a = dev.arg
    launches = {
        "forward": lambda: kern.forward[cfg.grid("forward", B, A, S), cfg.threads("forward"),
                                        dev.stream](a(q), a(k), a(v), a(key_bias), a(tiles),
                                                    *scalars, a(out), a(lse)),
        "dq": lambda: kern.dq[cfg.grid("dq", B, A, S), cfg.threads("dq"), dev.stream](
            a(q), a(k), a(v), a(dout), a(lse), a(key_bias), a(tiles), *scalars, a(inv_sum),
            a(delta), a(dq)),
        "dkdv": lambda: kern.dkdv[cfg.grid("dkdv", B, A, S), cfg.threads("dkdv"), dev.stream](
            a(q), a(k), a(v), a(dout), a(lse), a(inv_sum), a(delta), a(key_bias), a(tiles),
            *scalars, a(dk), a(dv)),
    }
    for name in ("forward", "dq", "dkdv"):
        launches[name]()
    return cfg, launches, (out, dq, dk, dv)


def check_resources(report, budget=128):
    """The device's side of ``tests/kernels/test_attention_cuda_ptx.py``: the default
    float32 kernels at D = 64 use no local memory and at most ``budget`` registers a
    thread; stops the run otherwise."""
    for name, r in report.items():
        if r.stack_bytes or r.registers > budget:
            raise SystemExit(f"{name}: {r.registers} registers, {r.stack_bytes} bytes of local "
                             f"memory a thread; expected <= {budget} and 0 (ptxas said so)")


def sweep(shapes, repeat, device_name, n_settings=None):
    """Per shape and ``SWEEP`` setting: the check of ``check``, Numba's resource counts, each
    kernel's median time and measured over expected. Returns the JSON entries."""
    import cupy as cp

    from minibert.kernels import attention_cuda_resources as acr
    from minibert.ops import attention, readable_ops
    kind = device_kind(device_name)
    entries = []
    for setting, cfg in sweep_configs(64, "float32")[:n_settings]:
        if isinstance(cfg, ValueError):
            print(f"  {setting}: refused: {cfg}")
            continue
        report = acr.device_report("float32", 64, cfg.block_q, cfg.block_k, cfg.lanes)
        print(acr.format_report(report, f"\nblock_q={cfg.block_q} block_k={cfg.block_k} "
                                       f"lanes={cfg.lanes}: Numba's counts on {device_name}"))
        if setting == SWEEP[0]:
            check_resources(report)
        for shape in shapes:
            tensors, mask = problem(shape)
            with readable_ops():
                o64, cache = attention.forward(*tensors[:3], attention_mask=mask)
                ref = (o64,) + tuple(attention.backward(tensors[3], cache))
                t32 = [x.astype(cp.float32) for x in tensors]
                o32, c32 = attention.forward(*t32[:3], attention_mask=mask)
                book = (o32,) + tuple(attention.backward(t32[3], c32))
            _, launches, got = kernel_launches(t32, mask, setting)
            ratios = {}
            for tname, x, t, e in zip(("out", "dq", "dk", "dv"), got, book, ref):
                err = float(cp.sqrt(cp.mean((x.astype(cp.float64) - e) ** 2)))
                book_err = float(cp.sqrt(cp.mean((t.astype(cp.float64) - e) ** 2)))
                ratios[tname] = err / book_err if book_err else float(err == 0)
            wrong = [n for n, r in ratios.items() if not r <= CHECK_FACTOR]
            ms = time_interleaved(launches, repeat, cuda=True) if not wrong else {}
            entry = {"setting": {"block_q": cfg.block_q, "block_k": cfg.block_k,
                                 "lanes": cfg.lanes}, "shape": shape,
                     "error_ratio_vs_textbook": ratios, "wrong": wrong,
                     "resources": {n: r._asdict() for n, r in report.items()}, "kernels": {}}
            print(f"  {shape}: error / textbook's " + " ".join(f"{n} {r:.2f}" for n, r in
                                                             ratios.items())
                  + (f"  WRONG ({', '.join(wrong)}): not timed" if wrong else ""))
            for name, (flops, nbytes) in kernel_counts(shape, 4).items():
                if not ms:
                    break
                exp_ms = expected_ms(flops, nbytes, kind, 4)
                entry["kernels"][name] = {"ms": ms[name], "expected_ms": exp_ms,
                                          "measured_over_expected": ms[name] / exp_ms,
                                          "gflops": flops / 1e9, "mbytes": nbytes / 1e6}
                print(f"    {name:<8} {ms[name]:8.3f} ms  expected {exp_ms:7.3f} ms ({kind})  "
                      f"measured/expected {ms[name] / exp_ms:6.1f}")
            entries.append(entry)
    return entries


def main(argv=None):
    args = parse_args(argv)
    shapes, repeat = (QUICK_SHAPES, 3) if args.quick else (SHAPES, args.repeat)
    if args.dry_run:
        dry_run(shapes)
        return
    import cupy as cp
    import torch
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    results = {"command": " ".join([sys.executable] + sys.argv), "versions": versions(),
               "flops": {"forward": "4 B A S^2 D", "forward+backward": "14 B A S^2 D"},
               "tf32": False, "dtype": "float32", "shapes": []}
    print(f"{results['versions']['device']}: CuPy {cp.__version__}, torch {torch.__version__}")
    for shape in [] if args.no_peers else shapes:
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
    n_settings = args.sweep if args.sweep is not None else (2 if args.quick else None)
    results["sweep"] = sweep(shapes, repeat, results["versions"]["device"], n_settings)
    results["model"] = {"devices": DEVICES, "counts": {str(shape): kernel_counts(shape, 4)
                                                       for shape in shapes}}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
