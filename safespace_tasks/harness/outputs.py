"""What the tasks leave for the files beside the results JSON: one registry, flushed once.

A task's analysis carries its outputs (:class:`TaskOutputs`: the pooled states, the unit
statistics, the details) on the :class:`~safespace_tasks.harness.core.Analysis` it returns; the
task core posts them here (:func:`post`) once per new analysis, under the task's name. The results
writer patch (:mod:`safespace_tasks.harness.patches`, patch 2) calls :func:`flush` once lm-eval has
chosen where the results JSON goes: it takes the outputs of the run's tasks out of the registry and
writes

* ``safespace_states_<task>_<date>.npz`` per task with states (:func:`safespace_tasks.states.save_states`),
* ``safespace_units_<task>_<date>.safetensors`` / ``.json`` per units task (:func:`save_units`),
* one ``safespace_details_<date>.json``: each task's details (a states task's are its bundle's
  meta) and, under ``null_values``, why each number written as null could not be computed.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from safespace_tasks.states import StatesBundle, save_states

log = logging.getLogger(__name__)

__all__ = ["TaskOutputs", "post", "take", "pending", "flush", "save_units", "units_file_stem", "null_value_reasons"]


@dataclass
class TaskOutputs:
    """One task's outputs of one analysis (each ``None`` when the task has none of that kind).

    states: the pooled states, written as ``safespace_states_<task>_<date>.npz``; its ``meta`` is the
        task's entry in the details file.
    units: what the units task writes (:func:`save_units`: merged statistics, layout, arrays, summary).
    details: the task's entry in the details file (families without a states bundle).
    """

    states: StatesBundle | None = None
    units: dict[str, Any] | None = None
    details: dict[str, Any] | None = None

    def empty(self) -> bool:
        return self.states is None and self.units is None and self.details is None


# task name -> its outputs of the latest analysis in this process, until flushed
_REGISTRY: dict[str, TaskOutputs] = {}


def post(task: str, outputs: TaskOutputs) -> None:
    """Keep ``outputs`` for ``task`` until the results are written (a later analysis replaces each kind it has)."""
    if outputs.empty():
        return
    held = _REGISTRY.setdefault(task, TaskOutputs())
    for kind in ("states", "units", "details"):
        value = getattr(outputs, kind)
        if value is not None:
            setattr(held, kind, value)


def pending(task: str) -> TaskOutputs | None:
    """The outputs held for ``task`` (still held)."""
    return _REGISTRY.get(task)


def take(task: str) -> TaskOutputs | None:
    """The outputs held for ``task``, no longer held."""
    return _REGISTRY.pop(task, None)


def flush(folder: Path, date_id: str | None, task_names, model_info: dict | None = None,
          nulled: list[tuple] | None = None, results: dict | None = None) -> list[Path]:
    """Write the outputs of ``task_names`` held here into ``folder`` (see the module docstring).

    ``nulled``: results paths written as null (strict JSON); their reasons go into the details file
    under ``null_values``."""
    from safespace_tasks.strict_json import dumps

    folder = Path(folder)
    taken = {name: out for name in task_names if (out := take(name)) is not None}
    written: list[Path] = []
    details: dict[str, Any] = {}
    for name, out in taken.items():
        if out.states is not None:
            if model_info:
                out.states.meta["model"] = model_info
            written.append(save_states(out.states, folder, date_id))
            details[name] = out.states.meta
    for name, out in taken.items():
        if out.units is not None:
            written += save_units(out.units, folder, name, date_id, model_info)
    for name, out in taken.items():
        if out.details is not None:
            details[name] = out.details
    if nulled:
        details["null_values"] = null_value_reasons(nulled, details, results or {})
    if details:
        path = folder / f"safespace_details{'_' + date_id if date_id else ''}.json"
        path.write_text(dumps(details, indent=2, ensure_ascii=False, default=str), encoding="utf-8")
        written.append(path)
    return written


# --------------------------------------------------------------------------- unit statistics files


def units_file_stem(task: str, date_id: str | None) -> str:
    return f"safespace_units_{task}" + (f"_{date_id}" if date_id else "")


def save_units(pending: dict[str, Any], folder: Path, task: str, date_id: str | None,
               model_info: dict | None = None) -> list[Path]:
    """``<stem>.safetensors`` (merged statistics per set, layout, per-unit arrays; the format
    ``safespace units mask`` reads) and ``<stem>.json`` (every number of the analysis)."""
    from safespace_tasks.strict_json import dumps as strict_dumps  # null, never NaN
    from safespace_tasks.unit_masks import save_unit_stats

    summary = dict(pending["summary"])
    if model_info:
        summary["model_info"] = model_info
    s = summary["settings"]
    meta = {
        "model": summary.get("model"), "model_fingerprint": summary.get("model_fingerprint"),
        "chat_template": bool(s["chat_template"] and summary["chat_template"]["tokenizer_has_one"]),
        "data": {"safety": f"safety_refusals/train.jsonl, {s['n_samples']} rows (seed {s['seed']}), response tokens",
                 "utility": f"alpaca_seed_tasks/seed_tasks.jsonl, {s['n_samples']} rows (seed {s['seed']}), response tokens",
                 "multijail": f"multijail/<lang>.jsonl, {s['n_samples']} rows (seed {s['seed']}), prompt tokens"},
        "task": task, "source": "safespace_units",
    }
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    stem = units_file_stem(task, date_id)
    tensors = save_unit_stats(folder / f"{stem}.safetensors", pending["sets"], pending["layout"], meta, extra=pending["arrays"])
    summary_path = folder / f"{stem}.json"
    summary_path.write_text(strict_dumps(summary, indent=2, ensure_ascii=False, default=_json_default), encoding="utf-8")
    return [tensors, summary_path]


def _json_default(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)


# --------------------------------------------------------------------------- why a number is null


def _null_reason(details: dict | None, metric: str) -> str:
    """Why a task's metric key (``bcv_ratio_layer1``) could not be computed, from its details."""
    details = details or {}
    suffixes = {str(i): sfx for i, sfx in (details.get("metric_suffixes") or {}).items()}
    hits = [(i, sfx) for i, sfx in suffixes.items() if sfx and metric.endswith(sfx)]
    if hits:
        layer, sfx = max(hits, key=lambda h: len(h[1]))
        base = metric[: -len(sfx)]
    else:
        plain = [i for i, sfx in suffixes.items() if not sfx]
        base, layer = metric, (plain[0] if plain else None)
    for stem in (base, base[: -len("_null")] if base.endswith("_null") else None,
                 base[: -len("_p")] if base.endswith("_p") else None):
        if not stem:
            continue
        why = ((details.get("degenerate") or {}).get(layer) or {}).get(stem) if layer is not None else None
        if why:
            return f"could not be computed: {why}"
    by_layer = (details.get("metrics_by_layer") or {}).get(layer) if layer is not None else None
    if isinstance(by_layer, dict) and by_layer.get("error"):
        return f"could not be computed: {by_layer['error']}"
    if details.get("error"):
        return f"could not be computed: {details['error']}"
    return "could not be computed (not a finite number); see the log and this task's details"


def null_value_reasons(nulled: list[tuple], details: dict[str, dict], results: dict) -> dict[str, dict[str, str]]:
    """``{row: {key: reason}}`` for every results entry written as null (paths from
    :func:`safespace_tasks.strict_json.null_out`)."""
    out: dict[str, dict[str, str]] = {}
    subtasks = results.get("group_subtasks") or {}
    for path in nulled:
        if len(path) != 3 or path[0] not in ("results", "groups"):
            out.setdefault("/".join(str(p) for p in path[:-1]), {})[str(path[-1])] = "not a finite number"
            continue
        _, row, key = path
        metric = str(key).partition(",")[0]
        if metric.endswith("_stderr"):
            reason = "no standard error (not a finite number)"
        elif row in subtasks:
            missing = [t for t in subtasks[row] if not _finite((results.get("results") or {}).get(t, {}).get(key))]
            reason = (f"mean over languages, of which {', '.join(missing)} could not be computed" if missing
                      else "could not be computed (not a finite number)")
        elif str(row).startswith("safespace-units") and row not in details:
            reason = "could not be computed (not a finite number); see this task's safespace_units_*.json"
        else:
            reason = _null_reason(details.get(row), metric)
        out.setdefault(str(row), {})[str(key)] = reason
    return out


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)
