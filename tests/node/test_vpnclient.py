import pytest

from vpnagent.vpnclient import VPNError, check_ovpn

PEM = "-----BEGIN X-----\nAAAA\n-----END X-----"
GOOD = "client\ndev tun\nremote vpn 1194\n" + "".join(f"<{b}>\n{PEM}\n</{b}>\n" for b in ("ca", "cert", "key", "tls-crypt"))


def test_good_config_passes():
    check_ovpn(GOOD)


@pytest.mark.parametrize("text, words", [
    ("garbage", "lacks an inline <ca>"),
    (GOOD.replace("<key>", "<nokey>").replace("</key>", "</nokey>"), "<key>"),
    (GOOD + "up /bin/sh\n", "'up'"),
    (GOOD + "script-security 2\n", "'script-security'"),
    (GOOD + "x" * 70000, "64 KiB"),
])
def test_foreign_or_dangerous_configs_are_refused(text, words):
    with pytest.raises(VPNError, match=words):
        check_ovpn(text)
