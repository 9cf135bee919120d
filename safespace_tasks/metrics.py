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

Confidence intervals come from a stratified bootstrap over texts (class sizes held fixed). The
PCA basis is fitted once on all texts and held fixed across replicates, so the interval measures
the sampling spread of the metric given the basis; refitting PCA per replicate would cost
``n_boot`` SVDs of the full states for a change that is negligible when n >> k.
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
    "stratified_subsample",
    "separation_metrics",
    "PairedDifference",
    "paired_bootstrap_difference",
    "paired_shift_difference",
    "SILHOUETTE_MAX_N",
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


def pca_project(X: np.ndarray, k: int, *, random_state: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Project ``X`` on its first ``k`` principal components.

    PCA is fitted on all rows together, centred and not scaled (``sklearn.decomposition.PCA``),
    in float32 when the states are float32 (as captured) and float64 otherwise.
    Returns ``(Z, explained_variance_ratio)`` with ``Z`` (float64) of shape (n, k).
    """
    X = np.asarray(X)
    if X.dtype != np.float32:
        X = X.astype(np.float64, copy=False)
    n, d = X.shape
    _check_k(n, d, k)
    pca = PCA(n_components=int(k), svd_solver="auto", random_state=random_state)
    Z = pca.fit_transform(X).astype(np.float64, copy=False)
    return Z, pca.explained_variance_ratio_.astype(np.float64, copy=False)


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

    A weight w_i is the number of copies of text i in a bootstrap resample; copies sit at
    distance 0 from each other, so a(i) = sum_{j in c} w_j d_ij / (W_c - 1) and
    b(i) = sum_{j not in c} w_j d_ij / W_other, exactly as the silhouette of the resample.
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

    def fit(fold: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, bool]:
        train, test = fold
        model = make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=max_iter))
        model.fit(X[train], y[train])
        return model.decision_function(X[test]), bool(model[-1].n_iter_.max() >= max_iter)

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
    for (_, test), (scores, _) in zip(folds, fitted):
        oof[test] = scores
    not_converged = sum(hit for _, hit in fitted)
    return ProbeResult(
        auroc=float(roc_auc_score(y, oof)),
        oof_scores=oof,
        n_splits=splits,
        grouped=groups is not None,
        not_converged=not_converged,
    )


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
    With ``groups`` whole groups are drawn instead (texts of a group move together), stratified
    by the group's first label.
    """
    y = np.asarray(y)
    rng = np.random.default_rng(seed)
    n = y.shape[0]
    W = np.zeros((n, n_boot))
    if groups is None:
        for c in (0, 1):
            members = np.flatnonzero(y == c)
            draws = rng.integers(0, members.size, size=(n_boot, members.size))
            for b in range(n_boot):
                W[:, b] += np.bincount(members[draws[b]], minlength=n)
        return W
    groups = np.asarray(groups)
    uniq, inverse = np.unique(groups, return_inverse=True)
    first_label = np.zeros(uniq.size, dtype=np.int64)
    first_label[inverse[::-1]] = y[::-1]
    for c in np.unique(first_label):
        gmembers = np.flatnonzero(first_label == c)
        draws = rng.integers(0, gmembers.size, size=(n_boot, gmembers.size))
        for b in range(n_boot):
            gcount = np.bincount(gmembers[draws[b]], minlength=uniq.size)
            W[:, b] += gcount[inverse]
    return W


def _weighted_bcv(Z: np.ndarray, y: np.ndarray, W: np.ndarray) -> np.ndarray:
    sq = np.einsum("ij,ij->i", Z, Z)
    tot_w = W.sum(axis=0)
    tot_s1 = W.T @ Z  # B x k
    mu = tot_s1 / tot_w[:, None]
    ss_b = np.zeros(W.shape[1])
    ss_w = np.zeros(W.shape[1])
    for c in (0, 1):
        m = y == c
        wc = W[m].sum(axis=0)
        s1 = W[m].T @ Z[m]
        s2 = W[m].T @ sq[m]
        mu_c = s1 / wc[:, None]
        ss_b += wc * np.sum((mu_c - mu) ** 2, axis=1)
        ss_w += s2 - wc * np.sum(mu_c**2, axis=1)
    return ss_b / (ss_b + ss_w)


def _weighted_bhattacharyya(Z: np.ndarray, y: np.ndarray, W: np.ndarray, ridge: float) -> np.ndarray:
    k = Z.shape[1]
    eye = np.eye(k)
    mus, covs = [], []
    for c in (0, 1):
        m = y == c
        Zc, Wc = Z[m], W[m]
        wc = Wc.sum(axis=0)
        mu = (Wc.T @ Zc) / wc[:, None]  # B x k
        # weighted second moments of every replicate in one matrix product: B x (k*k)
        outer = (Zc[:, :, None] * Zc[:, None, :]).reshape(Zc.shape[0], k * k)
        second = (Wc.T @ outer).reshape(-1, k, k)
        cov = (second - wc[:, None, None] * (mu[:, :, None] * mu[:, None, :])) / (wc - 1.0)[:, None, None]
        mus.append(mu)
        covs.append(cov + ridge * eye)
    cov_bar = (covs[0] + covs[1]) / 2.0
    dmu = mus[1] - mus[0]
    maha = np.einsum("bi,bi->b", dmu, np.linalg.solve(cov_bar, dmu[..., None])[..., 0]) / 8.0
    _, ld0 = np.linalg.slogdet(covs[0])
    _, ld1 = np.linalg.slogdet(covs[1])
    _, ldb = np.linalg.slogdet(cov_bar)
    return maha + 0.5 * (ldb - 0.5 * (ld0 + ld1))


def _weighted_auroc(y: np.ndarray, scores: np.ndarray, W: np.ndarray) -> np.ndarray:
    r"""AUROC of ``scores`` for each column of the replicate weights ``W`` (n x B), as
    ``roc_auc_score(y, scores, sample_weight=W[:, b])``: the weighted Mann-Whitney statistic
    (ties count one half), with one sort for all replicates, O(n log n + n B).

    .. math::
        \mathrm{AUC}_b = \frac{\sum_{g} P_{gb} (N_{<g,b} + \tfrac12 N_{gb})}{P_b N_b}

    over the distinct score values g: P_gb and N_gb are the positive and negative weights at g,
    N_<g,b the negative weight below it, P_b and N_b the totals.
    """
    values, inverse = np.unique(scores, return_inverse=True)
    pos = np.zeros((values.size, W.shape[1]))
    neg = np.zeros((values.size, W.shape[1]))
    np.add.at(pos, inverse[y == 1], W[y == 1])
    np.add.at(neg, inverse[y == 0], W[y == 0])
    below = np.cumsum(neg, axis=0) - neg
    with np.errstate(invalid="ignore", divide="ignore"):
        return (pos * (below + 0.5 * neg)).sum(axis=0) / (pos.sum(axis=0) * neg.sum(axis=0))


# --------------------------------------------------------------------------- all together


@dataclass
class SeparationResult:
    """All separation metrics of one language (and one layer), with bootstrap spread.

    ``values`` maps metric name to point estimate; ``stderr`` to the bootstrap standard deviation;
    ``ci`` to the percentile interval (``ci_level``). ``diagnostics`` records the choices that
    shaped the numbers: the PCA variance kept, the ridge, class sizes, probe folds.
    """

    values: dict[str, float]
    stderr: dict[str, float]
    ci: dict[str, tuple[float, float]]
    ci_level: float
    n_boot: int
    diagnostics: dict[str, Any] = field(default_factory=dict)
    projection: np.ndarray | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "values": dict(self.values),
            "stderr": dict(self.stderr),
            "ci": {k: list(v) for k, v in self.ci.items()},
            "ci_level": self.ci_level,
            "n_boot": self.n_boot,
            "diagnostics": dict(self.diagnostics),
        }


METRIC_NAMES = ("bcv_ratio", "bhattacharyya", "silhouette", "probe_auroc")


# Above this many texts the silhouette (point estimate and bootstrap) is computed on a seeded,
# class-stratified subsample of this size: its cost is quadratic in n (O(n^2 (k + B)) with the
# bootstrap), while every other metric is linear. Every real per-language set (at most 5,000
# texts) stays below it, so for them the silhouette uses all texts.
SILHOUETTE_MAX_N = 10_000


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
) -> SeparationResult:
    """Between-class variance ratio, Bhattacharyya distance and silhouette on PCA-``k`` of ``X``,
    and the cross-validated probe AUROC on ``X`` itself, each with a stratified-bootstrap
    standard error and percentile interval (``n_boot`` replicates; 0 skips the bootstrap).

    ``groups`` ties texts together (pairs): the probe's folds and the bootstrap keep a group whole.

    Large sets: with more than ``silhouette_max_n`` texts (default :data:`SILHOUETTE_MAX_N`; None
    never), the silhouette and its bootstrap are computed on a seeded, class-stratified subsample of
    ``silhouette_max_n`` texts (whole groups when ``groups`` is given), resampled within that
    subsample; ``diagnostics["silhouette_sample"]`` records its size (None: all texts). The other
    metrics always use every text. ``diagnostics["seconds"]`` records where the time went.
    """
    timer = _StageTimer()
    with timer("validate"):
        X, y = validate_states(X, y, min_per_class=2, keep_float32=True)
    n, d = X.shape
    _check_k(n, d, k)
    m = _measure(
        X, y, k=k, seed=seed, groups=groups, ridge=ridge, probe=probe, probe_folds=probe_folds,
        silhouette_max_n=silhouette_max_n, n_boot=n_boot, timer=timer,
    )
    counts = np.bincount(y, minlength=2)
    diagnostics: dict[str, Any] = {
        "n": int(n),
        "n_nontoxic": int(counts[0]),
        "n_toxic": int(counts[1]),
        "dim": int(d),
        "pca_components": int(k),
        "pca_explained_variance": float(np.sum(m.explained_variance)),
        "bhattacharyya_ridge": m.bhattacharyya.ridge,
        "bhattacharyya_mahalanobis_term": m.bhattacharyya.mahalanobis_term,
        "bhattacharyya_covariance_term": m.bhattacharyya.covariance_term,
        "bcv_ratio_unit": "fraction",
        "silhouette_sample": m.silhouette_sample,
    }
    if m.probe is not None:
        diagnostics.update(
            probe_folds=m.probe.n_splits, probe_grouped=m.probe.grouped, probe_not_converged=m.probe.not_converged
        )
    stderr: dict[str, float] = {}
    ci: dict[str, tuple[float, float]] = {}
    if m.replicates:
        for name in m.values:
            stderr[name], ci[name] = _spread(m.replicates[name], ci_level)
        diagnostics["bootstrap"] = "stratified by class" if groups is None else "stratified, whole groups"
    diagnostics["seconds"] = timer.seconds
    return SeparationResult(
        values=m.values, stderr=stderr, ci=ci, ci_level=ci_level, n_boot=int(n_boot or 0),
        diagnostics=diagnostics, projection=m.projection,
    )


@dataclass
class _Measured:
    """Everything one model's states give: point values, bootstrap replicates (empty without a
    bootstrap) and the pieces the diagnostics report."""

    values: dict[str, float]
    replicates: dict[str, np.ndarray]
    projection: np.ndarray
    explained_variance: np.ndarray
    bhattacharyya: BhattacharyyaResult
    silhouette_sample: int | None
    probe: ProbeResult | None


def _measure(
    X: np.ndarray, y: np.ndarray, *, k: int, seed: int, groups: np.ndarray | None, ridge: float | None,
    probe: bool, probe_folds: int, silhouette_max_n: int | None, n_boot: int, timer: "_StageTimer",
) -> _Measured:
    """The four metrics on validated states and, with ``n_boot`` > 1, their replicates.

    The resamples depend only on ``y``, ``groups``, ``n_boot`` and ``seed`` (``seed + 1``; the
    silhouette's subsample ``seed + 3`` and its resamples ``seed + 2``), so two models measured on
    the same texts with the same settings are scored on the same resamples.
    """
    n = X.shape[0]
    with timer("pca"):
        Z, evr = pca_project(X, k, random_state=seed)
    with timer("bcv_bhattacharyya"):
        bhat = bhattacharyya_distance(Z, y, ridge=ridge)
        values = {"bcv_ratio": between_class_variance_ratio(Z, y), "bhattacharyya": bhat.distance}
    sil_idx = None
    if silhouette_max_n is not None and n > silhouette_max_n:
        sil_idx = stratified_subsample(y, int(silhouette_max_n), seed + 3, groups=groups)
    Zs, ys = (Z, y) if sil_idx is None else (Z[sil_idx], y[sil_idx])
    with timer("silhouette"):
        values["silhouette"] = silhouette(Zs, ys)
    probe_res = None
    if probe:
        with timer("probe"):
            probe_res = probe_auroc(X, y, groups=groups, n_splits=probe_folds, seed=seed)
        values["probe_auroc"] = probe_res.auroc
    reps: dict[str, np.ndarray] = {}
    if n_boot and n_boot > 1:
        with timer("bootstrap"):
            W = stratified_bootstrap_weights(y, int(n_boot), seed + 1, groups=groups)
            reps["bcv_ratio"] = _weighted_bcv(Z, y, W)
            reps["bhattacharyya"] = _weighted_bhattacharyya(Z, y, W, bhat.ridge)
            if probe_res is not None:
                reps["probe_auroc"] = _weighted_auroc(y, probe_res.oof_scores, W)
        with timer("bootstrap_silhouette"):
            Ws = W if sil_idx is None else stratified_bootstrap_weights(
                ys, int(n_boot), seed + 2, groups=None if groups is None else np.asarray(groups)[sil_idx]
            )
            reps["silhouette"] = _weighted_silhouette(Zs, ys, Ws)
    return _Measured(
        values=values, replicates=reps, projection=Z, explained_variance=evr, bhattacharyya=bhat,
        silhouette_sample=None if sil_idx is None else int(sil_idx.size), probe=probe_res,
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

    Standard errors and percentile intervals come from a bootstrap over pairs (``n_boot``).
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
        if not sd > 0.0:
            raise SeparationInputError("the projections have zero within-class spread: the paired shift is undefined.")
        raw[test] = delta[test] @ w
        d[test] = raw[test] / sd
    order = np.where(raw > 0, 1.0, np.where(raw < 0, 0.0, 0.5))
    stderr: dict[str, float] = {}
    ci: dict[str, tuple[float, float]] = {}
    if n_boot and n_boot > 1:
        idx = np.random.default_rng(seed + 1).integers(0, n_pairs, size=(int(n_boot), n_pairs))
        for name, per_pair in (("paired_shift", d), ("pair_order_acc", order)):
            stderr[name], ci[name] = _spread(per_pair[idx].mean(axis=1), ci_level)
    return PairShiftResult(
        shift=float(d.mean()), order_accuracy=float(order.mean()), per_pair_shift=d,
        stderr=stderr, ci=ci, n_pairs=int(n_pairs), n_splits=splits,
    )


def preference_rate(neutral_scores: np.ndarray, toxic_scores: np.ndarray) -> float:
    """Fraction of pairs whose neutral member scores higher than its toxic member (ties count ½)."""
    a = np.asarray(neutral_scores, dtype=np.float64)
    b = np.asarray(toxic_scores, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1 or a.size == 0:
        raise SeparationInputError("preference needs two equally long, non-empty 1-D score arrays (one per pair).")
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise SeparationInputError("log-likelihoods hold NaN or inf; check the model's dtype (fp16 overflow).")
    return float(np.mean(np.where(a > b, 1.0, np.where(a < b, 0.0, 0.5))))


# --------------------------------------------------------------------------- two models, same texts


@dataclass
class PairedDifference:
    """Bootstrap of ``metric(B) - metric(A)`` for two models that saw the same texts.

    ``values_a`` / ``values_b`` are the point estimates (as :func:`separation_metrics` computes
    them with the same settings), ``difference`` their difference, ``stderr`` the standard
    deviation of the replicate differences, ``stderr_a`` / ``stderr_b`` the spread of each model's
    own replicates, and ``ci`` the percentile interval of the replicate differences.
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
) -> PairedDifference:
    """Separation metrics of two models on the same texts and a paired bootstrap of their difference.

    Row i of ``X_a`` and of ``X_b`` must be the same text (label ``y[i]``); the dimensions may
    differ. Each model is measured as :func:`separation_metrics` measures it (PCA-``k`` fitted on
    its own states, the probe cross-validated with the same folds), and every bootstrap replicate
    draws *one* resample of texts that both models are scored on, so the spread of the difference
    accounts for the texts the two share. With the settings and ``seed`` of a run the point values
    and each model's replicate spread equal what :func:`separation_metrics` reported for it
    (the resamples come from ``seed + 1``, as there).
    """
    X_a, y = validate_states(X_a, y, min_per_class=2, what="states of model A", keep_float32=True)
    X_b, _ = validate_states(X_b, y, min_per_class=2, what="states of model B", keep_float32=True)
    if n_boot < 2:
        raise SeparationInputError(f"a paired bootstrap needs at least 2 replicates; got n_boot={n_boot}.")
    for X in (X_a, X_b):
        _check_k(X.shape[0], X.shape[1], k)
    kwargs = dict(
        k=k, seed=seed, groups=groups, ridge=ridge, probe=probe, probe_folds=probe_folds,
        silhouette_max_n=silhouette_max_n, n_boot=int(n_boot), timer=_StageTimer(),
    )
    a = _measure(X_a, y, **kwargs)
    b = _measure(X_b, y, **kwargs)
    values_a, values_b = a.values, b.values
    difference, stderr, stderr_a, stderr_b, ci = {}, {}, {}, {}, {}
    for name in values_a:
        difference[name] = values_b[name] - values_a[name]
        ra, rb = a.replicates[name], b.replicates[name]
        ok = np.isfinite(ra) & np.isfinite(rb)
        stderr[name], ci[name] = _spread(rb[ok] - ra[ok], ci_level)
        stderr_a[name], _ = _spread(ra, ci_level)
        stderr_b[name], _ = _spread(rb, ci_level)
    return PairedDifference(
        values_a=values_a, values_b=values_b, difference=difference, stderr=stderr,
        stderr_a=stderr_a, stderr_b=stderr_b, ci=ci, ci_level=ci_level, n_boot=int(n_boot),
    )


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
        stderr[name], ci[name] = _spread(rb - ra, ci_level)
        stderr_a[name], _ = _spread(ra, ci_level)
        stderr_b[name], _ = _spread(rb, ci_level)
    return PairedDifference(
        values_a=values_a, values_b=values_b, difference=difference, stderr=stderr,
        stderr_a=stderr_a, stderr_b=stderr_b, ci=ci, ci_level=ci_level, n_boot=int(n_boot),
    )
