"""Several processes, one run: `accelerate launch` over gloo on CPU trains, takes neuron checkpoints and measures
accuracy; the statistics summed across ranks are one process's; only rank 0 writes and logs; every rank runs the
same probe forwards (what FSDP / ZeRO-3 need)."""

from __future__ import annotations

import json
import math
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from conftest import ROOT, inspect_records, inspect_summary, offline_runs, problem_settings, settings
from langneurons import evaluation
from langneurons.checkpoints import measure
from langneurons.checkpoints.measure import NeuronCheckpointer
from langneurons.data import load_problems
from langneurons.distributed import rank_share, share_size
from langneurons.experiment import tiny_tokenizer_corpus
from langneurons.modeling import build_tiny_model, build_tokenizer
from langneurons.neurons import NeuronStats

# Uneven on purpose: 5 problems per language split over 2 ranks is 3 + 2, and with these batch sizes rank 0 would
# need more generate calls and probe batches than rank 1 without padding.
SHORT = ["trainer.max_steps=2", "neurons.every_n_steps=2", "trainer.logging_steps=1", "trainer.save_steps=0",
         "alignment.questions.n=16", "data.n=5", "probe_langs=[sw,zh,de]", "eval.batch_size=2",
         "eval.max_new_tokens=8", "neurons.batch_size=4"]
LANGS = ["sw", "zh", "de"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def cpu_env() -> dict[str, str]:
    # One thread per process: two ranks share the machine's cores.
    return {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "true"}


@pytest.mark.parametrize("n", [0, 1, 2, 5, 7, 16, 17])
@pytest.mark.parametrize("world", [1, 2, 3, 8])
def test_rank_shares_cover_the_rows_once_and_pad_to_one_length(n, world):
    rows = list(range(n))
    shares = [rank_share(rows, rank, world) for rank in range(world)]
    assert sorted(x for share in shares for x in share) == rows
    assert max(len(s) for s in shares) == share_size(n, world) == len(shares[0])
    assert min(len(s) for s in shares) >= share_size(n, world) - 1


# ---- the checkpointer's sharding, each rank simulated in this process ----------------------------------------------
@pytest.fixture(scope="module")
def tiny():
    tokenizer = build_tokenizer(tiny_tokenizer_corpus("mathoctopus", n=30), 300)
    arch = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
            "num_key_value_heads": 1}
    model = build_tiny_model(arch, tokenizer, seed=0).eval()
    problems = load_problems(problem_settings(n=5, offset=100000, seed=0), LANGS, "mathoctopus")
    return model, tokenizer, problems, settings()  # and complete neuron and eval settings from the YAML


def take_as(monkeypatch, tiny, tmp_path, rank: int, world: int, probe: str, n: int | None):
    """Take a checkpoint as rank ``rank`` of ``world`` would, without the cross-rank sums: that rank's own counts,
    and how many generate calls and probe batches it ran."""
    model, tokenizer, problems, run = tiny
    calls = []
    real_generate = evaluation.generate

    def generate(*args, synced_gpus=None, **kwargs):
        calls.append(synced_gpus)
        return real_generate(*args, **kwargs)

    monkeypatch.setattr(evaluation, "generate", generate)
    monkeypatch.setattr(measure, "world_size", lambda: world)
    monkeypatch.setattr(measure, "process_rank", lambda: rank)
    monkeypatch.setattr(measure, "all_reduce_sum", lambda tensors: tensors)
    neurons = {**run.neurons.dump(), "probe": probe, "n": n, "batch_size": 4, "max_length": 512, "top_rate": 0.05,
               "bar": 0.95, "merge_adapters": False}
    eval_cfg = {**run.eval.dump(), "max_new_tokens": 4, "batch_size": 2, "samples": 1, "answer_lang": "off"}
    ckpt = NeuronCheckpointer(tokenizer=tokenizer, problems=problems, probe_langs=LANGS, eval_langs=LANGS,
                              neurons=neurons, eval_cfg=eval_cfg, out_dir=tmp_path / f"{probe}-{n}-{rank}-of-{world}",
                              model_id="tiny")
    taken = ckpt.take(model, 0)
    monkeypatch.undo()
    return taken.stats, calls


@pytest.mark.parametrize("probe, n", [("gold", None), ("gold", 3), ("text", None), ("responses", 4)])
def test_every_rank_runs_the_same_forwards_and_the_ranks_sum_to_one_process(monkeypatch, tiny, tmp_path, probe, n):
    single, single_calls = take_as(monkeypatch, tiny, tmp_path, 0, 1, probe, n)
    ranks = [take_as(monkeypatch, tiny, tmp_path, rank, 2, probe, n) for rank in range(2)]
    (stats0, calls0), (stats1, calls1) = ranks
    # the same number of generate calls (all synced) and of probe batches on both ranks, though rank 0 has more rows
    assert len(calls0) == len(calls1) > 0 and set(calls0 + calls1) == {True}
    assert single_calls and set(single_calls) == {None}
    assert stats0.metadata["batches"] == stats1.metadata["batches"]
    assert stats0.metadata["count"] == stats1.metadata["count"] == ("all" if probe == "text" else "response")
    if probe != "responses":  # (greedy answers of differently padded batches may differ in a float tie)
        assert torch.equal(stats0.tokens + stats1.tokens, single.tokens)
        assert torch.equal(stats0.counts + stats1.counts, single.counts)
        assert bool((stats1.tokens < single.tokens).all())  # each rank saw only its share


# ---- one run folder ----------------------------------------------------------------------------------------------
SHARED_DIR_SCRIPT = """
import sys
from pathlib import Path
from langneurons.distributed import end_process_group, shared_run_dir, is_rank_zero
mine = Path(sys.argv[1])
(mine / ".hydra").mkdir(parents=True)
(mine / "train.log").write_text("")
print("CHOSEN", shared_run_dir(mine), is_rank_zero(), flush=True)
end_process_group()
"""


def test_every_rank_gets_rank_zeros_run_folder_and_hydras_stray_one_goes(tmp_path):
    port = free_port()
    procs = []
    for rank in range(2):
        env = {**cpu_env(), "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2",
               "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
        procs.append(subprocess.Popen([sys.executable, "-c", SHARED_DIR_SCRIPT, str(tmp_path / f"dir-of-rank-{rank}")],
                                      env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    outs = [p.communicate(timeout=120)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    chosen = [line.split()[1:] for out in outs for line in out.splitlines() if line.startswith("CHOSEN")]
    assert chosen == [[str(tmp_path / "dir-of-rank-0"), "True"], [str(tmp_path / "dir-of-rank-0"), "False"]]
    assert (tmp_path / "dir-of-rank-0").is_dir() and not (tmp_path / "dir-of-rank-1").exists()


NO_GPU_SCRIPT = """
from langneurons.distributed import shared_run_dir
from langneurons.errors import HarnessError
try:
    shared_run_dir("x")
except HarnessError as e:
    print("error:", e)
"""


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU machine starts a real process group")
def test_processes_launched_on_cpu_without_accelerate_use_cpu_are_told_how_to_fix_it():
    port = free_port()
    procs = []
    for rank in range(2):
        env = {**os.environ, "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": "2",
               "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "OMP_NUM_THREADS": "1"}
        env.pop("ACCELERATE_USE_CPU", None)
        procs.append(subprocess.Popen([sys.executable, "-c", NO_GPU_SCRIPT], env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True))
    outs = [p.communicate(timeout=120)[0] for p in procs]
    assert all("error:" in out and "set ACCELERATE_USE_CPU=true" in out for out in outs), outs


# ---- the user's story: accelerate launch with 2 CPU processes ---------------------------------------------------
def test_two_cpu_processes_train_check_neurons_and_log_once_like_one_process(tmp_path):
    single_dir = tmp_path / "single"
    single = subprocess.run([sys.executable, str(ROOT / "train.py"), f"hydra.run.dir={single_dir}", *SHORT],
                            cwd=ROOT, env=cpu_env(), capture_output=True, text=True, timeout=900)
    assert single.returncode == 0, single.stderr[-3000:]
    # No hydra.run.dir: each process names its own folder from the clock, and all must end up in rank 0's.
    accelerate = shutil.which("accelerate", path=str(Path(sys.executable).parent)) or "accelerate"
    multi = subprocess.run([accelerate, "launch", "--config_file", str(ROOT / "accelerate_configs" / "ddp.yaml"),
                            "--num_processes", "2", str(ROOT / "train.py"), *SHORT],
                           cwd=tmp_path, env=cpu_env(), capture_output=True, text=True, timeout=900)
    assert multi.returncode == 0, multi.stderr[-3000:]
    # the console of one process: rank 0 prints, the other rank adds nothing (no line twice, no DDP warning)
    printed = multi.stdout + multi.stderr
    assert printed.count("neuron checkpoint at step 0 ") == 1 and printed.count("Run finished:") == 1, printed
    assert "find_unused_parameters" not in printed and "Warning" not in printed, printed[-3000:]
    folders = [p for p in (tmp_path / "outputs").glob("*/*") if p.is_dir()]
    assert len(folders) == 1, folders
    run_dir = folders[0]

    # one W&B run (rank 0's), nothing half-written, one adapter
    runs = offline_runs(run_dir)
    assert len(runs) == 1
    assert (run_dir / "adapter" / "adapter_config.json").is_file() and not (run_dir / "adapter.tmp").exists()
    assert not list(run_dir.rglob("*.tmp"))
    history = [r["history"]["item"] for r in inspect_records(runs[0]) if r.get("type") == "history"]
    checkpoints = {h["train/global_step"]: h for h in history if "neurons/total/specific" in h}
    assert sorted(checkpoints) == [0, 2]
    assert all(f"eval/acc/{lang}" in h and f"neurons/specific/{lang}" in h for h in checkpoints.values()
               for lang in LANGS)
    assert any("train/loss" in h for h in history)

    # step 0: the same initial model (same seed), so the summed statistics and the accuracy are one process's
    multi_stats = NeuronStats.load(run_dir / "neurons" / "step-0")
    single_stats = NeuronStats.load(single_dir / "neurons" / "step-0")
    assert multi_stats.metadata["world_size"] == 2 and single_stats.metadata["world_size"] == 1
    assert multi_stats.langs == single_stats.langs == tuple(LANGS)
    assert torch.equal(multi_stats.tokens, single_stats.tokens)
    assert torch.equal(multi_stats.counts, single_stats.counts)
    multi_record = json.loads((run_dir / "neurons" / "step-0" / "checkpoint.json").read_text())
    single_record = json.loads((single_dir / "neurons" / "step-0" / "checkpoint.json").read_text())
    assert multi_record["accuracy"] == single_record["accuracy"]

    # written by rank 0: its sample answers are the problems it answered (rows 0, 2, 4 of each language)
    config = yaml.safe_load((run_dir / ".hydra" / "config.yaml").read_text())
    problems = load_problems(config["data"], ["sw"], config["model"]["prompt_template"])["sw"]
    assert [s["id"] for s in multi_record["samples"] if s["lang"] == "sw"] == [problems[i]["id"] for i in (0, 2, 4)]
    # both processes trained on their own batches: an epoch is ceil(N / 8) steps in one process and ceil(ceil(N / 2)
    # / 8) in two (each rank's share of the N pairs, padded to the longer one), e.g. 16 pairs: 1 epoch and 2 epochs
    pairs = sum(json.loads((run_dir / "alignment" / "stats.json").read_text())["pairs"]["train"].values())
    batch = config["trainer"]["per_device_train_batch_size"]
    assert inspect_summary(offline_runs(single_dir)[0])["summary"]["train/epoch"] == pytest.approx(
        2 / math.ceil(pairs / batch))
    assert inspect_summary(runs[0])["summary"]["train/epoch"] == pytest.approx(
        2 / math.ceil(math.ceil(pairs / 2) / batch))
