"""Separation metrics of two classes of hidden states, with bootstrap spread and permutation null.

The quantities follow Verma & Bharadwaj (2025), "The Hidden Space of Safety": per language, X
holds one pooled hidden state per text (n x d) and y the toxic label (0/1). PCA is fitted on X
(both classes together, centred, not scaled) and k components are kept (the paper reports
k = 10); the metrics are the rows of :data:`safespace_tasks.metric_table.METRICS` that carry a
kernel (:func:`safespace_tasks.metric_table.kernel_rows`): the between-class variance ratio, the
Bhattacharyya distance and the silhouette score on those k coordinates, and a cross-validated
linear probe on the full states (:mod:`safespace_tasks.stats.probe`). :func:`separation_metrics`
loops over those rows for the point values, the bootstrap and the null; it names no metric.

PCA is exact and seed-free (:func:`~safespace_tasks.stats.pca.pca_basis`). Standard errors and
intervals come from a stratified bootstrap over texts (class sizes held fixed; whole groups with
``groups``): the basic bootstrap interval, clipped to each metric's range, with degenerate
replicates counted (:mod:`safespace_tasks.stats.resampling`). The null floor ``<metric>_null`` and
the permutation p-value come from label permutations. The PCA basis is fitted once on all texts
and held fixed across replicates and permutations (it does not see the labels), so the interval
measures the sampling spread of the metric given the basis. See docs/statistics.md for how to
read them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from safespace_tasks import metric_table as mt
from safespace_tasks.stats.pca import pca_method, pca_project
from safespace_tasks.stats.probe import cv_spread, refit_scale
from safespace_tasks.stats.resampling import (
    permutation_summary,
    permuted_labels,
    stratified_bootstrap_weights,
    summarise,
)
from safespace_tasks.stats.validation import (
    SeparationInputError,
    StageTimer,
    check_k,
    distinct_states,
    stratified_subsample,
    validate_states,
)

__all__ = [
    "SeparationResult",
    "separation_metrics",
    "METRIC_NAMES",
    "SILHOUETTE_MAX_N",
    "N_PERMUTATIONS",
    "PROBE_REFITS",
    "PROBE_PERMUTATIONS",
]

@dataclass
class SeparationResult:
    """All separation metrics of one language (and one layer), with spread and null floor.

    ``values``: metric -> plug-in point estimate (the headline number; NaN when degenerate, with
    the reason in ``degenerate``). ``stderr``: bootstrap standard error (the probe's includes
    refitting). ``ci``: the bias-aware (basic) bootstrap interval at ``ci_level``, clipped to the
    metric's range. ``null``: the metric's mean over label permutations (the value chance gives
    at this sample size); ``p_value``: the permutation p-value (1 + #{null >= observed}) /
    (1 + B). ``spread``: per metric, how its stderr and interval were made (method, replicates,
    degenerate replicates and their count, clipping, refits). ``diagnostics`` records the
    choices that shaped the numbers.
    """

    values: dict[str, float]
    stderr: dict[str, float]
    ci: dict[str, tuple[float, float]]
    ci_level: float
    n_boot: int
    diagnostics: dict[str, Any] = field(default_factory=dict)
    projection: np.ndarray | None = None
    null: dict[str, float] = field(default_factory=dict)
    p_value: dict[str, float] = field(default_factory=dict)
    n_permutations: dict[str, int] = field(default_factory=dict)
    degenerate: dict[str, str] = field(default_factory=dict)
    spread: dict[str, dict[str, Any]] = field(default_factory=dict)

    def extra_values(self) -> dict[str, float]:
        """``<metric>_null`` and ``<metric>_p`` of every metric (NaN where not computed)."""
        out: dict[str, float] = {}
        for m in self.values:
            out[m + "_null"] = float(self.null.get(m, float("nan")))
            out[m + "_p"] = float(self.p_value.get(m, float("nan")))
        return out

    def terms(self, metric: str) -> dict[str, float]:
        """The diagnostic terms of ``metric`` (the table's rows with ``term_of == metric``), read from
        the diagnostics; NaN where ``metric`` is NaN (degenerate or not computed)."""
        ok = np.isfinite(self.values.get(metric, float("nan")))
        out = {}
        for row in mt.METRICS:
            if row.term_of == metric:
                v = self.diagnostics.get(row.diagnostic)
                out[row.name] = float(v) if ok and v is not None else float("nan")
        return out

    def bhattacharyya_terms(self) -> dict[str, float]:
        """The distance's two terms, ``bhattacharyya_mean_term`` (⅛ Δμᵀ Σ̄⁻¹ Δμ) and
        ``bhattacharyya_cov_term`` (½ ln(det Σ̄ / √(det Σ₀ det Σ₁))), with the ridge the distance used;
        they sum to ``values["bhattacharyya"]`` (:meth:`terms` of ``"bhattacharyya"``)."""
        return self.terms("bhattacharyya")

    def to_dict(self) -> dict[str, Any]:
        return {
            "values": dict(self.values),
            "stderr": dict(self.stderr),
            "ci": {k: list(v) for k, v in self.ci.items()},
            "ci_level": self.ci_level,
            "n_boot": self.n_boot,
            "null": dict(self.null),
            "p_value": dict(self.p_value),
            "n_permutations": dict(self.n_permutations),
            "degenerate": dict(self.degenerate),
            "spread": {k: dict(v) for k, v in self.spread.items()},
            "diagnostics": dict(self.diagnostics),
        }


# The metrics separation_metrics reports, in table order (the table's rows with a kernel).
METRIC_NAMES: tuple[str, ...] = tuple(row.name for row in mt.kernel_rows())


# Above this many texts the silhouette (point estimate and bootstrap; every kernel marked quadratic)
# is computed on a seeded, class-stratified subsample of this size: its cost is quadratic in n
# (O(n^2 (k + B)) with the bootstrap), while every other metric is linear. Every real per-language set (at most 5,000
# texts) stays below it, so for them the silhouette uses all texts.
SILHOUETTE_MAX_N = 10_000

# Defaults of the null floor and of the probe's refitted standard error.
N_PERMUTATIONS = 100
PROBE_REFITS = 0
PROBE_PERMUTATIONS = 0


def separation_metrics(
    X: np.ndarray,
    y: np.ndarray,
    *,
    k: int = 10,
    n_boot: int = 200,
    ci_level: float = 0.95,
    seed: int = 0,
    groups: np.ndarray | None = None,
    ridge: float | None = None,
    probe: bool = True,
    probe_folds: int = 5,
    silhouette_max_n: int | None = SILHOUETTE_MAX_N,
    n_permutations: int = N_PERMUTATIONS,
    probe_refits: int = PROBE_REFITS,
    probe_permutations: int = PROBE_PERMUTATIONS,
) -> SeparationResult:
    """Every separation metric of the metric table, with bootstrap spread and permutation null.

    The metrics are the rows of :data:`safespace_tasks.metric_table.METRICS` that carry a kernel
    (:func:`~safespace_tasks.metric_table.kernel_rows`): the between-class variance ratio,
    Bhattacharyya distance and silhouette on PCA-``k`` of ``X``, and the cross-validated probe
    AUROC on ``X`` itself. For each: the point value, a bootstrap standard error and a bias-aware
    interval (``n_boot`` replicates; 0 skips), and a null floor and p-value from
    ``n_permutations`` label permutations (0 skips).

    Parameters
    ----------
    X : ndarray of shape (n_texts, n_features)
        Pooled hidden states, one per text (float32 states are read in their own precision).
    y : ndarray of shape (n_texts,)
        Labels: 0 non-toxic, 1 toxic; at least 2 texts of each class.
    k : int, default=10
        PCA components kept (the paper's 10).
    n_boot : int, default=200
        Bootstrap replicates (0 or 1: no spread).
    ci_level : float, default=0.95
        Level of the intervals.
    seed : int, default=0
        Seed of the resamples (``seed + 1``), the quadratic kernels' subsample (``seed + 3``) and
        resamples (``seed + 2``), and the permutations (``seed + 4``): two models measured on the
        same texts with the same settings are scored on the same resamples and permutations.
    groups : ndarray of shape (n_texts,), optional
        Ties texts together (pairs; copies of one text, see
        :func:`~safespace_tasks.stats.validation.text_groups` and
        :func:`~safespace_tasks.stats.validation.combine_groups`): the probe's folds, the bootstrap
        and the permutations keep a group whole.
    ridge : float or None, default=None
        Ridge policy of the Bhattacharyya distance
        (:func:`~safespace_tasks.stats.kernels.gaussian_bhattacharyya`).
    probe : bool, default=True
        Compute the cross-fitted rows (the probe); False leaves them out of the result.
    probe_folds : int, default=5
        Cross-validation folds of the probe.
    silhouette_max_n : int or None, default=SILHOUETTE_MAX_N
        Above this many texts the quadratic kernels (the silhouette), their bootstrap and their
        null are computed on a seeded, class-stratified subsample of this size (whole groups when
        ``groups`` is given); ``diagnostics["silhouette_sample"]`` records its size. None: never.
    n_permutations : int, default=N_PERMUTATIONS
        Label permutations of the null floor.
    probe_refits : int, default=PROBE_REFITS
        Bootstrap replicates on which the probe is also refitted (warm-started, same folds): its
        bootstrap part is then scaled by sd(refitted) / sd(fixed) on those replicates.
    probe_permutations : int, default=PROBE_PERMUTATIONS
        Permutations with the probe refitted (its null costs a fit per permutation; 0: its null
        and p-value are NaN, and ``n_permutations["probe_auroc"]`` is 0).

    Returns
    -------
    result : SeparationResult
        ``values``, ``stderr``, ``ci``, ``null``, ``p_value`` per metric, how each spread was
        made (``spread``), degenerate metrics with their reason (``degenerate``), and the
        ``diagnostics`` (sizes, PCA, the kernels' own records, ``seconds`` per stage).

    Raises
    ------
    SeparationInputError
        On malformed input, too few texts for PCA-``k``, or states that are all identical.

    Notes
    -----
    - Intervals are the basic bootstrap interval (:mod:`safespace_tasks.stats.resampling`),
      clipped to each metric's range (the table row's ``range``). Degenerate replicates (NaN,
      inf, singular, beyond the kernel's bound) are counted in ``spread``; above 25 % of them the
      spread is NaN with the reason.
    - The probe's standard error counts the training variance without a refit: the variance of
      the fixed-score bootstrap is averaged with the Nadeau-Bengio corrected variance of the
      per-fold AUROCs, and the interval is a t interval with Satterthwaite degrees of freedom
      (:mod:`safespace_tasks.stats.cv_interval`; ``spread["probe_auroc"]`` holds both parts, the
      per-fold AUROCs and the df).
    - Degenerate data: texts that collapse to too few distinct states for a metric make that
      metric NaN, with the reason in ``degenerate`` (and ``diagnostics["n_degenerate_metrics"]``).

    References
    ----------
    .. [1] Verma, S. & Bharadwaj, A. (2025). The Hidden Space of Safety.
    .. [2] Efron, B. & Tibshirani, R. J. (1993). *An Introduction to the Bootstrap*. Chapman & Hall.
    .. [3] Davison, A. C. & Hinkley, D. V. (1997). *Bootstrap Methods and their Application*, ch. 5.
    .. [4] Phipson, B. & Smyth, G. K. (2010). Permutation p-values should never be zero.
       *Stat. Appl. Genet. Mol. Biol.*, 9(1).
    .. [5] Nadeau, C. & Bengio, Y. (2003). Inference for the generalization error. *Machine
       Learning*, 52, 239-281.
    """
    timer = StageTimer()
    with timer("validate"):
        X, y = validate_states(X, y, min_per_class=2, keep_float32=True)
    n, d = X.shape
    check_k(n, d, k)
    if groups is not None:
        groups = np.asarray(groups)
        if groups.shape != (n,):
            raise SeparationInputError(f"groups must hold one id per text ({n}); got shape {groups.shape}.")
    for name, val in (("n_permutations", n_permutations), ("probe_refits", probe_refits),
                      ("probe_permutations", probe_permutations), ("n_boot", n_boot)):
        if not isinstance(val, (int, np.integer)) or val < 0:
            raise SeparationInputError(f"{name} must be a non-negative integer; got {val!r}.")
    m = measure(
        X, y, k=k, seed=seed, groups=groups, ridge=ridge, probe=probe, probe_folds=probe_folds,
        silhouette_max_n=silhouette_max_n, n_boot=n_boot, timer=timer, n_permutations=int(n_permutations),
        probe_refits=int(probe_refits), probe_permutations=int(probe_permutations),
    )
    counts = np.bincount(y, minlength=2)
    diagnostics: dict[str, Any] = {
        "n": int(n),
        "n_nontoxic": int(counts[0]),
        "n_toxic": int(counts[1]),
        "dim": int(d),
        "pca_components": int(k),
        "pca_method": pca_method(n, d),
        "pca_explained_variance": float(np.sum(m.explained_variance)),
        **m.diagnostics,
        "n_distinct_states": m.distinct[0],
        "n_distinct_states_nontoxic": m.distinct[1][0],
        "n_distinct_states_toxic": m.distinct[1][1],
        "n_groups": None if groups is None else int(np.unique(groups).size),
        "n_texts_sharing_a_group": None if groups is None else int(
            np.sum(np.unique(groups, return_counts=True)[1][np.unique(groups, return_inverse=True)[1]] > 1)
        ),
        "n_degenerate_metrics": len(m.degenerate),
        **m.fit_diagnostics,
    }
    stderr, ci, spread = spreads(m, ci_level)
    if m.replicates:
        diagnostics["bootstrap"] = "stratified by class" if groups is None else "stratified, whole groups"
    null, p_value, n_perm = {}, {}, {}
    for name in m.values:
        reps = m.null.get(name)
        if reps is None or not np.isfinite(m.values[name]):
            null[name], p_value[name], n_perm[name] = float("nan"), float("nan"), 0
            continue
        null[name], p_value[name], n_bad = permutation_summary(reps, m.values[name])
        n_perm[name] = int(reps.size)
        if n_bad:
            spread.setdefault(name, {})["null_degenerate"] = n_bad
    diagnostics["seconds"] = timer.seconds
    return SeparationResult(
        values=m.values, stderr=stderr, ci=ci, ci_level=ci_level, n_boot=int(n_boot or 0),
        diagnostics=diagnostics, projection=m.projection, null=null, p_value=p_value,
        n_permutations=n_perm, degenerate=dict(m.degenerate), spread=spread,
    )


def spreads(m: "Measured", ci_level: float) -> tuple[dict[str, float], dict[str, tuple[float, float]], dict[str, dict]]:
    """Standard error, interval and spread record of every metric with bootstrap replicates in ``m``."""
    stderr: dict[str, float] = {}
    ci: dict[str, tuple[float, float]] = {}
    spread: dict[str, dict[str, Any]] = {}
    for name, reps in m.replicates.items():
        row = mt.spec(name)
        kern = row.kernel
        lo, hi = row.range
        scale, extra = 1.0, {}
        if kern.refit is not None:
            scale, extra = refit_scale(reps, m.refits.get(name))
        sp = summarise(reps, m.values[name], ci_level, method="basic", lower=lo, upper=hi, bound=kern.bound, scale=scale)
        stderr[name], ci[name] = sp.stderr, sp.ci
        spread[name] = {
            "method": sp.method, "n_replicates": sp.n_replicates, "n_degenerate": sp.n_degenerate,
            "clipped": sp.clipped, "reason": sp.reason, **extra,
        }
        if kern.per_fold is not None and "fit" in m.contexts[name] and np.isfinite(sp.stderr):
            per_fold = kern.per_fold(m.contexts[name])
            stderr[name], ci[name], more = cv_spread(m.values[name], sp.stderr**2, per_fold, ci_level, lo, hi)
            spread[name].update(more)
    return stderr, ci, spread


@dataclass
class Measured:
    """Everything one model's states give: point values, bootstrap replicates (empty without a
    bootstrap), null replicates, each metric's kernel context, and what the diagnostics report."""

    values: dict[str, float]
    replicates: dict[str, np.ndarray]
    projection: np.ndarray
    explained_variance: np.ndarray
    contexts: dict[str, dict]
    subsample: np.ndarray | None = None
    refits: dict[str, np.ndarray] = field(default_factory=dict)
    null: dict[str, np.ndarray] = field(default_factory=dict)
    degenerate: dict[str, str] = field(default_factory=dict)
    distinct: tuple[int, tuple[int, int]] = (0, (0, 0))
    diagnostics: dict[str, Any] = field(default_factory=dict)
    fit_diagnostics: dict[str, Any] = field(default_factory=dict)


def measure(
    X: np.ndarray, y: np.ndarray, *, k: int, seed: int, groups: np.ndarray | None, ridge: float | None,
    probe: bool, probe_folds: int, silhouette_max_n: int | None, n_boot: int, timer: StageTimer,
    n_permutations: int = N_PERMUTATIONS, probe_refits: int = PROBE_REFITS, probe_permutations: int = PROBE_PERMUTATIONS,
) -> Measured:
    """Every kernel row of the table on validated states: point values, replicates and null.

    The resamples depend only on ``y``, ``groups``, ``n_boot`` and ``seed`` (``seed + 1``; the
    quadratic kernels' subsample ``seed + 3`` and resamples ``seed + 2``; the permutations
    ``seed + 4``), so two models measured on the same texts with the same settings are scored on
    the same resamples and permutations.
    """
    n = X.shape[0]
    nan = float("nan")
    rows = mt.kernel_rows(cross_fitted=probe)
    with timer("distinct_states"):
        distinct = distinct_states(X, y, groups)
    n_all, per_class = distinct
    if n_all < 2:
        raise SeparationInputError(
            f"all {n} texts give the same hidden state: nothing to measure. Check the texts (one string repeated?) "
            "and the pooling (a fixed position of a padded batch?)."
        )
    degenerate: dict[str, str] = {}
    for row in rows:
        if not row.kernel.cross_fitted and n_all < k + 1:
            degenerate[row.name] = (
                f"the texts collapse to {n_all} distinct states; PCA-{k} needs at least k + 1 = {k + 1} "
                "(use a smaller pca_components or more distinct texts)")
        elif row.kernel.check is not None:
            why = row.kernel.check(per_class, k)
            if why:
                degenerate[row.name] = why
    with timer("pca"):
        Z, evr = pca_project(X, k)
    options = dict(ridge=ridge, seed=seed, groups=groups, y=y, probe_folds=probe_folds, probe_refits=probe_refits,
                   probe_permutations=probe_permutations)
    contexts = {row.name: dict(options, diagnostics={}) for row in rows}
    sub = None
    if silhouette_max_n is not None and n > silhouette_max_n:
        sub = stratified_subsample(y, int(silhouette_max_n), seed + 3, groups=groups)
    Zs, ys = (Z, y) if sub is None else (Z[sub], y[sub])

    def data(row: mt.MetricSpec) -> tuple[np.ndarray, np.ndarray]:
        if row.kernel.cross_fitted:
            return X, y
        return (Zs, ys) if row.kernel.quadratic else (Z, y)

    values: dict[str, float] = {}
    for row in rows:
        if row.name in degenerate:
            values[row.name] = nan
            continue
        with timer(row.kernel.stage or row.name):
            try:
                values[row.name] = float(row.kernel.point(*data(row), contexts[row.name]))
            except SeparationInputError as err:
                if row.kernel.raises:
                    raise
                degenerate[row.name] = str(err)
                values[row.name] = nan
    live = [row for row in rows if np.isfinite(values[row.name])]
    reps: dict[str, np.ndarray] = {}
    refits: dict[str, np.ndarray] = {}
    if n_boot and n_boot > 1:
        with timer("bootstrap"):
            W = stratified_bootstrap_weights(y, int(n_boot), seed + 1, groups=groups)
            for row in live:
                if not row.kernel.quadratic:
                    reps[row.name] = row.kernel.replicates(*data(row), W, contexts[row.name])
        Ws = None
        for row in live:
            if row.kernel.quadratic:
                with timer(f"bootstrap_{row.kernel.stage or row.name}"):
                    if Ws is None:
                        Ws = W if sub is None else stratified_bootstrap_weights(
                            ys, int(n_boot), seed + 2, groups=None if groups is None else groups[sub])
                    reps[row.name] = row.kernel.replicates(Zs, ys, Ws, contexts[row.name])
        for row in live:
            if row.kernel.refit is not None:
                with timer(f"{row.kernel.stage or row.name}_refit"):
                    r = row.kernel.refit(*data(row), W, contexts[row.name])
                if r is not None:
                    refits[row.name] = r
    null: dict[str, np.ndarray] = {}
    if n_permutations > 0:
        Y = permuted_labels(y, int(n_permutations), seed + 4, groups=groups)
        Ys = Y if sub is None else Y[sub]
        for row in live:
            kern = row.kernel
            stage = kern.stage or row.name
            stage = (f"permutations_{stage}" if kern.quadratic else f"{stage}_permutations" if kern.cross_fitted
                     else "permutations")
            with timer(stage), np.errstate(all="ignore"):
                r = kern.null(*data(row)[:1], Ys if kern.quadratic else Y, contexts[row.name])
            if r is not None:
                r = np.asarray(r, dtype=np.float64)
                r[np.abs(r) > kern.bound] = np.inf
                null[row.name] = r
    diagnostics: dict[str, Any] = {}
    fit_diagnostics: dict[str, Any] = {}
    for row in rows:
        recorded = contexts[row.name]["diagnostics"]
        for key, default in row.kernel.diagnostics:
            diagnostics[key] = recorded.get(key, default)
        if row.kernel.quadratic:
            diagnostics[f"{row.name}_sample"] = None if sub is None else int(sub.size)
        fit_diagnostics.update({key: v for key, v in recorded.items() if key not in dict(row.kernel.diagnostics)})
    return Measured(
        values=values, replicates=reps, projection=Z, explained_variance=evr, contexts=contexts, subsample=sub,
        refits=refits, null=null, degenerate=degenerate, distinct=distinct, diagnostics=diagnostics,
        fit_diagnostics=fit_diagnostics,
    )
