"""Fuzz targets: each a callable of bytes that raises only when it finds a bug.

Used by ``bench/fuzz.py`` (atheris, coverage-guided) and by ``tests/test_fuzz.py``
(seed corpus, Hypothesis). A target catches exactly the exceptions its code
documents as the way to reject bad input; anything else escapes and is a crash.
Every target also traps log records that carry an exception (``log.exception``):
the datagram and event paths swallow handler errors to stay up, and a fuzzer
must still see them.

Targets:

* ``packets``: ZRTP wire format parse/serialize round trip (packets.py).
* ``engine``: ZrtpConnection in every handshake state, fed mutated real messages.
* ``kem``: KEM mode (post-quantum hybrids): fragment packets (parse/serialize),
  the bounded reassembler, and an engine in every state of a fragmented
  X448+ML-KEM-1024 exchange (and an unfragmented X25519+ML-KEM-512 one) fed
  mutated real fragments, forged fragments with valid CRCs and mutated messages.
* ``relay``: a Mirror's phone/PBX datagram path (RTP, RTCP, ZRTP, STUN, SRTP) in
  each policy and state, checking that nothing clear crosses under ``required``.
* ``ami`` / ``esl``: panoramisk's and greenswitch's stream parsers feeding our
  Asterisk / FreeSWITCH adapters' event handling.
* ``control``: the control API's JSON-lines request handling and the TOML config
  loader (with the adapter sections).
* ``fastpath``: the native worker (``relay/_fastpath.c``): its per-datagram
  decision and the SRTP paths Python takes through it (punted RTCP, relatch),
  against reference libsrtp sessions. A libFuzzer harness in C
  (``bench/fuzz_fastpath.c``, clang, ASan + UBSan), not an atheris callable:
  ``build_fastpath_fuzzer`` builds it, :class:`FastpathTarget` runs one input.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import os
import random
import socket
import struct
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pbx_zrtp.zrtp import packets as p
from pbx_zrtp.zrtp.config import ZrtpConfiguration
from pbx_zrtp.zrtp.connection import State, ZrtpConnection
from pbx_zrtp.zrtp.errors import ZrtpProtocolError
from pbx_zrtp.zrtp.events import Secured
from pbx_zrtp.zrtp.fragments import MAX_MESSAGE_WORDS, Reassembler

ROOT = Path(__file__).resolve().parents[1]
CORPUS = ROOT / "tests" / "fuzz_corpus"
FIXTURES = (ROOT / "tests" / "asterisk", ROOT / "tests" / "freeswitch")

RELAY_HOST = "127.0.0.2"
PBX_HOST = "127.0.0.3"
PHONE_HOST = "127.0.0.4"
STRANGER_HOST = "127.0.0.5"


class FuzzFailure(AssertionError):
    """An invariant the target checks was violated (a finding, like a crash)."""


class _Trap(logging.Handler):
    """Turns a swallowed exception (a log record with exc_info) into a finding."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.exc_info and record.exc_info[0] is not None:
            self.records.append(record)

    def check(self) -> None:
        if self.records:
            record = self.records[0]
            self.records.clear()
            assert record.exc_info is not None
            raise FuzzFailure(f"swallowed exception logged: {record.getMessage()}") from (
                record.exc_info[1]
            )


_TRAP = _Trap()


def _install_trap() -> None:
    root = logging.getLogger("pbx_zrtp")
    if _TRAP not in root.handlers:
        root.addHandler(_TRAP)
    root.setLevel(logging.DEBUG)  # every record reaches the trap...
    root.propagate = False  # ...and none reaches stderr at fuzzing speed
    for name in ("panoramisk", "asyncio"):
        logging.getLogger(name).setLevel(logging.CRITICAL)
    logging.getLogger().setLevel(logging.CRITICAL)  # greenswitch logs on the root


class Reader:
    """A tiny FuzzedDataProvider: deterministic, pure Python, never raises."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def remaining(self) -> int:
        return len(self.data) - self.pos

    def byte(self) -> int:
        if self.pos >= len(self.data):
            return 0
        self.pos += 1
        return self.data[self.pos - 1]

    def u16(self) -> int:
        return self.byte() << 8 | self.byte()

    def take(self, size: int) -> bytes:
        out = self.data[self.pos : self.pos + size]
        self.pos += len(out)
        return out

    def chunk(self) -> bytes:
        """A length-prefixed piece (u16 length), or the rest."""
        return self.take(self.u16())


# ---------------------------------------------------------------------------
# packets
# ---------------------------------------------------------------------------


def zrtp_packet(message: bytes, *, sequence: int = 1, ssrc: int = 0x11223344) -> bytes:
    """A ZRTP packet around raw message bytes with a correct CRC (gets past the check)."""
    head = struct.pack("!BBH4sI", 0x10, 0, sequence & 0xFFFF, b"ZRTP", ssrc & 0xFFFFFFFF)
    data = head + message
    return data + p.crc32c_of(data).to_bytes(4, "little")


def fix_length(message: bytes) -> bytes:
    """Set the message length field to the real length (whole words) and preamble."""
    message = message[: len(message) - len(message) % 4]
    if len(message) < 4:
        return message
    return struct.pack("!HH", p.PREAMBLE, len(message) // 4) + message[4:]


def _normalise_packet(data: bytes) -> bytes:
    """What serialize(parse(data)) must give: documented normalisations only.

    The second header byte and the unused bits of Hello's flag word are ignored
    on parse and written as zero (RFC 6189 §5.1: "unused (zeros)"); the CRC is
    then recomputed.
    """
    out = bytearray(data[:-4])
    out[1] = 0
    if out[12 + 4 : 12 + 12] == b"Hello   " and len(out) >= 12 + 12 + 72:
        offset = 12 + 12 + 64  # message header + version, client id, H3, ZID
        (word,) = struct.unpack_from("!I", out, offset)
        struct.pack_into("!I", out, offset, word & 0x700FFFFF)
    return bytes(out) + p.crc32c_of(bytes(out)).to_bytes(4, "little")


def _normalise_plaintext(data: bytes, flags_offset: int, flag_mask: int) -> bytes:
    """Confirm / SASrelay plaintext: only the 9-bit sig length and known flags survive."""
    out = bytearray(data)
    (word,) = struct.unpack_from("!I", out, flags_offset)
    struct.pack_into("!I", out, flags_offset, word & (0x1FF << 8 | flag_mask))
    return bytes(out)


def target_packets(data: bytes) -> None:
    """Parse every way the engine does; what parses must serialize back exactly."""
    if not data:
        return
    mode, body = data[0] % 5, data[1:]
    if mode == 0:
        candidate = body  # a datagram as received (mostly dropped: CRC)
    elif mode == 1:
        candidate = zrtp_packet(body)  # CRC fixed: reaches the message parsers
    elif mode == 2:
        candidate = zrtp_packet(fix_length(body))  # length fixed too
    elif mode == 3:
        _plaintext(body, p.ConfirmPlaintext, 32, 0x0F)
        return
    else:
        _plaintext(body, p.SasRelayPlaintext, 0, 0x07)
        return
    p.is_zrtp_packet(candidate)
    try:
        packet = p.ZrtpPacket.parse(candidate)
    except ZrtpProtocolError:
        if mode and len(candidate) <= p.MAX_PACKET_SIZE:  # CRC fixed: the message is bad
            _must_not_parse(candidate[12:-4])
        return
    again = packet.serialize()
    if again != _normalise_packet(candidate):
        raise FuzzFailure(f"round trip differs for {type(packet.message).__name__}")
    if p.ZrtpPacket.parse(again) != packet:
        raise FuzzFailure("re-parse differs")
    if p.parse_message(p.message_bytes(candidate)) != packet.message:
        raise FuzzFailure("parse_message differs from the packet's message")


def _must_not_parse(message: bytes) -> None:
    try:
        p.parse_message(message)
    except ZrtpProtocolError:
        return
    raise FuzzFailure("message parses alone but not inside its packet")


def _plaintext(body: bytes, cls: Any, flags_offset: int, mask: int) -> None:
    try:
        plain = cls.parse(body)
    except ZrtpProtocolError:
        return
    if plain.serialize() != _normalise_plaintext(body, flags_offset, mask):
        raise FuzzFailure(f"{cls.__name__} round trip differs")
    repr(plain)  # redacted repr must work too


# ---------------------------------------------------------------------------
# engine
# ---------------------------------------------------------------------------

_FAST = ("X255",)


def _engine(zid: bytes, seed: int, ssrc: int, **config: Any) -> ZrtpConnection:
    rng = random.Random(seed)
    configuration = ZrtpConfiguration(zid=zid, **config)
    return ZrtpConnection(configuration, ssrc=ssrc, random=rng.randbytes)


class Exchange:
    """A real in-memory handshake, recorded, and replayable up to any step."""

    def __init__(self, seed: int, b: dict[str, Any] | None = None, **config: Any) -> None:
        self.seed = seed
        self.config = config
        self.config_b = {**config, **(b or {})}
        self.ssrc = {"a": 0x0A000000 + seed, "b": 0x0B000000 + seed}
        #: (receiver, datagram, time) in delivery order.
        self.log: list[tuple[str, bytes, float]] = []
        a, b = self.fresh("a"), self.fresh("b")
        now = 0.0
        a.start(now)
        b.start(now)
        for _ in range(20):
            now += 0.01
            moved = False
            for src, dst, name in ((a, b, "b"), (b, a, "a")):
                for datagram in src.datagrams_to_send():
                    self.log.append((name, datagram, now))
                    dst.receive_datagram(datagram, now)
                    moved = True
            if not moved:
                break
        if a.state is not State.SECURE or b.state is not State.SECURE:
            raise RuntimeError(f"reference handshake failed: {a.state} {b.state}")

    def fresh(self, side: str) -> ZrtpConnection:
        zid = (b"A" if side == "a" else b"B") * 12
        config = self.config if side == "a" else self.config_b
        return _engine(zid, self.seed * 2 + (side == "b"), self.ssrc[side], **config)

    def received(self, side: str) -> list[tuple[bytes, float]]:
        return [(d, t) for who, d, t in self.log if who == side]

    def at(self, side: str, steps: int) -> tuple[ZrtpConnection, float]:
        """A fresh engine of ``side`` after the first ``steps`` real messages."""
        engine = self.fresh(side)
        engine.start(0.0)
        now = 0.0
        for datagram, when in self.received(side)[:steps]:
            now = when
            engine.receive_datagram(datagram, now)
        engine.datagrams_to_send()
        while engine.next_event() is not None:
            pass
        return engine, now


class EngineTarget:
    """ZrtpConnection must never raise, whatever arrives, in whatever state."""

    def __init__(self) -> None:
        self.exchanges = [
            Exchange(1, key_agreement_types=_FAST),
            Exchange(
                2,
                {"role": "responder"},
                role="initiator",
                key_agreement_types=_FAST,
                allow_clear=True,
            ),
            Exchange(3, key_agreement_types=(b"X255",), multistream=False, sas_types=(b"B256",)),
        ]
        # Messages from bzrtp's own exchange (tests/vectors): real peer traffic.
        from tests.vectors import bzrtp_exchange

        self.foreign = [p.message_bytes(d) for d in bzrtp_exchange.PACKETS]

    def __call__(self, data: bytes) -> None:
        r = Reader(data)
        exchange = self.exchanges[r.byte() % len(self.exchanges)]
        side = "a" if r.byte() & 1 else "b"
        peer = exchange.received(side)
        steps = r.byte() % (len(peer) + 2)
        if steps == len(peer) + 1:
            engine = exchange.fresh(side)  # never started: receive_datagram starts it
            now = 0.0
        else:
            engine, now = exchange.at(side, steps)
        peer_ssrc = exchange.ssrc["b" if side == "a" else "a"]
        sequence = 0x100
        real = [p.message_bytes(d) for d, _ in peer] + self.foreign
        for _ in range(1 + r.byte() % 6):
            if r.remaining() == 0:
                break
            op = r.byte() % 7
            if op == 0:  # a raw datagram
                datagram = r.chunk()
            elif op in (1, 2):  # a message of our own, CRC (and length) fixed
                message = r.chunk()
                datagram = zrtp_packet(
                    fix_length(message) if op == 2 else message, sequence=sequence, ssrc=peer_ssrc
                )
            elif op in (3, 4):  # a real message, mutated
                message = bytearray(real[r.byte() % len(real)])
                for _ in range(r.byte() % 4):
                    if message:
                        message[r.u16() % len(message)] ^= r.byte() or 1
                patch = r.chunk()
                if patch:
                    start = r.u16() % (len(message) + 1)
                    message[start : start + len(patch)] = patch
                message_bytes = bytes(message)
                datagram = zrtp_packet(
                    fix_length(message_bytes) if op == 4 else message_bytes,
                    sequence=sequence,
                    ssrc=peer_ssrc if r.byte() % 8 else r.u16(),
                )
            elif op == 5:  # the next real message, unchanged (the exchange goes on)
                if steps < len(peer):
                    datagram = peer[steps][0]
                    steps += 1
                else:
                    datagram = zrtp_packet(real[r.byte() % len(real)], sequence=sequence)
            else:  # time passes
                now += r.u16() / 1000.0
                engine.handle_timer(now)
                self._drain(engine)
                continue
            sequence += 1
            now += 0.001
            engine.receive_datagram(datagram, now)
            self._drain(engine)
            timer = engine.get_timer()
            if timer is not None and r.byte() & 1:
                engine.handle_timer(timer)
                self._drain(engine)
        engine.close()

    @staticmethod
    def _drain(engine: ZrtpConnection) -> None:
        for datagram in engine.datagrams_to_send():
            try:
                p.ZrtpPacket.parse(datagram)  # what we send must be valid ZRTP
            except ZrtpProtocolError as exc:
                raise FuzzFailure(f"the engine sent an invalid packet: {exc}") from exc
        while engine.next_event() is not None:
            pass


# ---------------------------------------------------------------------------
# kem: fragments, reassembly, KEM-mode engine
# ---------------------------------------------------------------------------


def _fragment_packet(
    sequence: int, ssrc: int, message_id: int, total: int, offset: int, data: bytes
) -> bytes:
    """A fragment packet with any header values and a correct CRC (gets past the check)."""
    head = struct.pack("!BBH4sIHH", 0x11, 0, sequence, p.ZRTP_COOKIE, ssrc, message_id, total)
    head += struct.pack("!HH", offset, len(data) // 4)
    body = head + data
    return body + p.crc32c_of(body).to_bytes(4, "little")


def _refix_crc(datagram: bytes) -> bytes:
    return datagram[:-4] + p.crc32c_of(datagram[:-4]).to_bytes(4, "little")


class KemTarget(EngineTarget):
    """Fragments and KEM mode: nothing raises, memory stays bounded, what parses
    serializes back exactly, and a reassembled message is exactly its fragments."""

    def __init__(self) -> None:
        pq = {"hash_types": (b"S512",), "mtu": 600}
        self.exchanges = [
            Exchange(4, key_agreement_types=(b"X3M3",), **pq),
            Exchange(5, {"role": "responder"}, role="initiator", key_agreement_types=(b"X1M1",)),
            Exchange(
                6, {"role": "initiator"}, role="responder", key_agreement_types=(b"X3M3",), **pq
            ),
        ]
        self.foreign = []

    def __call__(self, data: bytes) -> None:
        r = Reader(data)
        mode = r.byte() % 3
        if mode == 0:
            self._parse(r)
        elif mode == 1:
            self._reassemble(r)
        else:
            self._engine(r)

    @staticmethod
    def _parse(r: Reader) -> None:
        raw = r.chunk()
        candidate = _refix_crc(raw) if len(raw) >= 8 and r.byte() & 1 else raw
        p.is_zrtp_fragment(candidate)
        try:
            fragment = p.Fragment.parse(candidate)
        except ZrtpProtocolError as exc:
            if exc.code is not None:
                raise FuzzFailure("a fragment error must be a silent drop") from exc
            return
        again = fragment.serialize()
        if candidate[1] == 0 and again != candidate:  # byte 1 is unused, sent as zero
            raise FuzzFailure("fragment round trip differs")
        if p.Fragment.parse(again) != fragment:
            raise FuzzFailure("fragment re-parse differs")

    @staticmethod
    def _reassemble(r: Reader) -> None:
        slots = 1 + r.byte() % 3
        reassembler = Reassembler(slots=slots)
        for _ in range(1 + r.byte() % 12):
            if r.remaining() == 0:
                break
            total = 1 + r.u16() % 700
            offset = r.u16() % (total + 1)
            words = 1 + r.byte() % 300
            data = (r.take(4) or b"\x00\x00\x00\x00").ljust(4, b"\x00") * words
            try:
                fragment = p.Fragment(r.byte(), 1, r.byte() % 4, total, offset, data)
            except ZrtpProtocolError:
                continue
            message = reassembler.add(fragment)
            if message is not None and len(message) != total * 4:
                raise FuzzFailure("a reassembled message has the wrong length")
            if reassembler.buffered_octets > slots * MAX_MESSAGE_WORDS * 4:
                raise FuzzFailure("the reassembler holds more than its bound")

    def _engine(self, r: Reader) -> None:
        exchange = self.exchanges[r.byte() % len(self.exchanges)]
        side = "a" if r.byte() & 1 else "b"
        peer = exchange.received(side)
        steps = r.byte() % (len(peer) + 1)
        engine, now = exchange.at(side, steps)
        peer_ssrc = exchange.ssrc["b" if side == "a" else "a"]
        real = [d for d, _ in peer]
        for _ in range(1 + r.byte() % 8):
            if r.remaining() == 0:
                break
            op = r.byte() % 5
            if op == 0:  # a real datagram (fragment or whole packet), mutated, CRC fixed
                datagram = bytearray(real[r.byte() % len(real)])
                for _ in range(1 + r.byte() % 3):
                    datagram[r.u16() % len(datagram)] ^= r.byte() or 1
                datagram = bytearray(_refix_crc(bytes(datagram)))
            elif op == 1:  # a forged fragment with any header values
                datagram = bytearray(
                    _fragment_packet(
                        r.u16(),
                        peer_ssrc if r.byte() % 4 else r.u16(),
                        r.u16() % 8,
                        r.u16() % 1024,
                        r.u16() % 1024,
                        r.chunk()[: 4 * (r.byte() + 1)].ljust(4, b"\x00")[: 1400 // 4 * 4],
                    )
                )
            elif op == 2 and steps < len(peer):  # the exchange goes on
                datagram = bytearray(peer[steps][0])
                steps += 1
            elif op == 3:  # a real datagram again (retransmission, duplicate)
                datagram = bytearray(real[r.byte() % len(real)])
            else:
                now += r.u16() / 1000.0
                engine.handle_timer(now)
                self._drain(engine)
                continue
            now += 0.001
            engine.receive_datagram(bytes(datagram), now)
            self._drain(engine)
        engine.close()

    @staticmethod
    def _drain(engine: ZrtpConnection) -> None:
        for datagram in engine.datagrams_to_send():
            try:
                if p.is_zrtp_fragment(datagram):
                    p.Fragment.parse(datagram)
                else:
                    p.ZrtpPacket.parse(datagram)
            except ZrtpProtocolError as exc:
                raise FuzzFailure(f"the engine sent an invalid packet: {exc}") from exc
        while engine.next_event() is not None:
            pass


# ---------------------------------------------------------------------------
# relay
# ---------------------------------------------------------------------------


def _sink(host: str, port: int = 0) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((host, port))
    sock.setblocking(False)
    return sock


def _drain_socket(sock: socket.socket) -> list[bytes]:
    out: list[bytes] = []
    while True:
        try:
            out.append(sock.recv(4096))
        except BlockingIOError:
            return out


def _port_pair_free(port: int) -> bool:
    try:
        for host in (RELAY_HOST, PBX_HOST):
            for number in (port, port + 1):
                with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                    s.bind((host, number))
    except OSError:
        return False
    return True


def _free_even_port(preferred: int | None = None) -> int:
    """An even port free (with +1) on the relay and PBX addresses; ``preferred``
    (the port the seeds name) when it is free."""
    if preferred is not None and _port_pair_free(preferred):
        return preferred
    for _ in range(200):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.bind((RELAY_HOST, 0))
            port = probe.getsockname()[1] & ~1
        if port < 1024:
            continue
        try:
            for host in (RELAY_HOST, PBX_HOST):
                for number in (port, port + 1):
                    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                        s.bind((host, number))
        except OSError:
            continue
        return port
    raise RuntimeError("no free even port pair")


class _MirrorLab:
    """One Mirror with its real sockets, a PBX sink and a phone sink on loopback."""

    def __init__(self, loop: asyncio.AbstractEventLoop, policy: Any, secure: bool) -> None:
        from pbx_zrtp.cache.memory import MemorySecretCache
        from pbx_zrtp.relay.mirror import CallIdentity, Mirror, MirrorSettings

        self.loop = loop
        self.policy = policy
        cache = MemorySecretCache()
        zid = b"R" * 12

        def zrtp(self_uri: str, peer_uri: str) -> ZrtpConfiguration:
            return ZrtpConfiguration(
                zid=zid, mitm=True, key_agreement_types=_FAST, self_uri=self_uri, peer_uri=peer_uri
            )

        # Policy time-outs far away: the fuzzer drives state, not the wall clock.
        settings = MirrorSettings(
            zrtp=zrtp, cache=cache, optional_timeout=1e6, required_timeout=1e6
        )
        for _ in range(20):
            port = _free_even_port()
            try:
                self.pbx_rtp, self.pbx_rtcp = _sink(PBX_HOST, port), _sink(PBX_HOST, port + 1)

                async def build(port: int = port) -> Mirror:
                    mirror = Mirror(settings, RELAY_HOST, port, PBX_HOST)
                    await mirror.open()
                    return mirror

                mirror = loop.run_until_complete(build())
                break
            except OSError:
                with contextlib.suppress(AttributeError):
                    self.pbx_rtp.close()
                    self.pbx_rtcp.close()
        else:
            raise RuntimeError("cannot bind a mirror")
        self.mirror = mirror
        self.phone_sock = _sink(PHONE_HOST)
        self.phone_rtcp_sock = _sink(PHONE_HOST)
        self.phone = self.phone_sock.getsockname()
        self.phone_rtcp = self.phone_rtcp_sock.getsockname()
        self.stranger = (STRANGER_HOST, 4000)
        mirror.attach(CallIdentity("fuzz", policy, self_uri="sip:100@pbx", peer_uri="sip:p@lan"))
        self.phone_engine = _engine(b"P" * 12, 7, 0x50505050, key_agreement_types=_FAST)
        self.phone_srtp: Any = None
        if secure:
            self._secure()
        self.drain()
        self.baseline = self.fingerprint()

    def _secure(self) -> None:
        from pbx_zrtp.srtp import SrtpContext

        engine, mirror = self.phone_engine, self.mirror
        engine.start(0.0)
        secured: Secured | None = None
        for step in range(30):
            for datagram in engine.datagrams_to_send():
                mirror._from_phone(datagram, self.phone)
            for datagram in _drain_socket(self.phone_sock):
                if p.is_zrtp_packet(datagram):
                    engine.receive_datagram(datagram, 0.01 * step)
            while (event := engine.next_event()) is not None:
                if isinstance(event, Secured):
                    secured = event
            if secured is not None and mirror.state.value == "secure":
                break
        if secured is None or mirror.state.value != "secure":
            raise RuntimeError(f"mirror not secured: {mirror.state} {mirror.reason}")
        self.phone_srtp = SrtpContext(secured.keys)
        # One authenticated packet latches the phone's RTCP address too.
        rtcp = self.phone_srtp.protect(struct.pack("!BBHIIIIII", 0x80, 200, 6, 1, 0, 0, 0, 0, 0))
        mirror._from_phone_rtcp(rtcp, self.phone_rtcp)

    def fingerprint(self) -> tuple[Any, ...]:
        m = self.mirror
        engine = m._engine
        return (
            m.state,
            m.phone,
            m.phone_rtcp,
            engine.state if engine else None,
            engine.peer_zid if engine else None,
        )

    def drain(self) -> tuple[list[bytes], list[bytes]]:
        """What reached the PBX (but the relay's own priming silence) and the phone."""
        prime = self.mirror._prime_ssrc.to_bytes(4, "big")
        to_pbx = [
            d
            for d in _drain_socket(self.pbx_rtp)
            if not (len(d) == 172 and d[8:12] == prime and d[12:] == b"\xff" * 160)
        ]
        to_pbx += _drain_socket(self.pbx_rtcp)
        to_phone = _drain_socket(self.phone_sock) + _drain_socket(self.phone_rtcp_sock)
        return to_pbx, to_phone

    def close(self) -> None:
        self.mirror.close_sockets()
        for sock in (self.pbx_rtp, self.pbx_rtcp, self.phone_sock, self.phone_rtcp_sock):
            sock.close()


def _rtp_header(r: Reader) -> bytes:
    flags = 0x80 | (r.byte() & 0x3F)
    return struct.pack("!BBHII", flags, r.byte() & 0x7F, r.u16(), r.u16() << 8, 0x0A0B0C0D)


class RelayTarget:
    """A mirror's datagram path never raises and never lets clear media cross
    under ``required`` before secure (nor clear PBX audio out once secure)."""

    def __init__(self) -> None:
        from pbx_zrtp.relay.mirror import Policy

        _install_trap()
        self.loop = asyncio.new_event_loop()
        asyncio.set_event_loop(self.loop)
        self.kinds = [
            (Policy.REQUIRED, False),
            (Policy.REQUIRED, True),
            (Policy.OPTIONAL, False),
            (Policy.OPTIONAL, True),
            (Policy.OFF, False),
        ]
        self.labs = [_MirrorLab(self.loop, policy, secure) for policy, secure in self.kinds]
        self.inputs = 0

    def close(self) -> None:
        for lab in self.labs:
            lab.close()
        self.loop.close()
        asyncio.set_event_loop(None)

    def __call__(self, data: bytes) -> None:
        from pbx_zrtp.relay.mirror import CallState, Policy

        r = Reader(data)
        index = r.byte() % len(self.labs)
        lab = self.labs[index]
        mirror = lab.mirror
        for _ in range(1 + r.byte() % 4):
            if r.remaining() == 0:
                break
            before = mirror.state
            op = r.byte() % 9
            source = lab.phone if r.byte() % 4 else lab.stranger
            authentic = False
            if op == 0:
                payload = r.chunk()
                mirror._from_phone(payload, source)
            elif op == 1:
                payload = r.chunk()
                mirror._from_phone_rtcp(payload, lab.phone_rtcp if source == lab.phone else source)
            elif op == 2:
                payload = r.chunk()
                mirror._from_pbx(payload, mirror.pbx if source == lab.phone else source)
            elif op == 3:
                payload = r.chunk()
                mirror._from_pbx_rtcp(payload, mirror.pbx_rtcp if source == lab.phone else source)
            elif op in (4, 5):  # ZRTP from the phone, CRC fixed, the phone engine's SSRC
                message = r.chunk()
                payload = zrtp_packet(
                    fix_length(message) if op == 5 else message,
                    sequence=r.u16(),
                    ssrc=lab.phone_engine._ssrc,
                )
                mirror._from_phone(payload, source)
            elif op == 6:  # plain RTP with a fuzzed header and payload
                payload = _rtp_header(r) + r.chunk()
                mirror._from_phone(payload, source)
            elif op == 7:  # authentic SRTP/SRTCP from the phone (secure mirrors)
                plain = _rtp_header(r) + r.chunk()
                if r.byte() & 1:
                    plain = plain[:1] + bytes([200 + r.byte() % 8]) + plain[2:]
                payload = lab.phone_srtp.protect(plain) if lab.phone_srtp else plain
                authentic = lab.phone_srtp is not None and payload is not None
                if payload is not None:
                    if r.byte() & 1:
                        mirror._from_phone_rtcp(payload, lab.phone_rtcp)
                    else:
                        mirror._from_phone(payload, source)
            else:  # a STUN binding request
                payload = struct.pack("!HHI", 1, 0, 0x2112A442) + r.take(12) + r.chunk()
                mirror._from_phone(payload, source)
            _TRAP.check()
            to_pbx, to_phone = lab.drain()
            policy = lab.policy
            if policy is Policy.REQUIRED and before is not CallState.SECURE:
                if to_pbx:
                    raise FuzzFailure(f"clear media reached the PBX under required ({before})")
                if any(not p.is_zrtp_packet(d) for d in to_phone):
                    raise FuzzFailure(
                        f"clear PBX media reached the phone under required ({before})"
                    )
            if before is CallState.SECURE and not authentic and op not in (2, 3) and to_pbx:
                raise FuzzFailure("an unauthenticated packet was forwarded to the PBX")
            if before is CallState.SECURE and op in (2, 3) and payload in to_phone:
                raise FuzzFailure("clear PBX media reached the phone of a secured call")
        if lab.fingerprint() != lab.baseline:  # fuzzing changed its state: start again
            lab.close()
            policy, secure = self.kinds[index]
            self.labs[index] = _MirrorLab(self.loop, policy, secure)
        self.inputs += 1
        if self.inputs % 1000 == 0:
            # Cancelled engine timers pile up in a loop that never runs: let it run once.
            self.loop.run_until_complete(asyncio.sleep(0))
            for lab in self.labs:
                lab.drain()


# ---------------------------------------------------------------------------
# AMI and ESL
# ---------------------------------------------------------------------------


class _Transport:
    """Stands in for the TCP transport under panoramisk's protocol (writes dropped)."""

    def write(self, data: bytes) -> None:
        pass

    def close(self) -> None:
        pass

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default


class _AdapterLab:
    """An adapter on a real in-process relay whose PBX connection is down: event
    handling runs to completion (every AMI/ESL action fails fast)."""

    def __init__(self) -> None:
        from pbx_zrtp.cache.memory import MemorySecretCache
        from pbx_zrtp.relay.core import Relay, RelayLayout
        from pbx_zrtp.relay.handle import LocalRelay
        from pbx_zrtp.relay.mirror import MirrorSettings, Policy

        _install_trap()
        self.loop = asyncio.new_event_loop()
        asyncio.set_event_loop(self.loop)
        cache = MemorySecretCache()

        def zrtp(self_uri: str, peer_uri: str) -> ZrtpConfiguration:
            return ZrtpConfiguration(zid=b"Z" * 12, mitm=True, self_uri=self_uri, peer_uri=peer_uri)

        settings = MirrorSettings(
            zrtp=zrtp, cache=cache, optional_timeout=1e6, required_timeout=1e6
        )
        # One port pair the relay may use: fuzzed ports are refused without binding.
        self.port = _free_even_port(20000)
        self.relay = Relay(
            RelayLayout(RELAY_HOST, PBX_HOST, port_min=self.port, port_max=self.port + 1),
            settings,
        )
        self.loop.run_until_complete(self.relay.start())
        self.handle = LocalRelay(self.relay)
        self.policy = Policy

    def close(self) -> None:
        self.loop.run_until_complete(self.relay.close())
        self.loop.close()
        asyncio.set_event_loop(None)

    def settle(self, adapter: Any) -> None:
        """Run the adapter's tasks to completion, then forget its calls and mirrors."""
        for _ in range(50):
            tasks = [t for t in adapter._tasks if not t.done()]
            if not tasks:
                break
            for task in tasks:  # safety-net hang-ups sleep: cancel those, run the rest
                if task.get_coro().__qualname__.endswith("later"):
                    task.cancel()
            self.loop.run_until_complete(asyncio.sleep(0))
        for task in list(adapter._tasks):
            task.cancel()
        self.loop.run_until_complete(asyncio.sleep(0))
        for call in list(adapter.calls.values()):
            if call.hangup_task is not None:
                call.hangup_task.cancel()
        adapter.calls.clear()
        adapter._gone.clear()
        for report in self.relay.calls():
            self.relay.delete(report.call_id)
        _TRAP.check()


def _split_transcript(path: Path, incoming: str) -> list[bytes]:
    """The segments a PBX sent in a recorded transcript (tests/*/…-transcript.txt)."""
    segments: list[bytes] = []
    current: list[bytes] | None = None
    for line in path.read_bytes().splitlines(keepends=True):
        if line.startswith((b"#### ", b"### ")):
            if current is not None:
                segments.append(b"".join(current))
            current = [] if incoming.encode() in line else None
        elif line.startswith(b"#"):
            continue
        elif current is not None:
            current.append(line)
    if current is not None:
        segments.append(b"".join(current))
    return [s for s in segments if s.strip()]


class AmiTarget:
    """panoramisk's AMI stream parser into our Ami wrapper and AsteriskAdapter."""

    def __init__(self) -> None:
        from panoramisk.ami_protocol import AMIProtocol

        from pbx_zrtp.asterisk.adapter import AsteriskAdapter
        from pbx_zrtp.asterisk.config import AsteriskConfig

        self.lab = _AdapterLab()
        config = AsteriskConfig(secret="fuzz", policies=[("6XX", self.lab.policy.OPTIONAL)])
        self.adapter = AsteriskAdapter(config, self.lab.handle)
        self.lab.handle.on_state(self.adapter._on_relay_state)
        self.protocol_class = AMIProtocol
        self.connection_drops = 0
        self.close = self.lab.close

    def __call__(self, data: bytes) -> None:
        protocol = self.protocol_class()
        protocol.connection_made(_Transport())
        protocol.factory = self.adapter.ami._manager
        r = Reader(data)
        mode = r.byte()  # bit 0: deliver in small TCP reads; bit 1: LF line ends -> CRLF
        rest = r.take(r.remaining())
        if mode & 2:
            rest = rest.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
        step = 1 + mode % 61 if mode & 1 else len(rest) or 1
        for start in range(0, len(rest), step):
            try:
                protocol.data_received(rest[start : start + step])
            except Exception as exc:
                # panoramisk raising out of data_received (e.g. AttributeError on a
                # repeated "Event:" header): asyncio closes the connection and
                # panoramisk reconnects; our adapter resyncs. Ours must not raise.
                _library_only(exc)
                self.connection_drops += 1
                break
        self.lab.settle(self.adapter)


def _library_only(exc: BaseException) -> None:
    """Re-raise ``exc`` if any frame of its traceback is our code (then it is ours)."""
    tb = exc.__traceback__
    while tb is not None:
        if "/pbx_zrtp/" in tb.tb_frame.f_code.co_filename:
            raise exc
        tb = tb.tb_next


class _SockFile(io.BytesIO):
    """The ESL socket's file: a connection that closes at the end of the input.

    greenswitch's body reader loops until it has Content-Length bytes, so a read
    at the end raises, as a dead socket eventually does (a plain empty read would
    spin there forever: see docs/reliability.md).
    """

    def read(self, size: int | None = -1, /) -> bytes:
        data = super().read(size)
        if size and size > 0 and not data:
            raise ConnectionResetError("end of the fuzz input")
        return data


class EslTarget:
    """greenswitch's ESL reader into our Esl event conversion and FreeswitchAdapter."""

    def __init__(self) -> None:
        from greenswitch.esl import ESLProtocol

        from pbx_zrtp.freeswitch.adapter import FreeswitchAdapter
        from pbx_zrtp.freeswitch.config import FreeswitchConfig

        self.lab = _AdapterLab()
        self.adapter = FreeswitchAdapter(FreeswitchConfig(), self.lab.handle)
        self.lab.handle.on_state(self.adapter._on_relay_state)
        self.protocol_class = ESLProtocol
        self.reader_deaths = 0
        self.close = self.lab.close

    def __call__(self, data: bytes) -> None:
        protocol = self.protocol_class()
        protocol.sock_file = _SockFile(data)
        protocol.sock = _SockFile()
        protocol.connected = True
        protocol._commands_sent = [_Result() for _ in range(8)]
        try:
            protocol.receive_events()
        except Exception as exc:
            # greenswitch's reader dies on frames it cannot parse (missing
            # Content-Type, bad Content-Length...): our esl.py watches for exactly
            # this and reconnects, so it is not a crash of ours. Counted.
            _library_only(exc)
            self.reader_deaths += 1
        esl = self.adapter.esl
        queue = protocol._esl_event_queue
        while not queue.empty():
            event = queue.get_nowait()
            # What Esl._gevent_event and Esl._dispatch do, minus the thread hop.
            headers = {str(k): str(v) for k, v in event.headers.items()}
            esl._dispatch(headers)
        self.lab.settle(self.adapter)


class _Result:
    def set(self, value: Any) -> None:
        pass


# ---------------------------------------------------------------------------
# control API and configuration
# ---------------------------------------------------------------------------


class ControlTarget:
    """JSON-lines requests on a real control connection object; TOML configuration."""

    def __init__(self) -> None:
        from pbx_zrtp.relay.control import ControlServer, _Connection

        self.lab = _AdapterLab()
        self.server = ControlServer(self.lab.relay, token="fuzz-token")
        self.connection_class = _Connection
        self.tmp = tempfile.TemporaryDirectory(prefix="pbx-zrtp-fuzz-")
        self.config_path = Path(self.tmp.name) / "relay.toml"
        self.cwd = os.getcwd()
        os.chdir(self.tmp.name)  # relative paths in a fuzzed config stay in here

    def close(self) -> None:
        os.chdir(self.cwd)
        self.lab.close()
        self.tmp.cleanup()

    def __call__(self, data: bytes) -> None:
        if not data:
            return
        if data[0] & 1:
            self._config(data[1:])
        else:
            self._control(data[1:], tcp=bool(data[0] & 2))

    def _control(self, data: bytes, *, tcp: bool) -> None:
        from pbx_zrtp.relay.control import _encode

        connection = self.connection_class(self.server, asyncio.StreamReader(), _Writer(), tcp=tcp)
        loop = self.lab.loop
        for line in data.split(b"\n")[:16]:
            reply = loop.run_until_complete(connection._handle(line + b"\n"))
            if reply is not None:
                _encode(reply)  # every reply must be sendable as JSON
            _TRAP.check()
            if connection.close_after_reply:
                break
        if connection.subscription is not None:
            connection.subscription.close()
        for report in self.lab.relay.calls():
            self.lab.relay.delete(report.call_id)
        loop.run_until_complete(asyncio.sleep(0))
        _TRAP.check()

    def _config(self, data: bytes) -> None:
        from pbx_zrtp.asterisk.config import parse_asterisk
        from pbx_zrtp.freeswitch.config import parse_freeswitch
        from pbx_zrtp.relay.config import ConfigError, load_config, validate

        if b"/dev/" in data or b"/proc/" in data or b"/sys/" in data:
            return  # a secret file that never ends: the administrator's choice, not input
        self.config_path.write_bytes(data)
        try:
            config = load_config(self.config_path)
            validate(config)
            if "asterisk" in config.adapters:
                parse_asterisk(config.adapters["asterisk"])
            if "freeswitch" in config.adapters:
                parse_freeswitch(config.adapters["freeswitch"])
        except ConfigError:
            return


class _Writer:
    """The connection's writer is never used by request handling itself."""

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 1) if name == "peername" else default


# ---------------------------------------------------------------------------
# the native worker (libFuzzer in C)
# ---------------------------------------------------------------------------

FASTPATH_HARNESS = ROOT / "bench" / "fuzz_fastpath.c"
#: Targets that are libFuzzer binaries rather than atheris callables.
NATIVE = ("fastpath",)


def build_fastpath_fuzzer() -> Path:
    """bench/fuzz_fastpath.c (which includes relay/_fastpath.c) as a libFuzzer binary
    with ASan and UBSan, on the libsrtp production uses (pylibsrtp's); cached."""
    import hashlib
    import importlib
    import shutil
    import sysconfig

    from pbx_zrtp.relay import fastpath

    clang = shutil.which("clang")
    if clang is None:
        raise OSError("the fastpath fuzz target needs clang (bash install.sh --dev)")
    binding = Path(str(importlib.import_module("pylibsrtp._binding").__file__)).resolve()
    libdir = sysconfig.get_config_var("LIBDIR") or ""
    version = sysconfig.get_config_var("LDVERSION") or ""
    source = fastpath._SOURCE
    flags = [
        *("-g", "-O1", "-fsanitize=fuzzer,address,undefined", "-fno-sanitize-recover=all"),
        *("-fno-omit-frame-pointer", f"-I{source.parent}", *fastpath._cflags()),
        f'-DSRTP_LIB="{binding}"',
    ]
    libs = [f"-L{libdir}", "-Wl,--no-as-needed", f"-lpython{version}", "-Wl,--as-needed"]
    libs += [f"-Wl,-rpath,{libdir}", "-lpthread", "-ldl"]
    blob = FASTPATH_HARNESS.read_bytes() + source.read_bytes() + " ".join(flags + libs).encode()
    out_dir = fastpath._cache_dir()
    out_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    binary = out_dir / f"fuzz_fastpath-{hashlib.sha256(blob).hexdigest()[:16]}"
    if binary.is_file():
        return binary
    tmp = binary.with_name(f"{binary.name}.{os.getpid()}.tmp")
    cmd = [clang, *flags, str(FASTPATH_HARNESS), *libs, "-o", str(tmp)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=300)
    if proc.returncode != 0:
        tmp.unlink(missing_ok=True)
        raise OSError(f"building the fastpath fuzzer failed: {proc.stderr[-2000:]}")
    os.replace(tmp, binary)
    for stale in out_dir.glob("fuzz_fastpath-*"):
        if stale != binary and not stale.name.endswith(".tmp"):
            stale.unlink(missing_ok=True)
    return binary


class FastpathTarget:
    """The native harness, one input per run of the binary (seed replay in tests)."""

    def __init__(self) -> None:
        self.binary = build_fastpath_fuzzer()
        self._dir = tempfile.TemporaryDirectory(prefix="fuzz-fastpath-")

    def __call__(self, data: bytes) -> None:
        scratch = Path(self._dir.name)
        path = scratch / "input"
        path.write_bytes(data)
        proc = subprocess.run(
            [str(self.binary), f"-artifact_prefix={scratch}/", str(path)],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if proc.returncode != 0:
            raise FuzzFailure(f"fuzz_fastpath exit {proc.returncode}: {proc.stderr[-3000:]}")

    def close(self) -> None:
        self._dir.cleanup()


def _fp_header(b0: int, b1: int, word: int, stamp: int) -> bytes:
    return bytes([b0 & 0xFF, b1 & 0xFF]) + word.to_bytes(2, "big") + stamp.to_bytes(2, "big")


def _fp_body(payload: bytes) -> bytes:
    payload = payload[: 255 * 4]
    return bytes([len(payload) // 4]) + payload[: len(payload) // 4 * 4]


def fastpath_program(hs32: bool, *ops: bytes, ipv6: bool = False, aes3: bool = False) -> bytes:
    """An input of bench/fuzz_fastpath.c: the flags byte, then operations."""
    return bytes([hs32 | ipv6 << 1 | aes3 << 2]) + b"".join(ops)


def fp_phone_rtp(seq: int, source: int = 0, payload: bytes = b"\x7f" * 160) -> bytes:
    return b"\x01" + bytes([source, 1]) + _fp_header(0, 0, seq, seq) + _fp_body(payload)


def fp_phone_rtcp(pt: int, source: int = 0) -> bytes:
    return b"\x06" + bytes([source, 1]) + _fp_header(1, pt - 192, 6, 0) + _fp_body(bytes(20))


def fp_again(which: int, source: int, tamper: int | None = None) -> bytes:
    op, where = (b"\x02", 0) if tamper is None else (b"\x03", tamper)
    return op + bytes([source, which]) + where.to_bytes(2, "big")


def fp_pbx_rtp(seq: int, b1: int = 0, payload: bytes = b"\x55" * 160, who: int = 0) -> bytes:
    return b"\x04" + bytes([who, 1]) + _fp_header(0, b1, seq, seq) + _fp_body(payload)


def fp_raw(side: str, data: bytes, source: int = 0) -> bytes:
    size = len(data).to_bytes(2, "big")
    return (b"\x00" + bytes([source]) if side == "phone" else b"\x05") + size + data


def fp_pbx_rtcp_port(pt: int = 200) -> bytes:
    return b"\x07" + _fp_header(0, pt - 192, 6, 0) + _fp_body(bytes(20))


# ---------------------------------------------------------------------------
# registry and seeds
# ---------------------------------------------------------------------------

Target = Callable[[bytes], None]

FACTORIES: dict[str, Callable[[], Target]] = {
    "packets": lambda: target_packets,
    "engine": EngineTarget,
    "kem": KemTarget,
    "relay": RelayTarget,
    "ami": AmiTarget,
    "esl": EslTarget,
    "control": ControlTarget,
    "fastpath": FastpathTarget,
}


def make_target(name: str) -> Target:
    return FACTORIES[name]()


def corpus_files(name: str) -> list[Path]:
    directory = CORPUS / name
    return sorted(directory.iterdir()) if directory.is_dir() else []


def generate_seeds() -> dict[str, list[bytes]]:
    """Seed inputs from real traffic: our handshakes, bzrtp's, the PBX transcripts."""
    from tests.vectors import bzrtp_exchange

    seeds: dict[str, list[bytes]] = {name: [] for name in FACTORIES}
    exchange = Exchange(1, key_agreement_types=_FAST)
    ours = [d for _, d, _ in exchange.log]
    theirs = [*bzrtp_exchange.PACKETS, bzrtp_exchange.LIBZRTPCPP_HELLO]
    for datagram in ours + theirs:
        seeds["packets"].append(b"\x00" + datagram)
        seeds["packets"].append(b"\x01" + p.message_bytes(datagram))
    seeds["packets"].append(b"\x03" + bytes(32) + b"\x00\x00\x01\x0f" + bytes(8))
    seeds["packets"].append(b"\x04" + b"\x00\x00\x00\x07" + b"B32 " + bytes(32))
    for index in range(3):
        for side in (0, 1):
            for steps in range(0, 8, 2):
                # step on with real messages (op 5), then a mutated real one (op 3)
                seeds["engine"].append(
                    bytes([index, side, steps, 4, 5, 5, 3, steps, 1, 0, 40, 0x55, 0, 0, 0, 0])
                )
    for policy in range(5):
        for op in range(9):
            rtp = struct.pack("!BBHII", 0x80, 0, 1, 160, 1) + b"\xff" * 160
            seeds["relay"].append(bytes([policy, 0, op, 1]) + len(rtp).to_bytes(2, "big") + rtp)
        hello = p.message_bytes(ours[0])
        seeds["relay"].append(bytes([policy, 0, 4, 1]) + len(hello).to_bytes(2, "big") + hello)
    ami = _split_transcript(FIXTURES[0] / "asterisk-ami-transcript.txt", "ASTERISK -> CLIENT")
    seeds["ami"] += [b"\x00" + b"".join(ami[i : i + 8]) for i in range(0, len(ami), 8)]
    start = (
        b"Event: UserEvent\r\nUserEvent: PbxZrtp\r\nUniqueid: 1.1\r\nChannel: PJSIP/a-1\r\n"
        b"Policy: required\r\nTarget: 600\r\nRtpSrc: 127.0.0.1:20000\r\n\r\n"
    )
    admin = b"Event: UserEvent\r\nUserEvent: PbxZrtpAdmin\r\nCommand: verify\r\nCall: 1.1\r\n\r\n"
    seeds["ami"] += [
        b"\x00" + start,  # a call the relay mirrors (port 20000 is the lab's)
        b"\x00" + start.replace(b"required", b"auto") + admin,
        b"\x00" + start + admin + b"Event: Hangup\r\nUniqueid: 1.1\r\n\r\n",
    ]
    esl = _split_transcript(FIXTURES[1] / "freeswitch-esl-transcript.txt", "<<< RECV")
    seeds["esl"] += [b"".join(esl[i : i + 4]) for i in range(0, len(esl), 4)]
    body = (
        b"Event-Name: CUSTOM\nEvent-Subclass: pbx_zrtp::request\nUnique-ID: u1\n"
        b"variable_pbx_zrtp_policy: required\nvariable_local_media_port: 20000\n"
        b"variable_rtp_adv_audio_ip: 127.0.0.2\nCaller-Destination-Number: 600\n\n"
    )
    seeds["esl"].append(
        b"Content-Length: %d\nContent-Type: text/event-plain\n\n" % len(body) + body
    )
    seeds["control"] += [
        b"\x00" + b'{"op":"ping","id":1}\n{"op":"list"}\n{"op":"stats"}',
        b"\x00" + b'{"op":"create","call_id":"c1","port":20000,"policy":"required"}',
        b"\x00" + b'{"op":"show","call_id":"c1"}\n{"op":"update","call_id":"c1","policy":"off"}',
        b"\x00" + b'{"op":"verify","call_id":"c1","verified":true}\n{"op":"subscribe"}',
        b"\x00" + b'{"op":"delete","call_id":"c1","reason":"x"}\n[1,2]\n{"id":NaN}',
        b"\x02" + b'{"op":"auth","token":"fuzz-token"}\n{"op":"ping"}',
    ]
    example = (ROOT / "examples" / "relay.toml").read_bytes()
    seeds["control"] += [b"\x01" + example, b"\x01[relay]\nports = [10000, 20000]\n"]
    seeds["control"].append(
        b'\x01[asterisk]\nsecret = "x"\npolicies = { "6XX" = "required" }\n'
        b'[freeswitch]\npassword = "y"\n'
    )
    for hs32, ipv6, aes3 in ((False, False, False), (True, False, False), (False, True, True)):
        # a call: phone audio, the PBX's sequence wrapping, a relatch (NAT rebinding),
        # replays from the phone and an attacker, a tampered copy, RTCP feedback both
        # ways on the RTP port, RTCP on P+1, junk on both sides; the phone's and the
        # PBX's look-alikes (another scope or family); IPv4 and IPv6, AES1 and AES3
        seeds["fastpath"].append(
            fastpath_program(
                hs32,
                *(fp_phone_rtp(seq) for seq in (1, 2, 3)),
                *(fp_pbx_rtp(seq) for seq in (65534, 65535, 0, 1)),
                fp_phone_rtp(4, source=1),
                fp_pbx_rtp(2),
                fp_again(0, 2),
                *(fp_again(i, 2) for i in range(4)),
                fp_again(3, 1),
                fp_again(1, 0, tamper=40),
                fp_pbx_rtp(3, b1=205, payload=bytes(8)),
                fp_pbx_rtp(4, b1=206, payload=bytes(4)),
                fp_phone_rtcp(205),
                fp_phone_rtcp(206, source=2),
                fp_pbx_rtcp_port(),
                fp_raw("phone", b"\x10\x00\x00\x01ZRTP" + bytes(20)),
                fp_raw("pbx", b"\x80\xc8" + bytes(26)),
                fp_raw("phone", b"\x80" * 1550),  # oversize (the length is taken mod 1564)
                b"\x08" + _fp_header(0x9F, 0, 5, 5) + (40).to_bytes(2, "big") + bytes(40),
                fp_again(4, 7),  # a captured packet from the phone's look-alike
                fp_phone_rtp(5, source=7),  # an authentic one from there: a relatch
                fp_pbx_rtp(5, who=6),  # the PBX's look-alike
                fp_pbx_rtp(6),
                ipv6=ipv6,
                aes3=aes3,
            )
        )
    # a repeated PBX index (another payload, then the same one), a late packet from
    # before the wrap, a stranger on the PBX side
    seeds["fastpath"].append(
        fastpath_program(
            False,
            fp_pbx_rtp(100),
            fp_pbx_rtp(100, payload=b"\x66" * 160),
            fp_pbx_rtp(100),
            fp_pbx_rtp(65535),
            fp_pbx_rtp(0),
            fp_pbx_rtp(65534, payload=b"\x77" * 160),
            fp_pbx_rtp(1, who=7),
        )
    )
    kem = KemTarget()
    for index, exchange in enumerate(kem.exchanges):
        for side in (0, 1):
            for steps in range(0, 8, 2):
                # step on (op 2), a real datagram mutated (op 0), a duplicate (op 3)
                seeds["kem"].append(bytes([2, index, side, steps, 5, 2, 2, 0, 1, 0, 9, 0x55, 3, 0]))
        fragments = [d for _, d, _ in exchange.log if p.is_zrtp_fragment(d)]
        for fragment in fragments[:4]:
            seeds["kem"].append(b"\x00" + len(fragment).to_bytes(2, "big") + fragment + b"\x01")
    seeds["kem"].append(bytes([1, 1, 4]) + bytes(range(40)))
    return seeds
