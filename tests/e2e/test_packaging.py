"""The wheel as a user gets it: it carries the task YAMLs, and a plain install (no extras) runs.

The plain-install test builds the wheel, installs it without extras into a fresh virtualenv and runs
``safespace-eval ls tasks`` and a one-language ``--limit`` run on a tiny random model there. The
fresh virtualenv gets the wheel's dependencies in one of two ways:

- ``linked`` (default; offline, seconds): the closure of the wheel's declared requirements (markers
  and extras evaluated as pip does) is resolved against the distributions of the running
  environment, and only those distributions are linked into the fresh virtualenv. A requirement that
  is not declared is not there, so an undeclared import fails as on a fresh machine.
- ``pip`` (``SAFESPACE_PACKAGING_INSTALL=pip``; needs the index or pip's cache, minutes): a real
  ``pip install -c .ci/constraints-cpu.txt <wheel>``.
"""

from __future__ import annotations

import csv
import glob
import importlib.util
import json
import math
import os
import subprocess
import sys
import zipfile
from email.parser import Parser
from importlib import metadata
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PROJECT = "safespace-tasks"


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    # with the build backend at hand, build offline; otherwise pip fetches it into an isolated build env
    isolation = [] if importlib.util.find_spec("hatchling") is None else ["--no-build-isolation"]
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", *isolation, "-q", "-w", str(out), str(REPO)],
        check=True, capture_output=True, text=True, timeout=600,
    )
    return next(out.glob("safespace_tasks-*.whl"))


def test_wheel_ships_task_configs_and_finds_them(wheel, tmp_path):
    names = set(zipfile.ZipFile(wheel).namelist())
    for family, lang in (("toxicity", "am"), ("paradetox", "de"), ("detoxpref", "en")):
        assert f"safespace_tasks/task_configs/{family}/safespace-{family}-{lang}.yaml" in names
        assert f"safespace_tasks/task_configs/{family}/_{family}_template_yaml" in names
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    text = zipfile.ZipFile(wheel).read(entry_points).decode()
    assert "[lm_eval.tasks]" in text and "[lm_eval.models]" in text and "safespace-eval" in text
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
                   check=True, capture_output=True, timeout=600)
    probe = subprocess.run(
        [sys.executable, "-c", "from safespace_tasks import task_dir; print(task_dir())"],
        capture_output=True, text=True, cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(target)}, check=True,
    )
    found = Path(probe.stdout.strip())
    assert found == target / "safespace_tasks" / "task_configs"
    assert (found / "toxicity" / "_safespace_toxicity.yaml").is_file()


def wheel_requirements(wheel: Path) -> list[str]:
    """``Requires-Dist`` of the wheel's METADATA."""
    with zipfile.ZipFile(wheel) as zf:
        name = next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA"))
        meta = Parser().parsestr(zf.read(name).decode())
    return meta.get_all("Requires-Dist") or []


def requirement_closure(requirements: list[str], installed: dict | None = None) -> tuple[dict, list[str]]:
    """The installed distributions a plain install of ``requirements`` needs, and the requirements none satisfies.

    Markers are evaluated for this interpreter, with ``extra`` set to each extra a requirement asks
    for (and to "" for the unconditional ones), as pip's resolver does.
    """
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    if installed is None:
        installed = {}
        for dist in metadata.distributions():
            installed.setdefault(canonicalize_name(dist.metadata["Name"]), dist)
    needed: dict[str, metadata.Distribution] = {}
    extras_done: dict[str, set[str]] = {}
    unmet: list[str] = []
    todo = [(Requirement(r), "") for r in requirements]
    while todo:
        req, extra = todo.pop()
        if req.marker is not None and not req.marker.evaluate({"extra": extra}):
            continue
        name = canonicalize_name(req.name)
        dist = installed.get(name)
        if dist is None or not req.specifier.contains(dist.version, prereleases=True):
            unmet.append(f"{req} (installed: {dist.version if dist else 'none'})")
            continue
        first = name not in needed
        new_extras = {canonicalize_name(e) for e in req.extras} - extras_done.get(name, set())
        if not first and not new_extras:
            continue
        needed[name] = dist
        extras_done.setdefault(name, set()).update(new_extras)
        for line in dist.requires or []:
            for e in ([""] if first else []) + sorted(new_extras):
                todo.append((Requirement(line), e))
    return needed, unmet


def _record_paths(dist) -> list[str]:
    """The paths of a distribution's RECORD, relative to its site-packages (read as text: fast)."""
    text = dist.read_text("RECORD") or ""
    return [row[0] for row in csv.reader(text.splitlines()) if row and row[0]]


def _link_closure(dists: dict, site: Path) -> None:
    """Symlink the files of ``dists`` (and nothing else) into the fresh ``site``-packages."""
    owners: dict[tuple[str, str], set[str]] = {}
    for dist in metadata.distributions():
        base = str(dist.locate_file(""))
        for top in {p.split("/", 1)[0] for p in _record_paths(dist)}:
            owners.setdefault((base, top), set()).add(dist.metadata["Name"])
    for dist in dists.values():
        base = Path(dist.locate_file(""))
        linked: set[str] = set()
        for rel in _record_paths(dist):
            top = rel.split("/", 1)[0]
            if top in ("..", "__pycache__") or rel.endswith(".pyc"):
                continue
            # a top-level folder shared by several distributions (a namespace package) is linked file by file
            shared = len(owners.get((str(base), top), ())) > 1
            key = rel if shared else top
            if key in linked:
                continue
            linked.add(key)
            src, dst = base / key, site / key
            if dst.is_symlink() or dst.exists() or not src.exists():
                continue
            dst.parent.mkdir(parents=True, exist_ok=True)
            dst.symlink_to(src)


def test_requirement_closure_follows_extras_and_markers():
    """Planted metadata: an extra pulls its own requirements, markers for other extras and platforms do not."""

    class Fake:
        def __init__(self, name, version, requires):
            self.metadata, self.version, self.requires = {"Name": name}, version, requires

    installed = {
        "lm-eval": Fake("lm-eval", "0.4.13", ['accelerate>=0.26; extra == "hf"', "numpy", 'vllm; extra == "vllm"']),
        "accelerate": Fake("accelerate", "1.0", ["numpy", 'pywin32; sys_platform == "win32"']),
        "numpy": Fake("numpy", "2.0", None),
    }
    needed, unmet = requirement_closure(["lm-eval>=0.4.13,<0.5"], installed)
    assert set(needed) == {"lm-eval", "numpy"} and unmet == []
    needed, unmet = requirement_closure(["lm-eval[hf]>=0.4.13,<0.5"], installed)
    assert set(needed) == {"lm-eval", "numpy", "accelerate"} and unmet == []
    needed, unmet = requirement_closure(["lm-eval[hf]>=0.5"], installed)
    assert needed == {} and unmet == ["lm-eval[hf]>=0.5 (installed: 0.4.13)"]


def _fresh_venv(root: Path, wheel: Path, mode: str) -> Path:
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=300)
    python = venv / "bin" / "python"
    pip = [sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--disable-pip-version-check"]
    if mode == "pip":
        proc = subprocess.run([*pip, "-c", str(REPO / ".ci" / "constraints-cpu.txt"), str(wheel)],
                              capture_output=True, text=True, timeout=1800)
        assert proc.returncode == 0, proc.stderr[-4000:]
        return venv
    needed, unmet = requirement_closure(wheel_requirements(wheel))
    assert not unmet, f"this environment does not satisfy the wheel's requirements: {unmet}"
    needed.pop(PROJECT, None)
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    _link_closure(needed, site)
    subprocess.run([*pip, "--no-deps", "--no-index", str(wheel)], check=True, capture_output=True, timeout=600)
    return venv


@pytest.mark.packaging
def test_plain_install_lists_and_runs_the_tasks(wheel, tiny_model, mirror, tmp_path):
    mode = os.environ.get("SAFESPACE_PACKAGING_INSTALL", "linked")
    assert mode in ("linked", "pip"), f"SAFESPACE_PACKAGING_INSTALL must be linked or pip, not {mode!r}"
    requires = wheel_requirements(wheel)
    assert any(r.replace(" ", "").startswith("lm-eval[hf]") for r in requires), requires
    venv = _fresh_venv(tmp_path, wheel, mode)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env.update(PATH=f"{venv / 'bin'}:{env.get('PATH', '')}", TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1",
               HF_DATASETS_OFFLINE="1", SAFESPACE_DATA_DIR=str(mirror), OMP_NUM_THREADS="1")
    where = subprocess.run([str(venv / "bin" / "python"), "-c", "import safespace_tasks, lm_eval; print(safespace_tasks.__file__)"],
                           capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert where.returncode == 0, where.stderr[-3000:]
    assert Path(where.stdout.strip()).is_relative_to(venv), f"the wheel's copy must be imported, got {where.stdout}"

    ls = subprocess.run([str(venv / "bin" / "safespace-eval"), "ls", "tasks"],
                        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600)
    assert ls.returncode == 0, ls.stderr[-4000:]
    for task in ("safespace_toxicity", "safespace-toxicity-en", "safespace-paradetox-de", "safespace_recognition"):
        assert task in ls.stdout

    out = tmp_path / "out"
    run = subprocess.run(
        [str(venv / "bin" / "safespace-eval"), "--model", "hf", "--model_args", f"pretrained={tiny_model},dtype=float32",
         "--device", "cpu", "--tasks", "safespace-toxicity-de", "--limit", "24", "--batch_size", "8",
         "--output_path", str(out), "--metadata", json.dumps({"bootstrap_iters": 20})],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=900,
    )
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-4000:]
    files = glob.glob(str(out / "*" / "results_*.json"))
    assert len(files) == 1, files
    row = json.loads(Path(files[0]).read_text())["results"]["safespace-toxicity-de"]
    assert row["sample_len"] == 24
    assert 0.0 <= row["bcv_ratio,none"] <= 1.0 and 0.0 <= row["probe_auroc,none"] <= 1.0
    assert math.isfinite(row["bhattacharyya,none"]) and row["bcv_ratio_stderr,none"] > 0
    assert glob.glob(str(out / "*" / "safespace_states_safespace-toxicity-de_*.npz"))
