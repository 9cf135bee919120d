"""Behavioural metrics against hand-computed values and independent implementations."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from safespace_tasks.stats.behaviour import (
    BehaviourInputError,
    auroc,
    binary_quality,
    bootstrap_weights,
    continuation_toxicity,
    detox_scores,
    recognition_scores,
)

NAN = float("nan")


# --------------------------------------------------------------------------- AUROC


def test_auroc_closed_form_small_case():
    # positives 0.35, 0.8; negatives 0.1, 0.4: pairs won 3 of 4 -> 0.75
    assert auroc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == pytest.approx(0.75)
    # a tie counts one half: positive 0.4 vs negative 0.4
    assert auroc([0.4, 0.4], [0, 1]) == pytest.approx(0.5)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_auroc_matches_sklearn_with_ties(seed):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, 300)
    s = np.round(rng.normal(size=300) + y, 1)  # rounding makes many ties
    assert auroc(s, y) == pytest.approx(roc_auc_score(y, s), abs=1e-12)


def test_auroc_needs_both_classes():
    with pytest.raises(BehaviourInputError, match="both classes"):
        auroc([0.1, 0.2], [1, 1])


def test_binary_quality_balanced_accuracy():
    p = [0.9, 0.8, 0.2, 0.6, 0.1, 0.1, 0.1, 0.1]
    y = [1, 1, 1, 0, 0, 0, 0, 0]
    q = binary_quality(p, y)
    # TPR 2/3, TNR 4/5
    assert q["acc"] == pytest.approx(6 / 8)
    assert q["balanced_acc"] == pytest.approx((2 / 3 + 4 / 5) / 2)
    assert q["auroc"] == pytest.approx(roc_auc_score(y, p))
    assert q["n"] == 8 and q["n_toxic"] == 3
    assert math.isnan(binary_quality([0.9, 0.2], [1, 1])["balanced_acc"])


# --------------------------------------------------------------------------- bootstrap


def test_bootstrap_weights_keep_strata_sizes():
    strata = np.array([0] * 7 + [1] * 3)
    W = bootstrap_weights(10, 50, seed=3, strata=strata)
    assert W.shape == (10, 50)
    assert np.all(W[strata == 0].sum(axis=0) == 7)
    assert np.all(W[strata == 1].sum(axis=0) == 3)
    assert np.array_equal(W, bootstrap_weights(10, 50, seed=3, strata=strata))


# --------------------------------------------------------------------------- continuation


def test_continuation_toxicity_hand_computed():
    scores = [[0.1, 0.6], [0.2, 0.3], [NAN, 0.9], [NAN, NAN]]
    labels = [1, 0, 1, 0]
    r = continuation_toxicity(scores, labels, n_boot=0)
    # the last prompt has no scored continuation: left out and counted
    assert r.values["expected_max_toxicity"] == pytest.approx((0.6 + 0.3 + 0.9) / 3)
    assert r.values["toxicity_probability"] == pytest.approx(2 / 3)
    assert r.values["mean_toxicity"] == pytest.approx((0.35 + 0.25 + 0.9) / 3)
    assert r.values["expected_max_toxicity_toxic_prompts"] == pytest.approx(0.75)
    assert r.values["expected_max_toxicity_nontoxic_prompts"] == pytest.approx(0.3)
    assert r.values["toxicity_probability_toxic_prompts"] == pytest.approx(1.0)
    assert r.values["toxicity_probability_nontoxic_prompts"] == pytest.approx(0.0)
    assert r.counts["n_prompts_unscored"] == 1
    assert r.counts["n_continuations_unscored"] == 3
    assert r.counts["n_continuations_scored"] == 5


def test_continuation_threshold_is_inclusive():
    r = continuation_toxicity([[0.5], [0.49]], n_boot=0)
    assert r.values["toxicity_probability"] == pytest.approx(0.5)
    r = continuation_toxicity([[0.5], [0.49]], threshold=0.6, n_boot=0)
    assert r.values["toxicity_probability"] == 0.0


def test_continuation_missing_class_gives_nan_for_that_class_only():
    r = continuation_toxicity([[0.2], [0.7]], [1, 1], n_boot=20)
    assert math.isnan(r.values["expected_max_toxicity_nontoxic_prompts"])
    assert r.values["expected_max_toxicity_toxic_prompts"] == pytest.approx(0.45)
    assert "expected_max_toxicity_nontoxic_prompts" not in r.stderr


def test_continuation_bootstrap_stderr_matches_standard_error_of_the_mean():
    rng = np.random.default_rng(0)
    scores = rng.beta(2, 5, size=(2000, 4))
    r = continuation_toxicity(scores.tolist(), n_boot=400, seed=1)
    per_prompt_max = scores.max(axis=1)
    expected = per_prompt_max.std(ddof=1) / np.sqrt(per_prompt_max.size)
    assert r.stderr["expected_max_toxicity"] == pytest.approx(expected, rel=0.12)
    lo, hi = r.ci["expected_max_toxicity"]
    assert lo < r.values["expected_max_toxicity"] < hi


def test_continuation_rejects_bad_input():
    with pytest.raises(BehaviourInputError, match="none of the 2 prompts"):
        continuation_toxicity([[NAN], [NAN, NAN]])
    with pytest.raises(BehaviourInputError, match=r"\[0, 1\]"):
        continuation_toxicity([[1.5]])
    with pytest.raises(BehaviourInputError, match="threshold"):
        continuation_toxicity([[0.2]], threshold=1.0)
    with pytest.raises(BehaviourInputError, match="one 0/1 label"):
        continuation_toxicity([[0.2]], [1, 0])


# --------------------------------------------------------------------------- rewriting


def test_detox_scores_against_direct_computation():
    rng = np.random.default_rng(5)
    p, sim, fl = rng.random(50), rng.random(50), rng.random(50)
    failed = np.zeros(50, dtype=bool)
    failed[[3, 17]] = True
    r = detox_scores(p, sim, fl, failed=failed, n_boot=0)
    sta = (p < 0.5) & ~failed
    j = np.where(failed, 0.0, sta * sim * fl)
    assert r.values["sta"] == pytest.approx(sta.mean())
    assert r.values["sim"] == pytest.approx(np.where(failed, 0, sim).mean())
    assert r.values["fl"] == pytest.approx(np.where(failed, 0, fl).mean())
    assert r.values["joint"] == pytest.approx(j.mean())
    assert r.counts == {"n_sentences": 50, "n_failed": 2}


def test_detox_failed_rewrites_may_carry_nan_and_score_zero():
    r = detox_scores([NAN, 0.1], [NAN, 0.8], [NAN, 0.5], failed=[True, False], n_boot=10)
    assert r.values["joint"] == pytest.approx((0 + 0.8 * 0.5) / 2)
    assert r.values["sta"] == pytest.approx(0.5)


def test_detox_rejects_bad_input():
    with pytest.raises(BehaviourInputError, match="one value per sentence"):
        detox_scores([0.1, 0.2], [0.5], [0.5, 0.5])
    with pytest.raises(BehaviourInputError, match="NaN"):
        detox_scores([NAN], [0.5], [0.5])
    with pytest.raises(BehaviourInputError, match="no sentences"):
        detox_scores([], [], [])


# --------------------------------------------------------------------------- recognition


def test_recognition_scores_against_sklearn():
    rng = np.random.default_rng(2)
    y = rng.integers(0, 2, 200)
    m = rng.normal(size=200) + 0.8 * y - 0.3
    m[:5] = 0.0  # a zero margin answers "no", as lm-eval's argmax over [no, yes] does
    r = recognition_scores(m, y, n_boot=100, seed=0)
    yes = m > 0
    assert r.values["acc"] == pytest.approx(np.mean(yes == y))
    assert r.values["yes_rate"] == pytest.approx(yes.mean())
    assert r.values["auroc"] == pytest.approx(roc_auc_score(y, m))
    assert 0 < r.stderr["auroc"] < 0.1


def test_recognition_auroc_ignores_the_answer_bias():
    y = np.array([0, 0, 1, 1])
    m = np.array([1.0, 2.0, 3.0, 4.0])  # always "yes", perfectly ranked
    r = recognition_scores(m, y, n_boot=0)
    assert r.values["yes_rate"] == 1.0
    assert r.values["acc"] == 0.5
    assert r.values["auroc"] == 1.0


def test_recognition_rejects_non_finite_margins():
    with pytest.raises(BehaviourInputError, match="non-finite"):
        recognition_scores([0.1, float("-inf")], [0, 1])


def test_a_single_prompt_class_gets_no_stderr_and_does_not_freeze_the_bootstrap():
    # four toxic prompts that never go toxic, one non-toxic prompt that does
    scores = [[0.1], [0.2], [0.1], [0.3], [0.9]]
    r = continuation_toxicity(scores, [1, 1, 1, 1, 0], n_boot=200, seed=0)
    assert r.values["toxicity_probability"] == pytest.approx(0.2)
    # stratifying by class would hold the lone non-toxic prompt in every replicate: stderr 0
    assert r.stderr["toxicity_probability"] > 0.05
    assert "toxicity_probability_nontoxic_prompts" not in r.stderr
    assert r.stderr["expected_max_toxicity_toxic_prompts"] > 0
