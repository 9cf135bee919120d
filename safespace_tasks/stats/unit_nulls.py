"""Nulls for SCU overlaps that keep the shared utility scores, and per-request weighting (pure numpy).

Every language's safety-critical units (SCUs) are classified against the **same** utility scores,
so two SCU sets share units by construction (the units whose utility score is low enter both), and
the Jaccard of random sets of the same sizes (``units.expected_random_jaccard``) is far too low a
yardstick. The null here keeps the utility scores and the layout fixed and re-deals the *requests*:

* the requests of each set are dealt into ``G`` groups at random (nested in the two halves used for
  the split-half overlap), and each group keeps mergeable per-channel running statistics, so a
  re-dealt set is a merge of groups (:func:`merge_groups`, vectorised);
* for a pair of sets ``a`` / ``b`` the groups are re-dealt between them: when both sets hold the same
  requests in the same groups (MultiJail languages: translations of one another) group ``g`` of ``a``
  and group ``g`` of ``b`` are swapped or not (a paired permutation: every re-dealt set still holds
  each request once, in one language or the other; all ``2^(G-1)`` distinct swaps are enumerated
  when that is at most ``n_perm``); otherwise the ``G_a + G_b`` groups are pooled and re-split at
  random into sets of ``G_a`` and ``G_b`` groups;
* both SCU sets are found again against the same utility scores, and their Jaccard recorded.

The mean of the re-dealt Jaccards (``null``) is the overlap two SCU sets of these sizes reach when
the two sets' requests are exchangeable (the same language, as far as the units can tell), with
the shared utility set and everything else the design shares. The observed value cannot be
expected above it; ``p`` is the permutation p-value of the lower tail, ``(1 + #{J_null <= J}) /
(1 + R)`` (paired and exhaustive: ``#{J_null <= J} / R``, the observed deal among them): small means
the two sets' SCUs overlap less than exchangeable requests would, i.e. set-specific SCUs. Under
exchangeable requests it is uniform (tests/unit/test_unit_nulls.py). A value near ``null`` with a large
``p`` says the two SCU sets cannot be told apart at this sample size — which is *not* evidence of
shared safety units beyond what the shared utility set and the shared model force.

That null is the **ceiling**. The **floor** (:func:`floor_null`) is the overlap when the two sets
share the utility scores but not their safety-specific units: set b's safety scores keep, per layer
and module type, their line on the utility scores, and the residuals are dealt at random among the
stratum's units. ``floor`` is the mean Jaccard of those deals and ``p_floor`` the upper-tail
p-value: small means the SCU sets share more than the shared utility scores force. An observed
overlap reads between ``floor`` and ``null``.

Per-request weighting (:func:`equal_weight`): pooled over tokens, a request of 140 tokens weighs
eight times one of 17. ``equal_weight`` turns one request's statistics into a weight-1 summary
(its mean and its within-request variance), so that merged statistics hold the variance of a
token drawn by picking a request uniformly, then one of its tokens uniformly:
``mean_i v_i + mean_i (m_i - m)^2``.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from safespace_tasks.stats.units import (
    SITES,
    ClassSettings,
    RunningStats,
    UnitLayout,
    UnitsError,
    UnitStatistics,
    expected_random_jaccard,
    jaccard,
    scu_ids,
    classify,
    unit_scores,
)

__all__ = ["equal_weight", "group_ids", "GroupStack", "merge_groups", "scu_set", "overlap_null", "floor_null",
           "residual_shuffle", "split_half_own_utility"]


def equal_weight(stats: UnitStatistics) -> UnitStatistics:
    """One request's statistics as a weight-1 summary: count 1, its token mean, M2 = its
    within-request (population) variance. A request without scored tokens stays empty (weight 0)."""
    sites = {}
    for name, st in stats.sites.items():
        if st.count == 0:
            sites[name] = RunningStats(0, np.zeros_like(st.mean), np.zeros_like(st.m2))
        else:
            sites[name] = RunningStats(1, np.array(st.mean, np.float64), np.asarray(st.m2, np.float64) / st.count)
    return UnitStatistics(sites, stats.n_docs, stats.n_tokens, stats.truncated)


def group_ids(half: np.ndarray, n_groups: int, seed: int) -> np.ndarray:
    """Group (0..n_groups-1) of each doc, nested in its half: half 0 -> groups [0, G/2), half 1 ->
    [G/2, G); within a half the docs are dealt in a seeded random order, round robin (so groups of
    one half differ in size by at most one doc)."""
    half = np.asarray(half, int)
    if n_groups < 2 or n_groups % 2:
        raise UnitsError(f"null_groups={n_groups} must be an even number >= 2 (the groups nest in two halves).")
    per = n_groups // 2
    out = np.zeros(len(half), int)
    rng = np.random.default_rng(seed + 2)
    for h in (0, 1):
        idx = np.flatnonzero(half == h)
        order = idx[rng.permutation(len(idx))]
        out[order] = h * per + np.arange(len(order)) % per
    return out


@dataclass
class GroupStack:
    """The groups of one set, stacked per site: ``count`` (G,), ``mean`` / ``m2`` (G, channels...)."""

    count: dict[str, np.ndarray]
    mean: dict[str, np.ndarray]
    m2: dict[str, np.ndarray]

    @classmethod
    def of(cls, groups: Sequence[UnitStatistics]) -> "GroupStack":
        groups = [g for g in groups if g.count > 0]
        if not groups:
            raise UnitsError("no group holds a scored token.")
        return cls({s: np.array([g.sites[s].count for g in groups], np.float64) for s in SITES},
                   {s: np.stack([g.sites[s].mean for g in groups]) for s in SITES},
                   {s: np.stack([g.sites[s].m2 for g in groups]) for s in SITES})

    def __len__(self) -> int:
        return len(self.count[SITES[0]])

    def concat(self, other: "GroupStack") -> "GroupStack":
        return GroupStack({s: np.r_[self.count[s], other.count[s]] for s in SITES},
                          {s: np.concatenate([self.mean[s], other.mean[s]]) for s in SITES},
                          {s: np.concatenate([self.m2[s], other.m2[s]]) for s in SITES})


def _centred(stack: GroupStack) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Per site: the pooled mean ``c`` of all groups, ``n_g (m_g - c)`` and ``M2_g + n_g (m_g - c)^2``
    (groups x channels, flattened), cached on the stack. Sums of these over any subset give its
    count, mean and M2 by one matrix product; centring on ``c`` keeps the subtraction well conditioned."""
    cache = getattr(stack, "_centred_cache", None)
    if cache is None:
        cache = {}
        for s in SITES:
            n = stack.count[s]
            m = stack.mean[s].reshape(len(n), -1)
            c = (n[:, None] * m).sum(axis=0) / n.sum()
            dev = m - c
            cache[s] = (c, n[:, None] * dev, stack.m2[s].reshape(len(n), -1) + n[:, None] * dev * dev)
        stack._centred_cache = cache
    return cache


def merge_groups(stack: GroupStack, take: np.ndarray) -> UnitStatistics:
    """The merged statistics of the groups ``take`` (indices or a boolean mask): count, mean and
    M2, the same numbers as chained pairwise merges up to float64 rounding (sums of centred
    moments: ``M2 = sum_g [M2_g + n_g (m_g - c)^2] - (sum_g n_g (m_g - c))^2 / n``)."""
    weights = np.zeros(len(stack))
    weights[np.asarray(take)] = 1.0
    sites = {}
    for s, (c, s1, s2) in _centred(stack).items():
        total = float(weights @ stack.count[s])
        a, b = weights @ s1, weights @ s2
        shape = stack.mean[s].shape[1:]
        sites[s] = RunningStats(int(round(total)), (c + a / total).reshape(shape), np.maximum(b - a * a / total, 0.0).reshape(shape))
    return UnitStatistics(sites)


def _first_in_order(key: np.ndarray, k: int) -> np.ndarray:
    """The first ``k`` units in the order (key, unit index), without sorting them all: the
    candidates are every unit whose key is at most the k-th smallest (ties kept), sorted."""
    n = len(key)
    if k >= n:
        cand = np.arange(n)
    else:
        kth = np.partition(key, k - 1)[k - 1]
        cand = np.flatnonzero(key <= kth)
    return cand[np.lexsort((cand, key[cand]))][:k]


def scu_set(z_safety: np.ndarray, z_utility: np.ndarray, params: np.ndarray, settings: ClassSettings = ClassSettings()) -> np.ndarray:
    """The SCU ids that :func:`units.classify` gives, found by partial sorts (the same tie rule)."""
    params = np.asarray(params, np.float64)
    total, pmin = params.sum(), params.min()
    s, d = z_safety + z_utility, z_safety - z_utility

    def take(key: np.ndarray, budget: float) -> np.ndarray:
        k = min(len(key), int(budget * (1 + 1e-12) / pmin) + 1)
        order = _first_in_order(key, k)
        cum = np.cumsum(params[order])
        return order[: int(np.searchsorted(cum, budget * (1 + 1e-12), side="right"))]

    ru = take(s, settings.ru * total)
    key = -d
    key[ru] = np.inf  # RU is taken first; SCU comes from the rest
    scu = take(key, settings.scu * total)
    scu = scu[np.isfinite(key[scu])]  # only when the budget outlasts every other unit
    return np.sort(scu)


def _deals(n_a: int, n_b: int, paired: bool, n_perm: int, rng: np.random.Generator) -> tuple[list[np.ndarray], bool]:
    """Re-deals as boolean masks over the pooled groups (a's first, then b's): True = goes to a'."""
    if paired:
        g = n_a
        if 2 ** (g - 1) <= n_perm:  # every distinct swap pattern (group 0 stays: swapping all is the same pair)
            flips = [np.r_[0, bits] for bits in itertools.product((0, 1), repeat=g - 1)]
            exhaustive = True
        else:
            flips = [rng.integers(0, 2, g) for _ in range(n_perm)]
            exhaustive = False
        return [np.r_[f == 0, f == 1] for f in flips], exhaustive
    out = []
    for _ in range(n_perm):
        mask = np.zeros(n_a + n_b, bool)
        mask[rng.permutation(n_a + n_b)[:n_a]] = True
        out.append(mask)
    return out, False


def overlap_null(groups_a: Sequence[UnitStatistics], groups_b: Sequence[UnitStatistics], z_utility: np.ndarray,
                 layout: UnitLayout, settings: ClassSettings = ClassSettings(), n_perm: int = 128, seed: int = 0,
                 paired: bool = False) -> dict[str, Any]:
    """Jaccard of the SCU sets of sets a and b (each the merge of its groups), the mean and the
    lower-tail p-value of its re-dealt null (module docstring), the uniform random-set expectation.

    ``paired``: group g of a and group g of b hold the same requests (swap within pairs); needs the
    same number of groups, all non-empty."""
    sa, sb = GroupStack.of(groups_a), GroupStack.of(groups_b)
    if paired and len(sa) != len(sb):
        raise UnitsError(f"a paired null needs the same groups in both sets; got {len(sa)} and {len(sb)} non-empty groups.")
    if len(sa) + len(sb) < 3:
        raise UnitsError("the null needs at least 3 non-empty groups over both sets; raise n_samples.")
    params = layout.unit_params()
    pool = sa.concat(sb)
    na = len(sa)

    def pair_jaccard(mask: np.ndarray) -> tuple[float, int, int]:
        x = scu_set(unit_scores(merge_groups(pool, mask), layout, settings.ddof), z_utility, params, settings)
        y = scu_set(unit_scores(merge_groups(pool, ~mask), layout, settings.ddof), z_utility, params, settings)
        return jaccard(x, y), len(x), len(y)

    observed = np.r_[np.ones(na, bool), np.zeros(len(sb), bool)]
    value, size_a, size_b = pair_jaccard(observed)
    deals, exhaustive = _deals(na, len(sb), paired, n_perm, np.random.default_rng(seed))
    null = np.array([pair_jaccard(m)[0] for m in deals])
    tol = 1e-12
    below = int(np.sum(null <= value + tol))
    p = below / len(null) if exhaustive else (1 + below) / (1 + len(null))
    z_a = unit_scores(merge_groups(pool, observed), layout, settings.ddof)
    z_b = unit_scores(merge_groups(pool, ~observed), layout, settings.ddof)
    floor = floor_null(z_a, z_b, z_utility, layout, settings, n_perm=n_perm, seed=seed)
    return {"jaccard": value, "null": float(np.mean(null)), "null_sd": float(np.std(null)), "p": float(p),
            "p_upper": float(np.sum(null >= value - tol) / len(null) if exhaustive
                             else (1 + np.sum(null >= value - tol)) / (1 + len(null))),
            "floor": floor["floor"], "floor_sd": floor["floor_sd"], "p_floor": floor["p"],
            "expected_random": expected_random_jaccard(layout.n_units, size_a, size_b),
            "sizes": [size_a, size_b], "groups": [na, len(sb)], "deals": len(null), "paired": paired,
            "exhaustive": exhaustive}


def unit_strata(layout: UnitLayout) -> np.ndarray:
    """Stratum of every unit in canonical order: ``2 * layer + module type`` (0 = MLP neurons, 1 = heads)."""
    layer, kind, _ = layout.unit_index()
    return 2 * layer + kind


def residual_shuffle(z: np.ndarray, z_utility: np.ndarray, strata: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``z`` with its unit-specific part made independent of the units: per stratum (layer x module
    type) the least-squares line of ``z`` on ``z_utility`` is kept and the residuals are permuted
    among the stratum's units. What the line carries (the stratum's level and its tie to the shared
    utility scores) is kept; which unit stands out beyond it is dealt at random."""
    z, z_utility = np.asarray(z, np.float64), np.asarray(z_utility, np.float64)
    out = np.empty_like(z)
    for s in np.unique(strata):
        idx = np.flatnonzero(strata == s)
        x, y = z_utility[idx], z[idx]
        xc = x - x.mean()
        sxx = float(xc @ xc)
        slope = float(xc @ (y - y.mean())) / sxx if sxx > 0 else 0.0
        fit = y.mean() + slope * xc
        out[idx] = fit + (y - fit)[rng.permutation(len(idx))]
    return out


def floor_null(z_a: np.ndarray, z_b: np.ndarray, z_utility: np.ndarray, layout: UnitLayout,
               settings: ClassSettings = ClassSettings(), n_perm: int = 128, seed: int = 0) -> dict[str, Any]:
    """The floor of an SCU overlap: the Jaccard two SCU sets reach when they share the utility
    scores (and each stratum's tie to them) but nothing else.

    Set b's safety scores are replaced by :func:`residual_shuffle` of them ``n_perm`` times, set a's
    are kept, and both SCU sets are found against the same ``z_utility``. ``floor`` is the mean of
    those Jaccards; ``p`` the upper-tail permutation p-value ``(1 + #{J_floor >= J}) / (1 + R)``:
    small means the two sets share SCUs beyond what the shared utility scores force (evidence of
    shared safety units). With the re-dealing null of :func:`overlap_null` (the ceiling: requests
    exchangeable) an observed Jaccard reads between ``floor`` and ``null``."""
    params = layout.unit_params()
    strata = unit_strata(layout)
    x = scu_set(z_a, z_utility, params, settings)
    value = jaccard(x, scu_set(z_b, z_utility, params, settings))
    rng = np.random.default_rng(seed + 7)
    null = np.array([jaccard(x, scu_set(residual_shuffle(z_b, z_utility, strata, rng), z_utility, params, settings))
                     for _ in range(n_perm)])
    above = int(np.sum(null >= value - 1e-12))
    return {"jaccard": value, "floor": float(np.mean(null)), "floor_sd": float(np.std(null)),
            "p": float((1 + above) / (1 + len(null))), "permutations": len(null)}


def split_half_own_utility(halves: Sequence[UnitStatistics], utility_halves: Sequence[UnitStatistics],
                           layout: UnitLayout, settings: ClassSettings = ClassSettings()) -> dict[str, Any]:
    """Split-half Jaccard with independent utility halves: the SCUs of half h of a set are found
    against half h of the utility set, so the two SCU sets share no utility sample."""
    if len(halves) != 2 or len(utility_halves) != 2:
        raise UnitsError("split_half_own_utility needs two halves of the set and two of the utility set.")
    params = layout.unit_params()
    found = [scu_ids(classify(unit_scores(h, layout, settings.ddof), unit_scores(u, layout, settings.ddof), params, settings))
             for h, u in zip(halves, utility_halves)]
    return {"jaccard": jaccard(*found), "sizes": [len(f) for f in found],
            "expected_random": expected_random_jaccard(layout.n_units, len(found[0]), len(found[1]))}


def null_summary_value(result: dict[str, Any] | None, key: str) -> float:
    return float(result[key]) if result and key in result else math.nan
