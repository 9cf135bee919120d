"""The side-by-side report, built from two real safespace-eval runs of tiny random models.

The two runs (3 languages x 40 texts, layers [-1, 1]) are made once per module; every other input
(a missing language, a run without states, another task version, other texts) is derived from
copies of their files, so each bad-input case is a real output folder with one thing wrong.
"""

from __future__ import annotations

import csv
import json
import math
import os
import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest

from safespace_tasks.stats.paired import paired_bootstrap_difference
from safespace_tasks.stats.pairs import paired_shift, paired_shift_difference
from safespace_tasks.stats.separation import separation_metrics
from safespace_tasks.report import ReportInputError, build_report
from safespace_tasks.report.plots import figure_pixels
from safespace_tasks.report.tables import GAP_ROW, MEAN_ROW, SHARED_MEAN_ROW, fmt
from safespace_tasks.states import load_states

REPO = Path(__file__).resolve().parents[2]
LANGS = ("en", "de", "am")
METRICS = ("bcv_ratio", "bhattacharyya", "silhouette", "probe_auroc")
N_BOOT = 60
Z95 = 1.959963984540054


def _run(args: list[str], cwd: Path, env_extra: dict | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", **(env_extra or {})}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env, cwd=cwd, timeout=1800)


def _eval(model: Path, out: Path, mirror: Path) -> Path:
    code = "import sys; from safespace_tasks.cli import eval_main; sys.argv = ['safespace-eval', *sys.argv[1:]]; eval_main()"
    proc = _run(
        ["-c", code, "--model", "hf", "--model_args", f"pretrained={model},dtype=float32", "--device", "cpu",
         "--tasks", ",".join(f"safespace-toxicity-{lang}" for lang in LANGS), "--limit", "40", "--batch_size", "8",
         "--output_path", str(out), "--metadata", json.dumps({"layers": [-1, 1], "bootstrap_iters": N_BOOT})],
        cwd=out, env_extra={"SAFESPACE_DATA_DIR": str(mirror)},
    )
    assert proc.returncode == 0, proc.stderr[-6000:]
    (folder,) = [p.parent for p in out.glob("*/results_*.json")]
    return folder


@pytest.fixture(scope="module")
def runs(tiny_model, sample_texts, mirror, tmp_path_factory) -> dict[str, Path]:
    """Two real runs: the shared tiny Llama ("base") and another seed with one more layer ("aligned")."""
    from helpers import build_tiny_llama

    root = tmp_path_factory.mktemp("report_runs")
    other = build_tiny_llama(root / "llama_b", sample_texts, seed=7, layers=3, max_position_embeddings=128)
    (root / "a").mkdir()
    (root / "b").mkdir()
    return {"base": _eval(tiny_model, root / "a", mirror), "aligned": _eval(other, root / "b", mirror)}


@pytest.fixture(scope="module")
def results(runs) -> dict[str, dict]:
    return {k: json.loads(next(p.glob("results_*.json")).read_text()) for k, p in runs.items()}


@pytest.fixture(scope="module")
def report(runs, tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    return build_report(
        [runs["base"], runs["aligned"]], out, labels={runs["base"]: "base", runs["aligned"]: "aligned"},
        base="base", aligned=["aligned"], html=True, progress=False,
    )


def _csv(path: Path) -> dict[str, dict[str, str]]:
    with path.open(encoding="utf-8") as fh:
        return {row["language"]: row for row in csv.DictReader(fh)}


def _value(results: dict, lang: str, metric: str) -> float:
    return results["results"][f"safespace-toxicity-{lang}"][f"{metric},none"]


def _stderr(results: dict, lang: str, metric: str) -> float:
    return results["results"][f"safespace-toxicity-{lang}"][f"{metric}_stderr,none"]


def png_size(path: Path) -> tuple[int, int]:
    """Width and height from a PNG's IHDR chunk, after checking the signature and the chunk's CRC."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    length, kind = struct.unpack(">I4s", data[8:16])
    assert kind == b"IHDR" and length == 13
    body = data[16:29]
    (crc,) = struct.unpack(">I", data[29:33])
    assert zlib.crc32(kind + body) == crc, f"{path}: corrupt IHDR"
    assert data.endswith(b"IEND\xaeB`\x82"), f"{path}: truncated"
    return struct.unpack(">II", body[:8])


# --------------------------------------------------------------------------- the report of two good runs


def test_tables_hold_the_results_json_numbers(report, results):
    md = report.markdown.read_text(encoding="utf-8")
    for metric in METRICS:
        rows = _csv(report.tables[f"toxicity_{metric}"])
        assert list(rows)[: len(LANGS)] == list(LANGS)
        for lang in LANGS:
            for label in ("base", "aligned"):
                value, se = _value(results[label], lang, metric), _stderr(results[label], lang, metric)
                assert float(rows[lang][label]) == value  # exact: the CSV carries the JSON's float
                assert float(rows[lang][f"{label} stderr"]) == se
                assert f"{fmt(value)} ± {fmt(se)}" in md
            gain = float(rows[lang]["gain aligned − base"])
            assert gain == _value(results["aligned"], lang, metric) - _value(results["base"], lang, metric)


def test_summary_has_values_means_and_english_minus_rest(report, results):
    summary = json.loads(report.summary.read_text(encoding="utf-8"))
    assert summary["format"] == "safespace-report-summary" and summary["ci_level"] == 0.95
    for label in ("base", "aligned"):
        fam = summary["models"][label]["families"]["toxicity"]
        assert fam["languages"] == list(LANGS)
        for metric in METRICS:
            entry = fam["metrics"][metric]
            values = {lang: _value(results[label], lang, metric) for lang in LANGS}
            assert entry["per_language"] == values
            assert entry["stderr"] == {lang: _stderr(results[label], lang, metric) for lang in LANGS}
            assert entry["mean"]["value"] == pytest.approx((values["en"] + values["de"] + values["am"]) / 3, rel=1e-12)
            ses = [_stderr(results[label], lang, metric) for lang in LANGS]
            assert entry["mean"]["se"] == pytest.approx(math.sqrt(sum(s * s for s in ses)) / 3, rel=1e-12)
            gap = values["en"] - (values["de"] + values["am"]) / 2
            assert entry["english_minus_rest"]["value"] == pytest.approx(gap, rel=1e-12, abs=1e-15)
            assert entry["english_minus_rest"]["languages"] == ["en", "de", "am"]
    # the table's summary rows say the same
    rows = _csv(report.tables["toxicity_bcv_ratio"])
    gap = summary["models"]["aligned"]["families"]["toxicity"]["metrics"]["bcv_ratio"]["english_minus_rest"]["value"]
    assert float(rows[GAP_ROW]["aligned"]) == gap
    assert float(rows[MEAN_ROW]["base"]) == summary["models"]["base"]["families"]["toxicity"]["metrics"]["bcv_ratio"]["mean"]["value"]


def test_gains_use_a_paired_bootstrap_over_the_shared_texts(report, results, runs):
    summary = json.loads(report.summary.read_text(encoding="utf-8"))
    (pair,) = summary["gains"]
    assert (pair["base"], pair["aligned"]) == ("base", "aligned")
    for metric in METRICS:
        block = pair["families"]["toxicity"][metric]
        for lang in LANGS:
            g = block["per_language"][lang]
            expected = _value(results["aligned"], lang, metric) - _value(results["base"], lang, metric)
            assert g["gain"] == expected
            assert g["method"] == "paired bootstrap" and g["n_boot"] == N_BOOT
            assert g["se"] > 0
            # the paired bootstrap's own interval (basic, or the probe's CV-corrected t), not gain +- z SE
            assert g["ci"][0] < g["ci"][1]
        gains = [block["per_language"][lang] for lang in LANGS]
        assert block["mean"]["value"] == pytest.approx(sum(g["gain"] for g in gains) / 3, rel=1e-12, abs=1e-15)
        en_rest = gains[0]["gain"] - (gains[1]["gain"] + gains[2]["gain"]) / 2
        assert block["english_minus_rest"]["value"] == pytest.approx(en_rest, rel=1e-12, abs=1e-15)
    # the paired SE is the spread of one shared resample scored on both models: recompute it for en
    a = load_states(next(runs["base"].glob("safespace_states_safespace-toxicity-en_*.npz")))
    b = load_states(next(runs["aligned"].glob("safespace_states_safespace-toxicity-en_*.npz")))
    assert np.array_equal(a.ids, b.ids)
    res = paired_bootstrap_difference(a.states[:, 0], b.states[:, 0], a.labels, k=10, n_boot=N_BOOT, seed=1234)
    assert pair["families"]["toxicity"]["bcv_ratio"]["per_language"]["en"]["se"] == pytest.approx(res.stderr["bcv_ratio"])
    for metric in METRICS:
        assert pair["families"]["toxicity"][metric]["per_language"]["en"]["ci"] == pytest.approx(list(res.ci[metric]))


def test_images_are_pngs_of_the_expected_size(report):
    img = report.out / "img"
    expected = {
        "toxicity_values.png": figure_pixels(1, 4, "bars"),        # 4 metrics in one row
        "toxicity_gain_aligned_vs_base.png": figure_pixels(1, 4, "bars"),
        "toxicity_pca.png": figure_pixels(2, 3, "pca"),             # 3 languages across, 2 models down
        "toxicity_layers_bcv_ratio.png": figure_pixels(1, 3, "sweep"),
    }
    assert expected["toxicity_pca.png"] == (3 * 260, 2 * 250 + 60)
    for name, size in expected.items():
        assert png_size(img / name) == size, name
    assert set(report.images.values()) >= {img / n for n in expected}


def test_markdown_and_html_put_tables_and_pictures_together(report):
    md = report.markdown.read_text(encoding="utf-8")
    for name in ("img/toxicity_values.png", "img/toxicity_pca.png", "img/toxicity_gain_aligned_vs_base.png"):
        assert f"]({name})" in md
    assert "| language | base | aligned | gain aligned − base |" in md
    html = report.html.read_text(encoding="utf-8")
    assert html.count('src="data:image/png;base64,') == len(report.images)
    assert "<table>" in html and "paired bootstrap" in html


def test_layer_sweep_numbers_follow_the_hidden_state_index(report, results):
    summary = json.loads(report.summary.read_text(encoding="utf-8"))
    # base: 2 blocks, so -1 is index 2; aligned: 3 blocks, -1 is index 3; both also report layer 1
    base = summary["layers"]["base"]["toxicity"]["bcv_ratio"]["de"]
    aligned = summary["layers"]["aligned"]["toxicity"]["bcv_ratio"]["de"]
    assert base == {"2": _value(results["base"], "de", "bcv_ratio"), "1": _value(results["base"], "de", "bcv_ratio_layer1")}
    assert set(aligned) == {"3", "1"}


def test_cli_writes_the_report_and_names_what_it_wrote(runs, tmp_path):
    proc = _run(["-m", "safespace_tasks.cli", "report", str(runs["base"].parent), str(runs["aligned"].parent),
                 "--out", str(tmp_path / "r"), "--base", str(runs["base"]), "--no-plots", "-q"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "report:" in proc.stdout and (tmp_path / "r" / "report.md").is_file()
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert len(summary["gains"]) == 1 and summary["gains"][0]["aligned"] != summary["gains"][0]["base"]
    assert not (tmp_path / "r" / "img").exists()


def test_report_needs_neither_torch_nor_lm_eval(runs, tmp_path):
    code = (
        "import sys; from safespace_tasks.report import build_report; "
        f"build_report([{str(runs['base'])!r}, {str(runs['aligned'])!r}], {str(tmp_path / 'r')!r}, progress=False); "
        "bad = [m for m in ('torch', 'lm_eval', 'transformers') if m in sys.modules]; "
        "assert not bad, bad"
    )
    proc = _run(["-c", code], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]


# --------------------------------------------------------------------------- bad input


def _copy(folder: Path, dest: Path) -> Path:
    target = dest / folder.name
    shutil.copytree(folder, target)
    return target


def _edit_results(folder: Path, edit) -> None:
    path = next(folder.glob("results_*.json"))
    doc = json.loads(path.read_text())
    edit(doc)
    path.write_text(json.dumps(doc))


def _texts(report, level: str | None = None) -> str:
    return "\n".join(n.text for n in report.notices if level is None or n.level == level)


def test_missing_language_is_reported_and_the_rest_compared(runs, results, tmp_path):
    b = _copy(runs["aligned"], tmp_path / "b")

    def drop_am(doc):
        del doc["results"]["safespace-toxicity-am"]

    _edit_results(b, drop_am)
    next(b.glob("safespace_states_safespace-toxicity-am_*.npz")).unlink()
    rep = build_report([runs["base"], b], tmp_path / "r", labels={runs["base"]: "base", b: "aligned"},
                       base="base", aligned=["aligned"], plots=False, progress=False)
    assert "aligned lacks am" in _texts(rep, "warning")
    rows = _csv(rep.tables["toxicity_bcv_ratio"])
    assert rows["am"]["aligned"] == "" and rows["am"]["gain aligned − base"] == ""
    assert float(rows["am"]["base"]) == _value(results["base"], "am", "bcv_ratio")
    summary = json.loads(rep.summary.read_text())
    assert set(summary["gains"][0]["families"]["toxicity"]["bcv_ratio"]["per_language"]) == {"en", "de"}
    shared = summary["models"]["base"]["families"]["toxicity"]["metrics"]["bcv_ratio"]["mean_shared"]
    assert shared["languages"] == ["en", "de"]
    md = rep.markdown.read_text()
    assert "| am | " in md and "mean (shared languages)" in md


def test_run_without_saved_states_falls_back_to_independent_intervals(runs, results, tmp_path):
    a = _copy(runs["base"], tmp_path / "a")
    for f in a.glob("safespace_states_*.npz"):
        f.unlink()
    rep = build_report([a, runs["aligned"]], tmp_path / "r", labels={a: "base", runs["aligned"]: "aligned"},
                       base="base", aligned=["aligned"], progress=False)
    text = _texts(rep)
    assert "base has no usable saved states for en, de, am" in text
    assert "PCA pictures and paired gain intervals are not" in text
    summary = json.loads(rep.summary.read_text())
    g = summary["gains"][0]["families"]["toxicity"]["silhouette"]["per_language"]["de"]
    se = math.hypot(_stderr(results["base"], "de", "silhouette"), _stderr(results["aligned"], "de", "silhouette"))
    assert g["method"] == "independent" and g["se"] == pytest.approx(se, rel=1e-12)
    # same data, settings and text count: the note says the interval is conservative, not exact
    assert "most likely measured the same texts" in _texts(rep, "note") and "conservative" in text
    assert _csv(rep.tables["toxicity_silhouette"])["de"]["gain aligned − base method"] == "independent"
    assert "* marks an independent interval" in rep.markdown.read_text()
    assert png_size(rep.images["toxicity_pca"]) == figure_pixels(2, 3, "pca")  # the other model's panels still drawn


def test_different_task_versions_are_flagged(runs, tmp_path):
    b = _copy(runs["aligned"], tmp_path / "b")

    def bump(doc):
        doc["versions"]["safespace-toxicity-en"] = 2.0

    _edit_results(b, bump)
    rep = build_report([runs["base"], b], tmp_path / "r", labels={runs["base"]: "base", b: "aligned"},
                       base="base", aligned=["aligned"], plots=False, progress=False)
    assert "differ in en: task version 1.0 vs 2.0" in _texts(rep, "warning")
    summary = json.loads(rep.summary.read_text())
    per_lang = summary["gains"][0]["families"]["toxicity"]["bcv_ratio"]["per_language"]
    assert per_lang["en"]["flags"] == ["†"] and "flags" not in per_lang["de"]
    assert "†" in rep.markdown.read_text()


def test_runs_on_different_texts_cannot_be_paired(runs, results, tmp_path):
    b = _copy(runs["aligned"], tmp_path / "b")
    path = next(b.glob("safespace_states_safespace-toxicity-de_*.npz"))
    with np.load(path) as f:
        arrays = {k: f[k] for k in f.files}
    arrays["ids"] = arrays["ids"] + 100_000  # same numbers reported, other texts measured
    np.savez(path, **arrays)
    rep = build_report([runs["base"], b], tmp_path / "r", labels={runs["base"]: "base", b: "aligned"},
                       base="base", aligned=["aligned"], plots=False, progress=False)
    assert "the runs measured different texts (40 and 40 texts, 0 shared)" in _texts(rep, "note")
    assert "same texts" not in _texts(rep, "note")  # the states show they are not: no conservative note
    per_lang = json.loads(rep.summary.read_text())["gains"][0]["families"]["toxicity"]["bcv_ratio"]["per_language"]
    assert per_lang["de"]["method"] == "independent" and per_lang["en"]["method"] == "paired bootstrap"


def test_states_that_do_not_match_the_results_are_not_used(runs, tmp_path):
    a = _copy(runs["base"], tmp_path / "a")

    def change(doc):
        doc["results"]["safespace-toxicity-en"]["bcv_ratio,none"] = 0.5

    _edit_results(a, change)
    rep = build_report([a, runs["aligned"]], tmp_path / "r", plots=False, progress=False)
    text = _texts(rep, "warning")
    assert "does not belong to these results: its bcv_ratio is" in text and "says 0.5" in text
    assert rep.comparison.task(rep.comparison.labels[0], "toxicity", "en").states_path is None
    assert rep.comparison.task(rep.comparison.labels[0], "toxicity", "de").states_path is not None


def test_folder_without_runs_and_runs_without_safespace_tasks_fail_clearly(runs, tmp_path):
    (tmp_path / "empty").mkdir()
    proc = _run(["-m", "safespace_tasks.cli", "report", str(tmp_path / "empty"), "--out", str(tmp_path / "r")],
                cwd=tmp_path)
    assert proc.returncode == 2 and "no lm-eval results here" in proc.stderr
    other = _copy(runs["base"], tmp_path / "o")

    def only_hellaswag(doc):
        doc["results"] = {"hellaswag": {"alias": "hellaswag", "acc,none": 0.3}}

    _edit_results(other, only_hellaswag)
    with pytest.raises(ReportInputError, match="none of the runs holds a safespace task"):
        build_report([other], tmp_path / "r2", progress=False)
    with pytest.raises(ReportInputError, match="neither a run label"):
        build_report([runs["base"]], tmp_path / "r3", base="nope", progress=False)


def test_other_suites_are_reported_beside_ours_and_rows_without_a_number_are_named(runs, tmp_path):
    a = _copy(runs["base"], tmp_path / "a")

    def add_hellaswag(doc):
        doc["results"]["hellaswag"] = {"alias": "hellaswag", "acc,none": 0.3, "acc_stderr,none": 0.01,
                                       "acc_norm,none": 0.35, "acc_norm_stderr,none": 0.02}
        doc["results"]["broken"] = {"alias": "broken", "acc,none": "N/A"}

    _edit_results(a, add_hellaswag)
    rep = build_report([a], tmp_path / "r", plots=False, progress=False)
    assert "not in the report: broken." in _texts(rep, "note")
    assert rep.comparison.families == ["toxicity"]
    assert rep.suites.suites == ["hellaswag"] and rep.suites.metric["hellaswag"] == "acc_norm"
    assert "| hellaswag | acc_norm | 0.35 ± 0.02 |" in rep.markdown.read_text(encoding="utf-8")


# --------------------------------------------------------------------------- paired bootstrap


def _two_classes(n: int, d: int, shift: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = np.repeat([0, 1], n // 2)
    X = rng.normal(size=(n, d))
    X[y == 1, 0] += shift
    return X, y


def test_paired_bootstrap_reproduces_each_model_and_pairs_the_resamples():
    X, y = _two_classes(80, 12, 1.5, 0)
    rng = np.random.default_rng(1)
    X2 = X + 0.05 * rng.normal(size=X.shape)  # a second model that barely differs from the first
    res = paired_bootstrap_difference(X, X2, y, k=5, n_boot=100, seed=3)
    for Xm, values, spread in ((X, res.values_a, res.stderr_a), (X2, res.values_b, res.stderr_b)):
        single = separation_metrics(Xm, y, k=5, n_boot=100, seed=3)
        for m in METRICS:
            assert values[m] == pytest.approx(single.values[m], rel=1e-12)
            assert spread[m] == pytest.approx(single.stderr[m], rel=1e-9)
    for m in ("bcv_ratio", "silhouette"):
        assert res.difference[m] == pytest.approx(res.values_b[m] - res.values_a[m])
        # the shared resample cancels what the texts contribute to both: far tighter than independent
        assert res.stderr[m] < 0.25 * math.hypot(res.stderr_a[m], res.stderr_b[m])
        lo, hi = res.ci[m]
        assert lo <= hi


def test_paired_bootstrap_of_a_model_with_itself_is_zero():
    X, y = _two_classes(40, 6, 1.0, 2)
    res = paired_bootstrap_difference(X, X, y, k=3, n_boot=30, seed=0)
    for m in METRICS:
        assert res.difference[m] == 0.0 and res.stderr[m] == 0.0 and res.ci[m] == (0.0, 0.0)


def test_paired_shift_difference_resamples_the_same_pairs_for_both_models():
    rng = np.random.default_rng(5)
    n_pairs, d = 30, 8
    neutral = rng.normal(size=(n_pairs, d))
    toxic = neutral + 0.8 * np.eye(d)[0] + 0.3 * rng.normal(size=(n_pairs, d))
    X = np.vstack([toxic, neutral])
    y = np.repeat([1, 0], n_pairs)
    groups = np.tile(np.arange(n_pairs), 2)
    X2 = X + 0.02 * rng.normal(size=X.shape)
    res = paired_shift_difference(X, X2, y, groups, n_splits=5, n_boot=80, seed=11)
    for Xm, values, spread in ((X, res.values_a, res.stderr_a), (X2, res.values_b, res.stderr_b)):
        single = paired_shift(Xm, y, groups, n_splits=5, n_boot=80, seed=11)
        assert values["paired_shift"] == single.shift and values["pair_order_acc"] == single.order_accuracy
        assert spread["paired_shift"] == pytest.approx(single.stderr["paired_shift"], rel=1e-12)
        assert spread["pair_order_acc"] == pytest.approx(single.stderr["pair_order_acc"], rel=1e-12)
    assert res.difference["paired_shift"] == pytest.approx(res.values_b["paired_shift"] - res.values_a["paired_shift"])
    assert res.stderr["paired_shift"] < 0.25 * math.hypot(res.stderr_a["paired_shift"], res.stderr_b["paired_shift"])



def test_non_numeric_and_missing_values_are_named_with_the_languages_each_mean_covers(runs, results, tmp_path):
    b = _copy(runs["aligned"], tmp_path / "b")

    def spoil(doc):
        doc["results"]["safespace-toxicity-de"]["bcv_ratio,none"] = "oops"
        del doc["results"]["safespace-toxicity-am"]["silhouette,none"]

    _edit_results(b, spoil)
    rep = build_report([runs["base"], b], tmp_path / "r", labels={runs["base"]: "base", b: "aligned"},
                       base="base", aligned=["aligned"], plots=False, progress=False)
    warnings = _texts(rep, "warning")
    assert "aligned's results JSON holds a non-numeric bcv_ratio for de ('oops')" in warnings
    assert "aligned's mean of bcv_ratio covers 2 of 3 languages (en, am)" in warnings
    assert "aligned's results JSON holds no silhouette value for am" in warnings
    assert "aligned's mean of silhouette covers 2 of 3 languages (en, de)" in warnings
    # the mean is over exactly the languages it names, and equals their mean recomputed here
    summary = json.loads(rep.summary.read_text())
    mean = summary["models"]["aligned"]["families"]["toxicity"]["metrics"]["bcv_ratio"]["mean"]
    assert mean["languages"] == ["en", "am"]
    want = (_value(results["aligned"], "en", "bcv_ratio") + _value(results["aligned"], "am", "bcv_ratio")) / 2
    assert mean["value"] == pytest.approx(want, rel=1e-12)
    # the base model's mean is untouched (all three languages)
    assert summary["models"]["base"]["families"]["toxicity"]["metrics"]["bcv_ratio"]["mean"]["languages"] == list(LANGS)
    md = rep.markdown.read_text()
    assert "mean of aligned: over 2 of 3 languages (en, am); left out: de (non-numeric value 'oops')." in md
    assert "left out: am (no value in the results JSON)." in md
    assert "mean of base:" not in md  # a mean over every language needs no such note
    rows = _csv(rep.tables["toxicity_bcv_ratio"])
    assert rows["de"]["aligned"] == "" and rows["de"]["gain aligned − base"] == ""
    # a row's gain belongs to the cells beside it: the mean row (base over 3 languages, aligned over
    # 2) shows none; the shared row shows both models and the gain over en and am
    assert rows[MEAN_ROW]["gain aligned − base"] == ""
    shared = rows[SHARED_MEAN_ROW]
    gains = [float(rows[lang]["gain aligned − base"]) for lang in ("en", "am")]
    assert float(shared["gain aligned − base"]) == pytest.approx(sum(gains) / 2, rel=1e-12)
    assert float(shared["gain aligned − base"]) == pytest.approx(float(shared["aligned"]) - float(shared["base"]), rel=1e-9)
    assert rep.comparison.run("aligned").task_for("toxicity", "de").unreadable == {"bcv_ratio": "oops"}


def test_headings_say_no_gain_when_the_pair_shares_no_language(runs, tmp_path):
    a = _copy(runs["base"], tmp_path / "a")
    b = _copy(runs["aligned"], tmp_path / "b")

    def keep(*langs):
        def edit(doc):
            for lang in LANGS:
                if lang not in langs:
                    del doc["results"][f"safespace-toxicity-{lang}"]
        return edit

    _edit_results(a, keep("am"))
    _edit_results(b, keep("en", "de"))
    rep = build_report([a, b], tmp_path / "r", labels={a: "base", b: "aligned"}, base="base", aligned=["aligned"],
                       plots=False, progress=False)
    md = rep.markdown.read_text()
    assert "Alignment gain" not in md
    assert "**aligned** (aligned) and **base** (base) were marked as a pair, but no gain could be computed" in md
    assert "gain aligned − base: not computed — no language of toxicity has a bcv_ratio value in both runs" in md
    assert not rep.comparison.gains
    # with one shared language the heading names the gain again
    c = _copy(runs["base"], tmp_path / "c")
    _edit_results(c, keep("am", "de"))
    rep2 = build_report([c, b], tmp_path / "r2", labels={c: "base", b: "aligned"}, base="base", aligned=["aligned"],
                        plots=False, progress=False)
    md2 = rep2.markdown.read_text()
    assert "Alignment gain of **aligned** (aligned) against **base** (base) in toxicity." in md2
    assert "not computed" not in md2
