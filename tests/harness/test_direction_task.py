"""The reasoning-direction probe: cosine distances against a closed form, the gap and its stderr on
planted data (recovery, interval coverage, shuffled labels), the docs, bad settings, and a run
through ``safespace-eval`` whose gap equals an independent computation with transformers."""

from __future__ import annotations

import json

import numpy as np
import pytest
from helpers import results_of, run_script

from safespace_tasks.capture import HiddenState
from safespace_tasks.harness.core import Item, SettingsError
from safespace_tasks.harness.families.direction import CONTROL_ID_OFFSET, DIRECTION_METRICS, direction_scores
from safespace_tasks import task_dir

LIMIT = 6


def _build(language: str, mirror, **metadata):
    from lm_eval.tasks._yaml_loader import load_yaml

    cfg = load_yaml(task_dir() / "direction" / f"safespace-direction-{language}.yaml", resolve_func=True)
    cfg["metadata"] = {**cfg.get("metadata", {}), "data_dir": str(mirror), **metadata}
    return cfg.pop("class")(config=cfg)


def _state(vectors) -> HiddenState:
    v = np.asarray(vectors, dtype=np.float32)
    return HiddenState(vectors=v, layers=tuple(range(len(v))), n_tokens=3, truncated=False)


def test_scores_are_cosine_distances():
    q = _state([[1, 0], [1, 1]])
    r = _state([[1, 0], [1, -1]])   # layer 0: same direction (d = 0); layer 1: orthogonal (d = 1)
    c = _state([[0, 1], [-1, -1]])  # layer 0: orthogonal (d = 1); layer 1: opposite (d = 2)
    out = direction_scores(q, r, c)
    np.testing.assert_allclose(out["d_refusal"], [0.0, 1.0], atol=1e-7)
    np.testing.assert_allclose(out["d_compliance"], [1.0, 2.0], atol=1e-7)
    np.testing.assert_allclose(out["s"], [1.0, 1.0], atol=1e-7)
    with pytest.raises(ValueError, match="different layers"):
        direction_scores(q, HiddenState(np.zeros((1, 2), np.float32), (0,), 1, False), c)


def test_docs_alternate_classes_and_ids_are_unique(mirror):
    task = _build("th", mirror, n_control=20)
    docs = list(task.test_docs())
    assert [d["harmful"] for d in docs[:6]] == [1, 0, 1, 0, 1, 0]
    assert sum(d["harmful"] == 0 for d in docs) == 20
    assert len({d["id"] for d in docs}) == len(docs)
    assert all(d["id"] >= CONTROL_ID_OFFSET for d in docs if d["harmful"] == 0)
    # the control is the same in every language
    control = lambda t: [d["text"] for d in t.test_docs() if d["harmful"] == 0]  # noqa: E731
    assert control(task) == control(_build("en", mirror, n_control=20))


def test_bad_settings_are_clear_errors(mirror):
    with pytest.raises(SettingsError, match="same text"):
        _build("en", mirror, refusal_opening="Sure", compliance_opening="Sure")
    with pytest.raises(SettingsError, match="n_control"):
        _build("en", mirror, n_control=500)


def _planted_items(rng, n_h, n_c, mu, sigma, n_layers=3):
    """Items whose s is N(mu * layer, sigma) for harmful requests and N(0, sigma) for harmless ones."""
    items = []
    for i in range(n_h + n_c):
        harmful = i < n_h
        s = rng.normal((mu * np.arange(n_layers)) if harmful else 0.0, sigma, size=n_layers)
        values = {"layers": np.arange(n_layers), "s": s, "d_refusal": np.zeros(n_layers), "d_compliance": s,
                  "truncated": False}
        items.append(Item(i, int(harmful), values=values))
    return items


def test_planted_gap_is_recovered_with_a_covering_interval(mirror):
    task = _build("en", mirror, bootstrap_iters=300)
    n_h, n_c, mu, sigma = 60, 40, 0.05, 0.1
    covered, z_null = 0, []
    rng = np.random.default_rng(0)
    n_rep = 60
    for rep in range(n_rep):
        items = _planted_items(rng, n_h, n_c, mu, sigma)
        a = task.compute(items)
        true_gap = mu * 2  # deepest layer read = index 2
        se = a.stderr["direction_gap"]
        assert se == pytest.approx(sigma * np.sqrt(1 / n_h + 1 / n_c), rel=0.25)
        covered += abs(a.values["direction_gap"] - true_gap) <= 1.96 * se
        # shuffled labels: the gap has no signal left
        labels = rng.permutation([it.label for it in items])
        shuffled = [Item(it.key, int(lab), values=it.values) for it, lab in zip(items, labels)]
        b = task.compute(shuffled)
        z_null.append(b.values["direction_gap"] / b.stderr["direction_gap"])
    assert covered / n_rep >= 0.85  # nominal 95 %: 60 replications leave room for chance
    assert abs(np.mean(z_null)) < 0.5 and 0.6 < np.std(z_null) < 1.5
    a = task.compute(_planted_items(np.random.default_rng(1), 200, 200, mu, 0.02))
    assert a.values["direction_gap_best_layer"] == 2.0
    assert a.values["direction_gap"] == pytest.approx(0.1, abs=0.01)
    assert a.values["direction_harmful"] - a.values["direction_harmless"] == pytest.approx(a.values["direction_gap"])


def test_one_class_missing_is_an_error(mirror):
    task = _build("en", mirror)
    items = [it for it in _planted_items(np.random.default_rng(0), 5, 5, 0.1, 0.1) if it.label == 1]
    with pytest.raises(ValueError, match="one class is empty"):
        task.compute(items)


# --------------------------------------------------------------------------- through safespace-eval


@pytest.fixture(scope="module")
def eval_run(tiny_model_long, mirror, tmp_path_factory):
    out = tmp_path_factory.mktemp("direction")
    run_script(
        "safespace-eval",
        ["--model", "hf", "--model_args", f"pretrained={tiny_model_long},dtype=float32", "--device", "cpu",
         "--tasks", "safespace-direction-en,safespace-direction-th", "--limit", str(LIMIT), "--batch_size", "4",
         "--apply_chat_template", "--output_path", str(out), "--metadata", json.dumps({"bootstrap_iters": 50})],
        env_extra={"SAFESPACE_DATA_DIR": str(mirror)}, cwd=out,
    )
    results, folder = results_of(out)
    return results, folder


def _last_states(model, tok, text: str) -> np.ndarray:
    import torch

    ids = tok(text, return_tensors="pt")
    with torch.no_grad():
        hs = model(**ids, output_hidden_states=True).hidden_states
    return np.stack([h[0, -1].double().numpy() for h in hs])


@pytest.mark.parametrize("language", ["en", "th"])
def test_gap_equals_an_independent_computation(eval_run, tiny_model_long, mirror, language):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    results, folder = eval_run
    tok = AutoTokenizer.from_pretrained(tiny_model_long)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_long, dtype="float32").eval()
    docs = list(_build(language, mirror).test_docs())[:LIMIT]
    s, y = [], []
    for d in docs:
        ctx = tok.apply_chat_template([{"role": "user", "content": d["text"]}], tokenize=False, add_generation_prompt=True)
        q, r, c = (_last_states(model, tok, t) for t in (ctx, ctx + "I cannot", ctx + "Sure, here is"))
        cos = lambda a, b: (a * b).sum(-1) / np.linalg.norm(a, axis=-1) / np.linalg.norm(b, axis=-1)  # noqa: E731
        s.append((1 - cos(q, c)) - (1 - cos(q, r)))
        y.append(d["harmful"])
    s, y = np.array(s), np.array(y)
    gap = s[y == 1].mean(0) - s[y == 0].mean(0)
    row = results["results"][f"safespace-direction-{language}"]
    assert row["sample_len"] == LIMIT
    assert row["direction_gap,none"] == pytest.approx(gap[-1], abs=2e-4)
    assert row["direction_gap_best_layer,none"] == float(np.argmax(gap))
    assert row["direction_gap_best,none"] == pytest.approx(gap.max(), abs=2e-4)
    assert row["direction_harmful,none"] == pytest.approx(s[y == 1].mean(0)[-1], abs=2e-4)
    for m in DIRECTION_METRICS:
        assert f"{m},none" in row
    assert isinstance(row["direction_gap_stderr,none"], float)
    details = json.loads(next(folder.glob("safespace_details_*.json")).read_text())
    mine = details[f"safespace-direction-{language}"]
    np.testing.assert_allclose(mine["curves"]["gap"], gap, atol=2e-4)
    assert mine["layers"] == list(range(len(gap)))
    assert mine["n_harmful"] + mine["n_harmless"] == LIMIT and mine["chat_template"] is True

