"""safespace_tasks.experiments: helpers the example scripts share."""

from __future__ import annotations

import pytest

from safespace_tasks.experiments import TrainEvalOverlapError, normalise, require_data_dir


def test_the_data_folder_is_the_argument_else_the_environment(tmp_path, monkeypatch):
    (tmp_path / "env").mkdir()
    (tmp_path / "arg").mkdir()
    monkeypatch.setenv("SAFESPACE_DATA_DIR", str(tmp_path / "env"))
    assert require_data_dir(None) == (tmp_path / "env").resolve()
    assert require_data_dir(str(tmp_path / "arg")) == (tmp_path / "arg").resolve()


def test_a_script_without_a_data_folder_stops_with_the_fix(tmp_path, monkeypatch):
    monkeypatch.delenv("SAFESPACE_DATA_DIR", raising=False)
    with pytest.raises(SystemExit, match="pass --data-dir or set SAFESPACE_DATA_DIR"):
        require_data_dir(None)
    with pytest.raises(SystemExit, match="does not exist"):
        require_data_dir(str(tmp_path / "missing"))


def test_normalise_hides_case_punctuation_and_spacing():
    assert normalise("  Hello,   WORLD!_x ") == "hello world x"
    assert normalise("ＡＢＣ-d") == normalise("abc d")  # NFKC folds full-width letters
    assert issubclass(TrainEvalOverlapError, AssertionError)
