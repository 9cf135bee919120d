"""A non-editable install (the wheel) carries the task YAMLs and finds them."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_wheel_ships_task_configs_and_finds_them(tmp_path):
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(REPO)],
        check=True, capture_output=True, text=True, timeout=600,
    )
    wheel = next(tmp_path.glob("safespace_tasks-*.whl"))
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
        [sys.executable, "-c", "from safespace_tasks.plugin import task_dir; print(task_dir())"],
        capture_output=True, text=True, cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(target)}, check=True,
    )
    found = Path(probe.stdout.strip())
    assert found == target / "safespace_tasks" / "task_configs"
    assert (found / "toxicity" / "_safespace_toxicity.yaml").is_file()
