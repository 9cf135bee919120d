"""`safespace units stats | mask | prune` end to end on a tiny model and the mirror."""

from __future__ import annotations

import json

import numpy as np
import pytest

from safespace_tasks import units_cli


def test_stats_mask_prune_end_to_end(tiny_model, mirror, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("SAFESPACE_DATA_DIR", str(mirror))
    assert units_cli.main(["stats", "--model", str(tiny_model), "--out", str(tmp_path / "run"), "--n", "6",
                           "--batch-size", "3", "--max-length", "128"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["scored_tokens"]["safety"] > 0 and out["scored_tokens"]["utility"] > 0
    stats = tmp_path / "run" / "unit_stats.safetensors"
    assert units_cli.main(["mask", "--stats", str(stats), "--out", str(tmp_path / "mask.safetensors"),
                           "--scu", "0.05"]) == 0
    summary = json.loads(capsys.readouterr().out)
    shares = summary["shares"]
    assert abs(sum(v["params"] for v in shares.values()) - 1) < 1e-12
    assert 0 < shares["SCU"]["params"] <= 0.05 and 0 < shares["RU"]["params"] <= 0.10
    assert summary["counts"]["safety_docs"] == 6 and "split_half_scu" in summary
    assert units_cli.main(["prune", "--model", str(tiny_model), "--mask", str(tmp_path / "mask.safetensors"),
                           "--out", str(tmp_path / "pruned"), "--compensate", "--stats", str(stats)]) == 0
    pruned = json.loads(capsys.readouterr().out)
    assert pruned["compensated"] and pruned["pruned"]["neurons"] + pruned["pruned"]["heads"] > 0
    from lm_eval.models.huggingface import HFLM

    lm = HFLM(pretrained=str(tmp_path / "pruned"), device="cpu", batch_size=1)  # what `--model hf` does
    assert lm.model.config.mlp_bias


def test_bad_input_is_a_clear_message(tiny_model, tmp_path, capsys):
    assert units_cli.main(["mask", "--stats", str(tmp_path / "nope.safetensors"), "--out", str(tmp_path / "m")]) == 2
    assert "does not exist" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="unknown classes"):
        units_cli.main(["prune", "--model", str(tiny_model), "--mask", "m", "--out", "o", "--classes", "XYZ"])
