"""analyze.py identify, as a user runs it: one JSON line out, the mask written, one-line errors with exit code 2."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from neuron_helpers import REPO, reference_dir, write_reference_folder
from langneurons.analysis.cli import main
from langneurons.neurons import Identification, identify, load_reference_mask, load_stats


CONF = REPO / "conf" / "analyze"


def analyze(*args: str, cwd=None) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, str(REPO / "analyze.py"), *args], capture_output=True, text=True, env=env,
                          cwd=cwd, timeout=120)


def test_help_lists_subcommands():
    shown = analyze("--help")
    assert shown.returncode == 0 and "identify" in shown.stdout
    bare = analyze()
    assert bare.returncode == 2 and "identify" in bare.stdout


def test_identify_on_a_reference_folder_writes_the_mask(tmp_path):
    write_reference_folder(tmp_path / "ref", ["en", "zh", "sw", "ru"], layers=2, units=50)
    done = analyze("identify", f"source={tmp_path / 'ref'}", "top_rate=0.1", "lam=auto", f"out={tmp_path / 'masks'}/",
                   cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    assert len(lines) == 1
    result = json.loads(lines[0])
    for key in ("tau", "lam", "per_language", "histogram", "totals"):
        assert key in result
    assert set(result["totals"]) == {"specific", "related", "general", "unassigned"}
    assert result["langs"] == ["en", "ru", "zh", "sw"]  # the reference's stacking order
    mask = load_reference_mask(tmp_path / "masks" / "mask.pt")
    ours = Identification.load(tmp_path / "masks")
    expected = identify(load_stats(tmp_path / "ref"), top_rate=0.1, lam="auto")
    assert ours.summary() == expected.summary()
    assert all(torch.equal(a, b) for x, y in zip(mask, expected.to_reference_mask()) for a, b in zip(x, y))
    assert result["lam"] == expected.lam and sum(result["histogram"]) == 10
    # analyze writes no Hydra output folders into the working directory.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["masks", "ref"]


def test_identify_to_a_file_puts_ours_beside_it(tmp_path, capsys):
    write_reference_folder(tmp_path / "ref", ["en", "zh"], layers=2, units=50, prefix=False)
    args = ["identify", f"source={tmp_path / 'ref'}", "method=lape", "top_rate=0.1", f"out={tmp_path / 'mask.en-zh'}"]
    code = main(args, CONF)
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    assert result["method"] == "lape" and result["lam"] is None
    assert len(load_reference_mask(tmp_path / "mask.en-zh")) == 2
    assert Identification.is_saved(tmp_path / "mask.en-zh.identification")


@pytest.mark.parametrize(
    "args,message",
    [
        (["identify"], "source required"),
        (["identify", "source=/no/such/dir"], "no such path '/no/such/dir'"),
        (["identify", "source={ref}", "method=magic"], "method=magic: unknown choice; use one of ternary, lape"),
        (["identify", "source={ref}", "colour=red"], "unknown key 'colour'"),
        (["identify", "source={ref}", "top_rate=lots"], "top_rate=lots: must be a number"),
        (["identify", "source={ref}", "top_rate=0"], "top_rate=0: must be greater than 0"),
        (["stages", "runs=[{ref}]", "step=soon"], "step=soon: not a checkpoint; use first, last or a step number"),
        (["identify", "source"], "key=value"),
        (["frobnicate"], "unknown subcommand 'frobnicate'"),
    ],
)
def test_errors_are_one_line_with_exit_code_2(tmp_path, capsys, args, message):
    write_reference_folder(tmp_path / "ref", ["en", "zh"], prefix=False)
    code = main([a.format(ref=tmp_path / "ref") for a in args], CONF)
    err = capsys.readouterr().err
    assert code == 2
    assert message in err and err.count("\n") == 1 and "Traceback" not in err


def test_error_from_the_real_entry_point_has_no_traceback():
    done = analyze("identify", "source=/no/such/dir")
    assert done.returncode == 2 and "Traceback" not in done.stderr and done.stderr.count("\n") == 1


def test_identify_reproduces_the_released_mask(tmp_path):
    source = reference_dir()
    done = analyze("identify", f"source={source}", "method=ternary", "top_rate=0.01", "lam=auto", "bar=0.95",
                   f"out={tmp_path}/")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["lam"] == 0.109375 and round(result["tau"], 4) == 0.5644
    assert result["histogram"] == [1369, 1866, 617, 310, 153, 127, 59, 40, 27, 20, 0]
    assert sum(result["per_language"].values()) == 6307
    (released,) = (source / "mask-top0.01-lambda0.109375").iterdir()
    ours, theirs = load_reference_mask(tmp_path / "mask.pt"), load_reference_mask(released)
    assert all(torch.equal(a, b) for x, y in zip(ours, theirs) for a, b in zip(x, y))
