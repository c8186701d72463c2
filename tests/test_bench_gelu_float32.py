"""benchmarks/prototype_gelu_float32.py: the float32-arithmetic GELU prototype computes
what its docstring says, within the error it states (3.7 ulp measured on 5.6 million points;
here a smaller grid must stay within 4), with the current kernel's bits at the special
values, and the exact a^2 split really happens (without it the error reaches 65 ulp)."""
import sys
from pathlib import Path

import numpy as np
import pytest

scipy_special = pytest.importorskip("scipy.special")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import prototype_gelu_float32 as proto  # noqa: E402

from minibert.kernels import gelu_cpu  # noqa: E402


def _ulps(z):
    z64 = z.astype(np.float64)
    ref = z64 * scipy_special.ndtr(z64)
    y = proto._rows(proto.gelu32_rows, z).astype(np.float64)
    return np.abs(y - ref) / proto._ulp32(ref)


def test_within_four_ulp_on_a_grid_with_both_tails():
    z = np.concatenate([np.linspace(-16, 16, 200_001),
                        np.linspace(-14.5, -12.0, 20_001)]).astype(np.float32)
    u = _ulps(z)
    assert u.max() < 4.0
    assert u[z >= 2].max() <= 0.55                  # the error lives at z < 2


def test_the_square_is_split_exactly():
    """Near z = -12.7 the rounding of a^2 alone costs tens of ulp: the FMA split removes it
    (a test that fails if the compiler folds fma(a, a, -a*a) to 0)."""
    z = np.linspace(-12.8, -12.6, 20_001).astype(np.float32)
    assert _ulps(z).max() < 4.0
    a = np.float32(1.1)
    assert proto._fma_demo(a) == np.float32(np.float64(a) * a - np.float32(a * a))


def test_special_values_have_the_current_kernels_bits():
    special = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, 1e-45, -1e-45, 3.4e38, -3.4e38,
                        14.6, -14.6], np.float32)
    ours = proto._rows(proto.gelu32_rows, special)
    theirs = gelu_cpu.bias_forward(special.reshape(1, -1), None, "none", grad=False)[0]
    np.testing.assert_array_equal(ours.view(np.int32), theirs.ravel().view(np.int32))
