"""Cost of unit statistics against a plain forward pass, and their memory against the token count.

One process, one random-weight Llama of a named shape (built from a config, nothing downloaded),
fixed random token batches. Paths over the same padded batches:

  F  plain forward: ``model(input_ids, attention_mask)`` (decoder stack, final norm and LM head)
  D  the decoder stack alone, no hooks (the floor of any capture)
  S  unit statistics: ``capture_unit_stats`` on the inputs of every block's ``mlp.down_proj`` and
     ``self_attn.o_proj`` (float64 count/mean/M2 per row), merged into one running total per batch

Repetitions are interleaved (F D S, then D S F, ...); each ratio is the median of the ratios
measured within one repetition. Memory: S over ``n`` batches and over the same ``n`` batches four
times (``4n``: four times the tokens, the same batch shapes); the peak
resident memory S adds, and the size of the merged statistics, must not grow with the tokens.

    python benchmarks/bench_units.py --shape small --batches 6 --repeats 3 --out benchmarks/results/cpu_units.json
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import GIB, MIB, Stopwatch, host_peak_memory, load_average, machine_record, median, verdict, versions, write_json  # noqa: E402

SHAPES = {
    "tiny": dict(hidden_size=64, intermediate_size=192, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, vocab_size=1000),
    "small": dict(hidden_size=384, intermediate_size=1024, num_hidden_layers=6, num_attention_heads=6, num_key_value_heads=2, vocab_size=8000),
    "smollm2": dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3, vocab_size=49152),
}


def _fix_malloc_thresholds() -> str:
    """Pin glibc's mmap threshold (128 KiB) so that freed activations go back to the OS.

    By default glibc raises the threshold after each large free, so later activations of the same
    size come from the heap and the resident size keeps what they freed: the peak then grows with
    the number of batches although the live memory does not. Pinned, the peak reads live memory."""
    import ctypes

    try:
        libc = ctypes.CDLL("libc.so.6")
        ok = libc.mallopt(-3, 128 * 1024) == 1 and libc.mallopt(-1, 128 * 1024) == 1  # M_MMAP_THRESHOLD, M_TRIM_THRESHOLD
        return "glibc mmap/trim thresholds pinned at 128 KiB" if ok else "mallopt refused; allocator defaults"
    except (OSError, AttributeError):
        return "not glibc; allocator defaults"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shape", choices=sorted(SHAPES), default="small")
    ap.add_argument("--batches", type=int, default=6)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--length", type=int, default=96, help="longest text; lengths vary down to half of it")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "1")))
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)

    import numpy as np
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from safespace_tasks.capture import capture_unit_stats, find_decoder_parts, pad_batch
    from safespace_tasks.stats.units import UnitStatistics, merge_all

    torch.set_num_threads(args.threads)
    allocator = _fix_malloc_thresholds()
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**SHAPES[args.shape], max_position_embeddings=max(256, args.length))).eval()
    parts = find_decoder_parts(model)
    rng = np.random.default_rng(0)
    vocab = SHAPES[args.shape]["vocab_size"]

    def make_batches(n):
        out = []
        for _ in range(n):
            lens = rng.integers(args.length // 2, args.length + 1, size=args.batch_size)
            toks = [rng.integers(3, vocab, size=int(n_)).tolist() for n_ in lens]
            ids, mask = pad_batch(toks, 0, "left")
            select = mask.bool().clone()
            select[:, : args.length // 4] = False  # a prompt part that is not scored
            out.append((ids, mask, select & mask.bool()))
        return out

    batches = make_batches(args.batches)
    n_tokens = int(sum(int(m.sum()) for _, m, _ in batches))

    @torch.no_grad()
    def run_f(bs):
        for ids, mask, _ in bs:
            model(input_ids=ids, attention_mask=mask, use_cache=False)

    @torch.no_grad()
    def run_d(bs):
        for ids, mask, _ in bs:
            parts.base(input_ids=ids, attention_mask=mask, use_cache=False,
                       position_ids=(mask.cumsum(1) - 1).clamp(min=0))

    def run_s(bs) -> UnitStatistics:
        total = None
        for ids, mask, sel in bs:
            batch = merge_all(capture_unit_stats(model, ids, mask, sel, parts=parts))
            total = batch if total is None else total.merge(batch)
        return total

    paths = {"F": run_f, "D": run_d, "S": run_s}
    run_s(batches[:1]), run_f(batches[:1])  # warm-up
    times = {k: [] for k in paths}
    ratios = {"S/F": [], "S/D": [], "D/F": []}
    order = list(paths)
    for rep in range(args.repeats):
        rep_t = {}
        for key in order[rep % 3:] + order[: rep % 3]:
            with Stopwatch(args.threads) as sw:
                paths[key](batches)
            rep_t[key] = sw.wall
            times[key].append(sw.wall)
        ratios["S/F"].append(rep_t["S"] / rep_t["F"])
        ratios["S/D"].append(rep_t["S"] / rep_t["D"])
        ratios["D/F"].append(rep_t["D"] / rep_t["F"])

    memory = {}
    for label, n in (("n", args.batches), ("4n", 4 * args.batches)):
        bs = batches * (n // args.batches)  # the same batch shapes 4 times over: only the token count grows
        tokens = int(sum(int(m.sum()) for _, m, _ in bs))
        with host_peak_memory() as reading:
            stats = run_s(bs)
        stats_bytes = sum(st.mean.nbytes + st.m2.nbytes for st in stats.sites.values())
        memory[label] = {"batches": n, "tokens": tokens, "scored_tokens": stats.count, "peak_work_bytes": reading[0].work,
                         "method": reading[0].method, "merged_stats_bytes": stats_bytes}
        del bs
    with host_peak_memory() as reading:
        run_f(batches)
    memory["plain_forward_peak_work_bytes"] = reading[0].work
    mem_growth = memory["4n"]["peak_work_bytes"] / max(memory["n"]["peak_work_bytes"], 1)

    result = {
        "benchmark": "units", "shape": args.shape, "config": SHAPES[args.shape],
        "settings": {"batches": args.batches, "batch_size": args.batch_size, "length": args.length,
                     "repeats": args.repeats, "threads": args.threads},
        "tokens": n_tokens,
        "paths": {k: {"seconds_median": median(v), "tokens_per_s": n_tokens / median(v), "seconds": v} for k, v in times.items()},
        "ratios": {
            "S/F": {"value": median(ratios["S/F"]), "target": 1.2, "met": median(ratios["S/F"]) <= 1.2, "per_repeat": ratios["S/F"]},
            "S/D": {"value": median(ratios["S/D"]), "per_repeat": ratios["S/D"]},
            "D/F": {"value": median(ratios["D/F"]), "per_repeat": ratios["D/F"]},
            "mem 4n/n": {"value": mem_growth, "target": 1.25, "met": mem_growth <= 1.25},
        },
        "memory": memory, "allocator": allocator,
        "load_average": load_average(), "machine": machine_record(), "versions": versions("torch", "transformers", "numpy"),
    }
    print(f"shape {args.shape}: {n_tokens} tokens in {args.batches} batches of {args.batch_size}, {args.threads} thread(s)")
    for k, v in result["paths"].items():
        print(f"  {k}: {v['seconds_median']:.3f} s  ({v['tokens_per_s']:.0f} tok/s)")
    for k, v in result["ratios"].items():
        print(f"  {k}: {v['value']:.3f}" + (f"  target <= {v['target']}  {verdict(v['met'])}" if "target" in v else ""))
    print(f"  stats peak work: {memory['n']['peak_work_bytes'] / MIB:.1f} MiB over {memory['n']['tokens']} tokens, "
          f"{memory['4n']['peak_work_bytes'] / MIB:.1f} MiB over {memory['4n']['tokens']}; merged stats "
          f"{memory['n']['merged_stats_bytes'] / MIB:.2f} MiB both; plain forward {memory['plain_forward_peak_work_bytes'] / MIB:.1f} MiB")
    if args.out:
        write_json(args.out, result)
    _ = GIB
    return 0


if __name__ == "__main__":
    sys.exit(main())
