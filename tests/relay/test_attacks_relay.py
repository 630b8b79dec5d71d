"""The attack catalogue against a relay: one mirror attacked, another call unharmed.

A good call (a ZRTP phone exchanging SRTP through the relay) runs while attacker
phones, each on its own mirror of the same relay, carry out the attacks of
docs/reliability.md: a Hello flood, a Commit with a bad hvi, a bad DH value, a
downgrade Commit, a false hash-chain preimage, forged and refused GoClear,
forged and replayed SRTP, replayed ZRTP. Each attacked mirror answers as RFC 6189
says and counts what it dropped; the good call stays secure with zero loss.
"""

from __future__ import annotations

import asyncio
import os
import struct
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from pbx_zrtp.endpoint import EndpointOptions, run_endpoint
from pbx_zrtp.relay.core import Relay
from pbx_zrtp.relay.mirror import Policy
from pbx_zrtp.srtp import SrtpContext
from pbx_zrtp.zrtp import packets as p
from pbx_zrtp.zrtp.config import ZrtpConfiguration
from pbx_zrtp.zrtp.connection import State, ZrtpConnection
from pbx_zrtp.zrtp.crypto import implicit_mac
from pbx_zrtp.zrtp.events import Secured, SrtpKeys, SrtpKeysReady
from tests.relay.helpers import PHONE_HOST, RELAY_HOST, EchoPbx, create_call, make_relay

Mutate = Callable[[ZrtpConnection, bytes], list[bytes]]
GOOD_PACKETS = 300  # 6 s of SRTP on the good call, spanning every attack


def _same(engine: ZrtpConnection, data: bytes) -> list[bytes]:
    return [data]


@dataclass
class Attacker(asyncio.DatagramProtocol):
    """A ZRTP phone whose outgoing packets pass through ``mutate`` first."""

    engine: ZrtpConnection
    peer: tuple[str, int]
    mutate: Mutate = _same
    sent: list[bytes] = field(default_factory=list)
    keys: SrtpKeys | None = None
    secured: bool = False
    transport: Any = None
    timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.engine.start(asyncio.get_running_loop().time())
        self.pump()

    def datagram_received(self, data: bytes, addr: Any) -> None:
        if p.is_zrtp_packet(data):
            self.engine.receive_datagram(data, asyncio.get_running_loop().time())
            self.pump()

    def send(self, data: bytes) -> None:
        self.sent.append(data)
        self.transport.sendto(data, self.peer)

    def pump(self) -> None:
        for datagram in self.engine.datagrams_to_send():
            for out in self.mutate(self.engine, datagram):
                self.send(out)
        while (event := self.engine.next_event()) is not None:
            if isinstance(event, SrtpKeysReady | Secured):
                self.keys = event.keys
            if isinstance(event, Secured):
                self.secured = True
        if self.timer is not None:
            self.timer.cancel()
        deadline = self.engine.get_timer()
        if deadline is not None:
            self.timer = asyncio.get_running_loop().call_at(deadline, self._on_timer)

    def _on_timer(self) -> None:
        self.timer = None
        self.engine.handle_timer(asyncio.get_running_loop().time())
        self.pump()

    def close(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
        self.transport.close()


async def attack(
    relay: Relay, name: str, *, role: str = "auto", mutate: Mutate = _same, **config: Any
) -> tuple[Attacker, EchoPbx]:
    port = await create_call(relay, name, Policy.REQUIRED)
    pbx = EchoPbx(port)
    await pbx.start()
    engine = ZrtpConnection(
        ZrtpConfiguration(zid=os.urandom(12), role=role, **config),  # type: ignore[arg-type]
        ssrc=int.from_bytes(os.urandom(4), "big"),
    )
    _, attacker = await asyncio.get_running_loop().create_datagram_endpoint(
        lambda: Attacker(engine, (RELAY_HOST, port), mutate), local_addr=(PHONE_HOST, 0)
    )
    return attacker, pbx


def rewriting(kind: type[p.Message], change: Callable[[ZrtpConnection, Any], p.Message]) -> Mutate:
    def mutate(engine: ZrtpConnection, data: bytes) -> list[bytes]:
        packet = p.ZrtpPacket.parse(data)
        if isinstance(packet.message, kind):
            message = change(engine, packet.message)
            return [p.ZrtpPacket(packet.sequence, packet.ssrc, message).serialize()]
        return [data]

    return mutate


def bad_hvi(engine: ZrtpConnection, commit: p.Commit) -> p.Message:
    forged = replace(commit, hvi=bytes(32))
    return replace(forged, mac=implicit_mac(engine._h1, forged.serialize()[:-8]))


def false_preimage_first(engine: ZrtpConnection, data: bytes) -> list[bytes]:
    """Each DHPart2 is preceded by a copy whose H1 is wrong (a false packet, §9)."""
    packet = p.ZrtpPacket.parse(data)
    if isinstance(packet.message, p.DHPart2):
        false = replace(packet.message, h1=b"\x5a" * 32)
        return [p.ZrtpPacket(packet.sequence, packet.ssrc, false).serialize(), data]
    return [data]


async def wait(predicate: Callable[[], bool], timeout: float = 15.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        assert loop.time() < deadline, "timed out"
        await asyncio.sleep(0.02)


def _stranger_hello(i: int) -> bytes:
    stranger = ZrtpConnection(ZrtpConfiguration(zid=i.to_bytes(12, "big")), ssrc=0x7000 + i)
    stranger.start(0.0)
    return stranger.datagrams_to_send()[0]


def test_attacked_mirrors_answer_as_the_rfc_says_and_another_call_loses_nothing() -> None:
    async def scenario() -> None:
        relay = make_relay(required_timeout=20.0)
        good_port = await create_call(relay, "good", Policy.REQUIRED)
        good_pbx = EchoPbx(good_port)
        await good_pbx.start()
        cleanup: list[Any] = [good_pbx]
        try:
            good = asyncio.ensure_future(
                run_endpoint(
                    ZrtpConfiguration(zid=b"G" * 12),
                    EndpointOptions(
                        bind=(PHONE_HOST, 0),
                        peer=(RELAY_HOST, good_port),
                        srtp_count=GOOD_PACKETS,
                        timeout=10,
                    ),
                )
            )
            await wait(lambda: relay.get("good").state == "secure")

            # Each attack on its own mirror, all while the good call carries SRTP.
            hvi, pbx1 = await attack(
                relay, "bad-hvi", role="initiator", mutate=rewriting(p.Commit, bad_hvi)
            )
            dh, pbx2 = await attack(
                relay,
                "bad-dh",
                role="responder",
                key_agreement_types=(b"X255",),
                mutate=rewriting(p.DHPart1, lambda e, m: replace(m, pv=bytes(32))),
            )
            down, pbx3 = await attack(
                relay,
                "downgrade",
                role="initiator",
                mutate=rewriting(p.Commit, lambda e, m: replace(m, cipher_type=b"2FS3")),
            )
            legit, pbx4 = await attack(
                relay, "false-packets", role="initiator", mutate=false_preimage_first
            )
            flood_port = await create_call(relay, "hello-flood", Policy.REQUIRED)
            pbx5 = EchoPbx(flood_port)
            await pbx5.start()
            cleanup += [pbx1, pbx2, pbx3, pbx4, pbx5, hvi, dh, down, legit]
            flooder, _ = await asyncio.get_running_loop().create_datagram_endpoint(
                asyncio.DatagramProtocol, local_addr=(PHONE_HOST, 0)
            )
            cleanup.append(flooder)
            for i in range(300):
                flooder.sendto(_stranger_hello(i), (RELAY_HOST, flood_port))
                if i % 50 == 0:
                    await asyncio.sleep(0.01)

            await wait(lambda: relay.get("bad-hvi").state == "failed")
            await wait(lambda: relay.get("bad-dh").state == "failed")
            await wait(lambda: relay.get("downgrade").state == "failed")
            await wait(lambda: legit.secured and relay.get("false-packets").state == "secure")

            # After secure: GoClear (valid MAC, but the relay does not allow clear),
            # a forged GoClear, forged SRTP, a replayed SRTP packet, the whole ZRTP
            # exchange replayed.
            engine = legit.engine
            exchange = list(legit.sent)
            mac = engine._hash.mac(engine._mackey_i, p.GoClear.MESSAGE_TYPE)  # type: ignore[union-attr]
            legit.send(p.ZrtpPacket(60000, engine._ssrc, p.GoClear(clear_mac=mac)).serialize())
            legit.send(p.ZrtpPacket(60001, engine._ssrc, p.GoClear(clear_mac=bytes(8))).serialize())
            assert legit.keys is not None
            srtp = SrtpContext(legit.keys)
            header = struct.pack("!BBHII", 0x80, 0, 1, 160, 0xABCDEF)
            valid = srtp.protect(header + b"\xff" * 160)
            assert valid is not None
            legit.send(valid)
            legit.send(valid)  # replay
            for i in range(20):
                legit.send(struct.pack("!BBHII", 0x80, 0, 2 + i, 0, 0xABCDEF) + os.urandom(170))
            for data in exchange:
                legit.send(data)
            await asyncio.sleep(0.3)

            phone = await good
            # Commit and DHPart2 have no handler once secure (Hello and Confirm2 get acks).
            stale = sum(
                isinstance(p.ZrtpPacket.parse(d).message, p.Commit | p.DHPart2) for d in exchange
            )
        finally:
            for item in cleanup:
                item.close()
            reports = {
                name: relay.get(name)
                for name in (
                    "good",
                    "bad-hvi",
                    "bad-dh",
                    "downgrade",
                    "false-packets",
                    "hello-flood",
                )
            }
            await relay.close()

        # The good call: secure throughout, zero loss, nothing of the attacks counted.
        assert phone["ok"] and phone["srtp"]["sent"] == GOOD_PACKETS
        # Every packet the phone sent reached the PBX and came back authenticated (the
        # count may include an echoed priming packet of the relay's).
        assert phone["srtp"]["received_ok"] >= GOOD_PACKETS
        seqs = {struct.unpack("!H", d[2:4])[0] for d in good_pbx.received if len(d) == 172}
        assert set(range(1, GOOD_PACKETS + 1)) <= seqs
        good_report = reports["good"]
        assert good_report.state == "secure"
        for drop in ("zrtp_false_packet", "goclear_refused", "srtp_auth", "zrtp_ignored"):
            assert good_report.counters["drops"].get(drop, 0) == 0, good_report.counters

        # Commit with a bad hvi -> Error 0x62 (the engine's reason names it).
        assert "hvi does not match" in reports["bad-hvi"].reason
        assert hvi.engine.state is State.FAILED
        # A low-order X25519 point as pv -> Error 0x61.
        assert "invalid X255 public value" in reports["bad-dh"].reason
        assert dh.engine.state is State.FAILED
        # A cipher the relay does not offer -> Error 0x52.
        assert "2FS3, which we did not offer" in reports["downgrade"].reason
        # False preimage dropped, the call secured anyway; GoClear refused (Error 0x100)
        # and counted; forged GoClear counted as a false packet; forged and replayed
        # SRTP dropped; the replayed exchange ignored.
        drops = reports["false-packets"].counters["drops"]
        assert reports["false-packets"].state == "secure"
        assert drops["zrtp_false_packet"] == 2, drops  # false DHPart2 + forged GoClear
        assert drops["goclear_refused"] == 1, drops
        assert drops["srtp_auth"] == 21  # 20 forged + 1 replayed
        assert drops["zrtp_ignored"] >= stale >= 3, drops
        # Hello flood: bounded, counted, never secure.
        flood = reports["hello-flood"]
        assert flood.state in ("pending", "failed")
        assert flood.counters["drops"]["zrtp_ignored"] >= 290, flood.counters

    asyncio.run(scenario())
