"""Runs started as several processes (``accelerate launch``, ``torchrun``): one run folder, one writer, one tracker;
who this process is in the group (:func:`world_size`, :func:`process_rank`, :func:`is_rank_zero`), its share of the
rows (:func:`rank_share`) and sums over ranks (:func:`all_reduce_sum`).

Every process of ``accelerate launch train.py ...`` runs Hydra on its own, so each resolves ``${now:...}`` in the run
folder's name itself, and two processes that start across a second boundary would write to two folders (and sharded
trainer checkpoints, which every rank writes a part of, would be split between them). :func:`shared_run_dir` starts
torch.distributed early (as the Trainer would a moment later) and gives every rank rank 0's folder.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any, Sequence

from .errors import HarnessError

# What Hydra puts into a job's folder before the job runs: a stray folder holding only these is safe to remove.
HYDRA_FILES = (".hydra",)


def _dist():
    import torch.distributed as dist

    return dist if dist.is_available() and dist.is_initialized() else None


def world_size() -> int:
    """Processes in the running torch.distributed group (1 without one)."""
    dist = _dist()
    return dist.get_world_size() if dist is not None else 1


def process_rank() -> int:
    """This process's rank in the running torch.distributed group (0 without one)."""
    dist = _dist()
    return dist.get_rank() if dist is not None else 0


def all_reduce_sum(tensors: Sequence[Any]) -> list[Any]:
    """Sum same-dtype tensors over all ranks with ONE collective (they are packed into one buffer)."""
    import torch
    import torch.distributed as dist

    flat = torch.cat([t.reshape(-1) for t in tensors])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    out, offset = [], 0
    for t in tensors:
        out.append(flat[offset : offset + t.numel()].view_as(t))
        offset += t.numel()
    return out


def launched_world_size() -> int:
    """How many processes the launcher started (1 for a plain ``python train.py``)."""
    dist = _dist()
    return dist.get_world_size() if dist is not None else int(os.environ.get("WORLD_SIZE", "1"))


def is_rank_zero() -> bool:
    """Whether this process is the one that writes shared files and talks to W&B. Known from the launcher's
    environment (RANK) before torch.distributed starts, from torch.distributed after."""
    dist = _dist()
    return dist.get_rank() == 0 if dist is not None else int(os.environ.get("RANK", "0")) == 0


def start_process_group() -> None:
    """Start torch.distributed the way the Trainer will (accelerate's PartialState, which the Trainer then reuses).
    Raises :class:`HarnessError` when the launcher started several processes but no process group came up."""
    if _dist() is not None or launched_world_size() <= 1:
        return
    from accelerate import DistributedType, PartialState

    # The Trainer asks for a CPU process group exactly when ACCELERATE_USE_CPU is set; do the same, or the two
    # would disagree on the backend.
    state = PartialState(cpu=os.environ.get("ACCELERATE_USE_CPU", "false").lower() in ("1", "true", "yes"))
    if _dist() is None or state.distributed_type == DistributedType.NO:
        # (without it, each process would train a whole copy of the model on its own)
        raise HarnessError(f"{launched_world_size()} processes were launched but none of them found a GPU: on CPU "
                           "set ACCELERATE_USE_CPU=true before accelerate launch")


def end_process_group() -> None:
    """Wait for every rank, then shut torch.distributed down. A process that exits with the group still up can abort
    (gloo: "terminate called without an active exception") while another rank still talks to its store."""
    dist = _dist()
    if dist is not None:
        import gc

        gc.collect()  # a DDP reducer left in a reference cycle must go while the group is still up
        dist.barrier()
        dist.destroy_process_group()


def shared_run_dir(run_dir: Path) -> Path:
    """The run folder all processes of this job share: rank 0's. A folder Hydra made for another rank, holding
    nothing but Hydra's own files, is removed."""
    run_dir = Path(run_dir)
    if launched_world_size() <= 1:
        return run_dir
    start_process_group()
    from accelerate.utils import broadcast_object_list

    chosen = Path(broadcast_object_list([str(run_dir)], from_process=0)[0])
    if chosen.resolve() != run_dir.resolve() and run_dir.is_dir():
        if all(p.name in HYDRA_FILES or p.suffix == ".log" for p in run_dir.iterdir()):
            shutil.rmtree(run_dir, ignore_errors=True)
    return chosen


def rank_share(rows: Sequence[Any], rank: int, world: int) -> list[Any]:
    """Rank ``rank``'s share of ``rows`` (every ``world``-th row from ``rank`` on). Shares differ in length by at
    most one; :func:`share_size` is the longest."""
    return list(rows)[rank::world]


def share_size(n: int, world: int) -> int:
    """The longest share of ``n`` rows over ``world`` ranks (rank 0's): the length every rank pads its share to."""
    return -(-n // world)
