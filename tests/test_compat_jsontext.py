"""`compat.jsontext`: orjson's speed, the standard library's exactness for integers past 64 bits."""

from __future__ import annotations

import orjson
import pytest

from labtel.collector.storage.client import TextNotUnicode, check_text
from labtel.query_api.compat import jsontext

BIG = 2**64  # one past what orjson writes


def test_integers_past_64_bits_round_trip_exactly_and_the_rest_as_orjson_writes_it() -> None:
    value = {"b": BIG, "a": [-BIG, 1.5, float("nan"), "ü"], "c": None}
    text = jsontext.dumps(value)
    assert text == b'{"b":18446744073709551616,"a":[-18446744073709551616,1.5,null,"\xc3\xbc"],"c":null}'
    assert jsontext.dumps(value, sort_keys=True).startswith(b'{"a":')
    assert jsontext.loads(text) == {"b": BIG, "a": [-BIG, 1.5, None, "ü"], "c": None}
    assert jsontext.loads(text.decode()) == jsontext.loads(text)
    small = {"n": 2**63 - 1, "id": "12345678901234567890123"}  # orjson's own path, and long digits in text
    assert jsontext.loads(jsontext.dumps(small)) == small
    assert jsontext.dumps(small) == orjson.dumps(small)


@pytest.mark.parametrize("text", ["[1e99999999999999999999x", "NaN", '{"n": 123456789012345678901, }'])
def test_text_that_is_not_json_is_orjsons_decode_error(text: str) -> None:
    with pytest.raises(orjson.JSONDecodeError):
        jsontext.loads(text)


def test_a_lone_surrogate_is_orjsons_encode_error_also_beside_a_long_integer() -> None:
    for value in ({"s": "\ud800"}, {"s": "\ud800", "n": BIG}):
        with pytest.raises(orjson.JSONEncodeError):
            jsontext.dumps(value)


def test_storage_refuses_a_parameter_holding_a_lone_surrogate_before_sending_it() -> None:
    """chDB failed such a statement as storage trouble (a 503 saying to try again), a server's
    driver with a UnicodeEncodeError (a 500): it is the caller's text, named as such."""
    check_text({"a": "plain", "b": ["Müller", "温度"], "c": 5, "d": {"k": ("x",)}})
    for bad in ({"s": "\ud800"}, {"ids": ["ok", "\udfff"]}, {"m": {"\ud800": "v"}}):
        with pytest.raises(TextNotUnicode, match="not valid Unicode"):
            check_text(bad)
