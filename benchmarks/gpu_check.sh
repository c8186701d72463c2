#!/usr/bin/env bash
# The one-shot device check: on a machine with an NVIDIA GPU, in one command, with no network
# and within 8 minutes (the steps' limits add up to 7.5 minutes; aimed at 6), check the GPU
# path of this checkout and write the results.
#
#   bash benchmarks/gpu_check.sh [OUTDIR]        (default: benchmarks/results/)
#
# Without a GPU (nvidia-smi lists none) it prints one line and exits 77 at once: the code
# automake and ctest use for "skipped", so that nothing mistakes a check that did not run for
# one that passed (0) or failed (1).
#
# Needs (see docs/gpu.md): an NVIDIA driver; `python3` (or $PYTHON) with CuPy for the
# driver's CUDA (cupy-cuda12x or cupy-cuda13x: the step "device" says which it found),
# numba-cuda, torch built for CUDA, transformers, pytest and hypothesis, all already
# installed. Nothing is installed or downloaded: the checkout runs from PYTHONPATH (the
# equivalent of `pip install --no-deps -e .` without writing into that environment).
#
# Steps (each has its own time limit, and the whole run a budget: a step gets at most what is
# left; a failed step does not stop the others, and the script exits 1 if any failed):
#   device            90 s  CuPy wheel vs CUDA runtime vs driver, the device, the kernel probe;
#                           compiles every kernel the check uses ahead of launch, with explicit
#                           signatures (float32 and float64, D = 64), and reports the seconds,
#                           registers and local memory (Numba's own counts); fails if a float32
#                           attention kernel at D = 64 or a dropout / segment-sum kernel uses
#                           local memory
#   pytest-kernels   120 s  tests/test_gpu.py (attention at BERT sizes, CPU vs GPU step,
#                           identical bits, dropout and segment sum on CuPy, all at D = 64)
#                           and the dropout and segment-sum kernel tests on the device
#   pytest-ops        60 s  the gpu-marked op and model tests with the textbook ops on CuPy
#                           (MINIBERT_READABLE_OPS=1: no kernel compiles for their many head sizes)
#   bench-attention  120 s  benchmarks/bench_attention_gpu.py (peers, then 3 tile/lane settings)
#   bench-model       60 s  benchmarks/bench_model_gpu.py (BERT-base step against Hugging Face)
#
# Writes into OUTDIR: gpu_check.json (versions, the device step's report, each step's exit
# status, seconds and limit), bench_attention_gpu.json and bench_model_gpu.json (the
# benchmarks' own), gpu_check.log (everything printed). Prints one summary table last.
set -uo pipefail
cd "$(dirname "$0")/.."

if ! nvidia-smi -L 2>/dev/null | grep -q '^GPU '; then
    echo "gpu_check: no NVIDIA GPU here (nvidia-smi lists none): nothing checked (exit 77, skipped)"
    exit 77
fi

out="${1:-benchmarks/results}"
py="${PYTHON:-python3}"
budget="${GPU_CHECK_BUDGET:-450}"        # seconds for all steps together
mkdir -p "$out"
log="$out/gpu_check.log"
: > "$log"
rm -f "$out/gpu_check.json" "$out/gpu_check_device.json" "$out/bench_attention_gpu.json" \
    "$out/bench_model_gpu.json"          # a step that fails leaves no stale result behind
export CUPY_TF32=0                       # float32 is float32 on both sides
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"   # this checkout, not an installed minibert
export MINIBERT_CHECK_OUT="$out"
steps=()
start=$SECONDS

run_step() {                             # run_step NAME SECONDS COMMAND...
    local name=$1 limit=$2 t0=$SECONDS status left
    shift 2
    left=$((budget - (SECONDS - start)))
    if ((left < 15)); then
        echo "=== $name: skipped, ${left}s left of the ${budget}s budget" | tee -a "$log"
        steps+=("$name:skipped:0:$limit")
        return
    fi
    ((limit > left)) && limit=$left
    echo "=== $name (limit ${limit}s): $*" | tee -a "$log"
    timeout --kill-after=5 "$limit" "$@" 2>&1 | tee -a "$log"
    status=${PIPESTATUS[0]}
    steps+=("$name:$status:$((SECONDS - t0)):$limit")
    echo "=== $name: exit $status after $((SECONDS - t0))s" | tee -a "$log"
}

run_step device 90 "$py" - <<'PY'
"""CuPy, CUDA and the driver; the probe; every kernel the check uses compiled and measured."""
import json, os, time
from importlib import metadata

import numpy as np

import minibert
report = {"minibert": os.path.dirname(minibert.__file__)}
wheels = {d.metadata["Name"]: d.version for d in metadata.distributions()
          if (d.metadata["Name"] or "").lower().startswith("cupy")}
report["cupy_wheels"] = wheels
import cupy as cp
rt, drv = cp.cuda.runtime.runtimeGetVersion(), cp.cuda.runtime.driverGetVersion()
report.update(cupy=cp.__version__, cuda_runtime=rt, driver_cuda=drv,
              devices=cp.cuda.runtime.getDeviceCount())
props = cp.cuda.runtime.getDeviceProperties(0)
name = props["name"].decode() if isinstance(props["name"], bytes) else props["name"]
report["device"] = f"{name} (sm_{props['major']}{props['minor']})"
for pkg in ("numba", "numba-cuda", "torch", "transformers", "nvidia-nccl-cu12", "nvidia-nccl-cu13"):
    try:
        report[pkg] = metadata.version(pkg)
    except metadata.PackageNotFoundError:
        report[pkg] = None
print(json.dumps(report, indent=2))
problems = []
major = rt // 1000
wheel = next((w for w in wheels if w.lower() in ("cupy-cuda12x", "cupy-cuda13x")), None)
if wheel is None:
    problems.append(f"no cupy-cuda12x / cupy-cuda13x wheel (found {wheels or 'none'})")
elif f"cuda{major}x" not in wheel.lower():
    problems.append(f"{wheel} but CUDA runtime {rt}")
if drv < rt:
    problems.append(f"the driver supports CUDA {drv}, older than CuPy's runtime {rt}")
print(f"CuPy {cp.__version__} from {wheel} for CUDA {major} (runtime {rt}, driver {drv})")

from minibert.backend import cuda_kernels_available, cuda_kernels_problem
t0 = time.perf_counter()
ok = cuda_kernels_available()
report["probe"] = {"ok": ok, "seconds": round(time.perf_counter() - t0, 2),
                   "problem": cuda_kernels_problem()}
print("kernel probe:", report["probe"])
if not ok:
    problems.append(f"the CUDA kernels cannot run: {cuda_kernels_problem()}")
else:
    from minibert.kernels import (attention_cuda_resources, dropout_cuda, embedding_cuda,
                                  fused_attention_backward, fused_attention_forward)
    simulator = os.environ.get("NUMBA_ENABLE_CUDASIM") == "1"
    rows, resources, r = [], {}, np.random.default_rng(0)

    def timed(label, fn):
        t = time.perf_counter()
        result = fn()
        cp.cuda.Device().synchronize()
        rows.append({"what": label, "seconds": round(time.perf_counter() - t, 2)})
        return result

    def counts(compiled):
        return {"registers": int(compiled.regs_per_thread),
                "local_bytes": int(compiled.local_mem_per_thread),
                "shared_bytes": int(compiled.shared_mem_per_block)}

    # 1. compile ahead, with explicit signatures, every kernel the check uses (D = 64)
    for dt in ("float32", "float64"):
        if simulator:
            break
        rep = timed(f"compile attention {dt} D=64 (forward, dq, dkdv)",
                    lambda dt=dt: attention_cuda_resources.device_report(dt, 64))
        print(attention_cuda_resources.format_report(rep, f"attention {dt} D=64, Numba's counts"))
        for name, res in rep.items():
            resources[f"attention {name} {dt}"] = {
                "registers": res.registers, "local_bytes": res.stack_bytes,
                "shared_bytes": res.shared_bytes}
            if dt == "float32" and res.stack_bytes > 0:
                problems.append(f"attention {name} (float32, D=64) uses {res.stack_bytes} B "
                                "of local memory a thread (spills or a stack frame)")
        compiled = timed(f"compile dropout {dt}", lambda dt=dt: dropout_cuda.compile_eagerly(dt))
        resources[f"dropout {dt}"] = counts(compiled)
        chunk, span = timed(f"compile segment sum {dt}",
                            lambda dt=dt: embedding_cuda.compile_eagerly(dt))
        resources[f"segment chunks {dt}"], resources[f"segment spans {dt}"] = counts(chunk), counts(span)
    # 2. the first launches (nothing left to compile where the signatures match)
    for dt in (np.float32, np.float64):
        q = cp.asarray(r.standard_normal((1, 1, 70, 64)), dtype=dt)
        mask = cp.ones((1, 70), dtype=np.int64)

        def attention(q=q, mask=mask):
            out, lse = fused_attention_forward(q, q, q, mask, None, 0.1, 1, 2)
            fused_attention_backward(q, q, q, q, out, lse, mask, None, 0.1, 1, 2)
        name = np.dtype(dt).name
        timed(f"first launch attention {name} D=64", attention)
        timed(f"first launch dropout {name}", lambda q=q: dropout_cuda.forward(q, 0.1, 1, 2))
        timed(f"first launch segment sum {name}", lambda dt=dt: embedding_cuda.segment_sum_into(
            cp.zeros((5, 64), dt), cp.asarray(r.integers(0, 5, 300)), cp.ones((300, 64), dt)))
    report["compile"], report["resources"] = rows, resources
    print(f"\n{'compile and first launch':<52} seconds")
    for row in rows:
        print(f"{row['what']:<52} {row['seconds']:7.2f}")
    print(f"\n{'kernel':<28} {'registers':>9} {'local B':>8} {'shared B':>9}")
    for name, c in resources.items():
        print(f"{name:<28} {c['registers']:>9} {c['local_bytes']:>8} {c['shared_bytes']:>9}")
        if not name.startswith("attention") and c["local_bytes"] > 0:
            problems.append(f"{name} uses {c['local_bytes']} B of local memory a thread")
report["problems"] = problems
with open(os.path.join(os.environ["MINIBERT_CHECK_OUT"], "gpu_check_device.json"), "w") as fh:
    json.dump(report, fh, indent=2)
for p in problems:
    print("PROBLEM:", p)
raise SystemExit(1 if problems else 0)
PY

run_step pytest-kernels 120 "$py" -m pytest -q -x -p no:cacheprovider tests/test_gpu.py \
    tests/kernels/test_dropout_cuda.py tests/kernels/test_embedding_cuda.py
run_step pytest-ops 60 env MINIBERT_READABLE_OPS=1 "$py" -m pytest -q -p no:cacheprovider -m gpu \
    tests --ignore=tests/test_gpu.py --ignore=tests/kernels
run_step bench-attention 120 "$py" benchmarks/bench_attention_gpu.py --repeat 10 --sweep 3 \
    --out "$out/bench_attention_gpu.json"
run_step bench-model 60 "$py" benchmarks/bench_model_gpu.py --repeat 5 \
    --out "$out/bench_model_gpu.json"

# the JSON, then the summary table, last
"$py" - "$out" "$budget" "${steps[@]}" <<'PY' 2>&1 | tee -a "$log"
import json, os, sys
out, budget, steps = sys.argv[1], int(sys.argv[2]), []
for s in sys.argv[3:]:
    name, status, seconds, limit = s.rsplit(":", 3)
    steps.append({"step": name, "exit": None if status == "skipped" else int(status),
                  "seconds": int(seconds), "limit": int(limit)})

def load(name):
    try:
        with open(os.path.join(out, name)) as fh:
            return json.load(fh)
    except (OSError, ValueError):
        return None

info = {"device_step": load("gpu_check_device.json"), "steps": steps, "budget_s": budget}
with open(os.path.join(out, "gpu_check.json"), "w") as fh:
    json.dump(info, fh, indent=2)
rows = [(s["step"], "skipped" if s["exit"] is None else str(s["exit"]), f"{s['seconds']} s",
         f"{s['limit']} s") for s in steps]
att, model = load("bench_attention_gpu.json"), load("bench_model_gpu.json")
try:
    for entry in (att or {}).get("shapes", []):
        for label, times in entry.get("timings_ms", {}).items():
            for impl, t in times.items():
                rows.append((f"attention {tuple(entry['shape'])} {label}", impl,
                             f"{t['ms']:.3f} ms", f"{t['tflops']:.1f} TFLOP/s"))
except (AttributeError, KeyError, TypeError, ValueError) as exc:
    rows.append(("bench_attention_gpu.json", "layout not understood", repr(exc)[:40], ""))
try:
    for impl, t in (model or {}).get("step_ms", {}).items():
        rows.append((f"BERT-{model.get('preset')} step", impl, f"{t['ms']:.2f} ms",
                     f"HF / minibert {t['minibert_speedup']:.2f}"))
except (AttributeError, KeyError, TypeError, ValueError) as exc:
    rows.append(("bench_model_gpu.json", "layout not understood", repr(exc)[:40], ""))
passed = sum(s["exit"] == 0 for s in steps)
print(f"\ngpu_check: {passed} of {len(steps)} steps passed in "
      f"{sum(s['seconds'] for s in steps)} s; results in {out}/ (gpu_check.json)")
widths = [max(len(r[i]) for r in rows + [("what", "exit / impl", "time", "limit / rate")])
          for i in range(4)]
for r in [("what", "exit / impl", "time", "limit / rate")] + rows:
    print("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
PY

for s in "${steps[@]}"; do
    [[ "$(cut -d: -f2 <<< "$s")" == 0 ]] || exit 1
done
exit 0
