"""benchmarks/common.py's interleaved timer and JSON writer, and benchmarks/profiling.py's
profiler (an op hook): what they do, not how fast anything is."""
import json
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import common  # noqa: E402
import profiling  # noqa: E402

from minibert.ops import hooks  # noqa: E402


def test_rounds_interleave_the_implementations_after_the_warmup():
    log = []
    fns = {"a": lambda x: log.append(("a", x)), "b": lambda x: log.append(("b", x))}
    seen = []
    times = common.time_rounds(fns, 3, args=(7,), warmup=2, before=seen.append, collect=True)
    assert log == [("a", 7)] * 2 + [("b", 7)] * 2 + [("a", 7), ("b", 7)] * 3
    assert seen == ["a", "b"] * 3
    assert set(times) == {"a", "b"} and all(len(t) == 3 and min(t) >= 0 for t in times.values())
    med = common.time_interleaved(fns, 3, args=(7,), warmup=0)
    assert set(med) == {"a", "b"}


def test_the_timer_measures_and_refuses_no_rounds():
    import time
    med = common.time_interleaved({"sleep": lambda: time.sleep(0.02)}, 3, warmup=0)
    assert 15 < med["sleep"] < 1000                                  # milliseconds
    with pytest.raises(ValueError, match="repeat=0"):
        common.time_rounds({"a": lambda: None}, 0)


def test_cuda_is_chosen_by_the_arguments(monkeypatch):
    used = []

    def fake_timer():
        def timed(call):
            used.append("cuda")
            call()
            return 1.0
        return timed
    monkeypatch.setattr(common, "_cuda_timer", fake_timer)
    cupy_like = type("ndarray", (), {"__module__": "cupy._core.core"})()
    assert common.time_interleaved({"f": lambda a: None}, 2, args=(cupy_like,)) == {"f": 1.0}
    assert used == ["cuda"] * 2
    common.time_interleaved({"f": lambda a: None}, 2, args=(np.ones(2),))
    assert used == ["cuda"] * 2                                      # NumPy: the host clock
    common.time_interleaved({"f": lambda: None}, 1, cuda=True)
    assert used == ["cuda"] * 3


def test_write_json_fills_command_device_and_versions(tmp_path):
    path = common.write_json(tmp_path / "sub" / "r.json", {"x": 1},
                             versions=common.library_versions("numpy"))
    got = json.loads(path.read_text())
    assert got["x"] == 1 and got["command"].startswith("python ")
    assert got["versions"]["numpy"] == np.__version__ and "cores" in got["device"]
    common.write_json(path, {"x": 2, "command": "mine", "device": {"gpu": "g"}})
    got = json.loads(path.read_text())
    assert got["command"] == "mine" and got["device"] == {"gpu": "g"}


def test_the_profiler_is_a_hook_that_times_every_op_and_the_optimizer():
    from minibert import BertConfig, BertForPreTraining
    from minibert.optim import AdamW
    config = BertConfig(vocab_size=30, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=16, max_position_embeddings=16)
    model = BertForPreTraining(config, seed=0)
    batch = common.make_batch(config, batch=2, seq=8, masked=2)
    prof = profiling.profile_step(common.minibert_pretrain_step(model, None, batch),
                                  AdamW(model.store, lr=1e-3), repeat=2)
    assert hooks.registered() == ()
    rows = {(r["op"], r["pass"]): r for r in prof.ops}
    assert rows[("AdamW", "step")]["calls"] == 1
    assert rows[("linear 8->24", "forward")]["calls"] == 1           # the one Q, K, V product
    assert rows[("linear 8->24", "forward")]["gflop"] == 2 * 16 * 8 * 24 / 1e9
    assert rows[("gelu", "backward")]["calls"] == 2      # the layer's and the MLM head's
    assert {op for op, _ in rows} >= {"embedding", "layernorm", "attention", "dropout",
                                      "cross_entropy", "tanh"}
    assert sum(r["ms"] for r in prof.ops) <= prof.step_ms
