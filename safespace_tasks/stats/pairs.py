"""Pairs: a toxic text and its neutral rewrite. The cross-fitted paired shift, the pair ordering
accuracy, and their paired difference between two models. numpy only.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from safespace_tasks.stats.paired import PairedDifference
from safespace_tasks.stats.resampling import summarise
from safespace_tasks.stats.validation import SeparationInputError, validate_states

__all__ = ["PairShiftResult", "pair_index", "paired_shift", "paired_shift_difference"]


@dataclass(frozen=True)
class PairShiftResult:
    """Cross-fitted paired shift and pair ordering accuracy, with bootstrap spread over pairs."""

    shift: float
    order_accuracy: float
    per_pair_shift: np.ndarray
    stderr: dict[str, float]
    ci: dict[str, tuple[float, float]]
    n_pairs: int
    n_splits: int


def pair_index(y: np.ndarray, groups: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Row of the toxic and of the neutral member of each pair (pairs in sorted id order).

    Every group must hold exactly one text of each class.
    """
    y = np.asarray(y)
    groups = np.asarray(groups)
    uniq, inverse, counts = np.unique(groups, return_inverse=True, return_counts=True)
    tox = np.full(uniq.size, -1)
    neu = np.full(uniq.size, -1)
    tox[inverse[y == 1]] = np.flatnonzero(y == 1)
    neu[inverse[y == 0]] = np.flatnonzero(y == 0)
    bad = (counts != 2) | (tox < 0) | (neu < 0)
    if bad.any():
        raise SeparationInputError(
            f"{int(bad.sum())} pairs do not hold exactly one toxic and one neutral text (e.g. pair ids "
            f"{uniq[bad][:5].tolist()}); drop incomplete pairs before measuring."
        )
    return tox, neu


def paired_shift(
    X: np.ndarray,
    y: np.ndarray,
    groups: np.ndarray,
    *,
    n_splits: int = 5,
    n_boot: int = 200,
    ci_level: float = 0.95,
    seed: int = 0,
) -> PairShiftResult:
    r"""How far, and how consistently, each toxic text sits from its neutral rewrite along the
    language's toxic-minus-neutral direction.

    Pairs are split into ``n_splits`` folds. For each fold, the direction
    :math:`w = \bar\delta / \lVert\bar\delta\rVert` is the mean displacement
    :math:`\delta_i = x^{tox}_i - x^{neu}_i` of the *other* folds' pairs (cross-fitting: no pair
    defines its own direction), and :math:`s = \sqrt{(\mathrm{var}\,p_{tox} + \mathrm{var}\,p_{neu})/2}`
    is the pooled within-class standard deviation of the projections :math:`p = x \cdot w` of the
    other folds' texts. Each held-out pair gets the standardised shift :math:`d_i = \delta_i \cdot w / s`.

    - paired shift = mean of :math:`d_i` (in within-class SDs; 0 = no systematic displacement);
    - pair ordering accuracy = fraction of pairs with :math:`\delta_i \cdot w > 0` (ties count ½).

    Parameters
    ----------
    X : ndarray of shape (n_texts, n_features)
        Pooled hidden states.
    y : ndarray of shape (n_texts,)
        Labels: 1 for the toxic member of a pair, 0 for its neutral rewrite.
    groups : ndarray of shape (n_texts,)
        Pair ids; every pair holds exactly one text of each class (:func:`pair_index`).
    n_splits : int, default=5
        Cross-fitting folds of pairs (at most half the pairs).
    n_boot : int, default=200
        Bootstrap replicates over pairs (the directions held fixed); 0 or 1 skips.
    ci_level : float, default=0.95
        Level of the basic bootstrap intervals.
    seed : int, default=0
        Seed of the fold assignment (``seed``) and of the resamples (``seed + 1``).

    Returns
    -------
    result : PairShiftResult
        The shift, the ordering accuracy, the per-pair shifts, and their standard errors and
        intervals (``"paired_shift"``, ``"pair_order_acc"``).

    Raises
    ------
    SeparationInputError
        With fewer than 4 pairs, pairs that collapse to fewer distinct displacements than the
        folds need, or projections without spread (the caller reports NaN with the reason).

    References
    ----------
    .. [1] Chernozhukov, V. et al. (2018). Double/debiased machine learning for treatment and
       structural parameters. *The Econometrics Journal*, 21(1), C1-C68 (cross-fitting).
    .. [2] Logacheva, V. et al. (2022). ParaDetox: Detoxification with parallel data. *ACL* (the pairs).
    """
    X, y = validate_states(X, y, min_per_class=2)
    tox, neu = pair_index(y, groups)
    n_pairs = tox.size
    splits = int(min(n_splits, n_pairs // 2))
    if splits < 2:
        raise SeparationInputError(
            f"the paired shift needs at least 4 pairs (2 folds of 2); got {n_pairs}. Use a larger --limit."
        )
    delta = X[tox] - X[neu]
    n_distinct = len({delta[i].tobytes() for i in range(n_pairs)})
    if n_distinct < 2 * splits:
        raise SeparationInputError(
            f"the {n_pairs} pairs collapse to {n_distinct} distinct toxic-minus-neutral displacements; the "
            f"cross-fitted paired shift needs at least {2 * splits} (a repeated pair has no within-class spread: "
            "the shift would be a ratio of rounding errors). Use more distinct pairs."
        )
    scale = float(np.sqrt(np.mean(np.var(X, axis=0))))
    rng = np.random.default_rng(seed)
    fold_of = rng.permutation(np.arange(n_pairs) % splits)
    d = np.empty(n_pairs)
    raw = np.empty(n_pairs)
    for f in range(splits):
        test = fold_of == f
        train = ~test
        mean_delta = delta[train].mean(axis=0)
        norm = float(np.linalg.norm(mean_delta))
        if norm == 0.0:
            raise SeparationInputError("the toxic and neutral members coincide on average: no direction to project on.")
        w = mean_delta / norm
        p_tox = X[tox[train]] @ w
        p_neu = X[neu[train]] @ w
        sd = float(np.sqrt((np.var(p_tox, ddof=1) + np.var(p_neu, ddof=1)) / 2.0))
        if not sd > 1e-6 * scale:
            raise SeparationInputError("the projections have zero within-class spread: the paired shift is undefined.")
        raw[test] = delta[test] @ w
        d[test] = raw[test] / sd
    order = np.where(raw > 0, 1.0, np.where(raw < 0, 0.0, 0.5))
    stderr: dict[str, float] = {}
    ci: dict[str, tuple[float, float]] = {}
    if n_boot and n_boot > 1:
        idx = np.random.default_rng(seed + 1).integers(0, n_pairs, size=(int(n_boot), n_pairs))
        for name, per_pair in (("paired_shift", d), ("pair_order_acc", order)):
            point = float(per_pair.mean())
            sp = summarise(per_pair[idx].mean(axis=1), point, ci_level, method="basic",
                           lower=0.0 if name == "pair_order_acc" else -np.inf, upper=1.0 if name == "pair_order_acc" else np.inf)
            stderr[name], ci[name] = sp.stderr, sp.ci
    return PairShiftResult(
        shift=float(d.mean()), order_accuracy=float(order.mean()), per_pair_shift=d,
        stderr=stderr, ci=ci, n_pairs=int(n_pairs), n_splits=splits,
    )


def paired_shift_difference(
    X_a: np.ndarray,
    X_b: np.ndarray,
    y: np.ndarray,
    groups: np.ndarray,
    *,
    n_splits: int = 5,
    n_boot: int = 200,
    ci_level: float = 0.95,
    seed: int = 0,
) -> PairedDifference:
    """:func:`paired_shift` and pair ordering accuracy of two models on the same pairs, and a
    bootstrap of their difference that resamples the *same* pairs for both models.

    Each model's per-pair shifts are cross-fitted exactly as :func:`paired_shift` does with these
    arguments, and the resamples are those it draws (from ``seed + 1``), so each model's value and
    replicate spread equal what its run reported.
    """
    if n_boot < 2:
        raise SeparationInputError(f"a paired bootstrap needs at least 2 replicates; got n_boot={n_boot}.")
    res_a = paired_shift(X_a, y, groups, n_splits=n_splits, n_boot=0, seed=seed)
    res_b = paired_shift(X_b, y, groups, n_splits=n_splits, n_boot=0, seed=seed)
    n_pairs = res_a.n_pairs
    idx = np.random.default_rng(seed + 1).integers(0, n_pairs, size=(int(n_boot), n_pairs))

    def order(d: np.ndarray) -> np.ndarray:
        return np.where(d > 0, 1.0, np.where(d < 0, 0.0, 0.5))

    per_pair = {
        "paired_shift": (res_a.per_pair_shift, res_b.per_pair_shift),
        "pair_order_acc": (order(res_a.per_pair_shift), order(res_b.per_pair_shift)),
    }
    values_a = {"paired_shift": res_a.shift, "pair_order_acc": res_a.order_accuracy}
    values_b = {"paired_shift": res_b.shift, "pair_order_acc": res_b.order_accuracy}
    difference, stderr, stderr_a, stderr_b, ci = {}, {}, {}, {}, {}
    for name, (pa, pb) in per_pair.items():
        ra, rb = pa[idx].mean(axis=1), pb[idx].mean(axis=1)
        difference[name] = values_b[name] - values_a[name]
        sp = summarise(rb - ra, difference[name], ci_level, method="basic",
                       lower=-1.0 if name == "pair_order_acc" else -np.inf, upper=1.0 if name == "pair_order_acc" else np.inf)
        stderr[name], ci[name] = sp.stderr, sp.ci
        stderr_a[name], _ = _spread(ra, ci_level)
        stderr_b[name], _ = _spread(rb, ci_level)
    return PairedDifference(
        values_a=values_a, values_b=values_b, difference=difference, stderr=stderr,
        stderr_a=stderr_a, stderr_b=stderr_b, ci=ci, ci_level=ci_level, n_boot=int(n_boot),
    )


def _spread(replicates: np.ndarray, ci_level: float) -> tuple[float, tuple[float, float]]:
    """Standard deviation and percentile interval of the finite replicates (NaN when too few)."""
    r = np.asarray(replicates)[np.isfinite(replicates)]
    stderr = float(np.std(r, ddof=1)) if r.size > 1 else float("nan")
    alpha = (1.0 - ci_level) / 2.0
    lo, hi = np.quantile(r, [alpha, 1.0 - alpha]) if r.size else (np.nan, np.nan)
    return stderr, (float(lo), float(hi))
