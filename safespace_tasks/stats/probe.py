"""The linear probe: one constructor, its cross-validated AUROC, refits and null, and its table kernel.

The probe is an L2-regularised logistic regression on standardised states
(:func:`make_probe`); every place that fits one (the cross-validated AUROC here, its bootstrap
refits and permutation null, the source probe of :mod:`safespace_tasks.stats.transfer`) builds it
with :func:`make_probe`. :data:`PROBE_AUROC` is the cross-fitted kernel the metric table's
``probe_auroc`` row carries. numpy and scikit-learn only.
"""

from __future__ import annotations

import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler
from threadpoolctl import ThreadpoolController, threadpool_limits

from safespace_tasks.stats.cv_interval import METHOD as CV_METHOD
from safespace_tasks.stats.cv_interval import cv_auroc_interval, fold_aurocs
from safespace_tasks.stats.kernels import Kernel
from safespace_tasks.stats.resampling import weighted_auroc
from safespace_tasks.stats.validation import SeparationInputError, validate_states

__all__ = [
    "ProbeResult",
    "make_probe",
    "probe_auroc",
    "probe_refit_replicates",
    "probe_null_replicates",
    "PROBE_AUROC",
    "REFIT_TOL",
    "CV_METHOD",
]


def make_probe(*, C: float = 1.0, max_iter: int = 1000, **logit_options: Any) -> Pipeline:
    """The probe: standardise the features, then an L2-regularised logistic regression.

    Parameters
    ----------
    C : float, default=1.0
        Inverse regularisation strength of the logistic regression.
    max_iter : int, default=1000
        Iteration cap of the L-BFGS solver.
    **logit_options
        Further options of :class:`sklearn.linear_model.LogisticRegression` (the refits use
        ``warm_start`` and a looser ``tol``).

    Returns
    -------
    probe : sklearn.pipeline.Pipeline
        ``StandardScaler() -> LogisticRegression(C=C, max_iter=max_iter, **logit_options)``;
        ``probe[0]`` is the scaler, ``probe[-1]`` the logistic regression.
    """
    return make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=max_iter, **logit_options))


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
    """Cross-validated AUROC of a linear probe (:func:`make_probe`) on the full states.

    Features are standardised inside each training fold. Folds are stratified by label; with
    ``groups`` they are also grouped, so members of one group never sit in train and test at once.
    The AUROC is computed on the pooled out-of-fold decision scores. The folds are fitted in
    float32, the precision the states are captured in (L-BFGS's cost is one pass over the training
    states per iteration, so this halves the probe's time and memory on large sets; the AUROC moves
    by less than the solver's own tolerance does, about 1e-4 on 10,000 x 2,048 states).

    Parameters
    ----------
    X : ndarray of shape (n_texts, n_features)
        Pooled hidden states.
    y : ndarray of shape (n_texts,)
        Labels 0/1, at least 2 texts of each class.
    groups : ndarray of shape (n_texts,), optional
        Group ids (e.g. the pair id of a toxic sentence and its rewrite, copies of one text).
    n_splits : int, default=5
        Folds; capped by the smaller class size and the number of groups.
    C : float, default=1.0
        Inverse regularisation strength.
    max_iter : int, default=1000
        Iteration cap; folds that hit it are counted in ``not_converged``.
    seed : int, default=0
        Seed of the fold assignment.

    Returns
    -------
    result : ProbeResult
        The AUROC, the out-of-fold scores, the folds and their fitted probes.

    Raises
    ------
    SeparationInputError
        When the folds cannot hold both classes (too few texts or groups).

    References
    ----------
    .. [1] Alain, G. & Bengio, Y. (2017). Understanding intermediate layers using linear classifier
       probes. *ICLR workshop*.
    .. [2] Hanley, J. A. & McNeil, B. J. (1982). The meaning and use of the area under a receiver
       operating characteristic (ROC) curve. *Radiology*, 143(1), 29-36.
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
        model = make_probe(C=C, max_iter=max_iter)
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
            lr = make_probe(C=C, max_iter=max_iter, warm_start=True, tol=REFIT_TOL)[-1]
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
                model = make_probe(C=C, max_iter=max_iter)
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



# --------------------------------------------------------------------------- spread of a cross-fitted metric


def cv_spread(
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


def refit_scale(fixed: np.ndarray, refit: np.ndarray | None) -> tuple[float, dict[str, Any]]:
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



# --------------------------------------------------------------------------- the table's kernel (cross-fitted)


def _point(X: np.ndarray, y: np.ndarray, ctx: dict) -> float:
    fit = probe_auroc(X, y, groups=ctx.get("groups"), n_splits=ctx.get("probe_folds", 5), seed=ctx.get("seed", 0))
    ctx["fit"] = fit
    ctx["diagnostics"].update(probe_folds=fit.n_splits, probe_grouped=fit.grouped, probe_not_converged=fit.not_converged)
    return fit.auroc


def _resampled(X: np.ndarray, y: np.ndarray, W: np.ndarray, ctx: dict) -> np.ndarray:
    """Fixed-score bootstrap: the weighted AUROC of the out-of-fold scores."""
    return weighted_auroc(ctx["fit"].oof_scores, y, W)


def _refit(X: np.ndarray, y: np.ndarray, W: np.ndarray, ctx: dict) -> np.ndarray | None:
    r = int(ctx.get("probe_refits", 0))
    if r <= 1:
        return None
    return probe_refit_replicates(X, y, ctx["fit"], W[:, : min(r, W.shape[1])])


def _labelled(X: np.ndarray, Y: np.ndarray, ctx: dict) -> np.ndarray | None:
    p = int(ctx.get("probe_permutations", 0))
    if p <= 0:
        return None
    return probe_null_replicates(X, ctx["y"], ctx["fit"], Y[:, : min(p, Y.shape[1])])


def _per_fold(ctx: dict) -> np.ndarray:
    fit = ctx["fit"]
    return fold_aurocs(fit.oof_scores, ctx["y"], fit.folds)


def _check(per_class: tuple[int, int], k: int) -> str | None:
    if min(per_class) >= 2:
        return None
    return (f"a class collapses to {min(per_class)} distinct state: the probe would be scored on copies of its "
            "own training texts")


PROBE_AUROC = Kernel(
    point=_point, resampled=_resampled, labelled=_labelled, refit=_refit, per_fold=_per_fold, check=_check,
    stage="probe", cross_fitted=True, raises=True,
)
