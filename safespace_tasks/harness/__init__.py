"""lm-eval glue. Importing any module here changes nothing in lm-eval: :func:`safespace_tasks.install` does.

* :mod:`~safespace_tasks.harness.core`: the task core every family is built on (settings, items, aggregation);
* :mod:`~safespace_tasks.harness.families`: one module per task family;
* :mod:`~safespace_tasks.harness.requests`: every request type, installed in one place, and ``safespace-hf``;
* :mod:`~safespace_tasks.harness.outputs`: the one registry of what tasks leave beside the results JSON;
* :mod:`~safespace_tasks.harness.patches`: the guarded wrappers of lm-eval internals.
"""
