"""Input checks, groups of texts and degenerate data: what every statistic of ``(X, y)`` checks first.

Every function of :mod:`safespace_tasks.stats` validates its input and raises
:class:`SeparationInputError` with a message that names the problem and the fix; none returns a
number for input it cannot measure. numpy only.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Any, Iterator

import numpy as np

__all__ = [
    "SeparationInputError",
    "validate_states",
    "check_k",
    "text_groups",
    "combine_groups",
    "distinct_states",
    "stratified_subsample",
    "StageTimer",
]


class SeparationInputError(ValueError):
    """The states or labels cannot be measured as given (the message says why and what to do)."""



def validate_states(
    X: Any, y: Any, *, min_per_class: int = 2, what: str = "states", keep_float32: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Check and convert ``X`` (n x d, finite) and ``y`` (n binary labels, both classes present).

    Returns float64 ``X`` (float32 ``X`` stays float32 with ``keep_float32``, which the stages
    that read the full states use: no float64 copy of a large set) and int ``y`` in {0, 1}.
    """
    X = np.asarray(X)
    y = np.asarray(y)
    if X.ndim != 2:
        raise SeparationInputError(f"{what} must be a 2-D array (texts x features); got shape {X.shape}.")
    if y.ndim != 1 or y.shape[0] != X.shape[0]:
        raise SeparationInputError(
            f"labels must be a 1-D array with one label per row of {what}; got {y.shape} for {X.shape[0]} rows."
        )
    if not np.issubdtype(X.dtype, np.number):
        raise SeparationInputError(f"{what} must be numeric; got dtype {X.dtype}.")
    # finiteness is checked on the input's own dtype, in row blocks (no n x d mask of a large set)
    block = max(1, (1 << 22) // max(1, X.shape[1]))
    if not all(np.isfinite(X[i : i + block]).all() for i in range(0, X.shape[0], block)):
        rows = np.flatnonzero(~np.isfinite(X).all(axis=1))
        raise SeparationInputError(
            f"{what} hold NaN or inf in {rows.size} of {X.shape[0]} rows (first rows: {rows[:5].tolist()}). "
            "This usually means the model overflowed in float16: rerun with dtype=bfloat16 or float32."
        )
    if not (keep_float32 and X.dtype == np.float32):
        X = X.astype(np.float64, copy=False)
    labels = np.unique(y)
    if not np.isin(labels, [0, 1]).all():
        raise SeparationInputError(f"labels must be 0 (non-toxic) or 1 (toxic); got values {labels.tolist()[:10]}.")
    y = y.astype(np.int64)
    counts = np.bincount(y, minlength=2)
    if (counts < min_per_class).any():
        raise SeparationInputError(
            f"separation needs at least {min_per_class} texts of each class; got {counts[0]} non-toxic and "
            f"{counts[1]} toxic. Use more data (a larger --limit) or a language with both classes."
        )
    return X, y



def check_k(n: int, d: int, k: int) -> None:
    """Raise unless ``k`` PCA components can be kept of ``n`` texts of dimension ``d`` (``n >= k + 2``)."""
    if not isinstance(k, (int, np.integer)) or k < 1:
        raise SeparationInputError(f"the number of PCA components must be a positive integer; got {k!r}.")
    if n < k + 2:
        raise SeparationInputError(
            f"PCA-{k} separation needs at least k + 2 = {k + 2} texts; got {n}. "
            "Use a larger --limit or a smaller pca_components."
        )
    if k > d:
        raise SeparationInputError(f"cannot keep {k} PCA components of {d}-dimensional states; set pca_components <= {d}.")



def stratified_subsample(y: np.ndarray, size: int, seed: int, groups: np.ndarray | None = None) -> np.ndarray:
    """Sorted row indices of a seeded subsample of about ``size`` texts that keeps the class shares
    (each class gets its share, rounded, and at least 2 texts). With ``groups``, whole groups are
    drawn (in a seeded order, until ``size`` texts are reached), so pairs stay together."""
    y = np.asarray(y)
    rng = np.random.default_rng(seed)
    n = y.shape[0]
    if size >= n:
        return np.arange(n)
    if groups is not None:
        uniq, inverse = np.unique(np.asarray(groups), return_inverse=True)
        sizes = np.bincount(inverse)
        chosen = rng.permutation(uniq.size)
        keep = chosen[: int(np.searchsorted(np.cumsum(sizes[chosen]), size) + 1)]
        return np.flatnonzero(np.isin(inverse, keep))
    picks = []
    for c in (0, 1):
        members = np.flatnonzero(y == c)
        take = min(members.size, max(2, int(round(size * members.size / n))))
        picks.append(rng.choice(members, size=take, replace=False))
    return np.sort(np.concatenate(picks))



def text_groups(texts: Any) -> np.ndarray:
    """Integer group ids (0, 1, ... in order of first appearance) that put exact copies of a text
    in one group. Pass the texts as the loader returns them (its normalisation applied: the
    toxicity loader keeps a text as read, the paradetox loaders strip it); no further change is
    made here, so only exact duplicates share a group. The number of duplicate texts is
    ``len(texts) - (groups.max() + 1)``."""
    ids: dict[str, int] = {}
    out = np.empty(len(texts), dtype=np.int64)
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise SeparationInputError(f"text_groups needs strings; item {i} is {type(t).__name__}.")
        out[i] = ids.setdefault(t, len(ids))
    return out


def combine_groups(*group_arrays: Any) -> np.ndarray:
    """Groups that keep together every two texts sharing a group in any of ``group_arrays``
    (connected components: e.g. pair ids and duplicate-text ids, so a text that occurs in two
    pairs ties the two pairs). Ids are 0, 1, ... in order of first appearance."""
    arrays = [np.asarray(g) for g in group_arrays]
    if not arrays:
        raise SeparationInputError("combine_groups needs at least one array of group ids.")
    n = arrays[0].shape[0]
    if any(a.shape != (n,) for a in arrays):
        raise SeparationInputError("every array of group ids must hold one id per text.")
    parent = np.arange(n)

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for a in arrays:
        first: dict[Any, int] = {}
        for i, g in enumerate(a.tolist()):
            j = first.setdefault(g, i)
            ri, rj = find(i), find(j)
            if ri != rj:
                parent[max(ri, rj)] = min(ri, rj)
    roots = np.array([find(i) for i in range(n)])
    _, first_idx, inverse = np.unique(roots, return_index=True, return_inverse=True)
    rank = np.empty(first_idx.size, dtype=np.int64)
    rank[np.argsort(first_idx)] = np.arange(first_idx.size)
    return rank[inverse]


def distinct_states(X: np.ndarray, y: np.ndarray, groups: np.ndarray | None = None) -> tuple[int, tuple[int, int]]:
    """Number of distinct states overall and within each class.

    States are distinct when their vectors differ (exact equality) and, when ``groups`` is given,
    when they also belong to different groups: copies of one text form one group, and their states
    may differ in the last bits (a batched forward pass on several threads does not round the same
    row the same way in every batch), yet they carry one text's information, so they count once.
    """
    X = np.ascontiguousarray(X)
    per_class = []
    total = 0
    for c in (0, 1):
        rows = np.flatnonzero(y == c)
        n_vec = len({X[i].tobytes() for i in rows})
        n_grp = n_vec if groups is None else len(np.unique(np.asarray(groups)[rows]))
        per_class.append(min(n_vec, n_grp))
        total += per_class[-1]
    if groups is None:  # the same vector in both classes counts once overall
        total = len({X[i].tobytes() for i in range(X.shape[0])})
    return total, (per_class[0], per_class[1])




class StageTimer:
    """Wall seconds per named stage (``with timer("pca"): ...``), for the diagnostics."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = round(self.seconds.get(name, 0.0) + time.perf_counter() - start, 6)

