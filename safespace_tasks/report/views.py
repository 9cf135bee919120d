"""The report's overview sections, as blocks for :func:`safespace_tasks.report.build_report`.

- :func:`leaderboard_blocks`: one sortable table per family, models as rows (:mod:`.leaderboard`);
- :func:`suite_blocks`: other suites' headline metrics beside ours, with the change of each pair
  (:mod:`.suites`);
- :func:`repbeh_blocks`: representation vs behaviour per language (:mod:`.repbeh`);
- :func:`glance_blocks`: one model's languages x metrics against the null floor (:mod:`.glance`).

Each writes its tables as CSV (and pictures as PNG) into the report folder and records them in the
result's ``tables`` / ``images``.
"""

from __future__ import annotations

import re
from pathlib import Path

from safespace_tasks.report.compare import Comparison
from safespace_tasks.report.document import Document, Heading, Html, Image, Paragraph, to_html
from safespace_tasks.report.tables import Table, write_csv

__all__ = ["leaderboard_blocks", "suite_blocks", "repbeh_blocks", "glance_blocks", "write_leaderboard_page"]


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-") or "run"


def _csv(t: Table, out: Path, result) -> None:
    result.tables[t.name] = write_csv(t, out / "tables" / f"{_slug(t.name)}.csv")


def leaderboard_blocks(comp: Comparison, out: Path, result) -> list:
    """The leaderboard section (every family with a metric); in HTML the tables sort on a click or a #sort= hash."""
    from safespace_tasks.report import leaderboard as LB

    blocks: list = []
    for fam in comp.families:
        t = LB.leaderboard_table(comp, fam)
        if t is None:
            continue
        _csv(t, out, result)
        blocks.append(Html(LB.leaderboard_html(t, fam, LB.family_metric(comp, fam)), markdown=t))
    if not blocks:
        return []
    return [Heading("Leaderboard"),
            Paragraph("One table per family: models as rows, the family mean and each language as columns, each "
                      "cell with its interval. In the HTML page a click on a header sorts by it (again: reversed); "
                      "`#sort=en` or `#sort=toxicity:en` in the address sorts on load."),
            *blocks, Html(f"<style>{LB.SORT_STYLE}</style><script>{LB.SORT_SCRIPT}</script>")]


def write_leaderboard_page(comp: Comparison, blocks: list, path: Path) -> Path:
    """The leaderboard section alone as a self-contained HTML page."""
    doc = Document(title="safespace leaderboard: " + ", ".join(comp.labels), blocks=blocks)
    path.write_text(to_html(doc, path.parent), encoding="utf-8")
    return path


def suite_blocks(comp: Comparison, out: Path, result) -> list:
    from safespace_tasks.report import suites as S

    view = S.suite_view(comp.runs, comp.pairs, comp.z)
    if view is None:
        return []
    t = S.suite_table(view, comp.labels, comp.pairs, comp.ci_level, comp.z)
    _csv(t, out, result)
    result.suites = view
    return [Heading("Standard benchmarks beside safespace"),
            Paragraph("Other suites in the same runs, each with its headline metric as lm-eval reports it: what "
                      "alignment costs or gains on standard benchmarks, beside the safety separation above and "
                      "below."),
            t]


def repbeh_blocks(comp: Comparison, out: Path, result, plots: bool) -> list:
    from safespace_tasks.report import repbeh as R

    labels = [lab for lab in comp.labels if R.has_view(comp, lab)]
    if not labels:
        return []
    blocks: list = [Heading("Representation vs behaviour, per language"),
                    Paragraph("Does a language whose texts the model separates also get refused? x: separation "
                              "(toxicity probe AUROC; the direction gap of harmful vs harmless requests), y: the "
                              "refusal margin on the same language's MultiJail requests. A language far right but "
                              "low separates without refusing: the model sees the difference but does not act on "
                              "it (docs/report.md).")]
    for lab in labels:
        t = R.model_table(comp, lab)
        _csv(t, out, result)
        blocks.append(t)
        if plots:
            p = R.plot_model(comp, lab, out / "img" / f"repr_vs_behaviour_{_slug(lab)}.png")
            if p:
                result.images[f"repr_vs_behaviour_{lab}"] = p
                blocks.append(Image(p.relative_to(out), f"{lab} representation vs behaviour",
                                    f"One point per language; whiskers {comp.ci_level:.0%} (± z × SE) both ways."))
    for pair in comp.pairs:
        if pair[0] not in labels or pair[1] not in labels:
            continue
        t = R.pair_table(comp, pair)
        _csv(t, out, result)
        blocks.append(t)
        if plots:
            b, a = pair
            p = R.plot_pair(comp, pair, out / "img" / f"repr_vs_behaviour_{_slug(a)}_vs_{_slug(b)}.png")
            if p:
                result.images[f"repr_vs_behaviour_{a}_vs_{b}"] = p
                blocks.append(Image(p.relative_to(out), f"{b} to {a} representation vs behaviour",
                                    f"Arrows from {b} (grey) to {a} (red) per language."))
    return blocks


def glance_blocks(comp: Comparison, family: str, out: Path, result, plots: bool) -> list:
    """Per model: the family's languages x metrics against the null floor (picture, or its table without plots)."""
    from safespace_tasks.report import glance as G

    blocks: list = []
    for lab in comp.runs_with(family):
        g = G.glance(comp, lab, family)
        if g is None:
            continue
        t = G.glance_table(g)
        _csv(t, out, result)
        result.glances[(lab, family)] = g
        if plots:
            p = G.plot_glance(g, out / "img" / f"{_slug(family)}_vs_null_{_slug(lab)}.png")
            result.images[f"{family}_vs_null_{lab}"] = p
            blocks.append(Image(p.relative_to(out), f"{lab} {family} against the null floor", G._note(g)))
        else:
            blocks.append(t)
    return blocks
