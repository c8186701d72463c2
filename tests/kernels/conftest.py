"""Fixtures of the kernel tests: ``rung``, which loads a rung of the study ladder by path.

The rungs live in ``kernels/`` at the repository root, a folder of standalone scripts and
not a package (a top-level ``kernels`` package would shadow Hugging Face's, which
transformers imports), so the tests cannot import them by name.
"""
import importlib.util
import pathlib
import sys

import pytest

#: The ladder's folder: kernels/ beside tests/
KERNELS = pathlib.Path(__file__).resolve().parents[2] / "kernels"


def load_rung(name):
    """The module of ``kernels/<name>.py`` (e.g. ``"attn_v1_naive"``), loaded once per
    process and registered in ``sys.modules`` under its file name, where Numba's cache and
    monkeypatch find it."""
    path = KERNELS / f"{name}.py"
    module = sys.modules.get(name)
    if module is not None and pathlib.Path(module.__file__).resolve() == path.resolve():
        return module
    if not path.is_file():
        raise FileNotFoundError(f"no rung {name!r}: {path} does not exist")
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


@pytest.fixture(scope="session")
def rung():
    """``rung(name)``: the module of ``kernels/<name>.py``."""
    return load_rung
