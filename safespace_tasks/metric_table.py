"""The one table of metrics: every metric a safespace task reports, in report order.

Each row says what the tasks (direction for lm-eval, how the task aggregates the per-doc values),
the config generator (which families report it, whether the family row averages it) and the report
(title, unit, note, order) need to know. Adding a metric = its function + one row here.

Pure data: no lm-eval, no torch. A name that is not in the table is an error
(:func:`spec`), never silently lower-is-better.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "MetricSpec", "METRICS", "UnknownMetricError", "spec", "base_name", "higher_is_better",
    "family_metrics", "family_mean_metrics", "is_count", "SEPARATION_METRICS", "PAIR_METRICS",
    "SCORER_QUALITY_METRICS", "FAMILIES",
]

# How a task turns its per-doc values into the language's number:
CORPUS = "corpus"  # the family's compute hook, over all docs of the language at once (bootstrap stderr)
MEAN = "mean"      # lm-eval's own mean of one number per doc (lm-eval's mean stderr)


@dataclass(frozen=True)
class MetricSpec:
    """One metric: its name, direction, presentation and aggregation.

    higher_is_better: the direction lm-eval prints and the report uses.
    families: the task families that report it (folder names under ``task_configs/``).
    family_mean: the family row (the lm-eval group) averages it over the languages (unweighted).
    per_layer: reported once per requested layer (``<name>_layer<i>`` beyond the first).
    aggregation: :data:`CORPUS` or :data:`MEAN` (see above).
    """

    name: str
    higher_is_better: bool
    title: str
    unit: str
    families: tuple[str, ...]
    note: str | None = None
    family_mean: bool = True
    per_layer: bool = False
    aggregation: str = CORPUS


_SEP = ("toxicity", "paradetox")
_GEN = ("continuation", "detox")
_SCORER_NOTE = "the toxicity scorer's {what} in the task's language"
# separation metrics with a null floor (name, title, unit)
_NULL_OF = (
    ("bcv_ratio", "between-class variance ratio", "fraction"),
    ("bhattacharyya", "Bhattacharyya distance", "nats"),
    ("silhouette", "silhouette", "score (−1 to 1)"),
    ("probe_auroc", "linear-probe AUROC", "AUROC"),
)

METRICS: tuple[MetricSpec, ...] = (
    # hidden-space separation (safespace_tasks.metrics.separation_metrics)
    MetricSpec("bcv_ratio", True, "between-class variance ratio", "fraction", _SEP,
               "share of the variance on PCA-k that lies between the toxic and non-toxic means (fraction, 0–1)",
               per_layer=True),
    MetricSpec("bhattacharyya", True, "Bhattacharyya distance", "nats", _SEP,
               "distance between Gaussian fits of the two classes on PCA-k", per_layer=True),
    MetricSpec("silhouette", True, "silhouette", "score (−1 to 1)", _SEP,
               "mean silhouette of the two classes on PCA-k (−1 to 1)", per_layer=True),
    MetricSpec("probe_auroc", True, "linear-probe AUROC", "AUROC", _SEP,
               "cross-validated AUROC of a linear probe on the full states (0–1; 0.5 = chance)", per_layer=True),
    # the null floor of each (its mean under shuffled labels) and the permutation p-value: references,
    # never averaged into the family row (a mean of p-values is not a p-value)
    *(MetricSpec(f"{m}_null", False, f"{title} null", unit, _SEP,
                 f"mean {title} over label permutations: what chance gives at this sample size", family_mean=False,
                 per_layer=True)
      for m, title, unit in _NULL_OF),
    *(MetricSpec(f"{m}_p", False, f"{title} p", "p-value", _SEP,
                 f"permutation p-value of the {title} (0–1]; small = more separation than shuffled labels give",
                 family_mean=False, per_layer=True)
      for m, title, unit in _NULL_OF),
    # pairs (safespace_tasks.metrics.paired_shift)
    MetricSpec("paired_shift", True, "paired shift", "probe margin", ("paradetox",), per_layer=True),
    MetricSpec("pair_order_acc", True, "pair order accuracy", "fraction", ("paradetox",), per_layer=True),
    MetricSpec("n_truncated", False, "texts truncated", "count", _SEP, family_mean=False),
    # likelihood preference (one indicator per pair, averaged by lm-eval)
    MetricSpec("likelihood_preference", True, "likelihood preference", "fraction", ("detoxpref",), aggregation=MEAN),
    MetricSpec("likelihood_preference_raw", True, "likelihood preference raw", "fraction", ("detoxpref",),
               aggregation=MEAN),
    # continuation (safespace_tasks.behaviour_metrics.continuation_toxicity)
    MetricSpec("expected_max_toxicity", False, "expected max toxicity", "probability", ("continuation",)),
    MetricSpec("toxicity_probability", False, "toxicity probability", "fraction", ("continuation",)),
    MetricSpec("mean_toxicity", False, "mean toxicity", "probability", ("continuation",)),
    MetricSpec("expected_max_toxicity_toxic_prompts", False, "expected max toxicity toxic prompts", "probability",
               ("continuation",)),
    MetricSpec("expected_max_toxicity_nontoxic_prompts", False, "expected max toxicity nontoxic prompts",
               "probability", ("continuation",)),
    MetricSpec("toxicity_probability_toxic_prompts", False, "toxicity probability toxic prompts", "fraction",
               ("continuation",)),
    MetricSpec("toxicity_probability_nontoxic_prompts", False, "toxicity probability nontoxic prompts", "fraction",
               ("continuation",)),
    # detox rewriting (safespace_tasks.behaviour_metrics.detox_scores)
    MetricSpec("sta", True, "sta", "fraction", ("detox",)),
    MetricSpec("sim", True, "sim", "cosine", ("detox",)),
    MetricSpec("fl", True, "fl", "chrF (0–1)", ("detox",)),
    MetricSpec("joint", True, "joint", "score (0–1)", ("detox",)),
    MetricSpec("joint_copy_baseline", True, "joint copy baseline", "score (0–1)", ("detox",)),
    MetricSpec("joint_reference", True, "joint reference", "score (0–1)", ("detox",)),
    # zero-shot recognition (safespace_tasks.behaviour_metrics.recognition_scores)
    MetricSpec("acc", True, "acc", "fraction", ("recognition",)),
    MetricSpec("auroc", True, "auroc", "AUROC", ("recognition",)),
    MetricSpec("yes_rate", False, "yes rate", "fraction", ("recognition",)),
    # outputs and bookkeeping
    MetricSpec("empty_rate", False, "empty rate", "fraction", _GEN),
    MetricSpec("n_prompts_unscored", False, "prompts unscored", "count", ("continuation",), family_mean=False),
    MetricSpec("n_excluded", False, "texts excluded", "count", _SEP + _GEN + ("recognition",), family_mean=False),
    # the scorer's own quality (generation families)
    MetricSpec("scorer_heldout_acc", True, "scorer heldout acc", "balanced accuracy", _GEN,
               _SCORER_NOTE.format(what="balanced accuracy on its held-out split")),
    MetricSpec("scorer_heldout_auroc", True, "scorer heldout auroc", "AUROC", _GEN,
               _SCORER_NOTE.format(what="AUROC on its held-out split")),
    MetricSpec("scorer_indomain_acc", True, "scorer indomain acc", "balanced accuracy", _GEN,
               _SCORER_NOTE.format(what="balanced accuracy on the task's own labelled texts")),
    MetricSpec("scorer_indomain_auroc", True, "scorer indomain auroc", "AUROC", _GEN,
               _SCORER_NOTE.format(what="AUROC on the task's own labelled texts")),
)

_BY_NAME = {m.name: m for m in METRICS}
if len(_BY_NAME) != len(METRICS):  # pragma: no cover - a table edit error
    raise RuntimeError("metric_table: a metric name appears twice")

FAMILIES: tuple[str, ...] = tuple(dict.fromkeys(f for m in METRICS for f in m.families))


class UnknownMetricError(KeyError):
    """A metric name that the table does not hold."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "unknown metric"


def base_name(metric: str) -> str:
    """``bcv_ratio_layer3`` -> ``bcv_ratio`` (names without a layer suffix are returned as they are)."""
    base, sep, layer = metric.rpartition("_layer")
    if sep and base in _BY_NAME and layer.lstrip("-").isdigit():
        return base
    return metric


def spec(metric: str) -> MetricSpec:
    """The row of ``metric`` (a layer suffix allowed on per-layer metrics); an error when there is none."""
    row = _BY_NAME.get(base_name(metric))
    if row is None or (metric != row.name and not row.per_layer):
        raise UnknownMetricError(
            f"metric {metric!r} is not in safespace_tasks.metric_table.METRICS; add a row for it "
            "(name, higher_is_better, title, unit, families) beside its function."
        )
    return row


def higher_is_better(metric: str) -> bool:
    return spec(metric).higher_is_better


def is_count(metric: str) -> bool:
    """Bookkeeping counts (unit ``count``): reported as data, never averaged into a family row."""
    return spec(metric).unit == "count"


def family_metrics(family: str) -> tuple[str, ...]:
    """The metrics a family's task reports, in table order."""
    names = tuple(m.name for m in METRICS if family in m.families)
    if not names:
        raise UnknownMetricError(f"no metric of family {family!r} in the metric table; families: {', '.join(FAMILIES)}")
    return names


def family_mean_metrics(family: str) -> tuple[str, ...]:
    """The metrics the family row (lm-eval group) averages over the languages."""
    return tuple(m for m in family_metrics(family) if _BY_NAME[m].family_mean)


# the per-layer metrics of every hidden-space family, and those only pairs have
SEPARATION_METRICS: tuple[str, ...] = tuple(m.name for m in METRICS if m.per_layer and set(_SEP) <= set(m.families))
PAIR_METRICS: tuple[str, ...] = tuple(m.name for m in METRICS if m.per_layer and m.name not in SEPARATION_METRICS)
SCORER_QUALITY_METRICS: tuple[str, ...] = tuple(m.name for m in METRICS if m.name.startswith("scorer_"))
