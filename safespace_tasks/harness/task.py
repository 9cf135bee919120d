"""lm-eval task class for hidden-space separation: one task per language, a corpus metric per task.

Each doc is one text. The task emits one ``pooled_hidden_states`` request per doc (the harness
batches them), ``process_results`` wraps the returned state in a small :class:`StateItem` (its
``str`` is short, so ``--log_samples`` stays small), and the aggregations, which lm-eval hands every
item of the task at once, compute the separation metrics of the whole language with
:func:`safespace_tasks.metrics.separation_metrics`. The metrics are computed once per task and
shared by all metric names; the bootstrap standard error reaches the results table through
:mod:`safespace_tasks.harness.patches`. The states themselves are kept for saving beside the
results JSON.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import uuid
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

import numpy as np
from lm_eval.api.instance import Instance
from lm_eval.api.task import ConfigurableTask

from safespace_tasks import data as data_mod
from safespace_tasks.capture import HiddenState
from safespace_tasks.harness.model import REQUEST_TYPE, normalize_options
from safespace_tasks.metrics import METRIC_NAMES, SeparationInputError, SeparationResult, separation_metrics
from safespace_tasks.states import StatesBundle, save_states

log = logging.getLogger(__name__)

HIGHER_IS_BETTER = {
    "bcv_ratio": True, "bhattacharyya": True, "silhouette": True, "probe_auroc": True,
    "paired_shift": True, "pair_order_acc": True,
}
COUNT_METRICS = ("n_truncated", "n_excluded")

# Task name -> states bundle of the latest aggregation, waiting to be written beside the results.
PENDING_STATES: dict[str, StatesBundle] = {}


@dataclass(frozen=True)
class SeparationSettings:
    """Choices the paper leaves open, as task metadata (override with ``--metadata '{...}'``).

    layers: hidden-state indices to read (0 = embeddings, -1 = final layer after the norm);
        metrics of the first are reported under plain names, the others as ``<metric>_layer<i>``.
    pooling: ``last`` (last prompt token, the paper) or ``mean``.
    pca_components: k of PCA-k (paper: 10).
    bootstrap_iters: stratified bootstrap replicates for stderr and intervals (0: none).
    ci_level: percentile interval level.
    seed: seeds the doc order, the probe folds and the bootstrap.
    probe_folds: cross-validation folds of the linear probe.
    ridge: Bhattacharyya covariance ridge; null = automatic and reported, 0 = never.
    truncation_side: texts longer than the model's max length lose tokens on this side
        (``left`` keeps the end, where the pooled token sits).
    padding_side: ``left`` (default) or ``right``; the pooled token is the last real one either way.
    strict: raise on a language whose metrics cannot be computed instead of reporting NaN.
    save_states_dir: also write the states here (the results folder gets them with --output_path).
    data_dir: local mirror root (else ``$SAFESPACE_DATA_DIR``, else the Hub).
    state_cache: folder of a resumable cache of computed states (one file per model; a restarted
        run computes only what is missing). Off by default.
    """

    layers: tuple[int, ...] = (-1,)
    pooling: str = "last"
    pca_components: int = 10
    bootstrap_iters: int = 200
    ci_level: float = 0.95
    seed: int = 1234
    probe_folds: int = 5
    ridge: float | None = None
    truncation_side: str = "left"
    padding_side: str = "left"
    strict: bool = False
    save_states_dir: str | None = None
    data_dir: str | None = None
    state_cache: str | None = None

    @classmethod
    def from_metadata(cls, metadata: dict[str, Any] | None) -> "SeparationSettings":
        meta = dict(metadata or {})
        kwargs: dict[str, Any] = {}
        for f in cls.__dataclass_fields__.values():
            if f.name in meta and meta[f.name] is not None:
                kwargs[f.name] = meta[f.name]
        if "layers" in kwargs:
            layers = kwargs["layers"]
            if isinstance(layers, str):
                layers = [x for x in layers.replace(",", " ").split()]
            kwargs["layers"] = tuple(int(x) for x in ([layers] if isinstance(layers, int) else layers))
        for name in ("pca_components", "bootstrap_iters", "seed", "probe_folds"):
            if name in kwargs:
                kwargs[name] = int(kwargs[name])
        for name in ("ci_level",):
            if name in kwargs:
                kwargs[name] = float(kwargs[name])
        if "ridge" in kwargs:
            kwargs["ridge"] = float(kwargs["ridge"])
        if "strict" in kwargs and isinstance(kwargs["strict"], str):
            kwargs["strict"] = kwargs["strict"].lower() in ("1", "true", "yes")
        settings = cls(**kwargs)
        settings.check()
        return settings

    def check(self) -> None:
        normalize_options(self.request_options())
        if self.pooling not in ("last", "mean"):
            raise ValueError(f"pooling must be 'last' or 'mean'; got {self.pooling!r}.")
        if self.pca_components < 1:
            raise ValueError(f"pca_components must be >= 1; got {self.pca_components}.")
        if self.bootstrap_iters < 0:
            raise ValueError(f"bootstrap_iters must be >= 0; got {self.bootstrap_iters}.")
        if not 0.0 < self.ci_level < 1.0:
            raise ValueError(f"ci_level must lie in (0, 1); got {self.ci_level}.")
        if self.probe_folds < 2:
            raise ValueError(f"probe_folds must be >= 2; got {self.probe_folds}.")

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


class StateItem:
    """A doc's pooled state as lm-eval carries it between ``process_results`` and the aggregation.

    Pickles whole (data-parallel ranks gather it), prints short (``--log_samples``).
    """

    __slots__ = ("uid", "key", "label", "group", "state", "order")

    def __init__(self, key: int, label: int, state: HiddenState, group: int = -1, text: str = "") -> None:
        self.uid = uuid.uuid4().hex
        self.key = int(key)
        self.label = int(label)
        self.group = int(group)
        self.state = state
        # canonical position: a hash of the content, so neither document order, file order nor
        # data-parallel sharding changes which texts land in which probe fold or bootstrap draw
        self.order = hashlib.blake2b(f"{self.label}\x00{text}".encode("utf-8"), digest_size=8).hexdigest()

    def __getstate__(self):
        return {s: getattr(self, s) for s in self.__slots__}

    def __setstate__(self, st):
        for k, v in st.items():
            setattr(self, k, v)

    def __repr__(self) -> str:
        return f"<text {self.key} label {self.label}>"

    __str__ = __repr__


@dataclass
class TaskAnalysis:
    """Metrics of one task over all its texts (every layer), or the reason they could not be computed."""

    values: dict[str, float] = field(default_factory=dict)
    stderr: dict[str, float] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)
    error: str | None = None


class _Aggregator:
    """Aggregation for one metric name; ``safespace_stderr`` gives its bootstrap standard error."""

    def __init__(self, task: "HiddenSpaceTask", metric: str) -> None:
        self.task = task
        self.metric = metric
        self.__name__ = f"safespace_{metric}"

    def __call__(self, items: list[StateItem]) -> float:
        return self.task.analyse(items).values.get(self.metric, float("nan"))

    def safespace_stderr(self, items: list[StateItem]) -> float | str:
        value = self.task.analyse(items).stderr.get(self.metric)
        return "N/A" if value is None or not math.isfinite(value) else value

    def __repr__(self) -> str:
        return self.__name__


class HiddenSpaceTask(ConfigurableTask):
    """A language's hidden-space separation of toxic vs non-toxic texts.

    YAML (see ``task_configs/``): ``class: !function safespace_tasks.harness.task.HiddenSpaceTask``,
    ``dataset_path`` (the Hub id), ``test_split`` (the language), ``doc_to_text``, and settings in
    ``metadata`` (:class:`SeparationSettings`).
    """

    VERSION = 1.0
    text_field = "text"
    label_field = "toxic"
    group_field: str | None = None
    metric_names: tuple[str, ...] = METRIC_NAMES

    def __init__(self, data_dir=None, cache_dir=None, download_mode=None, config: dict | None = None) -> None:
        cfg = dict(config or {})
        cfg.pop("class", None)
        # lm-eval validates output_type against its own four; pass one of them, then name ours below
        cfg["output_type"] = "loglikelihood"
        self.settings = SeparationSettings.from_metadata(cfg.get("metadata"))
        self._separation_metrics = [m + s for s in self.settings.metric_suffixes() for m in self.metric_names]
        self._aggregators: dict[str, Callable] = {m: _Aggregator(self, m) for m in self._separation_metrics}
        self._aggregators["n_truncated"] = _sum_items
        self._aggregators["n_excluded"] = self._excluded
        cfg["metric_list"] = [
            {"metric": m, "aggregation": agg, "higher_is_better": self._higher_is_better_of(m)}
            for m, agg in self._aggregators.items()
        ]
        cfg["process_results"] = self.process_results
        cfg.setdefault("test_split", None)
        self._analysis_cache: tuple[tuple[str, ...], TaskAnalysis] | None = None
        self.data_report: data_mod.DataReport | None = None
        super().__init__(config=cfg)
        self.OUTPUT_TYPE = REQUEST_TYPE  # lm-eval pads data-parallel ranks per OUTPUT_TYPE
        self.config.output_type = REQUEST_TYPE
        # shown in the results' "configs" instead of the method's source
        self.config.process_results = f"{type(self).__module__}.{type(self).__name__}.process_results"

    # ------------------------------------------------------------------ data

    def download(self, dataset_kwargs: dict[str, Any] | None = None, **kwargs) -> None:
        import datasets

        language = self.config.test_split
        if not language:
            raise ValueError(f"{self.config.task}: test_split must name the language split.")
        docs, report = data_mod.load_docs(
            self.config.dataset_path, language, data_dir=self.settings.data_dir, seed=self.settings.seed
        )
        self.data_report = report
        self.dataset = datasets.DatasetDict({language: datasets.Dataset.from_list(docs)})

    # ------------------------------------------------------------------ requests

    def construct_requests(self, doc: dict, ctx: str, **kwargs) -> Instance:
        return Instance(
            request_type=REQUEST_TYPE,  # type: ignore[arg-type]
            doc=doc,
            arguments=(ctx, self.settings.request_options()),
            idx=0,
            metadata=kwargs.get("metadata", (self.config.task, None, 1)),
        )

    def process_results(self, doc: dict, results: list[HiddenState]) -> dict[str, Any]:
        state = results[0]
        if not isinstance(state, HiddenState):
            raise TypeError(
                f"{self.config.task}: expected a HiddenState response, got {type(state).__name__}; the model "
                "backend answered pooled_hidden_states with something else."
            )
        group = int(doc[self.group_field]) if self.group_field else -1
        item = StateItem(doc["id"], doc[self.label_field], state, group, doc[self.text_field])
        out: dict[str, Any] = {m: item for m in self._separation_metrics}
        out["n_truncated"] = int(state.truncated)
        out["n_excluded"] = item
        return out

    def aggregation(self) -> dict[str, Callable]:
        return dict(self._aggregators)

    def higher_is_better(self) -> dict[str, bool]:
        return {m: self._higher_is_better_of(m) for m in self._aggregators}

    @staticmethod
    def _higher_is_better_of(metric: str) -> bool:
        base = metric.split("_layer")[0]
        return HIGHER_IS_BETTER.get(base, False)

    def _excluded(self, items: list[StateItem]) -> int:
        """Texts the loader dropped plus texts the analysis set aside (both reported in the details)."""
        loader = self.data_report.n_excluded if self.data_report else 0
        return loader + int(self.analyse(items).details.get("n_set_aside", 0))

    # ------------------------------------------------------------------ metrics

    def analyse(self, items: list[StateItem]) -> TaskAnalysis:
        """All metrics of this task over ``items`` (computed once, then served from a cache)."""
        key = tuple(it.uid for it in items)
        if self._analysis_cache is not None and self._analysis_cache[0] == key:
            return self._analysis_cache[1]
        analysis = self._compute(items)
        self._analysis_cache = (key, analysis)
        return analysis

    def _compute(self, items: list[StateItem]) -> TaskAnalysis:
        task = self.config.task
        seen: set[int] = set()
        unique: list[StateItem] = []
        for it in items:
            if it.key not in seen:
                seen.add(it.key)
                unique.append(it)
        duplicates = len(items) - len(unique)
        unique.sort(key=lambda it: (it.order, it.key))  # canonical, content-defined order
        layers = unique[0].state.layers
        states = np.stack([it.state.vectors for it in unique]).astype(np.float32)
        labels = np.array([it.label for it in unique], dtype=np.int64)
        ids = np.array([it.key for it in unique], dtype=np.int64)
        groups = np.array([it.group for it in unique], dtype=np.int64)
        truncated = np.array([it.state.truncated for it in unique], dtype=bool)
        keep, set_aside = self.select_texts(states, labels, groups)
        s = self.settings
        analysis = TaskAnalysis()
        per_layer: dict[str, Any] = {}
        for j, suffix in enumerate(s.metric_suffixes()):
            try:
                res = self.layer_metrics(states[keep, j], labels[keep], groups[keep])
            except SeparationInputError as err:
                message = f"{task} (layer {s.layers[j]}): {err}"
                if s.strict:
                    raise SeparationInputError(message) from err
                log.error("%s -> its metrics are reported as NaN", message)
                analysis.error = message
                for m in self.metric_names:
                    analysis.values[m + suffix] = float("nan")
                per_layer[str(int(layers[j]))] = {"error": message}
                continue
            for m, v in res.values.items():
                analysis.values[m + suffix] = float(v)
                if m in res.stderr:
                    analysis.stderr[m + suffix] = float(res.stderr[m])
            per_layer[str(int(layers[j]))] = res.to_dict()
            if res.diagnostics.get("bhattacharyya_ridge"):
                log.warning(
                    "%s: a class covariance on PCA-%d is singular; Bhattacharyya used ridge %.3g (reported)",
                    task, s.pca_components, res.diagnostics["bhattacharyya_ridge"],
                )
        analysis.details = {
            "task": task,
            "dataset": self.config.dataset_path,
            "language": self.config.test_split,
            "settings": asdict(s),
            "layers": [int(x) for x in layers],
            "metrics_by_layer": per_layer,
            "n_texts": int(keep.sum()),
            "n_truncated": int(truncated.sum()),
            "n_from_state_cache": int(sum(it.state.cached for it in unique)),
            "duplicate_items_dropped": int(duplicates),
            "set_aside": set_aside,
            "n_set_aside": int(sum(set_aside.values())),
            "data": self.data_report.to_dict() if self.data_report else None,
        }
        bundle = StatesBundle(
            task=task, states=states[keep], labels=labels[keep], ids=ids[keep], groups=groups[keep],
            layers=np.array(layers, dtype=np.int64), meta=dict(analysis.details),
        )
        PENDING_STATES[task] = bundle
        if s.save_states_dir:
            path = save_states(bundle, os.path.expanduser(s.save_states_dir))
            log.info("%s: saved states to %s", task, path)
        return analysis

    # hooks for families with more structure (pairs)

    def select_texts(self, states: np.ndarray, labels: np.ndarray, groups: np.ndarray) -> tuple[np.ndarray, dict[str, int]]:
        """Mask of the texts to measure, and counts of those set aside by reason (none here)."""
        return np.ones(labels.shape[0], dtype=bool), {}

    def layer_metrics(self, X: np.ndarray, y: np.ndarray, groups: np.ndarray) -> SeparationResult:
        """Metrics of one layer's states."""
        s = self.settings
        return separation_metrics(
            X, y, k=s.pca_components, n_boot=s.bootstrap_iters, ci_level=s.ci_level, seed=s.seed,
            groups=groups if self.group_field else None, ridge=s.ridge, probe_folds=s.probe_folds,
        )


def _sum_items(items: list[int]) -> int:
    return int(sum(items))
