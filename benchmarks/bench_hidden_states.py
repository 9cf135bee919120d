"""Speed and memory of the hidden-state path, against its limit and against the harness's own path.

One process, one random-weight Llama of a named shape (built from a config, nothing downloaded),
one sample of real texts of the toxicity set (real prompt lengths), one device. Paths:

  a  our ``pooled_hidden_states`` requests through lm-eval's ``HFLM``, end to end (tokenization,
     sorting, batching, padding, capture, results)
  b  the limit: the same token batches, already padded and on the device, through the decoder
     stack only, with one hook on the final norm that keeps the last token and stops the pass
  c  the harness's own ``loglikelihood`` requests on the same texts: each text is the continuation
     of an empty context, so the model reads the prefix token plus the text and computes full logits
     (what scoring the text costs; the token count is the same as in a)
  d  a layer-k request through the harness (k = L/2 by default): stops after block k
  e  reference: a plain ``model(..., output_hidden_states=True)`` on the batches of b (logits too)
  n  noise floor: path b again, as a separate path; n/b would be 1 on a quiet machine, and its
     distance from 1 is the resolution of every other ratio of the run
  h  diagnostic: path a with the forward pass replaced by zeros, i.e. the harness's host work alone
     (tokenization, sorting, batching, padding, result objects); h/b is the share of the limit's
     time that a adds on a device where nothing overlaps it

Repetitions are interleaved (a b c d e, then b c d e a, ...) so that drift in the machine's load
hits every path alike; each ratio is the median over repetitions of the ratio measured within one
repetition. Prints a table and the ratios against their targets, and writes everything as JSON.

    python benchmarks/bench_hidden_states.py --mode cpu --shape small --n-texts 64 --out bench.json
    python benchmarks/bench_hidden_states.py --mode gpu --shape 8b --n-texts 4096 --batch-size 32 --out h100_8b.json
"""

from __future__ import annotations

import argparse
import gc
import logging
import math
import os
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402  (adds the checkout to sys.path)

import numpy as np  # noqa: E402
import torch  # noqa: E402

# Llama shapes (Llama-3.2-1B, Llama-3.1-8B) and a small one for CPUs whose LM head still dominates
# the logits path, as in the 1B shape (vocab / hidden: small 192, 1B 63, 8B 31).
SHAPES: dict[str, dict[str, Any]] = {
    "small": dict(hidden_size=256, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
                  intermediate_size=1024, vocab_size=49152, tie_word_embeddings=False),
    "1b": dict(hidden_size=2048, num_hidden_layers=16, num_attention_heads=32, num_key_value_heads=8,
               intermediate_size=8192, vocab_size=128256, tie_word_embeddings=True),
    "8b": dict(hidden_size=4096, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8,
               intermediate_size=14336, vocab_size=128256, tie_word_embeddings=False),
}
MAX_POSITIONS = 4096  # longer than every text of the set under the tokenizers used here: nothing is cut

# Targets of issue 6: throughput ratios (higher is better) and the memory ratio (lower is better).
TARGET_A_OVER_B = 0.95
TARGET_A_OVER_C = {"small": 2.0, "1b": 2.0, "8b": 1.35}
TARGET_MEM_A_OVER_B = 1.10
D_OVER_B_BAND = (0.80, 1.20)  # d/b within this band of L/k counts as "about L/k"

# Issue 6's baselines (one H100, bf16, random weights, prompt lengths of the toxicity set), tok/s:
# path c ~ full logits, e = output_hidden_states, b = decoder + hook, b_mid = the same stopped
# after the middle layer (compare with d at k = L/2). Printed beside a GPU run of the same shape.
ANCHOR_TOK_S = {
    "1b": {"c": 61.9e3, "e": 126.6e3, "b": 148.8e3, "d": 283.7e3},
    "8b": {"c": 21.9e3, "e": 28.6e3, "b": 30.4e3, "d": 52.0e3},
}
ANCHOR_8B_PEAK_GIB = {"c": 37.5, "e": 52.9, "b": 24.9, "d": 26.5}

PATHS = {
    "a": "harness pooled_hidden_states (final layer)",
    "b": "limit: decoder only + hook, last token",
    "c": "harness loglikelihood (full logits)",
    "d": "harness pooled_hidden_states (layer k)",
    "e": "reference: output_hidden_states=True",
    "n": "noise floor: the limit b, run again",
    "h": "diagnostic: harness host work (a, no forward)",
    "A": "harness pooled_hidden_states, batch_size auto (one call)",
}


# --------------------------------------------------------------------------- inputs


def sample_texts(n: int, seed: int, data_dir: str | None) -> tuple[list[str], list[str]]:
    """``n`` non-empty texts of the toxicity set, spread evenly over its languages (seeded)."""
    from safespace_tasks.data import TOXICITY, load_rows

    rng = np.random.default_rng(seed)
    langs = list(TOXICITY.languages)
    quota = [n // len(langs) + (i < n % len(langs)) for i in range(len(langs))]
    texts, text_langs = [], []
    for lang, q in zip(langs, quota):
        if q == 0:
            continue
        rows = [r["text"] for r in load_rows(TOXICITY.hub_id, lang, data_dir) if r["text"].strip()]
        pick = rng.choice(len(rows), size=min(q, len(rows)), replace=False)
        texts += [rows[i] for i in pick]
        text_langs += [lang] * len(pick)
    order = rng.permutation(len(texts))
    return [texts[i] for i in order], [text_langs[i] for i in order]


def train_bpe(data_dir: str | None, seed: int, per_language: int = 400, vocab_size: int = 32000):
    """A byte-level BPE trained on a sample of the set itself (a stand-in when no real tokenizer is at hand)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    texts, _ = sample_texts(per_language * 15, seed + 7, data_dir)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<pad>", "<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>")


def load_tokenizer(spec: str, data_dir: str | None, seed: int):
    """``auto``: SmolLM2's tokenizer if ``safespace model-path`` has prepared it, else ``bpe``;
    ``bpe``: trained on the set; anything else: a folder or Hub id for ``AutoTokenizer``."""
    from transformers import AutoTokenizer

    if spec == "auto":
        from safespace_tasks.local_models import cache_root

        folder = cache_root() / "smollm2-135m-instruct"
        if (folder / "tokenizer.json").is_file():
            tok = AutoTokenizer.from_pretrained(folder)
            return tok, f"SmolLM2-135M-Instruct ({len(tok)} tokens, from the safespace model cache)"
        spec = "bpe"
    if spec == "bpe":
        tok = train_bpe(data_dir, seed)
        return tok, f"byte-level BPE ({len(tok)} tokens) trained on 400 texts per language of the set"
    tok = AutoTokenizer.from_pretrained(spec)
    return tok, f"{spec} ({len(tok)} tokens)"


def build_model(shape: str, tokenizer, device: torch.device, dtype: torch.dtype, seed: int):
    from transformers import LlamaConfig, LlamaForCausalLM

    dims = dict(SHAPES[shape])
    n_vocab = len(tokenizer)
    if n_vocab > dims["vocab_size"]:
        if shape != "small":
            raise SystemExit(f"the tokenizer has {n_vocab} tokens, more than the {shape} shape's vocabulary "
                             f"({dims['vocab_size']}); pick a tokenizer that fits (e.g. a Llama-3 one).")
        dims["vocab_size"] = n_vocab
    config = LlamaConfig(**dims, max_position_embeddings=MAX_POSITIONS, rope_theta=500000.0,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(seed)
    with torch.device(device):
        model = LlamaForCausalLM._from_config(config, dtype=dtype)
    model.eval()
    n_params = sum(p.numel() for p in model.parameters())
    return model, config, n_params


# --------------------------------------------------------------------------- paths


class _Stop(Exception):
    pass


@dataclass
class Batches:
    """Token batches of path b/e: sorted longest first, padded on the left, already on the device."""

    tensors: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]
    real_tokens: int
    padded_tokens: int


def make_batches(token_lists: list[list[int]], batch_size: int, pad_id: int, device) -> Batches:
    order = sorted(range(len(token_lists)), key=lambda i: (-len(token_lists[i]), i))
    out = []
    padded = 0
    for start in range(0, len(order), batch_size):
        chunk = [token_lists[i] for i in order[start:start + batch_size]]
        width = len(chunk[0])
        ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for row, toks in enumerate(chunk):
            ids[row, width - len(toks):] = torch.tensor(toks)
            mask[row, width - len(toks):] = 1
        pos = (mask.cumsum(1) - 1).clamp(min=0)
        out.append((ids.to(device), mask.to(device), pos.to(device)))
        padded += ids.numel()
    return Batches(out, sum(len(t) for t in token_lists), padded)


def limit_forward(model, batches: Batches) -> torch.Tensor:
    """Path b: decoder stack only, one hook on the final norm, last column (left padding), stop there."""
    decoder = model.model
    kept: list[torch.Tensor] = []

    def hook(module, args, output):
        kept.append(output[:, -1])
        raise _Stop

    handle = decoder.norm.register_forward_hook(hook)
    try:
        with torch.inference_mode():
            for ids, mask, pos in batches.tensors:
                try:
                    decoder(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=False)
                except _Stop:
                    pass
            out = torch.cat(kept).float().cpu()
    finally:
        handle.remove()
    return out


def all_hidden_states_forward(model, batches: Batches) -> torch.Tensor:
    """Path e: the whole model with ``output_hidden_states=True`` (every layer kept, logits computed)."""
    kept = []
    with torch.inference_mode():
        for ids, mask, pos in batches.tensors:
            out = model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=False,
                        output_hidden_states=True)
            kept.append(out.hidden_states[-1][:, -1])
        return torch.cat(kept).float().cpu()


def host_only(lm, requests, hidden_size: int):
    """Path h: the harness path of a with ``capture_pooled`` swapped for a stub that returns zeros."""
    import safespace_tasks.harness.requests as harness_model

    real = harness_model.capture_pooled

    def stub(model, input_ids, attention_mask, layers=(-1,), *args, **kwargs):
        return np.zeros((input_ids.shape[0], len(layers), hidden_size), dtype=np.float32)

    harness_model.capture_pooled = stub
    try:
        return lm.pooled_hidden_states(requests, disable_tqdm=True)
    finally:
        harness_model.capture_pooled = real


def harness_requests(texts: list[str], request_type: str, options: dict | None = None):
    from lm_eval.api.instance import Instance

    if request_type == "loglikelihood":
        return [Instance("loglikelihood", doc={}, arguments=("", t), idx=0, metadata=("bench", i, 1))
                for i, t in enumerate(texts)]
    return [Instance(request_type, doc={}, arguments=(t, dict(options or {})), idx=0, metadata=("bench", i, 1))
            for i, t in enumerate(texts)]


# --------------------------------------------------------------------------- measuring


@dataclass
class Measurement:
    seconds: float
    cpu_seconds: float
    peak_bytes: int
    work_bytes: int


@dataclass
class Device:
    mode: str
    device: torch.device
    threads: int
    memory_method: str = ""

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def recover(self) -> None:
        """After an out-of-memory error: drop cached blocks so the other paths start clean."""
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.empty_cache()

    def measure(self, fn: Callable[[], Any]) -> tuple[Measurement, Any]:
        if self.device.type == "cuda":
            # no empty_cache here: freeing the allocator's cache would put cudaMalloc calls in the timing
            self.sync()
            torch.cuda.reset_peak_memory_stats(self.device)
            base = torch.cuda.memory_allocated(self.device)
            with C.Stopwatch(self.threads) as sw:
                result = fn()
                self.sync()
            peak = torch.cuda.max_memory_allocated(self.device)
            self.memory_method = "torch.cuda.max_memory_allocated"
            return Measurement(sw.wall, sw.cpu, peak, max(0, peak - base)), result
        with C.host_peak_memory() as reading, C.Stopwatch(self.threads) as sw:
            result = fn()
        mem = reading[0]
        self.memory_method = f"host {mem.method} (VmHWM after clear_refs; base = VmRSS after malloc_trim)"
        return Measurement(sw.wall, sw.cpu, mem.peak, mem.work), result


@dataclass
class PathStats:
    """Measurements of one path: ``chunks[r][j]`` is repetition r, chunk j."""

    name: str
    chunks: list[list[Measurement]] = field(default_factory=list)

    def rep_seconds(self, clock: str) -> list[float]:
        attr = "cpu_seconds" if clock == "cpu" else "seconds"
        return [sum(getattr(m, attr) for m in rep) for rep in self.chunks]

    def robust_seconds(self, clock: str) -> float:
        """Sum over chunks of each chunk's median over repetitions: one slow moment of the machine
        spoils one chunk of one repetition, not the total."""
        attr = "cpu_seconds" if clock == "cpu" else "seconds"
        n_chunks = len(self.chunks[0])
        return sum(C.median([getattr(rep[j], attr) for rep in self.chunks]) for j in range(n_chunks))

    def summary(self, tokens: int) -> dict[str, Any]:
        t, tc = self.robust_seconds("wall"), self.robust_seconds("cpu")
        peaks = [max(m.peak_bytes for m in rep) for rep in self.chunks]
        works = [max(m.work_bytes for m in rep) for rep in self.chunks]
        return {
            "what": PATHS[self.name],
            "seconds": t,
            "seconds_per_repetition": self.rep_seconds("wall"),
            "cpu_seconds": tc,
            "cpu_seconds_per_repetition": self.rep_seconds("cpu"),
            "tokens_per_s": tokens / t if t > 0 else float("nan"),
            "tokens_per_cpu_s": tokens / tc if tc > 0 else float("nan"),
            "peak_bytes": int(C.median(peaks)),
            "work_bytes": int(max(works)),
        }


def throughput_ratio(num: PathStats, den: PathStats, clock: str) -> tuple[float, list[float]]:
    """Throughput of ``num`` over that of ``den`` (time of den / time of num): from the robust
    totals, and per repetition (for the spread)."""
    value = den.robust_seconds(clock) / num.robust_seconds(clock)
    per = [d / n for n, d in zip(num.rep_seconds(clock), den.rep_seconds(clock))]
    return value, per


# --------------------------------------------------------------------------- main


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mode", choices=("cpu", "gpu"), default="cpu")
    p.add_argument("--shape", choices=tuple(SHAPES), default=None, help="default: small on cpu, 8b on gpu")
    p.add_argument("--n-texts", type=int, default=None, help="default: 256 on cpu, 4096 on gpu")
    p.add_argument("--batch-size", type=int, default=None, help="default: 16 on cpu, 32 on gpu")
    p.add_argument("--repeats", type=int, default=5, help="interleaved timed repetitions per path")
    p.add_argument("--chunk-batches", type=int, default=None,
                   help="batches per interleaving chunk (default: 1 on cpu, 8 on gpu)")
    p.add_argument("--layer-k", type=int, default=None, help="layer of path d (default: L // 2)")
    p.add_argument("--paths", default="abcdnh",
                   help="paths to run, a subset of aAbcdenh (default abcdnh; e, the output_hidden_states reference, "
                        "is slow on CPU; A, the harness with batch_size auto, runs all texts in one call)")
    p.add_argument("--tokenizer", default="auto", help="auto | bpe | folder or Hub id (AutoTokenizer)")
    p.add_argument("--data-dir", default=None, help="data mirror root (default: $SAFESPACE_DATA_DIR, else ../shared/data beside the checkout, else the Hub)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (cpu mode default 1: on a shared machine more threads wait on each other)")
    p.add_argument("--clock", choices=("wall", "cpu"), default=None,
                   help="time that the ratios use: default cpu (process CPU seconds, robust to other load) in cpu "
                        "mode, wall in gpu mode; both are recorded")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="bench_hidden_states.json")
    args = p.parse_args(argv)
    gpu = args.mode == "gpu"
    args.shape = args.shape or ("8b" if gpu else "small")
    args.n_texts = args.n_texts or (4096 if gpu else 128)
    args.clock = args.clock or ("wall" if gpu else "cpu")
    if gpu and args.clock == "cpu":
        p.error("--clock cpu measures host work only; a GPU run needs --clock wall")
    if not gpu and args.threads is None:
        args.threads = 1
    args.batch_size = args.batch_size or (32 if gpu else 16)
    args.chunk_batches = args.chunk_batches or (8 if gpu else 1)
    args.paths = "".join(ch for ch in "aAbcdenh" if ch in args.paths)
    if min(args.repeats, args.n_texts, args.batch_size, args.chunk_batches) < 1:
        p.error("--repeats, --n-texts, --batch-size and --chunk-batches must be positive")
    return args


def default_data_dir(explicit: str | None) -> str | None:
    if explicit:
        return explicit
    if os.environ.get("SAFESPACE_DATA_DIR"):
        return os.environ["SAFESPACE_DATA_DIR"]
    beside = C.REPO.parent / "shared" / "data"
    return str(beside) if (beside / "multilingual_toxicity_dataset").is_dir() else None


def quiet_libraries() -> None:
    logging.getLogger("lm_eval").setLevel(logging.ERROR)
    logging.getLogger("transformers").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def pick_device(mode: str, threads: int | None) -> tuple["Device", torch.dtype]:
    if mode == "gpu":
        if not torch.cuda.is_available():
            raise SystemExit("--mode gpu needs a CUDA device; use --mode cpu on this machine.")
        device, dtype = torch.device("cuda:0"), torch.bfloat16
    else:
        device, dtype = torch.device("cpu"), torch.float32
    if threads:
        torch.set_num_threads(threads)
    return Device(mode, device, torch.get_num_threads() if mode == "cpu" else 1), dtype


def main(argv=None) -> dict[str, Any]:
    args = parse_args(argv)
    quiet_libraries()
    dev, dtype = pick_device(args.mode, args.threads)
    data_dir = default_data_dir(args.data_dir)
    texts, langs = sample_texts(args.n_texts, args.seed, data_dir)
    tokenizer, tokenizer_name = load_tokenizer(args.tokenizer, data_dir, args.seed)
    model, config, n_params = build_model(args.shape, tokenizer, dev.device, dtype, args.seed)
    record = measure(
        model, config, tokenizer, texts, langs, dev,
        shape=args.shape, n_params=n_params, tokenizer_name=tokenizer_name, paths=args.paths,
        batch_size=args.batch_size, repeats=args.repeats, chunk_batches=args.chunk_batches,
        layer_k=args.layer_k, clock=args.clock, seed=args.seed,
        command="python benchmarks/bench_hidden_states.py " + " ".join(sys.argv[1:] if argv is None else argv),
    )
    C.write_json(args.out, record)
    print_report(record)
    print(f"wrote {args.out}")
    return record


def measure(
    model, config, tokenizer, texts: list[str], langs: list[str], dev: "Device", *,
    shape: str, n_params: int, tokenizer_name: str, paths: str, batch_size: int, repeats: int,
    chunk_batches: int, layer_k: int | None, clock: str, seed: int, command: str,
    deadline: float | None = None,
) -> dict[str, Any]:
    """Run the paths interleaved over ``repeats`` repetitions and return the JSON record.

    ``deadline`` (a ``time.monotonic()`` value): no repetition is started that the slowest one so
    far says would end after it (the first always runs); the record says how many ran. Path ``A``
    (the harness with ``batch_size auto``) runs on all texts in one call per repetition, as a task
    does, so its time includes the one probe for the batch size that every such call makes.
    """
    from lm_eval.models.huggingface import HFLM

    from safespace_tasks import install

    install()  # pooled_hidden_states on HFLM

    device, dtype = dev.device, next(model.parameters()).dtype
    mode = dev.mode
    load_start = C.load_average()
    n_layers = config.num_hidden_layers
    k = layer_k or n_layers // 2
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, max_length=MAX_POSITIONS)
    lm_auto = None
    if "A" in paths:
        lm_auto = HFLM(pretrained=model, tokenizer=tokenizer, batch_size="auto", max_batch_size=batch_size,
                       max_length=MAX_POSITIONS)

    # the token lists the harness path builds (tok_encode, then truncation to the max length)
    token_lists = [lm.tok_encode(t)[-MAX_POSITIONS:] for t in texts]
    lengths = np.array([len(t) for t in token_lists])
    pad_id = next(x for x in (tokenizer.pad_token_id, tokenizer.eos_token_id, 0) if x is not None)
    tokens = int(lengths.sum())

    # Texts in the harness's own order (longest first), cut into chunks of whole batches: every path
    # runs chunk by chunk, the paths taking turns, so that a change in the machine's load between two
    # chunks hits all paths alike. Each chunk's batches are exactly the batches of the whole run.
    order = sorted(range(len(texts)), key=lambda i: (-len(token_lists[i]), i))
    chunk_len = chunk_batches * batch_size
    chunks = []
    final = {"layers": (-1,)}
    layer_k_opts = {"layers": (k,)}
    for start in range(0, len(order), chunk_len):
        idx = order[start:start + chunk_len]
        ctexts = [texts[i] for i in idx]
        chunks.append({
            "batches": make_batches([token_lists[i] for i in idx], batch_size, pad_id, device),
            # requests are built by a task, not by the model: outside the timed calls
            "a": harness_requests(ctexts, "pooled_hidden_states", final),
            "c": harness_requests(ctexts, "loglikelihood"),
            "d": harness_requests(ctexts, "pooled_hidden_states", layer_k_opts),
        })
    padded_tokens = sum(c["batches"].padded_tokens for c in chunks)
    whole = {"A": harness_requests([texts[i] for i in order], "pooled_hidden_states", final)}

    def runner(name: str, chunk: dict) -> Callable[[], Any]:
        if name == "A":
            return lambda: lm_auto.pooled_hidden_states(whole["A"], disable_tqdm=True)
        if name in ("a", "d"):
            return lambda: lm.pooled_hidden_states(chunk[name], disable_tqdm=True)
        if name == "c":
            return lambda: lm.loglikelihood(chunk["c"], disable_tqdm=True)
        if name in ("b", "n"):
            return lambda: limit_forward(model, chunk["batches"])
        if name == "h":
            return lambda: host_only(lm, chunk["a"], config.hidden_size)
        return lambda: all_hidden_states_forward(model, chunk["batches"])

    chunked = [name for name in paths if name != "A"]
    whole_paths = [name for name in paths if name == "A"]
    # warm-up: the last (shortest) chunk through every path (lazy initialisation, allocator, kernels)
    for name in chunked:
        runner(name, chunks[-1])()
        dev.sync()
    auto_batch = auto_probe_s = None
    if lm_auto is not None:
        from safespace_tasks.harness.requests import _detect_batch_size, normalize_options
        from safespace_tasks.capture import find_decoder_parts

        longest = token_lists[order[0]]
        dev.sync()
        t0 = time.perf_counter()
        auto_batch = _detect_batch_size(lm_auto, find_decoder_parts(model), longest, normalize_options(final))
        dev.sync()
        auto_probe_s = time.perf_counter() - t0  # what path A pays once per call on top of path a

    stats = {name: PathStats(name) for name in paths}
    outputs: dict[str, list] = {name: [] for name in paths}
    failed: dict[str, str] = {}  # a path that runs out of memory is dropped, the others go on
    rep_walls: list[float] = []
    stopped_by_budget = False
    live = list(paths)

    def run_one(name: str, chunk: dict | None, parts: dict, rep: int) -> None:
        try:
            m, result = dev.measure(runner(name, chunk))
        except (torch.cuda.OutOfMemoryError, MemoryError) as err:
            failed[name] = f"out of memory at batch size {batch_size}: {str(err).splitlines()[0][:200]}"
            print(f"  path {name}: {failed[name]}; dropped", flush=True)
            outputs.pop(name, None)
            dev.recover()
            return
        parts[name].append(m)
        if rep == 0:
            outputs[name].append(result)

    for rep in range(repeats):
        if deadline is not None and rep_walls and time.monotonic() + max(rep_walls) > deadline:
            stopped_by_budget = True
            print(f"  time budget: {rep} of {repeats} repetitions fit; stopping here", flush=True)
            break
        t0 = time.monotonic()
        parts: dict[str, list[Measurement]] = {name: [] for name in paths}
        first = rep % 2 == 0  # the whole-set path runs first in even repetitions, last in odd ones
        if first:
            for name in whole_paths:
                if name not in failed:
                    run_one(name, None, parts, rep)
        live_chunked = [name for name in chunked if name not in failed]
        for j, chunk in enumerate(chunks):
            if not live_chunked:
                break
            turn = (rep + j) % len(live_chunked)
            for name in live_chunked[turn:] + live_chunked[:turn]:
                if name not in failed:
                    run_one(name, chunk, parts, rep)
        if not first:
            for name in whole_paths:
                if name not in failed:
                    run_one(name, None, parts, rep)
        for name in paths:
            if name not in failed:
                stats[name].chunks.append(parts[name])
        live = [name for name in paths if name not in failed]
        chunked = [name for name in chunked if name not in failed]
        whole_paths = [name for name in whole_paths if name not in failed]
        if not live:
            raise SystemExit("every path ran out of memory; lower --batch-size.")
        rep_walls.append(time.monotonic() - t0)
        print(f"  repetition {rep + 1}/{repeats}: "
              + ", ".join(f"{n} {sum(m.seconds for m in parts[n]):.2f}s" for n in live), flush=True)
    stats = {name: st for name, st in stats.items() if name not in failed}
    load_end = C.load_average()

    # correctness: the harness path returns what the limit computes (rows in the same, sorted, order)
    checks: dict[str, Any] = {}
    if "b" in stats:
        b_vecs = torch.cat(outputs["b"]).numpy()
        scale = float(np.abs(b_vecs).max()) or 1.0
        for name in ("a", "A"):
            if name in stats:
                vecs = np.stack([state.vectors[0] for part in outputs[name] for state in part])
                checks[f"{name}_vs_b_max_abs_diff_relative"] = float(np.abs(vecs - b_vecs).max() / scale)

    summaries = {name: s.summary(tokens) for name, s in stats.items()}
    ratios: dict[str, Any] = {}

    def add_ratio(key: str, num: str, den: str, target: float | tuple[float, float] | None, higher: bool = True):
        if num not in stats or den not in stats:
            return
        value, per = throughput_ratio(stats[num], stats[den], clock)
        entry: dict[str, Any] = {"value": value, "per_repetition": per, "clock": clock}
        if mode == "cpu":
            other = "wall" if clock == "cpu" else "cpu"
            entry[f"value_{other}_clock"] = throughput_ratio(stats[num], stats[den], other)[0]
        if isinstance(target, tuple):
            entry.update(target_band=list(target), met=target[0] <= value <= target[1])
        elif target is not None:
            entry.update(target=target, met=value >= target if higher else value <= target)
        ratios[key] = entry

    add_ratio("a/b", "a", "b", TARGET_A_OVER_B)
    add_ratio("A/b", "A", "b", TARGET_A_OVER_B)
    add_ratio("a/c", "a", "c", TARGET_A_OVER_C[shape])
    add_ratio("A/c", "A", "c", TARGET_A_OVER_C[shape])
    add_ratio("A/a", "A", "a", None)
    ideal = n_layers / k
    add_ratio("d/b", "d", "b", (D_OVER_B_BAND[0] * ideal, D_OVER_B_BAND[1] * ideal))
    if "d/b" in ratios:
        ratios["d/b"]["ideal_L_over_k"] = ideal
        ratios["d/b"]["fraction_of_ideal"] = ratios["d/b"]["value"] / ideal
    add_ratio("e/b", "e", "b", None)
    add_ratio("n/b", "n", "b", None)
    if "h" in stats and "b" in stats:
        ratios["h/b"] = {
            "value": stats["h"].robust_seconds(clock) / stats["b"].robust_seconds(clock),
            "clock": clock,
            "definition": "host work of the harness path (no forward) as a share of the limit's time; "
                          "a/b cannot exceed about 1 / (1 + h/b) where nothing overlaps it",
        }
    for name in ("a", "A"):
        if name in stats and "b" in stats:
            wa, wb = summaries[name]["work_bytes"], summaries["b"]["work_bytes"]
            pa, pb = summaries[name]["peak_bytes"], summaries["b"]["peak_bytes"]
            ratios[f"mem {name}/b"] = {
                "value": wa / wb if wb else float("nan"),
                "definition": f"peak memory added by the call (working memory: activations, outputs), {name} over b",
                "target": TARGET_MEM_A_OVER_B, "met": (wa / wb if wb else math.inf) <= TARGET_MEM_A_OVER_B,
                "total_peak_ratio": pa / pb if pb else float("nan"),
            }

    # a verdict closer to its threshold than the run's noise floor is marked as such
    if "n/b" in ratios:
        noise = abs(ratios["n/b"]["value"] - 1.0)
        for e in ratios.values():
            if "target" in e:
                e["within_noise"] = abs(e["value"] - e["target"]) <= noise * e["target"]
            elif "target_band" in e:
                e["within_noise"] = min(abs(e["value"] - t) for t in e["target_band"]) <= noise * e["ideal_L_over_k"]

    return {
        "benchmark": "hidden_states",
        **C.machine_record(),
        "mode": mode,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu: {C.cpu_name()}",
        "versions": C.versions("torch", "transformers", "lm_eval", "numpy"),
        "command": command,
        "settings": {
            "shape": shape, "config": {k_: getattr(config, k_) for k_ in SHAPES["small"]},
            "parameters": n_params, "dtype": str(dtype).replace("torch.", ""),
            "attn_implementation": getattr(config, "_attn_implementation", None),
            "batch_size": batch_size, "auto_batch_size": auto_batch,
            "auto_probe_seconds": auto_probe_s, "repeats": repeats,
            "repetitions_done": len(rep_walls), "stopped_by_budget": stopped_by_budget, "clock": clock,
            "chunk_batches": chunk_batches, "chunks": len(chunks), "layer_k": k, "n_layers": n_layers,
            "torch_threads": torch.get_num_threads(), "tokenizer": tokenizer_name, "seed": seed,
        },
        "texts": {
            "n": len(texts), "languages": sorted(set(langs)), "tokens": tokens,
            "tokens_per_text": {"mean": float(lengths.mean()), "p50": float(np.percentile(lengths, 50)),
                                "p90": float(np.percentile(lengths, 90)), "max": int(lengths.max())},
            "padding_efficiency": tokens / padded_tokens,
        },
        "load_average": {"start": load_start, "end": load_end},
        "cpu_share": (sum(sum(st.rep_seconds("cpu")) for st in stats.values())
                      / max(1e-9, sum(sum(st.rep_seconds("wall")) for st in stats.values())) / dev.threads),
        "memory_method": dev.memory_method,
        "paths": summaries,
        "anchor_tok_s": ANCHOR_TOK_S.get(shape) if mode == "gpu" else None,
        "ratios": ratios,
        "checks": checks,
        "failed_paths": failed,
        "targets_met": not failed and all(r.get("met", True) for r in ratios.values()),
    }


def print_report(r: dict[str, Any]) -> None:
    s, t = r["settings"], r["texts"]
    print(f"\n{r['device']} | shape {s['shape']} ({s['parameters'] / 1e6:.1f}M params, {s['dtype']}) | "
          f"{t['n']} texts, {t['tokens']} tokens (mean {t['tokens_per_text']['mean']:.1f}, max "
          f"{t['tokens_per_text']['max']}), batch {s['batch_size']}, padding efficiency {t['padding_efficiency']:.2f} | "
          f"load {r['load_average']['start']} -> {r['load_average']['end']}")
    anchor = r.get("anchor_tok_s") or {}
    print(f"{'path':<50} {'wall s':>8} {'tok/s':>8} {'CPU s':>8} {'tok/CPU-s':>10} {'peak MiB':>9} {'work MiB':>9}"
          + (f" {'anchor tok/s':>12}" if anchor else ""))
    for name, p in r["paths"].items():
        print(f"{name + '  ' + p['what']:<50} {p['seconds']:>8.3f} {p['tokens_per_s']:>8.0f} "
              f"{p['cpu_seconds']:>8.3f} {p['tokens_per_cpu_s']:>10.0f} "
              f"{p['peak_bytes'] / C.MIB:>9.1f} {p['work_bytes'] / C.MIB:>9.1f}"
              + (f" {anchor.get(name, float('nan')):>12.0f}" if anchor else ""))
    print(f"times: per chunk the median over {s['repeats']} interleaved repetitions, summed over "
          f"{s['chunks']} chunks; ratios use the {s['clock']} clock; "
          f"CPU share of this process while timed: {r['cpu_share']:.2f}")
    print()
    for key, e in r["ratios"].items():
        if "target" in e:
            op = "<=" if key.startswith("mem") else ">="
            tgt = f"target {op} {e['target']:.2f}"
        elif "target_band" in e:
            tgt = f"target {e['target_band'][0]:.2f}..{e['target_band'][1]:.2f} (L/k = {e['ideal_L_over_k']:.2f})"
        else:
            tgt = {"h/b": "diagnostic", "n/b": "noise floor (1 = none)"}.get(key, "reference")
        per = e.get("per_repetition")
        spread = f"[{min(per):.2f}..{max(per):.2f}]" if per else ""
        note = " (within the noise floor)" if e.get("within_noise") else ""
        print(f"{key:<8} {e['value']:>7.3f} {spread:<14} {tgt:<40} {C.verdict(e.get('met'))}{note}")
    for key, v in r["checks"].items():
        print(f"check {key}: {v:.2e}")


if __name__ == "__main__":
    main()
