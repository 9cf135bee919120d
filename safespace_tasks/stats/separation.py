"""Separation metrics for two classes of hidden states.

Pure functions of ``(X, y)``: numpy and scikit-learn only, no torch and no lm-eval. Every
function validates its input and raises :class:`SeparationInputError` with a message that
names the problem and the fix; none returns a number for input it cannot measure.

The quantities follow Verma & Bharadwaj (2025), "The Hidden Space of Safety": per language, X
holds one pooled hidden state per text (n x d) and y the toxic label (0/1). PCA is fitted on X
(both classes together, centred, not scaled) and k components are kept (the paper reports
k = 10); the between-class variance ratio, the Bhattacharyya distance and the silhouette score
are computed on those k coordinates, and a cross-validated linear probe is scored on the full
states.

PCA is exact and seed-free (:func:`pca_basis`). Standard errors and intervals come from a
stratified bootstrap over texts (class sizes held fixed; whole groups with ``groups``): the basic
bootstrap interval, clipped to each metric's range, with degenerate replicates counted
(:mod:`safespace_tasks.stats.resampling`). The null floor ``<metric>_null`` and the permutation p-value
come from label permutations. The PCA basis is fitted once on all texts and held fixed across
replicates and permutations (it does not see the labels), so the interval measures the sampling
spread of the metric given the basis. See docs/statistics.md for how to read them.
"""

from __future__ import annotations

import os
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Iterator

import numpy as np
from sklearn.decomposition import PCA
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from threadpoolctl import ThreadpoolController, threadpool_limits

from safespace_tasks.stats.cv_interval import METHOD as CV_METHOD
from safespace_tasks.stats.cv_interval import cv_auroc_interval, fold_aurocs
from safespace_tasks.stats.resampling import (
    bootstrap_weights,
    permutation_summary,
    permuted_labels,
    summarise,
    weighted_auroc,
)

__all__ = [
    "SeparationInputError",
    "BhattacharyyaResult",
    "ProbeResult",
    "SeparationResult",
    "validate_states",
    "pca_project",
    "between_class_variance_ratio",
    "bhattacharyya_distance",
    "gaussian_bhattacharyya",
    "silhouette",
    "probe_auroc",
    "stratified_bootstrap_weights",
    "probe_refit_replicates",
    "probe_null_replicates",
    "pca_basis",
    "text_groups",
    "combine_groups",
    "distinct_states",
    "METRIC_RANGE",
    "stratified_subsample",
    "separation_metrics",
    "PairedDifference",
    "paired_bootstrap_difference",
    "paired_shift_difference",
    "SILHOUETTE_MAX_N",
    "BHATTACHARYYA_TERMS",
]

# Relative ridge added to a covariance that is singular (or numerically so): lambda =
# RIDGE_SCALE * trace(Sigma_bar) / k. Used only when needed, and always reported.
RIDGE_SCALE = 1e-6
# Condition number above which a class covariance counts as singular.
MAX_CONDITION = 1e12


class SeparationInputError(ValueError):
    """The states or labels cannot be measured as given (the message says why and what to do)."""


# --------------------------------------------------------------------------- validation


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


def _check_k(n: int, d: int, k: int) -> None:
    if not isinstance(k, (int, np.integer)) or k < 1:
        raise SeparationInputError(f"the number of PCA components must be a positive integer; got {k!r}.")
    if n < k + 2:
        raise SeparationInputError(
            f"PCA-{k} separation needs at least k + 2 = {k + 2} texts; got {n}. "
            "Use a larger --limit or a smaller pca_components."
        )
    if k > d:
        raise SeparationInputError(f"cannot keep {k} PCA components of {d}-dimensional states; set pca_components <= {d}.")


# --------------------------------------------------------------------------- PCA

# Shapes with n * d * min(n, d) up to this get an explicit float64 covariance (d <= n) or Gram
# (n < d) matrix and LAPACK's exact eigendecomposition; larger ones ARPACK's Lanczos solver on
# the centred states, to the tolerance of their precision. No random state anywhere.
EXACT_PCA_MAX_WORK = 4e9
LANCZOS_TOL = {np.float32: 1e-7, np.float64: 1e-12}


def _column_means(X: np.ndarray, block: int = 4096) -> np.ndarray:
    mu = np.zeros(X.shape[1])
    for i in range(0, X.shape[0], block):
        mu += X[i : i + block].sum(axis=0, dtype=np.float64)
    return mu / X.shape[0]


def _blocks(n: int, size: int = 2048) -> Iterator[slice]:
    for i in range(0, n, size):
        yield slice(i, min(n, i + size))


def _exact_basis(X: np.ndarray, mu: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-k right singular vectors (k x d) and squared singular values of the centred states,
    from the explicit float64 covariance or Gram matrix (LAPACK ``eigh``)."""
    from scipy.linalg import eigh

    n, d = X.shape
    if n < d:
        Xc = X.astype(np.float64) - mu
        G = Xc @ Xc.T
        vals, U = eigh(G, subset_by_index=[n - k, n - 1])
        order = np.argsort(vals)[::-1]
        vals, U = np.maximum(vals[order], 0.0), U[:, order]
        V = U.T @ Xc
        norms = np.linalg.norm(V, axis=1)
        V = np.where(norms[:, None] > 0, V / np.where(norms > 0, norms, 1.0)[:, None], 0.0)
        return V, vals
    C = np.zeros((d, d))
    for rows in _blocks(n):
        B = X[rows].astype(np.float64) - mu
        C += B.T @ B
    vals, vecs = eigh(C, subset_by_index=[d - k, d - 1])
    order = np.argsort(vals)[::-1]
    return vecs[:, order].T.copy(), np.maximum(vals[order], 0.0)


def _lanczos_basis(X: np.ndarray, mu: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, float]:
    """Top-k right singular vectors of the centred states by ARPACK's Lanczos solver on the
    scatter operator v -> Xc^T (Xc v), with a fixed start vector (seed-free).

    The states are centred once in float64 and stored in their own precision (float32 as
    captured); the tolerance is that precision's (:data:`LANCZOS_TOL`). Returns the axes, the
    eigenvalues and the largest relative residual ||C v - lambda v|| / lambda_1 (float64)."""
    from scipy.sparse.linalg import LinearOperator, eigsh

    n, d = X.shape
    dtype = np.float32 if X.dtype == np.float32 else np.float64
    Xc = np.empty((n, d), dtype=dtype)
    for rows in _blocks(n):
        Xc[rows] = X[rows].astype(np.float64) - mu

    def matvec(v: np.ndarray) -> np.ndarray:
        v = np.asarray(v, dtype=dtype).ravel()
        return (Xc.T @ (Xc @ v)).astype(np.float64)

    op = LinearOperator((d, d), matvec=matvec, dtype=np.float64)
    v0 = np.ones(d) + np.linspace(0.0, 1.0, d)
    vals, vecs = eigsh(op, k=k, which="LA", tol=LANCZOS_TOL[dtype], v0=v0, ncv=min(d, max(2 * k + 1, 30)))
    order = np.argsort(vals)[::-1]
    vals, vecs = np.maximum(vals[order], 0.0), vecs[:, order]
    CV = np.column_stack([matvec(vecs[:, j]) for j in range(k)])
    resid = float(np.max(np.linalg.norm(CV - vecs * vals, axis=0)) / max(vals[0], 1e-300))
    return vecs.T.copy(), vals, resid


def pca_basis(X: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """Exact, deterministic top-``k`` principal axes of ``X`` (n x d, centred, not scaled).

    Returns ``(mean, components (k x d), explained variances (k), total variance)``. The method
    is chosen by shape, never by a random state (see :data:`EXACT_PCA_MAX_WORK`): an exact
    LAPACK decomposition of the float64 covariance or Gram matrix for moderate shapes, else
    ARPACK's Lanczos solver (fixed start vector) to the tolerance of the states' precision. The centring is done in
    float64, so a large mean (massive activations) costs no precision. Each axis is signed so
    that its largest-magnitude loading is positive.
    """
    n, d = X.shape
    mu = _column_means(X)
    if n * d * min(n, d) <= EXACT_PCA_MAX_WORK or k >= min(n, d) - 1:
        V, sq = _exact_basis(X, mu, k)
    else:
        V, sq, _ = _lanczos_basis(X, mu, k)
    total = 0.0
    for rows in _blocks(n):
        total += float(np.sum((X[rows].astype(np.float64) - mu) ** 2))
    signs = np.sign(V[np.arange(k), np.argmax(np.abs(V), axis=1)])
    V *= np.where(signs == 0, 1.0, signs)[:, None]
    return mu, V, sq / (n - 1), total / (n - 1)


def pca_project(X: np.ndarray, k: int, *, random_state: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Project ``X`` on its first ``k`` principal components (centred, not scaled).

    The axes come from :func:`pca_basis`: exact to solver precision and independent of any seed
    (``random_state`` is accepted for compatibility and ignored). Returns
    ``(Z, explained_variance_ratio)`` with ``Z`` (float64) of shape (n, k).
    """
    X = np.asarray(X)
    if X.dtype != np.float32:
        X = X.astype(np.float64, copy=False)
    n, d = X.shape
    _check_k(n, d, k)
    mu, V, var, total = pca_basis(X, int(k))
    Z = np.empty((n, int(k)))
    for i in range(0, n, 4096):
        Z[i : i + 4096] = (X[i : i + 4096].astype(np.float64) - mu) @ V.T
    evr = var / total if total > 0 else np.zeros_like(var)
    return Z, evr


# --------------------------------------------------------------------------- metrics on Z


def between_class_variance_ratio(Z: np.ndarray, y: np.ndarray) -> float:
    r"""Between-class share of the total variance, as a fraction in [0, 1].

    .. math::
        \mathrm{SS}_B = \sum_c n_c \lVert \mu_c - \mu \rVert^2, \quad
        \mathrm{SS}_W = \sum_i \lVert z_i - \mu_{y_i} \rVert^2, \quad
        r = \frac{\mathrm{SS}_B}{\mathrm{SS}_B + \mathrm{SS}_W}

    (multiply by 100 for the percentages of the paper).
    """
    Z, y = validate_states(Z, y, min_per_class=1, what="projected states")
    mu = Z.mean(axis=0)
    ss_b = 0.0
    ss_w = 0.0
    for c in (0, 1):
        Zc = Z[y == c]
        mu_c = Zc.mean(axis=0)
        ss_b += Zc.shape[0] * float(np.sum((mu_c - mu) ** 2))
        ss_w += float(np.sum((Zc - mu_c) ** 2))
    total = ss_b + ss_w
    if total <= 0.0:
        raise SeparationInputError("all states are identical: the variance ratio is undefined (0/0).")
    return ss_b / total


@dataclass(frozen=True)
class BhattacharyyaResult:
    """Bhattacharyya distance and the ridge that was added to make it finite (0.0 when none)."""

    distance: float
    ridge: float
    mahalanobis_term: float
    covariance_term: float


def gaussian_bhattacharyya(
    mu0: np.ndarray, cov0: np.ndarray, mu1: np.ndarray, cov1: np.ndarray, *, ridge: float | None = None
) -> BhattacharyyaResult:
    r"""Bhattacharyya distance between N(mu0, cov0) and N(mu1, cov1).

    .. math::
        D_B = \tfrac18 \Delta\mu^\top \bar\Sigma^{-1} \Delta\mu
              + \tfrac12 \ln \frac{\det \bar\Sigma}{\sqrt{\det \Sigma_0 \det \Sigma_1}},
        \qquad \bar\Sigma = (\Sigma_0 + \Sigma_1)/2

    Log-determinants use ``slogdet``. ``ridge=None`` adds
    ``RIDGE_SCALE * trace(Sigma_bar) / k`` to every covariance only when one of them is singular
    or its condition number exceeds ``MAX_CONDITION``; a float forces that ridge; 0.0 forbids one
    (a singular covariance then raises). The ridge used is returned.
    """
    mu0 = np.atleast_1d(np.asarray(mu0, dtype=np.float64))
    mu1 = np.atleast_1d(np.asarray(mu1, dtype=np.float64))
    cov0 = np.atleast_2d(np.asarray(cov0, dtype=np.float64))
    cov1 = np.atleast_2d(np.asarray(cov1, dtype=np.float64))
    k = mu0.shape[0]
    if mu1.shape != (k,) or cov0.shape != (k, k) or cov1.shape != (k, k):
        raise SeparationInputError(
            f"means and covariances disagree in dimension: {mu0.shape}, {mu1.shape}, {cov0.shape}, {cov1.shape}."
        )
    for arr in (mu0, mu1, cov0, cov1):
        if not np.all(np.isfinite(arr)):
            raise SeparationInputError("Gaussian parameters hold NaN or inf.")
    cov_bar = (cov0 + cov1) / 2.0

    def _needs_ridge() -> bool:
        for cov in (cov0, cov1, cov_bar):
            eig = np.linalg.eigvalsh(cov)
            if eig[0] <= 0.0 or eig[-1] / eig[0] > MAX_CONDITION:
                return True
        return False

    if ridge is None:
        lam = RIDGE_SCALE * float(np.trace(cov_bar)) / k if _needs_ridge() else 0.0
        if lam == 0.0 and _needs_ridge():  # trace 0: every state identical within classes
            raise SeparationInputError("both class covariances are zero: the Bhattacharyya distance is undefined.")
    else:
        lam = float(ridge)
        if lam < 0.0:
            raise SeparationInputError(f"ridge must be >= 0; got {ridge}.")
    eye = np.eye(k)
    c0, c1, cb = cov0 + lam * eye, cov1 + lam * eye, cov_bar + lam * eye
    signs_logdets = [np.linalg.slogdet(c) for c in (c0, c1, cb)]
    if any(s <= 0 for s, _ in signs_logdets):
        raise SeparationInputError(
            "a class covariance is singular and no ridge was allowed (ridge=0.0): pass ridge=None for the "
            "automatic, reported ridge, or use more texts per class than PCA components."
        )
    (_, ld0), (_, ld1), (_, ldb) = signs_logdets
    dmu = mu1 - mu0
    maha = float(dmu @ np.linalg.solve(cb, dmu)) / 8.0
    covt = float(0.5 * (ldb - 0.5 * (ld0 + ld1)))
    return BhattacharyyaResult(distance=maha + covt, ridge=lam, mahalanobis_term=maha, covariance_term=covt)


def bhattacharyya_distance(Z: np.ndarray, y: np.ndarray, *, ridge: float | None = None) -> BhattacharyyaResult:
    """Bhattacharyya distance between Gaussian fits (sample mean, unbiased covariance) of the two classes of ``Z``.

    See :func:`gaussian_bhattacharyya` for the formula and the ridge policy.
    """
    Z, y = validate_states(Z, y, min_per_class=2, what="projected states")
    Z0, Z1 = Z[y == 0], Z[y == 1]
    cov0 = np.atleast_2d(np.cov(Z0, rowvar=False))
    cov1 = np.atleast_2d(np.cov(Z1, rowvar=False))
    return gaussian_bhattacharyya(Z0.mean(axis=0), cov0, Z1.mean(axis=0), cov1, ridge=ridge)


def silhouette(
    Z: np.ndarray, y: np.ndarray, *, chunk_rows: int = 2048, sample_size: int | None = None, seed: int = 0
) -> float:
    r"""Mean silhouette coefficient of ``Z`` with clusters given by ``y`` (Euclidean distance).

    For text i in class c: a(i) = mean distance to the other members of c, b(i) = mean distance
    to the members of the other class, s(i) = (b - a) / max(a, b); the score is the mean of s(i)
    (Rousseeuw 1987; the same value as ``sklearn.metrics.silhouette_score``). Computed in row
    chunks, so memory stays at ``chunk_rows x n``; the cost is O(n^2 k).

    ``sample_size`` (like scikit-learn's): score a seeded, class-stratified subsample of that many
    texts instead (see :func:`stratified_subsample`); None scores all texts.
    """
    Z, y = validate_states(Z, y, min_per_class=1, what="projected states")
    if sample_size is not None and sample_size < Z.shape[0]:
        idx = stratified_subsample(y, sample_size, seed)
        Z, y = Z[idx], y[idx]
    w = np.ones((Z.shape[0], 1))
    return float(_weighted_silhouette(Z, y, w, chunk_rows=chunk_rows)[0])


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


def _pairwise_rows(Z: np.ndarray, rows: slice, sq: np.ndarray) -> np.ndarray:
    D2 = sq[rows, None] + sq[None, :] - 2.0 * (Z[rows] @ Z.T)
    np.maximum(D2, 0.0, out=D2)
    return np.sqrt(D2, out=D2)


def _weighted_silhouette(Z: np.ndarray, y: np.ndarray, W: np.ndarray, *, chunk_rows: int = 2048) -> np.ndarray:
    """Silhouette score for each column of the replicate weights ``W`` (n x B counts).

    A weight w_i is the number of copies of text i in a bootstrap resample. The copies of text i
    are not counted as its own neighbours: a(i) = sum_{j in c, j != i} w_j d_ij / (W_c - w_i) and
    b(i) = sum_{j not in c} w_j d_ij / W_other, each text weighted by w_i (copies at distance 0
    would shrink a(i) and bias every replicate upward; with all weights 1 this is the silhouette).
    Rows are put in class order first, so each class is one contiguous block of the distance
    matrix and the weighted sums are two matrix products on views (no copies): O(n^2 (k + B)).
    """
    order = np.argsort(y, kind="stable")
    Z, y, W = Z[order], y[order], W[order]
    n, B = W.shape
    n0 = int(np.sum(y == 0))
    chunk_rows = max(1, min(chunk_rows, (1 << 24) // max(n, 1)))  # at most ~128 MiB of distances
    sq = np.einsum("ij,ij->i", Z, Z)
    own = np.empty((n, B))
    other = np.empty((n, B))
    for start in range(0, n, chunk_rows):
        rows = slice(start, min(n, start + chunk_rows))
        D = _pairwise_rows(Z, rows, sq)
        # exact zero on the diagonal (the expansion above leaves rounding noise)
        idx = np.arange(rows.start, rows.stop)
        D[idx - rows.start, idx] = 0.0
        s0 = D[:, :n0] @ W[:n0]
        s1 = D[:, n0:] @ W[n0:]
        cut = min(max(n0 - rows.start, 0), rows.stop - rows.start)  # rows of class 0 in this chunk
        own_c, other_c = own[rows], other[rows]  # views
        own_c[:cut], other_c[:cut] = s0[:cut], s1[:cut]
        own_c[cut:], other_c[cut:] = s1[cut:], s0[cut:]
    wc = np.stack([W[:n0].sum(axis=0), W[n0:].sum(axis=0)])  # 2 x B
    w_own = wc[y]  # n x B
    w_other = wc[1 - y]
    # a text's own copies are not its neighbours: a resample that draws text i three times holds
    # one text, not three at distance 0 (counting them would shrink a(i) and bias the replicate
    # upward). With weight 1 (no copies) this is the ordinary silhouette.
    w_own = w_own - np.maximum(W, 1.0) + 1.0
    with np.errstate(invalid="ignore", divide="ignore"):
        a = own / (w_own - 1.0)
        b = other / w_other
        s = (b - a) / np.maximum(a, b)
    # singleton clusters score 0 (Rousseeuw's convention, as scikit-learn); 0/0 from identical points too
    s = np.where((w_own <= 1.0) | ~np.isfinite(s), 0.0, s)
    return (W * s).sum(axis=0) / W.sum(axis=0)


# --------------------------------------------------------------------------- probe


@dataclass(frozen=True)
class ProbeResult:
    """Cross-validated linear-probe AUROC with its out-of-fold decision scores."""

    auroc: float
    oof_scores: np.ndarray
    n_splits: int
    grouped: bool
    not_converged: int
    folds: tuple = ()
    models: tuple = ()


def probe_auroc(
    X: np.ndarray,
    y: np.ndarray,
    *,
    groups: np.ndarray | None = None,
    n_splits: int = 5,
    C: float = 1.0,
    max_iter: int = 1000,
    seed: int = 0,
) -> ProbeResult:
    """AUROC of an L2-regularised logistic-regression probe, cross-validated.

    Features are standardised inside each training fold. Folds are stratified by label; with
    ``groups`` (e.g. the pair id of a toxic sentence and its rewrite) they are also grouped, so
    members of one group never sit in train and test at once. The AUROC is computed on the
    pooled out-of-fold decision scores. Folds whose solver hit ``max_iter`` are counted in
    ``not_converged``.

    The folds are fitted in float32, the precision the states are captured in: L-BFGS's cost is
    one pass over the training states per iteration, so this halves the probe's time and memory
    on large sets; the AUROC moves by less than the solver's own tolerance does (about 1e-4 on
    10,000 x 2,048 states).
    """
    X, y = validate_states(X, y, min_per_class=2, keep_float32=True)
    X = X.astype(np.float32, copy=False)
    counts = np.bincount(y, minlength=2)
    splits = int(min(n_splits, counts.min()))
    if splits < 2:
        raise SeparationInputError("the probe needs at least 2 texts of each class for 2-fold cross-validation.")
    if groups is not None:
        groups = np.asarray(groups)
        if groups.shape[0] != X.shape[0]:
            raise SeparationInputError("groups must hold one id per text.")
        n_groups = np.unique(groups).size
        splits = int(min(splits, n_groups))
        if splits < 2:
            raise SeparationInputError("the grouped probe needs at least 2 groups.")
        cv = StratifiedGroupKFold(n_splits=splits, shuffle=True, random_state=seed)
        fold_iter = cv.split(X, y, groups)
    else:
        cv = StratifiedKFold(n_splits=splits, shuffle=True, random_state=seed)
        fold_iter = cv.split(X, y)
    folds = list(fold_iter)
    for train, _ in folds:
        if np.unique(y[train]).size < 2:
            raise SeparationInputError("a cross-validation fold holds one class only; use more texts per class.")

    def fit(fold: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, bool, Any]:
        train, test = fold
        model = make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=max_iter))
        model.fit(X[train], y[train])
        return model.decision_function(X[test]), bool(model[-1].n_iter_.max() >= max_iter), model

    workers, blas_threads = _fold_workers(len(folds))
    oof = np.full(X.shape[0], np.nan)
    # convergence is read from n_iter_ (warning filters are process-wide, not per thread)
    with warnings.catch_warnings(), threadpool_limits(limits=blas_threads):
        warnings.simplefilter("ignore", ConvergenceWarning)
        if workers == 1:
            fitted = [fit(f) for f in folds]
        else:
            with ThreadPoolExecutor(max_workers=workers) as pool:
                fitted = list(pool.map(fit, folds))
    for (_, test), (scores, _, _) in zip(folds, fitted):
        oof[test] = scores
    not_converged = sum(hit for _, hit, _ in fitted)
    return ProbeResult(
        auroc=float(roc_auc_score(y, oof)),
        oof_scores=oof,
        n_splits=splits,
        grouped=groups is not None,
        not_converged=not_converged,
        folds=tuple(folds),
        models=tuple(m for _, _, m in fitted),
    )


# Solver tolerance of the probe's bootstrap refits (the fit itself keeps scikit-learn's 1e-4): a
# refit serves a spread, and 1e-3 halves its iterations while moving its AUROC by about 1e-4.
REFIT_TOL = 1e-3


def probe_refit_replicates(
    X: np.ndarray, y: np.ndarray, probe: ProbeResult, W: np.ndarray, *, C: float = 1.0, max_iter: int = 1000
) -> np.ndarray:
    """Cross-validated probe AUROC of each bootstrap replicate (columns of ``W``), *refitted*.

    Replicate b is the resample with text weights ``W[:, b]``; each fold's probe is refitted on
    the fold's training texts with those weights (a text drawn twice counts twice), warm-started
    from the fold's fitted coefficients and standardised with the fold's scaler, and the
    replicate's AUROC is the weighted AUROC of the pooled out-of-fold scores. The folds stay
    those of the fit (whole groups), so no copy of a text is on both sides of a split.
    """
    X = np.asarray(X, dtype=np.float32)
    out = np.full(W.shape[1], np.nan)

    def one(b: int) -> float:
        w = W[:, b]
        oof = np.zeros(X.shape[0])
        for (train, test), model in zip(probe.folds, probe.models):
            scaler, lr0 = model[0], model[-1]
            tr = train[w[train] > 0]
            if np.unique(y[tr]).size < 2:
                return float("nan")
            lr = LogisticRegression(C=C, max_iter=max_iter, warm_start=True, tol=REFIT_TOL)
            lr.coef_, lr.intercept_ = lr0.coef_.copy(), lr0.intercept_.copy()
            lr.fit(scaler.transform(X[tr]), y[tr], sample_weight=w[tr])
            te = test[w[test] > 0]
            oof[te] = lr.decision_function(scaler.transform(X[te]))
        return float(weighted_auroc(oof, y, w[:, None])[0])

    workers, blas_threads = _fold_workers(W.shape[1])
    with warnings.catch_warnings(), threadpool_limits(limits=blas_threads):
        warnings.simplefilter("ignore", ConvergenceWarning)
        if workers == 1:
            vals = [one(b) for b in range(W.shape[1])]
        else:
            with ThreadPoolExecutor(max_workers=workers) as pool:
                vals = list(pool.map(one, range(W.shape[1])))
    out[:] = vals
    return out


def probe_null_replicates(
    X: np.ndarray, y: np.ndarray, probe: ProbeResult, Y_perm: np.ndarray, *, C: float = 1.0, max_iter: int = 1000
) -> np.ndarray:
    """Cross-validated probe AUROC under each column of permuted labels ``Y_perm`` (n x P), with
    the probe refitted from scratch on the fit's folds. Costs P times the probe."""
    X = np.asarray(X, dtype=np.float32)
    out = np.full(Y_perm.shape[1], np.nan)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        for j in range(Y_perm.shape[1]):
            yp = Y_perm[:, j]
            oof = np.zeros(X.shape[0])
            ok = True
            for train, test in probe.folds:
                if np.unique(yp[train]).size < 2:
                    ok = False
                    break
                model = make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=max_iter))
                model.fit(X[train], yp[train])
                oof[test] = model.decision_function(X[test])
            if ok:
                out[j] = float(weighted_auroc(oof, yp, np.ones((X.shape[0], 1)))[0])
    return out


def _fold_workers(n_folds: int) -> tuple[int, int]:
    """How many probe folds to fit at once, and BLAS threads for each.

    The folds share the thread budget the BLAS library already has (its default, or what
    ``OMP_NUM_THREADS`` / ``threadpool_limits`` set), capped by the CPUs this process may use:
    one thread runs the folds one by one; 8 threads fit 5 folds side by side, one BLAS thread
    each. L-BFGS's work per iteration is a memory-bound pass over the states, which gains more
    from independent folds than from more threads inside one product.
    """
    budget = min((info["num_threads"] for info in ThreadpoolController().info()), default=1)
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    budget = max(1, min(budget, cpus))
    workers = max(1, min(n_folds, budget))
    return workers, max(1, budget // workers)


# --------------------------------------------------------------------------- bootstrap


def stratified_bootstrap_weights(y: np.ndarray, n_boot: int, seed: int, groups: np.ndarray | None = None) -> np.ndarray:
    """Replicate weights (n x n_boot): how many times each text is drawn in each resample.

    Texts are drawn with replacement within their class, so every resample keeps the class sizes.
    With ``groups`` whole groups are drawn instead (texts of a group move together: a pair, or
    copies of one text), stratified by the group's first label. See
    :func:`safespace_tasks.stats.resampling.bootstrap_weights`.
    """
    y = np.asarray(y)
    return bootstrap_weights(y.shape[0], n_boot, seed, strata=y, groups=groups)


def _class_weights(y: np.ndarray, W: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    m0 = (np.asarray(y) == 0)[:, None]
    return W * m0, W * ~m0


def _class_weighted_bcv(Z: np.ndarray, W0: np.ndarray, W1: np.ndarray) -> np.ndarray:
    """Variance ratio for each column: class-c membership weights ``Wc`` (n x B) -- bootstrap
    counts times the class indicator, or the indicator of permuted labels."""
    sq = np.einsum("ij,ij->i", Z, Z)
    W = W0 + W1
    tot_w = W.sum(axis=0)
    mu = (W.T @ Z) / tot_w[:, None]  # B x k
    ss_b = np.zeros(W.shape[1])
    ss_w = np.zeros(W.shape[1])
    for Wc in (W0, W1):
        wc = Wc.sum(axis=0)
        with np.errstate(invalid="ignore", divide="ignore"):
            mu_c = (Wc.T @ Z) / wc[:, None]
        ss_b += wc * np.sum((mu_c - mu) ** 2, axis=1)
        ss_w += Wc.T @ sq - wc * np.sum(mu_c**2, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return ss_b / (ss_b + ss_w)


def _class_weighted_bhattacharyya(Z: np.ndarray, W0: np.ndarray, W1: np.ndarray, ridge: float) -> np.ndarray:
    """Bhattacharyya distance for each column of class weights (see :func:`_class_weighted_bcv`);
    a replicate whose covariance is singular gives NaN or inf (counted by the caller)."""
    k = Z.shape[1]
    eye = np.eye(k)
    outer = (Z[:, :, None] * Z[:, None, :]).reshape(Z.shape[0], k * k)
    mus, covs = [], []
    for Wc in (W0, W1):
        wc = Wc.sum(axis=0)
        with np.errstate(invalid="ignore", divide="ignore"):
            mu = (Wc.T @ Z) / wc[:, None]  # B x k
            second = (Wc.T @ outer).reshape(-1, k, k)
            cov = (second - wc[:, None, None] * (mu[:, :, None] * mu[:, None, :])) / (wc - 1.0)[:, None, None]
        mus.append(mu)
        covs.append(cov + ridge * eye)
    cov_bar = (covs[0] + covs[1]) / 2.0
    dmu = mus[1] - mus[0]
    out = np.full(W0.shape[1], np.nan)
    ok = np.all(np.isfinite(cov_bar), axis=(1, 2)) & np.all(np.isfinite(dmu), axis=1)
    if not ok.any():
        return out
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        s0, ld0 = np.linalg.slogdet(covs[0][ok])
        s1, ld1 = np.linalg.slogdet(covs[1][ok])
        sb, ldb = np.linalg.slogdet(cov_bar[ok])
        try:
            sol = np.linalg.solve(cov_bar[ok], dmu[ok][..., None])[..., 0]
        except np.linalg.LinAlgError:
            sol = np.stack([np.linalg.lstsq(c, v, rcond=None)[0] for c, v in zip(cov_bar[ok], dmu[ok])])
        maha = np.einsum("bi,bi->b", dmu[ok], sol) / 8.0
        val = maha + 0.5 * (ldb - 0.5 * (ld0 + ld1))
    val[(s0 <= 0) | (s1 <= 0) | (sb <= 0)] = np.inf  # singular: degenerate
    out[ok] = val
    return out


def _labelled_silhouette(Z: np.ndarray, Y: np.ndarray, *, chunk_rows: int = 2048) -> np.ndarray:
    """Silhouette score (all texts, weight 1) for each column of labels ``Y`` (n x P): the null
    distribution under permuted labels, one distance pass for all permutations."""
    n, P = Y.shape
    W1 = (Y == 1).astype(np.float64)
    W0 = 1.0 - W1
    n1 = W1.sum(axis=0)
    n0 = n - n1
    chunk_rows = max(1, min(chunk_rows, (1 << 24) // max(n, 1)))
    sq = np.einsum("ij,ij->i", Z, Z)
    total = np.zeros(P)
    for start in range(0, n, chunk_rows):
        rows = slice(start, min(n, start + chunk_rows))
        D = _pairwise_rows(Z, rows, sq)
        idx = np.arange(rows.start, rows.stop)
        D[idx - rows.start, idx] = 0.0
        s0 = D @ W0
        s1 = D @ W1
        lab = Y[rows] == 1
        own = np.where(lab, s1, s0)
        other = np.where(lab, s0, s1)
        n_own = np.where(lab, n1, n0)
        n_other = np.where(lab, n0, n1)
        with np.errstate(invalid="ignore", divide="ignore"):
            a = own / (n_own - 1.0)
            b = other / n_other
            s = (b - a) / np.maximum(a, b)
        s = np.where((n_own <= 1.0) | ~np.isfinite(s), 0.0, s)
        total += s.sum(axis=0)
    return total / n


# --------------------------------------------------------------------------- groups and degenerate data


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


# Natural range of each metric (intervals are clipped to it) and the bound beyond which a value
# or a replicate is degenerate (reported with its cause, never measured into a huge number).
METRIC_RANGE = {
    "bcv_ratio": (0.0, 1.0), "bhattacharyya": (0.0, np.inf), "silhouette": (-1.0, 1.0), "probe_auroc": (0.0, 1.0),
}
BHATTACHARYYA_MAX = 1e3


# --------------------------------------------------------------------------- all together


@dataclass
class SeparationResult:
    """All separation metrics of one language (and one layer), with spread and null floor.

    ``values``: metric -> plug-in point estimate (the headline number; NaN when degenerate, with
    the reason in ``degenerate``). ``stderr``: bootstrap standard error (the probe's includes
    refitting). ``ci``: the bias-aware (basic) bootstrap interval at ``ci_level``, clipped to the
    metric's range. ``null``: the metric's mean over label permutations (the value chance gives
    at this sample size); ``p_value``: the permutation p-value (1 + #{null >= observed}) /
    (1 + B). ``spread``: per metric, how its stderr and interval were made (method, replicates,
    degenerate replicates and their count, clipping, refits). ``diagnostics`` records the
    choices that shaped the numbers.
    """

    values: dict[str, float]
    stderr: dict[str, float]
    ci: dict[str, tuple[float, float]]
    ci_level: float
    n_boot: int
    diagnostics: dict[str, Any] = field(default_factory=dict)
    projection: np.ndarray | None = None
    null: dict[str, float] = field(default_factory=dict)
    p_value: dict[str, float] = field(default_factory=dict)
    n_permutations: dict[str, int] = field(default_factory=dict)
    degenerate: dict[str, str] = field(default_factory=dict)
    spread: dict[str, dict[str, Any]] = field(default_factory=dict)

    def extra_values(self) -> dict[str, float]:
        """``<metric>_null`` and ``<metric>_p`` of every metric (NaN where not computed)."""
        out: dict[str, float] = {}
        for m in self.values:
            out[m + "_null"] = float(self.null.get(m, float("nan")))
            out[m + "_p"] = float(self.p_value.get(m, float("nan")))
        return out

    def bhattacharyya_terms(self) -> dict[str, float]:
        """The distance's two terms, ``bhattacharyya_mean_term`` (⅛ Δμᵀ Σ̄⁻¹ Δμ) and
        ``bhattacharyya_cov_term`` (½ ln(det Σ̄ / √(det Σ₀ det Σ₁))), with the ridge the distance used;
        they sum to ``values["bhattacharyya"]``. NaN where the distance is NaN (degenerate or not computed)."""
        ok = np.isfinite(self.values.get("bhattacharyya", float("nan")))
        return {name: float(self.diagnostics.get(key)) if ok and self.diagnostics.get(key) is not None else float("nan")
                for name, key in BHATTACHARYYA_TERMS.items()}

    def to_dict(self) -> dict[str, Any]:
        return {
            "values": dict(self.values),
            "stderr": dict(self.stderr),
            "ci": {k: list(v) for k, v in self.ci.items()},
            "ci_level": self.ci_level,
            "n_boot": self.n_boot,
            "null": dict(self.null),
            "p_value": dict(self.p_value),
            "n_permutations": dict(self.n_permutations),
            "degenerate": dict(self.degenerate),
            "spread": {k: dict(v) for k, v in self.spread.items()},
            "diagnostics": dict(self.diagnostics),
        }


METRIC_NAMES = ("bcv_ratio", "bhattacharyya", "silhouette", "probe_auroc")
# reported metric name -> the diagnostics key of :func:`separation_metrics` it is read from
BHATTACHARYYA_TERMS = {"bhattacharyya_mean_term": "bhattacharyya_mahalanobis_term",
                       "bhattacharyya_cov_term": "bhattacharyya_covariance_term"}


# Above this many texts the silhouette (point estimate and bootstrap) is computed on a seeded,
# class-stratified subsample of this size: its cost is quadratic in n (O(n^2 (k + B)) with the
# bootstrap), while every other metric is linear. Every real per-language set (at most 5,000
# texts) stays below it, so for them the silhouette uses all texts.
SILHOUETTE_MAX_N = 10_000

# Defaults of the null floor and of the probe's refitted standard error.
N_PERMUTATIONS = 100
PROBE_REFITS = 0
PROBE_PERMUTATIONS = 0


def separation_metrics(
    X: np.ndarray,
    y: np.ndarray,
    *,
    k: int = 10,
    n_boot: int = 200,
    ci_level: float = 0.95,
    seed: int = 0,
    groups: np.ndarray | None = None,
    ridge: float | None = None,
    probe: bool = True,
    probe_folds: int = 5,
    silhouette_max_n: int | None = SILHOUETTE_MAX_N,
    n_permutations: int = N_PERMUTATIONS,
    probe_refits: int = PROBE_REFITS,
    probe_permutations: int = PROBE_PERMUTATIONS,
) -> SeparationResult:
    """Between-class variance ratio, Bhattacharyya distance and silhouette on PCA-``k`` of ``X``,
    and the cross-validated probe AUROC on ``X`` itself; for each a bootstrap standard error and
    a bias-aware interval (``n_boot`` replicates; 0 skips), and a null floor from
    ``n_permutations`` label permutations (0 skips).

    - PCA is exact and seed-free (:func:`pca_basis`); the basis is fitted once on all texts and
      held fixed across replicates and permutations (it does not see the labels).
    - ``groups`` ties texts together (pairs; copies of one text, see :func:`text_groups` and
      :func:`combine_groups`): the probe's folds, the bootstrap and the permutations keep a group whole.
    - Intervals are the basic bootstrap interval (:mod:`safespace_tasks.stats.resampling`), clipped to
      each metric's range. Degenerate replicates (NaN, inf, singular, beyond a sane bound) are
      counted in ``spread``; above 25 % of them the spread is NaN with the reason.
    - The probe's standard error counts the training variance without a refit: the variance of
      the fixed-score bootstrap is averaged with the Nadeau-Bengio corrected variance of the
      per-fold AUROCs, and the interval is a t interval with Satterthwaite degrees of freedom
      (:mod:`safespace_tasks.stats.cv_interval`; ``spread["probe_auroc"]`` holds both parts, the
      per-fold AUROCs and the df). The fixed-score bootstrap alone gave stderr / true sd of
      0.69 - 0.89 on the d = 64 spectra of docs/statistics.md. ``probe_refits`` (default
      :data:`PROBE_REFITS` = 0) of the bootstrap replicates can also refit the probe
      (warm-started, same folds): the bootstrap part is then scaled by sd(refitted) / sd(fixed)
      on those replicates (a refit on a resample, which repeats texts, varies more than a fit
      on fresh texts, and five refits more than double the stage's cost).
    - The probe's null needs a refit per permutation: ``probe_permutations`` (default 0: its
      null and p-value are NaN, and ``n_permutations["probe_auroc"]`` is 0).
    - Degenerate data: texts that collapse to too few distinct states for a metric make that
      metric NaN, with the reason in ``degenerate`` (and ``diagnostics["n_degenerate_metrics"]``).

    Large sets: with more than ``silhouette_max_n`` texts (default :data:`SILHOUETTE_MAX_N`; None
    never), the silhouette, its bootstrap and its null are computed on a seeded, class-stratified
    subsample of ``silhouette_max_n`` texts (whole groups when ``groups`` is given);
    ``diagnostics["silhouette_sample"]`` records its size. ``diagnostics["seconds"]`` records
    where the time went.
    """
    timer = _StageTimer()
    with timer("validate"):
        X, y = validate_states(X, y, min_per_class=2, keep_float32=True)
    n, d = X.shape
    _check_k(n, d, k)
    if groups is not None:
        groups = np.asarray(groups)
        if groups.shape != (n,):
            raise SeparationInputError(f"groups must hold one id per text ({n}); got shape {groups.shape}.")
    for name, val in (("n_permutations", n_permutations), ("probe_refits", probe_refits),
                      ("probe_permutations", probe_permutations), ("n_boot", n_boot)):
        if not isinstance(val, (int, np.integer)) or val < 0:
            raise SeparationInputError(f"{name} must be a non-negative integer; got {val!r}.")
    m = _measure(
        X, y, k=k, seed=seed, groups=groups, ridge=ridge, probe=probe, probe_folds=probe_folds,
        silhouette_max_n=silhouette_max_n, n_boot=n_boot, timer=timer, n_permutations=int(n_permutations),
        probe_refits=int(probe_refits), probe_permutations=int(probe_permutations),
    )
    counts = np.bincount(y, minlength=2)
    diagnostics: dict[str, Any] = {
        "n": int(n),
        "n_nontoxic": int(counts[0]),
        "n_toxic": int(counts[1]),
        "dim": int(d),
        "pca_components": int(k),
        "pca_method": m.pca_method,
        "pca_explained_variance": float(np.sum(m.explained_variance)),
        "bhattacharyya_ridge": None if m.bhattacharyya is None else m.bhattacharyya.ridge,
        "bhattacharyya_mahalanobis_term": None if m.bhattacharyya is None else m.bhattacharyya.mahalanobis_term,
        "bhattacharyya_covariance_term": None if m.bhattacharyya is None else m.bhattacharyya.covariance_term,
        "bcv_ratio_unit": "fraction",
        "silhouette_sample": m.silhouette_sample,
        "n_distinct_states": m.distinct[0],
        "n_distinct_states_nontoxic": m.distinct[1][0],
        "n_distinct_states_toxic": m.distinct[1][1],
        "n_groups": None if groups is None else int(np.unique(groups).size),
        "n_texts_sharing_a_group": None if groups is None else int(
            np.sum(np.unique(groups, return_counts=True)[1][np.unique(groups, return_inverse=True)[1]] > 1)
        ),
        "n_degenerate_metrics": len(m.degenerate),
    }
    if m.probe is not None:
        diagnostics.update(
            probe_folds=m.probe.n_splits, probe_grouped=m.probe.grouped, probe_not_converged=m.probe.not_converged
        )
    stderr, ci, spread = _spreads(m, ci_level)
    if m.replicates:
        diagnostics["bootstrap"] = "stratified by class" if groups is None else "stratified, whole groups"
    null, p_value, n_perm = {}, {}, {}
    for name in m.values:
        reps = m.null.get(name)
        if reps is None or not np.isfinite(m.values[name]):
            null[name], p_value[name], n_perm[name] = float("nan"), float("nan"), 0
            continue
        null[name], p_value[name], n_bad = permutation_summary(reps, m.values[name])
        n_perm[name] = int(reps.size)
        if n_bad:
            spread.setdefault(name, {})["null_degenerate"] = n_bad
    diagnostics["seconds"] = timer.seconds
    return SeparationResult(
        values=m.values, stderr=stderr, ci=ci, ci_level=ci_level, n_boot=int(n_boot or 0),
        diagnostics=diagnostics, projection=m.projection, null=null, p_value=p_value,
        n_permutations=n_perm, degenerate=dict(m.degenerate), spread=spread,
    )


def _spreads(m: "_Measured", ci_level: float) -> tuple[dict[str, float], dict[str, tuple[float, float]], dict[str, dict]]:
    stderr: dict[str, float] = {}
    ci: dict[str, tuple[float, float]] = {}
    spread: dict[str, dict[str, Any]] = {}
    for name, reps in m.replicates.items():
        lo, hi = METRIC_RANGE[name]
        scale, extra = 1.0, {}
        if name == "probe_auroc":
            scale, extra = _refit_scale(reps, m.refits)
        sp = summarise(
            reps, m.values[name], ci_level, method="basic", lower=lo, upper=hi,
            bound=BHATTACHARYYA_MAX if name == "bhattacharyya" else np.inf, scale=scale,
        )
        stderr[name], ci[name] = sp.stderr, sp.ci
        spread[name] = {
            "method": sp.method, "n_replicates": sp.n_replicates, "n_degenerate": sp.n_degenerate,
            "clipped": sp.clipped, "reason": sp.reason, **extra,
        }
        if name == "probe_auroc" and m.probe is not None and np.isfinite(sp.stderr):
            per_fold = fold_aurocs(m.probe.oof_scores, m.y, m.probe.folds)
            stderr[name], ci[name], more = _probe_cv_spread(m.values[name], sp.stderr**2, per_fold, ci_level, lo, hi)
            spread[name].update(more)
    return stderr, ci, spread


def _probe_cv_spread(
    point: float, var_boot: float, per_fold: np.ndarray, ci_level: float, lower: float, upper: float
) -> tuple[float, tuple[float, float], dict[str, Any]]:
    """The probe's standard error and interval with the training variance counted
    (:func:`safespace_tasks.stats.cv_interval.cv_auroc_interval`), and what ``spread`` records of it."""
    cv = cv_auroc_interval(point, var_boot, per_fold, ci_level, lower=lower, upper=upper)
    more = {
        # df is infinite when the folds agree exactly (e.g. every fold at AUROC 1): None keeps the JSON strict
        "method": CV_METHOD, "clipped": cv.clipped, "df": cv.df if np.isfinite(cv.df) else None,
        "var_bootstrap": cv.var_bootstrap,
        "var_cv_folds": cv.var_cv, "per_fold": [float(v) for v in per_fold],
    }
    if cv.reason:
        more["reason"] = cv.reason
    return cv.stderr, cv.ci, more


def _refit_scale(fixed: np.ndarray, refit: np.ndarray | None) -> tuple[float, dict[str, Any]]:
    """sd(refitted replicates) / sd(the same replicates on fixed out-of-fold scores)."""
    if refit is None or refit.size < 2:
        return 1.0, {"probe_refits": 0, "probe_refit_scale": 1.0}
    r = refit.size
    ok = np.isfinite(refit) & np.isfinite(fixed[:r])
    if ok.sum() < 2 or not np.std(fixed[:r][ok]) > 0:
        return 1.0, {"probe_refits": int(r), "probe_refit_scale": 1.0, "probe_refit_degenerate": int(r - ok.sum())}
    scale = float(np.std(refit[ok], ddof=1) / np.std(fixed[:r][ok], ddof=1))
    scale = max(scale, 1.0)  # refitting adds the training variance: it cannot shrink the spread
    return scale, {"probe_refits": int(r), "probe_refit_scale": scale, "probe_refit_degenerate": int(r - ok.sum())}


@dataclass
class _Measured:
    """Everything one model's states give: point values, bootstrap replicates (empty without a
    bootstrap), null replicates, and the pieces the diagnostics report."""

    values: dict[str, float]
    replicates: dict[str, np.ndarray]
    projection: np.ndarray
    explained_variance: np.ndarray
    bhattacharyya: BhattacharyyaResult | None
    silhouette_sample: int | None
    probe: ProbeResult | None
    refits: np.ndarray | None = None
    y: np.ndarray | None = None
    null: dict[str, np.ndarray] = field(default_factory=dict)
    degenerate: dict[str, str] = field(default_factory=dict)
    distinct: tuple[int, tuple[int, int]] = (0, (0, 0))
    pca_method: str = ""


def _measure(
    X: np.ndarray, y: np.ndarray, *, k: int, seed: int, groups: np.ndarray | None, ridge: float | None,
    probe: bool, probe_folds: int, silhouette_max_n: int | None, n_boot: int, timer: "_StageTimer",
    n_permutations: int = N_PERMUTATIONS, probe_refits: int = PROBE_REFITS, probe_permutations: int = PROBE_PERMUTATIONS,
) -> _Measured:
    """The four metrics on validated states, their replicates and their null.

    The resamples depend only on ``y``, ``groups``, ``n_boot`` and ``seed`` (``seed + 1``; the
    silhouette's subsample ``seed + 3`` and its resamples ``seed + 2``; the permutations
    ``seed + 4``), so two models measured on the same texts with the same settings are scored on
    the same resamples and permutations.
    """
    n = X.shape[0]
    nan = float("nan")
    with timer("distinct_states"):
        distinct = distinct_states(X, y, groups)
    n_all, (n_c0, n_c1) = distinct
    if n_all < 2:
        raise SeparationInputError(
            f"all {n} texts give the same hidden state: nothing to measure. Check the texts (one string repeated?) "
            "and the pooling (a fixed position of a padded batch?)."
        )
    degenerate: dict[str, str] = {}
    if n_all < k + 1:
        why = (f"the texts collapse to {n_all} distinct states; PCA-{k} needs at least k + 1 = {k + 1} "
               "(use a smaller pca_components or more distinct texts)")
        degenerate.update(bcv_ratio=why, bhattacharyya=why, silhouette=why)
    elif min(n_c0, n_c1) < k + 1:
        c = 0 if n_c0 < n_c1 else 1
        degenerate["bhattacharyya"] = (
            f"the {'toxic' if c else 'non-toxic'} texts collapse to {min(n_c0, n_c1)} distinct states; a Gaussian "
            f"fit on PCA-{k} needs at least k + 1 = {k + 1} (its covariance is singular, and a ridge would "
            "make the distance arbitrarily large)"
        )
    if probe and min(n_c0, n_c1) < 2:
        degenerate["probe_auroc"] = (
            f"a class collapses to {min(n_c0, n_c1)} distinct state: the probe would be scored on copies of its "
            "own training texts"
        )
    with timer("pca"):
        Z, evr = pca_project(X, k)
    pca_method = "exact (LAPACK)" if n * X.shape[1] * min(n, X.shape[1]) <= EXACT_PCA_MAX_WORK else "Lanczos (ARPACK)"
    values: dict[str, float] = {}
    bhat = None
    with timer("bcv_bhattacharyya"):
        values["bcv_ratio"] = nan if "bcv_ratio" in degenerate else between_class_variance_ratio(Z, y)
        if "bhattacharyya" in degenerate:
            values["bhattacharyya"] = nan
        else:
            try:
                bhat = bhattacharyya_distance(Z, y, ridge=ridge)
            except SeparationInputError as err:
                degenerate["bhattacharyya"] = str(err)
            if bhat is not None and not (np.isfinite(bhat.distance) and 0.0 <= bhat.distance <= BHATTACHARYYA_MAX):
                degenerate["bhattacharyya"] = (
                    f"the distance {bhat.distance:.4g} is beyond the sane bound {BHATTACHARYYA_MAX:g} (ridge "
                    f"{bhat.ridge:.3g}): near-singular class covariances"
                )
            values["bhattacharyya"] = nan if "bhattacharyya" in degenerate else bhat.distance  # type: ignore[union-attr]
    sil_idx = None
    if silhouette_max_n is not None and n > silhouette_max_n:
        sil_idx = stratified_subsample(y, int(silhouette_max_n), seed + 3, groups=groups)
    Zs, ys = (Z, y) if sil_idx is None else (Z[sil_idx], y[sil_idx])
    with timer("silhouette"):
        values["silhouette"] = nan if "silhouette" in degenerate else silhouette(Zs, ys)
    probe_res = None
    if probe:
        if "probe_auroc" in degenerate:
            values["probe_auroc"] = nan
        else:
            with timer("probe"):
                probe_res = probe_auroc(X, y, groups=groups, n_splits=probe_folds, seed=seed)
            values["probe_auroc"] = probe_res.auroc
    live = [m for m in values if np.isfinite(values[m])]
    reps: dict[str, np.ndarray] = {}
    refits = None
    if n_boot and n_boot > 1:
        with timer("bootstrap"):
            W = stratified_bootstrap_weights(y, int(n_boot), seed + 1, groups=groups)
            W0, W1 = _class_weights(y, W)
            if "bcv_ratio" in live:
                reps["bcv_ratio"] = _class_weighted_bcv(Z, W0, W1)
            if "bhattacharyya" in live:
                reps["bhattacharyya"] = _class_weighted_bhattacharyya(Z, W0, W1, bhat.ridge)  # type: ignore[union-attr]
            if probe_res is not None:
                reps["probe_auroc"] = weighted_auroc(probe_res.oof_scores, y, W)
        if "silhouette" in live:
            with timer("bootstrap_silhouette"):
                Ws = W if sil_idx is None else stratified_bootstrap_weights(
                    ys, int(n_boot), seed + 2, groups=None if groups is None else groups[sil_idx]
                )
                reps["silhouette"] = _weighted_silhouette(Zs, ys, Ws)
        if probe_res is not None and probe_refits > 1:
            with timer("probe_refit"):
                refits = probe_refit_replicates(X, y, probe_res, W[:, : min(int(probe_refits), int(n_boot))])
    null: dict[str, np.ndarray] = {}
    if n_permutations > 0:
        with timer("permutations"):
            Y = permuted_labels(y, int(n_permutations), seed + 4, groups=groups)
            P1 = (Y == 1).astype(np.float64)
            P0 = 1.0 - P1
            if "bcv_ratio" in live:
                null["bcv_ratio"] = _class_weighted_bcv(Z, P0, P1)
            if "bhattacharyya" in live:
                with np.errstate(all="ignore"):
                    nb = _class_weighted_bhattacharyya(Z, P0, P1, bhat.ridge)  # type: ignore[union-attr]
                nb[np.abs(nb) > BHATTACHARYYA_MAX] = np.inf
                null["bhattacharyya"] = nb
        if "silhouette" in live:
            with timer("permutations_silhouette"):
                Ys = Y if sil_idx is None else Y[sil_idx]
                null["silhouette"] = _labelled_silhouette(Zs, Ys)
        if probe_res is not None and probe_permutations > 0:
            with timer("probe_permutations"):
                null["probe_auroc"] = probe_null_replicates(X, y, probe_res, Y[:, : min(probe_permutations, n_permutations)])
    return _Measured(
        values=values, replicates=reps, projection=Z, explained_variance=evr, bhattacharyya=bhat,
        silhouette_sample=None if sil_idx is None else int(sil_idx.size), probe=probe_res, refits=refits, y=y,
        null=null, degenerate=degenerate, distinct=distinct, pca_method=pca_method,
    )


def _spread(replicates: np.ndarray, ci_level: float) -> tuple[float, tuple[float, float]]:
    """Standard deviation and percentile interval of the finite replicates (NaN when too few)."""
    r = np.asarray(replicates)[np.isfinite(replicates)]
    stderr = float(np.std(r, ddof=1)) if r.size > 1 else float("nan")
    alpha = (1.0 - ci_level) / 2.0
    lo, hi = np.quantile(r, [alpha, 1.0 - alpha]) if r.size else (np.nan, np.nan)
    return stderr, (float(lo), float(hi))


class _StageTimer:
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


# --------------------------------------------------------------------------- pairs


@dataclass(frozen=True)
class PairShiftResult:
    """Cross-fitted paired shift and pair ordering accuracy, with bootstrap spread over pairs."""

    shift: float
    order_accuracy: float
    per_pair_shift: np.ndarray
    stderr: dict[str, float]
    ci: dict[str, tuple[float, float]]
    n_pairs: int
    n_splits: int


def pair_index(y: np.ndarray, groups: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Row of the toxic and of the neutral member of each pair (pairs in sorted id order).

    Every group must hold exactly one text of each class.
    """
    y = np.asarray(y)
    groups = np.asarray(groups)
    uniq, inverse, counts = np.unique(groups, return_inverse=True, return_counts=True)
    tox = np.full(uniq.size, -1)
    neu = np.full(uniq.size, -1)
    tox[inverse[y == 1]] = np.flatnonzero(y == 1)
    neu[inverse[y == 0]] = np.flatnonzero(y == 0)
    bad = (counts != 2) | (tox < 0) | (neu < 0)
    if bad.any():
        raise SeparationInputError(
            f"{int(bad.sum())} pairs do not hold exactly one toxic and one neutral text (e.g. pair ids "
            f"{uniq[bad][:5].tolist()}); drop incomplete pairs before measuring."
        )
    return tox, neu


def paired_shift(
    X: np.ndarray,
    y: np.ndarray,
    groups: np.ndarray,
    *,
    n_splits: int = 5,
    n_boot: int = 200,
    ci_level: float = 0.95,
    seed: int = 0,
) -> PairShiftResult:
    r"""How far, and how consistently, each toxic text sits from its neutral rewrite along the
    language's toxic-minus-neutral direction.

    Pairs are split into ``n_splits`` folds. For each fold, the direction
    :math:`w = \bar\delta / \lVert\bar\delta\rVert` is the mean displacement
    :math:`\delta_i = x^{tox}_i - x^{neu}_i` of the *other* folds' pairs (cross-fitting: no pair
    defines its own direction), and :math:`s = \sqrt{(\mathrm{var}\,p_{tox} + \mathrm{var}\,p_{neu})/2}`
    is the pooled within-class standard deviation of the projections :math:`p = x \cdot w` of the
    other folds' texts. Each held-out pair gets the standardised shift :math:`d_i = \delta_i \cdot w / s`.

    - paired shift = mean of :math:`d_i` (in within-class SDs; 0 = no systematic displacement);
    - pair ordering accuracy = fraction of pairs with :math:`\delta_i \cdot w > 0` (ties count ½).

    Standard errors and basic bootstrap intervals come from a bootstrap over pairs (``n_boot``;
    the directions are held fixed). Pairs that collapse to fewer distinct displacements than the
    folds need, or projections without spread, raise (the caller reports NaN with the reason).
    """
    X, y = validate_states(X, y, min_per_class=2)
    tox, neu = pair_index(y, groups)
    n_pairs = tox.size
    splits = int(min(n_splits, n_pairs // 2))
    if splits < 2:
        raise SeparationInputError(
            f"the paired shift needs at least 4 pairs (2 folds of 2); got {n_pairs}. Use a larger --limit."
        )
    delta = X[tox] - X[neu]
    n_distinct = len({delta[i].tobytes() for i in range(n_pairs)})
    if n_distinct < 2 * splits:
        raise SeparationInputError(
            f"the {n_pairs} pairs collapse to {n_distinct} distinct toxic-minus-neutral displacements; the "
            f"cross-fitted paired shift needs at least {2 * splits} (a repeated pair has no within-class spread: "
            "the shift would be a ratio of rounding errors). Use more distinct pairs."
        )
    scale = float(np.sqrt(np.mean(np.var(X, axis=0))))
    rng = np.random.default_rng(seed)
    fold_of = rng.permutation(np.arange(n_pairs) % splits)
    d = np.empty(n_pairs)
    raw = np.empty(n_pairs)
    for f in range(splits):
        test = fold_of == f
        train = ~test
        mean_delta = delta[train].mean(axis=0)
        norm = float(np.linalg.norm(mean_delta))
        if norm == 0.0:
            raise SeparationInputError("the toxic and neutral members coincide on average: no direction to project on.")
        w = mean_delta / norm
        p_tox = X[tox[train]] @ w
        p_neu = X[neu[train]] @ w
        sd = float(np.sqrt((np.var(p_tox, ddof=1) + np.var(p_neu, ddof=1)) / 2.0))
        if not sd > 1e-6 * scale:
            raise SeparationInputError("the projections have zero within-class spread: the paired shift is undefined.")
        raw[test] = delta[test] @ w
        d[test] = raw[test] / sd
    order = np.where(raw > 0, 1.0, np.where(raw < 0, 0.0, 0.5))
    stderr: dict[str, float] = {}
    ci: dict[str, tuple[float, float]] = {}
    if n_boot and n_boot > 1:
        idx = np.random.default_rng(seed + 1).integers(0, n_pairs, size=(int(n_boot), n_pairs))
        for name, per_pair in (("paired_shift", d), ("pair_order_acc", order)):
            point = float(per_pair.mean())
            sp = summarise(per_pair[idx].mean(axis=1), point, ci_level, method="basic",
                           lower=0.0 if name == "pair_order_acc" else -np.inf, upper=1.0 if name == "pair_order_acc" else np.inf)
            stderr[name], ci[name] = sp.stderr, sp.ci
    return PairShiftResult(
        shift=float(d.mean()), order_accuracy=float(order.mean()), per_pair_shift=d,
        stderr=stderr, ci=ci, n_pairs=int(n_pairs), n_splits=splits,
    )


# --------------------------------------------------------------------------- two models, same texts


@dataclass
class PairedDifference:
    """Bootstrap of ``metric(B) - metric(A)`` for two models that saw the same texts.

    ``values_a`` / ``values_b`` are the point estimates (as :func:`separation_metrics` computes
    them with the same settings), ``difference`` their difference, ``stderr`` the standard
    deviation of the replicate differences, ``stderr_a`` / ``stderr_b`` the spread of each model's
    own replicates, and ``ci`` the basic bootstrap interval of the difference (clipped to the
    difference's possible range). ``spread`` says, per metric, how many replicate pairs were
    degenerate (counted, left out) and, for the probe, the refitting scale.
    """

    values_a: dict[str, float]
    values_b: dict[str, float]
    difference: dict[str, float]
    stderr: dict[str, float]
    stderr_a: dict[str, float]
    stderr_b: dict[str, float]
    ci: dict[str, tuple[float, float]]
    ci_level: float
    n_boot: int
    spread: dict[str, dict[str, Any]] = field(default_factory=dict)


def paired_bootstrap_difference(
    X_a: np.ndarray,
    X_b: np.ndarray,
    y: np.ndarray,
    *,
    k: int = 10,
    n_boot: int = 200,
    ci_level: float = 0.95,
    seed: int = 0,
    groups: np.ndarray | None = None,
    ridge: float | None = None,
    probe: bool = True,
    probe_folds: int = 5,
    silhouette_max_n: int | None = SILHOUETTE_MAX_N,
    probe_refits: int = PROBE_REFITS,
    pca_refit: bool = True,
) -> PairedDifference:
    """Separation metrics of two models on the same texts and a paired bootstrap of their difference.

    Row i of ``X_a`` and of ``X_b`` must be the same text (label ``y[i]``); the dimensions may
    differ. Each model is measured as :func:`separation_metrics` measures it (PCA-``k`` fitted on
    its own states, the probe cross-validated with the same folds), and every bootstrap replicate
    draws *one* resample of texts that both models are scored on, so the spread of the difference
    accounts for the texts the two share. With the settings and ``seed`` of a run the point values
    and each model's standard error equal what :func:`separation_metrics` reported for it
    (the resamples come from ``seed + 1``, as there; the probe's refits are the same replicates).
    With ``pca_refit`` (default) each model's PCA-k basis is refitted inside every replicate
    (:mod:`safespace_tasks.stats.pca_refit`), so the replicates of the variance ratio, Bhattacharyya
    distance and silhouette carry the basis's own sampling variation and bias (a fixed basis
    under-covers on spectra without an eigengap); the point values are unchanged.
    The interval of the difference of those three is the basic bootstrap interval; the probe's
    is the cross-validation-corrected t interval of :mod:`safespace_tasks.stats.cv_interval` on the
    per-fold AUROC differences (its bootstrap part widened by the refit scale with
    ``probe_refits`` > 1).
    """
    X_a, y = validate_states(X_a, y, min_per_class=2, what="states of model A", keep_float32=True)
    X_b, _ = validate_states(X_b, y, min_per_class=2, what="states of model B", keep_float32=True)
    if n_boot < 2:
        raise SeparationInputError(f"a paired bootstrap needs at least 2 replicates; got n_boot={n_boot}.")
    for X in (X_a, X_b):
        _check_k(X.shape[0], X.shape[1], k)
    kwargs = dict(
        k=k, seed=seed, groups=groups, ridge=ridge, probe=probe, probe_folds=probe_folds,
        silhouette_max_n=silhouette_max_n, n_boot=int(n_boot), timer=_StageTimer(), n_permutations=0,
        probe_refits=int(probe_refits),
    )
    a = _measure(X_a, y, **kwargs)
    b = _measure(X_b, y, **kwargs)
    # each model's own standard error is the one its run reported (fixed basis)
    sa, _, _ = _spreads(a, ci_level)
    sb, _, _ = _spreads(b, ci_level)
    refitted: set[str] = set()
    if pca_refit:
        done = [_refit_pca_replicates(X, y, m, k=k, n_boot=int(n_boot), seed=seed, groups=groups,
                                      silhouette_max_n=silhouette_max_n) for X, m in ((X_a, a), (X_b, b))]
        refitted = done[0] & done[1]
    values_a, values_b = a.values, b.values
    difference, stderr, stderr_a, stderr_b, ci, spread = {}, {}, {}, {}, {}, {}
    for name in values_a:
        difference[name] = values_b[name] - values_a[name]
        stderr_a[name] = sa.get(name, float("nan"))
        stderr_b[name] = sb.get(name, float("nan"))
        if name not in a.replicates or name not in b.replicates:
            stderr[name], ci[name] = float("nan"), (float("nan"), float("nan"))
            spread[name] = {"reason": a.degenerate.get(name) or b.degenerate.get(name) or "no replicates"}
            continue
        ra, rb = a.replicates[name], b.replicates[name]
        bound = BHATTACHARYYA_MAX if name == "bhattacharyya" else np.inf
        bad = ~(np.isfinite(ra) & np.isfinite(rb) & (np.abs(ra) <= bound) & (np.abs(rb) <= bound))
        with np.errstate(invalid="ignore"):  # inf - inf of degenerate pairs, masked here
            diff = np.where(bad, np.nan, rb - ra)
        scale, extra = 1.0, {}
        if name == "probe_auroc" and a.refits is not None and b.refits is not None:
            r = a.refits.size
            scale, extra = _refit_scale(diff[:r], b.refits - a.refits)
        lo, hi = METRIC_RANGE[name]
        sp = summarise(diff, difference[name], ci_level, method="basic", lower=lo - hi, upper=hi - lo, scale=scale)
        stderr[name], ci[name] = sp.stderr, sp.ci
        spread[name] = {"method": sp.method, "n_replicates": sp.n_replicates, "n_degenerate": sp.n_degenerate,
                        "clipped": sp.clipped, "reason": sp.reason, **extra}
        if name in ("bcv_ratio", "bhattacharyya", "silhouette"):
            spread[name]["pca_refit"] = name in refitted
            if pca_refit and name not in refitted and name == "silhouette":
                spread[name]["pca_refit_skipped"] = (
                    f"more than {SILHOUETTE_REFIT_MAX_N} texts: the silhouette's replicates keep the fixed basis "
                    "(a refitted basis costs an O(n^2) pass per replicate)")
        if name == "probe_auroc" and a.probe is not None and b.probe is not None and np.isfinite(sp.stderr):
            # the same seed, labels and groups give both models the same folds: per-fold differences
            per_fold = (fold_aurocs(b.probe.oof_scores, y, b.probe.folds)
                        - fold_aurocs(a.probe.oof_scores, y, a.probe.folds))
            stderr[name], ci[name], more = _probe_cv_spread(
                difference[name], sp.stderr**2, per_fold, ci_level, lo - hi, hi - lo)
            spread[name].update(more)
    return PairedDifference(
        values_a=values_a, values_b=values_b, difference=difference, stderr=stderr,
        stderr_a=stderr_a, stderr_b=stderr_b, ci=ci, ci_level=ci_level, n_boot=int(n_boot), spread=spread,
    )


def _refit_pca_replicates(
    X: np.ndarray, y: np.ndarray, m: _Measured, *, k: int, n_boot: int, seed: int, groups: np.ndarray | None,
    silhouette_max_n: int | None,
) -> set[str]:
    """Replace ``m``'s fixed-basis replicates of the PCA metrics by replicates on the same
    resamples (``seed + 1``; the silhouette's subsample ``seed + 3`` and resamples ``seed + 2``,
    as :func:`_measure` draws them) with the basis refitted in each."""
    from safespace_tasks.stats.pca_refit import pca_refit_replicates

    names = [nm for nm in ("bcv_ratio", "bhattacharyya", "silhouette") if nm in m.replicates]
    n_sil = X.shape[0] if silhouette_max_n is None else min(X.shape[0], int(silhouette_max_n))
    if n_sil > SILHOUETTE_REFIT_MAX_N:
        names = [nm for nm in names if nm != "silhouette"]
    if not names:
        return set()
    W = stratified_bootstrap_weights(y, n_boot, seed + 1, groups=groups)
    rows = Ws = None
    if "silhouette" in names and silhouette_max_n is not None and X.shape[0] > silhouette_max_n:
        rows = stratified_subsample(y, int(silhouette_max_n), seed + 3, groups=groups)
        Ws = stratified_bootstrap_weights(y[rows], n_boot, seed + 2, groups=None if groups is None else groups[rows])
    ridge = m.bhattacharyya.ridge if m.bhattacharyya is not None else 0.0
    m.replicates.update(pca_refit_replicates(
        X, y, W, k, ridge=ridge, metrics=tuple(names), silhouette_rows=rows, W_silhouette=Ws,
    ))
    return set(names)


# Above this many texts (after the silhouette's own subsample) the paired bootstrap keeps the
# fixed basis for the silhouette's replicates: a refitted basis costs an O(n^2 k) distance pass
# per replicate (about 0.05 s at 2,000 texts, 0.3 s at 5,000), and is recorded in ``spread``.
SILHOUETTE_REFIT_MAX_N = 3000


def paired_shift_difference(
    X_a: np.ndarray,
    X_b: np.ndarray,
    y: np.ndarray,
    groups: np.ndarray,
    *,
    n_splits: int = 5,
    n_boot: int = 200,
    ci_level: float = 0.95,
    seed: int = 0,
) -> PairedDifference:
    """:func:`paired_shift` and pair ordering accuracy of two models on the same pairs, and a
    bootstrap of their difference that resamples the *same* pairs for both models.

    Each model's per-pair shifts are cross-fitted exactly as :func:`paired_shift` does with these
    arguments, and the resamples are those it draws (from ``seed + 1``), so each model's value and
    replicate spread equal what its run reported.
    """
    if n_boot < 2:
        raise SeparationInputError(f"a paired bootstrap needs at least 2 replicates; got n_boot={n_boot}.")
    res_a = paired_shift(X_a, y, groups, n_splits=n_splits, n_boot=0, seed=seed)
    res_b = paired_shift(X_b, y, groups, n_splits=n_splits, n_boot=0, seed=seed)
    n_pairs = res_a.n_pairs
    idx = np.random.default_rng(seed + 1).integers(0, n_pairs, size=(int(n_boot), n_pairs))

    def order(d: np.ndarray) -> np.ndarray:
        return np.where(d > 0, 1.0, np.where(d < 0, 0.0, 0.5))

    per_pair = {
        "paired_shift": (res_a.per_pair_shift, res_b.per_pair_shift),
        "pair_order_acc": (order(res_a.per_pair_shift), order(res_b.per_pair_shift)),
    }
    values_a = {"paired_shift": res_a.shift, "pair_order_acc": res_a.order_accuracy}
    values_b = {"paired_shift": res_b.shift, "pair_order_acc": res_b.order_accuracy}
    difference, stderr, stderr_a, stderr_b, ci = {}, {}, {}, {}, {}
    for name, (pa, pb) in per_pair.items():
        ra, rb = pa[idx].mean(axis=1), pb[idx].mean(axis=1)
        difference[name] = values_b[name] - values_a[name]
        sp = summarise(rb - ra, difference[name], ci_level, method="basic",
                       lower=-1.0 if name == "pair_order_acc" else -np.inf, upper=1.0 if name == "pair_order_acc" else np.inf)
        stderr[name], ci[name] = sp.stderr, sp.ci
        stderr_a[name], _ = _spread(ra, ci_level)
        stderr_b[name], _ = _spread(rb, ci_level)
    return PairedDifference(
        values_a=values_a, values_b=values_b, difference=difference, stderr=stderr,
        stderr_a=stderr_a, stderr_b=stderr_b, ci=ci, ci_level=ci_level, n_boot=int(n_boot),
    )
