"""SRTP/SRTCP over libsrtp as the relay uses it: every failure is a None, never an exception."""

from __future__ import annotations

import os
import struct

import pytest

from pbx_zrtp.srtp import SrtpContext, is_rtcp
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
