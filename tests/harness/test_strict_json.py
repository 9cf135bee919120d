"""Every JSON file a run of every family writes is strict JSON (no NaN, no Infinity), and each null says why.

One ``safespace-eval --tasks 'safespace_*'`` run on the tiny model over the real mirror (``--limit 4``, small
settings: about 25 s of CPU), then ``safespace report`` on it. With 4 texts per language many metrics cannot be
computed, which is the point: each must be ``null`` with its reason, never ``NaN``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from helpers import REAL_MIRROR, run_cli, shared_cache_root

from safespace_tasks.strict_json import reject_constant

FAMILIES = ("toxicity", "paradetox", "detoxpref", "recognition", "continuation", "detox", "refusal", "direction",
            "transfer", "units")


@pytest.fixture(scope="module")
def every_family_run(tiny_model, tmp_path_factory):
    out = tmp_path_factory.mktemp("strict_json")
    meta = {"bootstrap_iters": 10, "n_permutations": 5, "pca_components": 2, "samples_per_prompt": 2, "n_samples": 8,
            "n_control": 4}
    proc = run_cli(["--model", "hf", "--model_args", f"pretrained={tiny_model},dtype=float32", "--device", "cpu",
                    "--tasks", "safespace_*", "--limit", "4", "--batch_size", "8", "--gen_kwargs", "max_gen_toks=4",
                    "--output_path", str(out), "--metadata", json.dumps(meta)],
                   {"SAFESPACE_DATA_DIR": str(REAL_MIRROR), "SAFESPACE_CACHE": str(shared_cache_root(tmp_path_factory))},
                   timeout=1500)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return out


def _strict(path: Path):
    return json.loads(path.read_text(encoding="utf-8"), parse_constant=reject_constant)


def test_every_json_file_of_every_family_is_strict_and_each_null_has_its_reason(every_family_run):
    files = sorted(every_family_run.rglob("*.json"))
    docs = {f.name.split("_2")[0]: _strict(f) for f in files}  # raises on NaN / Infinity
    assert {"results", "safespace_details", "safespace_units_safespace-units"} <= set(docs)
    results, details = docs["results"], docs["safespace_details"]
    rows = {**results["results"], **results.get("groups", {})}
    assert {t.split("-")[1] if "-" in t else t.split("_")[1] for t in rows if t.startswith("safespace")} >= set(FAMILIES)
    nulls = [(row, key) for row, values in rows.items() for key, v in values.items() if v is None]
    assert nulls, "4 texts per language leave some metric uncomputable: the test must see nulls"
    for row, key in nulls:
        reason = details["null_values"][row][key]
        assert reason.startswith(("could not be computed", "mean over languages", "no standard error")), (row, key)
    for values in rows.values():  # probe_permutations 0: the probe's null floor has no key at all
        assert not [k for k in values if k.startswith(("probe_auroc_null", "probe_auroc_p,", "probe_auroc_p_"))]
        assert not [k for k, v in values.items() if isinstance(v, float) and not math.isfinite(v)]


def test_the_report_summary_of_that_run_is_strict(every_family_run, tmp_path):
    from safespace_tasks.report import build_report

    res = build_report([every_family_run], tmp_path / "report", plots=False, progress=False)
    summary = _strict(res.summary)
    assert summary  # parsed without NaN / Infinity
