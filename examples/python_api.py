"""Run the safespace toxicity family through lm-eval's Python API and read the numbers back.

    python examples/python_api.py --model-path "$(safespace model-path)" --data-dir ../shared/data --limit 100

Any Hugging Face causal LM works as --model-path (a local folder or a Hub id).
"""

from __future__ import annotations

import argparse

import lm_eval
import numpy as np

from safespace_tasks import task_manager
from safespace_tasks.states import find_states, load_states


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model-path", required=True)
    ap.add_argument("--data-dir", default=None, help="local mirror root (else $SAFESPACE_DATA_DIR, else the Hub)")
    ap.add_argument("--languages", default="en,de,hi,am")
    ap.add_argument("--limit", type=int, default=100)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--states-dir", default="states/")
    args = ap.parse_args()

    meta = {"save_states_dir": args.states_dir}
    if args.data_dir:
        meta["data_dir"] = args.data_dir
    tasks = [f"safespace-toxicity-{lang}" for lang in args.languages.split(",")]
    out = lm_eval.simple_evaluate(
        model="hf",
        model_args=f"pretrained={args.model_path}",
        tasks=tasks,
        limit=args.limit,
        device=args.device,
        batch_size="auto",
        task_manager=task_manager(metadata=meta),
        metadata=meta,
    )

    print(f"{'lang':<5} {'BCV ratio %':>12} {'Bhattacharyya':>14} {'silhouette':>11} {'probe AUROC':>12}")
    for task in tasks:
        r = out["results"][task]
        print(
            f"{r['alias']:<5} {100 * r['bcv_ratio,none']:>8.2f} ±{100 * r['bcv_ratio_stderr,none']:<4.2f}"
            f"{r['bhattacharyya,none']:>13.3f} {r['silhouette,none']:>11.3f} {r['probe_auroc,none']:>12.3f}"
        )

    # The pooled states were saved: recompute anything without the model.
    for task, path in find_states(args.states_dir).items():
        b = load_states(path)
        X = b.layer(-1)
        gap = np.linalg.norm(X[b.labels == 1].mean(0) - X[b.labels == 0].mean(0))
        print(f"{task}: {X.shape[0]} texts x {X.shape[1]} dims, class-mean distance {gap:.3f}, file {path}")


if __name__ == "__main__":
    main()
