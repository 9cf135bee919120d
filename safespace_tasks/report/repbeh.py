"""Representation vs behaviour, per language: does a language that separates also refuse?

x (representation) and y (behaviour) are matched by language code:

- x: ``toxicity`` ``probe_auroc`` (toxic vs non-toxic texts; 15 languages, of which en, zh, it, ar are
  MultiJail languages) and ``direction`` ``direction_gap`` (harmful MultiJail requests vs the English
  harmless control, all 10 MultiJail languages; outside English it also separates a language from
  English, so read it across models, not across languages);
- y: the refusal family's ``refusal_margin`` (nats) and ``refusal_margin_positive`` (share of
  requests whose refusal opening is the more likely one), 10 MultiJail languages.

Per model: one table (a row per MultiJail language the run has, every x and y with its stderr) and one
picture (a panel per x-y combination with at least one language, whiskers ``+- z * SE`` both ways).
Per base/aligned pair: the change of each with the report's gain interval, and a picture of arrows
from the base model's point to the aligned model's, per language.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from safespace_tasks.report.compare import INDEPENDENT, Comparison

__all__ = ["Axis", "X_AXES", "Y_AXES", "axes_of", "has_view", "model_table", "pair_table", "plot_model", "plot_pair"]


@dataclass(frozen=True)
class Axis:
    family: str
    metric: str
    title: str


X_AXES = (
    Axis("toxicity", "probe_auroc", "toxicity probe AUROC"),
    Axis("direction", "direction_gap", "direction gap (harmful − harmless)"),
)
Y_AXES = (
    Axis("refusal-margin", "refusal_margin", "refusal margin (nats)"),
    Axis("refusal-margin", "refusal_margin_positive", "refusal margin > 0 (share)"),
)


def _axis(comp: Comparison, ax: Axis) -> Axis | None:
    if ax.family not in comp.families:
        return None
    if ax.metric in comp.metrics[ax.family]:
        return ax
    return None


def axes_of(comp: Comparison) -> tuple[list[Axis], list[Axis]]:
    xs = [a for a in (_axis(comp, x) for x in X_AXES) if a]
    ys = [a for a in (_axis(comp, y) for y in Y_AXES) if a]
    return xs, ys


def _languages(comp: Comparison, label: str, xs: list[Axis], ys: list[Axis]) -> list[str]:
    """The behaviour family's languages the run has, in the report's order."""
    fams = {y.family for y in ys}
    out = []
    for fam in fams:
        for lang in comp.languages[fam]:
            if comp.task(label, fam, lang) is not None and lang not in out:
                out.append(lang)
    return out


def has_view(comp: Comparison, label: str) -> bool:
    xs, ys = axes_of(comp)
    run = comp.run(label)
    return any(x.family in run.families for x in xs) and any(y.family in run.families for y in ys)


def _m(comp: Comparison, label: str, ax: Axis, lang: str):
    m = comp.measurement(label, ax.family, lang, ax.metric)
    return None if m is None or not math.isfinite(m.value) else m


def model_table(comp: Comparison, label: str):
    from safespace_tasks.report.tables import MISSING, Table, fmt

    xs, ys = axes_of(comp)
    langs = _languages(comp, label, xs, ys)
    t = Table(name=f"repr_vs_behaviour_{label}", title=f"{label} · representation vs behaviour per language",
              columns=["language", *(a.title for a in xs), *(a.title for a in ys)])
    for lang in langs:
        row, rec = [lang], {"language": lang}
        for a in (*xs, *ys):
            m = _m(comp, label, a, lang)
            row.append(MISSING if m is None else (fmt(m.value) if m.stderr is None else f"{fmt(m.value)} ± {fmt(m.stderr)}"))
            rec[f"{a.family} {a.metric}"] = None if m is None else m.value
            rec[f"{a.family} {a.metric} stderr"] = None if m is None else m.stderr
        t.rows.append(row)
        t.records.append(rec)
    t.notes.append(_overlap_note(comp, label, xs, langs))
    return t


def _overlap_note(comp: Comparison, label: str, xs: list[Axis], langs: list[str]) -> str:
    parts = []
    for a in xs:
        have = [lang for lang in langs if _m(comp, label, a, lang) is not None]
        parts.append(f"{a.title}: {', '.join(have) if have else 'none'}")
    return ("Languages matched by code; x measured in " + "; ".join(parts) + ". ± is the run's stderr. The "
            "direction gap compares harmful requests in the language with an English harmless control: outside "
            "English it also measures language, so compare it across models, not across languages.")


def pair_table(comp: Comparison, pair: tuple[str, str]):
    from safespace_tasks.report.tables import MISSING, Table, fmt

    b, a = pair
    xs, ys = axes_of(comp)
    langs = [lang for lang in _languages(comp, a, xs, ys) if lang in _languages(comp, b, xs, ys)]
    t = Table(name=f"repr_vs_behaviour_{a}_vs_{b}", title=f"change {a} − {b} · representation vs behaviour",
              columns=["language", *(f"Δ {x.title}" for x in (*xs, *ys))])
    independent = False
    for lang in langs:
        row, rec = [lang], {"language": lang}
        for ax in (*xs, *ys):
            g = comp.gain(pair, ax.family, lang, ax.metric)
            if g is None or not math.isfinite(g.value):
                row.append(MISSING)
                rec.update({f"{ax.family} {ax.metric}": None})
                continue
            text = fmt(g.value, signed=True)
            if g.low is not None:
                text += f" [{fmt(g.low)}, {fmt(g.high)}]"
            if g.method == INDEPENDENT:
                text += "*"
                independent = True
            row.append(text)
            rec.update({f"{ax.family} {ax.metric}": g.value, f"{ax.family} {ax.metric} low": g.low,
                        f"{ax.family} {ax.metric} high": g.high, f"{ax.family} {ax.metric} method": g.method})
        t.rows.append(row)
        t.records.append(rec)
    t.notes.append(f"Δ = {a} − {b} with the report's {comp.ci_level:.0%} gain interval (the same numbers as the "
                   "family tables)" + ("; * independent interval" if independent else "") + ".")
    return t


# --------------------------------------------------------------------------- pictures

PANEL = (330, 300)


def _panels(comp: Comparison, labels: list[str]) -> list[tuple[Axis, Axis]]:
    xs, ys = axes_of(comp)
    out = []
    for y in ys:
        for x in xs:
            for lab in labels:
                if any(_m(comp, lab, x, lang) and _m(comp, lab, y, lang) for lang in _languages(comp, lab, xs, ys)):
                    out.append((x, y))
                    break
    return out


def _figure(n: int, title: str):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from safespace_tasks.report.plots import DPI, HEADER_PX

    cols = min(n, 2)
    rows = math.ceil(n / cols)
    w, h = cols * PANEL[0], rows * PANEL[1] + HEADER_PX
    fig = Figure(figsize=(w / DPI, h / DPI), dpi=DPI)
    FigureCanvasAgg(fig)
    axes = []
    for k in range(n):
        r, c = divmod(k, cols)
        x0 = c * PANEL[0] + 56
        y0 = h - HEADER_PX - (r + 1) * PANEL[1] + 40
        axes.append(fig.add_axes((x0 / w, y0 / h, (PANEL[0] - 70) / w, (PANEL[1] - 64) / h)))
    fig.text(0.01, 1 - 8 / h, title, ha="left", va="top", fontsize=10, weight="bold")
    return fig, axes


def _save(fig, path: Path) -> Path:
    from safespace_tasks.report.plots import DPI

    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI, format="png", metadata={"Software": "safespace-tasks report"})
    return path


def _point(comp, lab, x, y, lang):
    mx, my = _m(comp, lab, x, lang), _m(comp, lab, y, lang)
    if mx is None or my is None:
        return None
    ex = comp.z * mx.stderr if mx.stderr is not None else np.nan
    ey = comp.z * my.stderr if my.stderr is not None else np.nan
    return mx.value, my.value, ex, ey


def plot_model(comp: Comparison, label: str, path: Path) -> Path | None:
    """x = separation of each language, y = its refusal; whiskers ± z SE both ways."""
    from safespace_tasks.report.plots import MODEL_COLORS

    panels = _panels(comp, [label])
    if not panels:
        return None
    xs, ys = axes_of(comp)
    langs = _languages(comp, label, xs, ys)
    fig, axes = _figure(len(panels), f"{label}: separation (x) vs refusal (y), {comp.ci_level:.0%} whiskers")
    color = MODEL_COLORS[comp.labels.index(label) % len(MODEL_COLORS)]
    for ax, (x, y) in zip(axes, panels):
        for lang in langs:
            p = _point(comp, label, x, y, lang)
            if p is None:
                continue
            ax.errorbar(p[0], p[1], xerr=p[2], yerr=p[3], fmt="o", color=color, ms=4, elinewidth=0.8, capsize=2)
            ax.annotate(lang, (p[0], p[1]), textcoords="offset points", xytext=(4, 4), fontsize=8)
        _style(ax, x, y)
    return _save(fig, path)


def plot_pair(comp: Comparison, pair: tuple[str, str], path: Path) -> Path | None:
    """Arrows from the base model's (x, y) to the aligned model's, per language; whiskers on both ends."""
    b, a = pair
    panels = _panels(comp, [b]) and [p for p in _panels(comp, [a]) if p in _panels(comp, [b])]
    if not panels:
        return None
    xs, ys = axes_of(comp)
    langs = [lang for lang in _languages(comp, a, xs, ys) if lang in _languages(comp, b, xs, ys)]
    fig, axes = _figure(len(panels), f"{b} → {a}: separation (x) vs refusal (y), {comp.ci_level:.0%} whiskers")
    for ax, (x, y) in zip(axes, panels):
        for lang in langs:
            pb, pa = _point(comp, b, x, y, lang), _point(comp, a, x, y, lang)
            if pb is None or pa is None:
                continue
            for p, col in ((pb, "#999999"), (pa, "#c44e52")):
                ax.errorbar(p[0], p[1], xerr=p[2], yerr=p[3], fmt="o", color=col, ms=3.5, elinewidth=0.7, capsize=2)
            ax.annotate("", xy=(pa[0], pa[1]), xytext=(pb[0], pb[1]),
                        arrowprops={"arrowstyle": "->", "color": "#333333", "lw": 1.0})
            ax.annotate(lang, (pa[0], pa[1]), textcoords="offset points", xytext=(4, 4), fontsize=8)
        _style(ax, x, y)
    from matplotlib.lines import Line2D

    from safespace_tasks.report.plots import DPI

    height = fig.get_figheight() * DPI  # the legend goes on a line of its own under the title
    fig.legend([Line2D([], [], marker="o", ls="", color="#999999"), Line2D([], [], marker="o", ls="", color="#c44e52")],
               [f"{b} (base)", f"{a} (aligned)"], loc="upper left", bbox_to_anchor=(0.0, 1 - 24 / height), fontsize=8,
               frameon=False, ncol=2)
    return _save(fig, path)


def _style(ax, x: Axis, y: Axis) -> None:
    ax.set_xlabel(f"{x.title} [{x.family}]", fontsize=8)
    ax.set_ylabel(y.title, fontsize=8)
    ax.tick_params(labelsize=7)
    ax.grid(alpha=0.3)
    if x.metric == "probe_auroc":
        ax.axvline(0.5, color="#888888", lw=0.6, ls=":")
    if y.metric == "refusal_margin_positive":
        ax.axhline(0.5, color="#888888", lw=0.6, ls=":")
