"""The ``layers`` setting: forms, negative indices, Python slice semantics, and its errors."""

from __future__ import annotations

import numpy as np
import pytest

from safespace_tasks.layer_spec import LayerSpecError, layer_label, parse_layers

L = 30  # SmolLM2-135M: 30 decoder blocks, hidden states 0..30


def test_all_is_every_hidden_state():
    assert parse_layers("all", L) == tuple(range(31))
    assert parse_layers("ALL", 4) == (0, 1, 2, 3, 4)
    assert parse_layers(":", 4) == (0, 1, 2, 3, 4)


@pytest.mark.parametrize("value, expected", [
    (-1, (30,)), ("-1", (30,)), (0, (0,)), (np.int64(7), (7,)), (-31, (0,)), (-2, (29,)), (" 12 ", (12,)),
])
def test_single_indices(value, expected):
    assert parse_layers(value, L) == expected


def test_ranges_follow_python_slices_over_the_hidden_states():
    hidden = list(range(L + 1))
    for spec, sl in [("0:12", slice(0, 12)), ("-4:", slice(-4, None)), ("::4", slice(None, None, 4)),
                     ("3:-1", slice(3, -1)), ("10:31", slice(10, 31)), (":5", slice(None, 5)),
                     ("-31:-29", slice(-31, -29)), ("2:20:6", slice(2, 20, 6))]:
        assert parse_layers(spec, L) == tuple(hidden[sl]), spec
    assert parse_layers("0:12", L)[-1] == 11  # end excluded
    assert parse_layers("-4:", L) == (27, 28, 29, 30)  # the final layer (after the norm) included
    assert parse_layers("0 : 3", L) == (0, 1, 2)


def test_lists_are_unioned_sorted_and_unique():
    assert parse_layers([8, 0, 4, -1], L) == (0, 4, 8, 30)
    assert parse_layers("0,4,8,-1", L) == (0, 4, 8, 30)
    assert parse_layers("0 4  8", L) == (0, 4, 8)
    assert parse_layers([30, -1, "28:", 29], L) == (28, 29, 30)
    assert parse_layers(["0:3", 10, "-2:"], L) == (0, 1, 2, 10, 29, 30)
    assert parse_layers((1, 2), 2) == (1, 2)
    assert parse_layers("0:2, 5", L) == (0, 1, 5)


@pytest.mark.parametrize("value, fragment", [
    (31, "out of range"), (-32, "out of range"), ("0:40", "outside"), ("-40:", "outside"),
    ("5:5", "selects no"), ("10:2", "selects no"), ("0:10:0", "step"), ("0:10:-1", "step"),
    ("a:3", "not an integer"), ("1:2:3:4", "more than two"), ("first", "neither"), ("", "empty"),
    (True, "boolean"), (2.0, "float"), ([], "empty"), ([[1, 2]], "nested"), (None, "no layer"),
    ({"a": 1}, "type dict"), ([1, "x"], "neither"),
])
def test_bad_values_name_key_value_and_forms(value, fragment):
    with pytest.raises(LayerSpecError) as err:
        parse_layers(value, L, key="sweep_layers")
    msg = str(err.value)
    assert fragment in msg
    assert "'sweep_layers'" in msg and repr(value) in msg
    assert "Allowed forms" in msg and "'all'" in msg


def test_bad_model_size():
    with pytest.raises(LayerSpecError, match="n_layers"):
        parse_layers("all", 0)
    assert issubclass(LayerSpecError, ValueError)


def test_labels():
    assert [layer_label(i, 4) for i in (0, 2, 4)] == ["embeddings", "block 2", "final (after norm)"]
