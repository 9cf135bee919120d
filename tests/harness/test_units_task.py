"""The safespace_units task family: a safespace-eval run on a tiny model against an independent computation."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers import load_run, run_cli
from safespace_tasks import metric_table as mt
from safespace_tasks.stats.units import (
    CLASSES,
    ClassSettings,
    RunningStats,
    UnitStatistics,
    analyse,
    classify,
    expected_random_jaccard,
    jaccard,
    merge_all,
    scu_ids,
    unit_scores,
)

N = 4  # docs per set
LANGS = ("en", "zh", "it", "vi", "ar", "ko", "th", "bn", "sw", "jv")


@pytest.fixture(scope="module")
def units_run(tiny_model_long, mirror, tmp_path_factory):
    out = tmp_path_factory.mktemp("units_run")
    proc = run_cli(
        ["--model", "hf", "--model_args", f"pretrained={tiny_model_long},dtype=float32", "--device", "cpu",
         "--tasks", "safespace_units", "--batch_size", "1", "--output_path", str(out), "--log_samples",
         "--metadata", json.dumps({"n_samples": N})],
        env_extra={"SAFESPACE_DATA_DIR": str(mirror), "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-6000:]
    results, samples = load_run(out)
    return out, results, samples["safespace-units"]


def _direct_stats(model, tok, doc: dict) -> UnitStatistics:
    """One doc's statistics from plain hooks on the projections, tokenized here (not by the harness)."""
    chat = tok.apply_chat_template([{"role": "user", "content": doc["request"]}], tokenize=False, add_generation_prompt=True)
    enc = lambda text: tok(text)["input_ids"]  # noqa: E731 - the tokenizer's default special tokens, as HFLM
    if doc["tokens"] == "response":
        ctx = enc(chat)
        whole = enc(chat + doc["response"].strip())
        toks, start = whole, len(ctx)
    else:  # the request's own tokens only; the template before it is context, after it is dropped
        prefix = chat[: chat.rindex(doc["request"])]
        toks, start = enc(prefix + doc["request"]), len(enc(prefix))
        assert toks[:start] == enc(prefix)
    seen: dict[tuple[str, int], torch.Tensor] = {}
    handles = []
    for i, layer in enumerate(model.model.layers):
        for site, mod in (("mlp", layer.mlp.down_proj), ("attn", layer.self_attn.o_proj)):
            handles.append(mod.register_forward_pre_hook(lambda m, a, key=(site, i): seen.__setitem__(key, a[0][0].double())))
    with torch.no_grad():
        model(torch.tensor([toks]))
    for h in handles:
        h.remove()
    n_layers = len(model.model.layers)
    sites = {}
    for site in ("mlp", "attn"):
        per_layer = [RunningStats.of(seen[(site, i)][start:].numpy()) for i in range(n_layers)]
        sites[site] = RunningStats(per_layer[0].count, np.stack([p.mean for p in per_layer]), np.stack([p.m2 for p in per_layer]))
    return UnitStatistics(sites)


def test_run_equals_analyse_on_directly_computed_statistics(units_run, tiny_model_long):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from safespace_tasks.capture import unit_layout

    _, results, samples = units_run
    row = results["results"]["safespace-units"]
    assert len(samples) == N * (2 + len(LANGS)) and row["n_truncated,none"] == 0
    model = AutoModelForCausalLM.from_pretrained(tiny_model_long, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(tiny_model_long)
    groups: dict[tuple[str, int], list[UnitStatistics]] = {}
    for s in samples:
        doc = s["doc"]
        groups.setdefault((doc["set"], doc["half"]), []).append(_direct_stats(model, tok, doc))
    sets = {name: merge_all([st for (n, _), v in groups.items() if n == name for st in v])
            for name in {n for n, _ in groups}}
    layout = unit_layout(model)
    cs = ClassSettings()
    res = analyse(sets["safety"], sets["utility"], layout, cs)
    for cls, v in res["shares"].items():
        assert row[f"{cls.lower()}_param_share,none"] == pytest.approx(v["params"], abs=1e-12)
        assert row[f"{cls.lower()}_unit_share,none"] == pytest.approx(v["units"], abs=1e-12)
        for kind in ("mlp", "attn"):
            assert row[f"{cls.lower()}_share_{kind},none"] == pytest.approx(res["per_type"][kind][cls]["units"], abs=1e-12)
    assert row["safety_profile_mean,none"] == pytest.approx(np.nanmean(res["profile"]), rel=1e-6)
    z_u, params = res["arrays"]["z_utility"], layout.unit_params()
    scu = {lang: scu_ids(classify(unit_scores(sets[lang], layout), z_u, params, cs)) for lang in LANGS}
    safety_scu = scu_ids(res["arrays"]["labels"])
    assert row["n_scu,none"] == len(safety_scu) > 0
    for i, a in enumerate(LANGS):
        assert row[f"jaccard_safety_{a},none"] == pytest.approx(jaccard(safety_scu, scu[a]))
        for b in LANGS[i + 1:]:
            assert row[f"jaccard_{a}_{b},none"] == pytest.approx(jaccard(scu[a], scu[b]))
            assert row[f"jaccard_random_{a}_{b},none"] == pytest.approx(
                expected_random_jaccard(layout.n_units, len(scu[a]), len(scu[b])))
    for name in ("safety", "en"):
        halves = [scu_ids(classify(unit_scores(merge_all(groups[(name, h)]), layout), z_u, params, cs)) for h in (0, 1)]
        assert row[f"split_half_{name},none"] == pytest.approx(jaccard(*halves))
        assert row[f"split_half_random_{name},none"] == pytest.approx(
            expected_random_jaccard(layout.n_units, len(halves[0]), len(halves[1])))
    # the same requests in every language: MultiJail rows are aligned across languages
    ids = {lang: sorted(s["doc"]["id"] for s in samples if s["doc"]["set"] == lang) for lang in LANGS}
    assert all(ids[lang] == ids["en"] for lang in LANGS)


def test_files_beside_the_results_feed_mask_and_prune(units_run, tiny_model_long, tmp_path):
    from lm_eval.models.huggingface import HFLM

    from safespace_tasks import units_cli
    from safespace_tasks.unit_masks import load_mask, load_unit_stats

    out, results, _ = units_run
    folder = next(out.rglob("results_*.json")).parent
    summary = json.loads(next(folder.glob("safespace_units_safespace-units_*.json")).read_text())
    assert len(summary["per_layer"]) == 2 and summary["overlap"]["languages"] == list(LANGS)
    assert np.asarray(summary["overlap"]["jaccard"]).shape == (10, 10)
    sets, layout, info = load_unit_stats(next(folder.glob("safespace_units_safespace-units_*.safetensors")))
    assert {"safety", "utility", "safety_half0", "safety_half1", "mj_en_half0"} <= set(sets)
    assert {f"mj_{lang}" for lang in LANGS} <= set(sets) and sets["mj_th"].n_docs == N
    assert info["chat_template"] is True
    mask_path = tmp_path / "mask.safetensors"
    assert units_cli.main(["mask", "--from-run", str(out), "--out", str(mask_path)]) == 0
    mask = load_mask(mask_path)
    row = results["results"]["safespace-units"]
    n_scu = int((mask.mlp == CLASSES["SCU"]).sum() + (mask.attn == CLASSES["SCU"]).sum())
    assert n_scu == row["n_scu,none"]
    assert units_cli.main(["mask", "--from-run", str(out), "--out", str(tmp_path / "th.safetensors"),
                           "--safety-set", "mj_th"]) == 0
    assert units_cli.main(["mask", "--from-run", str(out), "--out", str(tmp_path / "x.safetensors"),
                           "--safety-set", "mj_xx"]) == 2  # a clear error, not a traceback
    pruned = tmp_path / "pruned"
    assert units_cli.main(["prune", "--model", str(tiny_model_long), "--mask", str(mask_path), "--out", str(pruned)]) == 0
    lm = HFLM(pretrained=str(pruned), device="cpu", dtype="float32", batch_size=1)  # what --model hf does
    neurons = np.argwhere(mask.mlp == CLASSES["SCU"])
    for layer, j in neurons:
        assert torch.count_nonzero(lm.model.model.layers[layer].mlp.gate_proj.weight[j]) == 0
    other = lm.model.model.layers[0].mlp.gate_proj.weight
    assert torch.count_nonzero(other) > 0


def test_settings_are_checked_before_the_model_runs():
    from safespace_tasks.harness.core import SettingsError, validate_metadata

    validate_metadata("safespace_units", {"n_samples": 64, "languages": "en,th", "chat_template": False})
    with pytest.raises(SettingsError, match="exceed 1"):
        validate_metadata("safespace_units", {"ru": 0.6, "scu": 0.2, "ucu": 0.3})
    with pytest.raises(SettingsError, match="n_samples"):
        validate_metadata("safespace_units", {"n_samples": 500})
    with pytest.raises(SettingsError, match="unknown: xx"):
        validate_metadata("safespace_units", {"languages": "en,xx"})
    with pytest.raises(SettingsError, match="once"):
        validate_metadata("safespace_units", {"languages": "en,en"})
    with pytest.raises(SettingsError, match="must be even"):
        validate_metadata("safespace_units", {"null_groups": 7})
    with pytest.raises(SettingsError, match="token_weighting"):
        validate_metadata("safespace_units", {"token_weighting": "tokens"})
    validate_metadata("safespace_units", {"token_weighting": "request", "null_permutations": 0, "null_groups": 4})


def test_metric_table_rows_follow_the_languages():
    from safespace_tasks.data import MULTIJAIL_LANGUAGES

    assert mt.UNITS_LANGUAGES == MULTIJAIL_LANGUAGES
    names = mt.family_metrics("units")
    chosen = [m for m in names if mt.units_metric_applies(m, ["th", "en"])]
    assert "jaccard_en_th" in chosen and "jaccard_random_en_th" in chosen and "split_half_en" in chosen
    assert not any(m.startswith("jaccard_") and ("zh" in m.split("_")) for m in chosen)
    no_en = [m for m in names if mt.units_metric_applies(m, ["th", "zh"])]
    assert "split_half_en" not in no_en and "jaccard_zh_th" in no_en
    pairs = [m for m in names if m.startswith("jaccard_random_") and "safety" not in m]
    assert len(pairs) == 45 and len(set(pairs)) == 45


def test_prompt_mode_with_chat_template_scores_only_the_request_tokens(tiny_model_long):
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    from safespace_tasks import install

    install()

    lm = HFLM(pretrained=str(tiny_model_long), device="cpu", dtype="float32", batch_size=2)
    req = "How do I pick a lock?"
    inst = lambda opts: Instance(request_type="unit_statistics", doc={}, arguments=(req, "", opts), idx=0,  # noqa: E731
                                 metadata=("t", 0, 1))
    chat, raw = lm.unit_statistics([inst({"tokens": "prompt", "chat_template": True}),
                                    inst({"tokens": "prompt"})], disable_tqdm=True)
    n_req = len(lm.tokenizer(req, add_special_tokens=False)["input_ids"])
    assert chat.count == n_req == raw.count  # the template's tokens are not scored
    assert not np.allclose(chat.sites["mlp"].mean, raw.sites["mlp"].mean)  # but the template is context


def test_regenerating_the_units_configs_changes_nothing(tmp_path):
    import filecmp
    import importlib.util

    repo = Path(__file__).resolve().parents[2]
    spec = importlib.util.spec_from_file_location("gen", repo / "task_configs" / "_generate_configs.py")
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    gen.main(tmp_path)
    for family in gen.SINGLE_TASK_FAMILIES:
        made = sorted(p.name for p in (tmp_path / family).glob("*.yaml"))
        assert made == sorted(p.name for p in (repo / "task_configs" / family).glob("*.yaml"))
        _, mismatch, errors = filecmp.cmpfiles(tmp_path / family, repo / "task_configs" / family, made, shallow=False)
        assert not mismatch and not errors


def _fake_stats(rng, count: int) -> UnitStatistics:
    return UnitStatistics({site: RunningStats.of(rng.normal(size=(count, 2, width)))
                           for site, width in (("mlp", 6), ("attn", 4))})


def test_ranks_ship_merged_statistics_and_a_doc_is_never_counted_twice(mirror):
    """Two processes' accumulators (pickled, as lm-eval gathers them) merge to the one-process numbers."""
    import pickle

    from safespace_tasks import task_manager
    from safespace_tasks.harness.families.units import _RankStats
    from safespace_tasks.stats.units import UnitsError

    meta = {"data_dir": str(mirror), "n_samples": 2, "languages": "en"}
    task = task_manager(metadata=meta).load(["safespace-units"])["tasks"]["safespace-units"]
    docs = list(task.test_docs())
    rng = np.random.default_rng(0)
    per_doc = [_fake_stats(rng, 3 + i) for i in range(len(docs))]
    whole = _RankStats()
    ranks = [_RankStats(), _RankStats()]
    items = []
    for i, (doc, st) in enumerate(zip(docs, per_doc)):
        group = (doc["language"], doc["half"])
        whole.add(group, doc["id"], st)
        ranks[i % 2].add(group, doc["id"], st)
        items.append((i % 2, doc))
    ranks[0].layout = whole.layout = {"layout": None}
    shipped = pickle.loads(pickle.dumps(ranks))
    from safespace_tasks.harness.core import Item

    gathered = [Item(d["id"], response=shipped[r], language=d["language"]) for r, d in items]
    merged, _ = task._merged(gathered)
    assert set(merged) == set(whole.stats)
    for group, st in whole.stats.items():
        for site in ("mlp", "attn"):
            np.testing.assert_allclose(merged[group].sites[site].m2, st.sites[site].m2, rtol=1e-12)
            assert merged[group].sites[site].count == st.sites[site].count
    assert sum(m.n_docs for m in merged.values()) == len(docs)
    ranks[1].add((docs[0]["language"], docs[0]["half"]), docs[0]["id"], per_doc[0])  # the same doc on both ranks
    with pytest.raises(UnitsError, match="two processes"):
        task._merged([Item(d["id"], response=ranks[r], language=d["language"]) for r, d in items])


def test_compare_two_runs(units_run, tmp_path, capsys):
    """``units compare``: a run against itself keeps every class; against a file whose English set is
    the Thai one, its English SCU Jaccard is the English-vs-Thai Jaccard computed here directly."""
    from safespace_tasks import units_cli
    from safespace_tasks.unit_masks import MaskError, load_unit_stats, save_unit_stats
    from safespace_tasks.stats.units import ClassSettings, analyse

    out, _, _ = units_run
    stats = units_cli.run_stats_file(out)
    same = units_cli.compare_runs(stats, stats)
    assert set(same["sets"]) == {"safety", *(f"mj_{lang}" for lang in LANGS)}
    for r in same["sets"].values():
        assert r["scu_jaccard"] == 1.0 and r["scu_kept"] == 1.0
        t = r["transitions"]
        assert all(t[a][b] == 0 for a in t for b in t[a] if a != b)
        assert r["scu_jaccard_random"] < 0.2
    sets, layout, info = load_unit_stats(stats)
    swapped = {**sets, "mj_en": sets["mj_th"]}
    other = save_unit_stats(tmp_path / "b" / "safespace_units_x.safetensors", swapped, layout, {})
    res = units_cli.compare_runs(stats, other)
    lab = lambda name: analyse(sets[name], sets["utility"], layout, ClassSettings())["arrays"]["labels"]  # noqa: E731
    en, th = lab("mj_en") == CLASSES["SCU"], lab("mj_th") == CLASSES["SCU"]
    assert res["sets"]["mj_en"]["scu_jaccard"] == pytest.approx((en & th).sum() / (en | th).sum())
    assert res["sets"]["mj_th"]["scu_jaccard"] == 1.0
    assert sum(res["sets"]["mj_en"]["transitions"]["SCU"].values()) == en.sum()
    assert units_cli.main(["compare", "--from-run", str(out), "--to-run", str(tmp_path / "b"),
                           "--out", str(tmp_path / "c.json")]) == 0
    assert "mj_en" in capsys.readouterr().out and json.loads((tmp_path / "c.json").read_text())["sets"]
    import dataclasses

    bad = save_unit_stats(tmp_path / "c" / "s.safetensors", sets, dataclasses.replace(layout, model_class="OtherForCausalLM"), {})
    with pytest.raises(MaskError, match="different unit layouts"):
        units_cli.compare_runs(stats, bad)


def test_run_reports_the_shared_utility_null_as_computed_directly(units_run, tiny_model_long):
    """The run's ``jaccard_null_*`` / ``jaccard_p_*``, the floors and own-utility split halves equal
    :mod:`safespace_tasks.stats.unit_nulls` on per-group statistics computed here with plain hooks."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from safespace_tasks.capture import unit_layout
    from safespace_tasks.stats.unit_nulls import overlap_null, split_half_own_utility

    _, results, samples = units_run
    row = results["results"]["safespace-units"]
    model = AutoModelForCausalLM.from_pretrained(tiny_model_long, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(tiny_model_long)
    groups: dict[tuple[str, int], list[UnitStatistics]] = {}
    ids: dict[tuple[str, int], set[int]] = {}
    wanted = {"safety", "utility", "en", "th", "zh"}
    for s in samples:
        doc = s["doc"]
        if doc["set"] in wanted:
            groups.setdefault((doc["set"], doc["group"]), []).append(_direct_stats(model, tok, doc))
            ids.setdefault((doc["set"], doc["group"]), set()).add(doc["id"])
    assert all(ids[("en", g)] == ids[("th", g)] for n, g in ids if n == "en")  # the same requests group by group
    merged = {k: merge_all(v) for k, v in groups.items()}
    of = lambda name: [merged[k] for k in sorted(merged) if k[0] == name]  # noqa: E731
    layout = unit_layout(model)
    cs = ClassSettings()
    z_u = unit_scores(merge_all(of("utility")), layout)
    for a, b, paired in (("en", "th", True), ("zh", "th", True), ("safety", "th", False)):
        res = overlap_null(of(a), of(b), z_u, layout, cs, n_perm=128, seed=1234, paired=paired)
        name = f"{a}_{b}"
        assert row[f"jaccard_null_{name},none"] == pytest.approx(res["null"])
        assert row[f"jaccard_p_{name},none"] == pytest.approx(res["p"])
        assert row[f"jaccard_floor_{name},none"] == pytest.approx(res["floor"])
        assert row[f"jaccard_p_floor_{name},none"] == pytest.approx(res["p_floor"])
        assert 0 < res["p"] <= 1 and res["exhaustive"] == paired and 0 < res["p_floor"] <= 1
        if a != "safety":
            assert row[f"jaccard_{name},none"] == pytest.approx(res["jaccard"])
    half = lambda name, h: merge_all([merged[k] for k in sorted(merged) if k[0] == name and (k[1] >= 4) == h])  # noqa: E731
    for name in ("safety", "en"):
        res = split_half_own_utility([half(name, 0), half(name, 1)], [half("utility", 0), half("utility", 1)], layout, cs)
        assert row[f"split_half_own_utility_{name},none"] == pytest.approx(res["jaccard"])
    assert row["jaccard_p_en_zh,none"] > 0 and "jaccard_null_safety_en,none" in row


def test_request_weighting_gives_each_request_equal_weight(mirror):
    """``token_weighting: request``: the classes come from equal-weight moments, computed here with numpy
    from the same per-request token activations (no model: statistics fed to the task directly)."""
    from safespace_tasks.harness.families.units import SafetyUnitsTask
    from safespace_tasks.stats.units import UnitLayout

    import dataclasses

    results = {}
    rng = np.random.default_rng(5)
    acts: dict[int, dict[str, np.ndarray]] = {}
    meta = {"data_dir": str(mirror), "n_samples": 6, "languages": "en", "ru": 0.2, "scu": 0.2, "ucu": 0.2,
            "null_permutations": 0}
    task = SafetyUnitsTask(config={"task": "safespace-units", "dataset_path": "safespace/units", "test_split": "units",
                                   "doc_to_text": "request", "doc_to_target": "response", "metadata": meta})
    assert task.settings.token_weighting == "token"  # the default
    docs = list(task.test_docs())
    for weighting in ("token", "request"):
        task.settings = dataclasses.replace(task.settings, token_weighting=weighting)
        task._acc = type(task._acc)()
        layout = UnitLayout(2, 6, 2, 2, np.ones((2, 6)), np.ones((2, 4)), 3.0, 4.0)
        items = []
        for i, doc in enumerate(docs):
            key = (doc["set"], doc["id"])
            if key not in acts:  # lengths 1..40 tokens: pooled over tokens, the long requests dominate
                t = int(rng.integers(1, 40))
                acts[key] = {"mlp": rng.normal(size=(t, 2, 6)) * rng.uniform(0.2, 3, (1, 2, 6)),
                             "attn": rng.normal(size=(t, 2, 4)) * rng.uniform(0.2, 3)}
            st = UnitStatistics({s: RunningStats.of(a) for s, a in acts[key].items()})
            answer = [st, {"layout": layout}] if i == 0 else [st]
            items.append(task.item_of(doc, answer))
        results[weighting] = task.compute(items).outputs.units
    for weighting, pending in results.items():
        for name in ("safety", "utility"):
            xs = [a for (s, _), a in acts.items() if s == name]
            for site in ("mlp", "attn"):
                if weighting == "token":
                    tokens = np.concatenate([x[site] for x in xs])
                    expect = tokens.var(axis=0)
                else:
                    m = np.stack([x[site].mean(axis=0) for x in xs])
                    v = np.stack([x[site].var(axis=0) for x in xs])
                    expect = v.mean(axis=0) + ((m - m.mean(axis=0)) ** 2).mean(axis=0)
                np.testing.assert_allclose(pending["sets"][name].sites[site].variance(), expect, rtol=1e-9)
    assert results["request"]["summary"]["token_weighting"] == "request"
    assert not np.array_equal(results["token"]["arrays"]["arrays.z_safety"], results["request"]["arrays"]["arrays.z_safety"])
