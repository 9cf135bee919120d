"""Data loading: the mirror, the order of docs, and the errors users see."""

from __future__ import annotations

import json

import numpy as np
import pytest

from safespace_tasks import data


def test_every_toxicity_language_loads_from_the_mirror_with_both_classes(mirror):
    for lang in data.TOXICITY.languages:
        docs, report = data.toxicity_docs(lang, data_dir=str(mirror))
        labels = np.array([d["toxic"] for d in docs])
        assert set(labels) == {0, 1}
        assert report.n_rows == len(docs) + report.n_excluded
        assert len({d["id"] for d in docs}) == len(docs)


def test_stratified_order_keeps_every_prefix_balanced(mirror):
    # English is stored sorted: 2,500 non-toxic texts first
    rows = data.load_rows(data.TOXICITY.hub_id, "en", mirror)
    assert {r["toxic"] for r in rows[:2500]} == {0}
    docs, _ = data.toxicity_docs("en", data_dir=str(mirror), seed=1)
    labels = np.array([d["toxic"] for d in docs])
    for n in (2, 10, 40, 101, 1000):
        assert abs(labels[:n].sum() - n / 2) <= 1
    # Hebrew is unbalanced (807 of 2,011 toxic): prefixes follow its proportion
    he, _ = data.toxicity_docs("he", data_dir=str(mirror), seed=1)
    frac = np.mean([d["toxic"] for d in he])
    lab = np.array([d["toxic"] for d in he])
    for n in (10, 50, 300):
        assert abs(lab[:n].sum() - n * frac) <= 1
    # seeded: same seed, same order; another seed, another order
    again, _ = data.toxicity_docs("en", data_dir=str(mirror), seed=1)
    other, _ = data.toxicity_docs("en", data_dir=str(mirror), seed=2)
    assert [d["id"] for d in again] == [d["id"] for d in docs]
    assert [d["id"] for d in other] != [d["id"] for d in docs]


def test_environment_variable_selects_the_mirror(mirror, monkeypatch):
    monkeypatch.setenv(data.DATA_DIR_ENV, str(mirror))
    assert data.resolve_data_dir() == mirror
    assert len(data.load_rows(data.TOXICITY.hub_id, "am")) == 5000


def test_unknown_language_names_the_known_ones(mirror):
    with pytest.raises(data.DataError, match="unknown language 'xx'.*en, ru"):
        data.toxicity_docs("xx", data_dir=str(mirror))


def _mini_mirror(tmp_path, lines):
    folder = tmp_path / "multilingual_toxicity_dataset"
    folder.mkdir()
    (folder / "en.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return tmp_path


def test_missing_mirror_file_names_the_file_and_the_setting(tmp_path):
    (tmp_path / "multilingual_toxicity_dataset").mkdir()
    with pytest.raises(data.DataError, match=r"'de'.*de\.jsonl is missing.*SAFESPACE_DATA_DIR"):
        data.toxicity_docs("de", data_dir=str(tmp_path))


def test_missing_mirror_folder_is_reported(tmp_path):
    with pytest.raises(data.DataError, match="does not exist"):
        data.resolve_data_dir(tmp_path / "nope")


def test_malformed_mirror_lines_are_reported_with_their_place(tmp_path):
    root = _mini_mirror(tmp_path, ['{"text": "ok", "toxic": 0}', '{"text": "broken"'])
    with pytest.raises(data.DataError, match="malformed JSON Lines"):
        data.toxicity_docs("en", data_dir=str(root))


@pytest.mark.parametrize(
    "line,match",
    [('{"txt": "a", "toxic": 0}', "column 'text' is missing"), ('{"text": "a", "toxic": 2}', "must be 0 or 1"),
     ('{"text": 5, "toxic": 1}', "must be str")],
)
def test_wrong_columns_and_values_are_reported(tmp_path, line, match):
    root = _mini_mirror(tmp_path, [line])
    with pytest.raises(data.DataError, match=match):
        data.toxicity_docs("en", data_dir=str(root))


def test_empty_and_contradictory_texts_are_excluded_and_counted(tmp_path):
    lines = [json.dumps(r) for r in [
        {"text": "fine", "toxic": 0}, {"text": "   ", "toxic": 1}, {"text": "", "toxic": 0},
        {"text": "same words", "toxic": 1}, {"text": "same words", "toxic": 0},
        {"text": "rude", "toxic": 1}, {"text": "rude", "toxic": 1},
    ]]
    docs, report = data.toxicity_docs("en", data_dir=str(_mini_mirror(tmp_path, lines)))
    assert report.empty_texts == 2 and report.conflicting_labels == 2 and report.duplicate_texts == 1
    assert sorted(d["text"] for d in docs) == ["fine", "rude", "rude"]


def test_unreachable_hub_without_mirror_tells_how_to_use_a_mirror(monkeypatch):
    import datasets

    def offline(*args, **kwargs):
        raise ConnectionError("no route to huggingface.co")

    monkeypatch.delenv(data.DATA_DIR_ENV, raising=False)
    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(data.DataError, match=r"'am'.*Hugging Face Hub.*SAFESPACE_DATA_DIR=.*data_dir"):
        data.toxicity_docs("am")
