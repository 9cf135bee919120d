"""Report modules of the layer sweep and the transfer matrix: files written, numbers in the tables."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from safespace_tasks.report.layers import (
    LayerReportError,
    layer_summary,
    plot_layer_sweep,
    summary_markdown,
    sweep_from_transfer,
)
from safespace_tasks.report.transfer import (
    TransferReportError,
    gain_markdown,
    load_transfer,
    matrix_markdown,
    plot_transfer_gain,
    plot_transfer_heatmap,
    source_markdown,
    transfer_gain,
    transfer_matrix_array,
)
from safespace_tasks.stats.transfer import transfer_matrix


def _png_size(path):
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def _rows(markdown: str) -> dict[str, list[str]]:
    out = {}
    for line in markdown.splitlines():
        if line.startswith("| ") and not line.startswith("|---"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            out[cells[0]] = cells[1:]
    return out


def _num(text: str) -> float:
    return float(text.strip("*").split(" [")[0].replace("−", "-"))


@pytest.fixture(scope="module")
def run():
    rng = np.random.default_rng(0)
    d, n = 5, 80
    states, labels = {}, {}
    for lang, mu in {"en": [2, 0, 0, 0, 0], "de": [1.5, 1, 0, 0, 0], "am": [0, 0, 1, 0, 0]}.items():
        mu = np.array(mu, dtype=float)
        layers = []
        for scale in (0.5, 1.0):
            X = np.concatenate([rng.normal(size=(n, d)) - scale * mu / 2, rng.normal(size=(n, d)) + scale * mu / 2])
            layers.append(X)
        states[lang] = np.stack(layers, axis=1)
        labels[lang] = np.repeat([0, 1], n)
    return transfer_matrix(states, labels, sources=["en", "de"], layers=[2, -1], n_boot=50, seed=0)


def test_matrix_and_source_tables_hold_the_numbers(run):
    data = json.loads(json.dumps(run.to_dict()))  # the report reads the plain JSON form
    md = matrix_markdown(data, "transfer_auroc", layer=-1)
    rows = _rows(md)
    assert rows["source \\ target"] == ["en", "de", "am"]
    for s in ("en", "de"):
        for j, t in enumerate(["en", "de", "am"]):
            assert _num(rows[s][j]) == pytest.approx(run.cell(s, t, -1)["transfer_auroc"].value, abs=5e-4)
    assert rows["en"][0].startswith("*") and not rows["en"][1].startswith("*")  # diagonal marked
    np.testing.assert_array_equal(transfer_matrix_array(data, "cosine", 2), run.array("cosine", 2))

    src = _rows(source_markdown(data, "en", layer=2))
    cell = run.cell("en", "am", 2)
    vals = src["am"]
    assert vals[0] == "160"
    assert _num(vals[1]) == pytest.approx(cell["transfer_auroc"].value, abs=5e-4)
    lo, hi = (float(x.replace("−", "-")) for x in re.search(r"\[(.*), (.*)\]", vals[1]).groups())
    assert (lo, hi) == pytest.approx(cell["transfer_auroc"].ci, abs=5e-4)
    assert _num(vals[2]) == pytest.approx(cell["own_auroc"].value, abs=5e-4)
    assert _num(vals[3]) == pytest.approx(cell["ratio"].value, abs=5e-4)
    assert _num(vals[6]) == pytest.approx(cell["cosine"].value, abs=5e-4)
    assert "en (source)" in src
    with pytest.raises(TransferReportError, match="name one"):
        matrix_markdown(data)
    with pytest.raises(TransferReportError, match="not a transfer result"):
        load_transfer({"cells": []})


def test_heatmap_and_gain_files(run, tmp_path):
    path = plot_transfer_heatmap(run, tmp_path / "m.png", layer=-1)
    w, h = _png_size(path)
    assert w >= 420 and h >= 220
    path = plot_transfer_heatmap(run.to_dict(), tmp_path / "c.png", quantity="cosine", layer=2)
    assert path.stat().st_size > 1000


def _fake(values: dict[str, tuple[float, float]], n: int = 100) -> dict:
    cells = []
    for t, (transfer, own) in values.items():
        q = {k: {"value": 0.0, "ci": [0.0, 0.0]} for k in ("direction_auroc", "ratio", "ratio_above_chance", "cosine")}
        cells.append({"layer": 30, "source": "en", "target": t, "diagonal": t == "en", "n_target": n,
                      "transfer_auroc": {"value": transfer, "ci": [transfer - 0.1, transfer + 0.1]},
                      "own_auroc": {"value": own, "ci": [own - 0.1, own + 0.1]}, **q})
    return {"kind": "safespace_transfer", "ci_level": 0.95, "layers": [30], "sources": ["en"],
            "targets": list(values), "cells": cells}


def test_gain_per_language(tmp_path):
    base = _fake({"en": (0.80, 0.80), "de": (0.60, 0.75), "am": (0.52, 0.70)})
    aligned = _fake({"en": (0.95, 0.95), "de": (0.85, 0.90), "am": (0.55, 0.72)})
    rows = transfer_gain(base, aligned)
    by = {r["target"]: r for r in rows}
    assert by["de"]["gain"] == pytest.approx(0.25) and by["am"]["gain"] == pytest.approx(0.03)
    assert by["am"]["own_gain"] == pytest.approx(0.02) and by["en"]["diagonal"]
    table = _rows(gain_markdown(rows, base_label="base", aligned_label="dpo"))
    assert table["de"] == ["0.600", "0.850", "+0.250", "0.750", "0.900", "+0.150"]
    assert table["am"][2] == "+0.030"
    assert _png_size(plot_transfer_gain(rows, tmp_path / "g.png"))[0] >= 420
    paired = {"kind": "safespace_transfer_gain", "cells": [
        {"layer": 30, "source": "en", "target": "de", "transfer_auroc": {"value": 0.25, "ci": [0.2, 0.31]},
         "own_auroc": {"value": 0.15, "ci": [0.1, 0.18]}}]}
    with_ci = _rows(gain_markdown(transfer_gain(base, aligned, paired=paired)))
    assert with_ci["de"][2] == "+0.250 [0.200, 0.310]" and with_ci["de"][5] == "+0.150 [0.100, 0.180]"
    assert with_ci["am"][2] == "+0.030"  # no paired cell: no interval shown
    with pytest.raises(TransferReportError, match="same texts"):
        transfer_gain(base, _fake({"en": (0.9, 0.9), "de": (0.8, 0.8), "am": (0.5, 0.7)}, n=99))


def _sweep():
    return {
        "metric": "probe_auroc", "n_layers": 4, "layers": [0, 1, 2, 3, 4],
        "languages": {
            "en": {"values": [0.6, 0.7, 0.8, 0.95, 0.9],
                   "ci": [[0.5, 0.7], [0.6, 0.8], [0.7, 0.9], [0.9, 0.99], [0.85, 0.95]]},
            "am": {"values": [0.55, 0.75, None, 0.7, 0.65]},
            "zz": {"values": [None] * 5},
        },
    }


def test_layer_summary_and_table(tmp_path):
    rows = {r["language"]: r for r in layer_summary(_sweep())}
    assert rows["en"]["best_layer"] == 3 and rows["en"]["best_value"] == 0.95 and rows["en"]["best_ci"] == [0.9, 0.99]
    assert rows["en"]["final_value"] == 0.9 and rows["en"]["best_minus_final"] == pytest.approx(0.05)
    assert rows["am"]["best_layer"] == 1 and rows["am"]["missing"] == 1 and rows["am"]["final_value"] == 0.65
    assert rows["zz"]["best_layer"] is None and rows["zz"]["missing"] == 5
    table = _rows(summary_markdown(_sweep()))
    assert table["en"] == ["3", "0.95 [0.9, 0.99]", "4", "0.9", "+0.05"]
    assert table["am"] == ["1", "0.75", "4", "0.65", "+0.1"]
    assert table["zz"][0] == "—"
    lower = dict(_sweep(), higher_is_better=False)
    assert {r["language"]: r["best_layer"] for r in layer_summary(lower)}["en"] == 0
    w, h = _png_size(plot_layer_sweep(_sweep(), tmp_path / "s.png"))
    assert (w, h) == (800, 460)
    with pytest.raises(LayerReportError, match="3 values for 5 layers"):
        layer_summary({**_sweep(), "languages": {"en": {"values": [1, 2, 3]}}})
    with pytest.raises(LayerReportError, match="outside"):
        layer_summary({**_sweep(), "layers": [0, 1, 2, 3, 5]})


def test_sweep_from_transfer(run, tmp_path):
    sw = sweep_from_transfer(run.to_dict(), n_layers=4, source="en")
    assert sw["layers"] == [2, 4]
    assert sw["languages"]["am"]["values"] == [run.cell("en", "am", 2)["transfer_auroc"].value,
                                              run.cell("en", "am", -1)["transfer_auroc"].value]
    assert plot_layer_sweep(sw, tmp_path / "t.png").exists()
