"""Saved pooled states: one ``.npz`` per task and run, written beside lm-eval's results JSON.

numpy only, so reports and plots read them without torch or a model. A file holds

- ``states``  float32 (n_texts, n_layers, hidden): the pooled state of each text at each layer
- ``labels``  int8 (n_texts,): 1 toxic, 0 non-toxic
- ``ids``     int64 (n_texts,): the text's row in its dataset split
- ``groups``  int64 (n_texts,): the pair a text belongs to (-1 where texts are not paired)
- ``layers``  int64 (n_layers,): hidden-state index of each layer (0 = embeddings, L = final, after norm)
- ``meta``    a JSON string: task, dataset, language, settings, the reported metrics per layer with
  their intervals and diagnostics, what the loader excluded, and the model when known.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["StatesBundle", "save_states", "load_states", "states_filename", "find_states"]

STATES_PREFIX = "safespace_states_"


@dataclass
class StatesBundle:
    task: str
    states: np.ndarray
    labels: np.ndarray
    ids: np.ndarray
    groups: np.ndarray
    layers: np.ndarray
    meta: dict[str, Any] = field(default_factory=dict)

    def layer(self, layer: int) -> np.ndarray:
        """States (n_texts x hidden) at one hidden-state index (as stored in ``layers``; -1 = the last stored)."""
        layers = list(int(x) for x in self.layers)
        if layer == -1 and -1 not in layers:
            return self.states[:, int(np.argmax(self.layers))]
        if layer not in layers:
            raise KeyError(f"layer {layer} was not saved; saved layers: {layers}")
        return self.states[:, layers.index(layer)]


def states_filename(task: str, date_id: str | None = None) -> str:
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", task)
    return f"{STATES_PREFIX}{safe}{'_' + date_id if date_id else ''}.npz"


def save_states(bundle: StatesBundle, folder: str | Path, date_id: str | None = None) -> Path:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / states_filename(bundle.task, date_id)
    np.savez(
        path,
        states=np.asarray(bundle.states, dtype=np.float32),
        labels=np.asarray(bundle.labels, dtype=np.int8),
        ids=np.asarray(bundle.ids, dtype=np.int64),
        groups=np.asarray(bundle.groups, dtype=np.int64),
        layers=np.asarray(bundle.layers, dtype=np.int64),
        meta=np.asarray(json.dumps({"task": bundle.task, **bundle.meta}, default=_json_default)),
    )
    return path


def load_states(path: str | Path) -> StatesBundle:
    with np.load(Path(path), allow_pickle=False) as f:
        missing = {"states", "labels", "ids", "groups", "layers", "meta"} - set(f.files)
        if missing:
            raise ValueError(f"{path} is not a safespace states file (missing {sorted(missing)}).")
        meta = json.loads(str(f["meta"]))
        return StatesBundle(
            task=meta.get("task", Path(path).stem),
            states=f["states"],
            labels=f["labels"].astype(np.int64),
            ids=f["ids"],
            groups=f["groups"],
            layers=f["layers"],
            meta=meta,
        )


def find_states(folder: str | Path) -> dict[str, Path]:
    """The newest states file of each task under ``folder`` (searched recursively)."""
    newest: dict[str, tuple[float, Path]] = {}
    for path in Path(folder).rglob(f"{STATES_PREFIX}*.npz"):
        try:
            with np.load(path, allow_pickle=False) as f:
                task = json.loads(str(f["meta"])).get("task")
        except Exception:  # noqa: BLE001 - a foreign or broken file is skipped, not fatal
            continue
        mtime = path.stat().st_mtime
        if task and (task not in newest or mtime > newest[task][0]):
            newest[task] = (mtime, path)
    return {task: p for task, (_, p) in sorted(newest.items())}


def _json_default(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, (set, tuple)):
        return list(o)
    return str(o)
