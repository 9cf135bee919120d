"""A layer sweep through today's capture path (``capture_pooled``) on a tiny random Llama.

* the vectors of a multi-layer request equal those of single-layer requests, bit for bit, and
  equal ``output_hidden_states`` of the full model (an independent computation);
* a request up to hidden state k runs blocks 1..k only (block calls counted with hooks), and never
  the final norm or the LM head unless the final layer is asked for.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from safespace_tasks.capture import capture_pooled, find_decoder_parts, pad_batch
from safespace_tasks.layer_spec import parse_layers

N_BLOCKS = 4


@pytest.fixture(scope="module")
def model_and_batch(tmp_path_factory, sample_texts):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from helpers import build_tiny_llama

    folder = build_tiny_llama(tmp_path_factory.mktemp("sweep") / "llama", sample_texts, layers=N_BLOCKS,
                              max_position_embeddings=128)
    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, torch_dtype=torch.float32).eval()
    texts = [t[:80] for t in sample_texts[:6]]
    token_lists = [tok(t)["input_ids"][:40] for t in texts]
    ids, mask = pad_batch(token_lists, tok.pad_token_id, "left")
    return model, token_lists, ids, mask


class _Counter:
    def __init__(self, model):
        parts = find_decoder_parts(model)
        self.calls = {f"block{i + 1}": 0 for i in range(parts.n_layers)}
        self.calls.update(norm=0, lm_head=0)
        self.handles = [blk.register_forward_hook(self._hook(f"block{i + 1}")) for i, blk in enumerate(parts.blocks)]
        self.handles.append(parts.final_norm.register_forward_hook(self._hook("norm")))
        self.handles.append(model.lm_head.register_forward_hook(self._hook("lm_head")))

    def _hook(self, name):
        def hook(module, args, output):
            self.calls[name] += 1
        return hook

    def close(self):
        for h in self.handles:
            h.remove()


def test_multi_layer_vectors_equal_single_layer_runs(model_and_batch):
    model, _, ids, mask = model_and_batch
    layers = parse_layers("all", N_BLOCKS)
    assert layers == (0, 1, 2, 3, 4)
    for pooling in ("last", "mean"):
        sweep = capture_pooled(model, ids, mask, layers, pooling)
        assert sweep.shape == (ids.shape[0], len(layers), model.config.hidden_size) and sweep.dtype == np.float32
        for j, layer in enumerate(layers):
            single = capture_pooled(model, ids, mask, (layer,), pooling)
            np.testing.assert_array_equal(sweep[:, j, :], single[:, 0, :])
        # a range and negative indices address the same states
        tail = capture_pooled(model, ids, mask, parse_layers("-3:", N_BLOCKS), pooling)
        np.testing.assert_array_equal(tail, sweep[:, 2:, :])
        # embeddings and the final layer differ from their neighbours (the hooks read distinct states)
        assert not np.allclose(sweep[:, 0], sweep[:, 1]) and not np.allclose(sweep[:, 3], sweep[:, 4])


def test_sweep_equals_output_hidden_states(model_and_batch):
    model, token_lists, ids, mask = model_and_batch
    sweep = capture_pooled(model, ids, mask, parse_layers("all", N_BLOCKS), "last")
    for i, toks in enumerate(token_lists):
        with torch.no_grad():
            out = model(input_ids=torch.tensor([toks]), output_hidden_states=True)
        ref = np.stack([h[0, -1].numpy() for h in out.hidden_states])  # (L + 1) x d, last one after the norm
        np.testing.assert_allclose(sweep[i], ref, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("layers, blocks_run, norm_runs", [
    ((0,), 0, False), ((1,), 1, False), ((2,), 2, False), ((0, 2), 2, False), ((1, 3), 3, False),
    ((3,), 3, False), ((4,), 4, True), ((-1,), 4, True), ((0, 1, 2, 3, 4), 4, True),
])
def test_request_up_to_layer_k_runs_no_block_past_k(model_and_batch, layers, blocks_run, norm_runs):
    model, _, ids, mask = model_and_batch
    counter = _Counter(model)
    try:
        capture_pooled(model, ids, mask, layers, "last")
    finally:
        counter.close()
    expected = {f"block{i}": int(i <= blocks_run) for i in range(1, N_BLOCKS + 1)}
    expected.update(norm=int(norm_runs), lm_head=0)
    assert counter.calls == expected
