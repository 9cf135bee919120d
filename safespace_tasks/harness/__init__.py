"""lm-eval glue: the request type, the task classes, the model registration and the guarded patches.

Importing this package installs the request type, the ``safespace-hf`` model and four of the five
patches listed in :mod:`safespace_tasks.harness.patches` (idempotent): lm-eval imports it when it
resolves a safespace task's ``class:``, and ``safespace-eval`` imports it before the model is built.
The fifth (the task folder) only ``safespace-eval`` installs.
"""

from __future__ import annotations

from safespace_tasks.harness import model as _model
from safespace_tasks.harness import patches as _patches


def install() -> None:
    """Install the request type on lm-eval's model classes and the stderr/states hooks (idempotent)."""
    _model.install()
    _patches.install()


install()
