"""A call through a mirror on loopback: phone (our engine) -> relay -> echo PBX."""

from __future__ import annotations

import asyncio
import socket
import sys
from pathlib import Path

from pbx_zrtp.endpoint import EndpointOptions, run_endpoint
from pbx_zrtp.relay.mirror import Policy
from pbx_zrtp.zrtp.config import ZrtpConfiguration
from tests.relay.helpers import (
    PHONE_HOST,
    RELAY_HOST,
    EchoPbx,
    Recorder,
    assert_echoed_back,
    create_call,
    make_relay,
    rtcp_sr,
    rtp,
)

ROOT = Path(__file__).resolve().parents[2]


def test_secured_call_through_a_mirror_srtp_both_ways() -> None:
    async def scenario() -> None:
        relay = make_relay()
        await relay.start()
        recorder = Recorder(relay)
        port = await create_call(
            relay, "call-1", Policy.REQUIRED, self_uri="sip:100@pbx", peer_uri="sip:phone@lan"
        )
        pbx = EchoPbx(port)
        await pbx.start()
        try:
            phone = await run_endpoint(
                ZrtpConfiguration(zid=b"P" * 12),
                EndpointOptions(
                    bind=(PHONE_HOST, 0), peer=(RELAY_HOST, port), srtp_count=20, timeout=10
                ),
            )
            report = relay.get("call-1")
            assert report.state == "secure"
            assert phone["sas"] == report.sas and report.sas_type == phone["sas_type"]
            # SRTP from the phone was decrypted, echoed by the PBX in the clear and
            # re-encrypted toward the phone: every packet authenticated end to end.
            assert_echoed_back(phone, 20, relay, "call-1")
            assert len(pbx.received) >= 20  # clear RTP on the PBX side (plus priming)
            assert recorder.states("call-1")[:2] == ["pending", "secure"]
            assert report.peer_zid == (b"P" * 12).hex()
        finally:
            await relay.close()
            pbx.close()

    asyncio.run(scenario())


async def _udp(
    host: str,
) -> tuple[asyncio.DatagramTransport, asyncio.Queue[tuple[bytes, tuple[str, int]]]]:
    """A plain UDP socket (a non-ZRTP phone) whose received datagrams land in a queue."""
    queue: asyncio.Queue[tuple[bytes, tuple[str, int]]] = asyncio.Queue()

    class Proto(asyncio.DatagramProtocol):
        def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
            queue.put_nowait((data, addr))

    transport, _ = await asyncio.get_running_loop().create_datagram_endpoint(
        Proto, local_addr=(host, 0)
    )
    return transport, queue  # type: ignore[return-value]


async def _drain(
    queue: asyncio.Queue[tuple[bytes, tuple[str, int]]], wait: float = 0.2
) -> list[bytes]:
    out: list[bytes] = []
    deadline = asyncio.get_running_loop().time() + wait
    while True:
        remaining = deadline - asyncio.get_running_loop().time()
        if remaining <= 0:
            return out
        try:
            data, _ = await asyncio.wait_for(queue.get(), remaining)
            out.append(data)
        except TimeoutError:
            return out


def test_off_policy_is_byte_exact_pass_through_without_hello() -> None:
    async def scenario() -> None:
        relay = make_relay()
        port = await create_call(relay, "off-1", Policy.OFF)
        pbx = EchoPbx(port, echo=False)
        await pbx.start()
        phone, inbox = await _udp(PHONE_HOST)
        try:
            sent = [rtp(i) for i in range(1, 11)] + [b"\x10\x00\x00\x01ZRTP" + b"\x00" * 30]
            for packet in sent:
                phone.sendto(packet, (RELAY_HOST, port))
            await asyncio.sleep(0.2)
            assert [p for p in pbx.received if p in sent] == sent  # byte-identical, in order
            # PBX -> phone also untouched, and the relay never sent a ZRTP Hello
            mirror = next(iter(relay.mirrors()))
            mirror._from_pbx(rtp(99, ssrc=7), mirror.pbx)
            got = await _drain(inbox)
            assert got == [rtp(99, ssrc=7)]
            assert relay.get("off-1").state == "off"
        finally:
            phone.close()
            pbx.close()
            await relay.close()

    asyncio.run(scenario())


def test_optional_with_a_clear_phone_passes_audio_and_reports_clear() -> None:
    async def scenario() -> None:
        relay = make_relay(optional_timeout=0.5)
        recorder = Recorder(relay)
        port = await create_call(relay, "opt-1", Policy.OPTIONAL)
        pbx = EchoPbx(port)
        await pbx.start()
        phone, inbox = await _udp(PHONE_HOST)
        try:
            for i in range(1, 6):
                phone.sendto(rtp(i), (RELAY_HOST, port))
            await recorder.wait_for(lambda: "clear" in recorder.states("opt-1"), timeout=5)
            got = await _drain(inbox, 0.3)
            echoed = [p for p in got if p[0] == 0x80 and p[8:12] == rtp(1)[8:12]]
            assert len(echoed) == 5  # clear audio both ways while the phone has no ZRTP
            hellos = [p for p in got if p[0] == 0x10 and p[4:8] == b"ZRTP"]
            assert hellos  # but ZRTP was offered
            assert recorder.states("opt-1") == ["pending", "clear"]
            assert "no ZRTP" in relay.get("opt-1").reason
        finally:
            phone.close()
            pbx.close()
            await relay.close()

    asyncio.run(scenario())


def test_required_never_lets_clear_audio_through_and_fails_on_time() -> None:
    async def scenario() -> None:
        relay = make_relay(required_timeout=0.6)
        recorder = Recorder(relay)
        port = await create_call(relay, "req-1", Policy.REQUIRED)
        pbx = EchoPbx(port)
        await pbx.start()
        phone, inbox = await _udp(PHONE_HOST)
        try:
            for i in range(1, 40):
                phone.sendto(rtp(i), (RELAY_HOST, port))
                await asyncio.sleep(0.02)
            await recorder.wait_for(lambda: "failed" in recorder.states("req-1"), timeout=5)
            got = await _drain(inbox, 0.2)
            # Only ZRTP reached the phone; no phone audio reached the PBX.
            assert all(p[0] == 0x10 and p[4:8] == b"ZRTP" for p in got)
            assert not [p for p in pbx.received if p[8:12] == rtp(1)[8:12]]
            report = relay.get("req-1")
            assert report.state == "failed" and "not secure within" in report.reason
            assert report.counters["drops"]["clear_blocked"] >= 30
        finally:
            phone.close()
            pbx.close()
            await relay.close()

    asyncio.run(scenario())


def test_priming_stops_when_the_pbx_answers() -> None:
    async def scenario() -> None:
        relay = make_relay()
        # required: a call that needs the PBX latched (off and clear calls do not prime)
        port = await create_call(relay, "prime-1", Policy.REQUIRED, payload_type=8)
        await asyncio.sleep(0.15)
        mirror = next(iter(relay.mirrors()))
        assert mirror.counters.priming_sent >= 4  # nobody answers yet: keeps priming
        pbx = EchoPbx(port)  # the PBX appears and echoes: the loop closes
        await pbx.start()
        await asyncio.sleep(0.1)
        sent = mirror.counters.priming_sent
        await asyncio.sleep(0.2)
        assert mirror.counters.priming_sent == sent  # stopped
        assert all(
            p[1] & 0x7F == 8 and p[12:] == b"\xd5" * 160 for p in pbx.received
        )  # PCMA silence
        pbx.close()
        await relay.close()

    asyncio.run(scenario())


def test_garbage_and_floods_on_one_mirror_cost_another_call_nothing() -> None:
    """Garbage, truncated, oversized and random RTP/ZRTP datagrams at ~6000/s on one
    call's RTP and RTCP ports, from another process, while a secured call runs on
    another mirror: that call loses nothing and the flooded mirror survives."""

    async def scenario() -> None:
        relay = make_relay()
        good_port = await create_call(relay, "good", Policy.REQUIRED)
        bad_port = await create_call(relay, "bad", Policy.REQUIRED)
        good_pbx, bad_pbx = EchoPbx(good_port), EchoPbx(bad_port)
        await good_pbx.start()
        await bad_pbx.start()
        flooder = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "tests.relay.flooder",
            RELAY_HOST,
            f"{bad_port},{bad_port + 1}",
            "3000",
            "4",
            stdout=asyncio.subprocess.PIPE,
            cwd=str(ROOT),
        )
        try:
            await asyncio.sleep(0.3)  # the flood is on before the good call starts
            phone = await run_endpoint(
                ZrtpConfiguration(zid=b"Q" * 12),
                EndpointOptions(
                    bind=(PHONE_HOST, 0), peer=(RELAY_HOST, good_port), srtp_count=100, timeout=15
                ),
            )
            out, _ = await asyncio.wait_for(flooder.communicate(), 15)
            sent = int(out)
            assert sent > 5000
            assert phone["ok"] and phone["srtp"]["sent"] == 100
            assert_echoed_back(phone, 100, relay, "good")  # zero loss on the good call
            assert relay.get("good").state == "secure"
            bad = relay.get("bad")
            dropped = sum(bad.counters["drops"].values())
            assert dropped > 1000 and bad.state in ("pending", "failed")
        finally:
            if flooder.returncode is None:
                flooder.kill()
                await flooder.wait()
            good_pbx.close()
            bad_pbx.close()
            await relay.close()

    asyncio.run(scenario())


def test_a_stray_rtp_source_does_not_lock_out_the_zrtp_phone() -> None:
    """Something sends plain RTP to R:P first (latching the mirror); the real phone's
    ZRTP Hello moves the latch, and the stray source is dropped afterwards."""

    async def scenario() -> None:
        relay = make_relay()
        port = await create_call(relay, "stray", Policy.REQUIRED)
        pbx = EchoPbx(port)
        await pbx.start()
        stray = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        stray.bind(("127.0.0.9", 0))
        try:
            for i in range(5):
                stray.sendto(rtp(i), (RELAY_HOST, port))
            await asyncio.sleep(0.1)
            phone = await run_endpoint(
                ZrtpConfiguration(zid=b"S" * 12),
                EndpointOptions(
                    bind=(PHONE_HOST, 0), peer=(RELAY_HOST, port), srtp_count=10, timeout=10
                ),
            )
            stray.sendto(rtp(6), (RELAY_HOST, port))
            await asyncio.sleep(0.1)
            report = relay.get("stray")
            assert_echoed_back(phone, 10, relay, "stray")
            assert report.state == "secure" and report.phone.startswith(PHONE_HOST)
            assert report.counters["drops"]["relatched"] == 1
            assert report.counters["drops"]["wrong_source"] >= 1
        finally:
            stray.close()
            pbx.close()
            await relay.close()

    asyncio.run(scenario())


def test_rtcp_is_protected_toward_the_phone_and_clear_toward_the_pbx() -> None:
    async def scenario() -> None:
        relay = make_relay()
        port = await create_call(relay, "rtcp-1", Policy.REQUIRED)
        pbx = EchoPbx(port, echo=False)
        await pbx.start()
        try:
            phone = await run_endpoint(
                ZrtpConfiguration(zid=b"R" * 12),
                EndpointOptions(bind=(PHONE_HOST, 0), peer=(RELAY_HOST, port), timeout=10),
            )
            assert phone["ok"]
            from pbx_zrtp.srtp import SrtpContext
            from pbx_zrtp.zrtp.events import SrtpKeys

            phone_srtp = SrtpContext(
                SrtpKeys(
                    phone["cipher"],
                    phone["auth_tag"],
                    bytes.fromhex(phone["srtp_self_key"]),
                    bytes.fromhex(phone["srtp_self_salt"]),
                    bytes.fromhex(phone["srtp_peer_key"]),
                    bytes.fromhex(phone["srtp_peer_salt"]),
                )
            )
            rtcp_sock, inbox = await _udp(PHONE_HOST)
            srtcp = phone_srtp.protect(rtcp_sr())
            assert srtcp is not None
            rtcp_sock.sendto(srtcp, (RELAY_HOST, port + 1))
            await asyncio.sleep(0.2)
            assert pbx.rtcp_received == [rtcp_sr()]  # decrypted for the PBX
            # and the PBX's RTCP goes back to the phone's RTCP address as SRTCP
            mirror = next(iter(relay.mirrors()))
            mirror._from_pbx_rtcp(rtcp_sr(ssrc=9), mirror.pbx_rtcp)
            got = await _drain(inbox)
            assert len(got) == 1 and got[0] != rtcp_sr(ssrc=9)
            assert phone_srtp.unprotect(got[0]) == rtcp_sr(ssrc=9)
            rtcp_sock.close()
        finally:
            pbx.close()
            await relay.close()

    asyncio.run(scenario())


def test_stun_checks_from_a_phone_are_dropped_under_their_own_name() -> None:
    async def scenario() -> None:
        relay = make_relay()
        port = await create_call(relay, "stun-1", Policy.OPTIONAL)
        phone, _ = await _udp(PHONE_HOST)
        try:
            binding = bytes.fromhex("000100002112a442") + bytes(12)  # STUN Binding Request
            phone.sendto(binding, (RELAY_HOST, port))
            phone.sendto(binding, (RELAY_HOST, port + 1))
            await asyncio.sleep(0.2)
            drops = relay.get("stun-1").counters["drops"]
            assert drops.get("stun") == 2 and "not_rtp" not in drops
        finally:
            phone.close()
            await relay.close()

    asyncio.run(scenario())
