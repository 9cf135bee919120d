"""Mean-ablation, the default causal check: the ablated model's output equals the unablated model's
with the ablated units' input channels replaced by their calibration mean (plain forward pre-hooks,
computed here), in memory (``safespace_tasks.ablation``) and in the checkpoint ``safespace units
prune`` writes by default; ``--zero-ablate`` replaces them by zero."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from safespace_tasks import units_cli
from safespace_tasks.ablation import ablate, add_output_biases, calibration_means
from safespace_tasks.stats.units import CLASSES, RunningStats, UnitStatistics


def _model(folder):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32).eval()


def _mask(model, stats_file=None):
    from safespace_tasks.unit_masks import UnitMask, weights_fingerprint

    cfg = model.config
    mlp = np.zeros((cfg.num_hidden_layers, cfg.intermediate_size), np.uint8)
    attn = np.zeros((cfg.num_hidden_layers, cfg.num_attention_heads), np.uint8)
    mlp[0, [1, 5, 9]] = CLASSES["SCU"]
    mlp[1, [0, 63]] = CLASSES["SCU"]
    attn[0, [0, 1]] = CLASSES["SCU"]  # a whole k/v group (4 heads, 2 groups)
    attn[1, 3] = CLASSES["SCU"]
    meta = {"model_fingerprint": weights_fingerprint(model)}
    if stats_file:
        meta["stats_file"] = str(stats_file)
    return UnitMask(mlp, attn, meta)


def _replaced(model, mask, means, ids):
    """Logits of the unablated model with the units' input channels set to ``means`` by hooks."""
    cfg = model.config
    hd = cfg.hidden_size // cfg.num_attention_heads
    handles = []
    for l, layer in enumerate(model.model.layers):
        neurons = torch.from_numpy(np.flatnonzero(mask.mlp[l] == CLASSES["SCU"]))
        chans = torch.tensor([h * hd + d for h in np.flatnonzero(mask.attn[l] == CLASSES["SCU"]) for d in range(hd)],
                             dtype=torch.long)

        def hook(mod, args, cols, mean):
            x = args[0].clone()
            x[..., cols] = torch.as_tensor(mean[cols.numpy()], dtype=x.dtype)
            return (x,)

        handles.append(layer.mlp.down_proj.register_forward_pre_hook(
            lambda m, a, c=neurons, mu=means["mlp"][l]: hook(m, a, c, mu)))
        handles.append(layer.self_attn.o_proj.register_forward_pre_hook(
            lambda m, a, c=chans, mu=means["attn"][l]: hook(m, a, c, mu)))
    with torch.no_grad():
        out = model(ids).logits
    for h in handles:
        h.remove()
    return out


def _means(model, rng):
    cfg = model.config
    return {"mlp": rng.normal(size=(cfg.num_hidden_layers, cfg.intermediate_size)),
            "attn": rng.normal(size=(cfg.num_hidden_layers, cfg.hidden_size))}


def test_mean_ablation_replaces_the_units_by_their_mean_and_zero_ablation_by_zero(tiny_model):
    ids = torch.tensor([[1, 40, 41, 42, 7, 99, 5]])
    base = _model(tiny_model)
    mask = _mask(base)
    means = _means(base, np.random.default_rng(0))
    expect_mean = _replaced(base, mask, means, ids)
    zeros = {k: np.zeros_like(v) for k, v in means.items()}
    expect_zero = _replaced(base, mask, zeros, ids)
    with torch.no_grad():
        plain = base(ids).logits
    assert add_output_biases(base) == 2 * base.config.num_hidden_layers  # zero biases change nothing
    with torch.no_grad():
        torch.testing.assert_close(base(ids).logits, plain, rtol=0, atol=0)

    model = _model(tiny_model)
    info = ablate(model, mask, ("SCU",), means)  # the default: mean
    assert info["ablation"] == "mean" and info["neurons"] == 5 and info["heads"] == 3 and info["kv_groups"] == 1
    with torch.no_grad():
        got = model(ids).logits
    torch.testing.assert_close(got, expect_mean, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(got, expect_zero, atol=1e-3)

    model = _model(tiny_model)
    assert ablate(model, mask, ("SCU",), ablation="zero")["ablation"] == "zero"
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, expect_zero, rtol=1e-5, atol=1e-5)
    from safespace_tasks.unit_masks import MaskError

    with pytest.raises(MaskError, match="needs the calibration means"):
        ablate(_model(tiny_model), mask, ("SCU",))


def test_units_prune_mean_ablates_by_default(tiny_model, tmp_path, capsys):
    from safespace_tasks.capture import unit_layout
    from safespace_tasks.unit_masks import save_mask, save_unit_stats

    base = _model(tiny_model)
    rng = np.random.default_rng(1)
    cfg = base.config
    shapes = {"mlp": (cfg.num_hidden_layers, cfg.intermediate_size), "attn": (cfg.num_hidden_layers, cfg.hidden_size)}
    sets = {name: UnitStatistics({s: RunningStats.of(rng.normal(loc=rng.normal(size=shp), size=(n,) + shp))
                                  for s, shp in shapes.items()}, n_docs=3)
            for name, n in (("safety", 11), ("utility", 29))}
    stats = save_unit_stats(tmp_path / "unit_stats.safetensors", sets, unit_layout(base), {"model": str(tiny_model)})
    mask = _mask(base, stats)
    mask_path = save_mask(mask, tmp_path / "mask.safetensors")
    pooled = sets["safety"].merge(sets["utility"])  # token-weighted pool of both calibration sets
    means = {s: pooled.sites[s].mean for s in shapes}
    np.testing.assert_allclose(calibration_means(stats)["mlp"], means["mlp"])
    ids = torch.tensor([[1, 12, 13, 99, 4]])
    expect = _replaced(base, mask, means, ids)

    assert units_cli.main(["prune", "--model", str(tiny_model), "--mask", str(mask_path), "--out", str(tmp_path / "m")]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["ablation"] == "mean" and out["compensated"]
    with torch.no_grad():
        torch.testing.assert_close(_model(tmp_path / "m")(ids).logits, expect, rtol=1e-5, atol=1e-5)

    assert units_cli.main(["prune", "--model", str(tiny_model), "--mask", str(mask_path), "--out", str(tmp_path / "z"),
                           "--zero-ablate"]) == 0
    assert json.loads(capsys.readouterr().out)["ablation"] == "zero"
    zeros = {k: np.zeros_like(v) for k, v in means.items()}
    with torch.no_grad():
        torch.testing.assert_close(_model(tmp_path / "z")(ids).logits, _replaced(base, mask, zeros, ids), rtol=1e-5, atol=1e-5)

    bare = save_mask(_mask(base), tmp_path / "bare.safetensors")  # names no statistics file
    assert units_cli.main(["prune", "--model", str(tiny_model), "--mask", str(bare), "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert "--stats" in err and "--zero-ablate" in err
