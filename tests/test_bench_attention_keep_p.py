"""benchmarks/prototype_attention_keep_p.py computes the kernel's function: outputs and
gradients from the kept P equal the kernel's to float32 rounding, so that its timing
compares the same work."""
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import prototype_attention_keep_p as keep_p  # noqa: E402


@pytest.mark.parametrize("shape", [(2, 3, 17, 8), (1, 2, 128, 32)])
def test_keeping_p_gives_the_kernels_outputs_and_gradients(shape):
    r = np.random.default_rng(0)
    q, k, v, dout = (r.standard_normal(shape).astype(np.float32) for _ in range(4))
    assert keep_p.check(q, k, v, dout, 1 / np.sqrt(shape[-1])) < 1e-5   # float32: ~3e-7


def test_longer_than_one_key_block_is_refused():
    q = np.zeros((1, 1, keep_p.ac.BLOCK_K + 1, 4), np.float32)
    with pytest.raises(ValueError, match="one key block"):
        keep_p.forward_kept(q, q, q, 0.5)
