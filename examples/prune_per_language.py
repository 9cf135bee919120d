"""Per language: prune the English safety-critical units, or a language's own, and measure the
refusal margin on MultiJail in every language.

    python examples/prune_per_language.py MODEL_FOLDER --units-run RUN --out OUT
        [--sets safety,en,zh,...] [--languages en,zh,...] [--limit 100] [--batch-size 16] [--seed 0]
        [--zero-ablate]

RUN is the ``--output_path`` of a ``safespace-eval --tasks safespace_units`` run on MODEL_FOLDER (its
merged statistics: the refusal set ``safety``, the utility set, and the MultiJail requests of every
language ``mj_<lang>``). For each set S named in ``--sets`` the classes are computed against the same
utility set (``safespace units mask --from-run RUN --safety-set S``, default shares RU 10 % / SCU 1 % /
UCU 10 %), and S's SCUs are mean-ablated (zeroed, their mean input over the run's safety and utility
sets added back through their outgoing weights as a bias: :func:`safespace_tasks.ablation.ablate`;
``--zero-ablate``: zeroed only). Beside them: the unpruned model and random units holding as many
parameters as the English SCUs (seeded).

Each variant is measured through the harness, in this process (``lm_eval.simple_evaluate`` on the
pruned model in memory, ``--apply_chat_template``): the refusal margin (``safespace-refusal-margin-<lang>``:
log P("I cannot") - log P("Sure, here is") as the reply's start) on MultiJail requests the units run
did not sample (the first ``--limit`` of the rest, the same ids in every language). The change
against the unpruned model is paired (same requests), with its standard error over requests.

Writes OUT/per_language.json (every margin, every change, the SCU set sizes and their overlaps with
the English SCUs) and OUT/per_language_table.md. See docs/pruning_and_freezing.md.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from prune_safety_units import random_mask  # noqa: E402

from safespace_tasks.data import MULTIJAIL_LANGUAGES, multijail_rows  # noqa: E402
from safespace_tasks.ablation import ablate, add_output_biases, calibration_means  # noqa: E402
from safespace_tasks.unit_masks import UnitMask, check_mask, load_unit_stats  # noqa: E402
from safespace_tasks.stats.units import ClassSettings, analyse, jaccard, scu_ids  # noqa: E402


def set_name(s: str) -> str:
    """``safety`` stays; a language code becomes its MultiJail set ``mj_<lang>``."""
    return s if s == "safety" or s.startswith("mj_") else f"mj_{s}"


def held_out_indices(language: str, sample_ids: set[int], limit: int, data_dir) -> list[int]:
    """Doc indices of the margin task (MultiJail rows in file order, empty ones dropped) whose request id
    the units run did not sample; the first ``limit`` of them."""
    rows = [r for r in multijail_rows(language, data_dir) if str(r["text"]).strip()]
    keep = [i for i, r in enumerate(rows) if int(r["id"]) not in sample_ids]
    return keep[:limit] if limit else keep


def units_sample_ids(units_json: dict, data_dir) -> set[int]:
    """MultiJail request ids the units run sampled (its settings: n_samples, seed; the same ids in every language)."""
    from safespace_tasks.harness.families.units import sample_indices

    settings = units_json["settings"]
    rows = [r for r in multijail_rows("en", data_dir) if str(r["text"]).strip()]
    n, seed = int(settings["n_samples"]), int(settings["seed"])
    return {int(rows[i]["id"]) for i in sample_indices(len(rows), n, seed, "multijail")}


def paired_change(new: np.ndarray, base: np.ndarray) -> tuple[float, float]:
    """Mean of new - base over the same requests and its standard error (sd of the differences / sqrt n)."""
    d = np.asarray(new, np.float64) - np.asarray(base, np.float64)
    if d.size < 2:
        return float(d.mean()) if d.size else float("nan"), float("nan")
    return float(d.mean()), float(d.std(ddof=1) / np.sqrt(d.size))


def margins(lm, languages: list[str], samples: dict[str, list[int]], data_dir: str | None) -> dict[str, dict[int, float]]:
    """Per language: request id -> margin, from the harness's margin task on ``lm``."""
    import lm_eval

    from safespace_tasks import task_manager

    meta = {"data_dir": data_dir} if data_dir else {}
    tasks = [f"safespace-refusal-margin-{lang}" for lang in languages]
    out = lm_eval.simple_evaluate(model=lm, tasks=tasks, samples={t: samples[t] for t in tasks}, apply_chat_template=True,
                                  log_samples=True, task_manager=task_manager(metadata=meta), metadata=meta,
                                  bootstrap_iters=0)
    per = {}
    for lang, task in zip(languages, tasks):
        rows = {}
        for s in out["samples"][task]:
            ll = [float(r[0]) for r in s["filtered_resps"]]
            rows[int(s["doc"]["id"])] = ll[0] - ll[1]
        per[lang] = rows
        mean = out["results"][task]["refusal_margin,none"]
        if not np.isclose(mean, np.mean(list(rows.values())), atol=1e-6):
            raise AssertionError(f"{task}: the task's margin {mean} is not the mean of its samples' margins")
    return per


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model")
    ap.add_argument("--units-run", required=True, help="--output_path of a safespace_units run of MODEL")
    ap.add_argument("--out", required=True)
    ap.add_argument("--sets", default="safety," + ",".join(MULTIJAIL_LANGUAGES),
                    help="SCU sets pruned one at a time: 'safety' (the refusal set) and/or MultiJail languages")
    ap.add_argument("--languages", default=",".join(MULTIJAIL_LANGUAGES), help="languages the margin is measured in")
    ap.add_argument("--limit", type=int, default=100, help="held-out requests per language (0 = all)")
    ap.add_argument("--scu", type=float, default=0.01)
    ap.add_argument("--ru", type=float, default=0.10)
    ap.add_argument("--ucu", type=float, default=0.10)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0, help="the random units' draw")
    ap.add_argument("--data-dir", default=os.environ.get("SAFESPACE_DATA_DIR"))
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--zero-ablate", dest="zero_ablate", action="store_true",
                    help="zero the units only (default: mean-ablation, their calibration mean added back as a bias)")
    args = ap.parse_args(argv)
    t_start = time.time()
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)

    from lm_eval.models.huggingface import HFLM
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from safespace_tasks.units_cli import run_stats_file

    stats_path = run_stats_file(args.units_run)
    units_json = json.loads(stats_path.with_suffix(".json").read_text())
    sets, layout, info = load_unit_stats(stats_path)
    wanted = [set_name(s.strip()) for s in args.sets.split(",") if s.strip()]
    missing = [s for s in wanted if s not in sets]
    if missing:
        raise SystemExit(f"{stats_path} has no set {missing}; it holds {', '.join(sorted(sets))}. "
                         "Run the units family with those languages, or drop them from --sets.")
    languages = [lang.strip() for lang in args.languages.split(",") if lang.strip()]
    settings = ClassSettings(ru=args.ru, scu=args.scu, ucu=args.ucu)
    masks: dict[str, UnitMask] = {}
    scus: dict[str, np.ndarray] = {}
    for s in wanted:
        res = analyse(sets[s], sets["utility"], layout, settings)
        masks[s] = UnitMask.from_labels(res["arrays"]["labels"], layout, {"model_fingerprint": info.get("model_fingerprint"),
                                                                           "safety_set": s})
        scus[s] = scu_ids(res["arrays"]["labels"])
    ref = "mj_en" if "mj_en" in masks else wanted[0]
    sample_ids = units_sample_ids(units_json, args.data_dir)
    samples = {f"safespace-refusal-margin-{lang}": held_out_indices(lang, sample_ids, args.limit, args.data_dir)
               for lang in languages}

    tok = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32).to(args.device).eval()
    ablation = "zero" if args.zero_ablate else "mean"
    means = calibration_means(stats_path) if ablation == "mean" else None
    for mask in masks.values():  # every mask was written for this model (checked before biases are added)
        check_mask(mask, model)
    if means is not None:
        add_output_biases(model)  # zero biases, before the state is kept: every variant starts from them
    original = {k: v.detach().clone() for k, v in model.state_dict().items()}
    rand, rand_info = random_mask(masks[ref], layout.params_per_neuron, layout.params_per_head, args.seed)
    variants = [("none", None), *[(s, masks[s]) for s in wanted], (f"random ({ref} size)", rand)]

    lm = HFLM(pretrained=model, tokenizer=tok, batch_size=args.batch_size, device=args.device)
    results: dict = {"model": args.model, "units_run": str(stats_path), "languages": languages,
                     "held_out_requests": {k: len(v) for k, v in samples.items()},
                     "units_sample": {"n_samples": units_json["settings"]["n_samples"], "seed": units_json["settings"]["seed"]},
                     "shares": {"ru": args.ru, "scu": args.scu, "ucu": args.ucu},
                     "scu_sizes": {s: int(len(v)) for s, v in scus.items()},
                     "jaccard_with_reference": {s: jaccard(scus[ref], v) for s, v in scus.items()},
                     "reference_set": ref, "random": rand_info, "ablation": ablation,
                     "variants": {}, "seconds": {}}
    base = None
    for name, mask in variants:
        t0 = time.time()
        model.load_state_dict(original)
        pruned = (ablate(model, mask, ("SCU",), means, ablation, check=False) if mask is not None
                  else {"neurons": 0, "heads": 0})
        per = margins(lm, languages, samples, args.data_dir)
        row = {"pruned": pruned, "margin": {}, "positive": {}, "change": {}, "change_stderr": {}}
        for lang in languages:
            ids = sorted(per[lang])
            m = np.array([per[lang][i] for i in ids])
            row["margin"][lang] = float(m.mean())
            row["positive"][lang] = float((m > 0).mean())
            if base is not None:
                row["change"][lang], row["change_stderr"][lang] = paired_change(m, np.array([base[lang][i] for i in ids]))
        if base is None:
            base = per
        results["variants"][name] = row
        results["seconds"][name] = round(time.time() - t0, 1)
        print(f"{name}: margins " + " ".join(f"{lang} {row['margin'][lang]:+.2f}" for lang in languages)
              + f"  ({results['seconds'][name]} s)", flush=True)
    model.load_state_dict(original)
    results["seconds"]["total"] = round(time.time() - t_start, 1)
    (out_dir / "per_language.json").write_text(json.dumps(results, indent=2))
    (out_dir / "per_language_table.md").write_text(table(results))
    print(table(results))
    return results


def table(results: dict) -> str:
    langs = results["languages"]
    head = "| pruned SCUs of | units (neurons / heads) | " + " | ".join(langs) + " |"
    lines = [head, "|" + "---|" * (len(langs) + 2)]
    for name, row in results["variants"].items():
        cells = []
        for lang in langs:
            if lang in row["change"]:
                cells.append(f"{row['change'][lang]:+.2f} ± {row['change_stderr'][lang]:.2f}")
            else:
                cells.append(f"{row['margin'][lang]:+.2f}")
        label = name.replace("mj_", "MultiJail ") if name != "safety" else "refusal set (en)"
        lines.append(f"| {label} | {row['pruned']['neurons']} / {row['pruned']['heads']} | " + " | ".join(cells) + " |")
    lines.append("")
    lines.append("First row: the unpruned model's refusal margin (nats); other rows: the change from it, "
                 "paired over the same held-out requests (± one standard error); "
                 f"{results.get('ablation', 'zero')}-ablation.")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
