"""Call changes through a real Asterisk (issue 15, item 4): transfers, park, pickup, hold.

The lab of ``test_asterisk_real.py`` (Asterisk on A, the relay on R, linphonec phones
on their own loopback addresses) with three more phones that Asterisk calls or that
call in: carol (auto-answers), dave (auto-answers, and calls to retrieve or pick up),
erin (rings without answering: the call to pick up). Every phone speaks ZRTP and every
leg is ``required``. For each change the test checks, on the real PBX:

- the legs that stay keep their ZRTP session (same SAS in the relay, same call id) and
  their media keeps flowing through the relay as SRTP (counters grow, no packet
  refused, the phone's SRTP never fails: nothing reached it in the clear);
- a leg that is new (the transfer target, the retriever, the picker) has its own ZRTP
  session before Asterisk bridges it;
- the relay links the legs of the new bridge (one bridge id, ``sas_relay`` "none":
  Linphone cannot enroll) and the channel variables say so;
- the leg that left (transferer) ends, and no link points to it.

The AMI events of each change are kept in the test's tmp directory
(``<name>-ami-events.txt``): ``tests/asterisk/fixtures/`` holds the ones the fakes replay.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.procs import (
    LabGuard,
    Proc,
    free_tcp_port,
    guard_unavailable,
    hangup_phone,
    link_down,
    start_relay,
    wait_port,
    write,
    write_tone,
)
from tests.integration.test_asterisk_real import (
    ASTERISK,
    CAROL,
    LINPHONEC,
    MODULES,
    PHONE,
    RTP_PORTS,
    TEST_AMI_SECRET,
    TEST_AMI_USER,
    AmiClient,
    Lab,
    _free_udp_port,
    write_asterisk_config,
    write_linphonerc,
    write_relay_config,
)

pytestmark = pytest.mark.integration

A = "127.0.10.1"
R = "127.0.10.2"
PHONES = {"dave": "127.0.10.5", "erin": "127.0.10.6"}
SECURE = r"fully encrypted and auth token is (\S+?)\.?\s*$"
#: What the lab adds to Asterisk: transfers by REFER, parking, pickup, the holding bridge.
EXTRA_MODULES = (
    "res_pjsip_refer.so",
    "bridge_holding.so",
    "bridge_builtin_features.so",
    "res_parking.so",
    "app_directed_pickup.so",
    "res_musiconhold.so",
)


def _endpoint(name: str, address: str, port: int) -> str:
    return f"""
[{name}]
type = endpoint
transport = transport-udp
context = from-phones
disallow = all
allow = ulaw,alaw
aors = {name}
media_address = {R}
bind_rtp_to_media_address = no
rtp_symmetric = yes
direct_media = no

[{name}]
type = aor
contact = sip:{name}@{address}:{port}
"""


#: The lab's call-change extensions (the samples' 703-706 and *8, *7x with lab names).
EXTENSIONS = """
[from-phones]
; the transfer target: dave, through the relay
exten => 704,1,Gosub(pbx-zrtp,s,1(required))
 same => n,Dial(PJSIP/dave,20,U(pbx-zrtp^required^704))
 same => n,Hangup()
; a call that rings erin, who does not answer: picked up with *8 by another phone
exten => 705,1,Gosub(pbx-zrtp,s,1(required))
 same => n,Dial(PJSIP/erin,30,U(pbx-zrtp^required^705))
 same => n,Hangup()
include => pbx-zrtp-call-changes
"""


def _extend(base: Path, ports: dict[str, int]) -> None:
    """Add dave and erin, the call-change extensions and their modules to the lab's
    Asterisk configuration (written by test_asterisk_real.write_asterisk_config)."""
    etc = base / "etc"
    pjsip = (etc / "pjsip.conf").read_text()
    for name, address in PHONES.items():
        pjsip += _endpoint(name, address, ports[name])
    write(etc / "pjsip.conf", pjsip)
    write(
        etc / "modules.conf",
        "[modules]\nautoload = no\n"
        + "".join(f"load => {m}\n" for m in (*MODULES, *EXTRA_MODULES)),
    )
    write(
        etc / "res_parking.conf",
        "[general]\n\n[default]\nparkext => 700\nparkpos => 701-720\n"
        "context => parkedcalls\nparkingtime => 60\n",
    )
    write(etc / "musiconhold.conf", "[default]\nmode = files\ndirectory = moh\n")
    extensions = (etc / "extensions.conf").read_text()
    write(etc / "extensions.conf", extensions + EXTENSIONS)


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    """test_asterisk_real's lab, with dave and erin and the call-change extensions."""
    base = tmp_path_factory.mktemp("asterisk-call-changes")
    ami_port = free_tcp_port("127.0.0.1")
    carol_port = _free_udp_port(CAROL)
    ports = {name: _free_udp_port(address) for name, address in PHONES.items()}
    conf = write_asterisk_config(base, ami_port, carol_port)
    _extend(base, ports)
    relay_conf = write_relay_config(base, ami_port)
    tone = write_tone(base / "tone.wav", 30.0)
    started: list[Proc] = []
    ami: AmiClient | None = None
    guard: LabGuard | None = None
    try:
        asterisk = Proc("asterisk", [ASTERISK, "-C", str(conf), "-f", "-n"], base / "asterisk.out")
        started.append(asterisk)
        wait_port("127.0.0.1", ami_port, 30, asterisk)
        ami = AmiClient("127.0.0.1", ami_port, TEST_AMI_USER, TEST_AMI_SECRET, 10)
        ami.wait_event(lambda e: e.get("Event") == "FullyBooted", 30, "FullyBooted")
        relay, watch = start_relay(base, relay_conf, r"AMI logged in at", started)
        # The PBX host's egress guard, as docs/asterisk.md has the admin load it: a
        # re-INVITE makes Asterisk send to the phone's own address until it relatches.
        if guard_unavailable() is None:
            guard = LabGuard(relay_conf, f"pbx_zrtp_guard_lab{os.getpid()}")
        the_lab = Lab(base, asterisk, relay, ami, watch, tone, carol_port, guard=guard)
        the_lab.ports = ports  # type: ignore[attr-defined]
        # Every RTP packet Asterisk sends is logged with its destination: a packet to
        # a phone's own address would reach it without the relay (in the clear).
        reply = ami.action("Command", Command="rtp set debug on")
        assert reply.get("Response") == "Success", reply
        probe = str((RTP_PORTS[1] - 2) & ~1)
        deadline = time.monotonic() + 30
        while not the_lab.relay_events("probe"):
            assert time.monotonic() < deadline, f"ctl watch saw no event:\n{watch.tail()}"
            the_lab.ctl("create", "probe", probe, "--policy", "off")
            the_lab.ctl("delete", "probe")
            time.sleep(0.5)
        yield the_lab
    finally:
        if ami is not None:
            ami.close()
        for proc in reversed(started):
            proc.stop()
        if guard is not None:
            guard.remove()


def guarded(lab: Lab) -> LabGuard:
    """The lab's egress guard; the test is skipped where this host cannot load one (a
    re-INVITE then lets Asterisk send 1-2 packets to the phone in the clear)."""
    if lab.guard is None:
        pytest.skip(guard_unavailable() or "no egress guard")
    return lab.guard


def phone(lab: Lab, name: str, *, answer: bool = True) -> Proc:
    """A ZRTP linphonec phone: alice (calls in), carol/dave (Asterisk calls them;
    auto-answer), erin (Asterisk calls her; she only rings)."""
    home = lab.base / f"{name}-{os.urandom(2).hex()}"
    home.mkdir()
    if name == "alice":
        rc = write_linphonerc(home, zrtp=True)
    else:
        address = CAROL if name == "carol" else PHONES[name]
        port = lab.carol_port if name == "carol" else lab.ports[name]  # type: ignore[attr-defined]
        rc = write_linphonerc(home, zrtp=True, user=name, address=address, sip_port=port)
    command = [str(LINPHONEC), "-c", str(rc), "-d", "6", "-l", str(home / "linphone-debug.log")]
    if name != "alice" and answer:
        command.append("-a")
    proc = Proc(
        name,
        command,
        home / "linphonec.log",
        env={**os.environ, "HOME": str(home)},
        stdin=True,
        cwd=home,
    )
    lab.procs.append(proc)
    proc.home = home  # type: ignore[attr-defined]
    proc.send("soundcard use files")
    proc.wait_for(r"Using wav files instead of soundcard", 20)
    proc.send(f"play {lab.tone}")
    return proc


def log_mark(lab: Lab) -> int:
    return len(lab.asterisk_log())


def _to_phones(lab: Lab, mark: int) -> list[str]:
    phones = (PHONE, CAROL, *PHONES.values())
    return [
        line
        for line in lab.asterisk_log()[mark:].splitlines()
        if "Sent RTP packet to" in line and any(f" {ip}:" in line for ip in phones)
    ]


def sent_to_phones(lab: Lab, mark: int) -> list[str]:
    """Asterisk's RTP debug lines since ``mark`` for packets sent straight to a phone
    (not the relay) that left Asterisk: media that reached the phone in the clear."""
    return [line for line in _to_phones(lab, mark) if not re.search(r"len -\d+\)", line)]


def refused_to_phones(lab: Lab, mark: int) -> list[str]:
    """The same packets that the kernel refused (the egress guard): Asterisk logs them
    with the send's -1 in their length."""
    return [line for line in _to_phones(lab, mark) if re.search(r"len -\d+\)", line)]


def guard_figures(lab: Lab, mark: int) -> dict[str, Any]:
    """What the egress guard stopped: Asterisk's sends to a phone's own address that
    the kernel refused since ``mark``, and the guard's drop counters since the lab began."""
    return {
        "refused_sends_to_phones": len(refused_to_phones(lab, mark)),
        "dropped_since_start": lab.guard.dropped() if lab.guard else None,
    }


def srtp_failures(proc: Proc) -> int:
    """Packets the phone could not authenticate: what reached it in the clear (or forged)."""
    log = Path(proc.home) / "linphone-debug.log"  # type: ignore[attr-defined]
    return log.read_text(errors="replace").count("srtp_unprotect() failed") if log.exists() else 0


def ours(lab: Lab) -> dict[str, dict[str, Any]]:
    return {c["call_id"]: c for c in lab.ctl("list") if c["call_id"].startswith("ast-")}


def wait_calls(lab: Lab, predicate: Any, timeout: float, what: str) -> dict[str, dict[str, Any]]:
    deadline = time.monotonic() + timeout
    calls = ours(lab)
    while not predicate(calls):
        assert time.monotonic() < deadline, f"{what}: relay calls {json.dumps(calls)[:3000]}"
        time.sleep(0.2)
        calls = ours(lab)
    return calls


def channel_of(lab: Lab, call_id: str) -> str:
    uniqueid = call_id.removeprefix("ast-")
    for event in reversed(lab.ami.events):
        if event.get("Uniqueid") == uniqueid and event.get("Channel"):
            return event["Channel"]
    raise AssertionError(f"no channel for {call_id}")


def variables(lab: Lab, call_id: str) -> dict[str, str]:
    name = channel_of(lab, call_id)
    return {
        v: lab.ami.action("Getvar", Channel=name, Variable=v).get("Value", "")
        for v in (
            "ZRTP_STATE",
            "ZRTP_SAS",
            "ZRTP_SAS_SCOPE",
            "ZRTP_SAS_RELAY",
            "ZRTP_DISPLAYED_SAS",
        )
    }


def flowing(lab: Lab, call_id: str, seconds: float = 2.0) -> dict[str, Any]:
    """How many packets crossed the leg in ``seconds``, each way, through the relay."""
    before = lab.ctl("show", call_id)["counters"]
    time.sleep(seconds)
    after = lab.ctl("show", call_id)["counters"]
    grown = {k: after[k] - before[k] for k in ("phone_in", "pbx_out", "pbx_in", "phone_out")}
    assert min(grown.values()) > 20, (call_id, grown)
    # clear_blocked counts what `required` kept from crossing (e.g. the PBX's RTP
    # before the new leg was secure): proof of failing closed, not a failure
    refused = {"srtp_auth", "srtp_protect"} & set(after["drops"])
    assert not refused, (call_id, after["drops"])
    return {**grown, "clear_blocked": after["drops"].get("clear_blocked", 0)}


def linked(calls: dict[str, dict[str, Any]], a: str, b: str) -> bool:
    return (
        calls[a]["bridge"] == calls[b]["bridge"] != ""
        and calls[a]["sas_relay"] == calls[b]["sas_relay"] == "none"
    )


def save_events(lab: Lab, name: str, since: int) -> Path:
    """The AMI events of a change (bridges, transfers, hangups), for the fakes."""
    keep = re.compile(
        r"^(Bridge|Local|Rename|Hangup$|BlindTransfer|AttendedTransfer|Pickup"
        r"|Park|UnParked|Newchannel|Hold|Unhold|UserEvent)"
    )
    out = []
    for event in lab.ami.events[since:]:
        if keep.match(event.get("Event", "")):
            out.append("\r\n".join(f"{k}: {v}" for k, v in event.items() if k != "_time"))
    return write(lab.base / f"{name}-ami-events.txt", "\r\n\r\n".join(out) + "\r\n\r\n")


def first_call(lab: Lab, alice: Proc, carol: Proc) -> tuple[str, str, str, str]:
    """alice -> 702 -> carol, both secure; returns (alice's call id, carol's, SASes)."""
    alice.send(f"call sip:702@{A}")
    match, _ = alice.wait_for(SECURE, 30)
    alice_sas = match.group(1)
    match, _ = carol.wait_for(SECURE, 30)
    carol_sas = match.group(1)
    calls = wait_calls(
        lab,
        lambda c: len(c) == 2 and all(x["sas_relay"] for x in c.values()),
        15,
        "alice and carol linked",
    )
    by_sas = {c["sas"]: cid for cid, c in calls.items()}
    return by_sas[alice_sas], by_sas[carol_sas], alice_sas, carol_sas


def finish(lab: Lab, *phones: Proc) -> None:
    for proc in phones:
        hangup_phone(proc)
    wait_calls(lab, lambda c: not c, 20, "every call ended")


# ---------------------------------------------------------------------- the tests


def test_blind_transfer_by_the_phone(lab: Lab) -> None:
    """alice talks to carol, then transfers her blind (REFER) to 704, which dials dave:
    carol keeps her ZRTP session, dave's leg is secured, the relay links carol's and
    dave's legs, alice's leg ends."""
    guarded(lab)  # Asterisk's re-INVITE leak is closed by the host's guard
    carol, dave, alice = phone(lab, "carol"), phone(lab, "dave"), phone(lab, "alice")
    try:
        since, mark = len(lab.ami.events), log_mark(lab)
        a, c, _alice_sas, carol_sas = first_call(lab, alice, carol)
        assert linked(ours(lab), a, c)
        alice.send(f"transfer sip:704@{A}")
        match, _ = dave.wait_for(SECURE, 30)
        dave_sas = match.group(1)
        calls = wait_calls(
            lab,
            lambda x: (
                a not in x
                and len(x) == 2
                and all(v["sas_relay"] for v in x.values())
                and all(v["bridge"].startswith("bridge:") for v in x.values())
            ),
            20,
            "carol and dave linked, alice gone",
        )
        d = next(cid for cid in calls if cid != c)
        assert calls[c]["sas"] == carol_sas and calls[d]["sas"] == dave_sas, calls
        assert linked(calls, c, d), calls
        assert calls[c]["bridge"].startswith("bridge:"), calls[c]
        carol_flow, dave_flow = flowing(lab, c), flowing(lab, d)
        leaks = sent_to_phones(lab, mark)
        assert leaks == [], leaks[:5]
        for cid, sas in ((c, carol_sas), (d, dave_sas)):
            values = variables(lab, cid)
            assert values == {
                "ZRTP_STATE": "secure",
                "ZRTP_SAS": sas,
                "ZRTP_SAS_SCOPE": "pbx-leg",
                "ZRTP_SAS_RELAY": "none",
                "ZRTP_DISPLAYED_SAS": sas,
            }, (cid, values)
        assert srtp_failures(carol) == srtp_failures(dave) == 0
        path = save_events(lab, "blind-transfer", since)
        print(
            "BLIND TRANSFER:",
            json.dumps(
                {
                    "carol_sas": carol_sas,
                    "dave_sas": dave_sas,
                    "bridge": calls[c]["bridge"],
                    "carol_flow_2s": carol_flow,
                    "dave_flow_2s": dave_flow,
                    "guard": guard_figures(lab, mark),
                    "events": str(path),
                }
            ),
        )
        finish(lab, carol, dave)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{lab.diagnostics()}") from None
    finally:
        for proc in (alice, carol, dave):
            proc.stop()


def check_pair(lab: Lab, x: str, y: str, sas: dict[str, str], mark: int) -> dict[str, Any]:
    """Both legs secure with their own SAS, linked, media flowing as SRTP, and the
    channel variables describe the new bridge."""
    calls = ours(lab)
    assert linked(calls, x, y) and calls[x]["bridge"].startswith("bridge:"), calls
    figures: dict[str, Any] = {"bridge": calls[x]["bridge"]}
    for cid in (x, y):
        assert calls[cid]["state"] == "secure" and calls[cid]["sas"] == sas[cid], calls[cid]
        figures[cid] = {"sas": sas[cid], "flow_2s": flowing(lab, cid)}
        values = variables(lab, cid)
        assert values == {
            "ZRTP_STATE": "secure",
            "ZRTP_SAS": sas[cid],
            "ZRTP_SAS_SCOPE": "pbx-leg",
            "ZRTP_SAS_RELAY": "none",
            "ZRTP_DISPLAYED_SAS": sas[cid],
        }, (cid, values)
    leaks = sent_to_phones(lab, mark)
    assert leaks == [], leaks[:5]
    return figures


def bridged_pair(x: str, y: str) -> Any:
    def ready(calls: dict[str, dict[str, Any]]) -> bool:
        return (
            x in calls
            and y in calls
            and calls[x]["bridge"] == calls[y]["bridge"]
            and calls[x]["bridge"].startswith("bridge:")
            and calls[x]["sas_relay"] == calls[y]["sas_relay"] == "none"
        )

    return ready


def test_attended_transfer_by_the_phone(lab: Lab) -> None:
    """alice talks to carol, calls 704 (dave) while carol waits, then joins them
    (linphonec ``transfer 1 --to-call 2``: REFER with Replaces). carol and dave keep
    their ZRTP sessions; the relay links their legs; alice's two legs end."""
    guarded(lab)  # Asterisk's re-INVITE leak is closed by the host's guard
    carol, dave, alice = phone(lab, "carol"), phone(lab, "dave"), phone(lab, "alice")
    try:
        since, mark = len(lab.ami.events), log_mark(lab)
        a, c, _alice_sas, carol_sas = first_call(lab, alice, carol)
        alice.send("pause 1")  # linphonec: "Terminate or hold on the current call first."
        alice.wait_for(r"Call 1 .* is now paused", 10)
        alice.send(f"call sip:704@{A}")
        match, _ = dave.wait_for(SECURE, 30)
        dave_sas = match.group(1)
        alice.wait_for(r"Call 2 is fully encrypted", 30)
        calls = wait_calls(lab, lambda x: len(x) == 4, 20, "the consultation call's two legs")
        d = next(cid for cid, v in calls.items() if v["sas"] == dave_sas)
        alice.send("transfer 1 --to-call 2")
        alice.wait_for(r"Performing attended transfer of call 1 to call 2", 10)
        calls = wait_calls(
            lab, lambda x: bridged_pair(c, d)(x) and len(x) == 2, 20, "carol and dave bridged"
        )
        assert a not in calls  # alice's two legs ended with the transfer
        figures = check_pair(lab, c, d, {c: carol_sas, d: dave_sas}, mark)
        assert srtp_failures(carol) == srtp_failures(dave) == 0
        path = save_events(lab, "attended-transfer", since)
        print(
            "ATTENDED TRANSFER:",
            json.dumps({**figures, "guard": guard_figures(lab, mark), "events": str(path)}),
        )
        finish(lab, carol, dave)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{lab.diagnostics()}") from None
    finally:
        for proc in (alice, carol, dave):
            proc.stop()


def test_park_and_retrieve(lab: Lab) -> None:
    """alice talks to carol; carol is parked (AMI Park: linphonec cannot send the
    feature code's DTMF in-band through SRTP here) and alice's leg ends; dave dials
    *7<space>, is secured, and ParkedCall() bridges him with carol, whose ZRTP session
    never stopped."""
    carol, dave, alice = phone(lab, "carol"), phone(lab, "dave"), phone(lab, "alice")
    try:
        since, mark = len(lab.ami.events), log_mark(lab)
        a, c, _alice_sas, carol_sas = first_call(lab, alice, carol)
        reply = lab.ami.action("Park", Channel=channel_of(lab, c), Parkinglot="default")
        assert reply.get("Response") == "Success", reply
        parked = lab.ami.wait_event(
            lambda e: (
                e.get("Event") == "ParkedCall" and e.get("ParkeeUniqueid") == c.removeprefix("ast-")
            ),
            10,
            "ParkedCall",
        )
        space = parked["ParkingSpace"]
        hangup_phone(alice)
        wait_calls(lab, lambda x: a not in x and x[c]["sas_relay"] == "", 15, "alice gone")
        parked_flow = lab.ctl("show", c)["counters"]
        dave.send(f"call sip:*7{space}@{A}")  # the samples' _*7XXX
        match, _ = dave.wait_for(SECURE, 30)
        dave_sas = match.group(1)
        calls = wait_calls(lab, lambda x: len(x) == 2, 20, "dave's leg")
        d = next(cid for cid in calls if cid != c)
        wait_calls(lab, bridged_pair(c, d), 20, "carol retrieved by dave")
        figures = check_pair(lab, c, d, {c: carol_sas, d: dave_sas}, mark)
        assert srtp_failures(carol) == srtp_failures(dave) == 0
        path = save_events(lab, "park-retrieve", since)
        print(
            "PARK/RETRIEVE:",
            json.dumps(
                {
                    **figures,
                    "space": space,
                    "carol_while_parked": {
                        k: parked_flow[k] for k in ("phone_in", "pbx_in", "phone_out", "pbx_out")
                    },
                    "events": str(path),
                }
            ),
        )
        finish(lab, carol, dave)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{lab.diagnostics()}") from None
    finally:
        for proc in (alice, carol, dave):
            proc.stop()


def test_call_pickup(lab: Lab) -> None:
    """alice calls 705, which rings erin (who does not answer); dave dials *85705, is
    secured, and Pickup() bridges him with alice, whose ZRTP session (secured
    before the ringing) goes on. erin's ringing leg never had media through the relay."""
    erin, dave, alice = phone(lab, "erin", answer=False), phone(lab, "dave"), phone(lab, "alice")
    try:
        since, mark = len(lab.ami.events), log_mark(lab)
        alice.send(f"call sip:705@{A}")
        match, _ = alice.wait_for(SECURE, 30)
        alice_sas = match.group(1)
        erin.wait_for(r"Receiving new incoming call", 20)
        calls = wait_calls(lab, lambda x: len(x) == 1, 10, "alice's leg")
        a = next(iter(calls))
        dave.send(f"call sip:*85705@{A}")  # the samples' _*85.: Pickup(705@from-phones)
        match, _ = dave.wait_for(SECURE, 30)
        dave_sas = match.group(1)
        calls = wait_calls(lab, lambda x: len(x) == 2, 20, "dave's leg")
        d = next(cid for cid in calls if cid != a)
        wait_calls(lab, bridged_pair(a, d), 20, "alice picked up by dave")
        figures = check_pair(lab, a, d, {a: alice_sas, d: dave_sas}, mark)
        assert srtp_failures(alice) == srtp_failures(dave) == 0
        path = save_events(lab, "pickup", since)
        print("PICKUP:", json.dumps({**figures, "events": str(path)}))
        finish(lab, alice, dave)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{lab.diagnostics()}") from None
    finally:
        for proc in (alice, erin, dave):
            proc.stop()


def test_hold_and_resume(lab: Lab) -> None:
    """alice puts carol on hold (re-INVITE sendonly) and resumes: both legs keep their
    ZRTP session and link; media flows again as SRTP after the resume, and Asterisk
    never sends a packet straight to a phone."""
    guarded(lab)  # Asterisk's re-INVITE leak is closed by the host's guard
    carol, alice = phone(lab, "carol"), phone(lab, "alice")
    try:
        since, mark = len(lab.ami.events), log_mark(lab)
        a, c, alice_sas, carol_sas = first_call(lab, alice, carol)
        bridge = ours(lab)[a]["bridge"]
        alice.send("pause 1")
        alice.wait_for(r"Call 1 .*(paused|Paused)", 10)
        time.sleep(1)
        alice.send("resume 1")
        alice.wait_for(r"Call 1 .*(resumed|Resumed|connected)", 10, start=0)
        figures = {cid: flowing(lab, cid) for cid in (a, c)}
        calls = ours(lab)
        assert calls[a]["sas"] == alice_sas and calls[c]["sas"] == carol_sas, calls
        assert calls[a]["bridge"] == calls[c]["bridge"] != "", (calls, bridge)
        leaks = sent_to_phones(lab, mark)
        assert leaks == [], leaks[:5]
        assert srtp_failures(alice) == srtp_failures(carol) == 0
        path = save_events(lab, "hold-resume", since)
        print(
            "HOLD/RESUME:",
            json.dumps(
                {"flow_2s": figures, "guard": guard_figures(lab, mark), "events": str(path)}
            ),
        )
        finish(lab, alice, carol)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{lab.diagnostics()}") from None
    finally:
        for proc in (alice, carol):
            proc.stop()


#: Asterisk 22.10.1's own failure on a codec change by re-INVITE (1 of 9 runs here): the
#: bridge writes the far end's ulaw frame to the leg just renegotiated to PCMA only,
#: ast_rtp_write refuses it, and Asterisk hangs the call up (no relay involved).
ASTERISK_CODEC_RACE = "Don't know how to send format ulaw packets with RTP"


def test_codec_change_by_re_invite(lab: Lab) -> None:
    """alice's phone drops PCMU and re-INVITEs (pause/resume: liblinphone then offers
    only the codecs still enabled): Asterisk switches alice's leg to PCMA. The ZRTP
    sessions and the link stay, media flows as SRTP, nothing reaches a phone in the
    clear. A run that Asterisk itself hangs up (``ASTERISK_CODEC_RACE`` in its log)
    is tried again, up to 3 times, and counted; any other failure fails at once."""
    guarded(lab)  # Asterisk's re-INVITE leak is closed by the host's guard
    for killed_by_asterisk in range(3):
        figures = _codec_change_once(lab)
        if figures is not None:
            figures["attempts_asterisk_hung_up"] = killed_by_asterisk
            print("CODEC CHANGE:", json.dumps(figures))
            return
    raise AssertionError(f"Asterisk hung up all 3 codec changes ({ASTERISK_CODEC_RACE})")


def _codec_change_once(lab: Lab) -> dict[str, Any] | None:
    """One codec change; None when Asterisk hung the call up with its own race."""
    carol, alice = phone(lab, "carol"), phone(lab, "alice")
    try:
        mark = log_mark(lab)
        a, c, alice_sas, carol_sas = first_call(lab, alice, carol)
        name = channel_of(lab, a)
        codec = lab.ami.action("Getvar", Channel=name, Variable="CHANNEL(audionativeformat)")
        assert codec.get("Value") == "(ulaw)", codec
        alice.send("codec list")
        match, _ = alice.wait_for(r"^\s*(\d+): PCMU \(8000\) enabled", 10)
        alice.send(f"codec disable {match.group(1)}")
        alice.send("pause 1")
        alice.wait_for(r"Call 1 .* is now paused", 10)
        alice.send("resume 1")
        alice.wait_for(r"Resuming call 1", 10)
        deadline = time.monotonic() + 10
        while "alaw" not in lab.ami.action(
            "Getvar", Channel=name, Variable="CHANNEL(audionativeformat)"
        ).get("Value", ""):
            if ASTERISK_CODEC_RACE in lab.asterisk_log()[mark:] and a not in ours(lab):
                wait_calls(lab, lambda x: not x, 20, "every call ended")
                return None
            assert time.monotonic() < deadline, "Asterisk did not switch alice's leg to PCMA"
            time.sleep(0.2)
        time.sleep(1)
        figures = {cid: flowing(lab, cid) for cid in (a, c)}
        calls = ours(lab)
        assert calls[a]["sas"] == alice_sas and calls[c]["sas"] == carol_sas, calls
        leaks = sent_to_phones(lab, mark)
        assert leaks == [], leaks[:5]
        assert srtp_failures(alice) == srtp_failures(carol) == 0
        result = {"codec": "PCMU->PCMA", "flow_2s": figures, "guard": guard_figures(lab, mark)}
        finish(lab, alice, carol)
        return result
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{lab.diagnostics()}") from None
    finally:
        for proc in (alice, carol):
            proc.stop()


def adapter_ami_down(lab: Lab) -> contextlib.AbstractContextManager[None]:
    """The adapter's AMI session cut and its logins refused for the block (procs.link_down)."""
    port = re.search(r"^port = (\d+)$", (lab.base / "pbx-zrtp.toml").read_text(), re.M)
    assert port is not None
    ours = lab.ami.sock.getsockname()[1]
    return link_down(
        lab.relay, int(port.group(1)), ours, r"AMI connection to .* lost", "AMI logged in"
    )


def bridges_now(lab: Lab) -> dict[str, Any]:
    """Asterisk's answers to BridgeList and BridgeInfo now, as the adapter reads them at
    resync (kept in the test's tmp directory for the fake AMI)."""
    listed = lab.ami.action("BridgeList")
    time.sleep(0.3)
    items = [e for e in lab.ami.events if e.get("ActionID") == listed.get("ActionID")]
    out: dict[str, Any] = {"BridgeList": [listed, *items]}
    for item in items:
        name = item.get("BridgeUniqueid")
        if item.get("Event") == "BridgeListItem" and name:
            info = lab.ami.action("BridgeInfo", BridgeUniqueid=name)
            time.sleep(0.3)
            events = [e for e in lab.ami.events if e.get("ActionID") == info.get("ActionID")]
            out[f"BridgeInfo {name}"] = [info, *events]
    return out


def test_an_attended_transfer_while_ami_is_down_is_relearned_at_resync(lab: Lab) -> None:
    """The adapter's AMI session is cut just before alice joins carol and dave (REFER
    with Replaces), and comes back once Asterisk has bridged them: the bridge events
    were never seen. At its next login the adapter reads Asterisk's bridges
    (BridgeList, BridgeInfo) and the relay links carol's and dave's legs, as if it had
    followed the transfer live."""
    guarded(lab)
    if shutil.which("ss") is None:
        pytest.skip("needs ss (iproute2) to cut the adapter's AMI session")
    carol, dave, alice = phone(lab, "carol"), phone(lab, "dave"), phone(lab, "alice")
    try:
        mark = log_mark(lab)
        a, c, _alice_sas, carol_sas = first_call(lab, alice, carol)
        alice.send("pause 1")
        alice.wait_for(r"Call 1 .* is now paused", 10)
        alice.send(f"call sip:704@{A}")
        match, _ = dave.wait_for(SECURE, 30)
        dave_sas = match.group(1)
        alice.wait_for(r"Call 2 is fully encrypted", 30)
        calls = wait_calls(lab, lambda x: len(x) == 4, 20, "the consultation call's two legs")
        d = next(cid for cid, v in calls.items() if v["sas"] == dave_sas)
        carol_key, dave_key = c.removeprefix("ast-"), d.removeprefix("ast-")
        with adapter_ami_down(lab):
            alice.send("transfer 1 --to-call 2")
            alice.wait_for(r"Performing attended transfer of call 1 to call 2", 10)
            deadline = time.monotonic() + 15
            while True:  # Asterisk bridged carol and dave (asked on the test's own session)
                transcript = bridges_now(lab)
                together = [
                    name
                    for name, answer in transcript.items()
                    if name.startswith("BridgeInfo ")
                    and {carol_key, dave_key} <= {e.get("Uniqueid") for e in answer}
                ]
                if together:
                    break
                assert time.monotonic() < deadline, transcript
                time.sleep(0.2)
            stale = ours(lab)
            assert not linked(stale, c, d), stale  # the adapter saw none of it
        calls = wait_calls(
            lab, lambda x: bridged_pair(c, d)(x) and len(x) == 2, 20, "carol and dave relinked"
        )
        assert a not in calls  # alice's legs ended while AMI was down: the resync ended them
        figures = check_pair(lab, c, d, {c: carol_sas, d: dave_sas}, mark)
        assert srtp_failures(carol) == srtp_failures(dave) == 0
        path = write(lab.base / "resync-bridges-ami.json", json.dumps(transcript, indent=1))
        print(
            "TRANSFER WHILE AMI DOWN:",
            json.dumps({**figures, "guard": guard_figures(lab, mark), "bridges": str(path)}),
        )
        finish(lab, carol, dave)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{lab.diagnostics()}") from None
    finally:
        for proc in (alice, carol, dave):
            proc.stop()
