"""Launchers: Hydra's submitit launcher for SLURM (and its local twin), and the accelerate configs for DDP, FSDP
and DeepSpeed ZeRO-3."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from conftest import ROOT, inspect_records, offline_runs, run_train

ACCELERATE_CONFIGS = ROOT / "accelerate_configs"


def launcher_config(*overrides: str):
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher",
                        reason="hydra-submitit-launcher is not installed (pip install -e '.[slurm]')")
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose("config", overrides=list(overrides), return_hydra_config=True)


def test_the_slurm_launcher_composes_with_a_users_partition():
    cfg = launcher_config("hydra/launcher=slurm", "hydra.launcher.partition=gpu", "hydra.launcher.gpus_per_node=4",
                          "lang=sw")
    launcher = cfg.hydra.launcher
    # the plugin's launcher with a line per job (langneurons.launchers)
    assert launcher._target_ == "hydra_plugins.langneurons_launcher.launcher.SlurmLauncher"
    assert launcher.partition == "gpu" and launcher.gpus_per_node == 4 and launcher.tasks_per_node == 1
    assert launcher.timeout_min > 0 and launcher.mem_gb > 0
    # job logs land beside the multirun's jobs
    assert launcher.submitit_folder == f"{cfg.hydra.sweep.dir}/.submitit/%j"
    assert cfg.lang == "sw" and cfg.model.preset == "tiny"


def test_the_slurm_launcher_can_be_built():
    from hydra.utils import instantiate

    from hydra_plugins.hydra_submitit_launcher.submitit_launcher import LocalLauncher, SlurmLauncher

    launcher = instantiate(launcher_config("hydra/launcher=slurm", "hydra.launcher.partition=gpu").hydra.launcher)
    assert isinstance(launcher, SlurmLauncher) and launcher.params["partition"] == "gpu"
    assert launcher.params["array_parallelism"] == 16 and launcher.params["setup"] == []
    local = instantiate(launcher_config("hydra/launcher=local").hydra.launcher)
    assert isinstance(local, LocalLauncher) and local.params["gpus_per_node"] == 0


# A Hydra app whose jobs end the three ways a job of train.py can: ok, train.py's one-line error (exit 2), a crash;
# the job named by +slow= ends 3 s late, so the jobs end in a known order.
APP = """
import sys, time, hydra

@hydra.main(config_path=None, version_base="1.3")
def main(cfg):
    if cfg.end == cfg.slow:
        time.sleep(3)
    if cfg.end == "error":
        print("error: end=error fails as train.py fails", file=sys.stderr)
        sys.exit(2)
    if cfg.end == "crash":
        raise ValueError("end=crash crashed")
    print("ended", cfg.end)

main()
"""


def multirun(script: Path, *overrides: str) -> subprocess.CompletedProcess:
    """``python <script> -m hydra/launcher=local <overrides>`` with this project's launcher configs."""
    return subprocess.run([sys.executable, str(script), "-m", f"hydra.searchpath=[file://{ROOT / 'conf'}]",
                           "hydra/launcher=local", *overrides], cwd=script.parent, capture_output=True, text=True,
                          timeout=600)


@pytest.mark.parametrize("slow", ["crash", "error"])
def test_the_local_launcher_prints_each_jobs_log_and_how_it_ended(tmp_path, slow):
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher", reason="hydra-submitit-launcher is not installed")
    (tmp_path / "app.py").write_text(APP)
    out = multirun(tmp_path / "app.py", "hydra.sweep.dir=m", "+end=ok,error,crash", f"+slow={slow}")
    assert out.returncode == 1, out.stdout + out.stderr
    lines = [line.split("[HYDRA] ", 1)[-1] for line in out.stdout.splitlines()]
    submitted = {}
    for line in lines:  # "#0 +end=ok +slow=crash: submitted as job 1234, log m/.submitit/1234/1234_0_log.out"
        if match := re.fullmatch(rf"#(\d) \+end=(\w+) \+slow={slow}: submitted as job (\d+), "
                                 rf"log m/\.submitit/(\d+)/(\d+)_0_log\.out", line):
            assert match[3] == match[4] == match[5]
            submitted[match[2]] = match[3]
    assert list(submitted) == ["ok", "error", "crash"]
    ok, error, crash = (f"m/.submitit/{job}/{job}_0_log" for job in submitted.values())
    ended = {line.split(":", 1)[0]: line for line in lines if re.match(r"#\d .*: (ok|failed) after", line)}
    assert re.fullmatch(rf"#0 \+end=ok: ok after \d+ s: run folder m/0, log {ok}\.out", ended["#0 +end=ok"])
    assert re.fullmatch(rf"#1 \+end=error: failed after \d+ s: error: end=error fails as train.py fails   "
                        rf"full log: {error}\.err", ended["#1 +end=error"])
    assert re.fullmatch(rf"#2 \+end=crash: failed after \d+ s: ValueError: end=crash crashed   full log: "
                        rf"{crash}\.err", ended["#2 +end=crash"])
    assert "2 of 3 jobs failed: #1 +end=error, #2 +end=crash" in lines
    assert "ended ok" in (tmp_path / f"{ok}.out").read_text()
    assert "ValueError: end=crash crashed" in (tmp_path / f"{crash}.err").read_text()  # the crash's traceback
    # Hydra ends the multirun with the first failed job's line (in job order, whichever ended first), not a
    # traceback through submitit
    assert "Traceback" not in out.stderr
    first = f"#1 +end=error failed: error: end=error fails as train.py fails   full log: {error}.err"
    assert f"2 of 3 jobs failed; {first}" in out.stderr


def test_a_train_py_job_that_fails_shows_its_error_line_and_log(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher", reason="hydra-submitit-launcher is not installed")
    out = run_train("-m", "hydra/launcher=local", f"hydra.sweep.dir={tmp_path}", "lang=xx")
    assert out.returncode == 1, out.stdout + out.stderr
    job = next(p.name for p in (tmp_path / ".submitit").iterdir() if p.name != "%j")
    line = next(line for line in out.stdout.splitlines() if "#0: failed after" in line)
    assert line.split("[HYDRA] ", 1)[1].split(": ", 2)[2] == (
        f"error: lang=xx: unknown language code 'xx': supported codes are en, zh, ru, de, fr, es, ja, sw, th, bn, te (or 'all' "
        f"for the paper's ten)   full log: {tmp_path}/.submitit/{job}/{job}_0_log.err")
    assert "Traceback" not in out.stderr and "#0 failed: error: lang=xx: unknown language code 'xx'" in out.stderr


@pytest.mark.slow
def test_the_local_submitit_launcher_runs_a_multirun_job_with_its_own_wandb_run(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher", reason="hydra-submitit-launcher is not installed")
    out = run_train("-m", "hydra/launcher=local", f"hydra.sweep.dir={tmp_path}", "lang=sw", "trainer.max_steps=2",
                    "trainer.logging_steps=1", "trainer.save_steps=0", "alignment.questions.n=16", "data.n=4",
                    "neurons=off")
    assert out.returncode == 0, out.stderr[-3000:]
    assert (tmp_path / ".submitit").is_dir()  # it went through submitit
    job = next(p.name for p in (tmp_path / ".submitit").iterdir() if p.name != "%j")
    log = f"{tmp_path}/.submitit/{job}/{job}_0_log.out"
    assert f": submitted as job {job}, log {log}" in out.stdout
    assert re.search(rf"\] #0: ok after \d+ s: run folder {tmp_path}/0, log {log}$", out.stdout, re.M)
    runs = offline_runs(tmp_path / "0")
    assert len(runs) == 1
    run_record = next(r["run"] for r in inspect_records(runs[0]) if r.get("type") == "run")
    assert run_record["display_name"] == "tiny-mapo-sw"


def accelerate_config(name: str):
    from accelerate.commands.config.config_args import load_config_from_file

    return load_config_from_file(str(ACCELERATE_CONFIGS / f"{name}.yaml"))


def test_there_is_an_accelerate_config_for_ddp_fsdp_and_zero3():
    assert {p.stem for p in ACCELERATE_CONFIGS.glob("*.yaml")} == {"ddp", "fsdp", "zero3"}


@pytest.mark.parametrize("name, kind", [("ddp", "MULTI_GPU"), ("fsdp", "FSDP"), ("zero3", "DEEPSPEED")])
def test_each_accelerate_config_loads_and_leaves_precision_to_the_trainer(name, kind):
    config = accelerate_config(name)
    assert config.distributed_type.value == kind
    assert config.mixed_precision == "no" and not config.use_cpu and config.num_machines == 1


def test_the_fsdp_config_shards_with_fsdp2_and_saves_an_ordinary_adapter():
    fsdp = accelerate_config("fsdp").fsdp_config
    assert fsdp["fsdp_version"] == 2  # the model object stays a model: the callback can call generate on it
    assert fsdp["fsdp_state_dict_type"] == "FULL_STATE_DICT"
    assert fsdp["fsdp_auto_wrap_policy"] == "TRANSFORMER_BASED_WRAP"


def test_the_zero3_config_builds_a_stage_3_deepspeed_plugin():
    config = accelerate_config("zero3").deepspeed_config
    assert config["zero_stage"] == 3 and config["zero3_save_16bit_model"]
    pytest.importorskip("deepspeed", reason="DeepSpeed is not installed (pip install deepspeed): config only checked")
    from accelerate.utils import DeepSpeedPlugin

    plugin = DeepSpeedPlugin(zero_stage=config["zero_stage"], zero3_init_flag=config["zero3_init_flag"],
                             zero3_save_16bit_model=config["zero3_save_16bit_model"],
                             offload_optimizer_device=config["offload_optimizer_device"],
                             offload_param_device=config["offload_param_device"])
    assert plugin.deepspeed_config["zero_optimization"]["stage"] == 3
