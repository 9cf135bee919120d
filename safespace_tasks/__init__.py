"""safespace-tasks: lm-eval tasks that measure, per language, how safety alignment shows in a model's hidden space.

Three entry points, and importing this package runs none of them:

* :func:`task_dir`: the ``task_configs`` folder (``--include_path``, lm-eval's ``lm_eval.tasks`` entry point);
* :func:`task_manager`: an lm-eval ``TaskManager`` that knows the safespace tasks (and installs the plugin);
* :func:`install`: hooks the plugin into lm-eval: the request types on its model classes
  (:func:`safespace_tasks.harness.requests.install`), the ``safespace-hf`` model and the patches 1-4
  of :mod:`safespace_tasks.harness.patches`. Idempotent. ``safespace-eval`` and :func:`task_manager`
  call it, and so does every safespace task when lm-eval builds it (the stock ``lm_eval`` CLI).

The package itself, the pure metrics (:mod:`safespace_tasks.stats`), data loaders
(:mod:`safespace_tasks.data`), capture (:mod:`safespace_tasks.capture`) and saved states
(:mod:`safespace_tasks.states`) import without lm-eval side effects; so does every module of
:mod:`safespace_tasks.harness`.
"""

from __future__ import annotations

from pathlib import Path

__version__ = "0.1.0"

__all__ = ["__version__", "task_dir", "task_manager", "install"]


def task_dir() -> Path:
    """The ``task_configs`` folder: inside the installed package (wheel), or beside it in a source checkout."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "task_configs", here.parent / "task_configs"):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(
        f"safespace task configs not found next to {here}; reinstall safespace-tasks (pip install safespace-tasks)."
    )


def install() -> None:
    """Hook safespace into lm-eval: request types, ``safespace-hf``, patches 1-4 (idempotent)."""
    from safespace_tasks.harness import patches, requests  # importing requests registers safespace-hf

    requests.install()
    patches.install()


def task_manager(include_path=None, **kwargs):
    """An lm-eval ``TaskManager`` that knows the safespace tasks (plus any ``include_path`` of yours).

    It also runs :func:`install`, so a model built after this call, e.g. by
    ``lm_eval.simple_evaluate(..., task_manager=task_manager())``, gets the missing-model-path check
    before it loads.
    """
    from lm_eval.tasks import TaskManager

    install()
    extra = [] if include_path is None else list(include_path) if isinstance(include_path, (list, tuple)) else [include_path]
    return TaskManager(include_path=[str(task_dir()), *map(str, extra)], **kwargs)
