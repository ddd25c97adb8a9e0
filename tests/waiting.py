"""The one way the tests wait: poll what they are about to assert until it holds or a
deadline passes, and on timeout fail with the last thing they saw.

The agent repairs, reports and cleans up in the background, so a test that sleeps a
fixed time and then asserts races it: on a slower machine the assert comes first. A test
instead names the condition it needs and waits for exactly that. A condition that must
*stay* true (a removed node never comes back) is watched over its whole window with
`holds_for`, never sampled once after a sleep."""
from __future__ import annotations

import time
from typing import Callable, TypeVar

T = TypeVar("T")

_NOT_SEEN = "(nothing observed: the first look did not finish)"


def wait_for(observe: Callable[[], T], what: str, timeout: float = 30.0, interval: float = 0.1,
             until: Callable[[T], bool] = bool, ignore: tuple[type[BaseException], ...] = ()) -> T:
    """Call `observe` every `interval` s until `until(value)` is true; return that value.

    `ignore` lists exceptions that mean "not yet" (a container being replaced right now);
    any other exception propagates at once. On timeout an AssertionError says what was
    awaited and shows the last value (or ignored exception) observed."""
    deadline = time.monotonic() + timeout
    last: object = _NOT_SEEN
    while True:
        try:
            value = observe()
        except ignore as exc:
            last = f"{type(exc).__name__}: {exc}"
        else:
            if until(value):
                return value
            last = value
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}; last observed: {_short(last)}")
        time.sleep(min(interval, remaining))


def wait_equal(observe: Callable[[], T], expected: T, what: str, timeout: float = 30.0, interval: float = 0.1,
               ignore: tuple[type[BaseException], ...] = ()) -> T:
    """wait_for with `value == expected` as the condition (the timeout message shows both)."""
    try:
        return wait_for(observe, what, timeout, interval, until=lambda v: v == expected, ignore=ignore)
    except AssertionError as exc:
        raise AssertionError(f"{exc}; expected: {_short(expected)}") from None


def holds_for(observe: Callable[[], T], what: str, seconds: float, interval: float = 0.1,
              until: Callable[[T], bool] = bool) -> int:
    """Assert that `until(observe())` is true at every look for `seconds`; returns how many
    looks were taken (a caller can check the window was really watched)."""
    deadline = time.monotonic() + seconds
    looks = 0
    while True:
        value = observe()
        looks += 1
        if not until(value):
            raise AssertionError(f"{what} stopped holding after {looks} look(s): {_short(value)}")
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return looks
        time.sleep(min(interval, remaining))


def _short(value: object, limit: int = 1500) -> str:
    text = repr(value) if not isinstance(value, str) else value
    return text if len(text) <= limit else text[:limit] + f"... ({len(text)} chars)"
