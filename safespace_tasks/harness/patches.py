"""Small, guarded extensions of lm-eval 0.4.x internals: every patch this package installs.

Patches 1-4 are installed by :func:`install`, which :func:`safespace_tasks.install` calls: when lm-eval
builds a safespace task (so in every run that loads one), and before the model in ``safespace-eval``
and the Python API's ``task_manager()``:

1. Standard errors (``lm_eval.evaluator_utils.stderr_for_metric``). lm-eval knows only its own
   aggregations, so a corpus metric gets "N/A". Our aggregations carry a ``safespace_stderr`` (a
   stratified bootstrap computed with the metric); the wrapper returns it and defers to lm-eval for
   everything else. ``--bootstrap_iters 0`` still turns stderr off.
2. Saved states and strict JSON (``EvaluationTracker.save_results_aggregated``). It decides where the
   results JSON goes; the wrapper flushes :mod:`safespace_tasks.harness.outputs` into the same folder,
   with the same date suffix: each task's states (``safespace_states_<task>_<date>.npz``), the unit
   statistics and a ``safespace_details_<date>.json`` (intervals, diagnostics, data exclusions). In a
   run with safespace tasks it hands lm-eval's writer a copy of the results in which every non-finite number is ``null`` (:mod:`safespace_tasks.strict_json`), so
   the results JSON is strict JSON; the details file says why each one is null (``null_values``).
   This is the one place that sees the family rows: lm-eval averages the languages into the group row
   after our aggregations, and its writer uses ``json.dumps`` with NaN allowed. The table lm-eval
   prints keeps its NaN (the in-memory results are not changed).
3. A shared ``--use_cache`` (``CachingLM.__init__``). lm-eval keys its response cache by request
   only; the wrapper stamps the database with the model's fingerprint and refuses another model (see
   :func:`safespace_tasks.harness.requests.check_response_cache`).
4. Missing local model paths (``HFLM.__init__``, so every backend built on it). ``pretrained=``,
   ``tokenizer=``, ``peft=`` or ``delta=`` naming a local path that does not exist stops with a
   :class:`~safespace_tasks.local_models.ModelPathError` that says so and what a Hub id looks like,
   before transformers tries the Hub. The stock ``lm_eval`` CLI builds the model before it imports any
   task, so there this patch is not yet installed; ``safespace-eval`` checks ``--model_args`` itself.

Installed only by :func:`install_task_dir` (``safespace-eval``, which passes it the task folder; a run
of the stock CLI passes ``--include_path`` instead):

5. The task folder (``TaskManager.__init__``): every ``TaskManager`` also searches the safespace
   ``task_configs`` folder, first, beside any ``include_path`` given.

Each wrapper is installed once, keeps the wrapped function as ``__wrapped__``, and does nothing for
runs without safespace tasks (4 only acts on a path that does not exist).
"""

from __future__ import annotations

import logging
from pathlib import Path

log = logging.getLogger(__name__)

_MARK = "_safespace_wrapped"


def _install_stderr() -> None:
    import lm_eval.evaluator_utils as eu

    original = getattr(eu, "stderr_for_metric", None)
    if original is None:
        log.warning("lm_eval.evaluator_utils.stderr_for_metric not found: safespace stderr will show as N/A")
        return
    if getattr(original, _MARK, False):
        return

    def stderr_for_metric(metric, bootstrap_iters):
        own = getattr(metric, "safespace_stderr", None)
        if own is not None:
            return own if bootstrap_iters and bootstrap_iters > 0 else None
        return original(metric=metric, bootstrap_iters=bootstrap_iters)

    setattr(stderr_for_metric, _MARK, True)
    stderr_for_metric.__wrapped__ = original  # type: ignore[attr-defined]
    eu.stderr_for_metric = stderr_for_metric


def results_folder(tracker) -> Path | None:
    """The folder in which ``tracker`` wrote (or will write) its results JSON."""
    if not getattr(tracker, "output_path", None):
        return None
    path = Path(tracker.output_path)
    if path.suffix == ".json":
        return path.parent
    return path / str(tracker.general_config_tracker.model_name_sanitized)


def _install_tracker() -> None:
    from lm_eval.loggers.evaluation_tracker import EvaluationTracker

    original = EvaluationTracker.save_results_aggregated
    if getattr(original, _MARK, False):
        return

    from safespace_tasks.harness import outputs

    def save_results_aggregated(self, results, samples=None):
        nulled: list[tuple] = []
        ours = any(str(t).startswith("safespace") for t in (results or {}).get("results", {}))
        if ours:  # strict JSON: NaN / inf become null in the written copy only
            from safespace_tasks.strict_json import null_out

            written_results, nulled = null_out(results)
        else:
            written_results = results
        original(self, written_results, samples)
        if written_results is not results:  # what the writer adds (task hashes, run config) reaches the caller too
            for key, value in written_results.items():
                results.setdefault(key, value)
        folder = results_folder(self)
        if folder is None:
            return
        try:
            cfg = self.general_config_tracker
            model_info = {"model_name": getattr(cfg, "model_name", None), "model_source": getattr(cfg, "model_source", None)}
            written = outputs.flush(folder, getattr(self, "date_id", None), list(results.get("results", {})), model_info,
                                    nulled=nulled, results=results)
            if written:
                log.info("safespace: wrote %d state files beside the results in %s", len(written) - 1, folder)
        except Exception:  # results JSON is already safe; make the failure loud, not fatal
            log.exception("safespace: could not write the pooled states beside the results in %s", folder)

    setattr(save_results_aggregated, _MARK, True)
    save_results_aggregated.__wrapped__ = original  # type: ignore[attr-defined]
    EvaluationTracker.save_results_aggregated = save_results_aggregated


def _install_cache_guard() -> None:
    """Check lm-eval's ``--use_cache`` database against the model as soon as it is opened."""
    from lm_eval.api.model import CachingLM

    original = CachingLM.__init__
    if getattr(original, _MARK, False):
        return

    def __init__(self, lm, cache_db):
        original(self, lm, cache_db)
        from safespace_tasks.harness.requests import check_response_cache

        check_response_cache(lm)

    setattr(__init__, _MARK, True)
    __init__.__wrapped__ = original  # type: ignore[attr-defined]
    CachingLM.__init__ = __init__


def _install_model_path_check() -> None:
    """Check the checkpoint-naming arguments of ``HFLM`` before it loads anything."""
    try:
        from lm_eval.models.huggingface import HFLM
    except ImportError as err:  # a broken HF backend fails on its own, with its own message
        log.debug("lm-eval's HF backend cannot be imported (%s): no model path check", err)
        return
    original = HFLM.__init__
    if getattr(original, _MARK, False):
        return

    def __init__(self, *args, **kwargs):
        from safespace_tasks.local_models import check_model_args

        named = dict(kwargs)
        if args and "pretrained" not in named:
            named["pretrained"] = args[0]
        check_model_args(named)
        original(self, *args, **kwargs)

    setattr(__init__, _MARK, True)
    __init__.__wrapped__ = original  # type: ignore[attr-defined]
    HFLM.__init__ = __init__


def install_task_dir(folder: str | Path) -> None:
    """Patch 5: every ``TaskManager`` searches ``folder`` (the safespace task folder,
    :func:`safespace_tasks.task_dir`) too, first, beside its ``include_path``.

    The caller passes the folder, so this module never imports back up to :mod:`safespace_tasks`.
    """
    from lm_eval.tasks import TaskManager

    ours = str(folder)
    original = TaskManager.__init__
    if getattr(original, _MARK, False):
        return

    def __init__(self, *args, include_path=None, **kwargs):
        extra = [] if include_path is None else list(include_path) if isinstance(include_path, (list, tuple)) else [include_path]
        paths = [ours] + [str(p) for p in extra if str(p) != ours]
        original(self, *args, include_path=paths, **kwargs)

    setattr(__init__, _MARK, True)
    __init__.__wrapped__ = original  # type: ignore[attr-defined]
    TaskManager.__init__ = __init__


def install() -> None:
    """Patches 1-4 (idempotent)."""
    _install_stderr()
    _install_tracker()
    _install_cache_guard()
    _install_model_path_check()
