"""Regression tests for the bad input of issue 18's table, through the real CLI on a tiny model.

Rows already covered elsewhere (each a regression test there):
- settings (typo, 2.7, "ture", ridge -1, "ten", "abc"): tests/harness/test_corpus.py
  (``test_bad_settings_name_the_key_the_value_and_the_allowed_range``, ``test_validate_metadata_before_the_model``,
  ``test_validate_cli_args_reads_the_command_line_as_lm_eval_does``) and tests/harness/test_cli.py (exit 2 before the model);
- a missing local model path: tests/harness/test_cli.py (``test_safespace_eval_exits_2_before_loading_a_missing_model``);
- an encoder-only model: tests/harness/test_capture.py (``test_encoder_only_model_is_refused_with_the_architectures_that_work``);
- a non-numeric value in a results JSON: tests/harness/test_report.py
  (``test_non_numeric_and_missing_values_are_named_with_the_languages_each_mean_covers``).

Here: the data rows, as a new user meets them (a mirror folder of their own, ``safespace-eval``), and issue 24's
table: a Latin-1 mirror file, ``--batch_size 0``, a ``--metadata`` JSON syntax error, ``SAFESPACE_DATA_DIR`` naming a
file, an empty mirror folder, a missing language file, layers out of range or of bad syntax (each one line, exit 2,
lm-eval's model loading never reached); strict JSON of every file a run writes, with the reason of each null; no key
for a null floor that was not asked for. The sweep's plain names: tests/harness/test_sweep_tasks.py.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from helpers import load_run, run_cli, synthetic_texts, write_jsonl

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
        assert row[f"{m},none"] is None, (m, row[f"{m},none"])  # strict JSON: null, never NaN
        assert row[f"{m}_stderr,none"] == "N/A"
        assert "distinct state" in layer["degenerate"][m]
        if m == "probe_auroc":  # probe_permutations 0 (the default): its null floor is not computed, no key
            assert f"{m}_null,none" not in row and f"{m}_p,none" not in row
        else:
            assert row[f"{m}_null,none"] is None and row[f"{m}_p,none"] is None
    assert details["safespace-toxicity-en"]["n_degenerate_metrics"] == 4
    assert details["safespace-toxicity-en"]["n_duplicate_texts"] == 38  # 40 texts, 2 distinct
    assert "bhattacharyya is NaN" in log  # the log names it too
    # no huge number anywhere in the row, no interval below 0
    for k, v in row.items():
        if isinstance(v, float) and math.isfinite(v):
            assert abs(v) < 1e3, (k, v)
    for m, (lo, hi) in layer["ci"].items():
        assert not (lo is not None and lo < 0 and m != "silhouette"), (m, lo)


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
        assert row[f"{m},none"] is None, (m, row[f"{m},none"])
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
    from safespace_tasks.harness.core import SettingsError
    from safespace_tasks.harness.families.toxicity import SeparationSettings

    assert SeparationSettings.from_metadata({}).n_permutations == 100
    with pytest.raises(SettingsError) as err:
        SeparationSettings.from_metadata(meta, where="safespace-toxicity-en")
    for w in words:
        assert w.lower() in str(err.value).lower()


def test_saved_states_carry_the_groups_the_metrics_used(degenerate_run):
    """With copies of a text the states file holds the groups the metrics kept whole, so a report
    (or a reviewer) recomputes exactly the reported values and standard errors."""
    from safespace_tasks.stats.separation import separation_metrics
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


# --- issue 24: bad input a new user still hit, each stopped before the model loads -----------------------------


@pytest.fixture
def eval_in_process(monkeypatch):
    """``safespace-eval ARGS`` in this process; lm-eval's execution (model load and run) replaced by a recorder."""
    from lm_eval._cli import HarnessCLI
    from lm_eval.tasks import TaskManager

    import sys

    from safespace_tasks import cli

    monkeypatch.setattr(TaskManager, "__init__", TaskManager.__init__)  # restored after the test
    monkeypatch.setattr(sys, "argv", list(sys.argv))
    executed = []
    monkeypatch.setattr(HarnessCLI, "execute", lambda self, args: executed.append(args))

    def run(args: list[str]) -> tuple[int, str]:
        try:
            cli.eval_main(args)
        except SystemExit as stop:
            return int(stop.code), ""
        return 0, ""

    run.executed = executed
    return run


def _tiny_mirror(root: Path, languages=("en",)) -> Path:
    for lang in languages:
        write_jsonl(root / TOX / f"{lang}.jsonl", synthetic_texts(6, seed=1))
    return root


def _cli_args(model: Path, tasks: str = "safespace-toxicity-en", meta: dict | None = None, batch: str = "8") -> list[str]:
    args = ["--model", "hf", "--model_args", f"pretrained={model},dtype=float32", "--device", "cpu", "--tasks", tasks,
            "--limit", "12", "--batch_size", batch]
    return args + (["--metadata", json.dumps(meta)] if meta is not None else [])


def _latin1(root: Path) -> str:
    path = _tiny_mirror(root) / TOX / "en.jsonl"
    with open(path, "ab") as f:
        f.write('{"text": "caf\u00e9 ol\u00e9", "toxic": 0}\n'.encode("latin-1"))
    return str(root)


def _file(root: Path) -> str:
    root.mkdir(parents=True, exist_ok=True)
    (root / "mirror.jsonl").write_text("{}\n", encoding="utf-8")
    return str(root / "mirror.jsonl")


def _empty(root: Path) -> str:
    root.mkdir(parents=True, exist_ok=True)
    return str(root)


# (case, data dir maker, extra args, words of the one-line error)
BAD_INPUTS = [
    ("latin1 mirror file", _latin1, {}, ["en.jsonl, line 13", "not UTF-8", "byte 0xe9", "must be UTF-8"]),
    ("--batch_size 0", lambda r: str(_tiny_mirror(r)), {"batch": "0"},
     ["--batch_size 0", "positive integer", "'auto'"]),
    ("--metadata syntax error", lambda r: str(_tiny_mirror(r)), {"raw_meta": '{"pca_components": 5 "seed": 1}'},
     ["--metadata is not valid JSON", "Expecting ',' delimiter", "column 22", "key=value"]),
    ("SAFESPACE_DATA_DIR is a file", _file, {}, ["mirror.jsonl is a file, not a folder", "$SAFESPACE_DATA_DIR",
                                                 "one sub-folder per dataset"]),
    ("empty mirror folder", _empty, {}, ["holds none of the dataset folders", "multilingual_toxicity_dataset",
                                         "unset it to read the Hugging Face Hub"]),
    ("missing language file", lambda r: str(_tiny_mirror(r)), {"tasks": "safespace-toxicity-en,safespace-toxicity-de"},
     ["safespace-toxicity-de: mirror file", "multilingual_toxicity_dataset/de.jsonl is missing", "drop the task"]),
    ("layer out of range", lambda r: str(_tiny_mirror(r)), {"meta": {"layers": [0, 5]}},
     ["layer 5 is out of range for a model with 2 decoder layers", "0..2", "config.json"]),
    ("range out of range", lambda r: str(_tiny_mirror(r)), {"meta": {"layers": "0:9"}},
     ["'0:9'", "2 decoder layers"]),
    ("layer syntax", lambda r: str(_tiny_mirror(r)), {"meta": {"layers": "1;2"}}, ["'layers' = '1;2'", "Allowed forms"]),
]


@pytest.mark.parametrize("case, make_dir, extra, words", BAD_INPUTS, ids=[c[0] for c in BAD_INPUTS])
def test_bad_input_is_one_line_naming_it_and_the_fix_before_the_model_loads(case, make_dir, extra, words, tiny_model,
                                                                             tmp_path, monkeypatch, capsys,
                                                                             eval_in_process):
    monkeypatch.setenv("SAFESPACE_DATA_DIR", make_dir(tmp_path / "data"))
    args = _cli_args(tiny_model, extra.get("tasks", "safespace-toxicity-en"), extra.get("meta", {}),
                     extra.get("batch", "8"))
    if "raw_meta" in extra:
        args[-1] = extra["raw_meta"]
    status, _ = eval_in_process(args)
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 2, err[-5:]
    assert eval_in_process.executed == []  # lm-eval never built the model
    line = err[-1]
    assert line.startswith("safespace-eval: error: ") and "Traceback" not in "\n".join(err)
    for w in words:
        assert w in line, (w, line)


def test_a_good_command_line_passes_the_checks(tiny_model, tmp_path, monkeypatch, eval_in_process):
    monkeypatch.setenv("SAFESPACE_DATA_DIR", str(_tiny_mirror(tmp_path / "data")))
    assert eval_in_process(_cli_args(tiny_model, meta={"layers": "all"}, batch="auto:2"))[0] == 0
    assert len(eval_in_process.executed) == 1


def test_the_loader_names_a_latin1_file_and_its_line_for_the_stock_lm_eval(tmp_path):
    """The stock ``lm_eval`` has no preflight: the loader itself gives the same message (after the model loads)."""
    from safespace_tasks.data import DataError, load_rows

    root = _latin1(tmp_path / "data")
    with pytest.raises(DataError) as err:
        load_rows("textdetox/multilingual_toxicity_dataset", "en", root)
    assert "en.jsonl, line 13: not UTF-8 (byte 0xe9" in str(err.value) and "UnicodeDecodeError" not in str(err.value)


def test_results_and_details_are_strict_json_with_the_reason_of_each_null(degenerate_run):
    """No NaN / Infinity in any JSON file of the run; a metric that could not be computed is null, and the
    details file says why; a null floor that was not asked for (the probe's, by default) has no key at all."""
    from safespace_tasks.strict_json import reject_constant

    results, details, _, out = degenerate_run
    files = sorted(out.rglob("*.json"))
    assert any(f.name.startswith("results_") for f in files) and any(f.name.startswith("safespace_details_") for f in files)
    for f in files:
        json.loads(f.read_text(encoding="utf-8"), parse_constant=reject_constant)  # raises on NaN / Infinity
    nulls = details["null_values"]
    assert "distinct state" in nulls["safespace-toxicity-en"]["bcv_ratio,none"]
    assert "distinct state" in nulls["safespace-toxicity-en"]["bcv_ratio_null,none"]  # the floor's reason is its metric's
    assert "displacements" in nulls["safespace-paradetox-en"]["paired_shift,none"]
    assert "safespace-toxicity-de" not in nulls  # a language that computed has no null
    for row in results.values():
        assert not any(k.startswith("probe_auroc_null") or k.startswith("probe_auroc_p,") for k in row)


def test_null_out_and_the_reason_of_a_family_row():
    from safespace_tasks.harness.outputs import null_value_reasons
    from safespace_tasks.strict_json import dumps, null_out

    doc = {"results": {"safespace-toxicity-en": {"bcv_ratio,none": float("nan"), "n,none": 3},
                       "safespace-toxicity-de": {"bcv_ratio,none": 0.25}},
           "groups": {"safespace_toxicity": {"bcv_ratio,none": float("nan"), "bcv_ratio_stderr,none": float("inf")}},
           "group_subtasks": {"safespace_toxicity": ["safespace-toxicity-en", "safespace-toxicity-de"]}}
    clean, paths = null_out(doc)
    assert clean["results"]["safespace-toxicity-en"] == {"bcv_ratio,none": None, "n,none": 3}
    assert math.isnan(doc["results"]["safespace-toxicity-en"]["bcv_ratio,none"])  # the input is left as it was
    assert sorted(paths) == sorted([("results", "safespace-toxicity-en", "bcv_ratio,none"),
                                    ("groups", "safespace_toxicity", "bcv_ratio,none"),
                                    ("groups", "safespace_toxicity", "bcv_ratio_stderr,none")])
    assert json.loads(dumps({"x": [1.0, float("-inf"), np.float32("nan")]})) == {"x": [1.0, None, None]}
    reasons = null_value_reasons(paths, {"safespace-toxicity-en": {"metric_suffixes": {2: ""},
                                                                   "degenerate": {"2": {"bcv_ratio": "one class"}}}}, doc)
    assert reasons["safespace-toxicity-en"]["bcv_ratio,none"] == "could not be computed: one class"
    assert reasons["safespace_toxicity"]["bcv_ratio,none"] == (
        "mean over languages, of which safespace-toxicity-en could not be computed")
    assert reasons["safespace_toxicity"]["bcv_ratio_stderr,none"].startswith("no standard error")
