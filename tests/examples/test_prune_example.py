"""examples/prune_safety_units.py on a tiny random model: it runs end to end on a few rows, and each
pruned variant differs from the parent only in the rows and columns of its units."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[2]


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "examples" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def run(tiny_model, mirror, tmp_path_factory):
    mod = _load("prune_safety_units")
    out = tmp_path_factory.mktemp("prune")
    # shares large enough that a 2-layer tiny model has several SCUs and RUs
    results = mod.main([str(tiny_model), "--out", str(out), "--n-calib", "6", "--n-requests", "2",
                        "--max-new-tokens", "3", "--n-ppl", "3", "--batch-size", "2", "--scu", "0.05",
                        "--ru", "0.2", "--data-dir", str(mirror)])
    return mod, results, out


def test_the_script_writes_every_variant(run):
    _, results, out = run
    saved = json.loads((out / "prune_results.json").read_text())
    assert list(saved["variants"]) == ["none", "SCU", "random", "RU"]
    table = (out / "prune_table.md").read_text()
    for name, r in saved["variants"].items():
        assert f"| {name} |" in table
        assert r["judge"]["n"] == 2 and len(r["replies"]) == 2
        assert np.isfinite(r["ppl_neutral_en"]) and np.isfinite(r["ppl_alpaca_heldout"])
    assert saved["variants"]["none"]["pruned"] == {"neurons": 0, "heads": 0, "kv_groups": 0}
    assert saved["variants"]["SCU"]["pruned"]["neurons"] + saved["variants"]["SCU"]["pruned"]["heads"] > 0
    assert saved["random_units"]["params"] >= saved["random_units"]["scu_params"] > 0
    assert saved["ablation"] == "mean" and saved["variants"]["SCU"]["pruned"]["ablation"] == "mean"  # the default


def _allowed(model, sel_mlp: np.ndarray, sel_attn: np.ndarray) -> dict[str, torch.Tensor]:
    """Per parameter, the entries pruning the selected units may change (rows in, columns out)."""
    cfg = model.config
    n_heads, n_kv = cfg.num_attention_heads, cfg.num_key_value_heads
    hd = cfg.hidden_size // n_heads
    allowed = {n: torch.zeros_like(p, dtype=torch.bool) for n, p in model.named_parameters()}
    for l in range(cfg.num_hidden_layers):
        pre = f"model.layers.{l}."
        neurons = torch.from_numpy(np.flatnonzero(sel_mlp[l]))
        for proj in ("gate_proj", "up_proj"):
            allowed[pre + f"mlp.{proj}.weight"][neurons, :] = True
        heads = np.flatnonzero(sel_attn[l])
        for h in heads:
            allowed[pre + "self_attn.q_proj.weight"][h * hd:(h + 1) * hd, :] = True
            allowed[pre + "self_attn.o_proj.weight"][:, h * hd:(h + 1) * hd] = True
        per = n_heads // n_kv
        for g in range(n_kv):
            if set(range(g * per, (g + 1) * per)) <= set(heads.tolist()):
                for proj in ("k_proj", "v_proj"):
                    allowed[pre + f"self_attn.{proj}.weight"][g * hd:(g + 1) * hd, :] = True
    return allowed


@pytest.mark.parametrize("variant", ["SCU", "random", "RU"])
def test_pruned_variants_differ_from_the_parent_only_in_their_units(run, tiny_model, variant):
    from safespace_tasks.unit_masks import load_mask, load_unit_stats

    mod, _, out = run
    mask = load_mask(out / "mask.safetensors")
    _, layout, _ = load_unit_stats(out / "unit_stats.safetensors")
    rand, _ = mod.random_mask(mask, layout.params_per_neuron, layout.params_per_head, seed=0)
    parent, _ = mod.load_variant(str(tiny_model), "none", mask, rand)
    child, _ = mod.load_variant(str(tiny_model), variant, mask, rand, ablation="zero")
    used, cls = {"SCU": (mask, "SCU"), "random": (rand, "SCU"), "RU": (mask, "RU")}[variant]
    sel_mlp, sel_attn = used.selected((cls,))
    assert sel_mlp.sum() + sel_attn.sum() > 0
    allowed = _allowed(parent, sel_mlp, sel_attn)
    pp, cp = dict(parent.named_parameters()), dict(child.named_parameters())
    changed_any = False
    for name, p in pp.items():
        diff = p.detach() != cp[name].detach()
        assert not (diff & ~allowed[name]).any(), f"{variant}: {name} changed outside the pruned units"
        assert (cp[name].detach()[allowed[name]] == 0).all(), f"{variant}: {name} has a pruned entry that is not zero"
        changed_any |= bool(diff.any())
    assert changed_any
    # mean-ablation (the default): the same weights, plus output-projection biases that carry the units' mean
    from safespace_tasks.ablation import calibration_means

    means = calibration_means(out / "unit_stats.safetensors")
    child, info = mod.load_variant(str(tiny_model), variant, mask, rand, means=means)
    assert info["ablation"] == "mean"
    zero_cp, cp = cp, dict(child.named_parameters())
    for name in pp:  # every weight as zero-ablation leaves it
        assert torch.equal(cp[name].detach(), zero_cp[name].detach()), name
    extra = sorted(set(cp) - set(pp))
    assert extra and all(n.endswith(("down_proj.bias", "o_proj.bias")) for n in extra)
    assert any(torch.count_nonzero(cp[n]) > 0 for n in extra)


def test_random_units_are_seeded_and_match_the_scu_budget(run):
    from safespace_tasks.unit_masks import load_mask, load_unit_stats

    mod, _, out = run
    mask = load_mask(out / "mask.safetensors")
    _, layout, _ = load_unit_stats(out / "unit_stats.safetensors")
    a, info = mod.random_mask(mask, layout.params_per_neuron, layout.params_per_head, seed=3)
    b, _ = mod.random_mask(mask, layout.params_per_neuron, layout.params_per_head, seed=3)
    c, _ = mod.random_mask(mask, layout.params_per_neuron, layout.params_per_head, seed=4)
    assert np.array_equal(a.mlp, b.mlp) and np.array_equal(a.attn, b.attn)
    assert not (np.array_equal(a.mlp, c.mlp) and np.array_equal(a.attn, c.attn))
    biggest = max(layout.params_per_neuron, layout.params_per_head)
    assert info["scu_params"] <= info["params"] < info["scu_params"] + biggest


# --------------------------------------------------------------------------- freezing


@pytest.mark.parametrize("mode", ["scu", "scu_cu"])
def test_frozen_units_are_bit_identical_after_training(run, tiny_model, mirror, mode):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    freeze = _load("freeze_safety_units")
    _, _, out = run
    tok = AutoTokenizer.from_pretrained(tiny_model)
    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    sel_mlp, sel_attn, info = freeze.frozen_selection(out, mode, top_cu=0.1)
    assert info["units"] > 0 and (mode == "scu" or info["top_cu_units"] > 0)
    frozen = freeze.unit_entries(model, sel_mlp, sel_attn)
    # the frozen entries are exactly the units' own weights (the entries pruning would zero, and down_proj columns)
    allowed = _allowed(model, sel_mlp, sel_attn)
    for name, m in frozen.items():
        if "down_proj" in name:
            l = int(name.split(".")[2])
            expect = torch.zeros_like(m)
            expect[:, torch.from_numpy(np.flatnonzero(sel_mlp[l]))] = True
            assert torch.equal(m, expect)
        else:
            assert torch.equal(m, allowed[name]), name
    train, _ = freeze.alpaca_split(mirror, 20, seed=0)
    losses = freeze.fine_tune(model, tok, train, frozen, steps=3, lr=1e-2, batch_size=2, seed=0, max_length=128)
    assert len(losses) == 3 and all(np.isfinite(losses))
    after = dict(model.named_parameters())
    moved = 0
    for name, p in after.items():
        p = p.detach()
        if name in frozen:
            assert torch.equal(p[frozen[name]], before[name][frozen[name]]), f"{name}: a frozen entry moved"
            moved += int((p[~frozen[name]] != before[name][~frozen[name]]).sum())
        else:
            moved += int((p != before[name]).sum())
    assert moved > 0  # the rest of the model did train


def test_without_freezing_the_same_units_move(run, tiny_model, mirror):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    freeze = _load("freeze_safety_units")
    _, _, out = run
    tok = AutoTokenizer.from_pretrained(tiny_model)
    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    sel_mlp, sel_attn, _ = freeze.frozen_selection(out, "scu", top_cu=0.1)
    units = freeze.unit_entries(model, sel_mlp, sel_attn)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    train, _ = freeze.alpaca_split(mirror, 20, seed=0)
    freeze.fine_tune(model, tok, train, {}, steps=3, lr=1e-2, batch_size=2, seed=0, max_length=128)
    params = dict(model.named_parameters())
    assert any(not torch.equal(params[n].detach()[m], before[n][m]) for n, m in units.items())
