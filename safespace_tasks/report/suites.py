"""Other suites beside ours: the headline metric of hellaswag, arc, mmlu ... per model, and its change.

A run of ``--tasks 'safespace_*,hellaswag'`` holds rows of other suites in its results JSON. The report
shows, per suite, one headline metric exactly as lm-eval reports it (value and stderr), so the
alignment tax (what a standard benchmark loses or gains) stands beside the safety separation.

- *Which rows*: a task or group of another suite with at least one numeric metric, unless a group
  above it has one too (mmlu is shown, not its 57 subjects; ``ai2_arc``, a group without an
  aggregate, shows ``arc_easy`` and ``arc_challenge``).
- *Which metric*: the first of :data:`HEADLINE_ORDER` the row has (filter ``none`` first, then
  ``strict-match``, then by name), else the row's first metric; the same metric for every model.
- *Change of a base/aligned pair*: ``aligned - base`` of the two reported values, with a normal
  interval ``change +- z * SE``. **Paired** when both runs logged their samples (``--log_samples``)
  for the same documents (same ``doc_id`` and ``doc_hash``) and the per-document values reproduce
  the reported numbers (mean of the task; for a group the size-weighted or plain mean of its
  tasks): SE = sqrt(sum_k w_k^2 var_k(d) / n_k) over the tasks k of the suite, d the per-document
  difference, w_k the task's weight in the reported mean. Otherwise **independent**:
  SE = sqrt(SE_base^2 + SE_aligned^2) from the two stderrs lm-eval reports; the table says why.

Plain JSON reading only: no lm-eval import.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from safespace_tasks.report.runs import Measurement, OtherTask, Run, parse_metrics

__all__ = ["HEADLINE_ORDER", "SuiteChange", "SuiteView", "suite_view", "headline_metric", "top_level"]

HEADLINE_ORDER = ("acc_norm", "acc", "exact_match", "mc2", "mc1", "f1", "em", "bleu", "word_perplexity")
FILTER_ORDER = ("none", "strict-match")
PAIRED = "paired"
INDEPENDENT = "independent"


@dataclass
class SuiteChange:
    """``aligned - base`` of a suite's headline metric, with its interval and how it was obtained."""

    base: str
    aligned: str
    suite: str
    metric: str
    value: float | None
    se: float | None
    low: float | None
    high: float | None
    method: str | None
    why: str = ""  # for an independent interval: why the samples could not be paired
    n_docs: int | None = None


@dataclass
class SuiteView:
    """Per suite: the metric shown, each model's value, each pair's change."""

    suites: list[str]
    metric: dict[str, str]
    alias: dict[str, str]
    higher_is_better: dict[str, bool | None]
    values: dict[tuple[str, str], Measurement] = field(default_factory=dict)  # (label, suite)
    n_samples: dict[tuple[str, str], int | None] = field(default_factory=dict)
    changes: dict[tuple[str, str, str], SuiteChange] = field(default_factory=dict)  # (base, aligned, suite)


def _doc_groups(run: Run) -> dict[str, list[str]]:
    """Every group -> subtasks listing of the run's results files (groups without metrics included)."""
    out: dict[str, list[str]] = {}
    for f in run.results_files:
        try:
            doc = json.loads(Path(f).read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            continue
        for group, subs in (doc.get("group_subtasks") or {}).items():
            if isinstance(subs, list):
                out[group] = [str(s) for s in subs]
    return out


def top_level(run: Run) -> list[str]:
    """The other-suite rows to show: those with no ancestor row that has a metric, in results order."""
    groups = _doc_groups(run)
    parents: dict[str, set[str]] = {}
    for g, subs in groups.items():
        for s in subs:
            parents.setdefault(s, set()).add(g)

    def has_measured_ancestor(name: str, seen: frozenset = frozenset()) -> bool:
        for p in parents.get(name, ()):
            if p in seen:
                continue
            if p in run.other_tasks or has_measured_ancestor(p, seen | {name}):
                return True
        return False

    return [name for name in run.other_tasks if not has_measured_ancestor(name)]


def headline_metric(task: OtherTask) -> str | None:
    """The metric key (``acc_norm`` or ``exact_match/strict-match``) shown for a row."""
    keys = list(parse_metrics(task.row))
    if not keys:
        return None

    def rank_filter(key: str) -> tuple[int, str]:
        flt = key.partition("/")[2] or "none"
        return (FILTER_ORDER.index(flt) if flt in FILTER_ORDER else len(FILTER_ORDER), flt)

    for name in HEADLINE_ORDER:
        hits = [k for k in keys if k.partition("/")[0] == name]
        if hits:
            return min(hits, key=rank_filter)
    return keys[0]


def _leaves(name: str, groups: dict[str, list[str]], seen: frozenset = frozenset()) -> list[str]:
    if not groups.get(name) or name in seen:  # lm-eval may list a plain task with no subtasks
        return [name]
    out: list[str] = []
    for s in groups[name]:
        out += _leaves(s, groups, seen | {name})
    return out


def _close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)


def _samples(run: Run, task: str, date_id: str, metric: str) -> dict[Any, tuple[str | None, float]] | str:
    """``{doc_id: (doc_hash, value)}`` of a task's logged samples for one metric, or why there are none."""
    name, _, flt = metric.partition("/")
    flt = flt or "none"
    path = run.folder / f"samples_{task}_{date_id}.jsonl"
    if not path.exists():
        return f"{run.label} logged no samples for {task} (run lm-eval with --log_samples)"
    out: dict[Any, tuple[str | None, float]] = {}
    with path.open(encoding="utf-8") as fh:
        for line in fh:
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                return f"{path.name} holds a line that is not JSON"
            if rec.get("filter", "none") != flt:
                continue
            v = rec.get(name)
            if isinstance(v, bool):
                v = float(v)
            if not isinstance(v, (int, float)) or not math.isfinite(v):
                return f"{task}'s logged {name} is not one number per document (a corpus metric cannot be paired)"
            out[rec.get("doc_id")] = (rec.get("doc_hash"), float(v))
    if not out:
        return f"{path.name} has no {name} with filter {flt}"
    return out


def _paired(base: Run, aligned: Run, suite: str, metric: str, vb: float, va: float) -> tuple[float, int] | str:
    """(SE of the paired change, number of documents), or why the samples cannot be paired."""
    per_run = []
    for run, reported in ((base, vb), (aligned, va)):
        groups = _doc_groups(run)
        leaves = _leaves(suite, groups)
        date = run.other_tasks[suite].date_id
        data = {}
        for leaf in leaves:
            s = _samples(run, leaf, run.other_tasks[leaf].date_id if leaf in run.other_tasks else date, metric)
            if isinstance(s, str):
                return s
            data[leaf] = s
        means = {k: sum(v for _, v in d.values()) / len(d) for k, d in data.items()}
        for leaf in leaves:  # a task's mean of its logged values must be its reported number
            m = run.other_tasks.get(leaf)
            rep = parse_metrics(m.row).get(metric) if m else None
            if rep is not None and not _close(rep.value, means[leaf]):
                return f"{run.label}'s logged {metric} of {leaf} does not average to the reported value"
        n = {k: len(d) for k, d in data.items()}
        total = sum(n.values())
        pooled = sum(means[k] * n[k] for k in leaves) / total
        plain = sum(means.values()) / len(means)
        if _close(pooled, reported):
            weights = {k: n[k] / total for k in leaves}
        elif _close(plain, reported):
            weights = {k: 1 / len(leaves) for k in leaves}
        else:
            return f"{run.label}'s logged samples do not reproduce its reported {metric} of {suite}"
        per_run.append((data, weights))
    (db, wb), (da, wa) = per_run
    if set(db) != set(da) or any(abs(wb[k] - wa[k]) > 1e-12 for k in wb):
        return "the two runs hold different tasks under this suite"
    var_sum, n_docs = 0.0, 0
    for k in db:
        if set(db[k]) != set(da[k]) or any(db[k][i][0] != da[k][i][0] for i in db[k]):
            return f"the two runs scored different documents of {k} (another --limit or data)"
        d = [da[k][i][1] - db[k][i][1] for i in db[k]]
        if len(d) < 2:
            return f"{k} has fewer than 2 documents"
        mu = sum(d) / len(d)
        var = sum((x - mu) ** 2 for x in d) / (len(d) - 1)
        var_sum += wb[k] ** 2 * var / len(d)
        n_docs += len(d)
    return math.sqrt(var_sum), n_docs


def suite_view(runs: list[Run], pairs: list[tuple[str, str]], z: float) -> SuiteView | None:
    """Collect the other suites of ``runs``; None when no run has one."""
    by_label = {r.label: r for r in runs}
    suites: list[str] = []
    metric: dict[str, str] = {}
    alias: dict[str, str] = {}
    hib: dict[str, bool | None] = {}
    for run in runs:
        for name in top_level(run):
            if name in suites:
                continue
            key = headline_metric(run.other_tasks[name])
            if key is None:
                continue
            suites.append(name)
            metric[name] = key
            # a subtask's alias is indented (" - arc_easy"): the name without the indent
            alias[name] = str(run.other_tasks[name].row.get("alias") or name).strip().lstrip("- ").strip() or name
            h = run.other_tasks[name].higher_is_better.get(key.partition("/")[0])
            hib[name] = h if isinstance(h, bool) else None
    if not suites:
        return None
    view = SuiteView(suites=suites, metric=metric, alias=alias, higher_is_better=hib)
    for run in runs:
        for s in suites:
            t = run.other_tasks.get(s)
            m = parse_metrics(t.row).get(metric[s]) if t else None
            if m is not None:
                view.values[(run.label, s)] = m
                view.n_samples[(run.label, s)] = t.n_samples if t else None
    for b, a in pairs:
        for s in suites:
            mb, ma = view.values.get((b, s)), view.values.get((a, s))
            if mb is None or ma is None:
                continue
            change = ma.value - mb.value
            if not math.isfinite(change):
                view.changes[(b, a, s)] = SuiteChange(b, a, s, metric[s], None, None, None, None, None,
                                                      "a value is not a number")
                continue
            got = _paired(by_label[b], by_label[a], s, metric[s], mb.value, ma.value)
            if isinstance(got, tuple):
                se, n_docs = got
                method, why = PAIRED, ""
            else:
                n_docs, why = None, got
                se = math.sqrt(mb.stderr**2 + ma.stderr**2) if mb.stderr is not None and ma.stderr is not None else None
                method = INDEPENDENT if se is not None else None
                if se is None:
                    why += "; a run reports no stderr, so there is no interval"
            view.changes[(b, a, s)] = SuiteChange(
                b, a, s, metric[s], change, se, None if se is None else change - z * se,
                None if se is None else change + z * se, method, why, n_docs,
            )
    return view


def suite_table(view: SuiteView, labels: list[str], pairs: list[tuple[str, str]], ci_level: float, z: float):
    """Rows = suites, columns = each model's value ± stderr and, per pair, the change [interval] and its method."""
    from safespace_tasks.report.tables import MISSING, Table, fmt

    pair_cols = [f"change {a} − {b}" for b, a in pairs]
    cols = ["suite", "metric", *labels]
    for col in pair_cols:
        cols += [col, "interval"]
    t = Table(name="other_suites", title="Standard benchmarks beside safespace (as lm-eval reports them)",
              columns=cols, align=["l", "l", *["r"] * len(labels), *["r", "l"] * len(pairs)])
    why_notes: list[str] = []
    for s in view.suites:
        metric = view.metric[s]
        row = [view.alias[s], metric + ("" if view.higher_is_better[s] is None else
                                        (" ↑" if view.higher_is_better[s] else " ↓"))]
        rec: dict[str, Any] = {"suite": s, "metric": metric, "higher_is_better": view.higher_is_better[s]}
        for lab in labels:
            m = view.values.get((lab, s))
            row.append(MISSING if m is None else (fmt(m.value) if m.stderr is None else f"{fmt(m.value)} ± {fmt(m.stderr)}"))
            rec[lab] = None if m is None else m.value
            rec[f"{lab} stderr"] = None if m is None else m.stderr
            rec[f"{lab} n"] = view.n_samples.get((lab, s))
        for (b, a), col in zip(pairs, pair_cols):
            c = view.changes.get((b, a, s))
            if c is None or c.value is None:
                row += [MISSING, ""]
                rec.update({col: None, f"{col} low": None, f"{col} high": None, f"{col} method": None})
                continue
            text = fmt(c.value, signed=True)
            if c.low is not None:
                text += f" [{fmt(c.low)}, {fmt(c.high)}]"
            how = f"paired, {c.n_docs} docs" if c.method == PAIRED else (c.method or "none")
            if c.why:
                why_notes.append(f"{view.alias[s]}, {a} − {b}: {c.why}.")
            row += [text, how]
            rec.update({col: c.value, f"{col} low": c.low, f"{col} high": c.high, f"{col} method": c.method,
                        f"{col} why": c.why or None})
        t.rows.append(row)
        t.records.append(rec)
    t.notes.append("Each model cell is the suite's headline metric in the run's results JSON, ± the stderr lm-eval "
                   "reports (↑ higher is better, ↓ lower, as lm-eval says). Headline: acc_norm, else acc, else "
                   "exact_match …; a group with an aggregate (mmlu) stands for its tasks.")
    if pairs:
        t.notes.append(
            f"change = aligned − base, [{ci_level:.0%} interval] = change ± {z:.2f} × SE. paired: both runs logged "
            "their samples (--log_samples) for the same documents, SE from the per-document differences "
            "(sqrt(Σ w_k² var_k / n_k) over the suite's tasks k, w_k their weight in the reported mean); "
            "independent: SE = sqrt(SE_base² + SE_aligned²) from the reported stderrs, which ignores that both "
            "models answered the same questions (usually wider)."
        )
    t.notes += why_notes
    return t
