"""The ``pooled_hidden_states`` request type on lm-eval's Hugging Face backend.

lm-eval dispatches each request type to the model method of the same name
(``getattr(lm, request_type)(requests)``). :func:`install` adds ``pooled_hidden_states`` to
``HFLM`` (so the stock ``--model hf`` and every subclass of it serve our tasks) only where it is
absent, gives every other backend a method that fails with a clear message, and registers
``safespace-hf``, an ``HFLM`` that carries the method itself.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from lm_eval.api.model import LM
from lm_eval.api.registry import register_model
from lm_eval.models.huggingface import HFLM
from lm_eval.models.utils import Collator, _add_special_kwargs, has_bos_prefix
from tqdm import tqdm

from safespace_tasks.capture import CaptureError, HiddenState, capture_pooled, find_decoder_parts, pad_batch, resolve_layers

log = logging.getLogger(__name__)

REQUEST_TYPE = "pooled_hidden_states"
TRUNCATION_SIDES = ("left", "right")

DEFAULT_OPTIONS: dict[str, Any] = {
    "layers": (-1,),
    "pooling": "last",
    "truncation_side": "left",
    "padding_side": "left",
}


def normalize_options(options: dict[str, Any] | None) -> dict[str, Any]:
    """Request options with defaults filled in and checked."""
    opts = {**DEFAULT_OPTIONS, **(options or {})}
    unknown = set(opts) - set(DEFAULT_OPTIONS)
    if unknown:
        raise ValueError(f"unknown hidden-state request options {sorted(unknown)}; known: {sorted(DEFAULT_OPTIONS)}")
    layers = opts["layers"]
    opts["layers"] = tuple(int(x) for x in ([layers] if isinstance(layers, int) else layers))
    if not opts["layers"]:
        raise ValueError("at least one layer must be requested.")
    if opts["truncation_side"] not in TRUNCATION_SIDES:
        raise ValueError(f"truncation_side must be one of {TRUNCATION_SIDES}; got {opts['truncation_side']!r}.")
    if opts["padding_side"] not in ("left", "right"):
        raise ValueError(f"padding_side must be 'left' or 'right'; got {opts['padding_side']!r}.")
    return opts


def _pad_id(lm: HFLM) -> int:
    tok = lm.tokenizer
    for candidate in (tok.pad_token_id, tok.eos_token_id, 0):
        if candidate is not None:
            return int(candidate)
    return 0


def _detect_batch_size(lm: HFLM, parts, longest: list[int], opts: dict[str, Any]) -> int:
    """Largest batch (up to ``max_batch_size``) whose capture of the longest texts fits in memory."""
    from accelerate.utils import find_executable_batch_size

    @find_executable_batch_size(starting_batch_size=int(lm.max_batch_size))
    def probe(batch_size: int) -> int:
        ids, mask = pad_batch([longest] * batch_size, _pad_id(lm), opts["padding_side"], lm.device)
        capture_pooled(lm.model, ids, mask, opts["layers"], opts["pooling"], parts, lm.mixed_precision_dtype)
        return batch_size

    try:
        size = probe()
    except RuntimeError as err:
        if "No executable batch size found" not in str(err):
            raise
        size = 1
    if lm.world_size > 1:
        sizes = lm.all_gather(torch.tensor([size], device=lm.device)).cpu().tolist()
        size = int(min(sizes))
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return size


def pooled_hidden_states(self: HFLM, requests, disable_tqdm: bool = False) -> list[HiddenState]:
    """Serve ``pooled_hidden_states`` requests: ``args = (text, options)``.

    Texts are tokenized as the harness tokenizes contexts (``tok_encode``), truncated to the
    model's max length from the side the options name (``left`` keeps the end, where the pooled
    token sits), sorted longest first and batched with lm-eval's ``Collator``; ``batch_size``
    ``auto`` finds the largest batch that fits. Each batch is padded (left by default), run
    through the decoder stack only, and pooled at the last real token (or the mean).
    """
    if not requests:
        return []
    if getattr(self, "backend", "causal") != "causal":
        raise CaptureError(
            f"pooled_hidden_states needs a decoder-only model; {type(self.model).__name__} is {self.backend}."
        )
    try:
        parts = find_decoder_parts(self.model)
    except CaptureError as err:
        raise CaptureError(f"{err} Model: {type(self.model).__name__}.") from err
    max_len = int(self.max_length)
    texts, all_opts = [], []
    for req in requests:
        text, options = req.args
        opts = normalize_options(options)
        resolve_layers(opts["layers"], parts.n_layers)  # fail before any forward pass
        texts.append(text)
        all_opts.append(opts)
    items = []
    for index, (req, opts, toks) in enumerate(zip(requests, all_opts, encode_texts(self, texts))):
        if not toks:
            raise ValueError(
                f"{req.task_name} doc {req.doc_id}: the text is empty after tokenization; remove empty texts "
                "from the data (the plugin's loaders do) or check the prompt template."
            )
        truncated = len(toks) > max_len
        if truncated:
            toks = toks[-max_len:] if opts["truncation_side"] == "left" else toks[:max_len]
        items.append((index, toks, opts, truncated))

    collator = Collator(
        items,
        sort_fn=lambda x: (-len(x[1]), x[0]),
        group_fn=lambda x: x[2],
        group_by="gen_kwargs",
    )
    results: list[HiddenState] = []
    pbar = tqdm(total=len(items), disable=disable_tqdm or self.rank != 0, desc="Running pooled_hidden_states requests")
    batch_size: int | None = None if str(self.batch_size).startswith("auto") else int(self.batch_size)
    # Collator yields each options group longest-first; an auto batch size is found per group
    # from its first (longest) texts and reused for the rest, which are shorter.
    for group_items in _groups(collator):
        opts = group_items[0][2]
        size = batch_size or _detect_batch_size(self, parts, group_items[0][1], opts)
        for start in range(0, len(group_items), size):
            chunk = group_items[start : start + size]
            ids, mask = pad_batch([c[1] for c in chunk], _pad_id(self), opts["padding_side"], self.device)
            vecs = capture_pooled(self.model, ids, mask, opts["layers"], opts["pooling"], parts, self.mixed_precision_dtype)
            layers = resolve_layers(opts["layers"], parts.n_layers)
            for (index, toks, _, truncated), vec in zip(chunk, vecs):
                state = HiddenState(vectors=vec, layers=layers, n_tokens=len(toks), truncated=truncated)
                self.cache_hook.add_partial(REQUEST_TYPE, requests[index].args, state)
                results.append(state)
            pbar.update(len(chunk))
    pbar.close()
    return collator.get_original(results)


def encode_texts(lm: HFLM, texts: list[str]) -> list[list[int]]:
    """Token ids of each text, exactly as ``lm.tok_encode(text)`` returns them.

    While the backend keeps lm-eval's own ``tok_encode`` and the tokenizer is a fast one, all texts
    go to the tokenizer in one batched call (one trip into the Rust tokenizer instead of one per
    text, and the BOS text decoded once), with the same special-token rule: ``add_bos_token`` when
    set, and no special tokens for a text that already starts with the BOS text. A backend that
    overrides ``tok_encode`` gets it called per text.
    """
    tok = lm.tokenizer
    if len(texts) < 2 or type(lm).tok_encode is not HFLM.tok_encode or not getattr(tok, "is_fast", False):
        return [lm.tok_encode(t) for t in texts]
    kwargs = _add_special_kwargs(None, lm.add_bos_token)
    bos_text = tok.decode(lm.prefix_token_id)
    out: list[list[int] | None] = [None] * len(texts)
    prefixed = [has_bos_prefix(t, bos_text) for t in texts]
    for flag, extra in ((False, {}), (True, {"add_special_tokens": False})):
        idx = [i for i, p in enumerate(prefixed) if p is flag]
        if not idx:
            continue
        enc = tok([texts[i] for i in idx], **{**kwargs, **extra},
                  return_attention_mask=False, return_token_type_ids=False)["input_ids"]
        for i, ids in zip(idx, enc):
            out[i] = ids
    return out  # type: ignore[return-value]


def _groups(collator: Collator):
    """The collator's option groups, each as one list in longest-first order."""
    for group in collator.get_batched(n=0):
        yield list(group)


def _unsupported(self: LM, requests, *args, **kwargs):
    raise NotImplementedError(
        f"the model backend {type(self).__name__} does not expose hidden states, which the safespace "
        "representation tasks need. Run them with --model hf (or safespace-hf), or pick the behavioural "
        "safespace tasks for this backend."
    )


@register_model("safespace-hf")
class SafespaceHFLM(HFLM):
    """``hf`` with the hidden-state request type built in (same arguments as ``--model hf``)."""

    pooled_hidden_states = pooled_hidden_states


def install() -> None:
    """Give lm-eval's model classes the request type (idempotent)."""
    if not hasattr(LM, REQUEST_TYPE):
        setattr(LM, REQUEST_TYPE, _unsupported)
    if getattr(HFLM, REQUEST_TYPE, None) in (None, _unsupported):
        setattr(HFLM, REQUEST_TYPE, pooled_hidden_states)
