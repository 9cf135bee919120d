"""The command lines: checks before the model loads, the settings-validator hook, the subcommand table."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import types
from pathlib import Path

import pytest

from safespace_tasks import cli
from safespace_tasks.local_models import ModelPathError, check_model_args, check_model_path

REPO = Path(__file__).resolve().parents[2]


# --- missing local model paths -------------------------------------------------------------------

@pytest.mark.parametrize("value", ["/path/that/does/not/exist", "./rel/path", "../rel/path", "~/no-such-model-dir",
                                   "models/org/name", "C:\\models\\llama"])
def test_a_local_path_that_does_not_exist_is_named(value, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ModelPathError) as err:
        check_model_path(value)
    text = str(err.value)
    assert f"pretrained={value}" in text and "does not exist" in text
    assert "org/name" in text  # what a Hub id looks like
    assert str(Path(value).expanduser().absolute()) in text


def test_relative_path_message_gives_the_resolved_path_and_the_nearest_folder(tmp_path, monkeypatch):
    (tmp_path / "models").mkdir()
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ModelPathError) as err:
        check_model_path("./models/llama", "tokenizer")
    text = str(err.value)
    assert text.startswith("tokenizer=./models/llama: the local path ")
    assert str(tmp_path / "models" / "llama") in text
    assert f"the nearest existing folder is {tmp_path / 'models'}" in text


@pytest.mark.parametrize("value", ["gpt2", "HuggingFaceTB/SmolLM2-135M-Instruct", "org/not-downloaded", None, 3, ""])
def test_hub_ids_and_non_paths_are_left_to_the_hub(value, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    check_model_path(value)  # no error: these may be Hub ids (or are not names at all)


def test_an_existing_folder_passes_and_every_path_argument_is_checked(tmp_path):
    check_model_path(str(tmp_path))
    check_model_args({"pretrained": str(tmp_path), "dtype": "float32"})
    with pytest.raises(ModelPathError, match="peft=/no/adapter"):
        check_model_args({"pretrained": str(tmp_path), "peft": "/no/adapter"})


def test_the_hf_backend_checks_the_path_before_loading(tmp_path):
    """Patch 4: every way of building lm-eval's HF model (used by the Python API and safespace-eval) checks first."""
    import lm_eval.api.registry

    from lm_eval.models.huggingface import HFLM

    from safespace_tasks import install

    install()  # the patches

    missing = tmp_path / "gone"
    with pytest.raises(ModelPathError, match="does not exist"):
        HFLM(pretrained=str(missing))
    with pytest.raises(ModelPathError, match="does not exist"):
        HFLM(str(missing))
    with pytest.raises(ModelPathError, match="org/name"):
        lm_eval.api.registry.get_model("hf").create_from_arg_string(f"pretrained={missing},dtype=float32")
    assert getattr(HFLM.__init__, "__wrapped__", None) is not None


def test_safespace_eval_exits_2_before_loading_a_missing_model(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO), "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}
    code = "from safespace_tasks.cli import eval_main; eval_main()"
    proc = subprocess.run(
        [sys.executable, "-c", code, "--model", "hf", "--model_args", "pretrained=./no/such/model,dtype=float32",
         "--tasks", "safespace-toxicity-en", "--limit", "4"],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600,
    )
    assert proc.returncode == 2, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("safespace-eval: error: pretrained=./no/such/model: the local path ")
    assert str(tmp_path / "no" / "such" / "model") in last and "org/name" in last
    assert "Initializing hf model" not in proc.stderr and "Traceback" not in proc.stderr


# --- safespace-eval in process: preflight and the settings validator -------------------------------

@pytest.fixture
def harness_cli(monkeypatch):
    """``eval_main`` in this process with lm-eval's execution replaced by a recorder; patches undone afterwards."""
    from lm_eval._cli import HarnessCLI
    from lm_eval.tasks import TaskManager

    monkeypatch.setattr(TaskManager, "__init__", TaskManager.__init__)  # restored after the test
    monkeypatch.setattr(sys, "argv", list(sys.argv))
    executed = []
    monkeypatch.setattr(HarnessCLI, "execute", lambda self, args: executed.append(args))
    return executed


def _fake_validator(monkeypatch, fn):
    """Plant ``fn`` as the harness's ``validate_metadata`` (the function the CLI calls)."""
    from safespace_tasks.harness import core

    monkeypatch.setattr(core, "validate_metadata", fn)


def test_the_validator_sees_the_safespace_tasks_and_metadata_before_lm_eval_runs(monkeypatch, harness_cli, tmp_path):
    calls = []
    _fake_validator(monkeypatch, lambda names, metadata: calls.append((names, metadata)))
    cli.eval_main(["--model", "hf", "--model_args", f"pretrained={tmp_path}", "--tasks", "safespace-toxicity-en,hellaswag",
                   "safespace_paradetox", "--metadata", json.dumps({"pca_components": 5})])
    assert calls == [(["safespace-toxicity-en", "safespace_paradetox"], {"pca_components": 5})]
    assert len(harness_cli) == 1 and harness_cli[0].command == "run"


def test_a_validator_error_stops_with_exit_2_and_its_message(monkeypatch, harness_cli, tmp_path, capsys):
    def validate(names, metadata):
        if "pca_componets" in metadata:
            raise ValueError("unknown setting pca_componets=5; did you mean pca_components?")

    _fake_validator(monkeypatch, validate)
    with pytest.raises(SystemExit) as stop:
        cli.eval_main(["run", "--model", "hf", "--model_args", f"pretrained={tmp_path}", "--tasks", "safespace_toxicity",
                       "--metadata", json.dumps({"pca_componets": 5})])
    assert stop.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "safespace-eval: error: unknown setting pca_componets=5; did you mean pca_components?")
    assert harness_cli == []  # lm-eval never ran


def test_no_safespace_task_is_a_no_op(monkeypatch, harness_cli, tmp_path):
    calls = []
    _fake_validator(monkeypatch, lambda names, metadata: calls.append(names))
    cli.eval_main(["--model", "hf", "--model_args", f"pretrained={tmp_path}", "--tasks", "hellaswag"])
    cli.eval_main(["ls", "tasks"])
    assert calls == [] and len(harness_cli) == 2


def test_model_path_is_checked_before_the_validator(monkeypatch, harness_cli, capsys):
    calls = []
    _fake_validator(monkeypatch, lambda names, metadata: calls.append(names))
    with pytest.raises(SystemExit) as stop:
        cli.eval_main(["--model", "hf", "--model_args", '{"pretrained": "/no/such/model"}', "--tasks", "safespace_toxicity"])
    assert stop.value.code == 2 and calls == [] and harness_cli == []
    assert "pretrained=/no/such/model: the local path /no/such/model does not exist" in capsys.readouterr().err


def test_the_task_folder_patch_puts_ours_first_and_keeps_the_users(monkeypatch):
    """Patch 5, on a recording stand-in for ``TaskManager.__init__`` (building a real one indexes every lm-eval task)."""
    from lm_eval.tasks import TaskManager

    from safespace_tasks.harness.patches import install_task_dir
    from safespace_tasks import task_dir

    seen = []
    monkeypatch.setattr(TaskManager, "__init__", lambda self, *a, include_path=None, **k: seen.append(include_path))
    install_task_dir(task_dir())
    install_task_dir(task_dir())  # idempotent: wrapped once
    tm = TaskManager.__new__(TaskManager)
    tm.__init__(include_path="/mine")
    tm.__init__(include_path=["/a", str(task_dir())])
    tm.__init__()
    ours = str(task_dir())
    assert seen == [[ours, "/mine"], [ours, "/a"], [ours]]


# --- safespace: the subcommand table -----------------------------------------------------------------

def test_units_is_delegated_with_its_arguments(monkeypatch):
    seen = []
    module = types.ModuleType("safespace_tasks.units_cli")
    module.main = lambda argv: seen.append(argv) or 3
    monkeypatch.setitem(sys.modules, "safespace_tasks.units_cli", module)
    assert cli.main(["units", "mask", "--out", "x"]) == 3
    assert seen == [["mask", "--out", "x"]]


def test_a_delegated_subcommand_gets_its_arguments_and_returns_its_status(monkeypatch):
    seen = []
    monkeypatch.setitem(cli.SUBCOMMANDS, "nothing", cli.Subcommand("test", delegate=lambda argv: seen.append(argv)))
    assert cli.main(["nothing", "x"]) == 0
    assert seen == [["x"]]


def test_every_subcommand_is_listed_and_include_path_prints_the_folder(capsys):
    from safespace_tasks import task_dir

    with pytest.raises(SystemExit):
        cli.main(["--help"])
    usage = capsys.readouterr().out
    for name in ("include-path", "model-path", "report", "units"):
        assert name in usage
    assert cli.main(["include-path"]) == 0
    assert capsys.readouterr().out.strip() == str(task_dir())


def test_model_args_from_a_config_file_are_checked_too(harness_cli, tmp_path, capsys):
    config = tmp_path / "run.yaml"
    config.write_text("model: hf\nmodel_args: pretrained=../missing-model,dtype=float32\ntasks: [safespace-toxicity-en]\n")
    with pytest.raises(SystemExit) as stop:
        cli.eval_main(["run", "--config", str(config)])
    assert stop.value.code == 2 and harness_cli == []
    assert "pretrained=../missing-model: the local path" in capsys.readouterr().err
