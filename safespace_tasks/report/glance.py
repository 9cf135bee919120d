"""One model at a glance: languages x metrics as a heat map of each value against its null floor.

The cell's colour and number are ``(value - null) / SE``: how many of the run's own standard errors the
metric lies above what shuffled labels give at this sample size (``<metric>_null``), so metrics of
different units share one scale. ``*`` marks the languages whose permutation p-value
(``<metric>_p``) is below 0.05. Where the run has no permutation floor for a metric (``probe_auroc``
by default: ``probe_permutations`` is 0) the reference is the metric's chance level from
:data:`CHANCE` (AUROC 0.5), marked ``°``, with no p-value. A cell is empty (grey) when the value,
the reference or the SE is missing, or the SE is 0.

Only metrics that have a null floor or a chance level are shown (the separation families); the
dense per-metric tables stay below the picture.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from safespace_tasks.report.compare import Comparison

__all__ = ["CHANCE", "ALPHA", "CLIP", "Glance", "glance", "glance_table", "plot_glance"]

CHANCE = {"probe_auroc": 0.5}
ALPHA = 0.05
CLIP = 4.0  # colour scale: -CLIP .. +CLIP standard errors (the number in the cell is not clipped)


@dataclass
class Glance:
    label: str
    family: str
    languages: list[str]
    metrics: list[str]
    score: np.ndarray  # (languages, metrics): (value - reference) / SE, NaN where it cannot be computed
    reference: np.ndarray  # the null (or chance) value used
    p: np.ndarray  # permutation p-value, NaN where none
    chance_used: list[str] = field(default_factory=list)  # metrics whose reference is the chance level


def glance(comp: Comparison, label: str, family: str) -> Glance | None:
    """The heat map's numbers for one model and family; None when no metric has a null or a chance level."""
    langs = [lang for lang in comp.languages[family] if comp.task(label, family, lang) is not None]
    metrics = []
    for m in comp.metrics[family]:
        has_null = any(
            (n := comp.measurement(label, family, lang, f"{m}_null")) is not None and math.isfinite(n.value)
            for lang in langs
        )
        if has_null or m in CHANCE:
            metrics.append(m)
    if not langs or not metrics:
        return None
    score = np.full((len(langs), len(metrics)), np.nan)
    ref = np.full_like(score, np.nan)
    pv = np.full_like(score, np.nan)
    chance_used: set[str] = set()
    for i, lang in enumerate(langs):
        for j, m in enumerate(metrics):
            v = comp.measurement(label, family, lang, m)
            n = comp.measurement(label, family, lang, f"{m}_null")
            p = comp.measurement(label, family, lang, f"{m}_p")
            if n is not None and math.isfinite(n.value):
                r = n.value
                if p is not None and math.isfinite(p.value):
                    pv[i, j] = p.value
            elif m in CHANCE:
                r = CHANCE[m]
                chance_used.add(m)
            else:
                continue
            ref[i, j] = r
            if v is None or not math.isfinite(v.value) or v.stderr is None or not v.stderr > 0:
                continue
            score[i, j] = (v.value - r) / v.stderr
    return Glance(label, family, langs, metrics, score, ref, pv, [m for m in metrics if m in chance_used])


def _cell_text(g: Glance, i: int, j: int) -> str:
    s = g.score[i, j]
    if not math.isfinite(s):
        return "—"
    mark = "*" if math.isfinite(g.p[i, j]) and g.p[i, j] < ALPHA else ""
    if g.metrics[j] in g.chance_used and not math.isfinite(g.p[i, j]):
        mark += "°"
    return f"{s:+.1f}".replace("-", "−") + mark


def glance_table(g: Glance):
    """The heat map as a table (display text per cell; score, reference and p at full precision in records)."""
    from safespace_tasks.report.tables import Table

    t = Table(name=f"{g.family}_vs_null_{g.label}", title=f"{g.label} · {g.family} · (value − null) / SE",
              columns=["language", *g.metrics])
    for i, lang in enumerate(g.languages):
        t.rows.append([lang, *(_cell_text(g, i, j) for j in range(len(g.metrics)))])
        rec = {"language": lang}
        for j, m in enumerate(g.metrics):
            rec[m] = float(g.score[i, j]) if math.isfinite(g.score[i, j]) else None
            rec[f"{m} reference"] = float(g.reference[i, j]) if math.isfinite(g.reference[i, j]) else None
            rec[f"{m} p"] = float(g.p[i, j]) if math.isfinite(g.p[i, j]) else None
        t.records.append(rec)
    t.notes.append(_note(g))
    return t


def _note(g: Glance) -> str:
    text = (f"Each cell: (value − null) / SE, the metric's distance above its null floor (<metric>_null, its mean "
            f"under shuffled labels) in the run's own standard errors; * permutation p < {ALPHA:g}.")
    if g.chance_used:
        text += (f" ° {', '.join(g.chance_used)}: no permutation floor in this run, the reference is the chance "
                 f"level ({', '.join(f'{m} {CHANCE[m]:g}' for m in g.chance_used)}) and there is no p-value.")
    return text


def plot_glance(g: Glance, path: Path) -> Path:
    """Heat map PNG: rows = languages, columns = metrics, diverging colours clipped at ±CLIP SE."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from safespace_tasks.report.plots import DPI, metric_title

    n_lang, n_met = g.score.shape
    width = max(4.6, 1.25 * n_met + 2.4)
    height = 0.32 * n_lang + 1.9
    fig = Figure(figsize=(width, height), dpi=DPI)
    FigureCanvasAgg(fig)
    ax = fig.add_axes((1.0 / width, 0.75 / height, (width - 2.2) / width, (height - 1.55) / height))
    data = np.ma.masked_invalid(g.score)
    import matplotlib

    cmap = matplotlib.colormaps["RdBu_r"].with_extremes(bad="#dddddd")
    im = ax.imshow(data, cmap=cmap, vmin=-CLIP, vmax=CLIP, aspect="auto", interpolation="nearest")
    ax.set_xticks(range(n_met), [metric_title(m) for m in g.metrics], fontsize=7, rotation=15)
    ax.set_yticks(range(n_lang), g.languages, fontsize=8)
    for i in range(n_lang):
        for j in range(n_met):
            s = g.score[i, j]
            color = "white" if math.isfinite(s) and abs(s) > 0.6 * CLIP else "black"
            ax.text(j, i, _cell_text(g, i, j), ha="center", va="center", fontsize=7, color=color,
                    weight="bold" if "*" in _cell_text(g, i, j) else "normal")
    cax = fig.add_axes(((width - 1.0) / width, 0.75 / height, 0.15 / width, (height - 1.55) / height))
    cb = fig.colorbar(im, cax=cax)
    cb.set_label("(value − null) / SE", fontsize=7)
    cb.ax.tick_params(labelsize=7)
    fig.text(0.01, 1 - 0.12 / height, f"{g.label}: {g.family} against its null floor", ha="left", va="top",
             fontsize=10, weight="bold")
    fig.text(0.01, 1 - 0.36 / height, f"* permutation p < {ALPHA:g}" + ("; ° reference = chance level, no p"
                                                                         if g.chance_used else ""),
             ha="left", va="top", fontsize=7, color="#444444")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI, format="png", metadata={"Software": "safespace-tasks report"})
    return path
