"""benchmarks/bench_units.py runs end to end in a CI-sized form and writes complete JSON (no timing asserted)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_units_benchmark_writes_paths_ratios_and_memory(tmp_path):
    out = tmp_path / "units.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "bench_units.py"), "--shape", "tiny", "--batches", "1",
                           "--batch-size", "2", "--length", "16", "--repeats", "1", "--out", str(out)],
                          capture_output=True, text=True, env=env, cwd=REPO, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads(out.read_text())
    assert set(r["paths"]) == {"F", "D", "S"} and all(p["seconds_median"] > 0 for p in r["paths"].values())
    for key in ("S/F", "S/D", "mem 4n/n"):
        assert math.isfinite(r["ratios"][key]["value"])
    m = r["memory"]
    assert m["4n"]["tokens"] > 3 * m["n"]["tokens"]
    assert m["4n"]["merged_stats_bytes"] == m["n"]["merged_stats_bytes"] > 0  # O(units), not O(tokens)
    assert m["4n"]["scored_tokens"] > m["n"]["scored_tokens"] > 0
