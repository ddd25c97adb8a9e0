"""The request-value checks on their own (server_ext/inputs.py): each refusal names the
value and says what to send instead."""
import pytest

from server_ext.inputs import MAX_DEPTH, MAX_ID, InputError, check_id, nesting_depth, parse_id, parse_json


@pytest.mark.parametrize("text, depth", [
    ("1", 0), ("[]", 1), ('{"a": [1, {"b": []}]}', 4), ('"[[[[["', 0), ('["\\"[[", []]', 2),
    ("[" * 5000 + "]" * 5000, 5000),
])
def test_nesting_depth_skips_strings(text, depth):
    assert nesting_depth(text) == depth


def test_parse_json_takes_the_limit_and_refuses_one_level_more():
    assert parse_json(("[" * MAX_DEPTH + "]" * MAX_DEPTH).encode()) == eval("[" * MAX_DEPTH + "]" * MAX_DEPTH)
    with pytest.raises(InputError, match=f"deeper than {MAX_DEPTH}"):
        parse_json(("[" * (MAX_DEPTH + 1) + "]" * (MAX_DEPTH + 1)).encode())


@pytest.mark.parametrize("raw, words", [
    (b"[NaN]", "NaN"), (b"-Infinity", "-Infinity"), (b"[1e400]", "1e400"), (b'{"k": ["\\u0000"]}', "NUL"),
    (b'{"\\u0000": 1}', "NUL"), (b"\xfe", "UTF-8"), (b"{", "not valid JSON"), (b"1" * 5000, "not valid JSON"),
])
def test_parse_json_refusals(raw, words):
    with pytest.raises(InputError, match=words):
        parse_json(raw)


def test_parse_json_keeps_big_integers_and_ordinary_floats():
    assert parse_json(b'{"n": 1180591620717411303424, "f": 1.5e300}') == {"n": 2**70, "f": 1.5e300}


def test_ids_must_fit_postgresql_integer():
    assert check_id("x", 0) == 0 and check_id("x", MAX_ID) == MAX_ID
    for bad in (-1, MAX_ID + 1, 2**70):
        with pytest.raises(InputError, match="x must be an integer from 0 to 2147483647"):
            check_id("x", bad)
    with pytest.raises(InputError, match="a 1001-bit number"):
        check_id("x", 2**1000)
    assert parse_id("q", "42") == 42
    for raw in ("\u00b2", "\u0661", "+1", " 1", "1" * 11, "", "0x10"):
        with pytest.raises(InputError, match="q must be an integer"):
            parse_id("q", raw)
