"""Unit mask files and pruned checkpoints (torch + safetensors; no lm-eval).

A mask file is a safetensors file with two uint8 tensors, ``mlp`` (layers x neurons) and
``attn`` (layers x heads), holding a class code per unit (``units.CLASSES``: CU 0, RU 1, SCU 2,
UCU 3), and string metadata: the model fingerprint, the data, the shares, the settings.

Pruning a head zeroes its rows of the query projection and its columns of the attention output
projection, so its contribution to the residual stream is exactly zero. Its key and value rows
are shared with the other query heads of its group under grouped-query attention: they are zeroed
only when every query head of the group is pruned (without grouping, always). Pruning a neuron
zeroes its rows of the MLP input projections (gate and up, or GPT-2's ``c_fc`` column and bias);
SiLU/GELU of zero is zero, so the neuron then contributes nothing. With bias compensation the
pruned channels' mean input (over the calibration tokens) times their outgoing weights is added
as a bias of the output projection, as FLAP does.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from safespace_tasks.capture import (
    CaptureError,
    _text_config,
    _weight_as_out_in,
    find_decoder_parts,
    resolve_module_path,
)
from safespace_tasks.stats.units import CLASSES, UnitLayout

__all__ = ["MaskError", "UnitMask", "weights_fingerprint", "fingerprints_match", "save_mask", "load_mask", "check_mask", "prune_model",
           "write_pruned_checkpoint"]

FORMAT = "safespace-unit-mask/1"


class MaskError(ValueError):
    """A mask file that cannot be written, read or applied as asked."""


FINGERPRINT_VERSION = 2
# values hashed from the start of each sampled tensor
_SAMPLE_VALUES = 4096


def _sampled_tensors(model: torch.nn.Module) -> list[tuple[str, torch.Tensor]]:
    parts = find_decoder_parts(model)
    tensors = [("embed", model.get_input_embeddings().weight)]
    for tag, block in (("first", parts.blocks[0]), ("last", parts.blocks[-1])):
        tensors.extend((f"{tag}.{n}", p) for n, p in sorted(block.named_parameters()))
    return tensors


@torch.no_grad()
def weights_fingerprint(model: torch.nn.Module) -> dict[str, Any]:
    """What identifies a model's weights, independent of where they were loaded from and in which
    dtype: the class, the layer count, the parameter count, a hash of every parameter's name and
    shape, and a hash of the first 4096 values of the embedding and of the first and last block's
    weights after rounding them to bfloat16 (round to nearest even, as ``Tensor.to`` does).

    So the same checkpoint gives the same fingerprint from any folder or path spelling, loaded in
    float32 or bfloat16 (a bfloat16 load is that rounding already), and a float16 checkpoint in any
    of the three dtypes. A float32 checkpoint loaded in float16 is rounded twice (to float16, then to
    bfloat16), which can move a value by one bfloat16 step: such a load is refused; load it in
    float32 or bfloat16. Fine-tuning moves weights by far more than one step, so a fine-tuned
    model's fingerprint differs from its base model's."""
    parts = find_decoder_parts(model)
    shapes = hashlib.sha256()
    for name, p in sorted(model.named_parameters()):
        shapes.update(f"{name}:{tuple(p.shape)};".encode())
    sample = hashlib.sha256()
    for _, t in _sampled_tensors(model):
        canonical = t.detach().flatten()[:_SAMPLE_VALUES].to(device="cpu", dtype=torch.bfloat16).view(torch.int16)
        sample.update(canonical.numpy().tobytes())
    return {
        "fingerprint_version": FINGERPRINT_VERSION,
        "model_class": type(model).__name__,
        "n_layers": parts.n_layers,
        "n_params": int(sum(p.numel() for p in model.parameters())),
        "shapes": shapes.hexdigest()[:16],
        "weights_sample": sample.hexdigest()[:20],
    }


@torch.no_grad()
def _fingerprint_v1(model: torch.nn.Module) -> dict[str, Any]:
    """The fingerprint masks written before version 2 carry, less the path (which it held, and which
    no longer has to match): a float32 hash of the same sample, so only a load in the mask's dtype fits."""
    parts = find_decoder_parts(model)
    sample = hashlib.sha256()
    for _, t in _sampled_tensors(model):
        sample.update(t.detach().flatten()[:_SAMPLE_VALUES].float().cpu().numpy().tobytes())
    return {"model_class": type(model).__name__, "n_layers": parts.n_layers,
            "n_params": int(sum(p.numel() for p in model.parameters())), "weights_sample": sample.hexdigest()[:20]}


def fingerprints_match(theirs: dict[str, Any] | None, model: torch.nn.Module) -> bool:
    """Whether a stored fingerprint (of either version) describes ``model``'s weights (path ignored)."""
    if not isinstance(theirs, dict):
        return False
    if theirs.get("fingerprint_version") == FINGERPRINT_VERSION:
        return theirs == weights_fingerprint(model)
    if "fingerprint_version" in theirs:
        return False
    old = {k: v for k, v in theirs.items() if k != "name_or_path"}
    return old == _fingerprint_v1(model)


class UnitMask:
    """Class labels per unit with the metadata that says where they come from."""

    def __init__(self, mlp: np.ndarray, attn: np.ndarray, metadata: dict[str, Any]):
        self.mlp = np.ascontiguousarray(mlp, dtype=np.uint8)  # safetensors writes the buffer as it lies
        self.attn = np.ascontiguousarray(attn, dtype=np.uint8)
        if self.mlp.ndim != 2 or self.attn.ndim != 2 or self.mlp.shape[0] != self.attn.shape[0]:
            raise MaskError(f"mask arrays must be (layers x neurons) and (layers x heads); got {self.mlp.shape}, {self.attn.shape}.")
        bad = set(np.unique(np.r_[self.mlp.ravel(), self.attn.ravel()]).tolist()) - set(CLASSES.values())
        if bad:
            raise MaskError(f"mask holds unknown class codes {sorted(bad)}; known: {CLASSES}.")
        self.metadata = dict(metadata)

    @classmethod
    def from_labels(cls, labels: np.ndarray, layout: UnitLayout, metadata: dict[str, Any]) -> "UnitMask":
        """From a canonical label vector (per layer: neurons, then heads; see ``units.unit_scores``)."""
        per = layout.n_neurons + layout.n_heads
        labels = np.asarray(labels).reshape(layout.n_layers, per)
        return cls(labels[:, : layout.n_neurons], labels[:, layout.n_neurons:], metadata)

    def selected(self, classes) -> tuple[np.ndarray, np.ndarray]:
        codes = [CLASSES[c] for c in classes]
        return np.isin(self.mlp, codes), np.isin(self.attn, codes)

    def counts(self) -> dict[str, dict[str, int]]:
        return {name: {"mlp": int((self.mlp == code).sum()), "attn": int((self.attn == code).sum())}
                for name, code in CLASSES.items()}


def save_mask(mask: UnitMask, path: str | Path) -> Path:
    from safetensors.numpy import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {"format": FORMAT, "classes": json.dumps(CLASSES)}
    meta.update({k: v if isinstance(v, str) else json.dumps(v, sort_keys=True) for k, v in mask.metadata.items()})
    save_file({"mlp": mask.mlp, "attn": mask.attn}, str(path), metadata=meta)
    return path


def load_mask(path: str | Path) -> UnitMask:
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise MaskError(f"mask file {path} does not exist; write one with `safespace units mask`.")
    try:
        with safe_open(str(path), framework="numpy") as f:
            meta = f.metadata() or {}
            arrays = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as err:  # noqa: BLE001 - any unreadable file ends the same way
        raise MaskError(f"{path} is not a readable safetensors mask file ({type(err).__name__}: {err}).") from err
    if meta.get("format") != FORMAT or set(arrays) != {"mlp", "attn"}:
        raise MaskError(f"{path} is not a unit mask file (format {meta.get('format')!r}, tensors {sorted(arrays)}).")
    if json.loads(meta["classes"]) != CLASSES:
        raise MaskError(f"{path} uses class codes {meta['classes']}, this version {CLASSES}.")
    parsed = {}
    for k, v in meta.items():
        if k in ("format", "classes"):
            continue
        try:
            parsed[k] = json.loads(v)
        except json.JSONDecodeError:
            parsed[k] = v
    return UnitMask(arrays["mlp"], arrays["attn"], parsed)


def check_mask(mask: UnitMask, model: torch.nn.Module) -> None:
    """Refuse a mask written for another model (fingerprint) or of another shape."""
    theirs = mask.metadata.get("model_fingerprint")
    if not fingerprints_match(theirs, model):
        mine = weights_fingerprint(model)
        raise MaskError(
            f"the mask was written for another model: mask fingerprint {theirs}, this model {mine}. Compute the "
            "unit statistics and the mask on this model (`safespace units stats`, then `safespace units mask`)."
        )


def _block_modules(model: torch.nn.Module):
    parts = find_decoder_parts(model)
    name = type(model).__name__
    mlp_path = resolve_module_path(parts, "mlp", name)
    attn_path = resolve_module_path(parts, "attn", name)
    return parts, mlp_path, attn_path


def _mlp_inputs(block, mlp_path: str):
    parent = block.get_submodule(mlp_path.rpartition(".")[0])
    found = [getattr(parent, n) for n in ("gate_proj", "up_proj", "c_fc", "fc1", "w1", "w3", "dense_h_to_4h") if hasattr(parent, n)]
    if not found:
        raise CaptureError(f"{type(parent).__name__}: found no MLP input projection (gate_proj/up_proj or c_fc).")
    return found


def _zero_out_rows(module: torch.nn.Module, rows: torch.Tensor) -> None:
    """Zero output channels ``rows`` of a projection (Linear rows; Conv1D columns) and their bias."""
    if type(module).__name__ == "Conv1D":
        module.weight[:, rows] = 0
    else:
        module.weight[rows, :] = 0
    if getattr(module, "bias", None) is not None:
        module.bias[rows] = 0


def _zero_in_cols(module: torch.nn.Module, cols: torch.Tensor) -> None:
    if type(module).__name__ == "Conv1D":
        module.weight[cols, :] = 0
    else:
        module.weight[:, cols] = 0


def _qkv(block, attn_path: str):
    parent = block.get_submodule(attn_path.rpartition(".")[0])
    if all(hasattr(parent, n) for n in ("q_proj", "k_proj", "v_proj")):
        return parent.q_proj, parent.k_proj, parent.v_proj, None
    if hasattr(parent, "c_attn"):  # GPT-2: one Conv1D producing q, k, v side by side
        return None, None, None, parent.c_attn
    raise CaptureError(f"{type(parent).__name__}: found neither q_proj/k_proj/v_proj nor c_attn.")


@torch.no_grad()
def prune_model(model: torch.nn.Module, mask: UnitMask, classes=("SCU",), mean_inputs: dict[str, np.ndarray] | None = None,
                check: bool = True) -> dict[str, int]:
    """Zero the units of ``classes`` in place (see the module docstring); with ``mean_inputs``
    (``{"mlp": layers x neurons, "attn": layers x channels}`` mean inputs of the output
    projections) add the pruned channels' mean contribution as the output projection's bias,
    which must exist (see :func:`write_pruned_checkpoint`). Returns counts of pruned units."""
    if check:
        check_mask(mask, model)
    parts, mlp_path, attn_path = _block_modules(model)
    config = _text_config(model)
    n_heads = int(getattr(config, "num_attention_heads", None) or getattr(config, "n_head"))
    n_kv = int(getattr(config, "num_key_value_heads", None) or n_heads)
    if mask.mlp.shape[0] != parts.n_layers or mask.attn.shape[1] != n_heads:
        raise MaskError(f"mask shape {mask.mlp.shape}/{mask.attn.shape} does not fit {parts.n_layers} layers x {n_heads} heads.")
    sel_mlp, sel_attn = mask.selected(classes)
    pruned = {"neurons": 0, "heads": 0, "kv_groups": 0}
    for l, block in enumerate(parts.blocks):
        down = block.get_submodule(mlp_path)
        o = block.get_submodule(attn_path)
        head_dim = _weight_as_out_in(o).shape[1] // n_heads
        neurons = torch.from_numpy(np.flatnonzero(sel_mlp[l]))
        heads = np.flatnonzero(sel_attn[l])
        if len(neurons):
            for proj in _mlp_inputs(block, mlp_path):
                _zero_out_rows(proj, neurons)
            if mean_inputs is not None:
                _compensate(down, neurons, mean_inputs["mlp"][l])
            pruned["neurons"] += len(neurons)
        if len(heads):
            chans = torch.from_numpy(np.concatenate([np.arange(h * head_dim, (h + 1) * head_dim) for h in heads]))
            q, k, v, c_attn = _qkv(block, attn_path)
            hidden = _weight_as_out_in(o).shape[0]
            if c_attn is not None:
                _zero_out_rows(c_attn, torch.cat([chans, chans + hidden, chans + 2 * hidden]))
            else:
                _zero_out_rows(q, chans)
                per_group = n_heads // n_kv
                for g in range(n_kv):
                    if set(range(g * per_group, (g + 1) * per_group)) <= set(heads.tolist()):
                        kv = torch.arange(g * head_dim, (g + 1) * head_dim)
                        _zero_out_rows(k, kv)
                        _zero_out_rows(v, kv)
                        pruned["kv_groups"] += 1
            if mean_inputs is not None:  # from the weights before they are zeroed
                _compensate(o, chans, mean_inputs["attn"][l])
            _zero_in_cols(o, chans)
            pruned["heads"] += len(heads)
    return pruned


def _compensate(module: torch.nn.Module, cols: torch.Tensor, mean_in: np.ndarray) -> None:
    """bias += W[:, cols] @ mean_in[cols] (W as out x in), from the weights before zeroing."""
    if getattr(module, "bias", None) is None:
        raise MaskError(f"{type(module).__name__} has no bias to take the compensation; enable it in the config first.")
    weight = _weight_as_out_in(module)
    mean = torch.as_tensor(np.asarray(mean_in)[cols.numpy()], dtype=torch.float64)
    module.bias += (weight[:, cols].double() @ mean).to(module.bias.dtype)


def _bias_flags(config) -> dict[str, bool]:
    """Config flags that give the MLP and attention output projections a bias (Llama style)."""
    flags = {}
    for flag in ("mlp_bias", "attention_bias"):
        if not hasattr(config, flag):
            raise MaskError(
                f"{type(config).__name__} has no {flag!r} setting, so a pruned checkpoint cannot carry compensation "
                "biases that transformers would load back; prune without --compensate for this model."
            )
        flags[flag] = True
    return flags


@torch.no_grad()
def write_pruned_checkpoint(src: str | Path, mask_path: str | Path, out: str | Path, classes=("SCU",),
                            mean_inputs: dict[str, np.ndarray] | None = None) -> dict[str, Any]:
    """Load the model folder ``src``, prune the mask's ``classes``, save an ordinary model folder
    (``save_pretrained`` + tokenizer) at ``out``. With ``mean_inputs``, bias compensation: a model
    whose output projections have no bias gets ``mlp_bias``/``attention_bias`` switched on in its
    config (new biases start at zero, so only the pruned units' compensation is nonzero)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    mask = load_mask(mask_path)
    model = AutoModelForCausalLM.from_pretrained(str(src), dtype="auto").eval()
    check_mask(mask, model)
    if mean_inputs is not None:
        parts, mlp_path, attn_path = _block_modules(model)
        needs_bias = any(getattr(parts.blocks[0].get_submodule(p), "bias", None) is None for p in (mlp_path, attn_path))
        if needs_bias:
            config = model.config
            for flag in _bias_flags(config):
                setattr(config, flag, True)
            state = model.state_dict()
            biased = AutoModelForCausalLM.from_config(config, dtype=model.dtype).eval()
            missing, unexpected = biased.load_state_dict(state, strict=False)
            if unexpected or any(not k.endswith(".bias") for k in missing):
                raise MaskError(f"switching biases on changed more than biases: missing {missing[:5]}, unexpected {unexpected[:5]}.")
            for name, param in biased.named_parameters():
                if name in missing:
                    param.zero_()
            biased.tie_weights()
            model = biased
    counts = prune_model(model, mask, classes, mean_inputs, check=False)
    out = Path(out)
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(str(src)).save_pretrained(out)
    info = {"source": str(src), "mask": str(mask_path), "classes": list(classes), "compensated": mean_inputs is not None,
            "pruned": counts, "mask_metadata": mask.metadata}
    (out / "safespace_pruning.json").write_text(json.dumps(info, indent=2, default=str))
    return info


# --- per-unit statistics files (what `safespace units stats` writes and `units mask` reads) -----

STATS_FORMAT = "safespace-unit-stats/1"


def save_unit_stats(path: str | Path, sets: dict[str, "UnitStatistics"], layout: UnitLayout, metadata: dict[str, Any],
                    extra: dict[str, np.ndarray] | None = None) -> Path:
    """One safetensors file: per set and site the count, mean and M2 (float64), the layout's
    weight norms, and JSON metadata (layout, fingerprint, data, settings). ``extra``: further
    arrays stored as they are (names starting ``arrays.``; :func:`load_unit_stats` leaves them)."""
    from safetensors.numpy import save_file

    tensors = {"layout.mlp_out_sq_norm": layout.mlp_out_sq_norm, "layout.attn_out_sq_norm": layout.attn_out_sq_norm}
    for name, array in (extra or {}).items():
        if not name.startswith("arrays."):
            raise MaskError(f"extra array {name!r} must be named 'arrays.<name>' (the other names are the statistics').")
        tensors[name] = np.ascontiguousarray(array)
    docs = {}
    for set_name, stats in sets.items():
        docs[set_name] = {"n_docs": stats.n_docs, "n_tokens": stats.n_tokens, "truncated": stats.truncated}
        for site, st in stats.sites.items():
            tensors[f"{set_name}.{site}.count"] = np.array([st.count], dtype=np.int64)
            tensors[f"{set_name}.{site}.mean"] = np.ascontiguousarray(st.mean, dtype=np.float64)
            tensors[f"{set_name}.{site}.m2"] = np.ascontiguousarray(st.m2, dtype=np.float64)
    meta = {"format": STATS_FORMAT, "layout": json.dumps(layout.to_dict()), "docs": json.dumps(docs)}
    meta.update({k: json.dumps(v, sort_keys=True, default=str) for k, v in metadata.items()})
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata=meta)
    return path


def load_unit_stats(path: str | Path) -> tuple[dict[str, "UnitStatistics"], UnitLayout, dict[str, Any]]:
    from safetensors import safe_open

    from safespace_tasks.stats.units import RunningStats, UnitStatistics

    path = Path(path)
    if not path.is_file():
        raise MaskError(f"unit statistics file {path} does not exist; write one with `safespace units stats`.")
    with safe_open(str(path), framework="numpy") as f:
        meta = f.metadata() or {}
        if meta.get("format") != STATS_FORMAT:
            raise MaskError(f"{path} is not a unit statistics file (format {meta.get('format')!r}).")
        arrays = {k: f.get_tensor(k) for k in f.keys()}
    info = {k: json.loads(v) for k, v in meta.items() if k != "format"}
    lay = info.pop("layout")
    layout = UnitLayout(mlp_out_sq_norm=arrays["layout.mlp_out_sq_norm"], attn_out_sq_norm=arrays["layout.attn_out_sq_norm"], **lay)
    docs = info.pop("docs")
    sets = {}
    for set_name, d in docs.items():
        sites = {}
        for site in ("mlp", "attn"):
            if f"{set_name}.{site}.mean" in arrays:
                sites[site] = RunningStats(int(arrays[f"{set_name}.{site}.count"][0]), arrays[f"{set_name}.{site}.mean"],
                                           arrays[f"{set_name}.{site}.m2"])
        sets[set_name] = UnitStatistics(sites, n_docs=d["n_docs"], n_tokens=d["n_tokens"], truncated=d["truncated"])
    return sets, layout, info


__all__ += ["save_unit_stats", "load_unit_stats"]
