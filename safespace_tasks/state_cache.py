"""A resumable on-disk cache of pooled states, one SQLite file per model.

A long run that is killed and restarted recomputes only the texts it had not finished: every
batch is committed as soon as it is computed. The file is named after a fingerprint of the model
(class, path, revision, dtype, parameter count, tokenizer, and a hash of a sample of its weights),
so a cache written by one model is never served to another; each entry is keyed by the text and
every setting that changes its state (layers, pooling, truncation and padding side, max length).
numpy and the standard library only.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from pathlib import Path
from typing import Any, Iterable

import numpy as np

SCHEMA_VERSION = 1


def digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode("utf-8")).hexdigest()


class ForeignCacheError(RuntimeError):
    """A cache file holds states of another model than the one asking."""


class StateCache:
    def __init__(self, root: str | Path, fingerprint: dict[str, Any]) -> None:
        self.root = Path(root).expanduser()
        self.root.mkdir(parents=True, exist_ok=True)
        self.fingerprint = fingerprint
        self.model_key = digest({"schema": SCHEMA_VERSION, **fingerprint})[:32]
        self.path = self.root / f"states-{self.model_key}.sqlite"
        self._db = sqlite3.connect(self.path, timeout=120)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v TEXT)")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS states (key TEXT PRIMARY KEY, layers TEXT, n_tokens INTEGER, "
            "truncated INTEGER, dim INTEGER, vec BLOB)"
        )
        row = self._db.execute("SELECT v FROM meta WHERE k='fingerprint'").fetchone()
        if row is None:
            self._db.execute("INSERT OR IGNORE INTO meta VALUES ('fingerprint', ?)", (json.dumps(fingerprint, sort_keys=True),))
            self._db.commit()
        elif json.loads(row[0]) != json.loads(json.dumps(fingerprint, sort_keys=True)):
            raise ForeignCacheError(
                f"state cache {self.path} belongs to another model ({row[0]}); delete it or point "
                "state_cache at another folder."
            )

    @staticmethod
    def key(text: str, settings: dict[str, Any]) -> str:
        return digest({"text": text, **settings})

    def get_many(self, keys: Iterable[str]) -> dict[str, tuple[np.ndarray, tuple[int, ...], int, bool]]:
        keys = list(dict.fromkeys(keys))
        found: dict[str, tuple[np.ndarray, tuple[int, ...], int, bool]] = {}
        for start in range(0, len(keys), 500):
            chunk = keys[start : start + 500]
            marks = ",".join("?" * len(chunk))
            for key, layers, n_tokens, truncated, dim, vec in self._db.execute(
                f"SELECT key, layers, n_tokens, truncated, dim, vec FROM states WHERE key IN ({marks})", chunk
            ):
                layer_t = tuple(json.loads(layers))
                arr = np.frombuffer(vec, dtype=np.float32).reshape(len(layer_t), dim).copy()
                found[key] = (arr, layer_t, int(n_tokens), bool(truncated))
        return found

    def put_many(self, rows: Iterable[tuple[str, np.ndarray, tuple[int, ...], int, bool]]) -> None:
        payload = [
            (key, json.dumps([int(x) for x in layers]), int(n_tokens), int(truncated), int(vec.shape[-1]),
             np.ascontiguousarray(vec, dtype=np.float32).tobytes())
            for key, vec, layers, n_tokens, truncated in rows
        ]
        self._db.executemany("INSERT OR REPLACE INTO states VALUES (?, ?, ?, ?, ?, ?)", payload)
        self._db.commit()

    def __len__(self) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM states").fetchone()[0])

    def close(self) -> None:
        self._db.close()
