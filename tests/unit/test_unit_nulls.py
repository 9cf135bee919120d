"""The shared-utility null of SCU overlaps and per-request weighting, on synthetic statistics (no model).

The null scenario deals independent random per-request activations to two sets from one
distribution (the same requests "translated": a per-request content shared by both sets), against
one utility set: the overlap p-values must be roughly uniform, although the Jaccard is ~9x the
uniform random-set expectation. Planted set-specific units (each set varies more on its own 10
units) must give small p-values.
"""

from __future__ import annotations

import numpy as np
import pytest

from safespace_tasks.stats.unit_nulls import GroupStack, equal_weight, floor_null, group_ids, merge_groups, \
    overlap_null, residual_shuffle, scu_set, split_half_own_utility, unit_strata
from safespace_tasks.stats.units import (
    ClassSettings,
    RunningStats,
    UnitLayout,
    UnitsError,
    UnitStatistics,
    classify,
    merge_all,
    scu_ids,
    unit_scores,
)

L, NN, H, HD = 2, 100, 4, 8
SHAPES = {"mlp": (L, NN), "attn": (L, H * HD)}
CS = ClassSettings(ru=0.1, scu=0.1, ucu=0.1)


def _layout() -> UnitLayout:
    rng = np.random.default_rng(0)
    return UnitLayout(L, NN, H, HD, rng.uniform(0.5, 2, SHAPES["mlp"]), rng.uniform(0.5, 2, SHAPES["attn"]), 3.0, 40.0)


def _request(rng, scale, content, n_tokens) -> UnitStatistics:
    return UnitStatistics({s: RunningStats.of(content[s][None] + rng.normal(size=(n_tokens,) + shp) * scale[s][None])
                           for s, shp in SHAPES.items()})


def _scenario(rng, kind: str, n_req: int = 16, groups: int = 8):
    """Groups of sets a and b (request r in group r % groups in both) and the utility z-scores."""
    base = {s: rng.lognormal(0, 0.3, shp) for s, shp in SHAPES.items()}  # what every set shares
    util = {s: base[s] * rng.lognormal(0, 0.3, shp) for s, shp in SHAPES.items()}
    sa, sb = ({s: v.copy() for s, v in base.items()} for _ in range(2))
    if kind == "specific":
        sa["mlp"][0, :10] *= 3
        sb["mlp"][0, 10:20] *= 3
    content = [{s: rng.normal(size=shp) * 0.5 for s, shp in SHAPES.items()} for _ in range(n_req)]
    tokens = rng.integers(3, 12, n_req)
    a = [_request(rng, sa, content[r], tokens[r]) for r in range(n_req)]
    b = [_request(rng, sb, content[r], tokens[r]) for r in range(n_req)]
    u = merge_all([_request(rng, util, {s: rng.normal(size=shp) * 0.5 for s, shp in SHAPES.items()}, 8)
                   for _ in range(n_req)])
    return [merge_all(a[g::groups]) for g in range(groups)], [merge_all(b[g::groups]) for g in range(groups)], u


def test_fast_scu_set_equals_classify_including_ties():
    layout = _layout()
    params = layout.unit_params()
    rng = np.random.default_rng(1)
    for i in range(150):
        zs, zu = rng.normal(size=layout.n_units), rng.normal(size=layout.n_units)
        if i % 3 == 0:  # a layer without spread: many exact ties
            zs[:60] = 0.0
            zu[:60] = 0.0
        if i % 5 == 0:
            zs = np.round(zs, 1)
        st = ClassSettings(ru=rng.uniform(0, 0.4), scu=rng.uniform(0, 0.4), ucu=0.1)
        assert np.array_equal(scu_set(zs, zu, params, st), scu_ids(classify(zs, zu, params, st))), i


def test_merging_a_subset_of_groups_equals_merging_them_one_by_one():
    rng = np.random.default_rng(2)
    ga, _, _ = _scenario(rng, "null")
    stack = GroupStack.of(ga)
    take = np.array([0, 3, 4, 7])
    direct = merge_all([ga[i] for i in take])
    fast = merge_groups(stack, take)
    for s in SHAPES:
        assert fast.sites[s].count == direct.sites[s].count
        np.testing.assert_allclose(fast.sites[s].mean, direct.sites[s].mean, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(fast.sites[s].m2, direct.sites[s].m2, rtol=1e-10)


def test_groups_nest_in_the_halves_and_are_balanced():
    half = np.r_[np.zeros(9, int), np.ones(10, int)]
    g = group_ids(half, 8, seed=3)
    assert set(g[half == 0]) == {0, 1, 2, 3} and set(g[half == 1]) == {4, 5, 6, 7}
    counts = np.bincount(g, minlength=8)
    assert counts[:4].max() - counts[:4].min() <= 1 and counts[4:].max() - counts[4:].min() <= 1
    assert np.array_equal(g, group_ids(half, 8, seed=3))
    with pytest.raises(UnitsError, match="even"):
        group_ids(half, 5, seed=0)


def test_null_p_values_are_roughly_uniform_and_small_with_planted_specific_units():
    layout = _layout()
    p_null, j, j_null, j_rand = [], [], [], []
    for rep in range(40):
        ga, gb, u = _scenario(np.random.default_rng(100 + rep), "null")
        res = overlap_null(ga, gb, unit_scores(u, layout), layout, CS, n_perm=128, seed=rep, paired=True)
        assert res["exhaustive"] and res["deals"] == 128
        p_null.append(res["p"])
        j.append(res["jaccard"]), j_null.append(res["null"]), j_rand.append(res["expected_random"])
    p_null = np.array(p_null)
    # the uniform yardstick is far too low: the shared utility set and model make the sets overlap
    assert np.mean(j) > 5 * np.mean(j_rand)
    assert abs(np.mean(j) - np.mean(j_null)) < 0.05
    assert np.mean(p_null <= 0.05) <= 0.1  # nominal 0.05 (ties make the test a little conservative)
    assert 0.2 <= np.mean(p_null <= 0.5) <= 0.75 and 0.4 <= p_null.mean() <= 0.75
    p_planted = []
    for rep in range(8):
        ga, gb, u = _scenario(np.random.default_rng(500 + rep), "specific")
        res = overlap_null(ga, gb, unit_scores(u, layout), layout, CS, n_perm=128, seed=rep, paired=True)
        assert res["jaccard"] < res["null"]
        p_planted.append(res["p"])
    assert np.mean(np.array(p_planted) <= 0.05) >= 0.75


def test_unpaired_null_counts_the_observed_deal_and_needs_enough_groups():
    layout = _layout()
    ga, gb, u = _scenario(np.random.default_rng(7), "specific")
    z_u = unit_scores(u, layout)
    res = overlap_null(ga[:5], gb[:3], z_u, layout, CS, n_perm=49, seed=0, paired=False)
    assert res["groups"] == [5, 3] and res["deals"] == 49 and not res["exhaustive"]
    assert 1 / 50 <= res["p"] <= 1
    # the observed value is the Jaccard of the two merged sets' SCUs
    x = scu_ids(classify(unit_scores(merge_all(ga[:5]), layout), z_u, layout.unit_params(), CS))
    y = scu_ids(classify(unit_scores(merge_all(gb[:3]), layout), z_u, layout.unit_params(), CS))
    assert res["jaccard"] == pytest.approx(len(set(x) & set(y)) / len(set(x) | set(y)))
    with pytest.raises(UnitsError, match="at least 3"):
        overlap_null(ga[:1], gb[:1], z_u, layout, CS)
    with pytest.raises(UnitsError, match="same groups"):
        overlap_null(ga[:4], gb[:3], z_u, layout, CS, paired=True)


def test_split_half_with_own_utility_halves_uses_no_shared_utility_sample():
    layout = _layout()
    ga, gb, u = _scenario(np.random.default_rng(9), "null")
    _, _, u2 = _scenario(np.random.default_rng(10), "null")
    halves = [merge_all(ga[:4]), merge_all(ga[4:])]
    res = split_half_own_utility(halves, [u, u2], layout, CS)
    params = layout.unit_params()
    expect = [set(scu_ids(classify(unit_scores(h, layout), unit_scores(v, layout), params, CS))) for h, v in zip(halves, (u, u2))]
    assert res["jaccard"] == pytest.approx(len(expect[0] & expect[1]) / len(expect[0] | expect[1]))


def test_equal_weight_matches_a_numpy_mixture_over_requests():
    """Each request weighs 1/N, each of its tokens 1/(N T_i): the variance of that mixture."""
    rng = np.random.default_rng(4)
    lengths = [3, 40, 7, 1, 120]
    xs = [rng.normal(loc=rng.normal(size=(2, 5)), size=(t, 2, 5)) * rng.uniform(0.5, 3) for t in lengths]
    merged = merge_all([equal_weight(UnitStatistics({"mlp": RunningStats.of(x), "attn": RunningStats.of(x[:, :, :2])}))
                        for x in xs])
    w = np.concatenate([np.full(t, 1 / (len(xs) * t)) for t in lengths])
    tokens = np.concatenate(xs)
    mean = np.tensordot(w, tokens, axes=1)
    var = np.tensordot(w, (tokens - mean) ** 2, axes=1)
    assert merged.sites["mlp"].count == len(xs)
    np.testing.assert_allclose(merged.sites["mlp"].mean, mean, rtol=1e-12)
    np.testing.assert_allclose(merged.sites["mlp"].variance(), var, rtol=1e-10)
    # pooled over tokens, the 120-token request dominates; equal weights differ from that
    pooled = merge_all([UnitStatistics({"mlp": RunningStats.of(x)}) for x in xs]).sites["mlp"].variance()
    np.testing.assert_allclose(pooled, tokens.reshape(len(tokens), -1).var(axis=0).reshape(2, 5), rtol=1e-10)
    assert not np.allclose(pooled, var)
    empty = equal_weight(UnitStatistics({"mlp": RunningStats.empty((2, 5)), "attn": RunningStats.empty((2, 2))}))
    assert empty.count == 0


def _tied_scores(rng, layout, z_u, shared=None, slope=0.6):
    """Safety scores with a per-stratum line on the utility scores and independent unit residuals;
    ``shared``: units that stand out (+3) in every set drawn with it."""
    strata = unit_strata(layout)
    z = slope * z_u + 0.3 * strata / strata.max() + rng.normal(size=layout.n_units)
    if shared is not None:
        z[shared] += 3.0
    return z


def test_residual_shuffle_keeps_each_stratums_line_and_residuals():
    layout = _layout()
    rng = np.random.default_rng(11)
    z_u = rng.normal(size=layout.n_units)
    z = _tied_scores(rng, layout, z_u)
    strata = unit_strata(layout)
    out = residual_shuffle(z, z_u, strata, np.random.default_rng(0))
    assert not np.allclose(out, z)
    for s in np.unique(strata):
        idx = np.flatnonzero(strata == s)
        line = np.polyfit(z_u[idx], z[idx], 1)
        res = lambda v: np.sort(v - np.polyval(line, z_u[idx]))
        # the same residuals about the same line, dealt to other units; the stratum's mean kept
        np.testing.assert_allclose(res(out[idx]), res(z[idx]), atol=1e-10)
        assert out[idx].mean() == pytest.approx(z[idx].mean(), abs=1e-12)
        assert not np.allclose(out[idx], z[idx])
    assert np.array_equal(strata, np.repeat(np.arange(2 * L), np.tile([NN, H], L)))


def test_floor_equals_the_overlap_of_independent_safety_scores_and_its_p_is_uniform():
    """Two sets whose safety scores share only the utility line: the floor matches the mean Jaccard
    of fresh independent draws, and p_floor is roughly uniform over data sets."""
    layout = _layout()
    params = layout.unit_params()
    p, floors, fresh = [], [], []
    for rep in range(60):
        rng = np.random.default_rng(1000 + rep)
        z_u = rng.normal(size=layout.n_units)
        z_a, z_b = _tied_scores(rng, layout, z_u), _tied_scores(rng, layout, z_u)
        res = floor_null(z_a, z_b, z_u, layout, CS, n_perm=99, seed=rep)
        p.append(res["p"])
        floors.append(res["floor"])
        x = set(scu_set(z_a, z_u, params, CS))
        for _ in range(20):
            y = set(scu_set(_tied_scores(rng, layout, z_u), z_u, params, CS))
            fresh.append(len(x & y) / len(x | y))
    p = np.array(p)
    assert abs(np.mean(floors) - np.mean(fresh)) < 0.02
    assert np.mean(p <= 0.05) <= 0.12 and 0.35 <= p.mean() <= 0.65


def test_floor_p_is_small_with_planted_shared_safety_units():
    layout = _layout()
    p, gap = [], []
    for rep in range(10):
        rng = np.random.default_rng(2000 + rep)
        z_u = rng.normal(size=layout.n_units)
        shared = rng.choice(layout.n_units, 12, replace=False)
        res = floor_null(_tied_scores(rng, layout, z_u, shared), _tied_scores(rng, layout, z_u, shared), z_u, layout, CS,
                         n_perm=99, seed=rep)
        p.append(res["p"])
        gap.append(res["jaccard"] - res["floor"])
    assert np.mean(np.array(p) <= 0.05) >= 0.9 and min(gap) > 0


def test_overlap_null_reports_the_floor_below_the_ceiling():
    layout = _layout()
    floors, ceilings = [], []
    for rep in range(6):
        ga, gb, u = _scenario(np.random.default_rng(300 + rep), "null")
        res = overlap_null(ga, gb, unit_scores(u, layout), layout, CS, n_perm=64, seed=rep, paired=True)
        assert 1 / 65 <= res["p_floor"] <= 1 and res["floor_sd"] >= 0
        floors.append(res["floor"]), ceilings.append(res["null"])
    # the sets share their safety-specific variance (the scenario's base): the ceiling lies above the floor
    assert np.mean(floors) < np.mean(ceilings)
