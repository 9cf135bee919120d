"""The one place that knows the datasets: Hub ids, splits per language, columns, and local mirrors.

Data come from the Hugging Face Hub by default. Point the plugin at a local mirror (a folder with
one JSON Lines file per split, ``<root>/<dataset name>/<split>.jsonl``, the layout of the
workplace's ``shared/data``) with the environment variable ``SAFESPACE_DATA_DIR`` or the task
metadata key ``data_dir`` (``--metadata '{"data_dir": "/path/to/mirror"}'``); the metadata key
wins. Both paths return the same rows and go through the same validation.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import jsonlines
import numpy as np

log = logging.getLogger(__name__)

DATA_DIR_ENV = "SAFESPACE_DATA_DIR"
DATA_DIR_KEY = "data_dir"

__all__ = [
    "DATA_DIR_ENV",
    "DATA_DIR_KEY",
    "DatasetSpec",
    "DataError",
    "DataReport",
    "DATASETS",
    "TOXICITY",
    "PARADETOX",
    "resolve_data_dir",
    "load_rows",
    "stratified_order",
    "toxicity_docs",
    "paradetox_pairs",
    "paradetox_texts",
    "load_docs",
    "check_utf8",
]


class DataError(ValueError):
    """A dataset or mirror problem; the message names the language, the file and the setting to change."""


@dataclass(frozen=True)
class DatasetSpec:
    """A Hub dataset whose splits are languages."""

    hub_id: str
    languages: tuple[str, ...]
    columns: dict[str, type]
    mirror_folder: str | None = None  # folder inside a mirror root, when it is not the Hub id's name

    @property
    def folder(self) -> str:
        """Folder name of the dataset inside a mirror root."""
        return self.mirror_folder or self.hub_id.split("/")[-1]

    def check_language(self, language: str) -> None:
        if language not in self.languages:
            raise DataError(
                f"unknown language {language!r} for {self.hub_id}; it has {', '.join(self.languages)}. "
                "Pick one of those (task names end with the language code)."
            )


TOXICITY = DatasetSpec(
    hub_id="textdetox/multilingual_toxicity_dataset",
    languages=("en", "ru", "uk", "de", "es", "am", "zh", "ar", "hi", "it", "fr", "he", "hin", "tt", "ja"),
    columns={"text": str, "toxic": int},
)
PARADETOX = DatasetSpec(
    hub_id="textdetox/multilingual_paradetox",
    languages=("en", "ru", "uk", "de", "es", "am", "zh", "ar", "hi"),
    columns={"toxic_sentence": str, "neutral_sentence": str},
)
DATASETS: dict[str, DatasetSpec] = {spec.hub_id: spec for spec in (TOXICITY, PARADETOX)}


def spec_for(hub_id: str) -> DatasetSpec:
    try:
        return DATASETS[hub_id]
    except KeyError:
        raise DataError(f"unknown dataset {hub_id!r}; known: {', '.join(DATASETS)}") from None


def resolve_data_dir(data_dir: str | os.PathLike | None = None) -> Path | None:
    """The mirror root to read, or None for the Hub: the explicit value, else ``$SAFESPACE_DATA_DIR``."""
    value = data_dir if data_dir not in (None, "") else os.environ.get(DATA_DIR_ENV) or None
    if value is None:
        return None
    root = Path(value).expanduser().resolve()
    if root.exists() and not root.is_dir():
        raise DataError(
            f"data mirror {root} is a file, not a folder (set by "
            f"{'metadata ' + DATA_DIR_KEY if data_dir else '$' + DATA_DIR_ENV}). "
            "Point it at the folder that holds one sub-folder per dataset (e.g. shared/data), not at a file in it."
        )
    if not root.is_dir():
        raise DataError(
            f"data mirror folder {root} does not exist (set by "
            f"{'metadata ' + DATA_DIR_KEY if data_dir else '$' + DATA_DIR_ENV}). "
            "Point it at the folder that holds one sub-folder per dataset, e.g. shared/data."
        )
    return root


def _read_mirror(spec: DatasetSpec, language: str, root: Path) -> list[dict[str, Any]]:
    path = root / spec.folder / f"{language}.jsonl"
    if not path.is_file():
        raise DataError(
            f"language {language!r} of {spec.hub_id}: mirror file {path} is missing. The mirror root "
            f"{root} must hold {spec.folder}/{language}.jsonl; fix the file, or unset ${DATA_DIR_ENV} / "
            f"metadata {DATA_DIR_KEY} to read the Hub."
        )
    check_utf8(path)
    rows = []
    try:
        with jsonlines.open(path) as reader:
            for lineno, row in enumerate(reader, start=1):
                if not isinstance(row, dict):
                    raise DataError(f"{path}:{lineno}: expected a JSON object per line, got {type(row).__name__}.")
                rows.append(row)
    except jsonlines.InvalidLineError as err:
        raise DataError(f"{path}: malformed JSON Lines ({err}). Re-copy the mirror file.") from err
    return rows


def check_utf8(path: str | os.PathLike) -> None:
    """Raise a :class:`DataError` naming the file, the line and the byte when ``path`` is not UTF-8.

    Mirror files are JSON Lines in UTF-8 (a file saved as Latin-1 or cp1252 would otherwise stop with a
    bare ``UnicodeDecodeError`` that names neither the file nor the fix).
    """
    path = Path(path)
    with open(path, "rb") as f:
        for lineno, line in enumerate(f, start=1):
            try:
                line.decode("utf-8")
            except UnicodeDecodeError as err:
                raise DataError(
                    f"{path}, line {lineno}: not UTF-8 (byte 0x{line[err.start]:02x} at column {err.start + 1}). "
                    "Mirror files must be UTF-8 JSON Lines; re-save it as UTF-8 (e.g. `iconv -f latin1 -t utf-8`) "
                    "or re-copy it from the dataset."
                ) from None


def _read_hub(spec: DatasetSpec, language: str) -> list[dict[str, Any]]:
    import datasets

    try:
        ds = datasets.load_dataset(spec.hub_id, split=language)
    except Exception as err:  # network, auth, missing split: all end the same way for the user
        raise DataError(
            f"language {language!r} of {spec.hub_id} could not be loaded from the Hugging Face Hub "
            f"({type(err).__name__}: {err}). Offline? Point the plugin at a local mirror with "
            f"{DATA_DIR_ENV}=/path/to/mirror or --metadata '{{\"{DATA_DIR_KEY}\": \"/path/to/mirror\"}}'."
        ) from err
    return [dict(r) for r in ds]


def _validate(spec: DatasetSpec, language: str, rows: list[dict[str, Any]], source: str) -> None:
    if not rows:
        raise DataError(f"language {language!r} of {spec.hub_id} is empty at {source}.")
    for i, row in enumerate(rows):
        for col, typ in spec.columns.items():
            if col not in row:
                raise DataError(
                    f"{source}, row {i}: column {col!r} is missing (columns of {spec.hub_id}: "
                    f"{', '.join(spec.columns)}); the file is not a copy of that dataset."
                )
            val = row[col]
            if typ is int:
                if isinstance(val, bool) or not isinstance(val, (int, np.integer)) or val not in (0, 1):
                    raise DataError(f"{source}, row {i}: column {col!r} must be 0 or 1, got {val!r}.")
            elif not isinstance(val, typ):
                raise DataError(f"{source}, row {i}: column {col!r} must be {typ.__name__}, got {type(val).__name__}.")


def load_rows(hub_id: str, language: str, data_dir: str | os.PathLike | None = None) -> list[dict[str, Any]]:
    """Rows of one language split, validated, in file order, each with its row index as ``id``."""
    spec = spec_for(hub_id)
    spec.check_language(language)
    root = resolve_data_dir(data_dir)
    if root is None:
        rows, source = _read_hub(spec, language), f"{spec.hub_id} (Hub) split {language}"
    else:
        rows, source = _read_mirror(spec, language, root), str(root / spec.folder / f"{language}.jsonl")
    _validate(spec, language, rows, source)
    return [{"id": i, **{c: r[c] for c in spec.columns}} for i, r in enumerate(rows)]


def stratified_order(labels: Iterable[int], seed: int) -> np.ndarray:
    """A seeded permutation in which every prefix holds the classes in their overall proportion.

    Each class is shuffled on its own; its i-th member gets the key (i + 0.5) / n_c and the
    permutation sorts by key, so the first N docs contain round(N * n_c / n) of class c (within
    one). ``--limit N`` therefore still gives both classes in balance, whatever the file's order.
    """
    labels = np.asarray(list(labels))
    rng = np.random.default_rng(seed)
    keys = np.empty(labels.shape[0])
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        shuffled = rng.permutation(members)
        keys[shuffled] = (np.arange(members.size) + 0.5) / members.size
    # ties (equal class sizes) alternate by a seeded class order, not by file position
    tiebreak = rng.permutation(np.unique(labels).size)[np.searchsorted(np.unique(labels), labels)]
    return np.lexsort((tiebreak, keys))


@dataclass
class DataReport:
    """What the loader removed and why; written into the results."""

    source: str
    n_rows: int
    empty_texts: int = 0
    conflicting_labels: int = 0
    identical_pairs: int = 0
    duplicate_texts: int = 0
    notes: list[str] = field(default_factory=list)

    @property
    def n_excluded(self) -> int:
        return self.empty_texts + self.conflicting_labels + self.identical_pairs

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "n_rows": self.n_rows,
            "empty_texts": self.empty_texts,
            "conflicting_labels": self.conflicting_labels,
            "identical_pairs": self.identical_pairs,
            "duplicate_texts": self.duplicate_texts,
            "n_excluded": self.n_excluded,
        }


def toxicity_docs(language: str, *, data_dir: str | None = None, seed: int = 1234) -> tuple[list[dict], DataReport]:
    """Docs of the balanced toxicity set for one language, cleaned and in stratified seeded order.

    Each doc is ``{"id", "text", "toxic"}``; ``id`` is the row index in the language's split.
    Removed (and counted in the report): empty or whitespace-only texts, and texts that occur
    with both labels (their label is unknowable). Exact duplicates with one label are kept and
    counted.
    """
    rows = load_rows(TOXICITY.hub_id, language, data_dir)
    root = resolve_data_dir(data_dir)
    report = DataReport(source=str(root / TOXICITY.folder) if root else TOXICITY.hub_id, n_rows=len(rows))
    kept = []
    for r in rows:
        if not r["text"].strip():
            report.empty_texts += 1
            continue
        kept.append(r)
    labels_of: dict[str, set[int]] = {}
    for r in kept:
        labels_of.setdefault(r["text"], set()).add(r["toxic"])
    conflicted = {t for t, labs in labels_of.items() if len(labs) > 1}
    if conflicted:
        report.conflicting_labels = sum(1 for r in kept if r["text"] in conflicted)
        kept = [r for r in kept if r["text"] not in conflicted]
    counts = Counter(r["text"] for r in kept)
    report.duplicate_texts = sum(c - 1 for c in counts.values() if c > 1)
    if report.n_excluded:
        log.warning(
            "%s/%s: excluded %d empty texts and %d texts labelled both toxic and non-toxic",
            TOXICITY.hub_id, language, report.empty_texts, report.conflicting_labels,
        )
    order = stratified_order([r["toxic"] for r in kept], seed)
    return [kept[i] for i in order], report


def _clean_pairs(language: str, data_dir: str | None) -> tuple[list[dict], DataReport]:
    rows = load_rows(PARADETOX.hub_id, language, data_dir)
    root = resolve_data_dir(data_dir)
    report = DataReport(source=str(root / PARADETOX.folder) if root else PARADETOX.hub_id, n_rows=len(rows))
    kept = []
    for r in rows:
        tox, neu = r["toxic_sentence"].strip(), r["neutral_sentence"].strip()
        if not tox or not neu:
            report.empty_texts += 1
        elif tox == neu:
            report.identical_pairs += 1
        else:
            kept.append(r)
    if report.n_excluded:
        log.warning(
            "%s/%s: excluded %d pairs with an empty member and %d pairs whose members are identical",
            PARADETOX.hub_id, language, report.empty_texts, report.identical_pairs,
        )
    return kept, report


def paradetox_pairs(language: str, *, data_dir: str | None = None, seed: int = 1234) -> tuple[list[dict], DataReport]:
    """Pairs of ``textdetox/multilingual_paradetox`` (toxic sentence and its human detoxification).

    Each doc is ``{"id", "toxic_sentence", "neutral_sentence"}`` (``id`` = row in the split), in a
    seeded order. Removed and counted: pairs with an empty member, and pairs whose members are
    identical (nothing was detoxified, so the pair says nothing).
    """
    kept, report = _clean_pairs(language, data_dir)
    order = np.random.default_rng(seed).permutation(len(kept))
    return [kept[i] for i in order], report


def paradetox_texts(language: str, *, data_dir: str | None = None, seed: int = 1234) -> tuple[list[dict], DataReport]:
    """The pairs of :func:`paradetox_pairs` as single texts, the two members of a pair adjacent.

    Each doc is ``{"id", "pair_id", "text", "toxic"}`` with ``id = 2 * pair_id + toxic`` (unique) and
    ``pair_id`` the pair's row in the split. Because members sit side by side, ``--limit N`` takes
    N // 2 whole pairs (an odd N leaves one member alone, which the metrics set aside and count).
    """
    pairs, report = paradetox_pairs(language, data_dir=data_dir, seed=seed)
    docs = []
    for p in pairs:
        for toxic, col in ((1, "toxic_sentence"), (0, "neutral_sentence")):
            docs.append({"id": 2 * p["id"] + toxic, "pair_id": p["id"], "text": p[col], "toxic": toxic})
    return docs, report


# (hub id, layout) -> loader; layout "texts" gives one text per doc, "pairs" one pair per doc,
# "rewrites" one toxic sentence to rewrite per doc, "prompts" one continuation prompt per doc
DOC_LOADERS = {
    (TOXICITY.hub_id, "texts"): toxicity_docs,
    (PARADETOX.hub_id, "texts"): paradetox_texts,
    (PARADETOX.hub_id, "pairs"): paradetox_pairs,
}


def load_docs(
    hub_id: str, language: str, *, data_dir: str | None = None, seed: int = 1234, layout: str = "texts"
) -> tuple[list[dict], DataReport]:
    """Docs of one language of a supported dataset (see :data:`DOC_LOADERS`) and the loader's report.

    The one data entry point of the tasks: every family names its dataset (``dataset_path``) and
    its layout, and reads the mirror or the Hub through the same code.
    """
    try:
        loader = DOC_LOADERS[(hub_id, layout)]
    except KeyError:
        known = ", ".join(f"{h} ({lay})" for h, lay in DOC_LOADERS)
        raise DataError(
            f"no doc loader for dataset {hub_id!r} with layout {layout!r}; supported: {known}. "
            "Set dataset_path in the task YAML to one of those."
        ) from None
    return loader(language, data_dir=data_dir, seed=seed)


# ---------------------------------------------------------------------------------------------
# Behavioural families: continuation prompts (RTP-LX), detox rewriting (ParaDetox) and the
# balanced toxicity set for the scorer. Kept apart from the loaders above to ease merging.
# ---------------------------------------------------------------------------------------------

# RTP-LX release locales (one file per locale, RTP_LX_<LOCALE>.json in microsoft/RTP-LX), as
# lower-case split names. The mirror holds en, de, es and fr; the rest need the Hub.
RTPLX = DatasetSpec(
    hub_id="microsoft/RTP-LX",
    languages=(
        "en", "de", "es", "fr", "ar", "cs", "da", "fi", "he", "hi", "hu", "id", "it", "ja",
        "ko", "nl", "no", "pl", "pt", "pt_br", "ru", "sv", "th", "tr", "uk", "zh_hans", "zh_hant",
    ),
    columns={"prompt": str, "class": int},
    mirror_folder="rtp_lx_prompts",
)
RTPLX_MIRRORED = ("en", "de", "es", "fr")
# Annotator toxicity in the RTP-LX release is a 1-5 rating, 1 meaning "not toxic".
RTPLX_NOT_TOXIC_RATING = 1.0

LANGUAGE_NAMES = {
    "am": "Amharic", "ar": "Arabic", "cs": "Czech", "da": "Danish", "de": "German", "en": "English",
    "es": "Spanish", "fi": "Finnish", "fr": "French", "he": "Hebrew", "hi": "Hindi",
    "hin": "Hinglish (Hindi in Latin script)", "hu": "Hungarian", "id": "Indonesian", "it": "Italian",
    "ja": "Japanese", "ko": "Korean", "nl": "Dutch", "no": "Norwegian", "pl": "Polish",
    "pt": "Portuguese", "pt_br": "Brazilian Portuguese", "ru": "Russian", "sv": "Swedish", "th": "Thai",
    "tr": "Turkish", "tt": "Tatar", "uk": "Ukrainian", "zh": "Chinese", "zh_hans": "Chinese (simplified)",
    "zh_hant": "Chinese (traditional)",
}

DATASETS[RTPLX.hub_id] = RTPLX


def language_name(code: str) -> str:
    """English name of a language code used by the datasets (the code itself if unknown)."""
    return LANGUAGE_NAMES.get(code, code)


def _rtplx_label(row: dict[str, Any], where: str) -> int:
    """Binary prompt label of an RTP-LX record: the mirror's ``class``, else the annotators' toxicity.

    Release records (``Prompt``, ``Annotations``/``AnnotationsRaw``) carry three annotators'
    1-5 toxicity ratings; the prompt counts as toxic when the median rating is above 1 ("not
    toxic"), i.e. when a majority of annotators saw some toxicity. Without the raw ratings the
    mean is used with the same threshold rounded to the nearest rating (mean >= 1.5).
    """
    if "class" in row:
        return row["class"]
    raw = (row.get("AnnotationsRaw") or {}).get("Toxicity")
    if isinstance(raw, list) and raw and all(isinstance(v, (int, float)) for v in raw):
        return int(float(np.median(raw)) > RTPLX_NOT_TOXIC_RATING)
    mean = (row.get("Annotations") or {}).get("Toxicity")
    if isinstance(mean, (int, float)):
        return int(float(mean) >= RTPLX_NOT_TOXIC_RATING + 0.5)
    raise DataError(
        f"{where}: an RTP-LX record needs a 0/1 'class' or annotator ratings 'Annotations.Toxicity'; "
        f"it has keys {sorted(row)}. The file is not an RTP-LX prompt file."
    )


def _normalize_rtplx(rows: list[dict[str, Any]], source: str) -> list[dict[str, Any]]:
    out = []
    for i, row in enumerate(rows):
        prompt = row.get("prompt", row.get("Prompt"))
        out.append({"prompt": prompt, "class": _rtplx_label(row, f"{source}, row {i}")})
    return out


def rtplx_rows(language: str, data_dir: str | os.PathLike | None = None) -> tuple[list[dict[str, Any]], str]:
    """Validated ``{"id", "prompt", "class"}`` rows of one RTP-LX locale and where they came from.

    Mirror: ``<root>/rtp_lx_prompts/<language>.jsonl`` with ``prompt`` and ``class`` (0/1).
    Hub: split ``<language>`` of ``microsoft/RTP-LX``; records in the release layout (``Prompt``
    and annotator ratings) are mapped to the same two columns (see :func:`_rtplx_label`).
    """
    RTPLX.check_language(language)
    root = resolve_data_dir(data_dir)
    if root is None:
        raw, source = _read_hub(RTPLX, language), f"{RTPLX.hub_id} (Hub) split {language}"
    else:
        path = root / RTPLX.folder / f"{language}.jsonl"
        if not path.is_file() and language not in RTPLX_MIRRORED:
            raise DataError(
                f"RTP-LX locale {language!r} is not in the mirror {root} (it has "
                f"{RTPLX.folder}/<lang>.jsonl for {', '.join(RTPLX_MIRRORED)}). Run the mirrored "
                f"locales offline (tasks safespace-continuation-{{{','.join(RTPLX_MIRRORED)}}}), or unset "
                f"${DATA_DIR_ENV} / metadata {DATA_DIR_KEY} to read {RTPLX.hub_id} from the Hub."
            )
        raw, source = _read_mirror(RTPLX, language, root), str(path)
    rows = _normalize_rtplx(raw, source)
    _validate(RTPLX, language, rows, source)
    return [{"id": i, **r} for i, r in enumerate(rows)], source


def rtplx_docs(language: str, *, data_dir: str | None = None, seed: int = 1234) -> tuple[list[dict], DataReport]:
    """Continuation prompts of one locale in stratified seeded order (``--limit`` keeps the toxic share).

    Each doc is ``{"id", "prompt", "class"}``. Empty prompts are removed and counted; duplicate
    prompts are kept (each is its own RTP-LX item) and counted.
    """
    rows, source = rtplx_rows(language, data_dir)
    report = DataReport(source=source, n_rows=len(rows))
    kept = [r for r in rows if r["prompt"].strip()]
    report.empty_texts = len(rows) - len(kept)
    counts = Counter(r["prompt"] for r in kept)
    report.duplicate_texts = sum(c - 1 for c in counts.values() if c > 1)
    if report.empty_texts:
        log.warning("%s/%s: excluded %d empty prompts", RTPLX.hub_id, language, report.empty_texts)
    if not kept:
        raise DataError(f"RTP-LX locale {language!r} at {source} has no non-empty prompt.")
    order = stratified_order([r["class"] for r in kept], seed)
    return [kept[i] for i in order], report


def detox_docs(language: str, *, data_dir: str | None = None, seed: int = 1234) -> tuple[list[dict], DataReport]:
    """Toxic sentences to rewrite, with their human neutral rewrite, in seeded order.

    Each doc is ``{"id", "toxic_sentence", "neutral_sentence", "language", "language_name"}``.
    Pairs whose toxic sentence or reference is empty are removed and counted (``empty_texts``);
    pairs whose reference equals the source are kept and counted in the report notes (a
    reference that is a copy makes the fluency score reward copying).
    """
    rows = load_rows(PARADETOX.hub_id, language, data_dir)
    root = resolve_data_dir(data_dir)
    report = DataReport(
        source=str(root / PARADETOX.folder / f"{language}.jsonl") if root else f"{PARADETOX.hub_id} (Hub) split {language}",
        n_rows=len(rows),
    )
    kept = [r for r in rows if r["toxic_sentence"].strip() and r["neutral_sentence"].strip()]
    report.empty_texts = len(rows) - len(kept)
    copies = sum(1 for r in kept if r["toxic_sentence"].strip() == r["neutral_sentence"].strip())
    if copies:
        report.notes.append(f"{copies} references are identical to their toxic source")
    counts = Counter(r["toxic_sentence"] for r in kept)
    report.duplicate_texts = sum(c - 1 for c in counts.values() if c > 1)
    if report.empty_texts:
        log.warning("%s/%s: excluded %d pairs with an empty side", PARADETOX.hub_id, language, report.empty_texts)
    if not kept:
        raise DataError(f"{PARADETOX.hub_id} language {language!r} has no pair with both sides non-empty.")
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(kept))
    name = language_name(language)
    return [{**kept[i], "language": language, "language_name": name} for i in order], report


DOC_LOADERS[(RTPLX.hub_id, "prompts")] = rtplx_docs
DOC_LOADERS[(PARADETOX.hub_id, "rewrites")] = detox_docs

__all__ += ["RTPLX", "RTPLX_MIRRORED", "LANGUAGE_NAMES", "language_name", "rtplx_rows", "rtplx_docs", "detox_docs"]


# --- safety-unit calibration sets (mirror files; see the mirror README) ----------------------------

MULTIJAIL_LANGUAGES = ("en", "zh", "it", "vi", "ar", "ko", "th", "bn", "sw", "jv")
# MultiJail as a per-language dataset (the reasoning-direction family has one task per language)
MULTIJAIL = DatasetSpec(hub_id="DAMO-NLP-SG/MultiJail", languages=MULTIJAIL_LANGUAGES, columns={"text": str},
                        mirror_folder="multijail")
_UNIT_FILES = {
    "advbench": ("advbench/harmful_behaviors.jsonl", ("id", "goal")),
    "safety_refusals": ("safety_refusals/train.jsonl", ("id", "prompt", "response")),
    "alpaca_seed_tasks": ("alpaca_seed_tasks/seed_tasks.jsonl", ("id", "instruction", "input", "output")),
}


def _unit_rows(relpath: str, columns: tuple[str, ...], data_dir: str | os.PathLike | None) -> list[dict[str, Any]]:
    root = resolve_data_dir(data_dir)
    if root is None:
        raise DataError(
            f"{relpath} is read from a local copy only: set ${DATA_DIR_ENV} (or metadata {DATA_DIR_KEY}) to the "
            "folder that holds it, e.g. shared/data."
        )
    path = root / relpath
    if not path.is_file():
        raise DataError(f"{path} is missing; the mirror root {root} must hold {relpath}.")
    check_utf8(path)
    rows = []
    with jsonlines.open(path) as reader:
        for lineno, row in enumerate(reader, start=1):
            missing = [c for c in columns if not isinstance(row, dict) or c not in row]
            if missing:
                raise DataError(f"{path}:{lineno}: columns {missing} are missing (expected {list(columns)}).")
            rows.append({c: row[c] for c in columns})
    if not rows:
        raise DataError(f"{path} holds no rows.")
    return rows


def advbench_rows(data_dir: str | os.PathLike | None = None) -> list[dict[str, Any]]:
    """The 520 AdvBench requests (``id``, ``goal``); rows 0-99 measure refusal, never calibrate."""
    return _unit_rows(*_UNIT_FILES["advbench"], data_dir)


def safety_refusal_rows(data_dir: str | os.PathLike | None = None) -> list[dict[str, Any]]:
    """AdvBench requests (rows 100-519) with refusals: ``id``, ``prompt``, ``response``."""
    return _unit_rows(*_UNIT_FILES["safety_refusals"], data_dir)


def alpaca_seed_rows(data_dir: str | os.PathLike | None = None) -> list[dict[str, Any]]:
    """The 175 Alpaca seed tasks: ``id``, ``instruction``, ``input`` (may be empty), ``output``."""
    return _unit_rows(*_UNIT_FILES["alpaca_seed_tasks"], data_dir)


def multijail_rows(language: str, data_dir: str | os.PathLike | None = None) -> list[dict[str, Any]]:
    """The 315 MultiJail requests in one language: ``id``, ``text``."""
    if language not in MULTIJAIL_LANGUAGES:
        raise DataError(f"MultiJail has no language {language!r}; it has {', '.join(MULTIJAIL_LANGUAGES)}.")
    return _unit_rows(f"multijail/{language}.jsonl", ("id", "text"), data_dir)


__all__ += ["MULTIJAIL_LANGUAGES", "MULTIJAIL", "advbench_rows", "safety_refusal_rows", "alpaca_seed_rows", "multijail_rows"]


# --- XSTest v2 (over-refusal; mirror folder xstest/, see the mirror README) -------------------------

XSTEST_COMPLETION_MODELS = ("gpt4", "llama2orig", "mistralinstruct")


def _xstest_file(relpath: str, columns: tuple[str, ...], data_dir) -> list[dict[str, Any]]:
    root = resolve_data_dir(data_dir)
    if root is not None and not (root / "xstest").is_dir():
        raise DataError(f"{root / 'xstest'} is missing: the mirror root {root} must hold XSTest v2 "
                        "(xstest/prompts.jsonl and xstest/completions/<model>.jsonl; see the mirror README).")
    return _unit_rows(relpath, columns, data_dir)


def xstest_rows(data_dir: str | os.PathLike | None = None, label: str | None = None,
                types: Iterable[str] | None = None) -> list[dict[str, Any]]:
    """The 450 XSTest v2 prompts (``id``, ``prompt``, ``type``, ``label``), in file order.

    ``label``: ``"safe"`` (250 prompts that only look risky: refusing them is over-refusal) or
    ``"unsafe"`` (200 contrasts, types starting ``contrast_``); ``types``: keep only these types
    (an unknown type is an error, so a typo cannot silently select nothing).
    """
    if label not in (None, "safe", "unsafe"):
        raise DataError(f"XSTest label {label!r}: choose 'safe' or 'unsafe'.")
    rows = _xstest_file("xstest/prompts.jsonl", ("id", "prompt", "type", "label"), data_dir)
    if types is not None:
        types = set(types)
        unknown = types - {r["type"] for r in rows}
        if unknown:
            raise DataError(f"unknown XSTest type(s) {sorted(unknown)}; known: {sorted({r['type'] for r in rows})}.")
        rows = [r for r in rows if r["type"] in types]
    return [r for r in rows if label is None or r["label"] == label]


def xstest_completion_rows(model: str, data_dir: str | os.PathLike | None = None) -> list[dict[str, Any]]:
    """A model's labelled replies to every XSTest prompt: ``id`` (``v2-<prompt id>``), ``type``,
    ``prompt``, ``completion``, ``final_label`` (``1_full_compliance``, ``2_full_refusal``,
    ``3_partial_refusal``)."""
    if model not in XSTEST_COMPLETION_MODELS:
        raise DataError(f"XSTest has no completions of {model!r}; it has {', '.join(XSTEST_COMPLETION_MODELS)}.")
    return _xstest_file(f"xstest/completions/{model}.jsonl", ("id", "type", "prompt", "completion", "final_label"),
                        data_dir)


__all__ += ["XSTEST_COMPLETION_MODELS", "xstest_rows", "xstest_completion_rows"]
