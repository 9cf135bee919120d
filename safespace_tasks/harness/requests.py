"""Every request type of the plugin, and ``safespace-hf``.

lm-eval dispatches each request type to the model method of the same name
(``getattr(lm, request_type)(requests)``). The request types:

* ``pooled_hidden_states`` (``args = (text, options)``): one text's pooled hidden states at the
  requested indices (:class:`~safespace_tasks.capture.HiddenState`, which also carries the model's depth);
* ``pooled_hidden_states_layers``: the same for a ``layers`` option that needs the model's depth
  (``all``, ranges), resolved here and answered by ``pooled_hidden_states``;
* ``unit_statistics`` (``args = (context, continuation, options)``): per-neuron running statistics
  for the safety-unit tasks;
* ``unit_layout`` (``args = ({},)``): what the unit scores need from the weights.

:func:`install`, the one place that puts them on lm-eval's model classes (called by
:func:`safespace_tasks.install`, which the task core calls when a task is built), adds them to
``HFLM`` (so the stock ``--model hf`` and every subclass of it serve our tasks) only where absent,
gives every other backend a method that fails with a clear message (the sweep type, which only
resolves the layers, to every backend). ``safespace-hf`` (:class:`SafespaceHFLM`, registered when
this module is imported) is an ``HFLM`` that carries the methods itself.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import replace
from typing import Any

import torch
from lm_eval.api.model import LM
from lm_eval.api.registry import register_model
from lm_eval.models.huggingface import HFLM
from lm_eval.models.utils import Collator

try:  # helpers behind HFLM.tok_encode (lm-eval 0.4.10+); without them texts are encoded one by one
    from lm_eval.models.utils import _add_special_kwargs, has_bos_prefix
except ImportError:  # pragma: no cover - depends on the installed lm-eval
    _add_special_kwargs = has_bos_prefix = None
from tqdm import tqdm

from safespace_tasks.capture import (
    CaptureError,
    HiddenState,
    capture_pooled,
    capture_unit_stats,
    find_decoder_parts,
    module_input_sites,
    pad_batch,
    resolve_layers,
)
from safespace_tasks.layer_spec import resolve_spec
from safespace_tasks.stats.units import UnitStatistics
from safespace_tasks.state_cache import StateCache, digest

log = logging.getLogger(__name__)

REQUEST_TYPE = "pooled_hidden_states"
SWEEP_REQUEST_TYPE = "pooled_hidden_states_layers"
UNIT_REQUEST_TYPE = "unit_statistics"
TRUNCATION_SIDES = ("left", "right")

DEFAULT_OPTIONS: dict[str, Any] = {
    "layers": (-1,),
    "pooling": "last",
    "truncation_side": "left",
    "padding_side": "left",
    "state_cache": None,  # folder of the resumable state cache (off when None)
}
FINGERPRINT_KEY = "__safespace_model_fingerprint__"


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


def model_fingerprint(lm: LM) -> dict[str, Any]:
    """What identifies the model behind ``lm``: enough that two different models never match."""
    model = getattr(lm, "model", None)
    info: dict[str, Any] = {"backend": type(lm).__name__}
    if isinstance(model, torch.nn.Module):
        config = getattr(model, "config", None)
        info.update(
            model_class=type(model).__name__,
            name_or_path=getattr(config, "_name_or_path", None),
            revision=getattr(lm, "revision", None),
            dtype=str(getattr(model, "dtype", None)),
            n_params=int(sum(p.numel() for p in model.parameters())),
        )
        sample = hashlib.sha256()
        for param in (model.get_input_embeddings().weight, next(reversed(list(model.parameters())))):
            sample.update(param.detach().flatten()[:4096].float().cpu().numpy().tobytes())
        info["weights_sample"] = sample.hexdigest()[:16]
    tok = getattr(lm, "tokenizer", None)
    if tok is not None:
        info.update(tokenizer=getattr(tok, "name_or_path", None), vocab=len(tok), add_bos_token=getattr(lm, "add_bos_token", None))
    if model is None:
        info["model_args"] = {k: str(v) for k, v in vars(lm).items() if isinstance(v, (str, int, float))}
    return info


def check_response_cache(lm: LM) -> None:
    """Refuse an lm-eval ``--use_cache`` database written by another model.

    lm-eval keys its response cache by request only, so a database shared between two models
    would serve the first model's answers to the second. The first model to use a database
    leaves its fingerprint in it; any other model is stopped with a message.
    """
    dbdict = getattr(getattr(lm, "cache_hook", None), "dbdict", None)
    if dbdict is None:
        return
    mine = digest(model_fingerprint(lm))
    theirs = dbdict.get(FINGERPRINT_KEY)
    if theirs is None:
        dbdict[FINGERPRINT_KEY] = mine
        dbdict.commit()
    elif theirs != mine:
        raise RuntimeError(
            f"the --use_cache database {getattr(dbdict, 'filename', '')} holds responses of another model; lm-eval "
            "keys that cache by request only, so it would serve that model's answers to this one. Give each model "
            "its own --use_cache path."
        )


def _pad_id(lm: HFLM) -> int:
    tok = lm.tokenizer
    for candidate in (tok.pad_token_id, tok.eos_token_id, 0):
        if candidate is not None:
            return int(candidate)
    return 0


def _detect_batch_size(lm: HFLM, parts, longest: list[int], opts: dict[str, Any], probe_fn=None) -> int:
    """Largest batch (up to ``max_batch_size``) whose capture of the longest texts fits in memory.

    ``probe_fn(ids, mask)`` runs one capture (the pooled-state capture unless given)."""
    from accelerate.utils import find_executable_batch_size

    if probe_fn is None:
        def probe_fn(ids, mask):
            capture_pooled(lm.model, ids, mask, opts["layers"], opts["pooling"], parts, lm.mixed_precision_dtype)

    @find_executable_batch_size(starting_batch_size=int(lm.max_batch_size))
    def probe(batch_size: int) -> int:
        ids, mask = pad_batch([longest] * batch_size, _pad_id(lm), opts["padding_side"], lm.device)
        probe_fn(ids, mask)
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
    check_response_cache(self)
    max_len = int(self.max_length)
    items = []
    results: list[HiddenState | None] = [None] * len(requests)
    caches: dict[str, StateCache] = {}
    for index, req in enumerate(requests):
        text, options = req.args
        opts = normalize_options(options)
        layers = resolve_layers(opts["layers"], parts.n_layers)  # fail before any forward pass
        cache_key = None
        if opts["state_cache"]:
            folder = str(opts["state_cache"])
            if folder not in caches:
                caches[folder] = StateCache(folder, model_fingerprint(self))
            settings = {k: v for k, v in opts.items() if k != "state_cache"} | {"layers": layers, "max_length": max_len}
            cache_key = StateCache.key(text, settings)
        items.append((index, text, opts, cache_key))
    hits: dict[str, tuple] = {}
    for folder, cache in caches.items():
        hits.update(cache.get_many(it[3] for it in items if it[3] and it[2]["state_cache"] == folder))
    misses = []
    for index, text, opts, cache_key in items:
        if cache_key is not None and cache_key in hits:
            vec, layers, n_tokens, truncated = hits[cache_key]
            results[index] = HiddenState(vectors=vec, layers=layers, n_tokens=n_tokens, truncated=truncated, cached=True,
                                         n_layers=parts.n_layers)
        else:
            misses.append((index, text, opts, cache_key))
    todo = []
    for (index, _, opts, cache_key), toks in zip(misses, encode_texts(self, [m[1] for m in misses])):
        req = requests[index]
        if not toks:
            raise ValueError(
                f"{req.task_name} doc {req.doc_id}: the text is empty after tokenization; remove empty texts "
                "from the data (the plugin's loaders do) or check the prompt template."
            )
        truncated = len(toks) > max_len
        if truncated:
            toks = toks[-max_len:] if opts["truncation_side"] == "left" else toks[:max_len]
        todo.append((index, toks, opts, truncated, cache_key))
    if caches:
        log.info("pooled_hidden_states: %d of %d texts from the state cache", len(requests) - len(todo), len(requests))

    pbar = tqdm(total=len(requests), disable=disable_tqdm or self.rank != 0, desc="Running pooled_hidden_states requests")
    pbar.update(len(requests) - len(todo))
    if todo:
        # Batches never mix tasks: a text's state (float rounding depends on the batch's padded shape)
        # is then the same whichever other tasks run beside its task, and so are its task's metrics.
        # An auto batch size found for a group's longest texts is reused by every later group with the
        # same options whose texts are no longer.
        for opts, chunk, ids, mask in _batched(
            self, todo, group_fn=lambda x: {**x[2], "_task": requests[x[0]].task_name}, opts_of=lambda x: x[2],
            detect=lambda group: _detect_batch_size(self, parts, group[0][1], group[0][2]),
            reuse_key=lambda x: repr(sorted(x[2].items())),
        ):
            layers = resolve_layers(opts["layers"], parts.n_layers)
            vecs = capture_pooled(self.model, ids, mask, layers, opts["pooling"], parts, self.mixed_precision_dtype)
            fresh = []
            for (index, toks, _, truncated, cache_key), vec in zip(chunk, vecs):
                results[index] = HiddenState(vectors=vec, layers=layers, n_tokens=len(toks), truncated=truncated,
                                             n_layers=parts.n_layers)
                if cache_key is not None:
                    fresh.append((cache_key, vec, layers, len(toks), truncated))
            if fresh:  # committed per batch: a killed run resumes from here
                caches[str(opts["state_cache"])].put_many(fresh)
            pbar.update(len(chunk))
    pbar.close()
    for cache in caches.values():
        cache.close()
    return results  # type: ignore[return-value]


def pooled_hidden_states_layers(self, requests, disable_tqdm: bool = False) -> list[HiddenState]:
    """``pooled_hidden_states`` for requests whose ``layers`` option is a sweep (``all``, ranges).

    The option is resolved once against the model's depth (:func:`safespace_tasks.layer_spec.resolve_spec`:
    entries in the order written, each range ascending, an index named twice read once); a setting
    that does not fit the model (an index or bound out of range) fails here, before any forward pass.
    """
    if not requests:
        return []
    model = getattr(self, "model", None)
    if not isinstance(model, torch.nn.Module):  # a backend without hidden states: its own clear error
        return self.pooled_hidden_states(requests, disable_tqdm=disable_tqdm)
    n_layers = find_decoder_parts(model).n_layers
    resolved = {}
    plain = []
    for req in requests:
        text, options = req.args
        spec = tuple(options["layers"])
        if spec not in resolved:
            resolved[spec] = resolve_spec(spec, n_layers)[0]
        plain.append(replace(req, arguments=(text, {**options, "layers": resolved[spec]})))
    return self.pooled_hidden_states(plain, disable_tqdm=disable_tqdm)


UNIT_TOKENS = ("response", "prompt")
DEFAULT_UNIT_OPTIONS: dict[str, Any] = {
    "sites": ("mlp", "attn"),
    "tokens": "response",  # score the continuation's tokens; "prompt": the context's (no continuation needed)
    "padding_side": "left",
    # the context is a user request: wrap it in the tokenizer's chat template (with the generation
    # prompt); a tokenizer without one gets ``context + "\n"`` (``unit_layout`` reports which)
    "chat_template": False,
}


def normalize_unit_options(options: dict[str, Any] | None) -> dict[str, Any]:
    """Unit-statistics request options with defaults filled in and checked."""
    opts = {**DEFAULT_UNIT_OPTIONS, **(options or {})}
    unknown = set(opts) - set(DEFAULT_UNIT_OPTIONS)
    if unknown:
        raise ValueError(f"unknown unit_statistics request options {sorted(unknown)}; known: {sorted(DEFAULT_UNIT_OPTIONS)}")
    sites = opts["sites"]
    opts["sites"] = (sites,) if isinstance(sites, str) else tuple(str(x) for x in sites)
    if not opts["sites"] or len(set(opts["sites"])) != len(opts["sites"]):
        raise ValueError(f"sites must name at least one site, each once; got {list(opts['sites'])}.")
    if opts["tokens"] not in UNIT_TOKENS:
        raise ValueError(f"tokens must be one of {UNIT_TOKENS}; got {opts['tokens']!r}.")
    if opts["padding_side"] not in ("left", "right"):
        raise ValueError(f"padding_side must be 'left' or 'right'; got {opts['padding_side']!r}.")
    if not isinstance(opts["chat_template"], bool):
        raise ValueError(f"chat_template must be true or false; got {opts['chat_template']!r}.")
    return opts


def has_chat_template(lm: HFLM) -> bool:
    return bool(getattr(getattr(lm, "tokenizer", None), "chat_template", None))


def _as_request(lm: HFLM, context: str, opts: dict[str, Any]) -> str:
    """The context as the model sees it: chat-formatted when asked and the tokenizer has a template."""
    if not opts["chat_template"]:
        return context
    if has_chat_template(lm):
        return lm.apply_chat_template([{"role": "user", "content": context}], add_generation_prompt=True)
    return context + "\n"


def _unit_tokens(lm: HFLM, req, context: str, continuation: str, opts: dict[str, Any], max_len: int):
    """(token ids, first scored position, truncated) of one request.

    ``response``: context and continuation are encoded as lm-eval encodes a loglikelihood pair
    and only the continuation's tokens are scored, except that whitespace ending the context (the
    newline of ``request + "\\n"``, or of a chat template's assistant header) stays in the context
    and is not scored (lm-eval would move it into the continuation); ``prompt``: the context alone, every token
    scored except a leading BOS (an attention sink whose activations are outliers, not content).
    Too long: tokens are cut from the left, so the scored end survives. ``chat_template``: the
    context is formatted first (:func:`_as_request`); in ``prompt`` mode only the request's own
    tokens are then scored: the template's text before them is context (not scored) and its text
    after them (end of turn, generation prompt) is dropped (under causal attention it cannot change
    the request's activations), so the template tokens, the same in every language, never count.
    """
    raw = context
    context = _as_request(lm, context, opts)
    if opts["tokens"] == "prompt" and context != raw and raw and raw in context:
        pos = context.rindex(raw)
        prefix = list(lm.tok_encode(context[:pos]))
        toks = list(lm.tok_encode(context[: pos + len(raw)]))
        start = len(prefix) if toks[: len(prefix)] == prefix else len(prefix) - 1  # a merge across the seam
        if len(toks) - start <= 0:
            raise ValueError(f"{req.task_name} doc {req.doc_id}: the prompt has no tokens to score.")
    elif opts["tokens"] == "response":
        if not continuation:
            raise ValueError(
                f"{req.task_name} doc {req.doc_id}: the request has no response tokens to score (empty "
                "continuation); give each doc a response, or request tokens='prompt'."
            )
        if context != context.rstrip() and context.strip():
            # lm-eval's pair encoding moves the context's trailing whitespace (the newline after
            # 'request' without a template, or after a template's assistant header) into the
            # continuation, where it would be scored as a response token: keep it in the context
            whole = list(lm.tok_encode(context + continuation))
            ctx = list(lm.tok_encode(context))
            cut = len(ctx) if whole[: len(ctx)] == ctx else len(ctx) - 1  # a token merged across the seam is scored
            ctx, cont = whole[:cut], whole[cut:]
        else:
            ctx, cont = lm._encode_pair(context, continuation)
        if not cont:
            raise ValueError(f"{req.task_name} doc {req.doc_id}: the response {continuation!r} encodes to no tokens.")
        toks, start = list(ctx) + list(cont), len(ctx)
    else:
        toks = list(lm.tok_encode(context))
        bos = getattr(lm.tokenizer, "bos_token_id", None)
        start = 1 if toks and bos is not None and toks[0] == bos and len(toks) > 1 else 0
        if len(toks) - start <= 0:
            raise ValueError(f"{req.task_name} doc {req.doc_id}: the prompt has no tokens to score.")
    truncated = len(toks) > max_len
    if truncated:
        cut = len(toks) - max_len
        toks, start = toks[cut:], max(start - cut, 0)
    return toks, start, truncated


def _select_mask(chunk, mask: torch.Tensor, padding_side: str) -> torch.Tensor:
    """True at the scored tokens of each row (``chunk`` rows: (index, toks, start, ...))."""
    width = mask.shape[1]
    select = torch.zeros_like(mask, dtype=torch.bool)
    for row, item in enumerate(chunk):
        toks, start = item[1], item[2]
        offset = width - len(toks) if padding_side == "left" else 0
        select[row, offset + start : offset + len(toks)] = True
    return select


def unit_statistics(self: HFLM, requests, disable_tqdm: bool = False) -> list[UnitStatistics]:
    """Serve ``unit_statistics`` requests: ``args = (context, continuation, options)``.

    Per request, the running statistics (count, mean, M2 in float64) of the inputs of the MLP
    and attention output projections of every block over the scored tokens: the continuation's
    (``tokens='response'``, default) or the context's (``'prompt'``). Batched like the hidden-state
    request (lm-eval ``Collator``, longest first, int or ``auto`` batch size); the decoder stack
    only, stopped after the last block's site. Merge the returned statistics with
    :func:`safespace_tasks.stats.units.merge_all`: the result does not depend on batching or on how
    requests are split across processes.
    """
    if not requests:
        return []
    if getattr(self, "backend", "causal") != "causal":
        raise CaptureError(f"unit_statistics needs a decoder-only model; {type(self.model).__name__} is {self.backend}.")
    try:
        parts = find_decoder_parts(self.model)
    except CaptureError as err:
        raise CaptureError(f"{err} Model: {type(self.model).__name__}.") from err
    check_response_cache(self)
    max_len = int(self.max_length)
    todo = []
    for index, req in enumerate(requests):
        context, continuation, options = req.args
        opts = normalize_unit_options(options)
        module_input_sites(parts, opts["sites"], type(self.model).__name__)  # fail before any forward pass
        toks, start, truncated = _unit_tokens(self, req, context, continuation, opts, max_len)
        todo.append((index, toks, start, truncated, opts))
    results: list[UnitStatistics | None] = [None] * len(requests)
    pbar = tqdm(total=len(requests), disable=disable_tqdm or self.rank != 0, desc="Running unit_statistics requests")

    def run(opts, chunk, ids, mask):
        select = _select_mask(chunk, mask, opts["padding_side"])
        return capture_unit_stats(self.model, ids, mask, select, opts["sites"], parts, self.mixed_precision_dtype)

    for opts, chunk, ids, mask in _batched(
        self, todo, group_fn=lambda x: x[4], opts_of=lambda x: x[4],
        detect=lambda group: _detect_batch_size(
            self, parts, group[0][1], group[0][4],
            probe_fn=lambda ids, mask: run(group[0][4], [group[0]] * ids.shape[0], ids, mask)),
    ):
        for item, stats in zip(chunk, run(opts, chunk, ids, mask)):
            stats.truncated = int(item[3])
            results[item[0]] = stats
        pbar.update(len(chunk))
    pbar.close()
    return results  # type: ignore[return-value]


UNIT_LAYOUT_REQUEST_TYPE = "unit_layout"


def unit_layout_request(self: HFLM, requests, disable_tqdm: bool = False) -> list[dict[str, Any]]:
    """Serve ``unit_layout`` requests (``args = (options,)``, options empty): what the unit scores
    need from the weights, computed once per call and shared by every request of it:
    ``layout`` (:class:`~safespace_tasks.stats.units.UnitLayout`: shapes, squared outgoing-weight norms,
    parameter weights), ``fingerprint`` (the mask files' model fingerprint) and ``chat_template``
    (whether the tokenizer has one). Numbers only: no tensor and no model handle leave the backend.
    """
    if not requests:
        return []
    from safespace_tasks.capture import unit_layout
    from safespace_tasks.unit_masks import weights_fingerprint

    for req in requests:
        if any(req.args):
            raise ValueError(f"{req.task_name}: unit_layout takes no options; got {req.args!r}.")
    try:
        parts = find_decoder_parts(self.model)
        layout = unit_layout(self.model, parts)
    except CaptureError as err:
        raise CaptureError(f"{err} Model: {type(self.model).__name__}.") from err
    answer = {"layout": layout, "fingerprint": weights_fingerprint(self.model), "chat_template": has_chat_template(self),
              "model": str(getattr(getattr(self.model, "config", None), "_name_or_path", ""))}
    return [answer for _ in requests]


def encode_texts(lm: HFLM, texts: list[str]) -> list[list[int]]:
    """Token ids of each text, exactly as ``lm.tok_encode(text)`` returns them.

    While the backend keeps lm-eval's own ``tok_encode`` and the tokenizer is a fast one, all texts
    go to the tokenizer in one batched call (one trip into the Rust tokenizer instead of one per
    text, and the BOS text decoded once), with the same special-token rule: ``add_bos_token`` when
    set, and no special tokens for a text that already starts with the BOS text. A backend that
    overrides ``tok_encode`` gets it called per text.
    """
    tok = lm.tokenizer
    if (
        len(texts) < 2
        or has_bos_prefix is None
        or type(lm).tok_encode is not HFLM.tok_encode
        or not getattr(tok, "is_fast", False)
    ):
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


def _batched(lm: HFLM, todo: list[tuple], *, group_fn, opts_of, detect, reuse_key=None):
    """THE batching loop of the request types: yields ``(options, chunk, ids, mask)`` per batch.

    ``todo`` rows are ``(index, token ids, ...)``. lm-eval's ``Collator`` groups them by
    ``group_fn(row)`` and orders each group longest first (ties by index); each group is cut into
    batches of ``lm.batch_size`` or, with ``auto``, of ``detect(group)`` (the largest size whose
    longest batch fits). ``reuse_key(row)``: a size found for a key is reused by a later group with the
    same key whose rows are no longer. Each batch is padded to ``ids``/``mask`` on the side its
    options (``opts_of(row)``) name.
    """
    collator = Collator(todo, sort_fn=lambda x: (-len(x[1]), x[0]), group_fn=group_fn, group_by="gen_kwargs")
    batch_size: int | None = None if str(lm.batch_size).startswith("auto") else int(lm.batch_size)
    found: dict[str, tuple[int, int]] = {}
    for group in collator.get_batched(n=0):
        group = list(group)
        opts = opts_of(group[0])
        size = batch_size
        if size is None:
            key, longest = (reuse_key(group[0]) if reuse_key else None), len(group[0][1])
            if key is not None and key in found and found[key][1] >= longest:
                size = found[key][0]
            else:
                size = detect(group)
                if key is not None:
                    found[key] = (size, longest)
        for start in range(0, len(group), size):
            chunk = group[start : start + size]
            ids, mask = pad_batch([c[1] for c in chunk], _pad_id(lm), opts["padding_side"], lm.device)
            yield opts, chunk, ids, mask


def _unsupported_units(self: LM, requests, *args, **kwargs):
    raise NotImplementedError(
        f"the model backend {type(self).__name__} does not expose per-neuron activations, which the safespace "
        "unit tasks need. Run them with --model hf (or safespace-hf)."
    )


def _unsupported(self: LM, requests, *args, **kwargs):
    raise NotImplementedError(
        f"the model backend {type(self).__name__} does not expose hidden states, which the safespace "
        "representation tasks need. Run them with --model hf (or safespace-hf), or pick the behavioural "
        "safespace tasks for this backend."
    )


@register_model("safespace-hf")
class SafespaceHFLM(HFLM):
    """``hf`` with the hidden-state request type built in (same arguments as ``--model hf``).

    One addition: data parallelism without GPUs. The stock backend shards documents across
    ``accelerate launch`` processes only when it sees several GPUs; on CPU every process then
    evaluates everything. This class shards on CPU too (gloo), so
    ``ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes N safespace-eval --model safespace-hf ...``
    splits the texts and rank 0 aggregates them once.
    """

    pooled_hidden_states = pooled_hidden_states
    unit_statistics = unit_statistics
    unit_layout = unit_layout_request

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        accelerator = getattr(self, "accelerator", None)
        if accelerator is not None and accelerator.num_processes > 1 and self._world_size == 1:
            if accelerator.device.type != "cpu":
                return  # GPU data parallelism is the stock backend's business
            self._device = accelerator.device
            self._rank = accelerator.process_index
            self._world_size = accelerator.num_processes
            log.info("safespace-hf: CPU data parallel, rank %d of %d", self._rank, self._world_size)


# request type -> (the HFLM method, what every other backend answers)
_METHODS = {
    REQUEST_TYPE: (pooled_hidden_states, _unsupported),
    UNIT_REQUEST_TYPE: (unit_statistics, _unsupported_units),
    UNIT_LAYOUT_REQUEST_TYPE: (unit_layout_request, _unsupported_units),
}


def install() -> None:
    """THE place the request types reach lm-eval's model classes (idempotent)."""
    for request_type, (method, unsupported) in _METHODS.items():
        if not hasattr(LM, request_type):
            setattr(LM, request_type, unsupported)
        if getattr(HFLM, request_type, None) in (None, unsupported):
            setattr(HFLM, request_type, method)
    if not hasattr(LM, SWEEP_REQUEST_TYPE):  # resolves the layers, then asks the backend's pooled_hidden_states
        setattr(LM, SWEEP_REQUEST_TYPE, pooled_hidden_states_layers)
