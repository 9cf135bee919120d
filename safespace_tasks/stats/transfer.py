r"""Cross-lingual transfer of the toxic-vs-non-toxic direction.

Pure functions: numpy and scikit-learn only (no torch, no lm-eval). The question: does the
direction along which one language's toxic and non-toxic texts separate (the *source*) also
separate another language's texts (the *target*)?

For a source language with states :math:`X_s` (n_s x d) and labels :math:`y_s`, two directions:

* the **mean difference** :math:`\hat d_s = \hat\mu_{s,1} - \hat\mu_{s,0}` (toxic mean minus
  non-toxic mean); a target text scores :math:`x^\top \hat d_s`;
* the **logistic probe**: the same model as :func:`safespace_tasks.stats.probe.probe_auroc` (standardise
  each feature, then L2-regularised logistic regression with the same ``C`` and ``max_iter``),
  fitted on **all** source texts. The standardisation is part of the probe: the target is scaled
  with the *source's* means and deviations, so the probe is one fixed linear function
  :math:`f(x) = w^\top x + b` with :math:`w_j = \beta_j / s_j`, :math:`b = \beta_0 - \sum_j \beta_j m_j / s_j`
  (m, s the source's feature means and deviations, :math:`\beta` the fitted coefficients).

Per target the report holds (each with a bootstrap interval):

``transfer_auroc``
    AUROC of the source probe's scores on the target's texts and labels.
``direction_auroc``
    AUROC of the mean-difference scores :math:`x^\top \hat d_s` on the target.
``own_auroc``
    the target's own cross-validated probe AUROC (:func:`~safespace_tasks.stats.probe.probe_auroc`).
``ratio``
    ``transfer_auroc / own_auroc``; 1 means the source direction separates the target as well as
    the target's own probe does. Because chance is 0.5, not 0, a probe that transfers nothing still
    gets a ratio near 0.5 / own; ``ratio_above_chance`` = (transfer - 0.5) / (own - 0.5) puts chance at
    0 (undefined, NaN, when own <= 0.5).
``cosine``
    :math:`\cos(\hat d_s, \hat d_t)` between the two languages' mean-difference directions.

Population values for planted data (used by the tests): if in the target both classes are Gaussian
with the shared covariance :math:`\sigma^2 I` and means :math:`\pm\mu_t/2`, a fixed direction
:math:`w` scores a toxic and a non-toxic text with the difference
:math:`w^\top(x_1 - x_0) \sim N(w^\top\mu_t,\ 2\sigma^2\lVert w\rVert^2)`, so

.. math::
    \mathrm{AUROC}(w) = \Phi\!\left(\frac{w^\top \mu_t}{\sigma \lVert w\rVert \sqrt 2}\right),

and with the source's population direction :math:`w = \mu_s`,
:math:`\Phi(\langle\mu_s,\mu_t\rangle / (\lVert\mu_s\rVert\sigma\sqrt2))`; the population cosine is
:math:`\cos(\mu_s, \mu_t)`.

Intervals (percentile bootstrap, ``n_boot`` replicates, stratified by class; with ``groups``, texts
of a group are drawn together, as in :func:`~safespace_tasks.stats.resampling.stratified_bootstrap_weights`):

* the three AUROCs and the ratios resample the **target's** texts, with the source's probe and
  direction held fixed (fitted once on all source texts): they measure how precisely the target's
  sample pins down the AUROC of that fitted direction. The own AUROC reweights the target probe's
  out-of-fold scores (folds are not refitted), as :func:`~safespace_tasks.stats.separation.separation_metrics`
  does; the four replicates of a target share one set of resamples, so the ratio's interval is paired.
* the cosine has **no interval** (stderr and interval NaN; the task reports no stderr for it). The
  cosine of two estimated mean differences is biased toward 0: each squared norm carries
  ``tr(S_w) (1/n_1 + 1/n_0)`` of noise beside ``||mu||^2`` (S_w the within-class covariance), so
  ``E cos`` is about ``cos(mu_s, mu_t) / sqrt((1 + r_s)(1 + r_t))`` with
  ``r = tr(S_w)(1/n_1 + 1/n_0) / ||mu||^2``. A bootstrap of it repeats the attenuation: on planted
  Gaussians (d = 64, 150 texts per class, population cosine 0.60, mean estimate 0.36) its
  percentile interval covered 0.00 and the basic one 0.66 (at 600 per class 0.11 and 0.90); with
  d = 4 both were fine. An interval that looks precise around a biased value would mislead, so
  none is given; compare cosines only between languages with equal numbers of texts and similar
  within-class spread, and lean on the AUROCs. (The replicates are still computed and kept in
  ``TransferResult.replicates["cosine"]``.)

A target's resamples depend only on its labels, groups, ``n_boot``, ``seed`` and its name (not on the
source or the layer), so every source and layer, and two models measured on the same texts, are
scored on the same resamples. Replicates that give no number (a zero-norm direction, own AUROC
<= 0.5 for ``ratio_above_chance``) are counted in ``degenerate``, not hidden.

Source == target (the diagonal of a matrix): the source's probe would be scored on the texts it was
fitted on, which flatters it, so the diagonal's ``transfer_auroc`` is the own cross-validated AUROC,
its ``direction_auroc`` a cross-fitted mean difference (fitted on the training folds of the own
probe's folds, scored on the held-out fold), its ratios 1 and its cosine 1.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

from safespace_tasks.stats.probe import make_probe, probe_auroc
from safespace_tasks.stats.resampling import stratified_bootstrap_weights, weighted_auroc
from safespace_tasks.stats.validation import SeparationInputError, validate_states

__all__ = [
    "QUANTITIES",
    "Estimate",
    "LinearScore",
    "TransferResult",
    "TransferMatrix",
    "mean_difference",
    "fit_source_probe",
    "cosine",
    "transfer_pair",
    "transfer_matrix",
    "language_seed",
    "paired_gain",
    "paired_gain_dict",
]

QUANTITIES = ("transfer_auroc", "direction_auroc", "own_auroc", "ratio", "ratio_above_chance", "cosine")


@dataclass(frozen=True)
class Estimate:
    """A point value with its bootstrap spread: ``ci`` is the percentile interval of the finite
    replicates at the run's ``ci_level``, ``stderr`` their standard deviation, ``degenerate`` the
    number of replicates that gave no number (NaN)."""

    value: float
    ci: tuple[float, float]
    stderr: float
    degenerate: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {"value": self.value, "ci": list(self.ci), "stderr": self.stderr, "degenerate": self.degenerate}


def _estimate(value: float, replicates: np.ndarray | None, ci_level: float) -> Estimate:
    if replicates is None or replicates.size == 0:
        return Estimate(float(value), (float("nan"), float("nan")), float("nan"), 0)
    finite = replicates[np.isfinite(replicates)]
    degenerate = int(replicates.size - finite.size)
    if finite.size < 2:
        return Estimate(float(value), (float("nan"), float("nan")), float("nan"), degenerate)
    alpha = (1.0 - ci_level) / 2.0
    lo, hi = np.quantile(finite, [alpha, 1.0 - alpha])
    return Estimate(float(value), (float(lo), float(hi)), float(np.std(finite, ddof=1)), degenerate)


@dataclass(frozen=True)
class LinearScore:
    """A fixed linear scoring function :math:`f(x) = w^\\top x + b` in the states' own coordinates."""

    w: np.ndarray
    b: float = 0.0
    not_converged: bool = False

    def __call__(self, X: np.ndarray) -> np.ndarray:
        return np.asarray(X, dtype=np.float64) @ self.w + self.b


def mean_difference(X: np.ndarray, y: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
    r"""Toxic mean minus non-toxic mean, :math:`\hat\mu_1 - \hat\mu_0` (d,).

    With ``weights`` (n x B replicate weights) it returns the B weighted mean differences (B x d),
    :math:`\sum_{i: y_i=1} W_{ib} x_i / \sum_{i: y_i=1} W_{ib} - (\text{same for } y_i = 0)`.
    """
    X = np.asarray(X)
    y = np.asarray(y)
    if weights is None:
        return X[y == 1].mean(axis=0, dtype=np.float64) - X[y == 0].mean(axis=0, dtype=np.float64)
    out = []
    for c in (1, 0):
        Wc = np.asarray(weights, dtype=np.float64)[y == c]
        with np.errstate(invalid="ignore", divide="ignore"):
            out.append((Wc.T @ X[y == c].astype(np.float64)) / Wc.sum(axis=0)[:, None])
    return out[0] - out[1]


def fit_source_probe(X: np.ndarray, y: np.ndarray, *, C: float = 1.0, max_iter: int = 1000) -> LinearScore:
    """The probe of :func:`~safespace_tasks.stats.probe.probe_auroc` (standardise, then logistic
    regression; float32, as the states are captured) fitted on all of ``(X, y)``, folded into one
    linear function of the raw states (see the module docstring for the formula)."""
    X32 = np.asarray(X).astype(np.float32, copy=False)
    model = make_probe(C=C, max_iter=max_iter)
    model.fit(X32, y)
    scaler, logit = model[0], model[-1]
    beta = logit.coef_[0].astype(np.float64)
    scale = scaler.scale_.astype(np.float64)
    w = beta / scale
    b = float(logit.intercept_[0] - np.sum(beta * scaler.mean_.astype(np.float64) / scale))
    return LinearScore(w=w, b=b, not_converged=bool(logit.n_iter_.max() >= max_iter))


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray | float:
    r""":math:`\langle a, b\rangle / (\lVert a\rVert \lVert b\rVert)`, row by row for 2-D input; NaN
    where a norm is zero."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    num = np.sum(a * b, axis=-1)
    den = np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)
    return float(out) if out.ndim == 0 else out


def language_seed(seed: int, language: str) -> int:
    """The seed of a language's resamples: ``seed`` plus a stable hash of its name (CRC-32)."""
    return int((int(seed) + zlib.crc32(language.encode("utf-8"))) % (2**32))


def _validate_groups(groups: Any, n: int, what: str) -> np.ndarray | None:
    if groups is None:
        return None
    groups = np.asarray(groups)
    if groups.ndim != 1 or groups.shape[0] != n:
        raise SeparationInputError(f"groups of {what} must hold one id per text ({n}); got shape {groups.shape}.")
    return groups


def _folds(y: np.ndarray, groups: np.ndarray | None, n_splits: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    counts = np.bincount(y, minlength=2)
    splits = int(min(n_splits, counts.min()))
    if groups is not None:
        splits = int(min(splits, np.unique(groups).size))
        cv = StratifiedGroupKFold(n_splits=splits, shuffle=True, random_state=seed)
        return list(cv.split(np.zeros(y.size), y, groups))
    cv = StratifiedKFold(n_splits=splits, shuffle=True, random_state=seed)
    return list(cv.split(np.zeros(y.size), y))


# --------------------------------------------------------------------------- per-language fits


@dataclass
class _Source:
    name: str
    X: np.ndarray
    y: np.ndarray
    probe: LinearScore
    direction: np.ndarray
    direction_reps: np.ndarray | None  # B x d


@dataclass
class _Target:
    name: str
    X: np.ndarray
    y: np.ndarray
    groups: np.ndarray | None
    W: np.ndarray | None  # n x B
    own: float
    own_reps: np.ndarray | None
    own_oof: np.ndarray
    own_not_converged: int
    own_folds: list
    direction: np.ndarray
    direction_reps: np.ndarray | None


def _prepare(X, y, groups, name: str, what: str):
    X, y = validate_states(X, y, min_per_class=2, what=f"{what} states of {name!r}", keep_float32=True)
    return X, y, _validate_groups(groups, X.shape[0], f"{name!r}")


def _fit_source(name, X, y, groups, *, n_boot, seed, C, max_iter) -> _Source:
    X, y, groups = _prepare(X, y, groups, name, "source")
    reps = None
    if n_boot > 1:
        Ws = stratified_bootstrap_weights(y, n_boot, language_seed(seed, name), groups=groups)
        reps = mean_difference(X, y, Ws)
    return _Source(name, X, y, fit_source_probe(X, y, C=C, max_iter=max_iter), mean_difference(X, y), reps)


def _fit_target(name, X, y, groups, *, n_boot, seed, C, max_iter, n_splits) -> _Target:
    X, y, groups = _prepare(X, y, groups, name, "target")
    own = probe_auroc(X, y, groups=groups, n_splits=n_splits, C=C, max_iter=max_iter, seed=seed)
    W = own_reps = d_reps = None
    if n_boot > 1:
        W = stratified_bootstrap_weights(y, n_boot, language_seed(seed, name), groups=groups)
        own_reps = weighted_auroc(own.oof_scores, y, W)
        d_reps = mean_difference(X, y, W)
    return _Target(
        name, X, y, groups, W, own.auroc, own_reps, own.oof_scores, own.not_converged,
        _folds(y, groups, n_splits, seed), mean_difference(X, y), d_reps,
    )


# --------------------------------------------------------------------------- results


@dataclass(frozen=True)
class TransferResult:
    """Transfer from one source language to one target language at one layer.

    ``estimates`` maps each name of :data:`QUANTITIES` to its :class:`Estimate`. ``diagonal`` is True
    when source and target are the same language (see the module docstring).
    """

    source: str
    target: str
    layer: int | None
    estimates: dict[str, Estimate]
    n_source: int
    n_target: int
    diagonal: bool
    diagnostics: dict[str, Any] = field(default_factory=dict)
    replicates: dict[str, np.ndarray] = field(default_factory=dict, repr=False, compare=False)

    def __getitem__(self, quantity: str) -> Estimate:
        return self.estimates[quantity]

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "layer": self.layer, "source": self.source, "target": self.target, "diagonal": self.diagonal,
            "n_source": self.n_source, "n_target": self.n_target,
        }
        out.update({q: e.to_dict() for q, e in self.estimates.items()})
        out["diagnostics"] = dict(self.diagnostics)
        return out


def _pair(src: _Source, tgt: _Target, layer: int | None, ci_level: float) -> TransferResult:
    diag = src.name == tgt.name
    ones = None if tgt.W is None else np.ones(tgt.W.shape[1])
    if diag:
        transfer, transfer_reps = tgt.own, tgt.own_reps
        oof = np.full(tgt.y.size, np.nan)
        for train, test in tgt.own_folds:
            oof[test] = tgt.X[test].astype(np.float64) @ mean_difference(tgt.X[train], tgt.y[train])
        direction = float(roc_auc_score(tgt.y, oof))
        direction_reps = None if tgt.W is None else weighted_auroc(oof, tgt.y, tgt.W)
        cos, cos_reps = 1.0, ones
    else:
        scores = src.probe(tgt.X)
        transfer = float(roc_auc_score(tgt.y, scores))
        transfer_reps = None if tgt.W is None else weighted_auroc(scores, tgt.y, tgt.W)
        d_scores = tgt.X.astype(np.float64) @ src.direction
        direction = float(roc_auc_score(tgt.y, d_scores))
        direction_reps = None if tgt.W is None else weighted_auroc(d_scores, tgt.y, tgt.W)
        cos = cosine(src.direction, tgt.direction)
        cos_reps = None
        if src.direction_reps is not None and tgt.direction_reps is not None:
            cos_reps = cosine(src.direction_reps, tgt.direction_reps)

    def ratios(t, o):
        with np.errstate(invalid="ignore", divide="ignore"):
            r = np.asarray(t, dtype=np.float64) / np.asarray(o, dtype=np.float64)
            above = np.where(np.asarray(o) > 0.5, (np.asarray(t) - 0.5) / (np.asarray(o) - 0.5), np.nan)
        return r, above

    ratio, above = ratios(transfer, tgt.own)
    ratio_reps = above_reps = None
    if tgt.own_reps is not None:
        ratio_reps, above_reps = ratios(transfer_reps, tgt.own_reps)
    if diag:
        ratio = np.float64(1.0)
        above = np.float64(1.0) if tgt.own > 0.5 else np.float64(np.nan)
        ratio_reps = ones
        above_reps = None if ones is None else (ones if tgt.own > 0.5 else np.full_like(ones, np.nan))
    est = {
        "transfer_auroc": _estimate(transfer, transfer_reps, ci_level),
        "direction_auroc": _estimate(direction, direction_reps, ci_level),
        "own_auroc": _estimate(tgt.own, tgt.own_reps, ci_level),
        "ratio": _estimate(float(ratio), ratio_reps, ci_level),
        "ratio_above_chance": _estimate(float(above), above_reps, ci_level),
        # no interval: the plug-in cosine is attenuated toward 0 and a bootstrap repeats it (module docstring)
        "cosine": _estimate(float(cos), None, ci_level),
    }
    diagnostics = {
        "source_probe_not_converged": bool(src.probe.not_converged),
        "own_probe_not_converged_folds": int(tgt.own_not_converged),
        "own_probe_folds": len(tgt.own_folds),
        "grouped": tgt.groups is not None,
    }
    diagnostics["n_boot"] = 0 if tgt.W is None else int(tgt.W.shape[1])
    reps = {"transfer_auroc": transfer_reps, "direction_auroc": direction_reps, "own_auroc": tgt.own_reps,
            "ratio": ratio_reps, "ratio_above_chance": above_reps, "cosine": cos_reps}
    reps = {k: np.asarray(v, dtype=np.float64) for k, v in reps.items() if v is not None}
    return TransferResult(src.name, tgt.name, layer, est, int(src.y.size), int(tgt.y.size), diag, diagnostics, reps)


def transfer_pair(
    X_source: np.ndarray,
    y_source: np.ndarray,
    X_target: np.ndarray,
    y_target: np.ndarray,
    *,
    groups_source: np.ndarray | None = None,
    groups_target: np.ndarray | None = None,
    source: str = "source",
    target: str = "target",
    layer: int | None = None,
    n_boot: int = 1000,
    ci_level: float = 0.95,
    seed: int = 0,
    C: float = 1.0,
    max_iter: int = 1000,
    n_splits: int = 5,
) -> TransferResult:
    """Transfer of the source's probe and mean-difference direction to one target (module docstring).

    ``source`` and ``target`` name the languages (they seed the resamples; equal names make the pair
    a diagonal cell). ``n_boot`` <= 1 skips the bootstrap (intervals NaN).
    """
    if not 0.0 < ci_level < 1.0:
        raise SeparationInputError(f"ci_level must lie strictly between 0 and 1; got {ci_level!r}.")
    _check_dims(np.asarray(X_source), np.asarray(X_target), source, target)
    src = _fit_source(source, X_source, y_source, groups_source, n_boot=n_boot, seed=seed, C=C, max_iter=max_iter)
    tgt = _fit_target(target, X_target, y_target, groups_target, n_boot=n_boot, seed=seed, C=C,
                      max_iter=max_iter, n_splits=n_splits)
    return _pair(src, tgt, layer, ci_level)


def _check_dims(Xs: np.ndarray, Xt: np.ndarray, source: str, target: str) -> None:
    if Xs.ndim == 2 and Xt.ndim == 2 and Xs.shape[1] != Xt.shape[1]:
        raise SeparationInputError(
            f"source {source!r} has {Xs.shape[1]}-dimensional states and target {target!r} {Xt.shape[1]}-dimensional "
            "ones; transfer needs states of one model and one layer."
        )


# --------------------------------------------------------------------------- matrix


@dataclass
class TransferMatrix:
    """Every (layer, source, target) cell of a transfer run.

    :meth:`to_dict` gives the plain form the report modules read (``safespace_tasks.report.transfer``)::

        {"kind": "safespace_transfer", "version": 1, "ci_level": 0.95, "n_boot": 1000, "seed": 0,
         "layers": [..], "sources": [..], "targets": [..], "quantities": [..],
         "cells": [{"layer": 30, "source": "en", "target": "de", "diagonal": false,
                    "n_source": 1000, "n_target": 1000,
                    "transfer_auroc": {"value": .., "ci": [lo, hi], "stderr": .., "degenerate": 0},
                    ... one such entry per quantity ..., "diagnostics": {..}}, ...]}

    ``layers`` is ``[null]`` when the states carried no layer index.
    """

    layers: list[int | None]
    sources: list[str]
    targets: list[str]
    cells: dict[tuple[int | None, str, str], TransferResult]
    ci_level: float
    n_boot: int
    seed: int

    def cell(self, source: str, target: str, layer: int | None = None) -> TransferResult:
        if layer is None and len(self.layers) == 1:
            layer = self.layers[0]
        return self.cells[(layer, source, target)]

    def array(self, quantity: str = "transfer_auroc", layer: int | None = None, part: str = "value") -> np.ndarray:
        """sources x targets array of one quantity at one layer; ``part`` is 'value', 'lo' or 'hi'."""
        if quantity not in QUANTITIES:
            raise KeyError(f"unknown quantity {quantity!r}; choose one of {QUANTITIES}.")
        out = np.full((len(self.sources), len(self.targets)), np.nan)
        for i, s in enumerate(self.sources):
            for j, t in enumerate(self.targets):
                e = self.cell(s, t, layer)[quantity]
                out[i, j] = {"value": e.value, "lo": e.ci[0], "hi": e.ci[1]}[part]
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": "safespace_transfer", "version": 1, "ci_level": self.ci_level, "n_boot": self.n_boot,
            "seed": self.seed, "layers": list(self.layers), "sources": list(self.sources),
            "targets": list(self.targets), "quantities": list(QUANTITIES),
            "cells": [r.to_dict() for r in self.cells.values()],
        }


def _as_layered(states: Mapping[str, Any], layers: Sequence[int] | None) -> tuple[list[int | None], dict[str, list]]:
    ndims = {np.asarray(v).ndim for v in states.values()}
    if ndims == {2}:
        if layers is not None and len(layers) != 1:
            raise SeparationInputError(
                f"states are 2-D (texts x hidden: one layer) but layers names {len(layers)} layers; "
                "pass texts x layers x hidden arrays for a sweep, or one layer."
            )
        lay = [None if layers is None else int(layers[0])]
        return lay, {k: [np.asarray(v)] for k, v in states.items()}
    if ndims == {3}:
        shapes = {k: np.asarray(v).shape for k, v in states.items()}
        n_lay = {s[1] for s in shapes.values()}
        if len(n_lay) != 1:
            raise SeparationInputError(f"languages hold different numbers of layers: {shapes}; capture one layer set.")
        if layers is None or len(layers) != n_lay.pop():
            raise SeparationInputError(
                "states are texts x layers x hidden: pass layers= naming the hidden-state index of each slice along "
                f"axis 1 (got {None if layers is None else list(layers)} for shapes {shapes})."
            )
        if len(set(layers)) != len(layers):
            raise SeparationInputError(f"layers {list(layers)} name a layer twice.")
        return [int(x) for x in layers], {k: [np.asarray(v)[:, j, :] for j in range(len(layers))] for k, v in states.items()}
    raise SeparationInputError(
        f"states must be texts x hidden (one layer) or texts x layers x hidden, the same for every language; "
        f"got dimensions {sorted(ndims)}."
    )


def transfer_matrix(
    states: Mapping[str, Any],
    labels: Mapping[str, Any],
    *,
    sources: Sequence[str] = ("en",),
    targets: Sequence[str] | None = None,
    groups: Mapping[str, Any] | None = None,
    layers: Sequence[int] | None = None,
    n_boot: int = 1000,
    ci_level: float = 0.95,
    seed: int = 0,
    C: float = 1.0,
    max_iter: int = 1000,
    n_splits: int = 5,
) -> TransferMatrix:
    """Transfer from each source to each target (the sources included, as the diagonal), per layer.

    ``states[lang]``: n_lang x d (one layer), or n_lang x len(layers) x d with ``layers`` the
    hidden-state index of each slice. ``labels[lang]``: n_lang labels in {0, 1}. ``groups[lang]``
    (optional, per language): ids of texts that must stay together in folds and resamples.
    ``targets`` defaults to every language of ``states`` in its order. Each target's own probe is
    fitted once per layer and shared by all sources.
    """
    if not sources:
        raise SeparationInputError("transfer needs at least one source language (the setting 'sources').")
    if not 0.0 < ci_level < 1.0:
        raise SeparationInputError(f"ci_level must lie strictly between 0 and 1; got {ci_level!r}.")
    targets = list(states) if targets is None else list(targets)
    missing = [lang for lang in [*sources, *targets] if lang not in states or lang not in labels]
    if missing:
        raise SeparationInputError(
            f"languages {sorted(set(missing))} are named as source or target but have no states or labels; "
            f"languages with states: {sorted(states)}."
        )
    groups = groups or {}
    used = list(dict.fromkeys([*sources, *targets]))
    lay, sliced = _as_layered({k: states[k] for k in used}, layers)
    dims = {k: v[0].shape[-1] for k, v in sliced.items()}
    if len(set(dims.values())) != 1:
        raise SeparationInputError(f"languages hold states of different widths {dims}; transfer needs one model.")
    cells: dict[tuple[int | None, str, str], TransferResult] = {}
    for j, layer in enumerate(lay):
        # sources are few and kept; one target (its n x n_boot resample weights) is alive at a time
        fitted_s = [
            _fit_source(s, sliced[s][j], labels[s], groups.get(s), n_boot=n_boot, seed=seed, C=C, max_iter=max_iter)
            for s in sources
        ]
        for t in targets:
            tgt = _fit_target(t, sliced[t][j], labels[t], groups.get(t), n_boot=n_boot, seed=seed, C=C,
                              max_iter=max_iter, n_splits=n_splits)
            for src in fitted_s:
                cells[(layer, src.name, t)] = _pair(src, tgt, layer, ci_level)
    return TransferMatrix(lay, list(sources), targets, cells, ci_level, int(n_boot), int(seed))


# --------------------------------------------------------------------------- two models


GAIN_QUANTITIES = ("transfer_auroc", "direction_auroc", "own_auroc")


def paired_gain(base: TransferResult, aligned: TransferResult, quantity: str = "transfer_auroc",
                ci_level: float = 0.95) -> Estimate:
    r"""``aligned - base`` of one quantity for one cell measured on two models, with a **paired**
    interval: a target's resamples depend only on its labels, groups, ``n_boot``, ``seed`` and name,
    so two runs on the same texts (same order, same settings) score replicate b on the same
    resample, and the interval is the percentile interval of
    :math:`\mathrm{AUC}^{aligned}_b - \mathrm{AUC}^{base}_b`. Each model's source direction is held
    fixed (as in its own intervals). Raises when the cells cannot be paired."""
    if (base.source, base.target, base.layer) != (aligned.source, aligned.target, aligned.layer):
        raise SeparationInputError(
            f"cannot pair cell {(base.source, base.target, base.layer)} with {(aligned.source, aligned.target, aligned.layer)}."
        )
    if base.n_target != aligned.n_target or base.n_source != aligned.n_source:
        raise SeparationInputError(
            f"cell {base.source}->{base.target}: the runs hold different numbers of texts (target {base.n_target} vs "
            f"{aligned.n_target}, source {base.n_source} vs {aligned.n_source}); a paired gain needs the same texts."
        )
    value = aligned[quantity].value - base[quantity].value
    rb, ra = base.replicates.get(quantity), aligned.replicates.get(quantity)
    if rb is None or ra is None or rb.shape != ra.shape:
        return _estimate(value, None, ci_level)
    return _estimate(value, ra - rb, ci_level)


def paired_gain_dict(base: TransferMatrix, aligned: TransferMatrix) -> dict[str, Any]:
    """Paired gains (:func:`paired_gain`) of every cell the two runs share, in the plain form the
    report reads: ``{"kind": "safespace_transfer_gain", "ci_level", "cells": [{"layer", "source",
    "target", "transfer_auroc": {"value", "ci", ...}, "direction_auroc": ..., "own_auroc": ...}]}``."""
    if base.seed != aligned.seed or base.n_boot != aligned.n_boot:
        raise SeparationInputError(
            f"the runs used different seeds or n_boot ({base.seed}/{base.n_boot} vs {aligned.seed}/{aligned.n_boot}): "
            "their resamples differ, so the gain cannot be paired. Rerun with the same settings."
        )
    cells = []
    for key, b in base.cells.items():
        a = aligned.cells.get(key)
        if a is None:
            continue
        entry: dict[str, Any] = {"layer": b.layer, "source": b.source, "target": b.target, "diagonal": b.diagonal}
        entry.update({q: paired_gain(b, a, q, base.ci_level).to_dict() for q in GAIN_QUANTITIES})
        cells.append(entry)
    return {"kind": "safespace_transfer_gain", "ci_level": base.ci_level, "n_boot": base.n_boot, "cells": cells}
