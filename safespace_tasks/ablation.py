"""Mean-ablation of units in a model held in memory (the method's causal check; zero-ablation the variant).

Pruning (:func:`safespace_tasks.unit_masks.prune_model`) zeroes a unit's input rows, so its output
channel is zero (zero-ablation). The first author's code (on FLAP) then adds the pruned channels'
mean input over the calibration tokens through the outgoing weights as a bias of the output
projection: the unit's output is replaced by its calibration mean (mean-ablation). A Llama-style
model has no bias on ``down_proj`` / ``o_proj``; :func:`add_output_biases` gives each output
projection a zero bias first (only the pruned units' compensation is then non-zero), which is what
``safespace units prune`` does in the saved checkpoint by switching ``mlp_bias`` / ``attention_bias``
on.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from safespace_tasks.unit_masks import MaskError, UnitMask, _block_modules, check_mask, load_unit_stats, prune_model

__all__ = ["ABLATIONS", "calibration_means", "add_output_biases", "ablate"]

ABLATIONS = ("mean", "zero")


def calibration_means(stats_path: str | Path, sets: tuple[str, ...] = ("safety", "utility")) -> dict[str, np.ndarray]:
    """Per-channel mean input of the output projections over the calibration tokens of ``sets``
    (pooled, token-weighted): ``{"mlp": layers x neurons, "attn": layers x channels}``."""
    stats, _, _ = load_unit_stats(stats_path)
    missing = [s for s in sets if s not in stats]
    if missing:
        raise MaskError(f"{stats_path} has no set {missing} for the calibration means; it holds {', '.join(sorted(stats))}.")
    pooled = stats[sets[0]]
    for s in sets[1:]:
        pooled = pooled.merge(stats[s])
    return {site: np.asarray(pooled.sites[site].mean, np.float64) for site in ("mlp", "attn")}


@torch.no_grad()
def add_output_biases(model: torch.nn.Module) -> int:
    """Give every block's MLP and attention output projection a zero bias where it has none (in
    place); returns how many were added. The model's outputs do not change."""
    parts, mlp_path, attn_path = _block_modules(model)
    added = 0
    for block in parts.blocks:
        for path in (mlp_path, attn_path):
            module = block.get_submodule(path)
            if getattr(module, "bias", None) is None:
                weight = module.weight
                n_out = weight.shape[1] if type(module).__name__ == "Conv1D" else weight.shape[0]
                module.bias = torch.nn.Parameter(torch.zeros(n_out, dtype=weight.dtype, device=weight.device))
                added += 1
    return added


def ablate(model: torch.nn.Module, mask: UnitMask, classes=("SCU",), means: dict[str, np.ndarray] | None = None,
           ablation: str = "mean", check: bool = True) -> dict[str, Any]:
    """Ablate the units of ``classes`` in place: ``mean`` (default: zero the units, then add their
    calibration mean through the outgoing weights as a bias; needs ``means``) or ``zero``.
    ``check``: refuse a mask of another model, checked before any bias is added (added biases change
    the parameter count the fingerprint holds: a model given biases beforehand is checked by the caller)."""
    if ablation not in ABLATIONS:
        raise MaskError(f"ablation {ablation!r} is not known; choose 'mean' (the method's) or 'zero'.")
    if check:
        check_mask(mask, model)
    if ablation == "mean":
        if means is None:
            raise MaskError("mean-ablation needs the calibration means (calibration_means(stats file)); "
                            "pass them, or ask for zero-ablation.")
        add_output_biases(model)
        counts = prune_model(model, mask, classes, means, check=False)
    else:
        counts = prune_model(model, mask, classes, None, check=False)
    return {**counts, "ablation": ablation}
