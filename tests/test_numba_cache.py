"""minibert/_numba_cache.py: a compiled function's on-disk cache is keyed on every minibert
file its file imports, so that a change to a helper that LLVM inlined into it (``_blocks``'s
exp inside the attention row passes) recompiles it, while a change elsewhere does not."""
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import minibert
from minibert import _numba_cache
from minibert.kernels import attention_cpu

KERNELS = Path(attention_cpu.__file__).resolve().parent


def test_the_stamping_locators_are_installed_and_used():
    assert _numba_cache.INSTALLED
    locator = attention_cpu._forward_finish._cache._impl._locator
    assert isinstance(locator, _numba_cache._StampDependencies)
    stamp = locator.get_source_stamp()
    assert stamp[1] == _numba_cache.digest(_numba_cache.dependencies(KERNELS / "attention_cpu.py"))


def test_dependencies_follow_imports_through_modules():
    deps = {p.name for p in _numba_cache.dependencies(KERNELS / "attention_cpu.py")}
    assert {"attention_cpu.py", "_blocks.py", "philox_cpu.py", "_threads.py"} <= deps
    assert "philox_cpu.py" in {p.name for p in _numba_cache.dependencies(KERNELS / "_blocks.py")}
    assert "cli.py" not in deps                       # nothing the kernel does not import


_SCRIPT = textwrap.dedent("""
    import numpy as np
    from minibert.kernels import attention_cpu as ac
    print("file", ac.__file__)
    acc = np.ones((1, 2, 4), np.float32)
    m, l = np.zeros((1, 2), np.float32), np.ones((1, 2), np.float32)
    lse = np.empty((1, 2), np.float32)
    ac._forward_finish(acc, m, l, lse)
    print("misses", sum(ac._forward_finish.stats.cache_misses.values()))
""")


@pytest.mark.slow
def test_a_change_to_an_inlined_helper_recompiles_and_other_changes_do_not(tmp_path):
    """On a copy of the package: compiled once, then loaded; a comment added to _blocks.py
    (imported by attention_cpu.py) makes it compile again; one added to cli.py does not."""
    shutil.copytree(Path(minibert.__file__).parent, tmp_path / "minibert",
                    ignore=shutil.ignore_patterns("__pycache__"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("NUMBA_CACHE")}
    env["PYTHONPATH"] = str(tmp_path)

    def misses():
        out = subprocess.run([sys.executable, "-c", _SCRIPT], env=env, cwd=tmp_path,
                             capture_output=True, text=True, check=True).stdout
        assert out.split()[1].startswith(str(tmp_path)), out     # the copy, not the checkout
        return int(out.split("misses")[1])

    assert misses() == 1                              # compiled, saved
    assert misses() == 0                              # loaded
    with open(tmp_path / "minibert" / "cli.py", "a") as f:
        f.write("# a change the kernel does not import\n")
    assert misses() == 0
    with open(tmp_path / "minibert" / "kernels" / "_blocks.py", "a") as f:
        f.write("# a change to a helper the kernel imports\n")
    assert misses() == 1                              # the stale code is not reused
    assert misses() == 0
