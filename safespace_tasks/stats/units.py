"""Neuron-level safety units: scores, classes and overlaps (pure numpy; no torch, no lm-eval).

The units of a decoder block are its MLP neurons (input channel ``j`` of the MLP output
projection, e.g. Llama's ``mlp.down_proj``) and its attention heads (the head's channels of the
attention output projection's input, e.g. ``self_attn.o_proj``). For a set of scored tokens,

    WIFV_c = Var_t[x_{t,c}] * ||W[:, c]||^2          (FLAP's weighted input-feature variance)

where ``x_{t,c}`` is channel ``c`` of the output projection's input at token ``t`` and ``W[:, c]``
the projection's weights leaving that channel. Scores are standardised per layer and module type
(``z = (s - mean) / std`` over the layer's channels); a head's score is the mean of its channels'
z-scores. With a safety score ``z_S`` and a utility score ``z_U`` per unit, over all units together

    sum = z_S + z_U,   diff = z_S - z_U
    RU  = the units of lowest ``sum`` up to a share of the unit parameters (redundant),
    SCU = of the rest, highest ``diff`` up to its share (safety-critical),
    UCU = of the rest, lowest ``diff`` up to its share (utility-critical),
    CU  = everything else (complex).

Shares count parameters: a unit weighs the parameters that pruning it removes (``UnitLayout``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np

__all__ = [
    "CLASSES",
    "RunningStats",
    "UnitStatistics",
    "UnitLayout",
    "ClassSettings",
    "UnitsError",
    "merge_all",
    "wifv",
    "zscore_per_layer",
    "unit_scores",
    "classify",
    "class_shares",
    "analyse",
    "jaccard",
    "expected_random_jaccard",
    "split_half_overlap",
]

# class codes as stored in mask files
CLASSES = {"CU": 0, "RU": 1, "SCU": 2, "UCU": 3}
SITES = ("mlp", "attn")


class UnitsError(ValueError):
    """Inputs that cannot be scored or classified as asked."""


@dataclass
class RunningStats:
    """Per-channel count, mean and sum of squared deviations (M2), float64, mergeable.

    ``count`` is the number of tokens (shared by every channel); ``mean`` and ``m2`` have any
    shape (one entry per channel). Two sets merge with Chan et al.'s parallel update
    (``delta = mean_b - mean_a``; ``M2 = M2_a + M2_b + delta^2 n_a n_b / n``), so statistics
    merged across batches or processes equal those of one pass, up to float64 rounding.
    """

    count: int
    mean: np.ndarray
    m2: np.ndarray

    @classmethod
    def of(cls, x: np.ndarray) -> "RunningStats":
        """Statistics of ``x`` (tokens x channels...), computed directly in float64."""
        x = np.asarray(x, dtype=np.float64)
        mean = x.mean(axis=0) if len(x) else np.zeros(x.shape[1:])
        return cls(int(len(x)), mean, ((x - mean) ** 2).sum(axis=0))

    @classmethod
    def empty(cls, shape: tuple[int, ...]) -> "RunningStats":
        return cls(0, np.zeros(shape), np.zeros(shape))

    def merge(self, other: "RunningStats") -> "RunningStats":
        if self.mean.shape != other.mean.shape:
            raise UnitsError(f"cannot merge statistics of shapes {self.mean.shape} and {other.mean.shape}.")
        if other.count == 0:
            return RunningStats(self.count, self.mean.copy(), self.m2.copy())
        if self.count == 0:
            return RunningStats(other.count, other.mean.copy(), other.m2.copy())
        n = self.count + other.count
        delta = other.mean - self.mean
        mean = self.mean + delta * (other.count / n)
        m2 = self.m2 + other.m2 + delta**2 * (self.count * other.count / n)
        return RunningStats(n, mean, m2)

    def variance(self, ddof: int = 0) -> np.ndarray:
        if self.count - ddof <= 0:
            raise UnitsError(f"variance needs more than {ddof} tokens; these statistics hold {self.count}.")
        return self.m2 / (self.count - ddof)

    def __repr__(self) -> str:
        return f"RunningStats(count={self.count}, shape={tuple(self.mean.shape)})"


@dataclass
class UnitStatistics:
    """One request's (or a merged set's) statistics per site: ``sites['mlp']`` has shape
    (layers, neurons), ``sites['attn']`` (layers, heads x head_dim). Short repr (log_samples)."""

    sites: dict[str, RunningStats]
    n_docs: int = 1
    n_tokens: int = 0  # tokens the request held in all (selected or not)
    truncated: int = 0

    @property
    def count(self) -> int:
        return next(iter(self.sites.values())).count if self.sites else 0

    def merge(self, other: "UnitStatistics") -> "UnitStatistics":
        if set(self.sites) != set(other.sites):
            raise UnitsError(f"cannot merge statistics of sites {sorted(self.sites)} and {sorted(other.sites)}.")
        return UnitStatistics(
            {k: self.sites[k].merge(other.sites[k]) for k in self.sites},
            self.n_docs + other.n_docs, self.n_tokens + other.n_tokens, self.truncated + other.truncated,
        )

    def __repr__(self) -> str:
        shapes = {k: tuple(v.mean.shape) for k, v in self.sites.items()}
        return f"UnitStatistics(docs={self.n_docs}, scored_tokens={self.count}, sites={shapes})"

    __str__ = __repr__


def merge_all(stats: Sequence[UnitStatistics]) -> UnitStatistics:
    """Merge a sequence of statistics (pairwise tree, so rounding does not grow with the count)."""
    items = list(stats)
    if not items:
        raise UnitsError("no statistics to merge: the set is empty.")
    while len(items) > 1:
        items = [items[i].merge(items[i + 1]) if i + 1 < len(items) else items[i] for i in range(0, len(items), 2)]
    return items[0]


@dataclass
class UnitLayout:
    """Shapes, outgoing weights and parameter weights of a model's units (numbers only).

    ``mlp_out_sq_norm[l, j]`` is ||W_down[:, j]||^2 of layer l, ``attn_out_sq_norm[l, c]`` the same
    for channel c of the attention output projection (``c = h * head_dim + d``).
    ``params_per_neuron`` / ``params_per_head``: parameters a pruned unit removes (the weights of
    its rows and columns; a head's share of grouped k/v rows counts in proportion).
    """

    n_layers: int
    n_neurons: int
    n_heads: int
    head_dim: int
    mlp_out_sq_norm: np.ndarray
    attn_out_sq_norm: np.ndarray
    params_per_neuron: float
    params_per_head: float
    n_kv_heads: int | None = None
    model_class: str = ""

    def __post_init__(self) -> None:
        self.mlp_out_sq_norm = np.asarray(self.mlp_out_sq_norm, dtype=np.float64)
        self.attn_out_sq_norm = np.asarray(self.attn_out_sq_norm, dtype=np.float64)
        if self.mlp_out_sq_norm.shape != (self.n_layers, self.n_neurons):
            raise UnitsError(f"mlp_out_sq_norm has shape {self.mlp_out_sq_norm.shape}; expected ({self.n_layers}, {self.n_neurons}).")
        if self.attn_out_sq_norm.shape != (self.n_layers, self.n_heads * self.head_dim):
            raise UnitsError(
                f"attn_out_sq_norm has shape {self.attn_out_sq_norm.shape}; expected ({self.n_layers}, {self.n_heads * self.head_dim})."
            )

    @property
    def n_units(self) -> int:
        return self.n_layers * (self.n_neurons + self.n_heads)

    def unit_params(self) -> np.ndarray:
        """Parameter weight of every unit in canonical order (see :func:`unit_scores`)."""
        per_layer = np.concatenate([np.full(self.n_neurons, self.params_per_neuron), np.full(self.n_heads, self.params_per_head)])
        return np.tile(per_layer, self.n_layers)

    def unit_index(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(layer, module type 0=mlp 1=attn, index within the layer and type) of every unit."""
        per = self.n_neurons + self.n_heads
        layer = np.repeat(np.arange(self.n_layers), per)
        kind = np.tile(np.r_[np.zeros(self.n_neurons, int), np.ones(self.n_heads, int)], self.n_layers)
        idx = np.tile(np.r_[np.arange(self.n_neurons), np.arange(self.n_heads)], self.n_layers)
        return layer, kind, idx

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in ("n_layers", "n_neurons", "n_heads", "head_dim", "params_per_neuron",
                                              "params_per_head", "n_kv_heads", "model_class")}


@dataclass(frozen=True)
class ClassSettings:
    """Shares of unit parameters per class (the reference script's defaults) and the variance ddof."""

    ru: float = 0.10
    scu: float = 0.01
    ucu: float = 0.10
    ddof: int = 0

    def __post_init__(self) -> None:
        for name in ("ru", "scu", "ucu"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
                raise UnitsError(f"share {name}={value!r} must be a number in [0, 1].")
        total = self.ru + self.scu + self.ucu
        if total > 1 + 1e-12:
            raise UnitsError(
                f"class shares ru={self.ru} + scu={self.scu} + ucu={self.ucu} = {total:.4g} exceed 1 (all unit "
                "parameters); lower them so that the complex units keep the rest."
            )


def wifv(variance: np.ndarray, out_sq_norm: np.ndarray) -> np.ndarray:
    """WIFV = input variance x squared L2 norm of the outgoing weights, elementwise."""
    variance, out_sq_norm = np.asarray(variance, np.float64), np.asarray(out_sq_norm, np.float64)
    if variance.shape != out_sq_norm.shape:
        raise UnitsError(f"variance {variance.shape} and weight norms {out_sq_norm.shape} differ in shape.")
    return variance * out_sq_norm


def zscore_per_layer(scores: np.ndarray) -> np.ndarray:
    """``(s - mean) / std`` along the last axis, per row (population std). A row with no spread
    (every channel equal) has no ranking to offer: it gets zeros."""
    scores = np.asarray(scores, np.float64)
    mean = scores.mean(axis=-1, keepdims=True)
    std = scores.std(axis=-1, keepdims=True)
    out = np.zeros_like(scores)
    np.divide(scores - mean, std, out=out, where=std > 0)
    return out


def unit_scores(stats: UnitStatistics, layout: UnitLayout, ddof: int = 0) -> np.ndarray:
    """Standardised WIFV of every unit in canonical order: per layer, its neurons then its heads."""
    for site in SITES:
        if site not in stats.sites:
            raise UnitsError(f"statistics lack site {site!r} (have {sorted(stats.sites)}); request both 'mlp' and 'attn'.")
    if stats.count == 0:
        raise UnitsError("the statistics hold no scored tokens: no request had a token to score (empty responses?).")
    mlp_var = stats.sites["mlp"].variance(ddof)
    attn_var = stats.sites["attn"].variance(ddof)
    z_mlp = zscore_per_layer(wifv(mlp_var, layout.mlp_out_sq_norm))
    z_attn = zscore_per_layer(wifv(attn_var, layout.attn_out_sq_norm))
    z_head = z_attn.reshape(layout.n_layers, layout.n_heads, layout.head_dim).mean(axis=2)
    return np.concatenate([z_mlp, z_head], axis=1).reshape(-1)


def _take_share(order: np.ndarray, params: np.ndarray, budget: float) -> np.ndarray:
    """The longest prefix of ``order`` whose parameters fit in ``budget`` (never over it)."""
    cum = np.cumsum(params[order])
    n = int(np.searchsorted(cum, budget * (1 + 1e-12), side="right"))
    return order[:n]


def classify(z_safety: np.ndarray, z_utility: np.ndarray, params: np.ndarray, settings: ClassSettings = ClassSettings()) -> np.ndarray:
    """Class code (see ``CLASSES``) of every unit. RU is taken first (lowest sum), then SCU
    (highest diff) and UCU (lowest diff) from the rest; ties break by unit order."""
    z_safety, z_utility, params = (np.asarray(a, np.float64) for a in (z_safety, z_utility, params))
    if not z_safety.shape == z_utility.shape == params.shape or z_safety.ndim != 1:
        raise UnitsError(f"scores and parameter weights must be 1-D of one length; got {z_safety.shape}, {z_utility.shape}, {params.shape}.")
    total = params.sum()
    s, d = z_safety + z_utility, z_safety - z_utility
    labels = np.full(len(params), CLASSES["CU"], dtype=np.uint8)
    idx = np.arange(len(params))
    ru = _take_share(np.lexsort((idx, s)), params, settings.ru * total)
    labels[ru] = CLASSES["RU"]
    rest = np.flatnonzero(labels == CLASSES["CU"])
    scu = _take_share(rest[np.lexsort((rest, -d[rest]))], params, settings.scu * total)
    labels[scu] = CLASSES["SCU"]
    rest = np.flatnonzero(labels == CLASSES["CU"])
    ucu = _take_share(rest[np.lexsort((rest, d[rest]))], params, settings.ucu * total)
    labels[ucu] = CLASSES["UCU"]
    return labels


def class_shares(labels: np.ndarray, params: np.ndarray) -> dict[str, dict[str, float]]:
    """``{class: {"params": share, "units": share}}`` of a label array."""
    total_p, total_u = float(np.sum(params)), len(labels)
    out = {}
    for name, code in CLASSES.items():
        sel = labels == code
        out[name] = {"params": float(params[sel].sum() / total_p) if total_p else math.nan,
                     "units": float(sel.sum() / total_u) if total_u else math.nan}
    return out


def analyse(safety: UnitStatistics, utility: UnitStatistics, layout: UnitLayout,
            settings: ClassSettings = ClassSettings()) -> dict[str, Any]:
    """Headline numbers and per-unit arrays of one model.

    Returns ``shares`` (class -> params/units share), ``per_type`` (module type -> class -> unit
    share), ``per_layer`` (layer -> module type -> class -> unit share), ``profile`` (safety
    specialisation per layer: the mean over the layer's units of log(WIFV_S / WIFV_U); the mean of
    ``diff`` would be 0 in every layer by construction of the per-layer z-scores),
    ``scu_share_per_layer``, ``counts`` (scored tokens and docs per set), and ``arrays``
    (``z_safety``, ``z_utility``, ``log_ratio``, ``labels``, ``params``, ``layer``, ``kind``, ``index``).
    """
    z_s = unit_scores(safety, layout, settings.ddof)
    z_u = unit_scores(utility, layout, settings.ddof)
    params = layout.unit_params()
    labels = classify(z_s, z_u, params, settings)
    layer, kind, index = layout.unit_index()
    diff = z_s - z_u
    kinds = {0: "mlp", 1: "attn"}
    per_type = {name: class_shares(labels[kind == k], params[kind == k]) for k, name in kinds.items()}
    per_layer = [
        {name: {c: v["units"] for c, v in class_shares(labels[(layer == l) & (kind == k)], params[(layer == l) & (kind == k)]).items()}
         for k, name in kinds.items()}
        for l in range(layout.n_layers)
    ]
    # Per-layer z-scores have mean 0 in every layer for both sets, so the mean of diff over a
    # layer's units is 0 by construction: the profile reads magnitudes instead, the mean over a
    # layer's units of log(WIFV_safety / WIFV_utility) (a head: the mean over its channels).
    log_ratio = _log_ratio_units(safety, utility, layout, settings.ddof)
    profile = np.array([_nanmean(log_ratio[layer == l]) for l in range(layout.n_layers)])
    scu_share = np.array([float(np.mean(labels[layer == l] == CLASSES["SCU"])) for l in range(layout.n_layers)])
    return {
        "shares": class_shares(labels, params),
        "per_type": per_type,
        "per_layer": per_layer,
        "profile": profile.tolist(),
        "profile_note": "mean log(WIFV_safety / WIFV_utility) per layer; > 0: the layer's units vary more on safety tokens",
        "profile_undefined_units": int(np.isnan(log_ratio).sum()),
        "scu_share_per_layer": scu_share.tolist(),
        "counts": {"safety_tokens": safety.count, "safety_docs": safety.n_docs,
                   "utility_tokens": utility.count, "utility_docs": utility.n_docs},
        "settings": {"ru": settings.ru, "scu": settings.scu, "ucu": settings.ucu, "ddof": settings.ddof},
        "layout": layout.to_dict(),
        "arrays": {"z_safety": z_s, "z_utility": z_u, "log_ratio": log_ratio, "labels": labels, "params": params,
                   "layer": layer, "kind": kind, "index": index},
    }


def _nanmean(x: np.ndarray) -> float:
    x = x[~np.isnan(x)]
    return float(x.mean()) if x.size else math.nan


def _log_ratio_units(safety: UnitStatistics, utility: UnitStatistics, layout: UnitLayout, ddof: int = 0) -> np.ndarray:
    """log(WIFV_S / WIFV_U) per unit in canonical order (NaN where either score is 0: a dead channel)."""
    out = []
    for site in SITES:
        norms = layout.mlp_out_sq_norm if site == "mlp" else layout.attn_out_sq_norm
        s = wifv(safety.sites[site].variance(ddof), norms)
        u = wifv(utility.sites[site].variance(ddof), norms)
        ok = (s > 0) & (u > 0)
        lr = np.full(s.shape, np.nan)
        lr[ok] = np.log(s[ok] / u[ok])
        if site == "attn":
            lr = lr.reshape(layout.n_layers, layout.n_heads, layout.head_dim)
            with np.errstate(invalid="ignore"):
                cnt = (~np.isnan(lr)).sum(axis=2)
                lr = np.where(cnt > 0, np.nansum(lr, axis=2) / np.maximum(cnt, 1), np.nan)
        out.append(lr)
    return np.concatenate(out, axis=1).reshape(-1)


def jaccard(a: np.ndarray, b: np.ndarray) -> float:
    """|A ∩ B| / |A ∪ B| of two sets of unit ids (NaN when both are empty)."""
    a, b = set(np.asarray(a).tolist()), set(np.asarray(b).tolist())
    union = len(a | b)
    return len(a & b) / union if union else math.nan


def expected_random_jaccard(n: int, a: int, b: int) -> float:
    """Exact E[J] of two independent uniformly random subsets of sizes a and b of n items.

    The overlap k is hypergeometric, P(k) = C(a, k) C(n - a, b - k) / C(n, b), and
    J = k / (a + b - k); the expectation sums over the support max(0, a+b-n) .. min(a, b).
    """
    if not (0 <= a <= n and 0 <= b <= n):
        raise UnitsError(f"set sizes {a}, {b} must lie in [0, {n}].")
    if a == 0 and b == 0:
        return math.nan
    lc = lambda m, r: math.lgamma(m + 1) - math.lgamma(r + 1) - math.lgamma(m - r + 1)  # noqa: E731
    total = 0.0
    for k in range(max(0, a + b - n), min(a, b) + 1):
        p = math.exp(lc(a, k) + lc(n - a, b - k) - lc(n, b))
        total += p * k / (a + b - k)
    return total


def scu_ids(labels: np.ndarray) -> np.ndarray:
    return np.flatnonzero(np.asarray(labels) == CLASSES["SCU"])


def split_half_overlap(safety_docs: Sequence[UnitStatistics], utility: UnitStatistics, layout: UnitLayout,
                       settings: ClassSettings = ClassSettings(), seed: int = 0) -> dict[str, float]:
    """Jaccard of the SCU sets found on two random halves of the safety docs (the utility set
    whole for both, as in the cross-language comparison), beside its random-set expectation."""
    docs = list(safety_docs)
    if len(docs) < 2:
        raise UnitsError(f"split-half overlap needs at least 2 safety docs; got {len(docs)}.")
    order = np.random.default_rng(seed).permutation(len(docs))
    halves = [merge_all([docs[i] for i in part]) for part in (order[: len(docs) // 2], order[len(docs) // 2:])]
    z_u = unit_scores(utility, layout, settings.ddof)
    params = layout.unit_params()
    sets = [scu_ids(classify(unit_scores(h, layout, settings.ddof), z_u, params, settings)) for h in halves]
    return {"jaccard": jaccard(*sets), "expected_random": expected_random_jaccard(layout.n_units, len(sets[0]), len(sets[1])),
            "sizes": [len(s) for s in sets]}


def overlap_matrix(scu_sets: Mapping[str, np.ndarray], n_units: int) -> dict[str, Any]:
    """Language x language Jaccard of SCU sets with the random-set expectation beside each cell."""
    names = list(scu_sets)
    jac = np.array([[jaccard(scu_sets[a], scu_sets[b]) for b in names] for a in names])
    exp = np.array([[expected_random_jaccard(n_units, len(scu_sets[a]), len(scu_sets[b])) for b in names] for a in names])
    return {"languages": names, "jaccard": jac.tolist(), "expected_random": exp.tolist()}


__all__ += ["scu_ids", "overlap_matrix", "SITES"]
