"""A metric declared in one place: a kernel and one row of the metric table.

The metric here (the Euclidean distance between the class means on PCA-k) exists only in this
test. Registered as a table row with its point and class-weighted kernels, and with no other
edit, it gets a point value, a bootstrap interval, a permutation null and p-value from
``separation_metrics``, a paired difference from ``paired_bootstrap_difference``, refitted-basis
replicates, and a table of its own in the report.
"""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest

from safespace_tasks import metric_table as mt
from safespace_tasks.stats.kernels import Kernel
from safespace_tasks.stats.paired import paired_bootstrap_difference
from safespace_tasks.stats.pca_refit import pca_refit_replicates
from safespace_tasks.stats.separation import separation_metrics

NAME = "centroid_distance"


def _point(Z: np.ndarray, y: np.ndarray, ctx: dict) -> float:
    return float(np.linalg.norm(Z[y == 1].mean(axis=0) - Z[y == 0].mean(axis=0)))


def _weighted(Z: np.ndarray, W0: np.ndarray, W1: np.ndarray, ctx: dict) -> np.ndarray:
    mu0 = (W0.T @ Z) / W0.sum(axis=0)[:, None]
    mu1 = (W1.T @ Z) / W1.sum(axis=0)[:, None]
    return np.linalg.norm(mu1 - mu0, axis=1)


ROW = mt.MetricSpec(
    NAME, True, "centroid distance", "PCA units", ("toxicity", "paradetox"),
    "distance between the class means on PCA-k", per_layer=True,
    kernel=Kernel(point=_point, weighted=_weighted), range=(0.0, math.inf), short="CD",
)


@pytest.fixture
def centroid_row():
    added = mt.register(ROW)
    try:
        yield added
    finally:
        mt.unregister(NAME)


def _planted(n: int = 300, d: int = 20, shift: float = 1.5, seed: int = 0):
    """Two classes whose means differ by ``shift`` along the axis of largest variance."""
    rng = np.random.default_rng(seed)
    y = np.repeat([0, 1], n // 2)
    X = rng.standard_normal((n, d)) * np.linspace(2.0, 0.5, d)
    X[:, 0] += shift * y
    return X, y


def _independent(X: np.ndarray, y: np.ndarray, k: int) -> float:
    """Plain numpy: SVD of the centred states, the top-k scores, the distance of the class means."""
    Xc = X - X.mean(axis=0)
    _, _, Vt = np.linalg.svd(Xc, full_matrices=False)
    Z = Xc @ Vt[:k].T
    return float(np.linalg.norm(Z[y == 1].mean(axis=0) - Z[y == 0].mean(axis=0)))


def test_registering_a_row_adds_its_references_and_removing_it_restores_the_table(centroid_row):
    names = [r.name for r in centroid_row]
    assert names[:3] == [NAME, f"{NAME}_null", f"{NAME}_p"]
    assert {f"{NAME}_best", f"{NAME}_best_layer", f"{NAME}_final"} <= set(names)
    assert NAME in mt.family_metrics("toxicity") and NAME in mt.SEPARATION_METRICS
    assert mt.spec(f"{NAME}_layer3").name == NAME and mt.has_peak(NAME)
    assert [r.name for r in mt.kernel_rows()][-1] == NAME
    # the EEE export reads its bounds from the row's range (its null floor lives on its scale)
    from safespace_tasks.export.eee import metric_bounds

    assert metric_bounds(NAME) == (0.0, math.inf) and metric_bounds(f"{NAME}_null_layer2") == (0.0, math.inf)


def test_table_is_unchanged_after_unregister():
    before = tuple(mt.METRICS)
    mt.register(ROW)
    mt.unregister(NAME)
    assert tuple(mt.METRICS) == before
    with pytest.raises(mt.UnknownMetricError):
        mt.spec(NAME)


def test_a_metric_declared_only_in_the_table_gets_value_interval_and_null(centroid_row):
    X, y = _planted()
    k = 5
    res = separation_metrics(X, y, k=k, n_boot=100, n_permutations=40, probe=False, seed=3)
    assert list(res.values) == ["bcv_ratio", "bhattacharyya", "silhouette", NAME]
    # the value equals an independent numpy computation
    assert res.values[NAME] == pytest.approx(_independent(X, y, k), rel=1e-9)
    # a bootstrap interval around it, made as every metric's is
    lo, hi = res.ci[NAME]
    assert res.stderr[NAME] > 0 and 0.0 <= lo <= hi
    assert res.spread[NAME]["method"] == "basic" and res.spread[NAME]["n_replicates"] == 100
    # a planted shift: the null floor is well below the value and the p-value is the smallest possible
    assert res.n_permutations[NAME] == 40
    assert 0.0 < res.null[NAME] < res.values[NAME]
    assert res.p_value[NAME] == pytest.approx(1 / 41)
    extra = res.extra_values()
    assert extra[f"{NAME}_null"] == res.null[NAME] and extra[f"{NAME}_p"] == res.p_value[NAME]
    # the other metrics are untouched by the new row
    without = separation_metrics(X, y, k=k, n_boot=100, n_permutations=40, probe=False, seed=3)
    for m in ("bcv_ratio", "bhattacharyya", "silhouette"):
        assert without.values[m] == res.values[m] and without.ci[m] == res.ci[m]


def test_the_weighted_kernel_replicates_equal_the_point_value_on_the_resample(centroid_row):
    X, y = _planted(n=120, d=10)
    res = separation_metrics(X, y, k=4, n_boot=0, n_permutations=0, probe=False)
    Z = res.projection
    rng = np.random.default_rng(1)
    idx = np.r_[rng.choice(60, 60), 60 + rng.choice(60, 60)]
    w = np.bincount(idx, minlength=120).astype(float)[:, None]
    assert ROW.kernel.replicates(Z, y, w, {})[0] == pytest.approx(_point(Z[idx], y[idx], {}), rel=1e-12)
    # with unit weights the refitted-basis replicate is the plug-in value (the basis is refitted as the point's is)
    reps = pca_refit_replicates(X, y, np.ones((120, 2)), 4, ridge=0.0, metrics=(NAME,))
    np.testing.assert_allclose(reps[NAME], res.values[NAME], rtol=1e-9)


def test_paired_difference_of_two_models_covers_the_new_metric(centroid_row):
    Xa, y = _planted(shift=0.5, seed=1)
    Xb, _ = _planted(shift=2.0, seed=1)
    d = paired_bootstrap_difference(Xa, Xb, y, k=5, n_boot=60, probe=False)
    assert d.difference[NAME] == pytest.approx(d.values_b[NAME] - d.values_a[NAME])
    lo, hi = d.ci[NAME]
    assert d.stderr[NAME] > 0 and lo <= hi
    assert d.spread[NAME]["pca_refit"] is True


def _results_file(folder, res, language="en"):
    row = {"alias": f"safespace-toxicity-{language}"}
    for m, v in res.values.items():
        row[f"{m},none"] = v
        row[f"{m}_stderr,none"] = res.stderr[m]
    for m, v in res.extra_values().items():
        row[f"{m},none"] = v
    doc = {"results": {f"safespace-toxicity-{language}": row}, "model_name": folder.name,
           "configs": {f"safespace-toxicity-{language}": {"metadata": {"version": 1}}}}
    folder.mkdir()
    (folder / "results_2026-01-01T00-00-00.json").write_text(json.dumps(doc), encoding="utf-8")
    return folder


def test_the_report_tables_the_new_metric(centroid_row, tmp_path):
    from safespace_tasks.report import build_report

    X, y = _planted()
    res = separation_metrics(X, y, k=5, n_boot=50, n_permutations=20, probe=False)
    run = _results_file(tmp_path / "model", res)
    report = build_report([run], tmp_path / "report", plots=False, progress=False)
    table = report.tables[f"toxicity_{NAME}"]
    with table.open(encoding="utf-8") as fh:
        rows = {r["language"]: r for r in csv.DictReader(fh)}
    assert float(rows["en"]["model"]) == res.values[NAME]
    assert "centroid distance" in report.markdown.read_text(encoding="utf-8")


def test_the_stats_package_stays_small_and_free_of_model_code():
    """Every module of safespace_tasks/stats/ under 700 lines, none importing torch or lm-eval."""
    import ast
    from pathlib import Path

    import safespace_tasks.stats

    folder = Path(safespace_tasks.stats.__file__).parent
    for path in sorted(folder.glob("*.py")):
        text = path.read_text(encoding="utf-8")
        assert text.count("\n") <= 700, f"{path.name} has {text.count(chr(10))} lines"
        for node in ast.walk(ast.parse(text)):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            assert not any(n.split(".")[0] in ("torch", "lm_eval", "transformers") for n in names), (path.name, names)
