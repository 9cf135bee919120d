"""Every Eval Ever (EEE, schema 0.3.0) records from finished safespace runs.

One record per task (one family, one language) and one per family row (the lm-eval group), written as
plain JSON from the run's ``results_<date>.json`` and ``safespace_details_<date>.json``; nothing of
lm-eval's output is patched and every_eval_ever is not imported (it needs Python >= 3.12, this package
runs on 3.10+). A record lands where the EEE datastore expects it::

    OUT/data/<task>/<org>/<name>/<uuid4>.json

(``OUT`` itself when it is named ``data``, like the converter's ``--output_dir``). The uuid is derived
from the model, the task and the results file, so exporting the same run again rewrites the same files.

What each result holds, from our metric table (:mod:`safespace_tasks.metric_table`) and the run:

- the metric's direction (``lower_is_better``), unit, and bounds (``min_score``/``max_score``;
  ``"Infinity"`` strings where the schema wants them for an unbounded side);
- its stderr (our stratified bootstrap, lm-eval's analytic mean stderr, or lm-eval's pooled group
  stderr), the sample count, and a 95 % interval: the bootstrap interval from the details file when it
  is there (matched to the reported value), else value ± z·stderr clipped to the metric's range;
- the null floor (``<metric>_null``), the permutation p-value (``<metric>_p``), the random-set baseline
  of the safety-unit overlaps and the layer of a sweep's best value, as ``score_details.details`` of
  the metric they belong to, never as scores of their own; bookkeeping counts (``n_truncated`` ...)
  as details of the data;
- the dataset id and split, the task's settings, and the versions (lm-eval, transformers, torch,
  the task's and ours).

A value that is not a finite number is never written: the metric is left out, counted in the record
(``source_metadata.additional_details``) and in :class:`ExportResult`, with the reason the details
give. A model that was loaded from a local folder has no identity EEE accepts: the caller names it
(``model_id="ORG/NAME"``), or :class:`ExportError` says so.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from statistics import NormalDist
from typing import Any, Iterable, Sequence

from safespace_tasks import metric_table as mt

__all__ = [
    "EEE_SCHEMA_VERSION", "EEE_VALIDATED_WITH", "REQUIRED_FIELDS", "ExportError", "ExportResult", "LeftOut",
    "check_record", "export_eee", "metric_bounds", "records_of_run",
]

EEE_SCHEMA_VERSION = "0.3.0"
# the every-eval-ever release the records were checked with (`every_eval_ever validate`)
EEE_VALIDATED_WITH = "every-eval-ever==0.3.0"

# The schema's required fields (every_eval_ever/schemas/eval.schema.json, version 0.3.0), by where they
# sit; "[]" marks each element of a list. check_record() checks them on every record we write.
REQUIRED_FIELDS: dict[str, tuple[str, ...]] = {
    "": ("schema_version", "evaluation_id", "retrieved_timestamp", "source_metadata", "model_info", "eval_library",
         "evaluation_results"),
    "source_metadata": ("source_type", "source_organization_name", "evaluator_relationship"),
    "eval_library": ("name", "version"),
    "model_info": ("name", "id", "additional_details"),
    "model_info.additional_details": ("deployment_type", "model_availability"),
    "evaluation_results[]": ("evaluation_name", "source_data", "metric_config", "score_details"),
    "evaluation_results[].source_data": ("dataset_name", "source_type"),
    "evaluation_results[].metric_config": ("lower_is_better",),
    "evaluation_results[].score_details": ("score",),
}
# objects whose values the schema requires to be strings
_STRING_MAPS = ("additional_details", "details")
_ENUMS = {
    "source_metadata.source_type": ("documentation", "evaluation_run"),
    "source_metadata.evaluator_relationship": ("first_party", "third_party", "collaborative", "other"),
    "model_info.additional_details.deployment_type": ("self_deployed", "externally_managed", "unknown"),
    "model_info.additional_details.model_availability": ("open_weights", "closed_weights", "unknown"),
}
RELATIONSHIPS = _ENUMS["source_metadata.evaluator_relationship"]

INF = math.inf
# Bounds of a metric, by the unit the metric table gives it; a unit whose range depends on the metric
# (nats, ratio, cosine distance) is not here, its metrics are in _NAME_BOUNDS. A separation metric (a
# table row with a kernel) has its row's range.
_UNIT_BOUNDS: dict[str, tuple[float, float]] = {
    "fraction": (0.0, 1.0), "probability": (0.0, 1.0), "AUROC": (0.0, 1.0), "p-value": (0.0, 1.0),
    "balanced accuracy": (0.0, 1.0), "Jaccard": (0.0, 1.0), "chrF (0–1)": (0.0, 1.0), "score (0–1)": (0.0, 1.0),
    "score (−1 to 1)": (-1.0, 1.0), "cosine": (-1.0, 1.0),
    "count": (0.0, INF), "layer index": (0.0, INF),
    "probe margin": (-INF, INF), "log ratio": (-INF, INF),
}
_NAME_BOUNDS: dict[str, tuple[float, float]] = {
    # the Bhattacharyya distance's two terms: a Mahalanobis distance, and half the log of det(mean) over the geometric mean of the dets
    # (log det is concave, so that ratio is >= 1)
    "bhattacharyya_mean_term": (0.0, INF), "bhattacharyya_cov_term": (0.0, INF),
    "refusal_margin": (-INF, INF),  # log P(refusal opening) - log P(compliance opening)
    "transfer_ratio": (0.0, INF),  # transfer AUROC / own AUROC
    "transfer_ratio_above_chance": (-INF, INF),
    # s = d_C - d_R with cosine distances d in [0, 2]: s in [-2, 2]; a gap of two means of s in [-4, 4]
    "direction_harmful": (-2.0, 2.0), "direction_harmless": (-2.0, 2.0),
    "direction_gap": (-4.0, 4.0), "direction_gap_best": (-4.0, 4.0),
}
_KINDS = {"AUROC": "auroc", "balanced accuracy": "accuracy"}
_DERIVED_TAILS = ("_best", "_final", "_null")
_LAYER_RE = re.compile(r"^(?P<base>.+)_layer(?P<layer>-?\d+)$")
_HUB_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")
# the embedded local models (safespace model-path) and the Hub id whose weights they de-quantise
_LOCAL_HUB_IDS = {"smollm2-135m-instruct": "HuggingFaceTB/SmolLM2-135M-Instruct", "gemma-3-270m": "google/gemma-3-270m"}
# task metadata keys that are local paths or bookkeeping, not settings of the measurement
_NOT_SETTINGS = {"version", "config_source", "save_states_dir", "data_dir", "state_cache", "pretrained", "dtype"}
# lm-eval run configuration worth keeping beside the versions
_RUN_CONFIG = ("model", "batch_size", "device", "limit", "random_seed", "numpy_seed", "torch_seed", "fewshot_seed",
               "apply_chat_template", "fewshot_as_multiturn")
_Z = NormalDist().inv_cdf


class ExportError(ValueError):
    """Input the export cannot turn into records; the message names the problem and the fix."""


@dataclass(frozen=True)
class LeftOut:
    """A metric of a task that was not written, and why."""

    task: str
    metric: str
    reason: str


@dataclass
class ExportResult:
    out: Path
    records: list[Path] = field(default_factory=list)
    left_out: list[LeftOut] = field(default_factory=list)
    notices: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------- metric table


def metric_bounds(metric: str) -> tuple[float, float]:
    """(min, max) of a metric (a layer or language suffix allowed); inf for an unbounded side."""
    row = mt.spec(metric)
    if row.name in _NAME_BOUNDS:
        return _NAME_BOUNDS[row.name]
    if row.kernel is not None:
        return row.range
    for tail in _DERIVED_TAILS:  # a peak summary or a null floor lives on its metric's scale
        stem = row.name[: -len(tail)]
        if row.name.endswith(tail) and _in_table(stem):
            return metric_bounds(stem)
    if row.unit in _UNIT_BOUNDS:
        return _UNIT_BOUNDS[row.unit]
    raise mt.UnknownMetricError(
        f"metric {metric!r} (unit {row.unit!r}) has no bounds for the EEE export: add its unit to _UNIT_BOUNDS or "
        "the metric to _NAME_BOUNDS in safespace_tasks/export/eee.py"
    )


def _in_table(name: str) -> bool:
    try:
        return mt.spec(name).name == name
    except mt.UnknownMetricError:
        return False


def _bound(x: float) -> float | str:
    return "Infinity" if x == INF else "-Infinity" if x == -INF else x


# How a results key relates to the scores: (role, the key of the metric it belongs to).
SCORE, NULL, PVALUE, RANDOM = "score", "null_floor", "p_value", "random_baseline"
BEST_LAYER, COUNT = "best_layer", "count"


def classify(key: str) -> tuple[str, str | None]:
    """``bcv_ratio_null_layer1`` -> ("null_floor", "bcv_ratio_layer1"); a plain metric -> ("score", None).

    Raises :class:`~safespace_tasks.metric_table.UnknownMetricError` for a name the table does not hold.
    """
    row = mt.spec(key)
    base = row.name
    suffix = _layer_suffix(key)
    if row.unit == "count":
        return COUNT, None
    for tail, role in (("_null", NULL), ("_p", PVALUE)):
        if base.endswith(tail) and _in_table(base[: -len(tail)]):
            return role, base[: -len(tail)] + suffix
    if base.endswith("_best_layer") and _in_table(base[: -len("_layer")]):
        return BEST_LAYER, base[: -len("_layer")]
    for stem in ("jaccard_random_", "split_half_random_"):
        if base.startswith(stem):
            parent = base.replace("_random", "", 1)
            if _in_table(parent):
                return RANDOM, parent + suffix
    return SCORE, None


def _layer_suffix(key: str) -> str:
    """``_layer<i>`` when ``key`` carries a per-layer suffix (``bcv_ratio_layer1``, ``transfer_auroc_en_de_layer3``)."""
    m = _LAYER_RE.match(key)
    if m is None:
        return ""
    try:
        row = mt.spec(m.group("base"))
    except mt.UnknownMetricError:
        return ""
    return f"_layer{m.group('layer')}" if row.per_layer else ""


# --------------------------------------------------------------------------- reading a run


@dataclass
class _Entry:
    """One task or group row of a run, from the newest results file that has it."""

    name: str
    row: dict[str, Any]
    doc: dict[str, Any]
    results_file: Path
    details: dict[str, Any]
    is_group: bool


def _read_json(path: Path) -> Any:
    # lm-eval writes NaN into its results JSON; Python's reader accepts it (we never write it)
    return json.loads(path.read_text(encoding="utf-8"))


def _results_files(run: Path) -> list[Path]:
    from safespace_tasks.report.runs import RunError, discover_runs

    try:
        folders = discover_runs(run)
    except RunError as err:
        raise ExportError(str(err)) from err
    files: list[Path] = []
    for f in folders:
        files += [f] if f.is_file() else sorted(f.glob("results_*.json"), key=lambda p: p.stem)
    return files


def _entries(files: Sequence[Path], notices: list[str]) -> dict[tuple[Path, str], _Entry]:
    from safespace_tasks.report.runs import read_results_file

    out: dict[tuple[Path, str], _Entry] = {}
    for f in files:  # oldest first: the newest file wins for a task evaluated twice
        doc, problem = read_results_file(f)
        if doc is None:
            notices.append(problem)
            continue
        date = f.stem[len("results_"):]
        details_path = f.parent / f"safespace_details_{date}.json"
        details: dict[str, Any] = {}
        if details_path.exists():
            try:
                details = _read_json(details_path) or {}
            except (OSError, json.JSONDecodeError) as err:
                notices.append(f"{details_path}: unreadable ({err}); intervals and layers from it are not used.")
        groups = set((doc.get("group_subtasks") or {}))
        for name, row in doc["results"].items():
            if not isinstance(row, dict):
                continue
            if not name.startswith("safespace"):
                notices.append(f"{f.name}: {name} is not a safespace task; not exported (its own converter: "
                               "every_eval_ever convert lm_eval).")
                continue
            if not any("," in k for k in row):
                continue  # a group placeholder without metrics
            out[(f.parent, name)] = _Entry(name, row, doc, f, (details or {}).get(name) or {}, name in groups)
    return out


def _model_name(doc: dict[str, Any]) -> str:
    args = (doc.get("config") or {}).get("model_args")
    pretrained = args.get("pretrained") if isinstance(args, dict) else None
    if pretrained is None and isinstance(args, str):
        pretrained = dict(p.split("=", 1) for p in args.split(",") if "=" in p).get("pretrained")
    return str(doc.get("model_name") or pretrained or "")


def _is_local(name: str) -> bool:
    from safespace_tasks.local_models import _looks_local

    return _looks_local(name) or Path(name).expanduser().is_dir()


def resolve_model_id(model_name: str, model_id: str | None) -> str:
    """The EEE ``model_info.id`` of a run's model: ``model_id`` when given (checked), else the run's Hub id."""
    if model_id is not None:
        if not _HUB_ID_RE.match(model_id) or "data" in model_id.split("/"):
            raise ExportError(f"--model-id {model_id!r} is not a Hub id; give it as ORG/NAME "
                              "(e.g. HuggingFaceTB/SmolLM2-135M-Instruct).")
        return model_id
    if not model_name:
        raise ExportError("the run does not name its model (no model_name or pretrained in the results JSON); "
                          "pass --model-id ORG/NAME.")
    if _is_local(model_name):
        hub = _LOCAL_HUB_IDS.get(Path(model_name).name)
        example = hub or "ORG/NAME"
        raise ExportError(
            f"the run's model is a local folder ({model_name}); EEE names a model by its Hub id: pass "
            f"--model-id {example} (the id of the weights that folder holds).")
    if not _HUB_ID_RE.match(model_name):
        raise ExportError(f"the run's model {model_name!r} is not an ORG/NAME Hub id (EEE files records by "
                          "organisation); pass --model-id ORG/NAME.")
    return model_name


# --------------------------------------------------------------------------- pieces of a record


def _finite(x: Any) -> float | None:
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return None
    return float(x) if math.isfinite(x) else None


def _s(x: Any) -> str:
    """A details value: the schema wants strings."""
    if isinstance(x, float):
        return repr(x)
    if isinstance(x, (list, dict, tuple)):
        return json.dumps(x, sort_keys=True, allow_nan=False, default=str)
    return str(x)


def _walk(obj: Any, depth: int = 0) -> Iterable[dict[str, Any]]:
    if depth > 6 or not isinstance(obj, dict):
        return
    yield obj
    for v in obj.values():
        yield from _walk(v, depth + 1)


def _layer_scope(details: dict[str, Any], key: str) -> tuple[int | None, dict[str, Any]]:
    """The hidden-state index a metric key was measured at, and the part of the details for that layer."""
    want = _layer_suffix(key)
    suffixes = details.get("metric_suffixes")
    if isinstance(suffixes, dict):
        for idx, sfx in suffixes.items():
            if sfx == want:
                scope = (details.get("metrics_by_layer") or {}).get(str(idx))
                return int(idx), scope if isinstance(scope, dict) else details
    return None, details


def _measured_at(details: dict[str, Any], metric: str) -> tuple[int | None, dict[str, Any], str]:
    """(hidden-state index, the details of that layer, the name the details use) for a metric key.

    A sweep's ``<m>_best`` / ``<m>_final`` is ``<m>`` at the layer the sweep's peak names."""
    spec = mt.spec(metric)
    if not spec.sweep_only:
        idx, scope = _layer_scope(details, metric)
        return idx, scope, spec.name
    stem, _, which = spec.name.rpartition("_")
    peak = (details.get("peak") or {}).get(stem) or {}
    idx = peak.get(f"{which}_layer") if isinstance(peak.get(f"{which}_layer"), int) else None
    scope = ((details.get("metrics_by_layer") or {}).get(str(idx)) or {}) if idx is not None else {}
    return idx, scope, stem


def _interval(scope: dict[str, Any], base: str, value: float) -> dict[str, Any] | None:
    """The bootstrap interval the details record for this metric, when its recorded value is the reported one."""
    for d in _walk(scope):
        ci, values = d.get("ci"), d.get("values")
        if not (isinstance(ci, dict) and isinstance(values, dict) and base in ci and base in values):
            continue
        recorded = _finite(values[base])
        if recorded is None or not math.isclose(recorded, value, rel_tol=1e-9, abs_tol=1e-12):
            continue
        pair = ci[base]
        if not (isinstance(pair, (list, tuple)) and len(pair) == 2):
            continue
        lo, hi = _finite(pair[0]), _finite(pair[1])
        if lo is None or hi is None:
            continue
        spread = ((d.get("spread") or {}).get(base) or {}) if isinstance(d.get("spread"), dict) else {}
        n_perm = d.get("n_permutations")
        return {
            "lower": lo, "upper": hi, "level": _finite(d.get("ci_level")) or 0.95,
            "method": spread.get("method") if isinstance(spread, dict) else None,
            "n_boot": d.get("n_boot") if isinstance(d.get("n_boot"), int) else None,
            "n_permutations": n_perm.get(base) if isinstance(n_perm, dict) else None,
            "stderr_reason": spread.get("reason") if isinstance(spread, dict) else None,
        }
    return None


def _reason(scope: dict[str, Any], base: str) -> str | None:
    """Why a metric has no value, as the details say (the degenerate-input message)."""
    for d in _walk(scope):
        deg = d.get("degenerate")
        if isinstance(deg, dict) and isinstance(deg.get(base), str):
            return deg[base]
    return None


def _settings(entry: _Entry, sub_configs: list[dict[str, Any]]) -> dict[str, Any]:
    raw = entry.details.get("settings")
    if not isinstance(raw, dict):
        meta = (sub_configs[0].get("metadata") if sub_configs else None) or {}
        model_keys = set(((entry.doc.get("config") or {}).get("model_args") or {}) or ())
        raw = {k: v for k, v in meta.items() if k not in model_keys}
    out: dict[str, Any] = {}
    for k, v in sorted(raw.items()):
        if k in _NOT_SETTINGS or v is None:
            continue
        if isinstance(v, bool) or isinstance(v, str) or (isinstance(v, (int, float)) and math.isfinite(v)):
            out[k] = v
        else:
            out[k] = _s(v)
    return out


def _versions(doc: dict[str, Any], task_version: Any) -> dict[str, str]:
    from safespace_tasks import __version__

    env = str(doc.get("pretty_env_info") or "")
    torch_v = re.search(r"PyTorch version: (\S+)", env)
    py_v = re.search(r"Python version: (\S+)", env)
    out = {
        "plugin": "safespace-tasks",
        "safespace_tasks_version": __version__,
        "safespace_tasks_version_note": "the installed plugin at export time; the run records the task version",
        "task_version": _s(task_version) if task_version is not None else "unknown",
        "transformers_version": str(doc.get("transformers_version") or "unknown"),
        "torch_version": torch_v.group(1) if torch_v else "unknown",
    }
    if py_v:
        out["python_version"] = py_v.group(1)
    config = doc.get("config") or {}
    for k in _RUN_CONFIG:
        v = config.get(k)
        if v is not None and v != "" and v != []:
            out[f"run.{k}"] = _s(v)
    return out


def _model_info(doc: dict[str, Any], model_id: str, run_model: str) -> dict[str, Any]:
    config = doc.get("config") or {}
    local = _is_local(run_model) if run_model else False
    embedded = local and Path(run_model).name in _LOCAL_HUB_IDS
    details: dict[str, str] = {
        "deployment_type": "self_deployed",
        "model_availability": "open_weights" if (not local or embedded) else "unknown",
    }
    args = config.get("model_args")
    if isinstance(args, dict):  # local paths reduced to their folder name
        shown = {k: (Path(v).name if isinstance(v, str) and _is_local(v) else v) for k, v in args.items()}
        details["model_args"] = _s(shown)
    for k in ("model_num_parameters", "model_dtype", "model_revision", "model_sha"):
        if config.get(k) not in (None, ""):
            details[k.replace("model_", "", 1)] = _s(config[k])
    if not local and run_model and run_model != model_id:
        details["run_model_name"] = run_model
    if local:
        details["weights"] = f"local folder {Path(run_model).name!r}, named {model_id} by the exporter (--model-id)"
        if embedded:
            from safespace_tasks.local_models import LOCAL_MODELS

            details["weights"] += f"; {LOCAL_MODELS[Path(run_model).name].description}, de-quantised from GGUF"
    info: dict[str, Any] = {"name": model_id, "id": model_id, "developer": model_id.split("/")[0],
                            "additional_details": details}
    if config.get("model") in ("hf", "safespace-hf"):
        version = str(doc.get("transformers_version") or "unknown")
        info["inference_engine"] = {"name": "transformers", "version": version}
    return info


def _source_data(entry: _Entry, sub_configs: list[dict[str, Any]], n: int | None, counts: dict[str, str],
                 languages: list[str]) -> dict[str, Any]:
    paths = sorted({str(c.get("dataset_path")) for c in sub_configs if c.get("dataset_path")})
    dataset = entry.details.get("dataset") if isinstance(entry.details.get("dataset"), str) else None
    repo = dataset or (paths[0] if len(paths) == 1 else None)
    extra: dict[str, str] = dict(counts)
    extra["family"] = _family_language(entry.name)[0]
    if entry.is_group:
        extra["languages"] = ",".join(languages)
        extra["row"] = "family row: lm-eval group, the unweighted mean over its languages"
    elif languages:
        extra["language"] = languages[0]
    data = entry.details.get("data")
    if isinstance(data, dict) and data.get("source"):
        extra["data_origin"] = "local mirror of the Hub dataset" if Path(str(data["source"])).is_absolute() else "Hub"
    limit = (entry.doc.get("config") or {}).get("limit")
    if limit is not None:
        extra["limit"] = _s(limit)
    src: dict[str, Any] = {"dataset_name": entry.name}
    if repo and _HUB_ID_RE.match(repo) and not repo.startswith("safespace/"):
        from safespace_tasks.data import DATASETS

        src["source_type"] = "hf_dataset"
        src["hf_repo"] = repo
        splits = sorted({str(c["test_split"]) for c in sub_configs if c.get("test_split")})
        # a split is the Hub's only for the datasets whose splits are languages; else it is our loader's key
        hub_splits = repo in DATASETS and all(sp in DATASETS[repo].languages for sp in splits)
        if len(splits) == 1 and hub_splits:
            src["hf_split"] = splits[0]
        elif splits:
            extra["splits" if hub_splits else "loader_split"] = ",".join(splits)
    else:
        src["source_type"] = "other"
        if paths:
            extra["datasets"] = ",".join(Path(p).name if p.startswith(("/", ".")) else p for p in paths)
    if n is not None:
        src["samples_number"] = int(n)
    src["additional_details"] = extra
    return src


# --------------------------------------------------------------------------- one record


def _record(entry: _Entry, model_id: str, run_model: str, retrieved: str, relationship: str, organisation: str,
            left_out: list[LeftOut]) -> dict[str, Any] | None:
    doc, row, name = entry.doc, entry.row, entry.name
    configs = doc.get("configs") or {}
    subtasks = list((doc.get("group_subtasks") or {}).get(name, [])) if entry.is_group else [name]
    sub_configs = [configs[t] for t in subtasks if isinstance(configs.get(t), dict)]
    languages = [lang for lang in (_family_language(t)[1] for t in subtasks) if lang]
    if entry.is_group and not entry.details:  # the family row shares its languages' settings and layers
        all_details = _details_of(entry)
        entry.details = next((all_details[t] for t in subtasks if isinstance(all_details.get(t), dict)), {})
    details = entry.details
    n_eff = ((doc.get("n-samples") or {}).get(name) or {}).get("effective")
    n_task = n_eff if isinstance(n_eff, int) else row.get("sample_len")
    n_task = n_task if isinstance(n_task, int) else None
    sample_count = row.get("sample_count") if isinstance(row.get("sample_count"), dict) else {}

    values: dict[str, Any] = {}
    stderrs: dict[str, Any] = {}
    for k, raw in row.items():
        if "," not in k:
            continue
        metric, _, flt = k.partition(",")
        key = metric if flt == "none" else f"{metric}:{flt}"
        if metric.endswith("_stderr"):
            stderrs[key[: -len("_stderr")] if flt == "none" else f"{metric[: -len('_stderr')]}:{flt}"] = raw
        else:
            values[key] = raw

    scores: dict[str, float] = {}
    refs: dict[str, dict[str, str]] = {}
    counts: dict[str, str] = {}
    roles: dict[str, tuple[str, str | None]] = {}
    for key, raw in values.items():
        metric = key.split(":", 1)[0]
        try:
            role, parent = classify(metric)
        except mt.UnknownMetricError:
            left_out.append(LeftOut(name, key, "not in the metric table (safespace_tasks.metric_table)"))
            continue
        roles[key] = (role, parent)
    for key, (role, parent) in roles.items():
        value = _finite(values[key])
        if role == COUNT:
            if value is not None:
                counts[key] = _s(int(value) if value.is_integer() else value)
        elif role == SCORE:
            if value is None:
                raw = values[key]
                why = ("not computed: no finite value in the results JSON" if raw is None or isinstance(raw, float)
                       else f"not a number ({raw!r})")
                if entry.is_group:
                    missing = _missing_languages(entry, subtasks, key)
                    if missing:
                        why = f"the family mean is undefined: no value in {', '.join(missing)}"
                else:
                    _, scope, base = _measured_at(details, key.split(":", 1)[0])
                    why = _reason(scope, base) or why
                left_out.append(LeftOut(name, key, why))
            else:
                lo, hi = metric_bounds(key.split(":", 1)[0])
                if lo - 1e-9 <= value <= hi + 1e-9:  # rounding at a bound is the bound
                    scores[key] = min(max(value, lo), hi)
                else:
                    left_out.append(LeftOut(name, key, f"{value!r} lies outside the metric's range [{lo}, {hi}]; "
                                            "please report it (safespace_tasks/export/eee.py bounds)"))
        elif value is not None and parent is not None:
            refs.setdefault(parent, {})[role] = _s(int(value) if role == BEST_LAYER else value)

    settings = _settings(entry, sub_configs)
    source = _source_data(entry, sub_configs, n_task, counts, languages)
    timestamp = doc.get("date")
    evaluation_timestamp = str(int(timestamp)) if _finite(timestamp) is not None else None
    results = []
    for key, value in scores.items():
        metric = key.split(":", 1)[0]
        spec = mt.spec(metric)
        lo, hi = metric_bounds(metric)
        idx, scope, ci_name = _measured_at(details, metric)
        params: dict[str, Any] = dict(settings)
        if idx is not None:
            params["layer"] = idx  # hidden-state index: 0 = embeddings, the last = after the final norm
        if spec.per_language and metric != spec.name:
            params["languages"] = metric[len(spec.name) + 1:].split("_layer")[0]
        metric_config = {
            "evaluation_description": spec.note or spec.title,
            "metric_id": f"safespace.{spec.name}",
            "metric_name": spec.title,
            "metric_unit": spec.unit,
            "metric_parameters": params,
            "lower_is_better": not spec.higher_is_better,
            "score_type": "continuous",
            "min_score": _bound(lo),
            "max_score": _bound(hi),
            "additional_details": {"aggregation": _aggregation(spec, entry.is_group)},
        }
        if spec.unit in _KINDS:
            metric_config["metric_kind"] = _KINDS[spec.unit]
        se = _finite(stderrs.get(key))
        found = None if entry.is_group else _interval(scope, ci_name, value)
        n = sample_count.get(f"{metric},none") if entry.is_group else n_task
        uncertainty: dict[str, Any] = {}
        score_extra: dict[str, str] = dict(refs.get(key, {}))
        if se is not None:
            method = ("lm-eval pooled stderr of the languages" if entry.is_group
                      else "bootstrap" if spec.aggregation == mt.CORPUS else "analytic")
            uncertainty["standard_error"] = {"value": se, "method": method}
        elif found and found.get("stderr_reason"):
            score_extra["stderr_missing"] = str(found["stderr_reason"])
        if found is not None:
            what = f"{found['method']} bootstrap" if found.get("method") else "bootstrap"
            uncertainty["confidence_interval"] = {
                "lower": found["lower"], "upper": found["upper"], "confidence_level": found["level"],
                "method": f"{what} interval from the run's details file",
            }
            if found.get("n_boot"):
                uncertainty["num_bootstrap_samples"] = int(found["n_boot"])
            if isinstance(found.get("n_permutations"), int):
                score_extra["n_permutations"] = str(found["n_permutations"])
        elif se is not None:
            level = 0.95
            z = _Z(0.5 + level / 2)
            uncertainty["confidence_interval"] = {
                "lower": max(lo, value - z * se), "upper": min(hi, value + z * se), "confidence_level": level,
                "method": "normal approximation: value ± 1.96 × stderr, clipped to the metric's range",
            }
        if isinstance(n, int):
            uncertainty["num_samples"] = n
        score_details: dict[str, Any] = {"score": value}
        if score_extra:
            score_details["details"] = score_extra
        if uncertainty:
            score_details["uncertainty"] = uncertainty
        result = {
            "evaluation_result_id": key,
            "evaluation_name": name,
            "source_data": source,
            "metric_config": metric_config,
            "score_details": score_details,
        }
        if evaluation_timestamp:
            result["evaluation_timestamp"] = evaluation_timestamp
        results.append(result)
    if not results:
        return None

    own_left = [lo for lo in left_out if lo.task == name]
    source_extra = {"exported_by": "safespace export eee", "results_file": entry.results_file.name,
                    "metrics_left_out": str(len(own_left))}
    for item in own_left:
        source_extra[f"left_out.{item.metric}"] = item.reason
    task_version = (doc.get("versions") or {}).get(name)
    record = {
        "schema_version": EEE_SCHEMA_VERSION,
        "evaluation_id": f"{name}/{model_id}/{retrieved}",
        "retrieved_timestamp": retrieved,
        "source_metadata": {
            "source_name": "safespace-tasks (lm-evaluation-harness plugin)",
            "source_type": "evaluation_run",
            "source_organization_name": organisation,
            "evaluator_relationship": relationship,
            "additional_details": source_extra,
        },
        "eval_library": {
            "name": "lm_eval",
            "version": str(doc.get("lm_eval_version") or "unknown"),
            "additional_details": _versions(doc, task_version),
        },
        "model_info": _model_info(doc, model_id, run_model),
        "evaluation_results": results,
    }
    if evaluation_timestamp:
        record["evaluation_timestamp"] = evaluation_timestamp
    return record


def _family_language(task: str) -> tuple[str, str | None]:
    """``safespace-refusal-margin-en`` -> ("refusal-margin", "en"); ``safespace-units`` -> ("units", None);
    a family row ``safespace_toxicity`` -> ("toxicity", None)."""
    if task.startswith("safespace_"):
        return task[len("safespace_"):], None
    rest = task[len("safespace-"):]
    family, sep, language = rest.rpartition("-")
    return (family, language) if sep else (rest, None)


def _aggregation(spec: mt.MetricSpec, family_row: bool) -> str:
    if family_row:
        return "family mean over the languages"
    if spec.aggregation == mt.CORPUS:
        return "corpus: one value from all the texts of the language"
    return "mean: of one value per item"


def _details_of(entry: _Entry) -> dict[str, Any]:
    date = entry.results_file.stem[len("results_"):]
    path = entry.results_file.parent / f"safespace_details_{date}.json"
    try:
        return _read_json(path) if path.exists() else {}
    except (OSError, json.JSONDecodeError):
        return {}


def _missing_languages(entry: _Entry, subtasks: list[str], key: str) -> list[str]:
    results = entry.doc.get("results") or {}
    metric, _, flt = key.partition(":")
    col = f"{metric},{flt or 'none'}"
    return [t.rsplit("-", 1)[-1] for t in subtasks
            if isinstance(results.get(t), dict) and _finite(results[t].get(col)) is None]


# --------------------------------------------------------------------------- checks and writing


def check_record(record: Any) -> list[str]:
    """What keeps ``record`` from being a valid EEE 0.3.0 record as far as we can tell without the package:
    the schema's required fields, its enums, string-only detail maps, finite numbers, bounds for continuous
    metrics and a score inside them. Empty when none."""
    problems: list[str] = []
    if not isinstance(record, dict):
        return ["the record is not a JSON object"]

    def at(obj: Any, path: str) -> list[tuple[str, Any]]:
        found = [("", obj)]
        for part in [p for p in path.split(".") if p]:
            nxt = []
            for where, o in found:
                name, many = (part[:-2], True) if part.endswith("[]") else (part, False)
                v = o.get(name) if isinstance(o, dict) else None
                if many and isinstance(v, list):
                    nxt += [(f"{where}{name}[{i}].", x) for i, x in enumerate(v)]
                elif v is not None and not many:
                    nxt.append((f"{where}{name}.", v))
            found = nxt
        return found

    for path, fields in REQUIRED_FIELDS.items():
        for where, obj in at(record, path):
            if not isinstance(obj, dict):
                problems.append(f"{where or '(root)'}: not an object")
                continue
            problems += [f"{where}{f}: required field missing" for f in fields if f not in obj]
    for path, allowed in _ENUMS.items():
        head, _, leaf = path.rpartition(".")
        for where, obj in at(record, head):
            if isinstance(obj, dict) and leaf in obj and obj[leaf] not in allowed:
                problems.append(f"{where}{leaf}: {obj[leaf]!r} is not one of {allowed}")
    results = record.get("evaluation_results")
    if not isinstance(results, list) or not results:
        problems.append("evaluation_results: no result")
        results = []
    for i, r in enumerate(results):
        if not isinstance(r, dict):
            continue
        mc = r.get("metric_config") or {}
        if mc.get("score_type") == "continuous" and ("min_score" not in mc or "max_score" not in mc):
            problems.append(f"evaluation_results[{i}].metric_config: continuous needs min_score and max_score")
        score = (r.get("score_details") or {}).get("score")
        if _finite(score) is None:
            problems.append(f"evaluation_results[{i}].score_details.score: {score!r} is not a finite number")
        else:
            lo, hi = (_unbound(mc.get("min_score"), -INF), _unbound(mc.get("max_score"), INF))
            if not lo <= score <= hi:
                problems.append(f"evaluation_results[{i}]: score {score} outside [{lo}, {hi}]")

    def scan(obj: Any, where: str) -> None:
        if isinstance(obj, dict):
            for k, v in obj.items():
                if k in _STRING_MAPS and isinstance(v, dict):
                    bad = [kk for kk, vv in v.items() if not isinstance(vv, str) and not isinstance(vv, dict)]
                    problems.extend(f"{where}{k}.{kk}: details values must be strings" for kk in bad)
                scan(v, f"{where}{k}.")
        elif isinstance(obj, list):
            for i, v in enumerate(obj):
                scan(v, f"{where}[{i}].")
        elif isinstance(obj, float) and not math.isfinite(obj):
            problems.append(f"{where.rstrip('.')}: {obj!r} is not finite (strict JSON has no NaN/Infinity)")

    scan(record, "")
    return problems


def _unbound(x: Any, default: float) -> float:
    if x == "Infinity":
        return INF
    if x == "-Infinity":
        return -INF
    return float(x) if _finite(x) is not None else default


def _file_uuid(model_id: str, entry: _Entry) -> str:
    """A uuid4-shaped name fixed by the model, the task and the results file (re-exports overwrite)."""
    digest = hashlib.sha256(f"{model_id}\n{entry.name}\n{entry.results_file.name}".encode()).digest()
    return str(uuid.UUID(bytes=digest[:16], version=4))


def _data_root(out: Path) -> Path:
    return out if out.name == "data" else out / "data"


def records_of_run(run: str | Path, *, model_id: str | None = None, relationship: str = "third_party",
                   organisation: str = "", retrieved: str | None = None) -> tuple[list[tuple[str, dict]], ExportResult]:
    """The records of one run (folder or results file) without writing them: [(task, record)], and the notes."""
    res = ExportResult(out=Path("."))
    entries = _entries(_results_files(Path(run)), res.notices)
    if not entries:
        raise ExportError(f"{run}: no safespace task in its results; nothing to export.")
    retrieved = retrieved or str(int(time.time()))
    models = {}
    for e in entries.values():
        models.setdefault(_model_name(e.doc), []).append(e)
    out = []
    for run_model, items in models.items():
        mid = resolve_model_id(run_model, model_id)
        for e in items:
            rec = _record(e, mid, run_model, retrieved, relationship, organisation, res.left_out)
            if rec is None:
                res.notices.append(f"{e.results_file.name}: {e.name} has no metric with a finite value; no record.")
                continue
            out.append((e, rec))
    return out, res


def export_eee(runs: Sequence[str | Path], out: str | Path = "eee", *, model_id: str | None = None,
               relationship: str = "third_party", organisation: str = "") -> ExportResult:
    """Write the EEE records of ``runs`` under ``out``; see the module docstring."""
    if relationship not in RELATIONSHIPS:
        raise ExportError(f"evaluator relationship {relationship!r} is not one of {', '.join(RELATIONSHIPS)}.")
    if not runs:
        raise ExportError("give at least one RUN (an --output_path folder, a model folder or a results_*.json).")
    names = {_model_name(e.doc) for r in runs for e in _entries(_results_files(Path(r)), []).values()}
    if model_id is not None and len(names) > 1:
        raise ExportError(f"--model-id names one model but the runs hold {len(names)} ({', '.join(sorted(names))}); "
                          "export them one at a time.")
    result = ExportResult(out=Path(out))
    root = _data_root(Path(out))
    retrieved = str(int(time.time()))
    for run in runs:
        pairs, part = records_of_run(run, model_id=model_id, relationship=relationship, organisation=organisation,
                                     retrieved=retrieved)
        result.notices += part.notices
        result.left_out += part.left_out
        for entry, record in pairs:
            problems = check_record(record)
            if problems:  # our own bug: never write a record we know to be invalid
                raise RuntimeError(f"{entry.name}: the EEE record is invalid: " + "; ".join(problems[:5]))
            org, _, model = record["model_info"]["id"].partition("/")
            name = f"{_file_uuid(record['model_info']['id'], entry)}.json"
            path = root / entry.name / org / model.replace("/", "_") / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(record, indent=2, ensure_ascii=False, allow_nan=False) + "\n", encoding="utf-8")
            result.records.append(path)
    return result
