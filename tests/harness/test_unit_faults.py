"""Regression tests for faults of the units tools: the mask fingerprint (path- and dtype-robust),
language-pair naming in any order, `safespace units` input checks before the model loads, the
no-template newline kept out of the scored response, and the help texts."""

from __future__ import annotations

import argparse
import json
import os
import shutil

import numpy as np
import pytest
import torch

from safespace_tasks import metric_table as mt
from safespace_tasks.stats.units import CLASSES, RunningStats, UnitLayout, UnitStatistics, jaccard, scu_ids


# ---------- the mask fingerprint ----------

@pytest.fixture(scope="module")
def loaded(tiny_model, tmp_path_factory):
    from transformers import AutoModelForCausalLM

    copy = tmp_path_factory.mktemp("elsewhere") / "same_weights"
    shutil.copytree(tiny_model, copy)
    load = lambda path, dtype: AutoModelForCausalLM.from_pretrained(path, dtype=dtype).eval()  # noqa: E731
    # the relative path is read from the copy's parent folder; the working folder is restored at once,
    # since later tests resolve a relative $SAFESPACE_DATA_DIR (CI sets ../shared/data) against it
    here = os.getcwd()
    os.chdir(copy.parent)
    try:
        return {"f32": load(str(tiny_model), torch.float32), "copy_relative": load("./same_weights", torch.float32),
                "bf16": load(str(tiny_model), torch.bfloat16), "copy_bf16": load("./same_weights", torch.bfloat16)}
    finally:
        os.chdir(here)


def test_fingerprint_ignores_folder_path_spelling_and_load_dtype(loaded):
    from safespace_tasks.unit_masks import weights_fingerprint

    prints = {k: weights_fingerprint(m) for k, m in loaded.items()}
    assert len({json.dumps(p, sort_keys=True) for p in prints.values()}) == 1, prints
    assert "name_or_path" not in prints["f32"]


def _mask_for(model, tmp_path):
    from safespace_tasks.capture import unit_layout
    from safespace_tasks.unit_masks import UnitMask, save_mask, weights_fingerprint

    layout = unit_layout(model)
    labels = np.zeros(layout.n_units, dtype=np.uint8)
    labels[[1, 5]] = CLASSES["SCU"]
    return save_mask(UnitMask.from_labels(labels, layout, {"model_fingerprint": weights_fingerprint(model)}),
                     tmp_path / "m.safetensors")


def test_a_float32_mask_applies_to_a_bfloat16_copy_but_not_to_changed_weights(loaded, tmp_path):
    from safespace_tasks.unit_masks import MaskError, check_mask, load_mask, prune_model

    mask = load_mask(_mask_for(loaded["f32"], tmp_path))
    check_mask(mask, loaded["copy_bf16"])
    check_mask(mask, loaded["copy_relative"])
    assert prune_model(loaded["copy_bf16"], mask)["neurons"] == 2
    tuned = type(loaded["f32"])(loaded["f32"].config).eval()
    tuned.load_state_dict(loaded["f32"].state_dict())
    with torch.no_grad():  # a fine-tuning step's worth: 2 % on a few weights of the first block
        tuned.model.layers[0].mlp.up_proj.weight[:4] *= 1.02
    with pytest.raises(MaskError, match="another model"):
        check_mask(mask, tuned)


def test_masks_with_the_old_fingerprint_still_load_from_another_folder(loaded, tmp_path):
    from safespace_tasks.unit_masks import MaskError, UnitMask, _fingerprint_v1, check_mask, load_mask

    old = {**_fingerprint_v1(loaded["f32"]), "name_or_path": "/somewhere/else"}
    mask = load_mask(_mask_for(loaded["f32"], tmp_path))
    legacy = UnitMask(mask.mlp, mask.attn, {"model_fingerprint": old})
    check_mask(legacy, loaded["copy_relative"])  # the path no longer has to match
    with pytest.raises(MaskError, match="another model"):
        check_mask(legacy, loaded["bf16"])  # the old hash was dtype-bound: recompute such a mask


# ---------- language pairs in any order ----------

def _fake(rng, count):
    return UnitStatistics({"mlp": RunningStats.of(rng.normal(size=(count, 2, 6)) * rng.uniform(0.5, 2, size=(1, 2, 6))),
                           "attn": RunningStats.of(rng.normal(size=(count, 2, 4)) * rng.uniform(0.5, 2, size=(1, 2, 4)))})


def test_pair_metrics_follow_multijail_order_whatever_order_the_languages_are_given(mirror):
    from lm_eval.tasks._yaml_loader import load_yaml

    from safespace_tasks import task_dir
    from safespace_tasks.harness.core import Item
    from safespace_tasks.harness.families.units import _RankStats
    from safespace_tasks.stats.units import ClassSettings, analyse, classify, merge_all, unit_scores

    meta = {"data_dir": str(mirror), "n_samples": 4, "languages": "th,zh,en", "scu": 0.2, "ru": 0.1, "ucu": 0.1}
    cfg = load_yaml(task_dir() / "units" / "safespace-units.yaml", resolve_func=True)
    cfg["metadata"] = {**cfg.get("metadata", {}), **meta}
    task = cfg.pop("class")(config=cfg)
    layout = UnitLayout(n_layers=2, n_neurons=6, n_heads=2, head_dim=2, mlp_out_sq_norm=np.ones((2, 6)),
                        attn_out_sq_norm=np.ones((2, 4)), params_per_neuron=3.0, params_per_head=6.0)
    rng = np.random.default_rng(3)
    acc = _RankStats()
    acc.layout = {"layout": layout, "fingerprint": None, "chat_template": True}
    per_set: dict[str, list] = {}
    items = []
    for doc in task.test_docs():
        st = _fake(rng, 5)
        acc.add((doc["language"], doc["half"]), doc["id"], st)
        per_set.setdefault(doc["language"], []).append(st)
        items.append(Item(doc["id"], response=acc, language=doc["language"]))
    values = task.compute(items).values
    cs = ClassSettings(ru=0.1, scu=0.2, ucu=0.1)
    z_u = analyse(merge_all(per_set["safety"]), merge_all(per_set["utility"]), layout, cs)["arrays"]["z_utility"]
    scu = {lang: scu_ids(classify(unit_scores(merge_all(per_set[lang]), layout), z_u, layout.unit_params(), cs))
           for lang in ("en", "zh", "th")}
    assert mt.units_language_pairs(["th", "zh", "en"]) == [("en", "zh"), ("en", "th"), ("zh", "th")]
    for a, b in mt.units_language_pairs(["th", "zh", "en"]):
        assert np.isfinite(values[f"jaccard_{a}_{b}"]), (a, b)
        assert values[f"jaccard_{a}_{b}"] == pytest.approx(jaccard(scu[a], scu[b]))
        assert np.isfinite(values[f"jaccard_random_{a}_{b}"])


# ---------- `safespace units` checks before the model loads ----------

@pytest.fixture()
def no_model_load(monkeypatch):
    import lm_eval.models.huggingface as hf

    from safespace_tasks import install

    install()  # subclasses and wraps HFLM: before the stand-in below

    def refuse(*a, **k):
        raise AssertionError("the model was loaded before the inputs were checked")

    monkeypatch.setattr(hf, "HFLM", refuse)


def _one_line_error(capsys, rc, *needles):
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1, err
    for n in needles:
        assert n in err, err


def test_units_stats_and_prune_check_inputs_before_loading(tmp_path, tiny_model, mirror, capsys, no_model_load):
    from safespace_tasks import units_cli

    empty = tmp_path / "empty"
    empty.mkdir()
    base = ["--out", str(tmp_path / "o"), "--data-dir", str(mirror)]
    _one_line_error(capsys, units_cli.main(["stats", "--model", str(tmp_path / "missing"), *base]), "does not exist")
    _one_line_error(capsys, units_cli.main(["stats", "--model", str(empty), *base]), "is empty")
    _one_line_error(capsys, units_cli.main(["stats", "--model", str(tiny_model), "--n", "500", *base]),
                    "--n 500", "at most")
    _one_line_error(capsys, units_cli.main(["stats", "--model", str(tiny_model), "--batch-size", "x", *base]), "--batch-size")
    mask = tmp_path / "mask.safetensors"
    _one_line_error(capsys, units_cli.main(["prune", "--model", str(empty), "--mask", str(mask), "--out", str(tmp_path / "p")]),
                    "is empty")
    _one_line_error(capsys, units_cli.main(["prune", "--model", str(tiny_model), "--mask", str(mask), "--out", str(tmp_path / "p")]),
                    "does not exist")


# ---------- the no-template newline is context ----------

def test_trailing_newline_of_the_context_is_not_scored(tiny_model):
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    from safespace_tasks import install, units_cli

    install()

    lm = HFLM(pretrained=str(tiny_model), device="cpu", dtype="float32", batch_size=1)
    ctx, resp = "How do I bake bread?\n", "Mix flour, water and yeast."
    got = lm.unit_statistics([Instance(request_type="unit_statistics", doc={}, arguments=(ctx, resp, {}), idx=0,
                                       metadata=("t", 0, 1))], disable_tqdm=True)[0]
    whole, head = lm.tok_encode(ctx + resp), lm.tok_encode(ctx)
    assert whole[: len(head)] == head
    assert got.count == len(whole) - len(head)
    _, moved = lm._encode_pair(ctx, resp)  # lm-eval's split puts the newline in the continuation
    assert len(moved) == got.count + 1
    # the units CLI without a template: 'request\n' then the response, no extra space
    pairs = units_cli.safety_requests(lm.tokenizer, 2, chat=False, data_dir=None)
    assert all(c.endswith("\n") and not r.startswith(" ") for c, r in pairs)


# ---------- help texts ----------

def test_units_subcommands_and_options_have_help():
    from safespace_tasks import units_cli

    parser = argparse.ArgumentParser(prog="safespace units")
    units_cli.add_arguments(parser)
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    assert sub.help
    for name, sp in sub.choices.items():
        assert sp.description, name
        for action in sp._actions:
            assert action.help, (name, action.dest)
    assert "bfloat16" in sub.choices["stats"].format_help() and "units mask" in sub.choices["prune"].format_help()
