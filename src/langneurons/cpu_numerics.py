"""The same CPU numerics on every x86 CPU: torch's kernels and MKL's code path pinned to AVX2.

torch picks its CPU kernels by what the CPU offers (AVX2 or AVX-512), and MKL picks its own code branch the same
way; sums then round differently, and the 4000 steps that pretrain the tiny base amplify that into another base:
the default run printed three different end-of-run tables on the machines CI ran on. Pinned to AVX2 (which every
x86 CPU of the last decade has), an AVX-512 machine computes what an AVX2 one does: measured on an AMD EPYC Zen 4
(AVX-512), the pinned default run printed the table of an AMD EPYC with AVX2 only, digit for digit.

:func:`pin` must run before torch is imported (both libraries read their variable once, when they start): the entry
points (``train.py``, ``analyze.py``, the benchmarks, the tests' ``conftest.py``) call it first. A user who exports
either variable keeps their value: ``ATEN_CPU_CAPABILITY=avx512 MKL_CBWR=AUTO`` runs on the CPU's own best kernels
(on a Zen 4 the tiny base pretrains in 0.92x the time, Gemma counts in 1.07x: ``benchmarks/bench_cpu_kernels.py``;
the figures of the README then need not reproduce). GPU kernels are not affected.
"""

from __future__ import annotations

import os
import platform
import sys

# What the harness pins when the user has not chosen: torch's kernels (ATen's dispatch) and MKL's code branch
# (conditional numerical reproducibility).
PINNED = {"ATEN_CPU_CAPABILITY": "avx2", "MKL_CBWR": "AVX2"}


def pin() -> None:
    """Pin torch's CPU kernels and MKL's code branch to AVX2 unless the user chose; a no-op on other than x86 CPUs
    and once torch is imported (the variables would no longer be read: nothing is set that would misreport the
    process)."""
    if "torch" in sys.modules or platform.machine().lower() not in ("x86_64", "amd64"):
        return  # other CPUs (Arm) have neither variable
    for name, value in PINNED.items():
        os.environ.setdefault(name, value)


def describe() -> dict[str, str]:
    """What this process computes with (for the tiny base's cache key and a failure message): torch's kernel set and
    MKL's branch as the environment asked for it."""
    import torch

    return {"torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "mkl_cbwr": os.environ.get("MKL_CBWR", "AUTO")}
