"""Pre-bound ports between calls (FreeSWITCH): strays, late packets, the next call.

FreeSWITCH reveals a call's port too late, so the relay binds the whole range in
advance and anything may reach it between calls: late packets after a BYE, scans,
spoofed datagrams. What such traffic creates (an unclaimed ``port-P`` call) must go
back to idle on its own, must never answer its unauthenticated source with more
bytes than it sent, and must never leak into the next call placed on that port.
Real sockets on loopback; the phones are our engine (and bzrtp in tests/interop/).
"""

from __future__ import annotations

import asyncio
import copy
import os
import socket
import struct
from typing import Any

from pbx_zrtp.endpoint import EndpointOptions, run_endpoint
from pbx_zrtp.relay.core import Relay
from pbx_zrtp.relay.mirror import Counters, Mirror, Policy
from pbx_zrtp.zrtp.config import ZrtpConfiguration
from pbx_zrtp.zrtp.connection import ZrtpConnection
from tests.relay.helpers import (
    PHONE_HOST,
    RELAY_HOST,
    EchoPbx,
    Recorder,
    free_even_port,
    make_relay,
    rtp,
)

STRAY_HOST = "127.0.0.6"
VICTIM_HOST = "127.0.0.7"


def _mirror(relay: Relay, port: int) -> Mirror:
    return next(m for m in relay.mirrors() if m.port == port)


def _unclaimed(relay: Relay) -> list[str]:
    return [c.call_id for c in relay.calls() if c.call_id.startswith("port-")]


class _Stray(asyncio.DatagramProtocol):
    """A source that sends what it is told and counts every byte it gets back."""

    def __init__(self) -> None:
        self.transport: Any = None
        self.sent_bytes = 0
        self.received: list[bytes] = []

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.received.append(data)

    def send(self, data: bytes, port: int) -> None:
        self.transport.sendto(data, (RELAY_HOST, port))
        self.sent_bytes += len(data)

    @property
    def received_bytes(self) -> int:
        return sum(len(d) for d in self.received)

    def close(self) -> None:
        self.transport.close()


async def _stray(host: str = STRAY_HOST) -> _Stray:
    _, protocol = await asyncio.get_running_loop().create_datagram_endpoint(
        _Stray, local_addr=(host, 0)
    )
    return protocol


def _hello(**config: Any) -> bytes:
    """A genuine ZRTP Hello (CRC right) from a fresh engine, as a spoofer would send."""
    engine = ZrtpConnection(ZrtpConfiguration(zid=os.urandom(12), **config), ssrc=0x1234)
    engine.start(0.0)
    (hello,) = engine.datagrams_to_send()
    return hello


def _zrtp_junk(seq: int) -> bytes:
    """ZRTP-looking (0x10, cookie) but not a ZRTP message: the CRC is wrong."""
    return struct.pack("!BBH", 0x10, 0, seq) + b"ZRTP" + os.urandom(4) + os.urandom(60)


def _garbage() -> bytes:
    return b"\x41" + os.urandom(39)  # neither RTP (version 2) nor ZRTP nor STUN


# ---------------------------------------------------------------------- item 1: lifecycle


def test_a_stray_datagram_leaves_the_prebound_port_idle_again() -> None:
    """One stray RTP packet between calls: an unclaimed call appears, fails its
    time-out, and the port returns to idle once the traffic has stopped."""

    async def scenario() -> None:
        port = free_even_port()
        relay = make_relay(prebind=(port,), required_timeout=0.5)
        await relay.start()
        recorder = Recorder(relay)
        stray = await _stray()
        try:
            stray.send(rtp(1), port)
            await recorder.wait_for(lambda: _unclaimed(relay) == [f"port-{port}"])
            await recorder.wait_for(lambda: not relay.calls(), timeout=10)
            mirror = _mirror(relay, port)
            assert mirror.state.value == "idle" and mirror.identity is None
            assert mirror.phone is None
            ended = [e for e in recorder.events if e.state == "ended"]
            assert [e.call_id for e in ended] == [f"port-{port}"]
            assert "unclaimed" in ended[0].reason
            # Counted as unclaimed traffic, not as a call that ended in some state.
            assert relay.stats()["ended"] == {"unclaimed": 1}
        finally:
            stray.close()
            await relay.close()

    asyncio.run(asyncio.wait_for(scenario(), 30))


def test_a_call_named_on_a_port_poisoned_by_stale_traffic_starts_clean() -> None:
    """A plain phone keeps sending after the BYE: its unclaimed call on the port has
    failed. The next call FreeSWITCH places there must not inherit anything of it,
    and its own ZRTP phone secures it while the stale stream is still arriving."""

    async def scenario() -> None:
        port = free_even_port()
        relay = make_relay(prebind=(port,), required_timeout=0.6)
        await relay.start()
        recorder = Recorder(relay)
        pbx = EchoPbx(port)
        await pbx.start()
        stale = await _stray()
        running = True

        async def keep_sending() -> None:
            seq = 0
            while running:
                stale.send(rtp(seq), port)
                seq += 1
                await asyncio.sleep(0.05)

        sender = asyncio.ensure_future(keep_sending())
        try:
            await recorder.wait_for(lambda: "failed" in recorder.states(f"port-{port}"))
            report = await relay.create("fs-next", port, Policy.REQUIRED, self_uri="sip:9400@fs")
            assert report.call_id == "fs-next"
            assert report.state == "pending" and report.reason == ""
            assert report.phone == ""  # the stale source's latch is gone
            counters = report.counters
            assert counters["phone_in"] == 0 and counters["pbx_in"] == 0
            assert counters["drops"] == {} and counters["priming_sent"] <= 1
            # The stale call was ended (and said why); nothing is left under its name.
            ended = [e for e in recorder.events if e.call_id == f"port-{port}"][-1]
            assert ended.state == "ended" and "fs-next" in ended.reason
            assert [c.call_id for c in relay.calls()] == ["fs-next"]
            # The new call's own required time-out runs from its creation, not the
            # stale call's: it is still pending well after the stale one had failed.
            phone = await run_endpoint(
                ZrtpConfiguration(zid=b"N" * 12),
                EndpointOptions(
                    bind=(PHONE_HOST, 0), peer=(RELAY_HOST, port), srtp_count=10, timeout=10
                ),
            )
            assert phone["ok"] and phone["srtp"]["received_ok"] == 10
            final = relay.get("fs-next")
            assert final.state == "secure" and final.sas == phone["sas"]
            assert final.phone.startswith(PHONE_HOST)
            assert "failed" not in recorder.states("fs-next")
        finally:
            running = False
            await sender
            stale.close()
            pbx.close()
            await relay.close()

    asyncio.run(asyncio.wait_for(scenario(), 40))


#: Attributes that differ between calls by design: the priming stream's random
#: sequence number, timestamp and SSRC (a fresh stream per call).
_PER_CALL_RANDOM = {"_prime_seq", "_prime_ts", "_prime_ssrc"}


def _call_state(mirror: Mirror) -> dict[str, Any]:
    """The mirror's attributes, mutable counters copied (a call mutates them in place)."""
    return {
        k: copy.deepcopy(v) if isinstance(v, Counters) else v
        for k, v in vars(mirror).items()
        if k not in _PER_CALL_RANDOM
    }


def test_an_ended_call_leaves_the_prebound_mirror_exactly_as_fresh() -> None:
    """Everything a call can change on a pre-bound mirror (engine, latch, counters,
    timers, states, SAS relay, enrollment, priming) is back to its value before the
    first call, so the next call on the port cannot inherit any of it."""

    async def scenario() -> None:
        port = free_even_port()
        relay = make_relay(prebind=(port,))
        await relay.start()
        recorder = Recorder(relay)
        mirror = _mirror(relay, port)
        fresh = _call_state(mirror)
        pbx = EchoPbx(port)
        await pbx.start()
        try:
            # Unclaimed media first (a ZRTP phone), then the adapter names the call.
            task = asyncio.ensure_future(
                run_endpoint(
                    ZrtpConfiguration(zid=b"C" * 12),
                    EndpointOptions(
                        bind=(PHONE_HOST, 0), peer=(RELAY_HOST, port), srtp_count=5, timeout=10
                    ),
                )
            )
            await recorder.wait_for(lambda: bool(recorder.states(f"port-{port}")))
            await relay.create("named", port, Policy.REQUIRED)
            assert (await task)["ok"]
            await recorder.wait_for(lambda: relay.get("named").state == "secure")
            relay.verify("named")
            relay.delete("named")
            assert _call_state(mirror) == fresh
            # And after an unclaimed call that failed and was released.
            stray = await _stray()
            stray.send(rtp(7), port)
            await recorder.wait_for(lambda: bool(_unclaimed(relay)))
            await recorder.wait_for(lambda: not relay.calls(), timeout=10)
            stray.close()
            assert _call_state(mirror) == fresh
        finally:
            pbx.close()
            await relay.close()

    asyncio.run(asyncio.wait_for(scenario(), 40))


def test_early_zrtp_media_is_adopted_by_the_call_named_right_after() -> None:
    """The legitimate case the pre-binding exists for: the phone's ZRTP reaches the
    port just before the adapter names the call; its exchange is kept."""

    async def scenario() -> None:
        port = free_even_port()
        relay = make_relay(prebind=(port,))
        await relay.start()
        recorder = Recorder(relay)
        pbx = EchoPbx(port)
        await pbx.start()
        try:
            task = asyncio.ensure_future(
                run_endpoint(
                    ZrtpConfiguration(zid=b"E" * 12),
                    EndpointOptions(
                        bind=(PHONE_HOST, 0), peer=(RELAY_HOST, port), srtp_count=10, timeout=10
                    ),
                )
            )
            mirror = _mirror(relay, port)
            await recorder.wait_for(lambda: mirror.speaks_zrtp)
            report = await relay.create("fs-early", port, Policy.REQUIRED)
            assert report.counters["phone_in"] > 0  # the early packets are this call's
            phone = await task
            assert phone["ok"] and phone["srtp"]["received_ok"] == 10
            assert relay.get("fs-early").state == "secure"
            assert not [
                e for e in recorder.events if e.call_id == f"port-{port}" and e.state == "ended"
            ]
        finally:
            pbx.close()
            await relay.close()

    asyncio.run(asyncio.wait_for(scenario(), 40))


# ---------------------------------------------------------------------- item 2: amplification


def test_unclaimed_ports_never_send_a_source_more_bytes_than_it_sent() -> None:
    """Stray RTP, garbage, ZRTP-looking junk and genuine Hellos (a spoofer's, so the
    source never answers) to pre-bound ports: each source gets back at most the
    bytes it sent, counted per source, also when a spoofed Hello from a victim
    follows a source that sent a lot."""

    async def scenario() -> None:
        kinds = ["rtp", "rtp_burst", "garbage", "zrtp_junk", "hello", "big_hello", "relatch"]
        ports = {kind: free_even_port() for kind in kinds}
        relay = make_relay(prebind=tuple(ports.values()))
        await relay.start()
        sources: dict[str, _Stray] = {}
        victim = await _stray(VICTIM_HOST)
        try:
            for kind in kinds:
                sources[kind] = await _stray()
            big = _hello(
                key_agreement_types=(b"X255", b"X448", b"DH3k", b"DH2k", b"EC25", b"EC38"),
                hash_types=(b"S256", b"S384"),
                cipher_types=(b"AES1", b"AES3"),
                sas_types=(b"B32 ", b"B256"),
            )
            sources["rtp"].send(rtp(1), ports["rtp"])
            sources["big_hello"].send(big, ports["big_hello"])
            for i in range(10):
                sources["rtp_burst"].send(rtp(i), ports["rtp_burst"])
                sources["garbage"].send(_garbage(), ports["garbage"])
                sources["zrtp_junk"].send(_zrtp_junk(i), ports["zrtp_junk"])
                sources["relatch"].send(rtp(i), ports["relatch"])
                if i % 3 == 0:
                    sources["hello"].send(_hello(), ports["hello"])
                await asyncio.sleep(0.02)
            # The spoofed Hello "from the victim" moves the latch (no Hello accepted
            # yet there): what the first source sent buys the victim nothing.
            victim.send(_hello(), ports["relatch"])
            await asyncio.sleep(5.0)  # longer than a whole Hello schedule (~4 s)
            ratios = {kind: (s.received_bytes, s.sent_bytes) for kind, s in {**sources}.items()}
            ratios["victim"] = (victim.received_bytes, victim.sent_bytes)
            for kind, (got, sent) in ratios.items():
                assert got <= sent, (kind, ratios)
            # Something did answer the genuine Hellos (one for one, within the bytes).
            assert ratios["hello"][0] > 0, ratios
            # RTP and garbage from an unknown source get nothing back at all.
            for kind in ("rtp", "rtp_burst", "garbage", "zrtp_junk"):
                assert ratios[kind][0] == 0, (kind, ratios)
            drops = relay.stats()["drops"]
            assert drops.get("amplification_guard", 0) > 0, drops
        finally:
            for source in sources.values():
                source.close()
            victim.close()
            await relay.close()

    asyncio.run(asyncio.wait_for(scenario(), 40))


def test_a_zrtp_phone_secures_on_an_unclaimed_port_within_the_byte_limit() -> None:
    """The limit must not break a genuine ZRTP phone whose call is never named
    (the port's prebind policy governs): its own Hellos and retransmissions pay
    for the relay's answers, and the exchange completes."""

    async def scenario() -> None:
        port = free_even_port()
        relay = make_relay(prebind=(port,))
        await relay.start()
        pbx = EchoPbx(port)
        await pbx.start()
        try:
            phone = await run_endpoint(
                ZrtpConfiguration(zid=b"G" * 12),
                EndpointOptions(
                    bind=(PHONE_HOST, 0), peer=(RELAY_HOST, port), srtp_count=10, timeout=10
                ),
            )
            assert phone["ok"] and phone["srtp"]["received_ok"] == 10
            report = relay.get(f"port-{port}")
            assert report.state == "secure" and report.sas == phone["sas"]
        finally:
            pbx.close()
            await relay.close()

    asyncio.run(asyncio.wait_for(scenario(), 40))


def test_a_phone_with_a_smaller_hello_than_ours_secures_on_an_unclaimed_port() -> None:
    """A phone whose Hello is smaller than the relay's and that stops repeating it
    once acknowledged (as bzrtp and our engine do): acknowledging it before our
    Hello could go out would leave nothing to pay for our Hello, a deadlock."""

    async def scenario() -> None:
        port = free_even_port()
        relay = make_relay(prebind=(port,))
        await relay.start()
        pbx = EchoPbx(port)
        await pbx.start()
        small = ZrtpConfiguration(
            zid=b"M" * 12,
            key_agreement_types=(b"DH3k",),
            hash_types=(b"S256",),
            cipher_types=(b"AES1",),
            auth_tag_types=(b"HS32",),
            sas_types=(b"B32 ",),
            multistream=False,
        )
        engine = ZrtpConnection(small, ssrc=0x4D4D)
        engine.start(0.0)
        (small_hello,) = engine.datagrams_to_send()
        assert len(small_hello) < len(_hello(mitm=True))  # the relay's Hello is bigger
        try:
            phone = await run_endpoint(
                small,
                EndpointOptions(
                    bind=(PHONE_HOST, 0), peer=(RELAY_HOST, port), srtp_count=10, timeout=10
                ),
            )
            assert phone["ok"] and phone["srtp"]["received_ok"] == 10
            assert relay.get(f"port-{port}").state == "secure"
        finally:
            pbx.close()
            await relay.close()

    asyncio.run(asyncio.wait_for(scenario(), 40))


def test_a_stray_sweep_does_not_make_the_relay_flood_the_pbx() -> None:
    """Before a call is named, priming silence toward the PBX is bounded by the
    bytes that reached the port: a one-packet stray buys at most one packet's worth."""

    async def scenario() -> None:
        ports = [free_even_port() for _ in range(4)]
        relay = make_relay(prebind=tuple(ports))
        await relay.start()
        stray = await _stray()
        try:
            for port in ports:
                stray.send(rtp(1), port)
            await asyncio.sleep(0.5)
            for port in ports:
                counters = _mirror(relay, port).counters
                assert counters.priming_sent <= 1, (port, counters)
        finally:
            stray.close()
            await relay.close()

    asyncio.run(asyncio.wait_for(scenario(), 30))


def test_no_socket_is_left_behind_by_released_unclaimed_calls() -> None:
    """Released unclaimed calls keep the port bound (it is pre-bound) and nothing else."""

    async def scenario() -> None:
        port = free_even_port()
        relay = make_relay(prebind=(port,), required_timeout=0.5)
        await relay.start()
        recorder = Recorder(relay)
        try:
            for round_ in range(2):
                with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                    s.bind((STRAY_HOST, 0))
                    s.sendto(rtp(round_), (RELAY_HOST, port))
                await recorder.wait_for(lambda: bool(_unclaimed(relay)))
                await recorder.wait_for(lambda: not relay.calls(), timeout=10)
            assert [m.port for m in relay.mirrors()] == [port]
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
                try:
                    probe.bind((RELAY_HOST, port))
                except OSError:
                    pass  # still bound by the relay, as it must be
                else:
                    raise AssertionError("the pre-bound port was released")
            assert relay.stats()["ended"] == {"unclaimed": 2}
        finally:
            await relay.close()

    asyncio.run(asyncio.wait_for(scenario(), 40))
