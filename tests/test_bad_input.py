"""Regression tests for the bad input of issue 18's table, through the real CLI on a tiny model.

Rows already covered elsewhere (each a regression test there):
- settings (typo, 2.7, "ture", ridge -1, "ten", "abc"): tests/test_corpus.py
  (``test_bad_settings_name_the_key_the_value_and_the_allowed_range``, ``test_validate_metadata_before_the_model``,
  ``test_validate_cli_args_reads_the_command_line_as_lm_eval_does``) and tests/test_cli.py (exit 2 before the model);
- a missing local model path: tests/test_cli.py (``test_safespace_eval_exits_2_before_loading_a_missing_model``);
- an encoder-only model: tests/test_capture.py (``test_encoder_only_model_is_refused_with_the_architectures_that_work``);
- a non-numeric value in a results JSON: tests/test_report.py
  (``test_non_numeric_and_missing_values_are_named_with_the_languages_each_mean_covers``).

Here: the data rows, as a new user meets them (a mirror folder of their own, ``safespace-eval``).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from behaviour_helpers import load_run, run_cli, synthetic_texts, write_jsonl

TOX = "multilingual_toxicity_dataset"
PARA = "multilingual_paradetox"


def _args(model: Path, tasks: str, out: Path, limit: int = 40) -> list[str]:
    return ["--model", "hf", "--model_args", f"pretrained={model},dtype=float32", "--device", "cpu",
            "--tasks", tasks, "--limit", str(limit), "--batch_size", "8", "--output_path", str(out),
            "--metadata", json.dumps({"bootstrap_iters": 50, "pca_components": 4, "n_permutations": 30})]


def _details(out: Path) -> dict:
    return json.loads(next(out.rglob("safespace_details_*.json")).read_text())


@pytest.mark.parametrize("family", ["toxicity", "paradetox"])
def test_a_file_whose_texts_are_all_one_string_is_a_clear_message_not_an_index_error(family, tiny_model, tmp_path):
    if family == "toxicity":  # the same text under both labels: every row is excluded
        write_jsonl(tmp_path / "data" / TOX / "en.jsonl", [{"text": "you are an idiot", "toxic": i % 2} for i in range(60)])
    else:  # toxic == neutral in every pair
        write_jsonl(tmp_path / "data" / PARA / "en.jsonl",
                    [{"toxic_sentence": "same words", "neutral_sentence": "same words"} for _ in range(30)])
    proc = run_cli(_args(tiny_model, f"safespace-{family}-en", tmp_path / "out"),
                   {"SAFESPACE_DATA_DIR": str(tmp_path / "data")}, timeout=900)
    text = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "IndexError" not in text and "out of bounds" not in text
    cause = "60 conflicting labels" if family == "toxicity" else "30 identical pairs"
    assert "'en'" in text and cause in text and "every text the same string" in text
    assert not list((tmp_path / "out").rglob("results_*.json"))


@pytest.fixture(scope="module")
def degenerate_run(tiny_model, tmp_path_factory):
    """One run over three planted languages:

    - toxicity ``en``: one string per class, repeated (20 x "you are an idiot", 20 x "have a nice day");
    - toxicity ``de``: 40 distinct texts, then 7 planted exact copies of toxic texts (``n_duplicate_texts`` = 7);
    - paradetox ``en``: one pair, repeated 20 times.
    """
    root = tmp_path_factory.mktemp("bad_input")
    data = root / "data"
    write_jsonl(data / TOX / "en.jsonl",
                [{"text": "you are an idiot" if i % 2 else "have a nice day", "toxic": i % 2} for i in range(40)])
    rows = synthetic_texts(20, seed=3)  # 40 distinct texts, 20 per class
    toxic = [r for r in rows if r["toxic"] == 1]
    # the loader's seeded stratified order decides which rows --limit keeps: keep every row (limit = all rows)
    planted = rows + [dict(toxic[i]) for i in range(7)]
    write_jsonl(data / TOX / "de.jsonl", planted)
    write_jsonl(data / PARA / "en.jsonl",
                [{"toxic_sentence": "you are an idiot", "neutral_sentence": "you are a nice person"}] * 20)
    out = root / "out"
    proc = run_cli(_args(Path(tiny_model), "safespace-toxicity-en,safespace-toxicity-de,safespace-paradetox-en", out,
                         limit=len(planted)), {"SAFESPACE_DATA_DIR": str(data)}, timeout=1500)
    assert proc.returncode == 0, proc.stderr[-4000:]
    results, _ = load_run(out)
    return results["results"], _details(out), proc.stderr, out


def _layer(details: dict, task: str) -> dict:
    (layer,) = details[task]["metrics_by_layer"].values()
    return layer


def test_one_string_per_class_repeated_is_nan_with_the_reason_never_a_huge_number(degenerate_run):
    results, details, log, _ = degenerate_run
    row, layer = results["safespace-toxicity-en"], _layer(details, "safespace-toxicity-en")
    for m in ("bcv_ratio", "bhattacharyya", "silhouette", "probe_auroc"):
        assert math.isnan(row[f"{m},none"]), (m, row[f"{m},none"])
        assert row[f"{m}_stderr,none"] == "N/A"
        assert "distinct state" in layer["degenerate"][m]
        assert math.isnan(row[f"{m}_null,none"]) and math.isnan(row[f"{m}_p,none"])
    assert details["safespace-toxicity-en"]["n_degenerate_metrics"] == 4
    assert details["safespace-toxicity-en"]["n_duplicate_texts"] == 38  # 40 texts, 2 distinct
    assert "bhattacharyya is NaN" in log  # the log names it too
    # no huge number anywhere in the row, no interval below 0
    for k, v in row.items():
        if isinstance(v, float) and math.isfinite(v):
            assert abs(v) < 1e3, (k, v)
    for m, (lo, hi) in layer["ci"].items():
        assert not (lo < 0 and m != "silhouette"), (m, lo)


def test_planted_copies_of_a_text_are_counted_and_grouped(degenerate_run):
    results, details, _, _ = degenerate_run
    d = details["safespace-toxicity-de"]
    assert d["n_texts"] == 47 and d["n_duplicate_texts"] == 7
    diag = _layer(details, "safespace-toxicity-de")["diagnostics"]
    assert diag["n_groups"] == 40 and diag["n_texts_sharing_a_group"] == 14  # 7 texts, each twice
    assert diag["probe_grouped"] is True and diag["bootstrap"] == "stratified, whole groups"
    row = results["safespace-toxicity-de"]
    for m in ("bcv_ratio", "bhattacharyya", "silhouette"):
        assert np.isfinite(row[f"{m},none"]) and np.isfinite(row[f"{m}_null,none"])
        assert 1 / 31 <= row[f"{m}_p,none"] <= 1.0
    lo, hi = _layer(details, "safespace-toxicity-de")["ci"]["bcv_ratio"]
    assert 0.0 <= lo <= hi <= 1.0


def test_one_pair_repeated_gives_no_paired_shift_of_rounding_errors(degenerate_run):
    results, details, _, _ = degenerate_run
    row, layer = results["safespace-paradetox-en"], _layer(details, "safespace-paradetox-en")
    for m in ("paired_shift", "pair_order_acc", "bcv_ratio", "bhattacharyya", "probe_auroc"):
        assert math.isnan(row[f"{m},none"]), (m, row[f"{m},none"])
        assert layer["degenerate"][m]
    assert "distinct toxic-minus-neutral displacements" in layer["degenerate"]["paired_shift"]
    assert details["safespace-paradetox-en"]["n_duplicate_texts"] == 38  # 20 pairs of the same two texts


@pytest.mark.parametrize("meta, words", [
    ({"n_permutations": -1}, ["n_permutations=-1", "must lie in [0, 100000], an integer"]),
    ({"probe_refits": 1.5}, ["probe_refits=1.5", "an integer"]),
    ({"probe_permutations": "many"}, ["probe_permutations='many'", "an integer"]),
    ({"n_permutaions": 10}, ["did you mean n_permutations"]),
])
def test_the_null_floor_settings_are_checked_like_every_other(meta, words):
    from safespace_tasks.harness.corpus import SettingsError
    from safespace_tasks.harness.task import SeparationSettings

    assert SeparationSettings.from_metadata({}).n_permutations == 100
    with pytest.raises(SettingsError) as err:
        SeparationSettings.from_metadata(meta, where="safespace-toxicity-en")
    for w in words:
        assert w.lower() in str(err.value).lower()


def test_saved_states_carry_the_groups_the_metrics_used(degenerate_run):
    """With copies of a text the states file holds the groups the metrics kept whole, so a report
    (or a reviewer) recomputes exactly the reported values and standard errors."""
    from safespace_tasks.metrics import separation_metrics
    from safespace_tasks.states import load_states

    results, details, _, out = degenerate_run
    b = load_states(next(out.rglob("safespace_states_safespace-toxicity-de_*.npz")))
    groups = np.asarray(b.meta["metric_groups"])
    assert groups.shape == (47,) and groups.max() + 1 == 40
    s = b.meta["settings"]
    res = separation_metrics(b.states[:, 0], b.labels, k=s["pca_components"], n_boot=s["bootstrap_iters"],
                             ci_level=s["ci_level"], seed=s["seed"], groups=groups, ridge=s["ridge"],
                             probe_folds=s["probe_folds"], n_permutations=s["n_permutations"])
    row = results["safespace-toxicity-de"]
    for m in ("bcv_ratio", "bhattacharyya", "silhouette", "probe_auroc"):
        assert res.values[m] == pytest.approx(row[f"{m},none"], rel=1e-9)
        assert res.stderr[m] == pytest.approx(row[f"{m}_stderr,none"], rel=1e-9)
    for m in ("bcv_ratio", "bhattacharyya", "silhouette"):
        assert res.p_value[m] == pytest.approx(row[f"{m}_p,none"], rel=1e-12)
