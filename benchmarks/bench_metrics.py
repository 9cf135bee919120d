"""Speed of the metrics stage: ``separation_metrics`` (PCA-k, variance ratio, Bhattacharyya,
silhouette, cross-validated probe, stratified bootstrap of all four) on n x d states.

The states are synthetic but shaped like pooled hidden states: float32, a low-rank structure, a
class signal in a few directions, and a few dimensions with a large offset. The main point is
n x d = 45,000 x 4,096 (target: under 10 s); a sweep over n (at fixed d) and over d (at fixed n)
gives each stage's growth exponent (time ~ n^a, ~ d^b, fitted on the log-log points).

    python benchmarks/bench_metrics.py --out metrics.json
    python benchmarks/bench_metrics.py --n 2000 --d 256 --sweep-n 500,1000 --sweep-d 64,128 --n-boot 50 --out ci.json

``--protocol`` measures instead the metrics stage of the paper's full protocol -- 9 languages x
5,000 texts x 4,096 dims (``separation_metrics`` per language) plus 9 x 800 pair states
(``separation_metrics`` with pair groups and ``paired_shift``) -- and, with ``--compare-old
PATH``, the same stage of the package at PATH (the code before a change, in a subprocess), side
by side, with the time of each part (PCA, permutations, bootstrap, probe, probe refits):

    python benchmarks/bench_metrics.py --protocol --compare-old /work/main --threads 1 --out protocol.json
    python benchmarks/bench_metrics.py --protocol --languages 3 --n 2000 --d 1024 --pair-n 400 ...  (scaled)
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402  (adds the checkout to sys.path)
import os  # noqa: E402

if os.environ.get("SAFESPACE_BENCH_CHECKOUT"):  # --compare-old: import the other checkout's package
    sys.path.insert(0, os.environ["SAFESPACE_BENCH_CHECKOUT"])

import numpy as np  # noqa: E402

TARGET_SECONDS = 10.0
TARGET_SHAPE = (45_000, 4_096)
STAGES = ("validate", "pca", "bcv_bhattacharyya", "silhouette", "probe", "bootstrap", "bootstrap_silhouette")


def synthetic_states(n: int, d: int, seed: int, rank: int = 64, block: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """float32 states (n x d) and balanced labels: X = F A + noise + offset, with the class shifting
    F along three latent directions, and four dimensions offset far from zero (as the massive
    activations of real hidden states)."""
    rng = np.random.default_rng(seed)
    y = rng.permutation(np.arange(n) % 2)
    A = (rng.standard_normal((rank, d)) * (3.0 / np.sqrt(rank))).astype(np.float32)
    offset = rng.standard_normal(d).astype(np.float32)
    offset[rng.choice(d, size=min(4, d), replace=False)] = 60.0
    shift = np.zeros(rank, dtype=np.float32)
    shift[:3] = (0.8, 0.5, 0.3)
    X = np.empty((n, d), dtype=np.float32)
    for start in range(0, n, block):
        rows = slice(start, min(n, start + block))
        F = rng.standard_normal((rows.stop - start, rank), dtype=np.float32) + y[rows, None] * shift
        X[rows] = F @ A + rng.standard_normal((rows.stop - start, d), dtype=np.float32) + offset
    return X, y


def run_once(n: int, d: int, *, n_boot: int, seed: int) -> dict[str, Any]:
    from safespace_tasks.stats.separation import separation_metrics

    X, y = synthetic_states(n, d, seed)
    with C.Stopwatch() as sw:
        res = separation_metrics(X, y, k=10, n_boot=n_boot, seed=seed)
    del X
    stages = res.diagnostics.get("seconds", {})
    return {
        "n": n, "d": d, "n_boot": n_boot,
        "seconds": sw.wall, "cpu_seconds": sw.cpu,
        "stages": {s: stages[s] for s in STAGES if s in stages},
        "silhouette_sample": res.diagnostics.get("silhouette_sample"),
        "probe_not_converged": res.diagnostics.get("probe_not_converged"),
        "values": {k: round(v, 6) for k, v in res.values.items()},
    }


PROTOCOL_PARTS = {
    "pca": ("pca",),
    "permutations": ("permutations", "permutations_silhouette", "probe_permutations"),
    "bootstrap": ("bootstrap", "bootstrap_silhouette"),
    "probe": ("probe",),
    "probe_refit": ("probe_refit",),
    "other": ("validate", "distinct_states", "bcv_bhattacharyya", "silhouette"),
}


def run_protocol(languages: int, n: int, d: int, pair_n: int, *, n_boot: int, seed: int) -> dict[str, Any]:
    """Metrics stage of the full protocol on synthetic states: per language one toxicity set
    (n x d) and one pair set (pair_n texts = pair_n / 2 pairs, grouped), as the harness runs them."""
    import inspect

    from safespace_tasks.stats.pairs import paired_shift
    from safespace_tasks.stats.separation import separation_metrics

    parts = {p: 0.0 for p in PROTOCOL_PARTS}
    total = 0.0
    per_language = []
    for lang in range(languages):
        X, y = synthetic_states(n, d, seed + lang)
        with C.Stopwatch() as sw:
            res = separation_metrics(X, y, k=10, n_boot=n_boot, seed=seed)
        stages = res.diagnostics.get("seconds", {})
        del X
        Xp, _ = synthetic_states(pair_n, d, seed + 100 + lang)
        yp = np.tile([1, 0], pair_n // 2)
        gp = np.repeat(np.arange(pair_n // 2), 2)
        with C.Stopwatch() as swp:
            resp = separation_metrics(Xp, yp, k=10, n_boot=n_boot, seed=seed, groups=gp)
            paired_shift(Xp, yp, gp, n_boot=n_boot, seed=seed)
        for st, sec in resp.diagnostics.get("seconds", {}).items():
            stages[st] = stages.get(st, 0.0) + sec
        for part, names in PROTOCOL_PARTS.items():
            parts[part] += sum(stages.get(nm, 0.0) for nm in names)
        total += sw.wall + swp.wall
        per_language.append({"toxicity_s": round(sw.wall, 3), "pairs_s": round(swp.wall, 3)})
        print(f"  language {lang + 1}/{languages}: {sw.wall:.2f} s + pairs {swp.wall:.2f} s", file=sys.stderr, flush=True)
    params = list(inspect.signature(separation_metrics).parameters)
    return {"languages": languages, "n": n, "d": d, "pair_n": pair_n, "n_boot": n_boot, "seconds": round(total, 3),
            "parts": {k: round(v, 3) for k, v in parts.items()}, "per_language": per_language,
            "separation_metrics_parameters": params}


def protocol_main(args: argparse.Namespace) -> dict[str, Any]:
    import json
    import os
    import subprocess

    from threadpoolctl import threadpool_limits

    import scipy.optimize  # noqa: F401
    import sklearn.decomposition  # noqa: F401

    limit = threadpool_limits(args.threads) if args.threads else None
    new = run_protocol(args.languages, args.n, args.d, args.pair_n, n_boot=args.n_boot, seed=args.seed)
    if limit is not None:
        limit.restore_original_limits()
    if args.protocol_json_only:
        print(json.dumps(new))
        return new
    record: dict[str, Any] = {"benchmark": "metrics_protocol", **C.machine_record(),
                              "versions": C.versions("numpy", "scipy", "sklearn"),
                              "command": "python benchmarks/bench_metrics.py " + " ".join(sys.argv[1:]),
                              "full_protocol_shape": (args.languages, args.n, args.d, args.pair_n) == (9, 5000, 4096, 800),
                              "new": new}
    if args.compare_old:
        cmd = [sys.executable, str(Path(__file__).resolve()), "--protocol", "--protocol-json-only",
               "--languages", str(args.languages), "--n", str(args.n), "--d", str(args.d), "--pair-n", str(args.pair_n),
               "--n-boot", str(args.n_boot), "--seed", str(args.seed)] + (["--threads", str(args.threads)] if args.threads else [])
        env = dict(os.environ, PYTHONPATH=args.compare_old, SAFESPACE_BENCH_CHECKOUT=args.compare_old)
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
        record["old"] = json.loads(proc.stdout.strip().splitlines()[-1])
        record["ratio_new_over_old"] = round(new["seconds"] / record["old"]["seconds"], 3)
    C.write_json(args.out, record)
    print(f"{'part':<14} {'new (s)':>9} {'old (s)':>9}")
    for part in PROTOCOL_PARTS:
        old = record.get("old", {}).get("parts", {}).get(part)
        old_s = "" if old is None else f"{old:9.2f}"
        print(f"{part:<14} {new['parts'][part]:>9.2f} {old_s}")
    old_total = "" if "old" not in record else f"{record['old']['seconds']:9.2f}"
    print(f"{'total':<14} {new['seconds']:>9.2f} {old_total}")
    if "ratio_new_over_old" in record:
        print(f"new / old: {record['ratio_new_over_old']:.2f}x (aim <= 1.5x)")
    print(f"wrote {args.out}")
    return record


def growth_exponent(points: list[dict[str, Any]], var: str, key: str) -> float | None:
    """Slope of log(time) on log(var): time ~ var^slope."""
    xs, ts = [], []
    for p in points:
        t = p["seconds"] if key == "total" else p["stages"].get(key)
        if t is not None and t > 0:
            xs.append(np.log(p[var]))
            ts.append(np.log(t))
    if len(xs) < 2 or np.ptp(xs) == 0:
        return None
    return float(np.polyfit(xs, ts, 1)[0])


def parse_ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def main(argv=None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=TARGET_SHAPE[0], help="texts of the main point")
    p.add_argument("--d", type=int, default=TARGET_SHAPE[1], help="dimension of the main point")
    p.add_argument("--n-boot", type=int, default=200, help="bootstrap replicates (the task default)")
    p.add_argument("--sweep-n", default="2500,5000,10000,20000",
                   help="n values of the sweep (at --sweep-at-d); empty for none")
    p.add_argument("--sweep-at-d", type=int, default=1024)
    p.add_argument("--sweep-d", default="256,512,1024,2048,4096",
                   help="d values of the sweep (at --sweep-at-n); empty for none")
    p.add_argument("--sweep-at-n", type=int, default=5000)
    p.add_argument("--threads", type=int, default=None, help="BLAS threads (default: the library's choice)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="bench_metrics.json")
    p.add_argument("--protocol", action="store_true", help="measure the full protocol's metrics stage instead")
    p.add_argument("--languages", type=int, default=9)
    p.add_argument("--pair-n", type=int, default=800, help="pair states per language (--protocol)")
    p.add_argument("--compare-old", default=None, help="checkout with the old package, measured side by side")
    p.add_argument("--protocol-json-only", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.protocol:
        if args.n == TARGET_SHAPE[0]:
            args.n = 5000
        return protocol_main(args)

    from threadpoolctl import threadpool_info, threadpool_limits

    # load every BLAS the stage uses (numpy's, scipy's) before limiting their threads
    import scipy.optimize  # noqa: F401
    import sklearn.decomposition  # noqa: F401

    import safespace_tasks.stats.separation  # noqa: F401

    limit = threadpool_limits(args.threads) if args.threads else None
    load_start = C.load_average()
    main_point = run_once(args.n, args.d, n_boot=args.n_boot, seed=args.seed)
    print(f"main point {args.n} x {args.d}: {main_point['seconds']:.2f} s wall, {main_point['cpu_seconds']:.2f} s CPU",
          flush=True)
    sweep_n = []
    for n in parse_ints(args.sweep_n):
        sweep_n.append(run_once(n, args.sweep_at_d, n_boot=args.n_boot, seed=args.seed))
        print(f"  n sweep {n} x {args.sweep_at_d}: {sweep_n[-1]['seconds']:.2f} s", flush=True)
    sweep_d = []
    for d in parse_ints(args.sweep_d):
        sweep_d.append(run_once(args.sweep_at_n, d, n_boot=args.n_boot, seed=args.seed))
        print(f"  d sweep {args.sweep_at_n} x {d}: {sweep_d[-1]['seconds']:.2f} s", flush=True)
    load_end = C.load_average()
    blas = [{k: i.get(k) for k in ("internal_api", "num_threads", "version")} for i in threadpool_info()]
    if limit is not None:
        limit.restore_original_limits()

    exponents = {
        key: {"n": growth_exponent(sweep_n, "n", key), "d": growth_exponent(sweep_d, "d", key)}
        for key in ("total", *STAGES)
    }
    is_target = (args.n, args.d) == TARGET_SHAPE and args.n_boot == 200
    record = {
        "benchmark": "metrics",
        **C.machine_record(),
        "versions": C.versions("numpy", "scipy", "sklearn"),
        "command": "python benchmarks/bench_metrics.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "blas": blas,
        "load_average": {"start": load_start, "end": load_end},
        "cpu_share": main_point["cpu_seconds"] / main_point["seconds"] / max(1, blas[0]["num_threads"] or 1)
        if blas else None,
        "main": main_point,
        "target": {"seconds": TARGET_SECONDS, "shape": list(TARGET_SHAPE), "applies": is_target,
                   "met": main_point["seconds"] <= TARGET_SECONDS if is_target else None},
        "sweep_n": {"d": args.sweep_at_d, "points": sweep_n},
        "sweep_d": {"n": args.sweep_at_n, "points": sweep_d},
        "growth_exponents": exponents,
    }
    C.write_json(args.out, record)
    print_report(record)
    print(f"wrote {args.out}")
    return record


def print_report(r: dict[str, Any]) -> None:
    m = r["main"]
    print(f"\n{r['host_cpu']} | BLAS threads {[b['num_threads'] for b in r['blas']]} | load "
          f"{r['load_average']['start']} -> {r['load_average']['end']}")
    print(f"{'stage':<22} {m['n']} x {m['d']} (s)   growth: n^a  d^b")
    for key in ("total", *STAGES):
        t = m["seconds"] if key == "total" else m["stages"].get(key)
        if t is None:
            continue
        e = r["growth_exponents"][key]
        fmt = lambda v: "  -  " if v is None else f"{v:5.2f}"  # noqa: E731
        print(f"{key:<22} {t:>12.2f}          {fmt(e['n'])}  {fmt(e['d'])}")
    print(f"CPU seconds {m['cpu_seconds']:.2f}; silhouette on "
          f"{'all texts' if m['silhouette_sample'] is None else str(m['silhouette_sample']) + ' sampled texts'}")
    t = r["target"]
    if t["applies"]:
        print(f"target: {t['shape'][0]} x {t['shape'][1]} in <= {t['seconds']:.0f} s wall: {C.verdict(t['met'])}")


if __name__ == "__main__":
    main()
