"""Safety units: running statistics, scores, classes, overlaps (pure), and the capture behind them."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from safespace_tasks.capture import (
    CaptureError,
    capture_unit_stats,
    find_decoder_parts,
    module_input_sites,
    pad_batch,
    resolve_module_path,
    unit_layout,
)
from safespace_tasks.stats.units import (
    CLASSES,
    ClassSettings,
    RunningStats,
    UnitLayout,
    UnitStatistics,
    UnitsError,
    analyse,
    classify,
    expected_random_jaccard,
    jaccard,
    merge_all,
    split_half_overlap,
    unit_scores,
)


def _llama(layers=3):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=120, hidden_size=32, intermediate_size=64, num_hidden_layers=layers,
                      num_attention_heads=4, num_key_value_heads=2)
    return LlamaForCausalLM(cfg).eval()


def _gpt2():
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    return GPT2LMHeadModel(GPT2Config(vocab_size=120, n_embd=32, n_layer=3, n_head=4)).eval()


def _qwen2():
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    return Qwen2ForCausalLM(Qwen2Config(vocab_size=120, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                                        num_attention_heads=4, num_key_value_heads=1)).eval()


def _gemma3():
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    torch.manual_seed(0)
    return Gemma3ForCausalLM(Gemma3TextConfig(vocab_size=120, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                              num_attention_heads=4, num_key_value_heads=2, head_dim=8)).eval()


BUILDERS = {"llama": _llama, "gpt2": _gpt2, "qwen2": _qwen2, "gemma3": _gemma3}
TEXTS = [[5, 6, 7, 8, 9, 10, 11], [12, 13, 40], [14, 15, 16, 17], [18, 19]]
STARTS = [3, 1, 2, 0]  # first scored token of each text


def _select(texts, starts, mask, side):
    width = mask.shape[1]
    sel = torch.zeros_like(mask, dtype=torch.bool)
    for r, (t, s) in enumerate(zip(texts, starts)):
        off = width - len(t) if side == "left" else 0
        sel[r, off + s: off + len(t)] = True
    return sel


def _stored_inputs(model, toks):
    """Every block's inputs of the two output projections for one unpadded text (float64)."""
    parts = find_decoder_parts(model)
    seen = {}
    handles = []
    for site in module_input_sites(parts, ("mlp", "attn")):
        mod = parts.blocks[site.block].get_submodule(site.path)
        handles.append(mod.register_forward_pre_hook(lambda m, a, s=site: seen.__setitem__(s.key, a[0][0].double().clone())))
    with torch.no_grad():
        model(torch.tensor([toks]))
    for h in handles:
        h.remove()
    return seen, parts.n_layers


@pytest.fixture(params=sorted(BUILDERS))
def model(request):
    return BUILDERS[request.param]()


@pytest.mark.parametrize("side", ["left", "right"])
def test_running_statistics_equal_a_direct_computation_over_stored_activations(model, side):
    ids, mask = pad_batch(TEXTS, 0, side)
    got = capture_unit_stats(model, ids, mask, _select(TEXTS, STARTS, mask, side))
    for r, (toks, start) in enumerate(zip(TEXTS, STARTS)):
        seen, n_layers = _stored_inputs(model, toks)
        for name in ("mlp", "attn"):
            x = torch.stack([seen[(name, b)][start:] for b in range(n_layers)], dim=1).numpy()  # tokens x layers x ch
            st = got[r].sites[name]
            assert st.count == len(toks) - start
            # the padded batch ran in float32 like the unpadded reference; activations agree to float32 precision
            np.testing.assert_allclose(st.mean, x.mean(0), rtol=1e-4, atol=1e-5)
            np.testing.assert_allclose(st.m2, ((x - x.mean(0)) ** 2).sum(0), rtol=1e-3, atol=1e-5)


def test_running_statistics_are_exact_in_float64_on_fixed_activations():
    rng = np.random.default_rng(3)
    x = rng.normal(5.0, 2.0, size=(2, 9, 6)) * 1e3  # large offset: a naive sum-of-squares would lose digits
    sel = torch.tensor(rng.random((2, 9)) < 0.6)
    sel[:, 0] = True
    from safespace_tasks.capture import _row_stats

    count, mean, m2 = _row_stats(torch.tensor(x, dtype=torch.float32), sel)
    for r in range(2):
        ref = x[r].astype(np.float32).astype(np.float64)[sel[r].numpy()]
        assert count[r] == len(ref)
        np.testing.assert_allclose(mean[r].numpy(), ref.mean(0), rtol=1e-10)
        np.testing.assert_allclose(m2[r].numpy(), ((ref - ref.mean(0)) ** 2).sum(0), rtol=1e-10)


def test_chan_merge_equals_one_pass_for_any_split():
    rng = np.random.default_rng(0)
    x = rng.normal(3.0, 1.5, size=(101, 4, 7))
    whole = RunningStats.of(x)
    for cuts in ([50], [1, 2, 99], [10, 30, 31, 80]):
        parts = np.split(x, cuts)
        stats = [UnitStatistics({"mlp": RunningStats.of(p)}) for p in parts]
        merged = merge_all(stats[::-1]).sites["mlp"]
        assert merged.count == 101
        np.testing.assert_allclose(merged.mean, whole.mean, rtol=1e-12)
        np.testing.assert_allclose(merged.m2, whole.m2, rtol=1e-10)
    empty = RunningStats.empty((4, 7))
    assert empty.merge(whole).count == 101 and np.allclose(empty.merge(whole).m2, whole.m2)


def test_batching_and_padding_do_not_change_the_merged_statistics():
    model = _llama()
    merged = []
    for side, size in (("left", 4), ("right", 1), ("left", 3)):
        out = []
        for b in range(0, len(TEXTS), size):
            chunk, starts = TEXTS[b:b + size], STARTS[b:b + size]
            ids, mask = pad_batch(chunk, 0, side)
            out.extend(capture_unit_stats(model, ids, mask, _select(chunk, starts, mask, side)))
        merged.append(merge_all(out))
    for other in merged[1:]:
        for name in ("mlp", "attn"):
            a, b = merged[0].sites[name], other.sites[name]
            assert a.count == b.count == sum(len(t) - s for t, s in zip(TEXTS, STARTS))
            np.testing.assert_allclose(a.mean, b.mean, rtol=1e-4, atol=1e-6)
            np.testing.assert_allclose(a.m2, b.m2, rtol=1e-3, atol=1e-6)


def test_layout_knows_grouped_attention_and_gpt2_conv1d():
    llama = unit_layout(_llama())
    assert (llama.n_layers, llama.n_neurons, llama.n_heads, llama.head_dim, llama.n_kv_heads) == (3, 64, 4, 8, 2)
    assert llama.params_per_neuron == 3 * 32  # gate row, up row, down column
    assert llama.params_per_head == 2 * 8 * 32 + 2 * 8 * 32 * 2 / 4
    m = _llama()
    w = m.model.layers[1].mlp.down_proj.weight.detach().double()
    np.testing.assert_allclose(unit_layout(m).mlp_out_sq_norm[1], (w ** 2).sum(0).numpy(), rtol=1e-12)
    g = _gpt2()
    lay = unit_layout(g)
    assert (lay.n_neurons, lay.n_heads, lay.head_dim) == (128, 4, 8)
    w = g.transformer.h[0].mlp.c_proj.weight.detach().double()  # Conv1D: in x out
    np.testing.assert_allclose(lay.mlp_out_sq_norm[0], (w ** 2).sum(1).numpy(), rtol=1e-12)
    q = unit_layout(_qwen2())
    assert (q.n_heads, q.n_kv_heads, q.head_dim) == (4, 1, 8)


def test_unknown_module_layout_names_the_class_and_the_paths_tried():
    model = _llama()
    parts = find_decoder_parts(model)
    with pytest.raises(CaptureError, match=r"LlamaForCausalLM.*no block \(LlamaDecoderLayer\).*'mlp.nonexistent'"):
        resolve_module_path(parts, ["mlp.nonexistent"], "LlamaForCausalLM")
    for block in parts.blocks:
        block.mlp.renamed = block.mlp.down_proj
        del block.mlp.down_proj
    with pytest.raises(CaptureError, match=r"mlp\.down_proj.*mlp\.c_proj"):
        unit_layout(model)


# ---------- scores and classes (pure) ----------

def _layout(n_layers=2, n_neurons=20, n_heads=4, head_dim=3, rng=None, neuron_params=10.0, head_params=30.0):
    rng = rng or np.random.default_rng(0)
    return UnitLayout(n_layers, n_neurons, n_heads, head_dim,
                      rng.uniform(0.5, 1.5, (n_layers, n_neurons)), rng.uniform(0.5, 1.5, (n_layers, n_heads * head_dim)),
                      neuron_params, head_params)


def _stats(rng, layout, n=200, boost_mlp=(), boost_attn=()):
    mlp = rng.normal(size=(n, layout.n_layers, layout.n_neurons))
    attn = rng.normal(size=(n, layout.n_layers, layout.n_heads * layout.head_dim))
    for l, j in boost_mlp:
        mlp[:, l, j] *= 8
    for l, c in boost_attn:
        attn[:, l, c] *= 8
    return UnitStatistics({"mlp": RunningStats.of(mlp), "attn": RunningStats.of(attn)}, n_docs=n)


def test_unit_scores_follow_the_formula():
    rng = np.random.default_rng(1)
    lay = _layout(rng=rng)
    st = _stats(rng, lay)
    z = unit_scores(st, lay).reshape(lay.n_layers, -1)
    s = st.sites["mlp"].variance() * lay.mlp_out_sq_norm
    np.testing.assert_allclose(z[:, :20], (s - s.mean(1, keepdims=True)) / s.std(1, keepdims=True), rtol=1e-12)
    a = st.sites["attn"].variance() * lay.attn_out_sq_norm
    za = (a - a.mean(1, keepdims=True)) / a.std(1, keepdims=True)
    np.testing.assert_allclose(z[:, 20:], za.reshape(2, 4, 3).mean(2), rtol=1e-12)


def test_classes_take_parameter_shares_in_the_documented_order():
    z_s = np.array([0.0, 5.0, 1.0, -3.0, 0.2, 0.1, 2.0, -1.0, 0.3, 0.4])
    z_u = np.array([0.0, -1.0, 1.0, 3.0, 0.1, 0.2, -2.0, -4.0, 0.3, 0.0])
    params = np.array([1, 1, 1, 1, 1, 1, 1, 1, 1, 3], dtype=float)  # 12 in all
    labels = classify(z_s, z_u, params, ClassSettings(ru=2 / 12, scu=2 / 12, ucu=1 / 12))
    # sum = [0, 4, 2, 0, .3, .3, 0, -5, .6, .4] -> RU: unit 7 (-5), then ties at 0: unit 0 (first)
    assert set(np.flatnonzero(labels == CLASSES["RU"])) == {7, 0}
    # diff = [0, 6, 0, -6, .1, -.1, 4, 3, 0, .4] of the rest: highest 1 (6), 6 (4)
    assert set(np.flatnonzero(labels == CLASSES["SCU"])) == {1, 6}
    assert set(np.flatnonzero(labels == CLASSES["UCU"])) == {3}
    # a heavy unit does not squeeze past the budget
    labels = classify(-z_u, z_u, params, ClassSettings(ru=0, scu=2 / 12, ucu=0))
    assert params[labels == CLASSES["SCU"]].sum() <= 2


def test_shares_that_sum_above_one_are_refused():
    with pytest.raises(UnitsError, match="exceed 1"):
        ClassSettings(ru=0.6, scu=0.2, ucu=0.3)
    with pytest.raises(UnitsError, match=r"\[0, 1\]"):
        ClassSettings(scu=-0.1)


def test_statistics_without_scored_tokens_are_refused():
    lay = _layout()
    empty = UnitStatistics({"mlp": RunningStats.empty((2, 20)), "attn": RunningStats.empty((2, 12))})
    with pytest.raises(UnitsError, match="no scored tokens"):
        unit_scores(empty, lay)


def test_planted_safety_units_are_found_and_shares_add_up():
    rng = np.random.default_rng(7)
    lay = _layout(n_layers=3, n_neurons=100, n_heads=4, head_dim=5, rng=rng)
    planted = [(0, 3), (1, 50), (2, 99)]
    safety = _stats(rng, lay, boost_mlp=planted)
    utility = _stats(rng, lay)
    res = analyse(safety, utility, lay, ClassSettings(ru=0.1, scu=3 * 10 / lay.unit_params().sum(), ucu=0.1))
    a = res["arrays"]
    scu = np.flatnonzero(a["labels"] == CLASSES["SCU"])
    assert (a["kind"][scu] == 0).all()
    assert {(int(a["layer"][u]), int(a["index"][u])) for u in scu} == set(planted)
    shares = res["shares"]
    assert math.isclose(sum(v["params"] for v in shares.values()), 1.0)
    assert math.isclose(sum(v["units"] for v in shares.values()), 1.0)
    assert shares["RU"]["params"] <= 0.1 + 1e-12 and shares["RU"]["params"] > 0.09
    assert len(res["profile"]) == 3 and res["counts"]["safety_docs"] == 200


def test_jaccard_and_its_random_expectation():
    assert jaccard(np.array([1, 2, 3]), np.array([2, 3, 4])) == 0.5
    assert math.isnan(jaccard(np.array([]), np.array([])))
    # exact small case by enumeration
    import itertools

    n, a, b = 6, 2, 3
    A = set(range(a))
    vals = [len(A & set(B)) / len(A | set(B)) for B in itertools.combinations(range(n), b)]
    assert math.isclose(expected_random_jaccard(n, a, b), np.mean(vals), rel_tol=1e-12)
    assert expected_random_jaccard(10, 10, 10) == 1.0
    rng = np.random.default_rng(0)
    sims = [jaccard(rng.choice(500, 40, replace=False), rng.choice(500, 25, replace=False)) for _ in range(4000)]
    assert abs(np.mean(sims) - expected_random_jaccard(500, 40, 25)) < 3 * np.std(sims) / np.sqrt(4000)


def test_split_half_overlap_is_high_for_strong_planted_units():
    rng = np.random.default_rng(11)
    lay = _layout(n_layers=2, n_neurons=60, n_heads=2, head_dim=4, rng=rng)
    planted = [(0, 1), (1, 2), (1, 30)]
    docs = [_stats(rng, lay, n=20, boost_mlp=planted) for _ in range(10)]
    utility = _stats(rng, lay, n=200)
    out = split_half_overlap(docs, utility, lay, ClassSettings(ru=0.1, scu=3 * 10 / lay.unit_params().sum(), ucu=0.1))
    assert out["jaccard"] == 1.0 and out["expected_random"] < 0.1 and out["sizes"] == [3, 3]


def test_profile_reads_where_safety_activity_is_larger():
    rng = np.random.default_rng(5)
    lay = _layout(n_layers=3, n_neurons=50, n_heads=2, head_dim=4, rng=rng)
    mlp_s = rng.normal(size=(300, 3, 50))
    mlp_s[:, 2] *= 3  # layer 2 varies 9x more on safety tokens
    safety = UnitStatistics({"mlp": RunningStats.of(mlp_s), "attn": RunningStats.of(rng.normal(size=(300, 3, 8)))})
    utility = _stats(rng, lay, n=300)
    res = analyse(safety, utility, lay)
    prof = res["profile"]
    assert abs(prof[0]) < 0.2 and abs(prof[1]) < 0.2
    assert prof[2] > 1.0  # log 9 = 2.2 for the neurons, ~0 for the heads
    # the mean of the z-score difference is zero per layer by construction: why the profile reads log ratios
    a = res["arrays"]
    for l in range(3):
        sel = (a["layer"] == l) & (a["kind"] == 0)
        assert abs((a["z_safety"] - a["z_utility"])[sel].mean()) < 1e-12
