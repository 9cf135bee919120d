"""Content similarity, fluency and rewrite cleaning against independent computations."""

from __future__ import annotations

import numpy as np
import pytest
import sacrebleu
from sklearn.feature_extraction.text import CountVectorizer

from safespace_tasks.text_measures import char_ngram_cosine, chrf, clean_rewrite


def _sklearn_cosine(a: str, b: str) -> float:
    # independent: scikit-learn's character n-gram counts of the same normalised, padded texts
    norm = lambda t: " " + " ".join(t.casefold().split()) + " "  # noqa: E731 (ASCII texts: NFKC is a no-op)
    vec = CountVectorizer(analyzer="char", ngram_range=(2, 4), lowercase=False)
    X = vec.fit_transform([norm(a), norm(b)]).toarray().astype(float)
    return float(X[0] @ X[1] / (np.linalg.norm(X[0]) * np.linalg.norm(X[1])))


@pytest.mark.parametrize(
    "a,b",
    [
        ("you are a stupid idiot", "you are not very smart"),
        ("Shut up, moron!", "please be quiet"),
        ("the cat sat on the mat", "The  cat sat on the MAT"),
    ],
)
def test_char_ngram_cosine_matches_sklearn(a, b):
    assert char_ngram_cosine(a, b) == pytest.approx(_sklearn_cosine(a, b), abs=1e-12)


def test_char_ngram_cosine_properties():
    assert char_ngram_cosine("Hello world", "hello   WORLD") == pytest.approx(1.0)
    assert char_ngram_cosine("abc", "xyz") == 0.0
    assert char_ngram_cosine("", "anything") == 0.0
    a, b = "你这个笨蛋", "你不太聪明"  # no spaces: n-grams still work
    assert 0.0 < char_ngram_cosine(a, b) < 1.0
    assert char_ngram_cosine(a, b) == pytest.approx(char_ngram_cosine(b, a))


def test_chrf_is_sacrebleu_sentence_chrf_over_100():
    hyp, ref = "you are not a nice person", "you are not nice"
    assert chrf(hyp, ref) == pytest.approx(sacrebleu.sentence_chrf(hyp, [ref]).score / 100)
    assert chrf(ref, ref) == pytest.approx(1.0)
    assert chrf("", ref) == 0.0


@pytest.mark.parametrize(
    "raw,clean",
    [
        ("  A polite sentence. ", "A polite sentence."),
        ('\n"A polite sentence."\n\nNote: I removed the insult.', "A polite sentence."),
        ("«Bonjour à tous»", "Bonjour à tous"),
        ("'unbalanced", "'unbalanced"),
        ("\n \n", ""),
        ("", ""),
    ],
)
def test_clean_rewrite(raw, clean):
    assert clean_rewrite(raw) == clean
