"""The task core: settings checks, the metric table, the one data entry point, the generated YAML."""

from __future__ import annotations

import filecmp
import importlib.util
import math
from pathlib import Path

import numpy as np
import pytest
from helpers import write_jsonl, write_toxicity_mirror

from safespace_tasks import metric_table as mt
from safespace_tasks.capture import HiddenState
from safespace_tasks.data import DataError, load_docs
from safespace_tasks.harness.families.behaviour import ContinuationSettings, ContinuationTask, DetoxTask, RecognitionTask
from safespace_tasks.harness.core import CorpusTask, Item, SettingsError, validate_metadata
from safespace_tasks.harness.families.detoxpref import LikelihoodPreferenceTask
from safespace_tasks.harness.families.paradetox import ParaDetoxTask
from safespace_tasks.harness.families.toxicity import ToxicityTask, SeparationSettings, StateItem

REPO = Path(__file__).resolve().parents[2]


# --------------------------------------------------------------------------- settings


def test_settings_parse_the_documented_forms():
    s = SeparationSettings.from_metadata(
        {"layers": "0, -1", "pca_components": 5, "strict": "true", "ridge": 0, "ci_level": 0.9, "version": 1.0,
         "pretrained": "/some/model", "dtype": "float32", "samples_per_prompt": 3}
    )
    assert s.layers == (0, -1) and s.pca_components == 5 and s.strict is True and s.ridge == 0.0
    assert s.metric_suffixes() == ["_layer0", ""]  # the final layer (-1) has the plain names
    assert SeparationSettings.from_metadata({"layers": 3}).layers == (3,)
    assert SeparationSettings.from_metadata({"pca_components": 4.0}).pca_components == 4  # integral float
    assert SeparationSettings.from_metadata({"ridge": None}).ridge is None  # null = the default


@pytest.mark.parametrize(
    "meta, words",
    [
        ({"pca_componets": 5}, ["pca_componets", "did you mean pca_components"]),
        ({"pca_components": 2.7}, ["pca_components=2.7", ">= 1, an integer"]),
        ({"pca_components": "ten"}, ["pca_components='ten'", ">= 1, an integer"]),
        ({"strict": "ture"}, ["strict='ture'", "true or false"]),
        ({"strict": 1}, ["strict=1", "true or false"]),
        ({"ridge": -1}, ["ridge=-1", ">= 0, a number (or null)"]),
        ({"layers": "abc"}, ["'layers' = 'abc'", "neither 'all', an integer nor a range"]),
        ({"ci_level": 1.5}, ["ci_level=1.5", "must lie in (0, 1)"]),
        ({"pooling": "max"}, ["pooling='max'", "'last', 'mean'"]),
        ({"bootstrap_iters": -3}, ["bootstrap_iters=-3", ">= 0, an integer"]),
    ],
)
def test_bad_settings_name_the_key_the_value_and_the_allowed_range(meta, words):
    with pytest.raises(SettingsError) as err:
        SeparationSettings.from_metadata(meta, where="safespace-toxicity-en")
    text = str(err.value).lower()
    assert "safespace-toxicity-en" in text
    for w in words:
        assert w.lower() in text, text


def test_behaviour_settings_share_the_one_parser():
    s = ContinuationSettings.from_metadata({"samples_per_prompt": "3", "empty_continuations": "nontoxic"})
    assert s.samples_per_prompt == 3 and s.empty_continuations == "nontoxic"
    with pytest.raises(SettingsError, match="samples_per_prompt=0 .*must be >= 1"):
        ContinuationSettings.from_metadata({"samples_per_prompt": 0})
    with pytest.raises(SettingsError, match="toxicity_threshold=1 .*must lie in \\(0, 1\\)"):
        ContinuationSettings.from_metadata({"toxicity_threshold": 1})
    with pytest.raises(SettingsError, match="(?i)did you mean samples_per_prompt"):
        ContinuationSettings.from_metadata({"samples_per_promt": 2})


def test_validate_metadata_before_the_model():
    validate_metadata("safespace_toxicity,hellaswag", {"pca_components": 5, "bootstrap_iters": 10})
    # a key of any selected family is fine; one no selected family knows is not
    validate_metadata(["safespace-toxicity-en", "safespace-continuation-de"], {"samples_per_prompt": 2, "layers": [1]})
    with pytest.raises(SettingsError, match="'samples_per_prompt'"):
        validate_metadata(["safespace-toxicity-en"], {"samples_per_prompt": 2})
    with pytest.raises(SettingsError, match="Did you mean pca_components"):
        validate_metadata("safespace_*", {"pca_componets": 5})
    with pytest.raises(SettingsError, match=r"--metadata \(toxicity\): setting ridge=-1"):
        validate_metadata("safespace-toxicity-*", {"ridge": -1})
    validate_metadata("hellaswag,arc_easy", {"anything": 1})  # no safespace task: nothing to check


# --------------------------------------------------------------------------- metric table


FAMILY_CLASSES = {
    "toxicity": ToxicityTask, "paradetox": ParaDetoxTask, "detoxpref": LikelihoodPreferenceTask,
    "continuation": ContinuationTask, "detox": DetoxTask, "recognition": RecognitionTask,
}


def test_every_family_reads_its_metrics_from_the_table():
    assert {f: c for f, c in CorpusTask._registry.items() if f in FAMILY_CLASSES} == FAMILY_CLASSES
    assert mt.family_metrics("toxicity") == (*mt.SEPARATION_METRICS, "n_truncated", "n_excluded")
    assert mt.family_metrics("paradetox") == (*mt.SEPARATION_METRICS, *mt.PAIR_METRICS, "n_truncated", "n_excluded")
    assert mt.family_mean_metrics("recognition") == ("acc", "auroc", "yes_rate")
    assert mt.PAIR_METRICS == ("paired_shift", "pair_order_acc")
    assert mt.higher_is_better("bcv_ratio_layer3") is True
    assert mt.higher_is_better("expected_max_toxicity") is False
    with pytest.raises(mt.UnknownMetricError, match="not in safespace_tasks.metric_table"):
        mt.higher_is_better("bcv_ratoi")
    with pytest.raises(mt.UnknownMetricError):
        mt.spec("acc_layer2")  # not a per-layer metric


def test_report_titles_notes_and_order_come_from_the_table():
    from safespace_tasks.report.compare import _metric_order
    from safespace_tasks.report.plots import metric_title
    from safespace_tasks.report.tables import METRIC_NOTES, _direction

    assert metric_title("bcv_ratio_layer2") == "between-class variance ratio (layer 2)"
    assert METRIC_NOTES["probe_auroc"] == mt.spec("probe_auroc").note
    assert _metric_order(["yes_rate", "acc", "zz_other", "auroc"]) == ["acc", "auroc", "yes_rate", "zz_other"]
    assert _direction("yes_rate").startswith("yes rate: lower is better")
    assert _direction("n_excluded") is None


# --------------------------------------------------------------------------- data and tasks


def test_unknown_dataset_is_a_data_error():
    with pytest.raises(DataError, match="no doc loader for dataset 'org/unknown'"):
        load_docs("org/unknown", "en")


def _config(mirror: Path, language: str, **meta) -> dict:
    return {
        "task": f"safespace-toxicity-{language}", "dataset_path": "textdetox/multilingual_toxicity_dataset",
        "test_split": language, "doc_to_text": "text", "doc_to_target": "toxic",
        "metadata": {"version": 1.0, "data_dir": str(mirror), "bootstrap_iters": 50, "pca_components": 4, **meta},
    }


def test_a_language_empty_after_exclusions_is_named(tmp_path):
    rows = [{"text": "you are an idiot", "toxic": i % 2} for i in range(40)]  # one text, both labels
    write_jsonl(tmp_path / "multilingual_toxicity_dataset" / "en.jsonl", rows)
    with pytest.raises(DataError) as err:
        ToxicityTask(config=_config(tmp_path, "en"))
    text = str(err.value)
    assert "'en'" in text and "40 rows" in text and "40 excluded" in text and "40 conflicting labels" in text


def test_a_bad_setting_stops_the_task_before_any_request(tmp_path):
    write_toxicity_mirror(tmp_path, languages=("en",), n_per_class=10)
    with pytest.raises(SettingsError, match="(?i)did you mean pca_components"):
        ToxicityTask(config=_config(tmp_path, "en", pca_componets=5))


def _planted_items(task: ToxicityTask, shift: float, seed: int) -> list[StateItem]:
    rng = np.random.default_rng(seed)
    items = []
    for doc in task.dataset[task.config.test_split]:
        v = rng.normal(size=(1, 8)).astype(np.float32) + shift * doc["toxic"]
        items.append(StateItem(doc["id"], doc["toxic"], HiddenState(v, (-1,), 5, False), -1, doc["text"]))
    return items


def test_a_language_measures_the_same_alone_and_beside_another(tmp_path):
    write_toxicity_mirror(tmp_path, languages=("en", "de"), n_per_class=30)
    alone = ToxicityTask(config=_config(tmp_path, "en"))
    res_alone = alone.analyse(_planted_items(alone, 1.0, seed=0))
    en, de = ToxicityTask(config=_config(tmp_path, "en")), ToxicityTask(config=_config(tmp_path, "de"))
    items_de = _planted_items(de, 2.0, seed=1)
    de.analyse(items_de)
    items_en = _planted_items(en, 1.0, seed=0)
    res_en = en.analyse(list(reversed(items_en)))  # order of arrival does not matter either
    assert res_en.values == res_alone.values
    assert res_en.stderr == res_alone.stderr and res_alone.stderr["bhattacharyya"] > 0
    # the aggregators serve one analysis; the stderr hook and the deepcopy guard are there
    agg = en.aggregation()["bcv_ratio"]
    assert agg(items_en) == res_alone.values["bcv_ratio"]
    assert agg.safespace_stderr(items_en) == res_alone.stderr["bcv_ratio"]
    import copy

    assert copy.deepcopy(agg) is agg
    assert en.analyse(items_en + items_en[:3]).details["duplicate_items_dropped"] == 3


def test_strict_or_nan(tmp_path):
    write_toxicity_mirror(tmp_path, languages=("en",), n_per_class=10)
    task = ToxicityTask(config=_config(tmp_path, "en"))
    items = [StateItem(i, 1, HiddenState(np.ones((1, 4), np.float32), (-1,), 3, False), -1, f"t{i}") for i in range(6)]
    res = task.analyse(items)  # one class only
    assert math.isnan(res.values["bcv_ratio"]) and res.values["n_excluded"] == 0 and res.error
    strict = ToxicityTask(config=_config(tmp_path, "en", strict=True))
    with pytest.raises(Exception, match="safespace-toxicity-en"):
        strict.analyse(items)


def test_item_pickles_whole_and_prints_short():
    import pickle

    it = Item(7, 1, values={"margin": 0.5}, text="hello", language="de")
    back = pickle.loads(pickle.dumps(it))
    assert (back.key, back.label, back.values, back.order, back.language) == (7, 1, {"margin": 0.5}, it.order, "de")
    assert str(it) == "<doc 7>" and Item(1).order == ""


# --------------------------------------------------------------------------- generated YAML


def test_regenerating_the_task_configs_changes_nothing(tmp_path):
    spec = importlib.util.spec_from_file_location("gen", REPO / "task_configs" / "_generate_configs.py")
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    gen.main(tmp_path)
    assert set(gen.SINGLE_TASK_FAMILIES) == {"transfer", "units"}
    for family in [*gen.FAMILIES, *gen.SINGLE_TASK_FAMILIES, gen.REFUSAL["folder"]]:
        made = sorted(p.name for p in (tmp_path / family).glob("*.yaml"))
        have = sorted(p.name for p in (REPO / "task_configs" / family).glob("*.yaml"))
        assert made == have, family
        match, mismatch, errors = filecmp.cmpfiles(tmp_path / family, REPO / "task_configs" / family, made, shallow=False)
        assert not mismatch and not errors, (family, mismatch, errors)


def test_a_task_may_hold_several_languages(tmp_path):
    """The shape a cross-lingual task takes: ``languages()`` lists them, items carry their language."""
    write_toxicity_mirror(tmp_path, languages=("en", "de"), n_per_class=12)

    class TwoLanguages(ToxicityTask):
        def languages(self):
            return ["en", "de"]

        def item_of(self, doc, results):
            item = super().item_of(doc, results)
            item.language = doc["language"]
            return item

    task = TwoLanguages(config={**_config(tmp_path, "en"), "task": "two", "test_split": "en+de"})
    docs = list(task.dataset["en+de"])
    assert len(docs) == 48 and {d["language"] for d in docs} == {"en", "de"}
    assert set(task.data_reports) == {"en", "de"}
    rng = np.random.default_rng(0)
    items = []
    for d in docs:
        state = HiddenState(rng.normal(size=(1, 6)).astype(np.float32) + d["toxic"], (-1,), 4, False)
        items.append(task.item_of(d, [state]))
    res = task.analyse(items)
    # the same id in two languages is two docs, not a duplicate
    assert res.details["n_docs"] == 48 and res.details["duplicate_items_dropped"] == 0
    assert set(res.details["data"]) == {"en", "de"}


def test_validate_cli_args_reads_the_command_line_as_lm_eval_does():
    from safespace_tasks.harness.core import validate_cli_args

    ok = ["run", "--model", "hf", "--model_args", "pretrained=x", "--tasks", "safespace_toxicity", "--limit", "4"]
    validate_cli_args(ok + ["--metadata", '{"pca_components": 5}'])
    validate_cli_args(ok + ["--metadata", "pca_components=5", "seed=3"])
    with pytest.raises(SettingsError, match="(?i)did you mean pca_components"):
        validate_cli_args(ok + ["--metadata", '{"pca_componets": 5}'])
    with pytest.raises(SettingsError, match="pca_components=2.7"):
        validate_cli_args(["--tasks=safespace-toxicity-en", "--metadata", "pca_components=2.7"])


def test_pairs_with_identical_sides_leave_a_named_empty_language(tmp_path):
    rows = [{"toxic_sentence": "same words", "neutral_sentence": "same words"} for _ in range(12)]
    write_jsonl(tmp_path / "multilingual_paradetox" / "de.jsonl", rows)
    cfg = {**_config(tmp_path, "de"), "task": "safespace-paradetox-de", "dataset_path": "textdetox/multilingual_paradetox"}
    with pytest.raises(DataError, match=r"'de'.*12 rows.*12 excluded \(12 identical pairs\)"):
        ParaDetoxTask(config=cfg)
