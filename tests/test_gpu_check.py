"""``benchmarks/gpu_check.sh`` on a machine without a GPU: it exits at once with status 77
("skipped") and one line saying so, and writes nothing. (What it does with a GPU is run on
a device machine: docs/gpu.md.)"""
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_without_a_gpu_it_says_so_and_exits_77(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    # an nvidia-smi that finds no device, as on a machine with a driver and no GPU; the
    # PATH also hides any real one
    (bin_dir / "nvidia-smi").write_text("#!/bin/sh\necho 'No devices were found'\nexit 6\n")
    (bin_dir / "nvidia-smi").chmod(0o755)
    env = dict(os.environ, PATH=f"{bin_dir}{os.pathsep}/usr/bin{os.pathsep}/bin")
    out = tmp_path / "results"
    t0 = time.perf_counter()
    r = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), str(out)],
                       capture_output=True, text=True, env=env, timeout=60)
    seconds = time.perf_counter() - t0
    lines = (r.stdout + r.stderr).strip().splitlines()
    assert r.returncode == 77, (r.returncode, r.stdout, r.stderr)
    assert len(lines) == 1 and "no NVIDIA GPU" in lines[0], lines
    assert seconds < 5 and not out.exists()
