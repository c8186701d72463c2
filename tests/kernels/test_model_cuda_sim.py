"""The whole model on the GPU code path, without a GPU: a pretraining step of
``BertForPreTraining(..., device="gpu")`` with dropout, run under the CUDA simulator with
``tests/kernels/fake_cupy/`` standing in for CuPy (NumPy arrays whose type says
``cupy._core.core.ndarray``), against the same step on NumPy.

What it proves: every op, the model, the heads, the losses and AdamW run through ``xp`` on
arrays minibert takes for CuPy arrays; attention, dropout and the embedding backward go to
their CUDA kernels (the simulator runs them), never to a CPU kernel; the GPU-side segment
sum, dropout bits and fused attention give the CPU step's loss, gradients and updated
parameters to float64 rounding, and a second step the same bits. And where the kernels
cannot run (a planted probe failure), the textbook ops take over with one warning. What it
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
import sys
import warnings

import numpy as np
from minibert import BertConfig, backend
from minibert.kernels import attention_cuda, attention_cuda_launch, dropout_cuda, embedding_cuda
from tests.helpers import pretraining_step

PROBE_FAILS = sys.argv[1] == "probe-fails"
PACKED = sys.argv[1] == "packed"          # unpad=True: the varlen kernels on the GPU path
if PROBE_FAILS:                   # as where NVVM is missing or the driver is older than the PTX
    def failing_probe():
        raise RuntimeError("planted: no NVVM")
    backend._probe_cuda_kernels = failing_probe

calls = {"forward": 0, "backward": 0, "varlen_forward": 0, "varlen_backward": 0, "dropout": 0,
         "segment_sum": 0}

def counted(module, name, key):
    original = getattr(module, name)
    def call(*a, **k):
        calls[key] += 1
        return original(*a, **k)
    setattr(module, name, call)

counted(attention_cuda, "attention_forward", "forward")
counted(attention_cuda, "attention_backward", "backward")
counted(attention_cuda_launch, "varlen_forward", "varlen_forward")
counted(attention_cuda_launch, "varlen_backward", "varlen_backward")
counted(dropout_cuda, "apply", "dropout")
counted(embedding_cuda, "segment_sum_into", "segment_sum")

def step(device):
    return pretraining_step(device, np.float64, lengths=(9, 5), n_predictions=3, repeated_ids=True,
                            unpad=True if PACKED and device == "gpu" else False)

loss_cpu, data_cpu, g_cpu, kind_cpu = step("cpu")
assert not any(calls.values()), calls
with warnings.catch_warnings(record=True) as said:
    warnings.simplefilter("always")
    loss_gpu, data_gpu, g_gpu, kind_gpu = step("gpu")
    loss_gpu2, data_gpu2, _, _ = step("gpu")           # the probe's answer is cached
assert kind_cpu == "numpy" and kind_gpu.startswith("cupy"), (kind_cpu, kind_gpu)
said = [str(w.message) for w in said if issubclass(w.category, RuntimeWarning)]
layers = BertConfig.preset("tiny").num_hidden_layers
if PROBE_FAILS:               # the textbook ops on the GPU arrays, said once
    assert not any(calls.values()), calls
    assert len(said) == 1 and "planted: no NVVM" in said[0], said
    assert backend.cuda_kernels_available() is False
else:                         # every op with a CUDA kernel ran it, twice per step
    assert said == [], said
    kind, other = ("varlen_", "") if PACKED else ("", "varlen_")
    assert calls[kind + "forward"] == calls[kind + "backward"] == 2 * layers, calls
    assert calls[other + "forward"] == calls[other + "backward"] == 0, calls
    # dropout sites: embeddings, two per layer, the pooler's none; forward and backward each
    assert calls["dropout"] == 2 * 2 * (1 + 2 * layers), calls
    assert calls["segment_sum"] >= 2 * 3, calls   # word, position and token-type tables
assert abs(loss_cpu - loss_gpu) <= 1e-12 * abs(loss_cpu), (loss_cpu, loss_gpu)
assert loss_gpu2 == loss_gpu and np.array_equal(data_gpu2, data_gpu)   # same bits again
for name in g_cpu:
    err = float(np.abs(g_gpu[name] - g_cpu[name]).max())
    assert err <= 1e-12, f"{name}: gradients differ by {err:.3e}"
err = float(np.abs(data_gpu - data_cpu).max())
assert err <= 1e-12, f"parameters after AdamW differ by {err:.3e}"
print("ok", loss_cpu, loss_gpu)
'''


def _run_step(mode):
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1",
               PYTHONPATH=os.pathsep.join([str(FAKE), str(ROOT), os.environ.get("PYTHONPATH", "")]))
    r = subprocess.run([sys.executable, "-c", STEP, mode], capture_output=True, text=True,
                       env=env, cwd=str(ROOT), timeout=600)
    assert r.returncode == 0 and "ok" in r.stdout, r.stdout[-2000:] + r.stderr[-4000:]


def test_pretraining_step_on_the_gpu_path_matches_numpy():
    """Attention, dropout and the embedding backward run their CUDA kernels (the simulator's),
    and the step matches NumPy's."""
    _run_step("kernels")


def test_padding_free_step_on_the_gpu_path_matches_numpy():
    """With ``unpad=True`` the packed batch runs the varlen CUDA kernels (the simulator's) and
    the rows form of the dropout kernel, and the step matches NumPy's padded one."""
    _run_step("packed")


def test_a_failing_probe_falls_back_to_the_textbook_ops_with_one_warning():
    """Where the probe kernel cannot run (planted failure), no CUDA kernel is called, one
    RuntimeWarning says why, and the step still matches NumPy's."""
    _run_step("probe-fails")
