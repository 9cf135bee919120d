"""Side-by-side report of finished runs: tables, a leaderboard summary and plots, from saved files only.

Reads lm-eval output folders (results JSON plus the plugin's saved states and details), matches
models, task families, languages and metrics, and writes into one folder:

- ``report.md`` (and with ``html=True`` a self-contained ``report.html``): tables and pictures;
- ``summary.json``: per model the per-language values, the mean over languages and the
  English-minus-rest gap, and per base/aligned pair the gains with intervals (see
  :mod:`safespace_tasks.report.summary`);
- ``tables/*.csv``: every table at full precision;
- ``img/*.png``: values and gains per language, the PCA scatter grid, and layer sweeps.

Imports numpy, scikit-learn and matplotlib only: no torch, no lm-eval, no model.

    from safespace_tasks.report import build_report
    build_report(["out/base", "out/aligned"], "report/", base="base", aligned=["aligned"])
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from safespace_tasks.report.compare import (
    INDEPENDENT,
    PAIRED,
    Comparison,
    Notice,
    ReportInputError,
    assign_labels,
    compare_runs,
)
from safespace_tasks.report.document import Bullets, Document, Heading, Image, Paragraph, to_html, to_markdown
from safespace_tasks.report.runs import Run, RunError, discover_runs, load_run
from safespace_tasks.report.summary import write_summary
from safespace_tasks.report.tables import Table, data_table, metric_table, write_csv

log = logging.getLogger(__name__)

__all__ = ["ReportResult", "ReportInputError", "RunError", "build_report", "load_runs", "Comparison", "Notice"]


@dataclass
class ReportResult:
    """What :func:`build_report` wrote and what it had to say about the input."""

    out: Path
    comparison: Comparison
    markdown: Path
    summary: Path
    html: Path | None = None
    tables: dict[str, Path] = field(default_factory=dict)
    images: dict[str, Path] = field(default_factory=dict)
    # (run label, family, metric) -> the sweep dict (every language of the run; report.layers form)
    sweeps: dict[tuple[str, str, str], dict] = field(default_factory=dict)
    leaderboard: Path | None = None  # leaderboard.html (with html=True)
    suites: object | None = None  # report.suites.SuiteView of other suites in the runs, if any
    glances: dict[tuple[str, str], object] = field(default_factory=dict)  # (label, family) -> report.glance.Glance

    @property
    def notices(self) -> list[Notice]:
        return self.comparison.notices


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-") or "run"


def load_runs(paths: Sequence[str | Path], labels: dict[str | Path, str] | None = None) -> list[Run]:
    """Every run under ``paths`` (a path may hold several models), labelled, in the order given."""
    runs: list[Run] = []
    seen: set[Path] = set()
    for p in paths:
        for found in discover_runs(p):
            key = found.resolve()
            if key in seen:
                continue
            seen.add(key)
            runs.append(load_run(found))
    assign_labels(runs, {Path(k): v for k, v in (labels or {}).items()})
    return runs


def _resolve_mark(mark: str | None, runs: list[Run]) -> str | None:
    """A --base / --aligned value: a run label, or a path that is (or holds) one of the runs."""
    if mark is None:
        return None
    if any(r.label == mark for r in runs):
        return mark
    p = Path(mark)
    if p.exists():
        target = p.resolve()
        hits = [r for r in runs if r.folder.resolve() == target or target in (f.resolve() for f in r.results_files)
                or target in r.folder.resolve().parents]
        if len(hits) == 1:
            return hits[0].label
        if len(hits) > 1:
            raise ReportInputError(f"{mark} holds several runs ({', '.join(r.label for r in hits)}); name one by label.")
    raise ReportInputError(f"{mark!r} is neither a run label ({', '.join(r.label for r in runs)}) nor a run folder.")


def build_report(
    paths: Sequence[str | Path],
    out: str | Path,
    *,
    labels: dict[str | Path, str] | None = None,
    base: str | None = None,
    aligned: Sequence[str] = (),
    ci_level: float = 0.95,
    n_boot: int | None = None,
    families: Sequence[str] | None = None,
    html: bool = False,
    plots: bool = True,
    max_points: int = 1000,
    progress: bool = True,
) -> ReportResult:
    """Build the report of the runs under ``paths`` into ``out``.

    ``labels`` names runs (path -> label); ``base`` and ``aligned`` (labels or run folders) mark the
    pair(s) whose gain is reported; ``n_boot`` overrides the replicates of the paired bootstrap
    (default: each run's own ``bootstrap_iters``). Problems with the input are collected as notices
    (returned, written into the report and the summary) and the report holds whatever can be
    reported; :class:`ReportInputError` is raised only when nothing can.
    """
    marks = [m for m in (base, *aligned) if m is not None]
    runs = load_runs(paths, labels) if paths else []
    known = {r.label for r in runs}
    # a mark that is not a label of the runs given but a folder of its own adds that run
    extra = [m for m in marks if m not in known and Path(m).exists() and not _covered(m, paths)]
    if extra:
        runs = load_runs([*paths, *extra], labels)
    if not runs:
        raise ReportInputError("no runs given: pass one or more lm-eval output folders.")
    base_label = _resolve_mark(base, runs)
    aligned_labels = [_resolve_mark(a, runs) for a in aligned]
    comp = compare_runs(
        runs, base=base_label, aligned=[a for a in aligned_labels if a], ci_level=ci_level, n_boot=n_boot,
        families=families, progress=progress,
    )
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    result = ReportResult(out=out, comparison=comp, markdown=out / "report.md", summary=out / "summary.json")
    blocks: list = []
    blocks.append(Paragraph(_intro(comp)))
    blocks.append(_runs_table(comp))
    if comp.notices:
        blocks.append(Heading("Notes on the input"))
        blocks.append(Bullets([f"**{n.level}**: {n.text}" for n in comp.notices]))
    from safespace_tasks.report import views as V

    board = V.leaderboard_blocks(comp, out, result)
    blocks += board + V.suite_blocks(comp, out, result) + V.repbeh_blocks(comp, out, result, plots)

    for fam in comp.families:
        blocks.append(Heading(f"Family: {fam}"))
        blocks += V.glance_blocks(comp, fam, out, result, plots)
        dt = data_table(comp, fam)
        dt.align = ["l"] * len(dt.columns)
        result.tables[dt.name] = write_csv(dt, out / "tables" / f"{dt.name}.csv")
        blocks.append(dt)
        for metric in comp.metrics[fam]:
            t = metric_table(comp, fam, metric)
            result.tables[t.name] = write_csv(t, out / "tables" / f"{_slug(t.name)}.csv")
            blocks.append(t)
        if not plots:
            continue
        from safespace_tasks.report import plots as P

        img = out / "img"
        p = P.plot_values(comp, fam, img / f"{_slug(fam)}_values.png")
        if p:
            result.images[f"{fam}_values"] = p
            blocks.append(Image(p.relative_to(out), f"{fam} values per language",
                                f"Each model's value per language; whiskers: {comp.ci_level:.0%} interval "
                                "(value ± z × the run's bootstrap SE)."))
        for b, a in comp.pairs:
            p = P.plot_gains(comp, (b, a), fam, img / f"{_slug(fam)}_gain_{_slug(a)}_vs_{_slug(b)}.png")
            if p:
                result.images[f"{fam}_gain_{a}_vs_{b}"] = p
                blocks.append(Image(p.relative_to(out), f"{fam} gain {a} minus {b}",
                                    f"Alignment gain {a} − {b} per language with its {comp.ci_level:.0%} interval "
                                    "(solid: paired bootstrap over shared texts; hatched: independent SEs)."))
        if any(t.states_path for r in comp.runs for t in r.tasks.values() if t.family == fam):
            blocks.append(Heading(f"{fam}: the hidden space, toxic vs non-toxic", 3))
            p = P.plot_pca_grid(comp, fam, img / f"{_slug(fam)}_pca.png", max_points=max_points, progress=progress)
            if p:
                result.images[f"{fam}_pca"] = p
                blocks.append(Image(p.relative_to(out), f"{fam} PCA scatter grid",
                                    "Pooled states of the reported layer projected on their first two principal "
                                    "components, fitted separately for every model and language; the corner shows "
                                    f"the reported {comp.metrics[fam][0] if comp.metrics[fam] else 'metric'} "
                                    "(computed on PCA-k, not on these two components)."))
        else:
            blocks.append(Paragraph(f"No run saved {fam} states, so there is no PCA picture for {fam}."))
        sweeps = comp.layer_metrics[fam]
        if sweeps:
            blocks.append(Heading(f"{fam}: separation per layer", 3))
            for metric in comp.metrics[fam]:
                if metric not in sweeps:
                    continue
                p = P.plot_layer_sweep(comp, fam, metric, img / f"{_slug(fam)}_layers_{_slug(metric)}.png")
                if p:
                    result.images[f"{fam}_layers_{metric}"] = p
                    blocks.append(Image(p.relative_to(out), f"{fam} {metric} per layer",
                                        "Hidden-state index 0 is the embedding output; the last index is the final "
                                        "layer after the model's final norm."))
            blocks += _run_sweeps(comp, fam, sweeps, out, result, plots)
    blocks += _transfer_blocks(comp, out, result, plots)
    blocks.append(Heading("How these numbers were computed"))
    blocks.append(Bullets(_method_notes(comp)))
    doc = Document(title="safespace report: " + " vs ".join(comp.labels), blocks=blocks)
    result.markdown.write_text(to_markdown(doc), encoding="utf-8")
    write_summary(comp, result.summary, sweeps=result.sweeps)
    if html:
        result.html = out / "report.html"
        result.html.write_text(to_html(doc, out), encoding="utf-8")
        if board:
            result.leaderboard = V.write_leaderboard_page(comp, board, out / "leaderboard.html")
    return result


def _run_sweeps(comp: Comparison, fam: str, sweeps: dict, out: Path, result: ReportResult, plots: bool) -> list:
    """Per run and metric: every language of the run on one plot, and where each one peaks."""
    from safespace_tasks.report import layers as L

    blocks: list = []
    for lab in comp.runs_with(fam):
        for metric in comp.metrics[fam]:
            if metric not in sweeps:
                continue
            sweep = L.sweep_from_comparison(comp, lab, fam, metric)
            if sweep is None:
                continue
            result.sweeps[(lab, fam, metric)] = sweep
            blocks.append(Paragraph(f"**{lab}**, {metric}: " + L.summary_markdown(sweep)))
            if plots:
                path = out / "img" / f"{_slug(fam)}_layers_{_slug(metric)}_{_slug(lab)}_all_languages.png"
                p = L.plot_layer_sweep(sweep, path, title=f"{lab}: {fam} {metric} per layer, every language")
                result.images[f"{fam}_layers_{metric}_{lab}"] = p
                blocks.append(Image(p.relative_to(out), f"{lab} {fam} {metric} per layer, all languages",
                                    "One line per language; the dotted marks are each language's best layer."))
    return blocks


def _transfer_blocks(comp: Comparison, out: Path, result: ReportResult, plots: bool) -> list:
    """The transfer task's matrix of each run (heat map + table) and, per base/aligned pair, the gain."""
    from safespace_tasks.report import transfer as T

    runs = [r for r in comp.runs if r.transfer]
    if not runs:
        return []
    blocks: list = [Heading("Cross-lingual transfer (safespace_transfer)")]
    for run in runs:
        data = T.load_transfer(run.transfer)
        final = max(x for x in data["layers"] if x is not None) if any(x is not None for x in data["layers"]) else None
        for src in data["sources"]:
            blocks.append(Paragraph(f"**{run.label}**: " + T.source_markdown(data, src, layer=final)))
        if len(data["sources"]) > 1:
            blocks.append(Paragraph(T.matrix_markdown(data, "transfer_auroc", layer=final, intervals=True)))
        if plots:
            p = T.plot_transfer_heatmap(data, out / "img" / f"transfer_{_slug(run.label)}.png", layer=final,
                                        title=f"{run.label}: transfer AUROC, hidden state {final}")
            result.images[f"transfer_{run.label}"] = p
            blocks.append(Image(p.relative_to(out), f"{run.label} transfer matrix",
                                "Rows: source languages, columns: targets; framed cells are the source's own "
                                "cross-validated numbers."))
    by_label = {r.label: r for r in runs}
    for b, a in comp.pairs:
        if b not in by_label or a not in by_label:
            continue
        base, aligned = T.load_transfer(by_label[b].transfer), T.load_transfer(by_label[a].transfer)
        layers = [x for x in base["layers"] if x in aligned["layers"] and x is not None]
        if not layers:
            continue
        for src in base["sources"]:
            if src not in aligned["sources"]:
                continue
            try:
                rows = T.transfer_gain(base, aligned, source=src, layer=max(layers))
            except T.TransferReportError as err:
                comp.notices.append(Notice("warning", f"transfer gain {a} − {b} from {src}: {err}"))
                continue
            blocks.append(Paragraph(T.gain_markdown(rows, source=src, base_label=b, aligned_label=a)))
            if plots:
                p = T.plot_transfer_gain(rows, out / "img" / f"transfer_gain_{_slug(a)}_vs_{_slug(b)}_{src}.png",
                                         source=src, base_label=b, aligned_label=a)
                result.images[f"transfer_gain_{a}_vs_{b}_{src}"] = p
                blocks.append(Image(p.relative_to(out), f"transfer gain {a} − {b} from {src}",
                                    "Per target: the gain in transfer AUROC beside the gain in the target's own AUROC "
                                    "(no interval: the two runs' resamples are not combined here)."))
    return blocks


def _covered(mark: str, paths: Sequence[str | Path]) -> bool:
    target = Path(mark).resolve()
    for p in paths:
        q = Path(p).resolve()
        if target == q or q in target.parents or target in q.parents:
            return True
    return False


def _intro(comp: Comparison) -> str:
    if comp.pairs:
        parts = []
        for b, a in comp.pairs:
            with_gain = [fam for fam in comp.families if _has_gain(comp, (b, a), fam)]
            without = [fam for fam in comp.families if fam not in with_gain]
            if not with_gain:
                parts.append(
                    f"**{a}** (aligned) and **{b}** (base) were marked as a pair, but no gain could be computed: "
                    "they share no language with a value in both runs, so every gain cell is — and the tables show "
                    "each model's own values only"
                )
            else:
                parts.append(
                    f"Alignment gain of **{a}** (aligned) against **{b}** (base) in {', '.join(with_gain)}"
                    + (f"; none in {', '.join(without)} (no language with a value in both runs)" if without else "")
                )
        return ". ".join(parts) + f". Families: {', '.join(comp.families)}."
    return (
        f"Models side by side: {', '.join(f'**{lab}**' for lab in comp.labels)}. No base/aligned pair was marked "
        "(`--base` / `--aligned`), so no gain is computed: differences between these models are not an "
        f"alignment effect unless they are a base model and its aligned version. Families: {', '.join(comp.families)}."
    )


def _has_gain(comp: Comparison, pair: tuple[str, str], family: str) -> bool:
    """Whether at least one language of ``family`` got a finite gain for ``pair``."""
    return any(
        g.value == g.value and abs(g.value) != float("inf")
        for (b, a, fam, _, _), g in comp.gains.items() if (b, a) == pair and fam == family
    )


def _runs_table(comp: Comparison) -> Table:
    t = Table(name="runs", title="Runs", columns=["label", "model", "results", "lm-eval", "tasks", "saved states"],
              align=["l", "l", "l", "l", "r", "r"])
    for run in comp.runs:
        n_states = sum(1 for task in run.tasks.values() if task.states_path)
        t.rows.append([
            run.label,
            run.model_name,
            ", ".join(str(f) for f in run.results_files),
            str(run.lm_eval_version or "?"),
            str(len(run.tasks)),
            f"{n_states} of {len(run.tasks)}",
        ])
    return t


def _method_notes(comp: Comparison) -> list[str]:
    notes = [
        "Every value in the tables is the one in the run's results JSON (CSV files in `tables/` hold them at full "
        "precision); ± is the standard error the run reports (for the hidden-space metrics a bootstrap over texts, "
        "stratified by class, PCA basis held fixed).",
        "mean: the results JSON's group row when the run covers exactly the same languages, else the mean of the "
        "language rows; en − rest: the English value minus the mean of the other languages. Their ± combine the "
        "languages' standard errors as independent samples: sqrt(Σ SE²) / L, and sqrt(SE_en² + Σ SE_rest² / (L − 1)²).",
    ]
    methods = {g.method for g in comp.gains.values()}
    if PAIRED in methods:
        n = sorted({g.n_boot for g in comp.gains.values() if g.method == PAIRED and g.n_boot})
        notes.append(
            f"Gain intervals (paired): {', '.join(map(str, n))} bootstrap resamples of the texts, each resample "
            "scoring both models on the same texts with each run's ridge and probe folds and each model's PCA basis "
            "refitted on the resample; SE = standard deviation of aligned − base over the resamples; the interval is "
            "the basic bootstrap interval (2·gain − upper and lower quantile of the resampled gains) for the PCA "
            "metrics and the cross-validation-corrected t interval for the probe AUROC (docs/statistics.md; the "
            "saved states reproduce the reported values exactly, which is checked)."
        )
    if INDEPENDENT in methods:
        notes.append(
            f"Gain intervals (independent, marked *): gain ± {comp.z:.2f} × sqrt(SE_base² + SE_aligned²), used where "
            "the two runs' texts could not be paired. Right for independent samples of texts; on the same texts "
            "it ignores what they share and is conservative (several times wider than the paired interval)."
        )
    if comp.pairs:
        notes.append("Mean gain: mean of the language gains, SE = sqrt(Σ SE²) / L (languages are independent text "
                     "samples); en − rest gain: gain(en) − mean(gain of the rest), SE combined the same way.")
    notes.append("PCA pictures: PCA-2 fitted on each model's and language's own states (both classes together, "
                 "centred, not scaled); axes are therefore not comparable across panels, only the class layout is.")
    return notes
