"""The CPU kernels every entry point pins before torch starts (cpu_numerics): the same numbers on every x86 CPU."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

from langneurons import cpu_numerics

ROOT = Path(__file__).resolve().parents[1]
X86 = platform.machine().lower() in ("x86_64", "amd64")
AVX2 = X86 and Path("/proc/cpuinfo").is_file() and " avx2" in Path("/proc/cpuinfo").read_text()

PROBE = ("import os, torch; print(torch.backends.cpu.get_cpu_capability(), os.environ.get('ATEN_CPU_CAPABILITY'), "
         "os.environ.get('MKL_CBWR'))")


def probe(prelude: str, **env: str) -> list[str]:
    """What a fresh Python that runs ``prelude`` and then ``PROBE`` computes with, the pinned variables cleared
    from its environment and ``env`` added."""
    clean = {k: v for k, v in os.environ.items() if k not in cpu_numerics.PINNED} | env
    out = subprocess.run([sys.executable, "-c", prelude + PROBE], env=clean, cwd=ROOT, capture_output=True,
                         text=True, check=True)
    return out.stdout.split()


@pytest.mark.skipif(not AVX2, reason="an x86 CPU with AVX2 pins to it")
def test_the_tests_and_the_entry_points_compute_with_avx2_kernels():
    import torch

    assert torch.backends.cpu.get_cpu_capability() == "AVX2"  # conftest pinned before torch started
    assert os.environ["MKL_CBWR"] == "AVX2"
    # train.py, analyze.py and the benchmarks pin before torch: the first lines of their module
    for script in ("train.py", "analyze.py", "benchmarks/bench_real_models.py", "benchmarks/bench_neurons.py",
                   "benchmarks/bench_checkpoints.py", "benchmarks/bench_checkpoint_cost.py"):
        text = (ROOT / script).read_text()
        torch_at = text.find("import torch")
        assert "cpu_numerics.pin()" in text, script
        assert torch_at == -1 or text.index("cpu_numerics.pin()") < torch_at, script


@pytest.mark.skipif(not AVX2, reason="an x86 CPU with AVX2 pins to it")
def test_pin_sets_both_unless_the_user_chose():
    prelude = "from langneurons import cpu_numerics; cpu_numerics.pin(); "
    assert probe(prelude) == ["AVX2", "avx2", "AVX2"]
    # an exported choice wins (here torch's unvectorised kernels and MKL's own choice)
    assert probe(prelude, ATEN_CPU_CAPABILITY="default", MKL_CBWR="AUTO") == ["DEFAULT", "default", "AUTO"]


@pytest.mark.skipif(not X86, reason="x86 only")
def test_pin_after_torch_started_sets_nothing():
    """Too late to change torch's kernels: nothing is set that would claim otherwise (MKL_CBWR unset)."""
    assert probe("import torch; from langneurons import cpu_numerics; cpu_numerics.pin(); ")[1:] == ["None", "None"]
