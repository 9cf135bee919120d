"""Small, fast version of the calibration study (benchmarks/bench_calibration.py): the 95 %
intervals cover a known truth on planted Gaussians, with a tolerance the plain percentile
interval of the same replicates cannot meet."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import bench_calibration as BC  # noqa: E402

from safespace_tasks import metrics as M  # noqa: E402


@pytest.fixture(scope="module")
def study():
    p = BC.planted(3.0)
    truth = BC.truth_closed_form(p)
    rng = np.random.default_rng(2024)
    rows = []
    for r in range(80):
        X, y = BC.sample(p, 200, rng)
        res = M.separation_metrics(X, y, k=BC.K, n_boot=100, n_permutations=0, probe=False, seed=r)
        rows.append(res)
    return truth, rows


@pytest.mark.parametrize("name", ["bhattacharyya", "bcv_ratio"])
def test_intervals_cover_the_closed_form_truth(study, name):
    truth, rows = study
    cover = np.mean([r.ci[name][0] <= truth[name] <= r.ci[name][1] for r in rows])
    assert cover >= 0.85, f"{name}: coverage {cover:.2f}"
    # stderr against the spread of the point estimates over the datasets
    ratio = np.mean([r.stderr[name] for r in rows]) / np.std([r.values[name] for r in rows], ddof=1)
    assert 0.7 < ratio < 1.4, f"{name}: stderr ratio {ratio:.2f}"


def test_the_percentile_interval_of_the_same_replicates_would_fail(study):
    # the basic interval is (2 t - q_hi, 2 t - q_lo): recover the percentile one (q_lo, q_hi)
    truth, rows = study
    name = "bhattacharyya"
    pct = [(2 * r.values[name] - r.ci[name][1], 2 * r.values[name] - r.ci[name][0]) for r in rows]
    assert not any(r.spread[name]["clipped"] for r in rows)
    cover = np.mean([lo <= truth[name] <= hi for lo, hi in pct])
    assert cover < 0.6, f"the percentile interval covered {cover:.2f}: the test has no power"


def test_probe_interval_covers_the_auroc_of_a_probe_trained_at_that_size():
    p = BC.planted(3.0)
    truth = BC.truth_probe(p, 100, reps=40)
    rng = np.random.default_rng(7)
    hits = []
    for r in range(20):
        X, y = BC.sample(p, 100, rng)
        res = M.separation_metrics(X, y, k=BC.K, n_boot=60, n_permutations=0, seed=r)
        lo, hi = res.ci["probe_auroc"]
        hits.append(lo <= truth <= hi)
    assert np.mean(hits) >= 0.8
