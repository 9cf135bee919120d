"""The harness path tokenizes texts in one batched call, with exactly the ids of ``tok_encode``."""

from __future__ import annotations

import pytest
from lm_eval.models.huggingface import HFLM

from safespace_tasks.harness.requests import encode_texts
from safespace_tasks.local_models import cache_root

SMOLLM2 = cache_root() / "smollm2-135m-instruct"


def extra_texts(lm: HFLM) -> list[str]:
    bos = lm.tokenizer.decode(lm.prefix_token_id)
    return [f"{bos}starts with the BOS text", f"{bos}", "", "   ", "emoji 🙂 and\nnew line", "ሰላም 你好 नमस्ते"]


@pytest.mark.parametrize("add_bos_token", [None, True, False])
def test_batched_encoding_equals_tok_encode_per_text(tiny_model, sample_texts, add_bos_token):
    lm = HFLM(pretrained=str(tiny_model), device="cpu", batch_size=1, add_bos_token=add_bos_token)
    texts = sample_texts + extra_texts(lm)
    assert encode_texts(lm, texts) == [lm.tok_encode(t) for t in texts]


@pytest.mark.skipif(not (SMOLLM2 / "tokenizer.json").is_file(), reason="SmolLM2 not prepared (safespace model-path)")
def test_batched_encoding_equals_tok_encode_with_a_real_tokenizer(sample_texts):
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(SMOLLM2)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=1)
    lm = HFLM(pretrained=LlamaForCausalLM(cfg), tokenizer=tok, batch_size=1)
    texts = sample_texts + extra_texts(lm)
    assert encode_texts(lm, texts) == [lm.tok_encode(t) for t in texts]


def test_a_backend_that_overrides_tok_encode_keeps_its_own(tiny_model):
    class Shouting(HFLM):
        def tok_encode(self, string, **kwargs):
            return super().tok_encode(string.upper(), **kwargs)

    lm = Shouting(pretrained=str(tiny_model), device="cpu", batch_size=1)
    assert encode_texts(lm, ["abc", "def"]) == [lm.tok_encode("abc"), lm.tok_encode("def")]
