"""The English-only DPO replication example on a tiny random llama: DPO step, reload, overlap check, pipeline."""

import importlib.util
import json
import math
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _script():
    spec = importlib.util.spec_from_file_location("replicate_alignment_gain",
                                                  ROOT / "examples" / "replicate_alignment_gain.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


rep = _script()

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
                         seed=0, device="cpu", log=lambda *_: None)
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


@pytest.mark.slow  # three safespace-eval/report subprocesses: about 1 CPU-minute, 3 minutes on the shared 2 cores
def test_whole_pipeline_on_a_tiny_model(tiny_model, mirror, tmp_path):
    out = tmp_path / "rep"
    result = rep.main([str(out), "--model", str(tiny_model), "--data-dir", str(mirror), "--pairs", "16",
                       "--batch-size", "8", "--lr", "1e-3", "--tasks", "safespace-toxicity-en,safespace-paradetox-de",
                       "--limit", "24", "--eval-batch-size", "8", "--no-plots", "--threads", "1",
                       "--metadata", json.dumps({"bootstrap_iters": 20})])
    saved = json.loads((out / "replication.json").read_text())
    assert saved["data"]["overlap_dropped"] == 12 and saved["data"]["pairs"] == 16
    assert saved["dpo"]["steps"] == 2
    assert set(saved["seconds"]) >= {"load", "pairs", "reference_logps", "train", "save", "eval_base",
                                     "eval_aligned", "report", "total"}
    assert (out / "aligned" / "config.json").is_file() and (out / "report" / "report.md").is_file()
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
