"""Shared fixtures of every test folder: the data mirror and tiny random-weight models built on the fly.

Also puts tests/ on ``sys.path``, so that a test in any folder does ``from helpers import ...``."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))


def _mirror() -> Path:
    candidates = [os.environ.get("SAFESPACE_DATA_DIR"), REPO.parent / "shared" / "data"]
    for c in candidates:
        if c and (Path(c) / "multilingual_toxicity_dataset").is_dir():
            return Path(c).resolve()
    raise RuntimeError(
        "the data mirror was not found: set SAFESPACE_DATA_DIR or place the workplace's shared/data beside the repo"
    )


@pytest.fixture(scope="session")
def mirror() -> Path:
    return _mirror()


@pytest.fixture(scope="session")
def sample_texts(mirror) -> list[str]:
    texts = []
    for lang in ("en", "de", "am", "zh", "hi", "ru"):
        with open(mirror / "multilingual_toxicity_dataset" / f"{lang}.jsonl", encoding="utf-8") as f:
            for i, line in enumerate(f):
                if i % 10 == 0:
                    texts.append(json.loads(line)["text"])
    return texts


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory, sample_texts) -> Path:
    from helpers import build_tiny_llama

    return build_tiny_llama(tmp_path_factory.mktemp("tiny") / "llama", sample_texts, max_position_embeddings=128)


@pytest.fixture(scope="session")
def tiny_model_long(tmp_path_factory, sample_texts) -> Path:
    """Like ``tiny_model`` with a 1,024-token context, for tasks whose texts must not be cut."""
    from helpers import build_tiny_llama

    return build_tiny_llama(tmp_path_factory.mktemp("tiny_long") / "llama", sample_texts, max_position_embeddings=1024)
