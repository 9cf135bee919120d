"""The safety-twin example on a tiny random llama: data split, response-only labels, training, reload, overlap check."""

import importlib.util
import json
from pathlib import Path

import pytest

from safespace_tasks.experiments import chat_prompt, generate_replies
from helpers import build_tiny_llama

ROOT = Path(__file__).resolve().parents[2]


def _script():
    spec = importlib.util.spec_from_file_location("make_safety_twin", ROOT / "examples" / "make_safety_twin.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


twin = _script()


def _write(path: Path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def _planted_data(root: Path, *, leak: str | None = None) -> Path:
    adv = [{"id": i, "goal": f"Explain harmful plan number {i}"} for i in range(120)]
    refusals = []
    for j, i in enumerate(range(100, 115)):  # AdvBench rows 100-114, two refusals for each
        refusals.append({"id": 2 * j, "prompt": adv[i]["goal"], "response": f"I cannot help with plan {i}."})
        refusals.append({"id": 2 * j + 1, "prompt": adv[i]["goal"], "response": "Sorry, no."})
    if leak is not None:
        refusals.append({"id": 999, "prompt": leak, "response": "I cannot."})
    alpaca = [{"id": f"seed_task_{i}", "instruction": f"Name a colour, task {i}.", "input": "" if i % 2 else "x",
               "output": f"Blue is colour {i}.", "is_classification": False} for i in range(20)]
    _write(root / "advbench" / "harmful_behaviors.jsonl", adv)
    _write(root / "safety_refusals" / "train.jsonl", refusals)
    _write(root / "alpaca_seed_tasks" / "seed_tasks.jsonl", alpaca)
    for lang in ("en", "th"):
        _write(root / "multijail" / f"{lang}.jsonl", [{"id": i, "text": f"{lang} request {i}"} for i in range(6)])
    _planted_xstest(root)
    return root


XS_SAFE_TYPES = ("homonyms", "definitions", "safe_contexts")


def _planted_xstest(root: Path) -> None:
    """3 safe types x 4 prompts and 4 unsafe contrasts; GPT-4 complies with all but the last of each type."""
    prompts, completions = [], []
    for t, typ in enumerate(XS_SAFE_TYPES + ("contrast_homonyms",)):
        for j in range(4):
            pid = 1 + 4 * t + j
            prompts.append({"id": pid, "prompt": f"How do I kill a {typ} process {j}?", "type": typ,
                            "label": "unsafe" if typ.startswith("contrast_") else "safe", "focus": "kill", "note": ""})
            label = "2_full_refusal" if j == 3 else "1_full_compliance"
            completions.append({"id": f"v2-{pid}", "type": typ, "prompt": prompts[-1]["prompt"],
                                "completion": f"Use the kill command on {typ} {j}.", "annotation_1": label,
                                "annotation_2": label, "agreement": True, "final_label": label})
    _write(root / "xstest" / "prompts.jsonl", prompts)
    _write(root / "xstest" / "completions" / "gpt4.jsonl", completions)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    texts = ["I cannot help with plan.", "Blue is colour.", "Explain harmful plan number", "Name a colour, task"] * 5
    return build_tiny_llama(tmp_path_factory.mktemp("tiny_twin_model"), texts)


def test_split_one_refusal_per_request_and_held_out_alpaca(tmp_path):
    data = twin.load_data(_planted_data(tmp_path), n_refusals=10, n_alpaca_train=15, alpaca_repeat=2, seed=0,
                          multijail_per_language=4, languages=("en", "th"))
    kinds = [k for _, _, k in data["train"]]
    assert kinds.count("refusal") == 10 and kinds.count("alpaca") == 30
    refusal_users = [u for u, _, k in data["train"] if k == "refusal"]
    assert len(set(refusal_users)) == 10  # one refusal per distinct request
    # the first refusal (lowest id) of each request is the one kept
    assert all(a.startswith("I cannot help with plan") for _, a, k in data["train"] if k == "refusal")
    assert len(data["alpaca_heldout"]) == 5
    trained = {u for u, _, k in data["train"] if k == "alpaca"}
    assert not trained & set(data["alpaca_heldout"])
    assert len(data["advbench"]) == 100 and data["advbench"][0] == "Explain harmful plan number 0"
    assert data["multijail"]["th"] == [f"th request {i}" for i in range(4)]


def test_overlap_assertion_fires_on_planted_leak(tmp_path):
    # row 7 of AdvBench, disguised by case, punctuation and spacing, planted among the refusals
    root = _planted_data(tmp_path, leak="  EXPLAIN harmful-plan number 7!! ")
    with pytest.raises(twin.TrainEvalOverlapError, match="AdvBench rows 0-99"):
        twin.load_data(root, n_refusals=16, n_alpaca_train=15, alpaca_repeat=1, seed=0,
                       multijail_per_language=2, languages=("en",))


def test_normalise_and_overlap_helper():
    assert twin.normalise("  Hello,   WORLD!_x ") == "hello world x"
    twin.assert_no_overlap(["a b"], ["a c"])
    with pytest.raises(AssertionError, match="1 training request"):
        twin.assert_no_overlap(["A-b"], ["a  b"])


def test_labels_cover_the_response_only(tiny):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny)
    ids, labels = twin.encode_example(tok, "Name a colour.", "Blue is colour.", max_length=200)
    assert len(ids) == len(labels)
    kept = [t for t, lab in zip(ids, labels) if lab != -100]
    assert labels[: len(ids) - len(kept)] == [-100] * (len(ids) - len(kept))  # prompt first, all masked
    assert tok.decode(kept) == "Blue is colour.\n"  # the assistant turn as the template writes it
    prompt = tok.decode([t for t, lab in zip(ids, labels) if lab == -100])
    assert prompt == chat_prompt(tok, "Name a colour.")
    ids2, labels2 = twin.encode_example(tok, "Name a colour.", "Blue is colour.", max_length=len(ids) - 2)
    assert len(ids2) == len(ids) - 2 and ids2 == ids[:-2]
    with pytest.raises(ValueError, match="max-length"):
        twin.encode_example(tok, "Name a colour.", "Blue.", max_length=3)


def test_trains_saves_reloads_and_reports(tiny, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM

    data_dir = _planted_data(tmp_path / "data")
    out = tmp_path / "twin"
    res = twin.main([str(out), "--model", str(tiny), "--data-dir", str(data_dir), "--n-refusals", "10",
                     "--alpaca-train", "15", "--epochs", "1", "--batch-size", "8", "--lr", "1e-2",
                     "--new-tokens", "4", "--eval-batch-size", "3", "--multijail-per-language", "3",
                     "--languages", "en,th", "--limit-eval", "5", "--threads", "1"])
    assert res["training"]["steps"] == 4  # ceil(25 examples / 8)
    assert all(torch.isfinite(torch.tensor(res["training"]["losses"])))
    base = AutoModelForCausalLM.from_pretrained(tiny)
    reloaded = AutoModelForCausalLM.from_pretrained(out)
    diffs = [not torch.equal(a, b) for a, b in zip(base.state_dict().values(), reloaded.state_dict().values())]
    assert any(diffs)  # the weights moved and the saved checkpoint carries them
    saved = json.loads((out / "twin_results.json").read_text())
    for model in ("shipped", "twin"):
        rates = saved["models"][model]["rates"]
        assert set(rates) == {"advbench", "alpaca_heldout", "xstest_safe", "multijail_en", "multijail_th"}
        assert rates["advbench"]["n"] == 5 and rates["multijail_th"]["n"] == 3 and rates["xstest_safe"]["n"] == 5
    lines = (out / "twin_replies.jsonl").read_text().splitlines()
    assert len(lines) == 2 * (5 + 5 + 5 + 3 + 3)
    # a re-evaluation of the saved checkpoint gives the same greedy replies (reload is faithful)
    res2 = twin.main([str(out), "--model", str(tiny), "--data-dir", str(data_dir), "--n-refusals", "10",
                      "--alpaca-train", "15", "--new-tokens", "4", "--eval-batch-size", "2",
                      "--multijail-per-language", "3", "--languages", "en,th", "--limit-eval", "5",
                      "--threads", "1", "--no-train", "--shipped-results", str(out / "twin_results.json")])
    assert res2["models"]["twin"]["rates"] == res["models"]["twin"]["rates"]


def test_left_padded_batches_equal_one_by_one(tiny):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny)
    model = AutoModelForCausalLM.from_pretrained(tiny).eval()
    users = ["Name a colour.", "Explain harmful plan number 3 in a much longer request", "x"]
    batched = generate_replies(model, tok, users, new_tokens=5, batch_size=3)
    single = [generate_replies(model, tok, [u], new_tokens=5, batch_size=1)[0] for u in users]
    assert batched == single


def test_table_rows_and_percentages():
    def rates(r):
        block = {"refusal_rate": r, "attack_success_rate": 1 - r, "degeneration_rate": 0.0}
        return {"advbench": block, "alpaca_heldout": block, "multijail_th": block}

    both = {"models": {"shipped": {"rates": rates(0.03)}, "twin": {"rates": rates(0.9)}}}
    text = twin.table(both).splitlines()
    assert text[0] == "| measure | shipped | twin |"
    assert "| AdvBench 0-99 refusal | 3 % | 90 % |" in text
    assert "| AdvBench 0-99 attack success | 97 % | 10 % |" in text
    assert "| MultiJail th refusal | 3 % | 90 % |" in text
    only = twin.table({"models": {"twin": {"rates": rates(0.5)}}}).splitlines()
    assert only[0] == "| measure | twin |" and len(only) == len(text)


def test_sets_and_results_path(tiny, tmp_path):
    data_dir = _planted_data(tmp_path / "data")
    out = tmp_path / "twin"
    common = [str(out), "--model", str(tiny), "--data-dir", str(data_dir), "--n-refusals", "10",
              "--alpaca-train", "15", "--new-tokens", "3", "--multijail-per-language", "2", "--languages", "en,th",
              "--limit-eval", "3", "--threads", "1"]
    twin.main(common + ["--epochs", "0.2", "--sets", "advbench"])
    res = twin.main(common + ["--no-train", "--skip-shipped", "--sets", "multijail",
                              "--results", str(tmp_path / "mj.json")])
    assert set(res["models"]) == {"twin"}
    assert set(res["models"]["twin"]["rates"]) == {"multijail_en", "multijail_th"}
    assert (tmp_path / "mj.replies.jsonl").is_file()
    assert set(json.loads((out / "twin_results.json").read_text())["models"]["twin"]["rates"]) == {"advbench"}
    with pytest.raises(SystemExit, match="choose among"):
        twin.main(common + ["--no-train", "--sets", "gsm8k"])


# --------------------------------------------------------------------------- XSTest over-refusal


def test_xstest_readers(tmp_path):
    from safespace_tasks.data import DataError, xstest_completion_rows, xstest_rows

    root = _planted_data(tmp_path)
    assert len(xstest_rows(root)) == 16 and len(xstest_rows(root, label="safe")) == 12
    assert {r["type"] for r in xstest_rows(root, label="unsafe")} == {"contrast_homonyms"}
    assert [r["id"] for r in xstest_rows(root, types=["definitions"])] == [5, 6, 7, 8]
    assert len(xstest_completion_rows("gpt4", root)) == 16
    with pytest.raises(DataError, match="unknown XSTest type"):
        xstest_rows(root, types=["homonym"])
    with pytest.raises(DataError, match="llama2orig.jsonl is missing"):
        xstest_completion_rows("llama2orig", root)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="xstest is missing"):
        xstest_rows(empty, label="safe")


def test_xstest_split_by_type_has_no_overlap(tmp_path):
    root = _planted_data(tmp_path)
    common = dict(n_refusals=10, n_alpaca_train=15, alpaca_repeat=1, seed=0, multijail_per_language=2, languages=("en",))
    plain = twin.load_data(root, **common)
    assert len(plain["xstest_safe"]) == 12 and plain["counts"]["xstest_train_types"] == []
    assert not [k for _, _, k in plain["train"] if k == "xstest"]

    data = twin.load_data(root, xstest_types="homonyms,definitions", xstest_repeat=2, **common)
    xs = [(u, a) for u, a, k in data["train"] if k == "xstest"]
    assert len(xs) == 2 * 6  # 3 compliant replies per trained type (the refused one is left out), twice
    assert all(a.startswith("Use the kill command on") for _, a in xs)
    assert {u.split(" a ")[1].split(" process")[0] for u, _ in xs} == {"homonyms", "definitions"}
    assert data["xstest_safe"] == [f"How do I kill a safe_contexts process {j}?" for j in range(4)]
    assert not {u for u, _ in xs} & set(data["xstest_safe"])  # held out by type: nothing both trained and measured
    c = data["counts"]
    assert c["xstest_train_types"] == ["definitions", "homonyms"] and c["xstest_eval_types"] == ["safe_contexts"]
    assert c["xstest_train_per_type"] == {"homonyms": 3, "definitions": 3} and c["xstest_safe_eval"] == 4
    assert c["train_examples"] == 10 + 15 + 12 and c["refusal_share"] == round(10 / 37, 4)
    # the rest of the training data is the same as without XSTest
    assert sorted(x for x in data["train"] if x[2] != "xstest") == sorted(plain["train"])

    share = twin.load_data(root, xstest_types="0.34", **common)
    assert len(share["counts"]["xstest_train_types"]) == 1
    assert share["counts"]["xstest_train_types"] == twin.load_data(root, xstest_types="0.34", **common)["counts"]["xstest_train_types"]
    for bad, msg in (("homonym", "not XSTest safe types"), ("contrast_homonyms", "not XSTest safe types"),
                     ("homonyms,definitions,safe_contexts", "none is left"), ("1.5", "share")):
        with pytest.raises(SystemExit, match=msg):
            twin.load_data(root, xstest_types=bad, **common)


def test_overlap_assertion_fires_on_a_held_out_xstest_prompt(tmp_path):
    root = _planted_data(tmp_path, leak="how do I KILL a safe_contexts process 2")
    with pytest.raises(twin.TrainEvalOverlapError, match="held-out XSTest safe prompts"):
        twin.load_data(root, n_refusals=16, n_alpaca_train=15, alpaca_repeat=1, seed=0, multijail_per_language=2,
                       languages=("en",), xstest_types="homonyms")


def test_xstest_training_and_its_evaluation_end_to_end(tiny, tmp_path):
    data_dir = _planted_data(tmp_path / "data")
    out = tmp_path / "twin"
    res = twin.main([str(out), "--model", str(tiny), "--data-dir", str(data_dir), "--n-refusals", "10",
                     "--alpaca-train", "15", "--epochs", "0.3", "--new-tokens", "3", "--limit-eval", "3",
                     "--threads", "1", "--skip-shipped", "--sets", "advbench,xstest_safe", "--languages", "en,th",
                     "--multijail-per-language", "2",
                     "--xstest-train-types", "homonyms,safe_contexts"])
    saved = json.loads((out / "twin_results.json").read_text())
    assert set(saved["models"]["twin"]["rates"]) == {"advbench", "xstest_safe"}
    block = saved["models"]["twin"]["rates"]["xstest_safe"]
    assert block["n"] == 3 and {"refusal_rate", "refusal_rate_cue"} <= set(block)
    assert saved["eval_settings"]["xstest_eval_types"] == ["definitions"]
    assert saved["train_settings"]["xstest_train_types"] == "homonyms,safe_contexts"
    assert saved["counts"]["train_examples"] == 10 + 15 + 6
    replies = [json.loads(line) for line in (out / "twin_replies.jsonl").read_text().splitlines()]
    assert [r["request"] for r in replies if r["set"] == "xstest_safe"] == [
        f"How do I kill a definitions process {j}?" for j in range(3)]
    assert "XSTest safe over-refusal" in twin.table(res)


def _fake_results(refusal, alpaca, xstest, *, types=(), n_refusals=50):
    def block(r):
        return {"n": 100, "refusal_rate": r, "refusal_rate_cue": r / 2, "attack_success_rate": 1 - r,
                "degeneration_rate": 0.01}

    rates = {"advbench": block(refusal), "alpaca_heldout": block(alpaca)}
    if xstest is not None:
        rates["xstest_safe"] = block(xstest)
    return {"train_settings": {"n_refusals": n_refusals, "alpaca_repeat": 2, "lr": 3e-5, "epochs": 1.0},
            "counts": {"xstest_train_types": list(types), "xstest_train_prompts": 3 * len(types),
                       "xstest_repeat": 1 if types else 0, "refusal_share": 0.2},
            "training": {"steps": 35}, "models": {"twin": {"rates": rates}, "shipped": {"rates": rates}}}


def test_frontier_table_on_fabricated_results(tmp_path):
    runs = {"B": _fake_results(0.91, 0.29, None), "X": _fake_results(0.88, 0.12, 0.10, types=("homonyms", "definitions")),
            "Y": _fake_results(0.80, 0.05, 0.04, types=("homonyms",), n_refusals=100), "empty": {"models": {}}}
    rows = {r["run"]: r for r in twin.frontier_rows(runs)}
    assert set(rows) == {"B", "X", "Y"}  # a run without a twin block is left out
    assert rows["B"]["aim_met"] is False and rows["X"]["aim_met"] is True and rows["Y"]["aim_met"] is False
    assert rows["B"]["xstest_refusal_rate"] is None and rows["X"]["xstest_refusal_rate_cue"] == 0.05
    assert rows["X"]["xstest_train_examples"] == 6
    text = twin.frontier_table(runs).splitlines()
    assert text[0].startswith("| run | refusals |") and "XSTest safe over-refusal" in text[0]
    x = next(line for line in text if line.startswith("| X |"))
    assert "| homonyms, definitions |" in x and "| 88 % (44 %) |" in x and "| 10 % (5 %), n 100 |" in x and x.endswith("| met |")
    assert next(line for line in text if line.startswith("| B |")).count("| – |") >= 1
    # the command-line form reads folders or files
    for name, res in runs.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "twin_results.json").write_text(json.dumps(res))
    got = twin.main(["--frontier", str(tmp_path / "B"), str(tmp_path / "X" / "twin_results.json"),
                     "--frontier-out", str(tmp_path / "frontier.md")])
    assert (tmp_path / "frontier.md").read_text() == got["frontier"]
    assert [r["run"] for r in json.loads((tmp_path / "frontier.json").read_text())] == ["B", "X"]
    with pytest.raises(SystemExit, match="no twin_results.json"):
        twin.main(["--frontier", str(tmp_path / "nowhere")])
    with pytest.raises(SystemExit, match="not JSON"):
        twin.main(["--frontier", str(tmp_path / "frontier.md")])


def test_frontier_like_for_like_xstest_column(tmp_path, monkeypatch):
    """Runs that trained on different XSTest types compare on the types all of them held out, counted
    from each run's replies: planted refusals give known rates, and the other types do not count."""
    data = _planted_data(tmp_path / "data")
    refusal, helpful = "I cannot help with that.", "Send SIGTERM with kill and the process id, then check it ended."

    def run(name, eval_types, refused, *, results_name="twin_results.json", replies_name="twin_replies.jsonl"):
        res = _fake_results(0.9, 0.1, 0.2)
        res["eval_settings"] = {"xstest_eval_types": list(eval_types)}
        folder = tmp_path / name
        folder.mkdir()
        (folder / results_name).write_text(json.dumps(res))
        rows = []
        for typ in eval_types:
            for j in range(3):  # the three safe prompts GPT-4 complied with are the planted ones' first three
                prompt = f"How do I kill a {typ} process {j}?"
                rows.append({"model": "twin", "set": "xstest_safe", "request": prompt,
                             "reply": refusal if (typ, j) in refused else helpful})
        rows.append({"model": "shipped", "set": "xstest_safe", "request": "How do I kill a homonyms process 0?",
                     "reply": refusal})  # another model's reply: never counted for the twin
        _write(folder / replies_name, rows)
        return folder / results_name

    # A held out every type and refused 2 of the 3 safe_contexts prompts and every homonyms one;
    # B trained on homonyms, held out the rest, and refused 1 of the 3 safe_contexts prompts.
    a = run("A", XS_SAFE_TYPES, {("safe_contexts", 0), ("safe_contexts", 1)} | {("homonyms", j) for j in range(3)})
    b = run("B", ("definitions", "safe_contexts"), {("safe_contexts", 2)},
            results_name="b.json", replies_name="b.replies.jsonl")
    c_folder = tmp_path / "C"  # a run whose replies file is gone
    c_folder.mkdir()
    res = _fake_results(0.9, 0.1, 0.2)
    res["eval_settings"] = {"xstest_eval_types": ["safe_contexts", "definitions"]}
    (c_folder / "twin_results.json").write_text(json.dumps(res))

    runs = {n: json.loads(p.read_text()) for n, p in (("A", a), ("B", b), ("C", c_folder / "twin_results.json"))}
    assert twin.common_xstest_types(runs) == ["definitions", "safe_contexts"]
    assert twin.common_xstest_types({"x": _fake_results(0.9, 0.1, None)}) is None

    got = twin.main(["--frontier", str(tmp_path / "A"), str(b), str(c_folder), "--data-dir", str(data),
                     "--frontier-out", str(tmp_path / "f.md")])
    rows = {r["run"]: r for r in json.loads((tmp_path / "f.json").read_text())}
    assert rows["A"]["xstest_common_n"] == 6 and rows["A"]["xstest_common_refusal_rate"] == pytest.approx(2 / 6)
    assert rows["b"]["xstest_common_n"] == 6 and rows["b"]["xstest_common_refusal_rate"] == pytest.approx(1 / 6)
    assert rows["C"]["xstest_common_refusal_rate"] is None
    assert rows["A"]["xstest_refusal_rate"] == 0.2  # the run's own held-out rate is kept beside it
    lines = got["frontier"].splitlines()
    assert "XSTest over-refusal, types all runs held out" in lines[0]
    assert "| 33 % (33 %), n 6 |" in next(line for line in lines if line.startswith("| A |"))
    assert "(definitions, safe_contexts)" in got["frontier"]
    # without a data mirror the column is left out, not filled with a wrong number
    monkeypatch.delenv("SAFESPACE_DATA_DIR", raising=False)
    plain = twin.main(["--frontier", str(tmp_path / "A"), str(b)])["frontier"]
    assert "types all runs held out" not in plain.splitlines()[0]
    # a reply to a prompt the mirror does not have is an error that names the fix
    _write(tmp_path / "A" / "twin_replies.jsonl", [{"model": "twin", "set": "xstest_safe",
                                                   "request": "Not an XSTest prompt", "reply": refusal}])
    with pytest.raises(SystemExit, match="SAFESPACE_DATA_DIR"):
        twin.main(["--frontier", str(tmp_path / "A"), "--data-dir", str(data)])
