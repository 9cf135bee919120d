"""The one task core every safespace family is built on.

:class:`CorpusTask` (a ``ConfigurableTask``) owns what all families share:

* config plumbing: pops ``class``, builds ``metric_list`` from :mod:`safespace_tasks.metric_table`
  (direction, aggregation), names ``process_results``, our own request type where a family has one;
* loading through one data entry point (:func:`safespace_tasks.data.load_docs`), with a clear error
  for a language that is empty after the loader's exclusions;
* one settings dataclass per family (:class:`TaskSettings` and subclasses), parsed by ONE coercer
  (:func:`parse_settings`) from constraints declared on the fields (:func:`setting`): unknown keys,
  wrong types and values out of range are errors that name the key, the value and what is allowed;
* one picklable :class:`Item` per doc and one :class:`CorpusAggregator` per corpus metric (its
  ``safespace_stderr`` feeds :mod:`safespace_tasks.harness.patches`; it is never deep-copied);
* the hand-off of each analysis's outputs (states, unit statistics, details) to
  :mod:`safespace_tasks.harness.outputs`, which writes them beside the results;
* dedupe (data-parallel padding), canonical order, the per-task analysis cache and the
  strict-or-NaN policy.

A family supplies only what differs (see :class:`CorpusTask`): ``FAMILY`` (its rows in the metric
table), ``SETTINGS``, ``LAYOUT`` (its data), its requests (``construct_requests``, or lm-eval's own
for its output type), ``item_of(doc, results)`` and ``compute(items)``.
"""

from __future__ import annotations

import difflib
import functools
import fnmatch
import hashlib
import logging
import math
import re
import uuid
from dataclasses import MISSING, asdict, dataclass, field, fields
from typing import Any, Callable, Iterable

from lm_eval.api.task import ConfigurableTask

from safespace_tasks import data as data_mod
from safespace_tasks import install
from safespace_tasks import metric_table as mt
from safespace_tasks.harness import outputs
from safespace_tasks.harness.outputs import TaskOutputs

log = logging.getLogger(__name__)

__all__ = [
    "SettingsError", "setting", "parse_settings", "TaskSettings", "Item", "Analysis", "CorpusAggregator",
    "CorpusTask", "validate_metadata", "validate_cli_args", "settings_for", "family_of",
]

# Metadata keys lm-eval or the plugin put there themselves (never a user's setting).
HARNESS_METADATA_KEYS = frozenset({"version", "config_source", "_metadata", "scorer_card", "config", "num_fewshot"})


class SettingsError(ValueError):
    """A task setting (metadata key) that is unknown, of the wrong type or out of range."""


# --------------------------------------------------------------------------- settings


def setting(default: Any, *, kind: type | str, minimum: float | None = None, maximum: float | None = None,
            exclusive: bool = False, choices: tuple | None = None, optional: bool = False) -> Any:
    """A settings field with its constraints, read by :func:`parse_settings`.

    kind: ``int``, ``float``, ``bool``, ``str``, ``"int_list"`` (one int or a list of them),
    ``"str_list"`` (one string or a list; a string may separate items by commas or spaces) or
    ``"layers"`` (the forms of :mod:`safespace_tasks.layer_spec`, syntax checked here, resolved
    against the model's depth later).
    minimum / maximum: inclusive bounds (``exclusive=True``: both bounds exclusive).
    choices: the allowed values (strings). optional: ``null`` is allowed (means "not set").
    """
    meta = {"kind": kind, "minimum": minimum, "maximum": maximum, "exclusive": exclusive,
            "choices": choices, "optional": optional}
    return field(default=default, metadata=meta)


def _allowed(f) -> str:
    """What a field accepts, as the end of "<key> ...": ``must be >= 1, an integer``."""
    m = f.metadata
    kind = {int: "an integer", float: "a number", bool: "true or false", str: "a string",
            "int_list": "an integer or a list of integers", "str_list": "a string or a list of strings",
            "layers": "'all', a layer index, a range 'a:b' or a list of these"}[m["kind"]]
    lo, hi = m["minimum"], m["maximum"]
    if m["choices"]:
        text = "must be one of " + ", ".join(repr(c) for c in m["choices"])
    elif lo is not None and hi is not None:
        text = f"must lie in ({lo:g}, {hi:g}), {kind}" if m["exclusive"] else f"must lie in [{lo:g}, {hi:g}], {kind}"
    elif lo is not None:
        text = f"must be {'>' if m['exclusive'] else '>='} {lo:g}, {kind}"
    elif hi is not None:
        text = f"must be {'<' if m['exclusive'] else '<='} {hi:g}, {kind}"
    else:
        text = f"must be {kind}"
    return text + (" (or null)" if m["optional"] else "")


_INT_TEXT = re.compile(r"^\s*[+-]?\d+\s*$")


def _as_int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return int(value)
    if isinstance(value, str) and _INT_TEXT.match(value):
        return int(value)
    return None


def _as_float(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        out = float(value)
    elif isinstance(value, str):
        try:
            out = float(value)
        except ValueError:
            return None
    else:
        return None
    return out if math.isfinite(out) else None


def _coerce_field(f, value: Any) -> Any:
    """``value`` checked against the field's declared kind (no lossy casts); None when it does not fit."""
    kind = f.metadata["kind"]
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in ("true", "false"):
            return value.strip().lower() == "true"
        return None
    if kind is int:
        return _as_int(value)
    if kind is float:
        return _as_float(value)
    if kind is str:
        return value if isinstance(value, str) else None
    if kind == "int_list":
        items = value
        if isinstance(value, str):
            items = value.replace(",", " ").split()
        elif not isinstance(value, (list, tuple)):
            items = [value]
        out = [_as_int(x) for x in items]
        return tuple(out) if out and all(x is not None for x in out) else None
    if kind == "str_list":
        items = value.replace(",", " ").split() if isinstance(value, str) else value
        if not isinstance(items, (list, tuple)) or not items or not all(isinstance(x, str) and x.strip() for x in items):
            return None
        return tuple(dict.fromkeys(x.strip() for x in items))
    if kind == "layers":
        from safespace_tasks.layer_spec import normalize_spec

        return normalize_spec(value)  # raises LayerSpecError (a ValueError) with the allowed forms
    raise TypeError(f"setting kind {kind!r} is not supported")  # pragma: no cover - a declaration error


def _in_range(f, value: Any) -> bool:
    m = f.metadata
    if m["choices"] and value not in m["choices"]:
        return False
    values = value if isinstance(value, tuple) else (value,)
    for v in values:
        if not isinstance(v, (int, float)) or isinstance(v, bool):
            continue
        lo, hi = m["minimum"], m["maximum"]
        if lo is not None and (v <= lo if m["exclusive"] else v < lo):
            return False
        if hi is not None and (v >= hi if m["exclusive"] else v > hi):
            return False
    return True


def _closest(key: str, known: Iterable[str], cutoff: float = 0.6) -> str:
    match = difflib.get_close_matches(key, sorted(known), n=1, cutoff=cutoff)
    return f" Did you mean {match[0]}?" if match else ""


# Inside a task the metadata also holds the model arguments (lm-eval merges them in), so there only a
# near miss (this close) of a setting name counts as a typo; validate_metadata sees the user's keys alone.
TYPO_CUTOFF_IN_TASK = 0.85


@functools.lru_cache(maxsize=1)
def _model_argument_names() -> frozenset[str]:
    """Parameter names of lm-eval's HF model classes (they reach the task metadata via --model_args)."""
    import inspect

    names: set[str] = set()
    try:
        from lm_eval.models.huggingface import HFLM

        for klass in HFLM.__mro__:
            init = klass.__dict__.get("__init__")
            if init is not None:
                names |= set(inspect.signature(init).parameters)
    except Exception:  # pragma: no cover - lm-eval without its HF backend
        pass
    return frozenset(names)


def all_setting_names() -> frozenset[str]:
    """Every setting any safespace family knows (a key of one family may reach another's task)."""
    return frozenset(f.name for cls in _family_settings().values() for f in fields(cls))


def parse_settings(cls: type["TaskSettings"], metadata: dict[str, Any] | None, *, where: str = "") -> "TaskSettings":
    """THE coercer: the task metadata checked against the declared fields of ``cls``.

    Keys of other safespace families and keys lm-eval or the model arguments put into the task
    metadata are left alone; a key close to a setting name that is no setting is an error (a typo),
    as is a value of the wrong type or out of range. ``null`` means "use the default".
    """
    meta = dict(metadata or {})
    prefix = f"{where}: " if where else ""
    own = {f.name: f for f in fields(cls)}
    known = all_setting_names() | set(own)
    for key in meta:
        if key in known or key in HARNESS_METADATA_KEYS or key in _model_argument_names():
            continue
        hint = _closest(key, known, TYPO_CUTOFF_IN_TASK)
        if hint:  # a near miss of a setting is a typo; anything else is lm-eval's or the model's
            raise SettingsError(f"{prefix}unknown setting {key!r} (value {meta[key]!r}).{hint}")
    kwargs: dict[str, Any] = {}
    for name, f in own.items():
        if name not in meta or meta[name] is None:  # absent or null: the default
            continue
        value = meta[name]
        try:
            parsed = _coerce_field(f, value)
        except ValueError as err:  # a kind with its own message (layers)
            raise SettingsError(f"{prefix}{err}") from None
        if parsed is None or not _in_range(f, parsed):
            raise SettingsError(
                f"{prefix}setting {name}={value!r} is not valid: {name} {_allowed(f)}; "
                f"got {value!r} ({type(value).__name__})."
            )
        kwargs[name] = parsed
    settings = cls(**kwargs)
    try:
        settings.check()
    except SettingsError:
        raise
    except ValueError as err:
        raise SettingsError(f"{prefix}{err}") from None
    return settings


@dataclass(frozen=True)
class TaskSettings:
    """Settings every family has, from the task's ``metadata`` (``--metadata '{"key": value}'``).

    bootstrap_iters: bootstrap replicates for stderr and intervals (0: none).
    ci_level: percentile interval level.
    seed: seeds the doc order and the resampling of this task (nothing else of the run).
    strict: raise when a language's metrics cannot be computed instead of reporting NaN.
    data_dir: local mirror root (else ``$SAFESPACE_DATA_DIR``, else the Hub).
    """

    bootstrap_iters: int = setting(200, kind=int, minimum=0)
    ci_level: float = setting(0.95, kind=float, minimum=0.0, maximum=1.0, exclusive=True)
    seed: int = setting(1234, kind=int)
    strict: bool = setting(False, kind=bool)
    data_dir: str | None = setting(None, kind=str, optional=True)

    @classmethod
    def from_metadata(cls, metadata: dict[str, Any] | None, *, where: str = ""):
        return parse_settings(cls, metadata, where=where)

    def check(self) -> None:
        """Checks across fields (each field's own constraints are declared on it)."""

    def metric_suffixes(self) -> list[str]:
        """Suffix of each reported copy of the per-layer metrics ('' for families without layers)."""
        return [""]


# --------------------------------------------------------------------------- items and aggregation


class Item:
    """One doc's outcome as lm-eval carries it from ``process_results`` to the aggregation.

    key: the doc's id (unique within a language); label: its class (-1: none); group: a pair or
    cluster id (-1: none); response: what the model request returned (a pooled state, per-unit
    statistics, ...) for the family's ``compute``; values: per-doc numbers; language: set by tasks
    that hold several languages. ``order`` is the canonical position: a hash of label and text when
    the text is given (so neither file order nor sharding moves a text between folds), else ''
    (then the key orders). Pickles whole (data-parallel ranks gather it), prints short
    (``--log_samples``).
    """

    __slots__ = ("uid", "key", "label", "group", "order", "response", "values", "language")

    def __init__(self, key: int, label: int = -1, *, response: Any = None, values: dict[str, Any] | None = None,
                 group: int = -1, text: str | None = None, language: str | None = None) -> None:
        self.uid = uuid.uuid4().hex
        self.key = int(key)
        self.label = int(label)
        self.group = int(group)
        self.response = response
        self.values = values if values is not None else {}
        self.language = language
        self.order = "" if text is None else hashlib.blake2b(
            f"{self.label}\x00{text}".encode("utf-8"), digest_size=8).hexdigest()

    def __getstate__(self):
        return {s: getattr(self, s) for s in Item.__slots__}

    def __setstate__(self, st):
        for k, v in st.items():
            setattr(self, k, v)

    def __repr__(self) -> str:
        return f"<doc {self.key}>"

    __str__ = __repr__


@dataclass
class Analysis:
    """Metrics of one task over all its docs, or the reason they could not be computed.

    ``outputs``: what the analysis leaves for the files beside the results JSON (states, unit
    statistics, details); the task core hands them to :mod:`safespace_tasks.harness.outputs`.
    """

    values: dict[str, float] = field(default_factory=dict)
    stderr: dict[str, float] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    outputs: TaskOutputs = field(default_factory=TaskOutputs, compare=False, repr=False)


class CorpusAggregator:
    """Aggregation for one corpus metric; ``safespace_stderr`` gives its bootstrap standard error."""

    def __init__(self, task: "CorpusTask", metric: str) -> None:
        self.task = task
        self.metric = metric
        self.__name__ = f"safespace_{metric}"

    def __call__(self, items: list[Item]) -> float:
        return self.task.analyse(items).values.get(self.metric, float("nan"))

    def safespace_stderr(self, items: list[Item]) -> float | str:
        value = self.task.analyse(items).stderr.get(self.metric)
        return "N/A" if value is None or not math.isfinite(value) else value

    def __deepcopy__(self, memo):  # lm-eval deep-copies configs when dumping them; never copy the task
        return self

    def __repr__(self) -> str:
        return self.__name__


# --------------------------------------------------------------------------- the task core


class CorpusTask(ConfigurableTask):
    """One language of one family; the family supplies only what differs.

    Class attributes a family sets:
        FAMILY: its folder under ``task_configs/`` = its rows in the metric table.
        SETTINGS: its :class:`TaskSettings` subclass.
        LAYOUT: the doc layout its data loader gives (``texts``, ``pairs``, ``prompts``, ``rewrites``).
        REQUEST_TYPE: the plugin request type it emits (e.g. ``pooled_hidden_states``), or None to
            use lm-eval's own for the YAML's ``output_type``.
        OUTPUT_TYPE_REQUIRED: with REQUEST_TYPE None, the ``output_type`` the YAML must declare (None: any).
        INPUT_ERRORS: exceptions of ``compute`` that mean "these data cannot be measured" (NaN, or
            raised when ``strict``).
    Hooks: ``prepare_config(cfg)``, ``construct_requests(doc, ctx, **kw)``, ``item_of(doc, results)``,
    ``compute(items) -> Analysis``, ``always_values(items, analysis)``, ``on_analysis(analysis, items)``,
    ``languages()``.
    """

    VERSION = 1.0
    FAMILY: str = ""
    SETTINGS: type[TaskSettings] = TaskSettings
    LAYOUT: str = "texts"
    REQUEST_TYPE: str | None = None
    OUTPUT_TYPE_REQUIRED: str | None = None
    INPUT_ERRORS: tuple[type[BaseException], ...] = ()
    # write this task's analysis details into safespace_details_<date>.json beside the results
    # (families whose states bundle carries its own details leave this off)
    WRITE_DETAILS: bool = False

    _registry: dict[str, type["CorpusTask"]] = {}

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if cls.FAMILY and "FAMILY" in cls.__dict__:
            CorpusTask._registry[cls.FAMILY] = cls

    def __init__(self, data_dir=None, cache_dir=None, download_mode=None, config: dict | None = None) -> None:
        install()  # request types and patches, before lm-eval dispatches this task's requests (idempotent)
        cfg = dict(config or {})
        cfg.pop("class", None)
        self.settings = self.SETTINGS.from_metadata(cfg.get("metadata"), where=str(cfg.get("task") or self.FAMILY))
        if self.REQUEST_TYPE:
            # lm-eval validates output_type against its own four; pass one of them, then name ours below
            cfg["output_type"] = "loglikelihood"
        elif self.OUTPUT_TYPE_REQUIRED:
            if cfg.get("output_type", self.OUTPUT_TYPE_REQUIRED) != self.OUTPUT_TYPE_REQUIRED:
                raise ValueError(
                    f"{cfg.get('task')}: the {self.FAMILY} task needs output_type: {self.OUTPUT_TYPE_REQUIRED}."
                )
            cfg["output_type"] = self.OUTPUT_TYPE_REQUIRED
        self.prepare_config(cfg)
        self._metric_names = self.metric_names()
        self._aggregators: dict[str, Callable | str] = {
            m: "mean" if mt.spec(m).aggregation == mt.MEAN else CorpusAggregator(self, m) for m in self._metric_names
        }
        cfg["metric_list"] = [
            {"metric": m, "aggregation": agg, "higher_is_better": mt.higher_is_better(m)}
            for m, agg in self._aggregators.items()
        ]
        cfg["process_results"] = self.process_results
        cfg.setdefault("test_split", None)
        self._analysis_cache: tuple[tuple[str, ...], Analysis] | None = None
        self.data_report: data_mod.DataReport | None = None
        self.data_reports: dict[str, data_mod.DataReport] = {}
        super().__init__(config=cfg)
        if self.REQUEST_TYPE:
            self.OUTPUT_TYPE = self.REQUEST_TYPE  # lm-eval pads data-parallel ranks per OUTPUT_TYPE
            self.config.output_type = self.REQUEST_TYPE
        # shown in the results' "configs" instead of the method's source
        self.config.process_results = f"{type(self).__module__}.{type(self).__name__}.process_results"

    # ------------------------------------------------------------------ family hooks

    def prepare_config(self, cfg: dict[str, Any]) -> None:
        """Check or adjust the raw config before lm-eval builds the task (e.g. ``repeats``)."""

    def metric_names(self) -> list[str]:
        """The family's metrics from the table; per-layer ones once per requested layer."""
        names = mt.family_metrics(self.FAMILY)
        per_layer = [m for m in names if mt.spec(m).per_layer]
        out = [m + s for s in self.settings.metric_suffixes() for m in per_layer]
        return out + [m for m in names if not mt.spec(m).per_layer]

    def item_of(self, doc: dict, results: list) -> Item:
        raise NotImplementedError

    def compute(self, items: list[Item]) -> Analysis:
        """Metrics of the language from its deduplicated items in canonical order."""
        raise NotImplementedError

    def always_values(self, items: list[Item], analysis: Analysis) -> dict[str, float]:
        """Metrics reported even when the corpus metrics cannot be computed (counts)."""
        out: dict[str, float] = {}
        if "n_excluded" in self._metric_names:
            loader = sum(r.n_excluded for r in self.data_reports.values())
            out["n_excluded"] = float(loader + int(analysis.details.get("n_set_aside", 0)))
        return out

    def on_analysis(self, analysis: Analysis, items: list[Item]) -> None:
        """Called once per new analysis, after the common details are in (e.g. to keep states)."""

    def languages(self) -> list[str]:
        """The languages whose docs this task holds (one: its ``test_split``)."""
        language = self.config.test_split
        if not language:
            raise ValueError(f"{self.config.task}: test_split must name the language split.")
        return [str(language)]

    @property
    def language(self) -> str:
        return str(self.config.test_split)

    # ------------------------------------------------------------------ data

    def load_language(self, language: str) -> tuple[list[dict], data_mod.DataReport]:
        return data_mod.load_docs(
            self.config.dataset_path, language, data_dir=self.settings.data_dir, seed=self.settings.seed,
            layout=self.LAYOUT,
        )

    def download(self, dataset_kwargs: dict[str, Any] | None = None, **kwargs) -> None:
        import datasets

        languages = self.languages()
        docs: list[dict] = []
        for language in languages:
            lang_docs, report = self.load_language(language)
            if not lang_docs:
                raise data_mod.DataError(_empty_language_message(self.config.task, self.config.dataset_path,
                                                                 language, report))
            if len(languages) > 1:
                lang_docs = [{**d, "language": language} for d in lang_docs]
            self.data_reports[language] = report
            docs += lang_docs
        self.data_report = self.data_reports[languages[0]] if len(languages) == 1 else None
        self.dataset = datasets.DatasetDict({str(self.config.test_split): datasets.Dataset.from_list(docs)})

    # ------------------------------------------------------------------ lm-eval interface

    def process_results(self, doc: dict, results: list) -> dict[str, Any]:
        item = self.item_of(doc, results)
        return {m: item.values[m] if agg == "mean" else item for m, agg in self._aggregators.items()}

    def aggregation(self) -> dict[str, Callable]:
        from lm_eval.api.registry import get_aggregation

        return {m: get_aggregation(agg) if isinstance(agg, str) else agg for m, agg in self._aggregators.items()}

    def higher_is_better(self) -> dict[str, bool]:
        return {m: mt.higher_is_better(m) for m in self._aggregators}

    # ------------------------------------------------------------------ the analysis

    def analyse(self, items: list[Item]) -> Analysis:
        """All corpus metrics of this task over ``items`` (computed once, then served from a cache)."""
        key = tuple(it.uid for it in items)
        if self._analysis_cache is not None and self._analysis_cache[0] == key:
            return self._analysis_cache[1]
        seen: set[tuple] = set()
        unique: list[Item] = []
        for it in items:  # lm-eval pads data-parallel ranks with copies of a doc: count each doc once
            k = (it.language, it.key)
            if k not in seen:
                seen.add(k)
                unique.append(it)
        unique.sort(key=lambda it: (it.order, it.language or "", it.key))  # canonical, order-independent
        try:
            analysis = self.compute(unique)
        except self.INPUT_ERRORS as err:
            message = f"{self.config.task}: {err}"
            self.strict_or_nan(message, err)
            corpus = [m for m, agg in self._aggregators.items() if agg != "mean"]
            analysis = Analysis(values={m: float("nan") for m in corpus}, error=message)
        analysis.values.update(self.always_values(unique, analysis))
        analysis.details.update(
            task=self.config.task,
            language=self.language,
            n_docs=len(unique),
            duplicate_items_dropped=len(items) - len(unique),
            data=self.data_report.to_dict() if self.data_report else
            {k: r.to_dict() for k, r in self.data_reports.items()} or None,
            data_notes=[n for r in self.data_reports.values() for n in r.notes],
        )
        self.on_analysis(analysis, unique)
        if self.WRITE_DETAILS:
            analysis.outputs.details = analysis.details
        # the outputs go to the registry once; the cached analysis keeps the numbers only
        task_outputs, analysis.outputs = analysis.outputs, TaskOutputs()
        outputs.post(self.config.task, task_outputs)
        self._analysis_cache = (key, analysis)
        return analysis

    def strict_or_nan(self, message: str, err: BaseException) -> None:
        """Raise (``strict``) or log that the metrics concerned are reported as NaN."""
        if self.settings.strict:
            raise type(err)(message) from err
        log.error("%s -> its metrics are reported as NaN", message)

    def settings_dict(self) -> dict[str, Any]:
        return asdict(self.settings)


def _empty_language_message(task: str, dataset: str, language: str, report: data_mod.DataReport) -> str:
    causes = {k: v for k, v in report.to_dict().items() if k in ("empty_texts", "conflicting_labels", "identical_pairs") and v}
    cause = ", ".join(f"{v} {k.replace('_', ' ')}" for k, v in causes.items()) or "no rows"
    return (
        f"{task}: language {language!r} of {dataset} has no doc left after exclusions: {report.n_rows} rows in "
        f"{report.source}, {report.n_excluded} excluded ({cause}). Check that file (every text the same string, "
        "or every pair's two sides equal, leaves nothing to measure) or pick another language."
    )


# --------------------------------------------------------------------------- checking before the model loads


def _family_settings() -> dict[str, type[TaskSettings]]:
    """Each family's settings class, from the :class:`CorpusTask` registry.

    The family modules subclass :class:`CorpusTask` (importing one registers its families), so they are
    imported here, when first asked, never at the top of this module.
    """
    from safespace_tasks.harness.families import (  # noqa: F401 - each import registers its families
        behaviour,
        detoxpref,
        direction,
        paradetox,
        refusal,
        toxicity,
        transfer,
        units,
    )

    return {fam: cls.SETTINGS for fam, cls in CorpusTask._registry.items()}


def settings_for(family: str) -> type[TaskSettings]:
    table = _family_settings()
    if family not in table:
        raise SettingsError(f"unknown safespace family {family!r}; families: {', '.join(sorted(table))}")
    return table[family]


def family_of(name: str) -> list[str]:
    """Families a task name, group name, family name or glob selects (``[]`` for non-safespace names)."""
    families = sorted(_family_settings())
    out = []
    for fam in families:
        candidates = (fam, f"safespace_{fam}", f"safespace-{fam}", f"safespace-{fam}-x")
        if name in candidates[:3] or name.startswith(f"safespace-{fam}-"):
            out.append(fam)
        elif any(ch in name for ch in "*?[") and any(fnmatch.fnmatchcase(c, name) for c in candidates):
            out.append(fam)
    return out


def validate_metadata(task_names_or_families: Iterable[str] | str, metadata: dict[str, Any] | None) -> None:
    """Check the user's ``--metadata`` against the selected safespace families before any model loads.

    ``task_names_or_families``: what ``--tasks`` holds (a comma-separated string or a list: task
    names such as ``safespace-toxicity-en``, groups such as ``safespace_toxicity``, family names or
    globs such as ``safespace_*``); names of other tasks are ignored. ``metadata``: the parsed
    ``--metadata`` dict only (not the model arguments). Raises :class:`SettingsError` naming the key,
    the value and what is allowed; a key that no selected family knows is an error with the closest
    known key. Does nothing when no safespace family is selected.
    """
    names = task_names_or_families.split(",") if isinstance(task_names_or_families, str) else list(task_names_or_families)
    families = sorted({f for n in names if n.strip() for f in family_of(n.strip())})
    if not families:
        return
    meta = {k: v for k, v in dict(metadata or {}).items() if k not in HARNESS_METADATA_KEYS}
    classes = {fam: settings_for(fam) for fam in families}
    known = {f.name for cls in classes.values() for f in fields(cls)}
    for key, value in meta.items():
        if key not in known:
            raise SettingsError(
                f"unknown setting {key!r} (value {value!r}) for the safespace families {', '.join(families)}."
                f"{_closest(key, known)} Known settings: {', '.join(sorted(known))}."
            )
    for fam, cls in classes.items():
        own = {f.name for f in fields(cls)}
        parse_settings(cls, {k: v for k, v in meta.items() if k in own}, where=f"--metadata ({fam})")


def validate_cli_args(argv: list[str]) -> None:
    """:func:`validate_metadata` on a ``safespace-eval`` / ``lm_eval`` command line (before the model loads).

    Reads ``--tasks`` and ``--metadata`` with lm-eval's own parsing (a JSON object or ``key=value``
    pairs); everything else on the line is left to lm-eval. Raises :class:`SettingsError`.
    """
    import argparse

    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    parser.add_argument("--tasks", "-t", default=None)
    try:
        from lm_eval._cli.utils import MergeDictAction

        parser.add_argument("--metadata", nargs="+", action=MergeDictAction, default=None)
    except ImportError:  # pragma: no cover - lm-eval before its _cli package: JSON only
        import json

        parser.add_argument("--metadata", type=json.loads, default=None)
    args, _ = parser.parse_known_args(list(argv))
    if args.tasks:
        validate_metadata(args.tasks, args.metadata or {})
