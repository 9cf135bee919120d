"""Dose-response: one base model and checkpoints along one training run, read from a report summary.

The numbers are the report's own (:mod:`safespace_tasks.report.summary`): per family, metric and
language the value of each model with its standard error, and per checkpoint the gain over the
base with the report's interval (paired bootstrap when both runs saved states for the same texts),
the mean gain over languages and the English-minus-rest gain with theirs. Nothing is recomputed
here; this module only lines them up by dose and draws them.

A *dose* is a checkpoint's place along training: ``{"label", "epochs", "steps"}``; dose 0 is the
base model itself (its gain is 0 by definition and carries no interval).
"""

from __future__ import annotations

import math
from pathlib import Path
from statistics import NormalDist
from typing import Any, Sequence

__all__ = ["dose_response", "plot_dose_response", "DoseInputError"]


class DoseInputError(ValueError):
    """The summary does not hold what a dose-response needs (the message says what is missing)."""


def _num(x: Any) -> float | None:
    return None if x is None or not isinstance(x, (int, float)) or not math.isfinite(x) else float(x)


def _interval(value: float | None, se: float | None, z: float) -> list[float] | None:
    if value is None or se is None:
        return None
    return [value - z * se, value + z * se]


def dose_response(summary: dict, base: str, doses: Sequence[dict]) -> dict[str, Any]:
    """Per family and metric: each language's value, gain and interval at each dose, and the mean and
    English-minus-rest gain at each dose.

    ``summary``: the report's ``summary.json`` content, made with ``base`` as the base run and every
    other dose's ``label`` as an aligned run. ``doses``: in training order; a dose whose ``steps`` is
    0 is the base model (its label may be ``base``). The value interval is ``value ± z·se`` (the run's
    bootstrap standard error, normal interval at the summary's level); gain intervals are the report's.
    """
    models = summary.get("models") or {}
    if base not in models:
        raise DoseInputError(f"the summary has no model labelled {base!r} (it has {', '.join(models) or 'none'})")
    z = NormalDist().inv_cdf(0.5 + float(summary.get("ci_level", 0.95)) / 2.0)
    gains = {g["aligned"]: g for g in summary.get("gains", []) if g.get("base") == base}
    labels = []
    for d in doses:
        label = base if d.get("steps", 0) == 0 else d["label"]
        if label != base and (label not in models or label not in gains):
            raise DoseInputError(f"dose {d['label']!r} has no run or no gain over {base!r} in the summary: "
                                 "make the report with that run as --aligned and the base as --base")
        labels.append(label)
    out_doses = [{"label": d["label"], "epochs": d.get("epochs"), "steps": d.get("steps")} for d in doses]
    families: dict[str, Any] = {}
    for fam, entry in models[base]["families"].items():
        langs = entry["languages"]
        fam_out: dict[str, Any] = {}
        for metric in entry["metrics"]:
            per_lang: dict[str, list] = {lang: [] for lang in langs}
            mean, gap = [], []
            for d, label in zip(doses, labels):
                m = models[label]["families"].get(fam, {}).get("metrics", {}).get(metric, {})
                g = None if label == base else gains[label]["families"].get(fam, {}).get(metric)
                for lang in langs:
                    value = _num(m.get("per_language", {}).get(lang))
                    se = _num(m.get("stderr", {}).get(lang))
                    row: dict[str, Any] = {"dose": d["label"], "value": value, "se": se, "ci": _interval(value, se, z)}
                    if label == base:
                        row.update(gain=0.0, gain_se=None, gain_ci=None, method="base")
                    else:
                        gl = (g or {}).get("per_language", {}).get(lang) or {}
                        row.update(gain=_num(gl.get("gain")), gain_se=_num(gl.get("se")), gain_ci=gl.get("ci"),
                                   method=gl.get("method"))
                    per_lang[lang].append(row)
                for store, key in ((mean, "mean"), (gap, "english_minus_rest")):
                    if label == base:
                        store.append({"dose": d["label"], "value": 0.0, "se": None, "ci": None})
                    else:
                        agg = (g or {}).get(key) or {}
                        store.append({"dose": d["label"], "value": _num(agg.get("value")), "se": _num(agg.get("se")),
                                      "ci": agg.get("ci"), "languages": agg.get("languages", [])})
            fam_out[metric] = {"per_language": per_lang, "mean_gain": mean, "english_minus_rest_gain": gap}
        families[fam] = fam_out
    return {"base": base, "ci_level": summary.get("ci_level", 0.95), "doses": out_doses, "families": families}


def plot_dose_response(table: dict, out_dir: Path, *, english: str = "en") -> list[Path]:
    """One PNG per family (``dose_response_<family>.png``), a panel per metric: the gain against the
    dose in epochs, one thin line per language and English thick with its interval shaded.
    Returns the files written; none (and no error) when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    x = [d["epochs"] if d.get("epochs") is not None else d.get("steps") for d in table["doses"]]
    unit = "epochs" if all(d.get("epochs") is not None for d in table["doses"]) else "steps"
    written = []
    for fam, metrics in table["families"].items():
        names = list(metrics)
        if not names:
            continue
        cols = min(3, len(names))
        rows = math.ceil(len(names) / cols)
        fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows), squeeze=False)
        for ax, metric in zip(axes.flat, names):
            per_lang = metrics[metric]["per_language"]
            for lang, pts in per_lang.items():
                ys = [p["gain"] if p["gain"] is not None else float("nan") for p in pts]
                if lang == english:
                    continue
                ax.plot(x, ys, color="0.65", lw=0.9, marker=".", ms=3)
            if english in per_lang:
                pts = per_lang[english]
                ys = [p["gain"] if p["gain"] is not None else float("nan") for p in pts]
                lo = [p["gain_ci"][0] if p.get("gain_ci") else y for p, y in zip(pts, ys)]
                hi = [p["gain_ci"][1] if p.get("gain_ci") else y for p, y in zip(pts, ys)]
                ax.fill_between(x, lo, hi, color="tab:red", alpha=0.18, lw=0)
                ax.plot(x, ys, color="tab:red", lw=2.2, marker="o", ms=4, label=f"{english} (95 % paired interval)")
            ax.axhline(0.0, color="black", lw=0.6)
            ax.set_title(metric, fontsize=9)
            ax.set_xlabel(f"dose ({unit})", fontsize=8)
            ax.set_ylabel("gain vs base", fontsize=8)
            ax.tick_params(labelsize=7)
        for ax in list(axes.flat)[len(names):]:
            ax.axis("off")
        handles, labels = axes.flat[0].get_legend_handles_labels()
        handles.append(plt.Line2D([], [], color="0.65", lw=0.9))
        labels.append("other languages")
        fig.legend(handles, labels, loc="lower center", ncol=2, fontsize=8, frameon=False)
        fig.suptitle(f"{fam}: gain against dose", fontsize=10)
        fig.tight_layout(rect=(0, 0.06, 1, 0.96))
        path = out_dir / f"dose_response_{fam}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written
