"""Layer sweeps and the transfer task through the harness: settings, names, the peak summary, and
end-to-end runs on a tiny random model (2 decoder blocks: hidden states 0, 1, 2)."""

from __future__ import annotations

import glob
import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

from safespace_tasks import metric_table as mt
from safespace_tasks.harness.core import SettingsError, validate_metadata
from safespace_tasks.harness.families.toxicity import SeparationSettings, peak_summary
from safespace_tasks.harness.families.transfer import TransferSettings
from safespace_tasks.layer_spec import LayerSpecError, normalize_spec, resolve_spec
from safespace_tasks.states import load_states
from safespace_tasks.stats.transfer import transfer_matrix

from helpers import BIN

REPO = Path(__file__).resolve().parents[2]
SEP = ("bcv_ratio", "bhattacharyya", "silhouette", "probe_auroc")


# --------------------------------------------------------------------------- settings and names (no model)


@pytest.mark.parametrize("value, expected", [
    ("all", ("all",)), ("0:12", ("0:12",)), ("0, 8, -1", (0, 8, -1)), ([-1, "0:2"], (-1, "0:2")),
    (3, (3,)), ("-4:", ("-4:",)),
])
def test_layers_setting_accepts_the_layer_spec_forms(value, expected):
    s = SeparationSettings.from_metadata({"layers": value})
    assert s.layers == expected
    assert s.plain_layers == all(isinstance(x, int) for x in expected)


@pytest.mark.parametrize("value, fragment", [
    ("abc", "neither 'all', an integer nor a range"), ("5:5", "selects no hidden state"),
    ("1:4:0", "step must be a positive integer"), ([1.5], "is a float"), ([], "the list is empty"),
])
def test_bad_layers_fail_before_any_model_with_the_allowed_forms(value, fragment):
    with pytest.raises(SettingsError) as err:
        SeparationSettings.from_metadata({"layers": value})
    assert fragment in str(err.value) and "Allowed forms" in str(err.value)
    with pytest.raises(SettingsError):  # the CLI check (before the model loads) says the same
        validate_metadata("safespace_toxicity,safespace_transfer", {"layers": value})


def test_resolution_keeps_the_written_order_and_labels():
    # an index as written keeps its label (-1 stays -1); ranges and 'all' give absolute indices
    assert resolve_spec([-1, "all"], 4) == ((4, 0, 1, 2, 3), ("-1", "0", "1", "2", "3"))
    assert resolve_spec("1:3", 30) == ((1, 2), ("1", "2"))
    assert resolve_spec([0, -1], 30) == ((0, 30), ("0", "-1"))
    with pytest.raises(LayerSpecError, match="out of range"):
        resolve_spec([40], 30)
    assert normalize_spec("-3:2") == ("-3:2",)  # empty or not depends on the depth: checked later


def test_transfer_settings_check_languages():
    s = TransferSettings.from_metadata({"sources": "en,de", "targets": ["am", "de"]})
    assert s.sources == ("en", "de") and s.targets == ("am", "de") and s.languages() == ["am", "de", "en"]
    assert len(TransferSettings.from_metadata({}).targets) == 15
    with pytest.raises(SettingsError, match="xx"):
        TransferSettings.from_metadata({"targets": ["en", "xx"]})
    with pytest.raises(SettingsError, match="sources"):
        validate_metadata("safespace_transfer", {"sources": 3})


def test_metric_table_knows_the_sweep_and_transfer_names():
    assert mt.base_name("probe_auroc_layer17") == "probe_auroc"
    assert mt.base_name("transfer_ratio_above_chance_en_am_layer3") == "transfer_ratio_above_chance"
    assert mt.base_name("transfer_auroc_en_de") == "transfer_auroc"
    assert mt.higher_is_better("probe_auroc_best") and not mt.spec("probe_auroc_best_layer").family_mean
    assert "probe_auroc_best" not in mt.family_metrics("toxicity")  # added only to sweeps
    with pytest.raises(mt.UnknownMetricError):
        mt.spec("transfer_auroc_en_de_extra!")


def test_group_yaml_lists_per_layer_names_for_a_sweep():
    text = (REPO / "task_configs" / "toxicity" / "_safespace_toxicity.yaml").read_text()
    for name in ("probe_auroc", "probe_auroc_layer0", "bcv_ratio_layer30", "silhouette_layer64"):
        assert f"  - metric: {name}\n" in text
    assert "_layer65" not in text


def test_peak_summary_closed_form():
    layers, suffixes = [30, 0, 1, 2], ["", "_layer0", "_layer1", "_layer2"]
    values = {"m": 0.7, "m_layer0": 0.5, "m_layer1": 0.9, "m_layer2": 0.9}
    stderr = {"m": 0.01, "m_layer1": 0.03, "m_layer2": 0.02}
    out, err, det = peak_summary(values, ["m"], layers, suffixes, 30, stderr)
    # the tie between layers 1 and 2 goes to the shallowest; final = layer 30 (plain name here)
    assert out == {"m_best": 0.9, "m_best_layer": 1.0, "m_final": 0.7}
    assert err == {"m_best": 0.03, "m_final": 0.01}
    assert det["m"]["layers"] == [0, 1, 2, 30] and det["m"]["values"] == [0.5, 0.9, 0.9, 0.7]
    out, _, _ = peak_summary({**values, "m_layer1": float("nan")}, ["m"], layers, suffixes, None)
    assert out["m_best_layer"] == 2.0 and np.isnan(out["m_final"])  # depth unknown: no final claimed


# --------------------------------------------------------------------------- end to end on a tiny model


def _evaluate(tiny_model, mirror, tasks, meta, limit):
    import lm_eval

    from safespace_tasks import task_manager

    meta = {"data_dir": str(mirror), **meta}
    return lm_eval.simple_evaluate(
        model="hf", model_args=f"pretrained={tiny_model},dtype=float32", device="cpu", batch_size=8,
        tasks=tasks, limit=limit, task_manager=task_manager(metadata=meta), metadata=meta,
    )


@pytest.fixture(scope="module")
def sweep_runs(tiny_model, mirror, tmp_path_factory):
    out = {}
    for key, layers in (("all", "all"), ("first", [0]), ("final", [-1])):
        folder = tmp_path_factory.mktemp(f"sweep_{key}")
        res = _evaluate(tiny_model, mirror, ["safespace-toxicity-de"],
                        {"bootstrap_iters": 30, "pca_components": 4, "layers": layers, "save_states_dir": str(folder)}, 24)
        states = load_states(next(folder.glob("safespace_states_safespace-toxicity-de*.npz")))
        out[key] = (res["results"]["safespace-toxicity-de"], states)
    return out


def test_layers_all_equals_single_layer_runs(sweep_runs):
    sweep, states = sweep_runs["all"]
    assert list(states.layers) == [0, 1, 2] and states.states.shape == (24, 3, 32)
    assert states.meta["n_layers"] == 2
    # the plain names are the final layer's (the paper's), the others carry their index
    for key, suffix, index in (("first", "_layer0", 0), ("final", "", 2)):
        single, single_states = sweep_runs[key]
        np.testing.assert_array_equal(states.layer(index), single_states.states[:, 0])  # bit for bit
        for m in SEP:
            assert sweep[f"{m}{suffix},none"] == single[f"{m},none"]
            assert sweep[f"{m}{suffix}_stderr,none"] == single[f"{m}_stderr,none"]
    for m in SEP:  # the middle layer is reported too, and the peak summary
        assert np.isfinite(sweep[f"{m}_layer1,none"])
        values = [sweep[f"{m}_layer0,none"], sweep[f"{m}_layer1,none"], sweep[f"{m},none"]]
        assert sweep[f"{m}_best,none"] == max(values)
        assert sweep[f"{m}_best_layer,none"] == float(int(np.argmax(values)))
        assert sweep[f"{m}_final,none"] == sweep[f"{m},none"]
        assert f"{m}_layer2,none" not in sweep
    assert states.meta["peak"]["probe_auroc"]["final_layer"] == 2
    assert "probe_auroc_best" not in sweep_runs["final"][0] and "probe_auroc_best,none" not in sweep_runs["final"][0]


@pytest.fixture(scope="module")
def transfer_run(tiny_model, mirror, tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("transfer")
    meta = {"data_dir": str(mirror), "bootstrap_iters": 40, "layers": "1:", "targets": ["en", "de", "am"]}
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "SAFESPACE_DATA_DIR": str(mirror)}
    proc = subprocess.run(
        [str(BIN / "safespace-eval"), "--model", "hf", "--model_args", f"pretrained={tiny_model},dtype=float32",
         "--device", "cpu", "--tasks", "safespace_transfer,safespace-toxicity-de", "--limit", "16", "--batch_size", "8",
         "--output_path", str(tmp_path), "--metadata", json.dumps(meta)],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    files = glob.glob(str(tmp_path / "*" / "results_*.json"))
    assert len(files) == 1
    return Path(files[0])


def test_transfer_task_equals_transfer_matrix_on_its_saved_states(transfer_run):
    files = [str(transfer_run)]
    row = json.loads(Path(files[0]).read_text())["results"]["safespace_transfer"]
    folder = Path(files[0]).parent
    b = load_states(next(folder.glob("safespace_states_safespace_transfer_*.npz")))
    assert list(b.layers) == [1, 2] and b.meta["n_texts"] == {"en": 16, "de": 16, "am": 16}  # --limit per language
    sl = b.meta["language_slices"]
    states = {k: b.states[a:z] for k, (a, z) in sl.items()}
    labels = {k: b.labels[a:z] for k, (a, z) in sl.items()}
    m = transfer_matrix(states, labels, sources=["en"], targets=["en", "de", "am"], layers=[1, 2], n_boot=40,
                        seed=1234, n_splits=5)
    names = {"transfer_auroc": "transfer_auroc", "own_auroc": "transfer_own_auroc", "ratio": "transfer_ratio",
             "cosine": "transfer_cosine", "ratio_above_chance": "transfer_ratio_above_chance"}
    for layer, suffix in ((1, "_layer1"), (2, "")):  # "1:" on two layers: the final layer (2) has the plain names
        for tgt in ("en", "de", "am"):
            cell = m.cell("en", tgt, layer)
            for q, prefix in names.items():
                got, want = row[f"{prefix}_en_{tgt}{suffix},none"], cell[q].value
                if got is None:  # strict JSON: a value that could not be computed is null
                    assert np.isnan(want), (q, tgt, layer)
                    continue
                assert got == pytest.approx(want, rel=1e-12), (q, tgt, layer)
            assert row[f"transfer_auroc_en_{tgt}{suffix}_stderr,none"] == pytest.approx(cell["transfer_auroc"].stderr)
    assert row["transfer_auroc_en_en,none"] == row["transfer_own_auroc_en_en,none"]  # the diagonal: own AUROC
    details = json.loads(next(folder.glob("safespace_details_*.json")).read_text())
    saved = details["safespace_transfer"]["transfer_matrix"]
    assert saved["kind"] == "safespace_transfer" and saved["layers"] == [1, 2] and len(saved["cells"]) == 6
    for cell in saved["cells"]:
        want = m.cell(cell["source"], cell["target"], cell["layer"])
        assert cell["transfer_auroc"]["value"] == pytest.approx(want["transfer_auroc"].value, rel=1e-12)
        assert cell["transfer_auroc"]["ci"] == pytest.approx(list(want["transfer_auroc"].ci), rel=1e-12)


def test_report_shows_the_matrix_the_sweep_and_the_gain(transfer_run, tmp_path):
    import shutil

    from safespace_tasks.report import build_report

    run_a = transfer_run.parent
    run_b = tmp_path / "copy" / run_a.name
    shutil.copytree(run_a, run_b)
    res = build_report([run_a, run_b], tmp_path / "rep", labels={run_a: "base", run_b: "aligned"}, base="base",
                       aligned=["aligned"], progress=False)
    md = res.markdown.read_text()
    assert "Cross-lingual transfer" in md and "**Transfer from en**" in md
    assert "Alignment gain in transfer AUROC from en" in md
    assert "| de | " in md and "+0.000" in md  # the same run twice: every gain is exactly 0
    assert res.images["transfer_base"].exists() and res.images["transfer_gain_aligned_vs_base_en"].exists()
    assert res.images["toxicity_layers_probe_auroc_base"].exists()  # every language of the run on one plot
    summary = json.loads(res.summary.read_text())
    results = json.loads(transfer_run.read_text())["results"]["safespace-toxicity-de"]
    arrays = summary["layer_arrays"]["base"]["toxicity"]["probe_auroc"]
    assert arrays["layers"] == [1, 2] and arrays["n_layers"] == 2
    assert arrays["languages"]["de"] == [results["probe_auroc_layer1,none"], results["probe_auroc,none"]]
    cells = summary["transfer"]["base"]["cells"]
    assert {(c["layer"], c["target"]) for c in cells} == {(l, t) for l in (1, 2) for t in ("en", "de", "am")}
    assert "probe_auroc_best" not in md.split("Family: toxicity")[1].split("separation per layer")[0]


def test_family_row_of_a_sweep_averages_the_final_layer(tiny_model, mirror, tmp_path):
    """``layers: all``: each language's plain metric is its final layer, and the family row (the generated group,
    cut to two languages) averages that same layer. ``n_permutations 0``: no null floor, no key for it."""
    from safespace_tasks import task_dir

    text = (Path(task_dir()) / "toxicity" / "_safespace_toxicity.yaml").read_text()
    head, _, rest = text.partition("aggregate_metric_list:")
    group = "group: tiny_toxicity\ntask:\n  - safespace-toxicity-en\n  - safespace-toxicity-de\n"
    (tmp_path / "_tiny_toxicity.yaml").write_text(group + "aggregate_metric_list:" + rest)
    import lm_eval

    from safespace_tasks import task_manager

    meta = {"data_dir": str(mirror), "bootstrap_iters": 10, "pca_components": 4, "layers": "all", "n_permutations": 0}
    res = lm_eval.simple_evaluate(
        model="hf", model_args=f"pretrained={tiny_model},dtype=float32", device="cpu", batch_size=8,
        tasks=["tiny_toxicity"], limit=16,
        task_manager=task_manager(include_path=str(tmp_path), metadata=meta, include_defaults=False),
        metadata=meta,
    )
    rows = [res["results"][f"safespace-toxicity-{lang}"] for lang in ("en", "de")]
    family = res["groups"]["tiny_toxicity"] if "tiny_toxicity" in res.get("groups", {}) else res["results"]["tiny_toxicity"]
    for m in SEP:
        for row in rows:
            assert row[f"{m},none"] == row[f"{m}_final,none"] and f"{m}_layer2,none" not in row
        assert family[f"{m},none"] == pytest.approx(np.mean([r[f"{m},none"] for r in rows]), rel=1e-12)
        assert family[f"{m},none"] == pytest.approx(np.mean([r[f"{m}_final,none"] for r in rows]), rel=1e-12)
    assert family["bcv_ratio,none"] != pytest.approx(np.mean([r["bcv_ratio_layer0,none"] for r in rows]))
    assert not [k for row in rows for k in row if "_null" in k or "_p," in k]  # switched off: no key, no NaN


@pytest.mark.parametrize("layers, absolute, position", [
    ([-1], False, 0), ([0, -1], False, 1), ([-1, 0, 8], False, 0), ([0, 8, 4], False, 1), ([-3, -2], False, 1),
    ([4, -2], False, 0),  # mixed signs without -1: the depth decides, known only once the model answers
    ([0, 1, 2], True, 2), ([30, 0, 1], True, 0), ([5, 7, 7], True, 1),
])
def test_the_plain_names_go_to_the_deepest_layer_read(layers, absolute, position):
    from safespace_tasks.layer_spec import plain_suffixes, unsuffixed_position

    assert unsuffixed_position(layers, absolute=absolute) == position
    suffixes = plain_suffixes([str(x) for x in layers], position)
    assert suffixes.count("") == 1 and suffixes[position] == ""
    assert SeparationSettings.from_metadata({"layers": [0, 8, -1]}).metric_suffixes() == ["_layer0", "_layer8", ""]
