"""Read finished lm-eval runs from disk: results JSON, the plugin's saved states and details.

A *run* is one model's output folder, ``OUT/<model_name_sanitized>/``, as lm-eval writes it with
``--output_path OUT``. It may hold several ``results_<date>.json`` (the same model evaluated on
different task families at different times); each task is taken from the newest results file that
has it. Beside a results file the plugin writes ``safespace_states_<task>_<date>.npz`` and
``safespace_details_<date>.json`` with the same date; those are matched to the task by that date,
and a states file is only accepted when the metric values it records equal the results JSON's.

Nothing here imports torch or lm-eval: the files are plain JSON and numpy archives.
"""

from __future__ import annotations

import json
import logging
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from safespace_tasks.states import StatesBundle, find_states, load_states, states_filename

log = logging.getLogger(__name__)

__all__ = [
    "RunError",
    "Measurement",
    "TaskResult",
    "Run",
    "OtherTask",
    "discover_runs",
    "load_run",
    "parse_task_name",
    "split_metric",
    "is_count_metric",
]

RESULTS_PREFIX = "results_"
DETAILS_PREFIX = "safespace_details_"
TASK_PREFIX = "safespace-"
GROUP_PREFIX = "safespace_"
# Keys of a task's results row that are not metrics.
NON_METRIC_KEYS = {"name", "alias", "sample_len", "samples"}
# Task metadata keys that describe the run, not the measurement (model args are removed separately).
NON_SETTING_KEYS = {"version", "config_source", "save_states_dir", "data_dir", "strict"}
TRANSFER_TASK = "safespace_transfer"
_LAYER_RE = re.compile(r"^(?P<base>.+)_layer(?P<layer>-?\d+)$")


class RunError(ValueError):
    """A path that holds no readable lm-eval run; the message says what was looked for."""


@dataclass(frozen=True)
class Measurement:
    """A metric value and its standard error as the results JSON states them (stderr None when "N/A")."""

    value: float
    stderr: float | None = None


@dataclass
class TaskResult:
    """One task (one family, one language) of one run."""

    task: str
    family: str
    language: str
    version: Any
    metrics: dict[str, Measurement]
    n_samples: int | None
    settings: dict[str, Any]
    results_file: Path
    states_path: Path | None = None
    details: dict[str, Any] | None = None
    states_problem: str | None = None
    # metrics whose value in the results JSON is not a number: {metric: the raw value}; they have
    # no Measurement, so their cells are empty and the means leave them out (the report says so)
    unreadable: dict[str, Any] = field(default_factory=dict)

    def requested_layers(self) -> list[int] | None:
        layers = self.settings.get("layers")
        if layers is None:
            return None
        if isinstance(layers, (int, float)):
            return [int(layers)]
        items = layers.replace(",", " ").split() if isinstance(layers, str) else list(layers)
        try:  # a sweep ('all', ranges) names no index list: the saved details say which were read
            return [int(x) for x in items]
        except (TypeError, ValueError):
            return None

    def resolved_layers(self) -> list[int] | None:
        """Hidden-state index of each requested layer (from the saved details), in the same order."""
        if self.details and isinstance(self.details.get("layers"), list):
            return [int(x) for x in self.details["layers"]]
        return None

    def layer_of(self, metric: str) -> int | None:
        """Hidden-state index a metric key was measured at (plain names: the first requested layer).

        None when the run does not say (no ``layers`` setting, or ``-1`` without saved details).
        """
        _, requested = split_metric(metric)
        suffixes = (self.details or {}).get("metric_suffixes")
        if isinstance(suffixes, dict):  # written by the task: hidden-state index -> metric-name suffix
            want = "" if requested is None else f"_layer{requested}"
            hits = [int(idx) for idx, sfx in suffixes.items() if sfx == want]
            return hits[0] if hits else None
        wanted = self.requested_layers() or [-1]
        position: int | None = 0
        if requested is not None:
            position = wanted.index(requested, 1) if requested in wanted[1:] else None
        resolved = self.resolved_layers()
        if position is not None and resolved is not None and position < len(resolved):
            return resolved[position]
        layer = wanted[position] if position is not None else requested
        return layer if layer is not None and layer >= 0 else None

    def load_states(self) -> StatesBundle | None:
        return load_states(self.states_path) if self.states_path else None


@dataclass
class OtherTask:
    """A results row of another suite (a task or a group), as the results JSON gives it."""

    name: str
    row: dict[str, Any]
    results_file: Path
    date_id: str
    higher_is_better: dict[str, bool] = field(default_factory=dict)
    n_samples: int | None = None
    subtasks: list[str] = field(default_factory=list)


@dataclass
class Run:
    """One model's results: its tasks by name and the group rows (means over languages)."""

    folder: Path
    model_name: str
    model_args: dict[str, Any]
    results_files: list[Path]
    tasks: dict[str, TaskResult]
    groups: dict[str, dict[str, Measurement]] = field(default_factory=dict)
    group_subtasks: dict[str, list[str]] = field(default_factory=dict)
    lm_eval_version: str | None = None
    # the transfer task's matrix (TransferMatrix.to_dict() form) from the details file, if the run has one
    transfer: dict[str, Any] | None = None
    ignored_tasks: list[str] = field(default_factory=list)
    # rows of other suites (hellaswag, arc, mmlu ...) with at least one numeric metric, read by report.suites
    other_tasks: dict[str, "OtherTask"] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    label: str = ""

    @property
    def families(self) -> list[str]:
        return sorted({t.family for t in self.tasks.values()})

    def task_for(self, family: str, language: str) -> TaskResult | None:
        for t in self.tasks.values():
            if t.family == family and t.language == language:
                return t
        return None

    def default_label(self) -> str:
        name = self.model_name.rstrip("/\\")
        return re.split(r"[/\\]", name)[-1] or self.folder.name


# --------------------------------------------------------------------------- names


def parse_task_name(task: str) -> tuple[str, str] | None:
    """``safespace-<family>-<lang>`` -> (family, lang); None for tasks of other suites."""
    if not task.startswith(TASK_PREFIX):
        return None
    rest = task[len(TASK_PREFIX):]
    family, sep, language = rest.rpartition("-")
    if not sep or not family or not language:
        return None
    return family, language


def split_metric(metric: str) -> tuple[str, int | None]:
    """``bcv_ratio_layer8`` -> ("bcv_ratio", 8); ``bcv_ratio`` -> ("bcv_ratio", None)."""
    m = _LAYER_RE.match(metric)
    if m:
        return m.group("base"), int(m.group("layer"))
    return metric, None


def is_count_metric(metric: str) -> bool:
    """Bookkeeping counts (``n_truncated``, ``n_excluded``): reported as data, never compared as a gain."""
    return metric.startswith("n_")


def _metric_key(name: str, flt: str) -> str:
    return name if flt == "none" else f"{name}/{flt}"


def _number(x: Any) -> float | None:
    if isinstance(x, bool) or x is None:
        return None
    if isinstance(x, (int, float)):
        return float(x)
    if isinstance(x, str):
        try:
            return float(x)
        except ValueError:
            return None
    return None


def parse_metrics(row: dict[str, Any], unreadable: dict[str, Any] | None = None) -> dict[str, Measurement]:
    """The metrics of a results row: ``{"bcv_ratio": Measurement(value, stderr), ...}``.

    A value that is not a number (a string other than a number's, a list, ...) has no
    Measurement; when ``unreadable`` is given, it receives ``{metric: raw value}`` for each."""
    values: dict[str, float] = {}
    errors: dict[str, float | None] = {}
    for key, raw in row.items():
        if key in NON_METRIC_KEYS or "," not in key:
            continue
        name, _, flt = key.partition(",")
        if name.endswith("_stderr"):
            errors[_metric_key(name[: -len("_stderr")], flt)] = _number(raw)
            continue
        value = _number(raw)
        if value is None and raw is not None:
            if unreadable is not None:  # a non-numeric metric: nothing to tabulate, but it is named
                unreadable[_metric_key(name, flt)] = raw
            continue
        values[_metric_key(name, flt)] = float("nan") if value is None else value
    out = {}
    for key, value in values.items():
        se = errors.get(key)
        out[key] = Measurement(value=value, stderr=se if se is not None and math.isfinite(se) else None)
    return out


# --------------------------------------------------------------------------- discovery


def read_results_file(f: Path) -> tuple[dict[str, Any] | None, str | None]:
    """One lm-eval results JSON: ``(doc, None)``, or ``(None, why it is skipped)`` when it is unreadable
    or holds no ``results`` table (lm-eval may write NaN there; Python's reader accepts it)."""
    try:
        doc = json.loads(f.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        return None, f"{f}: unreadable results JSON ({err}); skipped."
    if not isinstance(doc, dict) or not isinstance(doc.get("results"), dict):
        return None, f"{f}: not an lm-eval results JSON (no 'results' table); skipped."
    return doc, None


def discover_runs(path: str | Path) -> list[Path]:
    """Folders (or single results files) that hold one model's results under ``path``.

    ``path`` may be a ``results_*.json``, a model folder holding them, or an ``--output_path``
    folder holding one subfolder per model.
    """
    path = Path(path)
    if not path.exists():
        raise RunError(f"{path}: no such file or folder.")
    if path.is_file():
        if not (path.name.startswith(RESULTS_PREFIX) and path.suffix == ".json"):
            raise RunError(f"{path}: not an lm-eval results file (expected results_<date>.json).")
        return [path]
    if any(path.glob(f"{RESULTS_PREFIX}*.json")):
        return [path]
    folders = sorted({p.parent for p in path.rglob(f"{RESULTS_PREFIX}*.json")})
    if not folders:
        raise RunError(
            f"{path}: no lm-eval results here (looked for {RESULTS_PREFIX}*.json in it and its subfolders). "
            "Pass the folder given to --output_path, a model folder inside it, or a results file."
        )
    return folders


def _date_of(path: Path, prefix: str) -> str:
    return path.stem[len(prefix):]


def load_run(path: str | Path) -> Run:
    """Read one model's results (a folder from :func:`discover_runs`, or a single results file)."""
    path = Path(path)
    if path.is_file():
        folder, files = path.parent, [path]
    else:
        folder = path
        files = sorted(path.glob(f"{RESULTS_PREFIX}*.json"), key=lambda p: _date_of(p, RESULTS_PREFIX))
    if not files:
        raise RunError(f"{path}: no {RESULTS_PREFIX}*.json found.")
    problems: list[str] = []
    docs: list[tuple[Path, dict[str, Any]]] = []
    for f in files:
        doc, problem = read_results_file(f)
        if doc is None:
            problems.append(problem)
            continue
        docs.append((f, doc))
    if not docs:
        raise RunError(f"{path}: none of its results files could be read: " + " ".join(problems))

    names = {str(d.get("model_name") or _model_args(d).get("pretrained") or "") for _, d in docs}
    names.discard("")
    if len(names) > 1:
        problems.append(
            f"{folder}: results of different models in one folder ({', '.join(sorted(names))}); "
            "all are read as one run. Pass the results files one by one to keep them apart."
        )
    newest_file, newest_doc = docs[-1]
    model_name = str(newest_doc.get("model_name") or _model_args(newest_doc).get("pretrained") or folder.name)
    run = Run(
        folder=folder,
        model_name=model_name,
        model_args=_model_args(newest_doc),
        results_files=[f for f, _ in docs],
        tasks={},
        lm_eval_version=newest_doc.get("lm_eval_version"),
        problems=problems,
    )
    # newest file last, so it wins for a task evaluated more than once
    for f, doc in docs:
        date_id = _date_of(f, RESULTS_PREFIX)
        details = _read_details(folder / f"{DETAILS_PREFIX}{date_id}.json", problems)
        model_keys = set(_model_args(doc))
        for name, row in doc["results"].items():
            if not isinstance(row, dict):
                continue
            parsed = parse_task_name(name)
            if parsed is None and name == TRANSFER_TASK:
                matrix = ((details or {}).get(name) or {}).get("transfer_matrix")
                if matrix is None:
                    states = folder / states_filename(name, date_id)
                    matrix = _read_meta(states).get("transfer_matrix") if states.exists() else None
                if matrix is None:
                    problems.append(f"{f}: {name} has no saved transfer matrix (details file missing); its "
                                    "matrix is not reported.")
                else:
                    run.transfer = matrix
                continue
            if parsed is None:
                if name.startswith(GROUP_PREFIX):
                    run.groups[name] = parse_metrics(row)
                    run.group_subtasks[name] = list((doc.get("group_subtasks") or {}).get(name, []))
                elif parse_metrics(row):  # another suite's task or group (hellaswag, mmlu, ...)
                    run.other_tasks[name] = OtherTask(
                        name=name, row=row, results_file=f, date_id=date_id,
                        higher_is_better=dict((doc.get("higher_is_better") or {}).get(name) or {}),
                        n_samples=((doc.get("n-samples") or {}).get(name) or {}).get("effective"),
                        subtasks=list((doc.get("group_subtasks") or {}).get(name) or []),
                    )
                    run.ignored_tasks = [t for t in run.ignored_tasks if t != name]
                elif (name not in run.ignored_tasks and name not in run.other_tasks
                      and not (doc.get("group_subtasks") or {}).get(name)):  # a group's subtasks speak for it
                    run.ignored_tasks.append(name)
                continue
            family, language = parsed
            config = (doc.get("configs") or {}).get(name, {})
            metadata = dict(config.get("metadata") or {})
            settings = {k: v for k, v in metadata.items() if k not in NON_SETTING_KEYS and k not in model_keys}
            n_eff = ((doc.get("n-samples") or {}).get(name) or {}).get("effective")
            unreadable: dict[str, Any] = {}
            metrics = parse_metrics(row, unreadable)
            task = TaskResult(
                task=name,
                family=family,
                language=language,
                version=(doc.get("versions") or {}).get(name, metadata.get("version")),
                metrics=metrics,
                n_samples=int(n_eff) if n_eff is not None else None,
                settings=settings,
                results_file=f,
                details=(details or {}).get(name),
                unreadable=unreadable,
            )
            _attach_states(task, folder, date_id)
            run.tasks[name] = task
    return run


def _model_args(doc: dict[str, Any]) -> dict[str, Any]:
    args = (doc.get("config") or {}).get("model_args")
    if isinstance(args, dict):
        return args
    if isinstance(args, str):  # "pretrained=x,dtype=float32"
        out = {}
        for part in args.split(","):
            key, sep, value = part.partition("=")
            if sep:
                out[key.strip()] = value.strip()
        return out
    return {}


def _read_details(path: Path, problems: list[str]) -> dict[str, Any] | None:
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        problems.append(f"{path}: unreadable details ({err}); intervals and layer numbers from it are not used.")
        return None


def _states_agree(task: TaskResult, meta: dict[str, Any]) -> str | None:
    """None when the states file's recorded metrics are the results JSON's; else why not."""
    by_layer = meta.get("metrics_by_layer") or {}
    layers = meta.get("layers") or []
    # the layer reported under the plain names (the deepest read; the first in runs before that rule)
    plain = [str(i) for i, sfx in (meta.get("metric_suffixes") or {}).items() if sfx == ""]
    first = plain[0] if plain else (str(layers[0]) if layers else None)
    if first is None or first not in by_layer:
        return "it records no metrics to check against the results"
    recorded = (by_layer[first] or {}).get("values") or {}
    for name, value in recorded.items():
        m = task.metrics.get(name)
        if m is None or value is None:
            continue
        same = (math.isnan(m.value) and math.isnan(value)) or math.isclose(m.value, value, rel_tol=1e-9, abs_tol=1e-12)
        if not same:
            return f"its {name} is {value!r} but the results JSON says {m.value!r}"
    return None


def _attach_states(task: TaskResult, folder: Path, date_id: str) -> None:
    """Find the task's states: same date as its results file, else the newest one whose numbers agree."""
    exact = folder / states_filename(task.task, date_id)
    candidates = [exact] if exact.exists() else []
    if not candidates:
        other = find_states(folder).get(task.task)
        if other is not None and other.parent == folder:
            candidates.append(other)
    if not candidates:
        task.states_problem = "no saved states (safespace_states_*.npz) beside its results"
        return
    for path in candidates:
        try:
            meta = _read_meta(path)
        except Exception as err:  # noqa: BLE001 - a broken file is reported, not fatal
            task.states_problem = f"{path.name} could not be read ({err})"
            continue
        why = _states_agree(task, meta)
        if why is not None:
            task.states_problem = f"{path.name} does not belong to these results: {why}"
            continue
        task.states_path = path
        task.states_problem = None
        if task.details is None:
            task.details = meta
        return


def _read_meta(path: Path) -> dict[str, Any]:
    """The JSON metadata of a states file, without loading its arrays."""
    with np.load(path, allow_pickle=False) as f:
        if "meta" not in f.files:
            raise ValueError("no 'meta' entry: not a safespace states file")
        return json.loads(str(f["meta"]))
