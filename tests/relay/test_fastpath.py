"""The native fast path (relay/_fastpath.c) over real sockets on 127.0.0.2-4 and ::1.

The test side plays the phone with our SrtpContext (pylibsrtp) and a plain-RTP
PBX. Every test runs once over IPv4 (relay, PBX and phone on their own 127/8
addresses) and once over IPv6 (all on ::1, told apart by their ports). Skipped
with the reason when the library cannot be built (no gcc or no libsrtp2-dev);
under CI (env CI set) that is a failure instead.
"""

from __future__ import annotations

import contextlib
import os
import random
import select
import socket
import struct
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from pbx_zrtp.relay.fastpath import FastPath, available
from pbx_zrtp.srtp import SrtpContext
from pbx_zrtp.zrtp.events import SrtpKeys

RELAY_HOST = "127.0.0.2"
PBX_HOST = "127.0.0.3"
PHONE_HOST = "127.0.0.4"
#: An address of the other family than the test's (fp_set_phone must refuse it).
OTHER_FAMILY_HOST = "::1"

_WHY = available()
if _WHY is not None and os.environ.get("CI"):
    raise RuntimeError(f"fast path unavailable under CI: {_WHY}")
pytestmark = pytest.mark.skipif(_WHY is not None, reason=f"fast path unavailable: {_WHY}")


@pytest.fixture(autouse=True, params=["ipv4", "ipv6"])
def family(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Every test over both address families (the hosts are read when sockets are made)."""
    if request.param == "ipv6":
        for name in ("RELAY_HOST", "PBX_HOST", "PHONE_HOST"):
            monkeypatch.setitem(globals(), name, "::1")
        monkeypatch.setitem(globals(), "OTHER_FAMILY_HOST", "127.0.0.1")
    return str(request.param)


def rtp(seq: int, ssrc: int = 0x1234, payload: bytes | None = None) -> bytes:
    body = payload if payload is not None else struct.pack("!I", seq) * 40
    return struct.pack("!BBHII", 0x80, 0, seq & 0xFFFF, seq * 160, ssrc) + body


def udp(host: str) -> socket.socket:
    s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((host, 0))
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    return s


@dataclass
class Call:
    relay_phone: socket.socket  # relay's phone-side socket (owned by the fast path)
    relay_pbx: socket.socket  # relay's PBX-side socket
    phone: socket.socket
    pbx: socket.socket
    srtp: SrtpContext  # the phone's SRTP
    relay_srtp: SrtpContext  # the relay's, lent to the fast path
    handle: int = -1

    def sockets(self) -> tuple[socket.socket, ...]:
        return (self.relay_phone, self.relay_pbx, self.phone, self.pbx)

    def close(self) -> None:
        for s in self.sockets():
            s.close()


def relay_srtp(auth_tag: str = "HS80") -> tuple[SrtpContext, SrtpContext]:
    """(the relay's context, the phone's): the phone protects with what we unprotect."""
    tx_key, rx_key = os.urandom(30), os.urandom(30)
    relay = SrtpKeys("AES1", auth_tag, tx_key[:16], tx_key[16:], rx_key[:16], rx_key[16:])
    phone = SrtpKeys("AES1", auth_tag, rx_key[:16], rx_key[16:], tx_key[:16], tx_key[16:])
    return SrtpContext(relay), SrtpContext(phone)


def make_call(fp: FastPath, auth_tag: str = "HS80") -> Call:
    relay, phone = relay_srtp(auth_tag)
    call = Call(udp(RELAY_HOST), udp(RELAY_HOST), udp(PHONE_HOST), udp(PBX_HOST), phone, relay)
    call.relay_phone.setblocking(False)
    call.relay_pbx.setblocking(False)
    call.phone.connect(call.relay_phone.getsockname())
    call.pbx.connect(call.relay_pbx.getsockname())
    for s in (call.phone, call.pbx):
        s.settimeout(5)
    call.handle = fp.attach(
        phone_fd=call.relay_phone.fileno(),
        pbx_fd=call.relay_pbx.fileno(),
        phone_addr=call.phone.getsockname(),
        pbx_addr=call.pbx.getsockname(),
        srtp=relay,
    )
    return call


@pytest.fixture
def fp() -> Iterator[FastPath]:
    path = FastPath()
    try:
        yield path
    finally:
        path.close()


@contextlib.contextmanager
def calls(fp: FastPath, n: int, auth_tag: str = "HS80") -> Iterator[list[Call]]:
    made: list[Call] = []
    try:
        for _ in range(n):
            made.append(make_call(fp, auth_tag))
        yield made
    finally:
        for call in made:
            with contextlib.suppress(KeyError, RuntimeError):
                fp.detach(call.handle)
            call.close()


def wait_for(predicate: object, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


def exchange(call: Call, count: int) -> None:
    """count packets each way, all forwarded, authenticated and intact."""
    for seq in range(1, count + 1):
        packet = rtp(seq)
        protected = call.srtp.protect(packet)
        assert protected is not None
        call.phone.send(protected)
        assert call.pbx.recv(2048) == packet  # decrypted by the fast path
        call.pbx.send(rtp(seq, ssrc=0x5678))
        got = call.phone.recv(2048)
        assert got != rtp(seq, ssrc=0x5678)  # it is SRTP now
        assert call.srtp.unprotect(got) == rtp(seq, ssrc=0x5678)


@pytest.mark.parametrize("auth_tag", ["HS80", "HS32"])
def test_200_packets_each_way(fp: FastPath, auth_tag: str) -> None:
    with calls(fp, 1, auth_tag) as (call,):
        exchange(call, 200)
        stats = fp.stats(call.handle)
        assert stats["phone_in"] == stats["pbx_out"] == 200
        assert stats["pbx_in"] == stats["phone_out"] == 200
        assert stats["pbx_out_bytes"] == 200 * 172
        assert stats["phone_out_bytes"] == 200 * (172 + (10 if auth_tag == "HS80" else 4))
        assert stats["srtp_auth"] == stats["punted"] == stats["wrong_source"] == 0


def test_burst_is_batched_without_loss(fp: FastPath) -> None:
    with calls(fp, 1) as (call,):
        for seq in range(1, 201):
            call.phone.send(call.srtp.protect(rtp(seq)) or b"")
            call.pbx.send(rtp(seq))
        up = [call.pbx.recv(2048) for _ in range(200)]
        down = [call.srtp.unprotect(call.phone.recv(2048)) for _ in range(200)]
        assert up == [rtp(seq) for seq in range(1, 201)]
        assert down == [rtp(seq) for seq in range(1, 201)]


def test_tampered_srtp_is_counted_and_dropped(fp: FastPath) -> None:
    with calls(fp, 1) as (call,):
        protected = bytearray(call.srtp.protect(rtp(1)) or b"")
        protected[20] ^= 0x01
        call.phone.send(bytes(protected))
        call.phone.send(call.srtp.protect(rtp(2)) or b"")
        assert call.pbx.recv(2048) == rtp(2)  # only the good one
        assert fp.stats(call.handle)["srtp_auth"] == 1
        call.pbx.settimeout(0.2)
        with pytest.raises(TimeoutError):
            call.pbx.recv(2048)


def test_zrtp_and_foreign_packets_are_punted(fp: FastPath) -> None:
    with calls(fp, 2) as (other, call):
        zrtp = b"\x10\x00\x00\x01ZRTP" + b"\x00" * 4 + b"PingACK".ljust(40, b"\x00")
        call.phone.send(zrtp)
        stranger = udp(PHONE_HOST)
        try:
            stranger.sendto(call.srtp.protect(rtp(7)) or b"", call.relay_phone.getsockname())
            rtcp = b"\x81\xc8\x00\x06" + b"\x00" * 24
            call.pbx.send(rtcp)
            stranger.sendto(rtp(9), call.relay_pbx.getsockname())  # not the PBX: dropped
            assert select.select([fp.punt_fd()], [], [], 5)[0]
            punted: list[tuple[int, bytes, tuple[str, int], str]] = []
            wait_for(lambda: len(punted.__iadd__(fp.read_punted())) >= 3)
            assert punted[0] == (call.handle, zrtp, call.phone.getsockname()[:2], "phone")
            assert punted[1][0] == call.handle and punted[1][3] == "phone"
            assert punted[1][2] == stranger.getsockname()[:2]
            assert punted[2] == (call.handle, rtcp, call.pbx.getsockname()[:2], "pbx")
            wait_for(lambda: fp.stats(call.handle)["wrong_source"] == 1)
            stats = fp.stats(call.handle)
            assert stats["punted"] == 3 and stats["pbx_out"] == 0
            assert fp.stats(other.handle)["punted"] == 0
            assert fp.read_punted() == []
            assert not select.select([fp.punt_fd()], [], [], 0)[0]
        finally:
            stranger.close()


def test_detach_returns_counters_and_releases_the_sockets(fp: FastPath) -> None:
    with calls(fp, 1) as (call,):
        exchange(call, 5)
        counters = fp.detach(call.handle)
        assert counters["phone_in"] == counters["pbx_out"] == 5
        assert counters["pbx_in"] == counters["phone_out"] == 5
        with pytest.raises(KeyError):
            fp.stats(call.handle)
        with pytest.raises(KeyError):
            fp.detach(call.handle)
        late = call.srtp.protect(rtp(6)) or b""
        call.phone.send(late)
        call.pbx.send(rtp(6))
        time.sleep(0.1)  # the worker would have taken them by now
        call.relay_phone.settimeout(2)
        call.relay_pbx.settimeout(2)
        assert call.relay_phone.recv(2048) == late
        assert call.relay_pbx.recv(2048) == rtp(6)
        # the same fds can be attached again, under a new handle
        handle = fp.attach(
            phone_fd=call.relay_phone.fileno(),
            pbx_fd=call.relay_pbx.fileno(),
            phone_addr=call.phone.getsockname(),
            pbx_addr=call.pbx.getsockname(),
            srtp=relay_srtp()[0],
        )
        assert handle != call.handle
        call.handle = handle


def test_fifty_calls_at_once(fp: FastPath) -> None:
    with calls(fp, 50) as many:
        assert len({call.handle for call in many}) == 50
        for seq in range(1, 21):
            for call in many:
                call.phone.send(call.srtp.protect(rtp(seq)) or b"")
                call.pbx.send(rtp(seq, ssrc=0x5678))
        for call in many:
            assert [call.pbx.recv(2048) for _ in range(20)] == [rtp(s) for s in range(1, 21)]
            down = [call.srtp.unprotect(call.phone.recv(2048)) for _ in range(20)]
            assert down == [rtp(s, ssrc=0x5678) for s in range(1, 21)]
        for call in many:
            stats = fp.stats(call.handle)
            assert stats["pbx_out"] == stats["phone_out"] == 20


def test_oversize_and_garbage_do_not_crash(fp: FastPath) -> None:
    with calls(fp, 1) as (call,):
        call.phone.send(b"\x80" * 1600)  # oversize
        call.pbx.send(b"\x80" * 1600)
        for junk in (b"", b"\x80", b"\x80\x00" * 5, os.urandom(1400), b"\x80\x00" + b"\x00" * 10):
            call.phone.send(junk)  # punted, or counted as srtp_auth
        for junk in (b"", b"\x80", b"\x00" * 20, b"\x81\xc9" + b"\x00" * 6):
            call.pbx.send(junk)  # not RTP: punted
        exchange(call, 3)
        stats = fp.stats(call.handle)
        assert stats["oversize"] == 2
        assert len(fp.read_punted()) >= 1


def test_bad_arguments_and_close_is_idempotent() -> None:
    path = FastPath()
    srtp = relay_srtp()[0]
    with pytest.raises(OSError):
        path.attach(
            phone_fd=5,
            pbx_fd=5,
            phone_addr=(PHONE_HOST, 1),
            pbx_addr=(PBX_HOST, 1),
            srtp=srtp,
        )
    assert not srtp.lent  # a failed attach gives the sessions straight back
    with calls(path, 3):
        path.close()  # with calls attached: frees them; the fds stay open
    path.close()
    path.close()
    with pytest.raises(RuntimeError):
        path.stats(0)


def test_detach_and_attach_while_traffic_flows(fp: FastPath) -> None:
    """Calls come and go while the others carry packets: nothing crashes or leaks."""
    with calls(fp, 20) as many:
        for round_ in range(10):
            for seq in range(1, 6):
                for call in many:
                    call.phone.send(call.srtp.protect(rtp(seq + 10 * round_)) or b"")
                    call.pbx.send(rtp(seq + 10 * round_))  # a repeated index would be dropped
            victim = many[round_]
            counters = fp.detach(victim.handle)
            assert counters["phone_in"] <= 5 * (round_ + 1) * 2
            victim.handle = fp.attach(
                phone_fd=victim.relay_phone.fileno(),
                pbx_fd=victim.relay_pbx.fileno(),
                phone_addr=victim.phone.getsockname(),
                pbx_addr=victim.pbx.getsockname(),
                srtp=victim.relay_srtp,  # the same sessions, their state carried on
            )
        survivor = many[-1]
        wait_for(lambda: fp.stats(survivor.handle)["pbx_out"] == 50)
        wait_for(lambda: fp.stats(survivor.handle)["phone_out"] == 50)
        assert fp.stats(survivor.handle)["srtp_repeat"] == 0


def test_random_datagrams_do_not_crash(fp: FastPath) -> None:
    rng = random.Random(1234)
    with calls(fp, 2) as (call, other):
        for _ in range(1000):
            size = rng.choice([0, 1, 11, 12, 13, 40, 172, 182, 1499, 1500, 1501, 2000])
            head = bytes([rng.choice([0x80, 0x90, 0xA0, 0x10, 0x00, 0xFF]), rng.randrange(256)])
            call.phone.send((head + rng.randbytes(size))[:size])
            other.pbx.send((head + rng.randbytes(size))[:size])
            fp.read_punted()  # keep the punt queue short
        wait_for(lambda: fp.stats(call.handle)["phone_in"] == 1000)
        wait_for(lambda: fp.stats(other.handle)["pbx_in"] == 1000)
        other.phone.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            while True:  # what the fast path protected for the phone: not needed here
                other.phone.recv(4096)
        other.phone.settimeout(5)
        fp.read_punted()
        assert fp.stats(call.handle)["oversize"] > 0
        exchange(call, 3)
        exchange(other, 3)


def test_the_worker_carries_on_the_calls_own_srtp_state(fp: FastPath) -> None:
    """One SRTP state per call: the worker borrows the call's sessions, so the
    rollover counter and the replay window survive detach and attach both ways."""
    relay_ctx, phone_ctx = relay_srtp()
    with calls(fp, 1) as (call,):
        fp.detach(call.handle)  # re-attach the same sockets with our own contexts
        call.srtp, call.relay_srtp = phone_ctx, relay_ctx
        call.handle = fp.attach(
            phone_fd=call.relay_phone.fileno(),
            pbx_fd=call.relay_pbx.fileno(),
            phone_addr=call.phone.getsockname(),
            pbx_addr=call.pbx.getsockname(),
            srtp=relay_ctx,
        )
        assert relay_ctx.lent
        wrap = [65530 + i for i in range(6)] + [65536 + i for i in range(4)]
        for seq in wrap:  # the PBX's sequence number wraps in the worker
            call.pbx.send(rtp(seq, ssrc=0x5678))
            assert phone_ctx.unprotect(call.phone.recv(2048)) == rtp(seq, ssrc=0x5678)
        up = phone_ctx.protect(rtp(1))
        assert up is not None
        call.phone.send(up)
        assert call.pbx.recv(2048) == rtp(1)
        # While lent, Python's uses run in the worker's sessions, under its lock:
        assert relay_ctx.unprotect(up) is None  # replayed: the worker saw it
        fp.detach(call.handle)
        assert not relay_ctx.lent
        # Back in Python, the same state: ROC 1 goes on, the replay is still refused.
        down = relay_ctx.protect(rtp(65540, ssrc=0x5678))
        assert down is not None and phone_ctx.unprotect(down) == rtp(65540, ssrc=0x5678)
        assert relay_ctx.unprotect(up) is None
        assert relay_ctx.protect(rtp(65539, ssrc=0x5678)) is None  # index 1:3 used already
        call.handle = fp.attach(
            phone_fd=call.relay_phone.fileno(),
            pbx_fd=call.relay_pbx.fileno(),
            phone_addr=call.phone.getsockname(),
            pbx_addr=call.pbx.getsockname(),
            srtp=relay_ctx,
        )
        call.pbx.send(rtp(65541, ssrc=0x5678))
        assert phone_ctx.unprotect(call.phone.recv(2048)) == rtp(65541, ssrc=0x5678)
        call.phone.send(up)  # a replay from the phone's address: dropped
        call.pbx.settimeout(0.2)
        with pytest.raises(TimeoutError):
            call.pbx.recv(2048)
        assert fp.stats(call.handle)["srtp_auth"] == 1


def test_set_phone_moves_the_latch_with_the_same_sessions(fp: FastPath) -> None:
    with calls(fp, 1) as (call,):
        exchange(call, 3)
        moved = udp(PHONE_HOST)
        try:
            moved.settimeout(5)
            fp.set_phone(call.handle, moved.getsockname())
            call.pbx.send(rtp(4, ssrc=0x5678))
            assert call.srtp.unprotect(moved.recv(2048)) == rtp(4, ssrc=0x5678)
            moved.sendto(call.srtp.protect(rtp(4)) or b"", call.relay_phone.getsockname())
            assert call.pbx.recv(2048) == rtp(4)
            call.phone.send(call.srtp.protect(rtp(5)) or b"")  # the old address: Python's
            wait_for(lambda: fp.stats(call.handle)["punted"] == 1)
            assert fp.read_punted()[0][2] == call.phone.getsockname()[:2]
            with pytest.raises(ValueError):
                fp.set_phone(call.handle, (OTHER_FAMILY_HOST, 5))
            with pytest.raises(KeyError):
                fp.set_phone(call.handle + 1, moved.getsockname())
        finally:
            moved.close()


def test_rtcp_feedback_from_the_pbx_is_punted_as_rtcp(fp: FastPath) -> None:
    """RFC 5761: 192-223 in the second byte is RTCP, feedback (205-207) included."""
    with calls(fp, 1) as (call,):
        sent = [bytes([0x81, pt, 0, 2]) + struct.pack("!II", 1, 2) for pt in (205, 206, 207)]
        for packet in sent:
            call.pbx.send(packet)
        punted: list[tuple[int, bytes, tuple[str, int], str]] = []
        wait_for(lambda: len(punted.__iadd__(fp.read_punted())) >= 3)
        assert [d for _, d, _, side in punted if side == "pbx"] == sent
        assert fp.stats(call.handle)["phone_out"] == 0  # none was protected as RTP


def test_one_rtcp_demultiplexing_rule_in_both_paths() -> None:
    from pbx_zrtp.relay.fastpath import is_rtcp as worker_is_rtcp
    from pbx_zrtp.srtp import is_rtcp

    for second in range(256):
        for packet in (bytes([0x80, second]), bytes([0x80, second]) + bytes(10)):
            assert worker_is_rtcp(packet) == is_rtcp(packet), (second, len(packet))
    assert not worker_is_rtcp(b"") and not worker_is_rtcp(b"\x80")
