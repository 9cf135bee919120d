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


def shared_cache_root(tmp_path_factory) -> Path:
    """One ``$SAFESPACE_CACHE`` root per test session, so the real default scorer trains once."""
    root = tmp_path_factory.getbasetemp() / "safespace-cache"
    root.mkdir(exist_ok=True)
    return root


def run_cli(args: list[str], env_extra: dict[str, str], timeout: int = 1200):
    """``safespace-eval ARGS`` in a fresh interpreter with this checkout first on the path."""
    import subprocess
    import sys

    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        **env_extra,
    }
    code = "import sys; sys.argv = ['safespace-eval'] + sys.argv[1:]; from safespace_tasks.cli import eval_main; eval_main()"
    return subprocess.run([sys.executable, "-c", code, *args], env=env, capture_output=True, text=True, timeout=timeout)


def load_run(output_path: Path) -> tuple[dict, dict[str, list[dict]]]:
    """The results JSON of a run and its logged samples per task."""
    results_files = sorted(output_path.rglob("results_*.json"))
    assert results_files, f"no results JSON under {output_path}"
    results = json.loads(results_files[-1].read_text(encoding="utf-8"))
    samples: dict[str, list[dict]] = {}
    for f in results_files[-1].parent.glob("samples_*.jsonl"):
        task = f.name[len("samples_") :].rsplit("_", 1)[0]
        samples[task] = [json.loads(line) for line in f.read_text(encoding="utf-8").splitlines()]
    return results, samples
