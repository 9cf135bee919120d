"""Capture against transformers' own output_hidden_states, across padding, batching and model families."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from safespace_tasks.capture import CaptureError, capture_pooled, find_decoder_parts, pad_batch, resolve_layers


def _llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=120, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                      num_attention_heads=4, num_key_value_heads=2)
    return LlamaForCausalLM(cfg)


def _gpt2():
    from transformers import GPT2Config, GPT2LMHeadModel

    return GPT2LMHeadModel(GPT2Config(vocab_size=120, n_embd=32, n_layer=3, n_head=4, bos_token_id=1, eos_token_id=2))


def _gemma3():
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    cfg = Gemma3TextConfig(vocab_size=120, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                           num_attention_heads=4, num_key_value_heads=2, head_dim=8)
    return Gemma3ForCausalLM(cfg)


BUILDERS = {"llama": _llama, "gpt2": _gpt2, "gemma3": _gemma3}
TEXTS = [[5, 6, 7, 8, 9, 10, 11], [12, 13], [14, 15, 16, 17], [18]]


@pytest.fixture(params=sorted(BUILDERS))
def model(request):
    torch.manual_seed(0)
    return BUILDERS[request.param]().eval()


@pytest.mark.parametrize("padding_side", ["left", "right"])
def test_every_layer_equals_output_hidden_states_at_the_last_token(model, padding_side):
    ids, mask = pad_batch(TEXTS, pad_id=0, padding_side=padding_side)
    got = capture_pooled(model, ids, mask, layers=[0, 1, 2, 3], pooling="last")
    assert got.shape == (len(TEXTS), 4, 32) and got.dtype == np.float32
    for i, toks in enumerate(TEXTS):
        with torch.no_grad():
            hs = model(torch.tensor([toks]), output_hidden_states=True).hidden_states
        ref = np.stack([h[0, -1].numpy() for h in hs])
        np.testing.assert_allclose(got[i], ref, atol=2e-5, rtol=1e-4)


def test_final_layer_is_after_the_final_norm(model):
    parts = find_decoder_parts(model)
    ids, mask = pad_batch(TEXTS[:1], 0)
    final = capture_pooled(model, ids, mask, layers=[-1])[0, 0]
    with torch.no_grad():
        hs = model(ids, output_hidden_states=True).hidden_states
    np.testing.assert_allclose(final, hs[-1][0, -1].numpy(), atol=2e-5)
    # the last block's raw output differs (it is before the norm)
    seen = {}
    handle = parts.blocks[-1].register_forward_hook(lambda m, a, o: seen.setdefault("x", o[0] if isinstance(o, tuple) else o))
    with torch.no_grad():
        model(ids)
    handle.remove()
    assert not np.allclose(seen["x"][0, -1].numpy(), final, atol=1e-3)


def test_a_text_alone_equals_the_same_text_inside_a_batch(model):
    alone = capture_pooled(model, *pad_batch([TEXTS[2]], 0), layers=[-1, 1])
    batched = capture_pooled(model, *pad_batch(TEXTS, 0), layers=[-1, 1])
    np.testing.assert_allclose(batched[2], alone[0], atol=2e-5, rtol=1e-4)


def test_mean_pooling_averages_real_tokens_only(model):
    ids, mask = pad_batch(TEXTS, 0, "left")
    got = capture_pooled(model, ids, mask, layers=[2], pooling="mean")
    for i, toks in enumerate(TEXTS):
        with torch.no_grad():
            h = model(torch.tensor([toks]), output_hidden_states=True).hidden_states[2][0]
        np.testing.assert_allclose(got[i, 0], h.mean(0).numpy(), atol=2e-5, rtol=1e-4)


def test_forward_stops_after_the_deepest_requested_layer_and_skips_the_head():
    torch.manual_seed(0)
    model = _llama().eval()
    parts = find_decoder_parts(model)
    calls = []
    hooks = [b.register_forward_hook(lambda m, a, o, i=i: calls.append(i)) for i, b in enumerate(parts.blocks)]
    hooks.append(model.lm_head.register_forward_hook(lambda m, a, o: calls.append("head")))
    hooks.append(parts.final_norm.register_forward_hook(lambda m, a, o: calls.append("norm")))
    capture_pooled(model, *pad_batch(TEXTS, 0), layers=[1])
    assert calls == [0]
    calls.clear()
    capture_pooled(model, *pad_batch(TEXTS, 0), layers=[-1])
    assert calls == [0, 1, 2, "norm"]
    for h in hooks:
        h.remove()


def test_layer_indices_are_checked():
    assert resolve_layers([-1, 0, 2], 3) == (3, 0, 2)
    with pytest.raises(CaptureError, match="out of range"):
        resolve_layers([4], 3)
    with pytest.raises(CaptureError, match="twice"):
        resolve_layers([-1, 3], 3)
    with pytest.raises(CaptureError, match="no tokens"):
        pad_batch([[1, 2], []], 0)


def test_a_model_without_decoder_blocks_gets_a_clear_error():
    with pytest.raises(CaptureError, match="decoder blocks"):
        find_decoder_parts(torch.nn.Sequential(torch.nn.Linear(3, 3)))


@pytest.mark.parametrize("side", ["left", "right"])
def test_pad_batch_matches_a_row_by_row_reference(side):
    rng = np.random.default_rng(0)
    lists = [rng.integers(1, 500, size=int(n)).tolist() for n in rng.integers(1, 30, size=11)]
    ids, mask = pad_batch(lists, 0, side)
    width = max(len(t) for t in lists)
    assert ids.shape == mask.shape == (11, width) and ids.dtype == mask.dtype == torch.long
    for row, toks in enumerate(lists):
        real = slice(width - len(toks), width) if side == "left" else slice(0, len(toks))
        assert ids[row, real].tolist() == toks and mask[row, real].sum() == len(toks) == mask[row].sum()
        assert (ids[row][mask[row] == 0] == 0).all()
    with pytest.raises(CaptureError, match="no tokens"):
        pad_batch([[1, 2], []], 0, side)


def test_encoder_only_model_is_refused_with_the_architectures_that_work():
    from transformers import BertConfig, BertLMHeadModel

    bert = BertLMHeadModel(BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                      intermediate_size=64, is_decoder=True)).eval()
    ids, mask = pad_batch([[1, 2, 3]], 0)
    for layers in ([-1], [1]):  # the old advice ("request layer 1") must not end in a TypeError
        with pytest.raises(CaptureError, match=r"BertLMHeadModel.*encoder-only.*Llama, Gemma, Qwen"):
            capture_pooled(bert, ids, mask, layers)


def test_unit_statistics_stop_at_the_last_blocks_site_and_skip_norm_and_head():
    from safespace_tasks.capture import capture_unit_stats

    torch.manual_seed(0)
    model = _llama().eval()
    parts = find_decoder_parts(model)
    calls = []
    hooks = [model.lm_head.register_forward_hook(lambda m, a, o: calls.append("head")),
             parts.final_norm.register_forward_hook(lambda m, a, o: calls.append("norm")),
             parts.blocks[-1].mlp.down_proj.register_forward_hook(lambda m, a, o: calls.append("last down_proj"))]
    ids, mask = pad_batch(TEXTS, 0)
    stats = capture_unit_stats(model, ids, mask, mask.bool())
    assert calls == [] and len(stats) == len(TEXTS)
    assert stats[0].sites["mlp"].mean.shape == (3, 64) and stats[0].sites["attn"].mean.shape == (3, 32)
    for h in hooks:
        h.remove()
