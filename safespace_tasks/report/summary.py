"""The leaderboard summary: a small JSON document with a fixed shape.

::

    {
      "format": "safespace-report-summary", "format_version": 1, "generated_by": "safespace-tasks X",
      "ci_level": 0.95,
      "models": {
        LABEL: {
          "model_name": ..., "results_files": [...], "lm_eval_version": ...,
          "families": {
            FAMILY: {
              "languages": [...],
              "metrics": {
                METRIC: {
                  "per_language": {LANG: value},         # the results JSON's numbers
                  "stderr": {LANG: se},
                  "mean": {"value", "languages", "source", ["se"]},
                  "mean_shared": {...},                  # over the languages all models have
                  "english_minus_rest": {"value", "languages", "source"}
                }}}}}},
      "gains": [{"base": LABEL, "aligned": LABEL, "families": {FAMILY: {METRIC: {
                  "per_language": {LANG: {"gain", "se", "ci", "method", ...}},
                  "mean": {...}, "english_minus_rest": {...}}}}}],
      "layers": {LABEL: {FAMILY: {METRIC: {LANG: {LAYER: value}}}}},   # only where a layer sweep exists
      "notices": [{"level", "text"}]
    }

NaN and missing numbers are ``null``; the file is strict JSON.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from safespace_tasks.report.compare import Comparison

__all__ = ["build_summary", "write_summary", "SUMMARY_FORMAT", "SUMMARY_VERSION"]

SUMMARY_FORMAT = "safespace-report-summary"
SUMMARY_VERSION = 1


def _num(x: float | None) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)


def _clean(x: Any) -> Any:
    """JSON without NaN: non-finite numbers become null, recursively."""
    if isinstance(x, dict):
        return {k: _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    if isinstance(x, float):
        return _num(x)
    return x


def build_summary(comp: Comparison, sweeps: dict | None = None) -> dict[str, Any]:
    from safespace_tasks import __version__

    models: dict[str, Any] = {}
    for run in comp.runs:
        fams: dict[str, Any] = {}
        for fam in comp.families:
            if fam not in run.families:
                continue
            langs = [lang for lang in comp.languages[fam] if run.task_for(fam, lang) is not None]
            shared = comp.shared_languages(fam)
            metrics: dict[str, Any] = {}
            for metric in comp.metrics[fam]:
                per_lang, stderr = {}, {}
                for lang in langs:
                    m = comp.measurement(run.label, fam, lang, metric)
                    if m is not None:
                        per_lang[lang] = _num(m.value)
                        stderr[lang] = _num(m.stderr)
                entry = {
                    "per_language": per_lang,
                    "stderr": stderr,
                    "mean": comp.mean(run.label, fam, metric).to_dict(),
                    "english_minus_rest": comp.english_minus_rest(run.label, fam, metric).to_dict(),
                }
                if shared != langs:
                    entry["mean_shared"] = comp.mean(run.label, fam, metric, shared).to_dict()
                metrics[metric] = entry
            fams[fam] = {"languages": langs, "metrics": metrics}
        models[run.label] = {
            "model_name": run.model_name,
            "results_files": [str(f) for f in run.results_files],
            "lm_eval_version": run.lm_eval_version,
            "families": fams,
        }
    gains = []
    for pair in comp.pairs:
        fams = {}
        for fam in comp.families:
            metrics = {}
            for metric in comp.metrics[fam]:
                per_lang = {
                    lang: g.to_dict() for lang in comp.languages[fam] if (g := comp.gain(pair, fam, lang, metric))
                }
                if not per_lang:
                    continue
                metrics[metric] = {
                    "per_language": per_lang,
                    "mean": comp.mean_gain(pair, fam, metric).to_dict(),
                    "english_minus_rest": comp.english_minus_rest_gain(pair, fam, metric).to_dict(),
                }
            if metrics:
                fams[fam] = metrics
        gains.append({"base": pair[0], "aligned": pair[1], "families": fams})
    layers: dict[str, Any] = {}
    for run in comp.runs:
        for fam in comp.families:
            for metric, keys in comp.layer_metrics[fam].items():
                for lang in comp.languages[fam]:
                    task = run.task_for(fam, lang)
                    if task is None:
                        continue
                    points = {}
                    for key in keys:
                        m, layer = task.metrics.get(key), task.layer_of(key)
                        if m is not None and layer is not None:
                            points[str(layer)] = _num(m.value)
                    if len(points) > 1:
                        layers.setdefault(run.label, {}).setdefault(fam, {}).setdefault(metric, {})[lang] = points
    out: dict[str, Any] = {
        "format": SUMMARY_FORMAT,
        "format_version": SUMMARY_VERSION,
        "generated_by": f"safespace-tasks {__version__}",
        "ci_level": comp.ci_level,
        "models": models,
        "gains": gains,
    }
    if layers:
        out["layers"] = layers
    if sweeps:  # the per-layer arrays: every language of a run, ascending hidden-state indices
        arrays: dict[str, Any] = {}
        for (lab, fam, metric), sw in sweeps.items():
            arrays.setdefault(lab, {}).setdefault(fam, {})[metric] = {
                "n_layers": sw["n_layers"], "layers": list(sw["layers"]),
                "languages": {lang: [_num(v) if v is not None else None for v in e["values"]]
                              for lang, e in sw["languages"].items()},
            }
        out["layer_arrays"] = arrays
    transfer = {r.label: r.transfer for r in comp.runs if r.transfer}
    if transfer:
        out["transfer"] = _clean(transfer)
    out["notices"] = [{"level": n.level, "text": n.text} for n in comp.notices]
    return out


def write_summary(comp: Comparison, path: Path, sweeps: dict | None = None) -> Path:
    """``sweeps``: (run label, family, metric) -> sweep dict (``report.layers`` form) for ``layer_arrays``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(build_summary(comp, sweeps), indent=2, ensure_ascii=False, allow_nan=False) + "\n", encoding="utf-8")
    return path
