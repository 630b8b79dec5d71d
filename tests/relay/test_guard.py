"""The PBX host's egress guard (``pbx-zrtp guard``): the nftables rules that keep the
PBX's relayed RTP between the PBX and the relays (Asterisk's re-INVITE leak, issue 15).

The rules are checked twice: as text (what each says), and for real in a network
namespace of the test's own, with real sockets standing in for Asterisk (A:P), the relay
(R:P toward the phone, R:ephemeral toward the PBX) and a phone.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from pbx_zrtp.cli import main
from pbx_zrtp.relay.guard import EgressGuard, GuardError


def test_the_rules_drop_the_pbx_s_relayed_rtp_to_anything_but_a_relay() -> None:
    text = EgressGuard.build("192.0.2.1", ["192.0.2.2"], (20000, 29998)).nft_ruleset()
    assert "ip saddr 192.0.2.1 udp sport 20000-29999 ip daddr != { 192.0.2.2 } counter drop" in text
    assert "ip daddr 192.0.2.1 udp dport 20000-29999 ip saddr != { 192.0.2.2 } counter drop" in text
    # loading it again replaces the table, and nothing else of the host's ruleset
    assert text.splitlines()[2:5] == [
        "table inet pbx_zrtp_guard",
        "delete table inet pbx_zrtp_guard",
        "table inet pbx_zrtp_guard {",
    ]
    assert "flush ruleset" not in text


def test_ipv6_and_several_relays_of_the_pbx_s_family() -> None:
    guard = EgressGuard.build(
        "2001:db8::1", ["2001:db8::2", "192.0.2.2", "2001:db8::3", "2001:db8::2"], (10000, 10010)
    )
    text = guard.nft_ruleset()
    assert (
        "ip6 saddr 2001:db8::1 udp sport 10000-10011 ip6 daddr != { 2001:db8::2, 2001:db8::3 }"
        in (text)
    )
    assert "192.0.2.2" not in text


@pytest.mark.parametrize(
    ("pbx", "relays", "message"),
    [
        ("0.0.0.0", ["192.0.2.2"], "relay.pbx_address: 0.0.0.0 matches every address"),
        ("::", ["2001:db8::2"], "relay.pbx_address: :: matches every address"),
        ("asterisk", ["192.0.2.2"], "relay.pbx_address: 'asterisk' is not an IP address"),
        ("192.0.2.1", ["192.0.2.1"], "is the PBX's own RTP address"),
        ("192.0.2.1", ["2001:db8::2"], "no relay address of the PBX's family (IPv4)"),
    ],
)
def test_a_guard_that_would_protect_nothing_or_cut_the_relay_off_is_refused(
    pbx: str, relays: list[str], message: str
) -> None:
    with pytest.raises(GuardError, match=message.replace("(", r"\(").replace(")", r"\)")):
        EgressGuard.build(pbx, relays, (10000, 20000))


def _config(tmp_path: Path, body: str) -> str:
    path = tmp_path / "relay.toml"
    path.write_text(textwrap.dedent(body))
    return str(path)


RELAY = """
[relay]
address = "127.0.10.2"
pbx_address = "127.0.10.1"
ports = "20000-20100"
"""


def test_the_command_prints_the_rules_of_the_configuration(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["guard", "--config", _config(tmp_path, RELAY)]) == 0
    out = capsys.readouterr().out
    assert "ip saddr 127.0.10.1 udp sport 20000-20101 ip daddr != { 127.0.10.2 } counter drop" in (
        out
    )


def test_the_command_allows_every_relay_the_adapters_steer_calls_to(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    body = RELAY + textwrap.dedent(
        """
        [asterisk]
        secret = "x"
        [[asterisk.relays]]
        name = "a"
        control = "unix:/run/pbx-zrtp/a.sock"
        address = "127.0.10.7"
        [[asterisk.relays]]
        name = "b"
        control = "unix:/run/pbx-zrtp/b.sock"
        address = "127.0.10.8"
        """
    )
    assert main(["guard", "--config", _config(tmp_path, body), "--pbx-address", "127.0.10.9"]) == 0
    out = capsys.readouterr().out
    # the adapter's pool, not the in-process relay it does not use
    assert "ip saddr 127.0.10.9 udp sport 20000-20101 ip daddr != { 127.0.10.7, 127.0.10.8 }" in (
        out
    )


def test_a_wrong_setting_is_one_line_naming_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["guard", "--config", _config(tmp_path, RELAY), "--pbx-address", "0.0.0.0"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(
        "pbx-zrtp: configuration error: relay.pbx_address"
    )
    assert "Traceback" not in err


# ---------------------------------------------------------------- in the kernel


def _netns_reason() -> str | None:
    if os.geteuid() != 0:
        return "needs root to make a network namespace"
    for tool in ("ip", "nft"):
        if shutil.which(tool) is None:
            return f"needs {tool} (install.sh --dev installs iproute2 and nftables)"
    return None


@pytest.fixture
def netns() -> Iterator[str]:
    reason = _netns_reason()
    if reason:
        pytest.skip(reason)
    name = f"pbxzrtp-guard-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        subprocess.run(["ip", "netns", "exec", name, "ip", "link", "set", "lo", "up"], check=True)
        probe = subprocess.run(
            ["ip", "netns", "exec", name, "nft", "list", "ruleset"], capture_output=True, text=True
        )
        if probe.returncode != 0:
            pytest.skip(f"this kernel has no nftables: {probe.stderr.strip()}")
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


#: Runs inside the namespace: Asterisk on A=127.0.10.1:20002, the relay on R=127.0.10.2
#: (R:20002 toward the phone, an ephemeral port toward Asterisk), the phone on .3.
SOCKETS = """
import json, socket
def bound(host, port):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((host, port)); s.settimeout(0.5); return s
asterisk = bound("127.0.10.1", 20002)
asterisk_rtcp = bound("127.0.10.1", 20003)
asterisk_other = bound("127.0.10.1", 30000)  # outside the relayed range
relay_phone = bound("127.0.10.2", 20002)
relay_pbx = bound("127.0.10.2", 0)
phone = bound("127.0.10.3", 7078)
def passes(sender, receiver, data):
    try:
        sender.sendto(data, receiver.getsockname())
    except PermissionError:  # what an output drop looks like to the sender
        return False
    try:
        return receiver.recv(100) == data
    except socket.timeout:
        return False
print(json.dumps({
    "asterisk to relay": passes(asterisk, relay_pbx, b"rtp"),
    "relay to asterisk": passes(relay_pbx, asterisk, b"rtp"),
    "relay to phone": passes(relay_phone, phone, b"srtp"),
    "asterisk to phone": passes(asterisk, phone, b"clear"),
    "asterisk rtcp to phone": passes(asterisk_rtcp, phone, b"clear rtcp"),
    "phone to asterisk": passes(phone, asterisk, b"injected"),
    "asterisk outside the range to phone": passes(asterisk_other, phone, b"not relayed"),
}))
"""


def _exchange(netns: str) -> dict[str, bool]:
    import json

    out = subprocess.run(
        ["ip", "netns", "exec", netns, sys.executable, "-c", SOCKETS],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    result: dict[str, bool] = json.loads(out)
    return result


def test_loaded_into_the_kernel_the_guard_drops_only_what_bypasses_the_relay(
    netns: str, tmp_path: Path
) -> None:
    before = _exchange(netns)
    assert all(before.values()), before  # without the guard, everything passes
    rules = subprocess.run(
        [sys.executable, "-m", "pbx_zrtp.cli", "guard", "--config", _config(tmp_path, RELAY)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    for _ in range(2):  # loading it twice replaces it (a reload, a restart)
        subprocess.run(
            ["ip", "netns", "exec", netns, "nft", "-f", "-"], input=rules, text=True, check=True
        )
    after = _exchange(netns)
    assert after == {
        "asterisk to relay": True,
        "relay to asterisk": True,
        "relay to phone": True,
        "asterisk to phone": False,
        "asterisk rtcp to phone": False,
        "phone to asterisk": False,
        "asterisk outside the range to phone": True,
    }
    listing = subprocess.run(
        ["ip", "netns", "exec", netns, "nft", "list", "table", "inet", "pbx_zrtp_guard"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert listing.count("counter packets 2 ") == 1  # RTP and RTCP to the phone
    assert listing.count("counter packets 1 ") == 1  # the injected packet
