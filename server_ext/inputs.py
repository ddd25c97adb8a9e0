"""What a request may carry before any of it reaches the store.

The store's limits are not Python's: an id column holds at most 2**31 - 1 on PostgreSQL
(SQLite: 2**63 - 1), PostgreSQL text cannot hold NUL, and neither backend's JSON takes
NaN or Infinity. Python's JSON parser, for its part, recurses once per nesting level. So
every value is checked here first and refused with a message naming it (HTTP 400),
instead of failing inside the database or the parser (HTTP 500)."""
from __future__ import annotations

import json
import math
import re
from typing import Any, Callable

MAX_ID = 2**31 - 1  # PostgreSQL `integer`, the type of every id column
MAX_DEPTH = 32  # task input and run results are shallow; 32 levels is room to spare

_STRING_OR_BRACKET = re.compile(r'"(?:[^"\\]|\\.)*"|[\[\]{}]')
_DIGITS = re.compile(r"[0-9]{1,10}")


class InputError(ValueError):
    """A request value the server refuses (HTTP 400); the message names it and says why."""


def parse_json(raw: bytes, what: str = "request body") -> Any:
    """The JSON document in `raw`, refused when nested deeper than MAX_DEPTH (checked
    before parsing, so a 30,000-deep document costs one linear scan), when it holds NaN or
    an infinite number, or a string with a NUL character. `what` names the document in
    the messages (the request body, or a value decoded from it)."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise InputError(f"{what} is not UTF-8") from None
    if nesting_depth(text) > MAX_DEPTH:
        raise InputError(f"{what} is nested deeper than {MAX_DEPTH} levels")
    try:
        value = json.loads(text, parse_constant=_refuse_constant(what), parse_float=_finite_float(what))
    except InputError:
        raise
    except ValueError as exc:
        must = " must be a JSON object and" if what == "request body" else ""
        raise InputError(f"{what}{must} is not valid JSON: {exc}") from None
    _refuse_nul(value, what)
    return value


def nesting_depth(text: str) -> int:
    """The deepest bracket nesting of a JSON text, strings skipped."""
    depth = deepest = 0
    for m in _STRING_OR_BRACKET.finditer(text):
        token = m.group()
        if token in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif token in "]}":
            depth -= 1
    return deepest


def _refuse_constant(what: str) -> Callable[[str], float]:
    def refuse(name: str) -> float:
        raise InputError(f"{what} holds {name}, which JSON does not allow; send a number or null")
    return refuse


def _finite_float(what: str) -> Callable[[str], float]:
    def parse(text: str) -> float:
        value = float(text)
        if not math.isfinite(value):
            raise InputError(f"{what} holds the number {text[:20]}, too large for a float; send a smaller one")
        return value
    return parse


def _refuse_nul(value: Any, what: str) -> None:
    """Walks the (depth-bounded) document without recursion."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            check_text(f"a string in the {what}", item)
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)


def check_text(what: str, value: str) -> str:
    if "\x00" in value:
        raise InputError(f"{what} contains a NUL character (\\u0000), which the store cannot keep; remove it")
    return value


def check_id(what: str, value: int) -> int:
    """An id (or count) the store can hold: 0 to MAX_ID."""
    if not 0 <= value <= MAX_ID:
        raise InputError(f"{what} must be an integer from 0 to {MAX_ID}, got {_short(value)}")
    return value


def check_ids(what: str, value: list, most: int) -> list[int]:
    """A list of at most `most` ids (true and false are not ids, though Python counts them)."""
    if len(value) > most:
        raise InputError(f"{what} holds {len(value)} entries; send at most {most}")
    for item in value:
        if not isinstance(item, int) or isinstance(item, bool):
            raise InputError(f"{what} must be a list of integer ids, got {type(item).__name__} {_shown(item)}")
        check_id(what, item)
    return value


def _shown(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 24 else text[:20] + "..."


def parse_id(what: str, raw: str) -> int:
    """A decimal id from a query string: ASCII digits only (str.isdigit takes '²', which
    int() refuses), within the store's range."""
    if not _DIGITS.fullmatch(raw):
        raise InputError(f"{what} must be an integer from 0 to {MAX_ID}, got {raw[:20]!r}")
    return check_id(what, int(raw))


def _short(value: int) -> str:
    text = str(value) if value.bit_length() < 200 else f"a {value.bit_length()}-bit number"
    return text if len(text) <= 24 else text[:20] + "..."
