"""Where the task YAMLs live, for ``--include_path`` and lm-eval's task entry point."""

from __future__ import annotations

from pathlib import Path


def task_dir() -> Path:
    """The ``task_configs`` folder: inside the installed package (wheel), or beside it in a source checkout."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "task_configs", here.parent / "task_configs"):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(
        f"safespace task configs not found next to {here}; reinstall safespace-tasks (pip install safespace-tasks)."
    )


def task_manager(include_path=None, **kwargs):
    """An lm-eval ``TaskManager`` that knows the safespace tasks (plus any ``include_path`` of yours).

    It also installs the harness's patches (:mod:`safespace_tasks.harness.patches`), so a model built
    after this call, e.g. by ``lm_eval.simple_evaluate(..., task_manager=task_manager())``, gets the
    missing-model-path check before it loads.
    """
    from lm_eval.tasks import TaskManager

    import safespace_tasks.harness  # noqa: F401 - request type, model registration, patches 1-4

    extra = [] if include_path is None else list(include_path) if isinstance(include_path, (list, tuple)) else [include_path]
    return TaskManager(include_path=[str(task_dir()), *map(str, extra)], **kwargs)
