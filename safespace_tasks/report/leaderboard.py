"""The leaderboard: one sortable table per family over every run of the report (`safespace report` over N models).

Rows are models, columns the family mean and each language, each cell ``value [low, high]`` with the
normal interval ``value +- z * SE`` (SE: the run's stderr; for the mean sqrt(sum SE^2) / L over the
languages every model has, so the means of all rows cover the same languages). The metric is the
family's first (the report's order: ``bcv_ratio`` for the separation families, ``refusal_margin``,
``direction_gap`` ...). Rows start sorted by the mean, best first (the metric table's direction).

In the HTML page every header sorts its column (click again to reverse) and a URL hash sorts on load:
``#sort=en`` sorts every leaderboard table that has an ``en`` column, ``#sort=toxicity:en`` only the
toxicity table, ``&dir=asc`` (or ``desc``) overrides the best-first direction; missing values go last.
Numbers sort by the cell's ``data-value`` (full precision), not by its text.
"""

from __future__ import annotations

import html
import math
from typing import Any

from safespace_tasks import metric_table as mt
from safespace_tasks.report.compare import Comparison
from safespace_tasks.report.tables import MISSING, Table, fmt

__all__ = ["MEAN_COL", "family_metric", "leaderboard_table", "leaderboard_html", "SORT_SCRIPT", "SORT_STYLE"]

MEAN_COL = "mean"


def family_metric(comp: Comparison, family: str) -> str | None:
    return comp.metrics[family][0] if comp.metrics.get(family) else None


def _higher_is_better(metric: str) -> bool:
    try:
        return mt.spec(metric).higher_is_better
    except mt.UnknownMetricError:
        return True


def _interval_cell(value: float | None, se: float | None, z: float) -> tuple[str, float | None, float | None]:
    if value is None:
        return MISSING, None, None
    if not math.isfinite(value):
        return "n/a", None, None
    if se is None or not math.isfinite(se):
        return fmt(value), None, None
    low, high = value - z * se, value + z * se
    return f"{fmt(value)} [{fmt(low)}, {fmt(high)}]", low, high


def leaderboard_table(comp: Comparison, family: str) -> Table | None:
    """Model rows (best mean first), mean and language columns, each with its interval; numbers in ``records``."""
    metric = family_metric(comp, family)
    labels = comp.runs_with(family)
    if metric is None or not labels:
        return None
    langs = comp.languages[family]
    shared = comp.shared_languages(family)
    higher = _higher_is_better(metric)
    t = Table(name=f"leaderboard_{family}", title=f"Leaderboard · {family} · {metric}",
              columns=["model", MEAN_COL, *langs])
    entries = []
    for lab in labels:
        agg = comp.mean(lab, family, metric, shared)
        mean = agg.value if agg.value is not None and math.isfinite(agg.value) else None
        text, low, high = _interval_cell(agg.value, agg.se, comp.z)
        row = [lab, text]
        rec: dict[str, Any] = {"model": lab, MEAN_COL: mean, f"{MEAN_COL} low": low, f"{MEAN_COL} high": high}
        for lang in langs:
            m = comp.measurement(lab, family, lang, metric)
            text, low, high = _interval_cell(None if m is None else m.value, None if m is None else m.stderr, comp.z)
            row.append(text)
            rec.update({lang: None if m is None or not math.isfinite(m.value) else m.value,
                        f"{lang} low": low, f"{lang} high": high})
        entries.append((mean, row, rec))
    entries.sort(key=lambda e: (e[0] is None, 0.0 if e[0] is None else (-e[0] if higher else e[0])))
    for _, row, rec in entries:
        t.rows.append(row)
        t.records.append(rec)
    t.notes.append(
        f"{metric}: {'higher' if higher else 'lower'} is better; rows sorted by the mean, best first. Cells: value "
        f"[{comp.ci_level:.0%} interval] = value ± {comp.z:.2f} × the run's stderr. {MEAN_COL}: over "
        f"{', '.join(shared) or 'no shared language'} (the languages every model has), SE = sqrt(Σ SE²) / L."
    )
    return t


SORT_STYLE = ('table.leaderboard th[aria-sort="descending"]::after{content:" \\25BC"}'
              'table.leaderboard th[aria-sort="ascending"]::after{content:" \\25B2"}')

SORT_SCRIPT = r"""
(function () {
  function num(cell) { var v = parseFloat(cell.getAttribute('data-value')); return isNaN(v) ? null : v; }
  function sortTable(tb, col, dir) {
    var heads = tb.tHead.rows[0].cells, idx = -1, i;
    for (i = 0; i < heads.length; i++) { if (heads[i].getAttribute('data-col') === col) { idx = i; } }
    if (idx < 0) { return false; }
    var body = tb.tBodies[0], rows = Array.prototype.slice.call(body.rows);
    rows.sort(function (a, b) {
      if (col === 'model') {
        var s = a.cells[idx].textContent.localeCompare(b.cells[idx].textContent);
        return dir === 'asc' ? s : -s;
      }
      var x = num(a.cells[idx]), y = num(b.cells[idx]);
      if (x === null && y === null) { return 0; }
      if (x === null) { return 1; }
      if (y === null) { return -1; }
      return dir === 'asc' ? x - y : y - x;
    });
    rows.forEach(function (r) { body.appendChild(r); });
    for (i = 0; i < heads.length; i++) {
      heads[i].setAttribute('aria-sort', i === idx ? (dir === 'asc' ? 'ascending' : 'descending') : 'none');
    }
    tb.setAttribute('data-sorted', col + ':' + dir);
    return true;
  }
  function best(tb) { return tb.getAttribute('data-higher') === '1' ? 'desc' : 'asc'; }
  function fromHash() {
    var m = /sort=([^&]+)/.exec(location.hash);
    if (!m) { return; }
    var spec = decodeURIComponent(m[1]), d = /dir=(asc|desc)/.exec(location.hash), fam = null, col = spec;
    var cut = spec.indexOf(':');
    if (cut >= 0) { fam = spec.slice(0, cut); col = spec.slice(cut + 1); }
    var tables = document.querySelectorAll('table.leaderboard');
    for (var i = 0; i < tables.length; i++) {
      if (fam !== null && tables[i].getAttribute('data-family') !== fam) { continue; }
      sortTable(tables[i], col, d ? d[1] : best(tables[i]));
    }
  }
  var tables = document.querySelectorAll('table.leaderboard');
  for (var i = 0; i < tables.length; i++) {
    (function (tb) {
      var heads = tb.tHead.rows[0].cells;
      for (var j = 0; j < heads.length; j++) {
        heads[j].style.cursor = 'pointer';
        heads[j].addEventListener('click', function () {
          var col = this.getAttribute('data-col'), was = tb.getAttribute('data-sorted') || '';
          var dir = was === col + ':' + best(tb) ? (best(tb) === 'asc' ? 'desc' : 'asc') : best(tb);
          sortTable(tb, col, dir);
        });
      }
    })(tables[i]);
  }
  window.addEventListener('hashchange', fromHash);
  fromHash();
})();
"""


def leaderboard_html(table: Table, family: str, metric: str) -> str:
    """The table as sortable HTML: ``data-col`` on headers, ``data-value`` (full precision) on number cells."""
    higher = "1" if _higher_is_better(metric) else "0"
    left = ' style="text-align:left"'
    head = "".join(
        f'<th data-col="{html.escape(c)}"{"" if i else left}>{html.escape(c)}</th>' for i, c in enumerate(table.columns)
    )
    rows = []
    for row, rec in zip(table.rows, table.records):
        cells = [f'<td style="text-align:left">{html.escape(row[0])}</td>']
        for col, text in zip(table.columns[1:], row[1:]):
            v = rec.get(col)
            attr = "" if v is None else f' data-value="{v!r}"'
            cells.append(f"<td{attr}>{html.escape(text)}</td>")
        rows.append(f'<tr data-model="{html.escape(row[0])}">' + "".join(cells) + "</tr>")
    notes = "".join(f"<p>{html.escape(n)}</p>" for n in table.notes)
    return (f'<div style="overflow-x:auto"><table class="leaderboard" id="leaderboard-{html.escape(family)}" data-family="{html.escape(family)}" '
            f'data-higher="{higher}"><caption>{html.escape(table.title)}</caption><thead><tr>{head}</tr></thead>'
            f'<tbody>{"".join(rows)}</tbody></table></div><div class="notes">{notes}</div>')
