"""Shared fixtures: the backend grid (NumPy always, CuPy where a GPU answers) and the
hypothesis profiles (a derandomized one for CI)."""
import os

import numpy as np
import pytest
from hypothesis import HealthCheck, settings

from minibert.backend import gpu_available

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
