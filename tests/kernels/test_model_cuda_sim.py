"""The whole model on the GPU code path, without a GPU: a pretraining step of
``BertForPreTraining(..., device="gpu")`` with dropout, run under the CUDA simulator with
``tests/kernels/fake_cupy/`` standing in for CuPy (NumPy arrays whose type says
``cupy._core.core.ndarray``), against the same step on NumPy.

What it proves: every op, the model, the heads, the losses and AdamW run through ``xp`` on
arrays minibert takes for CuPy arrays; attention goes to the CUDA kernel (the simulator
runs it), never to a CPU kernel; the GPU-side scatter-add, dropout bits and fused attention
give the CPU step's loss, gradients and updated parameters to float64 rounding. What it
does not: CuPy's own API and arithmetic (the stand-in's functions are NumPy's), or speed.
Those need a GPU: ``tests/test_gpu.py``, ``benchmarks/gpu_check.sh``.

The stand-in must never be importable by the other tests, so the step runs in a
subprocess with the folder on its path::

    NUMBA_ENABLE_CUDASIM=1 python -m pytest -q tests/kernels/test_model_cuda_sim.py
"""
import os
import subprocess
import sys
from pathlib import Path

import pytest

if os.environ.get("NUMBA_ENABLE_CUDASIM", "0") != "1":
    pytest.skip("runs under the CUDA simulator: set NUMBA_ENABLE_CUDASIM=1",
                allow_module_level=True)

ROOT = Path(__file__).resolve().parents[2]
FAKE = Path(__file__).resolve().parent / "fake_cupy"

STEP = r'''
import numpy as np
from minibert import BertConfig
from minibert.kernels import attention_cuda
from tests.helpers import pretraining_step

calls = {"forward": 0, "backward": 0}
forward, backward = attention_cuda.attention_forward, attention_cuda.attention_backward

def counted_forward(*a, **k):
    calls["forward"] += 1
    return forward(*a, **k)

def counted_backward(*a, **k):
    calls["backward"] += 1
    return backward(*a, **k)

attention_cuda.attention_forward = counted_forward
attention_cuda.attention_backward = counted_backward

def step(device):
    return pretraining_step(device, np.float64, lengths=(9, 5), n_predictions=3, repeated_ids=True)

loss_cpu, data_cpu, g_cpu, kind_cpu = step("cpu")
assert calls == {"forward": 0, "backward": 0}, calls
loss_gpu, data_gpu, g_gpu, kind_gpu = step("gpu")
assert kind_cpu == "numpy" and kind_gpu.startswith("cupy"), (kind_cpu, kind_gpu)
layers = BertConfig.preset("tiny").num_hidden_layers
assert calls == {"forward": layers, "backward": layers}, calls
assert abs(loss_cpu - loss_gpu) <= 1e-12 * abs(loss_cpu), (loss_cpu, loss_gpu)
for name in g_cpu:
    err = float(np.abs(g_gpu[name] - g_cpu[name]).max())
    assert err <= 1e-12, f"{name}: gradients differ by {err:.3e}"
err = float(np.abs(data_gpu - data_cpu).max())
assert err <= 1e-12, f"parameters after AdamW differ by {err:.3e}"
print("ok", loss_cpu, loss_gpu)
'''


def test_pretraining_step_on_the_gpu_path_matches_numpy():
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1",
               PYTHONPATH=os.pathsep.join([str(FAKE), str(ROOT), os.environ.get("PYTHONPATH", "")]))
    r = subprocess.run([sys.executable, "-c", STEP], capture_output=True, text=True, env=env,
                       cwd=str(ROOT), timeout=600)
    assert r.returncode == 0 and "ok" in r.stdout, r.stdout[-2000:] + r.stderr[-4000:]
