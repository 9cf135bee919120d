"""Kernels of the separation metrics: each metric as a function of the projected states.

A metric of :data:`safespace_tasks.metric_table.METRICS` that :func:`~safespace_tasks.stats.separation.separation_metrics`
computes carries a :class:`Kernel`: its point value on ``(Z, y)`` and its *class-weighted* form on
``(Z, W0, W1)``, where column b of ``Wc`` weights the texts of class c (bootstrap counts times the
class indicator, or the indicator of permuted labels). The point estimate, the bootstrap replicates,
the permutation null, the refitted-basis replicates and the paired bootstrap of two models all call
these functions through the table's rows, without naming a metric.

The quantities follow Verma & Bharadwaj (2025), "The Hidden Space of Safety": the between-class
variance ratio, the Bhattacharyya distance and the silhouette score on PCA-k coordinates.
numpy only (scipy inside the PCA).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from safespace_tasks.stats.validation import SeparationInputError, stratified_subsample, validate_states

__all__ = [
    "Kernel",
    "BhattacharyyaResult",
    "between_class_variance_ratio",
    "bhattacharyya_distance",
    "gaussian_bhattacharyya",
    "silhouette",
    "BCV_RATIO",
    "BHATTACHARYYA",
    "SILHOUETTE",
    "BHATTACHARYYA_MAX",
    "RIDGE_SCALE",
    "MAX_CONDITION",
]

# Relative ridge added to a covariance that is singular (or numerically so): lambda =
# RIDGE_SCALE * trace(Sigma_bar) / k. Used only when needed, and always reported.
RIDGE_SCALE = 1e-6
# Condition number above which a class covariance counts as singular.
MAX_CONDITION = 1e12
# Beyond this a Bhattacharyya distance (value or replicate) is degenerate: reported with its cause,
# never measured into a huge number.
BHATTACHARYYA_MAX = 1e3


@dataclass(frozen=True)
class Kernel:
    """How the statistics compute one metric; a row of the metric table carries it.

    Parameters
    ----------
    point : callable ``(Z, y, ctx) -> float``
        The metric on the projected states ``Z`` (n x k) and labels ``y``. It may raise
        :class:`SeparationInputError`: the metric is then NaN with the message as its reason.
        ``ctx`` is a dict shared by the metric's calls within one measurement: the options of
        :func:`~safespace_tasks.stats.separation.separation_metrics` (``ridge``, ``seed``,
        ``groups``, ...), ``y``, and ``ctx["diagnostics"]``, where the kernel may record numbers
        that shaped its value (they go into the result's diagnostics).
    weighted : callable ``(Z, W0, W1, ctx) -> ndarray of shape (B,)``
        The metric for each column of the class weights ``W0``, ``W1`` (n x B). With weights 0/1
        it must equal ``point`` on the texts of weight 1. The bootstrap, the permutation null and
        the refitted-basis replicates are computed with it.
    resampled : callable ``(Z, y, W, ctx) -> ndarray``, optional
        Replaces the bootstrap's default ``weighted(Z, W * (y == 0), W * (y == 1), ctx)``.
    labelled : callable ``(Z, Y, ctx) -> ndarray or None``, optional
        Replaces the null's default ``weighted(Z, Y == 0, Y == 1, ctx)`` for permuted labels
        ``Y`` (n x P); None means no null.
    quadratic : bool
        The cost grows as n^2: above ``silhouette_max_n`` texts it is measured on a seeded,
        class-stratified subsample (diagnostic ``<name>_sample``), with its own timer stages.
    bound : float
        A value or replicate whose magnitude exceeds it is degenerate.
    check : callable ``(n_distinct_per_class, k) -> str or None``, optional
        Why the metric cannot be measured on states that collapse to so few distinct states per
        class (None: it can). Every PCA metric also needs ``k + 1`` distinct states overall.
    diagnostics : tuple of (key, default)
        Diagnostics the point kernel records, with the value reported when it did not run.
    stage : str, optional
        Timer stage of the point value (default: the metric's name).
    cross_fitted : bool
        The metric is fitted on the full states ``X`` with cross-validation (the probe), not on
        ``Z``. Its kernels receive ``X``; it may add ``refit`` (bootstrap replicates with the model
        refitted) and ``per_fold`` (per-fold values: the interval is then the cross-validation
        t interval of :mod:`safespace_tasks.stats.cv_interval`).
    raises : bool
        An input error of ``point`` propagates (True) instead of making the metric NaN.
    """

    point: Callable[..., float]
    weighted: Callable[..., np.ndarray] | None = None
    resampled: Callable[..., np.ndarray] | None = None
    labelled: Callable[..., np.ndarray | None] | None = None
    quadratic: bool = False
    bound: float = np.inf
    check: Callable[[tuple[int, int], int], str | None] | None = None
    diagnostics: tuple[tuple[str, Any], ...] = ()
    stage: str | None = None
    cross_fitted: bool = False
    refit: Callable[..., np.ndarray | None] | None = None
    per_fold: Callable[[dict], np.ndarray] | None = None
    raises: bool = False

    def replicates(self, Z: np.ndarray, y: np.ndarray, W: np.ndarray, ctx: dict) -> np.ndarray:
        """The metric on each bootstrap resample (columns of the draw counts ``W``, n x B)."""
        if self.resampled is not None:
            return self.resampled(Z, y, W, ctx)
        W0, W1 = _class_weights(y, W)
        return self.weighted(Z, W0, W1, ctx)

    def null(self, Z: np.ndarray, Y: np.ndarray, ctx: dict) -> np.ndarray | None:
        """The metric under each column of permuted labels ``Y`` (n x P)."""
        if self.labelled is not None:
            return self.labelled(Z, Y, ctx)
        P1 = (Y == 1).astype(np.float64)
        return self.weighted(Z, 1.0 - P1, P1, ctx)


# --------------------------------------------------------------------------- metrics on Z


def between_class_variance_ratio(Z: np.ndarray, y: np.ndarray) -> float:
    r"""Between-class share of the total variance of the projected states, a fraction in [0, 1].

    .. math::
        \mathrm{SS}_B = \sum_c n_c \lVert \mu_c - \mu \rVert^2, \quad
        \mathrm{SS}_W = \sum_i \lVert z_i - \mu_{y_i} \rVert^2, \quad
        r = \frac{\mathrm{SS}_B}{\mathrm{SS}_B + \mathrm{SS}_W}

    Parameters
    ----------
    Z : ndarray of shape (n_texts, k)
        States on their PCA-k axes (:func:`~safespace_tasks.stats.pca.pca_project`).
    y : ndarray of shape (n_texts,)
        Labels, 0 (non-toxic) or 1 (toxic); each class at least once.

    Returns
    -------
    ratio : float
        :math:`\mathrm{SS}_B / (\mathrm{SS}_B + \mathrm{SS}_W)` (multiply by 100 for the
        percentages of the paper).

    Raises
    ------
    SeparationInputError
        When all states are identical (0/0) or the input is malformed.

    References
    ----------
    .. [1] Verma, S. & Bharadwaj, A. (2025). The Hidden Space of Safety.
    .. [2] Fisher, R. A. (1936). The use of multiple measurements in taxonomic problems.
       *Annals of Eugenics*, 7(2), 179-188.
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
    r"""Bhattacharyya distance between two Gaussians N(mu0, cov0) and N(mu1, cov1).

    .. math::
        D_B = \tfrac18 \Delta\mu^\top \bar\Sigma^{-1} \Delta\mu
              + \tfrac12 \ln \frac{\det \bar\Sigma}{\sqrt{\det \Sigma_0 \det \Sigma_1}},
        \qquad \bar\Sigma = (\Sigma_0 + \Sigma_1)/2

    Log-determinants use ``slogdet``.

    Parameters
    ----------
    mu0, mu1 : ndarray of shape (k,)
        Class means.
    cov0, cov1 : ndarray of shape (k, k)
        Class covariances.
    ridge : float or None, default=None
        None adds ``RIDGE_SCALE * trace(Sigma_bar) / k`` to every covariance only when one of
        them is singular or its condition number exceeds ``MAX_CONDITION``; a float forces that
        ridge; 0.0 forbids one (a singular covariance then raises).

    Returns
    -------
    result : BhattacharyyaResult
        The distance, the ridge used (0.0 when none) and the two terms (mean term
        ⅛ Δμᵀ Σ̄⁻¹ Δμ and covariance term), which sum to the distance.

    Raises
    ------
    SeparationInputError
        On mismatched shapes, non-finite parameters, zero covariances, or a singular
        covariance with ``ridge=0.0``.

    References
    ----------
    .. [1] Bhattacharyya, A. (1943). On a measure of divergence between two statistical
       populations defined by their probability distributions. *Bull. Calcutta Math. Soc.*, 35, 99-109.
    .. [2] Fukunaga, K. (1990). *Introduction to Statistical Pattern Recognition*, 2nd ed., sec. 3.4.
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
    """Bhattacharyya distance between Gaussian fits of the two classes of the projected states.

    Each class is fitted by its sample mean and unbiased covariance; see
    :func:`gaussian_bhattacharyya` for the formula and the ridge policy.

    Parameters
    ----------
    Z : ndarray of shape (n_texts, k)
        States on their PCA-k axes.
    y : ndarray of shape (n_texts,)
        Labels 0/1, at least 2 texts of each class (``k + 1`` distinct states per class for a
        non-singular fit).
    ridge : float or None, default=None
        Ridge policy of :func:`gaussian_bhattacharyya`.

    Returns
    -------
    result : BhattacharyyaResult
        Distance (nats), ridge used and the two terms.

    References
    ----------
    .. [1] Bhattacharyya, A. (1943). *Bull. Calcutta Math. Soc.*, 35, 99-109.
    .. [2] Verma, S. & Bharadwaj, A. (2025). The Hidden Space of Safety.
    """
    Z, y = validate_states(Z, y, min_per_class=2, what="projected states")
    Z0, Z1 = Z[y == 0], Z[y == 1]
    cov0 = np.atleast_2d(np.cov(Z0, rowvar=False))
    cov1 = np.atleast_2d(np.cov(Z1, rowvar=False))
    return gaussian_bhattacharyya(Z0.mean(axis=0), cov0, Z1.mean(axis=0), cov1, ridge=ridge)


def silhouette(
    Z: np.ndarray, y: np.ndarray, *, chunk_rows: int = 2048, sample_size: int | None = None, seed: int = 0
) -> float:
    r"""Mean silhouette coefficient of the projected states with clusters given by the labels.

    For text i in class c: a(i) = mean Euclidean distance to the other members of c, b(i) = mean
    distance to the members of the other class, s(i) = (b - a) / max(a, b); the score is the mean
    of s(i), the same value as ``sklearn.metrics.silhouette_score``. Computed in row chunks, so
    memory stays at ``chunk_rows x n``; the cost is O(n^2 k).

    Parameters
    ----------
    Z : ndarray of shape (n_texts, k)
        States on their PCA-k axes.
    y : ndarray of shape (n_texts,)
        Labels 0/1.
    chunk_rows : int, default=2048
        Rows of the distance matrix held at once.
    sample_size : int or None, default=None
        As scikit-learn's: score a seeded, class-stratified subsample of that many texts
        (:func:`~safespace_tasks.stats.validation.stratified_subsample`); None scores all texts.
    seed : int, default=0
        Seed of the subsample.

    Returns
    -------
    score : float
        In [-1, 1]; a singleton class scores 0 (Rousseeuw's convention).

    References
    ----------
    .. [1] Rousseeuw, P. J. (1987). Silhouettes: a graphical aid to the interpretation and
       validation of cluster analysis. *J. Comput. Appl. Math.*, 20, 53-65.
    """
    Z, y = validate_states(Z, y, min_per_class=1, what="projected states")
    if sample_size is not None and sample_size < Z.shape[0]:
        idx = stratified_subsample(y, sample_size, seed)
        Z, y = Z[idx], y[idx]
    w = np.ones((Z.shape[0], 1))
    return float(_weighted_silhouette(Z, y, w, chunk_rows=chunk_rows)[0])


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


# --------------------------------------------------------------------------- class-weighted forms


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


# --------------------------------------------------------------------------- the kernels of the table rows


def _bcv_point(Z: np.ndarray, y: np.ndarray, ctx: dict) -> float:
    return between_class_variance_ratio(Z, y)


def _bcv_weighted(Z: np.ndarray, W0: np.ndarray, W1: np.ndarray, ctx: dict) -> np.ndarray:
    return _class_weighted_bcv(Z, W0, W1)


def _bhattacharyya_point(Z: np.ndarray, y: np.ndarray, ctx: dict) -> float:
    res = bhattacharyya_distance(Z, y, ridge=ctx.get("ridge"))
    ctx["ridge"] = res.ridge  # the replicates and the null use the fit's ridge
    ctx["diagnostics"].update(bhattacharyya_ridge=res.ridge, bhattacharyya_mahalanobis_term=res.mahalanobis_term,
                              bhattacharyya_covariance_term=res.covariance_term)
    if not (np.isfinite(res.distance) and 0.0 <= res.distance <= BHATTACHARYYA_MAX):
        raise SeparationInputError(
            f"the distance {res.distance:.4g} is beyond the sane bound {BHATTACHARYYA_MAX:g} (ridge "
            f"{res.ridge:.3g}): near-singular class covariances"
        )
    return res.distance


def _bhattacharyya_weighted(Z: np.ndarray, W0: np.ndarray, W1: np.ndarray, ctx: dict) -> np.ndarray:
    return _class_weighted_bhattacharyya(Z, W0, W1, ctx.get("ridge") or 0.0)


def _gaussian_fit_check(per_class: tuple[int, int], k: int) -> str | None:
    if min(per_class) >= k + 1:
        return None
    c = 0 if per_class[0] < per_class[1] else 1
    return (
        f"the {'toxic' if c else 'non-toxic'} texts collapse to {min(per_class)} distinct states; a Gaussian "
        f"fit on PCA-{k} needs at least k + 1 = {k + 1} (its covariance is singular, and a ridge would "
        "make the distance arbitrarily large)"
    )


def _silhouette_point(Z: np.ndarray, y: np.ndarray, ctx: dict) -> float:
    return silhouette(Z, y)


def _silhouette_resampled(Z: np.ndarray, y: np.ndarray, W: np.ndarray, ctx: dict) -> np.ndarray:
    return _weighted_silhouette(Z, y, W)


def _silhouette_labelled(Z: np.ndarray, Y: np.ndarray, ctx: dict) -> np.ndarray:
    return _labelled_silhouette(Z, Y)


def _silhouette_weighted(Z: np.ndarray, W0: np.ndarray, W1: np.ndarray, ctx: dict) -> np.ndarray:
    """Each column on its own (the class of a text may differ between columns)."""
    out = np.empty(W0.shape[1])
    for b in range(W0.shape[1]):
        w = W0[:, b] + W1[:, b]
        rows = w > 0
        out[b] = _weighted_silhouette(Z[rows], (W1[rows, b] > 0).astype(np.int64), w[rows, None])[0]
    return out


BCV_RATIO = Kernel(point=_bcv_point, weighted=_bcv_weighted, stage="bcv_bhattacharyya",
                   diagnostics=(("bcv_ratio_unit", "fraction"),))
BHATTACHARYYA = Kernel(
    point=_bhattacharyya_point, weighted=_bhattacharyya_weighted, bound=BHATTACHARYYA_MAX,
    check=_gaussian_fit_check, stage="bcv_bhattacharyya",
    diagnostics=(("bhattacharyya_ridge", None), ("bhattacharyya_mahalanobis_term", None),
                 ("bhattacharyya_covariance_term", None)),
)
SILHOUETTE = Kernel(point=_silhouette_point, weighted=_silhouette_weighted, resampled=_silhouette_resampled,
                    labelled=_silhouette_labelled, quadratic=True)
