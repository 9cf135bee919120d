"""Scale-out and robustness: data parallel, invariance to incidental settings, bad input, resumability."""

from __future__ import annotations

import glob
import json
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from safespace_tasks import task_manager
from safespace_tasks.states import load_states
from helpers import BIN, results_of, run_script

SEPARATION = ("bcv_ratio", "bhattacharyya", "silhouette", "probe_auroc")


def details_of(results_file_or_folder) -> dict:
    """The safespace details file beside a results JSON (or in its folder)."""
    folder = Path(results_file_or_folder)
    folder = folder if folder.is_dir() else folder.parent
    return json.loads(next(folder.glob("safespace_details_*.json")).read_text())


def degenerate_reason(details: dict, task: str, metric: str) -> str | None:
    """Why ``metric`` of ``task`` is NaN, as the details file names it (None when it names nothing)."""
    for layer in details[task].get("metrics_by_layer", {}).values():
        why = layer.get("error") or layer.get("degenerate", {}).get(metric)
        if why:
            return why
    return None


def assert_same_metrics(a: dict, b: dict, tasks, metrics=SEPARATION, rel=1e-4, details=None):
    """Both runs give the same numbers; a NaN (in both, ``nan_ok``) only where both details files
    (``details=(details_a, details_b)``) name the degenerate reason."""
    for task in tasks:
        for m in metrics:
            va, vb = a["results"][task][f"{m},none"], b["results"][task][f"{m},none"]
            va, vb = (float("nan") if v is None else v for v in (va, vb))  # a results file writes NaN as null
            assert vb == pytest.approx(va, rel=rel, abs=1e-7, nan_ok=True), (task, m, va, vb)
            if va != va:
                assert details is not None, (task, m, "NaN without a details file to name the reason")
                for d in details:
                    assert degenerate_reason(d, task, m), (task, m, "NaN without a named reason")


# --------------------------------------------------------------------------- data parallel

DP_TASKS = ["safespace-toxicity-en", "safespace-paradetox-de", "safespace-detoxpref-de", "safespace-continuation-en"]


def _dp_args(model, out, model_name="safespace-hf"):
    # greedy, one continuation per prompt: generation is deterministic, so ranks must reproduce one process
    return ["--model", model_name, "--model_args", f"pretrained={model},dtype=float32", "--device", "cpu",
            "--tasks", ",".join(DP_TASKS), "--limit", "21", "--batch_size", "4", "--output_path", str(out),
            "--gen_kwargs", "do_sample=false,max_gen_toks=8",
            "--metadata", json.dumps({"bootstrap_iters": 30, "samples_per_prompt": 1})]


def _accelerate(args, env, cwd):
    cmd = [str(BIN / "accelerate"), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(29500 + os.getpid() % 400),
           *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=cwd, timeout=1800,
                          env={**os.environ, "ACCELERATE_USE_CPU": "1", "TOKENIZERS_PARALLELISM": "false", **env})
    if proc.returncode != 0:
        raise AssertionError(f"accelerate launch failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}")
    return proc.stdout + proc.stderr


def test_two_cpu_processes_give_the_single_process_numbers(tiny_model_long, mirror, tmp_path):
    env = {"SAFESPACE_DATA_DIR": str(mirror)}
    single = tmp_path / "single"
    run_script("safespace-eval", _dp_args(tiny_model_long, single), env_extra=env, cwd=tmp_path)
    dp = tmp_path / "dp"
    log = _accelerate([str(BIN / "safespace-eval"), *_dp_args(tiny_model_long, dp)], env, tmp_path)
    # rank 0 (the only rank with a progress bar) ran 11 of the 21 texts of each hidden-state task
    assert "Running pooled_hidden_states requests: 100%|██████████| 22/22" in log
    r1, f1 = results_of(single)
    r2, f2 = results_of(dp)  # rank 0 alone writes results
    both = (details_of(f1), details_of(f2))
    assert_same_metrics(r1, r2, DP_TASKS[:2], details=both)
    assert_same_metrics(r1, r2, ["safespace-paradetox-de"], metrics=("paired_shift", "pair_order_acc"), details=both)
    assert r2["results"]["safespace-detoxpref-de"]["likelihood_preference,none"] == pytest.approx(
        r1["results"]["safespace-detoxpref-de"]["likelihood_preference,none"])
    for task, n in (("safespace-toxicity-en", 21), ("safespace-paradetox-de", 20)):
        b = load_states(glob.glob(str(f2 / f"safespace_states_{task}_*.npz"))[0])
        assert len(b.ids) == n and len(set(b.ids.tolist())) == n  # each text once, none lost
        assert r2["results"][task]["sample_len"] == 21
    assert r2["results"]["safespace-detoxpref-de"]["sample_len"] == 21
    cont1, cont2 = r1["results"]["safespace-continuation-en"], r2["results"]["safespace-continuation-en"]
    assert cont2["sample_len"] == 21
    for m in ("expected_max_toxicity", "toxicity_probability", "mean_toxicity"):
        assert cont2[f"{m},none"] == pytest.approx(cont1[f"{m},none"], abs=1e-9), m


def test_stock_lm_eval_under_accelerate_matches_one_process(tiny_model_long, mirror, tmp_path):
    include = run_script("safespace", ["include-path"]).strip()
    env = {"SAFESPACE_DATA_DIR": str(mirror)}
    args = _dp_args(tiny_model_long, tmp_path / "dp", model_name="hf") + ["--include_path", include]
    _accelerate(["-m", "lm_eval", *args], env, tmp_path)
    single = tmp_path / "single"
    run_script("lm_eval", _dp_args(tiny_model_long, single, model_name="hf") + ["--include_path", include],
            env_extra=env, cwd=tmp_path)
    r1, f1 = results_of(single)
    for path in glob.glob(str(tmp_path / "dp" / "*" / "results_*.json")):
        assert_same_metrics(r1, json.loads(Path(path).read_text()), DP_TASKS[:2],
                            details=(details_of(f1), details_of(path)))


# --------------------------------------------------------------------------- invariance


@pytest.fixture(scope="module")
def lm(tiny_model):
    from lm_eval.models.huggingface import HFLM

    return HFLM(pretrained=str(tiny_model), device="cpu", dtype="float32", batch_size=1)


def _evaluate(lm, mirror, tasks=("safespace-toxicity-en", "safespace-toxicity-zh"), limit=30, **meta):
    import lm_eval

    metadata = {"data_dir": str(mirror), "bootstrap_iters": 0, **meta}
    return lm_eval.simple_evaluate(model=lm, tasks=list(tasks), limit=limit, task_manager=task_manager(metadata=metadata, include_defaults=False),
                                   metadata=metadata, random_seed=0, numpy_random_seed=0, torch_random_seed=0)


def test_batch_size_padding_side_and_repeat_runs_do_not_change_the_numbers(lm, mirror):
    tasks = ["safespace-toxicity-en", "safespace-toxicity-zh"]
    lm.batch_size_per_gpu = 1
    base = _evaluate(lm, mirror)
    lm.batch_size_per_gpu = 7
    seven = _evaluate(lm, mirror)
    assert_same_metrics(base, seven, tasks)
    lm.batch_size_per_gpu = "auto"
    assert_same_metrics(base, _evaluate(lm, mirror), tasks)
    lm.batch_size_per_gpu = 7
    assert_same_metrics(base, _evaluate(lm, mirror, padding_side="right"), tasks)
    again = _evaluate(lm, mirror)
    for task in tasks:  # same settings, same seed: the same numbers to the last bit
        for m in SEPARATION:
            assert again["results"][task][f"{m},none"] == seven["results"][task][f"{m},none"]


def test_a_language_alone_and_beside_others_gives_identical_values_and_stderr(lm, mirror):
    """Batches never mix tasks, so a language's states, values and bootstrap do not depend on the run."""
    lm.batch_size_per_gpu = 8
    alone = _evaluate(lm, mirror, tasks=("safespace-toxicity-en",), bootstrap_iters=40)
    beside = _evaluate(lm, mirror, tasks=("safespace-toxicity-en", "safespace-toxicity-de", "safespace-toxicity-zh"),
                       bootstrap_iters=40)
    a, b = alone["results"]["safespace-toxicity-en"], beside["results"]["safespace-toxicity-en"]
    for m in SEPARATION:
        assert a[f"{m},none"] == b[f"{m},none"], m
        assert a[f"{m}_stderr,none"] == b[f"{m}_stderr,none"], m
    assert isinstance(a["bcv_ratio_stderr,none"], float) and a["bcv_ratio_stderr,none"] > 0  # a real bootstrap ran


def test_document_order_does_not_change_the_numbers(lm, mirror, tmp_path):
    lm.batch_size_per_gpu = 8
    rows = (mirror / "multilingual_toxicity_dataset" / "en.jsonl").read_text(encoding="utf-8").splitlines()
    subset = rows[:15] + rows[-15:]  # both classes
    for name, order in (("a", subset), ("b", random.Random(3).sample(subset, len(subset)))):
        folder = tmp_path / name / "multilingual_toxicity_dataset"
        folder.mkdir(parents=True)
        (folder / "en.jsonl").write_text("\n".join(order) + "\n", encoding="utf-8")
    a = _evaluate(lm, tmp_path / "a", tasks=["safespace-toxicity-en"], limit=None)
    b = _evaluate(lm, tmp_path / "b", tasks=["safespace-toxicity-en"], limit=None)
    assert_same_metrics(a, b, ["safespace-toxicity-en"])


# --------------------------------------------------------------------------- bad input


def _one_language_mirror(tmp_path, rows):
    folder = tmp_path / "multilingual_toxicity_dataset"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "en.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    return tmp_path


def test_a_language_with_one_class_is_reported_not_measured(lm, tmp_path, caplog):
    lm.batch_size_per_gpu = 8
    root = _one_language_mirror(tmp_path, [{"text": f"a friendly sentence number {i}", "toxic": 0} for i in range(20)])
    out = _evaluate(lm, root, tasks=["safespace-toxicity-en"], limit=None)
    row = out["results"]["safespace-toxicity-en"]
    assert all(np.isnan(row[f"{m},none"]) for m in SEPARATION)
    assert "0 non-toxic" in caplog.text or "20 non-toxic and 0 toxic" in caplog.text
    from safespace_tasks.stats.validation import SeparationInputError

    with pytest.raises(SeparationInputError, match="each class"):
        _evaluate(lm, root, tasks=["safespace-toxicity-en"], limit=None, strict=True)


def test_a_language_smaller_than_the_metrics_need(lm, mirror, caplog):
    lm.batch_size_per_gpu = 8
    out = _evaluate(lm, mirror, tasks=["safespace-toxicity-de"], limit=8)
    assert np.isnan(out["results"]["safespace-toxicity-de"]["bcv_ratio,none"])
    assert "k + 2 = 12" in caplog.text


def test_empty_whitespace_and_contradictory_texts_are_counted_in_the_results(lm, tmp_path):
    lm.batch_size_per_gpu = 8
    rows = [{"text": f"kind words {i}", "toxic": 0} for i in range(12)] + [
        {"text": f"awful insult {i}", "toxic": 1} for i in range(12)] + [
        {"text": "", "toxic": 0}, {"text": " \t ", "toxic": 1}, {"text": "kind words 0", "toxic": 1}]
    out = _evaluate(lm, _one_language_mirror(tmp_path, rows), tasks=["safespace-toxicity-en"], limit=None,
                    pca_components=4)
    row = out["results"]["safespace-toxicity-en"]
    assert row["n_excluded,none"] == 4  # 2 empty + both copies of the contradictory text
    assert row["sample_len"] == 23 and np.isfinite(row["bcv_ratio,none"])


def test_nan_states_name_the_overflow(tmp_path, mirror, tiny_model, caplog):
    import torch
    from transformers import AutoModelForCausalLM
    from lm_eval.models.huggingface import HFLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    with torch.no_grad():
        model.model.norm.weight.fill_(float("inf"))
    broken = tmp_path / "broken"
    model.save_pretrained(broken)
    shutil.copy(Path(tiny_model) / "tokenizer.json", broken)
    shutil.copy(Path(tiny_model) / "tokenizer_config.json", broken)
    out = _evaluate(HFLM(pretrained=str(broken), device="cpu", dtype="float32", batch_size=8), mirror,
                    tasks=["safespace-toxicity-en"], limit=20)
    assert np.isnan(out["results"]["safespace-toxicity-en"]["bcv_ratio,none"])
    assert "NaN or inf" in caplog.text and "bfloat16 or float32" in caplog.text


def test_a_backend_without_hidden_states_says_so(mirror):
    import lm_eval

    meta = {"data_dir": str(mirror)}
    with pytest.raises(NotImplementedError, match="does not expose hidden states.*--model hf"):
        lm_eval.simple_evaluate(model="dummy", tasks=["safespace-toxicity-en"], limit=4,
                                task_manager=task_manager(metadata=meta), metadata=meta)


def test_a_shared_use_cache_between_two_models_is_refused(tiny_model, tiny_model_long, mirror, tmp_path):
    env = {"SAFESPACE_DATA_DIR": str(mirror)}
    cache = str(tmp_path / "lmcache")
    base = ["--device", "cpu", "--tasks", "safespace-detoxpref-en", "--limit", "4", "--use_cache", cache]
    run_script("safespace-eval", ["--model", "hf", "--model_args", f"pretrained={tiny_model_long}", *base], env, tmp_path)
    run_script("safespace-eval", ["--model", "hf", "--model_args", f"pretrained={tiny_model_long}", *base], env, tmp_path)
    with pytest.raises(AssertionError, match="holds responses of another model"):
        run_script("safespace-eval", ["--model", "hf", "--model_args", f"pretrained={tiny_model}", *base], env, tmp_path)


# --------------------------------------------------------------------------- resumability


def test_a_restarted_run_reuses_saved_states_and_never_another_models(lm, tiny_model_long, mirror, tmp_path):
    from lm_eval.models.huggingface import HFLM

    lm.batch_size_per_gpu = 8
    cache = str(tmp_path / "states")
    first = _evaluate(lm, mirror, tasks=["safespace-toxicity-en"], limit=16, state_cache=cache, save_states_dir=str(tmp_path / "a"))
    assert first["results"]["safespace-toxicity-en"]["sample_len"] == 16
    resumed = _evaluate(lm, mirror, tasks=["safespace-toxicity-en"], limit=30, state_cache=cache, save_states_dir=str(tmp_path / "b"))
    fresh = _evaluate(lm, mirror, tasks=["safespace-toxicity-en"], limit=30)
    assert_same_metrics(fresh, resumed, ["safespace-toxicity-en"], rel=1e-5)
    meta = load_states(next((tmp_path / "b").glob("*.npz"))).meta
    assert meta["n_from_state_cache"] == 16
    other = HFLM(pretrained=str(tiny_model_long), device="cpu", dtype="float32", batch_size=8)
    _evaluate(other, mirror, tasks=["safespace-toxicity-en"], limit=30, state_cache=cache, save_states_dir=str(tmp_path / "c"))
    assert load_states(next((tmp_path / "c").glob("*.npz"))).meta["n_from_state_cache"] == 0
    assert len(list(Path(cache).glob("states-*.sqlite"))) == 2
