"""Exports of finished runs into formats other tools read.

- :mod:`safespace_tasks.export.eee`: Every Eval Ever (schema 0.3.0) records, one per task (language)
  and one per family row, written as plain JSON from the run's results and details files
  (``safespace export eee RUN... --model-id ORG/NAME``).

Nothing here imports torch, lm-eval or every_eval_ever.
"""

from safespace_tasks.export.eee import EEE_SCHEMA_VERSION, ExportError, ExportResult, export_eee

__all__ = ["EEE_SCHEMA_VERSION", "ExportError", "ExportResult", "export_eee"]
