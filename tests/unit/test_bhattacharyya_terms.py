"""The Bhattacharyya distance's two terms, reported as their own diagnostics."""

import math

import numpy as np
import pytest

from safespace_tasks import metric_table as mt
from safespace_tasks.stats.kernels import gaussian_bhattacharyya
from safespace_tasks.stats.separation import separation_metrics


def test_terms_match_the_closed_form_of_planted_gaussians():
    # diagonal covariances: mean term = 1/8 sum dmu_i^2 / sbar_i, cov term = 1/2 sum ln(sbar_i / sqrt(s0_i s1_i))
    mu0, mu1 = np.zeros(3), np.array([1.0, -2.0, 0.0])
    s0, s1 = np.array([1.0, 2.0, 3.0]), np.array([4.0, 2.0, 0.5])
    sbar = (s0 + s1) / 2
    mean_term = sum(d * d / s for d, s in zip(mu1 - mu0, sbar)) / 8
    cov_term = 0.5 * sum(math.log(s / math.sqrt(a * b)) for s, a, b in zip(sbar, s0, s1))
    res = gaussian_bhattacharyya(mu0, np.diag(s0), mu1, np.diag(s1), ridge=0.0)
    assert res.mahalanobis_term == pytest.approx(mean_term, rel=1e-12)
    assert res.covariance_term == pytest.approx(cov_term, rel=1e-12)
    assert res.distance == pytest.approx(mean_term + cov_term, rel=1e-12)
    # equal covariances: the covariance term vanishes; equal means: the mean term does
    eq = gaussian_bhattacharyya(mu0, np.diag(s0), mu1, np.diag(s0), ridge=0.0)
    assert eq.covariance_term == pytest.approx(0.0, abs=1e-12) and eq.mahalanobis_term > 0
    same_mean = gaussian_bhattacharyya(mu0, np.diag(s0), mu0, np.diag(s1), ridge=0.0)
    assert same_mean.mahalanobis_term == 0.0 and same_mean.covariance_term > 0


def test_reported_terms_of_sampled_gaussians_sum_to_the_distance():
    """On samples (d = k, so PCA is a rotation and both terms are unchanged by it): the terms the
    metrics report equal an independent plain-numpy computation on the raw states, sum to the
    distance, and approach the population values."""
    rng = np.random.default_rng(7)
    n = 4000
    A = np.array([[1.0, 0.3, 0.0], [0.0, 1.0, 0.2], [0.1, 0.0, 1.0]])
    X0 = rng.standard_normal((n, 3)) @ A
    X1 = rng.standard_normal((n, 3)) * np.array([2.0, 1.0, 0.5]) @ A + np.array([1.5, 0.0, -0.5])
    X = np.vstack([X0, X1])
    y = np.repeat([0, 1], n)
    res = separation_metrics(X, y, k=3, n_boot=0, n_permutations=0, probe=False)
    terms = res.bhattacharyya_terms()
    assert set(terms) == {"bhattacharyya_mean_term", "bhattacharyya_cov_term"}
    c0, c1 = np.cov(X0.T), np.cov(X1.T)
    cb = (c0 + c1) / 2
    d = X1.mean(0) - X0.mean(0)
    mean_term = d @ np.linalg.inv(cb) @ d / 8
    cov_term = 0.5 * math.log(np.linalg.det(cb) / math.sqrt(np.linalg.det(c0) * np.linalg.det(c1)))
    assert terms["bhattacharyya_mean_term"] == pytest.approx(mean_term, rel=1e-8)
    assert terms["bhattacharyya_cov_term"] == pytest.approx(cov_term, rel=1e-8)
    assert sum(terms.values()) == pytest.approx(res.values["bhattacharyya"], rel=1e-12)
    # population values of the planted classes (covariances A^T A and A^T D^2 A)
    P0, P1 = A.T @ A, A.T @ np.diag([4.0, 1.0, 0.25]) @ A
    pop = gaussian_bhattacharyya(np.zeros(3), P0, np.array([1.5, 0.0, -0.5]), P1, ridge=0.0)
    assert terms["bhattacharyya_mean_term"] == pytest.approx(pop.mahalanobis_term, rel=0.1)
    assert terms["bhattacharyya_cov_term"] == pytest.approx(pop.covariance_term, rel=0.1)


def test_terms_are_nan_where_the_distance_is():
    rng = np.random.default_rng(0)
    # the toxic class collapses to 3 distinct states: a Gaussian fit on PCA-3 needs 4, the distance is NaN
    X = np.vstack([rng.standard_normal((8, 5)), np.eye(5)[np.arange(8) % 3] + 1.0])
    y = np.repeat([0, 1], 8)
    res = separation_metrics(X, y, k=3, n_boot=0, n_permutations=0, probe=False)
    assert math.isnan(res.values["bhattacharyya"])
    assert all(math.isnan(v) for v in res.bhattacharyya_terms().values())


def test_terms_are_declared_as_diagnostics():
    for name in ("bhattacharyya_mean_term", "bhattacharyya_cov_term"):
        row = mt.spec(name)
        assert name in mt.family_metrics("toxicity") and name in mt.family_metrics("paradetox")
        assert not row.interval and not row.family_mean and row.per_layer
        assert not mt.has_peak(name)
        assert name not in mt.family_mean_metrics("toxicity")
