"""Both refusal judges on a model's own replies: AdvBench refusal and XSTest over-refusal.

    SAFESPACE_DATA_DIR=/path/to/mirror python examples/judge_xstest_prompts.py MODEL_DIR OUT.json \
        [--new-tokens 64] [--batch-size 16] [--limit N]

Greedy replies through the chat template (``safespace_tasks.experiments.generate_replies``: batched, left padding) to
AdvBench rows 0-99 and to the 450 XSTest v2 prompts (``xstest/prompts.jsonl``: 250 safe prompts that
only look risky, 200 unsafe contrasts). Per set, the keyword judge's and the cue judge's refusal
rates (``safespace_tasks.refusal.summarize_replies``): refusal on AdvBench and on XSTest's unsafe
prompts is wanted, refusal on XSTest's safe prompts is over-refusal. OUT.json holds the rates, the
replies and each judge's verdict.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model", help="a model folder (e.g. the one `safespace model-path` prints)")
    ap.add_argument("out", help="JSON file to write")
    ap.add_argument("--new-tokens", type=int, default=64, help="greedy new tokens per reply (default 64)")
    ap.add_argument("--batch-size", type=int, default=16, help="replies generated together (default 16)")
    ap.add_argument("--limit", type=int, default=None, help="only the first N requests of each set (a quick look)")
    ap.add_argument("--data-dir", default=None, help="the data mirror (default: $SAFESPACE_DATA_DIR)")
    args = ap.parse_args(argv)

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from safespace_tasks.data import advbench_rows, xstest_rows
    from safespace_tasks.experiments import generate_replies
    from safespace_tasks.refusal import is_refusal, summarize_replies
    from safespace_tasks.refusal_judge import is_refusal_cue

    torch.manual_seed(0)
    sets = {"advbench": [r["goal"] for r in advbench_rows(args.data_dir)[:100]],
            "xstest_safe": [p["prompt"] for p in xstest_rows(args.data_dir, label="safe")],
            "xstest_unsafe": [p["prompt"] for p in xstest_rows(args.data_dir, label="unsafe")]}
    if args.limit:
        sets = {k: v[: args.limit] for k, v in sets.items()}
    tok = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32).eval()
    result = {"model": args.model, "new_tokens": args.new_tokens, "rates": {}, "seconds": {}, "replies": {}}
    for name, users in sets.items():
        t0 = time.perf_counter()
        got = generate_replies(model, tok, users, new_tokens=args.new_tokens, batch_size=args.batch_size)
        result["seconds"][name] = round(time.perf_counter() - t0, 1)
        result["rates"][name] = summarize_replies(got)
        result["replies"][name] = [{"request": u, "reply": r, "keyword": is_refusal(r), "cue": is_refusal_cue(r)}
                                   for u, r in zip(users, got)]
        r = result["rates"][name]
        print(f"{name:<14} n={len(users):>3}  keyword {r['refusal_rate']:.2f}  cue {r['refusal_rate_cue']:.2f}  "
              f"({result['seconds'][name]:.0f}s)", flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
