#!/usr/bin/env bash
# The one-shot device check: on a machine with a GPU, in one command and under 8 minutes,
# install minibert, run the device tests and both GPU benchmarks, and write the results.
#
#   bash benchmarks/gpu_check.sh [OUTDIR]        (default: benchmarks/results/)
#
# Needs: an NVIDIA GPU and its driver (CUDA 12 or later), Python >= 3.10 with pip, and
# already installed (no network is assumed): CuPy for the driver's CUDA (cupy-cuda12x),
# numba-cuda (with its CUDA 12 libraries: numba-cuda[cu12]), torch built for CUDA,
# transformers, pytest and hypothesis. `pip install -e ".[gpu,test,ref]"` brings them
# where a package index is reachable.
#
# Writes into OUTDIR: gpu_check.json (device name, driver, CUDA runtime, CuPy, Numba,
# numba-cuda, torch versions, and each step's exit status and seconds),
# bench_attention_gpu.json and bench_model_gpu.json (the benchmarks' own JSON), and
# gpu_check.log (everything printed). Each step has its own time limit, so the whole run
# ends within 8 minutes even if a step hangs; a failed step does not stop the others, and
# the script exits non-zero if any failed.
set -uo pipefail
cd "$(dirname "$0")/.."
out="${1:-benchmarks/results}"
mkdir -p "$out"
log="$out/gpu_check.log"
: > "$log"
export CUPY_TF32=0                       # float32 is float32 on both sides
steps=()

run_step() {                             # run_step NAME SECONDS COMMAND...
    local name=$1 limit=$2 t0=$SECONDS status
    shift 2
    echo "=== $name (limit ${limit}s): $*" | tee -a "$log"
    timeout "$limit" "$@" 2>&1 | tee -a "$log"
    status=${PIPESTATUS[0]}
    steps+=("$name:$status:$((SECONDS - t0))")
    echo "=== $name: exit $status after $((SECONDS - t0))s" | tee -a "$log"
}

# 1. install: the checkout, without touching the installed GPU libraries (no network)
run_step install 60 python -m pip install --quiet --no-deps --no-build-isolation -e .
# 2. does the GPU answer, and can Numba reach it through CuPy?
run_step device 60 python -c "
import cupy, numba.cuda, minibert
from minibert.backend import gpu_available
assert gpu_available(), 'no CUDA device answers cupy.cuda.runtime.getDeviceCount()'
assert numba.cuda.is_available(), 'numba.cuda sees no GPU'
print('GPU:', cupy.cuda.runtime.getDeviceProperties(0)['name'])"
# 3. the device tests: the CUDA kernel at BERT sizes, CPU vs GPU training step, identical
#    bits, and the op and model tests over CuPy (marker gpu)
run_step pytest-gpu 200 python -m pytest -q -m gpu tests
# 4. the benchmarks (each checks correctness first)
run_step bench-attention 100 python benchmarks/bench_attention_gpu.py --out "$out/bench_attention_gpu.json"
run_step bench-model 100 python benchmarks/bench_model_gpu.py --out "$out/bench_model_gpu.json"

python - "$out/gpu_check.json" "${steps[@]}" <<'PY'
import json, platform, sys
info = {"python": platform.python_version()}
try:
    sys.path.insert(0, "benchmarks")
    from bench_attention_gpu import versions
    info.update(versions())
except Exception as exc:                                   # noqa: BLE001
    info["versions_error"] = f"{type(exc).__name__}: {exc}"
steps = []
for s in sys.argv[2:]:
    name, status, seconds = s.rsplit(":", 2)
    steps.append({"step": name, "exit": int(status), "seconds": int(seconds)})
info["steps"] = steps
with open(sys.argv[1], "w") as fh:
    json.dump(info, fh, indent=2)
print(json.dumps(info, indent=2))
PY

for s in "${steps[@]}"; do
    [[ "${s#*:}" == 0:* ]] || { echo "gpu_check: step ${s%%:*} failed" >&2; exit 1; }
done
echo "gpu_check: all steps passed; results in $out/"
