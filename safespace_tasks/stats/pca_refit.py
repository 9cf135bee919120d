"""Bootstrap replicates of the PCA-k metrics with the PCA basis refitted inside each replicate.

The task's own bootstrap keeps the full sample's PCA-k basis fixed (cheap: the basis does not
see the labels). That basis is itself an estimate: where the spectrum has no clear gap after k
components, the sample's top-k axes wander from the population's from one sample of texts to
the next, and the metrics on them carry a bias that a fixed-basis bootstrap cannot see. On a
smooth power-law spectrum (d = 64, half the class shift outside PCA-10, 600 texts per class)
the report's gain interval then covered 0.90-0.91, with a bias of -0.83 sd that vanished with
the population basis (issue 24). Refitting the basis on every resample puts the basis's
sampling variation and bias into the replicates, as the bootstrap principle asks: the
replicate statistic is computed exactly as the point estimate is, on the resample (Efron &
Tibshirani 1993, *An Introduction to the Bootstrap*, ch. 6; the basic interval then reflects the
bias, Davison & Hinkley 1997, eq. 5.6).

Cost: the states are first projected once on the top ``M = min(d, n - 1, max(64, 8 k))`` exact
principal axes of the full sample, and each replicate's weighted covariance and top-k axes are
computed inside that span (an M x M eigenproblem); with d <= M (the planted studies) this is
the exact replicate PCA, above it the replicate's top-k axes are taken within the sample's
top-M span (their share of variance outside it is what the sample's axes M+1... hold). Measured on
one core: 200 replicates of the variance ratio and Bhattacharyya distance at 5,000 x 4,096 take
about 18 s per model (the span's PCA included). The silhouette replicate is a full O(n^2 k) pass
per replicate over the drawn texts (about 0.05 s at 2,000 texts); above
``paired.SILHOUETTE_REFIT_MAX_N`` texts the silhouette keeps the fixed basis.
"""

from __future__ import annotations

import numpy as np

__all__ = ["refit_span", "pca_refit_replicates"]


def refit_span(n: int, d: int, k: int) -> int:
    """Width M of the span the replicate PCA is solved in."""
    return int(max(k, min(d, n - 1, max(64, 8 * k))))


def _span(X: np.ndarray, k: int) -> np.ndarray:
    """The states projected (centred, float64) on the top-M exact principal axes of the sample."""
    from safespace_tasks.stats.pca import pca_basis

    n, d = X.shape
    m = refit_span(n, d, k)
    mu, V, _, _ = pca_basis(X, m)
    Y = np.empty((n, m))
    for i in range(0, n, 4096):
        Y[i : i + 4096] = (X[i : i + 4096].astype(np.float64) - mu) @ V.T
    return Y


def _replicate_basis(Y: np.ndarray, w: np.ndarray, k: int) -> np.ndarray:
    """Resample (weights ``w``) projected on its own top-k principal axes (n x k, all rows)."""
    tot = w.sum()
    mu = (w @ Y) / tot
    C = Y - mu
    cov = (C * w[:, None]).T @ C / max(tot - 1.0, 1.0)
    vals, vecs = np.linalg.eigh(cov)
    U = vecs[:, np.argsort(vals)[::-1][:k]]
    return C @ U


def pca_refit_replicates(
    X: np.ndarray, y: np.ndarray, W: np.ndarray, k: int, *, ridge: float, metrics=("bcv_ratio", "bhattacharyya"),
    subsample_rows: np.ndarray | None = None, W_subsample: np.ndarray | None = None,
    contexts: dict[str, dict] | None = None,
) -> dict[str, np.ndarray]:
    """Replicates (one per column of the bootstrap counts ``W``, n x B) of the metric table's PCA
    metrics named in ``metrics``, each on the resample's own PCA-k basis, computed with the row's
    kernel (:class:`~safespace_tasks.stats.kernels.Kernel`). ``contexts`` holds each metric's
    kernel context from its fit (default ``{"ridge": ridge}``: the Bhattacharyya distance's ridge).
    A quadratic kernel (the silhouette) measured on a subsample is read on ``subsample_rows`` with
    the weights ``W_subsample``."""
    from safespace_tasks import metric_table as mt

    y = np.asarray(y)
    Y = _span(np.asarray(X), k)
    B = W.shape[1]
    kernels = {m: mt.spec(m).kernel for m in metrics}
    contexts = contexts or {}
    ctx = {m: contexts.get(m, {"ridge": ridge, "diagnostics": {}}) for m in metrics}
    out = {m: np.full(B, np.nan) for m in metrics}
    ys, Ws = y, W
    if subsample_rows is not None:
        ys = y[subsample_rows]
        Ws = W_subsample if W_subsample is not None else W[subsample_rows]
    for b in range(B):
        Z = _replicate_basis(Y, W[:, b], k)
        for m, kern in kernels.items():
            if not kern.quadratic:
                with np.errstate(all="ignore"):
                    out[m][b] = kern.replicates(Z, y, W[:, [b]], ctx[m])[0]
                continue
            # the replicate's basis comes from the resample of all texts, as the point estimate's
            # comes from all texts; the subsample (when there is one) is then read off it
            Zs = Z if subsample_rows is None else Z[subsample_rows]
            drawn = Ws[:, b] > 0  # texts not drawn neither score nor count as neighbours
            out[m][b] = kern.replicates(Zs[drawn], ys[drawn], Ws[drawn][:, [b]], ctx[m])[0]
    return out
