"""Shared test setup: no network, no W&B login, and the real data beside the project when it is there."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("LANGNEURONS_SHARED_DATA", ROOT.parent / "shared" / "data"))

# Tests never reach the hub or W&B's servers, and never find a W&B login.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
os.environ.pop("WANDB_API_KEY", None)
os.environ.pop("WANDB_MODE", None)
os.environ["NETRC"] = str(ROOT / "tests" / "no-such-netrc")
# Tiny models gain nothing from a second thread, and on a busy machine oversubscribed threads make each run 5-7x
# slower; tests run one thread per process unless told otherwise.
os.environ.setdefault("OMP_NUM_THREADS", "1")
# The kernels train.py pins (before torch is imported): a base the tests pretrain in-process is the one it builds.
from langneurons import cpu_numerics  # noqa: E402

cpu_numerics.pin()


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data folder {SHARED_DATA} is absent (set LANGNEURONS_SHARED_DATA)")
    return SHARED_DATA


def composed(*overrides: str) -> dict:
    """conf/config.yaml with ``overrides`` applied, resolved into plain values (the hydra node left out), as
    ``train.py`` composes it."""
    from omegaconf import OmegaConf

    from langneurons.overrides import compose_training

    return OmegaConf.to_container(compose_training(ROOT / "conf", overrides), resolve=True)


def settings(*overrides: str):
    """The :class:`RunSettings` of conf/config.yaml with ``overrides``: complete settings for a module under test,
    e.g. ``settings("data.n=4").data``."""
    from langneurons.settings import RunSettings

    return RunSettings.from_config(composed(*overrides))


def problem_settings(source: str = "synthetic", **fields):
    """The :class:`ProblemSettings` of ``conf/data/<source>.yaml`` with ``fields`` replaced (e.g. ``n=4,
    offset=0``): a complete problem set from the YAML, without composing the whole config."""
    from omegaconf import OmegaConf

    from langneurons.settings import ProblemSettings

    spec = OmegaConf.to_container(OmegaConf.load(ROOT / "conf" / "data" / f"{source}.yaml"), resolve=True)
    return ProblemSettings.of({**spec, **fields})


def run_train(*overrides: str, timeout: int = 600, threads: int | None = None,
              env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run ``python train.py <overrides>`` from the project root, as a user would. ``threads``: torch threads of
    that run (default one, as every test process; a real model's run alone on the machine takes two); ``env``:
    variables set for that run (e.g. ``LANGNEURONS_CACHE``, ``LANGNEURONS_FAULT``)."""
    env = {**os.environ, **({"OMP_NUM_THREADS": str(threads)} if threads else {}), **(env or {})}
    return subprocess.run([sys.executable, str(ROOT / "train.py"), *overrides], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout, env=env)


def offline_runs(folder: Path) -> list[Path]:
    return sorted(folder.rglob("offline-run-*"))


def inspect_summary(run_dir: Path) -> dict:
    """A finished offline W&B run read back the way the README says: wandb leet inspect --summary --json."""
    wandb_cli = Path(sys.executable).with_name("wandb")
    out = subprocess.run([str(wandb_cli), "leet", "inspect", "--summary", "--json", str(run_dir)],
                         capture_output=True, text=True, timeout=120, check=True)
    return json.loads(out.stdout)


def inspect_records(run_dir: Path) -> list[dict]:
    """Every record of an offline W&B run (wandb leet inspect --json), one dict per line."""
    wandb_cli = Path(sys.executable).with_name("wandb")
    out = subprocess.run([str(wandb_cli), "leet", "inspect", "--json", str(run_dir)],
                         capture_output=True, text=True, timeout=120, check=True)
    return [json.loads(line) for line in out.stdout.splitlines() if line.strip()]
