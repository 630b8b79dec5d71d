"""One SRTP state per call, fast path on and off (issue 11, items 1, 2, 6 and 11).

Real sockets on loopback: a relay on 127.0.0.2 (with or without the native
worker), a PBX on 127.0.0.3 that sends its own RTP stream, and a ZRTP phone on
127.0.0.4 driven step by step here (its own engine, its own libsrtp sessions,
which also serve as the independent receiver that tracks the rollover counter).
An attacker on 127.0.0.5 replays what it captured. Every test runs over IPv6
too: the same lab on ::2-::5, in a network namespace (``tests/netns.py``).
"""

from __future__ import annotations

import asyncio
import os
import struct
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from pbx_zrtp.relay.core import Relay
from pbx_zrtp.relay.fastpath import available
from pbx_zrtp.relay.mirror import Mirror, Policy
from pbx_zrtp.srtp import SrtpContext
from pbx_zrtp.zrtp import packets as p
from pbx_zrtp.zrtp.config import ZrtpConfiguration
from pbx_zrtp.zrtp.connection import ZrtpConnection
from pbx_zrtp.zrtp.events import Secured
from tests import netns
from tests.relay.helpers import PBX_HOST, PHONE_HOST, RELAY_HOST, EchoPbx, create_call, make_relay

ATTACKER_HOST = "127.0.0.5"
PHONE_SSRC = 0x0BADCAFE
PBX_SSRC = 0x5EED5EED

_WHY = available()
if _WHY is not None and os.environ.get("CI"):
    raise RuntimeError(f"the fast path must work in CI: {_WHY}")
FAST = [
    False,
    pytest.param(True, marks=pytest.mark.skipif(_WHY is not None, reason=f"no fast path: {_WHY}")),
]


@dataclass(frozen=True)
class Net:
    """The lab's addresses: one family."""

    relay: str
    pbx: str
    phone: str
    attacker: str

    def where(self, host: str, port: int) -> str:
        """A media address as the relay reports it."""
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


IPV4 = Net(RELAY_HOST, PBX_HOST, PHONE_HOST, ATTACKER_HOST)
IPV6 = Net(netns.RELAY6, netns.PBX6, netns.PHONE6, netns.ATTACKER6)
NETS = [
    pytest.param(IPV4, id="ipv4"),
    pytest.param(IPV6, id="ipv6", marks=pytest.mark.ipv6_netns),
]


class _Socket(asyncio.DatagramProtocol):
    def __init__(self, owner: Phone) -> None:
        self.owner = owner
        self.transport: Any = None
        self.media: list[bytes] = []  # everything but ZRTP that reached this socket

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: Any) -> None:
        if p.is_zrtp_packet(data):
            self.owner.zrtp(data)
        else:
            self.media.append(data)

    def address(self) -> tuple[str, int]:
        host, port = self.transport.get_extra_info("sockname")[:2]
        return str(host), int(port)


@dataclass
class Phone:
    """A ZRTP phone: its engine, its sockets (it may move), its SRTP state."""

    peer: tuple[str, int]
    host: str
    engine: ZrtpConnection = field(
        default_factory=lambda: ZrtpConnection(
            ZrtpConfiguration(zid=os.urandom(12)), ssrc=int.from_bytes(os.urandom(4), "big")
        )
    )
    sockets: list[_Socket] = field(default_factory=list)
    srtp: SrtpContext | None = None
    timer: asyncio.TimerHandle | None = None
    seq: int = 0

    async def open(self, host: str | None = None) -> _Socket:
        _, sock = await asyncio.get_running_loop().create_datagram_endpoint(
            lambda: _Socket(self), local_addr=(host or self.host, 0)
        )
        self.sockets.append(sock)
        return sock

    @property
    def current(self) -> _Socket:
        return self.sockets[-1]

    def start(self) -> None:
        self.engine.start(asyncio.get_running_loop().time())
        self.pump()

    def zrtp(self, data: bytes) -> None:
        self.engine.receive_datagram(data, asyncio.get_running_loop().time())
        self.pump()

    def pump(self) -> None:
        for datagram in self.engine.datagrams_to_send():
            self.current.transport.sendto(datagram, self.peer)
        while (event := self.engine.next_event()) is not None:
            if isinstance(event, Secured):
                self.srtp = SrtpContext(event.keys)
        if self.timer is not None:
            self.timer.cancel()
        deadline = self.engine.get_timer()
        if deadline is not None:
            self.timer = asyncio.get_running_loop().call_at(deadline, self.on_timer)

    def on_timer(self) -> None:
        self.timer = None
        self.engine.handle_timer(asyncio.get_running_loop().time())
        self.pump()

    def audio(self, count: int) -> list[tuple[bytes, bytes]]:
        """``count`` fresh SRTP packets (plain, protected), not sent."""
        assert self.srtp is not None
        out = []
        for _ in range(count):
            self.seq += 1
            plain = rtp(self.seq, PHONE_SSRC, self.seq.to_bytes(4, "big") * 40)
            protected = self.srtp.protect(plain)
            assert protected is not None
            out.append((plain, protected))
        return out

    def close(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
        self.engine.close()
        for sock in self.sockets:
            sock.transport.close()


def rtp(seq: int, ssrc: int, payload: bytes, ts: int | None = None) -> bytes:
    stamp = (seq * 160 if ts is None else ts) & 0xFFFFFFFF
    return struct.pack("!BBHII", 0x80, 0, seq & 0xFFFF, stamp, ssrc) + payload


async def until(
    predicate: Callable[[], bool], timeout: float = 10.0, why: Callable[[], str] | None = None
) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        assert loop.time() < deadline, f"timed out: {why() if why is not None else ''}"
        await asyncio.sleep(0.005)


def _handshake_status(relay: Relay, phone: Phone) -> str:
    """What both ends say when a handshake does not finish (the failure message)."""
    report = relay.get("call")
    return (
        f"phone engine {phone.engine.state.value} stats {dict(phone.engine.stats)};"
        f" relay call {report.state} phone {report.phone} counters {report.counters}"
    )


@dataclass
class Lab:
    relay: Relay
    mirror: Mirror
    pbx: EchoPbx  # echo off: it plays its own stream
    phone: Phone
    fast: bool
    net: Net

    def pbx_send(self, packet: bytes) -> None:
        self.pbx.transports[0].sendto(packet, (self.net.relay, self.mirror.pbx_side_port))

    def pbx_send_rtcp(self, packet: bytes) -> None:
        assert self.mirror._pbx_rtcp_sock is not None
        port = self.mirror._pbx_rtcp_sock.get_extra_info("sockname")[1]
        self.pbx.transports[1].sendto(packet, (self.net.relay, port))

    def pbx_audio(self) -> list[bytes]:
        """What reached the PBX from the phone (the relay's priming silence aside)."""
        return [d for d in self.pbx.received if d[8:12] == PHONE_SSRC.to_bytes(4, "big")]


async def secured_call(
    fast: bool, scenario: Callable[[Lab], Awaitable[None]], net: Net = IPV4
) -> None:
    relay = make_relay(fastpath=fast, required_timeout=20.0, relay_host=net.relay, pbx_host=net.pbx)
    await relay.start()
    port = await create_call(relay, "call", Policy.REQUIRED)
    pbx = EchoPbx(port, echo=False, host=net.pbx)
    await pbx.start()
    phone = Phone((net.relay, port), net.phone)
    try:
        await phone.open()
        phone.start()
        # Generous: the sanitizer run (tests/relay/test_fastpath_sanitizers.py) is slow.
        await until(lambda: phone.srtp is not None, 30, lambda: _handshake_status(relay, phone))
        mirror = next(iter(relay.mirrors()))
        lab = Lab(relay, mirror, pbx, phone, fast, net)
        # The relay may be the initiator: the phone's first SRTP packet completes it.
        first = phone.audio(1)[0][1]
        phone.current.transport.sendto(first, phone.peer)
        await until(
            lambda: relay.get("call").state == "secure", 30, lambda: _handshake_status(relay, phone)
        )
        await until(lambda: len(lab.pbx_audio()) == 1)
        assert (mirror.fast.handle is not None) is fast  # the path under test
        await scenario(lab)
    finally:
        phone.close()
        pbx.close()
        await relay.close()


def keystream(wire: bytes, plain: bytes) -> bytes:
    """AES-CM: the payload is XORed with the keystream of (SSRC, index)."""
    return bytes(a ^ b for a, b in zip(wire[12:44], plain[12:44], strict=True))


# ------------------------------------------------------------------------- item 1


@pytest.mark.parametrize("net", NETS)
@pytest.mark.parametrize("fast", FAST)
def test_relatch_after_the_pbx_sequence_wrapped_never_reuses_an_index(fast: bool, net: Net) -> None:
    """The PBX's sequence number wraps while the call is forwarded, the phone then
    moves (an authentic packet from a new address), the PBX carries on, and one
    packet from before the wrap arrives late: no (SSRC, index) is ever encrypted
    twice (each packet on the wire has its own keystream; the late one is dropped
    as a repeat) and every packet authenticates at the phone's own receiver, which
    tracks the rollover counter."""

    async def scenario(lab: Lab) -> None:
        phone, sent = lab.phone, {}
        start = 65530

        async def play(first: int, count: int, sock: _Socket) -> None:
            for n in range(first, first + count):
                plain = rtp(n, PBX_SSRC, n.to_bytes(4, "big") * 40, ts=n * 160)
                sent[n * 160 & 0xFFFFFFFF] = plain
                lab.pbx_send(plain)
                await asyncio.sleep(0.002)
            await until(lambda: len(sock.media) >= count)

        before = phone.current
        await play(start, 16, before)  # 65530 .. 65535, 0 .. 9: ROC 0 -> 1
        moved = await phone.open()
        packet = phone.audio(1)[0][1]
        moved.transport.sendto(packet, phone.peer)
        host, port = moved.address()
        await until(lambda: lab.relay.get("call").phone == lab.net.where(host, port))
        await play(start + 16, 20, moved)  # 10 .. 29, ROC 1, to the new address
        late = rtp(65534, PBX_SSRC, b"\x5a" * 160, ts=1234)  # reordered from before the wrap
        sent[1234] = late
        lab.pbx_send(late)
        await asyncio.sleep(0.2)

        wire = before.media + moved.media
        streams = {keystream(w, sent[struct.unpack("!I", w[4:8])[0]]) for w in wire}
        assert len(streams) == len(wire)  # no keystream, so no (SSRC, index), used twice
        assert len(before.media) == 16 and len(moved.media) == 20
        assert phone.srtp is not None
        for packet in wire:  # every packet, before and after the relatch
            plain = phone.srtp.unprotect(packet)
            assert plain is not None, f"seq {struct.unpack('!H', packet[2:4])[0]} unauthenticated"
            assert plain == sent[struct.unpack("!I", packet[4:8])[0]]
        report = lab.relay.get("call")
        assert report.counters["drops"].get("relatched") == 1
        assert report.counters["drops"].get("srtp_repeat") == 1  # the late packet
        if lab.fast:  # the worker carried the audio after the relatch, still attached
            assert lab.mirror.fast.handle is not None
            assert lab.mirror.fastpath is not None
            stats = lab.mirror.fastpath.stats(lab.mirror.fast.handle)
            assert stats["phone_out"] >= 36 and stats["srtp_protect"] == 0

    asyncio.run(asyncio.wait_for(secured_call(fast, scenario, net), 60))


# ------------------------------------------------------------------------- item 2


@pytest.mark.parametrize("net", NETS)
@pytest.mark.parametrize("fast", FAST)
def test_replayed_phone_packets_from_anywhere_neither_move_the_latch_nor_reach_the_pbx(
    fast: bool, net: Net
) -> None:
    """An attacker re-sends one captured phone packet, then the whole captured
    stream, from its own address; the phone re-sends them too. The latch stays on
    the phone, the PBX gets each phone packet exactly once, and the PBX's audio
    still goes to the phone (none to the attacker)."""

    async def scenario(lab: Lab) -> None:
        phone = lab.phone
        captured = phone.audio(10)
        for _, protected in captured:
            phone.current.transport.sendto(protected, phone.peer)
            await asyncio.sleep(0.002)
        await until(lambda: len(lab.pbx_audio()) == 11)
        where = lab.relay.get("call").phone
        attacker = await phone.open(lab.net.attacker)
        phone.sockets.remove(attacker)  # the phone itself does not move
        attacker.transport.sendto(captured[3][1], phone.peer)
        await asyncio.sleep(0.1)
        assert lab.relay.get("call").phone == where  # the latch did not move
        for _, protected in captured:
            attacker.transport.sendto(protected, phone.peer)
        await asyncio.sleep(0.2)
        assert lab.relay.get("call").phone == where
        for _, protected in captured:  # and from the phone's own address
            phone.current.transport.sendto(protected, phone.peer)
        await asyncio.sleep(0.2)

        report = lab.relay.get("call")
        assert report.phone == where
        counts = Counter(lab.pbx_audio())
        assert [counts[plain] for plain, _ in captured] == [1] * 10
        assert len(lab.pbx_audio()) == 11  # the first packet and the ten, nothing else
        drops = report.counters["drops"]
        assert drops.get("wrong_source") == 11  # one + ten from the attacker
        assert drops.get("srtp_auth") == 10  # the phone's own replays
        assert drops.get("relatched", 0) == 0
        for n in range(5):  # the PBX still talks to the phone
            lab.pbx_send(rtp(n + 1, PBX_SSRC, b"\x01" * 160))
        await until(lambda: len(phone.current.media) == 5)
        assert phone.srtp is not None
        assert all(phone.srtp.unprotect(d) is not None for d in phone.current.media)
        await asyncio.sleep(0.05)
        assert attacker.media == []
        attacker.transport.close()

    asyncio.run(asyncio.wait_for(secured_call(fast, scenario, net), 60))


# ------------------------------------------------------------------------- item 6


@pytest.mark.parametrize("net", NETS)
@pytest.mark.parametrize("fast", FAST)
def test_a_repeated_pbx_index_is_never_encrypted_again(fast: bool, net: Net) -> None:
    """The PBX sends sequence number 100 three times (another payload, then the
    first one again): one packet for it reaches the phone; the other two are
    dropped and counted as srtp_repeat."""

    async def scenario(lab: Lab) -> None:
        first = rtp(100, PBX_SSRC, b"\x11" * 160)
        other = rtp(100, PBX_SSRC, b"\x22" * 160)
        for packet in (first, other, first, rtp(101, PBX_SSRC, b"\x33" * 160)):
            lab.pbx_send(packet)
            await asyncio.sleep(0.02)
        media = lab.phone.current.media
        await until(lambda: len(media) >= 2)
        await asyncio.sleep(0.1)
        assert [struct.unpack("!H", d[2:4])[0] for d in media] == [100, 101]
        srtp = lab.phone.srtp
        assert srtp is not None
        assert [srtp.unprotect(d) for d in media] == [first, rtp(101, PBX_SSRC, b"\x33" * 160)]
        assert lab.relay.get("call").counters["drops"].get("srtp_repeat") == 2

    asyncio.run(asyncio.wait_for(secured_call(fast, scenario, net), 60))


# ------------------------------------------------------------------------- item 11


def _feedback(pt: int, fmt: int, words: int) -> bytes:
    """An RTCP feedback packet (RFC 4585): 205 transport layer, 206 payload specific."""
    body = struct.pack("!II", PBX_SSRC, PHONE_SSRC) + b"\x00\x07\x00\x00" * (words - 2)
    return struct.pack("!BBH", 0x80 | fmt, pt, words) + body


@pytest.mark.parametrize("net", NETS)
@pytest.mark.parametrize("fast", FAST)
def test_rtcp_feedback_multiplexed_on_the_rtp_port_is_srtcp_both_ways(fast: bool, net: Net) -> None:
    """PT 205 (generic NACK) and 206 (PLI) from the PBX on its RTP port reach the
    phone as SRTCP, and the phone's SRTCP feedback reaches the PBX; RTCP on P+1
    works too while the worker holds the call's sessions."""

    async def scenario(lab: Lab) -> None:
        phone = lab.phone
        srtp = phone.srtp
        assert srtp is not None
        nack, pli = _feedback(205, 1, 3), _feedback(206, 1, 2)
        for packet in (nack, pli):
            lab.pbx_send(packet)
        await until(lambda: len(phone.current.media) >= 2)
        assert [srtp.unprotect(d) for d in phone.current.media] == [nack, pli]
        # the phone's feedback, on the RTP port (RFC 5761)
        for packet in (nack, pli):
            protected = srtp.protect(packet)
            assert protected is not None
            phone.current.transport.sendto(protected, phone.peer)
        await until(lambda: nack in lab.pbx.received and pli in lab.pbx.received)
        # RTCP on P+1 both ways, through the same (lent) sessions
        rtcp_sock = await phone.open()
        phone.sockets.remove(rtcp_sock)
        report = struct.pack("!BBHIIIIII", 0x80, 200, 6, PHONE_SSRC, 1, 2, 3, 4, 5)
        rtcp_sock.transport.sendto(srtp.protect(report), (lab.net.relay, phone.peer[1] + 1))
        await until(lambda: report in lab.pbx.rtcp_received)
        sender = struct.pack("!BBHIIIIII", 0x80, 200, 6, PBX_SSRC, 9, 8, 7, 6, 5)
        lab.pbx_send_rtcp(sender)
        await until(lambda: len(rtcp_sock.media) == 1)
        assert srtp.unprotect(rtcp_sock.media[0]) == sender
        rtcp_sock.transport.close()
        drops = lab.relay.get("call").counters["drops"]
        assert not {"srtp_auth", "srtcp_auth", "srtp_protect"} & set(drops), drops

    asyncio.run(asyncio.wait_for(secured_call(fast, scenario, net), 60))
