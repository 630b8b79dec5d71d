"""Call changes through a real FreeSWITCH (issue 15, item 4): blind and attended transfer.

The lab of ``test_freeswitch_real.py`` (FreeSWITCH on A, the relay on R, linphonec
phones in a network namespace) with a third phone, dave, and extension 9701 (bridge to
dave through the relay). alice calls 9700 (carol), then transfers carol to 9701 by
REFER, blind or attended. On the real PBX the test checks that carol keeps her ZRTP
session and her media keeps flowing as SRTP through the relay, dave's new leg is
secured, the relay links carol's and dave's legs (one bridge id; ``sas_relay`` "none":
Linphone cannot enroll), the channel variables say so, and alice's legs end.

The ESL events of each change (CHANNEL_BRIDGE/UNBRIDGE, answer, hangup) are kept in
the test's tmp directory; ``tests/freeswitch/fixtures/`` holds the ones the fake replays.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.procs import (
    Proc,
    free_tcp_port,
    hangup_phone,
    link_down,
    start_relay,
    wait_port,
    write,
    write_tone,
)
from tests.integration.test_freeswitch_real import (
    ESL_PASSWORD,
    FREESWITCH,
    IP,
    LINPHONEC,
    PROBE_PORT,
    EslClient,
    Lab,
    network,
    write_freeswitch_config,
    write_linphonerc,
    write_relay_config,
)

pytestmark = pytest.mark.integration

SECURE = r"fully encrypted and auth token is (\S+?)\.?\s*$"
EVENTS = "CHANNEL_CREATE CHANNEL_ANSWER CHANNEL_BRIDGE CHANNEL_UNBRIDGE CHANNEL_HANGUP_COMPLETE"


def _add_dave(conf: Path, phone: str, dave_port: int, erin_port: int) -> None:
    """Extension 9701: the transfer target, dave, through the relay, as 9700 does carol
    (the caller's own leg asks for ZRTP first: a transferred leg already has it)."""
    path = conf / "freeswitch.xml"
    text = path.read_text()
    target = (
        "{pbx_zrtp_policy=required,rtp_adv_audio_ip=${pbx_zrtp_relay_ip}}"
        f"sofia/pbxzrtp/dave@{phone}:{dave_port}"
    )
    extension = f"""      <extension name="transfer_target_test">
        <condition field="destination_number" expression="^9701$">
          <action application="set" data="pbx_zrtp_policy=required"/>
          <action application="set" data="rtp_adv_audio_ip=${{pbx_zrtp_relay_ip}}"/>
          <action application="answer"/>
          <action application="lua" data="pbx_zrtp_wait.lua 12"/>
          <action application="bridge" data="{target}"/>
        </condition>
      </extension>
"""
    # Valet parking: 9702 parks the caller in space 7001; 9703 asks for ZRTP on the
    # retriever's own leg, then takes the call out of that space.
    ringing = (
        "{pbx_zrtp_policy=required,rtp_adv_audio_ip=${pbx_zrtp_relay_ip}}"
        f"sofia/pbxzrtp/erin@{phone}:{erin_port}"
    )
    # Pickup: 9704 rings erin (who does not answer) and names the caller's leg; 9705
    # asks for ZRTP on the picker's own leg, then intercepts that call.
    extension += f"""      <extension name="ring_erin_test">
        <condition field="destination_number" expression="^9704$">
          <action application="set" data="pbx_zrtp_policy=required"/>
          <action application="set" data="rtp_adv_audio_ip=${{pbx_zrtp_relay_ip}}"/>
          <action application="answer"/>
          <action application="lua" data="pbx_zrtp_wait.lua 12"/>
          <action application="set_global" data="zrtp_pickup=${{uuid}}"/>
          <action application="bridge" data="{ringing}"/>
        </condition>
      </extension>
      <extension name="pickup_test">
        <condition field="destination_number" expression="^9705$">
          <action application="set" data="pbx_zrtp_policy=required"/>
          <action application="set" data="rtp_adv_audio_ip=${{pbx_zrtp_relay_ip}}"/>
          <action application="answer"/>
          <action application="lua" data="pbx_zrtp_wait.lua 12"/>
          <action application="intercept" data="${{zrtp_pickup}}"/>
        </condition>
      </extension>
"""
    extension += """      <extension name="park_test">
        <condition field="destination_number" expression="^9702$">
          <action application="set" data="valet_hold_music=silence_stream://-1"/>
          <action application="valet_park" data="zrtplot 7001"/>
        </condition>
      </extension>
      <extension name="retrieve_test">
        <condition field="destination_number" expression="^9703$">
          <action application="set" data="pbx_zrtp_policy=required"/>
          <action application="set" data="rtp_adv_audio_ip=${pbx_zrtp_relay_ip}"/>
          <action application="answer"/>
          <action application="lua" data="pbx_zrtp_wait.lua 12"/>
          <action application="valet_park" data="zrtplot 7001"/>
        </condition>
      </extension>
"""
    marker = '      <X-PRE-PROCESS cmd="include" data="pbx_zrtp.xml"/>'
    assert marker in text
    text = text.replace(marker, extension + marker)
    module = '<load module="mod_lua"/>'
    assert module in text
    write(path, text.replace(module, module + '<load module="mod_valet_parking"/>'))


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    """test_freeswitch_real's lab, with dave and extension 9701."""
    base = tmp_path_factory.mktemp("freeswitch-call-changes")
    base.chmod(0o755)
    esl_port = free_tcp_port("127.0.0.1")
    tone = write_tone(base / "tone.wav", 30.0)
    started: list[Proc] = []
    esl: EslClient | None = None
    with network() as net:
        try:
            carol_port, dave_port, erin_port = random.sample(range(41000, 42000), 3)
            write_freeswitch_config(base, net, esl_port, carol_port)
            _add_dave(base / "conf", net.phone, dave_port, erin_port)
            relay_conf = write_relay_config(base, net, esl_port)
            args = [FREESWITCH, "-nonat", "-nf", "-nc"]
            for flag, name in (
                ("-conf", "conf"),
                ("-log", "log"),
                ("-db", "db"),
                ("-run", "run"),
                ("-scripts", "scripts"),
                ("-temp", "temp"),
                ("-storage", "storage"),
                ("-cache", "cache"),
                ("-recordings", "rec"),
            ):
                args += [flag, str(base / name)]
            freeswitch = Proc("freeswitch", args, base / "freeswitch.out")
            started.append(freeswitch)
            wait_port("127.0.0.1", esl_port, 60, freeswitch)
            esl = EslClient("127.0.0.1", esl_port, ESL_PASSWORD, 10)
            reply, _ = esl.command(f"event plain {EVENTS}")
            assert reply.get("Reply-Text", "").startswith("+OK"), reply
            deadline = time.monotonic() + 30
            while not re.search(r"pbxzrtp\s+profile\s.*RUNNING", esl.api("sofia status")):
                assert time.monotonic() < deadline, esl.api("sofia status")
                time.sleep(0.2)
            relay, watch = start_relay(base, relay_conf, r"ESL connected to", started)
            the_lab = Lab(base, net, freeswitch, relay, esl, watch, tone, carol_port)
            the_lab.dave_port = dave_port  # type: ignore[attr-defined]
            the_lab.erin_port = erin_port  # type: ignore[attr-defined]
            deadline = time.monotonic() + 30
            while not the_lab.relay_events("probe"):
                assert time.monotonic() < deadline, f"ctl watch saw no event:\n{watch.tail()}"
                the_lab.ctl("create", "probe", str(PROBE_PORT), "--policy", "off")
                the_lab.ctl("delete", "probe")
                time.sleep(0.5)
            yield the_lab
        finally:
            if esl is not None:
                esl.close()
            for proc in reversed(started):
                proc.stop()


def phone(lab: Lab, name: str, *, answer: bool = True) -> Proc:
    """alice (calls out), carol and dave (FreeSWITCH calls them; they auto-answer)."""
    assert IP is not None and LINPHONEC is not None
    home = lab.base / f"{name}-{os.urandom(2).hex()}"
    home.mkdir()
    ports = {
        "carol": lab.carol_port,
        "dave": lab.dave_port,  # type: ignore[attr-defined]
        "erin": lab.erin_port,  # type: ignore[attr-defined]
    }
    if name == "alice":
        rc = write_linphonerc(home, lab.net.phone, zrtp=True)
    else:
        rc = write_linphonerc(home, lab.net.phone, zrtp=True, user=name, sip_port=ports[name])
    command = [IP, "netns", "exec", lab.net.namespace, LINPHONEC, "-c", str(rc), "-d", "6"]
    command += [
        "-l",
        str(home / "linphone-debug.log"),
        *(["-a"] if name != "alice" and answer else []),
    ]
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


def srtp_failures(proc: Proc) -> int:
    log = Path(proc.home) / "linphone-debug.log"  # type: ignore[attr-defined]
    return log.read_text(errors="replace").count("srtp_unprotect() failed") if log.exists() else 0


def ours(lab: Lab) -> dict[str, dict[str, Any]]:
    return {c["call_id"]: c for c in lab.calls() if c["call_id"].startswith("fs-")}


def wait_calls(lab: Lab, predicate: Any, timeout: float, what: str) -> dict[str, dict[str, Any]]:
    deadline = time.monotonic() + timeout
    calls = ours(lab)
    while not predicate(calls):
        assert time.monotonic() < deadline, f"{what}: relay calls {json.dumps(calls)[:3000]}"
        time.sleep(0.2)
        calls = ours(lab)
    return calls


def flowing(lab: Lab, call_id: str, seconds: float = 2.0) -> dict[str, Any]:
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


def save_events(lab: Lab, name: str, since: int) -> Path:
    keep = (
        "Event-Name",
        "Unique-ID",
        "Channel-Call-UUID",
        "Other-Leg-Unique-ID",
        "Bridge-A-Unique-ID",
        "Bridge-B-Unique-ID",
        "Caller-Destination-Number",
        "Channel-Name",
        "Hangup-Cause",
        "variable_pbx_zrtp_policy",
        "variable_rtp_adv_audio_ip",
        "variable_local_media_port",
    )
    out = []
    for event in lab.esl.events[since:]:
        out.append("\n".join(f"{k}: {event[k]}" for k in keep if k in event))
    return write(lab.base / f"{name}-esl-events.txt", "\n\n".join(out) + "\n\n")


def first_call(lab: Lab, alice: Proc, carol: Proc) -> tuple[str, str, str]:
    alice.send(f"call sip:9700@{lab.net.a}")
    alice.wait_for(SECURE, 30)
    match, _ = carol.wait_for(SECURE, 30)
    carol_sas = match.group(1)
    calls = wait_calls(
        lab,
        lambda c: len(c) == 2 and all(x["sas_relay"] == "none" for x in c.values()),
        15,
        "alice and carol linked",
    )
    c = next(cid for cid, v in calls.items() if v["sas"] == carol_sas)
    a = next(cid for cid in calls if cid != c)
    return a, c, carol_sas


def check_transferred(lab: Lab, a: str, c: str, carol_sas: str, dave: Proc, carol: Proc) -> Any:
    match, _ = dave.wait_for(SECURE, 30)
    dave_sas = match.group(1)

    def ready(calls: dict[str, dict[str, Any]]) -> bool:
        others = [cid for cid in calls if cid != c]
        return (
            a not in calls
            and c in calls
            and len(others) == 1
            and calls[c]["bridge"] == calls[others[0]]["bridge"] != ""
            and calls[c]["sas_relay"] == calls[others[0]]["sas_relay"] == "none"
        )

    calls = wait_calls(lab, ready, 20, "carol and dave linked, alice gone")
    d = next(cid for cid in calls if cid != c)
    assert calls[c]["sas"] == carol_sas and calls[d]["sas"] == dave_sas, calls
    figures: dict[str, Any] = {"bridge": calls[c]["bridge"]}
    for cid, sas in ((c, carol_sas), (d, dave_sas)):
        figures[cid] = {"sas": sas, "flow_2s": flowing(lab, cid)}
        uuid = cid.removeprefix("fs-")
        for variable, expected in (
            ("pbx_zrtp_state", "secure"),
            ("pbx_zrtp_sas", sas),
            ("pbx_zrtp_sas_scope", "pbx-leg"),
            ("pbx_zrtp_sas_relay", "none"),
            ("pbx_zrtp_displayed_sas", sas),
        ):
            got = lab.esl.getvar(uuid, variable)
            assert got == expected, (uuid, variable, got, expected)
    assert srtp_failures(carol) == srtp_failures(dave) == 0
    return figures


def finish(lab: Lab, *phones: Proc) -> None:
    for proc in phones:
        hangup_phone(proc)
    wait_calls(lab, lambda c: not c, 20, "every call ended")


def test_blind_transfer_by_the_phone(lab: Lab) -> None:
    carol, dave, alice = phone(lab, "carol"), phone(lab, "dave"), phone(lab, "alice")
    try:
        since = len(lab.esl.events)
        a, c, carol_sas = first_call(lab, alice, carol)
        alice.send(f"transfer sip:9701@{lab.net.a}")
        figures = check_transferred(lab, a, c, carol_sas, dave, carol)
        path = save_events(lab, "blind-transfer", since)
        print("FS BLIND TRANSFER:", json.dumps({**figures, "events": str(path)}))
        finish(lab, carol, dave)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{lab.diagnostics()}") from None
    finally:
        for proc in (alice, carol, dave):
            proc.stop()


def test_attended_transfer_by_the_phone(lab: Lab) -> None:
    carol, dave, alice = phone(lab, "carol"), phone(lab, "dave"), phone(lab, "alice")
    try:
        since = len(lab.esl.events)
        a, c, carol_sas = first_call(lab, alice, carol)
        alice.send("pause 1")
        alice.wait_for(r"Call 1 .* is now paused", 10)
        alice.send(f"call sip:9701@{lab.net.a}")
        alice.wait_for(r"Call 2 is fully encrypted", 30)
        alice.send("transfer 1 --to-call 2")
        alice.wait_for(r"Performing attended transfer of call 1 to call 2", 10)
        figures = check_transferred(lab, a, c, carol_sas, dave, carol)
        path = save_events(lab, "attended-transfer", since)
        print("FS ATTENDED TRANSFER:", json.dumps({**figures, "events": str(path)}))
        finish(lab, carol, dave)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{lab.diagnostics()}") from None
    finally:
        for proc in (alice, carol, dave):
            proc.stop()


def bridged_calls(lab: Lab) -> dict[str, Any]:
    """``show bridged_calls as json`` now (what the adapter reads at resync)."""
    answer: dict[str, Any] = json.loads(lab.esl.api("show bridged_calls as json"))
    return answer


def test_an_attended_transfer_while_esl_is_down_is_relearned_at_resync(lab: Lab) -> None:
    """The adapter's event socket is cut just before alice joins carol and dave, and
    comes back once FreeSWITCH has bridged them: their CHANNEL_BRIDGE was never seen.
    At its next connection the adapter reads ``show bridged_calls`` and the relay
    links carol's and dave's legs, as if it had followed the transfer live."""
    if shutil.which("nft") is None or shutil.which("ss") is None:
        pytest.skip("needs nft and ss to cut the adapter's event socket")
    carol, dave, alice = phone(lab, "carol"), phone(lab, "dave"), phone(lab, "alice")
    try:
        a, c, carol_sas = first_call(lab, alice, carol)
        alice.send("pause 1")
        alice.wait_for(r"Call 1 .* is now paused", 10)
        alice.send(f"call sip:9701@{lab.net.a}")
        match, _ = dave.wait_for(SECURE, 30)
        dave_sas = match.group(1)
        alice.wait_for(r"Call 2 is fully encrypted", 30)
        calls = wait_calls(lab, lambda x: len(x) == 4, 20, "the consultation call's two legs")
        d = next(cid for cid, v in calls.items() if v["sas"] == dave_sas)
        carol_uuid, dave_uuid = c.removeprefix("fs-"), d.removeprefix("fs-")
        port = re.search(r"^port = (\d+)$", (lab.base / "pbx-zrtp.toml").read_text(), re.M)
        assert port is not None
        keep = lab.esl.sock.getsockname()[1]
        with link_down(
            lab.relay, int(port.group(1)), keep, r"ESL connection to .* lost", "ESL connected to"
        ):
            alice.send("transfer 1 --to-call 2")
            alice.wait_for(r"Performing attended transfer of call 1 to call 2", 10)
            deadline = time.monotonic() + 15
            while True:  # FreeSWITCH bridged carol and dave (asked on the test's own socket)
                answer = bridged_calls(lab)
                pairs = [{r.get("uuid"), r.get("b_uuid")} for r in answer.get("rows", [])]
                if {carol_uuid, dave_uuid} in pairs:
                    break
                assert time.monotonic() < deadline, answer
                time.sleep(0.2)
            time.sleep(1)
            stale = ours_calls = wait_calls(lab, lambda x: True, 1, "the relay's calls")
            assert not (stale[c]["bridge"] == stale.get(d, {}).get("bridge") != ""), (
                ours_calls
            )  # the adapter saw none of it
        path = write(lab.base / "resync-bridged-calls.json", json.dumps(answer, indent=1))
        figures = check_transferred(lab, a, c, carol_sas, dave, carol)
        print("FS TRANSFER WHILE ESL DOWN:", json.dumps({**figures, "bridged_calls": str(path)}))
        finish(lab, carol, dave)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{lab.diagnostics()}") from None
    finally:
        for proc in (alice, carol, dave):
            proc.stop()


def test_hold_and_resume(lab: Lab) -> None:
    """alice puts carol on hold (re-INVITE sendonly) and resumes: both legs keep their
    ZRTP session and link; media flows again as SRTP after the resume, and no packet
    reached a phone in the clear (its SRTP never failed)."""
    carol, alice = phone(lab, "carol"), phone(lab, "alice")
    try:
        since = len(lab.esl.events)
        a, c, carol_sas = first_call(lab, alice, carol)
        before = ours(lab)
        alice.send("pause 1")
        alice.wait_for(r"Call 1 .* is now paused", 10)
        time.sleep(1)
        alice.send("resume 1")
        alice.wait_for(r"Resuming call 1", 10)
        time.sleep(1)
        figures = {cid: flowing(lab, cid) for cid in (a, c)}
        after = ours(lab)
        for cid in (a, c):
            assert after[cid]["sas"] == before[cid]["sas"], (before[cid], after[cid])
        assert after[a]["bridge"] == after[c]["bridge"] != "", after
        assert after[c]["sas"] == carol_sas
        assert srtp_failures(alice) == srtp_failures(carol) == 0
        path = save_events(lab, "hold-resume", since)
        print("FS HOLD/RESUME:", json.dumps({"flow_2s": figures, "events": str(path)}))
        finish(lab, alice, carol)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{lab.diagnostics()}") from None
    finally:
        for proc in (alice, carol):
            proc.stop()


def test_codec_change_by_re_invite(lab: Lab) -> None:
    """alice's phone drops PCMU and re-INVITEs (pause/resume: liblinphone offers only
    the codecs still enabled): FreeSWITCH switches alice's leg to PCMA. The relay
    follows (it forwards whatever payload type the leg carries): the same ZRTP
    session, media flowing as SRTP, no packet failing SRTP at a phone."""
    carol, alice = phone(lab, "carol"), phone(lab, "alice")
    try:
        a, c, _carol_sas = first_call(lab, alice, carol)
        uuid = a.removeprefix("fs-")
        assert lab.esl.getvar(uuid, "read_codec") == "PCMU"  # the call starts in PCMU
        before = ours(lab)
        alice.send("codec list")
        match, _ = alice.wait_for(r"^\s*(\d+): PCMU \(8000\) enabled", 10)
        alice.send(f"codec disable {match.group(1)}")
        alice.send("pause 1")
        alice.wait_for(r"Call 1 .* is now paused", 10)
        alice.send("resume 1")
        alice.wait_for(r"Resuming call 1", 10)
        deadline = time.monotonic() + 10
        while not any(
            "Set Codec" in line and " PCMA/8000" in line for line in lab.channel_log(uuid)
        ):  # FreeSWITCH's log; its read_codec variable keeps the call's first codec
            assert time.monotonic() < deadline, "FreeSWITCH did not switch alice's leg to PCMA"
            time.sleep(0.2)
        time.sleep(1)
        figures = {cid: flowing(lab, cid) for cid in (a, c)}
        after = ours(lab)
        for cid in (a, c):
            assert after[cid]["sas"] == before[cid]["sas"], (before[cid], after[cid])
        assert after[a]["bridge"] == after[c]["bridge"] != ""
        assert srtp_failures(alice) == srtp_failures(carol) == 0
        print("FS CODEC CHANGE:", json.dumps({"codec": "PCMU->PCMA", "flow_2s": figures}))
        finish(lab, alice, carol)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{lab.diagnostics()}") from None
    finally:
        for proc in (alice, carol):
            proc.stop()


def test_park_and_retrieve(lab: Lab) -> None:
    """alice talks to carol; carol is parked (``uuid_transfer`` to 9702, valet_park
    space 7001: driven from the PBX side, as an operator console would) and alice's
    leg ends; dave calls 9703, is secured, and valet_park bridges him with carol,
    whose ZRTP session never stopped."""
    carol, dave, alice = phone(lab, "carol"), phone(lab, "dave"), phone(lab, "alice")
    try:
        since = len(lab.esl.events)
        a, c, carol_sas = first_call(lab, alice, carol)
        reply = lab.esl.api(f"uuid_transfer {c.removeprefix('fs-')} 9702 XML default")
        assert reply.startswith("+OK"), reply
        wait_calls(lab, lambda x: a not in x and x[c]["sas_relay"] == "", 15, "carol parked")
        dave.send(f"call sip:9703@{lab.net.a}")
        figures = check_transferred(lab, a, c, carol_sas, dave, carol)
        path = save_events(lab, "park-retrieve", since)
        print("FS PARK/RETRIEVE:", json.dumps({**figures, "events": str(path)}))
        finish(lab, carol, dave)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{lab.diagnostics()}") from None
    finally:
        for proc in (alice, carol, dave):
            proc.stop()


def test_call_pickup(lab: Lab) -> None:
    """alice calls 9704, which rings erin (who does not answer); dave calls 9705, is
    secured, and ``intercept`` bridges him with alice, whose ZRTP session (secured
    before the ringing) goes on; erin's ringing leg never carried media."""
    erin, dave, alice = phone(lab, "erin", answer=False), phone(lab, "dave"), phone(lab, "alice")
    try:
        since = len(lab.esl.events)
        alice.send(f"call sip:9704@{lab.net.a}")
        match, _ = alice.wait_for(SECURE, 30)
        alice_sas = match.group(1)
        erin.wait_for(r"Receiving new incoming call", 20)
        calls = wait_calls(lab, lambda x: len(x) == 1, 10, "alice's leg")
        a = next(iter(calls))
        dave.send(f"call sip:9705@{lab.net.a}")
        match, _ = dave.wait_for(SECURE, 30)
        dave_sas = match.group(1)

        def ready(calls: dict[str, dict[str, Any]]) -> bool:
            others = [cid for cid in calls if cid != a]
            return (
                a in calls
                and len(others) == 1
                and calls[a]["bridge"] == calls[others[0]]["bridge"] != ""
                and calls[a]["sas_relay"] == calls[others[0]]["sas_relay"] == "none"
            )

        calls = wait_calls(lab, ready, 20, "alice picked up by dave")
        d = next(cid for cid in calls if cid != a)
        assert calls[a]["sas"] == alice_sas and calls[d]["sas"] == dave_sas, calls
        figures = {cid: flowing(lab, cid) for cid in (a, d)}
        for cid, sas in ((a, alice_sas), (d, dave_sas)):
            uuid = cid.removeprefix("fs-")
            assert lab.esl.getvar(uuid, "pbx_zrtp_state") == "secure"
            assert lab.esl.getvar(uuid, "pbx_zrtp_sas_relay") == "none"
            assert lab.esl.getvar(uuid, "pbx_zrtp_displayed_sas") == sas
        assert srtp_failures(alice) == srtp_failures(dave) == 0
        path = save_events(lab, "pickup", since)
        print(
            "FS PICKUP:",
            json.dumps({"bridge": calls[a]["bridge"], "flow_2s": figures, "events": str(path)}),
        )
        finish(lab, alice, dave)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{lab.diagnostics()}") from None
    finally:
        for proc in (alice, erin, dave):
            proc.stop()
