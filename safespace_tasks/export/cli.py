"""``safespace export``: write finished runs in formats other tools read.

    safespace export eee RUN... [--model-id ORG/NAME] [--out DIR] [--validate]

``eee``: Every Eval Ever 0.3.0 records (see :mod:`safespace_tasks.export.eee`). ``--validate`` then runs
the real ``every_eval_ever validate`` on the records with the Python named by ``$SAFESPACE_EEE_PYTHON``
(every-eval-ever needs Python >= 3.12, so it lives in its own virtualenv; docs/export.md).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Sequence

PROG = "safespace export"
EEE_PYTHON_ENV = "SAFESPACE_EEE_PYTHON"


def eee_validator() -> list[str] | None:
    """The command that runs ``every_eval_ever``: ``$SAFESPACE_EEE_PYTHON -m every_eval_ever``, else the
    ``every_eval_ever`` script on PATH; None when neither is there."""
    python = os.environ.get(EEE_PYTHON_ENV)
    if python:
        return [python, "-m", "every_eval_ever"]
    script = shutil.which("every_eval_ever")
    return [script] if script else None


def _parser() -> argparse.ArgumentParser:
    from safespace_tasks.export.eee import EEE_VALIDATED_WITH, RELATIONSHIPS

    parser = argparse.ArgumentParser(prog=PROG, description="write finished runs in formats other tools read")
    sub = parser.add_subparsers(dest="format", required=True)
    eee = sub.add_parser(
        "eee", help="Every Eval Ever (schema 0.3.0) records, one per task and family row",
        description=(
            "Write one Every Eval Ever 0.3.0 record per safespace task (language) and family row of each RUN, "
            "into DIR/data/<task>/<org>/<name>/<uuid>.json, from the results and details files. Each metric "
            "carries its direction, bounds, unit, stderr, sample count and 95 %% interval; null floors and "
            "p-values are details of their metric. A metric without a finite value is left out and counted."
        ),
    )
    eee.add_argument("runs", nargs="+", metavar="RUN",
                     help="an --output_path folder (one subfolder per model), a model folder, or a results_*.json")
    eee.add_argument("--model-id", metavar="ORG/NAME",
                     help="the model's Hub id (required when the run loaded a local folder, e.g. the embedded default)")
    eee.add_argument("--out", "-o", default="eee", metavar="DIR",
                     help="folder to write into (default: eee): the records go under DIR/data/ "
                          "(into DIR itself when it is named data)")
    eee.add_argument("--source-org", default="", metavar="NAME",
                     help="source_organization_name: who ran the evaluation (default: empty)")
    eee.add_argument("--evaluator-relationship", default="third_party", choices=RELATIONSHIPS,
                     help="the evaluator's relationship to the model (default: third_party)")
    eee.add_argument("--validate", action="store_true",
                     help=f"then run `every_eval_ever validate` on the records (${EEE_PYTHON_ENV}: a Python >= 3.12 "
                          f"with `pip install {EEE_VALIDATED_WITH}`)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from safespace_tasks.export.eee import ExportError, export_eee

    args = _parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    validator = eee_validator() if args.validate else None
    if args.validate and validator is None:
        print(f"{PROG} eee: error: --validate needs every_eval_ever: set {EEE_PYTHON_ENV} to a Python >= 3.12 that has "
              "it (docs/export.md), or drop --validate.", file=sys.stderr)
        return 2
    try:
        result = export_eee(args.runs, args.out, model_id=args.model_id, relationship=args.evaluator_relationship,
                            organisation=args.source_org)
    except ExportError as err:
        print(f"{PROG} eee: error: {err}", file=sys.stderr)
        return 2
    for notice in result.notices:
        print(f"note: {notice}", file=sys.stderr)
    for item in result.left_out:
        print(f"left out: {item.task} {item.metric}: {item.reason}", file=sys.stderr)
    root = result.records[0].parents[3] if result.records else Path(args.out)
    print(f"eee: {len(result.records)} records under {root} ({len(result.left_out)} metrics left out: no finite value)")
    if not args.validate or not result.records:
        return 0
    # absolute paths: the validator finds the datastore root as the nearest folder named data above each file
    files = [str(p.resolve()) for p in result.records]
    proc = subprocess.run([*validator, "validate", *files], capture_output=True, text=True)
    tail = (proc.stdout + proc.stderr).strip().splitlines()
    print("\n".join(tail[-5:]))
    verdict = {0: "valid", 2: "valid, with warnings"}.get(proc.returncode, f"INVALID (exit {proc.returncode})")
    print(f"every_eval_ever validate: {verdict}")
    return proc.returncode


if __name__ == "__main__":
    sys.exit(main())
