"""The record log shared by the resumable benchmarks (exactpost.bench.records)."""

from __future__ import annotations

import json
import math

import pytest

from exactpost.bench.records import RecordLog, json_safe


def test_records_survive_a_torn_line_and_later_records_win(tmp_path):
    log = RecordLog(tmp_path / "c", {"n": 3}, fresh=False)
    log.append({"key": "a", "v": 1.0})
    log.append({"key": "b", "v": math.nan})
    log.append({"key": "a", "v": 2.0})
    with open(log.path, "a") as f:
        f.write('{"key": "c", "v"')  # a kill in the middle of a write
    again = RecordLog(tmp_path / "c", {"n": 3}, fresh=False)
    assert again.records == {"a": {"key": "a", "v": 2.0}, "b": {"key": "b", "v": None}}
    json.loads(again.path.read_text().splitlines()[2])  # strict JSON: NaN stored as null


def test_changed_settings_are_refused_or_discarded_with_fresh(tmp_path):
    RecordLog(tmp_path / "c", {"n": 3, "seed": 0}, fresh=False).append({"key": "a"})
    with pytest.raises(ValueError, match=r"n was 3\).*--fresh"):
        RecordLog(tmp_path / "c", {"n": 4, "seed": 0}, fresh=False)
    cleared = []
    log = RecordLog(tmp_path / "c", {"n": 4, "seed": 0}, fresh=True, on_clear=lambda: cleared.append(1))
    assert cleared == [1] and log.records == {}
    assert RecordLog(tmp_path / "c", {"n": 4, "seed": 0}, fresh=False).records == {}


def test_json_safe_replaces_non_finite_floats_recursively():
    assert json_safe({"a": [1.0, math.inf, (math.nan,)], "b": "x"}) == {"a": [1.0, None, [None]], "b": "x"}
