"""Shared pieces of the benchmark scripts: environment record, machine load, peak memory, JSON output.

Measurements on a shared machine drift with the load of other processes. The scripts therefore
compare paths inside one process, interleave their repetitions, take medians, and record the
load average and the share of the CPU this process actually got.
"""

from __future__ import annotations

import ctypes
import datetime as _dt
import gc
import json
import os
import platform
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as `python benchmarks/<script>.py` from a checkout
    sys.path.insert(0, str(REPO))

GIB = 1024**3
MIB = 1024**2


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def versions(*modules: str) -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in modules:
        try:
            mod = __import__(name)
            out[name] = str(getattr(mod, "__version__", "?"))
        except ImportError:
            out[name] = "not installed"
    return out


def machine_record() -> dict[str, Any]:
    return {
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "host_cpu": cpu_name(),
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
    }


def load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


class Stopwatch:
    """Wall and process-CPU seconds of a block; ``cpu_share`` = CPU seconds / (wall x threads)."""

    def __init__(self, threads: int = 1):
        self.threads = max(1, threads)
        self.wall = 0.0
        self.cpu = 0.0

    def __enter__(self) -> "Stopwatch":
        self._w = time.perf_counter()
        self._c = time.process_time()
        return self

    def __exit__(self, *exc) -> None:
        self.wall = time.perf_counter() - self._w
        self.cpu = time.process_time() - self._c

    @property
    def cpu_share(self) -> float:
        return self.cpu / (self.wall * self.threads) if self.wall > 0 else float("nan")


# --------------------------------------------------------------------------- host memory

_libc = None


def _malloc_trim() -> None:
    """Hand freed heap back to the OS, so that the resident size before a phase is its true baseline."""
    global _libc
    try:
        if _libc is None:
            _libc = ctypes.CDLL("libc.so.6")
        _libc.malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _status_kib(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_peak_rss() -> bool:
    """Reset the kernel's high-water mark of this process (Linux >= 4.0: write 5 to clear_refs)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


@dataclass
class MemoryReading:
    """Peak memory of one phase: ``peak`` is the high-water mark, ``work = peak - base`` what the
    phase added on top of what was resident (weights, inputs) when it started."""

    base: int
    peak: int
    method: str

    @property
    def work(self) -> int:
        return max(0, self.peak - self.base)


@contextmanager
def host_peak_memory() -> Iterator[list[MemoryReading]]:
    """Peak resident set size of a block, read from /proc (Linux). The reading is appended to the
    yielded list when the block ends; where the peak cannot be reset the method says so."""
    out: list[MemoryReading] = []
    gc.collect()
    _malloc_trim()
    base = (_status_kib("VmRSS") or 0) * 1024
    method = "rss_hwm" if _reset_peak_rss() else "unavailable"
    try:
        yield out
    finally:
        peak = (_status_kib("VmHWM") or 0) * 1024 if method == "rss_hwm" else base
        out.append(MemoryReading(base=base, peak=max(peak, base), method=method))


# --------------------------------------------------------------------------- statistics and output


def median(values: list[float]) -> float:
    s = sorted(values)
    n = len(s)
    if n == 0:
        return float("nan")
    return s[n // 2] if n % 2 else 0.5 * (s[n // 2 - 1] + s[n // 2])


def write_json(path: str | os.PathLike, payload: dict[str, Any]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2, sort_keys=False, default=_json_default) + "\n")
    tmp.replace(path)
    return path


def _json_default(obj):
    try:
        import numpy as np

        if isinstance(obj, np.generic):
            return obj.item()
        if isinstance(obj, np.ndarray):
            return obj.tolist()
    except ImportError:
        pass
    return str(obj)


def verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else ("PASS" if ok else "MISS")
