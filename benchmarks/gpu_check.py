"""The prepared GPU check: every hidden-state path at the 1B and 8B shapes, and one full end-to-end run.

One process, no downloads (random weights of Llama-3.2-1B and Llama-3.1-8B shapes built from configs
in ``bench_hidden_states.SHAPES``; token lengths from the mirror's texts), bf16, paths interleaved as
in ``bench_hidden_states.py`` (the same code), the harness path also with ``batch_size auto``; then
``safespace-eval`` on the whole toxicity family (15 languages, every text) with the 1B shape saved
to disk first. One JSON: GPU name, versions, each path's tok/s and peak memory, each ratio against
its target, the end-to-end time, and what the time budget skipped. It stops by itself: no
repetition is started that would end after its phase's share of ``--budget-s``, the end-to-end run
is killed at its share, and a hard alarm writes what is done and exits at ``--budget-s`` + 30 s.

    python benchmarks/gpu_check.py prepare            # here: wheels, tokenizer and texts into .gpu/
    bash benchmarks/gpu_check.sh                      # there (carry .gpu): install, run, JSON in $OUT
    python benchmarks/gpu_check.py --tiny --out x.json   # the same code on CPU in about a minute
    python benchmarks/gpu_check.py table x.json       # the README table of a result
"""

from __future__ import annotations

import argparse
import gc
import importlib.metadata as md
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402  (adds the checkout to sys.path)

CARRY = C.REPO / ".gpu"  # what a device run carries: wheels, tokenizer, texts (ignored by git, never committed)
DATA_FOLDER = "multilingual_toxicity_dataset"

# Packages the device image already has (its list as recorded for the nvidia-h200 kind, normalised
# names). The packages lm-eval and this plugin need beyond these travel as wheels.
IMAGE_PACKAGES = set("""
absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs botorch build certifi
charset-normalizer chex click cloudpickle cmake colorama contourpy coverage cuda-bindings cuda-core
cuda-pathfinder cuda-toolkit cupy-cuda13x cycler cython diffrax e3nn einops equinox etils execnet filelock
flatbuffers flax fonttools formulaic frozenlist fsspec gpytorch grpcio h11 h5py hf-xet httpcore httpx
huggingface-hub humanize hypothesis idna imageio iniconfig interface-meta jax jax-cuda13-pjrt jax-cuda13-plugin
jaxlib jaxtyping jinja2 joblib kiwisolver lazy-loader lightning lightning-utilities linear-operator lineax
llvmlite lxml markdown markdown-it-py markupsafe matplotlib mdurl meson ml-dtypes mpi4py mpmath msgpack
multidict multipledispatch mypy-extensions nanobind narwhals networkx ninja numba numba-cuda numpy numpyro
nvidia-ml-py onnx onnx-ir onnxruntime onnxscript opencv-python-headless optax opt-einsum opt-einsum-fx
optimistix orbax-checkpoint packaging pandas pathspec patsy peft pillow pip pluggy portalocker
prometheus-client propcache protobuf psutil pyarrow pybind11 py-cpuinfo pygments pyparsing pyproject-hooks
pyre-extensions pytest pytest-benchmark pytest-cov pytest-mock pytest-timeout pytest-xdist python-dateutil
pytorch-lightning pyyaml regex requests rich sacrebleu safetensors scikit-build-core scikit-image
scikit-learn scipy seaborn sentencepiece sentence-transformers setuptools shellingham simplejson six
sortedcontainers statsmodels sympy tabulate tensorboard tensorboard-data-server tensorstore threadpoolctl
tifffile tiktoken timm tokenizers toolz torch torchaudio torchdiffeq torch-geometric torchmetrics torchvision
tqdm transformers treescope triton typer typing-extensions typing-inspect urllib3 uvloop wadler-lindig
werkzeug wheel wrapt xarray xxhash yarl zipp
""".split())

# What lm-eval 0.4.13 and this plugin need that the image lacks (closure of their requirements
# minus IMAGE_PACKAGES; `python benchmarks/gpu_check.py wheels` recomputes it from this machine's
# installed metadata and the test checks that the two agree). Versions: this project's CI.
WHEELS = [
    "lm-eval", "datasets", "evaluate", "jsonlines", "dill", "multiprocess", "pytablewriter", "dataproperty",
    "mbstrdecoder", "chardet", "pathvalidate", "tabledata", "tcolorpy", "typepy", "rouge-score", "nltk",
    "defusedxml", "sqlitedict", "word2number", "more-itertools", "pytz",
]

# Phase shares of the budget (unused time rolls over to the phases after).
PHASES = (("1b", 0.22), ("e2e", 0.45), ("8b", 0.33))
TINY_PHASES = (("tiny", 0.25), ("e2e", 0.75))

TINY_SHAPE = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                  intermediate_size=128, vocab_size=49152, tie_word_embeddings=True)


def norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


# --------------------------------------------------------------------------- preparing (here)


def missing_packages(roots=("lm_eval", "safespace-tasks")) -> dict[str, str]:
    """Installed requirement closure of ``roots`` that the device image lacks: {name: version}.

    The walk stops at a package the image has (its own requirements are met there)."""
    out: dict[str, str] = {}
    stack: list[tuple[str, frozenset]] = [(r, frozenset()) for r in roots]
    seen: set[tuple[str, frozenset]] = set()
    while stack:
        raw, extras = stack.pop()
        name = norm(raw)
        if (name, extras) in seen:
            continue
        seen.add((name, extras))
        if name != "safespace-tasks":
            if name in IMAGE_PACKAGES:
                continue
            try:
                out[name] = md.version(name)
            except md.PackageNotFoundError:
                continue
        for r in md.requires(name) or []:
            req, _, marker = r.partition(";")
            wanted = re.findall(r"extra == ['\"]([^'\"]+)['\"]", marker)
            if (wanted and not set(wanted) & extras) or 'python_version < "3.' in marker:
                continue
            m = re.match(r"\s*([A-Za-z0-9_.-]+)\s*(?:\[([^\]]*)\])?", req)
            if m:
                sub = frozenset(x.strip() for x in (m.group(2) or "").split(",") if x.strip())
                stack.append((m.group(1), sub))
    return dict(sorted(out.items()))


def prepare(args) -> None:
    """Fill ``.gpu/``: wheels of the missing packages, the tokenizer, the toxicity texts."""
    dest = Path(args.dest)
    whl = dest / "whl"
    whl.mkdir(parents=True, exist_ok=True)
    if C.REPO.resolve() in dest.resolve().parents:  # inside the checkout: keep it out of git
        rel = "/" + dest.resolve().relative_to(C.REPO.resolve()).as_posix() + "/"
        exclude = subprocess.run(["git", "-C", str(C.REPO), "rev-parse", "--git-path", "info/exclude"],
                                 capture_output=True, text=True).stdout.strip()
        if exclude:
            ex = Path(exclude) if Path(exclude).is_absolute() else C.REPO / exclude
            ex.parent.mkdir(parents=True, exist_ok=True)
            if rel not in (ex.read_text() if ex.exists() else "").split():
                with ex.open("a") as f:
                    f.write(rel + "\n")
    pins = missing_packages()
    absent = sorted(set(pins) ^ set(WHEELS))
    if absent:
        print(f"note: the installed closure differs from WHEELS by {absent}; using the installed closure")
    for name, version in pins.items():
        stem = re.sub(r"[-_.]+", "_", name).lower() + "-" + version + "-"
        if any(p.name.lower().startswith(stem) for p in whl.glob("*.whl")):
            continue
        spec = f"{name}=={version}"
        cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:", "--python-version",
               "3.12", "--implementation", "cp", "--platform", "manylinux_2_28_x86_64", "--platform",
               "manylinux_2_17_x86_64", "--platform", "manylinux2014_x86_64", "-d", str(whl), spec]
        if subprocess.run(cmd).returncode != 0:  # no wheel on the index: build a pure-Python one here
            print(f"{spec}: no wheel on the index, building one", flush=True)
            subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(whl), spec], check=True)
    tok_src = Path(args.tokenizer_from) if args.tokenizer_from else _smollm2_folder()
    tok_dst = dest / "tokenizer"
    tok_dst.mkdir(exist_ok=True)
    for f in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja"):
        if (tok_src / f).is_file():
            shutil.copy2(tok_src / f, tok_dst / f)
    from bench_hidden_states import default_data_dir

    src = Path(default_data_dir(args.data_dir) or "") / DATA_FOLDER
    if not src.is_dir():
        raise SystemExit(f"no {DATA_FOLDER} under the data mirror ({src}); pass --data-dir or set SAFESPACE_DATA_DIR.")
    shutil.copytree(src, dest / "data" / DATA_FOLDER, dirs_exist_ok=True)
    size = sum(p.stat().st_size for p in dest.rglob("*") if p.is_file())
    print(f"{dest}: {len(list(whl.glob('*.whl')))} wheels ({', '.join(pins)}), tokenizer from {tok_src}, "
          f"texts from {src}; {size / C.MIB:.1f} MiB to carry (limit 64)")


def _smollm2_folder() -> Path:
    from safespace_tasks.local_models import cache_root

    folder = cache_root() / "smollm2-135m-instruct"
    if not (folder / "tokenizer.json").is_file():
        raise SystemExit("no SmolLM2 tokenizer cached: run `safespace model-path` once, or pass --tokenizer-from.")
    return folder


# --------------------------------------------------------------------------- the check


class Budget:
    def __init__(self, total: float, phases):
        self.start = time.monotonic()
        self.total = total
        self.phases = list(phases)

    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def deadline(self, phase: str) -> float:
        """End of ``phase``: now plus its share of what is left, shared with the phases after it."""
        names = [p for p, _ in self.phases]
        later = self.phases[names.index(phase):]
        share = later[0][1] / sum(s for _, s in later)
        left = self.total - self.elapsed()
        return time.monotonic() + max(0.0, left) * share


class HardStop(Exception):
    pass


def _alarm(signum, frame):
    raise HardStop()


def default_tokenizer() -> str:
    return str(CARRY / "tokenizer") if (CARRY / "tokenizer" / "tokenizer.json").is_file() else "auto"


def run_check(args) -> dict[str, Any]:
    import torch

    import bench_hidden_states as B

    B.quiet_libraries()
    phases = TINY_PHASES if args.tiny else PHASES
    budget = Budget(args.budget_s, phases)
    signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(int(args.budget_s + 30))
    mode = "cpu" if args.tiny else "gpu"
    if args.tiny:
        B.SHAPES["tiny"] = dict(TINY_SHAPE)
        B.TARGET_A_OVER_C.setdefault("tiny", B.TARGET_A_OVER_C["small"])
    dev, dtype = B.pick_device(mode, 1 if args.tiny else None)
    data_dir = B.default_data_dir(args.data_dir)
    record: dict[str, Any] = {
        "benchmark": "gpu_check",
        **C.machine_record(),
        "mode": "tiny (cpu)" if args.tiny else "gpu",
        "device": torch.cuda.get_device_name(0) if mode == "gpu" else f"cpu: {C.cpu_name()}",
        "versions": C.versions("torch", "transformers", "lm_eval", "numpy", "datasets"),
        "command": "python benchmarks/gpu_check.py " + " ".join(args.argv),
        "budget_s": args.budget_s,
        "shapes": {},
        "end_to_end": None,
        "skipped": [],
    }
    if mode == "gpu":
        record["cuda"] = {"torch_cuda": torch.version.cuda, "capability": list(torch.cuda.get_device_capability(0)),
                          "memory_gib": torch.cuda.get_device_properties(0).total_memory / C.GIB}

    def save() -> None:
        record["elapsed_s"] = budget.elapsed()
        C.write_json(args.out, record)

    texts, langs = B.sample_texts(args.n_texts, args.seed, data_dir)
    tokenizer, tokenizer_name = B.load_tokenizer(args.tokenizer, data_dir, args.seed)
    if Path(args.tokenizer).resolve() == (CARRY / "tokenizer").resolve():
        tokenizer_name = f"SmolLM2-135M-Instruct's ({len(tokenizer)} tokens, carried in .gpu/tokenizer)"
    record["tokenizer"] = tokenizer_name
    model_dir = Path(tempfile.mkdtemp(prefix="safespace_gpu_check_"))
    e2e_shape = "tiny" if args.tiny else "1b"
    try:
        for phase, _ in phases:
            deadline = budget.deadline(phase)
            if phase == "e2e":
                if not (model_dir / "config.json").is_file():
                    record["skipped"].append("end-to-end: no saved model (its shape's phase did not run)")
                    continue
                record["end_to_end"] = end_to_end(model_dir, args, deadline - time.monotonic(), data_dir)
                save()
                continue
            if time.monotonic() + 20 > deadline:
                record["skipped"].append(f"shape {phase}: under 20 s of budget left")
                continue
            print(f"== shape {phase} (budget {deadline - time.monotonic():.0f} s)", flush=True)
            t0 = time.monotonic()
            model, config, n_params = B.build_model(phase, tokenizer, dev.device, dtype, args.seed)
            built = time.monotonic() - t0
            if phase == e2e_shape:
                model.save_pretrained(model_dir)
                tokenizer.save_pretrained(model_dir)
            try:
                r = B.measure(
                    model, config, tokenizer, texts, langs, dev, shape=phase, n_params=n_params,
                    tokenizer_name=tokenizer_name, paths=args.paths, batch_size=args.batch_size,
                    repeats=args.repeats, chunk_batches=args.chunk_batches, layer_k=None,
                    clock="cpu" if args.tiny else "wall", seed=args.seed, command=record["command"],
                    deadline=deadline,
                )
            finally:
                del model
                gc.collect()
                if mode == "gpu":
                    torch.cuda.empty_cache()
            r["build_s"] = built
            for key in ("benchmark", "date", "host_cpu", "cpu_count", "platform", "versions", "command", "device"):
                r.pop(key, None)
            record["shapes"][phase] = r
            if r["settings"]["stopped_by_budget"]:
                record["skipped"].append(f"shape {phase}: {r['settings']['repeats'] - r['settings']['repetitions_done']}"
                                         " repetitions did not fit its budget")
            B.print_report({**r, "device": record["device"]})
            save()
    except HardStop:
        record["skipped"].append(f"hard stop at {budget.elapsed():.0f} s: the rest did not run")
    finally:
        signal.alarm(0)
        shutil.rmtree(model_dir, ignore_errors=True)
    record["targets"] = targets(record)
    save()
    print_summary(record)
    print(f"wrote {args.out}")
    return record


def end_to_end(model_dir: Path, args, seconds: float, data_dir: str | None) -> dict[str, Any]:
    """``safespace-eval`` on the whole toxicity family with the saved model, in a subprocess."""
    out_dir = Path(tempfile.mkdtemp(prefix="safespace_gpu_e2e_"))
    gpu = not args.tiny
    cmd = [sys.executable, "-c", "from safespace_tasks.cli import eval_main; eval_main()",
           "--model", "hf", "--model_args", f"pretrained={model_dir},dtype={'bfloat16' if gpu else 'float32'}",
           "--device", "cuda:0" if gpu else "cpu", "--batch_size", "auto", "--tasks", "safespace_toxicity",
           "--output_path", str(out_dir)]
    if args.e2e_limit:
        cmd += ["--limit", str(args.e2e_limit)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(C.REPO), os.environ.get("PYTHONPATH", "")]),
           "TOKENIZERS_PARALLELISM": "false"}
    if data_dir:
        env["SAFESPACE_DATA_DIR"] = data_dir
    shown = " ".join(cmd[3:]).replace(str(model_dir), "MODEL_DIR").replace(str(out_dir), "OUT_DIR")
    entry: dict[str, Any] = {"command": "safespace-eval " + shown,
                             "limit": args.e2e_limit, "timeout_s": max(0.0, seconds)}
    if seconds < 30:
        entry.update(status="skipped", reason=f"{seconds:.0f} s of budget left")
        return entry
    print(f"== end to end ({seconds:.0f} s at most): {entry['command']}", flush=True)
    t0 = time.monotonic()
    try:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=seconds, cwd=C.REPO)
        entry["seconds"] = time.monotonic() - t0
        entry["returncode"] = proc.returncode
        entry["status"] = "ok" if proc.returncode == 0 else "failed"
        if proc.returncode != 0:
            entry["stderr_tail"] = proc.stderr[-2000:]
    except subprocess.TimeoutExpired:
        entry.update(status="stopped by the time budget", seconds=time.monotonic() - t0)
    results = sorted(out_dir.rglob("results_*.json"))
    if results:
        doc = json.loads(results[-1].read_text())
        n = {k: v.get("effective") for k, v in (doc.get("n-samples") or {}).items()}
        langs = sorted(k.rsplit("-", 1)[-1] for k in doc.get("results", {}) if k.startswith("safespace-toxicity-"))
        entry.update(languages=langs, texts=sum(v or 0 for v in n.values()),
                     group=doc.get("results", {}).get("safespace_toxicity"))
        if entry.get("seconds"):
            entry["texts_per_s"] = entry["texts"] / entry["seconds"]
    shutil.rmtree(out_dir, ignore_errors=True)
    return entry


def targets(record: dict[str, Any]) -> list[dict[str, Any]]:
    """Issue 17's targets, one row each, read from the shapes' ratios."""
    rows = []
    for shape, r in record["shapes"].items():
        for key in ("a/b", "A/b", "a/c", "A/c", "mem a/b", "mem A/b", "d/b"):
            e = r["ratios"].get(key)
            if e is None or not any(t in e for t in ("target", "target_band")):
                continue
            rows.append({"shape": shape, "ratio": key, "value": e["value"],
                         "target": e.get("target", e.get("target_band")), "met": e.get("met"),
                         "within_noise": e.get("within_noise")})
    return rows


# --------------------------------------------------------------------------- output


def table_markdown(record: dict[str, Any]) -> str:
    """The README table of one result."""
    lines = [f"{record['device']} · {record['date']} · torch {record['versions'].get('torch')}, transformers "
             f"{record['versions'].get('transformers')}, lm-eval {record['versions'].get('lm_eval')} · "
             f"tokenizer {record.get('tokenizer')}", ""]
    shapes = list(record["shapes"])
    lines.append("| path | " + " | ".join(f"{s} tok/s | {s} peak GiB" for s in shapes) + " |")
    lines.append("|---|" + "---:|---:|" * len(shapes))
    import bench_hidden_states as B

    for name, what in B.PATHS.items():
        if not any(name in record["shapes"][s]["paths"] for s in shapes):
            continue
        cells = []
        for s in shapes:
            p = record["shapes"][s]["paths"].get(name)
            cells += ["—", "—"] if p is None else [f"{p['tokens_per_s']:,.0f}", f"{p['peak_bytes'] / C.GIB:.2f}"]
        lines.append(f"| {name} — {what} | " + " | ".join(cells) + " |")
    lines += ["", "| shape | ratio | measured | target | |", "|---|---|---:|---|---|"]
    for t in record.get("targets", []):
        tgt = t["target"]
        tgt = f"{tgt[0]:.2f}–{tgt[1]:.2f}" if isinstance(tgt, list) else (
            f"≤ {tgt}" if t["ratio"].startswith("mem") else f"≥ {tgt}")
        verdict = C.verdict(t["met"]) + (" (within noise)" if t.get("within_noise") else "")
        lines.append(f"| {t['shape']} | {t['ratio']} | {t['value']:.3f} | {tgt} | {verdict} |")
    e = record.get("end_to_end") or {}
    lines += ["", f"End to end (`{e.get('command', 'not run')}`): {e.get('status', 'not run')}"
              + (f", {e['seconds']:.1f} s for {e.get('texts', '?')} texts in {len(e.get('languages', []))} languages"
                 if e.get("seconds") else "")]
    if record.get("skipped"):
        lines.append("Skipped by the time budget: " + "; ".join(record["skipped"]))
    return "\n".join(lines) + "\n"


def print_summary(record: dict[str, Any]) -> None:
    print()
    print(table_markdown(record))


# --------------------------------------------------------------------------- command line


def parse_args(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["prepare"]:
        p = argparse.ArgumentParser(prog="gpu_check.py prepare", description=prepare.__doc__)
        p.add_argument("--dest", default=str(CARRY))
        p.add_argument("--tokenizer-from", default=None, help="tokenizer folder (default: SmolLM2's from the safespace cache)")
        p.add_argument("--data-dir", default=None)
        a = p.parse_args(argv[1:])
        a.command = "prepare"
        return a
    if argv[:1] == ["wheels"]:
        a = argparse.Namespace(command="wheels")
        return a
    if argv[:1] == ["table"]:
        p = argparse.ArgumentParser(prog="gpu_check.py table")
        p.add_argument("json")
        a = p.parse_args(argv[1:])
        a.command = "table"
        return a
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tiny", action="store_true", help="CPU, a tiny shape, few texts: the same code in about a minute")
    p.add_argument("--budget-s", type=float, default=None, help="time budget (default 400 on GPU, 240 with --tiny: a shared CPU can be slow); a hard stop follows 30 s later")
    p.add_argument("--n-texts", type=int, default=None, help="texts of the benchmark phases (default 2048; tiny 24)")
    p.add_argument("--batch-size", type=int, default=None, help="fixed batch of the paths, and auto's ceiling (default 64; tiny 8)")
    p.add_argument("--repeats", type=int, default=None, help="repetitions per shape at most (default 5; tiny 1)")
    p.add_argument("--chunk-batches", type=int, default=None, help="batches per interleaving chunk (default 8; tiny 2)")
    p.add_argument("--paths", default="aAbcdenh")
    p.add_argument("--e2e-limit", type=int, default=None, help="texts per language of the end-to-end run (default all; tiny 6)")
    p.add_argument("--tokenizer", default=None, help="default: .gpu/tokenizer when prepared, else as bench_hidden_states")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="default: benchmarks/results/gpu_check.json ($OUT/gpu_check.json when $OUT is set)")
    a = p.parse_args(argv)
    a.command, a.argv = "check", argv
    t = a.tiny
    a.budget_s = a.budget_s or (240.0 if t else 400.0)
    a.n_texts = a.n_texts or (24 if t else 2048)
    a.batch_size = a.batch_size or (8 if t else 64)
    a.repeats = a.repeats or (1 if t else 5)
    a.chunk_batches = a.chunk_batches or (2 if t else 8)
    a.e2e_limit = a.e2e_limit if a.e2e_limit is not None else (6 if t else None)
    a.tokenizer = a.tokenizer or default_tokenizer()
    if a.out is None:
        a.out = str(Path(os.environ["OUT"]) / "gpu_check.json") if os.environ.get("OUT") else \
            str(C.REPO / "benchmarks" / "results" / ("gpu_check_tiny.json" if t else "gpu_check.json"))
    if min(a.n_texts, a.batch_size, a.repeats, a.chunk_batches) < 1 or a.budget_s <= 0:
        p.error("--n-texts, --batch-size, --repeats, --chunk-batches and --budget-s must be positive")
    return a


def main(argv=None):
    a = parse_args(argv)
    if a.command == "prepare":
        return prepare(a)
    if a.command == "wheels":
        for name, version in missing_packages().items():
            print(f"{name}=={version}")
        return None
    if a.command == "table":
        print(table_markdown(json.loads(Path(a.json).read_text())), end="")
        return None
    return run_check(a)


if __name__ == "__main__":
    main()
