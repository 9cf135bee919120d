"""Strict JSON for every file the plugin writes: no ``NaN``, no ``Infinity``.

Python's ``json`` writes a float NaN as the bare word ``NaN``, which strict parsers (JavaScript,
``jq``, Every Eval Ever's converter, Go, Rust) reject. A metric that could not be computed is
therefore written as ``null``, and the place it was nulled is recorded so that its reason can be
written beside it (:func:`null_out`). Pure standard library (and numpy scalars when present).
"""

from __future__ import annotations

import json
import math
from typing import Any

__all__ = ["null_out", "dumps", "reject_constant"]


def _is_float(x: Any) -> bool:
    if isinstance(x, bool):
        return False
    if isinstance(x, float):
        return True
    try:  # numpy floating scalars without importing numpy here
        import numpy as np

        return isinstance(x, np.floating)
    except ImportError:  # pragma: no cover
        return False


def null_out(obj: Any, _path: tuple = ()) -> tuple[Any, list[tuple]]:
    """A copy of ``obj`` with every non-finite float replaced by ``None``, and the key paths replaced.

    Containers (dict, list, tuple) are copied; anything else is returned as it is (``json``'s
    ``default`` handles it later). A path is the tuple of keys / indices from the top.
    """
    found: list[tuple] = []

    def walk(x: Any, path: tuple) -> Any:
        if _is_float(x):
            if math.isfinite(float(x)):
                return x
            found.append(path)
            return None
        if isinstance(x, dict):
            return {k: walk(v, path + (k,)) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return [walk(v, path + (i,)) for i, v in enumerate(x)]
        return x

    return walk(obj, _path), found


def dumps(obj: Any, **kwargs: Any) -> str:
    """``json.dumps`` of :func:`null_out` ``(obj)`` with ``allow_nan=False`` (so a NaN can never slip through)."""
    clean, _ = null_out(obj)
    default = kwargs.pop("default", None)
    if default is not None:  # a default may itself return NaN (a numpy array with NaN): clean its output too
        inner = default

        def default(o):  # noqa: F811
            return null_out(inner(o))[0]

    return json.dumps(clean, allow_nan=False, default=default, **kwargs)


def reject_constant(name: str) -> Any:
    """``parse_constant`` for ``json.loads`` that refuses ``NaN``, ``Infinity`` and ``-Infinity``."""
    raise ValueError(f"non-standard JSON constant {name!r}")
