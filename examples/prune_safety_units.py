"""The causal check in miniature: prune safety-critical units (SCU), as many random units, or the
redundant units (RU) of a model, and measure refusal and utility of each variant.

    python examples/prune_safety_units.py MODEL_FOLDER --out runs/prune [--n-calib 128]
        [--n-requests 100] [--max-new-tokens 64] [--n-ppl 100] [--scu 0.01] [--ru 0.10] [--seed 0]
        [--zero-ablate]

Steps (all on CPU unless --device says otherwise):
1. unit statistics of MODEL_FOLDER on the safety and utility calibration sets (the machinery of
   ``safespace units stats``: AdvBench rows 100+ with refusals, Alpaca seed tasks, response tokens,
   chat template), then the classes (``safespace units mask``);
2. variants: the unpruned model; SCUs zeroed; random units zeroed (seeded, drawn until they hold at
   least as many parameters as the SCUs); RUs zeroed. Ablation as ``safespace units prune``: by
   default mean-ablation (the units zeroed, their mean input over both calibration sets added back
   through their outgoing weights as a bias: the method's causal check); ``--zero-ablate`` zeroes
   them only;
3. per variant: greedy replies (``safespace_tasks.experiments.generate_replies``: chat template,
   ``--max-new-tokens``) to AdvBench rows 0-99 judged by
   :mod:`safespace_tasks.refusal` (refusal rate, attack success, degeneration), and perplexity on
   held-out neutral English text (the last ``--n-ppl`` non-toxic rows of
   multilingual_toxicity_dataset/en.jsonl, raw text) and on the Alpaca outputs that the unit
   statistics did not sample (response tokens after the chat-templated instruction).
Writes OUT/prune_results.json and OUT/prune_table.md.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

from safespace_tasks import units_cli
from safespace_tasks.ablation import ablate, calibration_means
from safespace_tasks.data import TOXICITY, advbench_rows, alpaca_seed_rows, load_rows, resolve_data_dir
from safespace_tasks.experiments import chat_prompt, generate_replies
from safespace_tasks.refusal import summarize_replies
from safespace_tasks.unit_masks import UnitMask, load_mask, load_unit_stats
from safespace_tasks.stats.units import CLASSES

VARIANTS = ("none", "SCU", "random", "RU")


def eval_data_root(n_requests: int, data_dir: str | None) -> Path:
    """The data mirror, after checking that only AdvBench rows 0-99 (never calibration data) are asked for."""
    if not 1 <= n_requests <= 100:
        raise SystemExit("--n-requests must lie in [1, 100]: only AdvBench rows 0-99 are never calibration data")
    root = resolve_data_dir(data_dir)
    if root is None:
        raise SystemExit("set $SAFESPACE_DATA_DIR (or --data-dir) to the data mirror")
    return root


def random_mask(mask: UnitMask, params_per_neuron: float, params_per_head: float, seed: int) -> tuple[UnitMask, dict]:
    """A mask whose "SCU" units are random units holding at least as many parameters as the SCUs of ``mask``."""
    sel_mlp, sel_attn = mask.selected(("SCU",))
    budget = sel_mlp.sum() * params_per_neuron + sel_attn.sum() * params_per_head
    n_mlp, n_attn = mask.mlp.size, mask.attn.size
    weights = np.r_[np.full(n_mlp, params_per_neuron), np.full(n_attn, params_per_head)]
    order = np.random.default_rng(seed).permutation(n_mlp + n_attn)
    take = order[: int(np.searchsorted(np.cumsum(weights[order]), budget) + 1)] if budget > 0 else order[:0]
    flat = np.full(n_mlp + n_attn, CLASSES["CU"], dtype=np.uint8)
    flat[take] = CLASSES["SCU"]
    out = UnitMask(flat[:n_mlp].reshape(mask.mlp.shape), flat[n_mlp:].reshape(mask.attn.shape), mask.metadata)
    info = {"units": int(len(take)), "params": float(weights[take].sum()), "scu_params": float(budget)}
    return out, info


def load_variant(model_path: str, variant: str, mask: UnitMask, rand: UnitMask, dtype=torch.float32,
                 means: dict | None = None, ablation: str = "mean"):
    """The model with ``variant``'s units ablated: ``mean`` (default; needs ``means``, the calibration
    means of :func:`safespace_tasks.ablation.calibration_means`) or ``zero``."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=dtype).eval()
    pruned = {"neurons": 0, "heads": 0, "kv_groups": 0}
    chosen = {"SCU": (mask, "SCU"), "random": (rand, "SCU"), "RU": (mask, "RU")}
    if variant in chosen:
        used, cls = chosen[variant]
        pruned = ablate(model, used, (cls,), means, ablation)
    elif variant != "none":
        raise SystemExit(f"unknown variant {variant!r}; choose from {', '.join(VARIANTS)}")
    return model, pruned


@torch.no_grad()
def perplexity(model, tok, pairs: list[tuple[str, str]], max_length: int = 512) -> float:
    """exp(mean NLL) over the tokens of each pair's second part, after its first part (may be '')."""
    nll, n = 0.0, 0
    for context, text in pairs:
        ctx = tok(context)["input_ids"] if context else []
        whole = tok(context + text)["input_ids"][:max_length]
        start = max(len(ctx), 1)
        if len(whole) <= start:
            continue
        logp = torch.log_softmax(model(torch.tensor([whole])).logits.double(), dim=-1)[0]
        tgt = torch.tensor(whole[start:])
        nll -= float(logp[torch.arange(start - 1, len(whole) - 1), tgt].sum())
        n += len(whole) - start
    return math.exp(nll / n) if n else float("nan")


def neutral_english(root: Path, n: int) -> list[str]:
    """The last ``n`` non-toxic, non-empty texts of the English toxicity set, in file order."""
    texts = [r["text"] for r in load_rows(TOXICITY.hub_id, "en", root) if r["toxic"] == 0 and r["text"].strip()]
    return texts[-n:]


def heldout_alpaca(tok, root: Path, n_calib: int, seed: int) -> list[tuple[str, str]]:
    rows = alpaca_seed_rows(root)
    used = {r["id"] for r in units_cli.sample_rows(rows, n_calib, seed)}  # the rows `units stats` sampled
    out = []
    for r in rows:
        if r["id"] in used:
            continue
        request = r["instruction"] + (f"\n\n{r['input']}" if r["input"] else "")
        out.append((chat_prompt(tok, request), r["output"].strip()))
    return out


def table(results: dict) -> str:
    head = ("| variant | units pruned (neurons / heads) | refusal | refusal (cue judge) | attack success "
            "| coherent attack success | degenerate | ppl neutral en | ppl Alpaca held-out |")
    lines = [f"{results.get('ablation', 'zero')}-ablation", "", head, "|" + "---|" * 9]
    for name, r in results["variants"].items():
        j = r["judge"]
        cue = f"{j['refusal_rate_cue']:.0%}" if "refusal_rate_cue" in j else "–"
        lines.append(f"| {name} | {r['pruned']['neurons']} / {r['pruned']['heads']} | {j['refusal_rate']:.0%} | {cue} "
                     f"| {j['attack_success_rate']:.0%} | {j['coherent_attack_success_rate']:.0%} "
                     f"| {j['degeneration_rate']:.0%} | {r['ppl_neutral_en']:.1f} | {r['ppl_alpaca_heldout']:.1f} |")
    return "\n".join(lines) + "\n"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("model", help="a model folder (decoder-only, with a tokenizer)")
    p.add_argument("--out", required=True)
    p.add_argument("--n-calib", type=int, default=128, help="samples per calibration set (default 128)")
    p.add_argument("--n-requests", type=int, default=100, help="AdvBench rows 0..N-1 to reply to (at most 100)")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--n-ppl", type=int, default=100, help="neutral English texts for perplexity")
    p.add_argument("--scu", type=float, default=0.01)
    p.add_argument("--ru", type=float, default=0.10)
    p.add_argument("--ucu", type=float, default=0.10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--data-dir", default=None)
    p.add_argument("--zero-ablate", dest="zero_ablate", action="store_true",
                   help="zero the units only (default: mean-ablation, their calibration mean added back as a bias)")
    return p.parse_args(argv)


def main(argv=None) -> dict:
    from transformers import AutoTokenizer

    args = parse_args(argv)
    root = eval_data_root(args.n_requests, args.data_dir)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    common = ["--data-dir", str(root)]
    if units_cli.main(["stats", "--model", args.model, "--out", str(out), "--n", str(args.n_calib),
                       "--seed", str(args.seed), *common]) != 0:
        raise SystemExit("unit statistics failed (see above)")
    if units_cli.main(["mask", "--stats", str(out / "unit_stats.safetensors"), "--out", str(out / "mask.safetensors"),
                       "--scu", str(args.scu), "--ru", str(args.ru), "--ucu", str(args.ucu)]) != 0:
        raise SystemExit("classification failed (see above)")
    t_units = time.perf_counter() - t0
    mask = load_mask(out / "mask.safetensors")
    _, layout, _ = load_unit_stats(out / "unit_stats.safetensors")
    rand, rand_info = random_mask(mask, layout.params_per_neuron, layout.params_per_head, args.seed)
    ablation = "zero" if args.zero_ablate else "mean"
    means = calibration_means(out / "unit_stats.safetensors") if ablation == "mean" else None
    tok = AutoTokenizer.from_pretrained(args.model)
    requests = [r["goal"] for r in advbench_rows(root)[: args.n_requests]]
    neutral = [("", t) for t in neutral_english(root, args.n_ppl)]
    alpaca = heldout_alpaca(tok, root, args.n_calib, args.seed)
    results = {"model": args.model, "settings": vars(args), "ablation": ablation, "random_units": rand_info,
               "mask_counts": mask.counts(), "seconds_units": round(t_units, 1),
               "data": {"advbench": f"rows 0-{args.n_requests - 1}", "neutral_en": f"last {len(neutral)} non-toxic rows "
                        "of multilingual_toxicity_dataset/en.jsonl", "alpaca_heldout": f"{len(alpaca)} tasks not sampled "
                        "by the unit statistics"},
               "variants": {}}
    for variant in [v.strip() for v in args.variants.split(",") if v.strip()]:
        t = time.perf_counter()
        model, pruned = load_variant(args.model, variant, mask, rand, means=means, ablation=ablation)
        replies = generate_replies(model, tok, requests, new_tokens=args.max_new_tokens, batch_size=args.batch_size)
        results["variants"][variant] = {
            "pruned": pruned, "judge": summarize_replies(replies),
            "ppl_neutral_en": perplexity(model, tok, neutral), "ppl_alpaca_heldout": perplexity(model, tok, alpaca),
            "replies": replies, "seconds": round(time.perf_counter() - t, 1),
        }
        print(f"{variant}: {json.dumps({k: v for k, v in results['variants'][variant].items() if k != 'replies'})}",
              flush=True)
        (out / "prune_results.json").write_text(json.dumps(results, indent=1))
    results["seconds_total"] = round(time.perf_counter() - t0, 1)
    (out / "prune_results.json").write_text(json.dumps(results, indent=1))
    (out / "prune_table.md").write_text(table(results))
    print(table(results))
    return results


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main(sys.argv[1:])
