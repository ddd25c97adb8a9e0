"""The tests' wait helper: it returns what it waited for, and when the condition never comes
it fails with the last observed state instead of a bare timeout."""
import itertools

import pytest

from tests.waiting import holds_for, wait_equal, wait_for


def test_returns_the_first_value_that_meets_the_condition():
    counter = itertools.count()
    assert wait_for(lambda: next(counter), "the counter to reach 3", timeout=5, interval=0.001,
                    until=lambda v: v >= 3) == 3


def test_timeout_names_the_condition_and_the_last_observed_state():
    states = iter(["starting", "connecting", "connecting"] + ["still connecting"] * 1000)
    with pytest.raises(AssertionError) as err:
        wait_for(lambda: next(states), "the VPN to connect", timeout=0.2, interval=0.01,
                 until=lambda v: v == "connected")
    msg = str(err.value)
    assert "waiting for the VPN to connect" in msg and "last observed: still connecting" in msg


def test_listed_exceptions_mean_not_yet_and_show_up_in_the_message():
    calls = {"n": 0}

    def flaky():
        calls["n"] += 1
        if calls["n"] < 3:
            raise KeyError("container being replaced")
        return "up"

    assert wait_for(flaky, "the container", timeout=5, interval=0.001, ignore=(KeyError,)) == "up"
    with pytest.raises(AssertionError, match="KeyError: 'gone'"):
        wait_for(lambda: {}["gone"], "a key", timeout=0.05, interval=0.01, ignore=(KeyError,))


def test_other_exceptions_are_not_swallowed():
    with pytest.raises(ZeroDivisionError):
        wait_for(lambda: 1 / 0, "nothing", timeout=5, ignore=(KeyError,))


def test_wait_equal_shows_expected_and_observed():
    with pytest.raises(AssertionError) as err:
        wait_equal(lambda: {"holders": 1}, {"holders": 0}, "no holders left", timeout=0.05, interval=0.01)
    assert "last observed: {'holders': 1}" in str(err.value) and "expected: {'holders': 0}" in str(err.value)


def test_holds_for_watches_the_whole_window_and_fails_on_the_first_break():
    assert holds_for(lambda: True, "a condition", seconds=0.05, interval=0.01) >= 3
    values = iter([True, True, False, True])
    with pytest.raises(AssertionError, match="stopped holding after 3 look"):
        holds_for(lambda: next(values), "a removed node staying out", seconds=5, interval=0.001)
