"""Under torch.distributed the counts of all ranks are summed: two gloo processes equal one process."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from neuron_helpers import LANGS, random_batches, tiny_model
from langneurons.neurons import NeuronStats, collect_stats, perplexity

HERE = Path(__file__).resolve().parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_two_ranks_sum_to_single_process_stats(tmp_path):
    port, out = free_port(), tmp_path / "rank0"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    procs = [
        subprocess.Popen([sys.executable, str(HERE / "dist_worker.py"), str(rank), "2", str(port), str(out)], env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for rank in range(2)
    ]
    logs = [p.communicate(timeout=120)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], "\n".join(logs)

    summed = NeuronStats.load(out)
    model = tiny_model("llama")
    batches = random_batches(len(LANGS), n_batches=4, seed=11)
    single = collect_stats(model, batches, LANGS, progress=False)
    assert summed.metadata["world_size"] == 2
    assert torch.equal(summed.tokens, single.tokens)
    assert torch.equal(summed.counts, single.counts)
    # Each rank alone saw only part of the probe set, so the sum is not one rank's counts.
    half = collect_stats(model, batches[0::2], LANGS, progress=False)
    assert (half.tokens < single.tokens).any()

    ppl = json.loads((out / "ppl.json").read_text())
    expected = perplexity(model, batches, LANGS)
    assert ppl.keys() == expected.keys()
    for lang in expected:
        assert ppl[lang] == pytest.approx(expected[lang], rel=1e-5)
