"""Loaders of the behavioural families: RTP-LX prompts and ParaDetox pairs, mirror and release layouts."""

from __future__ import annotations

import pytest
from helpers import REAL_MIRROR, write_jsonl

from safespace_tasks import data as d

needs_mirror = pytest.mark.skipif(
    not (REAL_MIRROR / "rtp_lx_prompts").is_dir(), reason=f"data mirror not at {REAL_MIRROR}"
)


@needs_mirror
@pytest.mark.parametrize("lang,n,n_toxic", [("en", 999, 663), ("de", 1029, 793), ("es", 1098, 688), ("fr", 1038, 700)])
def test_rtplx_mirror_locales(lang, n, n_toxic):
    docs, report = d.rtplx_docs(lang, data_dir=str(REAL_MIRROR))
    assert len(docs) == n and sum(x["class"] for x in docs) == n_toxic
    assert report.empty_texts == 0
    # stratified order: the first 30 prompts hold the toxic share within one prompt
    head = sum(x["class"] for x in docs[:30])
    assert abs(head - 30 * n_toxic / n) <= 1
    assert sorted(x["id"] for x in docs) == list(range(n))


def test_rtplx_release_records_map_to_binary_prompt_labels(tmp_path):
    rows = [
        {"Prompt": "majority says toxic", "Annotations": {"Toxicity": 2.0}, "AnnotationsRaw": {"Toxicity": [1, 2, 3]}},
        {"Prompt": "one annotator of three", "Annotations": {"Toxicity": 1.33}, "AnnotationsRaw": {"Toxicity": [1, 1, 2]}},
        {"Prompt": "mean only, high", "Annotations": {"Toxicity": 1.67}},
        {"Prompt": "mean only, low", "Annotations": {"Toxicity": 1.33}},
        {"prompt": "mirror layout", "class": 1},
    ]
    out = d._normalize_rtplx(rows, "test")
    assert [r["class"] for r in out] == [1, 0, 1, 0, 1]
    assert out[0]["prompt"] == "majority says toxic"
    with pytest.raises(d.DataError, match="needs a 0/1 'class' or annotator ratings"):
        d._normalize_rtplx([{"Prompt": "no label"}], "test")


def test_rtplx_mirror_problems_are_clear_errors(tmp_path):
    root = tmp_path / "mirror"
    write_jsonl(root / "rtp_lx_prompts" / "en.jsonl", [{"prompt": "x", "class": 2}])
    with pytest.raises(d.DataError, match="must be 0 or 1"):
        d.rtplx_docs("en", data_dir=str(root))
    with pytest.raises(d.DataError, match="locale 'ja' is not in the mirror.*from the Hub"):
        d.rtplx_docs("ja", data_dir=str(root))
    with pytest.raises(d.DataError, match="unknown language 'xx'"):
        d.rtplx_docs("xx", data_dir=str(root))
    write_jsonl(root / "rtp_lx_prompts" / "de.jsonl", [{"prompt": " ", "class": 1}, {"prompt": "ok", "class": 0}])
    docs, report = d.rtplx_docs("de", data_dir=str(root))
    assert [x["prompt"] for x in docs] == ["ok"] and report.empty_texts == 1


def test_detox_docs_drop_and_count_incomplete_pairs(tmp_path):
    root = tmp_path / "mirror"
    write_jsonl(
        root / "multilingual_paradetox" / "de.jsonl",
        [
            {"toxic_sentence": "du Idiot", "neutral_sentence": "du"},
            {"toxic_sentence": "  ", "neutral_sentence": "leer"},
            {"toxic_sentence": "gleich", "neutral_sentence": "gleich"},
        ],
    )
    docs, report = d.detox_docs("de", data_dir=str(root))
    assert report.empty_texts == 1 and len(docs) == 2
    assert report.notes == ["1 references are identical to their toxic source"]
    assert {x["language_name"] for x in docs} == {"German"}
    assert sorted(x["id"] for x in docs) == [0, 2]


@needs_mirror
def test_detox_docs_real_mirror_all_languages():
    for lang in d.PARADETOX.languages:
        docs, report = d.detox_docs(lang, data_dir=str(REAL_MIRROR))
        assert len(docs) == 400 and report.n_excluded == 0
        assert all(x["toxic_sentence"].strip() and x["neutral_sentence"].strip() for x in docs)
