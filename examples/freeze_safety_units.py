"""Freezing safety units through a short benign fine-tuning, as the paper ran it.

    python examples/freeze_safety_units.py MODEL_FOLDER --units RUN_DIR --out runs/freeze
        [--modes none,scu,scu_cu,scu_allcu] [--top-cu 0.06] [--step-factor scu_allcu=2] [--steps 30]
        [--lr 5e-5] [--batch-size 8] [--n-requests 100] [--n-xstest 250] [--max-new-tokens 64]
        [--reuse-before EARLIER_RUN]
    python examples/freeze_safety_units.py --table RUN_A RUN_B ... [--table-out table.md]

RUN_DIR holds ``unit_stats.safetensors`` and ``mask.safetensors`` of MODEL_FOLDER (as written by
``examples/prune_safety_units.py`` or ``safespace units stats`` + ``safespace units mask``).

Per mode, from the same starting weights and the same seeded batches:
* the frozen units: ``none``; ``scu`` (the mask's SCUs); ``scu_cu``, the paper's setting (i): the
  SCUs and the mask's complex units with the highest z_safety + z_utility, until they hold
  ``--top-cu`` (6 %) of the unit parameters; ``scu_allcu``, the paper's setting (ii): the SCUs and
  every unit the mask labels CU; and the controls ``random_scu``, ``random_scu_cu``,
  ``random_scu_allcu`` (not run by default): as many MLP neurons and heads as that mode freezes, drawn
  at random with ``--seed``, so a kept refusal can be told from the effect of freezing that much;
* steps: ``--steps`` times the mode's ``--step-factor`` (default ``scu_allcu=2,random_scu_allcu=2``:
  the paper trains the heavily frozen model twice as long); the first ``--steps`` batches are the same in every mode;
* the frozen entries are exactly the units' own weights: an MLP neuron's gate/up rows and its
  down_proj column; a head's q rows and o_proj columns, and its k/v rows where every head sharing
  them is frozen (grouped-query attention). A gradient hook multiplies their gradient by 0, and the
  optimiser is AdamW with weight decay 0, so a zero gradient leaves the entry bit-identical
  (checked after training: ``frozen_unchanged``);
* benign data: Alpaca seed tasks (instruction -> output, chat template, response tokens only);
* before and after: refusal / attack success / coherent attack success / degeneration on AdvBench
  rows 0..N-1, and over-refusal (refusal rate) on the held-out Alpaca instructions and on XSTest's
  safe prompts (``--n-xstest``, 250 = all; 0 skips it), both judges (keyword ``refusal_rate``, cue
  ``refusal_rate_cue``), greedy with the chat template
  (``safespace_tasks.experiments.generate_replies``).
Writes OUT/freeze_results.json and OUT/freeze_table.md. ``--table`` puts several runs on the same model
(the same measures before fine-tuning, checked) into one table, e.g. the four modes beside the matched
``--modes none --step-factor none=2`` run; a mode that occurs in two runs is labelled with its steps.
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
from prune_safety_units import eval_data_root  # noqa: E402

from safespace_tasks.data import DataError, advbench_rows, alpaca_seed_rows, xstest_rows  # noqa: E402
from safespace_tasks.experiments import chat_prompt, generate_replies  # noqa: E402
from safespace_tasks.refusal import summarize_replies  # noqa: E402
from safespace_tasks.capture import find_decoder_parts  # noqa: E402
from safespace_tasks.unit_masks import load_mask, load_unit_stats  # noqa: E402
from safespace_tasks.stats.units import CLASSES, ClassSettings, analyse  # noqa: E402

MODES = ("none", "scu", "scu_cu", "scu_allcu")
# the controls: as many MLP neurons and heads as the named mode freezes, drawn at random (seeded)
RANDOM_MODES = tuple(f"random_{m}" for m in MODES[1:])
ALL_MODES = MODES + RANDOM_MODES
DEFAULT_STEP_FACTORS = "scu_allcu=2,random_scu_allcu=2"


def _linear_rows(module: torch.nn.Module, rows) -> tuple[torch.nn.Parameter, tuple]:
    """(weight, index) selecting output channels ``rows`` of a projection (Linear or GPT-2 Conv1D)."""
    if type(module).__name__ == "Conv1D":
        return module.weight, (slice(None), rows)
    return module.weight, (rows, slice(None))


def _linear_cols(module: torch.nn.Module, cols) -> tuple[torch.nn.Parameter, tuple]:
    if type(module).__name__ == "Conv1D":
        return module.weight, (cols, slice(None))
    return module.weight, (slice(None), cols)


def unit_entries(model: torch.nn.Module, sel_mlp: np.ndarray, sel_attn: np.ndarray) -> dict[str, torch.Tensor]:
    """Per parameter name, a boolean mask of the entries that belong to the selected units."""
    parts = find_decoder_parts(model)
    cfg = model.config
    n_heads = int(cfg.num_attention_heads)
    n_kv = int(getattr(cfg, "num_key_value_heads", None) or n_heads)
    names = {id(p): n for n, p in model.named_parameters()}
    masks: dict[str, torch.Tensor] = {}

    def mark(param, index):
        name = names[id(param)]
        m = masks.setdefault(name, torch.zeros_like(param, dtype=torch.bool))
        m[index] = True

    for l, block in enumerate(parts.blocks):
        mlp, attn = block.mlp, block.self_attn
        if not all(hasattr(mlp, n) for n in ("gate_proj", "up_proj", "down_proj")) or not all(
                hasattr(attn, n) for n in ("q_proj", "k_proj", "v_proj", "o_proj")):
            raise SystemExit(f"{type(block).__name__}: freezing supports Llama-style blocks (gate/up/down, q/k/v/o).")
        neurons = torch.from_numpy(np.flatnonzero(sel_mlp[l]))
        if len(neurons):
            for proj in (mlp.gate_proj, mlp.up_proj):
                mark(*_linear_rows(proj, neurons))
            mark(*_linear_cols(mlp.down_proj, neurons))
        heads = np.flatnonzero(sel_attn[l])
        if len(heads):
            hd = attn.o_proj.weight.shape[1] // n_heads
            chans = torch.from_numpy(np.concatenate([np.arange(h * hd, (h + 1) * hd) for h in heads]))
            mark(*_linear_rows(attn.q_proj, chans))
            mark(*_linear_cols(attn.o_proj, chans))
            per = n_heads // n_kv
            for g in range(n_kv):
                if set(range(g * per, (g + 1) * per)) <= set(heads.tolist()):
                    kv = torch.arange(g * hd, (g + 1) * hd)
                    mark(*_linear_rows(attn.k_proj, kv))
                    mark(*_linear_rows(attn.v_proj, kv))
    return masks


def frozen_selection(run_dir: Path, mode: str, top_cu: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray, dict]:
    """Boolean (layers x neurons) and (layers x heads) arrays of the units ``mode`` freezes, and counts.

    The classes are the mask's; ``scu_cu`` ranks the mask's CUs by z_safety + z_utility of the unit
    statistics (the same scores the mask was cut from), so ``scu`` ⊆ ``scu_cu`` ⊆ ``scu_allcu``.
    ``random_<mode>`` (the control): as many MLP neurons and as many heads as ``<mode>`` freezes, drawn
    uniformly at random (``seed``); ``overlap_units`` says how many of them ``<mode>`` freezes too.
    """
    if mode not in ALL_MODES:
        raise SystemExit(f"unknown mode {mode!r}; choose from {', '.join(ALL_MODES)}")
    if mode in RANDOM_MODES:
        ref_mlp, ref_attn, _ = frozen_selection(run_dir, mode[len("random_"):], top_cu, seed)
        rng = np.random.default_rng(seed)
        sel_mlp, sel_attn = np.zeros_like(ref_mlp), np.zeros_like(ref_attn)
        sel_mlp.flat[rng.choice(ref_mlp.size, int(ref_mlp.sum()), replace=False)] = True
        sel_attn.flat[rng.choice(ref_attn.size, int(ref_attn.sum()), replace=False)] = True
        info = {"matched_mode": mode[len("random_"):], "seed": seed,
                "units": int(sel_mlp.sum() + sel_attn.sum()), "neurons": int(sel_mlp.sum()), "heads": int(sel_attn.sum()),
                "overlap_units": int((sel_mlp & ref_mlp).sum() + (sel_attn & ref_attn).sum())}
        return sel_mlp, sel_attn, info
    mask = load_mask(run_dir / "mask.safetensors")
    if mode == "none":
        return np.zeros_like(mask.mlp, bool), np.zeros_like(mask.attn, bool), {"units": 0}
    sel_mlp, sel_attn = mask.selected(("SCU",))
    info = {"scu_units": int(sel_mlp.sum() + sel_attn.sum())}
    cu_mlp, cu_attn = mask.selected(("CU",))
    info["cu_units_in_mask"] = int(cu_mlp.sum() + cu_attn.sum())
    if mode == "scu_allcu":
        sel_mlp, sel_attn = sel_mlp | cu_mlp, sel_attn | cu_attn
        info["cu_units"] = info["cu_units_in_mask"]
    elif mode == "scu_cu":
        sets, layout, _ = load_unit_stats(run_dir / "unit_stats.safetensors")
        if (layout.n_layers, layout.n_neurons, layout.n_heads) != (mask.mlp.shape + mask.attn.shape[1:]):
            raise SystemExit(f"{run_dir}: unit_stats and mask describe different models")
        shares = mask.metadata.get("shares") or {}
        arrays = analyse(sets["safety"], sets["utility"], layout, ClassSettings(**shares))["arrays"]
        params = np.asarray(arrays["params"], float)
        total = np.asarray(arrays["z_safety"], float) + np.asarray(arrays["z_utility"], float)
        total = np.where(np.isfinite(total), total, -np.inf)
        labels = np.concatenate([mask.mlp, mask.attn], axis=1).reshape(-1)  # the analyse arrays' unit order
        cu = np.flatnonzero(labels == CLASSES["CU"])
        cu = cu[np.argsort(-total[cu], kind="stable")]
        take = cu[: int(np.searchsorted(np.cumsum(params[cu]), top_cu * params.sum()) + 1)] if top_cu > 0 else cu[:0]
        flat = np.zeros(len(labels), bool)
        flat[take] = True
        flat = flat.reshape(layout.n_layers, layout.n_neurons + layout.n_heads)
        sel_mlp = sel_mlp | flat[:, : layout.n_neurons]
        sel_attn = sel_attn | flat[:, layout.n_neurons:]
        info["top_cu_units"] = int(len(take))
        info["top_cu_share"] = top_cu
        info["cu_units"] = int(len(take))
    info["units"] = int(sel_mlp.sum() + sel_attn.sum())
    info["neurons"], info["heads"] = int(sel_mlp.sum()), int(sel_attn.sum())
    return sel_mlp, sel_attn, info


def parse_step_factors(text: str) -> dict[str, float]:
    """``"scu_allcu=2,scu=1"`` -> {mode: factor}; modes not named train ``--steps`` (factor 1)."""
    factors = {}
    for item in (x.strip() for x in (text or "").split(",")):
        if not item:
            continue
        mode, eq, value = item.partition("=")
        mode = mode.strip()
        if not eq or mode not in ALL_MODES:
            raise SystemExit(f"--step-factor {item!r}: write MODE=FACTOR with MODE among {', '.join(ALL_MODES)}")
        try:
            factor = float(value)
        except ValueError:
            raise SystemExit(f"--step-factor {item!r}: {value!r} is not a number") from None
        if not factor > 0:
            raise SystemExit(f"--step-factor {item!r}: the factor must be positive")
        factors[mode] = factor
    return factors


def mode_steps(steps: int, factor: float) -> int:
    return max(1, int(round(steps * factor)))


def alpaca_split(root: Path, n_heldout: int, seed: int):
    rows = alpaca_seed_rows(root)
    order = np.random.default_rng(seed).permutation(len(rows))
    request = lambda r: r["instruction"] + (f"\n\n{r['input']}" if r["input"] else "")  # noqa: E731
    held = [request(rows[i]) for i in sorted(order[:n_heldout])]
    train = [(request(rows[i]), rows[i]["output"].strip()) for i in order[n_heldout:]]
    return train, held


def encode(tok, user: str, answer: str, max_length: int) -> tuple[list[int], list[int]]:
    prompt = tok(chat_prompt(tok, user), add_special_tokens=False)["input_ids"]
    reply = tok(answer + (tok.eos_token or ""), add_special_tokens=False)["input_ids"]
    ids = (prompt + reply)[:max_length]
    labels = ([-100] * len(prompt) + reply)[:max_length]
    return ids, labels


def fine_tune(model, tok, examples, frozen: dict[str, torch.Tensor], *, steps: int, lr: float, batch_size: int,
              seed: int, max_length: int = 256) -> list[float]:
    """AdamW (weight decay 0) on response tokens; the frozen entries' gradients are zeroed by hooks."""
    params = dict(model.named_parameters())
    hooks = [params[n].register_hook(lambda g, keep=(~m).to(params[n].dtype): g * keep) for n, m in frozen.items()]
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    rng = np.random.default_rng(seed)
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    encoded = [encode(tok, user, answer, max_length) for user, answer in examples]
    encoded = [e for e in encoded if any(t != -100 for t in e[1])]  # a reply cut away entirely teaches nothing
    if not encoded:
        raise SystemExit(f"no training example keeps a response token within {max_length} tokens; raise max_length.")
    model.train()
    losses = []
    try:
        for _ in range(steps):
            batch = [encoded[i] for i in rng.choice(len(encoded), batch_size)]
            width = max(len(ids) for ids, _ in batch)
            ids = torch.tensor([i + [pad] * (width - len(i)) for i, _ in batch])
            labels = torch.tensor([l + [-100] * (width - len(l)) for _, l in batch])
            att = torch.tensor([[1] * len(i) + [0] * (width - len(i)) for i, _ in batch])
            loss = model(input_ids=ids, attention_mask=att, labels=labels).loss
            opt.zero_grad(set_to_none=False)
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
    finally:
        for h in hooks:
            h.remove()
        model.eval()
    return losses


SETS = (("advbench", "AdvBench"), ("alpaca_heldout", "held-out Alpaca"), ("xstest_safe", "XSTest safe"))


def measure(model, tok, advbench: list[str], alpaca_held: list[str], new_tokens: int, batch_size: int,
            xstest_safe: list[str] | None = None) -> dict:
    """Both judges' rates on AdvBench (refusal wanted) and on the benign sets (refusal = over-refusal)."""
    def judged(requests: list[str]) -> dict:
        return summarize_replies(generate_replies(model, tok, requests, new_tokens=new_tokens, batch_size=batch_size))

    out = {"advbench": judged(advbench), "alpaca_heldout": judged(alpaca_held)}
    if xstest_safe:
        out["xstest_safe"] = judged(xstest_safe)
    return out


def _pct(block: dict | None, key: str) -> str:
    return f"{block[key]:.0%}" if block and key in block else "–"


def table(results: dict) -> str:
    """One row per mode: each rate before → after; refusal and over-refusal by both judges (cue in brackets)."""
    before = results["before"]
    has_x = "xstest_safe" in before
    head = ["frozen", "units frozen", "steps", "AdvBench refusal (cue)", "attack success", "coherent attack success",
            "degenerate", "over-refusal held-out Alpaca (cue)"]
    head += ["over-refusal XSTest safe (cue)"] if has_x else []
    head += ["frozen entries unchanged"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

    def both(key, set_name, a):
        b0, b1 = before.get(set_name), a.get(set_name)
        return (f"{_pct(b0, key)} → {_pct(b1, key)} "
                f"({_pct(b0, key + '_cue')} → {_pct(b1, key + '_cue')})")

    def one(key, set_name, a):
        return f"{_pct(before.get(set_name), key)} → {_pct(a.get(set_name), key)}"

    for mode, r in results["modes"].items():
        a = r["after"]
        cells = [mode, str(r["selection"]["units"]), str(r.get("steps", "–")),
                 both("refusal_rate", "advbench", a), one("attack_success_rate", "advbench", a),
                 one("coherent_attack_success_rate", "advbench", a), one("degeneration_rate", "advbench", a),
                 both("refusal_rate", "alpaca_heldout", a)]
        cells += [both("refusal_rate", "xstest_safe", a)] if has_x else []
        cells += [str(r["frozen_unchanged"])]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


# the settings that decide the measures before fine-tuning: a run may reuse another's only if they agree
BEFORE_SETTINGS = ("model", "n_requests", "n_heldout", "n_xstest", "max_new_tokens", "seed", "data_dir")


def reused_before(path: Path, args, counts: dict) -> dict:
    """The ``before`` block of an earlier run (its freeze_results.json or folder), if that run measured
    the same model on the same sets with the same settings (``BEFORE_SETTINGS`` and the set sizes);
    else a clear refusal. Greedy generation makes the block the same as measuring again."""
    path = path / "freeze_results.json" if path.is_dir() else path
    if not path.is_file():
        raise SystemExit(f"--reuse-before {path}: no freeze_results.json there")
    prev = json.loads(path.read_text())
    old, new = prev.get("settings", {}), vars(args)
    differ = [k for k in BEFORE_SETTINGS if old.get(k) != new.get(k)]
    if any(prev.get("counts", {}).get(k) != v for k, v in counts.items()):
        differ.append("counts")
    if differ or "before" not in prev:
        raise SystemExit(f"--reuse-before {path}: measured with other settings ({', '.join(differ) or 'no before block'}); "
                         "run without --reuse-before to measure again")
    return prev["before"]


def _canonical(block) -> str:
    """A results block as text, so equal blocks compare equal even where a rate is NaN (no reply long
    enough to measure)."""
    return json.dumps(block, sort_keys=True)


def merged_results(runs: list[dict], names: list[str] | None = None) -> dict:
    """Several runs' results as one (for one table): their ``before`` blocks must be the same (the
    same model, evaluation sets and settings), else the merge is refused. A mode that occurs in more
    than one run is labelled ``<mode> (<steps> steps)``."""
    if not runs:
        raise SystemExit("--table: give at least one freeze_results.json")
    names = names or [f"run {i}" for i in range(len(runs))]
    first = runs[0]
    for name, r in zip(names[1:], runs[1:]):
        if _canonical(r.get("before")) != _canonical(first.get("before")) or r.get("model") != first.get("model"):
            raise SystemExit(f"--table: {name} was measured before fine-tuning on another model or with other "
                             f"evaluation settings than {names[0]}; only runs with the same 'before' block share a table")
    seen: dict[str, int] = {}
    for r in runs:
        for mode in r["modes"]:
            seen[mode] = seen.get(mode, 0) + 1
    modes = {}
    for r in runs:
        for mode, block in r["modes"].items():
            label = f"{mode} ({block.get('steps', '?')} steps)" if seen[mode] > 1 else mode
            if label in modes:
                raise SystemExit(f"--table: mode {label!r} occurs twice; give each run once")
            modes[label] = block
    return {"model": first.get("model"), "before": first["before"], "modes": modes}


def table_main(argv) -> str:
    """``--table RESULTS ... [--table-out FILE]``: one table of several runs on the same model."""
    p = argparse.ArgumentParser(prog="freeze_safety_units.py --table",
                                description="one freezing table of several runs (same model, same before-measures)")
    p.add_argument("runs", nargs="+", help="freeze_results.json files or folders holding one")
    p.add_argument("--table-out", help="write the markdown table here too")
    args = p.parse_args(argv)
    runs, names = [], []
    for run in args.runs:
        path = Path(run)
        path = path / "freeze_results.json" if path.is_dir() else path
        if not path.is_file():
            raise SystemExit(f"{run}: no freeze_results.json there")
        runs.append(json.loads(path.read_text()))
        names.append(str(path))
    text = table(merged_results(runs, names))
    if args.table_out:
        Path(args.table_out).write_text(text)
    print(text)
    return text


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("model")
    p.add_argument("--units", required=True, help="folder with unit_stats.safetensors and mask.safetensors of MODEL")
    p.add_argument("--out", required=True)
    p.add_argument("--modes", default=",".join(MODES))
    p.add_argument("--top-cu", type=float, default=0.06,
                   help="share of unit parameters of top CUs frozen in scu_cu (the paper's setting (i): 6 %%)")
    p.add_argument("--steps", type=int, default=30, help="fine-tuning steps of a mode with step factor 1")
    p.add_argument("--step-factor", default=DEFAULT_STEP_FACTORS,
                   help="MODE=FACTOR,... : train MODE for FACTOR x --steps (default scu_allcu=2,random_scu_allcu=2, as the paper "
                        "trains the model with every CU frozen twice as long); '' = all modes --steps")
    p.add_argument("--lr", type=float, default=5e-5)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--n-heldout", type=int, default=40, help="Alpaca tasks held out of training (over-refusal)")
    p.add_argument("--n-requests", type=int, default=100)
    p.add_argument("--n-xstest", type=int, default=250,
                   help="XSTest safe prompts measured for over-refusal (250 = all, in file order; 0 skips)")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--gen-batch-size", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data-dir", default=None)
    p.add_argument("--reuse-before", help="take the measures before fine-tuning from this earlier run "
                   "(freeze_results.json or its folder) of the same model and settings, instead of measuring again")
    return p.parse_args(argv)


def main(argv=None) -> dict:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "--table":
        return {"table": table_main(argv[1:])}
    args = parse_args(argv)
    root = eval_data_root(args.n_requests, args.data_dir)
    out, run_dir = Path(args.out), Path(args.units)
    out.mkdir(parents=True, exist_ok=True)
    tok = AutoTokenizer.from_pretrained(args.model)
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    unknown = [m for m in modes if m not in ALL_MODES]
    if unknown:
        raise SystemExit(f"unknown mode(s) {unknown}; choose from {', '.join(ALL_MODES)}")
    factors = parse_step_factors(args.step_factor)
    if not 0 <= args.n_xstest <= 250:
        raise SystemExit("--n-xstest must lie in [0, 250] (XSTest has 250 safe prompts)")
    train, held = alpaca_split(root, args.n_heldout, args.seed)
    advbench = [r["goal"] for r in advbench_rows(root)[: args.n_requests]]
    try:
        xsafe = [r["prompt"] for r in xstest_rows(root, label="safe")][: args.n_xstest] if args.n_xstest else []
    except DataError as err:
        raise SystemExit(f"{err} (or pass --n-xstest 0)") from None
    t0 = time.perf_counter()
    counts = {"advbench": len(advbench), "alpaca_train": len(train), "alpaca_heldout": len(held),
              "xstest_safe": len(xsafe)}
    if args.reuse_before:
        before = reused_before(Path(args.reuse_before), args, counts)
    else:
        base = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32).eval()
        before = measure(base, tok, advbench, held, args.max_new_tokens, args.gen_batch_size, xsafe)
        del base
    results = {"model": args.model, "settings": vars(args),
               "step_factors": {m: factors.get(m, 1.0) for m in modes},
               "counts": counts, "before": before, "modes": {}}
    for mode in modes:
        t = time.perf_counter()
        torch.manual_seed(args.seed)
        model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32)
        sel_mlp, sel_attn, info = frozen_selection(run_dir, mode, args.top_cu, args.seed)
        frozen = unit_entries(model, sel_mlp, sel_attn)
        params = dict(model.named_parameters())
        snapshot = {n: params[n].detach().clone() for n in frozen}
        steps = mode_steps(args.steps, factors.get(mode, 1.0))
        losses = fine_tune(model, tok, train, frozen, steps=steps, lr=args.lr, batch_size=args.batch_size, seed=args.seed)
        unchanged = all(torch.equal(params[n].detach()[m], snapshot[n][m]) for n, m in frozen.items())
        results["modes"][mode] = {
            "selection": info, "frozen_entries": int(sum(int(m.sum()) for m in frozen.values())),
            "frozen_unchanged": unchanged, "step_factor": factors.get(mode, 1.0), "steps": steps, "losses": losses,
            "after": measure(model, tok, advbench, held, args.max_new_tokens, args.gen_batch_size, xsafe),
            "seconds": round(time.perf_counter() - t, 1),
        }
        print(mode, json.dumps({k: v for k, v in results["modes"][mode].items() if k != "losses"}), flush=True)
        (out / "freeze_results.json").write_text(json.dumps(results, indent=1))
    results["seconds_total"] = round(time.perf_counter() - t0, 1)
    (out / "freeze_results.json").write_text(json.dumps(results, indent=1))
    (out / "freeze_table.md").write_text(table(results))
    print(table(results))
    return results


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main(sys.argv[1:])
