"""One rank of the distributed counting test (launched twice by test_distributed_counting.py): count this rank's share of
the probe set through a DDP-wrapped model and, on rank 0, save the summed statistics."""

from __future__ import annotations

import json
import sys

import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from neuron_helpers import LANGS, random_batches, tiny_model
from langneurons.neurons import collect_stats, perplexity


def count_share(rank: int, world: int, out: str) -> None:
    # The DDP wrapper lives only in here: its reducer is gone before the process group is destroyed (a reducer that
    # outlives the group can abort the process at exit).
    model = DistributedDataParallel(tiny_model("llama"))
    mine = random_batches(len(LANGS), n_batches=4, seed=11)[rank::world]
    stats = collect_stats(model, mine, LANGS, progress=False)
    ppl = perplexity(model, mine, LANGS)
    if rank == 0:
        stats.save(out)
        with open(f"{out}/ppl.json", "w") as fh:
            json.dump(ppl, fh)


def main(rank: int, world: int, port: int, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        count_share(rank, world, out)
        dist.barrier()  # no rank tears the group down while another still uses it
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4])
