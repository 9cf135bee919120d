"""Helpers the example scripts share (``examples/``), so that each does not re-implement them.

Imports neither torch nor lm-eval. Today: the data mirror a script needs (:func:`require_data_dir`)
and the text normalisation by which training data are checked against evaluation data
(:func:`normalise`, :class:`TrainEvalOverlapError`). Chat formatting and greedy generation are still
written out in the scripts (issue 26 moves them here).
"""

from __future__ import annotations

import os
import re
import unicodedata
from pathlib import Path

from safespace_tasks.data import DATA_DIR_ENV

__all__ = ["require_data_dir", "normalise", "TrainEvalOverlapError"]

_NON_WORD = re.compile(r"[\W_]+")


def require_data_dir(explicit: str | os.PathLike | None = None) -> Path:
    """The data mirror a script reads: ``explicit`` (its ``--data-dir``), else ``$SAFESPACE_DATA_DIR``.

    Returns the absolute folder. A script cannot fall back to the Hub, so this stops it
    (:class:`SystemExit` with the fix) when neither is set or the folder does not exist; the
    tasks' own lookup, which may read the Hub instead, is :func:`safespace_tasks.data.resolve_data_dir`.
    """
    value = explicit or os.environ.get(DATA_DIR_ENV)
    if not value:
        raise SystemExit(f"no data folder: pass --data-dir or set {DATA_DIR_ENV} (e.g. ../shared/data)")
    root = Path(value).expanduser().resolve()
    if not root.is_dir():
        raise SystemExit(f"data folder {root} does not exist: point --data-dir at the data mirror")
    return root


def normalise(text: str) -> str:
    """NFKC, case-folded, every run of non-word characters replaced by one space, stripped.

    Two texts that are equal after it are the same text for an overlap check: case, punctuation and
    spacing do not hide a copy.
    """
    return _NON_WORD.sub(" ", unicodedata.normalize("NFKC", text).casefold()).strip()


class TrainEvalOverlapError(AssertionError):
    """A training text equals (after :func:`normalise`) a text a model is evaluated on.

    Raised explicitly, never by ``assert``: it must fire under ``python -O`` too.
    """
