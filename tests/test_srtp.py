"""SRTP/SRTCP over libsrtp as the relay uses it: every failure is a None, never an exception."""

from __future__ import annotations

import os
import struct

import pylibsrtp
import pytest

from pbx_zrtp.srtp import (
    PYLIBSRTP_VERIFIED,
    Op,
    Refusal,
    SrtpContext,
    is_rtcp,
    session_pointer,
)
from pbx_zrtp.zrtp.events import SrtpKeys


def pair(tag: str) -> tuple[SrtpContext, SrtpContext]:
    k1, s1, k2, s2 = os.urandom(16), os.urandom(14), os.urandom(16), os.urandom(14)
    return (
        SrtpContext(SrtpKeys("AES1", tag, k1, s1, k2, s2)),
        SrtpContext(SrtpKeys("AES1", tag, k2, s2, k1, s1)),
    )


def rtp(seq: int) -> bytes:
    return struct.pack("!BBHII", 0x80, 0, seq, seq * 160, 0x1234) + bytes(160)


RTCP = struct.pack("!BBHIIIIII", 0x80, 200, 6, 0x1234, 0, 0, 0, 0, 0)


@pytest.mark.parametrize(("tag", "length"), [("HS80", 10), ("HS32", 4)])
def test_round_trip_and_tag_lengths(tag: str, length: int) -> None:
    a, b = pair(tag)
    packet = a.protect(rtp(1))
    assert packet is not None and len(packet) == len(rtp(1)) + length
    assert b.unprotect(packet) == rtp(1)
    # SRTCP: the negotiated tag length applies too (linphone does so), plus the 4-byte index
    srtcp = a.protect(RTCP)
    assert srtcp is not None and len(srtcp) == len(RTCP) + 4 + length
    assert b.unprotect(srtcp) == RTCP


def test_replay_tamper_wrong_key_and_garbage_are_dropped_and_counted() -> None:
    a, b = pair("HS80")
    packet = a.protect(rtp(7))
    assert packet is not None and b.unprotect(packet) == rtp(7)
    assert b.unprotect(packet) is None  # replay
    tampered = bytearray(a.protect(rtp(8)) or b"")
    tampered[20] ^= 1
    assert b.unprotect(bytes(tampered)) is None
    _, stranger = pair("HS80")
    assert stranger.unprotect(a.protect(rtp(9)) or b"") is None
    for junk in (b"", b"\x80", os.urandom(11), os.urandom(3000), b"\x80\xc8" + os.urandom(3)):
        assert b.unprotect(junk) is None
    assert b.stats["unprotect_failed"] == 7  # replay + tampered + 5 junk
    assert stranger.stats["unprotect_failed"] == 1


def test_unsupported_profile_is_refused() -> None:
    with pytest.raises(ValueError, match="no SRTP profile"):
        SrtpContext(SrtpKeys("AES3", "HS80", bytes(32), bytes(14), bytes(32), bytes(14)))


def test_rtcp_demultiplexing() -> None:
    assert is_rtcp(RTCP) and not is_rtcp(rtp(1)) and not is_rtcp(b"\x80")


def test_a_repeated_index_is_refused_and_counted_never_encrypted_again() -> None:
    """RFC 3711 §9.1: one (SSRC, index) is encrypted once. Another payload under a
    used index would reuse its keystream; an identical one carries nothing (the
    receiver's replay window drops it)."""
    a, b = pair("HS80")
    first = a.protect(rtp(5))
    assert first is not None and b.unprotect(first) == rtp(5)
    other = rtp(5)[:12] + b"\x01" * 160
    assert a.protect_checked(other) is Refusal.REPEAT
    assert a.protect(rtp(5)) is None  # byte-identical: refused too
    assert a.stats["protect_repeat"] == 2 and a.stats["protect_failed"] == 0
    later = a.protect(rtp(6))
    assert later is not None and b.unprotect(later) == rtp(6)  # the stream goes on
    assert a.protect_checked(b"\x80\x00") is Refusal.FAILED  # not a repeat: a bad packet
    assert a.stats["protect_failed"] == 1


def test_the_pylibsrtp_internals_the_fast_path_borrows_are_there() -> None:
    """srtp.py reads pylibsrtp's Session._srtp (an srtp_t *) to lend a call's
    sessions to the native worker: a pylibsrtp that changes it must fail here,
    loudly, not corrupt memory later."""
    assert pylibsrtp.__version__.startswith(PYLIBSRTP_VERIFIED)
    policy = pylibsrtp.Policy(key=bytes(30), ssrc_type=pylibsrtp.Policy.SSRC_ANY_OUTBOUND)
    policy.allow_repeat_tx = False
    session = pylibsrtp.Session(policy)
    address = session_pointer(session)
    # The address is the very session pylibsrtp uses: what it protected is used up.
    session.protect(rtp(1))
    ffi, lib = pylibsrtp.ffi, pylibsrtp.lib
    buf = ffi.new("unsigned char[]", 2048)
    length = ffi.new("int *", len(rtp(1)))
    ffi.memmove(buf, rtp(1), len(rtp(1)))
    assert lib.srtp_protect(ffi.cast("srtp_t", address), buf, length) == 9  # replay_fail
    session._srtp = object()  # what a changed pylibsrtp would look like
    with pytest.raises(RuntimeError, match=r"Session\._srtp is not an srtp_t"):
        session_pointer(session)


class _Direct:
    """A lender that refuses everything (for the lending bookkeeping only)."""

    def __init__(self, ctx: SrtpContext) -> None:
        self.ctx = ctx
        self.calls = 0

    def run(self, op: Op, packet: bytes) -> tuple[int, bytes]:
        self.calls += 1
        return -1, b""


def test_lent_sessions_run_only_through_the_borrower() -> None:
    a, b = pair("HS80")
    lender = _Direct(a)
    a.lend(lender)
    with pytest.raises(RuntimeError, match="lent already"):
        a.lend(lender)
    assert a.protect(rtp(1)) is None and a.unprotect(b.protect(rtp(1)) or b"") is None
    assert lender.calls == 2 and a.lent
    a.take_back()
    packet = a.protect(rtp(1))  # index 1 was never encrypted: the borrower refused it
    assert packet is not None and b.unprotect(packet) == rtp(1)
