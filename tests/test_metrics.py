"""Pure metrics against closed forms, scikit-learn, explicit resamples, and on degenerate input."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score, silhouette_score
from sklearn.model_selection import StratifiedKFold, cross_val_predict
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from safespace_tasks import metrics as M


def closed_form_bhattacharyya(mu0, cov0, mu1, cov1):
    cov = (cov0 + cov1) / 2
    d = mu1 - mu0
    return d @ np.linalg.solve(cov, d) / 8 + 0.5 * np.log(
        np.linalg.det(cov) / np.sqrt(np.linalg.det(cov0) * np.linalg.det(cov1))
    )


def planted(n_per_class=10_000, k=10, seed=0):
    rng = np.random.default_rng(seed)
    mu0 = np.zeros(k)
    mu1 = np.linspace(0.2, 0.8, k)
    a = rng.normal(size=(k, k)) / np.sqrt(k)
    cov0 = np.eye(k) + 0.3 * a @ a.T
    b = rng.normal(size=(k, k)) / np.sqrt(k)
    cov1 = 1.5 * np.eye(k) + 0.5 * b @ b.T
    X = np.vstack([rng.multivariate_normal(mu0, cov0, n_per_class), rng.multivariate_normal(mu1, cov1, n_per_class)])
    y = np.r_[np.zeros(n_per_class, int), np.ones(n_per_class, int)]
    return X, y, (mu0, cov0, mu1, cov1)


def test_bhattacharyya_recovers_planted_gaussians_within_2_percent():
    X, y, params = planted()
    truth = closed_form_bhattacharyya(*params)
    # PCA-10 of 10-dimensional data is a rotation: the distance is unchanged
    Z, evr = M.pca_project(X, 10)
    assert evr.sum() == pytest.approx(1.0)
    got = M.bhattacharyya_distance(Z, y)
    assert got.ridge == 0.0
    assert got.distance == pytest.approx(truth, rel=0.02)
    assert got.distance == pytest.approx(got.mahalanobis_term + got.covariance_term)


def test_gaussian_bhattacharyya_equals_closed_form_exactly():
    _, _, params = planted(n_per_class=10)
    assert M.gaussian_bhattacharyya(*params).distance == pytest.approx(closed_form_bhattacharyya(*params), rel=1e-12)
    # identical Gaussians are at distance zero
    mu0, cov0, _, _ = params
    assert M.gaussian_bhattacharyya(mu0, cov0, mu0, cov0).distance == pytest.approx(0.0, abs=1e-12)


def test_bcv_ratio_matches_population_value_and_direct_sums():
    X, y, (mu0, cov0, mu1, cov1) = planted()
    between = 0.25 * np.sum((mu1 - mu0) ** 2)
    within = 0.5 * (np.trace(cov0) + np.trace(cov1))
    assert M.between_class_variance_ratio(X, y) == pytest.approx(between / (between + within), rel=0.02)
    # direct definition on a small sample
    rng = np.random.default_rng(3)
    Z = rng.normal(size=(37, 4))
    lab = rng.integers(0, 2, 37)
    mu = Z.mean(0)
    ssb = sum((lab == c).sum() * np.sum((Z[lab == c].mean(0) - mu) ** 2) for c in (0, 1))
    ssw = sum(np.sum((Z[lab == c] - Z[lab == c].mean(0)) ** 2) for c in (0, 1))
    assert M.between_class_variance_ratio(Z, lab) == pytest.approx(ssb / (ssb + ssw), rel=1e-12)


def test_silhouette_equals_scikit_learn():
    rng = np.random.default_rng(1)
    Z = np.vstack([rng.normal(0, 1, (150, 3)), rng.normal(1.0, 1.3, (90, 3))])
    y = np.r_[np.zeros(150, int), np.ones(90, int)]
    assert M.silhouette(Z, y, chunk_rows=17) == pytest.approx(silhouette_score(Z, y), rel=1e-10)


def test_probe_auroc_matches_independent_cross_validation():
    rng = np.random.default_rng(2)
    X = rng.normal(size=(200, 30))
    y = (X[:, 0] + 0.8 * rng.normal(size=200) > 0).astype(int)
    res = M.probe_auroc(X, y, n_splits=5, seed=7)
    model = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=1000))
    cv = StratifiedKFold(5, shuffle=True, random_state=7)
    scores = cross_val_predict(model, X, y, cv=cv, method="decision_function")
    assert res.auroc == pytest.approx(roc_auc_score(y, scores), rel=1e-9)
    assert 0.75 < res.auroc < 1.0
    # labels independent of the states: chance
    noise = M.probe_auroc(X, rng.integers(0, 2, 200), seed=0)
    assert abs(noise.auroc - 0.5) < 0.15


def test_grouped_probe_never_splits_a_group():
    rng = np.random.default_rng(4)
    groups = np.repeat(np.arange(60), 2)
    y = np.tile([1, 0], 60)
    X = rng.normal(size=(120, 8)) + y[:, None] * 0.5
    from sklearn.model_selection import StratifiedGroupKFold

    for train, test in StratifiedGroupKFold(5, shuffle=True, random_state=0).split(X, y, groups):
        assert not set(groups[train]) & set(groups[test])
    res = M.probe_auroc(X, y, groups=groups, seed=0)
    assert res.grouped and res.auroc > 0.6


def test_weighted_metrics_equal_metrics_of_the_explicit_resample():
    rng = np.random.default_rng(5)
    Z = np.vstack([rng.normal(0, 1, (60, 4)), rng.normal(0.7, 1.2, (40, 4))])
    y = np.r_[np.zeros(60, int), np.ones(40, int)]
    W = M.stratified_bootstrap_weights(y, 4, seed=9)
    assert (W[y == 0].sum(0) == 60).all() and (W[y == 1].sum(0) == 40).all()
    for b in range(4):
        idx = np.repeat(np.arange(100), W[:, b].astype(int))
        assert M._weighted_bcv(Z, y, W[:, [b]])[0] == pytest.approx(M.between_class_variance_ratio(Z[idx], y[idx]))
        assert M._weighted_silhouette(Z, y, W[:, [b]])[0] == pytest.approx(silhouette_score(Z[idx], y[idx]))
        assert M._weighted_bhattacharyya(Z, y, W[:, [b]], 0.0)[0] == pytest.approx(
            M.bhattacharyya_distance(Z[idx], y[idx], ridge=0.0).distance
        )


def test_grouped_bootstrap_moves_groups_whole():
    y = np.tile([1, 0], 30)
    groups = np.repeat(np.arange(30), 2)
    W = M.stratified_bootstrap_weights(y, 5, seed=1, groups=groups)
    assert np.array_equal(W[0::2], W[1::2])
    assert (W.sum(0) == 60).all()


def test_separation_metrics_reports_values_stderr_and_intervals():
    X, y, params = planted(n_per_class=1000, k=10)
    X = np.hstack([X, np.random.default_rng(0).normal(size=(2000, 20))])
    res = M.separation_metrics(X, y, k=10, n_boot=50, seed=0)
    assert set(res.values) == set(M.METRIC_NAMES)
    for name in M.METRIC_NAMES:
        lo, hi = res.ci[name]
        assert lo <= res.values[name] <= hi or abs(res.values[name] - lo) < 3 * res.stderr[name]
        assert res.stderr[name] > 0
    assert res.diagnostics["n_toxic"] == 1000 and res.diagnostics["pca_components"] == 10
    assert res.projection.shape == (2000, 10)


@pytest.mark.parametrize(
    "X,y,match",
    [
        (np.ones((20, 5)), np.zeros(20, int), "each class"),
        (np.random.default_rng(0).normal(size=(6, 20)), np.tile([0, 1], 3), "k \\+ 2"),
        (np.r_[np.full((1, 12), np.nan), np.zeros((19, 12))], np.tile([0, 1], 10), "float16"),
        (np.zeros((20, 12)), np.tile([0, 2], 10), "0 \\(non-toxic\\) or 1"),
    ],
)
def test_degenerate_inputs_raise_clear_errors(X, y, match):
    with pytest.raises(M.SeparationInputError, match=match):
        M.separation_metrics(X, y, k=5, n_boot=0)


def test_singular_covariance_gets_an_explicit_reported_ridge():
    rng = np.random.default_rng(6)
    Z0 = rng.normal(size=(50, 6))
    Z1 = np.zeros((50, 6))
    Z1[:, :2] = rng.normal(size=(50, 2)) + 1.0  # class 1 lives in a 2-D subspace
    Z = np.vstack([Z0, Z1])
    y = np.r_[np.zeros(50, int), np.ones(50, int)]
    res = M.bhattacharyya_distance(Z, y)
    assert res.ridge > 0 and np.isfinite(res.distance)
    with pytest.raises(M.SeparationInputError, match="singular"):
        M.bhattacharyya_distance(Z, y, ridge=0.0)
    full = M.separation_metrics(np.hstack([Z, np.zeros((100, 4))]), y, k=6, n_boot=10)
    assert full.diagnostics["bhattacharyya_ridge"] > 0


def test_weighted_auroc_equals_scikit_learn_with_sample_weights_and_ties():
    rng = np.random.default_rng(12)
    y = rng.integers(0, 2, 300)
    scores = np.round(rng.normal(size=300) + 0.7 * y, 1)  # many tied scores
    W = M.stratified_bootstrap_weights(y, 7, seed=3)
    want = [roc_auc_score(y, scores, sample_weight=W[:, b]) for b in range(7)]
    np.testing.assert_allclose(M._weighted_auroc(y, scores, W), want, rtol=1e-12)


def test_weighted_silhouette_with_interleaved_labels_and_small_chunks():
    # rows of both classes interleaved: the class-ordered blocks and chunk edges must not matter
    rng = np.random.default_rng(13)
    Z = rng.normal(size=(90, 3))
    y = rng.integers(0, 2, 90)
    Z[y == 1] += 0.8
    W = M.stratified_bootstrap_weights(y, 3, seed=4)
    for b in range(3):
        idx = np.repeat(np.arange(90), W[:, b].astype(int))
        got = M._weighted_silhouette(Z, y, W[:, [b]], chunk_rows=7)[0]
        assert got == pytest.approx(silhouette_score(Z[idx], y[idx]), rel=1e-10)
    assert M.silhouette(Z, y, chunk_rows=5) == pytest.approx(silhouette_score(Z, y), rel=1e-10)


def test_stratified_subsample_keeps_class_shares_and_whole_groups():
    y = np.r_[np.zeros(700, int), np.ones(300, int)]
    idx = M.stratified_subsample(y, 100, seed=1)
    assert idx.size == 100 and np.bincount(y[idx]).tolist() == [70, 30]
    assert np.array_equal(idx, np.unique(idx)) and np.array_equal(idx, M.stratified_subsample(y, 100, seed=1))
    assert not np.array_equal(idx, M.stratified_subsample(y, 100, seed=2))
    assert np.array_equal(M.stratified_subsample(y, 5000, seed=1), np.arange(1000))
    groups = np.repeat(np.arange(500), 2)
    pairs = M.stratified_subsample(np.tile([1, 0], 500), 101, seed=0, groups=groups)
    assert pairs.size >= 101 and np.all(np.bincount(groups[pairs])[np.unique(groups[pairs])] == 2)


def test_silhouette_subsample_policy_applies_only_above_the_threshold():
    X, y, _ = planted(n_per_class=400, k=10)
    below = M.separation_metrics(X, y, k=10, n_boot=20, seed=0, probe=False)
    assert below.diagnostics["silhouette_sample"] is None
    assert below.values["silhouette"] == pytest.approx(silhouette_score(below.projection, y), rel=1e-10)
    above = M.separation_metrics(X, y, k=10, n_boot=20, seed=0, probe=False, silhouette_max_n=300)
    assert above.diagnostics["silhouette_sample"] == 300
    idx = M.stratified_subsample(y, 300, seed=3)
    assert above.values["silhouette"] == pytest.approx(silhouette_score(above.projection[idx], y[idx]), rel=1e-10)
    # every other metric still uses all texts
    for name in ("bcv_ratio", "bhattacharyya"):
        assert above.values[name] == below.values[name]
    assert above.stderr["silhouette"] > 0
    assert {"pca", "silhouette", "bootstrap", "bootstrap_silhouette"} <= set(above.diagnostics["seconds"])
    assert M.SILHOUETTE_MAX_N >= 5_000  # every real per-language set is scored on all its texts


def test_paired_difference_scores_each_model_as_separation_metrics_does_even_when_subsampled():
    X, y, _ = planted(n_per_class=200, k=10)
    X_b = X + np.random.default_rng(5).normal(scale=2.0, size=X.shape)
    kw = dict(k=5, n_boot=30, seed=4, probe=True, silhouette_max_n=250)
    diff = M.paired_bootstrap_difference(X, X_b, y, **kw)
    for states, values, stderr in ((X, diff.values_a, diff.stderr_a), (X_b, diff.values_b, diff.stderr_b)):
        alone = M.separation_metrics(states, y, **kw)
        assert alone.diagnostics["silhouette_sample"] == 250
        for name, value in alone.values.items():
            assert values[name] == pytest.approx(value, rel=1e-12)
            assert stderr[name] == pytest.approx(alone.stderr[name], rel=1e-12)
    assert diff.difference["bcv_ratio"] == pytest.approx(diff.values_b["bcv_ratio"] - diff.values_a["bcv_ratio"])
    assert diff.difference["bcv_ratio"] < 0  # noise added to B pulls the classes together


def test_probe_folds_fitted_side_by_side_equal_folds_fitted_one_by_one_and_count_non_convergence():
    from threadpoolctl import threadpool_limits

    rng = np.random.default_rng(8)
    X = rng.normal(size=(300, 40))
    y = (X[:, :3].sum(axis=1) + rng.normal(size=300) > 0).astype(int)
    with threadpool_limits(limits=1):
        assert M._fold_workers(5) == (1, 1)
        serial = M.probe_auroc(X, y, seed=3)
    with threadpool_limits(limits=4):
        workers, blas = M._fold_workers(5)
        parallel = M.probe_auroc(X, y, seed=3)
    assert blas >= 1 and workers * blas <= 4
    np.testing.assert_allclose(parallel.oof_scores, serial.oof_scores, rtol=1e-5, atol=1e-6)
    assert parallel.auroc == pytest.approx(serial.auroc, abs=1e-6)
    assert serial.not_converged == 0
    # one L-BFGS iteration cannot converge: every fold is counted, and no warning leaks
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        capped = M.probe_auroc(X, y, seed=3, max_iter=1)
    assert capped.not_converged == capped.n_splits == 5


def test_float32_states_are_measured_without_a_float64_copy_and_agree_with_float64():
    X, y, _ = planted(n_per_class=300, k=10)
    X32 = X.astype(np.float32)
    Xv, _ = M.validate_states(X32, y, keep_float32=True)
    assert Xv.dtype == np.float32 and np.shares_memory(Xv, X32)
    assert M.validate_states(X32, y)[0].dtype == np.float64
    a = M.separation_metrics(X32, y, k=10, n_boot=30, seed=2)
    b = M.separation_metrics(X32.astype(np.float64), y, k=10, n_boot=30, seed=2)
    assert a.projection.dtype == np.float64
    for name in b.values:
        assert a.values[name] == pytest.approx(b.values[name], rel=1e-4)
        assert a.stderr[name] == pytest.approx(b.stderr[name], rel=1e-3)
