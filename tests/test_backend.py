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


@pytest.mark.gpu
def test_gpu_roundtrip(xp):
    if xp is np:
        pytest.skip("GPU only")
    x = to_device(np.arange(5.0), "gpu")
    assert get_array_module(x) is xp
    assert np.array_equal(to_numpy(x), np.arange(5.0))


def test_kernels_subpackage_imports():
    """kernels/ sits at the repository root and is installed as minibert.kernels (package_dir
    in setup.cfg); with the editable install of the README it resolves from the checkout too."""
    import minibert.kernels
    assert minibert.kernels.__doc__


def test_kernels_directory_imports_as_a_top_level_package():
    """From the repository root, ``kernels/`` also shadows any top-level package of that name
    (transformers imports "kernels" to probe for Hugging Face's package of the name). It must
    then import cleanly: absolute ``minibert.`` imports only, and no ``__version__``, so the
    probe sees no usable version and moves on."""
    import os
    import subprocess
    import sys
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    code = "import kernels; assert not hasattr(kernels, '__version__'); print(kernels.__file__)"
    r = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
