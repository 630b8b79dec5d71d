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
from tests import srtp_reference as ref

KEY_LENGTH = {"AES1": 16, "AES3": 32}
TAG_LENGTH = {"HS80": 10, "HS32": 4}
SUITES = [(c, t) for c in ("AES1", "AES3") for t in ("HS80", "HS32")]


def pair(tag: str, cipher: str = "AES1") -> tuple[SrtpContext, SrtpContext]:
    size = KEY_LENGTH[cipher]
    k1, s1, k2, s2 = os.urandom(size), os.urandom(14), os.urandom(size), os.urandom(14)
    return (
        SrtpContext(SrtpKeys(cipher, tag, k1, s1, k2, s2)),
        SrtpContext(SrtpKeys(cipher, tag, k2, s2, k1, s1)),
    )


def rtp(seq: int) -> bytes:
    return struct.pack("!BBHII", 0x80, 0, seq, seq * 160, 0x1234) + bytes(160)


RTCP = struct.pack("!BBHIIIIII", 0x80, 200, 6, 0x1234, 0, 0, 0, 0, 0)


@pytest.mark.parametrize(("cipher", "tag"), SUITES)
def test_round_trip_and_tag_lengths(cipher: str, tag: str) -> None:
    a, b = pair(tag, cipher)
    length = TAG_LENGTH[tag]
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
        SrtpContext(SrtpKeys("2FS3", "HS80", bytes(32), bytes(14), bytes(32), bytes(14)))


@pytest.mark.parametrize(
    ("cipher", "key", "salt"), [("AES3", 16, 14), ("AES1", 32, 14), ("AES3", 32, 12)]
)
def test_a_key_or_salt_of_the_wrong_length_is_refused(cipher: str, key: int, salt: int) -> None:
    """libsrtp reads the suite's full key + salt length: a short AES3 key would be
    read past its end, a long AES1 key silently cut."""
    keys = SrtpKeys(cipher, "HS80", bytes(key), bytes(salt), bytes(key), bytes(salt))
    with pytest.raises(ValueError, match="-byte key"):
        SrtpContext(keys)


# ------------------------------------------------------------------ against the RFCs


def test_the_reference_derives_the_rfc_3711_and_rfc_6188_session_keys() -> None:
    """RFC 3711 B.3 (AES-128) and RFC 6188 §7.2 (AES-256 PRF) key derivation vectors."""
    vectors = [
        (
            "e1f97a0d3e018be0d64fa32c06de4139",
            "0ec675ad498afeebb6960b3aabe6",
            "c61e7a93744f39ee10734afe3ff7a087",
            "30cbbc08863d8c85d49db34a9ae1",
            "cebe321f6ff7716b6fd4ab49af256a156d38baa4",
        ),
        (
            "f0f04914b513f2763a1b1fa130f10e2998f6f6e43e4309d1e622a0e332b9f1b6",
            "3b04803de51ee7c96423ab5b78d2",
            "5ba1064e30ec51613cad926c5a28ef731ec7fb397f70a960653caf06554cd8c4",
            "fa31791685ca444a9e07c6c64e93",
            "fd9c32d39ed5fbb5a9dc96b30818454d1313dc05",
        ),
    ]
    for master_key, master_salt, cipher_key, salt, auth_key in vectors:
        keys = ref.session_keys(bytes.fromhex(master_key), bytes.fromhex(master_salt), rtcp=False)
        assert (keys.cipher_key.hex(), keys.salt.hex(), keys.auth_key.hex()) == (
            cipher_key,
            salt,
            auth_key,
        )


@pytest.mark.parametrize(("cipher", "tag"), SUITES)
def test_each_suite_is_the_rfc_transform_byte_for_byte(cipher: str, tag: str) -> None:
    """What libsrtp sends under each ZRTP cipher/tag pair is RFC 3711 (AES1) or
    RFC 6188 (AES3) AES-CM + HMAC-SHA1 exactly, rollover included, and what the
    reference protects, libsrtp accepts: AES3 is AES-256 in the key derivation and
    the keystream, not AES-128 under a longer key. SRTCP carries the negotiated tag."""
    size, length = KEY_LENGTH[cipher], TAG_LENGTH[tag]
    ours_key, ours_salt, peer_key, peer_salt = (os.urandom(n) for n in (size, 14, size, 14))
    ctx = SrtpContext(SrtpKeys(cipher, tag, ours_key, ours_salt, peer_key, peer_salt))
    # protect: byte-exact, across the wrap of the sequence number (ROC 0 -> 1)
    for seq, roc in ((65534, 0), (65535, 0), (0, 1), (1, 1)):
        plain = rtp(seq)
        assert ctx.protect(plain) == ref.protect_rtp(
            ours_key, ours_salt, plain, tag=length, roc=roc
        )
    # unprotect what the reference protected with the peer's keys
    for seq in (7, 8):
        wire = ref.protect_rtp(peer_key, peer_salt, rtp(seq), tag=length)
        assert ctx.unprotect(wire) == rtp(seq)
        forged = wire[:-1] + bytes([wire[-1] ^ 1])
        assert ctx.unprotect(ref.protect_rtp(peer_key, peer_salt, rtp(9), tag=length)[:-1]) is None
        assert ctx.unprotect(forged) is None
    # SRTCP both ways, with the negotiated tag length
    srtcp = ctx.protect(RTCP)
    assert srtcp is not None and len(srtcp) == len(RTCP) + 4 + length
    assert ref.unprotect_rtcp(ours_key, ours_salt, srtcp, tag=length) == RTCP
    wire = ref.protect_rtcp(peer_key, peer_salt, RTCP, tag=length, index=1)
    assert ctx.unprotect(wire) == RTCP


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
