"""Helpers of the behavioural tests: small synthetic mirrors and the real mirror's location."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
REAL_MIRROR = Path(os.environ.get("SAFESPACE_TEST_MIRROR", REPO.parent / "shared" / "data"))

NEUTRAL = "the a weather today garden music friend table window river morning coffee book city train".split()
TOXIC = "idiot moron scum stupid trash loser".split()


def synthetic_texts(n_per_class: int, seed: int) -> list[dict]:
    """Balanced rows: a non-toxic text is neutral words; a toxic one carries one insult among them."""
    rng = np.random.default_rng(seed)
    rows = []
    for label in (0, 1):
        for _ in range(n_per_class):
            words = list(rng.choice(NEUTRAL, size=6))
            if label:
                words[rng.integers(0, 6)] = str(rng.choice(TOXIC))
            rows.append({"text": " ".join(words) + f" {rng.integers(1_000_000)}", "toxic": label})
    order = rng.permutation(len(rows))
    return [rows[i] for i in order]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def write_toxicity_mirror(root: Path, languages=("en", "de", "ru"), n_per_class: int = 150) -> Path:
    for i, lang in enumerate(languages):
        write_jsonl(root / "multilingual_toxicity_dataset" / f"{lang}.jsonl", synthetic_texts(n_per_class, seed=i))
    return root
