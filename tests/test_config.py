"""Every option of every config group composes, and the composed config means what the README says."""


import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from langneurons.settings import RunSettings

from conftest import ROOT, run_train

CONF = ROOT / "conf"
GROUPS = ["model", "alignment", "trainer", "data", "logger", "scorer", "neurons", "eval"]


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def composed(*overrides: str):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides))


@pytest.mark.parametrize("group, option", [(g, o) for g in GROUPS for o in options(g)])
def test_every_option_composes_and_resolves(group, option):
    cfg = composed(f"{group}={option}")
    plain = OmegaConf.to_container(cfg, resolve=True)  # every interpolation resolves
    # ... and the settings layer finds every key it needs, each with a valid value: the YAML holds the defaults
    settings = RunSettings.from_config(plain)
    assert getattr(settings, group) is not None


def test_model_presets():
    assert set(options("model")) >= {"tiny", "llama", "mistral", "qwen", "mistral_mathoctopus", "metamath_octopus"}
    assert composed("model=mistral_mathoctopus").model.name_or_path == "kevinpro/MistralMathOctopus-7B"
    assert composed("model=metamath_octopus").model.name_or_path == "kevinpro/MetaMathOctopus-7B"
    assert composed("model=qwen", "model.name_or_path=/weights/qwen").model.name_or_path == "/weights/qwen"


def test_real_models_get_the_papers_hyperparameters_and_tiny_keeps_its_own():
    paper = composed("model=mistral_mathoctopus")
    t = paper.trainer
    assert (t.lora.r, t.lora.alpha, t.lora.dropout, t.learning_rate) == (64, 128, 0.05, 1e-6)
    assert t.per_device_train_batch_size * t.gradient_accumulation_steps == 16
    assert paper.alignment.beta == 0.1
    assert composed("model=llama", "trainer=tiny").trainer.max_steps == composed().trainer.max_steps
    tiny = composed()
    assert (tiny.trainer.lora.r, tiny.trainer.learning_rate) == (8, 2e-4)
    # the default run takes its neuron checkpoints at the start, the middle and the end (three: the cost target)
    assert tiny.neurons.every_n_steps * 2 == tiny.trainer.max_steps


def test_cpu_presets_set_the_problems_per_language_whatever_the_data_set():
    # the presets' data.n must survive a data group given with them (the defaults list puts data before model)
    for preset in ("gemma3_270m", "smollm2_135m"):
        assert composed(f"model={preset}").data.n == 32
        mgsm = composed(f"model={preset}", "data=mgsm", "data.path=/data/mgsm")
        assert (mgsm.data.source, mgsm.data.n) == ("mgsm", 32)
        assert composed(f"model={preset}", "data=mgsm", "data.n=8").data.n == 8
    assert composed("data=mgsm").data.n is None  # the tiny default keeps the data set's own


def test_languages_default_to_aligning_swahili_and_probing_the_paper_ten():
    cfg = composed()
    assert cfg.lang == "sw" and cfg.probe_langs == "all" and cfg.eval_langs == "all"
    assert list(composed("lang=[zh,de]").lang) == ["zh", "de"]
    assert composed("probe_langs=[en,sw]").eval_langs == ["en", "sw"]


def test_cfg_job_prints_the_composed_config():
    out = run_train("--cfg", "job", "model=qwen", "lang=[zh,de]")
    assert out.returncode == 0, out.stderr
    cfg = OmegaConf.create(out.stdout)
    assert cfg.model.preset == "qwen" and list(cfg.lang) == ["zh", "de"] and cfg.trainer.lora.r == 64


REQUIRED = {"probe": ["out=x"], "identify": ["source=x"], "compare": ["before=x", "after=y"],
            "deactivate": ["source=x"]}


@pytest.mark.parametrize("name", ["probe", "identify", "report", "counts", "stages", "compare", "overlap",
                                  "spontaneous", "deactivate"])
def test_every_analysis_subcommand_parses_its_defaults_into_settings(name):
    from langneurons.analysis.cli import compose_with_training, parse, SUBCOMMANDS, compose

    conf = CONF / "analyze"
    args = REQUIRED.get(name, ["runs=[x]"])
    cfg = compose_with_training(conf, name, args) if SUBCOMMANDS[name].training_config else compose(conf, name, args)
    from pydantic import ValidationError

    settings = parse(name, cfg)
    with pytest.raises(ValidationError, match="frozen"):
        settings.out = "elsewhere"


@pytest.mark.parametrize("model", options("model"))
@pytest.mark.parametrize("alignment", options("alignment"))
def test_every_preset_takes_every_alignment_method(model, alignment):
    """A preset sets MAPO's sampling keys (gemma3_270m: alignment.max_new_tokens); with another method they are not
    that method's keys, and the settings leave them out instead of refusing the run."""
    settings = RunSettings.from_config(OmegaConf.to_container(composed(f"model={model}", f"alignment={alignment}"),
                                                              resolve=True))
    assert settings.alignment.method == alignment.replace("_paper", "")


@pytest.mark.parametrize("model", options("model"))
def test_experiment_paper_sets_the_papers_settings_and_debug_smoke_shortens_any_preset(model):
    paper = composed(f"model={model}", "experiment=paper")
    assert (paper.trainer.lora.r, paper.alignment.k, paper.scorer.kind, paper.eval.max_new_tokens) == (
        64, 20, "translation", 512)
    smoke = composed(f"model={model}", "experiment=paper", "debug=smoke")  # debug= is merged last
    short = (smoke.trainer.max_steps, smoke.trainer.save_steps, smoke.alignment.questions.n, smoke.data.n)
    assert short == (4, 2, 16, 4)
    for cfg in (paper, smoke):
        RunSettings.from_config(OmegaConf.to_container(cfg, resolve=True))
    if model in ("llama", "mistral", "qwen", "mistral_mathoctopus", "metamath_octopus"):  # they include it
        assert composed(f"model={model}") == paper
