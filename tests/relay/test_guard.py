"""The PBX host's egress guard (``pbx-zrtp guard``): the nftables rules that keep the
PBX's relayed RTP between the PBX and the relays (Asterisk's re-INVITE leak, issue 15).

The rules are checked twice: as text (what each says), and for real in a network
namespace of the test's own, with real sockets standing in for Asterisk (A:P), the relay
(R:P toward the phone, R:ephemeral toward the PBX) and a phone.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
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


def _in_netns(*argv: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    """``argv`` in a new user and network namespace of its own (``unshare -rn``: no
    privileges needed), its loopback up; nothing outside sees its ruleset or traffic."""
    return subprocess.run(
        ["unshare", "-rn", "sh", "-c", 'ip link set lo up && exec "$@"', "sh", *argv],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.fixture
def netns() -> None:
    for tool in ("unshare", "ip", "nft"):
        if shutil.which(tool) is None:
            pytest.skip(f"needs {tool} (install.sh --dev installs iproute2 and nftables)")
    probe = _in_netns("nft", "list", "ruleset")
    if probe.returncode != 0:
        pytest.skip(f"no nftables in a namespace here: {probe.stderr.strip()}")


#: Runs inside the namespace: Asterisk on A=127.0.10.1:20002, the relay on R=127.0.10.2
#: (R:20002 toward the phone, an ephemeral port toward Asterisk), the phone on .3. It
#: exchanges packets, loads the rules (argv[1]) twice (a reload replaces them),
#: exchanges again, and prints both results and the table's listing.
KERNEL = """
import json, socket, subprocess, sys

def bound(host, port):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((host, port))
    s.settimeout(0.5)
    return s

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

def exchange():
    return {
        "asterisk to relay": passes(asterisk, relay_pbx, b"rtp"),
        "relay to asterisk": passes(relay_pbx, asterisk, b"rtp"),
        "relay to phone": passes(relay_phone, phone, b"srtp"),
        "asterisk to phone": passes(asterisk, phone, b"clear"),
        "asterisk rtcp to phone": passes(asterisk_rtcp, phone, b"clear rtcp"),
        "phone to asterisk": passes(phone, asterisk, b"injected"),
        "asterisk outside the range to phone": passes(asterisk_other, phone, b"not relayed"),
    }

before = exchange()
for _ in range(2):
    subprocess.run(["nft", "-f", sys.argv[1]], check=True)
after = exchange()
listing = subprocess.run(
    ["nft", "list", "table", "inet", "pbx_zrtp_guard"], capture_output=True, text=True, check=True
).stdout
print(json.dumps({"before": before, "after": after, "listing": listing}))
"""


def test_loaded_into_the_kernel_the_guard_drops_only_what_bypasses_the_relay(
    netns: None, tmp_path: Path
) -> None:
    rules = subprocess.run(
        [sys.executable, "-m", "pbx_zrtp.cli", "guard", "--config", _config(tmp_path, RELAY)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    (tmp_path / "guard.nft").write_text(rules)
    done = _in_netns(sys.executable, "-c", KERNEL, str(tmp_path / "guard.nft"))
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout)
    assert all(found["before"].values()), found["before"]  # without the guard: all pass
    assert found["after"] == {
        "asterisk to relay": True,
        "relay to asterisk": True,
        "relay to phone": True,
        "asterisk to phone": False,
        "asterisk rtcp to phone": False,
        "phone to asterisk": False,
        "asterisk outside the range to phone": True,
    }
    listing = found["listing"]
    assert listing.count("counter packets 2 ") == 1  # RTP and RTCP to the phone
    assert listing.count("counter packets 1 ") == 1  # the injected packet


# ---------------------------------------------------------------- the docs, as typed

DOCS = Path(__file__).resolve().parents[2] / "docs" / "asterisk.md"


def _guard_blocks() -> list[str]:
    text = DOCS.read_text()
    section = text[text.index("## The egress guard") :]
    section = section[: section.index("\n## ", 1)]
    blocks = section.split("```sh\n")[1:]
    return [block[: block.index("```")] for block in blocks]


def test_the_docs_commands_load_the_guard_as_typed(netns: None, tmp_path: Path) -> None:
    """docs/asterisk.md's lines, with /etc/pbx-zrtp in a temporary directory and
    pbx-zrtp this tree's: they write the file, load it and list the table."""
    load, boot = _guard_blocks()
    etc = tmp_path / "etc-pbx-zrtp"
    etc.mkdir()
    (etc / "relay.toml").write_text(textwrap.dedent(RELAY))
    lines = [line for line in load.splitlines() if line.strip()]
    assert lines[0].startswith("pbx-zrtp guard --config /etc/pbx-zrtp/relay.toml")
    script = "set -e\n" + "\n".join(lines).replace("/etc/pbx-zrtp", str(etc)).replace(
        "pbx-zrtp guard", f"{sys.executable} -m pbx_zrtp.cli guard"
    )
    done = _in_netns("sh", "-c", script)
    assert done.returncode == 0, (script, done.stderr)
    assert "table inet pbx_zrtp_guard" in done.stdout and "ip saddr 127.0.10.1" in done.stdout
    # at boot: the include line appended to Debian's stock /etc/nftables.conf parses
    include = next(line for line in boot.splitlines() if line.startswith("echo "))
    conf = tmp_path / "nftables.conf"
    conf.write_text("#!/usr/sbin/nft -f\n\nflush ruleset\n\ntable inet filter {\n}\n")
    line = include.replace("/etc/pbx-zrtp", str(etc)).replace("/etc/nftables.conf", str(conf))
    subprocess.run(["sh", "-c", line], check=True)
    assert f'include "{etc}/guard.nft"' in conf.read_text()
    check = _in_netns("nft", "-c", "-f", str(conf))
    assert check.returncode == 0, check.stderr
