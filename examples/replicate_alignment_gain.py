"""Miniature replication: English-only DPO on a base model, then every separation measure per language.

The Hidden Space of Safety's claim is causal: English-centric preference alignment separates toxic from
non-toxic text in English much more than in other languages. This script makes an aligned twin of a base
model (gemma-3-270m by default) and measures both with the project's own tools:

1. load the base model and tokenizer;
2. read English ParaDetox (``paradetox_en/paradetox.tsv``: toxic, neutral1..3) and build preference
   pairs, chosen = a human neutral rewrite, rejected = the toxic original. Every pair that shares a text
   (normalised exact match) with the English evaluation sets (``multilingual_paradetox/en.jsonl``,
   ``multilingual_toxicity_dataset/en.jsonl``) is dropped and counted; the kept pairs are checked again
   and the script stops if any overlap remains;
3. train, written in plain torch, every parameter by default (``--freeze-embeddings`` keeps the token
   embeddings out). ``--arm dpo`` (default): DPO, the reference log-probabilities those of the frozen
   base model, computed once. Two negative controls with the same pairs, optimizer, steps and batches:
   ``--arm swap`` (chosen and rejected exchanged at random in about half the pairs, seeded: no consistent
   preference) and ``--arm sft`` (next-token loss on the neutral rewrites only: drift without a preference);
4. save a checkpoint at each dose of ``--eval-at`` (epochs or steps; default: the end of training only);
5. run the toxicity (15 languages) and paradetox (9 languages) families on the base model (once) and on
   each checkpoint with the same texts, through ``safespace-eval`` in a subprocess (``--limit`` texts
   per language); an intermediate checkpoint is deleted once evaluated, the last is kept;
6. ``safespace report`` on all runs with the base as base: per language and dose the gain with its
   paired interval, the mean and English-minus-rest gains; the dose-response table and its plot.

Each step is timed; ``OUT/replication.json`` holds the settings, the data counts (the overlap count
among them), the losses, the timings, the paths, the final dose's gains and the dose-response. Usage::

    OMP_NUM_THREADS=2 SAFESPACE_DATA_DIR=../shared/data python examples/replicate_alignment_gain.py out/dpo_s0 \
        --seed 0 --eval-at 0,0.25,0.5,1

Needs only the project's own dependencies (torch, transformers) plus ``.[models]`` for gemma-3-270m and
``.[report]`` for the pictures. See docs/replication.md; ``examples/replication_tables.py`` turns several
runs' replication.json into the tables of that page.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from safespace_tasks.data import PARADETOX, TOXICITY, load_rows  # noqa: E402
from safespace_tasks.experiments import TrainEvalOverlapError, normalise, require_data_dir  # noqa: E402

FAMILIES = ("safespace_toxicity", "safespace_paradetox")


# --------------------------------------------------------------------------------------------- data

def read_paradetox_tsv(path: Path) -> list[dict]:
    """Rows of the English ParaDetox TSV: ``toxic`` and the non-empty ``neutral1..3`` (a list).

    The file quotes the few fields that hold a line break (CSV quoting, tab-separated), so it is read
    as CSV: 11,927 records in 11,935 lines. Whitespace runs (those line breaks among them) become one space.
    """
    if not path.is_file():
        raise SystemExit(f"missing {path}: the data mirror must hold paradetox_en/paradetox.tsv "
                         "(columns toxic, neutral1, neutral2, neutral3)")
    rows = []
    with path.open(encoding="utf-8", newline="") as fh:
        reader = csv.DictReader(fh, delimiter="\t")
        need = {"toxic", "neutral1"}
        if not reader.fieldnames or not need <= set(reader.fieldnames):
            raise SystemExit(f"{path} has columns {reader.fieldnames}; expected toxic, neutral1[, neutral2, neutral3]")
        for row in reader:
            toxic = " ".join((row.get("toxic") or "").split())
            neutrals = [" ".join((row.get(f"neutral{i}") or "").split()) for i in (1, 2, 3)]
            neutrals = [n for n in neutrals if n]
            rows.append({"toxic": toxic, "neutrals": neutrals})
    return rows


def read_eval_texts(root: Path) -> dict[str, set[str]]:
    """The normalised English evaluation texts of both families, per source file, read as the tasks read
    them (:func:`safespace_tasks.data.load_rows`: a missing file or column stops with its name)."""
    out = {}
    for spec in (PARADETOX, TOXICITY):
        text_columns = [c for c, kind in spec.columns.items() if kind is str]
        out[f"{spec.folder}/en.jsonl"] = {normalise(r[c]) for r in load_rows(spec.hub_id, "en", root)
                                          for c in text_columns if r[c].strip()}
    return out


def build_pairs(rows: list[dict], eval_texts: dict[str, set[str]], *, n_pairs: int, seed: int) -> tuple[list[dict], dict]:
    """Preference pairs (chosen = a neutral rewrite, rejected = the toxic original) that share no text
    with the evaluation sets, and the counts of what was dropped and why.

    A row with an empty toxic text or no rewrite, or whose toxic text equals its rewrite, is unusable.
    A row is an *overlap* when its toxic text or any of its rewrites equals an evaluation text after
    :func:`normalise`; it is dropped (all its rewrites with it). Of the rest, ``n_pairs`` rows are drawn
    with ``seed`` and each gets one of its rewrites at random (same seed).
    """
    every_eval = set().union(*eval_texts.values())
    counts = {"rows": len(rows), "unusable": 0, "overlap_dropped": 0,
              "overlap_by_source": {k: 0 for k in eval_texts}}
    kept = []
    for row in rows:
        neutrals = [n for n in row["neutrals"] if normalise(n) and normalise(n) != normalise(row["toxic"])]
        if not normalise(row["toxic"]) or not neutrals:
            counts["unusable"] += 1
            continue
        texts = {normalise(row["toxic"]), *(normalise(n) for n in row["neutrals"])}
        if texts & every_eval:
            counts["overlap_dropped"] += 1
            for source, held in eval_texts.items():
                if texts & held:
                    counts["overlap_by_source"][source] += 1
            continue
        kept.append({"toxic": row["toxic"], "neutrals": neutrals})
    counts["clean_rows"] = len(kept)
    if n_pairs > len(kept):
        raise SystemExit(f"--pairs {n_pairs} exceeds the {len(kept)} ParaDetox rows that share no text with "
                         "the evaluation sets: ask for fewer")
    rng = random.Random(seed)
    chosen_rows = rng.sample(kept, n_pairs)
    pairs = [{"chosen": rng.choice(r["neutrals"]), "rejected": r["toxic"]} for r in chosen_rows]
    assert_no_overlap(pairs, every_eval)
    counts["pairs"] = len(pairs)
    return pairs, counts


def assert_no_overlap(pairs: list[dict], eval_texts: set[str]) -> None:
    """Raise :class:`TrainEvalOverlapError` if a chosen or rejected text is an evaluation text.

    An explicit raise, not ``assert``: it must fire under ``python -O`` too.
    """
    shared = sorted({normalise(p[k]) for p in pairs for k in ("chosen", "rejected")} & eval_texts)
    if shared:
        raise TrainEvalOverlapError(
            f"{len(shared)} training text(s) are also evaluation texts (normalised exact match), e.g. "
            f"{shared[:3]}: remove them from the training pairs")


# ------------------------------------------------------------------------------------------ DPO

def encode_pairs(tok, pairs: list[dict], *, prompt: str, max_length: int) -> tuple[list[dict], int]:
    """Token ids of prompt + chosen and prompt + rejected, with the index where the response starts.

    The prompt is tokenized with the tokenizer's special tokens (BOS) and the response without, apart,
    so no token straddles the boundary. Responses are cut to fit ``max_length``; the number of pairs
    where either side was cut is returned beside the encodings.
    """
    p_ids = tok(prompt, add_special_tokens=True)["input_ids"]
    if len(p_ids) >= max_length:
        raise ValueError(f"the prompt fills --max-length {max_length}: raise it or shorten --prompt")
    out, cut = [], 0
    for pair in pairs:
        enc = {}
        for side in ("chosen", "rejected"):
            r_ids = tok(pair[side], add_special_tokens=False)["input_ids"]
            if not r_ids:
                raise ValueError(f"the {side} text {pair[side]!r} has no tokens")
            room = max_length - len(p_ids)
            cut_here = len(r_ids) > room
            enc[side] = (p_ids + r_ids[:room], len(p_ids))
            enc[f"{side}_cut"] = cut_here
        cut += enc["chosen_cut"] or enc["rejected_cut"]
        out.append(enc)
    return out, cut


def _token_logps(model, seqs: list[tuple[list[int], int]], pad_id: int, device):
    """Log-probability of every next token of each sequence (right padding) and the mask of the
    response tokens among them (shape batch x (width - 1))."""
    import torch

    width = max(len(ids) for ids, _ in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    resp = torch.zeros((len(seqs), width), dtype=torch.bool)
    for row, (x, start) in enumerate(seqs):
        ids[row, :len(x)] = torch.tensor(x)
        mask[row, :len(x)] = 1
        resp[row, start:len(x)] = True
    ids, mask, resp = ids.to(device), mask.to(device), resp.to(device)
    logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
    logp = torch.log_softmax(logits, dim=-1).gather(-1, ids[:, 1:, None]).squeeze(-1)
    return logp, resp[:, 1:]


def sequence_logps(model, seqs: list[tuple[list[int], int]], pad_id: int, device) -> "torch.Tensor":
    """Sum of the log-probabilities of the response tokens of each sequence (right padding)."""
    logp, resp = _token_logps(model, seqs, pad_id, device)
    return (logp * resp).sum(-1)


def sft_loss(model, seqs: list[tuple[list[int], int]], pad_id: int, device) -> "torch.Tensor":
    """Supervised next-token loss: the mean of -log p(token) over every response token of the batch
    (the prompt and the padding are not trained on), as a causal LM's loss with labels masked to them."""
    logp, resp = _token_logps(model, seqs, pad_id, device)
    return -(logp * resp).sum() / resp.sum()


def pair_logps(model, batch: list[dict], pad_id: int, device):
    """(chosen, rejected) response log-probabilities of a batch of encoded pairs, one forward pass."""
    logps = sequence_logps(model, [e["chosen"] for e in batch] + [e["rejected"] for e in batch], pad_id, device)
    return logps[:len(batch)], logps[len(batch):]


def dpo_loss(pi_c, pi_r, ref_c, ref_r, beta: float):
    """DPO loss per pair: -log sigmoid(beta * ((pi_c - ref_c) - (pi_r - ref_r)))."""
    import torch.nn.functional as F

    return -F.logsigmoid(beta * ((pi_c - ref_c) - (pi_r - ref_r)))


def reference_logps(model, encoded: list[dict], pad_id: int, device, batch_size: int):
    """The frozen model's (chosen, rejected) log-probabilities for every pair, computed once."""
    import torch

    model.eval()
    ref_c, ref_r = [], []
    with torch.no_grad():
        for start in range(0, len(encoded), batch_size):
            c, r = pair_logps(model, encoded[start:start + batch_size], pad_id, device)
            ref_c.append(c.cpu())
            ref_r.append(r.cpu())
    return torch.cat(ref_c), torch.cat(ref_r)


def mean_dpo_loss(model, encoded, ref, pad_id, device, *, beta: float, batch_size: int) -> float:
    """Mean DPO loss of ``model`` over ``encoded`` against the reference log-probabilities ``ref``."""
    import torch

    model.eval()
    total = 0.0
    with torch.no_grad():
        for start in range(0, len(encoded), batch_size):
            c, r = pair_logps(model, encoded[start:start + batch_size], pad_id, device)
            sl = slice(start, start + len(c))
            total += dpo_loss(c.cpu(), r.cpu(), ref[0][sl], ref[1][sl], beta).sum().item()
    return total / len(encoded)


ARMS = ("dpo", "swap", "sft")


def swap_pairs(pairs: list[dict], seed: int) -> tuple[list[dict], list[bool]]:
    """The swap control's pairs: chosen and rejected exchanged in each pair with probability 1/2
    (its own random stream from ``seed``), so the preferences hold no consistent direction.
    Returns the pairs and, per pair, whether it was swapped."""
    rng = random.Random(f"swap-{seed}")
    flags = [rng.random() < 0.5 for _ in pairs]
    out = [{"chosen": p["rejected"], "rejected": p["chosen"]} if f else dict(p) for p, f in zip(pairs, flags)]
    return out, flags


def epochs_to_steps(epochs: float, n_pairs: int, batch_size: int) -> int:
    """Optimizer steps of ``epochs`` passes over ``n_pairs`` pairs, ``batch_size`` per step (rounded up)."""
    return math.ceil(round(epochs * n_pairs / batch_size, 9)) if epochs > 0 else 0


def parse_doses(spec: str, *, n_pairs: int, batch_size: int) -> list[dict]:
    """``--eval-at``: comma-separated doses, a plain number in epochs (``0,0.25,0.5,1,2``) or a whole
    number of optimizer steps with the suffix ``s`` (``0,10s,40s``). Sorted by step; 0 is the base model."""
    doses = []
    for raw in spec.split(","):
        tok = raw.strip().lower()
        if not tok:
            continue
        try:
            if tok.endswith("steps") or tok.endswith("s"):
                steps = int(tok.removesuffix("steps").removesuffix("s"))
                if steps < 0:
                    raise ValueError
                epochs = steps * batch_size / n_pairs
                label = "base" if steps == 0 else f"step{steps}"
            else:
                epochs = float(tok.removesuffix("ep"))
                if not math.isfinite(epochs) or epochs < 0:
                    raise ValueError
                steps = epochs_to_steps(epochs, n_pairs, batch_size)
                label = "base" if steps == 0 else f"ep{epochs:g}"
        except ValueError:
            raise SystemExit(f"--eval-at: {raw.strip()!r} is not a dose; give epochs (0.5, 1, 2) or steps (40s), "
                             "comma-separated") from None
        doses.append({"label": label, "epochs": epochs, "steps": steps})
    if not doses or max(d["steps"] for d in doses) == 0:
        raise SystemExit("--eval-at names no dose beyond 0: give at least one number of epochs or steps above 0")
    doses.sort(key=lambda d: d["steps"])
    for a, b in zip(doses, doses[1:]):
        if a["steps"] == b["steps"]:
            raise SystemExit(f"--eval-at: doses {a['label']} and {b['label']} are both step {a['steps']} "
                             f"({n_pairs} pairs, {batch_size} per step): keep one")
    return doses


def train(model, tok, pairs: list[dict], *, arm: str = "dpo", beta: float, lr: float, batch_size: int,
          epochs: float | None = None, steps: int | None = None, max_length: int, prompt: str, seed: int, device,
          freeze_embeddings: bool = False, on_step=None, log=print) -> dict:
    """Train ``model`` in place: DPO on the pairs (``arm`` dpo, or swap with pairs already swapped), or
    supervised fine-tuning on the chosen texts only (``sft``). Every arm takes the same optimizer (AdamW,
    10 % linear warm-up, gradient norm clipped at 1), the same number of steps and the same batches of
    pair indices. ``steps`` (or ``epochs`` passes over the pairs) sets the length; ``on_step(step, model)``
    is called after every optimizer step (1-based). Returns losses, reward margins, counts and seconds."""
    import torch

    if arm not in ARMS:
        raise ValueError(f"arm {arm!r}: choose one of {', '.join(ARMS)}")
    torch.manual_seed(seed)
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    encoded, n_cut = encode_pairs(tok, pairs, prompt=prompt, max_length=max_length)
    t0 = time.perf_counter()
    ref = reference_logps(model, encoded, pad_id, device, batch_size) if arm != "sft" else None
    t_ref = time.perf_counter() - t0
    frozen = 0
    if freeze_embeddings:
        for emb in {model.get_input_embeddings(), model.get_output_embeddings()} - {None}:
            for p in emb.parameters():
                frozen += p.numel() if p.requires_grad else 0
                p.requires_grad_(False)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    if steps is None:
        steps = max(1, epochs_to_steps(1.0 if epochs is None else epochs, len(encoded), batch_size))
    n_steps = int(steps)
    warmup = max(1, n_steps // 10)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warmup))
    rng = random.Random(seed + 1)
    order: list[int] = []
    while len(order) < n_steps * batch_size:
        block = list(range(len(encoded)))
        rng.shuffle(block)
        order += block
    model.train()
    losses, margins, accs = [], [], []
    t1 = time.perf_counter()
    for step in range(n_steps):
        idx = order[step * batch_size:(step + 1) * batch_size]
        if arm == "sft":
            loss = sft_loss(model, [encoded[i]["chosen"] for i in idx], pad_id, device)
        else:
            c, r = pair_logps(model, [encoded[i] for i in idx], pad_id, device)
            rc, rr = ref[0][idx].to(c.device), ref[1][idx].to(c.device)
            loss = dpo_loss(c, r, rc, rr, beta).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        losses.append(loss.item())
        if arm != "sft":
            margin = beta * ((c - rc) - (r - rr)).detach()
            margins.append(margin.mean().item())
            accs.append((margin > 0).float().mean().item())
        if step % 10 == 0 or step == n_steps - 1:
            extra = f"  margin {margins[-1]:+.3f}" if margins else ""
            log(f"  step {step + 1}/{n_steps}  loss {losses[-1]:.4f}{extra}  {time.perf_counter() - t1:.0f}s")
        if on_step is not None:
            model.eval()
            on_step(step + 1, model)
            model.train()
    model.eval()
    for p in model.parameters():
        p.requires_grad_(True)
    return {"arm": arm, "loss": "sft: mean next-token loss on the response tokens" if arm == "sft" else
            "dpo: -log sigmoid(beta * margin)", "steps": n_steps, "pairs": len(encoded),
            "pairs_cut_to_max_length": n_cut, "frozen_embedding_params": frozen,
            "trained_params": sum(p.numel() for p in params), "losses": losses,
            "reward_margins": margins if arm != "sft" else None, "reward_accuracies": accs if arm != "sft" else None,
            "reference_seconds": t_ref, "train_seconds": time.perf_counter() - t1}


def train_dpo(model, tok, pairs: list[dict], **kwargs) -> dict:
    """:func:`train` with ``arm="dpo"``."""
    return train(model, tok, pairs, arm="dpo", **kwargs)


# ------------------------------------------------------------------------------------- evaluation

def _subprocess_env(data_dir: Path, threads: int) -> dict:
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "SAFESPACE_DATA_DIR": str(data_dir),
           "OMP_NUM_THREADS": str(threads)}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


def run_eval(model_dir: Path, out: Path, *, tasks: str, limit: int | None, device: str, dtype: str,
             batch_size: str, metadata: str | None, env: dict, log=print) -> Path:
    """``safespace-eval`` on one model into ``out``; returns the model's results folder."""
    code = ("import sys; from safespace_tasks.cli import eval_main; "
            "sys.argv = ['safespace-eval', *sys.argv[1:]]; eval_main()")
    cmd = [sys.executable, "-c", code, "--model", "hf", "--model_args", f"pretrained={model_dir},dtype={dtype}",
           "--device", device, "--batch_size", str(batch_size), "--tasks", tasks, "--output_path", str(out)]
    if limit:
        cmd += ["--limit", str(limit)]
    if metadata:
        cmd += ["--metadata", metadata]
    out.mkdir(parents=True, exist_ok=True)
    log("  $ safespace-eval " + " ".join(cmd[3:]))
    proc = subprocess.run(cmd, env=env, cwd=out, capture_output=True, text=True)
    (out / "safespace-eval.log").write_text(proc.stdout + "\n--- stderr ---\n" + proc.stderr, encoding="utf-8")
    if proc.returncode != 0:
        raise SystemExit(f"safespace-eval failed on {model_dir} (status {proc.returncode}); its output is in "
                         f"{out / 'safespace-eval.log'}:\n{proc.stderr[-3000:]}")
    folders = sorted({p.parent for p in out.glob("*/results_*.json")})
    if len(folders) != 1:
        raise SystemExit(f"expected one model folder with results under {out}, found {folders}: "
                         "give each run its own empty folder")
    return folders[0]


def run_report(base: Path, aligned: dict[str, Path], out: Path, *, env: dict, html: bool, plots: bool,
               log=print) -> dict:
    """``safespace report`` with ``base`` (label ``base``) and each aligned run under its label; returns
    the summary JSON's content (one gain entry per aligned run, all against the base)."""
    cmd = [sys.executable, "-m", "safespace_tasks.cli", "report", str(base), *map(str, aligned.values()),
           "--label", f"base={base}", "--base", "base", "--out", str(out), "--quiet"]
    for label, run in aligned.items():
        cmd += ["--label", f"{label}={run}", "--aligned", label]
    cmd += ["--html"] if html else []
    cmd += [] if plots else ["--no-plots"]
    log("  $ safespace " + " ".join(cmd[3:]))
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    (out.parent / "report.log").write_text(proc.stdout + "\n--- stderr ---\n" + proc.stderr, encoding="utf-8")
    if proc.returncode != 0:
        raise SystemExit(f"safespace report failed (status {proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads((out / "summary.json").read_text())


GAIN_METRICS = ("bcv_ratio", "bhattacharyya", "bhattacharyya_mean_term", "bhattacharyya_cov_term", "silhouette",
                "probe_auroc")


def gain_rows(summary: dict, metrics=GAIN_METRICS, aligned: str | None = None) -> list[dict]:
    """One row per family and language: base and aligned value of each metric, the gain and its interval.

    Read from the report's ``summary.json``: the gain entry of the run labelled ``aligned`` (default:
    the first); a number the report lacks is None.
    """
    if not summary.get("gains"):
        return []
    entries = [g for g in summary["gains"] if aligned is None or g["aligned"] == aligned]
    if not entries:
        raise SystemExit(f"the report holds no gain of {aligned!r}")
    gain = entries[0]
    base, aligned_m = summary["models"][gain["base"]], summary["models"][gain["aligned"]]
    rows = []
    for family, fam in gain["families"].items():
        langs = base["families"].get(family, {}).get("languages", [])
        for lang in langs:
            row = {"family": family, "language": lang}
            for m in metrics:
                g = fam.get(m, {}).get("per_language", {}).get(lang) or {}
                row[m] = {
                    "base": base["families"][family]["metrics"].get(m, {}).get("per_language", {}).get(lang),
                    "aligned": aligned_m["families"].get(family, {}).get("metrics", {}).get(m, {})
                    .get("per_language", {}).get(lang),
                    "gain": g.get("gain"), "ci": g.get("ci"), "method": g.get("method"),
                }
            rows.append(row)
    return rows


def format_rows(rows: list[dict], metric: str = "probe_auroc") -> str:
    def num(x):
        return "-" if x is None else f"{x:.3f}"

    lines = [f"{metric}: family  lang  base  aligned  gain  [95 % interval]"]
    for r in rows:
        v = r[metric]
        ci = v["ci"] or [None, None]
        lines.append(f"  {r['family']:<22} {r['language']:<4} {num(v['base'])}  {num(v['aligned'])}  "
                     f"{num(v['gain'])}  [{num(ci[0])}, {num(ci[1])}]")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------- command

def default_device() -> str:
    import torch

    return "cuda:0" if torch.cuda.is_available() else "cpu"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out", help="folder for the checkpoints, the runs, the report and replication.json")
    p.add_argument("--model", help="the base model folder or Hub id (default: `safespace model-path gemma-3-270m`)")
    p.add_argument("--data-dir", help="data mirror (default: $SAFESPACE_DATA_DIR)")
    p.add_argument("--seed", type=int, default=0,
                   help="seeds the pair draw, the rewrite choice, the batch order, the swap control's swaps and torch")
    p.add_argument("--arm", choices=ARMS, default="dpo",
                   help="dpo: the real arm (chosen = neutral rewrite, rejected = toxic original); swap: negative "
                        "control, chosen and rejected exchanged at random in about half the pairs (seeded); sft: "
                        "negative control, next-token loss on the neutral rewrites only. Same pairs, optimizer, "
                        "steps and batches in every arm")
    p.add_argument("--pairs", type=int, default=600,
                   help="English preference pairs drawn, the data volume of every arm (default 600)")
    p.add_argument("--epochs", type=float, default=None,
                   help="passes over the pairs (default 1; with --eval-at: its largest dose)")
    p.add_argument("--eval-at", metavar="DOSES",
                   help="dose-response: comma-separated doses in epochs (0,0.25,0.5,1,2) or optimizer steps "
                        "(0,10s,40s); training runs to the largest, a checkpoint is saved at each and evaluated "
                        "with the same tasks and texts; 0 is the base model (evaluated once in any case). "
                        "Default: the final dose only")
    p.add_argument("--keep-checkpoints", action="store_true",
                   help="keep every dose's checkpoint (default: delete each after its evaluation, keep the last)")
    p.add_argument("--beta", type=float, default=0.1, help="DPO temperature")
    p.add_argument("--lr", type=float, default=1e-5, help="AdamW learning rate (default 1e-5)")
    p.add_argument("--batch-size", type=int, default=8, help="pairs per step")
    p.add_argument("--max-length", type=int, default=96, help="tokens per prompt + response (response cut to fit)")
    p.add_argument("--prompt", default="", help="text before every response (default: none, only the BOS token)")
    p.add_argument("--freeze-embeddings", action="store_true",
                   help="keep the (tied) token embeddings out of training (default: every parameter is trained, as "
                        "real preference tuning does). On gemma-3-270m the embedding is 168 M of 268 M parameters: "
                        "freezing it saves about 2 GB of optimizer memory and about a third of the training time "
                        "(21 instead of 31 min for 600 pairs x 1 epoch on 2 CPU cores) with the same English gain")
    p.add_argument("--train-embeddings", action="store_true", help="deprecated, no effect: every parameter is "
                                                                   "trained by default (see --freeze-embeddings)")
    p.add_argument("--device", default=None, help="cuda:0 when CUDA is present, else cpu")
    p.add_argument("--dtype", default=None, choices=("float32", "bfloat16", "float16"),
                   help="model dtype of the evaluation (default float32 on CPU, bfloat16 on CUDA); "
                        "training is always float32")
    p.add_argument("--tasks", default=",".join(FAMILIES), help="safespace-eval --tasks (default: both families)")
    p.add_argument("--limit", type=int, default=100, help="texts per language in the evaluation (paradetox: N // 2 whole pairs); 0: all")
    p.add_argument("--eval-batch-size", default="16", help="safespace-eval --batch_size (a number or auto)")
    p.add_argument("--metadata", help="safespace-eval --metadata JSON (e.g. '{\"bootstrap_iters\": 200}')")
    p.add_argument("--base-run", help="reuse the base model's results folder of an earlier run of this script "
                                      "(same --tasks, --limit and --metadata) instead of evaluating it again")
    p.add_argument("--no-plots", action="store_true", help="report tables and summary only")
    p.add_argument("--html", action="store_true", help="also write report.html")
    p.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "2")))
    args = p.parse_args(argv)
    if args.train_embeddings:
        print("note: --train-embeddings is deprecated and has no effect: every parameter is trained by default "
              "(--freeze-embeddings keeps the embeddings out)", file=sys.stderr)
    if args.pairs < 1 or args.batch_size < 1:
        p.error("--pairs and --batch-size must be at least 1")
    if args.eval_at is None:
        epochs = 1.0 if args.epochs is None else args.epochs
        if epochs <= 0:
            p.error("--epochs must be above 0")
        args.eval_at = f"{epochs:g}"
    args.doses = parse_doses(args.eval_at, n_pairs=args.pairs, batch_size=args.batch_size)
    last = args.doses[-1]
    if args.epochs is not None and epochs_to_steps(args.epochs, args.pairs, args.batch_size) != last["steps"]:
        p.error(f"--epochs {args.epochs:g} and --eval-at (up to {last['label']}) disagree on the length of "
                "training: drop --epochs, the largest dose sets it")
    args.epochs = last["epochs"]
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from safespace_tasks.report.dose import dose_response, plot_dose_response

    t_all = time.perf_counter()
    seconds: dict[str, float] = {}
    torch.set_num_threads(args.threads)
    random.seed(args.seed)
    torch.manual_seed(args.seed)
    device = args.device or default_device()
    dtype = args.dtype or ("bfloat16" if device.startswith("cuda") else "float32")
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    data_dir = require_data_dir(args.data_dir)

    t = time.perf_counter()
    if args.model is None:
        from safespace_tasks.local_models import prepare

        args.model = str(prepare("gemma-3-270m"))
    tok = AutoTokenizer.from_pretrained(args.model)
    # Training is float32 on every device: a bfloat16 weight cannot take an update of lr 1e-5 (its
    # relative precision is 4e-3), so the step would round away. --dtype is the evaluation's dtype.
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32).to(device)
    seconds["load"] = time.perf_counter() - t
    print(f"base model {args.model} on {device} (float32 for training, {dtype} for evaluation): {seconds['load']:.0f}s")

    t = time.perf_counter()
    eval_texts = read_eval_texts(data_dir)
    pairs, counts = build_pairs(read_paradetox_tsv(data_dir / "paradetox_en" / "paradetox.tsv"), eval_texts,
                                n_pairs=args.pairs, seed=args.seed)
    if args.arm == "swap":
        pairs, flags = swap_pairs(pairs, args.seed)
        counts["swapped"] = sum(flags)
    seconds["pairs"] = time.perf_counter() - t
    print(f"ParaDetox English: {counts['rows']} rows, {counts['unusable']} unusable, "
          f"{counts['overlap_dropped']} dropped for sharing a text with the evaluation sets "
          f"({counts['overlap_by_source']}); {counts['pairs']} pairs drawn from {counts['clean_rows']}; "
          "overlap of the training pairs with the evaluation texts: 0 (checked)"
          + (f"; swap control: {counts['swapped']} of {len(pairs)} pairs swapped" if args.arm == "swap" else ""))

    doses = args.doses
    trained = [d for d in doses if d["steps"] > 0]
    final = trained[-1]
    ckpt_of = {d["steps"]: (out / "aligned" if d is final else out / "checkpoints" / d["label"]) for d in trained}
    save_seconds = [0.0]

    def on_step(step, m):
        if step in ckpt_of:
            ts = time.perf_counter()
            m.save_pretrained(ckpt_of[step])
            tok.save_pretrained(ckpt_of[step])
            save_seconds[0] += time.perf_counter() - ts
            print(f"  checkpoint at step {step}: {ckpt_of[step]}")

    what = {"dpo": "DPO", "swap": "DPO (swap control)", "sft": "SFT on the neutral rewrites"}[args.arm]
    print(f"{what}: {len(pairs)} pairs, lr {args.lr}, batch {args.batch_size}, {final['steps']} steps "
          f"({args.epochs:g} epoch(s)), doses {', '.join(d['label'] for d in doses)}"
          + ("" if args.arm == "sft" else f", beta {args.beta}")
          + (", embeddings frozen" if args.freeze_embeddings else ", every parameter trained"))
    info = train(model, tok, pairs, arm=args.arm, beta=args.beta, lr=args.lr, batch_size=args.batch_size,
                 steps=final["steps"], max_length=args.max_length, prompt=args.prompt, seed=args.seed, device=device,
                 freeze_embeddings=args.freeze_embeddings, on_step=on_step)
    seconds["reference_logps"] = info["reference_seconds"]
    seconds["train"] = info["train_seconds"] - save_seconds[0]
    seconds["save"] = save_seconds[0]
    for d in trained:
        (ckpt_of[d["steps"]] / "training.json").write_text(json.dumps({**info, "dose": d}, indent=1))
    del model
    if device.startswith("cuda"):
        torch.cuda.empty_cache()

    env = _subprocess_env(data_dir, args.threads)
    eval_kw = dict(tasks=args.tasks, limit=args.limit or None, device=device, dtype=dtype,
                   batch_size=args.eval_batch_size, metadata=args.metadata, env=env)
    if args.base_run:
        base_run = Path(args.base_run).resolve()
        if not list(base_run.glob("results_*.json")):
            raise SystemExit(f"--base-run {base_run} holds no results_*.json: give the base model's results folder")
        print(f"base model evaluation: reused {base_run}")
    else:
        t = time.perf_counter()
        print("evaluating the base model")
        base_run = run_eval(Path(args.model), out / "runs" / "base", **eval_kw)
        seconds["eval_base"] = time.perf_counter() - t
    runs: dict[str, Path] = {}
    for d in trained:
        t = time.perf_counter()
        print(f"evaluating dose {d['label']} (step {d['steps']})")
        runs[d["label"]] = run_eval(ckpt_of[d["steps"]], out / "runs" / d["label"], **eval_kw)
        seconds[f"eval_{d['label']}"] = time.perf_counter() - t
        d["checkpoint"] = str(ckpt_of[d["steps"]])
        d["checkpoint_kept"] = d is final or args.keep_checkpoints
        if not d["checkpoint_kept"]:
            shutil.rmtree(ckpt_of[d["steps"]])
    for d in doses:
        if d["steps"] > 0:
            first = next(i for i, x in enumerate(trained) if x is d)
            lo = trained[first - 1]["steps"] if first else 0
            d["mean_loss"] = float(sum(info["losses"][lo:d["steps"]]) / (d["steps"] - lo))

    t = time.perf_counter()
    print("report")
    summary = run_report(base_run, runs, out / "report", env=env, html=args.html, plots=not args.no_plots)
    table = dose_response(summary, "base", [{"label": "base", "epochs": 0.0, "steps": 0}, *trained])
    plots = [] if args.no_plots else plot_dose_response(table, out / "report" / "img")
    seconds["report"] = time.perf_counter() - t
    seconds["total"] = time.perf_counter() - t_all

    result = {
        "format": "safespace-replication", "format_version": 2,
        "arm": args.arm,
        "base_model": args.model, "aligned_model": str(out / "aligned"), "device": device,
        "train_dtype": "float32", "eval_dtype": dtype,
        "settings": {k: getattr(args, k) for k in ("arm", "seed", "pairs", "epochs", "eval_at", "beta", "lr",
                                                   "batch_size", "max_length", "prompt", "freeze_embeddings", "tasks",
                                                   "limit", "eval_batch_size", "metadata", "threads")},
        "data": counts,
        "doses": doses,
        "training": {k: v for k, v in info.items() if k not in ("reference_seconds", "train_seconds")},
        "seconds": seconds,
        "runs": {"base": str(base_run), **{k: str(v) for k, v in runs.items()}},
        "report": str(out / "report" / "report.md"),
        "plots": [str(p) for p in plots],
        "gains": gain_rows(summary, aligned=final["label"]),
        "dose_response": table,
    }
    (out / "replication.json").write_text(json.dumps(result, indent=1))
    for metric in ("bcv_ratio", "probe_auroc"):
        print(format_rows(result["gains"], metric))
    print(format_doses(table))
    print("seconds: " + ", ".join(f"{k} {v:.0f}" for k, v in seconds.items()))
    print(f"report: {out / 'report' / 'report.md'}   summary: {out / 'replication.json'}")
    return result


def format_doses(table: dict, metric: str = "bcv_ratio") -> str:
    """English gain and English-minus-rest gain of ``metric`` at each dose, per family."""
    def num(x):
        return "-" if x is None else f"{x:+.3f}"

    lines = [f"{metric} by dose: family  dose  en gain [95 % interval]  en - rest [95 % interval]"]
    for fam, metrics in table["families"].items():
        if metric not in metrics:
            continue
        en = metrics[metric]["per_language"].get("en")
        for i, d in enumerate(table["doses"]):
            gap = metrics[metric]["english_minus_rest_gain"][i]
            g = en[i] if en else {}
            gci, cci = g.get("gain_ci") or [None, None], gap.get("ci") or [None, None]
            lines.append(f"  {fam:<10} {d['label']:<8} {num(g.get('gain'))} [{num(gci[0])}, {num(gci[1])}]  "
                         f"{num(gap.get('value'))} [{num(cci[0])}, {num(cci[1])}]")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.stdout.reconfigure(line_buffering=True)
    main()
