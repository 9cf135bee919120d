"""End to end through lm-eval on a tiny random model: the drop-in CLI, the stock CLI, the Python API."""

from __future__ import annotations

import glob
import json
from pathlib import Path

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import StratifiedKFold, cross_val_predict
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from safespace_tasks.data import TOXICITY
from safespace_tasks.states import load_states

from helpers import results_of, run_script


@pytest.fixture(scope="module")
def dropin_run(tiny_model, mirror, tmp_path_factory):
    """safespace-eval over every safespace task family, mirror from the environment."""
    out = tmp_path_factory.mktemp("dropin")
    stdout = run_script(
        "safespace-eval",
        ["--model", "hf", "--model_args", f"pretrained={tiny_model},dtype=float32", "--device", "cpu",
         "--tasks", "safespace_toxicity", "--limit", "40", "--batch_size", "8", "--output_path", str(out),
         "--log_samples", "--metadata", json.dumps({"bootstrap_iters": 50})],
        env_extra={"SAFESPACE_DATA_DIR": str(mirror)},
        cwd=out,
    )
    results, folder = results_of(out)
    return stdout, results, folder


def test_dropin_prints_one_row_per_language_and_a_family_row(dropin_run):
    stdout, results, folder = dropin_run
    details = json.loads(next(folder.glob("safespace_details_*.json")).read_text())
    n_na = 0
    for lang in TOXICITY.languages:
        task = f"safespace-toxicity-{lang}"
        row = results["results"][task]
        spread = details[task]["metrics_by_layer"]["2"]["spread"]
        assert row["alias"] == lang and row["sample_len"] == 40
        for metric in ("bcv_ratio", "bhattacharyya", "silhouette", "probe_auroc"):
            assert np.isfinite(row[f"{metric},none"])
            se = row[f"{metric}_stderr,none"]
            if se == "N/A":  # allowed only where the details name the degenerate replicates
                n_na += 1
                assert "bootstrap replicates are degenerate" in spread[metric]["reason"]
                assert spread[metric]["n_degenerate"] > 0.25 * spread[metric]["n_replicates"]
            else:
                assert isinstance(se, float) and se > 0 and spread[metric]["reason"] is None
        assert 0.0 <= row["bcv_ratio,none"] <= 1.0 and -1 <= row["silhouette,none"] <= 1
        # the null floor and the permutation p-value of every metric (the probe's null is off by default)
        for metric in ("bcv_ratio", "bhattacharyya", "silhouette"):
            assert np.isfinite(row[f"{metric}_null,none"]) and row[f"{metric}_null_stderr,none"] == "N/A"
            p = row[f"{metric}_p,none"]
            assert 1 / 101 <= p <= 1 and p * 101 == pytest.approx(round(p * 101))  # (1 + #exceed) / (1 + 100)
        assert 0 <= row["bcv_ratio_null,none"] <= 1 and row["bhattacharyya_null,none"] >= 0
        assert "probe_auroc_null,none" not in row and "probe_auroc_p,none" not in row  # not computed: no key
        assert f"| - {lang} " in stdout
    assert n_na < len(TOXICITY.languages)  # N/A is the exception, not the rule
    group = results["results"]["safespace_toxicity"]
    mean = np.mean([results["results"][f"safespace-toxicity-{l}"]["bcv_ratio,none"] for l in TOXICITY.languages])
    assert group["bcv_ratio,none"] == pytest.approx(mean)
    assert isinstance(group["bcv_ratio_stderr,none"], float)
    # the family row averages no null and no p-value (a mean of p-values is not a p-value)
    assert not [k for k in group if "_null" in k or "_p," in k]
    assert "|safespace_toxicity|" in stdout.replace(" ", "")


def test_saved_states_reproduce_the_reported_metrics(dropin_run):
    _, results, folder = dropin_run
    for lang in ("en", "am", "zh"):
        task = f"safespace-toxicity-{lang}"
        files = glob.glob(str(folder / f"safespace_states_{task}_*.npz"))
        assert len(files) == 1
        b = load_states(files[0])
        row = results["results"][task]
        assert b.states.shape[0] == 40 and b.states.dtype == np.float32 and list(b.layers) == [2]
        assert sorted(b.labels.tolist()) == [0] * 20 + [1] * 20
        # plain numpy: centred float64 SVD for PCA-10 (the metrics are sign-invariant per component)
        X, y = b.states[:, 0], b.labels
        X64 = X.astype(np.float64)
        Xc = X64 - X64.mean(0)
        Z = Xc @ np.linalg.svd(Xc, full_matrices=False)[2][:10].T
        dists = np.sqrt(np.maximum(((Z[:, None] - Z[None]) ** 2).sum(-1), 0))
        sil = []
        for i in range(len(y)):
            same = (y == y[i]) & (np.arange(len(y)) != i)
            a_i, b_i = dists[i, same].mean(), dists[i, y != y[i]].mean()
            sil.append((b_i - a_i) / max(a_i, b_i))
        assert row["silhouette,none"] == pytest.approx(float(np.mean(sil)), rel=1e-6)
        mu = Z.mean(0)
        ssb = sum((y == c).sum() * np.sum((Z[y == c].mean(0) - mu) ** 2) for c in (0, 1))
        ssw = sum(np.sum((Z[y == c] - Z[y == c].mean(0)) ** 2) for c in (0, 1))
        assert row["bcv_ratio,none"] == pytest.approx(ssb / (ssb + ssw), rel=1e-6)
        c0, c1 = np.cov(Z[y == 0].T), np.cov(Z[y == 1].T)
        d = Z[y == 1].mean(0) - Z[y == 0].mean(0)
        cb = (c0 + c1) / 2
        ridge = b.meta["metrics_by_layer"]["2"]["diagnostics"]["bhattacharyya_ridge"]
        cb, c0, c1 = (c + ridge * np.eye(10) for c in (cb, c0, c1))
        mean_term = d @ np.linalg.solve(cb, d) / 8
        cov_term = 0.5 * (np.linalg.slogdet(cb)[1] - 0.5 * (np.linalg.slogdet(c0)[1] + np.linalg.slogdet(c1)[1]))
        bd = mean_term + cov_term
        assert row["bhattacharyya,none"] == pytest.approx(bd, rel=1e-6)
        # its two terms, reported as diagnostics (no stderr)
        assert row["bhattacharyya_mean_term,none"] == pytest.approx(mean_term, rel=1e-6)
        assert row["bhattacharyya_cov_term,none"] == pytest.approx(cov_term, rel=1e-6, abs=1e-9)
        assert row["bhattacharyya_mean_term_stderr,none"] == "N/A"
        cv = StratifiedKFold(5, shuffle=True, random_state=1234)
        probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
        scores = cross_val_predict(probe, X, y, cv=cv, method="decision_function")
        assert row["probe_auroc,none"] == pytest.approx(roc_auc_score(y, scores), rel=1e-6)
        # ids point back at the language's rows in the mirror
        assert len(set(b.ids.tolist())) == 40 and b.meta["language"] == lang


def test_log_samples_hold_no_raw_vectors(dropin_run):
    _, _, folder = dropin_run
    sample_files = glob.glob(str(folder / "samples_safespace-toxicity-en_*.jsonl"))
    assert sample_files
    lines = Path(sample_files[0]).read_text().splitlines()
    assert len(lines) == 40
    for line in lines:
        assert len(line) < 4000
        rec = json.loads(line)
        assert rec["filtered_resps"][0].startswith("HiddenState(")


def test_details_file_carries_intervals_and_data_exclusions(dropin_run):
    _, results, folder = dropin_run
    details = json.loads(next(folder.glob("safespace_details_*.json")).read_text())
    ja = details["safespace-toxicity-ja"]
    assert ja["data"]["conflicting_labels"] == results["results"]["safespace-toxicity-ja"]["n_excluded,none"] > 0
    layer = ja["metrics_by_layer"]["2"]
    lo, hi = layer["ci"]["bcv_ratio"]
    assert lo <= hi and layer["n_boot"] == 50


def test_stock_lm_eval_with_include_path_and_auto_batch(tiny_model, mirror, tmp_path):
    include = run_script("safespace", ["include-path"]).strip()
    assert Path(include, "toxicity", "_safespace_toxicity.yaml").is_file()
    stdout = run_script(
        "lm_eval",
        ["--model", "hf", "--model_args", f"pretrained={tiny_model},dtype=float32", "--device", "cpu",
         "--include_path", include, "--tasks", "safespace-toxicity-en,safespace-toxicity-am", "--limit", "24",
         "--batch_size", "auto", "--output_path", str(tmp_path), "--metadata", json.dumps({"data_dir": str(mirror)})],
        env_extra={"SAFESPACE_DATA_DIR": ""},
        cwd=tmp_path,
    )
    results, folder = results_of(tmp_path)
    assert set(results["results"]) == {"safespace-toxicity-en", "safespace-toxicity-am"}
    assert results["results"]["safespace-toxicity-am"]["n_truncated,none"] > 0  # 128-token model, long Amharic texts
    assert len(list(folder.glob("safespace_states_*.npz"))) == 2
    rows = [line.split("|")[1].strip() for line in stdout.splitlines() if line.startswith("|")]
    assert "en" in rows and "am" in rows  # standalone tasks print under their alias


def test_glob_selects_each_task_once(mirror, monkeypatch):
    from safespace_tasks import task_manager

    monkeypatch.setenv("SAFESPACE_DATA_DIR", str(mirror))
    tm = task_manager()
    names = tm.match_tasks(["safespace_*"])
    assert "safespace_toxicity" in names
    assert not any(n.startswith("safespace-toxicity-") for n in names)
    loaded = tm.load(names)  # raises "Duplicate task" if the glob caught a group and its subtasks
    assert {f"safespace-toxicity-{l}" for l in TOXICITY.languages} <= set(loaded["tasks"])


def test_python_api_with_chat_template_counts_truncation(tiny_model, mirror, tmp_path):
    import lm_eval
    from transformers import AutoTokenizer

    from safespace_tasks import task_manager

    meta = {"data_dir": str(mirror), "bootstrap_iters": 0, "save_states_dir": str(tmp_path), "layers": [-1, 1]}
    out = lm_eval.simple_evaluate(
        model="hf", model_args=f"pretrained={tiny_model},dtype=float32", device="cpu", batch_size=4,
        tasks=["safespace-toxicity-am"], limit=16, apply_chat_template=True, log_samples=True,
        task_manager=task_manager(metadata=meta), metadata=meta,
    )
    row = out["results"]["safespace-toxicity-am"]
    assert row["bcv_ratio_stderr,none"] == "N/A"  # bootstrap_iters 0: no interval claimed
    assert "bcv_ratio_layer1,none" in row
    sample = out["samples"]["safespace-toxicity-am"][0]
    prompt = sample["arguments"][0][0]
    assert prompt.startswith("<|user|>") and prompt.endswith("<|assistant|>")
    tok = AutoTokenizer.from_pretrained(tiny_model)
    prompts = [s["arguments"][0][0] for s in out["samples"]["safespace-toxicity-am"]]
    longer = sum(len(tok(p)["input_ids"]) > 128 for p in prompts)
    assert row["n_truncated,none"] == longer > 0
    b = load_states(next(tmp_path.glob("safespace_states_safespace-toxicity-am*.npz")))
    assert list(b.layers) == [2, 1] and b.states.shape == (16, 2, 32)
