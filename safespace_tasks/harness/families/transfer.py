"""lm-eval task for cross-lingual transfer of the toxic-vs-non-toxic direction: ``safespace_transfer``.

lm-eval's group aggregation is a (weighted) mean of the languages' numbers, so a metric that needs
several languages' states at once lives in one task: this one holds the texts of every source and
target language (each doc tagged with its ``language``), emits the same hidden-state request per
text as the toxicity tasks (same options, so a shared ``state_cache`` serves both), and in its
aggregation calls :func:`safespace_tasks.stats.transfer.transfer_matrix` on the pooled states.

Results JSON (numbers only), per source ``s``, target ``t`` (and layer, ``_layer<i>`` as in the
toxicity family): ``transfer_auroc_<s>_<t>``, ``transfer_direction_auroc_<s>_<t>``,
``transfer_own_auroc_<s>_<t>`` (the target's own cross-validated AUROC), ``transfer_ratio_<s>_<t>``,
``transfer_ratio_above_chance_<s>_<t>`` and ``transfer_cosine_<s>_<t>``, each with its bootstrap
standard error. The full matrix (intervals, diagnostics, every layer) goes into the details JSON
beside the results (``safespace_details_<date>.json``, key ``transfer_matrix``) and the states into
``safespace_states_safespace_transfer_<date>.npz`` with the texts of each language in one block
(``meta["language_slices"]``).

``--limit N`` means N texts **per language** here, as in the per-language tasks: docs are
interleaved across languages (the first N·k docs are the first N of each of the k languages) and
the limit is multiplied by k.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np

from safespace_tasks.data import TOXICITY
from safespace_tasks.harness.core import Analysis, Item, SettingsError, setting
from safespace_tasks.harness.families.toxicity import ToxicityTask, SeparationSettings
from safespace_tasks.stats.validation import SeparationInputError
from safespace_tasks.states import StatesBundle
from safespace_tasks.stats.transfer import transfer_matrix

log = logging.getLogger(__name__)

__all__ = ["TransferSettings", "TransferTask", "QUANTITY_METRICS"]

# quantity of safespace_tasks.stats.transfer -> metric name prefix in the results JSON
QUANTITY_METRICS = {
    "transfer_auroc": "transfer_auroc",
    "direction_auroc": "transfer_direction_auroc",
    "own_auroc": "transfer_own_auroc",
    "ratio": "transfer_ratio",
    "ratio_above_chance": "transfer_ratio_above_chance",
    "cosine": "transfer_cosine",
}


@dataclass(frozen=True)
class TransferSettings(SeparationSettings):
    """The toxicity settings (layers, pooling, ...) plus the languages of the transfer.

    sources: languages whose direction is fitted (default ``["en"]``); several give a matrix.
    targets: languages scored with each source's direction (default: the 15 toxicity languages).
    Every source is also a target (the diagonal: own cross-validated AUROC, ratio 1, cosine 1).
    ``probe_folds`` sets the folds of the targets' own probes, ``bootstrap_iters`` the resamples.
    """

    sources: tuple[str, ...] = setting(("en",), kind="str_list")
    targets: tuple[str, ...] = setting(tuple(TOXICITY.languages), kind="str_list")

    def check(self) -> None:
        super().check()
        unknown = [x for x in (*self.sources, *self.targets) if x not in TOXICITY.languages]
        if unknown:
            raise SettingsError(
                f"sources/targets name languages {unknown} that the toxicity data does not hold; "
                f"languages: {', '.join(TOXICITY.languages)}."
            )

    def languages(self) -> list[str]:
        return list(dict.fromkeys([*self.targets, *self.sources]))


class TransferTask(ToxicityTask):
    """Transfer of each source language's toxic direction to every target language (one task)."""

    FAMILY = "transfer"
    SETTINGS = TransferSettings
    INPUT_ERRORS = (SeparationInputError,)

    def languages(self) -> list[str]:
        return self.settings.languages()

    @property
    def language(self) -> str:
        return ",".join(self.languages())

    # ------------------------------------------------------------------ data

    def download(self, dataset_kwargs: dict[str, Any] | None = None, **kwargs) -> None:
        """Every language's docs, interleaved (doc i of each language, then doc i + 1, ...)."""
        super().download(dataset_kwargs, **kwargs)
        split = str(self.config.test_split)
        ds = self.dataset[split]
        langs = ds["language"] if len(self.languages()) > 1 else [self.languages()[0]] * len(ds)
        rank: dict[str, int] = {}
        order = []
        for i, lang in enumerate(langs):
            order.append((rank.get(lang, 0), self.languages().index(lang), i))
            rank[lang] = rank.get(lang, 0) + 1
        self.dataset[split] = ds.select([i for _, _, i in sorted(order)])

    def _per_language(self, limit):
        return None if limit is None else int(limit) * len(self.languages())

    def build_all_requests(self, *, limit: int | None = None, **kwargs) -> None:
        """``limit`` counts texts per language (see the module docstring)."""
        self._building = True  # lm-eval's builder calls doc_iterator with the limit it was given
        try:
            super().build_all_requests(limit=self._per_language(limit), **kwargs)
        finally:
            self._building = False

    def doc_iterator(self, *, rank: int = 0, limit: int | None = None, world_size: int = 1, samples=None):
        """The docs lm-eval hands back to ``process_results``: ``limit`` per language, as when built."""
        if not getattr(self, "_building", False):
            limit = self._per_language(limit)
        return super().doc_iterator(rank=rank, limit=limit, world_size=world_size, samples=samples)

    # ------------------------------------------------------------------ items and metrics

    def item_of(self, doc: dict, results: list) -> Item:
        item = super().item_of(doc, results)
        item.language = str(doc.get("language", self.languages()[0]))
        return item

    def metric_names(self) -> list[str]:
        s = self.settings
        names = []
        for sfx in self.layer_suffixes():
            for q, prefix in QUANTITY_METRICS.items():
                names += [f"{prefix}_{src}_{tgt}{sfx}" for src in s.sources for tgt in s.targets]
        return names + ["n_truncated"]

    def compute(self, items: list[Item]) -> Analysis:
        s = self.settings
        if not items:
            raise SeparationInputError("no text reached the aggregation (the model returned no state)")
        layers = [int(x) for x in items[0].response.layers]
        self.adopt_layers(items[0].response)
        suffixes = self.layer_suffixes()
        by_lang: dict[str, list[Item]] = {lang: [] for lang in self.languages()}
        for it in items:
            by_lang.setdefault(it.language, []).append(it)
        missing = [lang for lang, its in by_lang.items() if not its]
        if missing:
            raise SeparationInputError(f"no text of {missing} reached the aggregation")
        states = {k: np.stack([it.response.vectors for it in v]).astype(np.float32) for k, v in by_lang.items()}
        labels = {k: np.array([it.label for it in v], dtype=np.int64) for k, v in by_lang.items()}
        m = transfer_matrix(
            states, labels, sources=list(s.sources), targets=list(s.targets), layers=layers,
            n_boot=s.bootstrap_iters, ci_level=s.ci_level, seed=s.seed, n_splits=s.probe_folds,
        )
        analysis = Analysis()
        for layer, sfx in zip(layers, suffixes):
            for src in s.sources:
                for tgt in s.targets:
                    cell = m.cell(src, tgt, layer)
                    for q, prefix in QUANTITY_METRICS.items():
                        name = f"{prefix}_{src}_{tgt}{sfx}"
                        analysis.values[name] = float(cell[q].value)
                        if np.isfinite(cell[q].stderr):
                            analysis.stderr[name] = float(cell[q].stderr)
        truncated = sum(int(it.response.truncated) for it in items)
        order = list(by_lang)
        slices, start = {}, 0
        for lang in order:
            slices[lang] = [start, start + len(by_lang[lang])]
            start += len(by_lang[lang])
        analysis.details = {
            "dataset": self.config.dataset_path,
            "settings": self.settings_dict(),
            "layers": layers,
            "n_layers": self._resolved[2] if self._resolved else None,
            "metric_suffixes": dict(zip(layers, suffixes)),
            "n_texts": {lang: len(v) for lang, v in by_lang.items()},
            "n_truncated": truncated,
            "language_slices": slices,
            "transfer_matrix": m.to_dict(),
        }
        flat = [it for lang in order for it in by_lang[lang]]
        analysis.outputs.states = StatesBundle(
            task=self.config.task,
            states=np.concatenate([states[lang] for lang in order]),
            labels=np.concatenate([labels[lang] for lang in order]),
            ids=np.array([it.key for it in flat], dtype=np.int64),
            groups=np.array([it.group for it in flat], dtype=np.int64),
            layers=np.array(layers, dtype=np.int64),
        )
        return analysis

    def always_values(self, items: list[Item], analysis: Analysis) -> dict[str, float]:
        return {"n_truncated": float(sum(int(it.response.truncated) for it in items))}
