"""Markdown tables of docs/replication.md from the committed ``replication.json`` of each arm.

Reads the files that ``examples/replicate_alignment_gain.py`` wrote (one per arm and seed, e.g. under
docs/results/replication/) and writes, per task family:

1. the runs: arm, seed, pairs, learning rate, steps, doses, embeddings, minutes of training and evaluation;
2. **which metric sees alignment**: per metric and run, the standardised English gain at the final
   dose (gain / its stderr, the report's paired bootstrap), English-minus-rest gain with its
   interval, and the sign agreement of the real arm's English gain (and of its English-minus-rest
   gain) across every seed and dose above 0;
3. per metric, the dose-response of every run: English value, English gain [interval], z, the mean
   gain of the other languages and English-minus-rest [interval] at each dose;
4. per language, the gain of one metric (``--language-metric``) at each run's final dose, runs side by side.

Usage::

    python examples/replication_tables.py docs/results/replication/*.json --out tables.md
    python examples/replication_tables.py docs/results/replication/*.json --doc docs/replication.md

``--doc`` replaces what lies between the lines ``<!-- replication-tables:begin -->`` and
``<!-- replication-tables:end -->`` of that file. Only the standard library is needed.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

BEGIN, END = "<!-- replication-tables:begin -->", "<!-- replication-tables:end -->"
REAL_ARM = "dpo"
ENGLISH = "en"


def load(path: Path) -> dict:
    """One replication.json, with its path; an error naming the file when it is not one."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise SystemExit(f"{path}: cannot read it as JSON ({err})") from None
    if "dose_response" not in data:
        raise SystemExit(f"{path}: no dose_response: it was written by an older replicate_alignment_gain.py; "
                         "rerun that script (or pass only files it wrote with --eval-at support)")
    data["_path"] = str(path)
    return data


def _labels(runs: list[dict]) -> list[str]:
    out, seen = [], {}
    for r in runs:
        label = f"{r.get('arm', 'dpo')} s{r['settings']['seed']}"
        seen[label] = seen.get(label, 0) + 1
        out.append(label if seen[label] == 1 else f"{label} ({seen[label]})")
    return out


def _f(x, digits: int = 3, signed: bool = True) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "–"
    return f"{x:+.{digits}f}" if signed else f"{x:.{digits}f}"


def _ci(ci) -> str:
    return "" if not ci or ci[0] is None else f" [{_f(ci[0])}, {_f(ci[1])}]"


def _bold_if_excludes_zero(text: str, ci) -> str:
    return f"**{text}**" if ci and ci[0] is not None and (ci[0] > 0 or ci[1] < 0) else text


def standardised(gain, se):
    """gain / se (None when either is missing or se is 0)."""
    if gain is None or se is None or se <= 0:
        return None
    return gain / se


def sign_agreement(values) -> str:
    """``k/n +`` (or ``−``): how many of the finite values share the majority sign (ties count as +)."""
    v = [x for x in values if x is not None and math.isfinite(x)]
    if not v:
        return "–"
    pos, neg = sum(x > 0 for x in v), sum(x < 0 for x in v)
    return f"{pos}/{len(v)} +" if pos >= neg else f"{neg}/{len(v)} −"


def _families(runs) -> list[str]:
    return list(dict.fromkeys(f for r in runs for f in r["dose_response"]["families"]))


def _metrics(runs, fam) -> list[str]:
    return list(dict.fromkeys(m for r in runs for m in r["dose_response"]["families"].get(fam, {})))


def _final(run, fam, metric):
    """(English point, English-minus-rest entry) at the run's final dose, or (None, None)."""
    entry = run["dose_response"]["families"].get(fam, {}).get(metric)
    if not entry or ENGLISH not in entry["per_language"]:
        return None, None
    return entry["per_language"][ENGLISH][-1], entry["english_minus_rest_gain"][-1]


def runs_table(runs, labels) -> list[str]:
    lines = ["| run | file | pairs | lr | steps | doses | embeddings | train (min) | eval (min) | total (min) | "
             "mean loss, last dose |", "|---|---|---:|---:|---:|---|---|---:|---:|---:|---:|"]
    for r, lab in zip(runs, labels):
        s, sec = r["settings"], r.get("seconds", {})
        ev = sum(v for k, v in sec.items() if k.startswith("eval_"))
        last = r["doses"][-1] if r.get("doses") else {}
        lines.append(
            f"| {lab} | {Path(r['_path']).name} | {s['pairs']} | {s['lr']:g} | {r['training']['steps']} | "
            f"{', '.join(d['label'] for d in r['dose_response']['doses'])} | "
            f"{'frozen' if s.get('freeze_embeddings') else 'trained'} | {sec.get('train', 0) / 60:.1f} | "
            f"{ev / 60:.1f} | {sec.get('total', 0) / 60:.1f} | {_f(last.get('mean_loss'), 4, False)} |")
    return lines


def metric_summary(runs, labels, fam) -> list[str]:
    real = [r for r in runs if r.get("arm", "dpo") == REAL_ARM] or runs
    head = "| metric | " + " | ".join(f"{lab}: z(en) · en − rest" for lab in labels)
    head += f" | sign agreement, en gain ({REAL_ARM}, seeds × doses) | sign agreement, en − rest |"
    lines = [head, "|---|" + "---|" * len(labels) + "---|---|"]
    for metric in _metrics(runs, fam):
        cells = []
        for r in runs:
            en, gap = _final(r, fam, metric)
            if en is None:
                cells.append("–")
                continue
            z = standardised(en.get("gain"), en.get("gain_se"))
            gap_text = _bold_if_excludes_zero(_f(gap.get("value")) + _ci(gap.get("ci")), gap.get("ci"))
            cells.append(f"{_f(z, 1)} · {gap_text}")
        gains, gaps = [], []
        for r in real:
            entry = r["dose_response"]["families"].get(fam, {}).get(metric)
            if not entry or ENGLISH not in entry["per_language"]:
                continue
            for d, pt, gp in zip(r["dose_response"]["doses"], entry["per_language"][ENGLISH],
                                 entry["english_minus_rest_gain"]):
                if d.get("steps"):
                    gains.append(pt.get("gain"))
                    gaps.append(gp.get("value"))
        lines.append(f"| {metric} | " + " | ".join(cells) + f" | {sign_agreement(gains)} | {sign_agreement(gaps)} |")
    return lines


def dose_table(runs, labels, fam, metric) -> list[str]:
    lines = ["| run | dose | epochs | steps | en value | en gain [95 % CI] | z | mean gain, other languages | "
             "en − rest [95 % CI] |", "|---|---|---:|---:|---:|---|---:|---:|---|"]
    for r, lab in zip(runs, labels):
        entry = r["dose_response"]["families"].get(fam, {}).get(metric)
        if not entry or ENGLISH not in entry["per_language"]:
            continue
        for d, pt, gp in zip(r["dose_response"]["doses"], entry["per_language"][ENGLISH],
                             entry["english_minus_rest_gain"]):
            gain, gap = pt.get("gain"), gp.get("value")
            rest = None if gain is None or gap is None else gain - gap
            gain_text = _bold_if_excludes_zero(_f(gain) + _ci(pt.get("gain_ci")), pt.get("gain_ci"))
            gap_text = _bold_if_excludes_zero(_f(gap) + _ci(gp.get("ci")), gp.get("ci"))
            lines.append(f"| {lab} | {d['label']} | {_f(d.get('epochs'), 2, False)} | {d.get('steps')} | "
                         f"{_f(pt.get('value'), 4, False)} | {gain_text} | "
                         f"{_f(standardised(gain, pt.get('gain_se')), 1)} | {_f(rest)} | {gap_text} |")
    return lines


def language_table(runs, labels, fam, metric) -> list[str]:
    langs = list(dict.fromkeys(
        lang for r in runs for lang in r["dose_response"]["families"].get(fam, {}).get(metric, {})
        .get("per_language", {})))
    lines = ["| lang | base | " + " | ".join(f"{lab} gain [95 % CI]" for lab in labels) + " |",
             "|---|---:|" + "---|" * len(labels)]
    for lang in langs:
        base, cells = None, []
        for r in runs:
            pts = r["dose_response"]["families"].get(fam, {}).get(metric, {}).get("per_language", {}).get(lang)
            if not pts:
                cells.append("–")
                continue
            base = pts[0].get("value") if base is None else base
            cells.append(_bold_if_excludes_zero(_f(pts[-1].get("gain")) + _ci(pts[-1].get("gain_ci")),
                                                pts[-1].get("gain_ci")))
        lines.append(f"| {lang} | {_f(base, 4, False)} | " + " | ".join(cells) + " |")
    return lines


def render(runs: list[dict], *, metrics: list[str] | None = None, language_metric: str = "bcv_ratio") -> str:
    """All tables as one markdown string (intervals in bold exclude 0)."""
    if not runs:
        raise SystemExit("no replication.json given")
    labels = _labels(runs)
    out = ["#### Runs", "", *runs_table(runs, labels), ""]
    for fam in _families(runs):
        out += [f"#### {fam}: which metric sees alignment (final dose)", "",
                "z(en) = English gain / its paired-bootstrap stderr; en − rest = English gain minus the mean gain of "
                "the other languages, 95 % interval (bold: excludes 0).", "",
                *metric_summary(runs, labels, fam), ""]
        for metric in (metrics or _metrics(runs, fam)):
            if metric not in _metrics(runs, fam):
                continue
            out += [f"#### {fam} · {metric}: dose-response", "", *dose_table(runs, labels, fam, metric), ""]
        if language_metric in _metrics(runs, fam):
            out += [f"#### {fam} · {language_metric}: gain per language at each run's final dose", "",
                    *language_table(runs, labels, fam, language_metric), ""]
    return "\n".join(out)


def replace_block(doc: Path, tables: str) -> None:
    text = doc.read_text(encoding="utf-8")
    if BEGIN not in text or END not in text or text.index(BEGIN) > text.index(END):
        raise SystemExit(f"{doc} has no block {BEGIN} ... {END}: add those two lines where the tables go")
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    doc.write_text(f"{head}{BEGIN}\n{tables}\n{END}{tail}", encoding="utf-8")


def main(argv=None) -> str:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("files", nargs="+", help="replication.json files (one per arm and seed)")
    p.add_argument("--out", help="write the markdown here (default: print it)")
    p.add_argument("--doc", help="replace the marked block of this markdown file with the tables")
    p.add_argument("--metrics", help="comma-separated metrics of the dose-response tables (default: all)")
    p.add_argument("--language-metric", default="bcv_ratio", help="the metric of the per-language table")
    args = p.parse_args(argv)
    runs = [load(Path(f)) for f in args.files]
    md = render(runs, metrics=args.metrics.split(",") if args.metrics else None, language_metric=args.language_metric)
    if args.out:
        Path(args.out).write_text(md + "\n", encoding="utf-8")
    if args.doc:
        replace_block(Path(args.doc), md)
    if not args.out and not args.doc:
        sys.stdout.write(md + "\n")
    return md


if __name__ == "__main__":
    main()
