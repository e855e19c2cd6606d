"""Comparing a shadow's answer with the primary's."""

from __future__ import annotations

import orjson

from gateway.shadow import agree

JSON = "application/json"


def v2(*data: float, shape: list[int] | None = None, version: str = "1") -> bytes:
    tensor = {"name": "y", "datatype": "FP32", "shape": shape or [len(data)], "data": list(data)}
    return orjson.dumps({"model_name": "m", "model_version": version, "outputs": [tensor]})


def test_v2_outputs_within_tolerance_agree_whatever_the_version_field() -> None:
    assert agree(v2(1.0, 2.0, version="7"), JSON, v2(1.00001, 2.0, version="9"), JSON)


def test_v2_outputs_plus_one_disagree() -> None:
    assert not agree(v2(1.0, 2.0), JSON, v2(2.0, 3.0), JSON)


def test_v2_shapes_and_names_count() -> None:
    assert not agree(v2(1.0, 2.0, shape=[2]), JSON, v2(1.0, 2.0, shape=[1, 2]), JSON)
    other = orjson.dumps({"outputs": [{"name": "z", "shape": [2], "data": [1.0, 2.0]}]})
    assert not agree(v2(1.0, 2.0), JSON, other, JSON)


def test_v2_outputs_match_by_name_in_any_order_with_nested_data() -> None:
    a = {"outputs": [{"name": "a", "shape": [2], "data": [1, 2]},
                     {"name": "b", "shape": [1, 2], "data": [[0.5, 0.25]]}]}  # fmt: skip
    b = {"outputs": [{"name": "b", "shape": [1, 2], "data": [0.5, 0.25]},
                     {"name": "a", "shape": [2], "data": [1, 2]}]}  # fmt: skip
    assert agree(orjson.dumps(a), JSON, orjson.dumps(b), JSON)


def test_v1_predictions_nested_lists() -> None:
    a = orjson.dumps({"predictions": [[0.1, 0.2], [0.3, 0.4]]})
    b = orjson.dumps({"predictions": [[0.10000001, 0.2], [0.3, 0.4]]})
    c = orjson.dumps({"predictions": [[1.1, 1.2], [1.3, 1.4]]})
    assert agree(a, JSON, b, JSON) and not agree(a, JSON, c, JSON)


def test_other_json_by_equality_and_bytes_byte_for_byte() -> None:
    assert agree(b'{"label": "cat"}', JSON, b'{"label":"cat"}', JSON)
    assert not agree(b'{"label": "cat"}', JSON, b'{"label": "dog"}', JSON)
    octet = "application/octet-stream"
    assert agree(b"\x00\x01", octet, b"\x00\x01", octet)
    assert not agree(b"\x00\x01", octet, b"\x00\x02", octet)
