"""``safespace export eee``: Every Eval Ever records from one real safespace-eval run of the tiny model.

The run (the toxicity family, 16 texts per language, layers [-1, 1]) is made once for the module; with
8 texts per class the Bhattacharyya distance cannot be computed (NaN in the results JSON), so the
left-out path is exercised by real output. The real ``every_eval_ever validate`` runs where
``$SAFESPACE_EEE_PYTHON`` names a Python that has every_eval_ever (``.ci/run`` sets it up).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from safespace_tasks import metric_table as mt
from safespace_tasks.export import cli as export_cli
from safespace_tasks.export.eee import (
    BEST_LAYER, COUNT, NULL, PVALUE, RANDOM, SCORE, REQUIRED_FIELDS, check_record, classify, export_eee, metric_bounds,
)

REPO = Path(__file__).resolve().parents[2]
MODEL_ID = "test-org/tiny-llama"
EEE_PYTHON = os.environ.get("SAFESPACE_EEE_PYTHON")


def _strict(text: str):
    def no_constant(name):
        raise ValueError(f"non-strict JSON constant {name}")
    return json.loads(text, parse_constant=no_constant)


@pytest.fixture(scope="module")
def run(tiny_model, mirror, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("eee_run")
    code = "import sys; from safespace_tasks.cli import eval_main; sys.argv = ['safespace-eval', *sys.argv[1:]]; eval_main()"
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "SAFESPACE_DATA_DIR": str(mirror)}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    proc = subprocess.run(
        [sys.executable, "-c", code, "--model", "hf", "--model_args", f"pretrained={tiny_model},dtype=float32",
         "--device", "cpu", "--tasks", "safespace_toxicity", "--limit", "16", "--batch_size", "16",
         "--output_path", str(out), "--metadata",
         json.dumps({"layers": [-1, 1], "bootstrap_iters": 20, "n_permutations": 20})],
        capture_output=True, text=True, env=env, cwd=out, timeout=1800,
    )
    assert proc.returncode == 0, proc.stderr[-6000:]
    return out


@pytest.fixture(scope="module")
def exported(run, tmp_path_factory):
    out = tmp_path_factory.mktemp("eee_out") / "eee"
    result = export_eee([run], out, model_id=MODEL_ID)
    records = {}
    for path in result.records:
        record = _strict(path.read_text(encoding="utf-8"))
        records[record["evaluation_results"][0]["evaluation_name"]] = (path, record)
    results_file = next(run.glob("*/results_*.json"))
    doc = json.loads(results_file.read_text())
    details = json.loads(next(run.glob("*/safespace_details_*.json")).read_text())
    return result, records, doc, details


def _by_id(record) -> dict[str, dict]:
    return {r["evaluation_result_id"]: r for r in record["evaluation_results"]}


def test_one_valid_record_per_language_and_the_family_row_in_the_datastore_layout(exported):
    result, records, doc, _ = exported
    tasks = doc["group_subtasks"]["safespace_toxicity"]
    assert sorted(records) == sorted(tasks + ["safespace_toxicity"])
    for name, (path, record) in records.items():
        assert check_record(record) == [], name
        # data/<collection>/<org>/<model>/<uuid4>.json, the collection being the task
        assert path.parts[-5:-1] == ("data", name, "test-org", "tiny-llama")
        assert path.stem[14] == "4"
        assert record["model_info"]["id"] == MODEL_ID and record["schema_version"] == "0.3.0"
        versions = record["eval_library"]["additional_details"]
        assert record["eval_library"]["version"] == doc["lm_eval_version"]
        assert versions["transformers_version"] == doc["transformers_version"] and versions["torch_version"] != "unknown"
        assert versions["safespace_tasks_version"] and versions["task_version"] == str(doc["versions"][name])
        for r in record["evaluation_results"]:
            assert r["evaluation_name"] == name
            assert r["source_data"]["hf_repo"] == "textdetox/multilingual_toxicity_dataset"


def test_each_metric_has_its_direction_bounds_unit_stderr_interval_and_count(exported):
    _, records, doc, details = exported
    n_checked = 0
    for lang in ("en", "de", "am"):
        task = f"safespace-toxicity-{lang}"
        row = doc["results"][task]
        results = _by_id(records[task][1])
        assert records[task][1]["evaluation_results"][0]["source_data"]["hf_split"] == lang
        for key, r in results.items():
            spec = mt.spec(key)
            mc, sd = r["metric_config"], r["score_details"]
            assert mc["lower_is_better"] is (not spec.higher_is_better) and mc["metric_unit"] == spec.unit
            lo, hi = metric_bounds(key)
            assert mc["score_type"] == "continuous" and (mc["min_score"], mc["max_score"]) == (lo, hi)
            assert sd["score"] == row[f"{key},none"]
            unc = sd["uncertainty"]
            assert unc["num_samples"] == 16
            se = row[f"{key}_stderr,none"]
            if se == "N/A":
                assert "standard_error" not in unc
            else:
                assert unc["standard_error"]["value"] == se and unc["standard_error"]["method"] == "bootstrap"
                ci = unc["confidence_interval"]
                assert ci["confidence_level"] == 0.95 and ci["lower"] <= ci["upper"]
                layer = mc["metric_parameters"]["layer"]
                # a sweep's <m>_best / <m>_final carries the interval of <m> at the layer it names
                name = spec.name.rpartition("_")[0] if spec.sweep_only else spec.name
                saved = details[task]["metrics_by_layer"][str(layer)]["ci"][name]
                assert [ci["lower"], ci["upper"]] == saved and unc["num_bootstrap_samples"] == 20
                n_checked += 1
        # the plain name is the final layer (hidden-state index 2 of the 2-layer model), the suffix layer 1
        assert results["bcv_ratio"]["metric_config"]["metric_parameters"]["layer"] == 2
        assert results["bcv_ratio_layer1"]["metric_config"]["metric_parameters"]["layer"] == 1
        assert results["probe_auroc"]["metric_config"]["metric_kind"] == "auroc"
        peak = details[task]["peak"]["silhouette"]
        best = results["silhouette_best"]
        assert best["metric_config"]["metric_parameters"]["layer"] == peak["best_layer"]
        assert best["score_details"]["details"]["best_layer"] == str(peak["best_layer"])
    assert n_checked >= 12


def test_null_floor_and_p_value_are_details_of_their_metric_never_scores(exported):
    _, records, doc, _ = exported
    for name, (_, record) in records.items():
        for key in _by_id(record):
            assert classify(key)[0] == SCORE, key
            assert not key.endswith(("_null", "_p")) and "_null_layer" not in key and "_p_layer" not in key
            assert not mt.is_count(key)
    task = "safespace-toxicity-en"
    row, results = doc["results"][task], _by_id(records[task][1])
    for key in ("bcv_ratio", "silhouette", "bcv_ratio_layer1"):
        base, _, layer = key.partition("_layer")
        tail = f"_layer{layer}" if layer else ""
        got = results[key]["score_details"]["details"]
        assert float(got["null_floor"]) == row[f"{base}_null{tail},none"]
        assert float(got["p_value"]) == row[f"{base}_p{tail},none"] and got["n_permutations"] == "20"
    # the counts describe the data, beside the dataset
    assert results["bcv_ratio"]["source_data"]["additional_details"]["n_truncated"] == "0"


def test_nan_is_never_written_and_each_left_out_metric_is_counted_with_its_reason(exported):
    result, records, doc, _ = exported
    for name, (path, record) in records.items():
        text = path.read_text(encoding="utf-8")
        assert _strict(text) == record  # no NaN / Infinity constant anywhere
        row = doc["results"][name]
        nan_scores = {k.split(",")[0] for k, v in row.items()
                      if (v is None or isinstance(v, float) and math.isnan(v)) and "," in k and "_stderr" not in k
                      and classify(k.split(",")[0])[0] == SCORE}
        assert nan_scores, name  # 8 texts a class: no Bhattacharyya distance anywhere
        assert not nan_scores & set(_by_id(record))
        extra = record["source_metadata"]["additional_details"]
        assert extra["metrics_left_out"] == str(len(nan_scores))
        for key in nan_scores:
            assert extra[f"left_out.{key}"]
        assert {(lo.task, lo.metric) for lo in result.left_out if lo.task == name} == {(name, k) for k in nan_scores}
    en = records["safespace-toxicity-en"][1]["source_metadata"]["additional_details"]
    assert "Gaussian fit" in en["left_out.bhattacharyya"]
    family = records["safespace_toxicity"][1]["source_metadata"]["additional_details"]
    assert family["left_out.bhattacharyya"].startswith("the family mean is undefined: no value in")


def test_the_family_row_record_holds_the_group_means_and_their_languages(exported):
    _, records, doc, _ = exported
    group = doc["results"]["safespace_toxicity"]
    results = _by_id(records["safespace_toxicity"][1])
    assert set(results) == {k.split(",")[0] for k, v in group.items()
                            if "," in k and "_stderr" not in k and isinstance(v, float) and math.isfinite(v)}
    r = results["bcv_ratio"]
    assert r["score_details"]["score"] == group["bcv_ratio,none"]
    assert r["score_details"]["uncertainty"]["standard_error"]["value"] == group["bcv_ratio_stderr,none"]
    assert r["score_details"]["uncertainty"]["num_samples"] == group["sample_count"]["bcv_ratio,none"]
    ci = r["score_details"]["uncertainty"]["confidence_interval"]
    assert ci["lower"] == pytest.approx(group["bcv_ratio,none"] - 1.959964 * group["bcv_ratio_stderr,none"])
    src = r["source_data"]["additional_details"]
    assert src["languages"].split(",") == [t.rsplit("-", 1)[1] for t in doc["group_subtasks"]["safespace_toxicity"]]


def test_a_local_model_needs_model_id_and_a_hub_id_is_taken_from_the_run(run, tmp_path, capsys):
    assert export_cli.main(["eee", str(run), "--out", str(tmp_path / "a")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "local folder" in err and "--model-id" in err
    assert not (tmp_path / "a").exists()
    assert export_cli.main(["eee", str(run), "--out", str(tmp_path / "a"), "--model-id", "/not/an/id"]) == 2
    assert "not a Hub id" in capsys.readouterr().err
    # a run of a Hub model names itself; exporting twice rewrites the same files
    hub = tmp_path / "hub"
    shutil.copytree(run, hub)
    results_file = next(hub.glob("*/results_*.json"))
    doc = json.loads(results_file.read_text())
    doc["model_name"] = "some-org/some-model"
    doc["config"]["model_args"]["pretrained"] = "some-org/some-model"
    results_file.write_text(json.dumps(doc))
    first = export_eee([hub], tmp_path / "data")
    again = export_eee([hub], tmp_path / "data")
    assert sorted(first.records) == sorted(again.records) and len(first.records) == 16
    assert first.records[0].parts[-3:-1] == ("some-org", "some-model")
    assert first.records[0].parts[-6:-4] == (tmp_path.name, "data")  # --out named data is the datastore root


def test_every_metric_of_the_table_has_bounds_and_a_role():
    roles = {}
    for m in mt.METRICS:
        lo, hi = metric_bounds(m.name)
        assert lo < hi, m.name
        roles[m.name] = classify(m.name)
    assert roles["bcv_ratio_null"] == (NULL, "bcv_ratio") and roles["probe_auroc_p"] == (PVALUE, "probe_auroc")
    assert roles["jaccard_random_en_zh"] == (RANDOM, "jaccard_en_zh") and roles["n_excluded"] == (COUNT, None)
    assert roles["direction_gap_best_layer"] == (BEST_LAYER, "direction_gap_best")
    assert classify("silhouette_p_layer3") == (PVALUE, "silhouette_layer3")
    assert metric_bounds("bhattacharyya_null") == metric_bounds("bhattacharyya") == (0.0, math.inf)
    assert metric_bounds("silhouette_best") == (-1.0, 1.0) and metric_bounds("refusal_margin") == (-math.inf, math.inf)
    with pytest.raises(mt.UnknownMetricError):
        metric_bounds("no_such_metric")


def test_check_record_names_missing_fields_nan_and_non_string_details(exported):
    _, records, _, _ = exported
    record = json.loads(json.dumps(records["safespace-toxicity-en"][1]))
    del record["model_info"]["additional_details"]["model_availability"]
    del record["evaluation_results"][0]["metric_config"]["lower_is_better"]
    record["evaluation_results"][1]["score_details"]["score"] = float("nan")
    record["evaluation_results"][2]["score_details"]["details"] = {"null_floor": 0.1}
    record["source_metadata"]["evaluator_relationship"] = "friend"
    problems = "\n".join(check_record(record))
    assert "model_availability: required field missing" in problems
    assert "evaluation_results[0].metric_config.lower_is_better: required field missing" in problems
    assert "nan is not a finite number" in problems and "details values must be strings" in problems
    assert "'friend' is not one of" in problems
    assert set(REQUIRED_FIELDS[""]) >= {"schema_version", "model_info", "evaluation_results"}


@pytest.mark.skipif(not EEE_PYTHON, reason="SAFESPACE_EEE_PYTHON is not set: no Python >= 3.12 with every_eval_ever "
                    "(pip install every-eval-ever==0.3.0; .ci/run sets it up where python3.12 exists)")
def test_real_every_eval_ever_validate_accepts_the_records_and_our_required_fields_are_its_own(run, tmp_path, capsys):
    status = export_cli.main(["eee", str(run), "--out", str(tmp_path / "eee"), "--model-id", MODEL_ID, "--validate"])
    out = capsys.readouterr().out
    assert status == 0, out
    assert "every_eval_ever validate: valid" in out and "16 passed" in out
    schema = subprocess.run(
        [EEE_PYTHON, "-c", "import json, importlib.resources as r; "
         "print(r.files('every_eval_ever').joinpath('schemas/eval.schema.json').read_text())"],
        capture_output=True, text=True, check=True,
    ).stdout
    schema = json.loads(schema)
    props = schema["properties"]
    assert set(REQUIRED_FIELDS[""]) == set(schema["required"])
    assert set(REQUIRED_FIELDS["source_metadata"]) == set(props["source_metadata"]["required"])
    assert set(REQUIRED_FIELDS["eval_library"]) == set(props["eval_library"]["required"])
    assert set(REQUIRED_FIELDS["model_info"]) == set(schema["$defs"]["model_info"]["required"])
    item = props["evaluation_results"]["items"]
    assert set(REQUIRED_FIELDS["evaluation_results[]"]) == set(item["required"])
    assert set(REQUIRED_FIELDS["evaluation_results[].metric_config"]) == set(item["properties"]["metric_config"]["required"])
    assert set(REQUIRED_FIELDS["evaluation_results[].score_details"]) == set(item["properties"]["score_details"]["required"])


def test_a_value_outside_its_range_is_left_out_with_the_reason_and_rounding_at_a_bound_is_kept(run, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    results_file = next(copy.glob("*/results_*.json"))
    doc = json.loads(results_file.read_text())
    doc["results"]["safespace-toxicity-en"]["bcv_ratio,none"] = 1.5
    doc["results"]["safespace-toxicity-de"]["probe_auroc,none"] = 1.0 + 1e-12
    results_file.write_text(json.dumps(doc))
    result = export_eee([copy], tmp_path / "eee", model_id=MODEL_ID)
    (why,) = [lo.reason for lo in result.left_out if (lo.task, lo.metric) == ("safespace-toxicity-en", "bcv_ratio")]
    assert "outside the metric's range [0.0, 1.0]" in why
    de = next(p for p in result.records if p.parts[-4] == "safespace-toxicity-de")
    assert _by_id(_strict(de.read_text()))["probe_auroc"]["score_details"]["score"] == 1.0
