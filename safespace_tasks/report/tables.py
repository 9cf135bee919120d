"""Tables of a comparison: one per family and metric (rows = languages, columns = models, then gains).

Each :class:`Table` keeps the numbers at full precision (written to CSV, ``repr`` of the float, so
a CSV value equals the results JSON's bit for bit) and the text shown in Markdown and HTML.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from safespace_tasks import metric_table as mt
from safespace_tasks.report.compare import ENGLISH, INDEPENDENT, Aggregate, Comparison, has_interval
from safespace_tasks.report.plots import metric_title

__all__ = ["Table", "metric_table", "data_table", "fmt", "write_csv", "MEAN_ROW", "GAP_ROW", "SHARED_MEAN_ROW"]

MEAN_ROW = "mean"
SHARED_MEAN_ROW = "mean (shared languages)"
GAP_ROW = "en − rest"
MISSING = "—"

METRIC_NOTES = {m.name: m.note for m in mt.METRICS if m.note}  # from the metric table


def _direction(metric: str) -> str | None:
    """Which way is better, from the metric table (None for a metric the table does not hold)."""
    try:
        row = mt.spec(metric)
    except mt.UnknownMetricError:
        return None
    if row.unit == "count":
        return None
    return f"{row.title}: {'higher' if row.higher_is_better else 'lower'} is better ({row.unit})."


def fmt(value: float | None, signed: bool = False) -> str:
    """A number as a table shows it: 4 significant digits, n/a for NaN, — for none."""
    if value is None:
        return MISSING
    if not math.isfinite(value):
        return "n/a"
    text = f"{value:+.4g}" if signed else f"{value:.4g}"
    return text.replace("-", "−")


@dataclass
class Table:
    """Rows of display cells plus a full-precision record per row for CSV."""

    name: str
    title: str
    columns: list[str]
    rows: list[list[str]] = field(default_factory=list)
    records: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    align: list[str] | None = None  # "l" or "r" per column; default: first left, the rest right


def _agg_cell(agg: Aggregate, signed: bool = False, interval: bool = False) -> str:
    """An aggregate as ``value ± se`` (model columns) or ``value [low, high]`` (gain columns)."""
    if agg.value is None:
        return MISSING
    if interval and agg.low is not None:
        return f"{fmt(agg.value, signed)} [{fmt(agg.low)}, {fmt(agg.high)}]"
    if agg.se is not None and math.isfinite(agg.value):
        return f"{fmt(agg.value, signed)} ± {fmt(agg.se)}"
    return fmt(agg.value, signed)


def _value_cell(value: float, stderr: float | None) -> str:
    return fmt(value) if stderr is None or not math.isfinite(value) else f"{fmt(value)} ± {fmt(stderr)}"


def metric_table(comp: Comparison, family: str, metric: str) -> Table:
    """Rows = languages (then the mean and en − rest), columns = models and, per pair, the gain."""
    labels = comp.runs_with(family)
    pair_cols = [f"gain {a} − {b}" for b, a in comp.pairs]
    table = Table(
        name=f"{family}_{metric}",
        title=f"{family} · {metric} — {metric_title(metric)}",
        columns=["language", *labels, *pair_cols],
    )
    if metric in METRIC_NOTES and not has_interval(metric):
        table.notes.append(f"{metric}: {METRIC_NOTES[metric]}. A diagnostic: model cells are values without a "
                           "standard error, gains have no interval.")
    elif metric in METRIC_NOTES:
        table.notes.append(f"{metric}: {METRIC_NOTES[metric]}. Model cells: value ± the run's bootstrap standard error.")
    else:
        table.notes.append(f"{metric}: model cells are value ± the run's standard error where it reports one.")
    direction = _direction(metric)
    if direction:
        table.notes.append(direction)
    used_methods: set[str] = set()
    flagged = False
    nulls_shown = False
    for lang in comp.languages[family]:
        row, rec = [lang], {"language": lang}
        for lab in labels:
            m = comp.measurement(lab, family, lang, metric)
            cell = MISSING if m is None else _value_cell(m.value, m.stderr)
            rec[lab] = None if m is None else m.value
            rec[f"{lab} stderr"] = None if m is None else m.stderr
            null, p = (comp.measurement(lab, family, lang, metric + tail) for tail in ("_null", "_p"))
            if m is not None and p is not None and math.isfinite(p.value):  # the run computed a null floor
                cell += f" (null {fmt(null.value if null else None)}, p {fmt(p.value)})"
                rec[f"{lab} null"], rec[f"{lab} p"] = (null.value if null else None), p.value
                nulls_shown = True
            row.append(cell)
        for pair, col in zip(comp.pairs, pair_cols):
            g = comp.gain(pair, family, lang, metric)
            if g is None:
                row.append(MISSING)
                rec.update({col: None, f"{col} low": None, f"{col} high": None, f"{col} method": None})
                continue
            text = fmt(g.value, signed=True)
            if g.low is not None:
                text += f" [{fmt(g.low)}, {fmt(g.high)}]"
            marks = ("*" if g.method == INDEPENDENT else "") + "".join(g.flags)
            used_methods.add(g.method or "")
            flagged = flagged or bool(g.flags)
            row.append(text + marks)
            rec.update({col: g.value, f"{col} low": g.low, f"{col} high": g.high, f"{col} method": g.method})
        table.rows.append(row)
        table.records.append(rec)
    if nulls_shown:
        table.notes.append(
            f"(null …, p …): the language's {metric}_null (the metric under shuffled labels, what chance gives at "
            "this sample size) and its permutation p-value; read per language, never averaged (docs/statistics.md)."
        )
    # summary rows
    # the languages every run has a finite value for: a gain's mean is over these, so a row that
    # shows a gain shows the models' means over the same languages
    shared = [
        lang for lang in comp.shared_languages(family)
        if all((m := comp.measurement(lab, family, lang, metric)) is not None and math.isfinite(m.value) for lab in labels)
    ]
    covered = {lab: comp.mean(lab, family, metric).languages for lab in labels}
    differ = any(covered[lab] != shared for lab in labels)
    rows_spec = [(MEAN_ROW, None), (SHARED_MEAN_ROW, shared)] if differ else [(MEAN_ROW, None)]
    def add_row(name: str, own, gain, *, signed: bool) -> None:
        """One summary row: each model's aggregate (``own(label)``) and each pair's gain (``gain(pair)``)."""
        row, rec = [name], {"language": name}
        for lab in labels:
            agg = own(lab)
            row.append(_agg_cell(agg, signed=signed))
            rec[lab] = agg.value
            rec[f"{lab} stderr"] = agg.se
        for pair, col in zip(comp.pairs, pair_cols):
            agg = gain(pair)
            row.append(_agg_cell(agg, signed=True, interval=True))
            rec.update({col: agg.value, f"{col} low": agg.low, f"{col} high": agg.high, f"{col} method": agg.source})
        table.rows.append(row)
        table.records.append(rec)

    for name, langs in rows_spec:
        add_row(
            name, lambda lab: comp.mean(lab, family, metric, langs),
            # with languages that differ, the gain is shown on the shared row only (over its languages)
            (lambda pair: Aggregate(None, source="see the shared-languages row")) if differ and langs is None
            else (lambda pair: comp.mean_gain(pair, family, metric, shared)),
            signed=False,
        )
    add_row(
        GAP_ROW,
        lambda lab: comp.english_minus_rest(lab, family, metric),
        lambda pair: comp.english_minus_rest_gain(pair, family, metric),
        signed=True,
    )

    if comp.pairs:
        level = f"{comp.ci_level:.0%}"
        table.notes.append(
            f"Gain = aligned − base of the values above, [{level} interval] from a paired bootstrap over the shared "
            "texts (both models scored on the same resamples; the basic bootstrap interval with the PCA basis "
            "refitted in each resample, for the probe AUROC the cross-validation-corrected t interval, "
            "docs/statistics.md); mean rows: ± "
            f"{comp.z:.2f} × SE over independent languages; intervals clipped to the metric's range"
            + ("; * marks an independent interval, gain ± z × sqrt(SE_base² + SE_aligned²), used where the texts "
               "could not be paired (see the notes)" if INDEPENDENT in used_methods else "")
            + ("; † marks languages where the runs differ in task version, settings or number of texts" if flagged else "")
            + "."
        )
    for lab in labels:
        left = comp.left_out(lab, family, metric)
        if left:
            covered = comp.mean(lab, family, metric).languages
            table.notes.append(
                f"{MEAN_ROW} of {lab}: over {len(covered)} of {len(comp.languages[family])} languages"
                + (f" ({', '.join(covered)})" if covered else "") + "; left out: "
                + ", ".join(f"{lang} ({why})" for lang, why in left.items()) + "."
            )
    for pair, col in zip(comp.pairs, pair_cols):
        if all(comp.gain(pair, family, lang, metric) is None for lang in comp.languages[family]):
            table.notes.append(
                f"{col}: not computed — no language of {family} has a {metric} value in both runs, so every gain "
                "cell is —."
            )
    table.notes.append(
        f"{MEAN_ROW}: mean over each model's languages (from the results JSON group row where it covers them); "
        + (f"{SHARED_MEAN_ROW}: models and gain over the languages every run has a value for "
           f"({', '.join(shared) or 'none'}); " if differ else "")
        + f"{GAP_ROW}: the {ENGLISH} value minus the mean of the other languages (how English-centric the separation is)."
    )
    return table


def data_table(comp: Comparison, family: str) -> Table:
    """Texts measured, and the bookkeeping counts the runs report, per language and model."""
    labels = comp.runs_with(family)
    counts = comp.count_metrics[family]
    table = Table(name=f"{family}_data", title=f"{family} · texts per language", columns=["language", *labels])
    for lang in comp.languages[family]:
        row, rec = [lang], {"language": lang}
        for lab in labels:
            t = comp.task(lab, family, lang)
            if t is None:
                row.append(MISSING)
                rec[f"{lab} texts"] = None
                continue
            parts = [f"{t.n_samples if t.n_samples is not None else '?'} texts"]
            rec[f"{lab} texts"] = t.n_samples
            for c in counts:
                m = t.metrics.get(c)
                if m is not None:
                    rec[f"{lab} {c}"] = m.value
                    if m.value:
                        parts.append(f"{c.removeprefix('n_')} {fmt(m.value)}")
            parts.append("states" if t.states_path else "no states")
            row.append(", ".join(parts))
        table.rows.append(row)
        table.records.append(rec)
    table.notes.append(
        "texts: documents the run measured (lm-eval's effective n-samples); truncated: texts longer than the model's "
        "context, cut on the configured side; excluded: rows the data loader dropped; states: whether the pooled "
        "states were saved beside the results (needed for PCA pictures and paired intervals)."
    )
    return table


def write_csv(table: Table, path: Path) -> Path:
    """Full-precision CSV of a table (floats as ``repr``; empty cells for none)."""
    fields: list[str] = []
    for rec in table.records:
        for key in rec:
            if key not in fields:
                fields.append(key)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields)
        writer.writeheader()
        for rec in table.records:
            writer.writerow({k: "" if rec.get(k) is None else (repr(rec[k]) if isinstance(rec[k], float) else rec[k])
                             for k in fields})
    return path
