"""Calibration of the separation metrics' intervals on planted Gaussians with a known truth.

Two classes in d = k = 10 dimensions (so PCA-k is exact: a rotation, and every metric is
rotation-invariant): class 0 ~ N(0, I), class 1 ~ N(delta, Sigma_1). For each sample size
(texts per class) ``--reps`` fresh datasets are measured with ``separation_metrics`` and, per
metric, the study reports

* coverage: the share of datasets whose 95 % interval contains the truth (target >= 0.90 at
  200 and 1,000 texts per class);
* stderr ratio: mean reported standard error / standard deviation of the point estimates over
  the datasets (target 0.8 - 1.25);
* bias: mean point estimate - truth.

Truth: Bhattacharyya distance and variance ratio in closed form (:func:`truth_closed_form`);
silhouette from a very large sample (the population a(x), b(x) by Monte Carlo); probe AUROC as
the population AUROC (closed form for a linear score of Gaussians) of a probe trained on the
cross-validation's training size, averaged over fresh training sets -- the quantity a
cross-validated AUROC estimates.

``--code old`` runs the same study on the package found at ``--old-path`` (the checkout before
this change), in a subprocess, so one command gives the before/after table:

    python benchmarks/bench_calibration.py --sizes 50,200,1000 --reps 200 --compare-old /work/main --out calib.json
"""

from __future__ import annotations

import argparse
import inspect
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

K = 10
METRICS = ("bcv_ratio", "bhattacharyya", "silhouette", "probe_auroc")


def planted(delta_scale: float = 1.0) -> dict[str, np.ndarray]:
    """Means and covariances of the two planted classes."""
    mu0 = np.zeros(K)
    mu1 = np.zeros(K)
    mu1[:2] = np.array([0.5, 0.3]) * delta_scale
    cov0 = np.eye(K)
    cov1 = np.diag(np.r_[1.2, np.ones(K - 2), 0.9])
    return {"mu0": mu0, "mu1": mu1, "cov0": cov0, "cov1": cov1}


SPECTRA = ("d10", "eigengap", "powerlaw")


def planted_spectrum(kind: str, d: int = 64, seed: int = 11) -> dict[str, np.ndarray]:
    """The issue's planted spectra in d = 64 (rotated by a fixed random orthogonal matrix, so no
    axis is special for the probe's standardisation):

    * ``eigengap``: variances 12 ... 6 on ten axes, 0.6 on the rest (a clear gap after PCA-10);
      unequal class covariances (the toxic class x1.6 on axes 1-5, x0.7 on axes 6-10); the class
      shift on axes 1, 4, 7, 10 (inside PCA-10).
    * ``powerlaw``: variances 10 / j (no gap anywhere); toxic class x1.3 on axes 1-10; half the
      squared class shift on axes 2, 5, 8 and half on axes 15, 21, 31, 41 (outside PCA-10).

    ``align`` is the extra shift of the toxic class that the planted "aligned" model adds (the
    same texts, states shifted): half along the base shift, plus 0.35 on axis 25 (outside PCA-10).
    """
    j = np.arange(1, d + 1)
    delta = np.zeros(d)
    if kind == "eigengap":
        lam = np.r_[np.linspace(12, 6, 10), np.full(d - 10, 0.6)]
        s1 = np.r_[np.full(5, 1.6), np.full(5, 0.7), np.ones(d - 10)]
        delta[[0, 3, 6, 9]] = np.array([1.2, 1.0, 0.8, 0.8]) * 1.5
    elif kind == "powerlaw":
        lam = 10.0 / j
        s1 = np.ones(d)
        s1[:10] = 1.3
        delta[[1, 4, 7]] = (0.55, 0.5, 0.4)
        delta[[14, 20, 30, 40]] = (0.5, 0.45, 0.4, 0.3)
    else:
        raise ValueError(f"unknown spectrum {kind!r}; use one of {', '.join(SPECTRA[1:])}.")
    Q, _ = np.linalg.qr(np.random.default_rng(seed).standard_normal((d, d)))
    align = 0.5 * delta
    align[24] += 0.35
    cov0, cov1 = (Q * lam) @ Q.T, (Q * (lam * s1)) @ Q.T
    return {"mu0": np.zeros(d), "mu1": Q @ delta, "cov0": cov0, "cov1": cov1, "align": Q @ align,
            "chol0": np.linalg.cholesky(cov0), "chol1": np.linalg.cholesky(cov1)}


def aligned_of(p: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The planted aligned model: the toxic class shifted by ``p["align"]``."""
    return dict(p, mu1=p["mu1"] + p["align"])


def planted_for(spectrum: str, signal: float) -> dict[str, np.ndarray]:
    return planted(signal) if spectrum == "d10" else planted_spectrum(spectrum)


def sample(p: dict[str, np.ndarray], n_per_class: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    if "chol0" in p:
        d = p["mu0"].size
        x0 = rng.standard_normal((n_per_class, d)) @ p["chol0"].T + p["mu0"]
        x1 = rng.standard_normal((n_per_class, d)) @ p["chol1"].T + p["mu1"]
        y = np.r_[np.zeros(n_per_class, dtype=np.int64), np.ones(n_per_class, dtype=np.int64)]
        return np.vstack([x0, x1]), y
    x0 = rng.multivariate_normal(p["mu0"], p["cov0"], size=n_per_class)
    x1 = rng.multivariate_normal(p["mu1"], p["cov1"], size=n_per_class)
    y = np.r_[np.zeros(n_per_class, dtype=np.int64), np.ones(n_per_class, dtype=np.int64)]
    return np.vstack([x0, x1]), y


def truth_closed_form(p: dict[str, np.ndarray]) -> dict[str, float]:
    r"""Population Bhattacharyya distance and between-class variance ratio (equal class shares).

    BCV: with class shares 1/2, SS_B / n -> ||mu1 - mu0||^2 / 4 and SS_W / n -> (tr S0 + tr S1) / 2,
    so r = (||D||^2 / 4) / (||D||^2 / 4 + (tr S0 + tr S1) / 2). Both are invariant to the rotation
    PCA-k applies when k = d."""
    d = p["mu1"] - p["mu0"]
    cb = (p["cov0"] + p["cov1"]) / 2
    maha = float(d @ np.linalg.solve(cb, d)) / 8
    covt = 0.5 * (np.linalg.slogdet(cb)[1] - 0.5 * (np.linalg.slogdet(p["cov0"])[1] + np.linalg.slogdet(p["cov1"])[1]))
    sb = float(d @ d) / 4
    sw = (np.trace(p["cov0"]) + np.trace(p["cov1"])) / 2
    return {"bhattacharyya": maha + covt, "bcv_ratio": sb / (sb + sw)}


def population_pca(p: dict[str, np.ndarray], k: int = K) -> dict[str, np.ndarray]:
    """The two classes projected on the top-k axes of the population's pooled covariance
    (equal class shares: (S0 + S1) / 2 + D D' / 4): what PCA-k of an infinite sample measures.
    With d = k this is a rotation (the d10 study)."""
    D = p["mu1"] - p["mu0"]
    pooled = (p["cov0"] + p["cov1"]) / 2 + np.outer(D, D) / 4
    vals, vecs = np.linalg.eigh(pooled)
    V = vecs[:, np.argsort(vals)[::-1][:k]]
    return {"mu0": V.T @ p["mu0"], "mu1": V.T @ p["mu1"], "cov0": V.T @ p["cov0"] @ V, "cov1": V.T @ p["cov1"] @ V}


def truth_pca_metrics(p: dict[str, np.ndarray], k: int = K) -> dict[str, float]:
    """Population variance ratio, Bhattacharyya distance and silhouette on the population PCA-k."""
    q = population_pca(p, k)
    out = truth_closed_form(q)
    out["silhouette"] = truth_silhouette(q)
    return out


def truth_silhouette(p: dict[str, np.ndarray], *, n_query: int = 3000, n_ref: int = 30000, seed: int = 99) -> float:
    """Population silhouette: mean over query points x of (b - a) / max(a, b), a(x) and b(x) the
    mean distance to a very large sample of the own and of the other class."""
    rng = np.random.default_rng(seed)
    q, qy = sample(p, n_query, rng)
    r, ry = sample(p, n_ref, rng)
    r0, r1 = r[ry == 0], r[ry == 1]
    s = np.empty(q.shape[0])
    for start in range(0, q.shape[0], 500):
        rows = slice(start, start + 500)
        qq = np.einsum("ij,ij->i", q[rows], q[rows])[:, None]
        m = [np.sqrt(np.maximum(qq + np.einsum("ij,ij->i", R, R)[None, :] - 2 * q[rows] @ R.T, 0)).mean(1) for R in (r0, r1)]
        own = np.where(qy[rows] == 0, m[0], m[1])
        other = np.where(qy[rows] == 0, m[1], m[0])
        s[rows] = (other - own) / np.maximum(own, other)
    return float(s.mean())


def population_auroc(w: np.ndarray, p: dict[str, np.ndarray]) -> float:
    """AUROC of the linear score w.x for the two Gaussians: Phi(w.D / sqrt(w'S0w + w'S1w))."""
    num = float(w @ (p["mu1"] - p["mu0"]))
    den = math.sqrt(float(w @ p["cov0"] @ w + w @ p["cov1"] @ w))
    return 0.5 * (1 + math.erf(num / den / math.sqrt(2)))


def truth_probe(p: dict[str, np.ndarray], n_per_class: int, *, folds: int = 5, reps: int = 200, seed: int = 7) -> float:
    """Mean population AUROC of the probe (standardise + L2 logistic regression, C = 1) trained
    on the cross-validation's training size, (folds - 1) / folds of 2 * n_per_class texts."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    rng = np.random.default_rng(seed)
    m = int(round(n_per_class * (folds - 1) / folds))
    vals = []
    for _ in range(reps):
        X, y = sample(p, m, rng)
        model = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=1000)).fit(X, y)
        w = model[-1].coef_[0] / model[0].scale_
        vals.append(population_auroc(w, p))
    return float(np.mean(vals))


def run_study(
    sizes: list[int], reps: int, n_boot: int, seed: int, probe_refits: int, signal: float = 1.0,
    metrics: tuple[str, ...] = METRICS, spectrum: str = "d10",
) -> dict[str, Any]:
    from safespace_tasks.stats.separation import separation_metrics

    params = inspect.signature(separation_metrics).parameters
    extra = {}
    if "n_permutations" in params:
        extra["n_permutations"] = 0
    if "probe_refits" in params:
        extra["probe_refits"] = probe_refits
    p = planted_for(spectrum, signal)
    truth = truth_pca_metrics(p)
    probe = "probe_auroc" in metrics
    if not probe:
        extra["probe"] = False
    out: dict[str, Any] = {"truth_fixed": dict(truth), "sizes": {}}
    for n_pc in sizes:
        t_n = dict(truth, probe_auroc=truth_probe(p, n_pc) if probe else float("nan"))
        rng = np.random.default_rng(seed + n_pc)
        vals = {m: [] for m in metrics}
        ses = {m: [] for m in metrics}
        cover = {m: [] for m in metrics}
        nonfinite = {m: 0 for m in metrics}
        start = time.perf_counter()
        for r in range(reps):
            X, y = sample(p, n_pc, rng)
            res = separation_metrics(X, y, k=K, n_boot=n_boot, seed=seed + r, **extra)
            for m in metrics:
                v, se, (lo, hi) = res.values[m], res.stderr.get(m, np.nan), res.ci.get(m, (np.nan, np.nan))
                vals[m].append(v)
                ses[m].append(se)
                ok = np.isfinite(lo) and np.isfinite(hi)
                nonfinite[m] += int(not ok)
                cover[m].append(bool(ok and lo <= t_n[m] <= hi))
        rows = {}
        for m in metrics:
            v = np.array(vals[m], dtype=float)
            s = np.array(ses[m], dtype=float)
            sd = float(np.nanstd(v, ddof=1))
            rows[m] = {
                "truth": t_n[m], "coverage": float(np.mean(cover[m])), "stderr_ratio": float(np.nanmean(s) / sd),
                "bias": float(np.nanmean(v) - t_n[m]), "true_sd": sd, "mean_stderr": float(np.nanmean(s)),
                "non_finite_intervals": nonfinite[m],
            }
        out["sizes"][str(n_pc)] = {"reps": reps, "seconds": round(time.perf_counter() - start, 2), "metrics": rows}
        print(f"  {n_pc}/class done in {out['sizes'][str(n_pc)]['seconds']} s", file=sys.stderr, flush=True)
    return out


def truth_silhouette_gain(p: dict[str, np.ndarray], pb: dict[str, np.ndarray],
                          seeds: tuple[int, ...] = (99, 5, 17, 23)) -> list[float]:
    """Silhouette(aligned) - silhouette(base) on each model's population PCA-k, one Monte Carlo
    seed each (the same query and reference draws for both models). One seed's value is off by up
    to 0.0006 (0.15-0.6 of the gain's true sd at 600 per class on the d = 64 spectra); the gain
    studies take the mean over ``seeds``."""
    qa, qb = population_pca(p), population_pca(pb)
    return [truth_silhouette(qb, seed=t) - truth_silhouette(qa, seed=t) for t in seeds]


def truth_probe_gain(p: dict[str, np.ndarray], n_per_class: int, *, folds: int = 5, reps: int = 100, seed: int = 7) -> float:
    """Mean of AUROC_aligned(w_aligned) - AUROC_base(w_base), the probes trained on the same texts
    at the cross-validation's training size (the aligned states are the base ones shifted)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    pb = aligned_of(p)
    rng = np.random.default_rng(seed)
    m = int(round(n_per_class * (folds - 1) / folds))
    vals = []
    for _ in range(reps):
        X, y = sample(p, m, rng)
        out = []
        for Xm, pm in ((X, p), (X + y[:, None] * p["align"], pb)):
            model = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=1000)).fit(Xm, y)
            out.append(population_auroc(model[-1].coef_[0] / model[0].scale_, pm))
        vals.append(out[1] - out[0])
    return float(np.mean(vals))


def run_gain_study(spectrum: str, sizes: list[int], reps: int, n_boot: int, seed: int) -> dict[str, Any]:
    """Coverage of the report's paired gain (aligned - base on the same texts; the aligned states
    are the base ones with the toxic class shifted by ``align``) -- the new interval (the paired
    bootstrap's own: basic with the PCA basis refitted per replicate, the probe's CV-corrected t)
    against the old one (fixed basis, gain +- z SE, the probe's fixed-score SE), and the width of
    the independent fallback sqrt(SE_base^2 + SE_aligned^2) against the true sd of the gain."""
    from safespace_tasks.stats.paired import paired_bootstrap_difference

    z = 1.959963984540054
    p = planted_spectrum(spectrum)
    pb = aligned_of(p)
    ta, tb = truth_pca_metrics(p), truth_pca_metrics(pb)
    sil_gains = truth_silhouette_gain(p, pb)
    out: dict[str, Any] = {"spectrum": spectrum, "silhouette_truth_by_seed": sil_gains, "sizes": {}}
    for n_pc in sizes:
        truth = {m: tb[m] - ta[m] for m in ("bcv_ratio", "bhattacharyya", "silhouette")}
        truth["silhouette"] = float(np.mean(sil_gains))
        truth["probe_auroc"] = truth_probe_gain(p, n_pc)
        rng = np.random.default_rng(seed + n_pc)
        rec = {m: {"v": [], "new_se": [], "new_cover": [], "old_se": [], "old_cover": [], "indep_se": []} for m in METRICS}
        start = time.perf_counter()
        for r in range(reps):
            Xa, y = sample(p, n_pc, rng)
            Xb = Xa + y[:, None] * p["align"]
            new = paired_bootstrap_difference(Xa, Xb, y, k=K, n_boot=n_boot, seed=seed + r)
            old = paired_bootstrap_difference(Xa, Xb, y, k=K, n_boot=n_boot, seed=seed + r, pca_refit=False)
            for m in METRICS:
                g = new.difference[m]
                lo, hi = new.ci[m]
                se_old = old.stderr[m] if m != "probe_auroc" else math.sqrt(old.spread[m]["var_bootstrap"])
                q = rec[m]
                q["v"].append(g)
                q["new_se"].append(new.stderr[m])
                q["new_cover"].append(bool(lo <= truth[m] <= hi))
                q["old_se"].append(se_old)
                q["old_cover"].append(bool(abs(g - truth[m]) <= z * se_old))
                q["indep_se"].append(math.hypot(new.stderr_a[m], new.stderr_b[m]))
        rows = {}
        for m, q in rec.items():
            v = np.array(q["v"])
            sd = float(np.std(v, ddof=1))
            rows[m] = {
                "truth": truth[m], "true_sd": sd, "bias_over_sd": float((v.mean() - truth[m]) / sd),
                "coverage_new": float(np.mean(q["new_cover"])), "stderr_ratio_new": float(np.mean(q["new_se"]) / sd),
                "coverage_old": float(np.mean(q["old_cover"])), "stderr_ratio_old": float(np.mean(q["old_se"]) / sd),
                "independent_ratio": float(np.mean(q["indep_se"]) / sd),
            }
        out["sizes"][str(n_pc)] = {"reps": reps, "seconds": round(time.perf_counter() - start, 2), "metrics": rows}
        print(f"  gain {spectrum} {n_pc}/class done in {out['sizes'][str(n_pc)]['seconds']} s", file=sys.stderr, flush=True)
    return out


def subsample_weights(y: np.ndarray, frac: float, n_rep: int, seed: int) -> np.ndarray:
    """0/1 weights (n x n_rep): in each column round(frac * n_c) texts of each class drawn
    without replacement (a delete-d jackknife subsample, stratified by class)."""
    rng = np.random.default_rng(seed)
    W = np.zeros((y.size, n_rep))
    for c in (0, 1):
        idx = np.flatnonzero(y == c)
        m = int(round(frac * idx.size))
        for j in range(n_rep):
            W[rng.choice(idx, m, replace=False), j] = 1.0
    return W


def second_level_weights(y: np.ndarray, W: np.ndarray, seed: int) -> np.ndarray:
    """One resample of each resample (column of the counts ``W``), stratified by class: the
    second level of a double bootstrap with one inner draw per outer replicate."""
    rng = np.random.default_rng(seed)
    W2 = np.zeros_like(W, dtype=float)
    for c in (0, 1):
        idx = np.flatnonzero(y == c)
        for b in range(W.shape[1]):
            w = W[idx, b].astype(float)
            W2[idx, b] = rng.multinomial(int(round(w.sum())), w / w.sum())
    return W2


def run_fallback_bias_study(spectrum: str, sizes: list[int], reps: int, n_boot: int, seed: int,
                            n_sub: int = 40) -> dict[str, Any]:
    """Two questions about the report's gain, one pass over fresh data sets.

    1. The independent fallback sqrt(SE_base^2 + SE_aligned^2) (each run's own reported stderr)
       against the true sd of the gain (a) when both runs measured the *same* texts (the aligned
       states a shift of the base ones; the usual case) and (b) when they measured *independent*
       samples of texts (the formula's premise).
    2. Bias corrections of the paired gain's basic interval (PCA metrics, basis refitted per
       replicate): the basic interval as it is; the same interval moved by the delete-d jackknife's
       bias estimate in place of the bootstrap's, ``(n - d) / d * mean(theta_(d) - theta_hat)``
       over ``n_sub`` stratified subsamples without replacement (d = n / 2: half-sampling;
       d = n / 5); the same interval moved by the double bootstrap's bias estimate
       ``2 (mean theta* - theta_hat) - (mean theta** - mean theta*)`` (one second-level resample
       per replicate; Davison & Hinkley 1997, section 3.9); and the percentile interval."""
    from safespace_tasks.stats.separation import separation_metrics
    from safespace_tasks.stats.resampling import stratified_bootstrap_weights
    from safespace_tasks.stats.pca_refit import pca_refit_replicates

    pca_m = ("bcv_ratio", "bhattacharyya", "silhouette")
    zq = 1.959963984540054
    p = planted_spectrum(spectrum)
    pb = aligned_of(p)
    ta, tb = truth_pca_metrics(p), truth_pca_metrics(pb)
    out: dict[str, Any] = {"spectrum": spectrum, "n_sub": n_sub, "sizes": {}}
    methods = ("basic", "jack_half", "jack_fifth", "double", "percentile")
    sil_gains = truth_silhouette_gain(p, pb)
    out["silhouette_truth_by_seed"] = sil_gains
    for n_pc in sizes:
        truth = {m: tb[m] - ta[m] for m in pca_m}
        truth["silhouette"] = float(np.mean(sil_gains))
        truth["probe_auroc"] = truth_probe_gain(p, n_pc)
        rng = np.random.default_rng(seed + n_pc)
        rec = {m: {"same": [], "indep": [], "se_same": [], "se_indep": [], "cover_indep": [], "boot_bias": [],
                   **{f"cover_{k}": [] for k in methods}, **{f"bias_{k}": [] for k in methods[1:4]}} for m in METRICS}
        start = time.perf_counter()
        for r in range(reps):
            Xa, y = sample(p, n_pc, rng)
            Xb = Xa + y[:, None] * p["align"]
            Xc, _ = sample(pb, n_pc, rng)  # the aligned model on an independent sample of texts
            s = seed + r
            ra, rb, rc = (separation_metrics(X, y, k=K, n_boot=n_boot, seed=s, n_permutations=0) for X in (Xa, Xb, Xc))
            for m in METRICS:
                q = rec[m]
                q["same"].append(rb.values[m] - ra.values[m])
                q["indep"].append(rc.values[m] - ra.values[m])
                q["se_same"].append(math.hypot(ra.stderr[m], rb.stderr[m]))
                se_i = math.hypot(ra.stderr[m], rc.stderr[m])
                q["se_indep"].append(se_i)
                q["cover_indep"].append(bool(abs(q["indep"][-1] - truth[m]) <= zq * se_i))
            W = stratified_bootstrap_weights(y, n_boot, s + 1)
            Wh = subsample_weights(y, 0.5, n_sub, s + 101)
            Wf = subsample_weights(y, 0.8, n_sub, s + 202)
            W2 = second_level_weights(y, W, s + 303)
            full = np.hstack([W, Wh, Wf, W2])
            reps_ab = [pca_refit_replicates(X, y, full, K, ridge=0.0, metrics=pca_m) for X in (Xa, Xb)]
            for m in pca_m:
                g = rb.values[m] - ra.values[m]
                d_all = reps_ab[1][m] - reps_ab[0][m]
                boot, half = d_all[:n_boot], d_all[n_boot:n_boot + n_sub]
                fifth, second = d_all[n_boot + n_sub:n_boot + 2 * n_sub], d_all[n_boot + 2 * n_sub:]
                boot = boot[np.isfinite(boot)]
                q_lo, q_hi = np.quantile(boot, [0.025, 0.975])
                b_boot = float(np.mean(boot) - g)
                b_half = float(np.nanmean(half) - g)  # (n - d) / d = 1
                b_fifth = 4.0 * float(np.nanmean(fifth) - g)  # (n - d) / d = 4
                b_double = 2 * b_boot - float(np.nanmean(second) - np.mean(boot))
                ivs = {"basic": (2 * g - q_hi, 2 * g - q_lo), "percentile": (q_lo, q_hi),
                       "jack_half": (2 * g - q_hi - (b_half - b_boot), 2 * g - q_lo - (b_half - b_boot)),
                       "jack_fifth": (2 * g - q_hi - (b_fifth - b_boot), 2 * g - q_lo - (b_fifth - b_boot)),
                       "double": (2 * g - q_hi - (b_double - b_boot), 2 * g - q_lo - (b_double - b_boot))}
                q = rec[m]
                q["boot_bias"].append(b_boot)
                q["bias_jack_half"].append(b_half)
                q["bias_jack_fifth"].append(b_fifth)
                q["bias_double"].append(b_double)
                for k_, (lo, hi) in ivs.items():
                    q[f"cover_{k_}"].append(bool(lo <= truth[m] <= hi))
        rows = {}
        for m, q in rec.items():
            same, indep = np.array(q["same"]), np.array(q["indep"])
            sd_s, sd_i = float(np.std(same, ddof=1)), float(np.std(indep, ddof=1))
            row = {"truth": truth[m], "true_sd_same_texts": sd_s, "true_sd_independent_texts": sd_i,
                   "fallback_se_over_sd_same_texts": float(np.mean(q["se_same"]) / sd_s),
                   "fallback_se_over_sd_independent_texts": float(np.mean(q["se_indep"]) / sd_i),
                   "fallback_coverage_independent_texts": float(np.mean(q["cover_indep"]))}
            if m in pca_m:
                row["bias_over_sd"] = float((same.mean() - truth[m]) / sd_s)
                row["bootstrap_bias_over_sd"] = float(np.mean(q["boot_bias"]) / sd_s)
                for k_ in methods[1:4]:
                    row[f"{k_}_bias_over_sd"] = float(np.mean(q[f"bias_{k_}"]) / sd_s)
                for k_ in methods:
                    row[f"coverage_{k_}"] = float(np.mean(q[f"cover_{k_}"]))
            rows[m] = row
        out["sizes"][str(n_pc)] = {"reps": reps, "seconds": round(time.perf_counter() - start, 2), "metrics": rows}
        print(f"  fallback/bias {spectrum} {n_pc}/class done in {out['sizes'][str(n_pc)]['seconds']} s",
              file=sys.stderr, flush=True)
    return out


def run_probe_study(spectrum: str, sizes: list[int], reps: int, n_boot: int, seed: int) -> dict[str, Any]:
    """The probe AUROC alone (no PCA metric, so it is cheap): per data set the cross-validated
    AUROC, the old standard error and interval (fixed-score bootstrap, basic interval) and the new
    one (:func:`safespace_tasks.stats.cv_interval.cv_auroc_interval`) from the same fit and replicates."""
    from safespace_tasks.stats.cv_interval import cv_auroc_interval, fold_aurocs
    from safespace_tasks.stats.probe import probe_auroc
    from safespace_tasks.stats.resampling import stratified_bootstrap_weights
    from safespace_tasks.stats.resampling import summarise, weighted_auroc

    p = planted_for(spectrum, 3.0)
    out: dict[str, Any] = {"spectrum": spectrum, "sizes": {}}
    for n_pc in sizes:
        truth = truth_probe(p, n_pc, reps=100)
        rng = np.random.default_rng(seed + n_pc)
        v, se_old, se_new, cov_old, cov_new, t_fit, t_new = [], [], [], [], [], [], []
        for r in range(reps):
            X, y = sample(p, n_pc, rng)
            t0 = time.perf_counter()
            fit = probe_auroc(X, y, seed=seed + r)
            reps_fixed = weighted_auroc(fit.oof_scores, y, stratified_bootstrap_weights(y, n_boot, seed + r + 1))
            old = summarise(reps_fixed, fit.auroc, 0.95, method="basic", lower=0.0, upper=1.0)
            t1 = time.perf_counter()
            new = cv_auroc_interval(fit.auroc, old.stderr**2, fold_aurocs(fit.oof_scores, y, fit.folds), 0.95)
            t_fit.append(t1 - t0)
            t_new.append(time.perf_counter() - t1)
            v.append(fit.auroc)
            se_old.append(old.stderr)
            se_new.append(new.stderr)
            cov_old.append(old.ci[0] <= truth <= old.ci[1])
            cov_new.append(new.ci[0] <= truth <= new.ci[1])
        sd = float(np.std(v, ddof=1))
        out["sizes"][str(n_pc)] = {
            "reps": reps, "truth": truth, "true_sd": sd, "bias": float(np.mean(v) - truth),
            "coverage_old": float(np.mean(cov_old)), "coverage_new": float(np.mean(cov_new)),
            "stderr_ratio_old": float(np.mean(se_old) / sd), "stderr_ratio_new": float(np.mean(se_new) / sd),
            "seconds_probe_and_bootstrap": float(np.sum(t_fit)), "seconds_added_by_new_interval": float(np.sum(t_new)),
        }
        print(f"  probe {spectrum} {n_pc}/class done", file=sys.stderr, flush=True)
    return out


def probe_table(res: dict[str, Any]) -> str:
    lines = ["| spectrum | texts/class | truth | datasets | coverage old → new | stderr / true sd old → new | bias |",
             "|---|---|---|---|---|---|---|"]
    for n_pc, r in res["sizes"].items():
        lines.append(f"| {res['spectrum']} | {n_pc} | {r['truth']:.4f} | {r['reps']} | {r['coverage_old']:.3f} → "
                     f"**{r['coverage_new']:.3f}** | {r['stderr_ratio_old']:.2f} → {r['stderr_ratio_new']:.2f} | "
                     f"{r['bias']:+.4f} |")
    return "\n".join(lines)


def gain_table(res: dict[str, Any]) -> str:
    lines = ["| spectrum | texts/class | metric | truth | coverage old → new | stderr / true sd old → new | bias / sd | independent SE / true sd |",
             "|---|---|---|---|---|---|---|---|"]
    for n_pc, block in res["sizes"].items():
        for m, r in block["metrics"].items():
            lines.append(f"| {res['spectrum']} | {n_pc} | {m} | {r['truth']:+.4f} | {r['coverage_old']:.3f} → "
                         f"**{r['coverage_new']:.3f}** | {r['stderr_ratio_old']:.2f} → {r['stderr_ratio_new']:.2f} | "
                         f"{r['bias_over_sd']:+.2f} | {r['independent_ratio']:.2f} |")
    return "\n".join(lines)


def fallback_bias_table(res: dict[str, Any]) -> str:
    lines = ["| spectrum | texts/class | metric | fallback SE / true sd, independent texts (coverage) | ... same texts | "
             "bias / sd: plug-in, bootstrap, jackknife n/2, double | coverage: basic, jackknife n/2, jackknife n/5, "
             "double, percentile |", "|---|---|---|---|---|---|---|"]
    for n_pc, block in res["sizes"].items():
        for m, r in block["metrics"].items():
            row = (f"| {res['spectrum']} | {n_pc} | {m} | {r['fallback_se_over_sd_independent_texts']:.2f} "
                   f"({r['fallback_coverage_independent_texts']:.3f}) | {r['fallback_se_over_sd_same_texts']:.2f} |")
            if "coverage_basic" in r:
                row += (f" {r['bias_over_sd']:+.2f}, {r['bootstrap_bias_over_sd']:+.2f}, {r['jack_half_bias_over_sd']:+.2f}, "
                        f"{r['double_bias_over_sd']:+.2f} | " + ", ".join(
                            f"{r['coverage_' + k]:.3f}" for k in ("basic", "jack_half", "jack_fifth", "double", "percentile"))
                        + " |")
            else:
                row += " | |"
            lines.append(row)
    return "\n".join(lines)


def table(results: dict[str, Any]) -> str:
    lines = ["| code | texts/class | metric | truth | coverage | stderr / true sd | bias |", "|---|---|---|---|---|---|---|"]
    for code, res in results.items():
        for n_pc, block in res["sizes"].items():
            for m, r in block["metrics"].items():
                lines.append(f"| {code} | {n_pc} | {m} | {r['truth']:.4f} | {r['coverage']:.3f} | "
                             f"{r['stderr_ratio']:.2f} | {r['bias']:+.4f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="50,200,1000", help="texts per class, comma separated")
    ap.add_argument("--reps", type=int, default=200, help="fresh datasets per size")
    ap.add_argument("--n-boot", type=int, default=200)
    ap.add_argument("--probe-refits", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--signal", type=float, default=1.0,
                    help="scale of the mean shift (1: Bhattacharyya 0.042, the weak regime of the issue; 3: 0.24)")
    ap.add_argument("--spectrum", default="d10", choices=SPECTRA,
                    help="d10: the d = k = 10 study; eigengap / powerlaw: the d = 64 spectra of planted_spectrum")
    ap.add_argument("--gain", action="store_true",
                    help="study the report's paired gain (base vs a shifted aligned model) instead of one model")
    ap.add_argument("--fallback-bias", action="store_true",
                    help="the report's independent fallback (same vs independent texts) and bias corrections of the gain")
    ap.add_argument("--n-sub", type=int, default=40, help="subsamples per delete-d jackknife (--fallback-bias)")
    ap.add_argument("--probe-only", action="store_true",
                    help="the probe AUROC's old (fixed-score bootstrap) and new (CV-corrected) intervals only")
    ap.add_argument("--compare-old", default=None, help="path of a checkout with the old package (runs it too)")
    ap.add_argument("--metrics", default=",".join(METRICS), help="metrics to study (without probe_auroc: no probe fit)")
    ap.add_argument("--json-only", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--out", default=None)
    a = ap.parse_args(argv)
    sizes = [int(s) for s in a.sizes.split(",") if s.strip()]
    metrics = tuple(m for m in a.metrics.split(",") if m)
    command = "python benchmarks/bench_calibration.py " + " ".join(argv or sys.argv[1:])
    if a.probe_only:
        res = run_probe_study(a.spectrum, sizes, a.reps, a.n_boot, a.seed)
        record = {"benchmark": "calibration_probe", "command": command, "results": res}
        print(probe_table(res))
        if a.out:
            Path(a.out).write_text(json.dumps(record, indent=2))
            print(f"wrote {a.out}")
        return record
    if a.fallback_bias:
        if a.spectrum == "d10":
            ap.error("--fallback-bias needs --spectrum eigengap or powerlaw")
        res = run_fallback_bias_study(a.spectrum, sizes, a.reps, a.n_boot, a.seed, n_sub=a.n_sub)
        record = {"benchmark": "calibration_fallback_bias", "command": command, "k": K, "results": res}
        print(fallback_bias_table(res))
        if a.out:
            Path(a.out).write_text(json.dumps(record, indent=2))
            print(f"wrote {a.out}")
        return record
    if a.gain:
        if a.spectrum == "d10":
            ap.error("--gain needs --spectrum eigengap or powerlaw")
        res = run_gain_study(a.spectrum, sizes, a.reps, a.n_boot, a.seed)
        record = {"benchmark": "calibration_gain", "command": command, "k": K, "results": res}
        print(gain_table(res))
        if a.out:
            Path(a.out).write_text(json.dumps(record, indent=2))
            print(f"wrote {a.out}")
        return record
    if a.json_only:
        res = run_study(sizes, a.reps, a.n_boot, a.seed, a.probe_refits, a.signal, metrics, a.spectrum)
        print(json.dumps(res))
        return res
    results = {"new": run_study(sizes, a.reps, a.n_boot, a.seed, a.probe_refits, a.signal, metrics, a.spectrum)}
    if a.compare_old:
        env = dict(os.environ, PYTHONPATH=a.compare_old)
        cmd = [sys.executable, str(Path(__file__).resolve()), "--json-only", "--sizes", a.sizes, "--reps", str(a.reps),
               "--n-boot", str(a.n_boot), "--seed", str(a.seed), "--signal", str(a.signal), "--metrics", a.metrics,
               "--spectrum", a.spectrum, "--probe-refits", str(a.probe_refits)]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
        results["old"] = json.loads(proc.stdout.strip().splitlines()[-1])
    planted_params = ({k: v.tolist() for k, v in planted(a.signal).items()} if a.spectrum == "d10"
                      else {"spectrum": a.spectrum, "doc": "planted_spectrum(%r)" % a.spectrum})
    record = {"benchmark": "calibration", "command": command, "k": K, "signal": a.signal, "spectrum": a.spectrum,
              "planted": planted_params, "results": results}
    print(table(results))
    if a.out:
        Path(a.out).write_text(json.dumps(record, indent=2))
        print(f"wrote {a.out}")
    return record


if __name__ == "__main__":
    main()
