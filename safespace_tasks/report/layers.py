"""Report of a layer sweep: one metric against the hidden-state index for every language of a run.

Input, a plain dict (what the wiring builds from a results JSON's per-layer arrays or from saved
states)::

    {"metric": "probe_auroc",            # name shown in titles
     "higher_is_better": true,           # optional, default true (every separation metric is)
     "n_layers": 30,                     # decoder blocks L: hidden state L is the final layer (after the norm)
     "layers": [0, 1, ..., 30],          # hidden-state indices, ascending
     "languages": {"en": {"values": [...],              # one per layer; null / NaN = not measured
                          "ci": [[lo, hi], ...]},       # optional, one pair per layer
                   "am": {...}}}

Hidden-state numbering as in :mod:`safespace_tasks.layer_spec`: 0 = embedding output, i = output of
block i, L = final layer after the model's final norm. No model code; matplotlib's object API on an
Agg canvas.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["LayerReportError", "validate_sweep", "layer_summary", "summary_markdown", "plot_layer_sweep",
           "sweep_from_transfer", "sweep_from_comparison"]


class LayerReportError(ValueError):
    """A sweep dict that cannot be reported (the message names the problem)."""


def _fmt(value: float | None, signed: bool = False) -> str:
    if value is None or not math.isfinite(value):
        return "—" if value is None else "n/a"
    return (f"{value:+.4g}" if signed else f"{value:.4g}").replace("-", "−")


def validate_sweep(sweep: dict[str, Any]) -> dict[str, Any]:
    """Check the sweep dict's shape; returns it with values as float arrays (NaN for null)."""
    for key in ("metric", "n_layers", "layers", "languages"):
        if key not in sweep:
            raise LayerReportError(f"a layer sweep needs the key {key!r} (keys: metric, n_layers, layers, languages).")
    layers = [int(x) for x in sweep["layers"]]
    if not layers or layers != sorted(set(layers)):
        raise LayerReportError(f"layers must be ascending, distinct hidden-state indices; got {sweep['layers']}.")
    n_layers = int(sweep["n_layers"])
    if layers[0] < 0 or layers[-1] > n_layers:
        raise LayerReportError(f"layers {layers} lie outside 0..{n_layers} (absolute hidden-state indices, not -1).")
    languages = {}
    for lang, entry in sweep["languages"].items():
        values = np.array([np.nan if v is None else v for v in entry["values"]], dtype=np.float64)
        if values.shape != (len(layers),):
            raise LayerReportError(f"language {lang!r} has {values.size} values for {len(layers)} layers.")
        ci = entry.get("ci")
        if ci is not None:
            ci = np.array([[np.nan, np.nan] if c is None else [np.nan if v is None else v for v in c] for c in ci],
                          dtype=np.float64)
            if ci.shape != (len(layers), 2):
                raise LayerReportError(f"language {lang!r}: ci must hold one [low, high] per layer.")
        languages[lang] = {"values": values, "ci": ci}
    if not languages:
        raise LayerReportError("the sweep holds no language.")
    return {**sweep, "layers": layers, "n_layers": n_layers, "languages": languages,
            "higher_is_better": bool(sweep.get("higher_is_better", True))}


def layer_summary(sweep: dict[str, Any]) -> list[dict[str, Any]]:
    """Per language: where the metric peaks (``best_layer``, ``best_value``, its interval if given),
    the final layer's value (``final_value``, None when the final layer was not swept), the
    difference best - final, and how many layers had no value (``missing``). A tie goes to the
    shallowest layer."""
    sw = validate_sweep(sweep)
    layers = np.array(sw["layers"])
    final = sw["n_layers"]
    rows = []
    for lang, entry in sw["languages"].items():
        v = entry["values"]
        ok = np.isfinite(v)
        row: dict[str, Any] = {"language": lang, "missing": int((~ok).sum()), "best_layer": None, "best_value": None,
                               "best_ci": None, "final_layer": final, "final_value": None, "best_minus_final": None}
        if ok.any():
            masked = np.where(ok, v, -np.inf if sw["higher_is_better"] else np.inf)
            j = int(np.argmax(masked) if sw["higher_is_better"] else np.argmin(masked))
            row.update(best_layer=int(layers[j]), best_value=float(v[j]))
            if entry["ci"] is not None:
                row["best_ci"] = [float(entry["ci"][j, 0]), float(entry["ci"][j, 1])]
        if final in sw["layers"]:
            fv = v[sw["layers"].index(final)]
            row["final_value"] = float(fv) if math.isfinite(fv) else None
        if row["best_value"] is not None and row["final_value"] is not None:
            row["best_minus_final"] = row["best_value"] - row["final_value"]
        rows.append(row)
    return rows


def summary_markdown(sweep: dict[str, Any]) -> str:
    """The per-language peak summary as a Markdown table."""
    sw = validate_sweep(sweep)
    rows = layer_summary(sweep)
    word = "best" if sw["higher_is_better"] else "lowest"
    lines = [
        f"**Where {sw['metric']} peaks**, per language (hidden states {sw['layers'][0]}..{sw['layers'][-1]}; "
        f"{sw['n_layers']} = final layer after the norm)",
        "",
        f"| language | {word} layer | value there | final layer | value at final | {word} − final |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        interval = "" if r["best_ci"] is None else f" [{_fmt(r['best_ci'][0])}, {_fmt(r['best_ci'][1])}]"
        best_layer = "—" if r["best_layer"] is None else str(r["best_layer"])
        lines.append(
            f"| {r['language']} | {best_layer} | {_fmt(r['best_value'])}{interval} | {r['final_layer']} | "
            f"{_fmt(r['final_value'])} | {_fmt(r['best_minus_final'], signed=True)} |"
        )
    return "\n".join(lines) + "\n"


def plot_layer_sweep(sweep: dict[str, Any], path: str | Path, *, title: str | None = None, bands: bool = True) -> Path:
    """One panel, one line per language (metric against hidden-state index), the peak of each
    marked with a dot, intervals as faint bands when given; the final layer is marked on the axis."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    sw = validate_sweep(sweep)
    rows = {r["language"]: r for r in layer_summary(sweep)}
    fig = Figure(figsize=(8.0, 4.6), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_axes((0.08, 0.12, 0.72, 0.78))
    import matplotlib

    from matplotlib.ticker import MaxNLocator

    cmap = matplotlib.colormaps["tab10"]
    styles = ("-", "--", ":", "-.")
    x = np.array(sw["layers"])
    for k, (lang, entry) in enumerate(sw["languages"].items()):
        color = cmap(k % 10)  # ten colours, then the same colours dashed: 15 languages stay apart
        ax.plot(x, entry["values"], color=color, lw=1.4, ls=styles[(k // 10) % len(styles)], label=lang)
        if bands and entry["ci"] is not None:
            ax.fill_between(x, entry["ci"][:, 0], entry["ci"][:, 1], color=color, alpha=0.12, lw=0)
        r = rows[lang]
        if r["best_layer"] is not None:
            ax.plot([r["best_layer"]], [r["best_value"]], "o", color=color, ms=4)
    if sw["n_layers"] in sw["layers"]:
        ax.axvline(sw["n_layers"], color="grey", lw=0.8, ls=":")
    ax.set_xlabel(f"hidden-state index (0 = embeddings, {sw['n_layers']} = final, after the norm)")
    ax.set_ylabel(sw["metric"])
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.legend(fontsize=7, frameon=False, loc="upper left", bbox_to_anchor=(1.01, 1.0), ncol=1 + len(sw["languages"]) // 16)
    fig.text(0.01, 0.985, title or f"{sw['metric']} per layer, all languages", ha="left", va="top", fontsize=10,
             weight="bold")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100, format="png")
    return path


def sweep_from_transfer(data: Any, n_layers: int, *, source: str = "en", quantity: str = "transfer_auroc") -> dict[str, Any]:
    """A sweep dict of one transfer quantity from one source, per target language, from a transfer
    run with several layers (the dict of ``TransferMatrix.to_dict()``). Layers given as -1 are
    mapped to ``n_layers``."""
    from safespace_tasks.report.transfer import cell_lookup, load_transfer

    data = load_transfer(data)
    if any(layer is None for layer in data["layers"]):
        raise LayerReportError("the transfer run carries no layer indices; a sweep needs them.")
    absolute = {layer: (layer + n_layers + 1 if layer < 0 else layer) for layer in data["layers"]}
    order = sorted(data["layers"], key=absolute.get)
    cells = cell_lookup(data)
    languages = {}
    for t in data["targets"]:
        entries = [cells.get((layer, source, t)) for layer in order]
        languages[t] = {
            "values": [None if c is None else c[quantity]["value"] for c in entries],
            "ci": [None if c is None else c[quantity].get("ci") for c in entries],
        }
    return {"metric": f"{quantity} from {source}", "n_layers": n_layers, "layers": [absolute[x] for x in order],
            "languages": languages}


def sweep_from_comparison(comp: Any, label: str, family: str, metric: str) -> dict[str, Any] | None:
    """The sweep dict of one run (``label``), one family and one metric: every language of the run,
    values from its results JSON, intervals value ± z·SE. None when no language has two or more layers
    or the run does not say its model's depth (``n_layers`` in the saved details)."""
    keys = comp.layer_metrics.get(family, {}).get(metric)
    if not keys:
        return None
    points: dict[str, dict[int, tuple[float, float | None]]] = {}
    depth: int | None = None
    run = next(r for r in comp.runs if r.label == label)
    for lang in comp.languages[family]:
        task = run.task_for(family, lang)
        if task is None:
            continue
        n = (task.details or {}).get("n_layers")
        if isinstance(n, int):
            depth = n if depth is None else max(depth, n)
        for key in keys:
            m, layer = task.metrics.get(key), task.layer_of(key)
            if m is not None and layer is not None:
                points.setdefault(lang, {})[layer] = (m.value, m.stderr)
    points = {k: v for k, v in points.items() if len(v) > 1}
    if not points or depth is None:
        return None
    layers = sorted({x for v in points.values() for x in v})
    languages = {}
    for lang, pts in points.items():
        vals = [pts[x][0] if x in pts else None for x in layers]
        ci = []
        for x in layers:
            v, se = pts.get(x, (None, None))
            ci.append(None if v is None or se is None or not math.isfinite(se) else [v - comp.z * se, v + comp.z * se])
        languages[lang] = {"values": vals, "ci": ci} if any(c is not None for c in ci) else {"values": vals}
    return {"metric": metric, "n_layers": depth, "layers": layers, "languages": languages}
