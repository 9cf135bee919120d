"""Calibration of the shared-utility overlap null (safespace_tasks.stats.unit_nulls) on synthetic statistics.

No model: per-request token activations are drawn per channel, dealt into groups as the units
family deals them, and two sets ``a`` / ``b`` are compared against one utility set (the same
utility scores for both, as in the family). Scenarios:

  null      a and b from one distribution (with a per-request content both share: translations)
  shared    the same, and both vary 3x more on the same 10 planted units
  specific  a varies 3x more on its own 10 units, b on 10 others

For each scenario and each kind of null (``paired``: groups swapped pairwise, every swap
enumerated; ``unpaired``: groups pooled and re-split at random, b's requests then have their own
content) the share of p-values at or below 0.05 and 0.5, their mean, the observed Jaccard, the
null's mean and the uniform random-set expectation.

    python benchmarks/bench_unit_nulls.py --reps 200 --out benchmarks/results/unit_nulls.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from safespace_tasks.stats.unit_nulls import overlap_null  # noqa: E402
from safespace_tasks.stats.units import ClassSettings, RunningStats, UnitLayout, UnitStatistics, merge_all, unit_scores  # noqa: E402


def make_layout(n_layers: int, n_neurons: int, n_heads: int, head_dim: int) -> UnitLayout:
    rng = np.random.default_rng(0)
    return UnitLayout(n_layers, n_neurons, n_heads, head_dim, rng.uniform(0.5, 2, (n_layers, n_neurons)),
                      rng.uniform(0.5, 2, (n_layers, n_heads * head_dim)), 3.0, 40.0)


def scenario(rng, layout: UnitLayout, kind: str, n_req: int, groups: int, paired: bool):
    shapes = {"mlp": (layout.n_layers, layout.n_neurons), "attn": (layout.n_layers, layout.n_heads * layout.head_dim)}

    def request(scale, content, n_tokens):
        return UnitStatistics({s: RunningStats.of(content[s][None] + rng.normal(size=(n_tokens,) + shp) * scale[s][None])
                               for s, shp in shapes.items()})

    def contents():
        return [{s: rng.normal(size=shp) * 0.5 for s, shp in shapes.items()} for _ in range(n_req)]

    base = {s: rng.lognormal(0, 0.3, shp) for s, shp in shapes.items()}
    util = {s: base[s] * rng.lognormal(0, 0.3, shp) for s, shp in shapes.items()}
    sa, sb = ({s: v.copy() for s, v in base.items()} for _ in range(2))
    if kind == "shared":
        sa["mlp"][0, :10] *= 3
        sb["mlp"][0, :10] *= 3
    elif kind == "specific":
        sa["mlp"][0, :10] *= 3
        sb["mlp"][0, 10:20] *= 3
    ca = contents()
    cb = ca if paired else contents()
    tokens = rng.integers(3, 12, n_req)
    a = [request(sa, ca[r], tokens[r]) for r in range(n_req)]
    b = [request(sb, cb[r], tokens[r]) for r in range(n_req)]
    u = merge_all([request(util, c, 8) for c in contents()])
    return [merge_all(a[g::groups]) for g in range(groups)], [merge_all(b[g::groups]) for g in range(groups)], u


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reps", type=int, default=200)
    ap.add_argument("--planted-reps", type=int, default=100)
    ap.add_argument("--neurons", type=int, default=300)
    ap.add_argument("--requests", type=int, default=32)
    ap.add_argument("--groups", type=int, default=8)
    ap.add_argument("--perms", type=int, default=128)
    ap.add_argument("--scu", type=float, default=0.1)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    layout = make_layout(2, args.neurons, 4, 8)
    cs = ClassSettings(ru=0.1, scu=args.scu, ucu=0.1)
    out = {"settings": vars(args), "n_units": layout.n_units, "rows": []}
    for kind, reps in (("null", args.reps), ("shared", args.planted_reps), ("specific", args.planted_reps)):
        for paired in (True, False):
            t0 = time.perf_counter()
            p, j, jn, jr = [], [], [], []
            for rep in range(reps):
                rng = np.random.default_rng(10_000 * (kind == "shared") + 20_000 * (kind == "specific") + rep)
                ga, gb, u = scenario(rng, layout, kind, args.requests, args.groups, paired)
                r = overlap_null(ga, gb, unit_scores(u, layout), layout, cs, n_perm=args.perms, seed=rep, paired=paired)
                p.append(r["p"]), j.append(r["jaccard"]), jn.append(r["null"]), jr.append(r["expected_random"])
            p = np.array(p)
            row = {"scenario": kind, "null": "paired" if paired else "unpaired", "reps": reps,
                   "share_p_le_0.05": float(np.mean(p <= 0.05)), "share_p_le_0.5": float(np.mean(p <= 0.5)),
                   "mean_p": float(p.mean()), "jaccard": float(np.mean(j)), "jaccard_null": float(np.mean(jn)),
                   "jaccard_random": float(np.mean(jr)), "seconds": round(time.perf_counter() - t0, 1)}
            out["rows"].append(row)
            print(json.dumps(row), flush=True)
    lines = ["| scenario | null | reps | p ≤ 0.05 | p ≤ 0.5 | mean p | Jaccard | null mean | uniform random |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in out["rows"]:
        lines.append(f"| {r['scenario']} | {r['null']} | {r['reps']} | {r['share_p_le_0.05']:.3f} | {r['share_p_le_0.5']:.3f} "
                     f"| {r['mean_p']:.3f} | {r['jaccard']:.3f} | {r['jaccard_null']:.3f} | {r['jaccard_random']:.3f} |")
    print("\n".join(lines))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    main()
