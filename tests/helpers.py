"""Small helpers shared by the tests."""
import numpy as np


def to_np(a):
    """NumPy copy of a NumPy or CuPy array (for assertions)."""
    return a.get() if hasattr(a, "get") else np.asarray(a)


def max_abs_diff(a, b) -> float:
    return float(np.max(np.abs(to_np(a).astype(np.float64) - to_np(b).astype(np.float64)), initial=0.0))


def assert_close(name, actual, expected, atol=0.0, rtol=0.0):
    """Compare two tensors and name the tensor and its max difference on failure."""
    a = to_np(actual).astype(np.float64)
    e = to_np(expected).astype(np.float64)
    assert a.shape == e.shape, f"{name}: shape {a.shape} != expected {e.shape}"
    err = np.abs(a - e)
    bound = atol + rtol * np.abs(e)
    if not np.all(err <= bound):
        k = np.unravel_index(np.argmax(err - bound), err.shape)
        raise AssertionError(f"{name}: max abs diff {err.max():.3e} (atol {atol:.1e}, rtol {rtol:.1e}); "
                             f"worst at {k}: {a[k]!r} vs expected {e[k]!r}")
