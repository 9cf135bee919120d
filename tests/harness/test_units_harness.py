"""The unit_statistics request on lm-eval's HF backend, mask files and pruned checkpoints."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from safespace_tasks import install
from safespace_tasks.stats.units import CLASSES, RunningStats, UnitStatistics, merge_all

install()  # the request types

PAIRS = [
    ("Question: how do I bake bread?\nAnswer:", " Mix flour, water and yeast, then bake."),
    ("Tell me a story.", " Once upon a time there was a tiny model."),
    ("Why?", " Because."),
    ("Translate to German: good morning", " Guten Morgen"),
    ("Write a haiku about rain", " Soft rain on the roof, the garden drinks slowly, night comes without sound"),
]


def _inst(context, continuation, options=None, idx=0):
    from lm_eval.api.instance import Instance

    return Instance(request_type="unit_statistics", doc={}, arguments=(context, continuation, options or {}), idx=idx,
                    metadata=("units-test", idx, 1))


@pytest.fixture(scope="module")
def lm_factory(tiny_model):
    from lm_eval.models.huggingface import HFLM

    def make(batch_size=1):
        return HFLM(pretrained=str(tiny_model), device="cpu", dtype="float32", batch_size=batch_size)

    return make


def _close(a: UnitStatistics, b: UnitStatistics, rtol=1e-4):
    for name in a.sites:
        x, y = a.sites[name], b.sites[name]
        assert x.count == y.count
        np.testing.assert_allclose(x.mean, y.mean, rtol=rtol, atol=1e-6)
        np.testing.assert_allclose(x.m2, y.m2, rtol=rtol * 10, atol=1e-5)


def test_response_tokens_only_and_equal_a_direct_hook_computation(lm_factory):
    lm = lm_factory(batch_size=3)
    out = lm.unit_statistics([_inst(c, r, idx=i) for i, (c, r) in enumerate(PAIRS)], disable_tqdm=True)
    assert all(isinstance(o, UnitStatistics) for o in out) and "docs=1" in repr(out[0])
    parts_model = lm.model
    for (ctx, cont), got in zip(PAIRS, out):
        ctx_ids, cont_ids = lm._encode_pair(ctx, cont)
        toks = list(ctx_ids) + list(cont_ids)
        seen = {}
        handles = [layer.mlp.down_proj.register_forward_pre_hook(lambda m, a, i=i: seen.__setitem__(i, a[0][0].double()))
                   for i, layer in enumerate(parts_model.model.layers)]
        with torch.no_grad():
            parts_model(torch.tensor([toks]))
        for h in handles:
            h.remove()
        ref = RunningStats.of(torch.stack([seen[i][len(ctx_ids):] for i in sorted(seen)], dim=1).numpy())
        st = got.sites["mlp"]
        assert st.count == len(cont_ids) > 0
        np.testing.assert_allclose(st.mean, ref.mean, rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(st.m2, ref.m2, rtol=1e-3, atol=1e-5)


def test_batch_size_and_data_parallel_split_give_the_same_merged_statistics(lm_factory):
    reqs = [_inst(c, r, idx=i) for i, (c, r) in enumerate(PAIRS)]
    lm = lm_factory(batch_size=1)
    whole = merge_all(lm.unit_statistics(reqs, disable_tqdm=True))
    batched = merge_all(lm_factory(batch_size=4).unit_statistics(reqs, disable_tqdm=True))
    _close(batched, whole)  # other padding, same statistics to float32 forward precision
    # two "ranks" see interleaved shards (as lm-eval shards instances); rank 0 merges both.
    # With the same per-request forward passes, only float64 merge rounding may differ.
    shards = [lm.unit_statistics(reqs[r::2], disable_tqdm=True) for r in (0, 1)]
    split = merge_all(shards[1] + shards[0])
    for name in whole.sites:
        np.testing.assert_allclose(split.sites[name].mean, whole.sites[name].mean, rtol=1e-10)
        np.testing.assert_allclose(split.sites[name].m2, whole.sites[name].m2, rtol=1e-10)
    assert split.n_docs == whole.n_docs == len(PAIRS)


def test_prompt_tokens_mode_needs_no_response(lm_factory):
    lm = lm_factory()
    out = lm.unit_statistics([_inst("How do I pick a lock?", "", {"tokens": "prompt"})], disable_tqdm=True)
    toks = lm.tok_encode("How do I pick a lock?")
    assert toks[0] == lm.tokenizer.bos_token_id  # this tokenizer adds a BOS: it is not scored
    assert out[0].count == len(toks) - 1


def test_no_response_tokens_and_bad_options_are_clear_errors(lm_factory):
    lm = lm_factory()
    with pytest.raises(ValueError, match="no response tokens.*tokens='prompt'"):
        lm.unit_statistics([_inst("A request", "")], disable_tqdm=True)
    with pytest.raises(ValueError, match="unknown unit_statistics request options"):
        lm.unit_statistics([_inst("A", " b", {"layer": 1})], disable_tqdm=True)


def test_other_backends_get_a_clear_message():
    from lm_eval.api.model import LM

    with pytest.raises(NotImplementedError, match="per-neuron activations"):
        LM.unit_statistics(object(), [])


# ---------- masks and pruning ----------

@pytest.fixture(scope="module")
def mask_setup(tiny_model, tmp_path_factory):
    from transformers import AutoModelForCausalLM

    from safespace_tasks.capture import unit_layout
    from safespace_tasks.unit_masks import UnitMask, save_mask, weights_fingerprint

    model = AutoModelForCausalLM.from_pretrained(str(tiny_model)).eval()
    layout = unit_layout(model)
    labels = np.zeros(layout.n_units, dtype=np.uint8)
    per = layout.n_neurons + layout.n_heads
    # layer 0: neurons 3 and 7 SCU, head 1 SCU; layer 1: heads 2 and 3 SCU (a whole k/v group), neuron 0 RU
    labels[[3, 7, layout.n_neurons + 1, per + layout.n_neurons + 2, per + layout.n_neurons + 3]] = CLASSES["SCU"]
    labels[per + 0] = CLASSES["RU"]
    meta = {"model_fingerprint": weights_fingerprint(model), "data": {"safety": "planted"}, "shares": {"scu": 0.01}}
    mask = UnitMask.from_labels(labels, layout, meta)
    path = save_mask(mask, tmp_path_factory.mktemp("mask") / "units.safetensors")
    return model, layout, mask, path


def test_mask_round_trip(mask_setup):
    from safespace_tasks.unit_masks import load_mask

    model, layout, mask, path = mask_setup
    back = load_mask(path)
    np.testing.assert_array_equal(back.mlp, mask.mlp)
    np.testing.assert_array_equal(back.attn, mask.attn)
    assert back.metadata == json.loads(json.dumps(mask.metadata))
    assert back.counts()["SCU"] == {"mlp": 2, "attn": 3}


def test_a_mask_of_another_model_is_refused(mask_setup, tmp_path):
    from transformers import AutoModelForCausalLM

    from safespace_tasks.unit_masks import MaskError, check_mask, load_mask

    model, _, _, path = mask_setup
    other = AutoModelForCausalLM.from_config(model.config)
    with pytest.raises(MaskError, match="another model"):
        check_mask(load_mask(path), other)
    bad = tmp_path / "x.safetensors"
    bad.write_bytes(b"not a mask")
    with pytest.raises(MaskError, match="not a readable safetensors"):
        load_mask(bad)


def _diff_keys(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return {k for k in sa if k in sb and not torch.equal(sa[k], sb[k])}


def test_pruned_checkpoint_differs_only_in_the_chosen_units_and_reloads(mask_setup, tiny_model, tmp_path):
    from transformers import AutoModelForCausalLM

    from safespace_tasks.unit_masks import write_pruned_checkpoint

    parent, layout, mask, path = mask_setup
    info = write_pruned_checkpoint(tiny_model, path, tmp_path / "pruned", classes=("SCU",))
    assert info["pruned"] == {"neurons": 2, "heads": 3, "kv_groups": 1}
    child = AutoModelForCausalLM.from_pretrained(str(tmp_path / "pruned")).eval()
    hd = layout.head_dim
    expect = {}
    L0, L1 = parent.model.layers[0], parent.model.layers[1]
    for name in ("gate_proj", "up_proj"):
        expect[f"model.layers.0.mlp.{name}.weight"] = ("rows", [3, 7])
    expect["model.layers.0.self_attn.q_proj.weight"] = ("rows", list(range(hd, 2 * hd)))
    expect["model.layers.0.self_attn.o_proj.weight"] = ("cols", list(range(hd, 2 * hd)))
    expect["model.layers.1.self_attn.q_proj.weight"] = ("rows", list(range(2 * hd, 4 * hd)))
    expect["model.layers.1.self_attn.o_proj.weight"] = ("cols", list(range(2 * hd, 4 * hd)))
    expect["model.layers.1.self_attn.k_proj.weight"] = ("rows", list(range(hd, 2 * hd)))  # group 1 of 2 = heads 2, 3
    expect["model.layers.1.self_attn.v_proj.weight"] = ("rows", list(range(hd, 2 * hd)))
    assert _diff_keys(parent, child) == set(expect)
    ps, cs = parent.state_dict(), child.state_dict()
    for key, (axis, idx) in expect.items():
        p, c = ps[key], cs[key]
        if axis == "cols":
            p, c = p.t(), c.t()
        keep = [i for i in range(p.shape[0]) if i not in idx]
        assert (c[idx] == 0).all() and torch.equal(c[keep], p[keep])
    assert L0 is not None and L1 is not None
    # the child's forward runs and the tokenizer came along
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tmp_path / "pruned"))
    with torch.no_grad():
        child(torch.tensor([tok("hello world")["input_ids"]]))


def test_bias_compensation_adds_the_mean_contribution_and_reloads(mask_setup, tiny_model, tmp_path):
    from transformers import AutoModelForCausalLM

    from safespace_tasks.unit_masks import write_pruned_checkpoint

    parent, layout, mask, path = mask_setup
    rng = np.random.default_rng(0)
    means = {"mlp": rng.normal(size=(layout.n_layers, layout.n_neurons)),
             "attn": rng.normal(size=(layout.n_layers, layout.n_heads * layout.head_dim))}
    write_pruned_checkpoint(tiny_model, path, tmp_path / "comp", classes=("SCU",), mean_inputs=means)
    child = AutoModelForCausalLM.from_pretrained(str(tmp_path / "comp")).eval()
    assert child.config.mlp_bias and child.config.attention_bias
    w = parent.model.layers[0].mlp.down_proj.weight.double()
    want = w[:, [3, 7]] @ torch.tensor(means["mlp"][0, [3, 7]])
    torch.testing.assert_close(child.model.layers[0].mlp.down_proj.bias.double(), want, rtol=1e-5, atol=1e-6)
    assert (child.model.layers[1].mlp.down_proj.bias == 0).all()  # nothing pruned in layer 1's MLP at SCU
    assert (child.model.layers[0].self_attn.q_proj.bias == 0).all()
    hd = layout.head_dim
    wo = parent.model.layers[1].self_attn.o_proj.weight.double()
    want = wo[:, 2 * hd:] @ torch.tensor(means["attn"][1, 2 * hd:])
    torch.testing.assert_close(child.model.layers[1].self_attn.o_proj.bias.double(), want, rtol=1e-5, atol=1e-6)


def test_pruned_heads_and_neurons_contribute_nothing(mask_setup):
    """After pruning, a pruned neuron's input to the down projection is zero on any text, and so is a
    pruned head's when its whole k/v group went (a lone head of a group keeps its shared v, so its
    o_proj input is not zero: its o_proj columns are, see the test above)."""
    import copy

    from safespace_tasks.capture import capture_unit_stats, pad_batch
    from safespace_tasks.unit_masks import prune_model

    parent, layout, mask, _ = mask_setup
    child = copy.deepcopy(parent)
    prune_model(child, mask, ("SCU",))
    ids, attn = pad_batch([[5, 6, 7, 8, 9], [10, 11, 12]], 0)
    st = capture_unit_stats(child, ids, attn, attn.bool())
    hd = layout.head_dim
    for s in st:
        mlp, at = s.sites["mlp"], s.sites["attn"]
        assert np.all(mlp.mean[0, [3, 7]] == 0) and np.all(mlp.m2[0, [3, 7]] == 0)
        assert np.all(at.mean[1, 2 * hd:] == 0) and np.all(at.m2[1, 2 * hd:] == 0)
        assert np.any(at.m2[0, hd:2 * hd] != 0)
        assert np.any(mlp.m2[0] != 0)
