"""Device-to-host transfers of a training step on the GPU code path, counted without a GPU.

A subprocess puts ``tests/kernels/fake_cupy/`` (NumPy arrays whose type says CuPy) on its
path, so minibert takes every GPU branch, and wraps the stand-in's ways of reading an array
on the host (``get``, ``item``, ``tolist``, ``__bool__``, ``__float__``, ``__int__``,
``__index__``, ``__array__``) with a counter. On a real GPU each of them copies to the
host and waits for every queued kernel. The step must read the device at most once outside
logging (``Task.metrics``, which builds the step's record, is logging): the inputs' value
checks, the loss and the gradient norm in one transfer (``minibert.validation``).

Attention runs the textbook op here (no CUDA simulator needed); the fused CUDA path of the
same model runs in ``tests/kernels/test_model_cuda_sim.py``.
"""
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FAKE = ROOT / "tests" / "kernels" / "fake_cupy"

PRELUDE = r'''
import traceback
import numpy as np
import cupy

reads = {"count": 0, "on": False, "where": []}

def counted(name, method):
    def read(self, *args, **kwargs):
        if reads["on"]:
            reads["count"] += 1
            reads["where"].append(name + "\n" + "".join(traceback.format_stack(limit=6)[:-1]))
        return method(self, *args, **kwargs)
    return read

for name in ("get", "item", "tolist", "__bool__", "__float__", "__int__", "__index__",
             "__array__"):
    setattr(cupy.ndarray, name, counted(name, getattr(np.ndarray, name, None)
                                        or cupy.ndarray.get))

from minibert import BertConfig, BertForPreTraining, TrainConfig, Trainer
from minibert.backend import to_numpy

S, V, P, N = 12, 40, 3, 16

def data(n, seed):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(S // 2, S + 1, n)
    mask = (np.arange(S)[None] < lengths[:, None]).astype(np.int64)
    return dict(input_ids=rng.integers(5, V, (n, S)) * mask, attention_mask=mask,
                token_type_ids=np.zeros((n, S), np.int64),
                masked_lm_positions=np.stack([np.sort(rng.choice(np.arange(1, m), P, replace=False))
                                              for m in lengths]),
                masked_lm_ids=rng.integers(5, V, (n, P)),
                masked_lm_weights=np.ones((n, P), np.float32),
                next_sentence_labels=rng.integers(0, 2, n))

def trainer(device, out, max_grad_norm=1.0, train=None):
    cfg = BertConfig(vocab_size=V, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=32, max_position_embeddings=32,
                     attn_implementation="eager")
    model = BertForPreTraining(cfg, dtype=np.float64, seed=0, device=device)
    tc = TrainConfig(steps=3, batch_size=4, lr=1e-3, max_grad_norm=max_grad_norm)
    t = Trainer(model, data(N, 0) if train is None else train, None, out, tc)
    metrics = t.task.metrics

    def logging(*args, **kwargs):                   # the step's record: not counted
        on, reads["on"] = reads["on"], False
        try:
            return metrics(*args, **kwargs)
        finally:
            reads["on"] = on
    t.task.metrics = logging
    return t
'''

STEPS = PRELUDE + r'''
import tempfile
from minibert.ops import readable_ops

def close(a, b):
    return abs(a - b) <= 1e-12 * max(abs(a), abs(b))

for max_grad_norm in (1.0, None):
    gpu = trainer("gpu", tempfile.mkdtemp(), max_grad_norm)
    cpu = trainer("cpu", tempfile.mkdtemp(), max_grad_norm)
    assert type(gpu.model.store.data).__module__.startswith("cupy")
    for step in range(3):
        reads["count"], reads["where"], reads["on"] = 0, [], True
        rec = gpu.train_step()
        reads["on"] = False
        assert reads["count"] <= 1, (f"step {step}: {reads['count']} transfers\n"
                                     + "\n".join(reads["where"]))
        with readable_ops():                        # the same step on NumPy: same numbers
            ref = cpu.train_step()
        assert close(rec["loss"], ref["loss"]) and close(rec["grad_norm"], ref["grad_norm"]), (rec, ref)
    err = float(np.abs(to_numpy(gpu.model.store.data) - cpu.model.store.data).max())
    assert err <= 1e-12, f"parameters differ by {err:.3e}"
print("ok")
'''

BAD_IDS = PRELUDE + r'''
import tempfile
# -3: NumPy (the stand-in) reads it as V - 3, as CuPy wraps any index; the step runs on and
# the deferred check refuses it. V + 7: NumPy's gather fails first (CuPy's would not), and
# the failed check is what the error says.
for bad_id in (-3, V + 7):
    bad = data(N, 0)
    bad["input_ids"][:, 3] = bad_id
    t = trainer("gpu", tempfile.mkdtemp(), train=bad)
    before = to_numpy(t.model.store.data).copy()
    try:
        t.train_step()
    except ValueError as e:
        message = str(e)
    else:
        raise AssertionError("an out-of-range id passed")
    assert message.startswith(f"input_ids contains {bad_id}, out of range"), message
    assert np.array_equal(to_numpy(t.model.store.data), before), "parameters changed"
print("ok")
'''


def _run(script):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(FAKE), str(ROOT),
                                                       os.environ.get("PYTHONPATH", "")]))
    env.pop("NUMBA_ENABLE_CUDASIM", None)
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          env=env, cwd=str(ROOT), timeout=600)


def test_a_training_step_reads_the_device_at_most_once_outside_logging():
    r = _run(STEPS)
    assert r.returncode == 0 and "ok" in r.stdout, r.stdout[-2000:] + r.stderr[-6000:]


def test_deferred_checks_still_refuse_bad_input_before_the_update():
    r = _run(BAD_IDS)
    assert r.returncode == 0 and "ok" in r.stdout, r.stdout[-2000:] + r.stderr[-6000:]
