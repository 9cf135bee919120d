"""lm-eval task class for hidden-space separation: one task per language, a corpus metric per task.

Each doc is one text. The task emits one ``pooled_hidden_states`` request per doc (the harness
batches them), ``item_of`` wraps the returned state in a small :class:`~safespace_tasks.harness.corpus.Item`
(its ``str`` is short, so ``--log_samples`` stays small), and the aggregations, which lm-eval hands
every item of the task at once, compute the separation metrics of the whole language with
:func:`safespace_tasks.metrics.separation_metrics`. The metrics are computed once per task and
shared by all metric names (:class:`~safespace_tasks.harness.corpus.CorpusTask`); the bootstrap
standard error reaches the results table through :mod:`safespace_tasks.harness.patches`. The states
themselves are kept for saving beside the results JSON.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from typing import Any

import numpy as np
from lm_eval.api.instance import Instance

from safespace_tasks import metric_table as mt
from safespace_tasks.capture import HiddenState
from safespace_tasks.harness.corpus import Analysis, CorpusAggregator, CorpusTask, Item, TaskSettings, setting
from safespace_tasks.harness.model import REQUEST_TYPE, TRUNCATION_SIDES, normalize_options
from safespace_tasks.metrics import (
    METRIC_NAMES, SeparationInputError, SeparationResult, combine_groups, separation_metrics, text_groups,
)
from safespace_tasks.states import StatesBundle, save_states

log = logging.getLogger(__name__)

__all__ = ["SeparationSettings", "HiddenSpaceTask", "StateItem", "TaskAnalysis", "PENDING_STATES", "HIGHER_IS_BETTER"]

# Direction of every metric, read from the metric table (kept as a name for older imports).
HIGHER_IS_BETTER = {m.name: m.higher_is_better for m in mt.METRICS}
TaskAnalysis = Analysis
_Aggregator = CorpusAggregator

# Task name -> states bundle of the latest aggregation, waiting to be written beside the results.
PENDING_STATES: dict[str, StatesBundle] = {}


@dataclass(frozen=True)
class SeparationSettings(TaskSettings):
    """Choices the paper leaves open, as task metadata (override with ``--metadata '{...}'``).

    layers: hidden-state indices to read (0 = embeddings, -1 = final layer after the norm);
        metrics of the first are reported under plain names, the others as ``<metric>_layer<i>``.
    pooling: ``last`` (last prompt token, the paper) or ``mean``.
    pca_components: k of PCA-k (paper: 10).
    probe_folds: cross-validation folds of the linear probe.
    ridge: Bhattacharyya covariance ridge (>= 0); null = automatic and reported, 0 = never.
    truncation_side: texts longer than the model's max length lose tokens on this side
        (``left`` keeps the end, where the pooled token sits).
    padding_side: ``left`` (default) or ``right``; the pooled token is the last real one either way.
    save_states_dir: also write the states here (the results folder gets them with --output_path).
    state_cache: folder of a resumable cache of computed states (one file per model; a restarted
        run computes only what is missing). Off by default.
    n_permutations: label permutations of the null floor (``<metric>_null``, ``<metric>_p``); 0 skips.
    probe_refits: bootstrap replicates that refit the probe to widen its stderr (0 = fixed scores).
    probe_permutations: permutations (at most ``n_permutations``) that refit the probe for its null
        (0: ``probe_auroc_null`` and ``probe_auroc_p`` are NaN).
    Also: bootstrap_iters, ci_level, seed (doc order, probe folds, bootstrap), strict, data_dir
    (:class:`~safespace_tasks.harness.corpus.TaskSettings`).
    """

    layers: tuple[int, ...] = setting((-1,), kind="int_list")
    pooling: str = setting("last", kind=str, choices=("last", "mean"))
    pca_components: int = setting(10, kind=int, minimum=1)
    probe_folds: int = setting(5, kind=int, minimum=2)
    ridge: float | None = setting(None, kind=float, minimum=0.0, optional=True)
    truncation_side: str = setting("left", kind=str, choices=TRUNCATION_SIDES)
    padding_side: str = setting("left", kind=str, choices=("left", "right"))
    save_states_dir: str | None = setting(None, kind=str, optional=True)
    state_cache: str | None = setting(None, kind=str, optional=True)
    n_permutations: int = setting(100, kind=int, minimum=0, maximum=100_000)
    probe_refits: int = setting(0, kind=int, minimum=0, maximum=10_000)
    probe_permutations: int = setting(0, kind=int, minimum=0, maximum=100_000)

    def check(self) -> None:
        normalize_options(self.request_options())

    def request_options(self) -> dict[str, Any]:
        return {
            "layers": self.layers,
            "pooling": self.pooling,
            "truncation_side": self.truncation_side,
            "padding_side": self.padding_side,
            "state_cache": str(os.path.expanduser(self.state_cache)) if self.state_cache else None,
        }

    def metric_suffixes(self) -> list[str]:
        """'' for the first layer, '_layer<i>' for the others."""
        return [""] + [f"_layer{layer}" for layer in self.layers[1:]]


def _number(v: Any) -> float:
    """A float; every NaN (not computed, degenerate) is the one ``math.nan``, so equal analyses compare equal."""
    return math.nan if v is None or v != v else float(v)


class StateItem(Item):
    """An :class:`Item` whose response is a doc's pooled :class:`HiddenState` (``.state``)."""

    __slots__ = ("text",)

    def __init__(self, key: int, label: int, state: HiddenState, group: int = -1, text: str = "") -> None:
        super().__init__(key, label, response=state, group=group, text=text)
        self.text = text  # the loader's text: exact copies share a group (probe folds, bootstrap, null)

    def __getstate__(self):
        return {**super().__getstate__(), "text": self.text}

    @property
    def state(self) -> HiddenState:
        return self.response

    def __repr__(self) -> str:
        return f"<text {self.key} label {self.label}>"

    __str__ = __repr__


class HiddenSpaceTask(CorpusTask):
    """A language's hidden-space separation of toxic vs non-toxic texts.

    YAML (see ``task_configs/``): ``class: !function safespace_tasks.harness.task.HiddenSpaceTask``,
    ``dataset_path`` (the Hub id), ``test_split`` (the language), ``doc_to_text``, and settings in
    ``metadata`` (:class:`SeparationSettings`).
    """

    FAMILY = "toxicity"
    SETTINGS = SeparationSettings
    LAYOUT = "texts"
    REQUEST_TYPE = REQUEST_TYPE
    INPUT_ERRORS = (SeparationInputError,)
    text_field = "text"
    label_field = "toxic"
    group_field: str | None = None

    # ------------------------------------------------------------------ requests and items

    def construct_requests(self, doc: dict, ctx: str, **kwargs) -> Instance:
        return Instance(
            request_type=REQUEST_TYPE,  # type: ignore[arg-type]
            doc=doc,
            arguments=(ctx, self.settings.request_options()),
            idx=0,
            metadata=kwargs.get("metadata", (self.config.task, None, 1)),
        )

    def item_of(self, doc: dict, results: list[HiddenState]) -> StateItem:
        state = results[0]
        if not isinstance(state, HiddenState):
            raise TypeError(
                f"{self.config.task}: expected a HiddenState response, got {type(state).__name__}; the model "
                "backend answered pooled_hidden_states with something else."
            )
        group = int(doc[self.group_field]) if self.group_field else -1
        return StateItem(doc["id"], doc[self.label_field], state, group, doc[self.text_field])

    # ------------------------------------------------------------------ metrics

    def always_values(self, items: list[Item], analysis: Analysis) -> dict[str, float]:
        out = super().always_values(items, analysis)
        out["n_truncated"] = float(sum(int(it.response.truncated) for it in items))
        return out

    def compute(self, items: list[Item]) -> Analysis:
        task = self.config.task
        if not items:
            raise SeparationInputError("no text reached the aggregation (the model returned no state)")
        layers = items[0].response.layers
        states = np.stack([it.response.vectors for it in items]).astype(np.float32)
        labels = np.array([it.label for it in items], dtype=np.int64)
        ids = np.array([it.key for it in items], dtype=np.int64)
        groups = np.array([it.group for it in items], dtype=np.int64)
        truncated = np.array([it.response.truncated for it in items], dtype=bool)
        texts = [self.normalise_text(it.text) for it in items]
        keep, set_aside = self.select_texts(states, labels, groups)
        copies = text_groups([t for t, k in zip(texts, keep) if k]) if keep.any() else np.zeros(0, np.int64)
        n_duplicate_texts = int(copies.size - (copies.max() + 1)) if copies.size else 0
        degenerate: dict[str, dict[str, str]] = {}
        s = self.settings
        analysis = Analysis()
        per_layer: dict[str, Any] = {}
        per_layer_metrics = [m for m in self._metric_names if mt.spec(m).per_layer and m == mt.base_name(m)]
        for j, suffix in enumerate(s.metric_suffixes()):
            try:
                res = self.layer_metrics(states[keep, j], labels[keep], groups[keep], copies)
            except SeparationInputError as err:
                message = f"{task} (layer {s.layers[j]}): {err}"
                self.strict_or_nan(message, err)
                analysis.error = message
                for m in per_layer_metrics:
                    analysis.values[m + suffix] = float("nan")
                per_layer[str(int(layers[j]))] = {"error": message}
                continue
            for m, v in res.values.items():
                analysis.values[m + suffix] = _number(v)
                if m in res.stderr:
                    analysis.stderr[m + suffix] = float(res.stderr[m])
            for m in METRIC_NAMES:  # the null floor and the permutation p-value (no stderr: references)
                analysis.values[m + "_null" + suffix] = _number(res.null.get(m))
                analysis.values[m + "_p" + suffix] = _number(res.p_value.get(m))
            for m, why in res.degenerate.items():
                log.warning("%s (layer %d): %s is NaN: %s", task, s.layers[j], m, why)
                degenerate.setdefault(str(int(layers[j])), {})[m] = why
            for m, sp in res.spread.items():
                if sp.get("reason") and m not in res.degenerate:
                    log.warning("%s (layer %d): %s has no stderr/interval: %s", task, s.layers[j], m, sp["reason"])
            per_layer[str(int(layers[j]))] = res.to_dict()
            if res.diagnostics.get("bhattacharyya_ridge"):
                log.warning(
                    "%s: a class covariance on PCA-%d is singular; Bhattacharyya used ridge %.3g (reported)",
                    task, s.pca_components, res.diagnostics["bhattacharyya_ridge"],
                )
        analysis.details = {
            "dataset": self.config.dataset_path,
            "settings": self.settings_dict(),
            "layers": [int(x) for x in layers],
            "metrics_by_layer": per_layer,
            "n_texts": int(keep.sum()),
            "n_truncated": int(truncated.sum()),
            "n_from_state_cache": int(sum(it.response.cached for it in items)),
            "set_aside": set_aside,
            "n_set_aside": int(sum(set_aside.values())),
            "n_duplicate_texts": n_duplicate_texts,
            "degenerate": degenerate,
            "n_degenerate_metrics": int(sum(len(v) for v in degenerate.values())),
        }
        self._kept = (states[keep], labels[keep], ids[keep], groups[keep], np.array(layers, dtype=np.int64))
        # with copies of a text the metrics grouped differently from the saved groups: the report needs them
        self._metric_groups = self.metric_groups(groups[keep], copies) if n_duplicate_texts else None
        return analysis

    def on_analysis(self, analysis: Analysis, items: list[Item]) -> None:
        kept = getattr(self, "_kept", None)
        if kept is None:
            return
        self._kept = None
        states, labels, ids, groups, layers = kept
        meta = dict(analysis.details)
        metric_groups, self._metric_groups = getattr(self, "_metric_groups", None), None
        if metric_groups is not None:
            meta["metric_groups"] = [int(g) for g in metric_groups]  # the groups separation_metrics kept whole
        bundle = StatesBundle(
            task=self.config.task, states=states, labels=labels, ids=ids, groups=groups, layers=layers, meta=meta,
        )
        PENDING_STATES[self.config.task] = bundle
        if self.settings.save_states_dir:
            path = save_states(bundle, os.path.expanduser(self.settings.save_states_dir))
            log.info("%s: saved states to %s", self.config.task, path)

    # hooks for families with more structure (pairs)

    def select_texts(self, states: np.ndarray, labels: np.ndarray, groups: np.ndarray) -> tuple[np.ndarray, dict[str, int]]:
        """Mask of the texts to measure, and counts of those set aside by reason (none here)."""
        return np.ones(labels.shape[0], dtype=bool), {}

    def normalise_text(self, text: str) -> str:
        """The text as the loader compares it (copies of it are one group)."""
        return text

    def metric_groups(self, groups: np.ndarray, copies: np.ndarray) -> np.ndarray | None:
        """The groups the metrics keep whole: the family's own (pairs) joined with copies of a text.
        Without copies these are the family's groups as they are (None: plain resampling)."""
        has_copies = bool(copies.size) and copies.max() + 1 < copies.size
        if not has_copies:
            return groups if self.group_field else None
        return combine_groups(groups, copies) if self.group_field else copies

    def layer_metrics(self, X: np.ndarray, y: np.ndarray, groups: np.ndarray, copies: np.ndarray) -> SeparationResult:
        """Metrics of one layer's states. ``groups``: the family's own groups (pairs; unused here);
        ``copies``: :func:`~safespace_tasks.metrics.text_groups` of the texts, so exact copies of a
        text never sit on both sides of a probe split, a bootstrap draw or a permutation."""
        s = self.settings
        return separation_metrics(
            X, y, k=s.pca_components, n_boot=s.bootstrap_iters, ci_level=s.ci_level, seed=s.seed,
            groups=self.metric_groups(groups, copies), ridge=s.ridge, probe_folds=s.probe_folds, n_permutations=s.n_permutations,
            probe_refits=s.probe_refits, probe_permutations=s.probe_permutations,
        )
