"""Helpers the example scripts share (``examples/``), so that each does not re-implement them.

Imports neither torch nor lm-eval. Today: the data mirror a script needs (:func:`require_data_dir`)
the text normalisation by which training data are checked against evaluation data
(:func:`normalise`, :class:`TrainEvalOverlapError`), and greedy replies through the chat template
(:func:`chat_prompt`, :func:`generate_replies`; torch is imported when they run): the one chat rule
and generation loop of the twin, pruning, freezing and XSTest-judging examples.
"""

from __future__ import annotations

import os
import re
import unicodedata
from pathlib import Path

from safespace_tasks.data import DATA_DIR_ENV

__all__ = ["require_data_dir", "normalise", "TrainEvalOverlapError", "chat_prompt", "stop_token_ids", "generate_replies"]

_NON_WORD = re.compile(r"[\W_]+")


def require_data_dir(explicit: str | os.PathLike | None = None) -> Path:
    """The data mirror a script reads: ``explicit`` (its ``--data-dir``), else ``$SAFESPACE_DATA_DIR``.

    Returns the absolute folder. A script cannot fall back to the Hub, so this stops it
    (:class:`SystemExit` with the fix) when neither is set or the folder does not exist; the
    tasks' own lookup, which may read the Hub instead, is :func:`safespace_tasks.data.resolve_data_dir`.
    """
    value = explicit or os.environ.get(DATA_DIR_ENV)
    if not value:
        raise SystemExit(f"no data folder: pass --data-dir or set {DATA_DIR_ENV} (e.g. ../shared/data)")
    root = Path(value).expanduser().resolve()
    if not root.is_dir():
        raise SystemExit(f"data folder {root} does not exist: point --data-dir at the data mirror")
    return root


def normalise(text: str) -> str:
    """NFKC, case-folded, every run of non-word characters replaced by one space, stripped.

    Two texts that are equal after it are the same text for an overlap check: case, punctuation and
    spacing do not hide a copy.
    """
    return _NON_WORD.sub(" ", unicodedata.normalize("NFKC", text).casefold()).strip()


class TrainEvalOverlapError(AssertionError):
    """A training text equals (after :func:`normalise`) a text a model is evaluated on.

    Raised explicitly, never by ``assert``: it must fire under ``python -O`` too.
    """


def chat_prompt(tok, user: str) -> str:
    """``user`` as the one user turn of ``tok``'s chat template, ready for the assistant's reply (text).

    A tokenizer without a template (a base model) gets ``user + "\n"``: the rule of ``safespace units
    stats`` and of the tasks' ``chat_template`` setting, so replies and unit statistics see one prompt.
    """
    if not getattr(tok, "chat_template", None):
        return user + "\n"
    return tok.apply_chat_template([{"role": "user", "content": user}], tokenize=False, add_generation_prompt=True)


def stop_token_ids(model, tok) -> list[int]:
    """The ids greedy generation stops at: the model's generation config's (one id, or a list where a
    chat model ends its turn with a token other than the tokenizer's end of sequence) and the
    tokenizer's end-of-sequence token. Passing the tokenizer's alone would run past such a turn."""
    config = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids = [config] if isinstance(config, int) else list(config or [])
    if tok.eos_token_id is not None and tok.eos_token_id not in ids:
        ids.append(tok.eos_token_id)
    return ids


def generate_replies(model, tok, users: list[str], *, new_tokens: int, batch_size: int) -> list[str]:
    """Greedy replies to ``users`` through :func:`chat_prompt`, batched with left padding, longest first.

    The prompts are tokenized without added special tokens (the template writes its own); a tokenizer
    with no pad token pads with its end-of-sequence token, and its padding side is restored after.
    Generation stops at :func:`stop_token_ids`; each reply is decoded without special tokens and
    stripped of surrounding whitespace, in the order of ``users``.
    """
    import torch

    prompts = [chat_prompt(tok, u) for u in users]
    lengths = [len(tok(p, add_special_tokens=False)["input_ids"]) for p in prompts]
    order = sorted(range(len(prompts)), key=lambda i: -lengths[i])
    side, tok.padding_side = tok.padding_side, "left"
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    stop = stop_token_ids(model, tok)
    out: list[str | None] = [None] * len(prompts)
    try:
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            enc = tok([prompts[i] for i in idx], return_tensors="pt", padding=True, add_special_tokens=False)
            with torch.no_grad():
                gen = model.generate(
                    **enc, max_new_tokens=new_tokens, do_sample=False, pad_token_id=tok.pad_token_id,
                    eos_token_id=stop or None, temperature=None, top_p=None, top_k=None,
                )
            for row, i in enumerate(idx):
                out[i] = tok.decode(gen[row, enc["input_ids"].shape[1]:], skip_special_tokens=True).strip()
    finally:
        tok.padding_side = side
    return out  # type: ignore[return-value]
