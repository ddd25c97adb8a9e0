"""allowed_images: which images a node runs (by reference pattern or by digest)."""
import pytest

from vpnagent.admission import ImageRefused, LocalImage, allowed, check

ECHO = LocalImage("vpnagent/echo:latest", "sha256:" + "a" * 64, ("registry.example.org/echo@sha256:" + "b" * 64,))


def test_no_policy_allows_everything():
    assert allowed(ECHO, None)


@pytest.mark.parametrize("pattern,ok", [
    ("vpnagent/*", True), ("vpnagent/echo", True), ("vpnagent/echo:latest", True), ("vpnagent/echo:1.*", False),
    ("other/*", False), ("*", True), ("sha256:" + "a" * 64, True), ("sha256:" + "c" * 64, False),
    ("registry.example.org/echo@sha256:" + "b" * 64, True), ("registry.example.org/echo@sha256:" + "d" * 64, False),
])
def test_patterns(pattern, ok):
    assert allowed(ECHO, (pattern,)) is ok


def test_a_bare_name_means_latest_on_both_sides():
    assert allowed(LocalImage("vpnagent/echo", "sha256:" + "a" * 64), ("vpnagent/echo:latest",))
    assert not allowed(LocalImage("vpnagent/echo:2", "sha256:" + "a" * 64), ("vpnagent/echo",))


def test_refusal_names_the_image_and_the_setting():
    with pytest.raises(ImageRefused, match=r"vpnagent/echo:latest .* not in this node's allowed_images"):
        check(ECHO, ("other/*",))
    check(ECHO, ("other/*", "vpnagent/*"))  # any pattern is enough
