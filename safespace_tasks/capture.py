"""Pooled hidden states of a decoder-only transformer, read with hooks on the requested layers only.

torch only; knows nothing of lm-eval. Given a model, token ids and the layers to read, it runs the
model's decoder stack (never the LM head, so no logits are computed), pools one vector per text
and layer, and stops the forward pass right after the deepest requested layer.

Layer numbering follows ``output_hidden_states`` of transformers: index 0 is the input of the
first decoder block (the embedding output, scaled where the model scales it), index i the output
of decoder block i, and index L (= -1), the model's "final layer", is the last block's output
**after the final norm**, exactly ``hidden_states[-1]``. A hook on the last block alone would see
the state before that norm; the geometry differs, so index L hooks the norm.
"""

from __future__ import annotations

import inspect
import itertools
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np
import torch

__all__ = [
    "POOLINGS",
    "CaptureError",
    "DecoderParts",
    "HiddenState",
    "find_decoder_parts",
    "resolve_layers",
    "pad_batch",
    "capture_pooled",
]

POOLINGS = ("last", "mean")
_FINAL_NORM_NAMES = ("norm", "final_layer_norm", "ln_f", "final_norm", "norm_f", "final_layernorm")


class CaptureError(RuntimeError):
    """The model's structure or the request cannot be captured as asked."""


@dataclass(frozen=True)
class HiddenState:
    """One text's pooled states: ``vectors[j]`` is the state at ``layers[j]`` (float32).

    Its ``repr`` is short on purpose: lm-eval writes responses into ``--log_samples`` JSONL as
    strings, and raw vectors do not belong there.
    """

    vectors: np.ndarray
    layers: tuple[int, ...]
    n_tokens: int
    truncated: bool
    cached: bool = False

    def __repr__(self) -> str:
        return (
            f"HiddenState(layers={list(self.layers)}, dim={self.vectors.shape[-1]}, "
            f"tokens={self.n_tokens}, truncated={self.truncated})"
        )

    __str__ = __repr__


@dataclass
class DecoderParts:
    """Where the pieces of a decoder-only model live."""

    base: torch.nn.Module  # the decoder stack without LM head (e.g. LlamaModel)
    blocks: torch.nn.ModuleList
    final_norm: torch.nn.Module | None
    accepts_position_ids: bool

    @property
    def n_layers(self) -> int:
        return len(self.blocks)


def _text_config(model: torch.nn.Module):
    config = getattr(model, "config", None)
    if config is not None and hasattr(config, "get_text_config"):
        return config.get_text_config()
    return config


def find_decoder_parts(model: torch.nn.Module) -> DecoderParts:
    """Locate the decoder blocks (a ModuleList of ``num_hidden_layers`` modules), their parent
    module and the final norm. Raises :class:`CaptureError` for models of another shape."""
    config = _text_config(model)
    n_layers = getattr(config, "num_hidden_layers", None) or getattr(config, "n_layer", None)
    candidates = []
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) > 0 and (n_layers is None or len(module) == n_layers):
            candidates.append((name.count("."), name, module))
    if not candidates:
        raise CaptureError(
            f"{type(model).__name__}: found no list of {n_layers} decoder blocks; hidden-state capture supports "
            "decoder-only transformers (Llama, Gemma, Qwen, Mistral, GPT-2, GPT-NeoX, OPT, ...)."
        )
    _, blocks_name, blocks = min(candidates, key=lambda c: c[:2])
    parent_name = blocks_name.rpartition(".")[0]
    base = model.get_submodule(parent_name) if parent_name else model
    if base is model and hasattr(model, "lm_head"):
        raise CaptureError(f"{type(model).__name__}: the decoder blocks hang off the LM-head model itself; unsupported.")
    final_norm = None
    for attr in _FINAL_NORM_NAMES:
        candidate = getattr(base, attr, None)
        if isinstance(candidate, torch.nn.Module):
            final_norm = candidate
            break
    # OPT keeps blocks in model.decoder.layers and the norm on model.decoder
    try:
        params = inspect.signature(base.forward).parameters
        accepts_position_ids = "position_ids" in params
    except (TypeError, ValueError):
        accepts_position_ids = False
    return DecoderParts(base=base, blocks=blocks, final_norm=final_norm, accepts_position_ids=accepts_position_ids)


def resolve_layers(layers: Sequence[int], n_layers: int) -> tuple[int, ...]:
    """Absolute hidden-state indices in [0, n_layers]; negative indices count from the end (-1 = final)."""
    out = []
    for layer in layers:
        if isinstance(layer, bool) or not isinstance(layer, (int, np.integer)):
            raise CaptureError(f"layer indices must be integers; got {layer!r}.")
        idx = int(layer) + n_layers + 1 if layer < 0 else int(layer)
        if not 0 <= idx <= n_layers:
            raise CaptureError(
                f"layer {layer} is out of range for a model with {n_layers} decoder layers: hidden-state indices "
                f"run 0..{n_layers} (or -{n_layers + 1}..-1)."
            )
        out.append(idx)
    if len(set(out)) != len(out):
        raise CaptureError(f"layers {list(layers)} name the same hidden state twice.")
    return tuple(out)


def pad_batch(
    token_lists: Sequence[Sequence[int]], pad_id: int, padding_side: str = "left", device: torch.device | str = "cpu"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad token ids to one length; returns ``(input_ids, attention_mask)``.

    Filled in one vectorised scatter (no per-row tensor), so padding costs little next to a
    forward pass even for small models and large batches.
    """
    if padding_side not in ("left", "right"):
        raise CaptureError(f"padding_side must be 'left' or 'right'; got {padding_side!r}.")
    lengths = np.fromiter((len(t) for t in token_lists), dtype=np.int64, count=len(token_lists))
    if lengths.size == 0 or (lengths == 0).any():
        raise CaptureError("cannot capture a text with no tokens.")
    width = int(lengths.max())
    total = int(lengths.sum())
    flat = np.fromiter(itertools.chain.from_iterable(token_lists), dtype=np.int64, count=total)
    rows = np.repeat(np.arange(lengths.size), lengths)
    cols = np.arange(total) - np.repeat(np.cumsum(lengths) - lengths, lengths)  # position within its text
    if padding_side == "left":
        cols += np.repeat(width - lengths, lengths)
    ids = np.full((lengths.size, width), pad_id, dtype=np.int64)
    mask = np.zeros((lengths.size, width), dtype=np.int64)
    ids[rows, cols] = flat
    mask[rows, cols] = 1
    return torch.from_numpy(ids).to(device), torch.from_numpy(mask).to(device)


class _Stop(Exception):
    """Raised from the deepest hook to end the forward pass early."""


def _first_tensor(output) -> torch.Tensor:
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    for attr in ("last_hidden_state", "hidden_states"):
        hidden = getattr(output, attr, None)
        if isinstance(hidden, torch.Tensor):
            return hidden
    raise CaptureError(f"cannot read a hidden state from a module output of type {type(output).__name__}.")


def _pool(hidden: torch.Tensor, mask: torch.Tensor, last_index: torch.Tensor, pooling: str) -> torch.Tensor:
    mask = mask.to(hidden.device)
    if pooling == "last":
        rows = torch.arange(hidden.shape[0], device=hidden.device)
        return hidden[rows, last_index.to(hidden.device)].float()
    weights = mask.unsqueeze(-1).to(torch.float32)
    return (hidden.float() * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)


@contextmanager
def _hooks(parts: DecoderParts, layers: tuple[int, ...], sink: dict[int, torch.Tensor], pool_fn) -> Iterator[None]:
    deepest = max(layers)
    handles = []

    def make_hook(index: int, pre: bool):
        def hook(module, args, kwargs_or_output, *rest):
            if pre:
                hidden = args[0] if args else kwargs_or_output.get("hidden_states")
            else:
                hidden = _first_tensor(rest[0] if rest else kwargs_or_output)
            sink[index] = pool_fn(hidden)
            if index == deepest:
                raise _Stop

        return hook

    try:
        for index in layers:
            if index == 0:
                block = parts.blocks[0]
                handles.append(block.register_forward_pre_hook(make_hook(0, True), with_kwargs=True))
            elif index == parts.n_layers and parts.final_norm is not None:
                handles.append(parts.final_norm.register_forward_hook(make_hook(index, False)))
            elif index == parts.n_layers:
                raise CaptureError(
                    "this model has no recognisable final norm, so the final layer (after the norm) cannot be "
                    f"hooked; request layer {parts.n_layers - 1} or lower, or use a model with a final norm."
                )
            else:
                handles.append(parts.blocks[index - 1].register_forward_hook(make_hook(index, False)))
        yield
    finally:
        for h in handles:
            h.remove()


@torch.no_grad()
def capture_pooled(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    layers: Sequence[int] = (-1,),
    pooling: str = "last",
    parts: DecoderParts | None = None,
    autocast_dtype: torch.dtype | None = None,
) -> np.ndarray:
    """Pooled states (batch x len(layers) x hidden, float32 numpy) of one padded batch.

    ``pooling='last'`` takes the last real token (the last 1 of the attention mask, so left and
    right padding give the same answer); ``'mean'`` averages over real tokens.
    """
    if pooling not in POOLINGS:
        raise CaptureError(f"pooling must be one of {POOLINGS}; got {pooling!r}.")
    parts = parts or find_decoder_parts(model)
    abs_layers = resolve_layers(layers, parts.n_layers)
    width = attention_mask.shape[1]
    last_index = width - 1 - attention_mask.flip(1).argmax(dim=1)
    sink: dict[int, torch.Tensor] = {}
    kwargs = {"input_ids": input_ids, "attention_mask": attention_mask, "use_cache": False}
    if parts.accepts_position_ids:
        kwargs["position_ids"] = (attention_mask.long().cumsum(dim=1) - 1).clamp(min=0)

    def pool_fn(hidden: torch.Tensor) -> torch.Tensor:
        return _pool(hidden, attention_mask, last_index, pooling)

    device_type = input_ids.device.type
    with _hooks(parts, abs_layers, sink, pool_fn), torch.autocast(
        device_type=device_type, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None
    ):
        try:
            parts.base(**kwargs)
        except _Stop:
            pass
    missing = [i for i in abs_layers if i not in sink]
    if missing:
        raise CaptureError(f"the forward pass never reached hidden states {missing}; the model's forward skips them.")
    stacked = torch.stack([sink[i].to("cpu") for i in abs_layers], dim=1)
    return stacked.numpy()
