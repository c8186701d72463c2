"""The backend: NumPy always; CuPy only when used."""
import subprocess
import sys

import numpy as np
import pytest

from minibert.backend import get_array_module, get_xp, scatter_add, to_device, to_numpy


def test_numpy_path():
    x = np.ones(3)
    assert get_array_module(x) is np and get_xp("cpu") is np
    assert to_numpy(to_device(x, "cpu")) is not None


def test_scatter_add_repeats():
    t = np.zeros((4, 2))
    scatter_add(t, np.array([1, 1, 3]), np.ones((3, 2)))
    assert t[1, 0] == 2 and t[3, 0] == 1 and t[0, 0] == 0


def test_unknown_device():
    with pytest.raises(ValueError, match="device='tpu'"):
        get_xp("tpu")


def test_import_does_not_touch_cupy_or_cuda():
    code = ("import sys, numpy as np, minibert; "
            "m = minibert.BertModel(minibert.BertConfig.preset('tiny')); "
            "m.forward(np.array([[1, 2, 3]])); "
            "assert 'cupy' not in sys.modules, 'cupy imported'; print('ok')")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0 and "ok" in r.stdout, r.stderr


def test_cpu_work_never_imports_numba_cuda():
    """The CUDA kernels load ``numba.cuda`` only when a GPU array arrives: a CPU forward and
    backward of the model (fused attention on the CPU included) leaves it unimported."""
    code = ("import sys, numpy as np, minibert, minibert.kernels; "
            "m = minibert.BertModel(minibert.BertConfig.preset('tiny')); "
            "out, cache = m.forward(np.array([[1, 2, 3]]), training=True); "
            "m.backward(cache, np.ones_like(out.last_hidden_state)); "
            "bad = [n for n in sys.modules if n.startswith(('numba.cuda', 'numba_cuda', 'cupy'))]; "
            "assert not bad, bad; print('ok')")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0 and "ok" in r.stdout, r.stderr


@pytest.mark.gpu
def test_gpu_roundtrip(xp):
    if xp is np:
        pytest.skip("GPU only")
    x = to_device(np.arange(5.0), "gpu")
    assert get_array_module(x) is xp
    assert np.array_equal(to_numpy(x), np.arange(5.0))


def test_kernels_subpackage_imports():
    """The kernels are the subpackage minibert/kernels/."""
    import minibert.kernels
    assert minibert.kernels.__doc__


def test_no_top_level_package_of_the_checkout_shadows_another():
    """Run from the repository root (``python -m pytest`` puts it first on sys.path), a
    top-level folder named like an installed package hides that package: transformers
    imports Hugging Face's "kernels" package, so minibert keeps its kernels inside
    ``minibert/``. Only minibert, tests and benchmarks may import from the root."""
    import os
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    packages = {d for d in os.listdir(root) if os.path.isfile(os.path.join(root, d, "__init__.py"))}
    assert packages <= {"minibert", "tests", "benchmarks"}, sorted(packages)


def test_gpu_arrays_are_recognised_and_never_reach_a_cpu_kernel():
    """A CuPy array (recognised by its type's module, without importing CuPy) is a device
    array; the CPU kernels' switch refuses it, the CUDA kernel's switch takes it where Numba's
    CUDA target is installed."""
    from minibert.backend import cuda_kernels_available, is_device_array
    from minibert.ops import readable_ops, use_cuda_kernel, use_kernel
    fake = type("ndarray", (), {"__module__": "cupy._core.core", "dtype": np.dtype(np.float32)})()
    assert is_device_array(fake) and not is_device_array(np.ones(2)) and not is_device_array(None)
    assert not use_kernel(fake, fake)
    assert use_cuda_kernel(fake, fake) == cuda_kernels_available()
    assert not use_cuda_kernel(fake, np.ones(2, np.float32))         # mixed devices
    with readable_ops():
        assert not use_cuda_kernel(fake, fake)
