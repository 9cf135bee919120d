"""examples/freeze_safety_units.py on a tiny random Llama with a fabricated units run (random unit
statistics, the mask cut from them): the paper's settings select the right units, the step factor is
applied, the frozen entries stay bit-identical, and the results carry the XSTest over-refusal."""

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


freeze = _load("freeze_safety_units")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, sample_texts):
    from helpers import build_tiny_llama

    return build_tiny_llama(tmp_path_factory.mktemp("freeze_tiny") / "llama", sample_texts, max_position_embeddings=512)


@pytest.fixture(scope="module")
def units_dir(model_dir, tmp_path_factory):
    """unit_stats.safetensors (random per-channel statistics) and mask.safetensors (classes cut from them)."""
    from transformers import AutoModelForCausalLM

    from safespace_tasks.capture import unit_layout
    from safespace_tasks.unit_masks import UnitMask, save_mask, save_unit_stats
    from safespace_tasks.stats.units import ClassSettings, RunningStats, UnitStatistics, analyse

    model = AutoModelForCausalLM.from_pretrained(model_dir)
    layout = unit_layout(model)
    rng = np.random.default_rng(0)

    def stats():
        sites = {"mlp": (layout.n_layers, layout.n_neurons), "attn": (layout.n_layers, layout.n_heads * layout.head_dim)}
        return UnitStatistics({k: RunningStats(50, rng.normal(size=s), rng.gamma(2.0, 5.0, size=s)) for k, s in sites.items()},
                              n_docs=5, n_tokens=50)

    sets = {"safety": stats(), "utility": stats()}
    shares = {"ru": 0.2, "scu": 0.05, "ucu": 0.1}
    labels = analyse(sets["safety"], sets["utility"], layout, ClassSettings(**shares))["arrays"]["labels"]
    out = tmp_path_factory.mktemp("units_run")
    save_unit_stats(out / "unit_stats.safetensors", sets, layout, {"note": "fabricated for tests"})
    save_mask(UnitMask.from_labels(labels, layout, {"shares": shares}), out / "mask.safetensors")
    return out


def _flat(sel_mlp, sel_attn):
    return np.concatenate([sel_mlp, sel_attn], axis=1)


def test_modes_select_nested_unit_sets(units_dir):
    from safespace_tasks.unit_masks import load_mask

    mask = load_mask(units_dir / "mask.safetensors")
    scu_m, scu_a = mask.selected(("SCU",))
    cu_m, cu_a = mask.selected(("CU",))
    assert scu_m.sum() + scu_a.sum() > 0 and cu_m.sum() + cu_a.sum() > 10
    sel = {m: freeze.frozen_selection(units_dir, m, top_cu=0.06) for m in freeze.MODES}
    flat = {m: _flat(a, b) for m, (a, b, _) in sel.items()}
    assert not flat["none"].any() and sel["none"][2]["units"] == 0
    assert np.array_equal(flat["scu"], _flat(scu_m, scu_a))
    # scu ⊆ scu_cu ⊆ scu_allcu, and allcu is exactly the SCUs plus every unit the mask labels CU
    assert not (flat["scu"] & ~flat["scu_cu"]).any()
    assert not (flat["scu_cu"] & ~flat["scu_allcu"]).any()
    assert np.array_equal(flat["scu_allcu"], _flat(scu_m | cu_m, scu_a | cu_a))
    extra = flat["scu_cu"] & ~flat["scu"]
    assert extra.any() and np.array_equal(extra & _flat(cu_m, cu_a), extra)  # the added units are CUs
    info = sel["scu_cu"][2]
    assert info["top_cu_units"] == int(extra.sum()) < info["cu_units_in_mask"]
    assert sel["scu_allcu"][2]["units"] == sel["scu_allcu"][2]["scu_units"] + sel["scu_allcu"][2]["cu_units_in_mask"]
    # a larger share freezes more of the top CUs, and the top 6 % are among the top 20 %
    bigger = _flat(*freeze.frozen_selection(units_dir, "scu_cu", top_cu=0.2)[:2])
    assert bigger.sum() > flat["scu_cu"].sum() and not (flat["scu_cu"] & ~bigger).any()
    with pytest.raises(SystemExit, match="unknown mode"):
        freeze.frozen_selection(units_dir, "all", top_cu=0.06)


def test_random_modes_match_counts_and_are_seeded(units_dir):
    """The controls freeze as many neurons and heads as the mode they match, at random; a fixed seed
    gives the same draw, another seed another one, and the overlap with the matched set is counted."""
    for mode in ("scu", "scu_cu", "scu_allcu"):
        ref_m, ref_a, _ = freeze.frozen_selection(units_dir, mode, top_cu=0.06)
        m, a, info = freeze.frozen_selection(units_dir, f"random_{mode}", top_cu=0.06, seed=3)
        assert (m.sum(), a.sum()) == (ref_m.sum(), ref_a.sum()) == (info["neurons"], info["heads"])
        assert info["matched_mode"] == mode and info["overlap_units"] == int((m & ref_m).sum() + (a & ref_a).sum())
        m2, a2, _ = freeze.frozen_selection(units_dir, f"random_{mode}", top_cu=0.06, seed=3)
        assert np.array_equal(m, m2) and np.array_equal(a, a2)
    m, _, _ = freeze.frozen_selection(units_dir, "random_scu_cu", top_cu=0.06, seed=3)
    other, _, _ = freeze.frozen_selection(units_dir, "random_scu_cu", top_cu=0.06, seed=4)
    assert not np.array_equal(m, other)
    # the SCU control is not the SCU set (a random draw of a 1 % set almost never is)
    ref_m, ref_a, _ = freeze.frozen_selection(units_dir, "scu", top_cu=0.06)
    rm, ra, info = freeze.frozen_selection(units_dir, "random_scu", top_cu=0.06, seed=0)
    assert info["overlap_units"] < info["units"]


def test_step_factors_parse_and_apply():
    assert freeze.parse_step_factors(freeze.DEFAULT_STEP_FACTORS) == {"scu_allcu": 2.0, "random_scu_allcu": 2.0}
    assert freeze.parse_step_factors("scu=1.5, scu_allcu=3") == {"scu": 1.5, "scu_allcu": 3.0}
    assert freeze.parse_step_factors("") == {}
    assert freeze.mode_steps(30, 2.0) == 60 and freeze.mode_steps(3, 0.1) == 1
    for bad in ("scu_allcu", "bogus=2", "scu=x", "scu=0"):
        with pytest.raises(SystemExit, match="--step-factor"):
            freeze.parse_step_factors(bad)
    args = freeze.parse_args(["m", "--units", "u", "--out", "o"])
    assert args.modes == "none,scu,scu_cu,scu_allcu" and args.top_cu == 0.06 and args.n_xstest == 250


def test_end_to_end_results_keys_steps_and_frozen_entries(model_dir, units_dir, mirror, tmp_path):
    out = tmp_path / "freeze"
    res = freeze.main([str(model_dir), "--units", str(units_dir), "--out", str(out), "--steps", "2", "--lr", "1e-2",
                       "--batch-size", "2", "--n-requests", "2", "--n-xstest", "3", "--n-heldout", "3",
                       "--max-new-tokens", "3", "--gen-batch-size", "3", "--data-dir", str(mirror)])
    saved = json.loads((out / "freeze_results.json").read_text())
    assert list(saved["modes"]) == ["none", "scu", "scu_cu", "scu_allcu"]
    assert saved["step_factors"] == {"none": 1.0, "scu": 1.0, "scu_cu": 1.0, "scu_allcu": 2.0}
    assert saved["counts"]["xstest_safe"] == 3 and saved["counts"]["alpaca_heldout"] == 3
    for block in [saved["before"]] + [r["after"] for r in saved["modes"].values()]:
        assert set(block) == {"advbench", "alpaca_heldout", "xstest_safe"}
        assert block["xstest_safe"]["n"] == 3 and block["advbench"]["n"] == 2
        for rates in block.values():
            for key in ("refusal_rate", "refusal_rate_cue", "attack_success_rate", "coherent_attack_success_rate",
                        "degeneration_rate"):
                assert 0 <= rates[key] <= 1
    for mode, r in saved["modes"].items():
        assert r["steps"] == (4 if mode == "scu_allcu" else 2) and len(r["losses"]) == r["steps"]
        assert r["step_factor"] == saved["step_factors"][mode]
        assert r["frozen_unchanged"] is True
        assert np.all(np.isfinite(r["losses"]))
    units = [saved["modes"][m]["selection"]["units"] for m in ("none", "scu", "scu_cu", "scu_allcu")]
    assert units[0] == 0 < units[1] < units[2] < units[3]
    entries = [saved["modes"][m]["frozen_entries"] for m in ("scu", "scu_cu", "scu_allcu")]
    assert entries == sorted(entries) and entries[0] > 0
    # the same seeded batches and weights: the first loss of every mode is the same
    assert saved["modes"]["scu_allcu"]["losses"][0] == pytest.approx(saved["modes"]["none"]["losses"][0])
    table = (out / "freeze_table.md").read_text().splitlines()
    assert "over-refusal XSTest safe (cue)" in table[0] and "coherent attack success" in table[0]
    assert len(table) == 2 + 4 and table[-1].startswith("| scu_allcu |") and "| 4 |" in table[-1]
    assert res["modes"].keys() == saved["modes"].keys()
    # a control run reuses the measures before fine-tuning; it equals measuring them again (greedy),
    # its random units match scu_allcu's counts and train as long, and --table puts both runs together
    common = [str(model_dir), "--units", str(units_dir), "--steps", "2", "--lr", "1e-2", "--batch-size", "2",
              "--n-requests", "2", "--n-xstest", "3", "--n-heldout", "3", "--max-new-tokens", "3",
              "--gen-batch-size", "3", "--data-dir", str(mirror), "--modes", "random_scu_allcu"]
    ctl = freeze.main(common + ["--out", str(tmp_path / "ctl"), "--reuse-before", str(out)])
    assert freeze._canonical(ctl["before"]) == freeze._canonical(saved["before"])
    r = ctl["modes"]["random_scu_allcu"]
    assert r["steps"] == 4 and r["frozen_unchanged"] is True
    assert (r["selection"]["neurons"], r["selection"]["heads"]) == (
        saved["modes"]["scu_allcu"]["selection"]["neurons"], saved["modes"]["scu_allcu"]["selection"]["heads"])
    again = freeze.main(common + ["--out", str(tmp_path / "ctl2")])
    assert freeze._canonical(again["before"]) == freeze._canonical(saved["before"])
    merged = freeze.main(["--table", str(out), str(tmp_path / "ctl")])["table"].splitlines()
    assert len(merged) == 2 + 5 and merged[-1].startswith("| random_scu_allcu |")
    bad = list(common)
    bad[bad.index("--n-requests") + 1] = "1"
    with pytest.raises(SystemExit, match="other settings .*n_requests"):
        freeze.main(bad + ["--out", str(tmp_path / "x"), "--reuse-before", str(out)])


def test_frozen_entries_bit_identical_with_every_cu_frozen(model_dir, units_dir, mirror):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    sel_mlp, sel_attn, _ = freeze.frozen_selection(units_dir, "scu_allcu", top_cu=0.06)
    frozen = freeze.unit_entries(model, sel_mlp, sel_attn)
    train, _ = freeze.alpaca_split(mirror, 20, seed=0)
    freeze.fine_tune(model, tok, train, frozen, steps=3, lr=1e-2, batch_size=2, seed=0, max_length=128)
    moved = 0
    for name, p in model.named_parameters():
        p = p.detach()
        if name in frozen:
            assert torch.equal(p[frozen[name]], before[name][frozen[name]]), name
            moved += int((p[~frozen[name]] != before[name][~frozen[name]]).sum())
        else:
            moved += int((p != before[name]).sum())
    assert moved > 0


def test_missing_xstest_folder_names_it(model_dir, units_dir, tmp_path, mirror):
    import shutil

    root = tmp_path / "mirror"
    for sub in ("advbench", "alpaca_seed_tasks"):
        shutil.copytree(mirror / sub, root / sub)
    with pytest.raises(SystemExit, match="xstest.*--n-xstest 0"):
        freeze.main([str(model_dir), "--units", str(units_dir), "--out", str(tmp_path / "o"), "--n-requests", "1",
                     "--data-dir", str(root), "--modes", "none"])


def test_table_merges_runs_with_the_same_before_and_refuses_others(tmp_path):
    def run(modes, before_refusal=0.91):
        before = {"advbench": {"refusal_rate": before_refusal, "refusal_rate_cue": 0.89},
                  "alpaca_heldout": {"refusal_rate": 0.15}}
        return {"model": "twin", "before": before, "modes": {
            m: {"selection": {"units": u}, "steps": st, "frozen_unchanged": True,
                "after": {"advbench": {"refusal_rate": r, "refusal_rate_cue": r}, "alpaca_heldout": {"refusal_rate": 0.05}}}
            for m, (u, st, r) in modes.items()}}

    a = run({"none": (0, 30, 0.32), "scu_allcu": (900, 60, 0.40)})
    b = run({"none": (0, 60, 0.20)})
    for name, res in (("a", a), ("b", b), ("other", run({"scu": (5, 30, 0.5)}, before_refusal=0.5))):
        (tmp_path / name).mkdir()
        (tmp_path / name / "freeze_results.json").write_text(json.dumps(res))
    got = freeze.main(["--table", str(tmp_path / "a"), str(tmp_path / "b" / "freeze_results.json"),
                       "--table-out", str(tmp_path / "t.md")])["table"]
    assert (tmp_path / "t.md").read_text() == got
    rows = [line for line in got.splitlines()[2:]]
    assert [r.split(" | ")[0] for r in rows] == ["| none (30 steps)", "| scu_allcu", "| none (60 steps)"]
    assert "| 91% → 20% (89% → 20%) |" in rows[2] and "| 900 | 60 |" in rows[1]
    with pytest.raises(SystemExit, match="another model or with other evaluation settings"):
        freeze.main(["--table", str(tmp_path / "a"), str(tmp_path / "other")])
    with pytest.raises(SystemExit, match="occurs twice"):
        freeze.main(["--table", str(tmp_path / "a"), str(tmp_path / "a")])
    with pytest.raises(SystemExit, match="no freeze_results.json"):
        freeze.main(["--table", str(tmp_path / "nowhere")])
