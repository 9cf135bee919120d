"""The benchmark scripts run end to end in a CI-sized form and write complete JSON (no timing asserted)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def run_script(script: str, args: list[str], mirror: Path) -> None:
    env = {**os.environ, "SAFESPACE_DATA_DIR": str(mirror), "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / script), *args], capture_output=True,
                          text=True, env=env, cwd=REPO, timeout=900)
    assert proc.returncode == 0, f"{script} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"


def test_hidden_state_benchmark_writes_every_path_and_ratio(mirror, tmp_path):
    out = tmp_path / "hidden.json"
    run_script("bench_hidden_states.py", ["--mode", "cpu", "--shape", "small", "--n-texts", "32", "--repeats", "1",
                                          "--paths", "abcdnh", "--out", str(out)], mirror)
    r = json.loads(out.read_text())
    assert r["mode"] == "cpu" and r["settings"]["shape"] == "small" and r["texts"]["n"] == 32
    assert set(r["paths"]) == {"a", "b", "c", "d", "n", "h"}
    for p in r["paths"].values():
        assert p["seconds"] > 0 and p["tokens_per_s"] > 0 and p["peak_bytes"] > 0
    for key in ("a/b", "a/c", "d/b", "mem a/b"):
        assert math.isfinite(r["ratios"][key]["value"]) and isinstance(r["ratios"][key]["met"], bool)
    assert r["ratios"]["d/b"]["ideal_L_over_k"] == 2.0
    assert "h/b" in r["ratios"] and "n/b" in r["ratios"] and isinstance(r["targets_met"], bool)
    assert r["checks"]["a_vs_b_max_abs_diff_relative"] < 1e-5  # the harness returns what the limit computes
    assert r["versions"]["lm_eval"] and r["load_average"]["start"] is not None


def test_metrics_benchmark_writes_stages_and_growth(mirror, tmp_path):
    out = tmp_path / "metrics.json"
    run_script("bench_metrics.py", ["--n", "600", "--d", "64", "--n-boot", "20", "--sweep-n", "300,600",
                                    "--sweep-at-d", "32", "--sweep-d", "32,64", "--sweep-at-n", "300",
                                    "--threads", "1", "--out", str(out)], mirror)
    r = json.loads(out.read_text())
    m = r["main"]
    assert (m["n"], m["d"]) == (600, 64) and m["seconds"] > 0
    assert {"validate", "pca", "silhouette", "probe", "bootstrap", "bootstrap_silhouette"} <= set(m["stages"])
    assert set(m["values"]) == {"bcv_ratio", "bhattacharyya", "silhouette", "probe_auroc"}
    assert len(r["sweep_n"]["points"]) == 2 and len(r["sweep_d"]["points"]) == 2
    assert r["growth_exponents"]["total"]["n"] is not None
    assert r["target"]["applies"] is False and r["target"]["met"] is None
