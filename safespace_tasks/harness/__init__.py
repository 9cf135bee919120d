"""lm-eval glue: the request type, the task class, the model registration and two guarded patches.

Importing this package installs them (idempotent): lm-eval imports it when it resolves a
safespace task's ``class:``, and ``safespace-eval`` imports it before the model is built.
"""

from __future__ import annotations

from safespace_tasks.harness import model as _model
from safespace_tasks.harness import patches as _patches


def install() -> None:
    """Install the request type on lm-eval's model classes and the stderr/states hooks (idempotent)."""
    _model.install()
    _patches.install()


install()
