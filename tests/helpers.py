"""What test modules share: the repo and mirror locations, tiny random-weight models, small synthetic
mirrors, and the ways the tests run ``safespace-eval`` and read what a run wrote.

Every test folder imports it as ``helpers`` (tests/conftest.py puts tests/ on ``sys.path``); no test
module imports another test module."""

from __future__ import annotations

import glob
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
REAL_MIRROR = Path(os.environ.get("SAFESPACE_TEST_MIRROR", REPO.parent / "shared" / "data"))
BIN = Path(sys.executable).parent  # the console scripts of the running interpreter's environment

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
    """``safespace-eval ARGS`` in a fresh interpreter with this checkout first on the path; the finished process."""
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


# --- tiny random-weight causal LMs with a byte-level BPE tokenizer, built in seconds ---

SPECIALS = ["<pad>", "<s>", "</s>"]


def build_tokenizer(texts: list[str], vocab_size: int = 400):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=SPECIALS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(texts, trainer)
    bos = tok.token_to_id("<s>")
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", bos)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>")
    fast.chat_template = (
        "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}<|assistant|>{% endif %}"
    )
    return fast


def build_tiny_llama(folder: str | Path, texts: list[str], *, layers: int = 2, hidden: int = 32, seed: int = 0,
                     max_position_embeddings: int = 256) -> Path:
    """Save a random LlamaForCausalLM and its tokenizer to ``folder``; returns the folder."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    folder = Path(folder)
    tok = build_tokenizer(texts)
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tok), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=max_position_embeddings,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
    )
    model = LlamaForCausalLM(config).eval()
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


# --- console scripts and the results they write ---


def run_script(script: str, args: list[str], env_extra: dict | None = None, cwd: Path | None = None) -> str:
    """The installed console script ``script`` (``safespace-eval``, ``lm_eval``...) with ``args``; its stdout.
    A non-zero exit fails the test with the tail of both streams."""
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", **(env_extra or {})}
    proc = subprocess.run([str(BIN / script), *args], capture_output=True, text=True, env=env, cwd=cwd, timeout=1800)
    if proc.returncode != 0:
        raise AssertionError(f"{script} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}")
    return proc.stdout


def results_of(out_dir: Path) -> tuple[dict, Path]:
    """The one results JSON under ``out_dir/<model>/`` and its folder."""
    files = glob.glob(str(out_dir / "*" / "results_*.json"))
    assert len(files) == 1, files
    return json.loads(Path(files[0]).read_text()), Path(files[0]).parent


def independent_ll(model, tok, context: str, continuation: str) -> float:
    """Sum of log P(continuation tokens | context) computed directly with transformers (the
    tokenizer's own special tokens, as a plain ``tok(text)`` call gives them)."""
    import torch

    whole = tok(context + continuation)["input_ids"]
    ctx = tok(context)["input_ids"]
    assert whole[: len(ctx)] == ctx
    ids = torch.tensor([whole])
    with torch.no_grad():
        logp = torch.log_softmax(model(ids).logits.double(), dim=-1)[0]
    return float(sum(logp[t - 1, whole[t]] for t in range(len(ctx), len(whole))))
