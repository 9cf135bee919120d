"""The report's pictures, as PNG files of a fixed size (matplotlib, object API, Agg canvas).

- values per language: one panel per metric, a bar per model and language with its interval;
- gain per language: one panel per metric, ``aligned - base`` with its interval;
- PCA scatter grid: toxic vs non-toxic states projected on their first two principal components,
  fitted per model and language (the paper's picture); one panel per language and model;
- layer sweep: a metric against the hidden-state index, one panel per language, a line per model.

Figures are built in pixels: every panel is ``PANEL_PX`` and the header strip ``HEADER_PX`` high,
so a grid of ``r x c`` panels is exactly ``(c * w, r * h + header)`` pixels at ``DPI``. No pyplot:
nothing global changes and no display is needed.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Callable

import numpy as np

from safespace_tasks import metric_table as mt
from safespace_tasks.report.compare import Comparison, PAIRED, has_interval
from safespace_tasks.report.runs import split_metric

__all__ = ["DPI", "PANEL_PX", "HEADER_PX", "MAX_COLUMNS", "grid_shape", "figure_pixels",
           "plot_values", "plot_gains", "plot_pca_grid", "plot_layer_sweep", "metric_title"]

DPI = 100
PANEL_PX = {"bars": (380, 300), "pca": (260, 250), "sweep": (300, 250)}
HEADER_PX = 60
MAX_COLUMNS = {"bars": 4, "pca": 6, "sweep": 5}
TOXIC = "#d62728"
NONTOXIC = "#1f77b4"
MODEL_COLORS = ["#4c72b0", "#dd8452", "#55a868", "#8172b3", "#937860", "#da8bc3", "#8c8c8c", "#ccb974"]

METRIC_TITLES = {m.name: m.title for m in mt.METRICS}  # from the metric table


def metric_title(metric: str) -> str:
    """The table's title of a metric (a metric of another source: its name with spaces)."""
    base, layer = split_metric(metric)
    title = METRIC_TITLES.get(base, base.replace("_", " "))
    return title if layer is None else f"{title} (layer {layer})"


def grid_shape(n_panels: int, kind: str) -> tuple[int, int]:
    """(rows, columns) of a wrapped grid of ``n_panels`` for a figure kind."""
    cols = max(1, min(n_panels, MAX_COLUMNS[kind]))
    return max(1, math.ceil(n_panels / cols)), cols


def figure_pixels(rows: int, cols: int, kind: str) -> tuple[int, int]:
    """Width and height in pixels of a figure of ``rows x cols`` panels of ``kind``."""
    w, h = PANEL_PX[kind]
    return cols * w, rows * h + HEADER_PX


# Inner padding of a panel in pixels (left, right, top, bottom): room for tick labels, title, axis label.
PANEL_PAD = {"bars": (52, 10, 24, 28), "pca": (22, 8, 22, 22), "sweep": (48, 10, 24, 36)}


def _figure(rows: int, cols: int, kind: str):
    """A figure of ``rows x cols`` panels laid out in fixed pixels (no layout engine: fast, exact)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    width, height = figure_pixels(rows, cols, kind)
    fig = Figure(figsize=(width / DPI, height / DPI), dpi=DPI)
    FigureCanvasAgg(fig)
    pw, ph = PANEL_PX[kind]
    left, right, top, bottom = PANEL_PAD[kind]
    axes = np.empty((rows, cols), dtype=object)
    for r in range(rows):
        for c in range(cols):
            x0 = c * pw + left
            y0 = height - HEADER_PX - (r + 1) * ph + bottom
            axes[r, c] = fig.add_axes((x0 / width, y0 / height, (pw - left - right) / width, (ph - top - bottom) / height))
    return fig, axes


def _save(fig, path: Path, title: str, legend: list | None = None) -> Path:
    height = fig.get_figheight() * DPI
    fig.text(0.01, 1 - 8 / height, title, ha="left", va="top", fontsize=11, weight="bold")
    if legend:
        handles, labels = zip(*legend)
        fig.legend(handles, labels, loc="upper right", bbox_to_anchor=(0.995, 1 - 4 / height), ncol=min(len(labels), 6),
                   fontsize=8, frameon=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI, format="png", metadata={"Software": "safespace-tasks report"})
    return path


def _fit_ylim(ax, values, lows, highs) -> bool:
    """Show every value; show whiskers unless one reaches past 3x the values' spread (then clip it there).

    Returns whether a whisker was clipped. A few unstable intervals (e.g. a Bhattacharyya distance
    on few texts) must not flatten every bar of the panel.
    """
    v = np.asarray([x for x in values if x is not None and np.isfinite(x)], dtype=float)
    if v.size == 0:
        return False
    lo_v, hi_v = min(0.0, float(v.min())), max(0.0, float(v.max()))
    spread = max(hi_v - lo_v, 1e-12)
    ends = np.asarray([x for x in (*lows, *highs) if x is not None and np.isfinite(x)], dtype=float)
    lo = min(lo_v, float(ends.min())) if ends.size else lo_v
    hi = max(hi_v, float(ends.max())) if ends.size else hi_v
    clipped = lo < lo_v - 3 * spread or hi > hi_v + 3 * spread
    lo, hi = max(lo, lo_v - 3 * spread), min(hi, hi_v + 3 * spread)
    pad = 0.05 * (hi - lo or spread)
    ax.set_ylim(lo - (pad if lo < 0 else 0), hi + pad)
    if clipped:
        ax.text(0.99, 0.01, "some whiskers clipped", transform=ax.transAxes, ha="right", va="bottom", fontsize=6,
                color="#666666")
    return clipped


def _hide_unused(axes, used: int) -> None:
    for ax in axes[used:]:
        ax.set_visible(False)


# --------------------------------------------------------------------------- bars


def _bar_panels(comp: Comparison, family: str, metrics: list[str], title: str, path: Path,
                draw: Callable) -> Path | None:
    if not metrics:
        return None
    rows, cols = grid_shape(len(metrics), "bars")
    fig, grid = _figure(rows, cols, "bars")
    axes = grid.ravel()
    legend: list = []
    for ax, metric in zip(axes, metrics):
        legend = draw(ax, metric) or legend
        ax.set_title(metric_title(metric), fontsize=9)
        ax.tick_params(labelsize=8)
        ax.grid(axis="y", alpha=0.3)
        ax.set_axisbelow(True)
    _hide_unused(list(axes), len(metrics))
    return _save(fig, path, title, legend)


def plot_values(comp: Comparison, family: str, path: Path) -> Path | None:
    """Each model's value per language with ``+- z * stderr`` whiskers (the run's bootstrap SE)."""
    langs = comp.languages[family]
    labels = comp.runs_with(family)
    width = 0.8 / max(1, len(labels))
    x = np.arange(len(langs))

    def draw(ax, metric):
        legend = []
        all_vals, all_lo, all_hi = [], [], []
        for i, lab in enumerate(labels):
            vals, errs = [], []
            for lang in langs:
                m = comp.measurement(lab, family, lang, metric)
                vals.append(np.nan if m is None else m.value)
                errs.append(np.nan if m is None or m.stderr is None else comp.z * m.stderr)
            color = MODEL_COLORS[comp.labels.index(lab) % len(MODEL_COLORS)]
            bars = ax.bar(x + (i - (len(labels) - 1) / 2) * width, vals, width, yerr=errs, color=color,
                          error_kw={"elinewidth": 0.8, "capsize": 2, "ecolor": "#333333"})
            legend.append((bars, lab))
            all_vals += vals
            all_lo += [v - e for v, e in zip(vals, errs)]
            all_hi += [v + e for v, e in zip(vals, errs)]
        ax.set_xticks(x, langs, fontsize=8)
        ax.axhline(0, color="black", linewidth=0.6)
        _fit_ylim(ax, all_vals, all_lo, all_hi)
        return legend

    title = f"{family}: values per language ({comp.ci_level:.0%} interval = value ± {comp.z:.2f} SE)"
    # the bars are the metrics with intervals; a diagnostic (the Bhattacharyya terms) is in the tables only
    return _bar_panels(comp, family, [m for m in comp.metrics[family] if has_interval(m)], title, path, draw)


def plot_gains(comp: Comparison, pair: tuple[str, str], family: str, path: Path) -> Path | None:
    """``aligned - base`` per language with its interval; bars whose interval is independent are hatched."""
    from matplotlib.patches import Patch

    base, aligned = pair
    metrics = [m for m in comp.metrics[family] if has_interval(m)]
    langs = [lang for lang in comp.languages[family] if any(comp.gain(pair, family, lang, m) for m in metrics)]
    if not langs:
        return None
    methods = {g.method for lang in langs for m in metrics if (g := comp.gain(pair, family, lang, m)) and g.method}
    legend = []
    if PAIRED in methods:
        legend.append((Patch(facecolor="#888888"), "paired-bootstrap interval"))
    if methods - {PAIRED}:
        legend.append((Patch(facecolor="#888888", hatch="///", edgecolor="white"), "independent interval"))
    x = np.arange(len(langs))

    def draw(ax, metric):
        vals, lows, highs = [], [], []
        for i, lang in enumerate(langs):
            g = comp.gain(pair, family, lang, metric)
            if g is None or not math.isfinite(g.value):
                continue
            vals.append(g.value)
            lows.append(g.low)
            highs.append(g.high)
            hatch = None if g.method in (PAIRED, None) else "///"
            ax.bar(i, g.value, 0.7, color="#55a868" if g.value >= 0 else "#c44e52", hatch=hatch,
                   edgecolor="white" if hatch else None, linewidth=0)
            if g.low is not None:
                # drawn from its ends, not as an error around the bar: a basic bootstrap interval of a
                # skewed metric need not contain the point gain
                ax.vlines(i, g.low, g.high, color="#333333", linewidth=0.9)
                ax.hlines([g.low, g.high], i - 0.1, i + 0.1, color="#333333", linewidth=0.9)
        ax.set_xticks(x, langs, fontsize=8)
        ax.axhline(0, color="black", linewidth=0.6)
        _fit_ylim(ax, vals, lows, highs)
        return legend

    title = f"{family}: gain = {aligned} − {base} ({comp.ci_level:.0%} interval)"
    return _bar_panels(comp, family, metrics, title, path, draw)


# --------------------------------------------------------------------------- PCA


def pca_panels(comp: Comparison, family: str) -> list[tuple[str, str]]:
    """(label, language) of each PCA panel, language-major blocks of models (see :func:`plot_pca_grid`)."""
    return [(lab, lang) for lang in comp.languages[family] for lab in comp.runs_with(family)]


def pca_grid_shape(comp: Comparison, family: str) -> tuple[int, int]:
    """Rows x columns of the PCA grid: languages across (wrapped), one row per model in each band."""
    n_lang = len(comp.languages[family])
    n_models = len(comp.runs_with(family))
    bands, cols = grid_shape(n_lang, "pca")
    return bands * n_models, cols


def plot_pca_grid(comp: Comparison, family: str, path: Path, *, max_points: int = 1000, seed: int = 0,
                  progress: bool = True) -> Path | None:
    """Toxic vs non-toxic states on PCA-2, fitted per model and language on its own states (main layer).

    Languages run across the columns (wrapped into bands of ``MAX_COLUMNS['pca']``), models down the
    rows of each band. Panels without saved states say so. At most ``max_points`` texts per panel are
    drawn (a stratified random subset; the projection is fitted on all of them).
    """
    from tqdm.auto import tqdm

    from safespace_tasks.stats.pca import pca_project

    labels = comp.runs_with(family)
    langs = comp.languages[family]
    if not labels or not langs:
        return None
    rows, cols = pca_grid_shape(comp, family)
    fig, axes = _figure(rows, cols, "pca")
    rng = np.random.default_rng(seed)
    used = np.zeros((rows, cols), dtype=bool)
    jobs = [(li, lang, mi, lab) for li, lang in enumerate(langs) for mi, lab in enumerate(labels)]
    first_metric = comp.metrics[family][0] if comp.metrics[family] else None
    for li, lang, mi, lab in tqdm(jobs, desc=f"PCA panels ({family})", unit="panel", disable=not progress):
        r = (li // cols) * len(labels) + mi
        c = li % cols
        ax = axes[r, c]
        used[r, c] = True
        ax.set_title(f"{lang} · {lab}", fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
        task = comp.task(lab, family, lang)
        message = None
        if task is None:
            message = "not in this run"
        elif task.states_path is None:
            message = "no saved states"
        if message is None:
            bundle = task.load_states()
            col = 0
            X = np.asarray(bundle.states[:, col], dtype=np.float64)
            y = np.asarray(bundle.labels)
            if X.shape[0] < 4 or np.unique(y).size < 2:
                message = "too few texts"
        if message is not None:
            ax.text(0.5, 0.5, message, ha="center", va="center", transform=ax.transAxes, fontsize=8, color="#666666")
            continue
        Z, evr = pca_project(X, 2, random_state=seed)
        keep = _subsample(y, max_points, rng)
        size = 12 if keep.size <= 250 else 8 if keep.size <= 600 else 5
        for cls, color, marker, name in ((0, NONTOXIC, "o", "non-toxic"), (1, TOXIC, "^", "toxic")):
            sel = keep[y[keep] == cls]
            ax.scatter(Z[sel, 0], Z[sel, 1], s=size, c=color, marker=marker, alpha=0.55, linewidths=0, label=name)
        ax.set_xlabel(f"PC1 ({evr[0]:.0%})", fontsize=7, labelpad=1)
        ax.set_ylabel(f"PC2 ({evr[1]:.0%})", fontsize=7, labelpad=1)
        if first_metric is not None:
            m = task.metrics.get(first_metric)
            if m is not None and math.isfinite(m.value):
                ax.text(0.02, 0.98, f"{_short(first_metric)} {m.value:.3g}", transform=ax.transAxes, ha="left",
                        va="top", fontsize=7, color="#333333",
                        bbox={"boxstyle": "round,pad=0.15", "fc": "white", "ec": "none", "alpha": 0.7})
    for r in range(rows):
        for c in range(cols):
            if not used[r, c]:
                axes[r, c].set_visible(False)
    from matplotlib.lines import Line2D

    legend = [
        (Line2D([], [], marker="o", linestyle="", color=NONTOXIC, markersize=5), "non-toxic"),
        (Line2D([], [], marker="^", linestyle="", color=TOXIC, markersize=5), "toxic"),
    ]
    title = f"{family}: pooled states on PCA-2, fitted per model and language"
    _save(fig, path, title, legend)
    return path


def _short(metric: str) -> str:
    """The metric's short label (its table row's ``short``; the name when it has none)."""
    try:
        return mt.spec(metric).short or metric
    except mt.UnknownMetricError:
        return metric


def _subsample(y: np.ndarray, max_points: int, rng: np.random.Generator) -> np.ndarray:
    n = y.shape[0]
    if n <= max_points:
        return np.arange(n)
    keep = []
    for cls in (0, 1):
        members = np.flatnonzero(y == cls)
        take = max(1, round(max_points * members.size / n))
        keep.append(rng.choice(members, size=min(take, members.size), replace=False))
    return np.sort(np.concatenate(keep))


# --------------------------------------------------------------------------- layers


def sweep_points(comp: Comparison, label: str, family: str, language: str, metric: str):
    """(layer, value, stderr) of every layer a run measured ``metric`` at, sorted by layer."""
    task = comp.task(label, family, language)
    if task is None:
        return []
    points = {}
    for key in comp.layer_metrics[family].get(metric, []):
        m = task.metrics.get(key)
        layer = task.layer_of(key)
        if m is None or layer is None:
            continue
        points[layer] = (layer, m.value, m.stderr)
    return [points[k] for k in sorted(points)]


def plot_layer_sweep(comp: Comparison, family: str, metric: str, path: Path) -> Path | None:
    """``metric`` against the hidden-state index (0 = embeddings), a line per model, a panel per language."""
    from matplotlib.ticker import MaxNLocator

    langs = [
        lang for lang in comp.languages[family]
        if any(len(sweep_points(comp, lab, family, lang, metric)) > 1 for lab in comp.runs_with(family))
    ]
    if not langs:
        return None
    rows, cols = grid_shape(len(langs), "sweep")
    fig, grid = _figure(rows, cols, "sweep")
    axes = grid.ravel()
    legend = {}
    for ax, lang in zip(axes, langs):
        for lab in comp.runs_with(family):
            pts = sweep_points(comp, lab, family, lang, metric)
            if not pts:
                continue
            layers = np.array([p[0] for p in pts], dtype=float)
            vals = np.array([p[1] for p in pts], dtype=float)
            errs = np.array([np.nan if p[2] is None else comp.z * p[2] for p in pts], dtype=float)
            color = MODEL_COLORS[comp.labels.index(lab) % len(MODEL_COLORS)]
            (line,) = ax.plot(layers, vals, marker="o", markersize=3, color=color, linewidth=1.2)
            if np.isfinite(errs).any():
                ax.fill_between(layers, vals - errs, vals + errs, color=color, alpha=0.15, linewidth=0)
            legend[lab] = line
        ax.set_title(lang, fontsize=9)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("hidden-state index", fontsize=7)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    _hide_unused(list(axes), len(langs))
    title = f"{family}: {metric_title(metric)} per layer ({comp.ci_level:.0%} band)"
    return _save(fig, path, title, [(h, lab) for lab, h in legend.items()])
