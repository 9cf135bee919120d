"""safespace-tasks: lm-eval tasks that measure, per language, how safety alignment shows in a model's hidden space.

Importing :mod:`safespace_tasks.harness` (which lm-eval does when it loads a safespace task, and
:func:`install` and :func:`task_manager` do) gives lm-eval's Hugging Face backend the
``pooled_hidden_states`` request type, registers the ``safespace-hf`` model and installs the patches
listed in :mod:`safespace_tasks.harness.patches`. The package itself, the pure metrics (:mod:`safespace_tasks.stats`), data loaders (:mod:`safespace_tasks.data`),
capture (:mod:`safespace_tasks.capture`) and saved states (:mod:`safespace_tasks.states`) import
without lm-eval side effects.
"""

from __future__ import annotations

__version__ = "0.1.0"

from safespace_tasks.plugin import task_dir, task_manager  # noqa: E402

__all__ = ["__version__", "task_dir", "task_manager", "install"]


def install() -> None:
    """Hook safespace into lm-eval (request type, model registration, stderr and states writers)."""
    from safespace_tasks.harness import install as _install

    _install()
