"""Shared fixtures: the backend grid (NumPy always, CuPy where a GPU answers), the
kernels/readable grid of the ops, and the hypothesis profiles (a derandomized one for CI).
Plain helper functions live in ``tests/helpers.py``."""
import os

import numpy as np
import pytest
from hypothesis import HealthCheck, settings

from minibert.backend import gpu_available
from minibert.ops import readable_ops

settings.register_profile("ci", derandomize=True, deadline=None, max_examples=25,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("dev", deadline=None, max_examples=25,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("ci" if os.environ.get("CI") else os.environ.get("HYPOTHESIS_PROFILE", "dev"))


def _backend_params():
    return [pytest.param("numpy", id="numpy"),
            pytest.param("cupy", id="cupy", marks=pytest.mark.gpu)]


@pytest.fixture(params=_backend_params())
def xp(request):
    """The array module under test: numpy, or cupy (marked ``gpu``, skipped without a device)."""
    if request.param == "numpy":
        return np
    if not gpu_available():
        pytest.skip("no CUDA device answers cupy.cuda.runtime.getDeviceCount()")
    import cupy
    return cupy


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


@pytest.fixture(params=["kernels", "readable"])
def ops_mode(request):
    """Run the test on the default path (the kernels) and on the readable ops (under
    ``readable_ops()``); the value is the mode's name. A module whose every test runs in both
    modes says ``pytestmark = pytest.mark.usefixtures("ops_mode")``."""
    with readable_ops(request.param == "readable"):
        yield request.param
