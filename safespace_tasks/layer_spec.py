"""The ``layers`` setting: which hidden states a task reads.

Pure Python (numpy only for integer types); knows nothing of torch or lm-eval.

Hidden-state indices follow ``output_hidden_states`` of transformers, for a model with L decoder
blocks: index 0 is the embedding output, index i (1 <= i <= L) the output of block i, and index L
(also written -1) the final layer, the last block's output **after the model's final norm**. So
there are L + 1 hidden states, and a negative index counts from the end of that list exactly as
``hidden_states[-k]`` does: -1 = L, -2 = L - 1 (the output of block L - 1), ..., -(L + 1) = 0.

Accepted forms of the setting (one value, or a list whose items are unioned):

``"all"``
    every hidden state, 0..L.
``5``, ``-1``, ``"5"``, ``"-1"``
    one index.
``"a:b"``, ``"a:b:s"``, ``":b"``, ``"a:"``, ``":"``
    a range with **Python slice semantics over the list of L + 1 hidden states**: ``"0:12"`` is
    ``hidden_states[0:12]``, i.e. indices 0..11 (the end is excluded), ``"-4:"`` the last four
    (L-3..L, the final layer included), ``"::4"`` every fourth. Unlike a Python slice, a bound
    outside -(L + 1)..L + 1 is an error (not silently clipped), as is a range that selects
    nothing or a step that is not positive.
``"0,4,8"``, ``"0 4 -1"``, ``[0, 4, "10:12", -1]``
    a list of any of the above; the result is their union.

:func:`parse_layers` returns the sorted, de-duplicated absolute indices (each in 0..L), so the same
state named twice (``[30, -1]`` with L = 30) is read once.
"""

from __future__ import annotations

import re
from typing import Any, Sequence

import numpy as np

__all__ = ["LayerSpecError", "ALLOWED_FORMS", "parse_layers", "layer_label", "normalize_spec", "is_plain", "resolve_spec",
           "absolute_indices", "resolve_names", "unsuffixed_position", "plain_suffixes"]

ALLOWED_FORMS = (
    "'all'; an integer index such as 5 or -1 (-1 = final layer after the norm); a range 'a:b' or 'a:b:step' "
    "with Python slice semantics over the hidden states 0..L (end excluded, e.g. '0:12' = 0..11, '-4:' = the last "
    "four); or a list of these, as a YAML list or a string separated by commas or spaces (e.g. '0,4,8,-1')"
)

_INT = re.compile(r"^[+-]?\d+$")


class LayerSpecError(ValueError):
    """A ``layers`` setting that cannot be read (the message names the key, the value and the allowed forms)."""


def _fail(key: str, value: Any, problem: str) -> LayerSpecError:
    return LayerSpecError(f"setting {key!r} = {value!r}: {problem}. Allowed forms: {ALLOWED_FORMS}.")


def _absolute(item: int, n_layers: int) -> int | None:
    """THE arithmetic of a hidden-state index: negative counts from the end (-1 = n_layers); None when out of range."""
    if not -(n_layers + 1) <= item <= n_layers:
        return None
    return item + n_layers + 1 if item < 0 else item


def _index(item: int, n_layers: int, key: str, value: Any) -> int:
    idx = _absolute(item, n_layers)
    if idx is None:
        raise _fail(
            key, value,
            f"layer {item} is out of range for a model with {n_layers} decoder layers (hidden-state indices run "
            f"0..{n_layers}, or -{n_layers + 1}..-1 counting from the final layer)",
        )
    return idx


def _range(text: str, n_layers: int, key: str, value: Any) -> list[int]:
    parts = text.split(":")
    if len(parts) > 3:
        raise _fail(key, value, f"range {text!r} has more than two ':'")
    for p in parts:
        if p.strip() and not _INT.match(p.strip()):
            raise _fail(key, value, f"range {text!r} holds {p.strip()!r}, which is not an integer")
    start, stop = (int(p) if p.strip() else None for p in parts[:2])
    step = int(parts[2]) if len(parts) == 3 and parts[2].strip() else 1
    if step < 1:
        raise _fail(key, value, f"range {text!r} has step {step}; the step must be a positive integer")
    count = n_layers + 1
    for name, bound in (("start", start), ("end", stop)):
        if bound is not None and not -count <= bound <= count:
            raise _fail(
                key, value,
                f"range {text!r}: {name} {bound} lies outside -{count}..{count} for a model with {n_layers} decoder "
                f"layers ({count} hidden states)",
            )
    selected = list(range(count))[slice(start, stop, step)]
    if not selected:
        raise _fail(
            key, value,
            f"range {text!r} selects no hidden state of a model with {n_layers} decoder layers (the end is excluded: "
            f"'{start if start is not None else ''}:{stop}' stops before {stop})",
        )
    return selected


def _item(item: Any, n_layers: int, key: str, value: Any) -> list[int]:
    if isinstance(item, (bool, np.bool_)):
        raise _fail(key, value, f"{item!r} is a boolean, not a layer")
    if isinstance(item, (int, np.integer)):
        return [_index(int(item), n_layers, key, value)]
    if isinstance(item, str):
        text = re.sub(r"\s*:\s*", ":", item.strip())  # '0 : 4' is one range, not three entries
        if not text:
            raise _fail(key, value, "an empty entry names no layer")
        if re.search(r"[,\s]", text):
            out: list[int] = []
            for piece in re.split(r"[,\s]+", text):
                if piece:
                    out.extend(_item(piece, n_layers, key, value))
            return out
        if text.lower() == "all":
            return list(range(n_layers + 1))
        if ":" in text:
            return _range(text, n_layers, key, value)
        if _INT.match(text):
            return [_index(int(text), n_layers, key, value)]
        raise _fail(key, value, f"{text!r} is neither 'all', an integer nor a range")
    if isinstance(item, float):
        raise _fail(key, value, f"{item!r} is a float; layer indices are integers")
    raise _fail(key, value, f"an entry of type {type(item).__name__} is not a layer")


def parse_layers(value: Any, n_layers: int, *, key: str = "layers") -> tuple[int, ...]:
    """Sorted unique hidden-state indices (each in ``0..n_layers``) named by a ``layers`` setting.

    ``n_layers`` is the number of decoder blocks L; the model has L + 1 hidden states. ``key`` is the
    setting's name as the user wrote it, used in error messages. Raises :class:`LayerSpecError`.
    """
    if isinstance(n_layers, bool) or not isinstance(n_layers, (int, np.integer)) or n_layers < 1:
        raise LayerSpecError(f"n_layers must be a positive integer (the model's number of decoder blocks); got {n_layers!r}.")
    n_layers = int(n_layers)
    if value is None:
        raise _fail(key, value, "no layer given")
    if isinstance(value, (str, int, np.integer, bool, np.bool_, float)):
        items: Sequence[Any] = [value]
    elif isinstance(value, (list, tuple, np.ndarray)):
        items = list(value)
        if not items:
            raise _fail(key, value, "the list is empty")
    else:
        raise _fail(key, value, f"a value of type {type(value).__name__} is not a layer setting")
    out: set[int] = set()
    for item in items:
        if isinstance(item, (list, tuple)):
            raise _fail(key, value, f"nested list {item!r}; give one flat list")
        out.update(_item(item, n_layers, key, value))
    return tuple(sorted(out))


def layer_label(index: int, n_layers: int) -> str:
    """A short human name of hidden-state ``index``: 'embeddings', 'block 7', 'final (after norm)'."""
    if index == 0:
        return "embeddings"
    if index == n_layers:
        return "final (after norm)"
    return f"block {index}"


# --------------------------------------------------------------------------- the setting before the model is known

# A stand-in depth for checking a setting's syntax before any model is loaded (no real model has as many).
_SYNTAX_DEPTH = 10**6


def normalize_spec(value: Any, *, key: str = "layers") -> tuple[int | str, ...]:
    """The ``layers`` setting as a flat tuple of entries (ints, and strings for ``all`` and ranges),
    checked for syntax without a model: ``"0,8,-1"`` -> ``(0, 8, -1)``, ``[-1, "0:12"]`` -> ``(-1, "0:12")``.

    What needs the model's depth (an index or a bound out of range) is checked when the depth is
    known (:func:`resolve_spec`). Raises :class:`LayerSpecError`.
    """
    if value is None:
        raise _fail(key, value, "no layer given")
    if isinstance(value, (list, tuple, np.ndarray)):
        items = list(value)
        if not items:
            raise _fail(key, value, "the list is empty")
    else:
        items = [value]
    out: list[int | str] = []
    for item in items:
        if isinstance(item, (list, tuple)):
            raise _fail(key, value, f"nested list {item!r}; give one flat list")
        if isinstance(item, (bool, np.bool_)):
            raise _fail(key, value, f"{item!r} is a boolean, not a layer")
        if isinstance(item, (int, np.integer)):
            out.append(int(item))
            continue
        if isinstance(item, float):
            raise _fail(key, value, f"{item!r} is a float; layer indices are integers")
        if not isinstance(item, str):
            raise _fail(key, value, f"an entry of type {type(item).__name__} is not a layer")
        text = re.sub(r"\s*:\s*", ":", item.strip())
        if not text:
            raise _fail(key, value, "an empty entry names no layer")
        for piece in (p for p in re.split(r"[,\s]+", text) if p):
            if _INT.match(piece):
                out.append(int(piece))
            elif piece.lower() == "all":
                out.append("all")
            elif ":" in piece:
                _check_range_syntax(piece, key, value)
                out.append(piece)
            else:
                raise _fail(key, value, f"{piece!r} is neither 'all', an integer nor a range")
    return tuple(out)


def _check_range_syntax(text: str, key: str, value: Any) -> None:
    parts = text.split(":")
    if len(parts) > 3:
        raise _fail(key, value, f"range {text!r} has more than two ':'")
    bounds = []
    for p in parts:
        if p.strip() and not _INT.match(p.strip()):
            raise _fail(key, value, f"range {text!r} holds {p.strip()!r}, which is not an integer")
        bounds.append(int(p) if p.strip() else None)
    if len(parts) == 3 and bounds[2] is not None and bounds[2] < 1:
        raise _fail(key, value, f"range {text!r} has step {bounds[2]}; the step must be a positive integer")
    start, stop = bounds[0], bounds[1]
    # empty whatever the depth: both bounds on the same side of zero and stop <= start
    if start is not None and stop is not None and (start >= 0) == (stop >= 0) and stop <= start:
        raise _fail(key, value, f"range {text!r} selects no hidden state (the end is excluded: it stops before {stop})")


def is_plain(spec: tuple[int | str, ...]) -> bool:
    """True when the setting names integer indices only (no ``all``, no range)."""
    return all(isinstance(x, int) for x in spec)


def resolve_spec(spec: Any, n_layers: int, *, key: str = "layers") -> tuple[tuple[int, ...], tuple[str, ...]]:
    """Absolute indices in the order the setting names them, and each one's metric-name label.

    Entries are resolved one by one (:func:`parse_layers`): an integer gives its index, ``all`` and a
    range their indices in ascending order; an index named again is dropped (its first mention
    counts). The label is the index as written for an integer entry (``-1`` stays ``"-1"``, as the
    metric suffix ``_layer-1`` has always been) and the absolute index for ``all`` and ranges.
    So ``[-1, "all"]`` with L = 30 gives ``(30, 0, 1, ..., 29)`` and labels ``("-1", "0", ..., "29")``.
    """
    items = normalize_spec(spec, key=key)
    indices: list[int] = []
    labels: list[str] = []
    for item in items:
        resolved = parse_layers(item, n_layers, key=key)
        for idx in resolved:
            if idx in indices:
                continue
            indices.append(idx)
            labels.append(str(item) if isinstance(item, int) else str(idx))
    return tuple(indices), tuple(labels)


def absolute_indices(layers: Sequence[int], n_layers: int) -> tuple[int, ...]:
    """Plain indices (as a request carries them) as absolute hidden-state indices, in the order given.

    Each must lie in ``0..n_layers`` (or ``-(n_layers + 1)..-1``) and name a different hidden state.
    Raises :class:`LayerSpecError`.
    """
    out = []
    for layer in layers:
        if isinstance(layer, (bool, np.bool_)) or not isinstance(layer, (int, np.integer)):
            raise LayerSpecError(f"layer indices must be integers; got {layer!r}.")
        idx = _absolute(int(layer), int(n_layers))
        if idx is None:
            raise LayerSpecError(
                f"layer {layer} is out of range for a model with {n_layers} decoder layers: hidden-state indices "
                f"run 0..{n_layers} (or -{n_layers + 1}..-1)."
            )
        out.append(idx)
    if len(set(out)) != len(out):
        raise LayerSpecError(f"layers {list(layers)} name the same hidden state twice.")
    return tuple(out)


def resolve_names(spec: Any, n_layers: int, *, key: str = "layers") -> tuple[tuple[int, ...], list[str]]:
    """The absolute indices a ``layers`` setting reads on a model with ``n_layers`` decoder blocks, and
    the metric-name suffix of each: '' for the deepest index read (the final layer whenever it is
    read), ``_layer<label>`` for the others (:func:`resolve_spec` labels). What a task reports per
    layer comes from here, for plain indices and sweeps alike.
    """
    indices, labels = resolve_spec(spec, n_layers, key=key)
    return indices, plain_suffixes(labels, unsuffixed_position(indices, absolute=True))


def unsuffixed_position(layers, absolute: bool = False) -> int:
    """Position in ``layers`` of the layer reported under the plain metric names: the deepest one read.

    ``absolute``: the entries are hidden-state indices (0..L). Otherwise they are as written (negative
    counts from the final layer): -1 is the deepest; with all entries of one sign the largest is; with
    mixed signs and no -1 the depth decides, unknown here (position 0, corrected once it is known).
    """
    items = [int(x) for x in layers]
    if absolute:
        return max(range(len(items)), key=lambda j: (items[j], -j))
    if -1 in items:
        return items.index(-1)
    if all(x >= 0 for x in items) or all(x < 0 for x in items):
        return max(range(len(items)), key=lambda j: (items[j], -j))
    return 0


def plain_suffixes(labels, position: int) -> list[str]:
    """'' at ``position``, '_layer<label>' elsewhere."""
    return ["" if j == position else f"_layer{label}" for j, label in enumerate(labels)]
