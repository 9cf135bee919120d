"""The toxicity family: hidden-space separation of toxic vs non-toxic texts, one task per language.

:class:`ToxicityTask` is also the base of the other hidden-state families (paradetox, transfer).

Each doc is one text. The task emits one ``pooled_hidden_states`` request per doc (the harness
batches them), ``item_of`` wraps the returned state in a small :class:`~safespace_tasks.harness.core.Item`
(its ``str`` is short, so ``--log_samples`` stays small), and the aggregations, which lm-eval hands
every item of the task at once, compute the separation metrics of the whole language with
:func:`safespace_tasks.stats.separation.separation_metrics`. The metrics are computed once per task and
shared by all metric names (:class:`~safespace_tasks.harness.core.CorpusTask`); the bootstrap
standard error reaches the results table through :mod:`safespace_tasks.harness.patches`. The states
themselves travel on the analysis to :mod:`safespace_tasks.harness.outputs`, which writes them beside
the results JSON.
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
from safespace_tasks.harness.core import Analysis, CorpusAggregator, CorpusTask, Item, TaskSettings, setting
from safespace_tasks.harness.requests import REQUEST_TYPE, SWEEP_REQUEST_TYPE, TRUNCATION_SIDES, normalize_options
from safespace_tasks.layer_spec import is_plain, plain_suffixes, resolve_names, unsuffixed_position
from safespace_tasks.stats.separation import METRIC_NAMES, SeparationResult, separation_metrics
from safespace_tasks.stats.validation import SeparationInputError, combine_groups, text_groups
from safespace_tasks.states import StatesBundle, save_states

log = logging.getLogger(__name__)

__all__ = ["SeparationSettings", "ToxicityTask", "StateItem", "peak_summary"]

# A ``layers`` setting of plain indices (``[-1]``, ``[0, 8, -1]``) goes to the model as it is, in a
# ``pooled_hidden_states`` request; ``all`` and ranges go in a ``pooled_hidden_states_layers``
# request, which the model side resolves against its depth (:mod:`safespace_tasks.harness.requests`).
# Every response carries the indices it holds (``HiddenState.layers``) and the model's depth
# (``HiddenState.n_layers``), from which the task names its metrics
# (:func:`safespace_tasks.layer_spec.resolve_names`).


def peak_summary(values: dict[str, float], metrics: list[str], layers: list[int], suffixes: list[str],
                 n_layers: int | None, stderr: dict[str, float] | None = None) -> tuple[dict[str, float], dict[str, float], dict]:
    """Per metric, where over the layers it peaks: ``<m>_best``, ``<m>_best_layer``, ``<m>_final``.

    ``values[m + suffixes[j]]`` is metric m at hidden-state index ``layers[j]``. The best layer is the
    index of the largest finite value, a tie going to the shallowest; ``<m>_final`` is the value at
    index ``n_layers`` (the final layer after the norm), NaN when that index was not read or the depth
    is unknown. Returns (values, stderr, details).
    """
    stderr = stderr or {}
    order = sorted(range(len(layers)), key=lambda j: layers[j])
    out: dict[str, float] = {}
    err: dict[str, float] = {}
    details: dict[str, Any] = {}
    for m in metrics:
        vals = np.array([values.get(m + suffixes[j], np.nan) for j in order], dtype=np.float64)
        idx = [layers[j] for j in order]
        finite = np.isfinite(vals)
        best_j = int(np.argmax(np.where(finite, vals, -np.inf))) if finite.any() else None
        final = float(vals[idx.index(n_layers)]) if n_layers is not None and n_layers in idx else float("nan")
        out[f"{m}_best"] = float(vals[best_j]) if best_j is not None else float("nan")
        out[f"{m}_best_layer"] = float(idx[best_j]) if best_j is not None else float("nan")
        out[f"{m}_final"] = final
        if best_j is not None and m + suffixes[order[best_j]] in stderr:
            err[f"{m}_best"] = stderr[m + suffixes[order[best_j]]]
        if n_layers in idx and m + suffixes[order[idx.index(n_layers)]] in stderr:
            err[f"{m}_final"] = stderr[m + suffixes[order[idx.index(n_layers)]]]
        details[m] = {"layers": idx, "values": [None if not np.isfinite(v) else float(v) for v in vals],
                      "best_layer": None if best_j is None else idx[best_j], "best": out[f"{m}_best"],
                      "final_layer": n_layers, "final": final}
    return out, err, details


@dataclass(frozen=True)
class SeparationSettings(TaskSettings):
    """Choices the paper leaves open, as task metadata (override with ``--metadata '{...}'``).

    layers: hidden-state indices to read (0 = embeddings, -1 = final layer after the norm), ``all``,
        ranges (``"0:12"``: Python slice semantics) or a list of these (:mod:`safespace_tasks.layer_spec`);
        metrics of the deepest layer read (the final layer, the paper's, whenever it is read: ``all``,
        ``-1``, ``"4:"``) are reported under plain names and averaged in the family row, the others as
        ``<metric>_layer<i>`` (``i`` as written for an index, the absolute index for ``all`` and ranges). With two or
        more layers, each per-layer metric also gets ``<m>_best``, ``<m>_best_layer``, ``<m>_final``.
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
        (0, the default: ``probe_auroc_null`` and ``probe_auroc_p`` are not reported, no key at all).
    Also: bootstrap_iters, ci_level, seed (doc order, probe folds, bootstrap), strict, data_dir
    (:class:`~safespace_tasks.harness.core.TaskSettings`).
    """

    layers: tuple[int | str, ...] = setting((-1,), kind="layers")
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
        opts = self.request_options()
        if not self.plain_layers:  # a sweep is resolved on the model side; check the rest here
            opts["layers"] = (-1,)
        normalize_options(opts)

    @property
    def plain_layers(self) -> bool:
        """The setting names plain indices (no ``all``, no range): the depth is not needed."""
        return is_plain(self.layers)

    def request_options(self) -> dict[str, Any]:
        return {
            "layers": tuple(self.layers),
            "pooling": self.pooling,
            "truncation_side": self.truncation_side,
            "padding_side": self.padding_side,
            "state_cache": str(os.path.expanduser(self.state_cache)) if self.state_cache else None,
        }

    def switched_off(self) -> frozenset[str]:
        """Metric names (without layer suffix) these settings do not compute: they get no key at all.

        ``n_permutations`` 0 turns off every null floor and p-value; ``probe_permutations`` 0 (the
        default) the probe's. A results JSON never holds a NaN that means "not asked for".
        """
        off = set()
        for m in METRIC_NAMES:
            if self.n_permutations == 0 or (m == "probe_auroc" and self.probe_permutations == 0):
                off |= {f"{m}_null", f"{m}_p"}
        return frozenset(off)

    def metric_suffixes(self) -> list[str]:
        """'' for the deepest layer named, '_layer<i>' (as written) for the others (a sweep: '' only, until resolved).

        The deepest is -1 (the final layer, the paper's) when the list names it; otherwise the largest
        index when all are >= 0 (or all < 0). A list that mixes signs without -1 needs the model's depth:
        the first entry here, corrected once the model answers (:meth:`ToxicityTask.adopt_layers`).
        """
        if not self.plain_layers:
            return [""]
        return plain_suffixes(self.layers, unsuffixed_position(self.layers))


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


class ToxicityTask(CorpusTask):
    """A language's hidden-space separation of toxic vs non-toxic texts.

    YAML (see ``task_configs/``): ``class: !function safespace_tasks.harness.families.toxicity.ToxicityTask``,
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

    def __init__(self, data_dir=None, cache_dir=None, download_mode=None, config: dict | None = None) -> None:
        # (absolute indices, metric suffixes, model depth or None) once the first response tells them
        self._resolved: tuple[tuple[int, ...], list[str], int | None] | None = None
        super().__init__(data_dir, cache_dir, download_mode, config=config)
        if not self.settings.plain_layers:  # the model side resolves the sweep (see SWEEP_REQUEST_TYPE)
            self.OUTPUT_TYPE = SWEEP_REQUEST_TYPE
            self.config.output_type = SWEEP_REQUEST_TYPE

    # ------------------------------------------------------------------ layers

    def layer_suffixes(self) -> list[str]:
        """Metric-name suffix of each layer read: '' for the first, '_layer<i>' for the others."""
        return self._resolved[1] if self._resolved else self.settings.metric_suffixes()

    def metric_names(self) -> list[str]:
        """Per-layer metrics once per layer, then (two or more layers) each one's peak summary."""
        suffixes = self.layer_suffixes()
        names = mt.family_metrics(self.FAMILY)
        per_layer = [m for m in names if mt.spec(m).per_layer]
        off = self.settings.switched_off()
        per_layer = [m for m in per_layer if m not in off]
        out = [m + sfx for sfx in suffixes for m in per_layer]
        if len(suffixes) > 1:
            out += [m + p for m in per_layer if mt.has_peak(m) for p in mt.PEAK_SUFFIXES]
        return out + [m for m in names if not mt.spec(m).per_layer]

    def adopt_layers(self, state: HiddenState) -> None:
        """Take the indices and the model depth a response carries (a sweep's metric names are known only now)."""
        layers = tuple(int(x) for x in state.layers)
        if self._resolved is not None:
            if self._resolved[0] != layers:
                raise ValueError(
                    f"{self.config.task}: the model returned states of layers {list(layers)} for one text and "
                    f"{list(self._resolved[0])} for another; one run reads one layer set."
                )
            return
        spec = self.settings.layers
        plain = self.settings.plain_layers
        depth = state.n_layers
        if depth is not None:
            indices, suffixes = resolve_names(spec, depth)
            if indices != layers:
                raise ValueError(f"{self.config.task}: the model returned layers {list(layers)}; the setting "
                                 f"layers={list(spec)} names {list(indices)} for a model with {depth} decoder layers.")
        elif plain:  # a response kept by an older lm-eval --use_cache database: the indices as written
            suffixes = plain_suffixes(spec, unsuffixed_position(layers, absolute=True))
            depth = next((idx - item - 1 for item, idx in zip(spec, layers) if item < 0), None)
        else:
            raise ValueError(
                f"{self.config.task}: the responses carry no model depth, which the setting layers={list(spec)} needs; "
                "they come from an lm-eval --use_cache database written by an earlier safespace-tasks. Give this run "
                "another --use_cache path."
            )
        if plain and not any(item < 0 for item in spec):
            depth = None  # indices that do not count from the end name no final layer (no <m>_final claimed)
        self._resolved = (layers, suffixes, depth)
        self._add_metric_names()

    def _add_metric_names(self) -> None:
        self._metric_names = self.metric_names()
        stale = [m for m, agg in self._aggregators.items() if m not in self._metric_names and agg != "mean"]
        for m in stale:  # a name guessed before the depth was known (no doc has reported it yet)
            del self._aggregators[m]
        if stale:
            self.config.metric_list = [e for e in self.config.metric_list if e.get("metric") not in stale]
        for m in self._metric_names:
            if m not in self._aggregators:
                self._aggregators[m] = CorpusAggregator(self, m)
                self.config.metric_list.append({"metric": m, "aggregation": self._aggregators[m],
                                                "higher_is_better": mt.higher_is_better(m)})

    # ------------------------------------------------------------------ requests and items

    def process_results(self, doc: dict, results: list) -> dict[str, Any]:
        if results and isinstance(results[0], HiddenState):
            self.adopt_layers(results[0])
        return super().process_results(doc, results)

    def construct_requests(self, doc: dict, ctx: str, **kwargs) -> Instance:
        return Instance(
            request_type=self.OUTPUT_TYPE,  # type: ignore[arg-type]
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
        self.adopt_layers(items[0].response)
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
        suffixes = self.layer_suffixes()
        for j, suffix in enumerate(suffixes):
            try:
                res = self.layer_metrics(states[keep, j], labels[keep], groups[keep], copies)
            except SeparationInputError as err:
                message = f"{task} (layer {layers[j]}): {err}"
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
            off = s.switched_off()
            for m in METRIC_NAMES:  # the null floor and the permutation p-value (no stderr: references)
                if m + "_null" not in off:
                    analysis.values[m + "_null" + suffix] = _number(res.null.get(m))
                    analysis.values[m + "_p" + suffix] = _number(res.p_value.get(m))
            for m, v in res.bhattacharyya_terms().items():  # diagnostics: no stderr
                analysis.values[m + suffix] = _number(v)
            for m, why in res.degenerate.items():
                log.warning("%s (layer %d): %s is NaN: %s", task, int(layers[j]), m, why)
                degenerate.setdefault(str(int(layers[j])), {})[m] = why
            for m, sp in res.spread.items():
                if sp.get("reason") and m not in res.degenerate:
                    log.warning("%s (layer %d): %s has no stderr/interval: %s", task, int(layers[j]), m, sp["reason"])
            per_layer[str(int(layers[j]))] = res.to_dict()
            if res.diagnostics.get("bhattacharyya_ridge"):
                log.warning(
                    "%s: a class covariance on PCA-%d is singular; Bhattacharyya used ridge %.3g (reported)",
                    task, s.pca_components, res.diagnostics["bhattacharyya_ridge"],
                )
        depth = self._resolved[2] if self._resolved else None
        peak = None
        if len(suffixes) > 1:
            values, errs, peak = peak_summary(analysis.values, [m for m in per_layer_metrics if mt.has_peak(m)],
                                              [int(x) for x in layers], suffixes,
                                              depth, analysis.stderr)
            analysis.values.update(values)
            analysis.stderr.update(errs)
        analysis.details = {
            "dataset": self.config.dataset_path,
            "settings": self.settings_dict(),
            "layers": [int(x) for x in layers],
            "n_layers": depth,
            "metric_suffixes": dict(zip((int(x) for x in layers), suffixes)),
            "metrics_by_layer": per_layer,
            "peak": peak,
            "n_texts": int(keep.sum()),
            "n_truncated": int(truncated.sum()),
            "n_from_state_cache": int(sum(it.response.cached for it in items)),
            "set_aside": set_aside,
            "n_set_aside": int(sum(set_aside.values())),
            "n_duplicate_texts": n_duplicate_texts,
            "degenerate": degenerate,
            "n_degenerate_metrics": int(sum(len(v) for v in degenerate.values())),
        }
        # with copies of a text the metrics grouped differently from the saved groups: the report needs them
        extra = {}
        if n_duplicate_texts:
            metric_groups = self.metric_groups(groups[keep], copies)
            if metric_groups is not None:  # the groups separation_metrics kept whole
                extra["metric_groups"] = [int(g) for g in metric_groups]
        analysis.outputs.states = StatesBundle(
            task=task, states=states[keep], labels=labels[keep], ids=ids[keep], groups=groups[keep],
            layers=np.array(layers, dtype=np.int64), meta=extra,
        )
        return analysis

    def on_analysis(self, analysis: Analysis, items: list[Item]) -> None:
        """The states bundle gets the full details (the core's too) as its meta; saved now with ``save_states_dir``."""
        bundle = analysis.outputs.states
        if bundle is None:
            return
        bundle.meta = {**analysis.details, **bundle.meta}
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
        ``copies``: :func:`~safespace_tasks.stats.validation.text_groups` of the texts, so exact copies of a
        text never sit on both sides of a probe split, a bootstrap draw or a permutation."""
        s = self.settings
        return separation_metrics(
            X, y, k=s.pca_components, n_boot=s.bootstrap_iters, ci_level=s.ci_level, seed=s.seed,
            groups=self.metric_groups(groups, copies), ridge=s.ridge, probe_folds=s.probe_folds, n_permutations=s.n_permutations,
            probe_refits=s.probe_refits, probe_permutations=s.probe_permutations,
        )
