"""Captures of a decoder-only transformer: SITES x REDUCERS, read with hooks, one code path.

torch only; knows nothing of lm-eval. Given a model, token ids and the sites to read, it runs the
model's decoder stack (never the LM head, so no logits are computed), hands each site's tensor to a
reducer, and stops the forward pass as soon as every site has been read.

* sites: the residual stream at hidden-state index i (:class:`ResidualSite`), or the input of a
  named sub-module in every block (:class:`ModuleInputSite`; ``"mlp"`` = the MLP output projection
  ``mlp.down_proj`` / GPT-2 ``mlp.c_proj``, ``"attn"`` = the attention output projection
  ``self_attn.o_proj`` / GPT-2 ``attn.c_proj``; see ``MODULE_INPUT_PATHS``), resolved by module
  path with an error that names the model class and every path tried.
* reducers: pool one token or the mean (:func:`capture_pooled`: one vector per text and layer), or
  per-channel running statistics over selected tokens (:func:`capture_unit_stats`: count, mean and
  M2 in float64 per text, mergeable across batches and processes).

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

from safespace_tasks.layer_spec import LayerSpecError, absolute_indices
from safespace_tasks.stats.units import RunningStats, UnitLayout, UnitStatistics

__all__ = [
    "POOLINGS",
    "CaptureError",
    "DecoderParts",
    "HiddenState",
    "find_decoder_parts",
    "resolve_layers",
    "pad_batch",
    "capture_pooled",
    "capture_unit_stats",
    "MODULE_INPUT_PATHS",
    "ResidualSite",
    "ModuleInputSite",
    "resolve_module_path",
    "module_input_sites",
    "unit_layout",
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
    # the model's number of decoder blocks (its hidden states are 0..n_layers); None in a response
    # that an lm-eval --use_cache database kept from a version that did not carry it
    n_layers: int | None = None

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
        # a stack that wants hidden_states and no input_ids (BertEncoder) sits below the embeddings
        takes_token_ids = "input_ids" in params or "hidden_states" not in params
    except (TypeError, ValueError):
        accepts_position_ids, takes_token_ids = False, True
    if not takes_token_ids:
        raise CaptureError(
            f"{type(model).__name__}: the module that holds its blocks ({type(base).__name__}) does not take token ids, "
            "so its blocks cannot be driven from text; this is the shape of encoder-only models (BERT, RoBERTa, "
            "...), whose states are no layer choice away. Capture drives decoder-only transformers whose decoder "
            "stack takes input_ids: Llama, Gemma, Qwen, Mistral, Phi, GPT-2, GPT-NeoX, OPT and their kin."
        )
    return DecoderParts(base=base, blocks=blocks, final_norm=final_norm, accepts_position_ids=accepts_position_ids)


def resolve_layers(layers: Sequence[int], n_layers: int) -> tuple[int, ...]:
    """Absolute hidden-state indices in [0, n_layers]; negative indices count from the end (-1 = final).

    :func:`safespace_tasks.layer_spec.absolute_indices`, raising :class:`CaptureError`."""
    try:
        return absolute_indices(layers, n_layers)
    except LayerSpecError as err:
        raise CaptureError(str(err)) from None


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
    """Raised from the last site's hook to end the forward pass early."""


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


# ---------------------------------------------------------------------------------------------
# Sites: where a hook reads. A residual site is a hidden-state index (see the module docstring);
# a module-input site is the input of one named sub-module in every block, found by the first of
# its candidate paths that exists in every block.

MODULE_INPUT_PATHS: dict[str, tuple[str, ...]] = {
    # input of the MLP output projection: one channel per MLP neuron
    "mlp": ("mlp.down_proj", "mlp.c_proj", "mlp.dense_4h_to_h", "mlp.fc2", "feed_forward.w2"),
    # input of the attention output projection: n_heads x head_dim channels (grouped k/v or not)
    "attn": ("self_attn.o_proj", "attn.c_proj", "self_attn.out_proj", "self_attn.dense", "attention.dense", "attention.wo"),
}


@dataclass(frozen=True)
class ResidualSite:
    """Hidden-state index ``index`` (absolute, 0..L)."""

    index: int

    @property
    def key(self):
        return self.index


@dataclass(frozen=True)
class ModuleInputSite:
    """The input of sub-module ``path`` of block ``block`` (0-based)."""

    name: str  # logical name, e.g. "mlp"
    path: str  # resolved module path inside the block, e.g. "mlp.down_proj"
    block: int

    @property
    def key(self):
        return (self.name, self.block)


def resolve_module_path(parts: DecoderParts, name_or_paths, model_name: str = "") -> str:
    """The first candidate path (for a logical name in ``MODULE_INPUT_PATHS``, or the paths given)
    that every block holds; a :class:`CaptureError` names the model class and every path tried."""
    if isinstance(name_or_paths, str):
        candidates = MODULE_INPUT_PATHS.get(name_or_paths, (name_or_paths,))
    else:
        candidates = tuple(name_or_paths)
    for path in candidates:
        try:
            for block in parts.blocks:
                block.get_submodule(path)
        except AttributeError:
            continue
        return path
    block_cls = type(parts.blocks[0]).__name__
    raise CaptureError(
        f"{model_name or type(parts.base).__name__}: no block ({block_cls}) holds any of the module paths "
        f"{list(candidates)}; unit statistics know Llama/Qwen/Mistral/Gemma style blocks (mlp.down_proj, "
        "self_attn.o_proj) and GPT-2 style blocks (mlp.c_proj, attn.c_proj). Name this model's paths explicitly."
    )


def module_input_sites(parts: DecoderParts, names: Sequence[str], model_name: str = "") -> list[ModuleInputSite]:
    """One :class:`ModuleInputSite` per block for each logical name (or explicit module path)."""
    sites = []
    for name in names:
        path = resolve_module_path(parts, name, model_name)
        sites.extend(ModuleInputSite(name, path, b) for b in range(parts.n_layers))
    return sites


@contextmanager
def _hooks(parts: DecoderParts, sites: Sequence, reduce_fn, sink: dict) -> Iterator[None]:
    """Hooks that hand each site's tensor to ``reduce_fn(site, tensor)`` into ``sink[site.key]``;
    the hook that records the last missing site ends the forward pass (early exit)."""
    handles = []
    n_sites = len(sites)

    def record(site, hidden):
        sink[site.key] = reduce_fn(site, hidden)
        if len(sink) == n_sites:
            raise _Stop

    def make_hook(site, pre: bool):
        def hook(module, args, kwargs_or_output, *rest):
            if pre and args:
                hidden = args[0]
            elif pre and isinstance(site, ModuleInputSite):  # a projection called with a keyword argument
                hidden = next(iter(kwargs_or_output.values()), None)
            elif pre:
                hidden = kwargs_or_output.get("hidden_states")
            else:
                hidden = _first_tensor(rest[0] if rest else kwargs_or_output)
            record(site, hidden)

        return hook

    try:
        for site in sites:
            if isinstance(site, ModuleInputSite):
                module = parts.blocks[site.block].get_submodule(site.path)
                handles.append(module.register_forward_pre_hook(make_hook(site, True), with_kwargs=True))
                continue
            index = site.index
            if index == 0:
                block = parts.blocks[0]
                handles.append(block.register_forward_pre_hook(make_hook(site, True), with_kwargs=True))
            elif index == parts.n_layers and parts.final_norm is not None:
                handles.append(parts.final_norm.register_forward_hook(make_hook(site, False)))
            elif index == parts.n_layers:
                raise CaptureError(
                    "this model has no recognisable final norm, so the final layer (after the norm) cannot be "
                    f"hooked; request layer {parts.n_layers - 1} or lower, or use a model with a final norm."
                )
            else:
                handles.append(parts.blocks[index - 1].register_forward_hook(make_hook(site, False)))
        yield
    finally:
        for h in handles:
            h.remove()


def _run_sites(model, parts: DecoderParts | None, input_ids, attention_mask, sites, reduce_fn, autocast_dtype) -> dict:
    """The one capture path: hooks on ``sites``, the decoder stack only, early exit."""
    parts = parts or find_decoder_parts(model)
    sink: dict = {}
    kwargs = {"input_ids": input_ids, "attention_mask": attention_mask, "use_cache": False}
    if parts.accepts_position_ids:
        kwargs["position_ids"] = (attention_mask.long().cumsum(dim=1) - 1).clamp(min=0)
    device_type = input_ids.device.type
    with _hooks(parts, sites, reduce_fn, sink), torch.autocast(
        device_type=device_type, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None
    ):
        try:
            parts.base(**kwargs)
        except _Stop:
            pass
    missing = [s for s in sites if s.key not in sink]
    if missing:
        raise CaptureError(f"the forward pass never reached sites {missing}; the model's forward skips them.")
    return sink


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
    sites = [ResidualSite(i) for i in abs_layers]

    def pool_fn(site, hidden: torch.Tensor) -> torch.Tensor:
        return _pool(hidden, attention_mask, last_index, pooling)

    sink = _run_sites(model, parts, input_ids, attention_mask, sites, pool_fn, autocast_dtype)
    stacked = torch.stack([sink[i].to("cpu") for i in abs_layers], dim=1)
    return stacked.numpy()


def _row_stats(hidden: torch.Tensor, select: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-row count, mean and M2 (float64) of ``hidden`` (batch x tokens x channels) over the
    tokens where ``select`` (batch x tokens, bool) holds; two passes, so exact in float64. Only the
    selected tokens are converted to float64 (padding and unscored tokens cost nothing)."""
    sel = select.to(hidden.device)
    rows = sel.nonzero(as_tuple=True)
    x = hidden[rows].to(torch.float64)  # selected tokens x channels
    row_of = rows[0]
    batch, channels = hidden.shape[0], hidden.shape[-1]
    count = sel.sum(dim=1)
    total = torch.zeros(batch, channels, dtype=torch.float64, device=hidden.device).index_add_(0, row_of, x)
    mean = total / count.clamp(min=1).unsqueeze(-1).to(torch.float64)
    dev = x.sub_(mean[row_of])
    m2 = torch.zeros_like(total).index_add_(0, row_of, dev.mul_(dev))
    return count, mean, m2


@torch.no_grad()
def capture_unit_stats(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    select: torch.Tensor,
    sites: Sequence[str] = ("mlp", "attn"),
    parts: DecoderParts | None = None,
    autocast_dtype: torch.dtype | None = None,
) -> list[UnitStatistics]:
    """Per-row running statistics of the inputs of the named sub-modules of every block.

    ``select`` (batch x tokens, bool) marks the tokens to score (padding must be False there).
    Returns one :class:`~safespace_tasks.stats.units.UnitStatistics` per row; ``sites[name]`` holds
    count, mean and M2 (float64) of shape (layers x channels). Memory is O(batch x units): no
    token's activations are kept past its layer.
    """
    parts = parts or find_decoder_parts(model)
    if select.shape != attention_mask.shape:
        raise CaptureError(f"select {tuple(select.shape)} must have the shape of attention_mask {tuple(attention_mask.shape)}.")
    select = select.bool() & attention_mask.bool()
    all_sites = module_input_sites(parts, sites, type(model).__name__)

    def stats_fn(site, hidden: torch.Tensor):
        count, mean, m2 = _row_stats(hidden, select)
        return count.cpu(), mean.cpu(), m2.cpu()

    sink = _run_sites(model, parts, input_ids, attention_mask, all_sites, stats_fn, autocast_dtype)
    counts = select.sum(dim=1).cpu().numpy()
    out = []
    for row in range(input_ids.shape[0]):
        per_site = {}
        for name in sites:
            means = np.stack([sink[(name, b)][1][row].numpy() for b in range(parts.n_layers)])
            m2s = np.stack([sink[(name, b)][2][row].numpy() for b in range(parts.n_layers)])
            per_site[name] = RunningStats(int(counts[row]), means, m2s)
        out.append(UnitStatistics(per_site, n_docs=1, n_tokens=int(attention_mask[row].sum())))
    return out


def _weight_as_out_in(module: torch.nn.Module) -> torch.Tensor:
    """The weight of a projection as (out_features x in_features): ``nn.Linear`` stores it so,
    GPT-2's ``Conv1D`` transposed."""
    weight = getattr(module, "weight", None)
    if not isinstance(weight, torch.Tensor) or weight.ndim != 2:
        raise CaptureError(f"{type(module).__name__} has no 2-D weight; cannot score its input channels.")
    if type(module).__name__ == "Conv1D":
        return weight.detach().t()
    return weight.detach()


def _attention_shape(model: torch.nn.Module, parts: DecoderParts, attn_path: str) -> tuple[int, int, int]:
    config = _text_config(model)
    n_heads = getattr(config, "num_attention_heads", None) or getattr(config, "n_head", None)
    if not n_heads:
        raise CaptureError(f"{type(model).__name__}: the config names no number of attention heads.")
    width = _weight_as_out_in(parts.blocks[0].get_submodule(attn_path)).shape[1]
    if width % n_heads:
        raise CaptureError(f"{type(model).__name__}: {attn_path} takes {width} channels, not a multiple of {n_heads} heads.")
    n_kv = getattr(config, "num_key_value_heads", None) or n_heads
    return int(n_heads), int(width // n_heads), int(n_kv)


@torch.no_grad()
def unit_layout(model: torch.nn.Module, parts: DecoderParts | None = None) -> UnitLayout:
    """Shapes, squared outgoing-weight norms and parameter weights of the model's units.

    A neuron weighs its rows of the MLP input projections (gate and up, or GPT-2's ``c_fc``) and
    its column of the output projection; a head its q rows and o_proj columns plus its share of
    the k/v rows (``n_kv_heads / n_heads`` of a k and a v block); weights only, biases not counted.
    """
    parts = parts or find_decoder_parts(model)
    name = type(model).__name__
    mlp_path = resolve_module_path(parts, "mlp", name)
    attn_path = resolve_module_path(parts, "attn", name)
    n_heads, head_dim, n_kv = _attention_shape(model, parts, attn_path)
    mlp_norms, attn_norms = [], []
    for block in parts.blocks:
        w_mlp = _weight_as_out_in(block.get_submodule(mlp_path)).float()
        w_attn = _weight_as_out_in(block.get_submodule(attn_path)).float()
        mlp_norms.append((w_mlp.double() ** 2).sum(dim=0).cpu().numpy())
        attn_norms.append((w_attn.double() ** 2).sum(dim=0).cpu().numpy())
    hidden = int(_weight_as_out_in(parts.blocks[0].get_submodule(mlp_path)).shape[0])
    n_neurons = int(mlp_norms[0].shape[0])
    n_in = sum(1 for p in ("gate_proj", "up_proj", "c_fc", "fc1", "w1", "w3", "dense_h_to_4h")
               if _has(parts.blocks[0], mlp_path.rpartition(".")[0], p))
    params_neuron = (max(n_in, 1) + 1) * hidden  # its input rows and its output column (weights; biases not counted)
    params_head = 2 * head_dim * hidden + 2 * head_dim * hidden * n_kv / n_heads
    if len({a.shape for a in mlp_norms}) != 1 or len({a.shape for a in attn_norms}) != 1:
        raise CaptureError(f"{name}: blocks differ in width; unit statistics need blocks of one shape.")
    return UnitLayout(
        n_layers=parts.n_layers, n_neurons=n_neurons, n_heads=n_heads, head_dim=head_dim,
        mlp_out_sq_norm=np.stack(mlp_norms), attn_out_sq_norm=np.stack(attn_norms),
        params_per_neuron=float(params_neuron), params_per_head=float(params_head), n_kv_heads=n_kv, model_class=name,
    )


def _has(block: torch.nn.Module, parent: str, child: str) -> bool:
    try:
        block.get_submodule(f"{parent}.{child}" if parent else child)
        return True
    except AttributeError:
        return False
