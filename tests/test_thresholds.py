"""Threshold files (``sigrl calibrate``'s output) and the tags they give, as the client and the server apply them."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from sigrl.serving.backend import tag_rows
from sigrl.thresholds import Thresholds


def test_labels_get_their_own_threshold_else_the_default_else_never_a_tag():
    with_default = Thresholds({"cat": 0.5, "dog": 0.2}, default=0.3)
    np.testing.assert_array_equal(with_default.of(["dog", "fox", "cat"]), [0.2, 0.3, 0.5])
    assert Thresholds({"cat": 0.5}).of(["cat", "fox"]).tolist() == [0.5, math.inf]

    scores = np.array([[0.5, 0.31, 0.6], [0.1, 0.29, 0.49]], dtype=np.float32)  # columns: cat, fox, dog
    assert [[name for name, _ in row] for row in with_default.tags(scores, ["cat", "fox", "dog"])] == \
        [["dog", "cat", "fox"], ["dog"]]  # at the threshold counts; best first
    assert Thresholds({"cat": 0.5}).tags(scores, ["cat", "fox", "dog"]) == [[("cat", 0.5)], []]


def test_ties_keep_the_vocabulary_order():
    tags = Thresholds({}, default=0.0).tags(np.array([[0.4, 0.7, 0.4]]), ["a", "b", "c"])
    assert [name for name, _ in tags[0]] == ["b", "a", "c"]


def test_json_round_trip_and_errors_name_the_source(tmp_path):
    path = tmp_path / "t.json"
    path.write_text(json.dumps({"cat": 0.5, "*": 0.25}))
    loaded = Thresholds.read(path)
    assert loaded == Thresholds({"cat": 0.5}, 0.25) and loaded.to_json() == {"cat": 0.5, "*": 0.25}
    for content, message in [("{not json", "is not JSON"), ("[0.5]", "must hold a non-empty JSON object"),
                             ("{}", "must hold a non-empty JSON object"),
                             ('{"cat": "high"}', "threshold of 'cat' must be a finite number"),
                             ('{"cat": true}', "threshold of 'cat' must be a finite number"),
                             ('{"*": NaN}', "threshold of '[*]' must be a finite number")]:
        path.write_text(content)
        with pytest.raises(ValueError, match=f"^{path}.*{message}"):
            Thresholds.read(path)


def test_served_tag_rows_are_padded_with_empty_names():
    rows = tag_rows(np.array([[0.9, 0.1, 0.8], [0.0, 0.0, 0.0]]), ("a", "b", "c"), Thresholds({}, default=0.5))
    assert rows.shape == (2, 2) and rows.tolist() == [[b"a", b"c"], [b"", b""]]
    none = tag_rows(np.zeros((2, 3)), ("a", "b", "c"), Thresholds({}, default=0.5))
    assert none.shape == (2, 0)
