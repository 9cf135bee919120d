"""The ``safespace_units`` task: neuron-level safety units of one model, and their overlap across languages.

One task holds every set the analysis needs at once (lm-eval's group aggregation is only a mean, so
anything that compares sets lives in one task): the **safety** set (AdvBench requests with
refusals, response tokens), the **utility** set (Alpaca seed tasks, response tokens) and MultiJail
requests in each chosen **language** (prompt tokens; MultiJail has no responses). Each doc is a
``unit_statistics`` request (per-unit running statistics, :mod:`safespace_tasks.harness.requests`);
the first doc also sends one ``unit_layout`` request, whose answer carries what the scores need
from the weights (squared outgoing-weight norms, parameter weights, the model fingerprint): the
model side computes it, the task never holds a model handle.

Per-request statistics are merged as soon as ``process_results`` sees them, into one accumulator
per (set, half) of this process; every :class:`~safespace_tasks.harness.core.Item` of the
process refers to that one accumulator, so data-parallel ranks ship merged statistics (one copy per
rank) instead of one per doc, and the aggregation merges the ranks' accumulators.

The analysis (:func:`safespace_tasks.stats.units.analyse` and friends): class shares (parameter and unit
shares, per module type; per layer beside the results), the safety-specialisation profile, the SCU
set of each MultiJail language against the same utility set, the language x language Jaccard of
those sets with the Jaccard expected of random sets of the same sizes, and the split-half overlap
of the safety set and of the English MultiJail set with themselves. Headline numbers go to the
results JSON; the merged statistics, the per-unit arrays and the full summary are written beside it
(``safespace_units_<task>_<date>.safetensors`` / ``.json``), and ``safespace units mask --from-run``
reads them.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from lm_eval.api.instance import Instance

from safespace_tasks import data as data_mod
from safespace_tasks import metric_table as mt
from safespace_tasks.harness.core import Analysis, CorpusTask, Item, SettingsError, TaskSettings, setting
from safespace_tasks.harness.requests import UNIT_LAYOUT_REQUEST_TYPE, UNIT_REQUEST_TYPE
from safespace_tasks.harness.outputs import save_units
from safespace_tasks.stats.unit_nulls import equal_weight, group_ids, overlap_null, split_half_own_utility
from safespace_tasks.stats.units import (
    ClassSettings,
    UnitLayout,
    UnitsError,
    UnitStatistics,
    analyse,
    classify,
    expected_random_jaccard,
    jaccard,
    merge_all,
    overlap_matrix,
    scu_ids,
    unit_scores,
)

log = logging.getLogger(__name__)

__all__ = ["UnitsSettings", "SafetyUnitsTask", "UNIT_SETS"]

SAFETY, UTILITY = "safety", "utility"
UNIT_SETS = (SAFETY, UTILITY)
# the smallest calibration set (Alpaca seed tasks) bounds the samples per set
MAX_SAMPLES = 175


@dataclass(frozen=True)
class UnitsSettings(TaskSettings):
    """Settings of the units family (``--metadata '{"key": value}'``).

    ru / scu / ucu: class shares of the unit parameters (the reference script's 10 % / 1 % / 10 %).
    n_samples: docs drawn per set (safety, utility, each language; the method uses 128); at most
        175, the size of the Alpaca seed set.
    chat_template: wrap every request in the model's chat template (a tokenizer without one gets
        ``request + newline``; the results say which).
    languages: comma-separated MultiJail languages (default all ten); ``en`` gives the split-half
        yardstick of the language comparison.
    save_units_dir: also write the statistics and arrays there (the results folder gets them with
        ``--output_path``).
    token_weighting: ``token`` (variances pool over all scored tokens, so a long request weighs
        more) or ``request`` (each request weighs the same: its mean and within-request variance
        combined with equal weights, :func:`safespace_tasks.stats.unit_nulls.equal_weight`).
    null_groups: each set's docs are dealt into this many groups (even; nested in the halves) whose
        statistics the overlap null re-deals (:mod:`safespace_tasks.stats.unit_nulls`).
    null_permutations: re-deals per pair for the null (0: no null); a paired pair of MultiJail
        languages with 2^(null_groups-1) <= this number is enumerated exhaustively.
    seed: draws the samples, the split halves and the groups. Also: strict, data_dir.
    """

    ru: float = setting(0.10, kind=float, minimum=0.0, maximum=1.0)
    scu: float = setting(0.01, kind=float, minimum=0.0, maximum=1.0)
    ucu: float = setting(0.10, kind=float, minimum=0.0, maximum=1.0)
    n_samples: int = setting(128, kind=int, minimum=2, maximum=MAX_SAMPLES)
    chat_template: bool = setting(True, kind=bool)
    languages: str = setting(",".join(data_mod.MULTIJAIL_LANGUAGES), kind=str)
    save_units_dir: str | None = setting(None, kind=str, optional=True)
    token_weighting: str = setting("token", kind=str, choices=("token", "request"))
    null_groups: int = setting(8, kind=int, minimum=2, maximum=64)
    null_permutations: int = setting(128, kind=int, minimum=0, maximum=100000)

    def check(self) -> None:
        ClassSettings(ru=self.ru, scu=self.scu, ucu=self.ucu)  # shares that sum above 1: an error
        if self.null_groups % 2:
            raise SettingsError(f"setting null_groups={self.null_groups} must be even (the groups nest in the two "
                                "halves of each set); pick e.g. 8.")
        langs = self.language_list()
        bad = [x for x in langs if x not in data_mod.MULTIJAIL_LANGUAGES]
        if bad or not langs or len(set(langs)) != len(langs):
            raise SettingsError(
                f"setting languages={self.languages!r} is not valid: name each MultiJail language once, "
                f"comma-separated, from {', '.join(data_mod.MULTIJAIL_LANGUAGES)}"
                + (f"; unknown: {', '.join(bad)}" if bad else "") + "."
            )

    def language_list(self) -> list[str]:
        return [x.strip() for x in self.languages.replace(" ", ",").split(",") if x.strip()]

    def class_settings(self) -> ClassSettings:
        return ClassSettings(ru=self.ru, scu=self.scu, ucu=self.ucu)


class _RankStats:
    """This process's merged statistics: one :class:`UnitStatistics` per (set, half), the doc keys
    merged into each (so a doc is never counted twice) and the model side's layout answer."""

    def __init__(self) -> None:
        self.stats: dict[tuple[str, int], UnitStatistics] = {}
        self.keys: dict[tuple[str, int], set[int]] = {}
        self.layout: dict[str, Any] | None = None

    def add(self, group: tuple[str, int], key: int, stats: UnitStatistics) -> None:
        seen = self.keys.setdefault(group, set())
        if key in seen:
            return
        seen.add(key)
        self.stats[group] = stats if group not in self.stats else self.stats[group].merge(stats)

    def __repr__(self) -> str:
        return f"<unit statistics of {sum(len(k) for k in self.keys.values())} docs>"


def sample_indices(n_rows: int, n: int, seed: int, name: str) -> np.ndarray:
    """The sorted indices of the ``n`` rows (of ``n_rows`` usable ones) a units run draws with ``seed``:
    the first ``n`` of a seeded permutation. Public so that a script can tell which rows a run used."""
    if n > n_rows:
        raise data_mod.DataError(f"{name} has {n_rows} usable rows; n_samples={n} asks for more. Lower n_samples.")
    return np.sort(np.random.default_rng(seed).permutation(n_rows)[:n])


def _halves(n: int, seed: int) -> np.ndarray:
    """Half (0 or 1) of each of n sampled docs: a seeded random split into n//2 and the rest."""
    half = np.ones(n, dtype=int)
    half[np.random.default_rng(seed + 1).permutation(n)[: n // 2]] = 0
    return half


class SafetyUnitsTask(CorpusTask):
    """Safety, utility and MultiJail sets of one model in one task (see the module docstring).

    YAML: ``class: !function safespace_tasks.harness.families.units.SafetyUnitsTask``, ``test_split``
    (any name; the sets are the task's languages) and the settings in ``metadata``
    (:class:`UnitsSettings`).
    """

    FAMILY = "units"
    SETTINGS = UnitsSettings
    LAYOUT = "units"
    REQUEST_TYPE = UNIT_REQUEST_TYPE
    INPUT_ERRORS = (UnitsError,)

    def __init__(self, data_dir=None, cache_dir=None, download_mode=None, config: dict | None = None) -> None:
        self._acc = _RankStats()
        super().__init__(data_dir=data_dir, cache_dir=cache_dir, download_mode=download_mode, config=config)

    # ------------------------------------------------------------------ metrics and data

    def metric_names(self) -> list[str]:
        langs = self.settings.language_list()
        return [m for m in mt.family_metrics(self.FAMILY) if mt.units_metric_applies(m, langs)]

    def languages(self) -> list[str]:
        return [SAFETY, UTILITY] + self.settings.language_list()

    def load_language(self, language: str) -> tuple[list[dict], data_mod.DataReport]:
        s = self.settings
        if language == SAFETY:
            rows = data_mod.safety_refusal_rows(s.data_dir)
            source, pairs = "safety_refusals/train.jsonl", [(r["prompt"], r["response"]) for r in rows]
        elif language == UTILITY:
            rows = data_mod.alpaca_seed_rows(s.data_dir)
            source = "alpaca_seed_tasks/seed_tasks.jsonl"
            pairs = [(r["instruction"] + (f"\n\n{r['input']}" if r["input"] else ""), r["output"]) for r in rows]
        else:
            rows = data_mod.multijail_rows(language, s.data_dir)
            source, pairs = f"multijail/{language}.jsonl", [(r["text"], None) for r in rows]
        report = data_mod.DataReport(source=source, n_rows=len(pairs))
        usable = [i for i, (req, resp) in enumerate(pairs)
                  if str(req or "").strip() and (resp is None or str(resp).strip())]
        report.empty_texts = len(pairs) - len(usable)
        if report.empty_texts:
            report.notes.append(f"{source}: {report.empty_texts} rows with an empty request or response left out")
        # MultiJail holds the same requests in every language in the same row order: the same seed
        # draws the same requests in each language
        picked = [usable[i] for i in sample_indices(len(usable), s.n_samples, s.seed, source)]
        halves = _halves(len(picked), s.seed)
        # groups nest in the halves and depend only on the sample size and seed: MultiJail languages
        # (the same request ids) get the same requests in the same groups, for the paired null
        group = group_ids(halves, s.null_groups, s.seed)
        docs = []
        for pos, (i, half, g) in enumerate(zip(picked, halves, group)):
            req, resp = pairs[i]
            docs.append({"id": int(i), "set": language, "request": str(req), "response": "" if resp is None else str(resp),
                         "tokens": "prompt" if resp is None else "response",
                         "half": int(half) if language in (SAFETY, UTILITY, "en") else -1, "group": int(g)})
        return docs, report

    def download(self, dataset_kwargs: dict[str, Any] | None = None, **kwargs) -> None:
        """The core's download, then the sets interleaved (so ``--limit`` takes a little of each)."""
        import datasets

        super().download(dataset_kwargs, **kwargs)
        split = str(self.config.test_split)
        rows = list(self.dataset[split])
        by_set: dict[str, list[dict]] = {}
        for r in rows:
            by_set.setdefault(r["set"], []).append(r)
        order: list[dict] = []
        queues = [by_set.get(name, []) for name in self.languages()]
        for i in range(max(len(q) for q in queues)):
            order += [q[i] for q in queues if i < len(q)]
        self.dataset = datasets.DatasetDict({split: datasets.Dataset.from_list(order)})

    # ------------------------------------------------------------------ requests and items

    def build_all_requests(self, *args, **kwargs):
        self._acc = _RankStats()  # a new evaluation starts from nothing
        return super().build_all_requests(*args, **kwargs)

    def request_options(self, doc: dict) -> dict[str, Any]:
        return {"tokens": doc["tokens"], "chat_template": self.settings.chat_template}

    def continuation(self, doc: dict) -> str:
        if doc["tokens"] == "prompt":
            return ""
        response = doc["response"].strip()
        return response if self.settings.chat_template else " " + response

    def construct_requests(self, doc: dict, ctx: str, **kwargs) -> list[Instance]:
        metadata = kwargs.get("metadata", (self.config.task, None, 1))
        out = [Instance(request_type=UNIT_REQUEST_TYPE, doc=doc,  # type: ignore[arg-type]
                        arguments=(doc["request"], self.continuation(doc), self.request_options(doc)),
                        idx=0, metadata=metadata)]
        if metadata[1] == 0:  # the first doc also asks for the weights' side of the scores, once
            out.append(Instance(request_type=UNIT_LAYOUT_REQUEST_TYPE, doc=doc, arguments=({},), idx=1,  # type: ignore[arg-type]
                                metadata=metadata))
        return out

    def item_of(self, doc: dict, results: list) -> Item:
        stats = results[0]
        if not isinstance(stats, UnitStatistics):
            raise TypeError(
                f"{self.config.task}: expected UnitStatistics from the unit_statistics request, got "
                f"{type(stats).__name__}; run the units family with --model hf or safespace-hf."
            )
        if len(results) > 1:
            self._acc.layout = results[1]
        language = doc.get("language") or doc["set"]
        if self.settings.token_weighting == "request":
            stats = equal_weight(stats)
        self._acc.add((language, int(doc["group"])), int(doc["id"]), stats)
        return Item(doc["id"], response=self._acc, language=language)

    # ------------------------------------------------------------------ the analysis

    def _merged(self, items: list[Item]) -> tuple[dict[tuple[str, int], UnitStatistics], dict[str, Any]]:
        """Every rank's accumulator merged per (set, half); the layout answer."""
        accs = list({id(it.response): it.response for it in items}.values())
        wanted = {(it.language, it.key) for it in items}
        merged: dict[tuple[str, int], list[UnitStatistics]] = {}
        keys: dict[tuple[str, int], set[int]] = {}
        layout = None
        for acc in sorted(accs, key=lambda a: min((min(k) for k in a.keys.values() if k), default=0)):
            layout = layout or acc.layout
            for group, stats in acc.stats.items():
                clash = keys.setdefault(group, set()) & acc.keys[group]
                if clash:
                    raise UnitsError(f"docs {sorted(clash)[:5]} of set {group[0]!r} reached the aggregation from two "
                                     "processes; their statistics cannot be counted once.")
                keys[group] |= acc.keys[group]
                merged.setdefault(group, []).append(stats)
        have = {(g[0], k) for g, ks in keys.items() for k in ks}
        if wanted - have:
            raise UnitsError(f"{len(wanted - have)} docs have no merged statistics (e.g. {sorted(wanted - have)[:3]}).")
        if layout is None:
            raise UnitsError("no unit_layout answer reached the aggregation (the first doc carries it); "
                             "run without --samples that leave out doc 0.")
        self._group_keys = keys
        return {g: merge_all(v) for g, v in merged.items()}, layout

    def compute(self, items: list[Item]) -> Analysis:
        groups, answer = self._merged(items)
        layout: UnitLayout = answer["layout"]
        cs = self.settings.class_settings()
        sets: dict[str, UnitStatistics] = {}
        for name in self.languages():
            parts = [groups[g] for g in sorted(groups) if g[0] == name]
            if parts:
                sets[name] = merge_all(parts)
        for need in UNIT_SETS:
            if need not in sets:
                raise UnitsError(f"the {need} set has no docs (--limit too small?); the classes need both sets.")
        res = analyse(sets[SAFETY], sets[UTILITY], layout, cs)
        params = layout.unit_params()
        z_u = res["arrays"]["z_utility"]
        values: dict[str, float] = {}
        for cls, v in res["shares"].items():
            values[f"{cls.lower()}_param_share"] = v["params"]
            values[f"{cls.lower()}_unit_share"] = v["units"]
            for kind in ("mlp", "attn"):
                values[f"{cls.lower()}_share_{kind}"] = res["per_type"][kind][cls]["units"]
        values["safety_profile_mean"] = float(np.nanmean(res["profile"]))
        scu_safety = scu_ids(res["arrays"]["labels"])
        values["n_units"] = float(layout.n_units)
        values["n_scu"] = float(len(scu_safety))
        values["n_truncated"] = float(sum(s.truncated for s in sets.values()))

        n_groups = self.settings.null_groups

        def half_stats(name: str, h: int) -> UnitStatistics | None:
            parts = [groups[g] for g in sorted(groups) if g[0] == name and int(g[1] >= n_groups // 2) == h]
            return merge_all(parts) if parts else None

        def split_half(name: str) -> dict[str, Any]:
            halves = [half_stats(name, h) for h in (0, 1)]
            if any(h is None or h.count == 0 for h in halves):
                return {"jaccard": float("nan"), "expected_random": float("nan"), "sizes": None,
                        "error": f"a half of {name} has no docs"}
            found = [scu_ids(classify(unit_scores(h, layout, cs.ddof), z_u, params, cs)) for h in halves]
            return {"jaccard": jaccard(*found), "sizes": [len(f) for f in found],
                    "expected_random": expected_random_jaccard(layout.n_units, len(found[0]), len(found[1])),
                    "docs": [h.n_docs for h in halves]}

        split = {SAFETY: split_half(SAFETY)}
        values["split_half_safety"] = split[SAFETY]["jaccard"]
        values["split_half_random_safety"] = split[SAFETY]["expected_random"]
        langs = self.settings.language_list()
        scu_sets: dict[str, np.ndarray] = {}
        lang_labels: dict[str, np.ndarray] = {}
        lang_z: dict[str, np.ndarray] = {}
        lang_errors: dict[str, str] = {}
        for lang in langs:
            if lang not in sets:
                lang_errors[lang] = "no docs reached the aggregation"
                continue
            try:
                lang_z[lang] = unit_scores(sets[lang], layout, cs.ddof)
            except UnitsError as err:
                lang_errors[lang] = str(err)
                continue
            lang_labels[lang] = classify(lang_z[lang], z_u, params, cs)
            scu_sets[lang] = scu_ids(lang_labels[lang])
        for lang, err in lang_errors.items():
            self.strict_or_nan(f"{self.config.task} (language {lang}): {err}", UnitsError(err))
        for lang in langs:
            ok = lang in scu_sets
            values[f"jaccard_safety_{lang}"] = jaccard(scu_safety, scu_sets[lang]) if ok else float("nan")
            values[f"jaccard_random_safety_{lang}"] = (
                expected_random_jaccard(layout.n_units, len(scu_safety), len(scu_sets[lang])) if ok else float("nan"))
        overlap = overlap_matrix(scu_sets, layout.n_units) if scu_sets else {"languages": [], "jaccard": [], "expected_random": []}
        index = {l: i for i, l in enumerate(overlap["languages"])}
        for a, b in mt.units_language_pairs(langs):  # named in MultiJail's order, as the metric table does
            ok = a in index and b in index
            values[f"jaccard_{a}_{b}"] = overlap["jaccard"][index[a]][index[b]] if ok else float("nan")
            values[f"jaccard_random_{a}_{b}"] = overlap["expected_random"][index[a]][index[b]] if ok else float("nan")
        if "en" in langs:
            split["en"] = split_half("en")
            values["split_half_en"] = split["en"]["jaccard"]
            values["split_half_random_en"] = split["en"]["expected_random"]
        nulls = self._nulls(groups, z_u, layout, cs, list(scu_sets), half_stats, values)
        values = {k: float(v) for k, v in values.items() if k in self._metric_names}

        summary = {k: v for k, v in res.items() if k != "arrays"}
        summary.update(
            split_half=split, overlap=overlap, language_errors=lang_errors, overlap_null=nulls,
            token_weighting=self.settings.token_weighting,
            scu_per_language={l: int(len(v)) for l, v in scu_sets.items()},
            scu_share_mlp_per_language={l: float(np.mean(lab[res["arrays"]["kind"] == 0] == 2)) for l, lab in lang_labels.items()},
            docs={name: {"docs": st.n_docs, "scored_tokens": st.count, "truncated": st.truncated} for name, st in sets.items()},
            chat_template={"asked": self.settings.chat_template, "tokenizer_has_one": answer.get("chat_template")},
            model=answer.get("model"), model_fingerprint=answer.get("fingerprint"),
            settings=self.settings_dict(),
        )
        if self.settings.chat_template and not answer.get("chat_template"):
            log.warning("%s: the tokenizer has no chat template; requests were scored as 'request + newline'",
                        self.config.task)
        stats_sets = {SAFETY: sets[SAFETY], UTILITY: sets[UTILITY]}
        for h in (0, 1):
            for name, key in ((SAFETY, f"{SAFETY}_half{h}"), (UTILITY, f"{UTILITY}_half{h}"), ("en", f"mj_en_half{h}")):
                part = half_stats(name, h)
                if part is not None:
                    stats_sets[key] = part
        for lang in langs:
            if lang in sets:
                stats_sets[f"mj_{lang}"] = sets[lang]
        arrays = {f"arrays.{k}": np.asarray(v) for k, v in res["arrays"].items()}
        for lang in lang_labels:
            arrays[f"arrays.z_mj_{lang}"] = lang_z[lang]
            arrays[f"arrays.labels_mj_{lang}"] = lang_labels[lang]
        analysis = Analysis(values=values, details={"units": {k: summary[k] for k in ("shares", "per_type", "split_half",
                                                                                       "scu_per_language", "docs")}})
        analysis.outputs.units = {"sets": stats_sets, "layout": layout, "arrays": arrays, "summary": summary, "answer": answer}
        return analysis

    def _nulls(self, groups: dict[tuple[str, int], UnitStatistics], z_u: np.ndarray, layout: UnitLayout,
               cs: ClassSettings, langs: list[str], half_stats, values: dict[str, float]) -> dict[str, Any]:
        """The shared-utility nulls (:mod:`safespace_tasks.stats.unit_nulls`) of every language pair and of
        the safety set against each language, and the split halves with their own utility halves.
        Fills ``values`` (``jaccard_null_*``, ``jaccard_p_*``, ``split_half_own_utility_*``); returns
        the details for the summary. Pairs are named in MultiJail's order, whatever the setting's."""
        out: dict[str, Any] = {"pairs": {}, "split_half_own_utility": {}, "errors": {}}
        u_halves = [half_stats(UTILITY, h) for h in (0, 1)]
        for name in (SAFETY, "en"):
            if name != SAFETY and name not in langs:
                continue
            halves = [half_stats(name, h) for h in (0, 1)]
            key = f"split_half_own_utility_{name}"
            if any(h is None or h.count == 0 for h in halves + u_halves):
                values[key] = float("nan")
                out["errors"][key] = "a half of the set or of the utility set has no scored tokens"
                continue
            res = split_half_own_utility(halves, u_halves, layout, cs)
            out["split_half_own_utility"][name] = res
            values[key] = res["jaccard"]
            values[f"split_half_own_utility_random_{name}"] = res["expected_random"]
        n_perm = self.settings.null_permutations
        if n_perm == 0:
            return out
        order = [l for l in data_mod.MULTIJAIL_LANGUAGES if l in langs]
        keys_of = {name: {g[1]: self._group_keys.get(g, set()) for g in groups if g[0] == name} for name in [SAFETY] + order}
        pairs = [(SAFETY, l) for l in order] + [(a, b) for i, a in enumerate(order) for b in order[i + 1:]]
        for a, b in pairs:
            ga = [groups[(a, g)] for g in sorted(keys_of[a])]
            gb = [groups[(b, g)] for g in sorted(keys_of[b])]
            # paired when both sets hold the same request ids group by group (MultiJail translations)
            paired = (a != SAFETY and sorted(keys_of[a]) == sorted(keys_of[b])
                      and all(keys_of[a][g] == keys_of[b][g] for g in keys_of[a])
                      and all(x.count > 0 for x in ga + gb))
            name = f"safety_{b}" if a == SAFETY else f"{a}_{b}"
            try:
                res = overlap_null(ga, gb, z_u, layout, cs, n_perm=n_perm, seed=self.settings.seed, paired=paired)
            except UnitsError as err:
                out["errors"][name] = str(err)
                for key in ("jaccard_null", "jaccard_p", "jaccard_floor", "jaccard_p_floor"):
                    values[f"{key}_{name}"] = float("nan")
                continue
            out["pairs"][name] = res
            values[f"jaccard_null_{name}"] = res["null"]
            values[f"jaccard_p_{name}"] = res["p"]
            values[f"jaccard_floor_{name}"] = res["floor"]
            values[f"jaccard_p_floor_{name}"] = res["p_floor"]
        return out

    def on_analysis(self, analysis: Analysis, items: list[Item]) -> None:
        """The summary gets the task and its data; saved now with ``save_units_dir``."""
        units = analysis.outputs.units
        if units is None:
            return
        units["summary"]["task"] = self.config.task
        units["summary"]["data"] = analysis.details.get("data")
        if self.settings.save_units_dir:
            paths = save_units(units, Path(os.path.expanduser(self.settings.save_units_dir)), self.config.task, None)
            log.info("%s: saved unit statistics to %s", self.config.task, paths[0])
