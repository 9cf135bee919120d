"""``safespace units``: unit statistics, class masks and pruned checkpoints from the command line.

    safespace units stats --model PATH --out DIR [--n 128] [--batch-size 8]
        per-unit running statistics of a safety set (AdvBench requests + refusals, response tokens)
        and a utility set (Alpaca seed tasks, response tokens), both through the chat template:
        DIR/unit_stats.safetensors
    safespace units mask --stats DIR/unit_stats.safetensors --out mask.safetensors [--ru --scu --ucu]
    safespace units mask --from-run RESULTS_DIR --out mask.safetensors [--safety-set mj_th]
        the same from a finished ``safespace-eval --tasks safespace_units`` run
        classes RU/SCU/UCU/CU with their parameter and unit shares (JSON on stdout, beside the mask)
    safespace units prune --model PATH --mask mask.safetensors --out DIR [--classes SCU] [--zero-ablate]
        an ordinary model folder with the chosen classes mean-ablated (zeroed, their calibration mean
        added back through the outgoing weights as a bias; ``--zero-ablate``: zeroed only), loadable
        by ``--model hf``
    safespace units compare --from-run BASE_RUN --to-run ALIGNED_RUN [--out compare.json]
        two ``safespace_units`` runs of models with the same architecture (a base model and its
        fine-tuned twin): per set (refusals, each MultiJail language), the Jaccard of the two SCU sets
        beside the Jaccard of random sets of those sizes, the class shares of each, and where the
        first model's SCUs went in the second (the class transition matrix)
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, Sequence

__all__ = ["add_arguments", "main", "safety_requests", "utility_requests", "UnitsInputError", "check_model_folder"]


class UnitsInputError(ValueError):
    """A command-line input of ``safespace units`` that cannot work, found before any model loads."""


def check_model_folder(value: str, flag: str = "--model") -> None:
    """A local model path must be a folder holding config.json (a Hub id is left to the Hub)."""
    from safespace_tasks.local_models import check_model_path

    check_model_path(value, flag)
    path = Path(value).expanduser()
    if path.exists():
        if not path.is_dir():
            raise UnitsInputError(f"{flag} {value}: a file, not a model folder; pass the folder holding config.json "
                                  "and the weights.")
        if not (path / "config.json").is_file():
            what = "is empty" if not any(path.iterdir()) else "has no config.json"
            raise UnitsInputError(f"{flag} {value}: the folder {what}; pass a model folder (config.json and the weights, "
                                  "as save_pretrained writes them).")


def _load_error(value: str, err: Exception) -> UnitsInputError:
    first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return UnitsInputError(f"--model {value}: could not be loaded ({first}). Pass a local model folder or a Hub id "
                           "this machine can reach.")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="units_command", required=True, metavar="{stats,mask,prune,compare}",
                                help="stats: per-unit statistics of a model; mask: unit classes from statistics; "
                                     "prune: a checkpoint with chosen classes zeroed; compare: two runs' classes")
    sp = sub.add_parser("stats", help="per-unit statistics of the safety and utility sets",
                        description=("Per-unit running statistics (mean and variance of every MLP neuron's and attention "
                                     "head's input to its output projection) over the response tokens of a safety set "
                                     "(AdvBench requests with refusals) and a utility set (Alpaca seed tasks); writes "
                                     "OUT/unit_stats.safetensors. The model is loaded after every input is checked."))
    sp.add_argument("--model", required=True, help="a model folder or Hub id (decoder-only)")
    sp.add_argument("--out", required=True, help="folder to write unit_stats.safetensors into")
    sp.add_argument("--n", type=int, default=128, help="samples per set (default 128, as the method)")
    sp.add_argument("--batch-size", default="8", help="an integer or 'auto'")
    sp.add_argument("--seed", type=int, default=0, help="seed of the sample drawn from each set")
    sp.add_argument("--no-chat-template", action="store_true",
                    help="no chat template: the context is 'request\\n' (the newline is context, never scored) "
                         "and the response follows")
    sp.add_argument("--data-dir", default=None, help="the data mirror (default: $SAFESPACE_DATA_DIR)")
    sp.add_argument("--max-length", type=int, default=None, help="truncate longer texts from the left")
    sp.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16", "auto"),
                    help="dtype the model is loaded in: float32 (default), bfloat16 or float16; the statistics are "
                         "accumulated in float64 either way")

    mp = sub.add_parser("mask", help="classify units from a statistics file and write the mask",
                        description=('Classify units into RU / SCU / UCU / CU from a statistics file (or a finished safespace_units '
                                     'run) and write a mask file with a JSON summary beside it.'))
    src = mp.add_mutually_exclusive_group(required=True)
    src.add_argument("--stats", help="unit_stats.safetensors written by `units stats`")
    src.add_argument("--from-run", dest="from_run", metavar="DIR",
                     help="a finished `safespace-eval --tasks safespace_units --output_path DIR` run (its newest "
                          "safespace_units_*.safetensors under DIR)")
    mp.add_argument("--safety-set", dest="safety_set", default="safety",
                    help="the set scored against the utility set: 'safety' (refusals, default) or a run's "
                         "MultiJail language, e.g. mj_th")
    mp.add_argument("--out", required=True, help="mask file to write (.safetensors); a .json summary goes beside it")
    mp.add_argument("--ru", type=float, default=0.10, help="redundant share of unit parameters (default 0.10)")
    mp.add_argument("--scu", type=float, default=0.01, help="safety-critical share (default 0.01)")
    mp.add_argument("--ucu", type=float, default=0.10, help="utility-critical share (default 0.10)")

    pp = sub.add_parser("prune", help="write a checkpoint with the chosen classes zeroed",
                        description=('Load the model, check that the mask was written for its weights (a fingerprint that ignores the '
                                     'folder and the load dtype), zero the chosen classes, and save an ordinary model folder.'))
    pp.add_argument("--model", required=True, help="the model folder the mask was computed on")
    pp.add_argument("--mask", required=True,
                    help="mask file written by `safespace units mask` for this model's weights (.safetensors)")
    pp.add_argument("--out", required=True, help="folder of the pruned model")
    pp.add_argument("--classes", default="SCU", help="comma-separated classes to prune (default SCU)")
    abl = pp.add_mutually_exclusive_group()
    abl.add_argument("--compensate", action="store_true",
                     help="mean-ablation (the default, kept for old command lines): add the pruned channels' mean "
                          "input through their outgoing weights as a bias")
    abl.add_argument("--zero-ablate", dest="zero_ablate", action="store_true",
                     help="zero-ablation: zero the units only, no mean added back (the variant)")
    pp.add_argument("--stats", default=None,
                    help="statistics file whose pooled safety + utility means mean-ablation adds back (default: the "
                         "file the mask was computed from, as its metadata names it)")


    cp = sub.add_parser("compare", help="how the unit classes move between two models of one architecture",
                        description=('Compare the unit classes of two safespace_units runs of one architecture: SCU Jaccard per set, '
                                     'its random-set expectation, and the class transition matrix.'))
    cp.add_argument("--from-run", dest="from_run", required=True, metavar="DIR", help="safespace_units run of the first model")
    cp.add_argument("--to-run", dest="to_run", required=True, metavar="DIR", help="safespace_units run of the second model")
    cp.add_argument("--out", default=None, help="write the comparison here as JSON (default: stdout only)")
    cp.add_argument("--ru", type=float, default=0.10, help="redundant share of unit parameters (default 0.10)")
    cp.add_argument("--scu", type=float, default=0.01, help="safety-critical share (default 0.01)")
    cp.add_argument("--ucu", type=float, default=0.10, help="utility-critical share (default 0.10)")


def _chat(tok, request: str, use_template: bool) -> str:
    """The request as the model sees it: :func:`safespace_tasks.experiments.chat_prompt` (the chat
    template, or ``request + "\n"`` without one), or ``request + "\n"`` under ``--no-chat-template``."""
    from safespace_tasks.experiments import chat_prompt

    return chat_prompt(tok, request) if use_template else request + "\n"


def sample_rows(rows: list, n: int, seed: int) -> list:
    """The ``n`` rows ``units stats`` draws with ``seed`` (the first ``n`` of a seeded permutation), in
    file order. Public so that a script can tell which rows the statistics used."""
    import numpy as np

    if n > len(rows):
        raise UnitsInputError(f"--n {n}: a set holds only {len(rows)} rows; lower --n to at most {len(rows)}.")
    order = np.random.default_rng(seed).permutation(len(rows))[:n]
    return [rows[i] for i in sorted(order)]


def safety_requests(tok, n: int, seed: int = 0, chat: bool = True, data_dir=None) -> list[tuple[str, str]]:
    """(context, response) pairs of the safety set: AdvBench requests with refusals."""
    from safespace_tasks.data import safety_refusal_rows

    return [(_chat(tok, r["prompt"], chat), r["response"].strip()) for r in sample_rows(safety_refusal_rows(data_dir), n, seed)]


def utility_requests(tok, n: int, seed: int = 0, chat: bool = True, data_dir=None) -> list[tuple[str, str]]:
    """(context, response) pairs of the utility set: Alpaca seed tasks (instruction, input, output)."""
    from safespace_tasks.data import alpaca_seed_rows

    out = []
    for r in sample_rows(alpaca_seed_rows(data_dir), n, seed):
        request = r["instruction"] + (f"\n\n{r['input']}" if r["input"] else "")
        out.append((_chat(tok, request, chat), r["output"].strip()))
    return out


def _instances(pairs, tag: str):
    from lm_eval.api.instance import Instance

    return [Instance(request_type="unit_statistics", doc={}, arguments=(c, r, {}), idx=0, metadata=(tag, i, 1))
            for i, (c, r) in enumerate(pairs)]


def check_stats_inputs(args) -> None:
    """Everything ``units stats`` can check without the model: the model folder, the sample size
    against both sets in the mirror, the batch size, the maximum length, the dtype."""
    from safespace_tasks.data import alpaca_seed_rows, safety_refusal_rows

    check_model_folder(args.model)
    if args.n < 2:
        raise UnitsInputError(f"--n {args.n}: need at least 2 samples per set (the split halves take one each).")
    for name, rows in (("safety set (safety_refusals)", safety_refusal_rows(args.data_dir)),
                       ("utility set (Alpaca seed tasks)", alpaca_seed_rows(args.data_dir))):
        if args.n > len(rows):
            raise UnitsInputError(f"--n {args.n}: the {name} holds {len(rows)} rows; lower --n to at most {len(rows)}.")
    bs = str(args.batch_size)
    if not (bs == "auto" or bs.startswith("auto:") or (bs.isdigit() and int(bs) > 0)):
        raise UnitsInputError(f"--batch-size {bs}: give a positive integer or 'auto'.")
    if args.max_length is not None and args.max_length < 2:
        raise UnitsInputError(f"--max-length {args.max_length}: give at least 2 tokens (or leave it out).")
    if args.dtype not in ("float32", "bfloat16", "float16", "auto"):
        raise UnitsInputError(f"--dtype {args.dtype}: choose float32, bfloat16, float16 or auto.")


def stats_main(args) -> int:
    import numpy as np
    from lm_eval.models.huggingface import HFLM

    from safespace_tasks import install
    from safespace_tasks.capture import unit_layout
    from safespace_tasks.unit_masks import save_unit_stats, weights_fingerprint
    from safespace_tasks.stats.units import merge_all

    install()  # the request type (and the model-path check) before the model loads
    t0 = time.perf_counter()
    check_stats_inputs(args)  # before the model loads
    kwargs: dict[str, Any] = {"pretrained": args.model, "device": "cpu", "dtype": args.dtype, "batch_size": args.batch_size}
    if args.max_length:
        kwargs["max_length"] = args.max_length
    try:
        lm = HFLM(**kwargs)
    except (OSError, ValueError) as err:
        raise _load_error(args.model, err) from err
    chat = not args.no_chat_template
    sets = {"safety": safety_requests(lm.tokenizer, args.n, args.seed, chat, args.data_dir),
            "utility": utility_requests(lm.tokenizer, args.n, args.seed, chat, args.data_dir)}
    merged, halves = {}, {}
    for name, pairs in sets.items():
        per_doc = lm.unit_statistics(_instances(pairs, name))
        merged[name] = merge_all(per_doc)
        order = np.random.default_rng(args.seed + 1).permutation(len(per_doc))
        for h, part in enumerate((order[: len(order) // 2], order[len(order) // 2:])):
            halves[f"{name}_half{h}"] = merge_all([per_doc[i] for i in part])
    layout = unit_layout(lm.model)
    seconds = time.perf_counter() - t0
    meta = {
        "model": args.model, "model_fingerprint": weights_fingerprint(lm.model), "chat_template": chat,
        "data": {"safety": f"safety_refusals/train.jsonl, {args.n} rows (seed {args.seed}), response tokens",
                 "utility": f"alpaca_seed_tasks/seed_tasks.jsonl, {args.n} rows (seed {args.seed}), response tokens"},
        "seconds": round(seconds, 1),
    }
    path = save_unit_stats(Path(args.out) / "unit_stats.safetensors", {**merged, **halves}, layout, meta)
    print(json.dumps({"stats": str(path), "seconds": round(seconds, 1),
                      "scored_tokens": {k: v.count for k, v in merged.items()}}, indent=2))
    return 0


def run_stats_file(folder: str | Path) -> Path:
    """The newest ``safespace_units_*.safetensors`` under a results folder (searched recursively)."""
    from safespace_tasks.unit_masks import MaskError

    folder = Path(folder)
    if not folder.is_dir():
        raise MaskError(f"--from-run {folder}: no such folder; pass the --output_path of a safespace_units run.")
    found = sorted(folder.rglob("safespace_units_*.safetensors"), key=lambda p: (p.stat().st_mtime, str(p)))
    if not found:
        raise MaskError(f"--from-run {folder}: no safespace_units_*.safetensors below it; was the run "
                        "`safespace-eval --tasks safespace_units --output_path ...`?")
    if len(found) > 1:
        print(f"safespace units mask: {len(found)} unit files under {folder}; using the newest, {found[-1]}", file=sys.stderr)
    return found[-1]


def mask_main(args) -> int:
    from safespace_tasks.unit_masks import MaskError, UnitMask, load_unit_stats, save_mask
    from safespace_tasks.stats.units import ClassSettings, analyse, expected_random_jaccard, jaccard, scu_ids, classify, unit_scores

    if args.from_run:
        args.stats = str(run_stats_file(args.from_run))
    sets, layout, info = load_unit_stats(args.stats)
    if args.safety_set not in sets or "utility" not in sets:
        raise MaskError(f"{args.stats} has no set {args.safety_set!r} (or no utility set); it holds {', '.join(sorted(sets))}.")
    settings = ClassSettings(ru=args.ru, scu=args.scu, ucu=args.ucu)
    res = analyse(sets[args.safety_set], sets["utility"], layout, settings)
    summary = {k: v for k, v in res.items() if k != "arrays"}
    summary["safety_set"] = args.safety_set
    if args.safety_set == "safety" and "safety_half0" in sets:
        z_u = unit_scores(sets["utility"], layout)
        params = layout.unit_params()
        halves = [scu_ids(classify(unit_scores(sets[f"safety_half{h}"], layout), z_u, params, settings)) for h in (0, 1)]
        summary["split_half_scu"] = {"jaccard": jaccard(*halves), "sizes": [len(h) for h in halves],
                                     "expected_random": expected_random_jaccard(layout.n_units, len(halves[0]), len(halves[1]))}
    meta = {"model_fingerprint": info.get("model_fingerprint"), "model": info.get("model"), "data": info.get("data"),
            "shares": {"ru": args.ru, "scu": args.scu, "ucu": args.ucu}, "settings": res["settings"],
            "chat_template": info.get("chat_template"), "stats_file": str(args.stats), "safety_set": args.safety_set}
    mask = UnitMask.from_labels(res["arrays"]["labels"], layout, meta)
    out = save_mask(mask, args.out)
    summary["mask"] = str(out)
    summary["counts_per_class"] = mask.counts()
    Path(out).with_suffix(".json").write_text(json.dumps(summary, indent=2))
    print(json.dumps({k: summary[k] for k in ("mask", "shares", "per_type", "counts", "split_half_scu") if k in summary}, indent=2))
    return 0


def prune_stats_file(args) -> str:
    """The statistics file mean-ablation takes its means from: --stats, else the mask's own source."""
    from safespace_tasks.unit_masks import MaskError, load_mask

    if args.stats:
        return args.stats
    named = load_mask(args.mask).metadata.get("stats_file")
    if named and Path(named).is_file():
        return str(named)
    raise MaskError(f"mean-ablation (the default) needs the calibration statistics, and the mask names none that "
                    f"exists ({named!r}): pass --stats DIR/unit_stats.safetensors, or --zero-ablate to zero the units only.")


def prune_main(args) -> int:
    from safespace_tasks.ablation import calibration_means
    from safespace_tasks.unit_masks import load_mask, write_pruned_checkpoint
    from safespace_tasks.stats.units import CLASSES

    classes = tuple(c.strip().upper() for c in args.classes.split(",") if c.strip())
    bad = [c for c in classes if c not in CLASSES]
    if bad or not classes:
        raise SystemExit(f"safespace units prune: unknown classes {bad or args.classes!r}; choose from {', '.join(CLASSES)}.")
    check_model_folder(args.model)
    means = None
    load_mask(args.mask)  # a missing or unreadable mask ends here, before the model loads
    if not args.zero_ablate:
        means = calibration_means(prune_stats_file(args))
    try:
        info = write_pruned_checkpoint(args.model, args.mask, args.out, classes, means)
    except OSError as err:
        raise _load_error(args.model, err) from err
    print(json.dumps({"out": str(args.out), "pruned": info["pruned"], "compensated": info["compensated"],
                      "ablation": "mean" if info["compensated"] else "zero"}, indent=2))
    return 0


def compare_runs(stats_a: str | Path, stats_b: str | Path, settings=None) -> dict[str, Any]:
    """Per set both files hold (``safety`` and every ``mj_<lang>``), classes against each file's own
    utility set: the Jaccard of the SCU sets with its random-set expectation, the class shares of each
    model and the transition matrix (rows: class in the first model, columns: in the second; unit counts)."""
    import numpy as np

    from safespace_tasks.unit_masks import MaskError, load_unit_stats
    from safespace_tasks.stats.units import CLASSES, ClassSettings, analyse, expected_random_jaccard, jaccard, scu_ids

    settings = settings or ClassSettings()
    sets_a, layout_a, info_a = load_unit_stats(stats_a)
    sets_b, layout_b, info_b = load_unit_stats(stats_b)
    if layout_a.to_dict() != layout_b.to_dict():
        raise MaskError(f"{stats_a} and {stats_b} describe different unit layouts (architectures); "
                        "compare runs of two models of one architecture (a base model and its fine-tuned twin).")
    names = [n for n in ("safety", *sorted(k for k in sets_a if k.startswith("mj_") and "_half" not in k))
             if n in sets_b]
    if not names:
        raise MaskError(f"{stats_a} and {stats_b} share no set to compare.")
    classes = sorted(CLASSES, key=CLASSES.get)
    from dataclasses import asdict

    out: dict[str, Any] = {"from": str(stats_a), "to": str(stats_b), "settings": asdict(settings), "sets": {}}
    for name in names:
        ra = analyse(sets_a[name], sets_a["utility"], layout_a, settings)
        rb = analyse(sets_b[name], sets_b["utility"], layout_b, settings)
        la, lb = ra["arrays"]["labels"], rb["arrays"]["labels"]
        sa, sb = scu_ids(la), scu_ids(lb)
        matrix = {ca: {cb: int(np.sum((la == CLASSES[ca]) & (lb == CLASSES[cb]))) for cb in classes} for ca in classes}
        out["sets"][name] = {
            "scu_jaccard": jaccard(sa, sb),
            "scu_jaccard_random": expected_random_jaccard(layout_a.n_units, len(sa), len(sb)),
            "scu_sizes": [int(len(sa)), int(len(sb))],
            "scu_kept": float(np.mean(lb[la == CLASSES["SCU"]] == CLASSES["SCU"])) if len(sa) else float("nan"),
            "shares_from": {c: v["params"] for c, v in ra["shares"].items()},
            "shares_to": {c: v["params"] for c, v in rb["shares"].items()},
            "transitions": matrix,
        }
    return out


def compare_main(args) -> int:
    from safespace_tasks.stats.units import ClassSettings

    result = compare_runs(run_stats_file(args.from_run), run_stats_file(args.to_run),
                          ClassSettings(ru=args.ru, scu=args.scu, ucu=args.ucu))
    text = json.dumps(result, indent=2)
    if args.out:
        Path(args.out).write_text(text)
    lines = [f"{'set':<8} {'SCU Jaccard':>11} {'random':>8} {'SCUs kept':>9}"]
    for name, r in result["sets"].items():
        lines.append(f"{name:<8} {r['scu_jaccard']:>11.3f} {r['scu_jaccard_random']:>8.4f} {r['scu_kept']:>9.1%}")
    print("\n".join(lines))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="safespace units", description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    args = parser.parse_args(argv)
    from safespace_tasks.capture import CaptureError
    from safespace_tasks.data import DataError
    from safespace_tasks.local_models import ModelPathError
    from safespace_tasks.unit_masks import MaskError
    from safespace_tasks.stats.units import UnitsError

    try:
        return {"stats": stats_main, "mask": mask_main, "prune": prune_main, "compare": compare_main}[args.units_command](args)
    except (MaskError, UnitsError, CaptureError, DataError, UnitsInputError, ModelPathError) as err:
        print(f"safespace units {args.units_command}: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
