"""The report's overview views on two real runs of tiny random models: other suites beside ours, the
leaderboard, representation vs behaviour per language and the heat map against the null floor.

Each run holds toxicity (3 languages), the refusal margin (4 MultiJail languages), the direction probe
(2) and a standard lm-eval ``multiple_choice`` task read from a local JSON Lines file (a Hub task
cannot be loaded offline), all with ``--log_samples``. Every number a view shows is checked against the
results JSON or the logged samples.
"""

from __future__ import annotations

import csv
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from safespace_tasks.report import build_report
from safespace_tasks.report.glance import CHANCE
from safespace_tasks.report.tables import fmt

REPO = Path(__file__).resolve().parents[2]
LIMIT = 16
Z95 = 1.959963984540054
TOX = ("en", "zh", "it")
MARGIN = ("en", "zh", "it", "th")
DIRECTION = ("en", "th")
MC_YAML = """task: tinymc
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "Question: {{{{question}}}}\\nAnswer:"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: label
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
  - metric: acc_norm
    aggregation: mean
    higher_is_better: true
metadata:
  version: 1.0
"""


def _write_mc_task(folder: Path) -> Path:
    """A tiny arithmetic multiple-choice task (40 questions, the first choice right) as an lm-eval YAML."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(40):
        a, b = 3 + (7 * i) % 17, 2 + (5 * i) % 13
        rows.append({"question": f"What is {a} plus {b}?", "choices": [str(a + b), str(a + b + 1), str(a * b)],
                     "label": 0})
    data = folder / "tinymc.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    (folder / "tinymc.yaml").write_text(MC_YAML.format(data=data), encoding="utf-8")
    return folder


def _start_eval(model: Path, out: Path, mirror: Path, include: Path) -> subprocess.Popen:
    tasks = ([f"safespace-toxicity-{x}" for x in TOX] + [f"safespace-refusal-margin-{x}" for x in MARGIN]
             + [f"safespace-direction-{x}" for x in DIRECTION] + ["tinymc"])
    code = "import sys; from safespace_tasks.cli import eval_main; sys.argv = ['safespace-eval', *sys.argv[1:]]; eval_main()"
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1",
           "SAFESPACE_DATA_DIR": str(mirror), "OMP_NUM_THREADS": "1"}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    out.mkdir()
    log = (out.parent / f"{out.name}.log").open("w", encoding="utf-8")  # a file: a full pipe would stall the run
    proc = subprocess.Popen(
        [sys.executable, "-c", code, "--model", "hf", "--model_args", f"pretrained={model},dtype=float32",
         "--device", "cpu", "--include_path", str(include), "--tasks", ",".join(tasks), "--limit", str(LIMIT),
         "--batch_size", "8", "--log_samples", "--output_path", str(out),
         "--metadata", json.dumps({"bootstrap_iters": 30})],
        stdout=subprocess.DEVNULL, stderr=log, text=True, env=env, cwd=out,
    )
    log.close()  # the child holds its own copy
    return proc


def _finish(proc: subprocess.Popen, out: Path) -> Path:
    proc.wait(timeout=1200)
    assert proc.returncode == 0, (out.parent / f"{out.name}.log").read_text(encoding="utf-8")[-6000:]
    (folder,) = [p.parent for p in out.glob("*/results_*.json")]
    return folder


@pytest.fixture(scope="module")
def runs(tiny_model_long, sample_texts, mirror, tmp_path_factory) -> dict[str, Path]:
    """The shared tiny Llama ("base") and another seed with one more layer ("aligned"), evaluated side by side."""
    from helpers import build_tiny_llama

    root = tmp_path_factory.mktemp("view_runs")
    include = _write_mc_task(root / "tasks")
    other = build_tiny_llama(root / "llama_b", sample_texts, seed=7, layers=3, max_position_embeddings=1024)
    procs = {"base": _start_eval(tiny_model_long, root / "a", mirror, include),
             "aligned": _start_eval(other, root / "b", mirror, include)}
    return {k: _finish(p, root / ("a" if k == "base" else "b")) for k, p in procs.items()}


@pytest.fixture(scope="module")
def results(runs) -> dict[str, dict]:
    return {k: json.loads(next(p.glob("results_*.json")).read_text()) for k, p in runs.items()}


@pytest.fixture(scope="module")
def report(runs, tmp_path_factory):
    out = tmp_path_factory.mktemp("view_report")
    return build_report([runs["base"], runs["aligned"]], out, labels={runs["base"]: "base", runs["aligned"]: "aligned"},
                        base="base", aligned=["aligned"], html=True, progress=False)


def _records(path: Path, key: str) -> dict[str, dict[str, str]]:
    with path.open(encoding="utf-8") as fh:
        return {row[key]: row for row in csv.DictReader(fh)}


def _row(results: dict, task: str) -> dict:
    return results["results"][task]


def _copy(folder: Path, dest: Path, skip: str = "") -> Path:
    dest.mkdir(parents=True)
    for f in folder.iterdir():
        if not (skip and f.name.startswith(skip)):
            shutil.copy2(f, dest / f.name)
    return dest


# --------------------------------------------------------------------------- other suites beside ours


def test_other_suite_cell_is_the_results_json_number(report, results):
    md = report.markdown.read_text(encoding="utf-8")
    assert "## Standard benchmarks beside safespace" in md
    rec = _records(report.tables["other_suites"], "suite")["tinymc"]
    assert rec["metric"] == "acc_norm"  # the headline of a multiple-choice task
    for lab in ("base", "aligned"):
        row = _row(results[lab], "tinymc")
        assert float(rec[lab]) == row["acc_norm,none"]
        assert float(rec[f"{lab} stderr"]) == row["acc_norm_stderr,none"]
        assert int(rec[f"{lab} n"]) == LIMIT
        assert f"{fmt(row['acc_norm,none'])} ± {fmt(row['acc_norm_stderr,none'])}" in md
    # the suite is reported now, so the input notes no longer call it left out
    assert not any("tinymc" in n.text for n in report.notices)


def _logged(folder: Path, task: str, metric: str) -> dict[int, float]:
    (path,) = folder.glob(f"samples_{task}_*.jsonl")
    return {r["doc_id"]: float(r[metric]) for r in map(json.loads, path.read_text().splitlines())}


def test_change_of_a_pair_is_paired_over_the_logged_documents(report, results, runs):
    rec = _records(report.tables["other_suites"], "suite")["tinymc"]
    col = "change aligned − base"
    vb, va = (_row(results[k], "tinymc")["acc_norm,none"] for k in ("base", "aligned"))
    assert float(rec[col]) == pytest.approx(va - vb, abs=1e-15)
    assert rec[f"{col} method"] == "paired"
    b, a = _logged(runs["base"], "tinymc", "acc_norm"), _logged(runs["aligned"], "tinymc", "acc_norm")
    assert sorted(b) == sorted(a) == list(range(LIMIT))
    d = [a[i] - b[i] for i in b]
    mu = sum(d) / len(d)
    se = math.sqrt(sum((x - mu) ** 2 for x in d) / (len(d) - 1) / len(d))
    assert mu == pytest.approx(va - vb, abs=1e-12)
    assert float(rec[f"{col} low"]) == pytest.approx(mu - Z95 * se, abs=1e-9)
    assert float(rec[f"{col} high"]) == pytest.approx(mu + Z95 * se, abs=1e-9)
    assert f"paired, {LIMIT} docs" in report.markdown.read_text(encoding="utf-8")


def test_change_is_independent_and_says_why_without_logged_samples(runs, results, tmp_path):
    a = _copy(runs["aligned"], tmp_path / "a", skip="samples_tinymc")
    rep = build_report([runs["base"], a], tmp_path / "r", labels={runs["base"]: "base", a: "aligned"},
                       base="base", aligned=["aligned"], plots=False, progress=False)
    c = rep.suites.changes[("base", "aligned", "tinymc")]
    rb, ra = _row(results["base"], "tinymc"), _row(results["aligned"], "tinymc")
    se = math.sqrt(rb["acc_norm_stderr,none"] ** 2 + ra["acc_norm_stderr,none"] ** 2)
    assert c.method == "independent" and c.se == pytest.approx(se, rel=1e-12)
    assert "aligned logged no samples for tinymc" in c.why
    assert "aligned logged no samples for tinymc" in rep.markdown.read_text(encoding="utf-8")


def test_a_group_with_an_aggregate_stands_for_its_tasks(runs, results, tmp_path):
    """A group row (as mmlu's) is shown instead of its tasks, and still pairs through its tasks' samples."""
    copies = {}
    for k in ("base", "aligned"):
        copies[k] = _copy(runs[k], tmp_path / k)
        (path,) = copies[k].glob("results_*.json")
        doc = json.loads(path.read_text())
        row = doc["results"]["tinymc"]
        doc["results"]["tinygroup"] = {"alias": "tiny group", **{m: row[m] for m in row if "," in m}}
        doc["group_subtasks"]["tinygroup"] = ["tinymc"]
        path.write_text(json.dumps(doc))
    rep = build_report(list(copies.values()), tmp_path / "r", labels={copies["base"]: "base", copies["aligned"]: "aligned"},
                       base="base", aligned=["aligned"], plots=False, progress=False)
    assert rep.suites.suites == ["tinygroup"]
    assert rep.suites.alias["tinygroup"] == "tiny group"
    assert rep.suites.changes[("base", "aligned", "tinygroup")].method == "paired"


# --------------------------------------------------------------------------- leaderboard


def test_leaderboard_rows_hold_each_language_and_the_mean_with_intervals(report, results):
    rec = _records(report.tables["leaderboard_toxicity"], "model")
    means = {}
    for lab in ("base", "aligned"):
        vals, ses = [], []
        for lang in TOX:
            row = _row(results[lab], f"safespace-toxicity-{lang}")
            v, se = row["bcv_ratio,none"], row["bcv_ratio_stderr,none"]
            assert float(rec[lab][lang]) == v
            assert float(rec[lab][f"{lang} low"]) == pytest.approx(v - Z95 * se, rel=1e-12)
            vals.append(v)
            ses.append(se)
        means[lab] = float(rec[lab]["mean"])
        assert means[lab] == pytest.approx(sum(vals) / len(vals), rel=1e-12)
        half = Z95 * math.sqrt(sum(s * s for s in ses)) / len(ses)
        assert float(rec[lab]["mean high"]) == pytest.approx(means[lab] + half, rel=1e-9)
    # best mean first (the variance ratio: higher is better)
    with report.tables["leaderboard_toxicity"].open(encoding="utf-8") as fh:
        order = [r["model"] for r in csv.DictReader(fh)]
    assert order == sorted(means, key=lambda k: -means[k])
    page = report.leaderboard.read_text(encoding="utf-8")
    for fam in ("toxicity", "refusal-margin", "direction"):
        assert f'<table class="leaderboard" id="leaderboard-{fam}" data-family="{fam}"' in page
    assert f'data-value="{_row(results["base"], "safespace-toxicity-zh")["bcv_ratio,none"]!r}"' in page
    assert "window.addEventListener('hashchange'" in page and "table.leaderboard" in report.html.read_text("utf-8")


def _three_runs(runs, tmp_path) -> list[Path]:
    """The two runs and a third whose English variance ratio lies between theirs (and is reported)."""
    third = _copy(runs["base"], tmp_path / "c", skip="safespace_states")
    (path,) = third.glob("results_*.json")
    doc = json.loads(path.read_text())
    doc["model_name"] = "third"
    doc["config"]["model_args"] = "pretrained=third"
    ens = [json.loads(next(runs[k].glob("results_*.json")).read_text())["results"]["safespace-toxicity-en"]["bcv_ratio,none"]
           for k in ("base", "aligned")]
    doc["results"]["safespace-toxicity-en"]["bcv_ratio,none"] = sum(ens) / 2
    doc["results"]["safespace-toxicity-zh"]["bcv_ratio,none"] = -1.0  # lowest in zh
    path.write_text(json.dumps(doc))
    return [runs["base"], runs["aligned"], third]


def _order(records: list[dict], col: str, descending: bool) -> list[str]:
    return [r["model"] for r in sorted(records, key=lambda r: float(r[col]), reverse=descending)]


def test_leaderboard_page_sorts_on_a_hash_in_headless_chromium(runs, tmp_path):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if chromium is None:
        pytest.skip("no headless Chromium on this machine (apt-get install chromium); the HTML itself is checked "
                    "in test_leaderboard_rows_hold_each_language_and_the_mean_with_intervals")
    paths = _three_runs(runs, tmp_path)
    rep = build_report(paths, tmp_path / "r", labels=dict(zip(paths, ["base", "aligned", "third"])), html=True,
                       plots=False, progress=False)
    with rep.tables["leaderboard_toxicity"].open(encoding="utf-8") as fh:
        records = list(csv.DictReader(fh))
    import re

    def rendered(fragment: str) -> dict[str, list[str]]:
        with tempfile.TemporaryDirectory() as profile:
            proc = subprocess.run(
                [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={profile}",
                 "--dump-dom", rep.leaderboard.as_uri() + fragment],
                capture_output=True, text=True, timeout=120,
            )
        assert proc.returncode == 0, proc.stderr[-2000:]
        tables = re.findall(r'<table class="leaderboard"[^>]*data-family="([^"]+)"(.*?)</table>', proc.stdout, re.S)
        return {fam: re.findall(r'<tr data-model="([^"]+)"', body) for fam, body in tables}

    for fragment, col, desc in (("#sort=toxicity:en", "en", True), ("#sort=toxicity:zh&dir=asc", "zh", False),
                                ("#sort=en", "en", True)):
        got = rendered(fragment)
        assert got["toxicity"] == _order(records, col, desc), fragment
        assert set(got["toxicity"]) == {"base", "aligned", "third"}
    # a hash naming one family leaves the others in their initial (best mean first) order
    got = rendered("#sort=toxicity:zh&dir=asc")
    with rep.tables["leaderboard_refusal-margin"].open(encoding="utf-8") as fh:
        assert got["refusal-margin"] == [r["model"] for r in csv.DictReader(fh)]


# --------------------------------------------------------------------------- representation vs behaviour


def test_representation_vs_behaviour_matches_languages_by_code(report, results):
    for lab in ("base", "aligned"):
        rec = _records(report.tables[f"repr_vs_behaviour_{lab}"], "language")
        assert list(rec) == list(MARGIN)  # the behaviour family's languages
        for lang in MARGIN:
            margin = _row(results[lab], f"safespace-refusal-margin-{lang}")
            assert float(rec[lang]["refusal-margin refusal_margin"]) == margin["refusal_margin,none"]
            assert float(rec[lang]["refusal-margin refusal_margin_positive"]) == margin["refusal_margin_positive,none"]
            tox = rec[lang]["toxicity probe_auroc"]
            if lang in TOX:
                assert float(tox) == _row(results[lab], f"safespace-toxicity-{lang}")["probe_auroc,none"]
            else:  # th is a MultiJail language the toxicity set does not have
                assert tox == ""
            gap = rec[lang]["direction direction_gap"]
            if lang in DIRECTION:
                assert float(gap) == _row(results[lab], f"safespace-direction-{lang}")["direction_gap,none"]
            else:
                assert gap == ""
    pair = _records(report.tables["repr_vs_behaviour_aligned_vs_base"], "language")
    for lang in MARGIN:
        vb, va = (_row(results[k], f"safespace-refusal-margin-{lang}")["refusal_margin,none"] for k in ("base", "aligned"))
        assert float(pair[lang]["refusal-margin refusal_margin"]) == pytest.approx(va - vb, abs=1e-12)
    for key in ("repr_vs_behaviour_base", "repr_vs_behaviour_aligned", "repr_vs_behaviour_aligned_vs_base"):
        assert report.images[key].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# --------------------------------------------------------------------------- one model at a glance


def test_heat_map_is_the_distance_above_the_null_floor_in_standard_errors(report, results):
    md = report.markdown.read_text(encoding="utf-8")
    for lab in ("base", "aligned"):
        g = report.glances[(lab, "toxicity")]
        assert g.languages == list(TOX)
        assert "probe_auroc" in g.metrics and "bcv_ratio" in g.metrics
        for i, lang in enumerate(TOX):
            row = _row(results[lab], f"safespace-toxicity-{lang}")
            for j, m in enumerate(g.metrics):
                v, se, null, p = (row.get(f"{m}{t},none") for t in ("", "_stderr", "_null", "_p"))
                ref = null if isinstance(null, float) and math.isfinite(null) else CHANCE.get(m)
                finite = all(isinstance(x, float) and math.isfinite(x) for x in (v, se, ref))
                want = (v - ref) / se if finite and se > 0 else None
                got = g.score[i, j]
                assert (want is None and not math.isfinite(got)) or got == pytest.approx(want, rel=1e-12), (lang, m)
                starred = isinstance(p, float) and p < 0.05
                assert (math.isfinite(g.p[i, j]) and g.p[i, j] < 0.05) == starred
        # the picture comes before the dense tables of the family
        pic = md.index(f"img/toxicity_vs_null_{lab}.png")
        assert md.index("## Family: toxicity") < pic < md.index("**toxicity · bcv_ratio")


@pytest.mark.parametrize("weighting", ["plain", "by size"])
def test_a_group_of_two_tasks_pairs_with_the_weights_of_its_reported_mean(runs, tmp_path, weighting):
    """Group of tinymc (16 docs) and tinymc2 (its first 8 docs): the group's value decides the tasks' weights."""
    copies, diffs = {}, {}
    for k in ("base", "aligned"):
        copies[k] = _copy(runs[k], tmp_path / k)
        (samples,) = copies[k].glob("samples_tinymc_*.jsonl")
        lines = samples.read_text().splitlines()[:8]
        date = samples.stem[len("samples_tinymc_"):]
        (copies[k] / f"samples_tinymc2_{date}.jsonl").write_text("\n".join(lines) + "\n")
        (path,) = copies[k].glob("results_*.json")
        doc = json.loads(path.read_text())
        m1 = doc["results"]["tinymc"]["acc_norm,none"]
        m2 = sum(json.loads(x)["acc_norm"] for x in lines) / 8
        doc["results"]["tinymc2"] = {"alias": " - tinymc2", "acc_norm,none": m2, "acc_norm_stderr,none": 0.1}
        group = (m1 + m2) / 2 if weighting == "plain" else (16 * m1 + 8 * m2) / 24
        doc["results"]["tinygroup"] = {"alias": "tinygroup", "acc_norm,none": group, "acc_norm_stderr,none": 0.05}
        doc["group_subtasks"].update({"tinygroup": ["tinymc", "tinymc2"], "tinymc": [], "tinymc2": []})
        path.write_text(json.dumps(doc))
        diffs[k] = {"tinymc": _logged(copies[k], "tinymc", "acc_norm"), "tinymc2": _logged(copies[k], "tinymc2", "acc_norm")}
    rep = build_report(list(copies.values()), tmp_path / "r", labels={copies["base"]: "base", copies["aligned"]: "aligned"},
                       base="base", aligned=["aligned"], plots=False, progress=False)
    assert rep.suites.suites == ["tinygroup"]
    c = rep.suites.changes[("base", "aligned", "tinygroup")]
    weights = {"tinymc": 0.5, "tinymc2": 0.5} if weighting == "plain" else {"tinymc": 16 / 24, "tinymc2": 8 / 24}
    var_sum = 0.0
    for task, w in weights.items():
        d = [diffs["aligned"][task][i] - diffs["base"][task][i] for i in diffs["base"][task]]
        mu = sum(d) / len(d)
        var_sum += w * w * sum((x - mu) ** 2 for x in d) / (len(d) - 1) / len(d)
    assert c.method == "paired" and c.n_docs == 24
    assert c.se == pytest.approx(math.sqrt(var_sum), rel=1e-12)
