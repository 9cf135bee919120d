"""Match runs by family, language and metric; check they are comparable; compute alignment gains.

Values are read, never recomputed: every number in a table is the results JSON's. What the
report adds is computed here and says how:

- the *gain* of an aligned model over its base, per language: ``aligned - base`` of the results
  JSON values, with an interval from a **paired bootstrap** over the texts when both runs saved
  their states for the same texts (one resample of texts scores both models, see
  :func:`safespace_tasks.stats.paired.paired_bootstrap_difference`), else from the two runs' own
  standard errors taken as **independent** (``sqrt(se_a^2 + se_b^2)``: right for independent samples
  of texts, conservative for two runs on the same texts, which a note then says);
- the mean over languages (the results JSON's group row when it covers exactly these languages,
  else the mean of the language rows) and the English-minus-rest gap ``en - mean(other languages)``.

Intervals: a paired gain carries the interval of the paired bootstrap itself (the *basic*
bootstrap interval of docs/statistics.md for the PCA metrics, with the PCA basis refitted in
every replicate; the cross-validation-corrected t interval for the probe AUROC); an independent
gain, a mean over languages and the English-minus-rest gap use ``estimate +- z * se`` (a sum of
independent terms). Every interval is clipped to the metric's range (a difference to
``[lo - hi, hi - lo]``).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from statistics import NormalDist
from typing import Any, Iterable, Sequence

import numpy as np

from safespace_tasks import metric_table as mt
from safespace_tasks.report.runs import Measurement, Run, TaskResult, is_count_metric, split_metric

log = logging.getLogger(__name__)

__all__ = ["Notice", "Gain", "Aggregate", "Comparison", "ReportInputError", "compare_runs", "assign_labels"]

ENGLISH = "en"
PAIRED = "paired bootstrap"
# Metrics whose gain the report can bootstrap from saved states: the separation metrics, and the
# pair metrics of the paired families (toxic sentence and its rewrite), from the metric table.
PAIR_METRICS = mt.PAIR_METRICS
INDEPENDENT = "independent"
# The independent interval is right for two independent samples of texts (its SE is 0.87-1.19x the
# gain's true sd there on the planted d = 64 spectra, docs/statistics.md); two runs on the same
# texts share most of their sampling error, which cancels in the gain and which this interval
# cannot see without the states.
SAME_TEXTS_NOTE = (
    "The two runs have the same data, settings and text count, so they most likely measured the same "
    "texts: what those texts contribute to both values cancels in the gain, and this interval, which cannot "
    "see that without the states, is conservative (on planted data its SE is 1.7-4.6x the gain's true spread). "
    "Save the states of both runs for the paired interval."
)


def metric_range(metric: str) -> tuple[float, float]:
    """Natural range of a metric's value (its metric-table row's ``range``; unbounded for a name the table lacks)."""
    try:
        return mt.spec(split_metric(metric)[0]).range
    except mt.UnknownMetricError:
        return (-math.inf, math.inf)


def _clip(low: float, high: float, lo: float, hi: float) -> tuple[float, float]:
    return max(low, lo), min(high, hi)


class ReportInputError(ValueError):
    """The runs cannot be put side by side at all (the message says why and what to pass)."""


@dataclass(frozen=True)
class Notice:
    """A message for the reader: ``level`` is ``warning`` (something is missing or may mislead) or ``note``."""

    level: str
    text: str

    def __str__(self) -> str:
        return f"{self.level}: {self.text}"


@dataclass
class Gain:
    """``aligned - base`` for one family, language and metric, with its interval."""

    base: str
    aligned: str
    family: str
    language: str
    metric: str
    value: float
    se: float | None
    low: float | None
    high: float | None
    method: str | None
    flags: list[str] = field(default_factory=list)
    n_boot: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "gain": _finite_or_none(self.value),
            "se": _finite_or_none(self.se),
            "ci": None if self.low is None else [_finite_or_none(self.low), _finite_or_none(self.high)],
            "method": self.method,
            **({"n_boot": self.n_boot} if self.n_boot else {}),
            **({"flags": list(self.flags)} if self.flags else {}),
        }


@dataclass
class Aggregate:
    """A value over languages (a mean or the English-minus-rest gap), with how it was obtained."""

    value: float | None
    se: float | None = None
    low: float | None = None
    high: float | None = None
    languages: list[str] = field(default_factory=list)
    source: str = ""

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"value": _finite_or_none(self.value)}
        if self.se is not None:
            out["se"] = _finite_or_none(self.se)
        if self.low is not None:
            out["ci"] = [_finite_or_none(self.low), _finite_or_none(self.high)]
        out["languages"] = list(self.languages)
        out["source"] = self.source
        return out


def _finite_or_none(x: float | None) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)


@dataclass
class Comparison:
    """Everything a report shows, keyed by run label, family, language and metric."""

    runs: list[Run]
    ci_level: float
    families: list[str]
    languages: dict[str, list[str]]
    metrics: dict[str, list[str]]
    count_metrics: dict[str, list[str]]
    layer_metrics: dict[str, dict[str, list[str]]]
    pairs: list[tuple[str, str]]
    gains: dict[tuple[str, str, str, str, str], Gain] = field(default_factory=dict)
    notices: list[Notice] = field(default_factory=list)

    @property
    def labels(self) -> list[str]:
        return [r.label for r in self.runs]

    @property
    def z(self) -> float:
        return NormalDist().inv_cdf(0.5 + self.ci_level / 2.0)

    def run(self, label: str) -> Run:
        for r in self.runs:
            if r.label == label:
                return r
        raise KeyError(label)

    def task(self, label: str, family: str, language: str) -> TaskResult | None:
        return self.run(label).task_for(family, language)

    def measurement(self, label: str, family: str, language: str, metric: str) -> Measurement | None:
        t = self.task(label, family, language)
        return None if t is None else t.metrics.get(metric)

    def gain(self, pair: tuple[str, str], family: str, language: str, metric: str) -> Gain | None:
        return self.gains.get((pair[0], pair[1], family, language, metric))

    def runs_with(self, family: str) -> list[str]:
        return [r.label for r in self.runs if family in r.families]

    def shared_languages(self, family: str) -> list[str]:
        labels = self.runs_with(family)
        return [
            lang for lang in self.languages[family]
            if all(self.task(lab, family, lang) is not None for lab in labels)
        ]

    # ------------------------------------------------------------------ aggregates of one model

    def mean(self, label: str, family: str, metric: str, languages: Sequence[str] | None = None) -> Aggregate:
        """Mean over languages, with SE = sqrt(sum of the languages' SE^2) / L (independent text samples).

        The value is the results JSON's group row when that row covers exactly these languages (lm-eval's
        own stderr of a group row pools per-sample variances, which a corpus metric does not have, so
        it is not used), else the mean of the language rows; NaN languages are left out and named.
        """
        run = self.run(label)
        own = [lang for lang in self.languages[family] if self.measurement(label, family, lang, metric) is not None]
        langs = own if languages is None else [lang for lang in languages if lang in own]
        if not langs:
            return Aggregate(None, languages=[], source="no language has this metric")
        measured = [self.measurement(label, family, lang, metric) for lang in langs]
        finite = [(lang, m) for lang, m in zip(langs, measured) if m is not None and math.isfinite(m.value)]
        if not finite:
            return Aggregate(float("nan"), languages=langs, source="every language is NaN")
        ses = [m.stderr for _, m in finite]
        se = math.sqrt(sum(s**2 for s in ses)) / len(finite) if all(s is not None for s in ses) else None  # type: ignore[operator]
        group = f"safespace_{family}"
        row = run.groups.get(group, {})
        covered = {run.tasks[t].language for t in run.group_subtasks.get(group, []) if t in run.tasks}
        if metric in row and covered == set(langs) and len(finite) == len(langs) and math.isfinite(row[metric].value):
            value, source = row[metric].value, f"results JSON row {group}"
        else:
            value = float(np.mean([m.value for _, m in finite]))
            source = f"mean of {len(finite)} language rows"
            if len(finite) < len(langs):
                source += f" (NaN left out: {', '.join(lang for lang in langs if lang not in dict(finite))})"
        return self._agg(value, se, [lang for lang, _ in finite], source, metric_range(metric))

    def left_out(self, label: str, family: str, metric: str) -> dict[str, str]:
        """Languages of the family that ``label``'s mean of ``metric`` leaves out, each with why."""
        out: dict[str, str] = {}
        for lang in self.languages[family]:
            t = self.task(label, family, lang)
            if t is None:
                out[lang] = "not in the run"
            elif metric in t.unreadable:
                out[lang] = f"non-numeric value {_short(t.unreadable[metric])}"
            elif metric not in t.metrics:
                out[lang] = "no value in the results JSON"
            elif not math.isfinite(t.metrics[metric].value):
                out[lang] = "NaN"
        return out

    def english_minus_rest(self, label: str, family: str, metric: str) -> Aggregate:
        """``value(en) - mean(value of the other languages)``: how English-centric the separation is."""
        en = self.measurement(label, family, ENGLISH, metric)
        rest = [
            lang for lang in self.languages[family]
            if lang != ENGLISH and (m := self.measurement(label, family, lang, metric)) is not None and math.isfinite(m.value)
        ]
        if en is None or not math.isfinite(en.value):
            return Aggregate(None, source="no English value")
        if not rest:
            return Aggregate(None, source="no language besides English")
        rest_m = [self.measurement(label, family, lang, metric) for lang in rest]
        value = en.value - float(np.mean([m.value for m in rest_m]))  # type: ignore[union-attr]
        se = None
        if en.stderr is not None and all(m.stderr is not None for m in rest_m):  # type: ignore[union-attr]
            se = math.sqrt(en.stderr**2 + sum(m.stderr**2 for m in rest_m) / len(rest_m) ** 2)  # type: ignore[union-attr,operator]
        return Aggregate(value, se=se, languages=[ENGLISH, *rest], source="en - mean(rest)")

    # ------------------------------------------------------------------ aggregates of a gain

    def _gains_of(self, pair, family, metric) -> list[Gain]:
        out = []
        for lang in self.languages[family]:
            g = self.gain(pair, family, lang, metric)
            if g is not None and math.isfinite(g.value):
                out.append(g)
        return out

    def gain_languages(self, pair: tuple[str, str], family: str, metric: str) -> list[str]:
        """The languages with a finite gain: those a mean gain is taken over."""
        return [g.language for g in self._gains_of(pair, family, metric)]

    def mean_gain(self, pair: tuple[str, str], family: str, metric: str,
                  languages: Sequence[str] | None = None) -> Aggregate:
        """Mean gain over the languages both runs have with a finite value (or over ``languages``
        among them); languages are independent samples of texts. Its interval is clipped to the
        range of a difference of the metric."""
        gains = self._gains_of(pair, family, metric)
        if languages is not None:
            gains = [g for g in gains if g.language in set(languages)]
        if not gains:
            return Aggregate(None, source="no language with a gain")
        value = float(np.mean([g.value for g in gains]))
        se = None
        if all(g.se is not None for g in gains):
            se = math.sqrt(sum(g.se**2 for g in gains)) / len(gains)  # type: ignore[operator]
        lo, hi = metric_range(metric)
        return self._agg(value, se, [g.language for g in gains], "mean of the language gains", (lo - hi, hi - lo))

    def english_minus_rest_gain(self, pair: tuple[str, str], family: str, metric: str) -> Aggregate:
        gains = {g.language: g for g in self._gains_of(pair, family, metric)}
        en = gains.pop(ENGLISH, None)
        if en is None:
            return Aggregate(None, source="no English gain")
        if not gains:
            return Aggregate(None, source="no gain besides English")
        rest = list(gains.values())
        value = en.value - float(np.mean([g.value for g in rest]))
        se = None
        if en.se is not None and all(g.se is not None for g in rest):
            se = math.sqrt(en.se**2 + sum(g.se**2 for g in rest) / len(rest) ** 2)  # type: ignore[operator]
        lo, hi = metric_range(metric)
        return self._agg(value, se, [ENGLISH, *gains], "gain(en) - mean(gain of the rest)", (lo - hi, hi - lo))

    def _agg(self, value: float, se: float | None, langs: list[str], source: str,
             bounds: tuple[float, float] = (-math.inf, math.inf)) -> Aggregate:
        if se is None or not math.isfinite(se):
            return Aggregate(value, languages=langs, source=source)
        low, high = _clip(value - self.z * se, value + self.z * se, *bounds)
        return Aggregate(value, se=se, low=low, high=high, languages=langs, source=source)


# --------------------------------------------------------------------------- building


def assign_labels(runs: list[Run], explicit: dict[Path, str] | None = None) -> None:
    """Give every run a unique, readable label: the user's, else the model's short name.

    An explicit label names the run whose folder or results file is that path, or the one run that
    folder holds (an ``--output_path`` folder with a single model in it).
    """
    chosen: dict[int, str] = {}
    for path, label in (explicit or {}).items():
        target = Path(path).resolve()
        hits = [
            i for i, r in enumerate(runs)
            if target == r.folder.resolve() or target in r.folder.resolve().parents
            or any(target == f.resolve() for f in r.results_files)
        ]
        if not hits:
            raise ReportInputError(f"label {label!r}: {path} is not one of the runs given.")
        if len(hits) > 1:
            raise ReportInputError(
                f"label {label!r}: {path} holds {len(hits)} runs ({', '.join(str(runs[i].folder) for i in hits)}); "
                "point the label at one model folder."
            )
        chosen[hits[0]] = label
    seen: dict[str, int] = {}
    for i, run in enumerate(runs):
        label = chosen.get(i) or run.default_label()
        if label in seen:
            seen[label] += 1
            label = f"{label} ({seen[label]})"
        else:
            seen[label] = 1
        run.label = label


def _language_order(runs: Iterable[Run], family: str) -> list[str]:
    """English first, then the family group's order, then the order the runs list their tasks."""
    order: list[str] = []
    for run in runs:
        for tasks in run.group_subtasks.values():
            for name in tasks:
                t = run.tasks.get(name)
                if t is not None and t.family == family and t.language not in order:
                    order.append(t.language)
    for run in runs:  # tasks outside a group: in the order the results JSON lists them
        for t in run.tasks.values():
            if t.family == family and t.language not in order:
                order.append(t.language)
    if ENGLISH in order:
        order.remove(ENGLISH)
        order.insert(0, ENGLISH)
    return order


def _is_peak(name: str) -> bool:
    try:
        return mt.spec(name).sweep_only
    except mt.UnknownMetricError:
        return False


def has_interval(name: str) -> bool:
    """False for a diagnostic the tasks report without a standard error (its gain has none either)."""
    try:
        return mt.spec(name).interval
    except mt.UnknownMetricError:
        return True


def is_reference_metric(metric: str) -> bool:
    """``<metric>_null`` / ``<metric>_p`` of a separation metric: references read beside the metric."""
    return any(metric == m + tail for m in mt.SEPARATION_METRICS for tail in ("_null", "_p"))


def _metric_order(names: Iterable[str]) -> list[str]:
    """The metric table's order; names the table does not hold (other sources) after it, sorted."""
    preferred = tuple(m.name for m in mt.METRICS)
    names = set(names)
    return [m for m in preferred if m in names] + sorted(names - set(preferred))


def compare_runs(
    runs: list[Run],
    *,
    base: str | None = None,
    aligned: Sequence[str] = (),
    ci_level: float = 0.95,
    n_boot: int | None = None,
    families: Sequence[str] | None = None,
    progress: bool = True,
) -> Comparison:
    """Put labelled runs side by side; with ``base`` and ``aligned`` labels, compute the gains."""
    if not runs:
        raise ReportInputError("no runs to report.")
    if not 0.0 < ci_level < 1.0:
        raise ReportInputError(f"the interval level must lie in (0, 1); got {ci_level}.")
    notices: list[Notice] = []
    for run in runs:
        for p in run.problems:
            notices.append(Notice("warning", p))
        if run.ignored_tasks:
            notices.append(Notice("note", f"{run.label}: tasks outside the safespace families are not in the report: "
                                          f"{', '.join(run.ignored_tasks)}."))
        if not run.tasks:
            notices.append(Notice("warning", f"{run.label}: its results hold no safespace task "
                                             f"(files: {', '.join(str(f) for f in run.results_files)})."))
    all_families = sorted({f for r in runs for f in r.families})
    if families:
        unknown = sorted(set(families) - set(all_families))
        if unknown:
            notices.append(Notice("warning", f"families {', '.join(unknown)} were asked for but no run has them "
                                             f"(the runs have: {', '.join(all_families) or 'none'})."))
        all_families = [f for f in all_families if f in set(families)]
    if not all_families and not any(r.transfer for r in runs):  # a transfer-only run still has its matrix
        raise ReportInputError(
            "none of the runs holds a safespace task, so there is nothing to compare. Run safespace-eval with "
            "--tasks safespace_toxicity (or another safespace family) and --output_path, then pass that folder."
        )
    languages = {f: _language_order(runs, f) for f in all_families}
    metrics: dict[str, list[str]] = {}
    counts: dict[str, list[str]] = {}
    layer_metrics: dict[str, dict[str, list[str]]] = {}
    for fam in all_families:
        # a metric that some run gives only as a non-numeric value still gets its table (and a notice)
        keys = {k for r in runs for t in r.tasks.values() if t.family == fam for k in (*t.metrics, *t.unreadable)}
        # the peak summary of a sweep (<m>_best, ...) is shown with the per-layer section, not as a metric;
        # <metric>_null and <metric>_p are shown beside their metric (never a table or a gain of their own)
        plain = [k for k in keys if split_metric(k)[1] is None and not _is_peak(k)]
        metrics[fam] = _metric_order(k for k in plain if not is_count_metric(k) and not is_reference_metric(k))
        counts[fam] = sorted(k for k in plain if is_count_metric(k))
        sweeps: dict[str, list[str]] = {}
        for k in keys:
            base_name, layer = split_metric(k)
            if layer is not None and base_name in metrics[fam]:
                sweeps.setdefault(base_name, []).append(k)
        layer_metrics[fam] = {m: [m, *sorted(v, key=lambda k: split_metric(k)[1])] for m, v in sweeps.items()}

    labels = [r.label for r in runs]
    pairs: list[tuple[str, str]] = []
    if aligned and base is None:
        raise ReportInputError("--aligned needs --base: the gain is aligned minus base.")
    if base is not None:
        if base not in labels:
            raise ReportInputError(f"--base {base!r} is none of the runs ({', '.join(labels)}).")
        if not aligned:
            aligned = [lab for lab in labels if lab != base]
            if not aligned:
                raise ReportInputError("--base was given but there is no other run to compare it with.")
        for a in aligned:
            if a not in labels:
                raise ReportInputError(f"--aligned {a!r} is none of the runs ({', '.join(labels)}).")
            if a == base:
                raise ReportInputError(f"{a!r} is marked both base and aligned.")
            pairs.append((base, a))

    comp = Comparison(
        runs=runs, ci_level=ci_level, families=all_families, languages=languages, metrics=metrics,
        count_metrics=counts, layer_metrics=layer_metrics, pairs=pairs, notices=notices,
    )
    _check_coverage(comp)
    _check_values(comp)
    _check_comparable(comp)
    _compute_gains(comp, n_boot=n_boot, progress=progress)
    return comp


def _check_coverage(comp: Comparison) -> None:
    for fam in comp.families:
        have = comp.runs_with(fam)
        lacking = [lab for lab in comp.labels if lab not in have]
        if lacking:
            comp.notices.append(Notice(
                "warning",
                f"{fam}: {', '.join(lacking)} {'has' if len(lacking) == 1 else 'have'} no {fam} task; "
                f"the {fam} tables show {', '.join(have)} only.",
            ))
        for lab in have:
            missing = [lang for lang in comp.languages[fam] if comp.task(lab, fam, lang) is None]
            if missing:
                comp.notices.append(Notice(
                    "warning",
                    f"{fam}: {lab} lacks {', '.join(missing)} (other runs have {'it' if len(missing) == 1 else 'them'}); "
                    f"those cells are empty, no gain is computed there, and {lab}'s mean is over its own "
                    f"{len(comp.languages[fam]) - len(missing)} languages (a mean over the shared languages is also given).",
                ))
            without_states = [
                lang for lang in comp.languages[fam]
                if (t := comp.task(lab, fam, lang)) is not None and t.states_path is None and t.settings.get("layers") is not None
            ]
            if without_states:
                reasons = sorted({comp.task(lab, fam, lang).states_problem or "" for lang in without_states})  # type: ignore[union-attr]
                comp.notices.append(Notice(
                    "warning",
                    f"{fam}: {lab} has no usable saved states for {', '.join(without_states)} ({'; '.join(reasons)}). "
                    "Its values and tables are reported; its PCA pictures and paired gain intervals are not "
                    "(gains with it use independent intervals).",
                ))
            nan_langs = [
                lang for lang in comp.languages[fam]
                if (t := comp.task(lab, fam, lang)) is not None
                and any(not math.isfinite(t.metrics[m].value) for m in comp.metrics[fam] if m in t.metrics)
            ]
            if nan_langs:
                comp.notices.append(Notice(
                    "warning",
                    f"{fam}: {lab} reports NaN for {', '.join(nan_langs)} (the run could not measure them; its log "
                    "and safespace_details JSON say why); shown as n/a and left out of means.",
                ))


def _short(raw: Any, limit: int = 40) -> str:
    text = repr(raw)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _check_values(comp: Comparison) -> None:
    """Name every metric value a results JSON gives as a non-number, or leaves out, and what it does to the mean."""
    for fam in comp.families:
        for lab in comp.runs_with(fam):
            for metric in comp.metrics[fam]:
                present = [lang for lang in comp.languages[fam] if comp.task(lab, fam, lang) is not None]
                bad = {lang: comp.task(lab, fam, lang).unreadable[metric] for lang in present  # type: ignore[union-attr]
                       if metric in comp.task(lab, fam, lang).unreadable}  # type: ignore[union-attr]
                absent = [lang for lang in present if lang not in bad and metric not in comp.task(lab, fam, lang).metrics]  # type: ignore[union-attr]
                if not bad and not absent:
                    continue
                covered = comp.mean(lab, fam, metric).languages
                parts = []
                if bad:
                    files = sorted({comp.task(lab, fam, lang).results_file.name for lang in bad})  # type: ignore[union-attr]
                    parts.append("a non-numeric " + metric + " for " + ", ".join(
                        f"{lang} ({_short(raw)})" for lang, raw in bad.items()) + f" in {', '.join(files)}")
                if absent:
                    parts.append(f"no {metric} value for {', '.join(absent)}")
                comp.notices.append(Notice(
                    "warning",
                    f"{fam}: {lab}'s results JSON holds {' and '.join(parts)}; "
                    f"{'that cell shows' if len(bad) + len(absent) == 1 else 'those cells show'} —, and {lab}'s mean "
                    f"of {metric} covers {len(covered)} of {len(comp.languages[fam])} languages"
                    + (f" ({', '.join(covered)})." if covered else " (none)."),
                ))


# Settings that change only the intervals, not the values: a difference does not make values incomparable.
INTERVAL_SETTINGS = ("bootstrap_iters", "ci_level")


def _settings_core(task: TaskResult) -> dict[str, Any]:
    """The settings that decide a reported value (the extra layers and interval settings left out)."""
    s = {k: v for k, v in task.settings.items() if k != "layers" and k not in INTERVAL_SETTINGS}
    layers = task.requested_layers()
    if layers:  # the layer whose metrics carry the plain names (the deepest read)
        from safespace_tasks.layer_spec import unsuffixed_position

        s["layer of the plain names"] = layers[unsuffixed_position(layers)]
    return s


def _differences(a: TaskResult, b: TaskResult) -> list[str]:
    out = []
    if a.version != b.version:
        out.append(f"task version {a.version} vs {b.version}")
    sa, sb = _settings_core(a), _settings_core(b)
    for key in sorted(set(sa) | set(sb)):
        if sa.get(key) != sb.get(key):
            out.append(f"{key} {sa.get(key)!r} vs {sb.get(key)!r}")
    if a.n_samples != b.n_samples:
        out.append(f"{a.n_samples} vs {b.n_samples} texts")
    return out


def _check_comparable(comp: Comparison) -> None:
    """Differences in version, settings or text count between the first run and each other one."""
    for fam in comp.families:
        have = comp.runs_with(fam)
        if len(have) < 2:
            continue
        ref = have[0]
        for lab in have[1:]:
            per_lang: dict[str, list[str]] = {}
            for lang in comp.languages[fam]:
                a, b = comp.task(ref, fam, lang), comp.task(lab, fam, lang)
                if a is None or b is None:
                    continue
                diffs = _differences(a, b)
                if diffs:
                    per_lang.setdefault("; ".join(diffs), []).append(lang)
            for text, langs in per_lang.items():
                comp.notices.append(Notice(
                    "warning",
                    f"{fam}: {ref} and {lab} differ in {', '.join(langs)}: {text}. The values are shown side by side "
                    "but may not be comparable; gains there are marked †.",
                ))


def _states_column(task: TaskResult, bundle, metric: str) -> int | None:
    layer = task.layer_of(metric)
    layers = [int(x) for x in bundle.layers]
    if layer is None:
        return 0 if split_metric(metric)[1] is None else None
    return layers.index(layer) if layer in layers else None


def _compute_gains(comp: Comparison, *, n_boot: int | None, progress: bool) -> None:
    from tqdm.auto import tqdm

    from safespace_tasks.stats.validation import SeparationInputError

    jobs = []
    for pair in comp.pairs:
        for fam in comp.families:
            for lang in comp.languages[fam]:
                a, b = comp.task(pair[0], fam, lang), comp.task(pair[1], fam, lang)
                if a is None or b is None:
                    continue
                jobs.append((pair, fam, lang, a, b))
    fallback: dict[tuple[str, str, str, str], list[str]] = {}
    for pair, fam, lang, a, b in tqdm(jobs, desc="gain intervals", unit="language", disable=not progress or not jobs):
        flags = ["†"] if _differences(a, b) else []
        paired = None
        why = None
        wanted = [m for m in comp.metrics[fam] if m in a.metrics and m in b.metrics]
        if a.states_path is None or b.states_path is None:
            if a.settings.get("layers") is None and b.settings.get("layers") is None:
                why = f"{fam} saves no hidden states to resample (its metrics are not measured from states)"
            else:
                why = "no saved states for " + " and ".join(lab for lab, t in zip(pair, (a, b)) if t.states_path is None)
        elif not set(wanted) & (set(mt.SEPARATION_METRICS) | set(PAIR_METRICS)):
            why = None  # metrics not measured from states: independent by nature, nothing to say
        else:
            try:
                paired, why = _paired(a, b, wanted, n_boot, comp.ci_level)
            except SeparationInputError as err:
                why = f"the states could not be resampled ({err})"
        for metric in wanted:
            ma, mb = a.metrics[metric], b.metrics[metric]
            value = mb.value - ma.value
            interval = None
            if paired is not None and metric in paired.difference:
                se, method, nb = paired.stderr[metric], PAIRED, paired.n_boot
                interval = paired.ci.get(metric)
            elif ma.stderr is not None and mb.stderr is not None:
                se, method, nb = math.sqrt(ma.stderr**2 + mb.stderr**2), INDEPENDENT, None
            else:
                se, method, nb = None, None, None
            ok = se is not None and math.isfinite(se) and math.isfinite(value)
            low = high = None
            if ok:
                if interval is not None and all(math.isfinite(x) for x in interval):
                    low, high = float(interval[0]), float(interval[1])
                else:
                    lo_m, hi_m = metric_range(metric)
                    low, high = _clip(value - comp.z * se, value + comp.z * se, lo_m - hi_m, hi_m - lo_m)
            comp.gains[(pair[0], pair[1], fam, lang, metric)] = Gain(
                base=pair[0], aligned=pair[1], family=fam, language=lang, metric=metric, value=value,
                se=se if ok else None, low=low, high=high,
                method=method if ok else None, flags=list(flags), n_boot=nb,
            )
        made = [comp.gains[(pair[0], pair[1], fam, lang, m)] for m in wanted]
        if paired is not None:
            unpaired = [g.metric for g in made if g.method == INDEPENDENT]
            if unpaired:
                why = f"the report has no paired bootstrap for {', '.join(unpaired)}"
        if why and any(g.method == INDEPENDENT for g in made):
            # no states to tell, but the same version, settings (data, --limit, seed) and text count:
            # almost surely the same texts
            same_texts = (not flags and (a.states_path is None or b.states_path is None)
                          and bool(set(wanted) & set(mt.SEPARATION_METRICS)))
            fallback.setdefault((pair[0], pair[1], fam, why, same_texts), []).append(lang)
        elif any(math.isfinite(g.value) and g.method is None and has_interval(g.metric) for g in made):
            fallback.setdefault((pair[0], pair[1], fam, "no interval", False), []).append(lang)
    for (base, aligned, fam, why, same_texts), langs in fallback.items():
        if why == "no interval":
            text = (f"{fam}: gain {aligned} - {base} in {', '.join(langs)} has no interval for some metrics: the runs "
                    "report no standard error for them and the texts could not be paired.")
        else:
            text = (f"{fam}: gain {aligned} - {base} in {', '.join(langs)} has an independent interval "
                    f"(sqrt(se_base^2 + se_aligned^2)), not a paired one: {why}.")
            if same_texts:
                text += (" " + SAME_TEXTS_NOTE)
        comp.notices.append(Notice("note", text))


def _paired(a: TaskResult, b: TaskResult, metrics: list[str], n_boot: int | None, ci_level: float = 0.95):
    """Paired bootstrap of b - a from the saved states; (result, None) or (None, why not)."""
    from safespace_tasks.stats.paired import paired_bootstrap_difference
    from safespace_tasks.stats.pairs import paired_shift_difference

    sa, sb = a.load_states(), b.load_states()
    assert sa is not None and sb is not None
    if sa.ids.shape != sb.ids.shape or not np.array_equal(sa.ids, sb.ids):
        common = np.intersect1d(sa.ids, sb.ids).size
        return None, (f"the runs measured different texts ({sa.ids.size} and {sb.ids.size} texts, {common} shared); "
                      "use the same data, --limit and seed for both")
    if not np.array_equal(sa.labels, sb.labels):
        return None, "the same text ids carry different labels (different data versions)"
    if not np.array_equal(sa.groups, sb.groups) or sa.meta.get("metric_groups") != sb.meta.get("metric_groups"):
        return None, "the texts are grouped differently in the two runs"
    ca, cb = _states_column(a, sa, metrics[0]), _states_column(b, sb, metrics[0])
    if ca is None or cb is None:
        return None, "the reported layer is not among the saved layers"
    settings = (sa.meta.get("settings") or {})
    other = (sb.meta.get("settings") or {})
    for key in ("pca_components", "seed", "probe_folds", "ridge"):
        if settings.get(key) != other.get(key):
            return None, f"the runs used different {key} ({settings.get(key)!r} vs {other.get(key)!r})"
    boots = n_boot or int(settings.get("bootstrap_iters") or 0) or 200
    seed = int(settings.get("seed", 0))
    folds = int(settings.get("probe_folds", 5))
    grouped = bool((sa.groups >= 0).any())
    Xa, Xb = sa.states[:, ca], sb.states[:, cb]
    res = paired_bootstrap_difference(
        Xa, Xb, sa.labels, k=int(settings.get("pca_components", 10)), n_boot=boots, seed=seed, ci_level=ci_level,
        groups=_metric_groups(sa, grouped), ridge=settings.get("ridge"), probe=any(_cross_fitted(m) for m in metrics),
        probe_folds=folds, probe_refits=int(settings.get("probe_refits") or 0),
    )
    if grouped and set(PAIR_METRICS) & set(metrics):
        pairs = paired_shift_difference(Xa, Xb, sa.labels, sa.groups, n_splits=folds, n_boot=boots, seed=seed,
                                        ci_level=ci_level)
        for field_name in ("values_a", "values_b", "difference", "stderr", "stderr_a", "stderr_b", "ci"):
            getattr(res, field_name).update(getattr(pairs, field_name))
    # The interval describes the reported numbers only if the states reproduce them.
    for metric in metrics:
        if metric not in res.values_a:
            continue
        for task, value in ((a, res.values_a[metric]), (b, res.values_b[metric])):
            reported = task.metrics[metric].value
            if math.isfinite(reported) and not math.isclose(reported, value, rel_tol=1e-6, abs_tol=1e-9):
                return None, (f"the saved states of {task.task} give {metric} = {value:.6g}, not the reported "
                              f"{reported:.6g}")
    return res, None


def _cross_fitted(metric: str) -> bool:
    """Whether the metric table declares ``metric`` a cross-fitted separation metric (the probe)."""
    try:
        kernel = mt.spec(metric).kernel
    except mt.UnknownMetricError:
        return False
    return kernel is not None and kernel.cross_fitted


def _metric_groups(states, grouped: bool):
    """The groups the task's metrics kept whole: saved beside the states when copies of a text were
    grouped (``meta["metric_groups"]``), else the saved pair ids (or none)."""
    saved = states.meta.get("metric_groups")
    if saved is not None:
        return np.asarray(saved, dtype=np.int64)
    return states.groups if grouped else None
