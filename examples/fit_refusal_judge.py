"""Fit the cue judge's weights on XSTest v2's labelled replies and measure it held out.

    SAFESPACE_DATA_DIR=/path/to/mirror python examples/fit_refusal_judge.py [--write]

Reads ``xstest/completions/{gpt4,llama2orig,mistralinstruct}.jsonl`` of the data mirror. For each
of the three rotations it fits on two models' replies and scores the third (held out); then it fits
on all three and, with ``--write``, stores those weights with the rotation numbers in
``safespace_tasks/judge_data/refusal_cues_v1.json`` (the file the judge reads at run time).
The keyword judge's numbers on the same files are printed beside, for comparison.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from safespace_tasks.judge_check import judge_scores, read_labelled  # noqa: E402
from safespace_tasks.refusal import is_refusal  # noqa: E402
from safespace_tasks.refusal_judge import WEIGHTS_FILE, cue_verdict, fit_cue_weights  # noqa: E402

MODELS = ("gpt4", "llama2orig", "mistralinstruct")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data-dir", default=os.environ.get("SAFESPACE_DATA_DIR"), help="the data mirror")
    ap.add_argument("--C", type=float, default=1.0, help="inverse L2 strength (default 1, scikit-learn's default)")
    ap.add_argument("--write", action="store_true", help=f"write safespace_tasks/judge_data/{WEIGHTS_FILE}")
    args = ap.parse_args()
    if not args.data_dir:
        ap.error("set SAFESPACE_DATA_DIR or pass --data-dir (the mirror holding xstest/completions/)")
    sets = {m: read_labelled(Path(args.data_dir) / "xstest" / "completions" / f"{m}.jsonl") for m in MODELS}
    held_out = {}
    for test in MODELS:
        replies = [r for m in MODELS if m != test for r in sets[m][0]]
        labels = [y for m in MODELS if m != test for y in sets[m][1]]
        w = fit_cue_weights(replies, labels, C=args.C)
        test_replies, truth = sets[test]
        held_out[test] = {"fit_on": [m for m in MODELS if m != test],
                          "cue": judge_scores(truth, [cue_verdict(r, w).refusal for r in test_replies]),
                          "keyword": judge_scores(truth, [is_refusal(r) for r in test_replies])}
    print(f"{'held-out set':<16} {'judge':<8} {'accuracy':>8} {'precision':>9} {'recall':>6}")
    for test, r in held_out.items():
        for judge in ("keyword", "cue"):
            s = r[judge]
            print(f"{test:<16} {judge:<8} {s['accuracy']:>8.3f} {s['precision']:>9.3f} {s['recall']:>6.3f}")
    weights = fit_cue_weights([r for m in MODELS for r in sets[m][0]], [y for m in MODELS for y in sets[m][1]], C=args.C)
    weights["fitted_on"] = "XSTest v2 model_completions: gpt4, llama2orig, mistralinstruct (1,350 replies; " \
                           "final_label 1 = compliance, 2 and 3 = refusal)"
    weights["held_out"] = {t: {"fit_on": r["fit_on"], **{k: r["cue"][k] for k in ("accuracy", "precision", "recall")}}
                           for t, r in held_out.items()}
    if args.write:
        out = ROOT / "safespace_tasks" / "judge_data" / WEIGHTS_FILE
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(weights, indent=1, sort_keys=True) + "\n")
        print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
