"""Exact, seed-free PCA of the pooled states (centred, not scaled). numpy and scipy only."""

from __future__ import annotations

from typing import Iterator

import numpy as np

from safespace_tasks.stats.validation import check_k

__all__ = ["EXACT_PCA_MAX_WORK", "LANCZOS_TOL", "pca_basis", "pca_project", "pca_method"]

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


def pca_method(n: int, d: int) -> str:
    """The solver :func:`pca_basis` uses for ``n`` states of dimension ``d`` (as the diagnostics name it)."""
    return "exact (LAPACK)" if n * d * min(n, d) <= EXACT_PCA_MAX_WORK else "Lanczos (ARPACK)"


def pca_project(X: np.ndarray, k: int, *, random_state: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Project states on their first ``k`` principal components (centred, not scaled).

    The axes come from :func:`pca_basis`: exact to solver precision and independent of any seed.

    Parameters
    ----------
    X : ndarray of shape (n_texts, n_features)
        Pooled hidden states; float32 states are read in their own precision, the centring and
        the projection are done in float64.
    k : int
        Number of components to keep; ``k + 2 <= n_texts`` and ``k <= n_features``.
    random_state : None
        Accepted for compatibility with scikit-learn's ``PCA`` and ignored (the solver is seed-free).

    Returns
    -------
    Z : ndarray of shape (n_texts, k), float64
        The centred states on the top-``k`` axes, each axis signed so that its largest-magnitude
        loading is positive.
    explained_variance_ratio : ndarray of shape (k,)
        Share of the total variance along each kept axis.

    Raises
    ------
    SeparationInputError
        When ``k`` is not a positive integer or the shape cannot hold ``k`` components.

    References
    ----------
    .. [1] Jolliffe, I. T. (2002). *Principal Component Analysis*, 2nd ed. Springer.
    """
    X = np.asarray(X)
    if X.dtype != np.float32:
        X = X.astype(np.float64, copy=False)
    n, d = X.shape
    check_k(n, d, k)
    mu, V, var, total = pca_basis(X, int(k))
    Z = np.empty((n, int(k)))
    for i in range(0, n, 4096):
        Z[i : i + 4096] = (X[i : i + 4096].astype(np.float64) - mu) @ V.T
    evr = var / total if total > 0 else np.zeros_like(var)
    return Z, evr

