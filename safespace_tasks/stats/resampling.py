"""Resampling kernels shared by the representation and the behavioural metrics.

Pure numpy. One place for: bootstrap replicate weights (stratified, whole groups), label
permutations that respect groups, the weighted AUROC (one argument order: ``scores, labels``),
weighted means, and the summary of replicates into a standard error and an interval that counts
degenerate replicates instead of dropping them silently.

Interval methods (``summarise``):

* ``"percentile"`` -- the ``alpha/2`` and ``1 - alpha/2`` quantiles of the replicates. Right for
  estimators without bias (means of per-item values: the behavioural metrics).
* ``"basic"`` -- the basic (reverse-percentile) bootstrap interval
  ``(2 theta_hat - q_{1-alpha/2}, 2 theta_hat - q_{alpha/2})`` (Davison & Hinkley 1997,
  *Bootstrap Methods and their Application*, eq. 5.6). The bootstrap distribution of
  ``theta* - theta_hat`` stands in for that of ``theta_hat - theta``, so an upward bias of the
  plug-in estimator (Bhattacharyya distance, variance ratio at small n) is reflected downward
  instead of being added a second time, as the percentile interval does.

Both are clipped to the metric's natural range (a distance never below 0, a ratio in [0, 1]);
clipping is reported.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = [
    "bootstrap_weights",
    "stratified_bootstrap_weights",
    "permuted_labels",
    "weighted_auroc",
    "weighted_means",
    "Spread",
    "summarise",
    "permutation_summary",
]


def bootstrap_weights(
    n: int, n_boot: int, seed: int, *, strata: np.ndarray | None = None, groups: np.ndarray | None = None
) -> np.ndarray:
    """Replicate weights (n x n_boot): how many times each item is drawn in each resample.

    Items are drawn with replacement within their stratum (all items form one stratum when
    ``strata`` is None), so every replicate keeps the stratum sizes. With ``groups`` whole
    groups are drawn instead (the items of a group move together: a pair, or copies of one
    text), stratified by the stratum of the group's first item.
    """
    rng = np.random.default_rng(seed)
    W = np.zeros((n, n_boot))
    if groups is None:
        units = np.arange(n)
        unit_stratum = None if strata is None else np.asarray(strata)
        inverse = None
    else:
        groups = np.asarray(groups)
        if groups.shape != (n,):
            raise ValueError(f"groups must hold one id per item ({n}); got shape {groups.shape}.")
        uniq, inverse = np.unique(groups, return_inverse=True)
        units = np.arange(uniq.size)
        if strata is None:
            unit_stratum = None
        else:
            strata = np.asarray(strata)
            unit_stratum = np.empty(uniq.size, dtype=strata.dtype)
            unit_stratum[inverse[::-1]] = strata[::-1]  # the stratum of each group's first item
    members_of = [units] if unit_stratum is None else [np.flatnonzero(unit_stratum == s) for s in np.unique(unit_stratum)]
    n_units = units.size
    for members in members_of:
        if members.size == 0:
            continue
        draws = members[rng.integers(0, members.size, size=(n_boot, members.size))]
        for b in range(n_boot):
            counts = np.bincount(draws[b], minlength=n_units)
            W[:, b] += counts if inverse is None else counts[inverse]
    return W


def stratified_bootstrap_weights(y: np.ndarray, n_boot: int, seed: int, groups: np.ndarray | None = None) -> np.ndarray:
    """Replicate weights (n x n_boot): how many times each text is drawn in each resample.

    Texts are drawn with replacement within their class, so every resample keeps the class sizes.
    With ``groups`` whole groups are drawn instead (texts of a group move together: a pair, or
    copies of one text), stratified by the group's first label. See
    :func:`bootstrap_weights`.
    """
    y = np.asarray(y)
    return bootstrap_weights(y.shape[0], n_boot, seed, strata=y, groups=groups)



def permuted_labels(y: np.ndarray, n_perm: int, seed: int, groups: np.ndarray | None = None) -> np.ndarray:
    """Label permutations (n x n_perm) that keep the class sizes and respect ``groups``.

    Without groups every label is shuffled. With groups: a group whose items share one label
    (copies of a text) keeps its items together, and its label is exchanged with groups of the
    same size only (so the class sizes stay fixed); a group with mixed labels (a pair) has its
    labels shuffled among its own items. Under "labels carry no signal" each permutation is as
    likely as the observed labelling, which makes the permutation p-value exact.
    """
    y = np.asarray(y)
    n = y.shape[0]
    rng = np.random.default_rng(seed)
    if groups is None:
        return np.stack([rng.permutation(y) for _ in range(n_perm)], axis=1)
    groups = np.asarray(groups)
    uniq, inverse, sizes = np.unique(groups, return_inverse=True, return_counts=True)
    Y = np.empty((n, n_perm), dtype=y.dtype)
    lo = np.full(uniq.size, np.iinfo(np.int64).max)
    hi = np.full(uniq.size, np.iinfo(np.int64).min)
    np.minimum.at(lo, inverse, y.astype(np.int64))
    np.maximum.at(hi, inverse, y.astype(np.int64))
    pure = lo == hi
    # pure groups: exchange labels among groups of equal size
    for s in np.unique(sizes[pure]):
        gs = np.flatnonzero(pure & (sizes == s))
        labs = lo[gs]
        perm = np.stack([rng.permutation(labs) for _ in range(n_perm)], axis=1)  # groups x P
        pos = np.full(uniq.size, -1)
        pos[gs] = np.arange(gs.size)
        rows = np.flatnonzero(np.isin(inverse, gs))
        Y[rows] = perm[pos[inverse[rows]]]
    # mixed groups: shuffle within the group
    for g in np.flatnonzero(~pure):
        rows = np.flatnonzero(inverse == g)
        Y[rows] = np.stack([rng.permutation(y[rows]) for _ in range(n_perm)], axis=1)
    return Y


def weighted_means(values: np.ndarray, W: np.ndarray) -> np.ndarray:
    """Weighted mean of ``values`` (n) under each column of weights ``W`` (n x B)."""
    tot = W.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (W.T @ values) / tot


def weighted_auroc(scores: np.ndarray, labels: np.ndarray, W: np.ndarray) -> np.ndarray:
    r"""AUROC of scores under each column of item weights: the weighted Mann-Whitney statistic.

    Ties count one half, as ``roc_auc_score(labels, scores, sample_weight=W[:, b])``; one sort
    serves all replicates.

    .. math::
        \mathrm{AUC}_b = \frac{\sum_{i: y_i = 1} w_{ib} (N_{<s_i,b} + \tfrac12 N_{=s_i,b})}{P_b N_b}

    with N_<s,b / N_=s,b the negative weight below / tied with s, P_b and N_b the class totals.

    Parameters
    ----------
    scores : ndarray of shape (n,)
        Decision scores; higher means label 1.
    labels : ndarray of shape (n,)
        Labels 0/1.
    W : ndarray of shape (n, B)
        Item weights per replicate (bootstrap draw counts; a column of ones is the plain AUROC).

    Returns
    -------
    auroc : ndarray of shape (B,)
        The weighted AUROC of each column; NaN where a column gives a class no weight.

    References
    ----------
    .. [1] Mann, H. B. & Whitney, D. R. (1947). On a test of whether one of two random variables is
       stochastically larger than the other. *Ann. Math. Statist.*, 18(1), 50-60.
    .. [2] Hanley, J. A. & McNeil, B. J. (1982). The meaning and use of the area under a receiver
       operating characteristic (ROC) curve. *Radiology*, 143(1), 29-36.
    """
    scores = np.asarray(scores)
    labels = np.asarray(labels)
    uniq, inv = np.unique(scores, return_inverse=True)
    neg = labels == 0
    pos = ~neg
    neg_at = np.zeros((uniq.size, W.shape[1]))
    np.add.at(neg_at, inv[neg], W[neg])
    below = np.cumsum(neg_at, axis=0) - neg_at
    credit = W[pos] * (below[inv[pos]] + 0.5 * neg_at[inv[pos]])
    with np.errstate(invalid="ignore", divide="ignore"):
        return credit.sum(axis=0) / (W[pos].sum(axis=0) * W[neg].sum(axis=0))


@dataclass
class Spread:
    """Standard error and interval of one metric from its replicates.

    ``n_degenerate`` counts replicates that were NaN, infinite or beyond ``bound`` (left out of
    the spread and reported); ``reason`` says why ``stderr``/``ci`` are NaN when they are;
    ``clipped`` is True when an interval end was moved to the metric's natural range.
    """

    stderr: float
    ci: tuple[float, float]
    n_replicates: int
    n_degenerate: int = 0
    clipped: bool = False
    method: str = "basic"
    reason: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


# Above this share of degenerate replicates the spread is not reported (NaN, with the reason);
# below it the spread of the usable replicates is reported together with their count.
MAX_DEGENERATE_SHARE = 0.25


def summarise(
    replicates: np.ndarray,
    point: float,
    ci_level: float,
    *,
    method: str = "basic",
    lower: float = -np.inf,
    upper: float = np.inf,
    bound: float = np.inf,
    scale: float = 1.0,
) -> Spread:
    """Bootstrap standard error (sd of the usable replicates, times ``scale``) and interval.

    Replicates that are NaN, infinite or larger than ``bound`` in magnitude are degenerate:
    counted in ``n_degenerate``; when they exceed :data:`MAX_DEGENERATE_SHARE` of all replicates
    the standard error and interval are NaN and ``reason`` says so (a spread of the remaining
    replicates would describe a different, luckier sample). ``method`` is ``"basic"`` or
    ``"percentile"`` (module docstring). ``scale`` widens the standard error and the interval's
    half-widths about ``point`` (the probe's refitting correction). The interval is clipped to
    ``[lower, upper]``.
    """
    r = np.asarray(replicates, dtype=np.float64).ravel()
    total = int(r.size)
    ok = np.isfinite(r) & (np.abs(r) <= bound)
    n_bad = int(total - ok.sum())
    r = r[ok]
    nan = float("nan")
    if method not in ("basic", "percentile"):
        raise ValueError(f"unknown interval method {method!r}; use 'basic' or 'percentile'.")
    if not np.isfinite(point):
        return Spread(nan, (nan, nan), total, n_bad, method=method, reason="the point estimate is not finite")
    if total == 0 or n_bad > MAX_DEGENERATE_SHARE * total:
        return Spread(
            nan, (nan, nan), total, n_bad, method=method,
            reason=f"{n_bad} of {total} bootstrap replicates are degenerate (NaN, inf or beyond {bound:g})",
        )
    if r.size < 2:
        return Spread(nan, (nan, nan), total, n_bad, method=method, reason="fewer than 2 usable replicates")
    stderr = float(np.std(r, ddof=1)) * scale
    alpha = (1.0 - ci_level) / 2.0
    q_lo, q_hi = np.quantile(r, [alpha, 1.0 - alpha])
    if method == "percentile" and scale == 1.0:
        lo, hi = float(q_lo), float(q_hi)
    elif method == "percentile":
        lo = point - scale * (point - q_lo)
        hi = point + scale * (q_hi - point)
    else:
        lo = point - scale * (q_hi - point)
        hi = point + scale * (point - q_lo)
    clipped = bool(lo < lower or hi > upper)
    lo, hi = float(min(max(lo, lower), upper)), float(max(min(hi, upper), lower))
    return Spread(stderr, (lo, hi), total, n_bad, clipped=clipped, method=method)


def permutation_summary(null: np.ndarray, observed: float) -> tuple[float, float, int]:
    """Mean of the null replicates, the permutation p-value and the count of degenerate ones.

    p = (1 + #{null >= observed}) / (1 + B) over the B finite null values (Phipson & Smyth
    2010, "Permutation p-values should never be zero"); a degenerate (non-finite) null value
    counts as ``>= observed`` (conservative) and is counted.
    """
    null = np.asarray(null, dtype=np.float64)
    finite = np.isfinite(null)
    n_bad = int((~finite).sum())
    if not np.isfinite(observed) or null.size == 0:
        return float("nan"), float("nan"), n_bad
    mean = float(null[finite].mean()) if finite.any() else float("nan")
    exceed = int(np.sum(null[finite] >= observed - 1e-12 * max(1.0, abs(observed)))) + n_bad
    return mean, (1.0 + exceed) / (1.0 + null.size), n_bad
