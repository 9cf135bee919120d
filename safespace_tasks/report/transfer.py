"""Report of a cross-lingual transfer run: tables (Markdown) and a heat map (PNG).

Input is the plain form of :meth:`safespace_tasks.stats.transfer.TransferMatrix.to_dict` (a dict, a
:class:`~safespace_tasks.stats.transfer.TransferMatrix`, or the path of a JSON file holding that dict)::

    {"kind": "safespace_transfer", "ci_level": 0.95, "layers": [30], "sources": ["en"],
     "targets": ["en", "de", ...],
     "cells": [{"layer": 30, "source": "en", "target": "de", "diagonal": false, "n_target": 1000,
                "transfer_auroc": {"value": 0.81, "ci": [0.78, 0.84]}, "own_auroc": {...},
                "direction_auroc": {...}, "ratio": {...}, "ratio_above_chance": {...}, "cosine": {...}}]}

Only ``value`` and ``ci`` of each quantity are read. No model code; matplotlib's object API on an Agg
canvas (no pyplot, no display).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "QUANTITY_TITLES",
    "TransferReportError",
    "load_transfer",
    "cell_lookup",
    "transfer_matrix_array",
    "matrix_markdown",
    "source_markdown",
    "transfer_gain",
    "gain_markdown",
    "plot_transfer_heatmap",
    "plot_transfer_gain",
]

QUANTITY_TITLES = {
    "transfer_auroc": "transfer AUROC (source probe on target)",
    "direction_auroc": "transfer AUROC of the mean-difference direction",
    "own_auroc": "target's own cross-validated AUROC",
    "ratio": "transfer / own AUROC",
    "ratio_above_chance": "(transfer − 0.5) / (own − 0.5)",
    "cosine": "cosine of the mean-difference directions",
}
_RANGES = {"transfer_auroc": (0.0, 1.0), "direction_auroc": (0.0, 1.0), "own_auroc": (0.0, 1.0),
           "cosine": (-1.0, 1.0), "ratio": (0.0, 2.0), "ratio_above_chance": (-1.0, 1.0)}
_CENTRES = {"transfer_auroc": 0.5, "direction_auroc": 0.5, "own_auroc": 0.5, "cosine": 0.0, "ratio": 1.0,
            "ratio_above_chance": 0.0}


class TransferReportError(ValueError):
    """The transfer results cannot be reported as asked (the message says why)."""


def _fmt(value: float | None, signed: bool = False, digits: int = 3) -> str:
    if value is None:
        return "—"
    if not math.isfinite(value):
        return "n/a"
    return (f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}").replace("-", "−")


def _interval(ci: Any, digits: int = 3) -> str:
    if not ci or any(v is None or not math.isfinite(v) for v in ci):
        return ""
    return f" [{_fmt(ci[0], digits=digits)}, {_fmt(ci[1], digits=digits)}]"


def load_transfer(data: Any) -> dict[str, Any]:
    """The plain dict of a transfer run from a dict, a ``TransferMatrix`` or a JSON file's path."""
    if hasattr(data, "to_dict") and not isinstance(data, dict):
        data = data.to_dict()
    elif isinstance(data, (str, Path)):
        with open(data, encoding="utf-8") as f:
            data = json.load(f)
    if not isinstance(data, dict) or data.get("kind") != "safespace_transfer" or "cells" not in data:
        raise TransferReportError(
            "not a transfer result: expected the dict of TransferMatrix.to_dict() (kind 'safespace_transfer')."
        )
    return data


def _layer(data: dict[str, Any], layer: Any) -> Any:
    layers = data["layers"]
    if layer is None:
        if len(layers) != 1:
            raise TransferReportError(f"the run holds layers {layers}: name one (layer=...).")
        return layers[0]
    if layer not in layers:
        raise TransferReportError(f"layer {layer} is not in the run (layers {layers}).")
    return layer


def cell_lookup(data: dict[str, Any]) -> dict[tuple[Any, str, str], dict[str, Any]]:
    """Cells keyed by ``(layer, source, target)``."""
    return {(c["layer"], c["source"], c["target"]): c for c in data["cells"]}


def transfer_matrix_array(data: Any, quantity: str = "transfer_auroc", layer: Any = None) -> np.ndarray:
    """sources x targets values of one quantity at one layer (NaN where a cell is missing)."""
    data = load_transfer(data)
    layer = _layer(data, layer)
    cells = cell_lookup(data)
    out = np.full((len(data["sources"]), len(data["targets"])), np.nan)
    for i, s in enumerate(data["sources"]):
        for j, t in enumerate(data["targets"]):
            cell = cells.get((layer, s, t))
            if cell is not None and cell[quantity]["value"] is not None:
                out[i, j] = cell[quantity]["value"]
    return out


def matrix_markdown(data: Any, quantity: str = "transfer_auroc", layer: Any = None, *, intervals: bool = False) -> str:
    """The source x target matrix of one quantity as a Markdown table (rows: sources; diagonal
    cells, the source's own cross-validated numbers, in italics)."""
    data = load_transfer(data)
    layer = _layer(data, layer)
    cells = cell_lookup(data)
    lines = [
        f"**{QUANTITY_TITLES.get(quantity, quantity)}**" + ("" if layer is None else f", hidden state {layer}"),
        "",
        "| source \\ target | " + " | ".join(data["targets"]) + " |",
        "|---|" + "---:|" * len(data["targets"]),
    ]
    for s in data["sources"]:
        row = []
        for t in data["targets"]:
            cell = cells.get((layer, s, t))
            if cell is None:
                row.append("—")
                continue
            text = _fmt(cell[quantity]["value"]) + (_interval(cell[quantity].get("ci")) if intervals else "")
            row.append(f"*{text}*" if cell.get("diagonal") else text)
        lines.append(f"| {s} | " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def source_markdown(data: Any, source: str = "en", layer: Any = None) -> str:
    """One source against every target: transfer AUROC beside the target's own AUROC, their ratios,
    the mean-difference direction's AUROC and the cosine, each value with its interval."""
    data = load_transfer(data)
    layer = _layer(data, layer)
    if source not in data["sources"]:
        raise TransferReportError(f"source {source!r} is not in the run (sources {data['sources']}).")
    cells = cell_lookup(data)
    level = data.get("ci_level")
    head = f"**Transfer from {source}**" + ("" if layer is None else f", hidden state {layer}")
    if level is not None:
        head += f"; intervals: {round(100 * level)}% bootstrap"
    cols = ["transfer_auroc", "own_auroc", "ratio", "ratio_above_chance", "direction_auroc", "cosine"]
    lines = [head, "", "| target | n | transfer AUROC | own AUROC | ratio | above-chance ratio | mean-diff AUROC | cosine |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for t in data["targets"]:
        cell = cells.get((layer, source, t))
        if cell is None:
            continue
        vals = [_fmt(cell[q]["value"]) + _interval(cell[q].get("ci")) for q in cols]
        name = f"{t} (source)" if cell.get("diagonal") else t
        lines.append(f"| {name} | {cell.get('n_target', '')} | " + " | ".join(vals) + " |")
    return "\n".join(lines) + "\n"


def transfer_gain(base: Any, aligned: Any, *, source: str = "en", layer: Any = None,
                  quantity: str = "transfer_auroc", paired: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Per target: ``aligned - base`` of a quantity (default the transfer AUROC) and of the own
    AUROC, for one source and layer. The two runs must hold the same targets with the same numbers
    of texts (the same texts, measured on two models); otherwise the gain would compare different
    samples, and this raises. The two runs' own intervals do not give one for the gain; pass
    ``paired`` (the dict of :func:`safespace_tasks.stats.transfer.paired_gain_dict`, computed from both
    models' states) and the rows carry its paired intervals as ``gain_ci`` and ``own_gain_ci``.
    """
    if paired is not None and paired.get("kind") != "safespace_transfer_gain":
        raise TransferReportError("paired must be the dict of paired_gain_dict() (kind 'safespace_transfer_gain').")
    paired_cells = {} if paired is None else {(c["layer"], c["source"], c["target"]): c for c in paired["cells"]}
    base, aligned = load_transfer(base), load_transfer(aligned)
    lb, la = _layer(base, layer), _layer(aligned, layer)
    if lb != la:
        raise TransferReportError(f"the runs hold different layers ({base['layers']} vs {aligned['layers']}); name one.")
    cb, ca = cell_lookup(base), cell_lookup(aligned)
    rows = []
    for t in base["targets"]:
        b, a = cb.get((lb, source, t)), ca.get((la, source, t))
        if b is None and a is None:
            continue
        if b is None or a is None:
            raise TransferReportError(f"target {t!r} (source {source!r}) is in one run only; compare runs of one task.")
        if b.get("n_target") != a.get("n_target"):
            raise TransferReportError(
                f"target {t!r} has {b.get('n_target')} texts in the base run and {a.get('n_target')} in the aligned "
                "run; a gain needs the same texts in both."
            )
        rows.append({
            "target": t, "diagonal": bool(b.get("diagonal")),
            "base": b[quantity]["value"], "aligned": a[quantity]["value"],
            "gain": a[quantity]["value"] - b[quantity]["value"],
            "base_own": b["own_auroc"]["value"], "aligned_own": a["own_auroc"]["value"],
            "own_gain": a["own_auroc"]["value"] - b["own_auroc"]["value"],
        })
        pc = paired_cells.get((lb, source, t))
        if pc is not None:
            rows[-1]["gain_ci"] = pc[quantity].get("ci")
            rows[-1]["own_gain_ci"] = pc["own_auroc"].get("ci")
    if not rows:
        raise TransferReportError(f"source {source!r} has no cells in these runs.")
    return rows


def gain_markdown(rows: list[dict[str, Any]], *, source: str = "en", base_label: str = "base",
                  aligned_label: str = "aligned") -> str:
    """The rows of :func:`transfer_gain` as a Markdown table."""
    lines = [
        f"**Alignment gain in transfer AUROC from {source}** ({aligned_label} − {base_label})",
        "",
        f"| target | transfer {base_label} | transfer {aligned_label} | gain | own {base_label} | own {aligned_label} | own gain |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        name = f"{r['target']} (source)" if r["diagonal"] else r["target"]
        lines.append(
            f"| {name} | {_fmt(r['base'])} | {_fmt(r['aligned'])} | {_fmt(r['gain'], signed=True)}"
            f"{_interval(r.get('gain_ci'))} | {_fmt(r['base_own'])} | {_fmt(r['aligned_own'])} | "
            f"{_fmt(r['own_gain'], signed=True)}{_interval(r.get('own_gain_ci'))} |"
        )
    return "\n".join(lines) + "\n"


def _figure(width_px: int, height_px: int):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width_px / 100, height_px / 100), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def plot_transfer_heatmap(data: Any, path: str | Path, *, quantity: str = "transfer_auroc", layer: Any = None,
                          title: str | None = None) -> Path:
    """Heat map of the source x target matrix of one quantity, each cell annotated with its value
    (diagonal cells outlined: they are the source's own cross-validated numbers). The colour scale is
    fixed per quantity (AUROC 0..1 centred on chance 0.5, cosine -1..1), so runs compare by eye."""
    from matplotlib.colors import TwoSlopeNorm

    data = load_transfer(data)
    layer = _layer(data, layer)
    M = transfer_matrix_array(data, quantity, layer)
    n_s, n_t = M.shape
    head = title or QUANTITY_TITLES.get(quantity, quantity) + ("" if layer is None else f" — hidden state {layer}")
    fig = _figure(max(420, 70 + 48 * n_t, 20 + 9 * len(head)), max(220, 130 + 40 * n_s))
    ax = fig.add_axes((0.12, 0.2, 0.74, 0.62))
    lo, hi = _RANGES.get(quantity, (np.nanmin(M), np.nanmax(M)))
    centre = _CENTRES.get(quantity, (lo + hi) / 2)
    image = ax.imshow(np.ma.masked_invalid(M), cmap="RdBu_r", norm=TwoSlopeNorm(vcenter=centre, vmin=lo, vmax=hi),
                      aspect="auto")
    ax.set_xticks(range(n_t), data["targets"], fontsize=8)
    ax.set_yticks(range(n_s), data["sources"], fontsize=8)
    ax.set_xlabel("target language")
    ax.set_ylabel("source")
    cells = cell_lookup(data)
    from matplotlib.patches import Rectangle

    for i, s in enumerate(data["sources"]):
        for j, t in enumerate(data["targets"]):
            v = M[i, j]
            ax.text(j, i, "n/a" if not math.isfinite(v) else f"{v:.2f}", ha="center", va="center", fontsize=7,
                    color="white" if math.isfinite(v) and abs(v - centre) > 0.6 * (hi - centre) else "black")
            cell = cells.get((layer, s, t))
            if cell is not None and cell.get("diagonal"):
                ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, lw=1.5, ec="black"))
    cax = fig.add_axes((0.88, 0.2, 0.025, 0.62))
    fig.colorbar(image, cax=cax)
    fig.text(0.01, 0.97, head, ha="left", va="top", fontsize=10, weight="bold")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100, format="png")
    return path


def plot_transfer_gain(rows: list[dict[str, Any]], path: str | Path, *, source: str = "en",
                       base_label: str = "base", aligned_label: str = "aligned") -> Path:
    """Bars of the alignment gain per target: transfer AUROC gain beside the own AUROC gain."""
    targets = [r["target"] for r in rows]
    x = np.arange(len(targets))
    fig = _figure(max(420, 80 + 40 * len(targets)), 320)
    ax = fig.add_axes((0.1, 0.18, 0.86, 0.66))
    ax.bar(x - 0.2, [r["gain"] for r in rows], width=0.4, color="#4c72b0", label=f"transfer from {source}")
    ax.bar(x + 0.2, [r["own_gain"] for r in rows], width=0.4, color="#dd8452", label="own probe")
    ax.axhline(0.0, color="black", lw=0.8)
    ax.set_xticks(x, targets, fontsize=8)
    ax.set_ylabel(f"AUROC {aligned_label} − {base_label}")
    ax.legend(fontsize=8, frameon=False, loc="upper right", bbox_to_anchor=(1.0, 1.16), ncol=2)
    fig.text(0.01, 0.97, f"Alignment gain in AUROC, {aligned_label} − {base_label}", ha="left", va="top",
             fontsize=10, weight="bold")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100, format="png")
    return path
