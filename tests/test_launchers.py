"""Launchers: Hydra's submitit launcher for SLURM (and its local twin), and the accelerate configs for DDP, FSDP
and DeepSpeed ZeRO-3."""

from __future__ import annotations

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
    assert launcher._target_ == "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
    assert launcher.partition == "gpu" and launcher.gpus_per_node == 4 and launcher.tasks_per_node == 1
    assert launcher.timeout_min > 0 and launcher.mem_gb > 0
    # job logs land beside the multirun's jobs
    assert launcher.submitit_folder == f"{cfg.hydra.sweep.dir}/.submitit/%j"
    assert cfg.lang == "sw" and cfg.model.preset == "tiny"


def test_the_slurm_launcher_can_be_built():
    from hydra.utils import instantiate

    launcher = instantiate(launcher_config("hydra/launcher=slurm", "hydra.launcher.partition=gpu").hydra.launcher)
    assert type(launcher).__name__ == "SlurmLauncher" and launcher.params["partition"] == "gpu"


@pytest.mark.slow
def test_the_local_submitit_launcher_runs_a_multirun_job_with_its_own_wandb_run(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher", reason="hydra-submitit-launcher is not installed")
    out = run_train("-m", "hydra/launcher=local", f"hydra.sweep.dir={tmp_path}", "lang=sw", "trainer.max_steps=2",
                    "trainer.logging_steps=1", "trainer.save_steps=0", "alignment.questions.n=16", "data.n=4",
                    "neurons=off")
    assert out.returncode == 0, out.stderr[-3000:]
    assert (tmp_path / ".submitit").is_dir()  # it went through submitit
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
