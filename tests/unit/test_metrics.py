"""Pure metrics against closed forms, scikit-learn, explicit resamples, and on degenerate input."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score, silhouette_score
from sklearn.model_selection import StratifiedKFold, cross_val_predict
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from safespace_tasks.stats import kernels, paired, pca, probe as probe_stats, resampling, separation, validation
from safespace_tasks.stats.resampling import permuted_labels, summarise, weighted_auroc


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
    Z, evr = pca.pca_project(X, 10)
    assert evr.sum() == pytest.approx(1.0)
    got = kernels.bhattacharyya_distance(Z, y)
    assert got.ridge == 0.0
    assert got.distance == pytest.approx(truth, rel=0.02)
    assert got.distance == pytest.approx(got.mahalanobis_term + got.covariance_term)


def test_gaussian_bhattacharyya_equals_closed_form_exactly():
    _, _, params = planted(n_per_class=10)
    assert kernels.gaussian_bhattacharyya(*params).distance == pytest.approx(closed_form_bhattacharyya(*params), rel=1e-12)
    # identical Gaussians are at distance zero
    mu0, cov0, _, _ = params
    assert kernels.gaussian_bhattacharyya(mu0, cov0, mu0, cov0).distance == pytest.approx(0.0, abs=1e-12)


def test_bcv_ratio_matches_population_value_and_direct_sums():
    X, y, (mu0, cov0, mu1, cov1) = planted()
    between = 0.25 * np.sum((mu1 - mu0) ** 2)
    within = 0.5 * (np.trace(cov0) + np.trace(cov1))
    assert kernels.between_class_variance_ratio(X, y) == pytest.approx(between / (between + within), rel=0.02)
    # direct definition on a small sample
    rng = np.random.default_rng(3)
    Z = rng.normal(size=(37, 4))
    lab = rng.integers(0, 2, 37)
    mu = Z.mean(0)
    ssb = sum((lab == c).sum() * np.sum((Z[lab == c].mean(0) - mu) ** 2) for c in (0, 1))
    ssw = sum(np.sum((Z[lab == c] - Z[lab == c].mean(0)) ** 2) for c in (0, 1))
    assert kernels.between_class_variance_ratio(Z, lab) == pytest.approx(ssb / (ssb + ssw), rel=1e-12)


def test_silhouette_equals_scikit_learn():
    rng = np.random.default_rng(1)
    Z = np.vstack([rng.normal(0, 1, (150, 3)), rng.normal(1.0, 1.3, (90, 3))])
    y = np.r_[np.zeros(150, int), np.ones(90, int)]
    assert kernels.silhouette(Z, y, chunk_rows=17) == pytest.approx(silhouette_score(Z, y), rel=1e-10)


def test_probe_auroc_matches_independent_cross_validation():
    rng = np.random.default_rng(2)
    X = rng.normal(size=(200, 30))
    y = (X[:, 0] + 0.8 * rng.normal(size=200) > 0).astype(int)
    res = probe_stats.probe_auroc(X, y, n_splits=5, seed=7)
    model = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=1000))
    cv = StratifiedKFold(5, shuffle=True, random_state=7)
    scores = cross_val_predict(model, X, y, cv=cv, method="decision_function")
    assert res.auroc == pytest.approx(roc_auc_score(y, scores), rel=1e-9)
    assert 0.75 < res.auroc < 1.0
    # labels independent of the states: chance
    noise = probe_stats.probe_auroc(X, rng.integers(0, 2, 200), seed=0)
    assert abs(noise.auroc - 0.5) < 0.15


def test_grouped_probe_never_splits_a_group():
    rng = np.random.default_rng(4)
    groups = np.repeat(np.arange(60), 2)
    y = np.tile([1, 0], 60)
    X = rng.normal(size=(120, 8)) + y[:, None] * 0.5
    from sklearn.model_selection import StratifiedGroupKFold

    for train, test in StratifiedGroupKFold(5, shuffle=True, random_state=0).split(X, y, groups):
        assert not set(groups[train]) & set(groups[test])
    res = probe_stats.probe_auroc(X, y, groups=groups, seed=0)
    assert res.grouped and res.auroc > 0.6


def resample_silhouette_without_self_copies(Z, y, w):
    """Silhouette of a resample (text i drawn w_i times) in which the copies of a text are not
    its own neighbours: a(i) over the other texts of its class (with their counts)."""
    D = np.sqrt(((Z[:, None, :] - Z[None, :, :]) ** 2).sum(-1))
    num = den = 0.0
    for i in np.flatnonzero(w > 0):
        own = (y == y[i]) & (np.arange(len(y)) != i)
        other = y != y[i]
        if w[own].sum() == 0:
            s = 0.0
        else:
            a = (w[own] * D[i, own]).sum() / w[own].sum()
            b = (w[other] * D[i, other]).sum() / w[other].sum()
            s = (b - a) / max(a, b)
        num += w[i] * s
        den += w[i]
    return num / den


def test_weighted_metrics_equal_metrics_of_the_explicit_resample():
    rng = np.random.default_rng(5)
    Z = np.vstack([rng.normal(0, 1, (60, 4)), rng.normal(0.7, 1.2, (40, 4))])
    y = np.r_[np.zeros(60, int), np.ones(40, int)]
    W = resampling.stratified_bootstrap_weights(y, 4, seed=9)
    assert (W[y == 0].sum(0) == 60).all() and (W[y == 1].sum(0) == 40).all()
    for b in range(4):
        idx = np.repeat(np.arange(100), W[:, b].astype(int))
        assert kernels._class_weighted_bcv(Z, *kernels._class_weights(y, W[:, [b]]))[0] == pytest.approx(kernels.between_class_variance_ratio(Z[idx], y[idx]))
        assert kernels._weighted_silhouette(Z, y, W[:, [b]])[0] == pytest.approx(
            resample_silhouette_without_self_copies(Z, y, W[:, b]), rel=1e-10
        )
        assert kernels._class_weighted_bhattacharyya(Z, *kernels._class_weights(y, W[:, [b]]), 0.0)[0] == pytest.approx(
            kernels.bhattacharyya_distance(Z[idx], y[idx], ridge=0.0).distance
        )


def test_grouped_bootstrap_moves_groups_whole():
    y = np.tile([1, 0], 30)
    groups = np.repeat(np.arange(30), 2)
    W = resampling.stratified_bootstrap_weights(y, 5, seed=1, groups=groups)
    assert np.array_equal(W[0::2], W[1::2])
    assert (W.sum(0) == 60).all()


def test_separation_metrics_reports_values_stderr_and_intervals():
    X, y, params = planted(n_per_class=1000, k=10)
    X = np.hstack([X, np.random.default_rng(0).normal(size=(2000, 20))])
    res = separation.separation_metrics(X, y, k=10, n_boot=50, seed=0)
    assert set(res.values) == set(separation.METRIC_NAMES)
    for name in separation.METRIC_NAMES:
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
    with pytest.raises(validation.SeparationInputError, match=match):
        separation.separation_metrics(X, y, k=5, n_boot=0)


def test_singular_covariance_gets_an_explicit_reported_ridge():
    rng = np.random.default_rng(6)
    Z0 = rng.normal(size=(50, 6))
    Z1 = np.zeros((50, 6))
    Z1[:, :2] = rng.normal(size=(50, 2)) + 1.0  # class 1 lives in a 2-D subspace
    Z = np.vstack([Z0, Z1])
    y = np.r_[np.zeros(50, int), np.ones(50, int)]
    res = kernels.bhattacharyya_distance(Z, y)
    assert res.ridge > 0 and np.isfinite(res.distance)
    with pytest.raises(validation.SeparationInputError, match="singular"):
        kernels.bhattacharyya_distance(Z, y, ridge=0.0)
    full = separation.separation_metrics(np.hstack([Z, np.zeros((100, 4))]), y, k=6, n_boot=10)
    assert full.diagnostics["bhattacharyya_ridge"] > 0


def test_weighted_auroc_equals_scikit_learn_with_sample_weights_and_ties():
    rng = np.random.default_rng(12)
    y = rng.integers(0, 2, 300)
    scores = np.round(rng.normal(size=300) + 0.7 * y, 1)  # many tied scores
    W = resampling.stratified_bootstrap_weights(y, 7, seed=3)
    want = [roc_auc_score(y, scores, sample_weight=W[:, b]) for b in range(7)]
    np.testing.assert_allclose(weighted_auroc(scores, y, W), want, rtol=1e-12)


def test_weighted_silhouette_with_interleaved_labels_and_small_chunks():
    # rows of both classes interleaved: the class-ordered blocks and chunk edges must not matter
    rng = np.random.default_rng(13)
    Z = rng.normal(size=(90, 3))
    y = rng.integers(0, 2, 90)
    Z[y == 1] += 0.8
    W = resampling.stratified_bootstrap_weights(y, 3, seed=4)
    for b in range(3):
        idx = np.repeat(np.arange(90), W[:, b].astype(int))
        got = kernels._weighted_silhouette(Z, y, W[:, [b]], chunk_rows=7)[0]
        assert got == pytest.approx(resample_silhouette_without_self_copies(Z, y, W[:, b]), rel=1e-10)
    # with every weight 1 it is scikit-learn's silhouette
    assert kernels._weighted_silhouette(Z, y, np.ones((90, 1)), chunk_rows=7)[0] == pytest.approx(silhouette_score(Z, y))
    assert kernels.silhouette(Z, y, chunk_rows=5) == pytest.approx(silhouette_score(Z, y), rel=1e-10)


def test_stratified_subsample_keeps_class_shares_and_whole_groups():
    y = np.r_[np.zeros(700, int), np.ones(300, int)]
    idx = validation.stratified_subsample(y, 100, seed=1)
    assert idx.size == 100 and np.bincount(y[idx]).tolist() == [70, 30]
    assert np.array_equal(idx, np.unique(idx)) and np.array_equal(idx, validation.stratified_subsample(y, 100, seed=1))
    assert not np.array_equal(idx, validation.stratified_subsample(y, 100, seed=2))
    assert np.array_equal(validation.stratified_subsample(y, 5000, seed=1), np.arange(1000))
    groups = np.repeat(np.arange(500), 2)
    pairs = validation.stratified_subsample(np.tile([1, 0], 500), 101, seed=0, groups=groups)
    assert pairs.size >= 101 and np.all(np.bincount(groups[pairs])[np.unique(groups[pairs])] == 2)


def test_silhouette_subsample_policy_applies_only_above_the_threshold():
    X, y, _ = planted(n_per_class=400, k=10)
    below = separation.separation_metrics(X, y, k=10, n_boot=20, seed=0, probe=False)
    assert below.diagnostics["silhouette_sample"] is None
    assert below.values["silhouette"] == pytest.approx(silhouette_score(below.projection, y), rel=1e-10)
    above = separation.separation_metrics(X, y, k=10, n_boot=20, seed=0, probe=False, silhouette_max_n=300)
    assert above.diagnostics["silhouette_sample"] == 300
    idx = validation.stratified_subsample(y, 300, seed=3)
    assert above.values["silhouette"] == pytest.approx(silhouette_score(above.projection[idx], y[idx]), rel=1e-10)
    # every other metric still uses all texts
    for name in ("bcv_ratio", "bhattacharyya"):
        assert above.values[name] == below.values[name]
    assert above.stderr["silhouette"] > 0
    assert {"pca", "silhouette", "bootstrap", "bootstrap_silhouette"} <= set(above.diagnostics["seconds"])
    assert separation.SILHOUETTE_MAX_N >= 5_000  # every real per-language set is scored on all its texts


def test_paired_difference_scores_each_model_as_separation_metrics_does_even_when_subsampled():
    X, y, _ = planted(n_per_class=200, k=10)
    X_b = X + np.random.default_rng(5).normal(scale=2.0, size=X.shape)
    kw = dict(k=5, n_boot=30, seed=4, probe=True, silhouette_max_n=250)
    diff = paired.paired_bootstrap_difference(X, X_b, y, **kw)
    for states, values, stderr in ((X, diff.values_a, diff.stderr_a), (X_b, diff.values_b, diff.stderr_b)):
        alone = separation.separation_metrics(states, y, **kw)
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
        assert probe_stats._fold_workers(5) == (1, 1)
        serial = probe_stats.probe_auroc(X, y, seed=3)
    with threadpool_limits(limits=4):
        workers, blas = probe_stats._fold_workers(5)
        parallel = probe_stats.probe_auroc(X, y, seed=3)
    assert blas >= 1 and workers * blas <= 4
    np.testing.assert_allclose(parallel.oof_scores, serial.oof_scores, rtol=1e-5, atol=1e-6)
    assert parallel.auroc == pytest.approx(serial.auroc, abs=1e-6)
    assert serial.not_converged == 0
    # one L-BFGS iteration cannot converge: every fold is counted, and no warning leaks
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        capped = probe_stats.probe_auroc(X, y, seed=3, max_iter=1)
    assert capped.not_converged == capped.n_splits == 5


def test_float32_states_are_measured_without_a_float64_copy_and_agree_with_float64():
    X, y, _ = planted(n_per_class=300, k=10)
    X32 = X.astype(np.float32)
    Xv, _ = validation.validate_states(X32, y, keep_float32=True)
    assert Xv.dtype == np.float32 and np.shares_memory(Xv, X32)
    assert validation.validate_states(X32, y)[0].dtype == np.float64
    a = separation.separation_metrics(X32, y, k=10, n_boot=30, seed=2)
    b = separation.separation_metrics(X32.astype(np.float64), y, k=10, n_boot=30, seed=2)
    assert a.projection.dtype == np.float64
    for name in b.values:
        assert a.values[name] == pytest.approx(b.values[name], rel=1e-4)
        assert a.stderr[name] == pytest.approx(b.stderr[name], rel=1e-3)


# --------------------------------------------------------------------------- exact PCA, null, intervals, groups


def _numpy_svd_metrics(X, y, k):
    """The three PCA metrics recomputed with plain numpy: float64 centring and a full SVD."""
    Xc = X.astype(np.float64) - X.astype(np.float64).mean(axis=0)
    _, _, Vt = np.linalg.svd(Xc, full_matrices=False)
    Z = Xc @ Vt[:k].T
    return {
        "bcv_ratio": kernels.between_class_variance_ratio(Z, y),
        "bhattacharyya": kernels.bhattacharyya_distance(Z, y).distance,
        "silhouette": silhouette_score(Z, y),
    }


def _states_with_large_offset(n, d, seed):
    rng = np.random.default_rng(seed)
    y = rng.permutation(np.arange(n) % 2)
    A = rng.normal(size=(16, d)) * np.linspace(2.0, 0.3, 16)[:, None]
    X = rng.normal(size=(n, 16)) @ A + rng.normal(size=(n, d)) * 0.5
    X[:, :3] += 60.0  # massive activations: a large mean that an uncentred float32 path would ruin
    X[y == 1, 5:8] += 0.6
    return X.astype(np.float32), y


@pytest.mark.parametrize("n,d,force_lanczos", [(100, 576, False), (400, 60, False), (500, 300, True)])
def test_metrics_agree_with_plain_numpy_svd_to_1e_5_and_do_not_depend_on_the_seed(n, d, force_lanczos, monkeypatch):
    X, y = _states_with_large_offset(n, d, seed=n)
    if force_lanczos:
        monkeypatch.setattr(pca, "EXACT_PCA_MAX_WORK", 0)
    want = _numpy_svd_metrics(X, y, 10)
    runs = [separation.separation_metrics(X, y, k=10, n_boot=0, n_permutations=0, probe=False, seed=s) for s in (0, 1234)]
    for name, value in want.items():
        assert runs[0].values[name] == pytest.approx(value, rel=1e-5), name
        assert runs[0].values[name] == runs[1].values[name]  # bit-identical for any seed
    assert runs[0].diagnostics["pca_method"].startswith("Lanczos" if force_lanczos else "exact")
    Z0, _ = pca.pca_project(X, 10, random_state=0)
    Z1, _ = pca.pca_project(X, 10, random_state=99)
    assert np.array_equal(Z0, Z1)


def test_null_floor_equals_the_metrics_of_explicitly_permuted_labels():
    rng = np.random.default_rng(3)
    X = rng.normal(size=(80, 12))
    y = np.r_[np.zeros(40, int), np.ones(40, int)]
    X[y == 1, 0] += 1.0
    res = separation.separation_metrics(X, y, k=5, n_boot=0, n_permutations=30, probe=False, seed=7)
    Z, _ = pca.pca_project(X, 5)
    Y = permuted_labels(y, 30, seed=7 + 4)
    assert all(np.bincount(Y[:, j]).tolist() == [40, 40] for j in range(30))
    for name, fn in (
        ("bcv_ratio", kernels.between_class_variance_ratio),
        ("bhattacharyya", lambda Z, yp: kernels.bhattacharyya_distance(Z, yp).distance),
        ("silhouette", silhouette_score),
    ):
        null = np.array([fn(Z, Y[:, j]) for j in range(30)])
        assert res.null[name] == pytest.approx(null.mean(), rel=1e-9), name
        assert res.p_value[name] == pytest.approx((1 + np.sum(null >= res.values[name])) / 31), name
        assert res.extra_values()[name + "_null"] == res.null[name]
    # the probe's null needs refits: not computed by default, and said so
    assert res.n_permutations["bcv_ratio"] == 30


def test_p_values_small_under_signal_and_not_under_shuffled_labels():
    rng = np.random.default_rng(4)
    X = rng.normal(size=(200, 20))
    y = np.r_[np.zeros(100, int), np.ones(100, int)]
    strong = X.copy()
    strong[y == 1, :3] += 1.0
    res = separation.separation_metrics(strong, y, k=5, n_boot=0, n_permutations=49, probe_permutations=4, seed=0)
    for name in ("bcv_ratio", "bhattacharyya", "silhouette"):
        assert res.p_value[name] == pytest.approx(1 / 50)
        assert res.null[name] < res.values[name]
    assert res.p_value["probe_auroc"] == pytest.approx(1 / 5) and abs(res.null["probe_auroc"] - 0.5) < 0.15
    ps = [separation.separation_metrics(X, rng.permutation(y), k=5, n_boot=0, n_permutations=49, probe=False, seed=s)
          .p_value["bcv_ratio"] for s in range(8)]
    assert np.mean(ps) > 0.2  # null data: p-values spread over (0, 1], not piled at 1/50


def test_permutations_keep_groups_whole_and_class_sizes():
    y = np.r_[np.zeros(30, int), np.ones(30, int)]
    groups = np.r_[np.arange(20), np.repeat(np.arange(20, 25), 2), np.arange(25, 55)]  # copies of 5 texts
    pairs = np.r_[np.arange(30), np.arange(30)]  # each pair: one of each label
    for g in (groups, pairs):
        Y = permuted_labels(y, 20, seed=1, groups=g)
        for j in range(20):
            assert np.bincount(Y[:, j]).tolist() == [30, 30]
            for gid in np.unique(g):
                labs = Y[g == gid, j]
                if np.unique(y[g == gid]).size == 1:
                    assert np.unique(labs).size == 1  # copies move together
                else:
                    assert sorted(labs) == sorted(y[g == gid])  # a pair keeps one of each
    assert not np.array_equal(permuted_labels(y, 1, seed=1, groups=groups)[:, 0], y)


def test_basic_interval_is_the_reflected_percentile_interval_clipped_and_counts_degenerate():
    reps = np.r_[np.linspace(0.2, 0.4, 100), np.inf, np.nan]
    sp = summarise(reps, 0.15, 0.9, lower=0.0)
    q_lo, q_hi = np.quantile(np.linspace(0.2, 0.4, 100), [0.05, 0.95])
    assert sp.ci == pytest.approx((max(0.0, 0.3 - q_hi), 0.3 - q_lo))
    assert sp.clipped and sp.n_degenerate == 2 and sp.reason is None
    bad = summarise(np.r_[np.ones(70), np.full(30, np.inf)], 1.0, 0.95)
    assert np.isnan(bad.stderr) and "30 of 100" in bad.reason
    few = summarise(np.r_[np.linspace(0, 1, 90), np.full(10, np.inf)], 0.5, 0.95)
    assert np.isfinite(few.stderr) and few.n_degenerate == 10  # reported with its count


def test_duplicate_texts_as_groups_remove_the_probe_auroc_inflation():
    # no signal; 8 % of the texts are copies of another text of the same label
    rng = np.random.default_rng(0)
    diffs, grouped = [], []
    for s in range(4):
        n, d = 300, 400
        X = rng.standard_normal((n, d))
        y = rng.permutation(np.arange(n) % 2)
        texts = [f"text {i}" for i in range(n)]
        copies = rng.choice(n, 24, replace=False)
        for i in copies:
            j = rng.choice(np.flatnonzero((y == y[i]) & ~np.isin(np.arange(n), copies)))
            X[i], texts[i] = X[j], texts[j]
        g = validation.text_groups(texts)
        assert n - (g.max() + 1) == 24
        plain = probe_stats.probe_auroc(X, y, seed=s).auroc
        fair = probe_stats.probe_auroc(X, y, groups=g, seed=s).auroc
        diffs.append(plain - fair)
        grouped.append(fair)
    assert np.mean(diffs) > 0.04  # copies on both sides of a split inflate the AUROC
    assert abs(np.mean(grouped) - 0.5) < 0.05  # grouped folds: chance


def test_text_groups_and_combine_groups():
    g = validation.text_groups(["a", "b", "a", "c", "b"])
    assert g.tolist() == [0, 1, 0, 2, 1]
    pairs = np.array([0, 0, 1, 1, 2, 2])
    dup = validation.text_groups(["x", "y", "z", "y", "u", "v"])  # "y" is in pairs 0 and 1
    assert validation.combine_groups(pairs, dup).tolist() == [0, 0, 0, 0, 1, 1]
    with pytest.raises(validation.SeparationInputError, match="strings"):
        validation.text_groups(["a", 3])


def test_one_string_per_class_repeated_is_named_degenerate_not_measured_into_huge_numbers():
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=32), rng.normal(size=32)
    X = np.vstack([np.tile(a, (50, 1)), np.tile(b, (50, 1))]).astype(np.float32)
    y = np.r_[np.zeros(50, int), np.ones(50, int)]
    res = separation.separation_metrics(X, y, k=10, n_boot=50, n_permutations=20)
    assert res.diagnostics["n_distinct_states"] == 2
    for name in separation.METRIC_NAMES:
        assert np.isnan(res.values[name]) and "distinct" in res.degenerate[name]
    assert res.diagnostics["n_degenerate_metrics"] == 4
    # a few distinct states per class: the PCA metrics are fine, the Gaussian fit is not
    X2 = np.vstack([np.tile(rng.normal(size=(4, 32)), (10, 1)), rng.normal(size=(40, 32)) + 1]).astype(np.float32)
    y2 = np.r_[np.zeros(40, int), np.ones(40, int)]
    res2 = separation.separation_metrics(X2, y2, k=10, n_boot=50, n_permutations=20)
    assert np.isnan(res2.values["bhattacharyya"]) and "4 distinct states" in res2.degenerate["bhattacharyya"]
    assert np.isfinite(res2.values["bcv_ratio"]) and res2.ci["bcv_ratio"][0] >= 0.0
    with pytest.raises(validation.SeparationInputError, match="same hidden state"):
        separation.separation_metrics(np.ones((20, 12)), np.tile([0, 1], 10), k=5, n_boot=0)


def test_degenerate_replicates_are_counted_and_never_dropped_silently():
    # 12 texts per class and k = 10: many resamples hold fewer than 11 distinct texts of a class
    rng = np.random.default_rng(2)
    X = rng.normal(size=(24, 16))
    y = np.r_[np.zeros(12, int), np.ones(12, int)]
    res = separation.separation_metrics(X, y, k=10, n_boot=200, n_permutations=0, probe=False)
    sp = res.spread["bhattacharyya"]
    assert sp["n_degenerate"] > 0
    assert np.isnan(res.stderr["bhattacharyya"]) and "degenerate" in sp["reason"]
    # the intervals of the non-negative metrics never reach below 0
    assert res.ci["bcv_ratio"][0] >= 0.0


def test_probe_refits_on_unit_weights_reproduce_the_fit_and_widen_the_spread():
    rng = np.random.default_rng(8)
    X = rng.normal(size=(200, 30)).astype(np.float32)
    y = np.r_[np.zeros(100, int), np.ones(100, int)]
    X[y == 1, :2] += 0.7
    fit = probe_stats.probe_auroc(X, y, seed=0)
    again = probe_stats.probe_refit_replicates(X, y, fit, np.ones((200, 2)))
    np.testing.assert_allclose(again, fit.auroc, atol=2e-3)
    res = separation.separation_metrics(X, y, k=5, n_boot=100, n_permutations=0, probe_refits=20, seed=0)
    sp = res.spread["probe_auroc"]
    assert sp["probe_refits"] == 20 and sp["probe_refit_scale"] >= 1.0
    fixed = separation.separation_metrics(X, y, k=5, n_boot=100, n_permutations=0, probe_refits=0, seed=0)
    # the refit scale widens the bootstrap part of the probe's variance
    assert sp["var_bootstrap"] == pytest.approx(fixed.spread["probe_auroc"]["var_bootstrap"] * sp["probe_refit_scale"] ** 2)
    assert res.stderr["probe_auroc"] == pytest.approx(np.sqrt((sp["var_bootstrap"] + sp["var_cv_folds"]) / 2))


def test_paired_difference_uses_basic_intervals_and_counts_degenerate_pairs():
    rng = np.random.default_rng(9)
    y = np.r_[np.zeros(60, int), np.ones(60, int)]
    Xa = rng.normal(size=(120, 15))
    Xb = Xa + rng.normal(scale=0.3, size=(120, 15))
    Xb[y == 1, :2] += 0.8
    d = paired.paired_bootstrap_difference(Xa, Xb, y, k=5, n_boot=60, probe_refits=5)
    for name in separation.METRIC_NAMES:
        lo, hi = d.ci[name]
        want = probe_stats.CV_METHOD if name == "probe_auroc" else "basic"
        assert lo <= hi and d.spread[name]["method"] == want
        assert d.spread[name]["n_degenerate"] == 0
    assert d.difference["bcv_ratio"] > 0


def test_copies_of_a_text_with_rounding_noise_count_as_one_distinct_state():
    """A batched forward pass on several threads may round a repeated text's state differently from
    batch to batch; with the text groups, such copies still count once (never as new information)."""
    from safespace_tasks.stats.validation import distinct_states, text_groups
    from safespace_tasks.stats.separation import separation_metrics

    rng = np.random.default_rng(0)
    base = rng.normal(size=(2, 8))
    y = np.repeat([0, 1], 20)
    X = base[y] + rng.normal(scale=1e-7, size=(40, 8))  # two strings, last-bit noise on every copy
    texts = ["you are an idiot" if c else "have a nice day" for c in y]
    assert distinct_states(X, y) == (40, (20, 20))  # without groups every noisy copy looks new
    assert distinct_states(X, y, text_groups(texts)) == (2, (1, 1))
    res = separation_metrics(X, y, k=4, n_boot=20, groups=text_groups(texts), n_permutations=10)
    for m in ("bcv_ratio", "bhattacharyya", "silhouette", "probe_auroc"):
        assert np.isnan(res.values[m]) and "distinct state" in res.degenerate[m], m
