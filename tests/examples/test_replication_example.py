"""The English-only DPO replication example on a tiny random llama: DPO step, reload, overlap check, pipeline."""

import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]


def _script():
    spec = importlib.util.spec_from_file_location("replicate_alignment_gain",
                                                  ROOT / "examples" / "replicate_alignment_gain.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


rep = _script()


def _tables():
    spec = importlib.util.spec_from_file_location("replication_tables", ROOT / "examples" / "replication_tables.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod

PAIRS = [
    {"chosen": f"thank you for the kind note number {i}", "rejected": f"shut up you stupid idiot number {i}"}
    for i in range(12)
]


def _load(folder):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval(), AutoTokenizer.from_pretrained(folder)


def test_sequence_logps_match_the_models_own_loss(tiny_model):
    """Summed response log-probabilities equal -(mean token loss x tokens) from labels masked to the response,
    for sequences of different lengths padded into one batch."""
    import torch

    model, tok = _load(tiny_model)
    encoded, cut = rep.encode_pairs(tok, PAIRS[:3], prompt="Say:", max_length=96)
    assert cut == 0
    seqs = [e[s] for e in encoded for s in ("chosen", "rejected")]
    assert len({len(ids) for ids, _ in seqs}) > 1  # padding is exercised
    with torch.no_grad():
        got = rep.sequence_logps(model, seqs, tok.pad_token_id, "cpu")
        for k, (ids, start) in enumerate(seqs):
            x = torch.tensor([ids])
            labels = x.clone()
            labels[0, :start] = -100
            loss = model(input_ids=x, labels=labels).loss.item()
            assert got[k].item() == pytest.approx(-loss * (len(ids) - start), rel=1e-4, abs=1e-4)


def test_dpo_loss_closed_form():
    import torch

    # equal policy and reference: log 2; a margin m: log(1 + exp(-beta m))
    z = torch.zeros(3)
    assert rep.dpo_loss(z, z, z, z, 0.1).tolist() == pytest.approx([math.log(2)] * 3)
    pi_c, pi_r = torch.tensor([-1.0]), torch.tensor([-3.0])
    ref_c, ref_r = torch.tensor([-2.0]), torch.tensor([-2.5])
    m = (-1.0 + 2.0) - (-3.0 + 2.5)  # 1.5
    assert rep.dpo_loss(pi_c, pi_r, ref_c, ref_r, 0.5).item() == pytest.approx(math.log1p(math.exp(-0.5 * m)))


def test_dpo_lowers_its_loss_and_the_checkpoint_reloads(tiny_model, tmp_path):
    import torch

    model, tok = _load(tiny_model)
    encoded, _ = rep.encode_pairs(tok, PAIRS, prompt="", max_length=96)
    ref = rep.reference_logps(model, encoded, tok.pad_token_id, "cpu", 4)
    before = rep.mean_dpo_loss(model, encoded, ref, tok.pad_token_id, "cpu", beta=0.1, batch_size=4)
    assert before == pytest.approx(math.log(2), abs=1e-6)  # the policy is the reference

    emb_before = model.get_input_embeddings().weight.detach().clone()
    info = rep.train_dpo(model, tok, PAIRS, beta=0.1, lr=1e-2, batch_size=4, epochs=3, max_length=96, prompt="",
                         seed=0, device="cpu", freeze_embeddings=True, log=lambda *_: None)
    assert info["steps"] == 9 and info["pairs"] == len(PAIRS)
    after = rep.mean_dpo_loss(model, encoded, ref, tok.pad_token_id, "cpu", beta=0.1, batch_size=4)
    assert after < before - 0.05, (before, after)
    assert info["frozen_embedding_params"] > 0
    assert torch.equal(model.get_input_embeddings().weight, emb_before)  # embeddings were kept out of training

    model.save_pretrained(tmp_path / "aligned")
    tok.save_pretrained(tmp_path / "aligned")
    again, tok2 = _load(tmp_path / "aligned")
    assert tok2(PAIRS[0]["chosen"])["input_ids"] == tok(PAIRS[0]["chosen"])["input_ids"]
    reloaded = rep.mean_dpo_loss(again, encoded, ref, tok.pad_token_id, "cpu", beta=0.1, batch_size=4)
    assert reloaded == pytest.approx(after, rel=1e-5)


def _write_jsonl(path: Path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def _planted_mirror(root: Path) -> Path:
    _write_jsonl(root / "multilingual_paradetox" / "en.jsonl",
                 [{"toxic_sentence": "You are a total IDIOT!", "neutral_sentence": "You are wrong."}])
    _write_jsonl(root / "multilingual_toxicity_dataset" / "en.jsonl",
                 [{"text": "what a lovely day", "toxic": 0}, {"text": "go away, loser", "toxic": 1}])
    lines = ["toxic\tneutral1\tneutral2\tneutral3"]
    lines += [f"damn row {i} is bad\trow {i} is bad\t\t" for i in range(10)]
    lines.append("you are a total idiot\tyou are mistaken\t\t")  # toxic equals a paradetox text (case, punctuation)
    lines.append("shut it\tplease stop\tWhat a lovely day!\t")  # a second rewrite equals a toxicity text
    lines.append('"go away ,\nloser"\tplease leave\t\t')  # quoted field with a line break, equals a toxicity text
    lines.append("same text\tsame text\t\t")  # rewrite equals the original: unusable
    lines.append("\tno original\t\t")  # empty original: unusable
    (root / "paradetox_en").mkdir(parents=True)
    (root / "paradetox_en" / "paradetox.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return root


def test_overlapping_training_rows_are_dropped_and_counted(tmp_path):
    root = _planted_mirror(tmp_path / "data")
    ev = rep.read_eval_texts(root)
    rows = rep.read_paradetox_tsv(root / "paradetox_en" / "paradetox.tsv")
    assert len(rows) == 15
    pairs, counts = rep.build_pairs(rows, ev, n_pairs=10, seed=3)
    assert counts["overlap_dropped"] == 3
    assert counts["overlap_by_source"] == {"multilingual_paradetox/en.jsonl": 1,
                                           "multilingual_toxicity_dataset/en.jsonl": 2}
    assert counts["unusable"] == 2 and counts["clean_rows"] == 10 and counts["pairs"] == 10
    assert sorted(p["rejected"] for p in pairs) == sorted(f"damn row {i} is bad" for i in range(10))
    assert all(p["chosen"] == p["rejected"][len("damn "):] for p in pairs)
    with pytest.raises(SystemExit, match="--pairs 11 exceeds the 10"):
        rep.build_pairs(rows, ev, n_pairs=11, seed=3)
    # the final check fires on its own too
    every = set().union(*ev.values())
    with pytest.raises(rep.TrainEvalOverlapError, match="1 training text"):
        rep.assert_no_overlap([{"chosen": "WHAT a lovely day", "rejected": "x"}], every)
    # same seed, same pairs; another seed, another order
    assert rep.build_pairs(rows, ev, n_pairs=10, seed=3)[0] == pairs
    assert rep.build_pairs(rows, ev, n_pairs=10, seed=4)[0] != pairs


def test_real_paradetox_overlap_count(mirror):
    """On the mirror: the counts docs/replication.md quotes."""
    ev = rep.read_eval_texts(mirror)
    rows = rep.read_paradetox_tsv(mirror / "paradetox_en" / "paradetox.tsv")
    pairs, counts = rep.build_pairs(rows, ev, n_pairs=300, seed=0)
    assert counts["rows"] == 11927 and counts["overlap_dropped"] == 12 and counts["pairs"] == 300


def test_every_parameter_is_trained_by_default(tiny_model):
    model, tok = _load(tiny_model)
    emb_before = model.get_input_embeddings().weight.detach().clone()
    info = rep.train(model, tok, PAIRS[:4], beta=0.1, lr=1e-2, batch_size=4, steps=1, max_length=96, prompt="",
                     seed=0, device="cpu", log=lambda *_: None)
    assert info["frozen_embedding_params"] == 0
    assert info["trained_params"] == sum(p.numel() for p in model.parameters())
    assert not np.array_equal(model.get_input_embeddings().weight.detach().numpy(), emb_before.numpy())


def test_swap_control_swaps_about_half_the_pairs_seeded():
    pairs = [{"chosen": f"nice {i}", "rejected": f"rude {i}"} for i in range(400)]
    swapped, flags = rep.swap_pairs(pairs, seed=0)
    assert 170 <= sum(flags) <= 230  # Binomial(400, 1/2): mean 200, sd 10
    for p, q, f in zip(pairs, swapped, flags):
        assert (q["chosen"], q["rejected"]) == ((p["rejected"], p["chosen"]) if f else (p["chosen"], p["rejected"]))
    assert rep.swap_pairs(pairs, seed=0) == (swapped, flags)  # seeded
    assert rep.swap_pairs(pairs, seed=1)[1] != flags
    assert pairs[0] == {"chosen": "nice 0", "rejected": "rude 0"}  # the input is left as it was


def test_sft_loss_is_the_next_token_loss_on_the_rewrite_tokens_only(tiny_model):
    """Against the model's own loss with labels masked to the response (prompt and padding -100),
    over a padded batch of rewrites of different lengths."""
    import torch

    model, tok = _load(tiny_model)
    encoded, _ = rep.encode_pairs(tok, PAIRS[:3], prompt="Say:", max_length=96)
    seqs = [e["chosen"] for e in encoded]
    width = max(len(ids) for ids, _ in seqs)
    ids = torch.full((len(seqs), width), tok.pad_token_id)
    mask = torch.zeros_like(ids)
    labels = torch.full_like(ids, -100)
    for r, (x, start) in enumerate(seqs):
        ids[r, :len(x)] = torch.tensor(x)
        mask[r, :len(x)] = 1
        labels[r, start:len(x)] = torch.tensor(x[start:])
    with torch.no_grad():
        want = model(input_ids=ids, attention_mask=mask, labels=labels).loss.item()
        got = rep.sft_loss(model, seqs, tok.pad_token_id, "cpu").item()
    assert got == pytest.approx(want, rel=1e-5)
    # and not the loss over every token: the prompt's tokens are left out
    labels_all = torch.where(mask.bool(), ids, torch.full_like(ids, -100))
    with torch.no_grad():
        every = model(input_ids=ids, attention_mask=mask, labels=labels_all).loss.item()
    n_resp = sum(len(x) - start for x, start in seqs)
    n_all = sum(len(x) - 1 for x, _ in seqs)
    assert n_all > n_resp and every != got


def test_sft_arm_trains_on_the_rewrites_with_the_same_steps(tiny_model):
    model, tok = _load(tiny_model)
    seen = []
    info = rep.train(model, tok, PAIRS, arm="sft", beta=0.1, lr=1e-2, batch_size=4, epochs=2, max_length=96,
                     prompt="", seed=0, device="cpu", on_step=lambda s, m: seen.append(s), log=lambda *_: None)
    assert info["arm"] == "sft" and info["steps"] == 6 and seen == list(range(1, 7))
    assert info["reward_margins"] is None and len(info["losses"]) == 6
    assert info["losses"][-1] < info["losses"][0]


def test_doses_parse_to_steps():
    doses = rep.parse_doses("1, 0, 0.25,0.5", n_pairs=600, batch_size=8)
    assert [(d["label"], d["steps"]) for d in doses] == [("base", 0), ("ep0.25", 19), ("ep0.5", 38), ("ep1", 75)]
    assert [d["steps"] for d in rep.parse_doses("0,10s,40s", n_pairs=600, batch_size=8)] == [0, 10, 40]
    with pytest.raises(SystemExit, match="both step 1"):
        rep.parse_doses("0.01,0.02", n_pairs=16, batch_size=8)
    with pytest.raises(SystemExit, match="not a dose"):
        rep.parse_doses("half", n_pairs=16, batch_size=8)
    with pytest.raises(SystemExit, match="no dose beyond 0"):
        rep.parse_doses("0", n_pairs=16, batch_size=8)
    args = rep.parse_args(["out", "--train-embeddings"])
    assert (args.pairs, args.lr, args.freeze_embeddings, args.arm) == (600, 1e-5, False, "dpo")
    assert [d["label"] for d in args.doses] == ["ep1"]
    with pytest.raises(SystemExit):
        rep.parse_args(["out", "--epochs", "1", "--eval-at", "0,2"])


@pytest.mark.slow  # four safespace-eval/report subprocesses: about 1.5 CPU-minutes, 4 minutes on the shared 2 cores
def test_whole_pipeline_on_a_tiny_model(tiny_model, mirror, tmp_path):
    out = tmp_path / "rep"
    result = rep.main([str(out), "--model", str(tiny_model), "--data-dir", str(mirror), "--pairs", "16",
                       "--batch-size", "8", "--lr", "1e-3", "--tasks", "safespace-toxicity-en,safespace-paradetox-de",
                       "--limit", "24", "--eval-batch-size", "8", "--threads", "1", "--eval-at", "0,0.5,1",
                       "--metadata", json.dumps({"bootstrap_iters": 20})])
    saved = json.loads((out / "replication.json").read_text())
    assert saved["data"]["overlap_dropped"] == 12 and saved["data"]["pairs"] == 16
    assert saved["training"]["steps"] == 2 and saved["arm"] == "dpo"
    assert saved["training"]["frozen_embedding_params"] == 0
    assert set(saved["seconds"]) >= {"load", "pairs", "reference_logps", "train", "save", "eval_base",
                                     "eval_ep0.5", "eval_ep1", "report", "total"}
    assert (out / "aligned" / "config.json").is_file() and (out / "report" / "report.md").is_file()
    # the intermediate checkpoint was evaluated, then deleted; the last is kept
    assert [(d["label"], d["steps"]) for d in saved["doses"]] == [("base", 0), ("ep0.5", 1), ("ep1", 2)]
    assert not (out / "checkpoints" / "ep0.5").exists() and saved["doses"][1]["checkpoint_kept"] is False
    assert set(saved["runs"]) == {"base", "ep0.5", "ep1"}
    # dose-response: the value, gain and interval of every language at every dose, from the one report
    summary = json.loads((out / "report" / "summary.json").read_text())
    table = saved["dose_response"]
    assert [d["label"] for d in table["doses"]] == ["base", "ep0.5", "ep1"]
    for fam, lang in (("toxicity", "en"), ("paradetox", "de")):
        for metric in ("bcv_ratio", "bhattacharyya_mean_term", "bhattacharyya_cov_term"):
            pts = table["families"][fam][metric]["per_language"][lang]
            base_value = summary["models"]["base"]["families"][fam]["metrics"][metric]["per_language"][lang]
            assert pts[0]["gain"] == 0.0 and pts[0]["value"] == base_value
            for dose, pt in zip(("ep0.5", "ep1"), pts[1:]):
                gains = next(x for x in summary["gains"] if x["aligned"] == dose)["families"][fam]
                g = gains[metric]["per_language"][lang]
                assert pt["gain"] == g["gain"] and pt["gain_ci"] == g["ci"]
                assert pt["gain"] == pytest.approx(pt["value"] - pts[0]["value"], abs=1e-9)
        # the two terms of the distance sum to it at every dose
        for i in range(3):
            terms = sum(table["families"][fam][m]["per_language"][lang][i]["value"]
                        for m in ("bhattacharyya_mean_term", "bhattacharyya_cov_term"))
            assert terms == pytest.approx(table["families"][fam]["bhattacharyya"]["per_language"][lang][i]["value"])
        gap = table["families"][fam]["bcv_ratio"]["english_minus_rest_gain"]
        assert gap[0]["value"] == 0.0 and len(gap) == 3
    assert (out / "report" / "img" / "dose_response_toxicity.png").is_file()
    # the tables script reads it back
    tables = _tables()
    md = tables.render([tables.load(out / "replication.json")])
    assert "#### toxicity: which metric sees alignment" in md and "| bcv_ratio | " in md
    assert "| dpo s0 | ep0.5 | 0.50 | 1 |" in md
    got = {(r["family"], r["language"]): r for r in saved["gains"]}
    assert set(got) == {("toxicity", "en"), ("paradetox", "de")}, set(got)
    for row in got.values():
        auroc = row["probe_auroc"]
        assert auroc["gain"] == pytest.approx(auroc["aligned"] - auroc["base"], abs=1e-9)
        lo, hi = auroc["ci"]
        assert lo <= hi
    assert result["gains"] == saved["gains"]
    # the same texts in both runs, so the report paired them
    assert all(r["probe_auroc"]["method"] and "paired" in r["probe_auroc"]["method"] for r in got.values()), got


def _fake_run(arm, seed, en_gains, rest_gains, se=0.01):
    """A replication.json with one family and metric: English and one other language at doses 0, 1, 2."""
    doses = [{"label": "base", "epochs": 0.0, "steps": 0}, {"label": "ep1", "epochs": 1.0, "steps": 10},
             {"label": "ep2", "epochs": 2.0, "steps": 20}]

    def pts(gains):
        return [{"dose": d["label"], "value": 0.1 + g, "se": se, "ci": None, "gain": g,
                 "gain_se": None if i == 0 else se, "gain_ci": None if i == 0 else [g - 2 * se, g + 2 * se]}
                for i, (d, g) in enumerate(zip(doses, [0.0, *gains]))]

    gap = [{"dose": d["label"], "value": e - r, "se": se, "ci": [e - r - 0.03, e - r + 0.03]}
           for d, e, r in zip(doses, [0.0, *en_gains], [0.0, *rest_gains])]
    table = {"doses": doses, "families": {"toxicity": {"bcv_ratio": {
        "per_language": {"en": pts(en_gains), "de": pts(rest_gains)}, "mean_gain": gap,
        "english_minus_rest_gain": gap}}}}
    return {"arm": arm, "settings": {"seed": seed, "pairs": 600, "lr": 1e-5, "freeze_embeddings": False},
            "training": {"steps": 20}, "seconds": {"train": 60.0, "eval_base": 30.0, "eval_ep2": 30.0, "total": 150.0},
            "doses": doses, "dose_response": table, "_path": f"{arm}_s{seed}.json"}


def test_tables_standardise_the_english_gain_and_count_sign_agreement(tmp_path):
    tables = _tables()
    runs = [_fake_run("dpo", 0, [0.02, 0.05], [0.0, 0.01]), _fake_run("dpo", 1, [0.01, -0.03], [0.0, 0.0]),
            _fake_run("sft", 0, [0.04, 0.06], [0.05, 0.06])]
    md = tables.render(runs)
    row = next(line for line in md.splitlines() if line.startswith("| bcv_ratio |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    # z(en) at the final dose = gain / se; en - rest with its interval (bold: excludes 0)
    assert cells[1].startswith("+5.0 · **+0.040 [+0.010, +0.070]**")
    assert cells[2].startswith("-3.0 · -0.030 [-0.060, +0.000]") and cells[3].startswith("+6.0 · +0.000")
    # the real arm's English gains over seeds x doses: +0.02, +0.05, +0.01, -0.03 -> 3 of 4 positive;
    # its en - rest gains: +0.02, +0.04, +0.01, -0.03 -> 3 of 4; the sft control does not count
    assert cells[4:] == ["3/4 +", "3/4 +"]
    assert tables.sign_agreement([-1.0, -2.0, 0.5, None]) == "2/3 −"
    assert "| dpo s1 | ep2 | 2.00 | 20 | 0.0700 | -0.030 [-0.050, -0.010] |" in md.replace("**", "")
    doc = tmp_path / "doc.md"
    doc.write_text(f"intro\n{tables.BEGIN}\nold\n{tables.END}\nafter\n")
    tables.replace_block(doc, "NEW")
    assert doc.read_text() == f"intro\n{tables.BEGIN}\nNEW\n{tables.END}\nafter\n"
    (tmp_path / "plain.md").write_text("no markers")
    with pytest.raises(SystemExit, match="has no block"):
        tables.replace_block(tmp_path / "plain.md", "x")
