"""The prepared GPU check runs, in its --tiny form, the same code on CPU: every path, the ratios,
the end-to-end safespace-eval run, the time budget and the JSON it writes (no timing asserted)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "benchmarks"))


def _check(args: list[str], mirror: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "SAFESPACE_DATA_DIR": str(mirror), "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}
    env.pop("OUT", None)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return subprocess.run([sys.executable, str(REPO / "benchmarks" / "gpu_check.py"), *args], capture_output=True,
                          text=True, env=env, cwd=REPO, timeout=timeout)


@pytest.fixture(scope="module")
def tiny(mirror, tmp_path_factory, tiny_model) -> dict:
    out = tmp_path_factory.mktemp("gpu_check") / "tiny.json"
    # the tokenizer of the tests' tiny model: no cache or download needed
    proc = _check(["--tiny", "--tokenizer", str(tiny_model), "--out", str(out)], mirror)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads(out.read_text())


def test_tiny_check_runs_every_path_and_ratio_of_the_gpu_run(tiny):
    assert tiny["benchmark"] == "gpu_check" and tiny["mode"] == "tiny (cpu)"
    r = tiny["shapes"]["tiny"]
    assert set(r["paths"]) == set("aAbcdenh")
    for p in r["paths"].values():
        assert p["seconds"] > 0 and p["tokens_per_s"] > 0 and p["peak_bytes"] > 0
    for key in ("a/b", "A/b", "a/c", "A/c", "d/b", "mem a/b", "mem A/b"):
        assert math.isfinite(r["ratios"][key]["value"]) and isinstance(r["ratios"][key]["met"], bool)
    # the harness, at a fixed batch and at batch_size auto, returns exactly what the limit computes
    assert r["checks"]["a_vs_b_max_abs_diff_relative"] < 1e-5
    assert r["checks"]["A_vs_b_max_abs_diff_relative"] < 1e-5
    # auto found the largest batch that fits, capped by --batch-size (8 in tiny mode)
    assert r["settings"]["auto_batch_size"] == 8 and r["settings"]["repetitions_done"] >= 1
    assert {(t["shape"], t["ratio"]) for t in tiny["targets"]} >= {("tiny", "a/b"), ("tiny", "a/c"), ("tiny", "d/b")}
    assert tiny["versions"]["lm_eval"] and tiny["versions"]["torch"]


def test_tiny_check_runs_safespace_eval_on_every_language_of_the_family(tiny):
    e = tiny["end_to_end"]
    assert e["status"] == "ok", e
    assert e["command"].startswith("safespace-eval --model hf --model_args pretrained=MODEL_DIR")
    assert "--batch_size auto" in e["command"] and "--tasks safespace_toxicity" in e["command"]
    assert len(e["languages"]) == 15 and e["texts"] == 15 * 6  # --limit 6 per language in tiny mode
    assert e["seconds"] > 0 and e["group"] is not None


def test_table_of_a_result_lists_paths_targets_and_the_end_to_end_time(tiny, tmp_path):
    from gpu_check import table_markdown

    md = table_markdown(tiny)
    assert "| a — harness pooled_hidden_states (final layer) |" in md
    assert "| A — harness pooled_hidden_states, batch_size auto (one call) |" in md
    assert "| tiny | a/b |" in md and "End to end (`safespace-eval" in md and "for 90 texts in 15 languages" in md


def test_a_budget_too_small_skips_and_says_so(mirror, tmp_path, tiny_model):
    out = tmp_path / "none.json"
    t0 = time.monotonic()
    proc = _check(["--tiny", "--budget-s", "1", "--tokenizer", str(tiny_model), "--out", str(out)], mirror, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads(out.read_text())
    assert r["shapes"] == {} and r["end_to_end"] is None
    assert any("shape tiny" in s for s in r["skipped"]) and any("end-to-end" in s for s in r["skipped"])
    assert time.monotonic() - t0 < 120


def test_measure_starts_no_repetition_past_its_deadline(tiny_model, sample_texts):
    """The first repetition always runs; the next would end past the deadline, so it is not started."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import bench_hidden_states as B

    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(tiny_model)
    dev, _ = B.pick_device("cpu", 1)
    texts = sample_texts[:12]
    r = B.measure(model, model.config, tok, texts, ["en"] * len(texts), dev, shape="small", n_params=1,
                  tokenizer_name="tiny", paths="abA", batch_size=4, repeats=3, chunk_batches=1, layer_k=None,
                  clock="cpu", seed=0, command="test", deadline=time.monotonic())
    assert r["settings"]["repetitions_done"] == 1 and r["settings"]["stopped_by_budget"] is True
    assert len(r["paths"]["a"]["seconds_per_repetition"]) == 1
    assert r["checks"]["A_vs_b_max_abs_diff_relative"] < 1e-5


def test_wheel_list_is_what_lm_eval_and_the_plugin_need_beyond_the_gpu_image():
    from gpu_check import IMAGE_PACKAGES, WHEELS, missing_packages

    needed = missing_packages()
    assert sorted(needed) == sorted(WHEELS), "update WHEELS in benchmarks/gpu_check.py to the installed closure"
    assert "lm-eval" in needed and not set(needed) & IMAGE_PACKAGES
    assert "torch" not in needed and "transformers" not in needed  # the GPU image has its own
