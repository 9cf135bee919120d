"""Toxicity scorers: training, held-out quality, the cache and its key, failures, HF classifiers."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
from helpers import REAL_MIRROR, shared_cache_root, synthetic_texts, write_jsonl, write_toxicity_mirror
from sklearn.metrics import roc_auc_score

from safespace_tasks import scorers
from safespace_tasks.scorers import (
    HFClassifierScorer,
    NgramConfig,
    NgramScorer,
    ScorerError,
    ToxicityScorer,
    get_scorer,
    heldout_split,
)

LANGS = ("en", "de", "ru")


@pytest.fixture()
def mirror(tmp_path):
    return write_toxicity_mirror(tmp_path / "mirror", LANGS)


@pytest.fixture(autouse=True)
def _fresh_registry():
    scorers.clear_scorer_registry()
    yield
    scorers.clear_scorer_registry()


def _cfg(**kw):
    return NgramConfig(languages=LANGS, **kw)


# --------------------------------------------------------------------------- split


def test_heldout_split_is_stratified_disjoint_by_text_and_seeded():
    docs = [{"id": i, **r} for i, r in enumerate(synthetic_texts(100, seed=0))]
    docs.append({**docs[0], "id": len(docs)})  # an exact copy stays on its twin's side
    train, held = heldout_split(docs, 0.2, seed=7, language="en")
    assert sorted(train + held) == list(range(len(docs)))
    assert not {docs[i]["text"] for i in train} & {docs[i]["text"] for i in held}
    held_labels = [docs[i]["toxic"] for i in held if i != len(docs) - 1 and i != 0]
    assert abs(sum(held_labels) - 20) <= 1 and abs(len(held_labels) - 40) <= 1
    assert heldout_split(docs, 0.2, seed=7, language="en") == (train, held)
    assert heldout_split(docs, 0.2, seed=7, language="de") != (train, held)


# --------------------------------------------------------------------------- n-gram scorer


def test_ngram_scorer_trains_reports_heldout_quality_and_scores(mirror, tmp_path):
    s = NgramScorer.load_or_train(data_dir=str(mirror), cache_dir=tmp_path / "cache", config=_cfg())
    card = s.card()
    assert set(card["heldout"]) == set(LANGS) | {"all"}
    for lang in LANGS:
        q = s.heldout(lang)
        assert q["n"] == 60 and q["n_toxic"] == 30  # 20 % of 150 per class
        assert q["auroc"] > 0.9  # the synthetic insult is easy to learn
    p = s.score(["the weather today idiot", "the weather today garden"])
    assert p[0] > 0.5 > p[1]


def test_ngram_heldout_numbers_are_recomputable(mirror, tmp_path):
    """The stored held-out AUROC equals scikit-learn's on the same held-out texts."""
    from safespace_tasks.data import toxicity_docs

    s = NgramScorer.load_or_train(data_dir=str(mirror), cache_dir=tmp_path / "cache", config=_cfg())
    docs, _ = toxicity_docs("de", data_dir=str(mirror), seed=1234)
    docs.sort(key=lambda d: d["id"])
    _, held = heldout_split(docs, 0.2, 1234, "de")
    p = s.score([docs[i]["text"] for i in held])
    y = [docs[i]["toxic"] for i in held]
    assert s.heldout("de")["auroc"] == pytest.approx(roc_auc_score(y, p))
    assert s.heldout("de")["acc"] == pytest.approx(np.mean((p >= 0.5) == np.array(y)))


def test_ngram_cache_hit_and_key_changes_with_data_and_settings(mirror, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    first = NgramScorer.load_or_train(data_dir=str(mirror), cache_dir=cache, config=_cfg())
    assert first.path.is_file() and first.path.parent == cache

    def no_training(*a, **k):
        raise AssertionError("the cached scorer should have been loaded, not retrained")

    monkeypatch.setattr(NgramScorer, "_train", classmethod(no_training))
    t0 = time.perf_counter()
    second = NgramScorer.load_or_train(data_dir=str(mirror), cache_dir=cache, config=_cfg())
    assert time.perf_counter() - t0 < 5.0
    assert second.path == first.path and second.info["cache_key"] == first.info["cache_key"]
    np.testing.assert_allclose(second.score(["idiot scum"]), first.score(["idiot scum"]))
    monkeypatch.undo()

    # new data -> new key -> a new model beside the old one
    path = mirror / "multilingual_toxicity_dataset" / "de.jsonl"
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    write_jsonl(path, rows + [{"text": "a brand new insult: trash", "toxic": 1}])
    third = NgramScorer.load_or_train(data_dir=str(mirror), cache_dir=cache, config=_cfg())
    assert third.info["cache_key"] != first.info["cache_key"] and third.path != first.path
    # new hyper-parameters -> new key
    fourth = NgramScorer.load_or_train(data_dir=str(mirror), cache_dir=cache, config=_cfg(alpha=1e-4))
    assert fourth.info["cache_key"] not in (first.info["cache_key"], third.info["cache_key"])
    assert len(list(cache.glob("ngram-*.joblib"))) == 3


def test_unreadable_cache_file_is_retrained_and_noted(mirror, tmp_path):
    cache = tmp_path / "cache"
    first = NgramScorer.load_or_train(data_dir=str(mirror), cache_dir=cache, config=_cfg())
    first.path.write_bytes(b"not a joblib file")
    again = NgramScorer.load_or_train(data_dir=str(mirror), cache_dir=cache, config=_cfg())
    assert any("unreadable" in n for n in again.card()["notes"])
    assert again.score(["idiot"]).shape == (1,)


def test_cache_dir_follows_safespace_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("SAFESPACE_CACHE", str(tmp_path / "root"))
    assert scorers.scorer_cache_dir() == tmp_path / "root" / "scorers"


def test_missing_training_language_is_a_clear_error(mirror, tmp_path):
    from safespace_tasks.data import DataError

    with pytest.raises(DataError, match="mirror file .*am.jsonl is missing"):
        NgramScorer.load_or_train(data_dir=str(mirror), cache_dir=tmp_path, config=NgramConfig(languages=("en", "am")))


# --------------------------------------------------------------------------- interface checks


class _Broken(ToxicityScorer):
    name = "broken"

    def __init__(self, out):
        self.out = out

    def _predict(self, texts, languages):
        return self.out(texts)

    def card(self):
        return {"name": self.name}


def test_score_rejects_unusable_scorer_output():
    with pytest.raises(ScorerError, match="outside \\[0, 1\\] or not finite"):
        _Broken(lambda t: np.full(len(t), np.nan)).score(["a", "b"])
    with pytest.raises(ScorerError, match="returned \\(1,\\) scores for 2 texts"):
        _Broken(lambda t: np.zeros(1)).score(["a", "b"])
    with pytest.raises(ScorerError, match="failed while scoring 1 texts \\(RuntimeError: boom\\)"):
        _Broken(lambda t: (_ for _ in ()).throw(RuntimeError("boom"))).score(["a"])
    with pytest.raises(ScorerError, match="must be strings"):
        _Broken(lambda t: np.zeros(len(t))).score(["a", None])
    assert _Broken(lambda t: np.zeros(len(t))).score([]).shape == (0,)


def test_get_scorer_names_the_fix_for_unknown_or_missing_scorers(tmp_path):
    with pytest.raises(ScorerError, match="use 'ngram'"):
        get_scorer("perspective")
    with pytest.raises(ScorerError, match="could not be loaded.*ngram"):
        get_scorer(f"hf:{tmp_path / 'no-such-model'}")
    with pytest.raises(ScorerError, match="needs a model"):
        get_scorer("hf:")


def test_get_scorer_builds_once_per_process(mirror, tmp_path, monkeypatch):
    calls = []
    real = NgramScorer.load_or_train.__func__

    def counting(cls, **kw):
        calls.append(kw)
        return real(cls, **kw)

    monkeypatch.setattr(NgramScorer, "load_or_train", classmethod(counting))
    monkeypatch.setattr(scorers, "NgramConfig", lambda seed: _cfg(seed=seed))
    a = get_scorer("ngram", data_dir=str(mirror), cache_dir=tmp_path)
    b = get_scorer("ngram", data_dir=str(mirror), cache_dir=tmp_path)
    assert a is b and len(calls) == 1


# --------------------------------------------------------------------------- HF classifier


def _tiny_classifier(folder, id2label, problem_type=None):
    import torch
    from helpers import build_tokenizer
    from transformers import BertConfig, BertForSequenceClassification

    tok = build_tokenizer(["the weather today idiot garden scum music"] * 20, vocab_size=300)
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(tok), hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
        max_position_embeddings=64, id2label=id2label, label2id={v: k for k, v in id2label.items()},
        pad_token_id=tok.pad_token_id, problem_type=problem_type,
    )
    BertForSequenceClassification(config).eval().save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def test_hf_scorer_batches_and_finds_the_toxic_label(tmp_path):
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    folder = _tiny_classifier(tmp_path / "clf", {0: "neutral", 1: "toxic"})
    texts = ["the weather", "idiot scum idiot", "music garden today the weather", "a"]
    big = HFClassifierScorer(str(folder), device="cpu", batch_size=3)
    one = HFClassifierScorer(str(folder), device="cpu", batch_size=1)
    assert big.toxic_index == 1 and big.activation == "softmax"
    p = big.score(texts)
    np.testing.assert_allclose(p, one.score(texts), atol=1e-5)
    # independent: the model's softmax for each text on its own
    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForSequenceClassification.from_pretrained(folder).eval()
    with torch.no_grad():
        ref = [torch.softmax(model(**tok(t, return_tensors="pt")).logits, -1)[0, 1].item() for t in texts]
    np.testing.assert_allclose(p, ref, atol=1e-5)


def test_hf_scorer_label_mapping_errors_and_overrides(tmp_path):
    folder = _tiny_classifier(tmp_path / "clf", {0: "LABEL_0", 1: "LABEL_1"})
    with pytest.raises(ScorerError, match="cannot tell which output.*scorer_toxic_label"):
        HFClassifierScorer(str(folder), device="cpu")
    s = HFClassifierScorer(str(folder), device="cpu", toxic_label="1")
    assert s.toxic_index == 1
    assert HFClassifierScorer(str(folder), device="cpu", toxic_label="label_0").toxic_index == 0
    with pytest.raises(ScorerError, match="not a label"):
        HFClassifierScorer(str(folder), device="cpu", toxic_label="insult")
    with pytest.raises(ScorerError, match="not an output"):
        HFClassifierScorer(str(folder), device="cpu", toxic_label=5)


def test_hf_scorer_multilabel_uses_sigmoid(tmp_path):
    folder = _tiny_classifier(tmp_path / "clf", {0: "toxic", 1: "obscene", 2: "threat"}, "multi_label_classification")
    s = HFClassifierScorer(str(folder), device="cpu")
    assert (s.toxic_index, s.activation) == (0, "sigmoid")
    assert np.all((s.score(["idiot", "the weather"]) > 0) & (s.score(["idiot", "the weather"]) < 1))


def test_hf_scorer_heldout_quality_on_the_shared_split(mirror, tmp_path):
    folder = _tiny_classifier(tmp_path / "clf", {0: "neutral", 1: "toxic"})
    s = HFClassifierScorer(str(folder), device="cpu", data_dir=str(mirror), heldout_per_language=40)
    q = s.heldout("en")
    assert q["n"] == 40 and q["n_toxic"] == 20 and 0.0 <= q["auroc"] <= 1.0
    assert s.heldout("xx") is None
    assert s.card()["heldout"]["en"] == q


# --------------------------------------------------------------------------- the real default scorer


@pytest.fixture(scope="session")
def real_scorer(tmp_path_factory):
    if not (REAL_MIRROR / "multilingual_toxicity_dataset").is_dir():
        pytest.skip(f"the data mirror is not at {REAL_MIRROR} (set SAFESPACE_TEST_MIRROR)")
    cache = shared_cache_root(tmp_path_factory) / "scorers"
    t0 = time.perf_counter()
    s = NgramScorer.load_or_train(data_dir=str(REAL_MIRROR), cache_dir=cache)
    return s, time.perf_counter() - t0


def test_real_scorer_trains_fast_and_is_better_than_chance_everywhere(real_scorer):
    s, seconds = real_scorer
    assert seconds < 120, f"training or loading took {seconds:.0f}s"
    q = s.card()["heldout"]
    assert q["en"]["auroc"] > 0.9 and q["en"]["acc"] > 0.8
    for lang, v in q.items():
        assert v["auroc"] > 0.6, (lang, v)
        assert v["n"] >= 350
    assert s.card()["n_train"] > 50_000
