"""Two models on the same texts: a paired bootstrap of the difference of their separation metrics.

Every replicate draws *one* resample of texts that both models are scored on, so the spread of
the difference accounts for the texts the two share. The metrics are the metric table's kernel
rows (:func:`safespace_tasks.metric_table.kernel_rows`), as :func:`~safespace_tasks.stats.separation.separation_metrics`
computes them; this module names none of them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from safespace_tasks import metric_table as mt
from safespace_tasks.stats.probe import cv_spread, refit_scale
from safespace_tasks.stats.resampling import stratified_bootstrap_weights, summarise
from safespace_tasks.stats.separation import PROBE_REFITS, SILHOUETTE_MAX_N, Measured, measure, spreads
from safespace_tasks.stats.validation import (
    SeparationInputError,
    StageTimer,
    check_k,
    stratified_subsample,
    validate_states,
)

__all__ = ["PairedDifference", "paired_bootstrap_difference", "SILHOUETTE_REFIT_MAX_N"]

# Above this many texts (after the quadratic kernels' own subsample) the paired bootstrap keeps the
# fixed basis for the silhouette's replicates: a refitted basis costs an O(n^2 k) distance pass
# per replicate (about 0.05 s at 2,000 texts, 0.3 s at 5,000), and is recorded in ``spread``.
SILHOUETTE_REFIT_MAX_N = 3000


@dataclass
class PairedDifference:
    """Bootstrap of ``metric(B) - metric(A)`` for two models that saw the same texts.

    ``values_a`` / ``values_b`` are the point estimates (as :func:`separation_metrics` computes
    them with the same settings), ``difference`` their difference, ``stderr`` the standard
    deviation of the replicate differences, ``stderr_a`` / ``stderr_b`` the spread of each model's
    own replicates, and ``ci`` the basic bootstrap interval of the difference (clipped to the
    difference's possible range). ``spread`` says, per metric, how many replicate pairs were
    degenerate (counted, left out) and, for the probe, the refitting scale.
    """

    values_a: dict[str, float]
    values_b: dict[str, float]
    difference: dict[str, float]
    stderr: dict[str, float]
    stderr_a: dict[str, float]
    stderr_b: dict[str, float]
    ci: dict[str, tuple[float, float]]
    ci_level: float
    n_boot: int
    spread: dict[str, dict[str, Any]] = field(default_factory=dict)


def paired_bootstrap_difference(
    X_a: np.ndarray,
    X_b: np.ndarray,
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
    probe_refits: int = PROBE_REFITS,
    pca_refit: bool = True,
) -> PairedDifference:
    """Separation metrics of two models on the same texts and a paired bootstrap of their difference.

    Each model is measured as :func:`~safespace_tasks.stats.separation.separation_metrics`
    measures it (PCA-``k`` fitted on its own states, the probe cross-validated with the same
    folds), and every bootstrap replicate draws one resample of texts that both models are scored
    on. With the settings and ``seed`` of a run the point values and each model's standard error
    equal what ``separation_metrics`` reported for it (the resamples come from ``seed + 1``, as
    there; the probe's refits are the same replicates).

    Parameters
    ----------
    X_a, X_b : ndarray of shape (n_texts, d_a) and (n_texts, d_b)
        States of model A and model B; row i of each is the same text. The dimensions may differ.
    y : ndarray of shape (n_texts,)
        Labels 0/1.
    k, n_boot, ci_level, seed, groups, ridge, probe, probe_folds, silhouette_max_n, probe_refits
        As in :func:`~safespace_tasks.stats.separation.separation_metrics`; ``n_boot >= 2``.
    pca_refit : bool, default=True
        Refit each model's PCA-k basis inside every replicate
        (:mod:`safespace_tasks.stats.pca_refit`), so the replicates of the PCA metrics carry the
        basis's own sampling variation and bias (a fixed basis under-covers on spectra without an
        eigengap); the point values are unchanged. Quadratic kernels above
        :data:`SILHOUETTE_REFIT_MAX_N` texts keep the fixed basis (recorded in ``spread``).

    Returns
    -------
    result : PairedDifference
        Per metric: both models' values and standard errors, the difference ``B - A``, its
        standard error and interval: the basic bootstrap interval, clipped to
        ``(lower - upper, upper - lower)`` of the row's range; for a cross-fitted metric (the
        probe) the cross-validation-corrected t interval of
        :mod:`safespace_tasks.stats.cv_interval` on the per-fold differences (its bootstrap part
        widened by the refit scale with ``probe_refits > 1``).

    Raises
    ------
    SeparationInputError
        On malformed input or ``n_boot < 2``.

    References
    ----------
    .. [1] Efron, B. & Tibshirani, R. J. (1993). *An Introduction to the Bootstrap*, ch. 6. Chapman & Hall.
    .. [2] Davison, A. C. & Hinkley, D. V. (1997). *Bootstrap Methods and their Application*, eq. 5.6.
    .. [3] Nadeau, C. & Bengio, Y. (2003). Inference for the generalization error. *Machine
       Learning*, 52, 239-281.
    """
    X_a, y = validate_states(X_a, y, min_per_class=2, what="states of model A", keep_float32=True)
    X_b, _ = validate_states(X_b, y, min_per_class=2, what="states of model B", keep_float32=True)
    if n_boot < 2:
        raise SeparationInputError(f"a paired bootstrap needs at least 2 replicates; got n_boot={n_boot}.")
    for X in (X_a, X_b):
        check_k(X.shape[0], X.shape[1], k)
    kwargs = dict(
        k=k, seed=seed, groups=groups, ridge=ridge, probe=probe, probe_folds=probe_folds,
        silhouette_max_n=silhouette_max_n, n_boot=int(n_boot), timer=StageTimer(), n_permutations=0,
        probe_refits=int(probe_refits),
    )
    a = measure(X_a, y, **kwargs)
    b = measure(X_b, y, **kwargs)
    # each model's own standard error is the one its run reported (fixed basis)
    sa, _, _ = spreads(a, ci_level)
    sb, _, _ = spreads(b, ci_level)
    refitted: set[str] = set()
    if pca_refit:
        done = [_refit_pca_replicates(X, y, m, k=k, n_boot=int(n_boot), seed=seed, groups=groups,
                                      silhouette_max_n=silhouette_max_n) for X, m in ((X_a, a), (X_b, b))]
        refitted = done[0] & done[1]
    values_a, values_b = a.values, b.values
    difference, stderr, stderr_a, stderr_b, ci, spread = {}, {}, {}, {}, {}, {}
    for name in values_a:
        row = mt.spec(name)
        kern = row.kernel
        difference[name] = values_b[name] - values_a[name]
        stderr_a[name] = sa.get(name, float("nan"))
        stderr_b[name] = sb.get(name, float("nan"))
        if name not in a.replicates or name not in b.replicates:
            stderr[name], ci[name] = float("nan"), (float("nan"), float("nan"))
            spread[name] = {"reason": a.degenerate.get(name) or b.degenerate.get(name) or "no replicates"}
            continue
        ra, rb = a.replicates[name], b.replicates[name]
        bad = ~(np.isfinite(ra) & np.isfinite(rb) & (np.abs(ra) <= kern.bound) & (np.abs(rb) <= kern.bound))
        with np.errstate(invalid="ignore"):  # inf - inf of degenerate pairs, masked here
            diff = np.where(bad, np.nan, rb - ra)
        scale, extra = 1.0, {}
        if kern.refit is not None and name in a.refits and name in b.refits:
            r = a.refits[name].size
            scale, extra = refit_scale(diff[:r], b.refits[name] - a.refits[name])
        lo, hi = row.range
        sp = summarise(diff, difference[name], ci_level, method="basic", lower=lo - hi, upper=hi - lo, scale=scale)
        stderr[name], ci[name] = sp.stderr, sp.ci
        spread[name] = {"method": sp.method, "n_replicates": sp.n_replicates, "n_degenerate": sp.n_degenerate,
                        "clipped": sp.clipped, "reason": sp.reason, **extra}
        if not kern.cross_fitted:
            spread[name]["pca_refit"] = name in refitted
            if pca_refit and name not in refitted and kern.quadratic:
                spread[name]["pca_refit_skipped"] = (
                    f"more than {SILHOUETTE_REFIT_MAX_N} texts: the {row.title}'s replicates keep the fixed basis "
                    "(a refitted basis costs an O(n^2) pass per replicate)")
        if (kern.per_fold is not None and "fit" in a.contexts[name] and "fit" in b.contexts[name]
                and np.isfinite(sp.stderr)):
            # the same seed, labels and groups give both models the same folds: per-fold differences
            per_fold = kern.per_fold(b.contexts[name]) - kern.per_fold(a.contexts[name])
            stderr[name], ci[name], more = cv_spread(difference[name], sp.stderr**2, per_fold, ci_level, lo - hi, hi - lo)
            spread[name].update(more)
    return PairedDifference(
        values_a=values_a, values_b=values_b, difference=difference, stderr=stderr,
        stderr_a=stderr_a, stderr_b=stderr_b, ci=ci, ci_level=ci_level, n_boot=int(n_boot), spread=spread,
    )


def _refit_pca_replicates(
    X: np.ndarray, y: np.ndarray, m: Measured, *, k: int, n_boot: int, seed: int, groups: np.ndarray | None,
    silhouette_max_n: int | None,
) -> set[str]:
    """Replace ``m``'s fixed-basis replicates of the PCA metrics by replicates on the same
    resamples (``seed + 1``; the quadratic kernels' subsample ``seed + 3`` and resamples ``seed + 2``,
    as :func:`~safespace_tasks.stats.separation.measure` draws them) with the basis refitted in each."""
    from safespace_tasks.stats.pca_refit import pca_refit_replicates

    kernels = {name: mt.spec(name).kernel for name in m.replicates}
    names = [nm for nm, kern in kernels.items() if not kern.cross_fitted]
    n_sub = X.shape[0] if silhouette_max_n is None else min(X.shape[0], int(silhouette_max_n))
    if n_sub > SILHOUETTE_REFIT_MAX_N:
        names = [nm for nm in names if not kernels[nm].quadratic]
    if not names:
        return set()
    W = stratified_bootstrap_weights(y, n_boot, seed + 1, groups=groups)
    rows = Ws = None
    if any(kernels[nm].quadratic for nm in names) and silhouette_max_n is not None and X.shape[0] > silhouette_max_n:
        rows = stratified_subsample(y, int(silhouette_max_n), seed + 3, groups=groups)
        Ws = stratified_bootstrap_weights(y[rows], n_boot, seed + 2, groups=None if groups is None else groups[rows])
    m.replicates.update(pca_refit_replicates(
        X, y, W, k, ridge=0.0, metrics=tuple(names), subsample_rows=rows, W_subsample=Ws,
        contexts={nm: m.contexts[nm] for nm in names},
    ))
    return set(names)
