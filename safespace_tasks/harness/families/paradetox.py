"""The paradetox family: hidden-space separation on parallel detoxification pairs (``textdetox/multilingual_paradetox``).

Each pair holds a toxic sentence and a human rewrite that says the same politely, so content is
held fixed and only toxicity changes. :class:`ParaDetoxTask`: both members go through the same
``pooled_hidden_states`` path; the separation metrics run with pairs kept together (probe folds and
bootstrap), plus the pair-only metrics of :func:`safespace_tasks.stats.pairs.paired_shift`. The same
pairs scored by likelihood are the detoxpref family (:mod:`safespace_tasks.harness.families.detoxpref`).
"""

from __future__ import annotations

import logging

import numpy as np

from safespace_tasks.harness.families.toxicity import ToxicityTask
from safespace_tasks.metric_table import PAIR_METRICS
from safespace_tasks.stats.pairs import paired_shift
from safespace_tasks.stats.separation import SeparationResult
from safespace_tasks.stats.validation import SeparationInputError

log = logging.getLogger(__name__)

__all__ = ["ParaDetoxTask", "PAIR_METRICS"]


class ParaDetoxTask(ToxicityTask):
    """Hidden-space separation of toxic sentences from their detoxified rewrites, one language."""

    FAMILY = "paradetox"
    group_field = "pair_id"

    def select_texts(self, states: np.ndarray, labels: np.ndarray, groups: np.ndarray) -> tuple[np.ndarray, dict[str, int]]:
        """Keep whole pairs; set aside (and count, in pairs) lone members and pairs the model cannot tell apart."""
        keep = np.ones(labels.shape[0], dtype=bool)
        uniq, inverse, counts = np.unique(groups, return_inverse=True, return_counts=True)
        n_tox = np.bincount(inverse, weights=labels, minlength=uniq.size)
        complete = (counts == 2) & (n_tox == 1)
        keep &= complete[inverse]
        identical = 0
        for g in np.flatnonzero(complete):
            rows = np.flatnonzero(inverse == g)
            if np.array_equal(states[rows[0]], states[rows[1]]):
                # same token sequence for both members (e.g. differences the tokenizer normalises away)
                keep[rows] = False
                identical += 1
        set_aside = {"incomplete_pairs": int((~complete).sum()), "pairs_with_identical_states": identical}
        if any(set_aside.values()):
            log.warning("%s: set aside %s", self.config.task, set_aside)
        return keep, set_aside

    def normalise_text(self, text: str) -> str:
        return text.strip()  # the pair loader compares stripped members

    def layer_metrics(self, X: np.ndarray, y: np.ndarray, groups: np.ndarray, copies: np.ndarray) -> SeparationResult:
        res = super().layer_metrics(X, y, groups, copies)  # pairs and copies of a text kept whole
        s = self.settings
        try:
            pair = paired_shift(X, y, groups, n_splits=s.probe_folds, n_boot=s.bootstrap_iters, ci_level=s.ci_level,
                                seed=s.seed)
        except SeparationInputError as err:  # e.g. one pair repeated: named, counted, never a ratio of rounding errors
            for m in ("paired_shift", "pair_order_acc"):
                res.values[m] = float("nan")
                res.degenerate[m] = str(err)
            return res
        res.values["paired_shift"] = pair.shift
        res.values["pair_order_acc"] = pair.order_accuracy
        res.stderr.update(pair.stderr)
        res.ci.update(pair.ci)
        res.diagnostics.update(n_pairs=pair.n_pairs, pair_folds=pair.n_splits)
        return res
