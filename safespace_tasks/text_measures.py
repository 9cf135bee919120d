"""Sentence-level text measures for detox rewriting: content similarity, fluency, output cleaning.

* Content similarity (SIM) between a rewrite and its toxic source: the cosine of their
  character n-gram count vectors, n = 2, 3 and 4 pooled, after Unicode NFKC normalisation,
  case folding and whitespace collapsing, each text padded with one space at both ends.

  Why this measure: the TextDetox / PAN 2024 evaluation uses the cosine of LaBSE sentence
  embeddings, which needs a 470M-parameter encoder from the Hub. This plugin must score offline
  with nothing but the mirror, in 15 languages and several scripts. Character n-grams need no
  model, no tokenizer and no word segmentation (Chinese and Japanese have no spaces), are
  deterministic, and measure what a detox rewrite should keep: most of the source's words and
  names, with the offensive parts replaced. Their limit: a paraphrase with new wording scores
  lower than LaBSE would give it, and copying the source scores 1.0 (the style-transfer accuracy
  and the joint score are what punish a copy). The README gives the measure's range on the
  human references (source vs. reference and source vs. an unrelated sentence) as a yardstick.

* Fluency (FL) of a rewrite: sentence-level chrF of the rewrite against the human neutral
  reference (sacrebleu's defaults: character 6-grams, beta = 2), divided by 100. This is the
  TextDetox fluency measure.

* Cleaning of a generated rewrite (:func:`clean_rewrite`): the first non-empty line, stripped of
  surrounding whitespace and of one pair of matching quotes, so that "Rewrite: \\n"A polite
  sentence."\\n\\nNote: ..." scores "A polite sentence.".
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections import Counter
from functools import lru_cache

__all__ = [
    "SIMILARITY_MEASURE",
    "FLUENCY_MEASURE",
    "char_ngrams",
    "char_ngram_cosine",
    "chrf",
    "clean_rewrite",
]

NGRAM_ORDERS = (2, 3, 4)
SIMILARITY_MEASURE = "cosine of character 2-4-gram counts (NFKC, case-folded, whitespace collapsed)"
FLUENCY_MEASURE = "sentence chrF (sacrebleu defaults: char order 6, beta 2) / 100 against the human reference"

_SPACES = re.compile(r"\s+")
_QUOTES = {'"': '"', "'": "'", "“": "”", "„": "“", "«": "»", "「": "」", "『": "』", "‘": "’"}


def _normalise(text: str) -> str:
    text = unicodedata.normalize("NFKC", text).casefold()
    return _SPACES.sub(" ", text).strip()


def char_ngrams(text: str, orders: tuple[int, ...] = NGRAM_ORDERS) -> Counter:
    """Counts of the character n-grams of ``text`` for each n in ``orders`` (pooled)."""
    if not isinstance(text, str):
        raise TypeError(f"text must be str, got {type(text).__name__}")
    norm = _normalise(text)
    if not norm:
        return Counter()
    padded = f" {norm} "
    grams: Counter = Counter()
    for n in orders:
        if n < 1:
            raise ValueError(f"n-gram orders must be >= 1; got {n}")
        grams.update(padded[i : i + n] for i in range(len(padded) - n + 1))
    return grams


def char_ngram_cosine(a: str, b: str, orders: tuple[int, ...] = NGRAM_ORDERS) -> float:
    """Cosine similarity in [0, 1] of the character n-gram counts of ``a`` and ``b``.

    0.0 when either text is empty after normalisation (nothing is shared).
    """
    ga, gb = char_ngrams(a, orders), char_ngrams(b, orders)
    if not ga or not gb:
        return 0.0
    if len(ga) > len(gb):
        ga, gb = gb, ga
    dot = sum(c * gb.get(g, 0) for g, c in ga.items())
    norm = math.sqrt(sum(c * c for c in ga.values())) * math.sqrt(sum(c * c for c in gb.values()))
    return min(1.0, dot / norm)


@lru_cache(maxsize=1)
def _chrf_metric():
    from sacrebleu.metrics import CHRF

    return CHRF()


def chrf(hypothesis: str, reference: str) -> float:
    """Sentence-level chrF of ``hypothesis`` against ``reference``, in [0, 1]."""
    if not isinstance(hypothesis, str) or not isinstance(reference, str):
        raise TypeError("chrf needs two strings")
    return float(_chrf_metric().sentence_score(hypothesis, [reference]).score) / 100.0


def clean_rewrite(text: str) -> str:
    """The rewrite a model produced: its first non-empty line, trimmed, one pair of outer quotes removed."""
    if not isinstance(text, str):
        raise TypeError(f"a generation must be str, got {type(text).__name__}")
    for line in text.splitlines():
        line = line.strip()
        if line:
            if len(line) >= 2 and _QUOTES.get(line[0]) == line[-1]:
                line = line[1:-1].strip()
            return line
    return ""
