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
``metrics.SILHOUETTE_REFIT_MAX_N`` texts the silhouette keeps the fixed basis.
"""

from __future__ import annotations

import numpy as np

__all__ = ["refit_span", "pca_refit_replicates"]


def refit_span(n: int, d: int, k: int) -> int:
    """Width M of the span the replicate PCA is solved in."""
    return int(max(k, min(d, n - 1, max(64, 8 * k))))


def _span(X: np.ndarray, k: int) -> np.ndarray:
    """The states projected (centred, float64) on the top-M exact principal axes of the sample."""
    from safespace_tasks.stats.separation import pca_basis

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
    silhouette_rows: np.ndarray | None = None, W_silhouette: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """Replicates (one per column of the bootstrap counts ``W``, n x B) of the variance ratio,
    the Bhattacharyya distance (with the fit's ``ridge``) and, when ``"silhouette"`` is in
    ``metrics``, the silhouette (on ``silhouette_rows`` with the weights ``W_silhouette`` when the
    silhouette is measured on a subsample), each on the resample's own PCA-k basis."""
    from safespace_tasks.stats.separation import (
        _class_weighted_bcv, _class_weighted_bhattacharyya, _class_weights, _weighted_silhouette,
    )

    y = np.asarray(y)
    Y = _span(np.asarray(X), k)
    B = W.shape[1]
    out = {m: np.full(B, np.nan) for m in metrics}
    W0, W1 = _class_weights(y, W)
    sil = "silhouette" in metrics
    ys, Ws = y, W
    if sil and silhouette_rows is not None:
        ys = y[silhouette_rows]
        Ws = W_silhouette if W_silhouette is not None else W[silhouette_rows]
    for b in range(B):
        Z = _replicate_basis(Y, W[:, b], k)
        if "bcv_ratio" in out:
            out["bcv_ratio"][b] = _class_weighted_bcv(Z, W0[:, [b]], W1[:, [b]])[0]
        if "bhattacharyya" in out:
            with np.errstate(all="ignore"):
                out["bhattacharyya"][b] = _class_weighted_bhattacharyya(Z, W0[:, [b]], W1[:, [b]], ridge)[0]
        if sil:
            # the replicate's basis comes from the resample of all texts, as the point estimate's
            # comes from all texts; the silhouette's subsample (when there is one) is then read off it
            Zs = Z if silhouette_rows is None else Z[silhouette_rows]
            drawn = Ws[:, b] > 0  # texts not drawn neither score nor count as neighbours
            out["silhouette"][b] = _weighted_silhouette(Zs[drawn], ys[drawn], Ws[drawn][:, [b]])[0]
    return out
