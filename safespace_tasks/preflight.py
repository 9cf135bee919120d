"""Checks of a ``safespace-eval`` command line that need no model, run before the model loads.

:mod:`safespace_tasks.cli` calls them; each raises :class:`InputError` with one line that names the
option, setting or file and the fix:

* :func:`check_dict_options`: a JSON value of ``--metadata`` / ``--model_args`` / ``--gen_kwargs`` ...
  with a syntax error (lm-eval would stop with a long traceback from inside its argument parser);
* :func:`check_batch_size`: ``--batch_size 0``, a negative or a non-numeric size;
* :func:`check_task_data`: the mirror folder (``$SAFESPACE_DATA_DIR`` / metadata ``data_dir``) is a
  file, holds none of the datasets, lacks a language file the selected tasks read, or a file is not UTF-8;
* :func:`check_layers_against_model`: a ``layers`` setting out of range for the model, read from the
  checkpoint's ``config.json`` (no weights) where the model is a local folder or in the local HF cache.

Nothing here imports torch or loads weights.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
from pathlib import Path
from typing import Any, Iterable

from safespace_tasks import data as data_mod

__all__ = ["InputError", "check_dict_options", "check_batch_size", "selected_tasks", "mirror_files",
           "check_task_data", "model_depth", "check_layers_against_model"]

# lm-eval options whose value is a JSON object or key=value pairs (lm_eval/_cli/run.py, MergeDictAction)
DICT_OPTIONS = ("--model_args", "-a", "--gen_kwargs", "--wandb_args", "--wandb_config_args", "--trackio_args",
                "--hf_hub_log_args", "--metadata")


class InputError(ValueError):
    """A command-line value, setting or data file that cannot work; the message names it and the fix."""


# --------------------------------------------------------------------------- options


def _option_values(argv: list[str], names: Iterable[str]) -> list[tuple[str, str]]:
    """(option, first value) of each occurrence of the options ``names`` in ``argv``."""
    names = tuple(names)
    out = []
    for i, arg in enumerate(argv):
        opt, eq, val = arg.partition("=")
        if opt in names:
            if eq:
                out.append((opt, val))
            elif i + 1 < len(argv):
                out.append((opt, argv[i + 1]))
    return out


def check_dict_options(argv: list[str]) -> None:
    """A JSON object given to a dict option must parse: otherwise name the option, the position and the fix."""
    for opt, value in _option_values(argv, DICT_OPTIONS):
        text = value.strip()
        if not text.startswith("{") and not text.startswith("["):
            continue  # key=value pairs: lm-eval's own parser gives a clear one-line error
        try:
            json.loads(text)
        except json.JSONDecodeError as err:
            near = text[max(0, err.pos - 15): err.pos + 15]
            raise InputError(
                f"{opt} is not valid JSON: {err.msg} at column {err.colno} (char {err.pos}), near {near!r} in {text!r}. "
                "Write one JSON object, e.g. '{\"pca_components\": 5, \"layers\": \"all\"}' (double-quoted keys, "
                "commas between entries, no trailing comma), or key=value pairs: pca_components=5,seed=1"
            ) from None


def check_batch_size(value: Any) -> None:
    """``--batch_size`` must be a positive integer, ``auto`` or ``auto:N`` (N >= 1)."""
    if value is None:
        return
    text = str(value).strip()
    if re.fullmatch(r"auto(:[1-9]\d*)?", text) or re.fullmatch(r"\+?0*[1-9]\d*", text):
        return
    raise InputError(
        f"--batch_size {text}: a batch size must be a positive integer (e.g. 8), 'auto' or 'auto:N' with N >= 1."
    )


# --------------------------------------------------------------------------- tasks and their files


def _read_generated(path: Path) -> dict[str, Any]:
    """The top-level scalar keys and the ``task:`` list of one of our YAMLs (no ``!function`` tags there)."""
    out: dict[str, Any] = {}
    current_list: list[str] | None = None
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        if line.startswith("  - ") and current_list is not None:
            current_list.append(line[4:].strip())
            continue
        if line[0].isspace():
            current_list = None
            continue
        key, _, value = line.partition(":")
        value = value.strip()
        if value:
            out[key.strip()] = value.strip("'\"")
            current_list = None
        else:
            current_list = out.setdefault(key.strip(), [])
    return out


def _catalogue() -> tuple[dict[str, tuple[str, str]], dict[str, list[str]]]:
    """Our tasks (name -> (family, test split)) and groups (name -> its task list), read from task_configs/."""
    from safespace_tasks import task_dir

    tasks: dict[str, tuple[str, str]] = {}
    groups: dict[str, list[str]] = {}
    for folder in sorted(p for p in Path(task_dir()).iterdir() if p.is_dir()):
        for yml in folder.glob("*.yaml"):
            cfg = _read_generated(yml)
            if "group" in cfg:
                groups[str(cfg["group"])] = [str(t) for t in cfg.get("task") or []]
            elif "task" in cfg and isinstance(cfg["task"], str):
                tasks[cfg["task"]] = (folder.name, str(cfg.get("test_split", "")))
    return tasks, groups


def selected_tasks(task_names: Iterable[str]) -> dict[str, tuple[str, str]]:
    """The safespace tasks (name -> (family, language)) that task names, group names and globs select.

    As lm-eval reads them: a group selects the tasks it lists (``safespace_continuation``: the four
    mirrored locales, not every RTP-LX locale); a glob selects the tasks and groups whose names match.
    """
    tasks, groups = _catalogue()
    out: dict[str, tuple[str, str]] = {}
    for name in task_names:
        name = name.strip()
        chosen = [g for g in groups if g == name or (any(ch in name for ch in "*?[") and fnmatch.fnmatchcase(g, name))]
        members = [t for g in chosen for t in groups[g]]
        members += [t for t in tasks if t == name or (any(ch in name for ch in "*?[") and fnmatch.fnmatchcase(t, name))]
        out.update({t: tasks[t] for t in members if t in tasks})
    return out


def _settings(family: str, metadata: dict[str, Any]):
    from dataclasses import fields

    from safespace_tasks.harness.core import settings_for

    cls = settings_for(family)
    own = {f.name for f in fields(cls)}
    return cls.from_metadata({k: v for k, v in metadata.items() if k in own})


_TOX = data_mod.TOXICITY.folder
_PARA = data_mod.PARADETOX.folder


def mirror_files(family: str, language: str, metadata: dict[str, Any]) -> list[str]:
    """Paths, relative to the mirror root, that a task of ``family`` for ``language`` reads."""
    if family in ("toxicity", "recognition"):
        return [f"{_TOX}/{language}.jsonl"]
    if family in ("paradetox", "detox", "detoxpref"):
        return [f"{_PARA}/{language}.jsonl"]
    if family == "continuation":
        return [f"{data_mod.RTPLX.folder}/{language}.jsonl"]
    if family == "transfer":
        s = _settings(family, metadata)
        return [f"{_TOX}/{lang}.jsonl" for lang in dict.fromkeys(tuple(s.sources) + tuple(s.targets))]
    if family == "refusal":
        return [data_mod._UNIT_FILES["advbench"][0]] if language == "advbench" else [f"multijail/{language}.jsonl"]
    if family == "direction":
        return [f"multijail/{language}.jsonl", data_mod._UNIT_FILES["alpaca_seed_tasks"][0]]
    if family == "units":
        s = _settings(family, metadata)
        langs = [x for x in str(s.languages).replace(",", " ").split() if x]
        return [data_mod._UNIT_FILES[k][0] for k in ("advbench", "safety_refusals", "alpaca_seed_tasks")] + [
            f"multijail/{lang}.jsonl" for lang in langs]
    return []


def check_task_data(task_names: Iterable[str], metadata: dict[str, Any] | None) -> Path | None:
    """The mirror the selected safespace tasks read, checked file by file before any model loads.

    Returns the mirror root (None: the tasks read the Hub, nothing to check here). Raises
    :class:`InputError` (with the loader's :class:`~safespace_tasks.data.DataError` message) for a root
    that is a file or missing, a root that holds none of the datasets, a missing language file, or a
    file that is not UTF-8.
    """
    metadata = dict(metadata or {})
    selected = selected_tasks(task_names)
    if not selected:
        return None
    try:
        root = data_mod.resolve_data_dir(metadata.get(data_mod.DATA_DIR_KEY))
    except data_mod.DataError as err:
        raise InputError(str(err)) from None
    if root is None:
        return None
    setting = f"metadata {data_mod.DATA_DIR_KEY}" if metadata.get(data_mod.DATA_DIR_KEY) else f"${data_mod.DATA_DIR_ENV}"
    needed: dict[str, str] = {}
    for task, (family, language) in selected.items():
        for rel in mirror_files(family, language, metadata):
            needed.setdefault(rel, task)
    folders = sorted({rel.split("/")[0] for rel in needed})
    if not any((root / f).is_dir() for f in folders):
        raise InputError(
            f"data mirror {root} (set by {setting}) holds none of the dataset folders the tasks read "
            f"({', '.join(folders)}). Point {setting} at the folder that holds them (e.g. shared/data), "
            "or unset it to read the Hugging Face Hub."
        )
    for rel, task in needed.items():
        path = root / rel
        if not path.is_file():
            if rel.startswith(data_mod.RTPLX.folder + "/") and rel.split("/")[-1][:-6] not in data_mod.RTPLX_MIRRORED:
                try:
                    data_mod.rtplx_rows(rel.split("/")[-1][:-6], root)
                except data_mod.DataError as err:
                    raise InputError(f"{task}: {err}") from None
            raise InputError(
                f"{task}: mirror file {path} is missing (the mirror root {root}, set by {setting}, must hold {rel}). "
                "Copy that file into the mirror, drop the task from --tasks, or unset the mirror to read the Hub."
            )
        try:
            data_mod.check_utf8(path)
        except data_mod.DataError as err:
            raise InputError(f"{task}: {err}") from None
    return root


# --------------------------------------------------------------------------- layers and the model's depth


def model_depth(model_args: dict[str, Any]) -> int | None:
    """Number of decoder blocks of ``pretrained`` from its ``config.json`` alone, or None when unknown.

    A local folder is read directly; a Hub id only from the local HF cache (no download).
    """
    pretrained = model_args.get("pretrained")
    if not isinstance(pretrained, str) or not pretrained:
        return None
    cfg = None
    path = Path(pretrained).expanduser()
    if path.is_dir():
        file = path / "config.json"
        if file.is_file():
            try:
                cfg = json.loads(file.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                return None
    else:
        try:
            from huggingface_hub import try_to_load_from_cache

            cached = try_to_load_from_cache(pretrained, "config.json", revision=model_args.get("revision"))
            if isinstance(cached, str) and os.path.isfile(cached):
                cfg = json.loads(Path(cached).read_text(encoding="utf-8"))
        except Exception:  # an odd id or cache layout: the model side checks the range later
            return None
    if not isinstance(cfg, dict):
        return None
    for c in (cfg.get("text_config"), cfg):
        if isinstance(c, dict):
            n = c.get("num_hidden_layers", c.get("n_layer"))
            if isinstance(n, int) and n > 0:
                return n
    return None


def check_layers_against_model(task_names: Iterable[str], metadata: dict[str, Any] | None,
                               model_args: dict[str, Any]) -> int | None:
    """A ``layers`` setting of the selected families resolved against the model's depth (from its config).

    Returns the depth (None: unknown here; the check then happens on the model side, before any forward
    pass). Raises :class:`InputError` with the layer spec's message for an index or range out of range.
    """
    from safespace_tasks.layer_spec import resolve_spec

    metadata = dict(metadata or {})
    if "layers" not in metadata or metadata["layers"] is None:
        return None
    families = sorted({fam for fam, _ in selected_tasks(task_names).values()})
    families = [f for f in families if f in ("toxicity", "paradetox", "transfer", "direction")]
    if not families:
        return None
    depth = model_depth(model_args)
    if depth is None:
        return None
    try:
        resolve_spec(metadata["layers"], depth)
    except ValueError as err:
        raise InputError(
            f"--metadata ({', '.join(families)}): {err} The model {model_args.get('pretrained')} has {depth} "
            "decoder layers (its config.json)."
        ) from None
    return depth
